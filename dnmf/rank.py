"""Choosing k: a survey of the rank over a range of ks, with batched restarts.

For each k, :func:`select_rank` runs two batched fits (:func:`dnmf.factorize` with
``n_restarts=n_runs``: the runs share every read of X) and one more pass:

* **relative error** ``||X - W H||_F / ||X||_F`` of the best run (and the spread over runs), and
  its *elbow* over k: the point farthest from the chord joining the first and last points of
  the curve, both axes scaled to [0, 1] (the "kneedle" idea, Satopää et al. 2011);
* **consensus stability** (Brunet et al., PNAS 101(12), 2004; Kim & Park, Bioinformatics
  23(12), 2007; as the R package NMF): each run assigns every feature to the component that
  contributes most to its column (``argmax_j ||W_j|| H_jf``); the consensus matrix is the
  fraction of runs in which two features share a component. Its **cophenetic correlation**
  (scipy's average linkage on ``1 - consensus`` and :func:`scipy.cluster.hierarchy.cophenet`)
  and its **dispersion** ``mean(4 (C - 1/2)^2)`` are 1 for a perfectly stable clustering. The
  consensus is over features (k x n_features side, never n_samples^2), on a seeded sample of
  at most :data:`MAX_CONSENSUS_FEATURES` of them;
* **silhouette**, NMFk-style (Alexandrov et al., Cell Reports 3(1), 2013; pyDNMFk): the
  ``n_runs x k`` unit-norm rows of H are clustered into k clusters, each run's components
  matched one-to-one to the cluster centroids by the Hungarian method (starting from the best
  run, repeated until the assignment is stable); the report gives the lowest cluster's mean
  silhouette (cosine distance) and the mean over all points. Unlike NMFk, the runs differ by
  their random start only, not by perturbed copies of X;
* **held-out error** (the criterion): each run ``r`` hides its own seeded ``heldout_fraction``
  of the entries, the same for every k (the runs are paired across k), is fitted on the rest,
  and is scored by ``||(X - W H)_hidden|| / ||X_hidden||`` on its hidden entries. As in k-fold
  cross-validation, up to ``1 / heldout_fraction`` runs hide disjoint folds (more runs start
  another, independent, set of folds). The hidden
  entries are never stored: each panel task generates its panel's entries of every run from
  ``(seed, run, block of rows)`` (:mod:`dnmf.heldout`). For sparse X (CSR) they are a fraction
  of the stored entries plus a sample of about as many zeros (as recommender systems are
  evaluated), so the survey stays O(stored entries). The R held-out fits of a k are batched
  restarts that share every read of X. For the Frobenius loss the masked fit is EM imputation
  with the fit's solver (HALS by default; see :func:`dnmf.stacked_kernels.stacked_panel_step`),
  which converges far faster than masked multiplicative updates: with those, the
  few-tenths-of-a-percent differences between ranks just above the true one drown in
  optimisation error. Other losses use multiplicative updates on each run's kept entries
  (dense X only).

**The recommended k** follows the *one-standard-error rule* (Breiman et al. 1984; Hastie,
Tibshirani & Friedman, *The Elements of Statistical Learning*, 7.10): the smallest k whose mean
held-out error over the R runs is at most the minimum mean plus that minimum's standard error
``sd / sqrt(R)`` (``rule = "one_standard_error"``, ``criterion = "heldout_error"``). Too small a
k misses structure; beyond the true k the held-out error flattens and wanders with noise that
does not carry over to hidden entries, and the bare minimum of such a curve can overfit (with
one shared held-out set and the best run's error, a planted k = 7 with an offset gave k = 9
in one seed of ten; ``benchmarks/rank.py`` measures the hit rate). Where the recommendation
is an end of the surveyed range, the report warns (``warnings``): widen the range.

The other criteria are reported as evidence: where they disagree (nested structure, e.g. four
groups of two similar components, where consensus and the elbow prefer the four strong groups
and the held-out error the eight components), the report shows it
(:meth:`RankReport.disagreements`, the summary's last line) rather than hiding it, and the
recommendation follows the held-out error.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from dnmf.aliases import ClientLike, MatrixLike, SchedulerLike
from dnmf.errors import InputError
from dnmf.heldout import HeldoutSets, heldout_panel_error, panel_stats
from dnmf.io.overlap import resolved_locations
from dnmf.io.remote import uses_storage_options
from dnmf.spec import resolve_beta

#: The criteria of a report, in the order of its table and plots.
CRITERIA = ("relative_error", "cophenetic", "dispersion", "silhouette", "heldout_error")
#: The files :meth:`RankReport.plot` writes.
PLOT_FILES = (*(f"rank-{name}.png" for name in CRITERIA), "rank-criteria.png")
#: Which way is better for each criterion.
HIGHER_IS_BETTER = {"relative_error": False, "cophenetic": True, "dispersion": True,
                    "silhouette": True, "heldout_error": False}
#: Features in the consensus matrix at most (a seeded sample beyond): its memory is the square.
MAX_CONSENSUS_FEATURES = 2000
#: The rule that picks the recommended k from the held-out error, and what each rule means.
RULE = "one_standard_error"
RULES = {"one_standard_error": "the smallest k whose mean held-out error over the runs is "
                               "within one standard error of the minimum",
         "minimum": "the k of the lowest held-out error (reports written before the "
                    "one-standard-error rule)"}
#: Sparse X: hidden zeros sampled per hidden stored entry (about; see dnmf.heldout).
ZEROS_PER_HIDDEN = 1.0
#: In-process, the held-out fits split X into more panels, none below this (task overhead).
HELDOUT_MIN_PANEL_BYTES = 4 * 2**20
#: Parameters :func:`select_rank` sets itself and refuses in ``fit_kwargs``.
_RESERVED = ("n_restarts", "random_state", "mask", "mask_var", "out", "resume", "overwrite",
             "checkpoint_every", "callback", "W_init", "H_init", "on_plan")


# ---------------------------------------------------------------------------------------------
# Criteria (pure numpy / scipy)
# ---------------------------------------------------------------------------------------------


def feature_labels(H: np.ndarray, W_norms: np.ndarray | None = None) -> np.ndarray:
    """The component each feature belongs to: ``argmax_j ||W_j|| H_jf`` (one run's H)."""
    H = np.asarray(H, dtype=np.float64)
    if W_norms is not None:
        H = H * np.asarray(W_norms, dtype=np.float64)[:, None]
    return np.argmax(H, axis=0)


def consensus_matrix(labels: np.ndarray) -> np.ndarray:
    """``C_ij``: the fraction of runs (rows of ``labels``, shape (runs, n)) putting items i and
    j in the same cluster."""
    labels = np.asarray(labels)
    C = np.zeros((labels.shape[1], labels.shape[1]))
    for run in labels:
        C += run[:, None] == run[None, :]
    return C / labels.shape[0]


def cophenetic_correlation(C: np.ndarray) -> float:
    """Pearson correlation between ``1 - C`` and the cophenetic distances of its average-linkage
    tree (Brunet et al. 2004). 1 when every pair is always or never together."""
    from scipy.cluster.hierarchy import cophenet, linkage
    from scipy.spatial.distance import squareform

    D = squareform(np.clip(1.0 - C, 0.0, 1.0), checks=False)
    if D.size == 0 or np.ptp(D) == 0.0:
        return 1.0
    if np.all((D == 0.0) | (D == 1.0)):
        return 1.0  # a perfect partition: the tree reproduces the distances exactly
    coph, _ = cophenet(linkage(D, method="average"), D)
    return float(coph)


def dispersion(C: np.ndarray) -> float:
    """Kim & Park (2007): ``mean(4 (C_ij - 1/2)^2)``, 1 for a consensus of zeros and ones."""
    return float(np.mean(4.0 * (np.asarray(C) - 0.5) ** 2))


def nmfk_silhouette(Hs: np.ndarray, *, reference: int = 0,
                    max_rounds: int = 20) -> tuple[float, float]:
    """``(lowest cluster's mean silhouette, mean silhouette)`` of the runs' components.

    The ``runs x k`` rows of ``Hs`` (shape (runs, k, n)), scaled to unit norm, are clustered
    into k clusters with one component of each run in each cluster: every run is matched to the
    cluster centroids by the Hungarian method, the centroids start at run ``reference`` and are
    recomputed until the assignment is stable (NMFk's clustering). Silhouettes use the cosine
    distance. NaN for k = 1 (a single cluster has no silhouette).
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import silhouette_samples

    Hs = np.asarray(Hs, dtype=np.float64)
    runs, k, _ = Hs.shape
    if k < 2:
        return float("nan"), float("nan")
    P = Hs / np.maximum(np.linalg.norm(Hs, axis=2, keepdims=True), 1e-300)
    centroids = P[reference].copy()
    assignment = np.full((runs, k), -1)
    for _ in range(max_rounds):
        new = np.empty_like(assignment)
        for r in range(runs):
            rows, cols = linear_sum_assignment(-(P[r] @ centroids.T))
            new[r, rows] = cols
        if np.array_equal(new, assignment):
            break
        assignment = new
        for c in range(k):
            members = P[assignment == c]
            mean = members.mean(axis=0)
            centroids[c] = mean / max(float(np.linalg.norm(mean)), 1e-300)
    points = P.reshape(runs * k, -1)
    labels = assignment.reshape(-1)
    if runs == 1:  # singleton clusters: silhouette 0 by convention (scikit-learn's)
        return 0.0, 0.0
    s = silhouette_samples(points, labels, metric="cosine")
    per_cluster = [float(s[labels == c].mean()) for c in range(k)]
    return float(min(per_cluster)), float(s.mean())


def elbow(ks: Sequence[int], values: Sequence[float]) -> int:
    """The k farthest from the chord joining the first and last points of ``values`` over
    ``ks``, both axes scaled to [0, 1]; the first k when there are fewer than three."""
    x = np.asarray(ks, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if len(x) < 3 or not np.all(np.isfinite(y)):
        return int(ks[0])
    xs = (x - x[0]) / (x[-1] - x[0])
    span = y.max() - y.min()
    ys = (y - y.min()) / span if span > 0 else np.zeros_like(y)
    dx, dy = xs[-1] - xs[0], ys[-1] - ys[0]
    distance = np.abs(dy * (xs - xs[0]) - dx * (ys - ys[0])) / math.hypot(dx, dy)
    return int(ks[int(np.argmax(distance))])


# ---------------------------------------------------------------------------------------------
# Held-out sets (generated in the panel tasks, see dnmf.heldout) and the one-standard-error rule
# ---------------------------------------------------------------------------------------------


def _observed_block(sets: HeldoutSets, run: int, start: int, stop: int, col_start: int,
                    col_stop: int) -> np.ndarray:
    ok = sets.panel(start, stop).observed(run, np.empty((stop - start, 0)))
    return ok[:, col_start:col_stop]


def heldout_mask(shape: tuple[int, int], chunks: tuple[tuple[int, ...], tuple[int, ...]], *,
                 fraction: float, seed: int, run: int = 0) -> da.Array:
    """A lazy boolean dask array, True where run ``run`` of a survey of dense X fits an entry
    and False for its seeded random ``fraction`` held out (a fold: runs ``0 .. 1/fraction - 1``
    hide disjoint ones; see :mod:`dnmf.heldout`); each chunk is generated on its own, and the
    mask does not depend on the chunking. The survey itself never builds it: its panel tasks
    generate their entries (:func:`heldout_sets`)."""
    sets = HeldoutSets(seed=int(seed), runs=int(run) + 1, fraction=float(fraction),
                       n_features=int(shape[1]))
    row_starts = np.cumsum((0, *chunks[0][:-1]))
    col_starts = np.cumsum((0, *chunks[1][:-1]))
    name = f"dnmf-heldout-mask-{tokenize(tuple(shape), chunks, fraction, seed, run)}"
    layer = {
        (name, i, j): (_observed_block, sets, int(run), int(rs), int(rs + r), int(cs),
                       int(cs + c))
        for i, (rs, r) in enumerate(zip(row_starts, chunks[0], strict=True))
        for j, (cs, c) in enumerate(zip(col_starts, chunks[1], strict=True))
    }
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return da.Array(graph, name, chunks=chunks, dtype=bool)


def heldout_sets(chunks: tuple[tuple[int, ...], tuple[int, ...]], sets: HeldoutSets) -> da.Array:
    """The survey's held-out sets as a lazy array of X's shape and row panels (``chunks``, one
    column chunk) whose blocks are :class:`dnmf.heldout.HeldoutPanel` recipes, not arrays: a
    panel task that receives one (as the mask of :func:`dnmf.pipeline.run`) generates the
    hidden entries of every run from its panel of X. Never compute it as an array."""
    if len(chunks[1]) != 1:
        raise ValueError(f"held-out sets need row panels (one column chunk); got {chunks[1]}")
    starts = np.cumsum((0, *chunks[0][:-1]))
    name = f"dnmf-heldout-sets-{tokenize(chunks, sets)}"
    layer = {(name, i, 0): (sets.panel, int(s), int(s + r))
             for i, (s, r) in enumerate(zip(starts, chunks[0], strict=True))}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return da.Array(graph, name, chunks=chunks, dtype=bool)


def mean_and_standard_error(runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``runs`` (ks x runs): the mean of its finite values and their standard
    error ``std(ddof=1) / sqrt(count)`` (NaN with fewer than two)."""
    runs = np.asarray(runs, dtype=np.float64)
    ok = np.isfinite(runs)
    count = ok.sum(axis=1)
    mean = np.where(count > 0, np.where(ok, runs, 0.0).sum(axis=1) / np.maximum(count, 1),
                    np.nan)
    deviation = np.where(ok, runs - mean[:, None], 0.0)
    variance = np.square(deviation).sum(axis=1) / np.maximum(count - 1, 1)
    return mean, np.where(count > 1, np.sqrt(variance / np.maximum(count, 1)), np.nan)


def one_standard_error(ks: Sequence[int], mean: Sequence[float],
                       se: Sequence[float]) -> tuple[int, int, float]:
    """``(recommended k, k of the minimum, threshold)`` by the one-standard-error rule: the
    smallest k whose mean held-out error is at most the minimum mean plus the standard error
    at the minimum (Breiman et al., *Classification and Regression Trees*, 1984; Hastie,
    Tibshirani & Friedman, *The Elements of Statistical Learning*, 2nd ed., 7.10). NaN means
    are skipped; a NaN standard error (one run) counts as 0, which leaves the minimum."""
    ks = np.asarray(ks)
    mean = np.asarray(mean, dtype=np.float64)
    se = np.asarray(se, dtype=np.float64)
    if not np.any(np.isfinite(mean)):
        raise InputError("no held-out error is finite — X has too many missing values for a "
                         "held-out error; raise heldout_fraction")
    i_min = int(np.nanargmin(mean))
    threshold = float(mean[i_min] + (se[i_min] if np.isfinite(se[i_min]) else 0.0))
    within = np.flatnonzero(np.isfinite(mean) & (mean <= threshold))
    return int(ks[within[0]]), int(ks[i_min]), threshold


def edge_warnings(ks: Sequence[int], recommended: int, shape: tuple[int, int]) -> list[str]:
    """What to say when the recommendation sits at an end of the surveyed range (an end that
    could be widened: not k = 1, not k = min(shape))."""
    ks = sorted(int(k) for k in ks)
    if len(ks) == 1:
        return [f"only k = {ks[0]} was surveyed: the recommendation compares nothing — give a "
                "range, e.g. --ks 2:10"]
    out = []
    if recommended == ks[-1] and ks[-1] < min(shape):
        out.append(f"recommended k is the largest surveyed: widen --ks (the held-out error "
                   f"still falls at k = {ks[-1]}; try up to {min(2 * ks[-1], min(shape))})")
    if recommended == ks[0] and ks[0] > 1:
        out.append(f"recommended k is the smallest surveyed: widen --ks (nothing below "
                   f"k = {ks[0]} was tried; try from {max(1, ks[0] // 2)})")
    return out


@dataclass
class _Survey:
    """What every k's held-out fits share: the stats of X (one pass) and the sets."""

    sets: HeldoutSets | None = None
    sq_norm: float = 0.0
    x_mean: float = 0.0


def _heldout_plan(plan: Any, source: Any, columns: int, ctx: Any,
                  fit_kwargs: dict[str, Any]) -> Any:
    """The full fit's chunk plan, or, in-process with fewer than two panels per thread, the
    same with smaller panels (of at least :data:`HELDOUT_MIN_PANEL_BYTES`): the held-out fits'
    work per entry (their hidden entries, the imputation) is element-wise numpy that BLAS
    threads do not share, so the panels must (on a cluster, and for sparse X, the plan has
    them already). Their sets do not depend on the panels."""
    from dnmf import pipeline

    threads = ctx.n_workers * ctx.threads_per_worker
    x_bytes = source.shape[0] * source.shape[1] * np.dtype(source.dtype).itemsize
    cap = max(HELDOUT_MIN_PANEL_BYTES, x_bytes // (2 * threads))
    if (ctx.is_distributed or threads < 2 or plan.is_2d or getattr(source, "sparse", False)
            or plan.n_panels >= 2 * threads or cap >= x_bytes):
        return plan
    given = fit_kwargs.get("max_panel_bytes")
    return pipeline.plan_for(source, columns, ctx, fit_kwargs.get("persist_x", "auto"),
                             min(cap, given) if given else cap,
                             fit_kwargs.get("min_panel_bytes"), fit_kwargs.get("scheme", "auto"),
                             fit_kwargs.get("persist_w", "auto"))


def _heldout_fits(X: Any, var: str | None, source: Any, plan: Any, survey: _Survey, k: int, *,
                  n_runs: int, heldout_fraction: float, seed: int, k_seed: int, ctx: Any,
                  stack: contextlib.ExitStack, max_iter: int, tol: float, solver: str,
                  beta: float, callback: Callable[[Any], None],
                  fit_kwargs: dict[str, Any]) -> tuple[np.ndarray, int]:
    """``(held-out error of each run, passes)`` of rank k: ``n_runs`` fits batched as
    restarts (:func:`dnmf.pipeline.run`: one read of X per iteration for all), run ``r``
    missing its own held-out set, then one pass for each run's error on its hidden entries.

    In the row panels of the full fit's chunk plan (same stacked width; split further
    in-process, see :func:`_heldout_plan`). Frobenius: EM
    imputation with the fit's solver (``impute=True``) instead of masked multiplicative
    updates, which converge too slowly for the small differences of held-out error between
    ranks near the true one (planted k = 8: after 400 MU iterations the minimum moved to 9-11
    in two of three seeds, with EM-HALS it is at 8 for all). Other losses: multiplicative
    updates, each run on its own kept entries.
    """
    from dnmf import graph, pipeline
    from dnmf.spec import resolve

    spec = resolve(k, solver=solver if beta == 2.0 else "mu",
                   beta_loss=fit_kwargs.get("beta_loss", "frobenius"), init="random",
                   random_state=k_seed, n_restarts=n_runs, max_iter=max_iter, tol=tol,
                   alpha_W=fit_kwargs.get("alpha_W", 0.0),
                   alpha_H=fit_kwargs.get("alpha_H", "same"),
                   l1_ratio=fit_kwargs.get("l1_ratio", 0.0), checkpoint_every=0,
                   w_sum_to_one=bool(fit_kwargs.get("w_sum_to_one", False)))
    plan = _heldout_plan(plan, source, spec.columns, ctx, fit_kwargs)
    Xp = pipeline.planned_input(X, var, fit_kwargs.get("dtype"), source, plan, ctx, stack)
    if survey.sets is None:  # the first k: one pass for the stats, then the sets' recipe
        (stats,) = ctx.compute(graph.map_reduce_panels(Xp, panel_stats, name="dnmf-rank-stats"))
        sq, total, count, nnz = stats
        n, m = source.shape
        zero_rate = 0.0
        if getattr(source, "sparse", False):
            zeros = max(n * m - int(nnz), 1)
            zero_rate = min(float(heldout_fraction),
                            ZEROS_PER_HIDDEN * float(heldout_fraction) * int(nnz) / zeros)
        survey.sets = HeldoutSets(seed=int(seed), runs=int(n_runs),
                                  fraction=float(heldout_fraction), n_features=int(m),
                                  zero_rate=zero_rate)
        survey.sq_norm, survey.x_mean = float(sq), float(total) / max(int(count), 1)
    masks = heldout_sets(Xp.chunks, survey.sets)
    opened = pipeline.Opened(spec=spec, source=source, mask=None, checkpoint=None, notes=[])
    prepared = pipeline.Prepared(plan=plan, X=Xp, mask=masks, report=None,
                                 x_mean=survey.x_mean, w_scratch=None)
    start = pipeline.starting_point(spec, opened, prepared, None)
    state = pipeline.run(spec, opened, prepared, start, ctx, callback=callback,
                         impute=beta == 2.0, sq_norm=survey.sq_norm)
    func = functools.partial(heldout_panel_error, restarts=n_runs)
    H = np.asarray(state.H, dtype=np.float64)
    part = graph.panel_map_reduce(Xp, func, prefix="dnmf-heldout-error",
                                  token=tokenize(Xp.name, state.W.name, masks.name, H),
                                  W=state.W, mask=masks, consts=(H,))
    ((residual, norm),) = ctx.compute(part)
    with np.errstate(divide="ignore", invalid="ignore"):
        errors = np.where(norm > 0, np.sqrt(residual / np.where(norm > 0, norm, 1.0)), np.nan)
    return errors, int(state.n_iter)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclass
class RankReport:
    """The outcome of :func:`select_rank`: criteria per k and the recommended k.

    Attributes
    ----------
    ks : ndarray of int
    relative_error : ndarray
        ``||X - W H||_F / ||X||_F`` of the best run for each k.
    relative_error_spread : ndarray
        Largest minus smallest relative error over the runs.
    relative_error_runs : ndarray of shape (len(ks), n_runs)
    cophenetic, dispersion : ndarray
        Of the consensus matrix over (a sample of) the features.
    silhouette, silhouette_mean : ndarray
        Lowest cluster mean and overall mean silhouette of the runs' components (NMFk).
    heldout_error : ndarray
        Mean over the runs of ``||(X - W H)_hidden|| / ||X_hidden||``, each run on its own
        held-out entries (reports written before the one-standard-error rule: the best run's).
    n_iter, heldout_n_iter : ndarray of int
        Passes over X of each k's batched fit (the slowest run's iterations).
    recommended_k : int
        By ``rule`` on ``criterion``: the smallest k whose mean held-out error is within one
        standard error of the minimum.
    criterion : str
        ``"heldout_error"``.
    elbow_k : int
        The elbow of the relative error curve (see :func:`elbow`).
    n_runs, heldout_fraction, seed, n_consensus_features, wall_time_s
    heldout_error_runs : ndarray of shape (len(ks), n_runs)
        Each run's held-out error (run ``r`` hides the same entries for every k).
    heldout_error_se : ndarray
        Standard error of ``heldout_error``: ``std(runs, ddof=1) / sqrt(n_runs)`` (NaN for one
        run).
    rule : str
        ``"one_standard_error"`` (``"minimum"`` for reports written before it).
    heldout_min_k : int
        The k of the lowest mean held-out error.
    heldout_threshold : float
        The minimum plus its standard error: ``recommended_k`` is the smallest k at or below.
    warnings : list of str
        E.g. the recommendation is at an end of the surveyed range.
    """

    ks: np.ndarray
    relative_error: np.ndarray
    relative_error_spread: np.ndarray
    relative_error_runs: np.ndarray
    cophenetic: np.ndarray
    dispersion: np.ndarray
    silhouette: np.ndarray
    silhouette_mean: np.ndarray
    heldout_error: np.ndarray
    n_iter: np.ndarray
    heldout_n_iter: np.ndarray
    recommended_k: int
    criterion: str
    elbow_k: int
    n_runs: int
    heldout_fraction: float
    seed: int
    n_consensus_features: int
    wall_time_s: float = 0.0
    attrs: dict[str, Any] = field(default_factory=dict)
    heldout_error_runs: np.ndarray | None = None
    heldout_error_se: np.ndarray | None = None
    rule: str = RULE
    heldout_min_k: int | None = None
    heldout_threshold: float | None = None
    warnings: list[str] = field(default_factory=list)

    #: Where the surveyed matrix lives, resolved when it was surveyed (real paths, URLs):
    #: what :meth:`save` and :meth:`plot` may not write over. A report read back from disk
    #: has its input's path as given instead.
    input_paths: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = (len(self.ks), int(np.shape(self.relative_error_runs)[1])
                 if np.ndim(self.relative_error_runs) == 2 else int(self.n_runs))
        if self.heldout_error_runs is None:
            self.heldout_error_runs = np.full(shape, np.nan)
        if self.heldout_error_se is None:
            self.heldout_error_se = np.full(len(self.ks), np.nan)
        if self.heldout_min_k is None:
            finite = np.isfinite(np.asarray(self.heldout_error, dtype=np.float64))
            self.heldout_min_k = int(self.ks[int(np.nanargmin(self.heldout_error))]
                                     if finite.any() else self.recommended_k)
        if self.heldout_threshold is None:
            i = int(np.flatnonzero(np.asarray(self.ks) == self.heldout_min_k)[0])
            self.heldout_threshold = float(self.heldout_error[i])

    @property
    def input_locations(self) -> tuple[str, ...]:
        if self.input_paths:
            return self.input_paths
        described = self.attrs.get("input")
        path = described.get("path") if isinstance(described, dict) else None
        return (path,) if path else ()

    def criterion_values(self, name: str) -> np.ndarray:
        if name not in CRITERIA:
            raise InputError(f"unknown criterion {name!r}: choose one of {', '.join(CRITERIA)}")
        return np.asarray(getattr(self, name), dtype=np.float64)

    def best_by(self, name: str) -> int | None:
        """The k a criterion alone would pick (its best value; the first on ties), or None
        when it has no finite value."""
        values = self.criterion_values(name)
        if not np.any(np.isfinite(values)):
            return None
        pick = np.nanargmax(values) if HIGHER_IS_BETTER[name] else np.nanargmin(values)
        return int(self.ks[int(pick)])

    def disagreements(self) -> dict[str, int]:
        """The other criteria's picks that differ from the recommendation: the consensus
        criteria's best k and the elbow of the relative error (evidence, not the rule)."""
        picks = {name: self.best_by(name) for name in ("cophenetic", "dispersion",
                                                        "silhouette")}
        picks["elbow"] = int(self.elbow_k)
        return {name: k for name, k in picks.items()
                if k is not None and k != self.recommended_k}

    def to_dataset(self) -> Any:
        """An :class:`xarray.Dataset` with every criterion over dim ``k`` (and ``run``)."""
        import xarray as xr

        from dnmf._version import __version__
        from dnmf.io.result_store import jsonable

        def over_k(values: np.ndarray, doc: str) -> Any:
            return ("k", np.asarray(values), {"description": doc})

        ds = xr.Dataset(
            {
                "relative_error": over_k(self.relative_error,
                                         "||X - WH||_F / ||X||_F of the best run"),
                "relative_error_spread": over_k(self.relative_error_spread,
                                                "max - min relative error over the runs"),
                "relative_error_runs": (("k", "run"), np.asarray(self.relative_error_runs),
                                        {"description": "relative error of every run"}),
                "cophenetic": over_k(self.cophenetic,
                                     "cophenetic correlation of the feature consensus matrix"),
                "dispersion": over_k(self.dispersion,
                                     "dispersion of the feature consensus matrix"),
                "silhouette": over_k(self.silhouette,
                                     "lowest cluster mean silhouette of the runs' components"),
                "silhouette_mean": over_k(self.silhouette_mean,
                                          "mean silhouette of the runs' components"),
                "heldout_error": over_k(self.heldout_error,
                                        "mean over the runs of ||(X - WH)_hidden|| / "
                                        "||X_hidden||, each run on its own hidden entries"),
                "heldout_error_se": over_k(self.heldout_error_se,
                                           "standard error of heldout_error: std over the "
                                           "runs (ddof=1) / sqrt(n_runs)"),
                "heldout_error_runs": (("k", "run"), np.asarray(self.heldout_error_runs),
                                       {"description": "held-out error of every run (run r "
                                        "hides the same entries for every k)"}),
                "n_iter": over_k(self.n_iter, "passes over X of the batched fit"),
                "heldout_n_iter": over_k(self.heldout_n_iter,
                                         "passes over X of the batched masked fit"),
            },
            coords={"k": np.asarray(self.ks, dtype=np.int64),
                    "run": np.arange(self.relative_error_runs.shape[1])},
        )
        ds.attrs.update(jsonable({
            **self.attrs,
            "recommended_k": int(self.recommended_k), "criterion": self.criterion,
            "rule": self.rule, "rule_description": RULES.get(self.rule, self.rule),
            "heldout_min_k": int(self.heldout_min_k),  # type: ignore[arg-type]
            "heldout_min_error": float(np.nanmin(self.heldout_error)),
            "heldout_threshold": float(self.heldout_threshold),  # type: ignore[arg-type]
            "warnings": list(self.warnings),
            "elbow_k": int(self.elbow_k), "n_runs": int(self.n_runs),
            "heldout_fraction": float(self.heldout_fraction), "seed": int(self.seed),
            "n_consensus_features": int(self.n_consensus_features),
            "wall_time_s": float(self.wall_time_s), "dnmf_version": __version__,
        }))
        return ds

    @classmethod
    def from_dataset(cls, ds: Any) -> RankReport:
        """The report back from :meth:`to_dataset` (e.g. ``xr.open_zarr(path)``); reports
        written before the one-standard-error rule read with ``rule="minimum"``."""
        a = dict(ds.attrs)
        known = ("recommended_k", "criterion", "elbow_k", "n_runs", "heldout_fraction", "seed",
                 "n_consensus_features", "wall_time_s", "status", "dnmf_version", "rule",
                 "rule_description", "heldout_min_k", "heldout_min_error", "heldout_threshold",
                 "warnings")

        def values(name: str) -> np.ndarray | None:
            return np.asarray(ds[name].values) if name in ds.variables else None

        return cls(
            ks=values("k"), relative_error=values("relative_error"),
            relative_error_spread=values("relative_error_spread"),
            relative_error_runs=values("relative_error_runs"), cophenetic=values("cophenetic"),
            dispersion=values("dispersion"), silhouette=values("silhouette"),
            silhouette_mean=values("silhouette_mean"), heldout_error=values("heldout_error"),
            n_iter=values("n_iter"), heldout_n_iter=values("heldout_n_iter"),
            recommended_k=int(a["recommended_k"]), criterion=str(a["criterion"]),
            elbow_k=int(a["elbow_k"]), n_runs=int(a["n_runs"]),
            heldout_fraction=float(a["heldout_fraction"]), seed=int(a["seed"]),
            n_consensus_features=int(a["n_consensus_features"]),
            wall_time_s=float(a.get("wall_time_s") or 0.0),
            attrs={k: v for k, v in a.items() if k not in known},
            heldout_error_runs=values("heldout_error_runs"),
            heldout_error_se=values("heldout_error_se"),
            rule=str(a.get("rule", "minimum")),
            heldout_min_k=None if a.get("heldout_min_k") is None else int(a["heldout_min_k"]),
            heldout_threshold=(None if a.get("heldout_threshold") is None
                               else float(a["heldout_threshold"])),
            warnings=[str(w) for w in a.get("warnings") or []],
        )

    @classmethod
    def open(cls, path: str | os.PathLike) -> RankReport:
        """A report saved by :meth:`save`."""
        import xarray as xr

        with xr.open_zarr(os.fspath(path)) as ds:
            return cls.from_dataset(ds.load())

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> str:
        """Write the report as a Zarr store (xarray layout), atomically: nothing appears at
        ``path`` unless the whole store was written. Returns the path.

        Raises
        ------
        OutputError
            ``path`` exists (without ``overwrite``), or is, contains or lies inside the
            surveyed input (even with ``overwrite``).
        """
        import zarr

        from dnmf.io.overlap import check_outputs_are_not_inputs
        from dnmf.io.result_store import consolidate, write_atomically

        check_outputs_are_not_inputs({"report": path}, {"the input": self.input_locations})
        ds = self.to_dataset()

        def write(store: str) -> None:
            ds.attrs["status"] = "running"
            ds.to_zarr(store, mode="w", consolidated=False, zarr_format=3)
            zarr.open_group(store, mode="r+").attrs["status"] = "complete"
            consolidate(store)

        return write_atomically(path, write, overwrite=overwrite)

    def as_json_dict(self, *, report: str | os.PathLike | None = None,
                     plots: Iterable[str | os.PathLike] = ()) -> dict[str, Any]:
        """The report as plain JSON values (``dnmf rank --json``): snake_case keys, numbers as
        numbers, NaN as None (``json.dumps`` of it is strict JSON); ``report`` and ``plots``
        are where the CLI wrote them."""
        from dnmf.io.result_store import jsonable

        return jsonable({
            "recommended_k": int(self.recommended_k),
            "criterion": self.criterion,
            "rule": self.rule,
            "warnings": list(self.warnings),
            "ks": np.asarray(self.ks),
            "heldout_error": np.asarray(self.heldout_error),
            "heldout_error_se": np.asarray(self.heldout_error_se),
            "heldout_error_runs": np.asarray(self.heldout_error_runs),
            "heldout_min_k": self.heldout_min_k,
            "heldout_threshold": self.heldout_threshold,
            "relative_error": np.asarray(self.relative_error),
            "relative_error_spread": np.asarray(self.relative_error_spread),
            "relative_error_runs": np.asarray(self.relative_error_runs),
            "cophenetic": np.asarray(self.cophenetic),
            "dispersion": np.asarray(self.dispersion),
            "silhouette": np.asarray(self.silhouette),
            "silhouette_mean": np.asarray(self.silhouette_mean),
            "n_iter": np.asarray(self.n_iter),
            "heldout_n_iter": np.asarray(self.heldout_n_iter),
            "elbow_k": int(self.elbow_k),
            "disagreements": self.disagreements(),
            "n_runs": int(self.n_runs),
            "heldout_fraction": float(self.heldout_fraction),
            "seed": int(self.seed),
            "n_consensus_features": int(self.n_consensus_features),
            "wall_time_s": float(self.wall_time_s),
            "report": None if report is None else os.fspath(report),
            "plots": [os.fspath(p) for p in plots],
        })

    def summary(self) -> str:
        """A text table: one row per k, the recommended k marked."""
        head = (f"{'k':>4}  {'rel.err':>9}  {'spread':>8}  {'cophenetic':>10}  "
                f"{'dispersion':>10}  {'silhouette':>10}  {'held-out':>9}  {'± SE':>8}")
        lines = [f"rank survey: {self.n_runs} runs per k, {self.heldout_fraction:.0%} of the "
                 f"entries held out (each run its own), seed {self.seed}", head,
                 "-" * len(head)]
        se = np.asarray(self.heldout_error_se, dtype=np.float64)
        for i, k in enumerate(self.ks):
            mark = "  <- recommended" if k == self.recommended_k else ""
            if k == self.heldout_min_k and k != self.recommended_k:
                mark += "  (held-out minimum)"
            if k == self.elbow_k:
                mark += "  (elbow)"
            lines.append(
                f"{int(k):>4}  {self.relative_error[i]:>9.5f}  "
                f"{self.relative_error_spread[i]:>8.2e}  {self.cophenetic[i]:>10.4f}  "
                f"{self.dispersion[i]:>10.4f}  {self.silhouette[i]:>10.4f}  "
                f"{self.heldout_error[i]:>9.5f}  {se[i]:>8.2e}{mark}")
        if self.rule == RULE:
            lines.append(f"criterion: {self.criterion}, one-standard-error rule: the smallest k "
                         f"within {self.heldout_threshold:.5f} (the minimum at k = "
                         f"{self.heldout_min_k} plus its standard error)")
        else:
            lines.append(f"criterion: {self.criterion} ({self.rule})")
        others = self.disagreements()
        lines.append(f"elbow of the relative error: k = {self.elbow_k}" + (
            "; the recommendation follows the held-out error, where "
            + ", ".join(f"{name} picks k = {k}" for name, k in others.items()) if others
            else "; the other criteria agree"))
        return "\n".join(lines)


    def plot(self, directory: str | os.PathLike) -> list[Path]:
        """PNG figures in ``directory``: ``rank-<criterion>.png`` for each criterion against k,
        and ``rank-criteria.png`` with all of them; the recommended k is marked. Returns the
        paths. Uses matplotlib's Agg canvas (no display, no global backend change).

        Raises ``OutputError`` when ``directory`` is or lies inside the surveyed input, or one
        of the files would be the input."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from dnmf.io.overlap import check_plots_are_not_inputs

        check_plots_are_not_inputs(directory, PLOT_FILES, {"the input": self.input_locations})

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        titles = {"relative_error": "relative error (best run)",
                  "cophenetic": "cophenetic correlation", "dispersion": "dispersion",
                  "silhouette": "silhouette (lowest cluster)",
                  "heldout_error": "held-out error (mean over runs)"}
        paths = []

        def draw(ax: Any, name: str) -> None:
            ks = np.asarray(self.ks)
            y = self.criterion_values(name)
            ax.plot(ks, y, "o-", color="C0")
            se = np.asarray(self.heldout_error_se, dtype=np.float64)
            if name == "heldout_error" and np.any(np.isfinite(se)):
                ax.errorbar(ks, y, yerr=np.where(np.isfinite(se), se, 0.0), fmt="none",
                            ecolor="C0", capsize=3, label="± 1 standard error")
                ax.axhline(float(self.heldout_threshold), color="0.5", ls=":",  # type: ignore[arg-type]
                           label="minimum + 1 SE")
            if name == "relative_error" and self.relative_error_runs.size:
                runs = np.asarray(self.relative_error_runs)
                ax.fill_between(ks, runs.min(axis=1), runs.max(axis=1), color="C0", alpha=0.2,
                                label="spread over runs")
                ax.axvline(self.elbow_k, color="0.5", ls=":", label=f"elbow k={self.elbow_k}")
            ax.axvline(self.recommended_k, color="C3", ls="--",
                       label=f"recommended k={self.recommended_k}")
            i = int(np.flatnonzero(ks == self.recommended_k)[0])
            if np.isfinite(y[i]):
                ax.plot([ks[i]], [y[i]], "o", color="C3", ms=9)
            ax.set_xlabel("k")
            ax.set_title(titles[name])
            ax.set_xticks(ks)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")

        for name in CRITERIA:
            fig = Figure(figsize=(5, 3.5), dpi=100)
            FigureCanvasAgg(fig)
            draw(fig.add_subplot(), name)
            fig.tight_layout()
            path = out / f"rank-{name}.png"
            fig.savefig(path)
            paths.append(path)
        fig = Figure(figsize=(15, 7), dpi=100)
        FigureCanvasAgg(fig)
        for i, name in enumerate(CRITERIA):
            draw(fig.add_subplot(2, 3, i + 1), name)
        rule = "one-standard-error rule" if self.rule == RULE else self.rule
        fig.suptitle(f"rank survey ({self.n_runs} runs per k): recommended k = "
                     f"{self.recommended_k} by {self.criterion} ({rule})")
        fig.tight_layout()
        path = out / "rank-criteria.png"
        fig.savefig(path)
        paths.append(path)
        return paths


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankStep:
    """Where a survey is, for progress callbacks: fitting ``k`` (all ``n_runs`` runs batched),
    stage ``"fit"`` or ``"heldout"``, at ``iteration``; ``done`` of ``total`` stages finished;
    ``eta_s`` from the time taken so far."""

    k: int
    stage: str
    n_runs: int
    iteration: int
    max_iter: int
    done: int
    total: int
    elapsed_s: float
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return min(1.0, (self.done + min(self.iteration / max(self.max_iter, 1), 1.0))
                   / max(self.total, 1))

    def describe(self) -> str:
        from dnmf.progress import format_eta

        eta = "" if self.eta_s is None else f"  ETA {format_eta(self.eta_s, 1)}"
        return (f"k={self.k:<3} {self.stage:<7} {self.n_runs} runs  iter {self.iteration:>4}/"
                f"{self.max_iter}  [{self.done}/{self.total} fits]{eta}")


class _Reporter:
    """Feeds a callable, or a rich ``Progress`` (a task advanced per fit), with RankSteps."""

    def __init__(self, progress: Any, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        self.t0 = time.perf_counter()
        self.task = None
        if progress is not None and hasattr(progress, "add_task"):
            self.task = progress.add_task("rank survey", total=total)
        elif progress is not None and not callable(progress):
            raise InputError("progress must be a callable or a rich.progress.Progress; got "
                             f"{type(progress).__name__}")

    def callback(self, k: int, stage: str, n_runs: int) -> Callable[[Any], None]:
        def report(info: Any) -> None:
            self.emit(k, stage, n_runs, info.iteration, info.max_iter)
        return report

    def emit(self, k: int, stage: str, n_runs: int, iteration: int, max_iter: int) -> None:
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.t0
        step = RankStep(k, stage, n_runs, iteration, max_iter, self.done, self.total, elapsed,
                        None)
        frac = step.fraction
        eta = elapsed * (1 - frac) / frac if frac > 0 else None
        step = RankStep(k, stage, n_runs, iteration, max_iter, self.done, self.total, elapsed,
                        eta)
        if self.task is not None:
            self.progress.update(self.task, completed=frac * self.total,
                                 description=f"k={k} {stage} ({n_runs} runs)")
        else:
            self.progress(step)

    def finished(self, k: int, stage: str, n_runs: int, max_iter: int) -> None:
        self.done += 1
        self.emit(k, stage, n_runs, 0, max_iter)


# ---------------------------------------------------------------------------------------------
# The survey
# ---------------------------------------------------------------------------------------------


def _check_ks(ks: Iterable[int], shape: tuple[int, int]) -> list[int]:
    try:
        values = sorted({int(k) for k in ks})
    except (TypeError, ValueError):
        raise InputError(f"ks must be integers; got {ks!r}") from None
    if not values:
        raise InputError("ks is empty — give at least one rank, e.g. range(2, 11)")
    limit = min(shape)
    bad = [k for k in values if not 1 <= k <= limit]
    if bad:
        raise InputError(f"ranks {bad} are impossible for X of shape {tuple(shape)}: each k must "
                         f"be in 1..{limit}")
    return values


def _k_seed(seed: int, k: int) -> int:
    """The seed of the runs for rank k: independent of which other ks are surveyed."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1, dtype=np.uint32)[0])


def _check_survey(fit_kwargs: dict[str, Any], n_runs: Any, heldout_fraction: Any, seed: Any,
                  max_consensus_features: Any) -> None:
    """The survey's own parameters, before any work (the fits' are checked by their spec)."""
    reserved = sorted(set(fit_kwargs) & set(_RESERVED))
    if reserved:
        raise InputError(f"select_rank sets {', '.join(reserved)} itself — leave "
                         f"{'it' if len(reserved) == 1 else 'them'} out")
    if not isinstance(n_runs, numbers.Integral) or isinstance(n_runs, bool) or n_runs < 1:
        raise InputError(f"n_runs must be an integer >= 1; got {n_runs!r}")
    if not isinstance(heldout_fraction, numbers.Real) or not 0.0 < heldout_fraction <= 0.5:
        raise InputError(f"heldout_fraction must be in (0, 0.5]; got {heldout_fraction!r}")
    if not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"seed must be an integer >= 0; got {seed!r}")
    if not isinstance(max_consensus_features, numbers.Integral) or max_consensus_features < 2:
        raise InputError("max_consensus_features must be an integer >= 2; got "
                         f"{max_consensus_features!r}")


def _fit_criteria(fit: Any, sample: np.ndarray) -> dict[str, Any]:
    """The criteria of one k from its batched full fit: relative errors over the runs, the
    consensus of the runs' feature labels (on the ``sample`` of features), the silhouette."""
    assert fit.restart_H is not None and fit.restart_W_norms is not None
    labels = np.stack([feature_labels(H[:, sample], norms) for H, norms in
                       zip(fit.restart_H, fit.restart_W_norms, strict=True)])
    C = consensus_matrix(labels)
    sil_min, sil_mean = nmfk_silhouette(fit.restart_H, reference=fit.best_restart)
    runs = np.asarray(fit.restart_relative_errors)
    return {"relative_error": fit.relative_error,
            "relative_error_spread": float(runs.max() - runs.min()),
            "relative_error_runs": runs, "cophenetic": cophenetic_correlation(C),
            "dispersion": dispersion(C), "silhouette": sil_min, "silhouette_mean": sil_mean,
            "n_iter": max(fit.restart_n_iter)}


@uses_storage_options
def select_rank(
    X: MatrixLike,
    ks: Iterable[int] = range(2, 11),
    n_runs: int = 10,
    *,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    max_iter: int = 200,
    tol: float = 1e-4,
    heldout_max_iter: int | None = None,
    var: str | None = None,
    scheduler: SchedulerLike = "auto",
    client: ClientLike | None = None,
    workers: int | None = None,
    memory_limit: str | int | None = None,
    max_consensus_features: int = MAX_CONSENSUS_FEATURES,
    progress: Any = None,
    storage_options: dict[str, Any] | None = None,
    **fit_kwargs: Any,
) -> RankReport:
    """Survey the rank k of ``X ~= W H``: fit every k in ``ks`` ``n_runs`` times and report
    how well and how stably each k fits, and how well it predicts held-out entries.

    For each k: ``n_runs`` random starts batched into one fit (they share every read of X,
    see ``n_restarts`` of :func:`dnmf.factorize`) for the relative error, the consensus and the
    silhouette; ``n_runs`` more, batched the same way, run ``r`` fitted with its own seeded
    ``heldout_fraction`` of the entries hidden; and one pass for each run's error on its hidden
    entries. See :mod:`dnmf.rank` for the criteria. The recommended k is the smallest whose
    mean held-out error is within one standard error of the minimum; ``warnings`` says when it
    is an end of the surveyed range.

    Parameters
    ----------
    X : array-like, dask/zarr array, scipy.sparse matrix or path, shape (n_samples, n_features)
        Dense or sparse (CSR: the held-out entries are a fraction of the stored entries and a
        sample of about as many zeros; Frobenius loss only).
    ks : iterable of int
        Ranks to try (sorted, duplicates dropped).
    n_runs : int
        Runs per k (random starts, and held-out sets: the standard error of the held-out
        error comes from them, so give at least 3; one run gives none, and the rule then
        takes the minimum).
    heldout_fraction : float in (0, 0.5]
        Fraction of the entries (sparse X: of the stored entries) each run hides; run ``r``
        hides the same entries for every k.
    seed : int
        Seeds every run (each k's runs from ``SeedSequence([seed, k])``), the held-out sets and
        the feature sample of the consensus.
    max_iter, tol : int, float
        Of every fit (each run stops on its own ``tol``).
    heldout_max_iter : int, optional
        ``max_iter`` of the held-out fits; default ``2 * max_iter``.
    var, scheduler, client, workers, memory_limit
        As :func:`dnmf.factorize`; one scheduler (e.g. one LocalCluster) serves every fit.
    storage_options : dict, optional
        fsspec options (endpoint, credentials) of a URL ``X``; never stored or shown.
    max_consensus_features : int
        Features in the consensus matrix at most (a seeded sample beyond); its memory is
        ``8 * max_consensus_features^2`` bytes.
    progress : callable or rich.progress.Progress, optional
        Called with a :class:`RankStep` after every iteration of every fit (k, stage, runs,
        ETA), or a rich Progress to which a task "rank survey" is added and advanced.
    **fit_kwargs
        Passed to every :func:`dnmf.factorize` (``solver``, ``beta_loss``, ``dtype``,
        ``alpha_W``, ``persist_x``, ...). The held-out fits (Frobenius) run EM imputation
        with the same solver, in the full fit's row panels; for other losses (dense X only),
        multiplicative updates on each run's kept entries.

    Returns
    -------
    RankReport

    Examples
    --------
    >>> import numpy as np, dnmf
    >>> rng = np.random.default_rng(0)
    >>> X = rng.gamma(1.0, 1.0, (300, 4)) @ rng.gamma(1.0, 1.0, (4, 40))
    >>> X = np.maximum(X + 0.1 * rng.standard_normal(X.shape), 0)
    >>> report = dnmf.select_rank(X, ks=range(2, 7), n_runs=3, scheduler="threads")
    >>> report.recommended_k
    4
    """
    from dnmf import api
    from dnmf.cluster import execution_context
    from dnmf.io import open_matrix

    t_start = time.perf_counter()
    _check_survey(fit_kwargs, n_runs, heldout_fraction, seed, max_consensus_features)
    heldout_max_iter = heldout_max_iter or 2 * max_iter
    # where X lives, resolved now: the report's save() and plot() may not write over it
    input_paths = resolved_locations(X, var)
    source = open_matrix(X, var, dtype=fit_kwargs.get("dtype"))
    beta = resolve_beta(fit_kwargs.get("beta_loss", "frobenius"))
    sparse = bool(getattr(source, "sparse", False))
    if sparse and beta != 2.0:
        raise InputError(
            "the rank survey of sparse X fits its held-out entries by EM imputation, which "
            "needs the Frobenius loss — use beta_loss='frobenius' (--loss frobenius) for the "
            "survey, or densify X")
    ks_list = _check_ks(ks, source.shape)
    n_features = source.shape[1]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4,)))
    sample = (np.arange(n_features) if n_features <= max_consensus_features
              else np.sort(rng.choice(n_features, max_consensus_features, replace=False)))
    reporter = _Reporter(progress, 2 * len(ks_list))
    survey = _Survey()
    columns: dict[str, list[Any]] = {name: [] for name in (
        "relative_error", "relative_error_spread", "relative_error_runs", "cophenetic",
        "dispersion", "silhouette", "silhouette_mean", "heldout_error_runs", "n_iter",
        "heldout_n_iter")}
    with execution_context(scheduler, x_nbytes=source.nbytes, workers=workers,
                           memory_limit=memory_limit, client=client) as ctx:
        where: dict[str, Any] = ({"client": ctx.client} if ctx.client is not None
                                 else {"scheduler": ctx.kind})
        for k in ks_list:
            k_seed = _k_seed(seed, k)
            fit = api.factorize(X, k, var=var, n_restarts=n_runs, random_state=k_seed,
                                max_iter=max_iter, tol=tol,
                                callback=reporter.callback(k, "fit", n_runs), **where,
                                **fit_kwargs)
            reporter.finished(k, "fit", n_runs, max_iter)
            for name, value in _fit_criteria(fit, sample).items():
                columns[name].append(value)

            with contextlib.ExitStack() as stack, ctx.activate():
                held_errs, held_iter = _heldout_fits(
                    X, var, source, fit.plan, survey, k, n_runs=n_runs,
                    heldout_fraction=float(heldout_fraction), seed=int(seed), k_seed=k_seed,
                    ctx=ctx, stack=stack, max_iter=heldout_max_iter, tol=tol,
                    solver=fit.solver, beta=beta,
                    callback=reporter.callback(k, "heldout", n_runs), fit_kwargs=fit_kwargs)
            columns["heldout_error_runs"].append(held_errs)
            columns["heldout_n_iter"].append(held_iter)
            reporter.finished(k, "heldout", n_runs, heldout_max_iter)
    values = {name: np.asarray(v) for name, v in columns.items()}
    runs_err = values["heldout_error_runs"]
    mean, se = mean_and_standard_error(runs_err)
    recommended, min_k, threshold = one_standard_error(ks_list, mean, se)
    return RankReport(
        ks=np.asarray(ks_list), **values, heldout_error=mean, heldout_error_se=se,
        recommended_k=recommended, criterion="heldout_error", rule=RULE,
        heldout_min_k=min_k, heldout_threshold=threshold,
        warnings=edge_warnings(ks_list, recommended, source.shape),
        elbow_k=elbow(ks_list, values["relative_error"]),
        n_runs=int(n_runs), heldout_fraction=float(heldout_fraction), seed=int(seed),
        n_consensus_features=int(sample.size), wall_time_s=time.perf_counter() - t_start,
        input_paths=input_paths, attrs={
            "input": source.describe(), "max_iter": max_iter, "tol": tol,
            "heldout_max_iter": heldout_max_iter,
            "heldout_entries": ("stored entries and a sample of zeros (sparse X)" if sparse
                                else "all entries"),
            **({"heldout_zero_rate": survey.sets.zero_rate}
               if sparse and survey.sets is not None else {}),
            **{key: v for key, v in fit_kwargs.items() if isinstance(v, str | int | float)}},
    )


# ---------------------------------------------------------------------------------------------
# For the CLI: `dnmf rank INPUT --ks A:B --runs R -o REPORT.zarr [--plots DIR]`
# ---------------------------------------------------------------------------------------------


def parse_ks(spec: str) -> range:
    """``"A:B"`` (inclusive) as ``range(A, B + 1)``; a clear error otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(spec))
    if match is None:
        raise InputError(f"--ks {spec!r} is not a range: write A:B with integers A <= B, e.g. "
                         "2:10 (both ends included)")
    low, high = int(match.group(1)), int(match.group(2))
    if low < 1:
        raise InputError(f"--ks {spec!r} starts at {low}: ranks start at 1, e.g. 2:10")
    if high < low:
        raise InputError(f"--ks {spec!r} is empty ({low} > {high}): write the smaller rank "
                         f"first, e.g. {high}:{low}")
    return range(low, high + 1)


def run_rank_cli(
    input: Any,
    ks: str,
    runs: int = 10,
    out: str | os.PathLike | None = None,
    plots: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    var: str | None = None,
    scheduler: Any = "auto",
    workers: int | None = None,
    memory_limit: str | int | None = None,
    max_iter: int = 200,
    tol: float = 1e-4,
    heldout_fraction: float = 0.1,
    overwrite: bool = False,
    quiet: bool = False,
    json: bool = False,
    html: str | os.PathLike | None = None,
    stream: IO[str] | None = None,
    out_stream: IO[str] | None = None,
    **fit_kwargs: Any,
) -> RankReport:
    """What ``dnmf rank`` does: parse ``ks``, check the output before any work, survey, save,
    plot, and print the results.

    Results go to ``out_stream`` (stdout by default): the table, then the last line
    ``recommended k: N``; with ``json``, exactly one JSON object instead
    (:meth:`RankReport.as_json_dict` with the report's path and the plots) and nothing else.
    Progress and logs go to ``stream`` (stderr by default): a live bar with ETA on a terminal,
    a line per finished fit otherwise, nothing of it with ``quiet``; then ``report: PATH``,
    ``plot: PATH`` and ``warning: ...`` lines (warnings even with ``quiet``). With ``html``,
    a self-contained HTML report is written there too (:func:`dnmf.report.rank_report`).
    """
    import json as json_module
    import sys

    from dnmf.io.overlap import Stored, check_outputs_are_not_inputs, check_plots_are_not_inputs
    from dnmf.io.result_store import check_output
    from dnmf.progress import FitProgress

    k_range = parse_ks(ks)
    inputs = {"the input": Stored(input, var)}
    check_outputs_are_not_inputs({"report": out}, inputs)
    check_plots_are_not_inputs(plots, PLOT_FILES, inputs)
    if out is not None:
        check_output(out, overwrite=overwrite)
    if html is not None:
        from dnmf.report import check_report_path

        check_report_path(html, {**inputs, "the report store": out}, overwrite=overwrite)
    results = out_stream if out_stream is not None else sys.stdout
    display = FitProgress(quiet=quiet, stream=stream if stream is not None else sys.stderr)
    last_done = [0]

    def plain(step: RankStep) -> None:
        if step.done > last_done[0]:
            last_done[0] = step.done
            display.echo(step.describe())

    def log(line: str) -> None:
        print(line, file=display.stream, flush=True)

    bar = None
    if not quiet and display.interactive:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

        bar = Progress("[progress.description]{task.description}", BarColumn(),
                       TaskProgressColumn(), TimeRemainingColumn(), console=display.console,
                       transient=True)
    survey = functools.partial(
        select_rank, input, k_range, runs, heldout_fraction=heldout_fraction, seed=seed,
        max_iter=max_iter, tol=tol, var=var, scheduler=scheduler, workers=workers,
        memory_limit=memory_limit, **fit_kwargs)
    if bar is not None:
        with bar:
            report = survey(progress=bar)
    else:
        report = survey(progress=None if quiet else plain)
    path = None
    if out is not None:
        path = report.save(out, overwrite=overwrite)
        if not quiet:
            log(f"report: {path}")
    plotted = []
    if plots is not None:
        plotted = report.plot(plots)
        if not quiet:
            for p in plotted:
                log(f"plot: {p}")
    if html is not None:
        from dnmf.report import rank_report, write_report

        write_report(rank_report(report), html)
        if not quiet:
            log(f"html report: {html}")
    for warning in report.warnings:
        log(f"warning: {warning}")
    if json:
        print(json_module.dumps(report.as_json_dict(report=path, plots=plotted),
                                allow_nan=False), file=results, flush=True)
    else:
        print(report.summary(), file=results)
        print(f"recommended k: {report.recommended_k}", file=results, flush=True)
    return report
