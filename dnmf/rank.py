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
* **held-out error**: a seeded random ``heldout_fraction`` of the entries is hidden (a lazy
  mask generated block by block, the same for every k), the runs are fitted on the rest, and
  one pass computes ``||(X - W H)_hidden|| / ||X_hidden||`` for the best run (lowest loss on
  the kept entries). Too small a k misses structure, too large a k fits noise that does not
  carry over to hidden entries: the **recommended k is the one with the lowest held-out
  error** (no threshold to tune; ``criterion = "heldout_error"``). For the Frobenius loss the
  masked fit is EM imputation with the fit's solver (HALS by default; see
  :func:`dnmf.stacked_kernels.stacked_panel_step`), which converges far faster than the masked
  multiplicative updates of ``factorize(..., mask=...)``: with those, the few-tenths-of-a-percent
  differences between ranks just above the true one drown in optimisation error. Other losses
  use ``factorize(..., mask=...)`` (multiplicative updates).

The other criteria are reported as evidence: where they disagree (nested structure, e.g. four
groups of two similar components), the report shows it rather than hiding it.
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

from dnmf.errors import InputError
from dnmf.io.overlap import resolved_locations
from dnmf.solvers import best_restart
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
#: Rows per independently seeded block of the held-out mask (chunking-invariant mask).
HELDOUT_BLOCK_ROWS = 4096
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
# The held-out mask: lazy, seeded per block
# ---------------------------------------------------------------------------------------------


def _observed_rows(start: int, stop: int, col_start: int, col_stop: int, *, n_features: int,
                   fraction: float, seed: int) -> np.ndarray:
    """Rows ``start:stop`` (columns ``col_start:col_stop``) of the observed-entry mask: each
    block of :data:`HELDOUT_BLOCK_ROWS` rows has its own seed, so the mask does not depend on
    how X is chunked."""
    out = np.empty((stop - start, col_stop - col_start), dtype=bool)
    first, last = start // HELDOUT_BLOCK_ROWS, (stop - 1) // HELDOUT_BLOCK_ROWS
    for b in range(first, last + 1):
        lo = max(start, b * HELDOUT_BLOCK_ROWS)
        hi = min(stop, (b + 1) * HELDOUT_BLOCK_ROWS)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, b)))
        u = rng.random((HELDOUT_BLOCK_ROWS, n_features), dtype=np.float32)
        rows = slice(lo - b * HELDOUT_BLOCK_ROWS, hi - b * HELDOUT_BLOCK_ROWS)
        out[lo - start:hi - start] = u[rows, col_start:col_stop] >= fraction
    return out


def heldout_mask(shape: tuple[int, int], chunks: tuple[tuple[int, ...], tuple[int, ...]], *,
                 fraction: float, seed: int) -> da.Array:
    """A lazy boolean dask array, True where an entry is kept for fitting and False for the
    seeded random ``fraction`` held out; each chunk is generated on its own."""
    row_starts = np.cumsum((0, *chunks[0][:-1]))
    col_starts = np.cumsum((0, *chunks[1][:-1]))
    token = tokenize(tuple(shape), chunks, fraction, seed)
    name = f"dnmf-heldout-mask-{token}"
    func = functools.partial(_observed_rows, n_features=int(shape[1]), fraction=float(fraction),
                             seed=int(seed))
    layer = {
        (name, i, j): (func, int(rs), int(rs + r), int(cs), int(cs + c))
        for i, (rs, r) in enumerate(zip(row_starts, chunks[0], strict=True))
        for j, (cs, c) in enumerate(zip(col_starts, chunks[1], strict=True))
    }
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return da.Array(graph, name, chunks=chunks, dtype=bool)


def heldout_error(X: da.Array, observed: da.Array, W: Any, H: np.ndarray) -> tuple[Any, Any]:
    """Lazy ``(Σ_hidden (X - W H)^2, Σ_hidden X^2)`` in float64 over the finite held-out
    entries: one pass over X (compute both together)."""
    k = H.shape[0]
    if isinstance(W, da.Array):
        Wd = W.rechunk((X.chunks[0], (k,)))
    else:
        Wd = da.from_array(np.asarray(W), chunks=(X.chunks[0], (k,)))
    model = (Wd @ np.asarray(H, dtype=X.dtype)).rechunk(X.chunks)
    hidden = ~observed.rechunk(X.chunks) & da.isfinite(X)
    residual = da.where(hidden, (X - model).astype(np.float64) ** 2, 0.0).sum()
    norm = da.where(hidden, X.astype(np.float64) ** 2, 0.0).sum()
    return residual, norm


def _observed_stats(X: da.Array, observed: da.Array, ctx: Any) -> tuple[float, float]:
    """``(Σ X², mean of X)`` over the entries kept for fitting: one pass."""
    ok = observed & da.isfinite(X)
    kept = da.where(ok, X, 0).astype(np.float64)
    total, sq, count = ctx.compute(kept.sum(), (kept**2).sum(), ok.sum())
    return float(sq), float(total) / max(int(count), 1)


def _heldout_em(X: Any, var: str | None, source: Any, plan: Any, observed: da.Array,
                observed_stats: tuple[float, float], k: int, *, n_runs: int, seed: int, ctx: Any,
                stack: contextlib.ExitStack, max_iter: int, tol: float, solver: str,
                callback: Callable[[Any], None], fit_kwargs: dict[str, Any]) -> tuple[float, int]:
    """``(held-out error, passes)`` of rank k: ``n_runs`` batched fits of the kept entries by
    EM imputation (:func:`dnmf.pipeline.run` with ``impute=True``), then one pass
    for the error of the best run on the held-out entries.

    In the row panels of the full fit's chunk plan (same stacked width). EM imputation with
    HALS instead of the masked multiplicative updates of :func:`dnmf.factorize`: MU converges
    too slowly for the small differences of held-out error between ranks near the true one
    (planted k = 8: after 400 MU iterations the minimum moved to 9-11 in two of three seeds,
    with EM-HALS it is at 8 for all).
    """
    from dnmf import pipeline
    from dnmf.spec import resolve

    spec = resolve(k, solver=solver, init="random", random_state=seed, n_restarts=n_runs,
                   max_iter=max_iter, tol=tol, alpha_W=fit_kwargs.get("alpha_W", 0.0),
                   alpha_H=fit_kwargs.get("alpha_H", "same"),
                   l1_ratio=fit_kwargs.get("l1_ratio", 0.0), checkpoint_every=0,
                   w_sum_to_one=bool(fit_kwargs.get("w_sum_to_one", False)))
    Xp = pipeline.planned_input(X, var, fit_kwargs.get("dtype"), source, plan, ctx, stack)
    sq_norm, x_mean = observed_stats
    # the kept entries are the fit's mask, filled in by EM (impute), not skipped by MU
    opened = pipeline.Opened(spec=spec, source=source, mask=None, checkpoint=None, notes=[])
    prepared = pipeline.Prepared(plan=plan, X=Xp, mask=observed.rechunk(Xp.chunks), report=None,
                                 x_mean=x_mean, w_scratch=None)
    start = pipeline.starting_point(spec, opened, prepared, None)
    state = pipeline.run(spec, opened, prepared, start, ctx, callback=callback, impute=True,
                         sq_norm=sq_norm)
    block = state.block(best_restart(state.final_losses))
    residual, norm = ctx.compute(*heldout_error(Xp, prepared.mask, state.W[:, block],
                                                state.H[block]))
    return (float(np.sqrt(residual / norm)) if norm > 0 else float("nan"),
            int(state.n_iter))


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
        ``||(X - W H)_hidden|| / ||X_hidden||`` of the best masked run.
    n_iter, heldout_n_iter : ndarray of int
        Passes over X of each k's batched fit (the slowest run's iterations).
    recommended_k : int
        The k of the lowest held-out error.
    criterion : str
        ``"heldout_error"``.
    elbow_k : int
        The elbow of the relative error curve (see :func:`elbow`).
    n_runs, heldout_fraction, seed, n_consensus_features, wall_time_s
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

    #: Where the surveyed matrix lives, resolved when it was surveyed (real paths, URLs):
    #: what :meth:`save` and :meth:`plot` may not write over. A report read back from disk
    #: has its input's path as given instead.
    input_paths: tuple[str, ...] = field(default=(), repr=False, compare=False)

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
                                        "||(X - WH)_hidden|| / ||X_hidden|| of the best masked "
                                        "run"),
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
            "elbow_k": int(self.elbow_k), "n_runs": int(self.n_runs),
            "heldout_fraction": float(self.heldout_fraction), "seed": int(self.seed),
            "n_consensus_features": int(self.n_consensus_features),
            "wall_time_s": float(self.wall_time_s), "dnmf_version": __version__,
        }))
        return ds

    @classmethod
    def from_dataset(cls, ds: Any) -> RankReport:
        """The report back from :meth:`to_dataset` (e.g. ``xr.open_zarr(path)``)."""
        a = dict(ds.attrs)
        known = ("recommended_k", "criterion", "elbow_k", "n_runs", "heldout_fraction", "seed",
                 "n_consensus_features", "wall_time_s", "status", "dnmf_version")

        def values(name: str) -> np.ndarray:
            return np.asarray(ds[name].values)

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

    def summary(self) -> str:
        """A text table: one row per k, the recommended k marked."""
        head = (f"{'k':>4}  {'rel.err':>9}  {'spread':>8}  {'cophenetic':>10}  "
                f"{'dispersion':>10}  {'silhouette':>10}  {'held-out':>9}")
        lines = [f"rank survey: {self.n_runs} runs per k, {self.heldout_fraction:.0%} of the "
                 f"entries held out, seed {self.seed}", head, "-" * len(head)]
        for i, k in enumerate(self.ks):
            mark = "  <- recommended" if k == self.recommended_k else ""
            if k == self.elbow_k:
                mark += "  (elbow)"
            lines.append(
                f"{int(k):>4}  {self.relative_error[i]:>9.5f}  "
                f"{self.relative_error_spread[i]:>8.2e}  {self.cophenetic[i]:>10.4f}  "
                f"{self.dispersion[i]:>10.4f}  {self.silhouette[i]:>10.4f}  "
                f"{self.heldout_error[i]:>9.5f}{mark}")
        lines.append(f"criterion: {self.criterion} (lowest); elbow of the relative error: "
                     f"k = {self.elbow_k}")
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
                  "heldout_error": "held-out error"}
        paths = []

        def draw(ax: Any, name: str) -> None:
            ks = np.asarray(self.ks)
            y = self.criterion_values(name)
            ax.plot(ks, y, "o-", color="C0")
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
        fig.suptitle(f"rank survey ({self.n_runs} runs per k): recommended k = "
                     f"{self.recommended_k} by {self.criterion}")
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


def select_rank(
    X: Any,
    ks: Iterable[int] = range(2, 11),
    n_runs: int = 10,
    *,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    max_iter: int = 200,
    tol: float = 1e-4,
    heldout_max_iter: int | None = None,
    var: str | None = None,
    scheduler: Any = "auto",
    client: Any = None,
    workers: int | None = None,
    memory_limit: str | int | None = None,
    max_consensus_features: int = MAX_CONSENSUS_FEATURES,
    progress: Any = None,
    **fit_kwargs: Any,
) -> RankReport:
    """Survey the rank k of ``X ~= W H``: fit every k in ``ks`` ``n_runs`` times and report
    how well and how stably each k fits, and how well it predicts held-out entries.

    For each k: ``n_runs`` random starts batched into one fit (they share every read of X,
    see ``n_restarts`` of :func:`dnmf.factorize`) for the relative error, the consensus and the
    silhouette; ``n_runs`` more, batched, on X with a seeded ``heldout_fraction`` of the
    entries hidden; and one pass for the error on the hidden entries. See :mod:`dnmf.rank` for
    the criteria. The recommended k has the lowest held-out error.

    Parameters
    ----------
    X : array-like, dask/zarr array or path of shape (n_samples, n_features)
        Dense (the held-out fit masks entries).
    ks : iterable of int
        Ranks to try (sorted, duplicates dropped).
    n_runs : int
        Runs per k (random starts).
    heldout_fraction : float in (0, 0.5]
        Fraction of the entries hidden for the held-out error (the same entries for every k).
    seed : int
        Seeds every run (each k's runs from ``SeedSequence([seed, k])``), the held-out mask and
        the feature sample of the consensus.
    max_iter, tol : int, float
        Of every fit (each run stops on its own ``tol``).
    heldout_max_iter : int, optional
        ``max_iter`` of the masked fits (multiplicative updates, slower to converge); default
        ``2 * max_iter``.
    var, scheduler, client, workers, memory_limit
        As :func:`dnmf.factorize`; one scheduler (e.g. one LocalCluster) serves every fit.
    max_consensus_features : int
        Features in the consensus matrix at most (a seeded sample beyond); its memory is
        ``8 * max_consensus_features^2`` bytes.
    progress : callable or rich.progress.Progress, optional
        Called with a :class:`RankStep` after every iteration of every fit (k, stage, runs,
        ETA), or a rich Progress to which a task "rank survey" is added and advanced.
    **fit_kwargs
        Passed to every :func:`dnmf.factorize` (``solver``, ``beta_loss``, ``dtype``,
        ``alpha_W``, ``persist_x``, ...). The held-out fit (Frobenius) runs EM imputation with
        the same solver, in the full fit's row panels; for other losses it is
        ``factorize(..., mask=...)`` with multiplicative updates.

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
    heldout_max_iter = heldout_max_iter or 2 * max_iter
    # where X lives, resolved now: the report's save() and plot() may not write over it
    input_paths = resolved_locations(X, var)
    source = open_matrix(X, var, dtype=fit_kwargs.get("dtype"))
    if getattr(source, "sparse", False):
        raise InputError("the rank survey's held-out error hides entries, which sparse X cannot "
                         "(its zeros are observed values) — densify X first")
    ks_list = _check_ks(ks, source.shape)
    n_features = source.shape[1]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4,)))
    sample = (np.arange(n_features) if n_features <= max_consensus_features
              else np.sort(rng.choice(n_features, max_consensus_features, replace=False)))
    observed = heldout_mask(source.shape, source.array.chunks, fraction=float(heldout_fraction),
                            seed=seed)
    reporter = _Reporter(progress, 2 * len(ks_list))
    heldout_kwargs = {key: v for key, v in fit_kwargs.items() if key != "solver"}
    beta = resolve_beta(fit_kwargs.get("beta_loss", "frobenius"))
    columns: dict[str, list[Any]] = {name: [] for name in (
        "relative_error", "relative_error_spread", "relative_error_runs", "cophenetic",
        "dispersion", "silhouette", "silhouette_mean", "heldout_error", "n_iter",
        "heldout_n_iter")}
    with execution_context(scheduler, x_nbytes=source.nbytes, workers=workers,
                           memory_limit=memory_limit, client=client) as ctx:
        where: dict[str, Any] = ({"client": ctx.client} if ctx.client is not None
                                 else {"scheduler": ctx.kind})
        observed_stats = _observed_stats(source.array, observed, ctx) if beta == 2.0 else None
        for k in ks_list:
            k_seed = _k_seed(seed, k)
            fit = api.factorize(X, k, var=var, n_restarts=n_runs, random_state=k_seed,
                                max_iter=max_iter, tol=tol,
                                callback=reporter.callback(k, "fit", n_runs), **where,
                                **fit_kwargs)
            reporter.finished(k, "fit", n_runs, max_iter)
            assert fit.restart_H is not None and fit.restart_W_norms is not None
            labels = np.stack([feature_labels(H[:, sample], norms) for H, norms in
                               zip(fit.restart_H, fit.restart_W_norms, strict=True)])
            C = consensus_matrix(labels)
            sil_min, sil_mean = nmfk_silhouette(fit.restart_H, reference=fit.best_restart)
            runs = np.asarray(fit.restart_relative_errors)
            columns["relative_error"].append(fit.relative_error)
            columns["relative_error_spread"].append(float(runs.max() - runs.min()))
            columns["relative_error_runs"].append(runs)
            columns["cophenetic"].append(cophenetic_correlation(C))
            columns["dispersion"].append(dispersion(C))
            columns["silhouette"].append(sil_min)
            columns["silhouette_mean"].append(sil_mean)
            columns["n_iter"].append(max(fit.restart_n_iter))

            with contextlib.ExitStack() as stack:
                if beta == 2.0:
                    held_err, held_iter = _heldout_em(
                        X, var, source, fit.plan, observed, observed_stats, k, n_runs=n_runs,
                        seed=k_seed, ctx=ctx, stack=stack, max_iter=heldout_max_iter, tol=tol,
                        solver=fit.solver, callback=reporter.callback(k, "heldout", n_runs),
                        fit_kwargs=fit_kwargs)
                else:
                    held = api.factorize(X, k, var=var, n_restarts=n_runs, random_state=k_seed,
                                         mask=observed, max_iter=heldout_max_iter, tol=tol,
                                         callback=reporter.callback(k, "heldout", n_runs),
                                         **where, **heldout_kwargs)
                    residual, norm = ctx.compute(*heldout_error(source.array, observed, held.W,
                                                                held.H))
                    held_err = float(np.sqrt(residual / norm)) if norm > 0 else float("nan")
                    held_iter = max(held.restart_n_iter)
            columns["heldout_error"].append(held_err)
            columns["heldout_n_iter"].append(held_iter)
            reporter.finished(k, "heldout", n_runs, heldout_max_iter)
    values = {name: np.asarray(v) for name, v in columns.items()}
    heldout = values["heldout_error"]
    if not np.any(np.isfinite(heldout)):
        raise InputError("no held-out entry is finite — X has too many missing values for a "
                         "held-out error; raise heldout_fraction")
    recommended = int(ks_list[int(np.nanargmin(heldout))])
    return RankReport(
        ks=np.asarray(ks_list), **values, recommended_k=recommended,
        criterion="heldout_error", elbow_k=elbow(ks_list, values["relative_error"]),
        n_runs=int(n_runs), heldout_fraction=float(heldout_fraction), seed=int(seed),
        n_consensus_features=int(sample.size), wall_time_s=time.perf_counter() - t_start,
        input_paths=input_paths, attrs={"input": source.describe(), "max_iter": max_iter, "tol": tol,
               "heldout_max_iter": heldout_max_iter,
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
    stream: IO[str] | None = None,
    **fit_kwargs: Any,
) -> RankReport:
    """What ``dnmf rank`` does: parse ``ks``, check the output before any work, survey, save,
    plot, print the table, and end with the line ``recommended k: N``.

    Progress goes to ``stream`` (stdout by default): a live bar with ETA on a terminal, a line
    per finished fit otherwise, nothing with ``quiet`` (the last line is always printed).
    """
    from dnmf.io.overlap import Stored, check_outputs_are_not_inputs, check_plots_are_not_inputs
    from dnmf.io.result_store import check_output
    from dnmf.progress import FitProgress

    k_range = parse_ks(ks)
    inputs = {"the input": Stored(input, var)}
    check_outputs_are_not_inputs({"report": out}, inputs)
    check_plots_are_not_inputs(plots, PLOT_FILES, inputs)
    if out is not None:
        check_output(out, overwrite=overwrite)
    display = FitProgress(quiet=quiet, stream=stream)
    last_done = [0]

    def plain(step: RankStep) -> None:
        if step.done > last_done[0]:
            last_done[0] = step.done
            display.echo(step.describe())

    bar = None
    if not quiet and display.interactive:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

        bar = Progress("[progress.description]{task.description}", BarColumn(),
                       TaskProgressColumn(), TimeRemainingColumn(), console=display.console,
                       transient=True)
    if bar is not None:
        with bar:
            report = select_rank(input, k_range, runs, heldout_fraction=heldout_fraction,
                                 seed=seed, max_iter=max_iter, tol=tol, var=var,
                                 scheduler=scheduler, workers=workers,
                                 memory_limit=memory_limit, progress=bar, **fit_kwargs)
    else:
        report = select_rank(input, k_range, runs, heldout_fraction=heldout_fraction, seed=seed,
                             max_iter=max_iter, tol=tol, var=var, scheduler=scheduler,
                             workers=workers, memory_limit=memory_limit,
                             progress=None if quiet else plain, **fit_kwargs)
    if out is not None:
        path = report.save(out, overwrite=overwrite)
        display.echo(f"report: {path}")
    if plots is not None:
        for p in report.plot(plots):
            display.echo(f"plot: {p}")
    display.echo(report.summary())
    print(f"recommended k: {report.recommended_k}", file=display.stream, flush=True)
    return report
