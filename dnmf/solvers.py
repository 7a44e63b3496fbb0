"""The iteration loop: one Dask computation per iteration, H updated on the driver.

This is the only place that computes during a fit. Each iteration persists the new W (on the
workers, or in-process) together with the reduced ``(WtX, WtW)``, so W's lineage is one
iteration deep and X is read once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dask.array as da
import numpy as np

from dnmf import graph, graph2d, kernels
from dnmf.cluster import ExecutionContext

SOLVERS = ("hals", "mu", "anls")
SOLVER_ALIASES = {"cd": "hals", "auto": "hals"}


@dataclass(frozen=True)
class IterationInfo:
    """What one iteration did; passed to progress callbacks."""

    iteration: int
    loss: float
    relative_error: float
    seconds: float
    bytes_read: int
    max_iter: int


@dataclass
class SolverState:
    """The outcome of :func:`iterate`: W lazy/persisted, H and the products of the final W."""

    W: da.Array
    H: np.ndarray
    WtW: np.ndarray
    n_iter: int
    converged: bool
    loss_history: list[float] = field(default_factory=list)
    seconds_per_iteration: list[float] = field(default_factory=list)
    stop_reason: str = ""
    HHt: np.ndarray | None = None  # of the final H (the 2-D scheme, where H stays chunked)


def iterate(
    X: da.Array,
    W: da.Array,
    H: np.ndarray,
    *,
    sq_norm: float,
    solver: str,
    ctx: ExecutionContext,
    max_iter: int = 200,
    tol: float = 1e-4,
    max_time: float | None = None,
    l1_w: float = 0.0,
    l2_w: float = 0.0,
    l1_h: float = 0.0,
    l2_h: float = 0.0,
    bytes_per_iteration: int = 0,
    callback: Callable[[IterationInfo], None] | None = None,
    second_read: bool = True,
) -> SolverState:
    """Alternate W (row panels, on the cluster) and H (driver) updates until converged.

    X with several column chunks runs the 2-D block scheme (:mod:`dnmf.graph2d`) instead: H is
    then a dask array chunked like X's columns and stays on the workers; ``second_read=False``
    when X is persisted.

    Stops when the relative decrease of the loss, ``(f[t-1] - f[t]) / f[t-1]``, falls below
    ``tol`` (``tol=0`` disables this test), after ``max_iter`` iterations, or when ``max_time`` seconds have passed.

    Parameters
    ----------
    X : dask array (n_samples, n_features), row panels (persisted or backed by storage)
    W : dask array (n_samples, k), chunked like X's rows
    H : ndarray (k, n_features)
    sq_norm : float
        ``||X||_F^2`` in float64 (from the validation pass).
    solver : "hals" | "mu" | "anls"
    ctx : ExecutionContext
    """
    if len(X.chunks[1]) > 1:
        return _iterate_2d(X, W, H, sq_norm=sq_norm, solver=solver, ctx=ctx,
                           max_iter=max_iter, tol=tol, max_time=max_time, l1_w=l1_w, l2_w=l2_w,
                           l1_h=l1_h, l2_h=l2_h, bytes_per_iteration=bytes_per_iteration,
                           callback=callback, second_read=second_read)
    dtype = X.dtype
    H64 = np.asarray(H, dtype=np.float64)
    (W,) = ctx.persist(W)
    history: list[float] = []
    seconds: list[float] = []
    converged = False
    reason = "max_iter"
    t_start = time.perf_counter()
    WtW = np.zeros((H.shape[0], H.shape[0]))
    n_iter = 0
    for it in range(1, max_iter + 1):
        t0 = time.perf_counter()
        W_next, partials = graph.iteration_graph(
            X, W, H64.astype(dtype), solver=solver, l1_w=l1_w, l2_w=l2_w
        )
        W_next, partials = ctx.persist(W_next, partials, optimize=False)
        WtX, WtW = ctx.result_of(partials)
        W = W_next  # the previous W is released here: lineage stays one iteration deep
        H64 = kernels.update_h(H64, WtX, WtW, solver=solver, l1=l1_h, l2=l2_h)
        loss = kernels.frobenius_loss(sq_norm, WtX, WtW, H64)
        n_iter = it
        reason = _record(history, seconds, loss, time.perf_counter() - t0, it, sq_norm=sq_norm,
                         tol=tol, max_iter=max_iter, max_time=max_time, t_start=t_start,
                         bytes_per_iteration=bytes_per_iteration, callback=callback)
        if reason != "max_iter":
            converged = reason in ("tol", "exact")
            break
    return SolverState(
        W=W,
        H=H64.astype(dtype),
        WtW=WtW,
        n_iter=n_iter,
        converged=converged,
        loss_history=history,
        seconds_per_iteration=seconds,
        stop_reason=reason,
    )


def _record(history: list[float], seconds: list[float], loss: float, dt: float, it: int, *,
            sq_norm: float, tol: float, max_iter: int, max_time: float | None, t_start: float,
            bytes_per_iteration: int, callback: Callable[[IterationInfo], None] | None) -> str:
    """Append an iteration's loss and time, report it, and say why to stop (or "max_iter")."""
    history.append(loss)
    seconds.append(dt)
    if callback is not None:
        rel = float(np.sqrt(loss / sq_norm)) if sq_norm > 0 else 0.0
        callback(IterationInfo(it, loss, rel, dt, bytes_per_iteration, max_iter))
    if it > 1 and tol > 0 and (history[-2] - loss) <= tol * history[-2]:
        return "tol"  # tol=0 runs max_iter iterations
    if loss == 0.0:
        return "exact"
    if max_time is not None and time.perf_counter() - t_start >= max_time:
        return "max_time"
    return "max_iter"


def _iterate_2d(X: da.Array, W: da.Array, H: da.Array, *, sq_norm: float, solver: str,
                ctx: ExecutionContext, max_iter: int, tol: float, max_time: float | None,
                l1_w: float, l2_w: float, l1_h: float, l2_h: float, bytes_per_iteration: int,
                callback: Callable[[IterationInfo], None] | None, second_read: bool
                ) -> SolverState:
    """The loop of the 2-D block scheme: W and H both stay chunked on the workers."""
    if not isinstance(H, da.Array):
        H = da.from_array(np.asarray(H), chunks=((H.shape[0],), X.chunks[1]))
    W, H = ctx.persist(W, H)
    H64 = H.astype(np.float64)
    (HHt,) = ctx.compute(H64 @ H64.T)
    history: list[float] = []
    seconds: list[float] = []
    WtW = np.zeros_like(HHt)
    reason, n_iter = "max_iter", 0
    t_start = time.perf_counter()
    for it in range(1, max_iter + 1):
        t0 = time.perf_counter()
        W_next, H_next, stats = graph2d.iteration_graph_2d(
            X, W, H, HHt, solver=solver, l1_w=l1_w, l2_w=l2_w, l1_h=l1_h, l2_h=l2_h,
            second_read=second_read,
        )
        W, H, stats = ctx.persist(W_next, H_next, stats, optimize=False)
        HHt, cross, WtW = ctx.result_of(stats)
        loss = max(sq_norm - 2.0 * cross + float(np.vdot(WtW, HHt)), 0.0)
        n_iter = it
        reason = _record(history, seconds, loss, time.perf_counter() - t0, it, sq_norm=sq_norm,
                         tol=tol, max_iter=max_iter, max_time=max_time, t_start=t_start,
                         bytes_per_iteration=bytes_per_iteration, callback=callback)
        if reason != "max_iter":
            break
    return SolverState(W=W, H=H, WtW=WtW, n_iter=n_iter, converged=reason in ("tol", "exact"),
                       loss_history=history, seconds_per_iteration=seconds, stop_reason=reason,
                       HHt=HHt)


def component_order(WtW: np.ndarray, HHt: np.ndarray) -> np.ndarray:
    """Component permutation by decreasing ``||W_j|| * ||H_j||`` from the diagonals of the
    Gram matrices (``||W_j||^2 = WtW[j, j]``, ``||H_j||^2 = HHt[j, j]``)."""
    contribution = np.sqrt(np.clip(np.diag(WtW), 0, None) * np.clip(np.diag(HHt), 0, None))
    return np.argsort(-contribution, kind="stable")
