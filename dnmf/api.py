"""The functional API: :func:`factorize` and :func:`load`.

``factorize`` is the one code path of every fit (the estimator and the CLI call it): open ->
validate -> chunk plan -> init -> iterate -> order components -> write. It validates parameters
before touching data and checks the output location before any work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import numbers
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
from threadpoolctl import threadpool_limits

from dnmf import device as devices
from dnmf import divergence, graph, kernels
from dnmf._version import __version__
from dnmf.cluster import ExecutionContext, blas_threads_for, execution_context
from dnmf.errors import InputError
from dnmf.init import initialize, resolve_init
from dnmf.io import check_rank, checkpoint, open_matrix, validate
from dnmf.io.overlap import Stored, check_outputs_are_not_inputs
from dnmf.io.result_store import check_output, local_path, open_result, write_result
from dnmf.io.zarr_ import owned_block
from dnmf.plan import ChunkPlan, apply_plan, plan_chunks
from dnmf.solvers import (
    SOLVER_ALIASES,
    SOLVERS,
    Interrupted,
    IterationInfo,
    RestartsState,
    component_order,
    iterate,
    iterate_restarts,
)

log = logging.getLogger(__name__)

#: Inputs already in this process's memory (``MatrixSource.format``): ``scheduler="auto"`` runs
#: them in-process, and their W comes back as numpy.
IN_MEMORY_FORMATS = ("numpy", "scipy")
#: Without ``out``, a W up to this size is brought back into memory; larger goes to a temp store.
W_IN_MEMORY_MAX_BYTES = 256 * 2**20


@dataclass
class FitResult:
    """The outcome of :func:`factorize`.

    Attributes
    ----------
    W : ndarray or dask array of shape (n_samples, k)
        numpy when X was a numpy array or a ``scipy.sparse`` matrix; otherwise a dask array
        (read from the result store when ``out`` was given).
    H : ndarray of shape (k, n_features)
    n_iter : int
    converged : bool
    loss_history : list of float
        The loss after each iteration: ``||X - W H||_F^2`` for Frobenius, the β-divergence
        otherwise (after the W update of each iteration; see :mod:`dnmf.solvers`), over the
        observed entries when values are missing.
    reconstruction_err : float
        scikit-learn's ``reconstruction_err_`` of the final factors: ``||X - W H||_F``, or
        ``sqrt(2 * D_β(X | W H))`` for other losses.
    relative_error : float
        ``||X - W H||_F / ||X||_F`` (over the observed entries).
    plan : ChunkPlan
    device : {"cpu", "gpu"}
        Where the panel tasks ran (``device`` of :func:`factorize`).
    path : str or None
        The result store, when written.
    n_restarts : int
        Factorizations run (see ``n_restarts`` of :func:`factorize`); the result is the best:
        ``n_iter``, ``converged``, ``loss_history`` and ``stop_reason`` are the kept restart's,
        ``seconds_per_iteration`` has one entry per pass over X (all restarts at once).
    best_restart : int
        The restart kept: the lowest final loss.
    restart_losses, restart_relative_errors : list of float
        Final loss (as ``loss_history``) and relative error of every restart: their spread says
        how much the starting point matters.
    restart_n_iter : list of int
        Iterations of each restart (each stops on its own ``tol``).
    restart_seeds : list of int
        The seed of each restart's random initialisation: restart ``r`` alone is
        ``factorize(X, k, init="random", random_state=restart_seeds[r])`` (restart 0 uses
        ``init`` when one was given).
    restart_H : ndarray of shape (n_restarts, k, n_features)
        H of every restart, components ordered by decreasing contribution (float64).
    restart_W_norms : ndarray of shape (n_restarts, k)
        ``||W_j||`` of those components: ``restart_W_norms[..., None] * restart_H`` is H for
        W scaled to unit columns.
    """

    W: Any
    H: np.ndarray
    n_iter: int
    converged: bool
    loss_history: list[float]
    reconstruction_err: float
    relative_error: float
    solver: str
    beta_loss: str
    init: str
    seed: int
    plan: ChunkPlan | None
    wall_time_s: float
    seconds_per_iteration: list[float] = field(default_factory=list)
    stop_reason: str = ""
    path: str | None = None
    notes: list[str] = field(default_factory=list)
    scheduler: str = ""
    device: str = "cpu"
    missing: str = "error"
    w_sum_to_one: bool = False
    regularization: dict[str, Any] = field(default_factory=dict)
    n_restarts: int = 1
    best_restart: int = 0
    restart_losses: list[float] = field(default_factory=list)
    restart_relative_errors: list[float] = field(default_factory=list)
    restart_n_iter: list[int] = field(default_factory=list)
    restart_seeds: list[int] = field(default_factory=list)
    restart_H: np.ndarray | None = None
    restart_W_norms: np.ndarray | None = None

    @property
    def n_components(self) -> int:
        return int(self.H.shape[0])


MISSING = ("error", "mask")


def resolve_beta(beta_loss: Any) -> float:
    """β from scikit-learn's loss names or a number; a clear error otherwise."""
    if isinstance(beta_loss, bool) or not isinstance(beta_loss, str | numbers.Real):
        raise InputError(f"beta_loss must be a loss name or a number; got {beta_loss!r}")
    if isinstance(beta_loss, str):
        try:
            return divergence.beta_value(beta_loss)
        except ValueError:
            try:
                return float(beta_loss)
            except ValueError:
                raise InputError(
                    f"unknown loss {beta_loss!r}: choose frobenius, kullback-leibler, "
                    "itakura-saito or a number (β)") from None
    if not np.isfinite(beta_loss):
        raise InputError(f"beta_loss must be finite; got {beta_loss!r}")
    return float(beta_loss)


def resolve_solver(solver: str, beta_loss: Any, *, masked: bool = False) -> str:
    """Map aliases and ``auto``; refuse combinations that make no sense.

    ``auto`` is hals for the unmasked Frobenius loss, mu otherwise. HALS and ANLS minimise the
    Frobenius loss on fully observed data only (as in scikit-learn, where only "mu" takes
    other losses).
    """
    beta = resolve_beta(beta_loss)
    if solver == "auto" and (beta != 2.0 or masked):
        return "mu"
    name = SOLVER_ALIASES.get(solver, solver)
    if name not in SOLVERS:
        raise InputError(
            f"unknown solver {solver!r}: choose auto, hals (alias cd), mu or anls"
        )
    if name != "mu" and beta != 2.0:
        raise InputError(
            f"solver {solver!r} supports only the Frobenius loss, not "
            f"{divergence.beta_name(beta)} — use solver='mu' (or auto)"
        )
    if name != "mu" and masked:
        raise InputError(
            f"missing values need multiplicative updates; solver {solver!r} cannot skip "
            "entries — use solver='mu' (or auto)"
        )
    return name


def resolve_seed(random_state: Any) -> int:
    """An int seed from None (fresh entropy), an int, or a numpy RandomState/Generator."""
    if random_state is None:
        return int(np.random.SeedSequence().entropy % (2**32))
    if isinstance(random_state, numbers.Integral):
        if random_state < 0:
            raise InputError(f"random_state must be >= 0; got {random_state}")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    raise InputError(f"random_state must be None, an int or a numpy RandomState; got {random_state!r}")


def regularization(alpha_W: float, alpha_H: float | str, l1_ratio: float,
                   shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """``(l1_W, l2_W, l1_H, l2_H)`` with scikit-learn's scaling.

    As in ``sklearn.decomposition.NMF``: the W penalties are multiplied by ``n_features`` and
    the H penalties by ``n_samples`` so that ``alpha`` does not depend on the data's size.
    """
    if alpha_H == "same":
        alpha_H = alpha_W
    for name, value in (("alpha_W", alpha_W), ("alpha_H", alpha_H)):
        if not isinstance(value, numbers.Real) or value < 0:
            raise InputError(f"{name} must be a number >= 0; got {value!r}")
    if not 0.0 <= l1_ratio <= 1.0:
        raise InputError(f"l1_ratio must be in [0, 1]; got {l1_ratio}")
    n_samples, n_features = shape
    return (
        n_features * alpha_W * l1_ratio,
        n_features * alpha_W * (1 - l1_ratio),
        n_samples * float(alpha_H) * l1_ratio,
        n_samples * float(alpha_H) * (1 - l1_ratio),
    )


def restart_seeds(seed: int, n_restarts: int) -> list[int]:
    """The seed of each restart: ``seed`` itself for restart 0 (so one restart is the ordinary
    fit), then seeds drawn from ``SeedSequence(seed).spawn(n_restarts - 1)``."""
    children = np.random.SeedSequence(seed).spawn(max(n_restarts - 1, 0))
    return [int(seed)] + [int(c.generate_state(1, dtype=np.uint32)[0]) for c in children]


def _check_params(rank: Any, max_iter: Any, tol: Any, max_time: Any) -> None:
    if not isinstance(rank, numbers.Integral) or isinstance(rank, bool):
        raise InputError(f"rank (n_components) must be an integer; got {rank!r}")
    if not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise InputError(f"max_iter must be an integer >= 1; got {max_iter!r}")
    if not isinstance(tol, numbers.Real) or tol < 0:
        raise InputError(f"tol must be a number >= 0; got {tol!r}")
    if max_time is not None and (not isinstance(max_time, numbers.Real) or max_time <= 0):
        raise InputError(f"max_time must be a positive number of seconds; got {max_time!r}")


def factorize(
    X: Any,
    rank: int,
    *,
    var: str | None = None,
    solver: str = "auto",
    beta_loss: str | float = "frobenius",
    init: str | None = "auto",
    max_iter: int = 200,
    tol: float = 1e-4,
    random_state: Any = None,
    n_restarts: int = 1,
    dtype: Any = None,
    W_init: Any = None,
    H_init: Any = None,
    alpha_W: float = 0.0,
    alpha_H: float | str = "same",
    l1_ratio: float = 0.0,
    missing: str = "error",
    mask: Any = None,
    mask_var: str | None = None,
    w_sum_to_one: bool = False,
    max_time: float | None = None,
    scheduler: Any = "auto",
    client: Any = None,
    workers: int | None = None,
    memory_limit: str | int | None = None,
    device: str = "cpu",
    persist_x: bool | str = "auto",
    persist_w: bool | str = "auto",
    max_panel_bytes: int | None = None,
    min_panel_bytes: int | None = None,
    scheme: str = "auto",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    checkpoint_every: int = 10,
    resume: bool = False,
    callback: Callable[[IterationInfo], None] | None = None,
    on_plan: Callable[[ChunkPlan, ExecutionContext], None] | None = None,
) -> FitResult:
    """Factorize a non-negative matrix ``X ~= W @ H`` out of core on Dask.

    Parameters
    ----------
    X : array-like, dask array, zarr array, or path/URL of size (n_samples, n_features)
        A numpy/dask/zarr array, or a Zarr/HDF5/NetCDF/.npy path (``var`` names the array
        inside a container).
    rank : int
        Number of components k, ``1 <= k <= min(n_samples, n_features)``.
    var : str, optional
        Variable or dataset inside the container.
    solver : {"auto", "hals", "cd", "mu", "anls"}
        ``auto`` is hals for the Frobenius loss on fully observed data, mu otherwise.
    beta_loss : {"frobenius", "kullback-leibler", "itakura-saito"} or float
        β of the β-divergence (2, 1, 0 for the names). Other than Frobenius needs ``mu``;
        Itakura-Saito (β <= 0) needs X > 0.
    init : {"auto", "random", "nndsvd", "nndsvda", "nndsvdar", "custom"}
        ``auto`` is nndsvda, or custom when ``W_init``/``H_init`` are given.
    max_iter : int
    tol : float
        Stop when the loss decreases by less than ``tol`` relative to the previous iteration.
    random_state : int, RandomState or None
    n_restarts : int
        Run this many factorizations from different starting points and keep the one with the
        lowest final loss. They are batched: W and H of all restarts are stacked side by side
        (``n_samples x n_restarts*k`` and ``n_restarts*k x n_features``) and every iteration
        reads X once for all of them, so a restart costs compute, not I/O. Each restart stops
        on its own ``tol``; the loop ends when all have (or ``max_iter``). With
        ``n_restarts > 1`` the default init is ``"random"``, restart ``r`` seeded by
        ``FitResult.restart_seeds[r]`` (``random_state`` itself for restart 0, then
        ``SeedSequence(random_state).spawn``); an explicit ``init`` (e.g. ``"nndsvda"``) is
        used by restart 0 and the others start at random. Every loss, missing values and
        ``w_sum_to_one`` are batched the same way; the 2-D block scheme is not (an error).
        The chunk plan budgets for the stacked factors (``n_restarts * k`` columns).
    dtype : {"float32", "float64"}, optional
        Compute dtype; default keeps X's floating dtype (integers become float32).
    W_init, H_init : array-like, optional
        Starting factors for ``init="custom"``.
    alpha_W, alpha_H, l1_ratio : float
        Regularisation with scikit-learn's meaning and scaling: the objective adds
        ``n_features * alpha_W * (l1_ratio * ||W||_1 + (1 - l1_ratio) / 2 * ||W||_F^2)`` and
        ``n_samples * alpha_H * (...)`` for H (``alpha_H="same"`` takes ``alpha_W``).
    missing : {"error", "mask"}
        NaN in X is an error (default), or marks missing entries left out of the loss and of
        every update (masked NMF, multiplicative updates).
    mask, mask_var : array-like or path, optional
        Observed entries (non-zero) of X, same shape; implies ``missing="mask"``.
    w_sum_to_one : bool
        Rows of W sum to one (abundances). Frobenius: each W update is an exact fully
        constrained least-squares solve (augmented row, NNLS), rows sum to 1 within 1e-5;
        with mu on other losses or missing data: the augmented row inside the multiplicative
        update, rows sum to 1 within about 1e-2.
    max_time : float, optional
        Wall-time budget in seconds for the iterations.
    scheduler : {"auto", "threads", "sync", "local", "cuda"}, address or Client
        ``"auto"``: in-process threads for X in memory (numpy, scipy.sparse) or below 1 GiB,
        else a LocalCluster. ``"cuda"`` starts a ``dask_cuda.LocalCUDACluster`` (one worker
        per GPU); with ``device="gpu"``, ``"auto"`` means in-process threads driving one GPU.
    client : distributed.Client, optional
    workers, memory_limit : LocalCluster size
    device : {"cpu", "gpu"}
        ``"gpu"``: the panel tasks run on CuPy blocks on a CUDA GPU (extra ``gpu``). X's blocks
        go to the device as they are read, or once when X fits half the free device memory
        (``persist_x``); W is created there once and stays there; only the k x n and k x k
        partial sums come back, and H is updated on the host. Dense X, the hals and mu solvers
        (any β, missing values), no ``w_sum_to_one`` and no restarts. The result's W is numpy
        (or read from ``out``).
    persist_x : bool or "auto"
        Keep X in worker memory (no store reads per iteration) when it fits; with
        ``device="gpu"``, in device memory.
    persist_w : bool or "auto"
        Keep W in worker memory between iterations (``"auto"``: when it takes at most 20% of
        it), else stream it through a Zarr scratch store next to ``out`` (or in the temporary
        directory) that is removed at the end. With ``device="gpu"`` W stays in device memory.
    max_panel_bytes, min_panel_bytes : int, optional
        Bounds on the size of a row panel: larger stored chunks are split, smaller ones merged
        (``min_panel_bytes=0`` keeps the stored row chunks as they are).
    scheme : {"auto", "row-panel", "block-2d"}
        ``auto``: full-width row panels (one read of X per iteration), or 2-D blocks (two reads,
        H chunked on the workers) when one full-width row does not fit a task.
    out : path, optional
        Write the result store here (Zarr v3). An ``out`` that is, contains or lies inside X
        or ``mask`` raises :class:`~dnmf.errors.OutputError`, even with ``overwrite``.
    overwrite : bool
    checkpoint_every : int
        With ``out``: write a checkpoint into ``out/checkpoint`` every this many iterations
        (0 disables). Ctrl-C or SIGTERM also writes one, then raises
        :class:`~dnmf.solvers.Interrupted`.
    resume : bool
        Continue the incomplete run in ``out`` from its checkpoint; refused when the input or
        the parameters differ (``max_iter`` may grow) or when ``out`` is complete.
    callback : callable, optional
        Called with an :class:`IterationInfo` after each iteration.
    on_plan : callable, optional
        Called with the chunk plan and execution context before iterating.

    Returns
    -------
    FitResult

    Examples
    --------
    >>> import numpy as np, dnmf
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((200, 5)) @ rng.random((5, 40))
    >>> result = dnmf.factorize(X, 5, random_state=0, scheduler="threads")
    >>> result.relative_error < 0.05
    True
    """
    t_start = time.perf_counter()
    _check_params(rank, max_iter, tol, max_time)
    if (not isinstance(n_restarts, numbers.Integral) or isinstance(n_restarts, bool)
            or n_restarts < 1):
        raise InputError(f"n_restarts must be an integer >= 1; got {n_restarts!r}")
    n_restarts = int(n_restarts)
    if missing not in MISSING:
        raise InputError(f"missing must be 'error' or 'mask'; got {missing!r}")
    masked = missing == "mask" or mask is not None
    beta = resolve_beta(beta_loss)
    solver_name = resolve_solver(solver, beta, masked=masked)
    dev = devices.resolve_device(device)
    if dev == "gpu":
        _check_gpu_params(solver_name, w_sum_to_one, n_restarts, persist_w)
        persist_w = True  # W lives in device memory, not in the workers' (host) memory
    has_custom = W_init is not None or H_init is not None
    if n_restarts > 1 and init in (None, "auto") and not has_custom:
        init = "random"  # restarts from one deterministic start would all be the same fit
    init_name = resolve_init(init, has_custom=has_custom)
    if not isinstance(checkpoint_every, numbers.Integral) or checkpoint_every < 0:
        raise InputError(f"checkpoint_every must be an integer >= 0; got {checkpoint_every!r}")
    # before anything is read or written, OUT's own checkpoint (under resume) aside
    check_outputs_are_not_inputs({"output": out}, {
        "the input": Stored(X, var), "the mask": Stored(mask, mask_var),
        "the initial W": W_init, "the initial H": H_init})
    ckpt = None
    if resume:
        if out is None:
            raise InputError("resume needs the output to resume — pass -o OUT.zarr")
        if overwrite:
            raise InputError("--resume and --overwrite contradict each other — pick one")
        ckpt = checkpoint.read(out)
        if random_state is None:
            random_state = ckpt.params.get("seed")
        if int(ckpt.params.get("n_restarts", 1)) != n_restarts:
            raise InputError(
                f"cannot resume: n_restarts was {ckpt.params.get('n_restarts', 1)}, now "
                f"{n_restarts} — resume with the same parameters (only --max-iter may grow)")
    seed = resolve_seed(random_state)
    if out is not None and not resume:
        check_output(out, overwrite=overwrite)
    source = open_matrix(X, var, dtype=dtype)
    check_rank(source.shape, rank)
    _check_variant(source, beta, masked, dev)
    if dev == "gpu":
        devices.import_cupy()  # before a cluster starts; the device itself is checked there
    mask_source = _open_mask(mask, mask_var, source.shape) if mask is not None else None
    l1_w, l2_w, l1_h, l2_h = regularization(alpha_W, alpha_H, l1_ratio, source.shape)
    in_memory = source.format == "numpy"
    notes = list(source.notes)

    with contextlib.ExitStack() as stack:
        ctx = stack.enter_context(
            execution_context(scheduler, x_nbytes=source.nbytes, workers=workers,
                              memory_limit=memory_limit, client=client, gpu=dev == "gpu",
                              x_in_memory=source.format in IN_MEMORY_FORMATS)
        )
        stack.enter_context(ctx.activate())
        if dev == "gpu":
            notes.append(f"device: gpu, {devices.require_gpu(ctx.client)}")
        # restarts are stacked: the panels carry n_restarts * k columns of W. On a GPU the
        # plan's persist_x (host memory) is replaced by the device's own choice below.
        plan = _plan_for(source, rank * n_restarts, ctx, False if dev == "gpu" else persist_x,
                         max_panel_bytes, min_panel_bytes, scheme, persist_w)
        if plan.is_2d and n_restarts > 1:
            raise InputError(
                f"n_restarts={n_restarts} batches the restarts in full-width row panels, but one "
                f"row of X with {n_restarts} x k columns of W does not fit a task "
                f"({plan.describe()[0]}) — give the workers more memory (--memory-limit), use "
                "fewer restarts, or run single fits with different random_state")
        w_scratch = _w_scratch(out, stack) if plan.w_in_store else None
        if plan.is_2d and dev == "gpu":
            raise InputError(
                "device='gpu' runs full-width row panels, but one row of X does not fit a task "
                f"({plan.describe()[0]}) — give the workers more memory (--memory-limit) or use "
                "device='cpu'")
        if plan.is_2d and (beta != 2.0 or masked or w_sum_to_one):
            raise InputError(
                "β-divergences, missing values and sum-to-one need full-width row panels, but "
                f"one row of X does not fit a task ({plan.describe()[0]}) — give the workers "
                "more memory (--memory-limit) or use the Frobenius loss")
        stack.enter_context(
            threadpool_limits(limits=blas_threads_for(ctx, plan.n_panels), user_api="blas")
        )
        Xp = _planned_array(X, var, dtype, source, plan)
        mask_p = None if mask_source is None else mask_source.array.rechunk(Xp.chunks)
        # Optimise X's graph once: every iteration submits it again unoptimised, and a key
        # submitted with two different specs upsets the distributed scheduler.
        (Xp,) = dask.optimize(Xp)
        if plan.persist_x or (in_memory and ctx.is_distributed):
            # in-memory X goes to the workers once, not inside every iteration's graph; a
            # block of a raw Zarr chunk is a view of the mapped file: persisted, it is copied
            # into memory that is the workers' own
            if not in_memory and not getattr(source, "sparse", False):
                Xp = Xp.map_blocks(owned_block, dtype=Xp.dtype, meta=Xp._meta,
                                   name="dnmf-x-in-memory-" + Xp.name)
            (Xp,) = ctx.persist(Xp, optimize=False)
        if on_plan is not None:
            on_plan(plan, ctx)
        report = validate(Xp, scheduler=ctx.scheduler, stored_chunks=source.stored_chunks,
                          optimize_graph=False)
        report.raise_if_invalid(allow_nan=masked)
        if beta <= 0.0 and report.min_value <= 0.0:
            raise InputError(
                f"the {divergence.beta_name(beta)} loss (β = {beta:g} <= 0) needs X > 0, but X "
                f"has zeros (min {report.min_value:.3g}) — add a small offset, or use "
                "kullback-leibler")
        n_observed = source.shape[0] * source.shape[1] - report.n_nan
        x_mean = report.total / max(n_observed, 1)
        if mask_p is not None and not resume:
            # the mean of the observed entries only (one more pass, for the init's scale)
            observed = mask_p & ~da.isnan(Xp)
            total, count = ctx.compute(da.where(observed, Xp, 0).sum(dtype=np.float64),
                                       observed.sum())
            x_mean = float(total) / max(int(count), 1)
        writer = None
        if out is not None and (checkpoint_every or resume):
            params = {"solver": solver_name, "beta_loss": divergence.beta_name(beta),
                      "n_components": rank, "init": init_name, "seed": seed,
                      "alpha_W": alpha_W, "alpha_H": alpha_H, "l1_ratio": l1_ratio,
                      "dtype": str(Xp.dtype), "scheme": plan.scheme, "missing": missing,
                      "mask": None if mask_source is None else mask_source.path,
                      "w_sum_to_one": bool(w_sum_to_one), "n_restarts": n_restarts}
            writer = _CheckpointWriter(out, overwrite=overwrite, params=params,
                                       fingerprint=checkpoint.fingerprint(Xp, ctx.scheduler),
                                       scheduler=ctx.scheduler, started=resume, device=dev)
        if ckpt is not None:
            checkpoint.check_compatible(ckpt, writer.params, writer.fingerprint,
                                        max_iter=max_iter)
            W0 = ckpt.W.astype(Xp.dtype).rechunk((Xp.chunks[0], (rank * n_restarts,)))
            H0 = ckpt.H
            notes.append(f"resumed from the checkpoint at iteration {ckpt.iteration}")
        else:
            X_init = Xp if not masked else _filled(Xp, mask_p, x_mean)
            starts = []
            for r, seed_r in enumerate(restart_seeds(seed, n_restarts)):
                init_r = init_name if r == 0 else "random"
                W_r, H_r = initialize(X_init, rank, init=init_r, seed=seed_r, x_mean=x_mean,
                                      W_init=W_init, H_init=H_init)
                if w_sum_to_one and init_r not in ("custom", "spa", "vca"):
                    # start feasible: rows of W summing to one, H carrying the scale (SPA and
                    # VCA start there already: H are pixels, W their abundances)
                    W_r, H_r = _rows_to_simplex(W_r, H_r)
                starts.append((W_r, H_r))
            if n_restarts == 1:
                W0, H0 = starts[0]
            else:
                W0 = da.concatenate([w for w, _ in starts], axis=1).rechunk(
                    {1: rank * n_restarts})
                H0 = np.concatenate([np.asarray(h, dtype=Xp.dtype) for _, h in starts])
        # what the iterations read: X (and the mask) as planned, or their device blocks
        X_fit, mask_fit = Xp, mask_p
        bytes_read = plan.reads_per_iteration and (2 if plan.is_2d else 1) * Xp.nbytes
        if dev == "gpu":
            X_fit, mask_fit, W0, kept = _to_device(Xp, mask_p, W0, persist_x, ctx)
            if kept:
                bytes_read = 0
                notes.append(f"X kept in device memory ({Xp.nbytes / 2**30:.2f} GiB): no reads "
                             "of X per iteration")
        stacked: RestartsState | None = None
        try:
            if n_restarts > 1:
                stacked = iterate_restarts(
                    Xp, W0, H0, restarts=n_restarts, sq_norm=report.sq_norm,
                    solver=solver_name, ctx=ctx, max_iter=max_iter, tol=tol, max_time=max_time,
                    l1_w=l1_w, l2_w=l2_w, l1_h=l1_h, l2_h=l2_h,
                    bytes_per_iteration=plan.reads_per_iteration and Xp.nbytes,
                    callback=callback, start_iteration=ckpt.iteration if ckpt else 0,
                    loss_history=ckpt.loss_history if ckpt else None,
                    seconds_per_iteration=ckpt.seconds_per_iteration if ckpt else None,
                    checkpoint=writer, checkpoint_every=checkpoint_every, beta=beta,
                    masked=masked, mask=mask_p, sum_to_one=bool(w_sum_to_one),
                    w_scratch=w_scratch)
                best = _best_restart(stacked.final_losses)
                state = stacked.solver_state(best)
                notes.append(
                    f"{n_restarts} restarts batched in {stacked.n_iter} passes over X; kept "
                    f"restart {best} (lowest final loss)")
            else:
                state = iterate(
                    X_fit, W0, H0, sq_norm=report.sq_norm, solver=solver_name, ctx=ctx,
                    max_iter=max_iter, tol=tol, max_time=max_time, l1_w=l1_w, l2_w=l2_w,
                    l1_h=l1_h, l2_h=l2_h, bytes_per_iteration=bytes_read,
                    callback=callback, second_read=not (plan.persist_x or in_memory),
                    start_iteration=ckpt.iteration if ckpt else 0,
                    loss_history=ckpt.loss_history if ckpt else None,
                    seconds_per_iteration=ckpt.seconds_per_iteration if ckpt else None,
                    checkpoint=writer, checkpoint_every=checkpoint_every,
                    beta=beta, masked=masked, mask=mask_fit, sum_to_one=bool(w_sum_to_one),
                    w_scratch=w_scratch,
                )
        except Interrupted as exc:
            if writer is not None:
                writer.interrupted(exc.state)
                raise Interrupted(exc.state, resume_hint=str(out)) from None
            raise
        order = component_order(state.WtW, state.HHt)
        reorder = not np.array_equal(order, np.arange(rank))
        H = state.H[order] if reorder else state.H
        if not isinstance(H, da.Array):
            H = np.ascontiguousarray(H, dtype=Xp.dtype)
        W = devices.to_host(state.W)  # a GPU's W comes back here (a no-op for numpy blocks)
        W_order = order if reorder else None  # applied as W is gathered (_bring_back)
        W = W[:, order] if reorder and out is not None else W
        loss = state.final_loss
        rel = state.final_relative_error
        if rel is None:
            rel = float(np.sqrt(loss / report.sq_norm)) if report.sq_norm > 0 else 0.0
        # scikit-learn's reconstruction_err_: ||X - WH||_F, or sqrt(2 * D_β) for other losses
        err = float(np.sqrt(loss if beta == 2.0 else 2.0 * loss))
        result = FitResult(
            W=None, H=H, n_iter=state.n_iter, converged=state.converged,
            loss_history=state.loss_history, reconstruction_err=err, relative_error=rel,
            solver=solver_name, beta_loss=divergence.beta_name(beta), init=init_name,
            seed=seed, plan=plan, wall_time_s=0.0,
            seconds_per_iteration=state.seconds_per_iteration, stop_reason=state.stop_reason,
            notes=notes, scheduler=ctx.describe(), device=dev,
            missing="mask" if masked else "error",
            w_sum_to_one=bool(w_sum_to_one),
            regularization={"alpha_W": alpha_W, "alpha_H": alpha_H, "l1_ratio": l1_ratio},
        )
        _set_restarts(result, stacked, state, order, seed)
        if out is not None:
            result.wall_time_s = time.perf_counter() - t_start
            attrs = _store_attrs(result, source.describe())
            if writer is not None and writer.started:
                writer.finish(W, H, attrs)
                result.path = os.fspath(out)
            else:
                result.path = write_result(out, W=W, H=H, attrs=attrs, overwrite=overwrite,
                                           scheduler=ctx.scheduler)
            result.W, stored_H, _ = open_result(result.path)
            if isinstance(H, da.Array):
                result.H = stored_H
        else:
            # an in-memory input (numpy or scipy.sparse) gets numpy back, as from scikit-learn
            result.W = _bring_back(W, ctx, source.format in IN_MEMORY_FORMATS, notes,
                                   columns=W_order)
            if isinstance(H, da.Array):
                result.H = _bring_back(H, ctx, True, notes, name="H")
    result.wall_time_s = time.perf_counter() - t_start
    return result


def _best_restart(losses: list[float]) -> int:
    """The restart with the lowest final loss (NaN never wins; the first on ties)."""
    values = np.asarray(losses, dtype=np.float64)
    return int(np.argmin(np.where(np.isnan(values), np.inf, values)))


def _set_restarts(result: FitResult, stacked: RestartsState | None, state: Any,
                  order: np.ndarray, seed: int) -> None:
    """The per-restart fields of ``result`` (one restart: the fit itself)."""
    if stacked is None:
        result.restart_losses = [float(state.final_loss)]
        result.restart_relative_errors = [float(result.relative_error)]
        result.restart_n_iter = [int(state.n_iter)]
        result.restart_seeds = [int(seed)]
        if not isinstance(state.H, da.Array):
            result.restart_H = np.asarray(state.H, dtype=np.float64)[order][None]
            norms = np.sqrt(np.clip(np.diag(state.WtW), 0, None))
            result.restart_W_norms = norms[order][None]
        return
    R = stacked.restarts
    result.n_restarts = R
    result.best_restart = _best_restart(stacked.final_losses)
    result.restart_losses = [float(v) for v in stacked.final_losses]
    result.restart_relative_errors = [float(v) for v in stacked.final_relative_errors]
    result.restart_n_iter = [len(h) for h in stacked.loss_history]
    result.restart_seeds = restart_seeds(seed, R)
    Hs, norms = [], []
    for r in range(R):
        o = component_order(stacked.WtW[r], stacked.HHt[r])
        Hs.append(stacked.H[stacked.block(r)][o])
        norms.append(np.sqrt(np.clip(np.diag(stacked.WtW[r]), 0, None))[o])
    result.restart_H = np.stack(Hs)
    result.restart_W_norms = np.stack(norms)


def _check_gpu_params(solver: str, w_sum_to_one: bool, n_restarts: int,
                      persist_w: bool | str) -> None:
    """Refuse, before any work, what ``device="gpu"`` does not run."""
    if solver == "anls" or w_sum_to_one:
        what = "solver='anls'" if solver == "anls" else "w_sum_to_one"
        raise InputError(
            f"{what} solves exact NNLS problems on the host and does not run with "
            "device='gpu' — use solver='hals' or 'mu' without sum-to-one, or device='cpu'")
    if n_restarts > 1:
        raise InputError(
            f"n_restarts={n_restarts} is not batched on the GPU — run single fits with "
            "different random_state, or use device='cpu'")
    if persist_w is False:
        raise InputError(
            "persist_w=False streams W through a Zarr store, but with device='gpu' W stays in "
            "device memory — leave persist_w at 'auto', or use device='cpu'")


def _to_device(Xp: da.Array, mask: da.Array | None, W0: da.Array, persist_x: bool | str,
               ctx: ExecutionContext) -> tuple[da.Array, da.Array | None, da.Array, bool]:
    """``(X, mask, W0, kept)`` with CuPy blocks: X's blocks go to the GPU as they are read, or
    once for the fit (``kept``) when ``persist_x`` says so (``"auto"``: when X takes at most
    half the devices' free memory); W0's blocks are moved once, at the first iteration."""
    keep = (devices.fits_on_device(Xp.nbytes, ctx.client) if persist_x == "auto"
            else bool(persist_x))
    X_dev = devices.to_device(Xp)
    mask_dev = None if mask is None else devices.to_device(mask)
    if keep:
        if mask_dev is None:
            (X_dev,) = ctx.persist(X_dev, optimize=False)
        else:
            X_dev, mask_dev = ctx.persist(X_dev, mask_dev, optimize=False)
    return X_dev, mask_dev, devices.to_device(W0), keep


def _check_variant(source: Any, beta: float, masked: bool, device: str = "cpu") -> None:
    """Refuse loss / missing-value / device combinations the input cannot support."""
    if getattr(source, "sparse", False) and device == "gpu":
        raise InputError(
            "device='gpu' runs dense X only, and X is sparse — use device='cpu' (sparse X "
            "keeps its products sparse there) or densify X")
    if getattr(source, "sparse", False):
        if masked:
            raise InputError(
                "missing values (missing='mask' or a mask) are not supported for sparse X: its "
                "zeros are observed values — densify X, or drop the mask")
        if beta not in (1.0, 2.0):
            raise InputError(
                f"sparse X supports the frobenius and kullback-leibler losses, not "
                f"{divergence.beta_name(beta)} (it would need W·H at every zero) — use one of "
                "those or a dense X")


def _open_mask(mask: Any, mask_var: str | None, shape: tuple[int, int]) -> Any:
    """The explicit mask of observed entries, lazily, as booleans of X's shape."""
    source = open_matrix(mask, mask_var, dtype=np.float32)
    if source.shape != tuple(shape):
        raise InputError(
            f"the mask has shape {source.shape} but X has {tuple(shape)} — give a mask of "
            "the same shape (non-zero = observed)")
    return dataclasses.replace(source, array=source.array != 0)


def _filled(X: da.Array, mask: da.Array | None, value: float) -> da.Array:
    """X with missing entries replaced by ``value``: only for initialisation."""
    missing = da.isnan(X) if mask is None else da.isnan(X) | ~mask
    return da.where(missing, X.dtype.type(value), X)


def _rows_to_simplex(W: da.Array, H: Any) -> tuple[da.Array, Any]:
    """Rescale so the rows of W sum to one, moving the scale into H (``W H`` unchanged
    up to the per-row factor, which the first fully constrained update absorbs)."""
    scale = np.asarray(da.compute(W.sum(axis=0))[0], dtype=np.float64) if isinstance(
        W, da.Array) else np.asarray(W).sum(axis=0)
    scale = np.where(scale > 0, scale / W.shape[0], 1.0)
    W = W / scale.astype(W.dtype)
    row = W.sum(axis=1, keepdims=True)
    W = da.where(row > 0, W / da.maximum(row, W.dtype.type(1e-30)), W.dtype.type(1.0 / W.shape[1]))
    H = np.asarray(H) * scale[:, None].astype(np.asarray(H).dtype)
    return W.astype(W.dtype), H


@dataclass
class DryRun:
    """What :func:`factorize` would do, computed without reading X's values."""

    source: Any
    plan: ChunkPlan
    where: str
    solver: str
    init: str

    def describe(self) -> list[str]:
        src = self.source
        name = src.path or src.format
        if src.var:
            name += f" [{src.var}]"
        return [
            f"input: {name}, {src.shape[0]:,} x {src.shape[1]:,} {src.dtype} "
            f"({src.nbytes / 1e9:,.2f} GB in memory)",
            *[f"note: {n}" for n in src.notes],
            f"solver: {self.solver}, init: {self.init}",
            f"scheduler: {self.where}",
            *self.plan.describe(),
        ]


def dry_run(
    X: Any,
    rank: int,
    *,
    var: str | None = None,
    dtype: Any = None,
    solver: str = "auto",
    beta_loss: str | float = "frobenius",
    init: str | None = "auto",
    scheduler: Any = "auto",
    workers: int | None = None,
    memory_limit: str | int | None = None,
    persist_x: bool | str = "auto",
    max_panel_bytes: int | None = None,
    min_panel_bytes: int | None = None,
    scheme: str = "auto",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    missing: str = "error",
    masked: bool = False,
    n_restarts: int = 1,
    device: str = "cpu",
) -> DryRun:
    """Check the parameters and the output, open X lazily and make the chunk plan; write nothing.

    A LocalCluster is planned for but not started; an address is connected to for its workers'
    sizes. Restarts are planned as :func:`factorize` runs them: ``n_restarts * rank`` columns.
    """
    from dnmf.cluster import parse_memory, planned_context, resolve_scheduler_name

    if missing not in MISSING:
        raise InputError(f"missing must be 'error' or 'mask'; got {missing!r}")
    masked = masked or missing == "mask"
    solver_name = resolve_solver(solver, beta_loss, masked=masked)
    init_name = resolve_init(init, has_custom=False)
    dev = devices.resolve_device(device)
    if dev == "gpu":
        _check_gpu_params(solver_name, False, n_restarts, "auto")
    check_outputs_are_not_inputs({"output": out}, {"the input": Stored(X, var)})
    if out is not None:
        check_output(out, overwrite=overwrite)
    source = open_matrix(X, var, dtype=dtype)
    check_rank(source.shape, rank)
    _check_variant(source, resolve_beta(beta_loss), masked, dev)
    mem = parse_memory(memory_limit)
    name = scheduler if not isinstance(scheduler, str) else resolve_scheduler_name(
        scheduler, x_nbytes=source.nbytes, memory_limit=mem, gpu=dev == "gpu",
        x_in_memory=source.format in IN_MEMORY_FORMATS)
    if isinstance(name, str) and name in ("threads", "sync", "local", "cuda"):
        ctx = planned_context(name, workers=workers, memory_limit=mem)
        where = ctx.describe() + (" (not started)" if name in ("local", "cuda") else "")
        if dev == "gpu" and name != "cuda":
            where += f"; device: gpu, {devices.require_gpu()}"
        plan = _plan_for(source, rank * n_restarts, ctx, persist_x, max_panel_bytes,
                         min_panel_bytes, scheme)
    else:
        with execution_context(name, x_nbytes=source.nbytes) as ctx:
            where = ctx.describe()
            plan = _plan_for(source, rank * n_restarts, ctx, persist_x, max_panel_bytes,
                             min_panel_bytes, scheme)
    return DryRun(source=source, plan=plan, where=where, solver=solver_name, init=init_name)


def _w_scratch(out: Any, stack: contextlib.ExitStack) -> str:
    """A scratch directory for W streamed through Zarr, removed when the fit's context ends.

    Next to ``out`` when given (workers can see it: they write ``out`` too), else in the
    temporary directory (a LocalCluster's workers share it).
    """
    import shutil

    local = None if out is None else local_path(out)
    if local is not None:
        local = local.absolute()
        local.parent.mkdir(parents=True, exist_ok=True)
        path = tempfile.mkdtemp(prefix=f".{local.name}.w-scratch-", dir=local.parent)
    else:
        path = tempfile.mkdtemp(prefix="dnmf-w-scratch-")
    stack.callback(shutil.rmtree, path, ignore_errors=True)
    return path


def _plan_for(source: Any, rank: int, ctx: ExecutionContext, persist_x: bool | str,
              max_panel_bytes: int | None, min_panel_bytes: int | None,
              scheme: str = "auto", persist_w: bool | str = "auto") -> ChunkPlan:
    # on a cluster (and for sparse X, whose products are single-threaded, in-process too) at
    # least two panels per worker thread, so that none idles
    sparse = getattr(source, "sparse", False)
    min_panels = (2 * max(ctx.n_workers, 1) * ctx.threads_per_worker
                  if ctx.is_distributed or sparse else 1)
    return plan_chunks(
        source.array, rank, memory_per_worker=ctx.memory_per_worker, n_workers=ctx.n_workers,
        threads_per_worker=ctx.threads_per_worker, persist_x=persist_x,
        x_in_memory=source.format == "numpy", max_panel_bytes=max_panel_bytes,
        min_panel_bytes=min_panel_bytes, min_panels=min_panels,
        stored_rows=source.stored_chunks[0] if source.stored_chunks else None, scheme=scheme,
        sparse_nbytes=source.nbytes if sparse else None, persist_w=persist_w,
        sparse_bytes_known=getattr(source, "stored_nbytes", None) is not None,
    )


def _planned_array(X: Any, var: str | None, dtype: Any, source: Any, plan: ChunkPlan) -> Any:
    """X in the plan's panels (or 2-D blocks): re-opened with them where X is a file or can be
    cut at any row (CSR), so that each task reads its own region instead of splitting a larger
    read held in memory (or, in memory, copying it)."""
    rows, cols = plan.row_chunks, plan.col_chunks or (source.shape[1],)
    if source.in_row_panels is not None and len(cols) == 1:
        return source.in_row_panels(tuple(rows))

    def regular(c: tuple[int, ...]) -> bool:
        return len(set(c[:-1])) <= 1 and c[-1] <= c[0]

    if source.path is not None and regular(rows) and regular(cols) and source.chunks != (
            rows, cols):
        source = open_matrix(X, var, dtype=dtype, chunks=(rows[0], cols[0]))
    return apply_plan(source.array, plan)


class _CheckpointWriter:
    """Writes the checkpoints of one fit into its result store (``dnmf.io.checkpoint``)."""

    def __init__(self, out: Any, *, overwrite: bool, params: dict, fingerprint: dict,
                 scheduler: Any, started: bool, device: str = "cpu") -> None:
        self.out, self.overwrite, self.scheduler = out, overwrite, scheduler
        self.params, self.fingerprint, self.started = params, fingerprint, started
        self.device = device

    def __call__(self, state: Any) -> da.Array:
        """Write a checkpoint; return its W, read back lazily (the loop restarts from it)."""
        if not self.started:  # OUT appears with the first checkpoint
            checkpoint.start(self.out, overwrite=self.overwrite)
            self.started = True
        W = checkpoint.write(
            self.out, W=devices.to_host(state.W), H=state.H, iteration=state.n_iter,
            loss_history=state.loss_history, seconds_per_iteration=state.seconds_per_iteration,
            params=self.params, fingerprint=self.fingerprint, scheduler=self.scheduler,
        )
        checkpoint.mark(self.out, "running")
        return devices.to_device(W) if self.device == "gpu" else W

    def interrupted(self, state: Any) -> None:
        """A final checkpoint of the last complete iteration, and status ``interrupted``."""
        if state.n_iter > 0:
            self(state)
        if self.started:
            checkpoint.mark(self.out, "interrupted")

    def finish(self, W: da.Array, H: Any, attrs: dict) -> None:
        checkpoint.finish(self.out, W=devices.to_host(W), H=H, attrs=attrs,
                          scheduler=self.scheduler)


def _bring_back(W: da.Array, ctx: ExecutionContext, in_memory: bool, notes: list[str],
                name: str = "W", columns: np.ndarray | None = None) -> Any:
    """A factor (W, or a chunked H) in a form that outlives the execution context, with its
    columns taken in the order ``columns`` (all, as they are, when None)."""
    if columns is not None and W.nbytes > W_IN_MEMORY_MAX_BYTES:
        W = W[:, columns]
    if W.nbytes <= W_IN_MEMORY_MAX_BYTES:
        values = _gathered(W, ctx, columns)
        return values if in_memory else da.from_array(values, chunks=W.chunks)
    if ctx.kind == "client":
        # persisted on the user's cluster, which stays up: compute it with that client
        notes.append(f"{name} stays persisted on your cluster: use client.compute or pass out=")
        (W,) = ctx.persist(W)
        from distributed import wait

        wait(W)  # W may come from a scratch store that is removed when the fit returns
        return W
    tmp = tempfile.mkdtemp(prefix=f"dnmf-{name}-")
    path = os.path.join(tmp, f"{name}.zarr")
    W.rechunk(tuple(max(c) for c in W.chunks)).to_zarr(path, compute=False).compute(
        scheduler=ctx.scheduler)
    notes.append(f"{name} ({W.nbytes / 2**30:.1f} GiB) was written to {path}; pass out= to "
                 "choose where")
    return da.from_zarr(path)


def _gathered(W: da.Array, ctx: ExecutionContext, columns: np.ndarray | None) -> np.ndarray:
    """W's row blocks copied into one array, columns reordered on the way: the peak is W's
    blocks and the result, without the reordered blocks and a concatenation besides."""
    if len(W.chunks[1]) > 1:  # a chunked H of the 2-D scheme: small, computed as is
        return ctx.compute(W if columns is None else W[:, columns])[0]
    blocks = ctx.compute(*W.to_delayed().ravel())
    out = np.empty(W.shape, dtype=W.dtype)
    start = 0
    for block in blocks:
        block = np.asarray(block)
        out[start:start + block.shape[0]] = block if columns is None else block[:, columns]
        start += block.shape[0]
    return out


def _store_attrs(result: FitResult, input_desc: dict) -> dict[str, Any]:
    return {
        "dnmf_version": __version__,
        "solver": result.solver,
        "beta_loss": result.beta_loss,
        "n_components": result.n_components,
        "init": result.init,
        "seed": result.seed,
        "n_iter": result.n_iter,
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "relative_error": result.relative_error,
        "reconstruction_err": result.reconstruction_err,
        "loss_history": result.loss_history,
        "input": input_desc,
        "missing": result.missing,
        "device": result.device,
        "w_sum_to_one": result.w_sum_to_one,
        **result.regularization,
        "chunk_plan": result.plan.as_dict() if result.plan else None,
        "wall_time_s": result.wall_time_s,
        "seconds_per_iteration": result.seconds_per_iteration,
        "n_restarts": result.n_restarts,
        "best_restart": result.best_restart,
        "restart_losses": result.restart_losses,
        "restart_relative_errors": result.restart_relative_errors,
        "restart_n_iter": result.restart_n_iter,
        "restart_seeds": result.restart_seeds,
        "scaling": "unnormalised (scikit-learn's convention); components ordered by "
                   "decreasing ||W_j|| * ||H_j||",
    }


def transform_rows(X: Any, H: np.ndarray, *, var: str | None = None, scheduler: Any = "auto",
                   client: Any = None, l1: float = 0.0, l2: float = 0.0,
                   beta_loss: str | float = "frobenius", missing: str = "error",
                   w_sum_to_one: bool = False, max_iter: int = 200,
                   tol: float = 1e-6) -> Any:
    """W for the rows of ``X`` with H fixed, in one pass over X (a task per row panel).

    Frobenius on fully observed X: exact NNLS per row (fully constrained with
    ``w_sum_to_one``). Other β or missing values: multiplicative updates on each panel until
    the panel's loss decreases by less than ``tol`` (relative) or ``max_iter``.
    numpy in -> numpy out; otherwise a lazy dask array (chunked like X's rows).
    """
    beta = resolve_beta(beta_loss)
    if missing not in MISSING:
        raise InputError(f"missing must be 'error' or 'mask'; got {missing!r}")
    masked = missing == "mask"
    H = np.asarray(H)
    source = open_matrix(X, var, dtype=H.dtype)
    if source.shape[1] != H.shape[1]:
        raise InputError(
            f"X has {source.shape[1]} features but the model has {H.shape[1]} — transform data "
            "with the same columns as the fitted data"
        )
    _check_variant(source, beta, masked)
    Xp = source.array
    if len(Xp.chunks[1]) > 1:
        Xp = Xp.rechunk({1: -1})
    k = H.shape[0]
    if beta == 2.0 and not masked:
        HHt = H.astype(np.float64) @ H.T.astype(np.float64)
        W = graph.map_panels(Xp, kernels.transform_rows, k=k, dtype=H.dtype,
                             name="dnmf-transform", H=H, HHt=HHt, l1=l1, l2=l2,
                             sum_to_one=w_sum_to_one)
    else:
        if w_sum_to_one:
            raise InputError("w_sum_to_one transform is available for the Frobenius loss on "
                             "fully observed rows — drop one of them")
        W = graph.map_panels(Xp, divergence.transform_rows_beta, k=k, dtype=H.dtype,
                             name="dnmf-transform-mu", H=H, beta=beta, l1=l1, l2=l2,
                             masked=masked, max_iter=max_iter, tol=tol)
    if source.format != "numpy":
        return W
    with execution_context(scheduler, x_nbytes=Xp.nbytes, client=client) as ctx:
        return ctx.compute(W)[0]


def transform_to_store(model: str | os.PathLike, X: Any, out: str | os.PathLike, *,
                       var: str | None = None, scheduler: Any = "auto", workers: int | None = None,
                       memory_limit: str | int | None = None, overwrite: bool = False) -> str:
    """Transform the rows of ``X`` with the H of the result store ``model``; write a store of
    the same layout (W new, H copied, the model's attributes plus ``transform_of``).

    Raises
    ------
    OutputError
        ``out`` exists (without ``overwrite``), or is, contains or lies inside the model or
        ``X`` (even with ``overwrite``).
    """
    check_outputs_are_not_inputs({"output": out},
                                 {"the model": model, "the input": Stored(X, var)})
    check_output(out, overwrite=overwrite)
    _, H, attrs = open_result(model)
    source = open_matrix(X, var, dtype=H.dtype)
    with execution_context(scheduler, x_nbytes=source.nbytes, workers=workers,
                           memory_limit=memory_limit) as ctx, ctx.activate():
        W = transform_rows(X, H, var=var, beta_loss=attrs.get("beta_loss", "frobenius"),
                           missing=attrs.get("missing", "error"),
                           w_sum_to_one=bool(attrs.get("w_sum_to_one", False)),
                           scheduler=ctx.scheduler)
        if not isinstance(W, da.Array):
            W = da.from_array(W, chunks=(source.chunks[0], H.shape[0]))
        # the fit's error and history describe the model's data, not these rows
        new_attrs = {**attrs, "transform_of": os.fspath(model), "input": source.describe(),
                     "n_iter": 0, "loss_history": [], "dnmf_version": __version__,
                     "relative_error": None, "reconstruction_err": None, "converged": None}
        for key in ("status", "schema_version"):
            new_attrs.pop(key, None)
        return write_result(out, W=W, H=H, attrs=new_attrs, overwrite=overwrite,
                            scheduler=ctx.scheduler)


def partial_fit_batch(
    state: Any,
    X: Any,
    rank: int,
    *,
    var: str | None = None,
    beta_loss: str | float = "frobenius",
    init: str | None = "auto",
    random_state: Any = None,
    alpha_W: float = 0.0,
    alpha_H: float | str = "same",
    l1_ratio: float = 0.0,
    forget_factor: float = 0.7,
    scheduler: Any = "auto",
    client: Any = None,
) -> Any:
    """One online update of H from a batch of rows (see :mod:`dnmf.online`).

    Parameters
    ----------
    state : dnmf.online.OnlineState or None
        The state after the previous batches; ``None`` starts from this batch (H initialised
        from it with ``init``).
    X : array-like, dask array or path (n_batch_rows, n_features)
    forget_factor : float in (0, 1]
        Weight of the past statistics at each batch (``1`` weighs every batch equally).

    Returns
    -------
    OnlineState
    """
    from dnmf import online

    beta = resolve_beta(beta_loss)
    if not 0.0 < forget_factor <= 1.0:
        raise InputError(f"forget_factor must be in (0, 1]; got {forget_factor!r}")
    source = open_matrix(X, var)
    _check_variant(source, beta, False)
    if state is not None and source.shape[1] != state.H.shape[1]:
        raise InputError(
            f"this batch has {source.shape[1]} features but the earlier ones had "
            f"{state.H.shape[1]} — every batch needs the same columns")
    if state is None:
        check_rank(source.shape, rank)
    l1_w, l2_w, l1_h, l2_h = regularization(alpha_W, alpha_H, l1_ratio, source.shape)
    Xp = source.array
    if len(Xp.chunks[1]) > 1:
        Xp = Xp.rechunk({1: -1})
    with execution_context(scheduler, x_nbytes=Xp.nbytes, client=client) as ctx, ctx.activate():
        report = validate(Xp, scheduler=ctx.scheduler)
        report.raise_if_invalid()
        if beta <= 0.0 and report.min_value <= 0.0:
            raise InputError(f"the {divergence.beta_name(beta)} loss needs X > 0, but this batch "
                             f"has zeros — add a small offset, or use kullback-leibler")
        if state is None:
            init_name = resolve_init(init, has_custom=False)
            x_mean = report.total / (source.shape[0] * source.shape[1])
            _, H0 = initialize(Xp, rank, init=init_name, seed=resolve_seed(random_state),
                               x_mean=x_mean)
            state = online.OnlineState(H=np.asarray(H0, dtype=np.float64), dtype=Xp.dtype)
        stats = online.batch_statistics(Xp, state.H, beta=beta, l1_w=l1_w, l2_w=l2_w, ctx=ctx)
    state = online.update(state, stats, beta=beta, rho=forget_factor if state.n_batches else 1.0,
                          l1_h=l1_h, l2_h=l2_h)
    state.n_samples_seen += source.shape[0]
    return state


def load(path: str | os.PathLike) -> Any:
    """A fitted :class:`dnmf.NMF` from a result store written by ``factorize(out=...)``.

    ``model.components_`` is H; ``model.W_`` is W, lazy from the store.
    """
    from dnmf.estimator import NMF

    W, H, attrs = open_result(path)
    model = NMF(n_components=int(attrs["n_components"]), solver=attrs["solver"],
                init=attrs["init"], random_state=attrs["seed"],
                beta_loss=attrs.get("beta_loss", "frobenius"),
                missing=attrs.get("missing", "error"),
                w_sum_to_one=bool(attrs.get("w_sum_to_one", False)),
                alpha_W=attrs.get("alpha_W", 0.0), alpha_H=attrs.get("alpha_H", "same"),
                l1_ratio=attrs.get("l1_ratio", 0.0), n_restarts=int(attrs.get("n_restarts", 1)))
    model.components_ = H
    model.n_components_ = H.shape[0]
    model.n_features_in_ = H.shape[1]
    model.n_iter_ = int(attrs["n_iter"])
    model.reconstruction_err_ = _float_or_nan(attrs.get("reconstruction_err"))
    model.relative_error_ = _float_or_nan(attrs.get("relative_error"))
    model.loss_history_ = list(attrs["loss_history"])
    model.W_ = W
    model.attrs_ = attrs
    return model


def _float_or_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


@dataclass
class MatrixInfo:
    """What ``dnmf info`` reports: layout, sizes and one validation pass."""

    source: Any
    report: Any
    disk_bytes: int | None

    def describe(self) -> list[str]:
        src, rep = self.source, self.report
        rows, cols = src.chunks
        lines = [
            f"path: {src.path or src.format}" + (f" [{src.var}]" if src.var else ""),
            f"format: {src.format}",
            f"shape: {src.shape[0]:,} x {src.shape[1]:,}",
            f"dtype: {src.stored_dtype} as stored, {src.dtype} in memory",
            f"chunks: {len(rows) * len(cols)} ({max(rows):,} x {max(cols):,} at most)",
            f"size in memory: {src.nbytes / 1e9:,.3f} GB",
            "size on disk: " + (f"{self.disk_bytes / 1e9:,.3f} GB" if self.disk_bytes is not None
                                else "unknown"),
            f"min / max: {rep.min_value:.6g} / {rep.max_value:.6g}",
            f"negative entries: {rep.n_negative:,}",
            f"NaN: {rep.n_nan:,}, Inf: {rep.n_inf:,}",
            f"all-zero rows: {rep.n_zero_rows:,}, all-zero columns: {rep.n_zero_cols:,}",
            f"||X||_F: {np.sqrt(rep.sq_norm):.6g}",
            *[f"note: {n}" for n in src.notes],
        ]
        problems = rep.problems()
        lines.append("usable for NMF: yes" if not problems else f"usable for NMF: no — {problems[0]}")
        return lines


def matrix_info(X: Any, *, var: str | None = None, scheduler: Any = "auto") -> MatrixInfo:
    """Open X and run the validation pass: shape, chunks, sizes, range, sign, NaN/Inf, zeros."""
    source = open_matrix(X, var)
    with execution_context(scheduler, x_nbytes=source.nbytes) as ctx:
        report = validate(source.array, scheduler=ctx.scheduler,
                          stored_chunks=source.stored_chunks)
    return MatrixInfo(source=source, report=report, disk_bytes=_disk_bytes(source.path))


def _disk_bytes(path: str | None) -> int | None:
    if path is None:
        return None
    local = path[len("file://"):] if path.startswith("file://") else path
    if "://" in local or not os.path.exists(local):
        return None
    if os.path.isfile(local):
        return os.path.getsize(local)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(local)
               for f in files)
