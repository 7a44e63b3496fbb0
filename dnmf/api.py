"""The functional API: :func:`factorize`, :func:`dry_run`, transform and info.

``factorize`` is the one code path of every fit (the estimator and the CLI call it): a short
sequence of the named stages of :mod:`dnmf.pipeline` (open -> prepare -> start -> run ->
finish) on a :class:`~dnmf.spec.FitSpec` that holds every parameter check needing no data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from dnmf import cost_model, divergence, graph, kernels, named_axes, pipeline
from dnmf import device as devices
from dnmf._version import __version__
from dnmf.aliases import (
    ArrayLike,
    ClientLike,
    DTypeLike,
    MatrixLike,
    PathLike,
    RandomStateLike,
    SchedulerLike,
)
from dnmf.cluster import ExecutionContext, execution_context
from dnmf.errors import InputError
from dnmf.init import initialize, resolve_init
from dnmf.io import check_rank, open_matrix, validate
from dnmf.io.overlap import Stored, check_outputs_are_not_inputs
from dnmf.io.remote import input_options, storage_options_used, uses_storage_options
from dnmf.io.result_store import check_output, open_result, write_result
from dnmf.pipeline import IN_MEMORY_FORMATS, W_IN_MEMORY_MAX_BYTES, FitResult, check_variant
from dnmf.plan import ChunkPlan
from dnmf.solvers import IterationInfo
from dnmf.spec import (
    LATE_PARAMETERS,
    MISSING,
    PARAMETERS,
    check_parameters,
    regularization,
    resolve,
    resolve_beta,
    resolve_seed,
    resolve_solver,
    restart_seeds,
)

__all__ = [
    "IN_MEMORY_FORMATS", "MISSING", "W_IN_MEMORY_MAX_BYTES", "DryRun", "FitResult",
    "IterationInfo", "MatrixInfo", "dry_run", "factorize", "matrix_info", "partial_fit_batch",
    "regularization", "resolve_beta", "resolve_seed", "resolve_solver", "restart_seeds",
    "transform_rows", "transform_to_store",
]


def factorize(
    X: MatrixLike,
    rank: int,
    *,
    var: str | None = None,
    solver: str = "auto",
    beta_loss: str | float = "frobenius",
    init: str | None = "auto",
    max_iter: int = 200,
    tol: float = 1e-4,
    random_state: RandomStateLike = None,
    n_restarts: int = 1,
    dtype: DTypeLike = None,
    W_init: ArrayLike | None = None,
    H_init: ArrayLike | None = None,
    alpha_W: float = 0.0,
    alpha_H: float | str = "same",
    l1_ratio: float = 0.0,
    missing: str = "error",
    mask: MatrixLike | None = None,
    mask_var: str | None = None,
    w_sum_to_one: bool = False,
    max_time: float | None = None,
    scheduler: SchedulerLike = "auto",
    client: ClientLike | None = None,
    workers: int | None = None,
    memory_limit: str | int | None = None,
    device: str = "cpu",
    persist_x: bool | str = "auto",
    persist_w: bool | str = "auto",
    max_panel_bytes: int | None = None,
    min_panel_bytes: int | None = None,
    scheme: str = "auto",
    out: PathLike | None = None,
    overwrite: bool = False,
    checkpoint_every: int = 10,
    resume: bool = False,
    loss_every: int | None = None,
    callback: Callable[[IterationInfo], None] | None = None,
    on_plan: Callable[[ChunkPlan, ExecutionContext], None] | None = None,
    axis_labels: named_axes.AxisLabels | None = None,
    storage_options: dict[str, Any] | None = None,
    out_storage_options: dict[str, Any] | None = None,
) -> FitResult:
    """Factorize a non-negative matrix ``X ~= W @ H`` out of core on Dask.

    Parameters
    ----------
    X : array-like, dask array, zarr array, xarray.DataArray, AnnData, or path/URL of size (n_samples, n_features)
        A numpy/dask/zarr array, or a Zarr/HDF5/NetCDF/.npy path (``var`` names the array
        inside a container). Labelled X (an ``xarray.DataArray``, an ``anndata.AnnData``,
        backed or not) gives W and H as DataArrays carrying its row and column labels, also
        written to ``out`` (see :mod:`dnmf.named_axes`).
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
        Stop when the loss decreases by less than ``tol`` relative to the previous iteration
        (with ``loss_every`` N: when the last two evaluated losses, N iterations apart, differ
        by less than ``tol`` per iteration).
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
    loss_every : int, optional
        β-divergences and missing values: evaluate the loss every this many iterations (>= 1),
        on the last one and where a checkpoint is written; ``loss_history`` holds NaN at the
        other iterations (one entry per iteration all the same) and ``tol`` compares the
        evaluated losses. The loss's logs and powers are then skipped in the other
        iterations' passes (no second pass for it); W and H are the same whatever N. Default
        10 for β != 2 (the loss is 45% of a KL panel step), 1 for Frobenius with missing
        values (6-13%). Unmasked Frobenius fits get the loss from their products every
        iteration: the option changes nothing there.
    callback : callable, optional
        Called with an :class:`IterationInfo` after each iteration.
    on_plan : callable, optional
        Called with the chunk plan and execution context before iterating.
    axis_labels : dnmf.named_axes.AxisLabels, optional
        Row and column labels for an X that has none of its own (the estimator passes those
        of the xarray or AnnData it took X from); labelled X brings its own.
    storage_options : dict, optional
        fsspec options (endpoint, credentials) of the URLs read and written: X, the mask and
        ``out``. Never stored, logged or shown.
    out_storage_options : dict, optional
        fsspec options of ``out`` where they differ from ``storage_options``.

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
    X, labelled_var, axes = named_axes.split(X)  # xarray / AnnData: the matrix and its labels
    var, axes = labelled_var or var, axes or axis_labels
    spec = resolve(
        rank, solver=solver, beta_loss=beta_loss, init=init, max_iter=max_iter, tol=tol,
        max_time=max_time, random_state=random_state, n_restarts=n_restarts, missing=missing,
        has_mask=mask is not None, has_custom=W_init is not None or H_init is not None,
        w_sum_to_one=w_sum_to_one, alpha_W=alpha_W, alpha_H=alpha_H, l1_ratio=l1_ratio,
        device=device, persist_x=persist_x, persist_w=persist_w,
        max_panel_bytes=max_panel_bytes, min_panel_bytes=min_panel_bytes, scheme=scheme,
        checkpoint_every=checkpoint_every, resume=resume, overwrite=overwrite,
        has_out=out is not None, loss_every=loss_every)
    with contextlib.ExitStack() as stack:
        stack.enter_context(storage_options_used(storage_options, out_storage_options))
        opened = pipeline.open_input(spec, X, var=var, dtype=dtype, mask=mask,
                                     mask_var=mask_var, W_init=W_init, H_init=H_init, out=out,
                                     stack=stack)
        spec = opened.spec  # with the checkpoint's seed when resuming without one
        ctx = pipeline.fit_context(opened, stack, scheduler=scheduler, client=client,
                                   workers=workers, memory_limit=memory_limit, out=out)
        prepared = pipeline.prepare(spec, opened, ctx, stack, X, var=var, dtype=dtype, out=out,
                                    on_plan=on_plan)
        writer = pipeline.checkpoint_writer(spec, opened, prepared, ctx, out)
        start = pipeline.starting_point(spec, opened, prepared, writer, W_init=W_init,
                                        H_init=H_init)
        loop = pipeline.run(spec, opened, prepared, start, ctx, writer=writer, out=out,
                            callback=callback)
        result = pipeline.finish(spec, opened, prepared, loop, ctx, writer=writer, out=out,
                                 t_start=t_start, coords=named_axes.store_coords(axes))
    result.wall_time_s = time.perf_counter() - t_start
    return named_axes.labelled_result(result, axes)


@dataclass
class DryRun:
    """What :func:`factorize` would do, computed without reading X's values."""

    source: Any
    plan: ChunkPlan
    where: str
    solver: str
    init: str
    #: the cost model's prediction for this plan on this cluster (None where it does not apply)
    prediction: Any = None
    #: the bandwidths the prediction assumed (:class:`dnmf.cost_model.Bandwidths`)
    bandwidths: Any = None
    #: whether the memory bandwidth was left to X's reader (not stated)
    memory_from_reader: bool = False

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
            *self.prediction_lines(),
        ]

    def prediction_lines(self) -> list[str]:
        """The cost model's lines (:mod:`dnmf.cost_model`), with the bandwidths it assumed."""
        if self.prediction is None:
            return ["predicted: no cost model for this scheme (2-D blocks, sparse X or "
                    "restarts)"]
        bw = self.bandwidths
        how = ""
        if self.memory_from_reader:
            how = (" (X's panels are mapped chunks of an uncompressed local Zarr, not copied)"
                   if bw.memory == cost_model.MAPPED_BANDWIDTH else " (a copy or a decode)")
        return [*self.prediction.describe(),
                f"predicted with disk {bw.disk / 1e9:g} GB/s, network "
                f"{bw.network / 1e9:g} GB/s per worker and memory {bw.memory / 1e9:g} GB/s "
                f"per thread{how} (--disk-bandwidth, --network-bandwidth, "
                "--memory-bandwidth); coefficients: "
                f"{cost_model.CALIBRATED.provenance}"]


@uses_storage_options
def dry_run(
    X: MatrixLike,
    rank: int,
    *,
    var: str | None = None,
    dtype: Any = None,
    solver: str = "auto",
    beta_loss: str | float = "frobenius",
    init: str | None = "auto",
    scheduler: SchedulerLike = "auto",
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
    storage_options: dict[str, Any] | None = None,
    out_storage_options: dict[str, Any] | None = None,
    bandwidths: Any = None,
) -> DryRun:
    """Check the parameters and the output, open X lazily and make the chunk plan; write nothing.

    A LocalCluster is planned for but not started; an address is connected to for its workers'
    sizes. Restarts are planned as :func:`factorize` runs them: ``n_restarts * rank`` columns.
    ``storage_options``, ``out_storage_options``: as :func:`factorize`. ``bandwidths``
    (:class:`dnmf.cost_model.Bandwidths`, default its stated defaults) feed the cost model's
    prediction of seconds per iteration and memory per worker (``prediction``).
    """
    spec = resolve(rank, solver=solver, beta_loss=beta_loss, init=init, missing=missing,
                   has_mask=masked, n_restarts=n_restarts, device=device, persist_x=persist_x,
                   max_panel_bytes=max_panel_bytes, min_panel_bytes=min_panel_bytes,
                   scheme=scheme, overwrite=overwrite, has_out=out is not None)
    check_outputs_are_not_inputs({"output": out}, {"the input": Stored(X, var)})
    if out is not None:
        check_output(out, overwrite=overwrite)
    source = open_matrix(X, var, dtype=dtype)
    return _planned_run(spec, source, X, scheduler=scheduler, workers=workers,
                        memory_limit=memory_limit, bandwidths=bandwidths)


def _planned_run(spec: Any, source: Any, X: Any, *, scheduler: Any = "auto",
                 workers: int | None = None, memory_limit: str | int | None = None,
                 bandwidths: Any = None) -> DryRun:
    """The dry run of ``spec`` on ``source``, opened from ``X``: its checks against X's
    metadata and the chunk plan on the scheduler it would get (a LocalCluster is planned,
    not started)."""
    from dnmf.cluster import parse_memory, planned_context, resolve_scheduler_name

    check_rank(source.shape, spec.rank)
    check_variant(source, spec.beta, spec.masked, spec.device)
    mem = parse_memory(memory_limit)
    gpu = spec.device == "gpu"
    name = scheduler if not isinstance(scheduler, str) else resolve_scheduler_name(
        scheduler, x_nbytes=source.nbytes, memory_limit=mem, gpu=gpu,
        x_in_memory=source.format in IN_MEMORY_FORMATS)
    if isinstance(name, str) and name in ("threads", "sync", "local", "cuda"):
        ctx = planned_context(name, workers=workers, memory_limit=mem)
        where = ctx.describe() + (" (not started)" if name in ("local", "cuda") else "")
        if gpu and name != "cuda":
            where += f"; device: gpu, {devices.require_gpu()}"
        plan = pipeline.plan_of(spec, source, ctx)
    else:
        with execution_context(name, x_nbytes=source.nbytes) as ctx:
            where = ctx.describe()
            plan = pipeline.plan_of(spec, source, ctx)
    # the memory bandwidth, where not stated, as X's reader will read the plan's panels
    bandwidths = bandwidths or cost_model.Bandwidths()
    memory_from_reader = bandwidths.memory is None
    bandwidths = cost_model.read_bandwidths(
        bandwidths, mapped=pipeline.panels_are_mapped(X, source, plan))
    prediction = None
    if (spec.solver in ("hals", "mu") and spec.beta == 2.0 and not spec.masked
            and spec.n_restarts == 1 and not gpu):
        prediction = cost_model.predict_plan(plan, workers=ctx.n_workers,
                                             threads=ctx.threads_per_worker,
                                             bandwidths=bandwidths, solver=spec.solver)
    return DryRun(source=source, plan=plan, where=where, solver=spec.solver, init=spec.init,
                  prediction=prediction, bandwidths=bandwidths,
                  memory_from_reader=memory_from_reader)


def transform_rows(X: Any, H: np.ndarray, *, var: str | None = None, scheduler: Any = "auto",
                   client: Any = None, l1: float = 0.0, l2: float = 0.0,
                   beta_loss: str | float = "frobenius", missing: str = "error",
                   w_sum_to_one: bool = False, max_iter: int = 200,
                   tol: float = 1e-6, storage_options: dict[str, Any] | None = None) -> Any:
    """W for the rows of ``X`` with H fixed, in one pass over X (a task per row panel).

    Frobenius on fully observed X: exact NNLS per row (fully constrained with
    ``w_sum_to_one``). Other β or missing values: multiplicative updates on each panel until
    the panel's loss decreases by less than ``tol`` (relative) or ``max_iter``.
    numpy in -> numpy out; otherwise a lazy dask array (chunked like X's rows). Labelled X
    (xarray, AnnData) gets that W as a DataArray with X's row labels (see
    :mod:`dnmf.named_axes`).
    ``storage_options``: fsspec options of X's URL.
    """
    X, labelled_var, axes = named_axes.split(X)
    var = labelled_var or var
    beta = resolve_beta(beta_loss)
    check_parameters(PARAMETERS, {"missing": missing})
    masked = missing == "mask"
    H = np.asarray(H)
    source = open_matrix(X, var, dtype=H.dtype, storage_options=storage_options)
    if source.shape[1] != H.shape[1]:
        raise InputError(
            f"X has {source.shape[1]} features but the model has {H.shape[1]} — transform data "
            "with the same columns as the fitted data"
        )
    check_variant(source, beta, masked)
    Xp = source.array
    if len(Xp.chunks[1]) > 1:
        Xp = Xp.rechunk({1: -1})
    here = _block_here(X, Xp, source, scheduler, client)
    check_values(Xp if here is None else here, beta, masked, scheduler=scheduler, client=client)
    k = H.shape[0]
    if beta == 2.0 and not masked:
        HHt = H.astype(np.float64) @ H.T.astype(np.float64)
        kernel, kwargs, name = kernels.transform_rows, {
            "H": H, "HHt": HHt, "l1": l1, "l2": l2, "sum_to_one": w_sum_to_one}, "dnmf-transform"
    else:
        if w_sum_to_one:
            raise InputError("w_sum_to_one transform is available for the Frobenius loss on "
                             "fully observed rows — drop one of them")
        kernel, kwargs, name = divergence.transform_rows_beta, {
            "H": H, "beta": beta, "l1": l1, "l2": l2, "masked": masked, "max_iter": max_iter,
            "tol": tol}, "dnmf-transform-mu"
    if here is not None:  # the graph's one panel task, called here
        return named_axes.labelled(kernels.call_aligned(kernel, here, **kwargs), axes, "W")
    W = graph.map_panels(Xp, kernel, k=k, dtype=H.dtype, name=name, **kwargs)
    if source.format in IN_MEMORY_FORMATS:  # numpy or scipy.sparse in -> numpy out
        with execution_context(scheduler, x_nbytes=Xp.nbytes, client=client) as ctx:
            W = ctx.compute(W)[0]
    return named_axes.labelled(W, axes, "W")


def _block_here(X: Any, Xp: Any, source: Any, scheduler: Any, client: Any) -> Any:
    """X's one block when ``transform`` can run in this process without a graph: a numpy X
    of one panel, at most ``pipeline.IN_PROCESS_MAX_BYTES``, the in-process scheduler (as
    an in-process fit); else None."""
    if (isinstance(X, np.ndarray) and source.format == "numpy" and Xp.numblocks == (1, 1)
            and X.dtype == Xp.dtype and X.shape == Xp.shape
            and X.nbytes <= pipeline.IN_PROCESS_MAX_BYTES and client is None
            and scheduler in ("auto", "threads", "sync", None)):
        return X
    return None


def check_values(X: da.Array, beta: float, masked: bool, *, scheduler: Any = "auto",
                 client: Any = None) -> None:
    """The fit's validation pass on rows to transform: negative, NaN (unless ``masked``) and
    infinite entries raise :class:`InputError` with the fit's messages, and so do zeros for
    β <= 0."""
    if isinstance(X, np.ndarray):  # in memory: validated here (see dnmf.io.validate)
        report = validate(X)
    elif callable(scheduler):  # an active context's scheduler (transform_to_store)
        report = validate(X, scheduler=scheduler)
    else:
        with execution_context(scheduler, x_nbytes=X.nbytes, client=client) as ctx:
            report = validate(X, scheduler=ctx.scheduler)
    report.raise_if_invalid(allow_nan=masked)
    if beta <= 0.0 and report.min_value <= 0.0:
        raise InputError(
            f"the {divergence.beta_name(beta)} loss (β = {beta:g} <= 0) needs X > 0, but X "
            f"has zeros (min {report.min_value:.3g}) — add a small offset, or use "
            "kullback-leibler")


@uses_storage_options
def transform_to_store(model: str | os.PathLike, X: Any, out: str | os.PathLike, *,
                       var: str | None = None, scheduler: Any = "auto", workers: int | None = None,
                       memory_limit: str | int | None = None, overwrite: bool = False,
                       storage_options: dict[str, Any] | None = None,
                       out_storage_options: dict[str, Any] | None = None) -> str:
    """Transform the rows of ``X`` with the H of the result store ``model``; write a store of
    the same layout (W new, H copied, the model's attributes plus ``transform_of``).
    ``storage_options`` (X and the model), ``out_storage_options``: as :func:`factorize`.

    Raises
    ------
    OutputError
        ``out`` exists (without ``overwrite``), or is, contains or lies inside the model or
        ``X`` (even with ``overwrite``).
    """
    check_outputs_are_not_inputs({"output": out},
                                 {"the model": model, "the input": Stored(X, var)})
    check_output(out, overwrite=overwrite)
    with storage_options_used(input_options(), input_options()):  # the model is an input
        _, H, attrs = open_result(model)
    source = open_matrix(X, var, dtype=H.dtype)
    with execution_context(scheduler, x_nbytes=source.nbytes, workers=workers,
                           memory_limit=memory_limit) as ctx, ctx.activate():
        # the fit's penalties on W, as the estimator's transform applies them
        l1, l2, _, _ = regularization(attrs.get("alpha_W", 0.0), attrs.get("alpha_H", "same"),
                                      attrs.get("l1_ratio", 0.0), (1, H.shape[1]))
        W = transform_rows(X, H, var=var, beta_loss=attrs.get("beta_loss", "frobenius"),
                           missing=attrs.get("missing", "error"),
                           w_sum_to_one=bool(attrs.get("w_sum_to_one", False)),
                           scheduler=ctx.scheduler, l1=l1, l2=l2)
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
    check_parameters(LATE_PARAMETERS, {"forget_factor": forget_factor})
    source = open_matrix(X, var)
    check_variant(source, beta, False)
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


@dataclass
class MatrixInfo:
    """What ``dnmf info`` reports: layout, sizes, one validation pass, and the chunk plan a fit
    of rank ``plan_rank`` would use."""

    source: Any
    report: Any
    disk_bytes: int | None
    plan: DryRun | None = None
    plan_rank: int | None = None

    def describe(self) -> list[str]:
        src, rep = self.source, self.report
        rows, cols = src.chunks
        n_entries = src.shape[0] * src.shape[1]
        sparse = "no" if not src.sparse else (
            "yes (CSR), non-zeros unknown" if src.nnz is None else
            f"yes (CSR), {src.nnz:,} non-zeros ({src.nnz / max(n_entries, 1):.2%})")
        lines = [
            f"path: {src.path or src.format}" + (f" [{src.var}]" if src.var else ""),
            f"format: {src.format}",
            f"shape: {src.shape[0]:,} x {src.shape[1]:,}",
            f"dtype: {src.stored_dtype} as stored, {src.dtype} in memory",
            f"sparse: {sparse}",
            f"codec: {src.codec or ('none (in memory)' if src.path is None else 'unknown')}",
            f"chunks: {len(rows) * len(cols)} ({max(rows):,} x {max(cols):,} at most)",
            *self._written_lines(),
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
        if self.plan is not None:
            lines += [f"fit plan (k = {self.plan_rank}; -k for another): {self.plan.where}",
                      *[f"fit plan: {line}" for line in self.plan.plan.describe()]]
        problems = rep.problems()
        lines.append("usable for NMF: yes" if not problems else f"usable for NMF: no — {problems[0]}")
        return lines

    def _written_lines(self) -> list[str]:
        written = self.source.chunks_written
        if written is None:
            return []
        line = f"stored chunks: {written[0]:,} of {written[1]:,}"
        if written[0] == 0:
            return [f"warning: {line} — X reads as its fill value; a fit refuses it"]
        return [line]

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (``dnmf info --json``; schema: docs, guide/cli.md)."""
        from dnmf.io.result_store import jsonable

        src, rep = self.source, self.report
        problems = rep.problems()
        return jsonable({
            "path": src.path, "var": src.var, "format": src.format,
            "shape": list(src.shape), "dtype": str(src.dtype), "stored_dtype": src.stored_dtype,
            "sparse": bool(src.sparse), "nnz": src.nnz, "codec": src.codec,
            "chunk_count": len(src.chunks[0]) * len(src.chunks[1]),
            "chunk_shape": [max(src.chunks[0]), max(src.chunks[1])],
            "stored_chunks": None if src.stored_chunks is None else list(src.stored_chunks),
            "chunks_written": None if src.chunks_written is None else list(src.chunks_written),
            "nbytes": src.nbytes, "disk_bytes": self.disk_bytes,
            "min": rep.min_value, "max": rep.max_value, "n_negative": rep.n_negative,
            "n_nan": rep.n_nan, "n_inf": rep.n_inf, "n_zero_rows": rep.n_zero_rows,
            "n_zero_cols": rep.n_zero_cols, "frobenius_norm": float(np.sqrt(rep.sq_norm)),
            "notes": list(src.notes), "usable": not problems,
            "problem": problems[0] if problems else None,
            "plan": None if self.plan is None else {
                "rank": self.plan_rank, "scheduler": self.plan.where,
                **self.plan.plan.as_dict()},
        })


def matrix_info(X: MatrixLike, *, var: str | None = None, scheduler: SchedulerLike = "auto",
                rank: int | None = None) -> MatrixInfo:
    """Open X and run the validation pass: shape, chunks, sizes, codec, sparsity, range, sign,
    NaN/Inf, zeros; and the chunk plan of a fit of ``rank`` (default ``min(10, n_samples,
    n_features)``) as :func:`dry_run` makes it."""
    source = open_matrix(X, var)
    with execution_context(scheduler, x_nbytes=source.nbytes) as ctx:
        report = validate(source.array, scheduler=ctx.scheduler,
                          stored_chunks=source.stored_chunks)
    k = rank if rank is not None else max(1, min(10, *source.shape))
    try:  # planned on the source opened above: X's metadata is read once
        plan: DryRun | None = _planned_run(resolve(k), source, X, scheduler=scheduler)
    except InputError as err:  # e.g. an impossible -k: the report stands without a plan
        plan, source = None, dataclasses.replace(
            source, notes=(*source.notes, f"no fit plan: {err}"))
    return MatrixInfo(source=source, report=report, disk_bytes=_disk_bytes(source.path),
                      plan=plan, plan_rank=k)


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
