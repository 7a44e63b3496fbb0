"""Block kernels for β-divergence losses and missing values (multiplicative updates).

Like :mod:`dnmf.kernels`, nothing here imports dask: these are array functions on one row panel
``X_i`` (dense, or ``scipy.sparse`` CSR for the Frobenius and KL losses) and the small factors.
The dense kernels work in the panel's namespace (numpy, CuPy, array API; see
:mod:`dnmf.kernels`); the CSR ones are numpy/scipy only.

The β-divergence (Févotte & Idier, "Algorithms for nonnegative matrix factorization with the
β-divergence", Neural Computation 23(9), 2011) between data ``x`` and model ``y = (W H)_ij``:

* β = 2, Frobenius: ``(x - y)^2`` (dnmf reports ``||X - WH||_F^2`` without scikit-learn's 1/2);
* β = 1, Kullback-Leibler: ``x log(x / y) - x + y`` with ``0 log 0 = 0``;
* β = 0, Itakura-Saito: ``x / y - log(x / y) - 1`` (needs x > 0);
* otherwise ``(x^β + (β - 1) y^β - β x y^(β-1)) / (β (β - 1))``.

A row panel task recomputes ``W_i H`` (never the full product), updates ``W_i`` by the
multiplicative rule, and with the new ``W_i`` returns the numerator and denominator of the H
update (k x n), the loss of ``(W_i new, H)`` and the products for the Frobenius residual. The
MU exponent γ(β) of Févotte & Idier keeps the loss non-increasing for β outside [1, 2].

Missing values: a boolean ``observed`` mask (same shape as the panel) removes entries from the
loss and from both updates (weighted NMF, Ho 2008): ``X`` and ``W H`` are multiplied by it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from dnmf.kernels import (
    EPSILON,
    array_namespace,
    asarray_on,
    astype,
    nnls_bpp,
    numpy_like,
    scalar,
    to_host,
)

Array = Any

#: Relative weight of the appended row that makes the rows of W sum to one (see
#: :func:`sum_to_one_delta`). Larger is tighter and slower to converge for MU.
SUM_TO_ONE_WEIGHT_MU = 100.0

_NAMED = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}


def beta_value(beta_loss: str | float) -> float:
    """β of a loss given by scikit-learn's name or as a number."""
    if isinstance(beta_loss, str):
        try:
            return _NAMED[beta_loss]
        except KeyError:
            raise ValueError(f"unknown beta_loss {beta_loss!r}") from None
    return float(beta_loss)


def beta_name(beta: float) -> str:
    """scikit-learn's name of β when it has one, else the number as text."""
    for name, value in _NAMED.items():
        if beta == value:
            return name
    return repr(float(beta))


def mu_exponent(beta: float) -> float:
    """γ(β) of Févotte & Idier (2011): the MU exponent that makes the updates monotone."""
    if beta < 1.0:
        return 1.0 / (2.0 - beta)
    if beta > 2.0:
        return 1.0 / (beta - 1.0)
    return 1.0


# ---------------------------------------------------------------------------------------------
# Element-wise pieces (dense panels)
# ---------------------------------------------------------------------------------------------


def observed_entries(X: Array, observed: Array | None,
                     masked: bool) -> tuple[Array, Array | None]:
    """``(X with missing entries set to 0, the boolean mask of observed entries)``.

    Missing means NaN (when ``masked``) or outside an explicit ``observed`` mask; without
    either, X is returned as is with mask ``None``.
    """
    if observed is None and not masked:
        return X, None
    xp = array_namespace(X)
    ok = ~xp.isnan(X)
    if observed is not None:
        ok &= asarray_on(observed, X, dtype=bool if numpy_like(xp) else xp.bool)
    return xp.where(ok, X, scalar(X, 0)), ok


def _masked(X: Array, observed: Array | None) -> Array:
    """X with unobserved (and NaN) entries set to 0 — they must not enter any product."""
    if observed is None:
        return X
    return array_namespace(X).where(observed, X, scalar(X, 0))


def _into(xp: Any, func: Any, *args: Any, out: Array) -> Array:
    """``func(*args)`` written into ``out`` where the library can (numpy, CuPy): no
    panel-sized temporary."""
    return func(*args, out=out) if numpy_like(xp) else func(*args)


def _square_sum(a: Array) -> float:
    """``Σ a²`` with the squares and the sum in float64."""
    xp = array_namespace(a)
    if numpy_like(xp):
        return float(xp.sum(xp.square(a, dtype=xp.float64)))
    a64 = astype(a, xp.float64)
    return float(xp.sum(a64 * a64))


def beta_divergence(X: Array, WH: Array, beta: float, observed: Array | None = None,
                    eps: float = EPSILON) -> float:
    """Sum of the element-wise β-divergence ``d(X | WH)`` over observed entries, in float64.

    Zeros of X are exact (``0 log 0 = 0`` for KL); WH is clipped at ``eps`` where a negative
    power or a log of it is taken (scikit-learn's convention).
    """
    xp = array_namespace(X)
    X = astype(X, xp.float64)
    WH = astype(WH, xp.float64)
    if observed is not None:
        X = X[observed]
        WH = WH[observed]
    if beta == 2.0:
        return float(xp.sum((X - WH) ** 2))
    if beta == 1.0:
        pos = X > 0
        y = xp.maximum(WH[pos], eps)
        x = X[pos]
        return float(xp.sum(x * xp.log(x / y)) - xp.sum(X) + xp.sum(WH))
    if beta == 0.0:
        y = xp.maximum(WH, eps)
        ratio = X / y
        return float(xp.sum(ratio - xp.log(ratio)) - X.size)
    y = xp.maximum(WH, eps) if beta < 1 else WH
    return float(xp.sum(X**beta + (beta - 1.0) * y**beta - beta * X * y ** (beta - 1.0))
                 / (beta * (beta - 1.0)))


def _powers(X: Array, WH: Array, beta: float, observed: Array | None,
            eps: float) -> tuple[Array, Array | None]:
    """``(M * X * WH^(β-2), M * WH^(β-1))``: the two element-wise factors of both updates.

    ``den`` is ``None`` for unmasked KL (all ones: ``den @ H.T`` is the row sums of H). X is
    zero at missing entries (:func:`observed_entries`), so ``num`` needs no mask where it is a
    multiple of X. ``WH`` may be overwritten.
    """
    num, den, _ = element_terms(X, WH, beta, observed, eps, with_loss=False)
    return num, den


def _x_log(X: Array, ratio: Array) -> float:
    """``Σ X log(ratio)`` with ``0 log 0 = 0``, where ``ratio`` is 0 only where X is 0.

    A float32 log of a clipped copy (``0 * log(tiny)`` is 0) is several times faster than
    ``scipy.special.xlogy``; the sum is in float64.
    """
    xp = array_namespace(ratio)
    logs = xp.maximum(ratio, xp.finfo(ratio.dtype).smallest_normal)
    logs = _into(xp, xp.log, logs, out=logs)
    logs *= X
    return float(xp.sum(logs, dtype=xp.float64))


def element_terms(X: Array, WH: Array, beta: float, observed: Array | None, eps: float,
                  *, with_loss: bool = True) -> tuple[Array, Array | None, float | None]:
    """``(num, den, loss)``: the update factors of :func:`_powers` and the β-divergence.

    One pass of element-wise work per term, in X's dtype with float64 sums; ``WH`` is
    overwritten. X must be zero at missing entries and ``observed`` mark the observed ones.
    """
    xp = array_namespace(WH)
    f64 = xp.float64
    loss = None
    if beta == 2.0:
        den = WH if observed is None else xp.where(observed, WH, scalar(WH, 0))
        if with_loss:
            diff = X - den
            diff = _into(xp, xp.square, diff, out=diff)
            loss = float(xp.sum(diff, dtype=f64))
        return X, den, loss
    if beta == 1.0:
        total_wh = None
        if with_loss:  # before WH is overwritten
            total_wh = float(xp.sum(WH if observed is None
                                    else xp.where(observed, WH, scalar(WH, 0)), dtype=f64))
        ratio = _into(xp, xp.maximum, WH, scalar(WH, eps), out=WH)
        # 0 wherever X is 0, missing entries included
        ratio = _into(xp, xp.divide, X, ratio, out=ratio)
        den = None if observed is None else astype(observed, WH.dtype)
        if total_wh is not None:
            loss = _x_log(X, ratio) - float(xp.sum(X, dtype=f64)) + total_wh
        return ratio, den, loss
    if beta == 0.0:
        den = _into(xp, xp.maximum, WH, scalar(WH, eps), out=WH)
        den = xp.reciprocal(den, out=den) if numpy_like(xp) else 1.0 / den
        ratio = X * den
        if observed is not None:
            den[~observed] = 0
        num = ratio * den
        if with_loss:
            if observed is None:
                logs = xp.sum(xp.log(ratio), dtype=f64)
                n = ratio.size
            elif xp is np:
                logs = np.log(ratio, where=observed, out=np.zeros_like(ratio)).sum(dtype=f64)
                n = int(np.count_nonzero(observed))
            else:  # log(1) = 0 at the missing entries
                logs = xp.sum(xp.log(xp.where(observed, ratio, 1.0)), dtype=f64)
                n = int(xp.count_nonzero(observed))
            loss = float(xp.sum(ratio, dtype=f64)) - float(logs) - n
        return num, den, loss
    y = _into(xp, xp.maximum, WH, scalar(WH, eps), out=WH) if beta < 2.0 else WH
    den = y ** (beta - 1.0)
    num = X * (den / y if beta < 2.0 else y ** (beta - 2.0))
    if observed is not None:
        den[~observed] = 0
    if with_loss:
        x_beta = X**beta  # X is 0 at missing entries; β > 0 here unless X > 0 everywhere
        if observed is not None and beta < 0:
            x_beta[~observed] = 0
        loss = float((xp.sum(x_beta, dtype=f64) + (beta - 1.0) * xp.sum(y * den, dtype=f64)
                      - beta * xp.sum(X * den, dtype=f64)) / (beta * (beta - 1.0)))
    return num, den, loss


def mu_ratio_step(F: Array, num: Array, den: Array, *, gamma: float = 1.0, l1: float = 0.0,
                  l2: float = 0.0, eps: float = EPSILON) -> Array:
    """``F * (num / (den + l1 + l2 F))^γ`` with zero denominators replaced by ``eps``."""
    xp = array_namespace(F)
    den = asarray_on(den, F, dtype=F.dtype)
    if l1:
        den = den + scalar(F, l1)
    if l2:
        den = den + scalar(F, l2) * F
    den = xp.where(den > 0, den, scalar(F, eps))
    ratio = xp.maximum(asarray_on(num, F, dtype=F.dtype), 0.0) / den
    if gamma != 1.0:
        ratio = ratio**gamma
    return F * ratio


# ---------------------------------------------------------------------------------------------
# Sum-to-one rows of W: the augmented-row method
# ---------------------------------------------------------------------------------------------


def sum_to_one_delta(H: Array, beta: float, weight: float) -> float:
    """δ of the appended data column ``δ`` and factor column ``δ·1`` (Heinz & Chang, 2001).

    Appending ``δ`` to every row of X and a column ``δ·1`` to H adds ``d_β(δ | δ Σ_k W_ik)`` to
    the loss, which pulls each row sum of W to 1. ``δ^β`` is ``weight`` times the mean over
    components of ``Σ_j H_kj^β``, so the pull is the same relative to the data term whatever the
    scale of X.
    """
    H = np.asarray(H, dtype=np.float64)
    scale = float(np.mean(np.sum(np.abs(H) ** beta, axis=1))) if beta != 0 else 1.0
    scale = scale if scale > 0 else 1.0
    return float((weight * scale) ** (1.0 / beta)) if beta != 0 else 1.0


def augment_w_terms(num: Array, den: Array, W: Array, beta: float, delta: float,
                    eps: float = EPSILON) -> tuple[Array, Array]:
    """Add the appended column's share to the W-update terms ``(num, den)``.

    With ``x = δ``, ``y = δ s_i`` (``s_i = Σ_k W_ik``) and ``H_k,extra = δ``, its numerator is
    ``δ^β s^(β-2)`` and its denominator ``δ^β s^(β-1)``, the same for every k.
    """
    s = np.maximum(np.asarray(W, dtype=np.float64).sum(axis=1, keepdims=True), eps)
    scale = delta**beta
    return (num + (scale * s ** (beta - 2.0)).astype(num.dtype),
            den + (scale * s ** (beta - 1.0)).astype(den.dtype))


# ---------------------------------------------------------------------------------------------
# The fused row-panel task
# ---------------------------------------------------------------------------------------------


def beta_panel_step(
    X: Array,
    W: Array,
    H: Array,
    *,
    beta: float,
    l1: float = 0.0,
    l2: float = 0.0,
    observed: Array | None = None,
    masked: bool = False,
    sum_to_one: bool = False,
    eps: float = EPSILON,
    block_rows: int | None = None,
    with_loss: bool = True,
) -> tuple[Array, tuple]:
    """One MU pass of a row panel for the β-divergence, with optional missing values.

    Parameters
    ----------
    X : array (r, n) or scipy.sparse CSR
        The row panel. NaN entries count as missing when ``observed`` is given.
    W : array (r, k)
    H : array (k, n), X's dtype
    beta : float
    l1, l2 : float
        Penalties on W (scikit-learn's scaled ``l1_reg_W``, ``l2_reg_W``).
    observed : bool array (r, n), optional
        True where X is observed (an explicit mask); implies ``masked``.
    masked : bool
        Leave NaN entries of X (and entries outside ``observed``) out of loss and updates.
    sum_to_one : bool
        Pull the rows of W to sum to one (augmented row, weight :data:`SUM_TO_ONE_WEIGHT_MU`).
    with_loss : bool
        Compute the loss. False skips the element-wise terms only the loss needs (the logs
        and powers of :func:`element_terms`); ``W_new`` and the H terms are the same bits.

    Returns
    -------
    W_new : array (r, k)
    (numH, denH, loss, WtW) :
        float64 ``(k, n)`` numerator and denominator of the H update (``denH`` may be a
        ``(k, 1)`` column to broadcast), the β-divergence of ``(W_new, H)`` on this panel (NaN
        without ``with_loss``), and ``W_new.T @ W_new``. The Frobenius residual and ``Σ M X²`` (for the relative error) come
        from :func:`panel_loss` at the end of a fit.
    """
    if hasattr(X, "tocsr"):
        if masked or observed is not None:
            raise ValueError("masked updates need a dense panel")
        return _sparse_panel_step(X.tocsr(), W, H, beta=beta, l1=l1, l2=l2,
                                  sum_to_one=sum_to_one, eps=eps, with_loss=with_loss)
    options = {"beta": beta, "l1": l1, "l2": l2, "masked": masked, "sum_to_one": sum_to_one,
               "eps": eps, "with_loss": with_loss}
    if array_namespace(W) is not np:  # device blocks: the library blocks its own work
        return _beta_block_step(X, W, H, observed=observed, **options)
    if block_rows is None:
        block_rows = beta_block_rows(X.shape[1], X.dtype.itemsize)
    k = W.shape[1]
    W_new = np.empty_like(W)
    numH = np.zeros((k, X.shape[1]), dtype=np.float64)
    denH: Any = 0.0
    loss = 0.0
    WtW = np.zeros((k, k), dtype=np.float64)
    # rows of W are independent given H and the H-side terms are sums over rows: each
    # sub-block's element-wise terms are made and used while they are in cache
    for start in range(0, X.shape[0], block_rows):
        rows = slice(start, min(start + block_rows, X.shape[0]))
        Wb, (numb, denb, lossb, WtWb) = _beta_block_step(
            X[rows], W[rows], H, observed=None if observed is None else observed[rows],
            **options)
        W_new[rows] = Wb
        numH += numb
        denH = denH + denb
        loss += lossb
        WtW += WtWb
    return W_new, (numH, denH, loss, WtW)


#: Sub-block rows of :func:`beta_panel_step` on numpy panels: ``X_b`` and the ~3 panel-sized
#: element-wise temporaries of a block (``W_b H``, its powers) fit a quarter of one CPU's share
#: of the last-level cache, within these bounds (a multiple of 64 rows). Measured on an idle
#: machine (AMD EPYC, OpenBLAS Haswell, one 33,554 x 500 float32 panel, k = 20, one thread,
#: 2026-12-07): a KL step takes 220 ms in 512-row blocks (this rule's choice there), 244 ms
#: in 2,048-row blocks, 286 ms on the whole panel, whose temporaries (67 MB each) stream
#: through memory. ``DNMF_BETA_BLOCK_ROWS`` (a number of rows, 0 for the whole panel) sets
#: another size where the kernel runs.
BETA_MIN_BLOCK_ROWS = 256
BETA_MAX_BLOCK_ROWS = 8192


def beta_block_rows(n_features: int, itemsize: int) -> int:
    """Rows per sub-block of :func:`beta_panel_step` for this CPU (see
    :data:`BETA_MIN_BLOCK_ROWS`)."""
    from dnmf.cpu_cache import l3_share_bytes
    from dnmf.kernels import forced_block_rows

    forced = forced_block_rows("DNMF_BETA_BLOCK_ROWS", n_features, itemsize)
    if forced is not None:
        return forced
    rows = l3_share_bytes() // 4 // (4 * max(1, n_features * itemsize))
    rows = (rows // 64) * 64
    return int(min(max(rows, BETA_MIN_BLOCK_ROWS), BETA_MAX_BLOCK_ROWS))


def _beta_block_step(X: Array, W: Array, H: Array, *, beta: float, l1: float, l2: float,
                     observed: Array | None, masked: bool, sum_to_one: bool,
                     eps: float, with_loss: bool = True) -> tuple[Array, tuple]:
    """:func:`beta_panel_step` on one block of rows (a whole panel for device blocks)."""
    X, observed = observed_entries(X, observed, masked)
    xp = array_namespace(W)
    gamma = mu_exponent(beta)
    H_host = H
    H = asarray_on(H, W)  # for device blocks, H (k x n) is copied to the device here
    WH = W @ H
    num, den = _powers(X, WH, beta, observed, eps)
    numW = num @ H.T
    denW = (xp.broadcast_to(xp.sum(H, axis=1), W.shape) if den is None else den @ H.T)
    if sum_to_one:
        delta = sum_to_one_delta(H_host, beta, SUM_TO_ONE_WEIGHT_MU)
        numW, denW = augment_w_terms(numW, denW, W, beta, delta, eps)
    W_new = mu_ratio_step(W, numW, denW, gamma=gamma, l1=l1, l2=l2, eps=eps)
    if beta < 1.0:  # scikit-learn's guard (W: beta < 1, H: beta <= 1): tiny entries of W
        # would stall in negative powers; for KL they stay, as in scikit-learn's "mu"
        W_new[W_new < float(np.finfo(np.float64).eps)] = 0  # 2^-52: exact in float32 too
    numH, denH, loss = _dense_h_terms(X, W_new, H, beta, observed, eps, with_loss=with_loss)
    W64 = astype(W_new, xp.float64)
    return W_new, (to_host(numH), to_host(denH), loss, to_host(W64.T @ W64))


def h_update_terms(X: Array, W: Array, H: Array, *, beta: float,
                   eps: float = EPSILON) -> tuple[np.ndarray, np.ndarray, float]:
    """``(numH, denH, loss)`` of a panel for given rows ``W``: the float64 numerator and
    denominator of the H update (``denH`` may be a ``(k, 1)`` column) and the β-divergence.

    Dense panels (fully observed) or CSR panels with the KL loss.
    """
    if hasattr(X, "tocsr"):
        if beta != 1.0:
            raise ValueError("sparse panels support the Kullback-Leibler loss here")
        return _sparse_h_terms(X.tocsr(), W, H, eps)
    return _dense_h_terms(X, W, H, beta, None, eps)


def _dense_h_terms(X: Array, W: Array, H: Array, beta: float, observed: Array | None,
                   eps: float, *, with_loss: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """``(numH, denH, loss)`` of a dense panel; the loss is NaN without ``with_loss``."""
    xp = array_namespace(W)
    num, den, loss = element_terms(X, W @ H, beta, observed, eps, with_loss=with_loss)
    loss = float("nan") if loss is None else loss
    # products in the data's precision (fast BLAS), sums over panels in float64
    numH = astype(W.T @ num, xp.float64)
    if den is None:
        denH = xp.sum(W, axis=0, dtype=xp.float64)[:, None]
    else:
        denH = astype(W.T @ den, xp.float64)
    return numH, denH, loss


#: Bytes of the rows of W and of Hᵀ gathered at once by :func:`_sparse_rows_dot` (each):
#: bounded, so that a panel task's memory does not grow with k times its non-zeros.
GATHER_BYTES = 4 * 2**20


def _sparse_rows_dot(X: Any, W: Array, H: Array, block: int | None = None) -> np.ndarray:
    """``(W @ H)`` at the non-zeros of the CSR matrix X, without forming ``W @ H``."""
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    cols = X.indices
    out = np.empty(X.nnz, dtype=np.result_type(W.dtype, H.dtype))
    Ht = np.ascontiguousarray(H.T)
    if block is None:
        block = max(1024, GATHER_BYTES // (out.itemsize * max(1, H.shape[0])))
    for lo in range(0, X.nnz, block):
        hi = min(lo + block, X.nnz)
        out[lo:hi] = np.einsum("ij,ij->i", W[rows[lo:hi]], Ht[cols[lo:hi]])
    return out


#: Stored entries of a CSR panel per float64 block of :func:`_sparse_panel_loss`.
LOSS_BLOCK_NNZ = 1 << 18


def _sparse_panel_loss(X: Any, W: Array, H: Array, *, beta: float,
                       eps: float) -> tuple[float, float, float]:
    """``(β-divergence, squared Frobenius residual, ||X||²)`` of a CSR panel, in float64.

    By blocks of rows holding about :data:`LOSS_BLOCK_NNZ` stored entries, each converted to
    float64 on its own: a float64 copy of the whole panel (what scipy makes to multiply it
    by a float64 factor) would be the task's largest allocation. The Frobenius residual is
    ``||X||² - 2 Σ x (W H) + <WᵀW, HHᵀ>``, the middle sum over the stored entries only.
    """
    W64 = np.asarray(W, dtype=np.float64)
    H64 = np.asarray(H, dtype=np.float64)
    Ht64 = np.ascontiguousarray(H64.T)
    indptr = X.indptr
    sq = cross = x_log = x_sum = 0.0
    start = 0
    while start < X.shape[0]:
        stop = int(np.searchsorted(indptr, indptr[start] + LOSS_BLOCK_NNZ, side="right")) - 1
        stop = min(max(stop, start + 1), X.shape[0])
        lo, hi = int(indptr[start]), int(indptr[stop])
        x = X.data[lo:hi].astype(np.float64)
        block = sp.csr_matrix((x, X.indices[lo:hi], indptr[start:stop + 1] - lo),
                              shape=(stop - start, X.shape[1]))
        sq += float(x @ x)
        cross += float(np.vdot(W64[start:stop], block @ Ht64))
        if beta != 2.0:
            wh = np.maximum(_sparse_rows_dot(block, W64[start:stop], H64), eps)
            pos = x > 0
            x_log += float(np.sum(x[pos] * np.log(x[pos] / wh[pos])))
            x_sum += float(x.sum())
        start = stop
    residual = max(sq - 2.0 * cross + float(np.vdot(W64.T @ W64, H64 @ H64.T)), 0.0)
    if beta == 2.0:
        return residual, residual, sq
    loss = x_log - x_sum + float(W64.sum(axis=0) @ H64.sum(axis=1))
    return loss, residual, sq


def _sparse_panel_step(X: Any, W: Array, H: Array, *, beta: float, l1: float, l2: float,
                       sum_to_one: bool, eps: float,
                       with_loss: bool = True) -> tuple[Array, tuple]:
    """KL multiplicative updates on a CSR panel: only the non-zeros of X are touched.

    ``Σ_ij (W H)_ij = (Σ_i W_i) · (Σ_j H_:j)`` gives the ``+ y`` term of KL, the denominators
    are column/row sums, and the Frobenius residual follows from the Gram identity.
    """
    if beta != 1.0:
        raise ValueError("sparse panels support the Kullback-Leibler loss here")
    numW = np.asarray(_sparse_ratio(X, W, H, eps)[0] @ H.T)
    denW = np.broadcast_to(H.sum(axis=1), W.shape)
    if sum_to_one:
        delta = sum_to_one_delta(H, beta, SUM_TO_ONE_WEIGHT_MU)
        numW, denW = augment_w_terms(numW, denW, W, beta, delta, eps)
    # no guard on W for KL (scikit-learn zeroes tiny W entries for beta < 1 only)
    W_new = mu_ratio_step(W, numW, denW, l1=l1, l2=l2, eps=eps)
    numH, denH, loss = _sparse_h_terms(X, W_new, H, eps, with_loss=with_loss)
    W64 = W_new.astype(np.float64)
    return W_new, (numH, denH, loss, W64.T @ W64)


def _sparse_ratio(X: Any, W: Array, H: Array, eps: float) -> tuple[Any, np.ndarray]:
    """``X / (W H)`` at the non-zeros of the CSR panel X (a CSR matrix), and ``W H`` there."""
    wh = np.maximum(_sparse_rows_dot(X, W, H), eps)
    return sp.csr_matrix((X.data / wh, X.indices, X.indptr), shape=X.shape), wh


def _sparse_h_terms(X: Any, W: Array, H: Array, eps: float, *,
                    with_loss: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """KL ``(numH, denH, loss)`` of a CSR panel, touching only its non-zeros (the loss NaN
    without ``with_loss``)."""
    R, wh = _sparse_ratio(X, W, H, eps)
    numH = np.asarray((R.T @ W).T, dtype=np.float64)
    denH = W.sum(axis=0, dtype=np.float64)[:, None]
    if not with_loss:
        return numH, denH, float("nan")
    x = X.data
    loss = float(_x_log(x, x / wh) - x.sum(dtype=np.float64)
                 + W.sum(axis=0, dtype=np.float64) @ np.asarray(H, dtype=np.float64).sum(axis=1))
    return numH, denH, loss


def panel_loss(X: Array, W: Array, H: Array, *, beta: float, observed: Array | None = None,
               masked: bool = False, eps: float = EPSILON) -> tuple[float, float, float]:
    """``(β-divergence, squared Frobenius residual, Σ M X²)`` of one panel at ``(W, H)``."""
    if hasattr(X, "tocsr"):
        return _sparse_panel_loss(X.tocsr(), W, H, beta=beta, eps=eps)
    H = asarray_on(H, W)  # for device blocks, H (k x n) is copied to the device here
    if beta == 2.0 and observed is None and not masked:
        residual, sq = _frobenius_by_blocks(X, W, H)
        return residual, residual, sq
    X, observed = observed_entries(X, observed, masked)
    WH = W @ H
    loss = beta_divergence(X, WH, beta, observed, eps)
    residual = loss if beta == 2.0 else beta_divergence(X, WH, 2.0, observed)
    Xo = X if observed is None else X[observed]
    return loss, residual, _square_sum(Xo)


def _frobenius_by_blocks(X: Array, W: Array, H: Array, rows: int = 4096) -> tuple[float, float]:
    """``(||X - W H||², ||X||²)`` of a dense panel, a few thousand rows at a time: the panel
    task's memory stays that of the iteration's (no panel-sized ``W H``)."""
    residual = sq = 0.0
    for start in range(0, X.shape[0], rows):
        stop = min(start + rows, X.shape[0])
        Xb = X[start:stop, :]
        Rb = Xb - W[start:stop, :] @ H
        residual += _square_sum(Rb)
        sq += _square_sum(Xb)
    return residual, sq


def update_h_beta(H: np.ndarray, numH: np.ndarray, denH: np.ndarray, *, beta: float,
                  l1: float = 0.0, l2: float = 0.0, eps: float = EPSILON) -> np.ndarray:
    """The H half of the MU iteration from the reduced numerator and denominator (float64)."""
    H = np.asarray(H, dtype=np.float64)
    den = np.broadcast_to(denH, H.shape)
    H_new = mu_ratio_step(H, numH, den, gamma=mu_exponent(beta), l1=l1, l2=l2, eps=eps)
    if beta <= 1.0:
        H_new[H_new < np.finfo(np.float64).eps] = 0
    return H_new


def transform_rows_beta(X: Array, H: np.ndarray, *, beta: float, max_iter: int = 200,
                        tol: float = 1e-6, l1: float = 0.0, l2: float = 0.0,
                        observed: Array | None = None, masked: bool = False,
                        eps: float = EPSILON) -> np.ndarray:
    """Rows of W for fixed H under the β-divergence: MU iterations to convergence on the panel.

    Starts from the Frobenius NNLS rows and stops when ten iterations decrease the panel's loss
    by less than ``tol`` (relative), or after ``max_iter``.
    """
    dense = not hasattr(X, "tocsr")
    if dense:
        X, observed = observed_entries(X, observed, masked)
    Xd = X
    # start from the Frobenius NNLS solution, lifted off zero (MU cannot move a zero)
    H64 = np.asarray(H, dtype=np.float64)
    XHt = np.asarray(X @ H64.T)
    W = nnls_bpp(H64 @ H64.T, XHt.T).T
    W = np.maximum(W, 1e-2 * max(float(W.mean()), eps)).astype(H.dtype)
    prev = np.inf
    for it in range(1, max_iter + 1):
        if dense:
            WH = W @ H
            num, den = _powers(Xd, WH, beta, observed, eps)
            numW = num @ H.T
            denW = np.broadcast_to(H.sum(axis=1), W.shape) if den is None else den @ H.T
            W = mu_ratio_step(W, numW, denW, gamma=mu_exponent(beta), l1=l1, l2=l2, eps=eps)
            loss = beta_divergence(Xd, W @ H, beta, observed, eps)
        else:
            W, (_, _, loss, _) = _sparse_panel_step(
                X.tocsr(), W, H, beta=beta, l1=l1, l2=l2, sum_to_one=False, eps=eps)
        # MU can stall for a few iterations before moving again: judge progress over ten
        if it % 10 == 0:
            if np.isfinite(prev) and prev - loss <= tol * prev:
                break
            prev = loss
    return W
