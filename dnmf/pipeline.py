"""The named stages of a fit, shared by :func:`dnmf.factorize`, ``rank``, ``unmix`` and transform.

A fit is, in order (see ``ARCHITECTURE.md``)::

    spec.resolve      the parameters, checked without data            -> FitSpec
    open_input        outputs checked, checkpoint read, X and mask opened lazily -> Opened
    fit_context       the scheduler (in-process threads, LocalCluster, a cluster)
    prepare           chunk plan, X in its panels (persisted when planned), one validation
                      pass (sign, finiteness, ||X||^2, mean), W's scratch store; a small
                      in-memory X itself for an in-process fit (local_x) -> Prepared
    checkpoint_writer where the run's checkpoints go (with ``out``)
    starting_point    the initial factors of every restart, or the checkpoint's -> Start
    run               the one iteration loop (:func:`dnmf.solvers.run_iterations`)
    finish            components ordered, restarts summarised, W and H written or brought back
                      -> FitResult

Each stage is a function that returns a small dataclass; no stage reads CLI arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from dnmf import device as devices
from dnmf import divergence
from dnmf._version import __version__
from dnmf.cluster import ExecutionContext, blas_threads_for, execution_context
from dnmf.errors import NON_FINITE_FIX, InputError, NumericalError
from dnmf.init import IN_PROCESS_INITS, initialize
from dnmf.io import check_rank, checkpoint, open_matrix, validate
from dnmf.io.overlap import Stored, check_outputs_are_not_inputs
from dnmf.io.reach import check_workers_reach
from dnmf.io.remote import claim_output, redacted
from dnmf.io.result_store import (
    check_free_space,
    check_output,
    disk_errors_named,
    local_path,
    open_result,
    remove_path,
    write_result,
)
from dnmf.io.zarr_ import owned_block
from dnmf.plan import ChunkPlan, apply_plan, plan_chunks
from dnmf.solvers import (
    Interrupted,
    IterationInfo,
    RestartsState,
    SolverState,
    best_restart,
    component_order,
    make_step,
    run_iterations,
)
from dnmf.spec import FitSpec, restart_seeds

#: Inputs already in this process's memory (``MatrixSource.format``): ``scheduler="auto"`` runs
#: them in-process, and their W comes back as numpy.
IN_MEMORY_FORMATS = ("numpy", "scipy")
#: Without ``out``, a W up to this size is brought back into memory; larger goes to a temp store.
W_IN_MEMORY_MAX_BYTES = 256 * 2**20
#: An in-memory X (numpy, scipy.sparse) up to this size, fitted in-process without ``out``,
#: runs the loop in this process with no graph per iteration (see :func:`local_x`); the
#: crossover is measured by ``benchmarks/small.py``.
IN_PROCESS_MAX_BYTES = 64 * 2**20


@dataclass
class FitResult:
    """The outcome of :func:`dnmf.factorize`.

    Attributes
    ----------
    W : ndarray or dask array of shape (n_samples, k)
        numpy when X was a numpy array or a ``scipy.sparse`` matrix; otherwise a dask array
        (read from the result store when ``out`` was given). For labelled X (xarray, AnnData)
        an ``xarray.DataArray`` of those values with dims ``(X's row dim, "component")`` and
        X's row labels (see :mod:`dnmf.named_axes`).
    H : ndarray of shape (k, n_features)
        A DataArray with X's column labels for labelled X, as W.
    n_iter : int
    converged : bool
    loss_history : list of float
        The loss after each iteration: ``||X - W H||_F^2`` for Frobenius, the β-divergence
        otherwise (after the W update of each iteration; see :mod:`dnmf.solvers`), over the
        observed entries when values are missing. NaN where the loss was not evaluated
        (every ``loss_every``-th iteration is, and the last).
    reconstruction_err : float
        scikit-learn's ``reconstruction_err_`` of the final factors: ``||X - W H||_F``, or
        ``sqrt(2 * D_β(X | W H))`` for other losses.
    relative_error : float
        ``||X - W H||_F / ||X||_F`` (over the observed entries).
    plan : ChunkPlan
    device : {"cpu", "gpu"}
        Where the panel tasks ran (``device`` of :func:`dnmf.factorize`).
    path : str or None
        The result store, when written.
    n_restarts : int
        Factorizations run (see ``n_restarts`` of :func:`dnmf.factorize`); the result is the
        best: ``n_iter``, ``converged``, ``loss_history`` and ``stop_reason`` are the kept
        restart's, ``seconds_per_iteration`` has one entry per pass over X (all restarts at
        once).
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
    loss_every: int = 1
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


# ---------------------------------------------------------------------------------------------
# open_input
# ---------------------------------------------------------------------------------------------


@dataclass
class Opened:
    """X and its companions, opened lazily; ``spec`` has its seed (a checkpoint's when
    resuming without one)."""

    spec: FitSpec
    source: Any
    mask: Any
    checkpoint: Any
    notes: list[str]


def open_input(spec: FitSpec, X: Any, *, var: str | None = None, dtype: Any = None,
               mask: Any = None, mask_var: str | None = None, W_init: Any = None,
               H_init: Any = None, out: Any = None,
               stack: contextlib.ExitStack | None = None) -> Opened:
    """Check the output against the inputs, claim it for this run (held on ``stack``), read the
    checkpoint when resuming, open X (and the mask) lazily and check what needs X's metadata:
    rank, loss and variant against X's kind."""
    # before anything is read or written, OUT's own checkpoint (under resume) aside
    check_outputs_are_not_inputs({"output": out}, {
        "the input": Stored(X, var), "the mask": Stored(mask, mask_var),
        "the initial W": W_init, "the initial H": H_init})
    if out is not None and not spec.resume:
        check_output(out, overwrite=spec.overwrite)
    if out is not None and stack is not None:
        stack.enter_context(claim_output(out))  # one writer per output, local or remote
    ckpt = None
    if spec.resume:
        ckpt = checkpoint.read(out)
        if spec.seed is None:
            spec = spec.with_seed(ckpt.params.get("seed"))
        if int(ckpt.params.get("n_restarts", 1)) != spec.n_restarts:
            raise InputError(
                f"cannot resume: n_restarts was {ckpt.params.get('n_restarts', 1)}, now "
                f"{spec.n_restarts} — resume with the same parameters (only --max-iter may grow)")
    source = open_matrix(X, var, dtype=dtype)
    check_some_chunk_stored(source)
    check_rank(source.shape, spec.rank)
    check_variant(source, spec.beta, spec.masked, spec.device)
    if spec.device == "gpu":
        devices.import_cupy()  # before a cluster starts; the device itself is checked there
    mask_source = open_mask(mask, mask_var, source.shape) if mask is not None else None
    return Opened(spec=spec, source=source, mask=mask_source, checkpoint=ckpt,
                  notes=list(source.notes))


def check_some_chunk_stored(source: Any) -> None:
    """Refuse X of which no chunk was ever written: it would read as its fill value alone."""
    written = getattr(source, "chunks_written", None)
    if written is not None and written[0] == 0:
        raise InputError(
            f"no chunk of X is stored: {source.path} declares {written[1]:,} chunks and none "
            "has been written (an interrupted or empty copy?) — write X first, or check the "
            "path")


def check_variant(source: Any, beta: float, masked: bool, device: str = "cpu") -> None:
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


def open_mask(mask: Any, mask_var: str | None, shape: tuple[int, int]) -> Any:
    """The explicit mask of observed entries, lazily, as booleans of X's shape."""
    source = open_matrix(mask, mask_var, dtype=np.float32)
    if source.shape != tuple(shape):
        raise InputError(
            f"the mask has shape {source.shape} but X has {tuple(shape)} — give a mask of "
            "the same shape (non-zero = observed)")
    return dataclasses.replace(source, array=source.array != 0)


# ---------------------------------------------------------------------------------------------
# fit_context and prepare
# ---------------------------------------------------------------------------------------------


def fit_context(opened: Opened, stack: contextlib.ExitStack, *, scheduler: Any = "auto",
                client: Any = None, workers: int | None = None,
                memory_limit: str | int | None = None, out: Any = None) -> ExecutionContext:
    """The execution context of the fit, entered on ``stack`` and active; on a cluster of
    worker processes, whose workers can read X and the mask and write ``out`` (before X is
    read: workers on other hosts would fail on a local X, or read a Zarr X as its fill value)."""
    source, gpu = opened.source, opened.spec.device == "gpu"
    ctx = stack.enter_context(
        execution_context(scheduler, x_nbytes=source.nbytes, workers=workers,
                          memory_limit=memory_limit, client=client, gpu=gpu,
                          x_in_memory=source.format in IN_MEMORY_FORMATS))
    check_workers_reach(ctx.remote_client, reads={
        "the input": source.path, "the mask": getattr(opened.mask, "path", None)},
        writes={"the output": out})
    stack.enter_context(ctx.activate())
    stack.enter_context(ctx.failures_explained())  # a worker killed for memory: one line
    if gpu:
        opened.notes.append(f"device: gpu, {devices.require_gpu(ctx.client)}")
    return ctx


@dataclass
class Prepared:
    """X as the iterations read it, and what the validation pass found."""

    plan: ChunkPlan
    X: da.Array
    mask: da.Array | None
    report: Any
    x_mean: float
    w_scratch: str | None
    #: X itself (numpy or CSR) when the fit can run in this process (see :func:`local_x`)
    local: Any = None


def prepare(spec: FitSpec, opened: Opened, ctx: ExecutionContext, stack: contextlib.ExitStack,
            X: Any, *, var: str | None = None, dtype: Any = None, out: Any = None,
            on_plan: Callable[[ChunkPlan, ExecutionContext], None] | None = None) -> Prepared:
    """Plan the chunks, put X in its panels (persisted when planned), validate it in one pass."""
    source = opened.source
    plan = plan_of(spec, source, ctx)
    check_plan(spec, plan)
    ctx.task_bytes = plan.task_bytes  # named if a worker is killed for memory
    if out is not None:  # before X is read: W and H, as the plan sizes them, must fit there
        itemsize = np.dtype(source.dtype).itemsize
        n, m = source.shape
        check_free_space(out, (n + m) * spec.rank * itemsize)
    w_scratch = w_scratch_dir(out, stack) if plan.w_in_store else None
    if out is None and w_scratch is not None:  # in this host's temporary folder
        check_workers_reach(ctx.remote_client, scratch=w_scratch)
    Xp = planned_input(X, var, dtype, source, plan, ctx, stack)
    mask_p = None if opened.mask is None else opened.mask.array.rechunk(Xp.chunks)
    local = local_x(spec, opened, Xp, X, plan, ctx, masked=mask_p is not None,
                    w_scratch=w_scratch)
    # X in memory as one block: validated as it is, without a graph (the same summaries)
    one_block = isinstance(local, np.ndarray) and Xp.numblocks == (1, 1)
    report = validate(local if one_block else Xp, scheduler=ctx.scheduler,
                      stored_chunks=source.stored_chunks, optimize_graph=False)
    report.raise_if_invalid(allow_nan=spec.masked)
    check_scale(report.min_value, report.max_value, Xp.dtype)
    if spec.beta <= 0.0 and report.min_value <= 0.0:
        raise InputError(
            f"the {spec.beta_name} loss (β = {spec.beta:g} <= 0) needs X > 0, but X "
            f"has zeros (min {report.min_value:.3g}) — add a small offset, or use "
            "kullback-leibler")
    n_observed = source.shape[0] * source.shape[1] - report.n_nan
    x_mean = report.total / max(n_observed, 1)
    if mask_p is not None and not spec.resume:
        # the mean of the observed entries only (one more pass, for the init's scale)
        observed = mask_p & ~da.isnan(Xp)
        total, count = ctx.compute(da.where(observed, Xp, 0).sum(dtype=np.float64),
                                   observed.sum())
        x_mean = float(total) / max(int(count), 1)
    if on_plan is not None:  # once X is known to be usable: a bad X gets its error line alone
        on_plan(plan, ctx)
    return Prepared(plan=plan, X=Xp, mask=mask_p, report=report, x_mean=x_mean,
                    w_scratch=w_scratch, local=local)


def check_scale(min_value: float, max_value: float, dtype: Any) -> None:
    """Refuse X whose magnitude the iterations cannot carry in ``dtype``: products of two
    entries (W H, ||X||^2, the Gram matrices) must neither overflow nor underflow."""
    info = np.finfo(dtype)
    top = float(np.sqrt(info.max)) / 1e3  # squares summed over rows and k stay finite
    bottom = float(np.sqrt(info.tiny)) * 1e3  # products of two entries stay normal numbers
    largest = max(abs(float(min_value)), abs(float(max_value)))
    if largest > top:
        raise InputError(
            f"X's largest value ({largest:.3g}) is too large for {np.dtype(dtype).name} "
            f"arithmetic (products of two entries would overflow above {top:.3g}) — rescale X "
            "(e.g. divide it by its maximum)"
            + (" or compute in float64 (--dtype float64)" if info.bits < 64 else ""))
    if 0 < largest < bottom:
        raise InputError(
            f"X's largest value ({largest:.3g}) is too small for {np.dtype(dtype).name} "
            f"arithmetic (products of two entries would underflow below {bottom:.3g}) — "
            "rescale X (e.g. divide it by its maximum)")


def plan_of(spec: FitSpec, source: Any, ctx: ExecutionContext) -> ChunkPlan:
    """The chunk plan of the fit ``spec`` describes (also :func:`dnmf.dry_run`'s)."""
    # restarts are stacked: the panels carry n_restarts * k columns of W. On a GPU the plan's
    # persist_x (host memory) is replaced by the device's own choice (see run).
    return plan_for(source, spec.columns, ctx, False if spec.device == "gpu" else spec.persist_x,
                    spec.max_panel_bytes, spec.min_panel_bytes, spec.scheme, spec.persist_w)


def check_plan(spec: FitSpec, plan: ChunkPlan) -> None:
    """Refuse what the 2-D block scheme does not run, once the plan has chosen it."""
    if not plan.is_2d:
        return
    if spec.n_restarts > 1:
        raise InputError(
            f"n_restarts={spec.n_restarts} batches the restarts in full-width row panels, but "
            f"one row of X with {spec.n_restarts} x k columns of W does not fit a task "
            f"({plan.describe()[0]}) — give the workers more memory (--memory-limit), use "
            "fewer restarts, or run single fits with different random_state")
    if spec.device == "gpu":
        raise InputError(
            "device='gpu' runs full-width row panels, but one row of X does not fit a task "
            f"({plan.describe()[0]}) — give the workers more memory (--memory-limit) or use "
            "device='cpu'")
    if spec.beta != 2.0 or spec.masked or spec.sum_to_one:
        raise InputError(
            "β-divergences, missing values and sum-to-one need full-width row panels, but "
            f"one row of X does not fit a task ({plan.describe()[0]}) — give the workers "
            "more memory (--memory-limit) or use the Frobenius loss")


def plan_for(source: Any, columns: int, ctx: ExecutionContext, persist_x: bool | str,
             max_panel_bytes: int | None, min_panel_bytes: int | None,
             scheme: str = "auto", persist_w: bool | str = "auto") -> ChunkPlan:
    """The chunk plan of ``source`` for W with ``columns`` columns on ``ctx``'s workers."""
    # on a cluster (and for sparse X, whose products are single-threaded, in-process too) at
    # least two panels per worker thread, so that none idles
    sparse = getattr(source, "sparse", False)
    min_panels = (2 * max(ctx.n_workers, 1) * ctx.threads_per_worker
                  if ctx.is_distributed or sparse else 1)
    return plan_chunks(
        source.array, columns, memory_per_worker=ctx.memory_per_worker, n_workers=ctx.n_workers,
        threads_per_worker=ctx.threads_per_worker, persist_x=persist_x,
        x_in_memory=source.format == "numpy", max_panel_bytes=max_panel_bytes,
        min_panel_bytes=min_panel_bytes, min_panels=min_panels,
        stored_rows=source.stored_chunks[0] if source.stored_chunks else None, scheme=scheme,
        sparse_nbytes=source.nbytes if sparse else None, persist_w=persist_w,
        sparse_bytes_known=getattr(source, "stored_nbytes", None) is not None,
    )


@functools.cache
def blas_controller() -> ThreadpoolController:
    """This process's BLAS libraries, found once: finding them (``threadpool_limits`` does it
    on every call) cost ~4 ms, as much as a whole small fit's iterations."""
    return ThreadpoolController()


def planned_input(X: Any, var: str | None, dtype: Any, source: Any, plan: ChunkPlan,
                  ctx: ExecutionContext, stack: contextlib.ExitStack) -> da.Array:
    """X in the plan's panels, its graph optimised once, persisted when the plan says so; the
    BLAS threads of this process limited for the plan (on ``stack``)."""
    stack.enter_context(
        blas_controller().limit(limits=blas_threads_for(ctx, plan.n_panels), user_api="blas"))
    Xp = planned_array(X, var, dtype, source, plan)
    # Optimise X's graph once: every iteration submits it again unoptimised, and a key
    # submitted with two different specs upsets the distributed scheduler.
    (Xp,) = dask.optimize(Xp)
    in_memory = source.format == "numpy"
    if plan.persist_x or (in_memory and ctx.is_distributed):
        # in-memory X goes to the workers once, not inside every iteration's graph; a block of
        # a raw Zarr chunk is a view of the mapped file: persisted, it is copied into memory
        # that is the workers' own
        if not in_memory and not getattr(source, "sparse", False):
            Xp = Xp.map_blocks(owned_block, dtype=Xp.dtype, meta=Xp._meta,
                               name="dnmf-x-in-memory-" + Xp.name)
        (Xp,) = ctx.persist(Xp, optimize=False)
    return Xp


def _regular(chunks: tuple[int, ...]) -> bool:
    """Chunks a reader can be opened with: all equal but a smaller last one."""
    return len(set(chunks[:-1])) <= 1 and chunks[-1] <= chunks[0]


def _panel_grid(source: Any, plan: ChunkPlan) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The plan's row and column chunks of X (one column chunk for row panels)."""
    return plan.row_chunks, plan.col_chunks or (source.shape[1],)


def _reopened_in_panels(source: Any, rows: tuple[int, ...], cols: tuple[int, ...]) -> bool:
    """Whether :func:`planned_array` opens X again with the panels ``rows`` x ``cols``: X
    came from a file and its blocks are not those panels."""
    return (source.path is not None and _regular(rows) and _regular(cols)
            and source.chunks != (rows, cols))


def planned_array(X: Any, var: str | None, dtype: Any, source: Any, plan: ChunkPlan) -> Any:
    """X in the plan's panels (or 2-D blocks): re-opened with them where X is a file or can be
    cut at any row (CSR), so that each task reads its own region instead of splitting a larger
    read held in memory (or, in memory, copying it)."""
    rows, cols = _panel_grid(source, plan)
    if source.in_row_panels is not None and len(cols) == 1:
        return source.in_row_panels(tuple(rows))
    if _reopened_in_panels(source, rows, cols):
        source = open_matrix(X, var, dtype=dtype, chunks=(rows[0], cols[0]))
    return apply_plan(source.array, plan)


def panels_are_mapped(X: Any, source: Any, plan: ChunkPlan) -> bool:
    """Whether :func:`planned_array`'s panels will be views of mapped chunk files, read
    without a copy (dnmf's raw reader: :attr:`dnmf.io.MatrixSource.mapped`).

    They are where X's reader maps its chunks, the panels come straight from a reader (X's
    own blocks, or X given as a path and re-opened in the plan's panels; an opened source
    or array is rechunked, which copies), and each panel lies inside one stored chunk (a
    panel spanning chunks is assembled by a copy).
    """
    stored = source.stored_chunks
    if not source.mapped or plan.is_2d or stored is None or len(stored) != 2:
        return False
    rows, cols = _panel_grid(source, plan)
    if source.chunks != (rows, cols) and not (
            isinstance(X, str | os.PathLike) and _reopened_in_panels(source, rows, cols)):
        return False
    if len(cols) != 1 or stored[1] < source.shape[1]:
        return False
    start = 0
    for r in rows:
        if start // stored[0] != (start + r - 1) // stored[0]:
            return False
        start += r
    return True


def w_scratch_dir(out: Any, stack: contextlib.ExitStack) -> str:
    """A scratch directory for W streamed through Zarr, removed when the fit's context ends.

    Next to ``out`` when given (workers can see it: they write ``out`` too), else in the
    temporary directory (a LocalCluster's workers share it).
    """
    local = None if out is None else local_path(out)
    if local is not None:
        local = local.absolute()
        local.parent.mkdir(parents=True, exist_ok=True)
        path = tempfile.mkdtemp(prefix=f".{local.name}.w-scratch-", dir=local.parent)
    else:
        path = tempfile.mkdtemp(prefix="dnmf-w-scratch-")
    stack.callback(shutil.rmtree, path, ignore_errors=True)
    return path


# ---------------------------------------------------------------------------------------------
# checkpoint_writer and starting_point
# ---------------------------------------------------------------------------------------------


class CheckpointWriter:
    """Writes the checkpoints of one fit into its result store (``dnmf.io.checkpoint``)."""

    def __init__(self, out: Any, *, overwrite: bool, params: dict, fingerprint: dict,
                 scheduler: Any, started: bool, device: str = "cpu") -> None:
        self.out, self.overwrite, self.scheduler = out, overwrite, scheduler
        self.params, self.fingerprint, self.started = params, fingerprint, started
        self.device = device

    def __call__(self, state: Any) -> da.Array:
        """Write a checkpoint; return its W, read back lazily (the loop restarts from it).

        A first checkpoint that fails (a full disk) removes the OUT it created: no store that
        ``--resume`` would then refuse is left behind.
        """
        first = not self.started
        if first:  # OUT appears with the first checkpoint
            checkpoint.start(self.out, overwrite=self.overwrite)
            self.started = True
        try:
            with disk_errors_named(self.out, result_bytes(state.W, state.H)):
                W = checkpoint.write(
                    self.out, W=devices.to_host(state.W), H=state.H, iteration=state.n_iter,
                    loss_history=state.loss_history,
                    seconds_per_iteration=state.seconds_per_iteration, params=self.params,
                    fingerprint=self.fingerprint, scheduler=self.scheduler)
        except BaseException:
            if first and (local := local_path(self.out)) is not None:
                remove_path(local)
                self.started = False
            raise
        checkpoint.mark(self.out, "running")
        return devices.to_device(W) if self.device == "gpu" else W

    def interrupted(self, state: Any) -> None:
        """A final checkpoint of the last complete iteration, and status ``interrupted``."""
        if state.n_iter > 0:
            self(state)
        if self.started:
            checkpoint.mark(self.out, "interrupted")

    def finish(self, W: da.Array, H: Any, attrs: dict,
               coords: dict[str, Any] | None = None) -> None:
        with disk_errors_named(self.out, result_bytes(W, H)):
            checkpoint.finish(self.out, W=devices.to_host(W), H=H, attrs=attrs,
                              scheduler=self.scheduler, coords=coords)


def result_bytes(W: Any, H: Any) -> int:
    """Bytes of W and H as stored uncompressed: what writing a result or checkpoint needs at
    most."""
    return int(W.shape[0] * W.shape[1] * W.dtype.itemsize
               + H.shape[0] * H.shape[1] * H.dtype.itemsize)


def checkpoint_writer(spec: FitSpec, opened: Opened, prepared: Prepared, ctx: ExecutionContext,
                      out: Any) -> CheckpointWriter | None:
    """The fit's checkpoint writer (None without ``out`` or with checkpoints off)."""
    if out is None or not (spec.checkpoint_every or spec.resume):
        return None
    params = spec.checkpoint_params(
        dtype=prepared.X.dtype, scheme=prepared.plan.scheme,
        mask_path=None if opened.mask is None else opened.mask.path)
    return CheckpointWriter(out, overwrite=spec.overwrite, params=params,
                            fingerprint=checkpoint.fingerprint(prepared.X, ctx.scheduler),
                            scheduler=ctx.scheduler, started=spec.resume, device=spec.device)


@dataclass
class Start:
    """Where the loop starts: the stacked initial factors, or a checkpoint's iterate."""

    W: da.Array
    H: Any
    iteration: int = 0
    loss_history: list | None = None
    seconds_per_iteration: list[float] | None = None


def starting_point(spec: FitSpec, opened: Opened, prepared: Prepared,
                   writer: CheckpointWriter | None, *, W_init: Any = None,
                   H_init: Any = None) -> Start:
    """The checkpoint's iterate (checked against this run), or fresh initial factors."""
    Xp, ckpt = prepared.X, opened.checkpoint
    if ckpt is not None:
        checkpoint.check_compatible(ckpt, writer.params, writer.fingerprint,
                                    max_iter=spec.max_iter)
        opened.notes.extend(ckpt.notes)
        opened.notes.append(f"resumed from the checkpoint at iteration {ckpt.iteration}")
        return Start(W=ckpt.W.astype(Xp.dtype).rechunk((Xp.chunks[0], (spec.columns,))),
                     H=ckpt.H, iteration=ckpt.iteration, loss_history=ckpt.loss_history,
                     seconds_per_iteration=ckpt.seconds_per_iteration)
    X_init = Xp if not spec.masked else filled(Xp, prepared.mask, prepared.x_mean)
    if (prepared.local is not None and writer is None and not spec.masked
            and spec.init in IN_PROCESS_INITS):
        X_init = prepared.local  # numpy W and H, no graph
    W0, H0 = initial_factors(X_init, spec.rank, init=spec.init, seeds=spec.restart_seeds(),
                             x_mean=prepared.x_mean, sum_to_one=spec.sum_to_one,
                             W_init=W_init, H_init=H_init)
    return Start(W=W0, H=H0)


def initial_factors(X: da.Array, rank: int, *, init: str, seeds: list[int], x_mean: float,
                    sum_to_one: bool = False, W_init: Any = None,
                    H_init: Any = None) -> tuple[da.Array, Any]:
    """The starting ``(W, H)`` of ``len(seeds)`` restarts, stacked side by side: restart 0 by
    ``init``, the others at random from their seeds; rows of W on the simplex for
    ``sum_to_one`` (a feasible start)."""
    starts = []
    for r, seed_r in enumerate(seeds):
        init_r = init if r == 0 else "random"
        W_r, H_r = initialize(X, rank, init=init_r, seed=seed_r, x_mean=x_mean,
                              W_init=W_init, H_init=H_init)
        if sum_to_one and init_r not in ("custom", "spa", "vca"):
            # start feasible: rows of W summing to one, H carrying the scale (SPA and VCA
            # start there already: H are pixels, W their abundances)
            W_r, H_r = rows_to_simplex(W_r, H_r)
        starts.append((W_r, H_r))
    if len(starts) == 1:
        return starts[0]
    W0 = da.concatenate([w for w, _ in starts], axis=1).rechunk({1: rank * len(starts)})
    H0 = np.concatenate([np.asarray(h, dtype=X.dtype) for _, h in starts])
    return W0, H0


def filled(X: da.Array, mask: da.Array | None, value: float) -> da.Array:
    """X with missing entries replaced by ``value``: only for initialisation."""
    missing = da.isnan(X) if mask is None else da.isnan(X) | ~mask
    return da.where(missing, X.dtype.type(value), X)


def rows_to_simplex(W: da.Array, H: Any) -> tuple[da.Array, Any]:
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


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------


def run(spec: FitSpec, opened: Opened, prepared: Prepared, start: Start, ctx: ExecutionContext,
        *, writer: CheckpointWriter | None = None, out: Any = None,
        callback: Callable[[IterationInfo], None] | None = None,
        impute: bool = False, sq_norm: float | None = None) -> RestartsState:
    """The one iteration loop over the planned X from ``start``; a plain fit is one restart.

    ``impute``: EM imputation of the missing entries (``rank``'s held-out fits) instead of
    masked multiplicative updates; ``sq_norm`` replaces the validation pass's ``||X||^2``.
    """
    plan, Xp, in_memory = prepared.plan, prepared.X, opened.source.format == "numpy"
    X_fit, mask_fit, W0 = Xp, prepared.mask, start.W
    bytes_read = plan.reads_per_iteration and (2 if plan.is_2d else 1) * Xp.nbytes
    if spec.device == "gpu":
        X_fit, mask_fit, W0, kept = to_device(Xp, prepared.mask, W0, spec.persist_x, ctx)
        if kept:
            bytes_read = 0
            opened.notes.append(f"X kept in device memory ({Xp.nbytes / 2**30:.2f} GiB): no "
                                "reads of X per iteration")
    l1_w, l2_w, l1_h, l2_h = spec.penalties(opened.source.shape)
    local = None if impute or writer is not None else prepared.local
    step = make_step(
        X_fit, ctx, solver=spec.solver, sq_norm=prepared.report.sq_norm if sq_norm is None
        else sq_norm, restarts=spec.n_restarts, stacked=spec.n_restarts > 1 or impute,
        l1_w=l1_w, l2_w=l2_w, l1_h=l1_h, l2_h=l2_h, beta=spec.beta, masked=spec.masked,
        mask=mask_fit, sum_to_one=spec.sum_to_one, w_scratch=prepared.w_scratch,
        second_read=not (plan.persist_x or in_memory), impute=impute, local=local)
    history = start.loss_history
    if history is not None and spec.n_restarts == 1:
        history = [history]  # a plain fit's checkpoint holds one flat history
    try:
        return run_iterations(
            step, W0, start.H, max_iter=spec.max_iter, tol=spec.tol, max_time=spec.max_time,
            bytes_per_iteration=bytes_read, callback=callback, start_iteration=start.iteration,
            loss_history=history, seconds_per_iteration=start.seconds_per_iteration,
            checkpoint=writer, checkpoint_every=spec.checkpoint_every,
            loss_every=spec.loss_every)
    except Interrupted as exc:
        if writer is not None:
            writer.interrupted(exc.state)
            raise Interrupted(exc.state, resume_hint=str(out)) from None
        raise


def local_x(spec: FitSpec, opened: Opened, Xp: da.Array, X: Any, plan: ChunkPlan,
            ctx: ExecutionContext, *, masked: bool, w_scratch: str | None) -> Any:
    """X itself (numpy, or CSR for sparse input) when the fit can run in this process, else
    None.

    Small in-memory inputs (up to :data:`IN_PROCESS_MAX_BYTES`) fitted with the in-process
    scheduler, on the CPU, one restart, row panels, no explicit mask: there the per-iteration
    graph and scheduler call cost more than the arithmetic. The loop is the same; its step
    calls the graph's panel task on the whole X (:func:`run`; not with checkpoints, or for
    ``rank``'s imputation). The validation and the init (:data:`IN_PROCESS_INITS`) run on it
    too, without a graph.
    """
    if (opened.source.format not in IN_MEMORY_FORMATS or Xp.nbytes > IN_PROCESS_MAX_BYTES
            or ctx.client is not None or spec.device != "cpu" or spec.n_restarts > 1
            or masked or plan.is_2d or w_scratch is not None or len(Xp.chunks[1]) > 1):
        return None
    if (isinstance(X, np.ndarray) and Xp.numblocks == (1, 1) and X.dtype == Xp.dtype
            and X.shape == Xp.shape):
        return X  # the one block would be X itself: no graph to compute it
    blocks = ctx.compute(*Xp.to_delayed().ravel())
    if len(blocks) == 1:
        return blocks[0]
    if sp.issparse(blocks[0]):
        return sp.vstack(blocks, format="csr")
    return np.concatenate([np.asarray(b) for b in blocks])


def to_device(Xp: da.Array, mask: da.Array | None, W0: da.Array, persist_x: bool | str,
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


# ---------------------------------------------------------------------------------------------
# finish
# ---------------------------------------------------------------------------------------------


def finish(spec: FitSpec, opened: Opened, prepared: Prepared, loop: RestartsState,
           ctx: ExecutionContext, *, writer: CheckpointWriter | None = None, out: Any = None,
           t_start: float, coords: dict[str, Any] | None = None) -> FitResult:
    """The kept restart's factors, components ordered by decreasing contribution, written to
    ``out`` (atomically, with X's labels ``coords``: see :func:`dnmf.named_axes.store_coords`)
    or brought back in a form that outlives the execution context."""
    if spec.n_restarts > 1:
        best = best_restart(loop.final_losses)
        opened.notes.append(
            f"{spec.n_restarts} restarts batched in {loop.n_iter} passes over X; kept "
            f"restart {best} (lowest final loss)")
        state = loop.solver_state(best)
    else:
        state = loop.solver_state(0)
    result, W, order = fit_result(spec, opened, prepared, state, ctx)
    summarise_restarts(result, loop, state, order)
    # W's columns are reordered as it is written or gathered (bring_back)
    columns = None if np.array_equal(order, np.arange(spec.rank)) else order
    if out is not None:
        W = W[:, columns] if columns is not None else W
        result.wall_time_s = time.perf_counter() - t_start
        attrs = store_attrs(result, opened.source.describe())
        if writer is not None and writer.started:
            writer.finish(W, result.H, attrs, coords)
            result.path = os.fspath(out)
        else:
            with disk_errors_named(out, result_bytes(W, result.H)):
                result.path = write_result(out, W=W, H=result.H, attrs=attrs,
                                           overwrite=spec.overwrite, scheduler=ctx.scheduler,
                                           coords=coords)
        H_is_chunked = isinstance(result.H, da.Array)
        result.W, stored_H, _ = open_result(result.path)
        if H_is_chunked:
            result.H = stored_H
    else:
        # an in-memory input (numpy or scipy.sparse) gets numpy back, as from scikit-learn
        result.W = bring_back(W, ctx, opened.source.format in IN_MEMORY_FORMATS, result.notes,
                              columns=columns)
        if isinstance(result.H, da.Array):
            result.H = bring_back(result.H, ctx, True, result.notes, name="H")
    return result


def fit_result(spec: FitSpec, opened: Opened, prepared: Prepared, state: SolverState,
               ctx: ExecutionContext) -> tuple[FitResult, Any, np.ndarray]:
    """``(result without W, W as the loop left it, the component order)``."""
    order = component_order(state.WtW, state.HHt)
    reorder = not np.array_equal(order, np.arange(spec.rank))
    H = state.H[order] if reorder else state.H
    if not isinstance(H, da.Array):
        H = np.ascontiguousarray(H, dtype=prepared.X.dtype)
    W = devices.to_host(state.W)  # a GPU's W comes back here (a no-op for numpy blocks)
    loss, sq_norm = state.final_loss, prepared.report.sq_norm
    check_finite_factors(state, H)
    rel = state.final_relative_error
    if rel is None:
        rel = float(np.sqrt(loss / sq_norm)) if sq_norm > 0 else 0.0
    # scikit-learn's reconstruction_err_: ||X - WH||_F, or sqrt(2 * D_β) for other losses
    err = float(np.sqrt(loss if spec.beta == 2.0 else 2.0 * loss))
    result = FitResult(
        W=None, H=H, n_iter=state.n_iter, converged=state.converged,
        loss_history=state.loss_history, reconstruction_err=err, relative_error=rel,
        solver=spec.solver, beta_loss=spec.beta_name, init=spec.init, seed=int(spec.seed),
        plan=prepared.plan, wall_time_s=0.0, seconds_per_iteration=state.seconds_per_iteration,
        stop_reason=state.stop_reason, notes=opened.notes, scheduler=ctx.describe(),
        device=spec.device, missing="mask" if spec.masked else "error",
        w_sum_to_one=spec.sum_to_one, regularization=spec.regularization,
        loss_every=spec.loss_every)
    return result, W, order


def check_finite_factors(state: SolverState, H: Any) -> None:
    """The last check before a result is written or returned: a finite loss, H and W (W's
    column sums of squares, the diagonal of W^T W, are finite exactly when W is)."""
    host_H = None if isinstance(H, da.Array) else np.asarray(H)
    finite = (np.isfinite(state.final_loss) and np.all(np.isfinite(np.diag(state.WtW)))
              and (host_H is None or bool(np.all(np.isfinite(host_H)))))
    if not finite:
        history = [float(v) for v in state.loss_history]
        # the first iteration after the last finite loss (the NaN of iterations whose loss
        # was not evaluated, loss_every, end no earlier)
        last = max((i for i, v in enumerate(history) if np.isfinite(v)), default=-1)
        bad = last + 2 if last + 1 < len(history) else state.n_iter
        raise NumericalError(
            f"the fit became non-finite at iteration {bad}; nothing was written as a result "
            f"— {NON_FINITE_FIX}", iteration=bad)


def summarise_restarts(result: FitResult, loop: RestartsState, state: SolverState,
                       order: np.ndarray) -> None:
    """The per-restart fields of ``result`` (one restart: the fit itself, its components in
    ``order``)."""
    if loop.restarts == 1:
        result.restart_losses = [float(state.final_loss)]
        result.restart_relative_errors = [float(result.relative_error)]
        result.restart_n_iter = [int(state.n_iter)]
        result.restart_seeds = [int(result.seed)]
        if not isinstance(state.H, da.Array):
            result.restart_H = np.asarray(state.H, dtype=np.float64)[order][None]
            norms = np.sqrt(np.clip(np.diag(state.WtW), 0, None))
            result.restart_W_norms = norms[order][None]
        return
    R = loop.restarts
    result.n_restarts = R
    result.best_restart = best_restart(loop.final_losses)
    result.restart_losses = [float(v) for v in loop.final_losses]
    result.restart_relative_errors = [float(v) for v in loop.final_relative_errors]
    result.restart_n_iter = [len(h) for h in loop.loss_history]
    result.restart_seeds = restart_seeds(result.seed, R)
    Hs, norms = [], []
    for r in range(R):
        o = component_order(loop.WtW[r], loop.HHt[r])
        Hs.append(loop.H[loop.block(r)][o])
        norms.append(np.sqrt(np.clip(np.diag(loop.WtW[r]), 0, None))[o])
    result.restart_H = np.stack(Hs)
    result.restart_W_norms = np.stack(norms)


def bring_back(W: da.Array, ctx: ExecutionContext, in_memory: bool, notes: list[str],
               name: str = "W", columns: np.ndarray | None = None) -> Any:
    """A factor (W, or a chunked H) in a form that outlives the execution context, with its
    columns taken in the order ``columns`` (all, as they are, when None)."""
    if isinstance(W, np.ndarray):  # an in-process fit's W (in-memory input)
        return W if columns is None else W[:, columns]
    if columns is not None and W.nbytes > W_IN_MEMORY_MAX_BYTES:
        W = W[:, columns]
    if W.nbytes <= W_IN_MEMORY_MAX_BYTES:
        values = gathered(W, ctx, columns)
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


def gathered(W: da.Array, ctx: ExecutionContext, columns: np.ndarray | None) -> np.ndarray:
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


def store_attrs(result: FitResult, input_desc: dict) -> dict[str, Any]:
    """The result store's attributes of a fit (``CONTRACT.md``)."""
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
        "loss_every": result.loss_every,  # the null entries of loss_history: not evaluated
        "input": redacted(input_desc),  # a URL's embedded credentials never stored
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
