"""Online NMF: update H from batches of rows, in constant memory (``NMF.partial_fit``).

Each batch is one Dask pass over its row panels: a task solves the panel's rows of W with H
fixed and returns the panel's sufficient statistics; the driver folds them into running sums
with a forgetting factor ``rho`` and updates H. W of a batch is never kept, so a stream of rows
of any length is consumed with memory bounded by one batch's panels and the k x n statistics.

* Frobenius: the statistics are ``A = Σ ρ^age WᵀX`` and ``B = Σ ρ^age WᵀW`` and H takes a few
  HALS sweeps on them (Mairal, Bach, Ponce & Sapiro, "Online learning for matrix factorization
  and sparse coding", JMLR 2010). Rows of W are exact NNLS solutions.
* Other β: the numerator and denominator of the MU update accumulate instead, and
  ``H = (A / B)^γ`` (Lefèvre, Bach & Févotte, 2011 — scikit-learn's ``MiniBatchNMF``). Rows of W
  are MU iterations to convergence.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from dnmf import divergence, graph, kernels
from dnmf.cluster import ExecutionContext

#: HALS sweeps over H per batch (Frobenius).
H_SWEEPS = 5


@dataclass
class OnlineState:
    """The running state of an online fit."""

    H: np.ndarray  # (k, n) float64
    A: np.ndarray | None = None
    B: np.ndarray | None = None
    n_batches: int = 0
    n_samples_seen: int = 0
    dtype: Any = np.float64  # the data's, for the public H


def _frobenius_task(X: Any, H: np.ndarray, HHt: np.ndarray, *, l1: float, l2: float) -> tuple:
    W = kernels.transform_rows(X, H, HHt, l1=l1, l2=l2)
    return kernels.gram_partials(X, W)


def _beta_task(X: Any, H: np.ndarray, *, beta: float, l1: float, l2: float,
               max_iter: int, tol: float) -> tuple:
    W = divergence.transform_rows_beta(X, H, beta=beta, l1=l1, l2=l2, max_iter=max_iter, tol=tol)
    numH, denH, _ = divergence.h_update_terms(X, W, H, beta=beta)
    return numH, denH


def batch_statistics(X: da.Array, H: np.ndarray, *, beta: float, l1_w: float, l2_w: float,
                     ctx: ExecutionContext, max_iter: int = 200, tol: float = 1e-6) -> tuple:
    """One pass over a batch: the reduced statistics of its rows for the fixed H."""
    H_x = np.ascontiguousarray(H, dtype=X.dtype)
    if beta == 2.0:
        HHt = np.asarray(H, dtype=np.float64) @ np.asarray(H, dtype=np.float64).T
        func = functools.partial(_frobenius_task, H=H_x, HHt=HHt, l1=l1_w, l2=l2_w)
    else:
        func = functools.partial(_beta_task, H=H_x, beta=beta, l1=l1_w, l2=l2_w,
                                 max_iter=max_iter, tol=tol)
    (stats,) = ctx.compute(graph.map_reduce_panels(X, func, name="dnmf-online-stats"))
    return stats


def update(state: OnlineState, stats: tuple, *, beta: float, rho: float, l1_h: float,
           l2_h: float) -> OnlineState:
    """Fold a batch's statistics into the state with forgetting ``rho`` and update H."""
    if state.A is None:
        state.A = np.zeros_like(state.H)
        state.B = np.zeros((state.H.shape[0],) * 2) if beta == 2.0 else np.zeros_like(state.H)
    if beta == 2.0:
        WtX, WtW = stats
        state.A = rho * state.A + WtX
        state.B = rho * state.B + WtW
        Ht = state.H.T
        for _ in range(H_SWEEPS):
            Ht = kernels.hals_sweep(Ht, state.A.T, state.B, l1=l1_h, l2=l2_h)
        state.H = np.ascontiguousarray(Ht.T)
    else:
        numH, denH = stats
        gamma = divergence.mu_exponent(beta)
        den = np.broadcast_to(denH, state.H.shape) + l1_h + l2_h * state.H
        # scikit-learn's MiniBatchNMF: A accumulates numerator * H^(1/γ), B the denominator
        state.A = rho * state.A + numH * state.H ** (1.0 / gamma)
        state.B = rho * state.B + den
        state.H = (state.A / np.maximum(state.B, divergence.EPSILON)) ** gamma
    state.n_batches += 1
    return state
