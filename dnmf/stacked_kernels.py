"""Block kernels of R factorizations stacked side by side (pure numpy, never dask).

The panel task of batched restarts (:func:`dnmf.graph.restarts_iteration_graph`) and of the
rank survey's EM-imputed held-out fits: ``W = [W_1 ... W_R]`` and ``H = [H_1; ...; H_R]``, each
block updated by exactly the kernel of a single fit (:mod:`dnmf.kernels`,
:mod:`dnmf.divergence`), the panel of X read once for all.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dnmf import divergence, kernels
from dnmf.heldout import Entries, HeldoutPanel, hidden_model


def stacked_panel_step(
    X: Any,
    W: Any,
    H: Any,
    HHt: Any,
    observed: Any = None,
    *,
    restarts: int,
    active: tuple[bool, ...],
    solver: str,
    l1: float = 0.0,
    l2: float = 0.0,
    beta: float = 2.0,
    masked: bool = False,
    sum_to_one: bool = False,
    impute: bool = False,
    with_loss: bool = True,
) -> tuple[Any, tuple]:
    """The row-panel task of ``restarts`` factorizations stacked side by side (pure numpy).

    ``W = [W_1 ... W_R]`` (r, R k) and ``H = [H_1; ...; H_R]`` (R k, n): block ``b`` is one
    independent factorization. The panel ``X_i`` is read once for all of them; each block is
    updated by exactly the kernel a single fit runs (:func:`dnmf.kernels.update_w` with its own
    k x k ``HHt[b]``, or :func:`dnmf.divergence.beta_panel_step`), so the result of block ``b``
    equals a single fit of ``(W_b, H_b)``. Blocks whose ``active`` flag is False (converged)
    are carried over unchanged.

    Frobenius on fully observed data: ``X_i H^T`` for all blocks is one GEMM, and so is
    ``W_new^T X_i``; per block only the k x k work (the HALS sweep, the MU step or the NNLS
    solve) and ``W_b^T W_b``. Other β, missing values: the element-wise terms need each block's
    own ``W_b H_b``, so the per-block work is that of a single fit (only the read is shared).

    ``impute`` (Frobenius with missing values, any solver): EM imputation — each block fills
    the missing entries with its own current model, ``Z_b = M X + (1 - M) W_b H_b``, and runs
    the solver's ordinary update on ``Z_b``. ``||Z_b - W H||^2`` majorizes the masked loss and
    touches it at the current factors, so the masked loss never rises; HALS or ANLS on the
    filled panel converge in far fewer iterations than masked multiplicative updates
    (Zhang et al., "Learning from incomplete ratings using non-negative matrix
    factorization", SDM 2006, with MU inside).

    ``observed`` is a boolean block shared by every restart, or a
    :class:`dnmf.heldout.HeldoutPanel`: each restart ``b`` then misses its own held-out
    entries, generated here from the panel (dense or CSR X). With ``impute`` the filled panel
    is ``Z_b = X + C_b``, ``C_b`` sparse at block b's hidden entries, so ``X H^T`` and
    ``W_new^T X`` stay one product for all restarts and each block adds O(hidden x k); without
    it (β-divergences, dense X) each block's multiplicative update sees its own mask.

    ``with_loss`` False: the multiplicative updates skip their loss terms (NaN losses, see
    :func:`dnmf.divergence.beta_panel_step`); the Frobenius and imputed branches, whose loss
    comes from their products, ignore it.

    Returns
    -------
    W_new : (r, R k), X's dtype
    partials :
        Frobenius: ``(WtX (R k, n), WtW (R, k, k))`` in float64; with ``impute`` also
        ``sum(Z_b^2)`` (R,), for the surrogate loss. Otherwise ``(numH (R k, n), denH (R k, n)
        or (R k, 1), loss (R,), WtW (R, k, k))``, see :func:`dnmf.divergence.beta_panel_step`;
        the entries of inactive blocks are zeros.
    """
    k = W.shape[1] // restarts
    blocks = [slice(b * k, (b + 1) * k) for b in range(restarts)]
    W_new = np.array(W, copy=True)
    WtW = np.zeros((restarts, k, k))
    if isinstance(observed, HeldoutPanel):
        if impute and beta == 2.0:
            return _heldout_panel_step(X, observed, W, H, HHt, blocks, active, solver=solver,
                                       l1=l1, l2=l2, sum_to_one=sum_to_one)
        if hasattr(X, "tocsr"):
            raise ValueError("per-restart held-out masks of sparse X need impute (Frobenius)")
    if impute and beta == 2.0:
        Xz, ok = divergence.observed_entries(X, observed, masked)
        if ok is not None:
            return _imputed_panel_step(Xz, ok, W, H, HHt, blocks, active, solver=solver, l1=l1,
                                       l2=l2, sum_to_one=sum_to_one)
    if not (beta != 2.0 or masked or observed is not None):
        XHt = np.asarray(X @ H.T)  # (r, R k): one product for every restart
        for b, sl in enumerate(blocks):
            if active[b]:
                W_new[:, sl] = kernels.update_w(
                    np.ascontiguousarray(W[:, sl]), XHt[:, sl], HHt[b], solver=solver, l1=l1,
                    l2=l2, sum_to_one=sum_to_one,
                    inner_sweeps=kernels.w_inner_sweeps(sl.stop - sl.start, X.shape[1]))
        WtX = (X.T @ W_new).T if hasattr(X, "tocsr") else W_new.T @ X
        for b, sl in enumerate(blocks):
            Wb = W_new[:, sl]
            WtW[b] = Wb.T @ Wb
        return W_new, (np.asarray(WtX, dtype=np.float64), WtW)
    numH: list[Any] = [None] * restarts
    denH: list[Any] = [None] * restarts
    loss = np.zeros(restarts)
    cache: dict = {}
    for b, sl in enumerate(blocks):
        if not active[b]:
            continue
        Wb, (numH[b], denH[b], loss[b], WtW[b]) = divergence.beta_panel_step(
            X, np.ascontiguousarray(W[:, sl]), np.ascontiguousarray(H[sl]), beta=beta, l1=l1,
            l2=l2, observed=_block_observed(observed, b, X, cache), masked=masked,
            sum_to_one=sum_to_one, with_loss=with_loss)
        W_new[:, sl] = Wb
    first = next(b for b in range(restarts) if active[b])
    for b in range(restarts):
        if numH[b] is None:
            numH[b], denH[b] = np.zeros_like(numH[first]), np.zeros_like(denH[first])
    return W_new, (np.concatenate(numH), np.concatenate(denH), loss, WtW)


def _imputed_panel_step(X: Any, ok: Any, W: Any, H: Any, HHt: Any, blocks: list[slice],
                        active: tuple[bool, ...], *, solver: str, l1: float, l2: float,
                        sum_to_one: bool) -> tuple[Any, tuple]:
    """The EM-imputation branch of :func:`stacked_panel_step` (X zero where not ``ok``)."""
    restarts, k = len(blocks), blocks[0].stop
    W_new = np.array(W, copy=True)
    WtX = np.zeros((restarts * k, X.shape[1]))
    WtW = np.zeros((restarts, k, k))
    sq = np.zeros(restarts)
    for b, sl in enumerate(blocks):
        if not active[b]:
            continue
        Wb, Hb = np.ascontiguousarray(W[:, sl]), np.ascontiguousarray(H[sl])
        Z = np.where(ok, X, Wb @ Hb)
        Wb = kernels.update_w(Wb, np.asarray(Z @ Hb.T), HHt[b], solver=solver, l1=l1, l2=l2,
                              sum_to_one=sum_to_one,
                              inner_sweeps=kernels.w_inner_sweeps(Hb.shape[0], Hb.shape[1]))
        W_new[:, sl] = Wb
        WtX[sl] = Wb.T @ Z
        WtW[b] = Wb.T @ Wb
        sq[b] = float(np.square(Z, dtype=np.float64).sum())
    return W_new, (WtX, WtW, sq)


def _block_observed(observed: Any, b: int, X: Any, cache: dict | None = None) -> Any:
    """Block b's mask: its own (a :class:`dnmf.heldout.HeldoutPanel`) or the shared one."""
    return observed.observed(b, X, cache) if isinstance(observed, HeldoutPanel) else observed


def _correction(values: Any, entries: Any, shape: tuple[int, int], dtype: Any) -> Any:
    """The CSR matrix of ``values`` at ``entries`` (built directly from dense X's row-major
    positions)."""
    import scipy.sparse as sp

    values = values.astype(dtype, copy=False)
    if entries.flat is not None:
        indptr = np.searchsorted(entries.flat, np.arange(shape[0] + 1) * shape[1])
        return sp.csr_matrix((values, entries.cols, indptr), shape=shape)
    return sp.csr_matrix((values, (entries.rows, entries.cols)), shape=shape)


def _heldout_panel_step(X: Any, panel: HeldoutPanel, W: Any, H: Any, HHt: Any,
                        blocks: list[slice], active: tuple[bool, ...], *, solver: str,
                        l1: float, l2: float, sum_to_one: bool) -> tuple[Any, tuple]:
    """EM imputation of :func:`stacked_panel_step` where each block misses its own held-out
    entries (``panel``), dense or CSR X: ``Z_b = X + C_b`` with ``C_b`` sparse at block b's
    hidden entries (``W_b H_b - x`` there), so that ``Z_b H_b^T = (X H^T)_b + C_b H_b^T`` and
    ``W_b^T Z_b = (W^T X)_b + W_b^T C_b`` — the panel-sized products are shared."""
    sparse = hasattr(X, "tocsr")
    restarts, k = len(blocks), blocks[0].stop
    nan = None if sparse else np.isnan(X)
    if nan is not None and nan.any():
        X = np.where(nan, X.dtype.type(0), X)  # missing entries: imputed in every block
    else:
        nan = None
    XHt = np.asarray(X @ H.T)  # (r, R k): one product for every restart
    if sparse:
        data = X.tocsr().data.astype(np.float64)
        sq_x = float(data @ data)
    else:
        sq_x = float(np.einsum("ij,ij->", X, X, dtype=np.float64))
    W_new = np.array(W, copy=True)
    WtC = np.zeros((restarts * k, X.shape[1]))
    WtW = np.zeros((restarts, k, k))
    sq = np.zeros(restarts)
    cache: dict = {}
    for b, sl in enumerate(blocks):
        if not active[b]:
            continue
        entries = panel.entries(b, X, cache)
        if nan is not None:
            fill = nan.copy()
            fill[entries.rows, entries.cols] = True
            flat = np.flatnonzero(fill)
            entries = Entries(flat // X.shape[1], flat % X.shape[1], np.take(X, flat), flat)
        Wb, Hb = np.ascontiguousarray(W[:, sl]), np.ascontiguousarray(H[sl])
        model = hidden_model(X, Wb, Hb, entries)
        values = entries.values.astype(np.float64)
        C = _correction(model - values, entries, X.shape, X.dtype)
        ZHt = XHt[:, sl] + np.asarray(C @ Hb.T)
        Wb = kernels.update_w(Wb, ZHt, HHt[b], solver=solver, l1=l1, l2=l2,
                              sum_to_one=sum_to_one,
                              inner_sweeps=kernels.w_inner_sweeps(Hb.shape[0], Hb.shape[1]))
        W_new[:, sl] = Wb
        WtC[sl] = np.asarray(C.T @ Wb).T
        WtW[b] = Wb.T @ Wb
        sq[b] = sq_x + float(model @ model - values @ values)
    WtX = (X.T @ W_new).T if sparse else W_new.T @ X  # one product for every restart
    WtX = np.asarray(WtX, dtype=np.float64) + WtC
    return W_new, (WtX, WtW, sq)


def stacked_panel_loss(X: Any, W: Any, H: Any, observed: Any = None, *, restarts: int,
                       beta: float, masked: bool = False) -> tuple[np.ndarray, ...]:
    """``(β-divergence, squared Frobenius residual, Σ M X²)`` of each block on one panel:
    arrays of shape (R,) (see :func:`dnmf.divergence.panel_loss`). With a
    :class:`dnmf.heldout.HeldoutPanel`, over each block's own kept entries."""
    k = W.shape[1] // restarts
    out = np.zeros((3, restarts))
    cache: dict = {}
    for b in range(restarts):
        sl = slice(b * k, (b + 1) * k)
        Wb, Hb = np.ascontiguousarray(W[:, sl]), np.ascontiguousarray(H[sl])
        if isinstance(observed, HeldoutPanel) and hasattr(X, "tocsr"):
            # everything, less the hidden entries (Frobenius: sparse X's held-out fits)
            _, residual, sq = divergence.panel_loss(X, Wb, Hb, beta=2.0)
            entries = observed.entries(b, X, cache)
            values = entries.values.astype(np.float64)
            residual -= float(np.square(values - hidden_model(X, Wb, Hb, entries)).sum())
            sq -= float(values @ values)
            out[:, b] = max(residual, 0.0), max(residual, 0.0), max(sq, 0.0)
            continue
        out[:, b] = divergence.panel_loss(X, Wb, Hb, beta=beta,
                                          observed=_block_observed(observed, b, X, cache),
                                          masked=masked)
    return out[0], out[1], out[2]


def block_grams(H: np.ndarray, restarts: int) -> np.ndarray:
    """``(R, k, k)``: ``H_b H_b^T`` of each block of the stacked ``H`` (R k, n), in float64."""
    k = H.shape[0] // restarts
    H64 = np.asarray(H, dtype=np.float64)
    return np.stack([H64[b * k:(b + 1) * k] @ H64[b * k:(b + 1) * k].T for b in range(restarts)])
