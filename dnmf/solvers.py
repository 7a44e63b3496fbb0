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

from dnmf import graph, kernels
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
) -> SolverState:
    """Alternate W (row panels, on the cluster) and H (driver) updates until converged.

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
        dt = time.perf_counter() - t0
        history.append(loss)
        seconds.append(dt)
        n_iter = it
        if callback is not None:
            rel = float(np.sqrt(loss / sq_norm)) if sq_norm > 0 else 0.0
            callback(IterationInfo(it, loss, rel, dt, bytes_per_iteration, max_iter))
        if it > 1 and tol > 0:  # tol=0 runs max_iter iterations
            prev = history[-2]
            if (prev - loss) <= tol * prev:
                converged, reason = True, "tol"
                break
        if loss == 0.0:
            converged, reason = True, "exact"
            break
        if max_time is not None and time.perf_counter() - t_start >= max_time:
            reason = "max_time"
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


def component_order(WtW: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Component permutation by decreasing ``||W_j|| * ||H_j||`` (||W_j||^2 = WtW[j, j])."""
    contribution = np.sqrt(np.clip(np.diag(WtW), 0, None)) * np.linalg.norm(H, axis=1)
    return np.argsort(-contribution, kind="stable")
