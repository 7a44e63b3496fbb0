"""Block kernels: pure array functions on one block of data.

Nothing here imports dask. Each function takes in-memory arrays (numpy, or any array with the
same namespace, e.g. CuPy, where noted) and returns arrays. The graph builders in
:mod:`dnmf.graph` call these once per row panel; the driver calls the H-side updates on the
small k x n matrices.

Device blocks (CuPy, or any array-API library): the kernels of a dense HALS or MU iteration
(:func:`panel_step`, :func:`hals_sweep`, :func:`mu_step`, :func:`gram_partials`, and the dense
kernels of :mod:`dnmf.divergence`) work in the namespace of the block they are given. The small
host operands (H, HHt) are copied to the block's device inside the task (:func:`asarray_on`);
the partial sums leave the task as host numpy arrays (:func:`to_host`). numpy and CuPy share
numpy's extensions (``out=``, ``dtype=`` on element-wise functions); other array-API libraries
take the portable path. Exact NNLS (anls, sum-to-one) stays numpy-only.

Notation (scikit-learn's orientation): X (n_samples, n_features) ~= W (n_samples, k) @ H (k,
n_features). ``XHt = X @ H.T``, ``HHt = H @ H.T``, ``WtX = W.T @ X``, ``WtW = W.T @ W``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

#: Default guard for denominators (scikit-learn's choice for its MU solver).
EPSILON = float(np.finfo(np.float32).eps)

Array = Any  # a numpy (or CuPy) ndarray


def array_namespace(a: Array) -> Any:
    """The array-API namespace of ``a`` (numpy for numpy arrays, cupy for CuPy arrays)."""
    if type(a) is np.ndarray:  # the common case first: this runs several times per update
        return np
    if type(a).__module__.startswith("cupy"):
        import sys

        return sys.modules["cupy"]  # the numpy-like module, whatever __array_namespace__ says
    get_ns = getattr(a, "__array_namespace__", None)
    return get_ns() if get_ns is not None else np


def aligned(value: Any) -> Any:
    """``value`` with every numpy array in it (at any depth of tuples and lists) aligned to
    its dtype: an array whose data is not is replaced by an aligned copy, all else is returned
    as it is.

    Why: numpy multiplies matrices with BLAS only when both operands are aligned, and falls
    back to its own loops otherwise, which add in another order. Arrays that reach a task
    through Dask's serialisation (H and HHt in each iteration's graph, a W panel or partials
    moved between workers or gathered by the driver) are views into received frames, at
    whatever offset the message gave them, often not even a multiple of 4 bytes. So the same
    panel, recomputed after a worker died or read back from a checkpoint, could round
    differently from the first time it was computed. Aligned, every copy of a panel takes
    the same BLAS path and gives the same bits.
    """
    if isinstance(value, np.ndarray):
        return value if value.flags.aligned else np.array(value, order="K", copy=True)
    if type(value) in (tuple, list):  # not a named tuple's subclass: its type would be lost
        items = [aligned(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items)
    return value


def call_aligned(func: Any, *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)`` on :func:`aligned` arguments: how every task of dnmf's graphs
    calls its kernel, so that where an operand came from never changes the result."""
    return func(*aligned(args), **kwargs)


def numpy_like(xp: Any) -> bool:
    """Whether ``xp`` has numpy's extensions (``out=``, ``dtype=`` of element-wise functions,
    ``xp.reciprocal``): numpy and CuPy."""
    return xp is np or getattr(xp, "__name__", "") == "cupy"


def to_host(a: Array) -> np.ndarray:
    """``a`` as a host numpy array: a no-op for numpy, a device-to-host copy otherwise.

    The one place where data leaves a device: the k x n and k x k partial sums at the end of a
    panel task, and k x k Gram matrices whose diagonal a HALS sweep reads.
    """
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)  # CuPy
    if callable(get):
        return get()
    if hasattr(a, "__dlpack__"):  # other array-API libraries
        return np.from_dlpack(a)
    return np.asarray(a)


def asarray_on(a: Any, like: Array, *, dtype: Any = None) -> Array:
    """``a`` (a host array, a scalar, or already one of ``like``'s) in ``like``'s namespace, on
    its device, as ``dtype``: a host-to-device copy of the small operands (H, HHt) for device
    blocks, ``np.asarray`` for numpy."""
    xp = array_namespace(like)
    if xp is np:
        return np.asarray(a, dtype=dtype)
    if numpy_like(xp):  # CuPy: the current device is the block's (one GPU per worker)
        with like.device:
            return xp.asarray(a, dtype=dtype)
    return xp.asarray(a, dtype=dtype, device=like.device)


def astype(a: Array, dtype: Any) -> Array:
    """``a`` cast to ``dtype`` (no copy when it has it already), in its own namespace."""
    if hasattr(a, "astype"):  # numpy, CuPy
        return a.astype(dtype, copy=False)
    return array_namespace(a).astype(a, dtype, copy=False)


def scalar(like: Array, value: float) -> Any:
    """``value`` to mix into arithmetic with ``like`` without promoting its dtype: a numpy
    scalar of its dtype for numpy, else a Python float (CuPy and the array API treat those as
    weak; a 0-d device array would cost a host-to-device copy each time)."""
    if isinstance(like, np.ndarray):
        return like.dtype.type(value)
    return float(value)


def _zeros_on(like: Array, shape: tuple[int, ...], dtype: Any) -> Array:
    xp = array_namespace(like)
    if xp is np:
        return np.zeros(shape, dtype=dtype)
    if numpy_like(xp):
        with like.device:
            return xp.zeros(shape, dtype=dtype)
    return xp.zeros(shape, dtype=dtype, device=like.device)


# ---------------------------------------------------------------------------------------------
# HALS / coordinate descent
# ---------------------------------------------------------------------------------------------


def hals_sweep(F: Array, A: Array, G: Array, *, l1: float = 0.0, l2: float = 0.0) -> Array:
    """One HALS sweep over the k columns of a factor, given the precomputed products.

    Solves ``min_F>=0 ||M - F @ U.T||^2 + l1*sum(F) + l2/2*||F||^2`` one column at a time
    (Gauss-Seidel), where ``A = M @ U`` and ``G = U.T @ U``. This is scikit-learn's
    ``_update_cdnmf_fast`` without shuffling, vectorised over rows.

    Parameters
    ----------
    F : array of shape (m, k)
        The factor to update (W, or H.T); a copy is updated and returned.
    A : array of shape (m, k)
        ``M @ U``: ``X @ H.T`` for the W update, ``X.T @ W`` for the H update.
    G : array of shape (k, k)
        ``U.T @ U``: ``H @ H.T`` for W, ``W.T @ W`` for H.
    l1, l2 : float
        L1 and L2 penalties on F (scikit-learn's ``l1_reg``/``l2_reg`` after scaling).

    Returns
    -------
    array of shape (m, k), non-negative, same dtype as ``F``.
    """
    return _hals_sweeps_by_rows(F, A, G, sweeps=1, l1=l1, l2=l2)


#: Accelerated HALS (Gillis & Glineur, "Accelerated multiplicative updates and hierarchical ALS
#: algorithms for nonnegative matrix factorization", Neural Computation 24(4), 2012): the
#: products a factor's update needs (``X Hᵀ`` and ``H Hᵀ`` for W) are reused for several
#: sweeps. W's sweeps run inside the panel tasks, where a sweep costs O(rows k²) against the
#: O(rows n k) products and the read of X; H's run on the driver on the reduced k x n
#: products, where they are almost free. With 3 and 10, 100,000 x 200 (k = 10) reached
#: scikit-learn's final loss in 17 iterations instead of 59. The counts are fixed rather than
#: stopped adaptively (the paper's delta rule) so that results do not jump with the chunking.
W_INNER_SWEEPS = 5
H_INNER_SWEEPS = 10


def w_inner_sweeps(k: int, n_features: int) -> int:
    """W's sweeps per iteration for X with ``n_features`` columns: :data:`W_INNER_SWEEPS`,
    or 1 when a sweep costs about as much as the products (``n_features < 10 k``).

    The paper's bound is ``1 + ρ/2`` sweeps, ρ = 1 + n/(k + 1) (13 at n = 500, k = 20).
    Measured on this project's machine (2 cores):

    - 20,000 x 500 in memory (k = 20): 5 sweeps reach scikit-learn cd's final loss from the
      same NNDSVDa start in 13 iterations, 3 sweeps in 26;
    - 2,000,000 x 500 float32 streamed (4 GB, k = 20): with the sweeps on a transposed copy
      (:func:`_hals_sweeps_by_rows`) 5 sweeps cost 5.23 s per iteration, as 3 column-wise
      sweeps did (5.12 s; one read of X: 4.0-4.1 s); 5 column-wise ones cost 5.95 s;
    - k = 100 on 500 columns: 3 column-wise sweeps took an iteration from 24 to 38 s, hence
      1 below 10 k columns (not re-measured with the transposed sweeps).
    """
    return W_INNER_SWEEPS if n_features >= 10 * k else 1


def hals_sweeps(F: Array, A: Array, G: Array, *, sweeps: int, l1: float = 0.0,
                l2: float = 0.0) -> Array:
    """``sweeps`` HALS sweeps of ``F`` on the same products (see :func:`hals_sweep`); each
    does not increase the objective. With an L1 penalty one sweep is made."""
    if l1:
        # repeated L1 shrinkage on stale products can zero a whole component early for good
        # (measured: a 1.8x worse final loss than plain HALS), so one sweep, as scikit-learn
        sweeps = 1
    return _hals_sweeps_by_rows(F, A, G, sweeps=max(1, sweeps), l1=l1, l2=l2)


def _hals_sweeps_by_rows(F: Array, A: Array, G: Array, *, sweeps: int, l1: float,
                         l2: float) -> Array:
    """:func:`hals_sweep` ``sweeps`` times, on transposed copies of F and A.

    A column of a C-ordered (m, k) factor is a strided walk over all of it; a row of its
    transpose is contiguous (and, on a GPU, read coalesced). Transposing once for all the
    sweeps made 5 numpy sweeps 2.1-3.5x faster (m = 20,000-100,000, k = 10-20), the two
    copies included. Every namespace runs the same operations, so numpy and device blocks
    give the same numbers; except numpy factors of at most :data:`COMPILED_SWEEP_MAX_ENTRIES`
    entries, swept by :func:`_compiled_sweeps` (the same updates, rounded in another order).
    """
    xp = array_namespace(F)
    if (xp is np and F.dtype in _COMPILED_DTYPES and F.size <= COMPILED_SWEEP_MAX_ENTRIES
            and compiled_sweep() is not None):
        return _compiled_sweeps(F, A, G, sweeps=sweeps, l1=l1, l2=l2)
    G = asarray_on(G, F, dtype=F.dtype)
    Ft = _transposed_copy(F)
    At = _transposed_copy(asarray_on(A, F, dtype=F.dtype))
    if l1:
        At = At - scalar(F, l1)
    # the k diagonal entries on the host once: a device scalar read per column would wait
    # for the device every time
    diag = np.diagonal(to_host(G))
    if xp is np:
        _numpy_sweeps(Ft, At, G, diag, sweeps=sweeps, l2=l2)
        return _transposed_copy(Ft)
    for _ in range(sweeps):
        for t in range(Ft.shape[0]):
            hess = float(diag[t]) + l2
            if hess <= 0.0:  # a zero row of the other factor: this column has no information
                continue
            grad = G[t, :] @ Ft - At[t, :]
            if l2:
                grad = grad + scalar(F, l2) * Ft[t, :]
            Ft[t, :] = xp.maximum(Ft[t, :] - grad / scalar(F, hess), 0.0)
    return _transposed_copy(Ft)


@functools.lru_cache(maxsize=1)
def compiled_sweep() -> Any:
    """scikit-learn's compiled HALS sweep (``_update_cdnmf_fast``), or None where it cannot
    be imported (a private name, hence the guard).

    Imported on first use, not with this module: ``sklearn.decomposition`` imports every one
    of its estimators (~40 MB in each worker process), and the workers of a large fit, whose
    panels are far above :data:`COMPILED_SWEEP_MAX_ENTRIES`, never need it.
    """
    try:
        from sklearn.decomposition._cdnmf_fast import _update_cdnmf_fast
    except ImportError:  # pragma: no cover - a scikit-learn that moved it: the numpy loop
        return None
    return _update_cdnmf_fast

_COMPILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: Factors of at most this many entries (rows x k) are swept by scikit-learn's compiled
#: coordinate descent (:func:`_compiled_sweeps`), larger ones by the vectorised numpy loop.
#: A numpy column update costs ~5 calls (a few µs each) whatever its length; the compiled
#: one ~1 ns per row and component, unvectorised. Measured on this project's machine (2
#: shared cores; µs for all the sweeps, numpy / compiled): 10 x 5, 10 sweeps 531 / 30;
#: 100 x 5, 1 sweep 105 / 13; 100 x 10, 10 sweeps 824 / 94; 1,000 x 10, 1 sweep 110 / 80,
#: 5 sweeps 344 / 609; 10,000 x 10, 5 sweeps 2,491 / 7,152. So: up to 4,096 entries.
COMPILED_SWEEP_MAX_ENTRIES = 4096


def _compiled_sweeps(F: np.ndarray, A: np.ndarray, G: np.ndarray, *, sweeps: int, l1: float,
                     l2: float) -> np.ndarray:
    """:func:`_hals_sweeps_by_rows` on numpy by scikit-learn's ``_update_cdnmf_fast`` (the
    Cython sweep of its ``cd`` solver, no shuffling): the same updates, column by column, the
    rows of a column independent; the penalties enter as scikit-learn passes them (``l1`` off
    ``A``, ``l2`` on G's diagonal). Only the rounding differs from the numpy loop (the
    k-term gradient summed in another order: a few ulps per update)."""
    dtype = F.dtype
    W = np.array(F, dtype=dtype, order="C", copy=True)
    # the kernel's memoryviews need writable operands of W's dtype (it writes W only): G and
    # A are copied only when they are not that already (or to take the penalties)
    gram = np.asarray(G)
    if l2 or gram.dtype != dtype or not gram.flags.writeable:
        gram = np.array(gram, dtype=dtype, copy=True)
        if l2:
            gram.flat[::gram.shape[0] + 1] += dtype.type(l2)
    A = np.asarray(A)
    if l1:
        A = np.subtract(A, l1, dtype=dtype)
    elif A.dtype != dtype or not A.flags.writeable:
        A = np.array(A, dtype=dtype, copy=True)
    order = _identity_order(W.shape[1])
    sweep = compiled_sweep()
    for _ in range(sweeps):
        sweep(W, gram, A, order)
    return W


@functools.lru_cache(maxsize=64)
def _identity_order(k: int) -> np.ndarray:
    """The columns in their order (no shuffling), made once per k."""
    return np.arange(k, dtype=np.intp)


def _numpy_sweeps(Ft: np.ndarray, At: np.ndarray, G: np.ndarray, diag: np.ndarray, *,
                  sweeps: int, l2: float) -> None:
    """:func:`_hals_sweeps_by_rows`'s loop on numpy rows, in place, with the same operations in
    the same order (the same numbers to the bit) but into one preallocated row and with the
    scalars made once: at small k and m (a 100 x 10 fit) the loop's Python-level overhead
    (temporaries, scalar conversions) is most of an iteration."""
    k = Ft.shape[0]
    dtype = Ft.dtype.type
    hess = [dtype(float(diag[t]) + l2) for t in range(k)]
    live = [t for t in range(k) if float(diag[t]) + l2 > 0.0]  # zero rows: no information
    l2_s = dtype(l2)
    rows = [Ft[t] for t in range(k)]
    g_rows = [G[t] for t in range(k)]
    a_rows = [At[t] for t in range(k)]
    grad = np.empty(Ft.shape[1], dtype=Ft.dtype)
    step = np.empty_like(grad)
    matmul, subtract, add, multiply, divide, maximum = (
        np.matmul, np.subtract, np.add, np.multiply, np.divide, np.maximum)
    for _ in range(sweeps):
        for t in live:
            row = rows[t]
            matmul(g_rows[t], Ft, out=grad)
            subtract(grad, a_rows[t], out=grad)
            if l2:
                multiply(l2_s, row, out=step)
                add(grad, step, out=grad)
            divide(grad, hess[t], out=grad)
            subtract(row, grad, out=grad)
            maximum(grad, 0.0, out=row)


def _transposed_copy(a: Array) -> Array:
    """A new C-ordered array holding ``a.T`` (never a view of ``a``)."""
    xp = array_namespace(a)
    if numpy_like(xp):
        return xp.array(a.T, order="C", copy=True)
    return xp.asarray(a.T, copy=True)


# ---------------------------------------------------------------------------------------------
# Multiplicative updates (Lee & Seung), Frobenius loss
# ---------------------------------------------------------------------------------------------


def mu_step(
    F: Array, A: Array, G: Array, *, l1: float = 0.0, l2: float = 0.0, eps: float = EPSILON
) -> Array:
    """One Lee-Seung multiplicative update of a factor for the Frobenius loss.

    ``F <- F * A / (F @ G + l1 + l2*F)`` with the same ``A``, ``G`` as :func:`hals_sweep`.
    A zero denominator (only where the row of F is already zero) is replaced by ``eps``
    instead of adding ``eps`` everywhere, which would break the monotone decrease of the loss.
    """
    xp = array_namespace(F)
    G = asarray_on(G, F, dtype=F.dtype)
    A = asarray_on(A, F, dtype=F.dtype)
    denom = F @ G
    if l1:
        denom = denom + scalar(F, l1)
    if l2:
        denom = denom + scalar(F, l2) * F
    denom = xp.where(denom > 0, denom, scalar(F, eps))
    return F * (xp.maximum(A, 0.0) / denom)


# ---------------------------------------------------------------------------------------------
# Exact NNLS: block principal pivoting (Kim & Park, 2011)
# ---------------------------------------------------------------------------------------------


def _solve_passive(AtA: np.ndarray, AtB: np.ndarray, passive: np.ndarray) -> np.ndarray:
    """Solve the unconstrained normal equations restricted to each column's passive set.

    Columns sharing a passive set are solved together (one factorisation per distinct set).
    """
    k, m = AtB.shape
    X = np.zeros((k, m), dtype=np.float64)
    if m == 0:
        return X
    if k <= 62:  # one integer code per column: a 1-D unique is much cheaper than axis=1
        codes = (1 << np.arange(k, dtype=np.int64)) @ passive.astype(np.int64)
        uniq, group_of_col = np.unique(codes, return_inverse=True)
    else:
        uniq, group_of_col = np.unique(np.packbits(passive, axis=0), axis=1, return_inverse=True)
    group_of_col = np.ravel(group_of_col)
    if len(uniq) > _MAX_GROUPS:
        first = np.empty(len(uniq), dtype=np.int64)  # a column of each set
        first[group_of_col[::-1]] = np.arange(m - 1, -1, -1)
        return _solve_passive_batched(AtA, AtB, passive[:, first].T, group_of_col)
    if len(uniq) == 1:
        groups = [np.arange(m)]
    else:
        order = np.argsort(group_of_col, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(group_of_col[order])) + 1)
    for cols in groups:
        rows = np.flatnonzero(passive[:, cols[0]])
        if rows.size == 0:
            continue
        sub = AtA[np.ix_(rows, rows)]
        rhs = AtB[np.ix_(rows, cols)]
        try:
            sol = np.linalg.solve(sub, rhs)
        except np.linalg.LinAlgError:
            sol = np.linalg.lstsq(sub, rhs, rcond=None)[0]
        X[np.ix_(rows, cols)] = sol
    return X


#: Above this many distinct passive sets, solve column by column in vectorised batches.
_MAX_GROUPS = 32
#: Columns per batch of the per-column products (bounds the (batch, k, k) temporary).
_BATCH = 4096


def _solve_passive_batched(AtA: np.ndarray, AtB: np.ndarray, sets: np.ndarray,
                           group_of_col: np.ndarray) -> np.ndarray:
    """Many distinct passive sets: each set's system inverted once, applied column by column.

    ``sets`` (distinct sets, k) holds the distinct passive sets, ``group_of_col`` (m,) each
    column's. Each set's system is the full k x k Gram with the identity on the active rows
    and columns, so the distinct sets are one batched inversion; a column's solution is its
    set's inverse times its right-hand side (zero on the active rows), a batched k x k
    matrix-vector product.
    Measured on 33,554 pixels, k = 8 (211 sets): 6 ms against 42 ms for one factorisation per
    column, the solutions agreeing to the rounding of the solves (the Gram's condition number
    times the unit roundoff).
    """
    k, m = AtB.shape
    P = sets.astype(np.float64)  # (distinct sets, k): 1 on the passive rows
    eye = np.eye(k)
    mats = AtA[None] * (P[:, :, None] * P[:, None, :]) + eye[None] * (1.0 - P)[:, None, :]
    try:
        inv = np.linalg.inv(mats)
    except np.linalg.LinAlgError:  # a singular passive system: its pseudo-inverse
        inv = np.linalg.pinv(mats)
    inv *= P[:, :, None]  # active rows give 0 whatever the right-hand side
    X = np.empty((k, m), dtype=np.float64)
    for lo in range(0, m, _BATCH):
        g = group_of_col[lo : lo + _BATCH]
        rhs = (AtB[:, lo : lo + _BATCH].T * P[g])[:, :, None]  # (b, k, 1), 0 on the active rows
        inv_g = inv[g]
        sol = np.matmul(inv_g, rhs)
        # one step of iterative refinement: an inverse alone leaves a residual of the order of
        # the condition number times the roundoff (large for the augmented sum-to-one Gram),
        # enough to flip the signs of the pivoting's gradients; one step brings it to the
        # order of a backward-stable solve's
        sol += np.matmul(inv_g, rhs - np.matmul(mats[g], sol))
        X[:, lo : lo + _BATCH] = sol[:, :, 0].T
    return X


def nnls_bpp(
    AtA: np.ndarray, AtB: np.ndarray, init: np.ndarray | None = None, *, max_iter: int | None = None
) -> np.ndarray:
    """Solve ``min_X>=0 ||A X - B||_F^2`` for many right-hand sides from the Gram matrices.

    Block principal pivoting of Kim & Park, "Fast nonnegative matrix factorization: an
    active-set-like method and comparisons", SIAM J. Sci. Comput. 33(6), 2011. All columns share
    ``AtA``; columns with equal passive sets share one solve.

    Parameters
    ----------
    AtA : array of shape (k, k)
        Gram matrix, symmetric positive semi-definite.
    AtB : array of shape (k, m)
        Right-hand sides.
    init : array of shape (k, m), optional
        A warm start; its positive entries seed the passive sets.
    max_iter : int, optional
        Bound on pivoting rounds (default ``5 * k``); unconverged columns are clipped at 0.

    Returns
    -------
    array of shape (k, m), float64, non-negative.
    """
    X, _ = _bpp(AtA, AtB, init, max_iter)
    return np.maximum(X, 0.0)


def _bpp(AtA: np.ndarray, AtB: np.ndarray, init: np.ndarray | None,
         max_iter: int | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nnls_bpp` before the clipping: the last iterate and the unconverged columns."""
    AtA = np.asarray(AtA, dtype=np.float64)
    AtB = np.asarray(AtB, dtype=np.float64)
    k, m = AtB.shape
    if max_iter is None:
        max_iter = 5 * k
    # Scale-aware zero thresholds (Kim & Park use an absolute 1e-12): the gradient Y has the
    # units of AtB, the solution X those of AtB / AtA, so each gets its own scale.
    y_tol = 1e-12 * max(float(np.abs(AtA).max(initial=0.0)), float(np.abs(AtB).max(initial=0.0)),
                        1e-300)

    def solve(passive: np.ndarray, cols: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        Xc = _solve_passive(AtA, AtB[:, cols], passive[:, cols])
        Xc[np.abs(Xc) < 1e-12 * max(float(np.abs(Xc).max(initial=0.0)), 1e-300)] = 0.0
        Yc = AtA @ Xc - AtB[:, cols]
        Yc[np.abs(Yc) < y_tol] = 0.0
        return Xc, Yc

    if init is None:
        passive = np.zeros((k, m), dtype=bool)
        X = np.zeros((k, m))
        Y = -AtB.copy()
    else:
        passive = np.asarray(init) > 0
        X, Y = solve(passive, slice(None))

    pbar = 3
    P = np.full(m, pbar)
    Ninf = np.full(m, k + 1)
    # the rounds work on the columns not yet optimal only (idx, and their masks): a warm start
    # leaves a few percent of them after the first solve
    non_opt = (Y < 0) & ~passive
    infeasible = (X < 0) & passive
    not_good = non_opt.sum(axis=0) + infeasible.sum(axis=0)
    idx = np.flatnonzero(not_good)
    non_opt, infeasible, not_good = non_opt[:, idx], infeasible[:, idx], not_good[idx]

    it = 0
    while idx.size and it < max_iter:
        it += 1
        cols1 = not_good < Ninf[idx]
        cols2 = ~cols1 & (P[idx] >= 1)
        cols3 = np.flatnonzero(~cols1 & ~cols2)
        P[idx[cols1]] = pbar
        Ninf[idx[cols1]] = not_good[cols1]
        P[idx[cols2]] -= 1
        exchange = cols1 | cols2
        sub = passive[:, idx]
        sub[:, exchange] |= non_opt[:, exchange]
        sub[:, exchange] &= ~infeasible[:, exchange]
        for c in cols3:  # backup rule: flip only the last offending variable
            t = np.flatnonzero(non_opt[:, c] | infeasible[:, c])[-1]
            sub[t, c] = not sub[t, c]
        passive[:, idx] = sub
        Xc, Yc = solve(passive, idx)
        X[:, idx], Y[:, idx] = Xc, Yc
        non_opt = (Yc < 0) & ~sub
        infeasible = (Xc < 0) & sub
        not_good = non_opt.sum(axis=0) + infeasible.sum(axis=0)
        keep = not_good > 0
        idx, non_opt, infeasible, not_good = (idx[keep], non_opt[:, keep], infeasible[:, keep],
                                              not_good[keep])
    unconverged = np.zeros(m, dtype=bool)
    unconverged[idx] = True
    return X, unconverged


# ---------------------------------------------------------------------------------------------
# The fused row-panel step: update W_i and accumulate the H-side products in one task
# ---------------------------------------------------------------------------------------------


#: Relative weight of the appended row of the exact sum-to-one W update (:func:`fcls_rows`).
SUM_TO_ONE_WEIGHT_EXACT = 1e5
#: Pivoting rounds of a fit's warm-started sum-to-one W update (:func:`fcls_rows`; None: exact).
#: Measured (33,554 pixels x 180 bands, float32, one thread): the exact update took 20-23 ms at
#: k = 8 and 52 ms at k = 10 five iterations into a fit, 3 rounds 17-20 and 37 ms; 3 rounds
#: gave the exact fits' results on the test scenes, 2 rounds changed the trajectory, 1 round
#: moved a scene's mean spectral angle by 0.05 degrees.
FCLS_WARM_ROUNDS: int | None = 3


def fcls_warm_rounds() -> int | None:
    """Pivoting rounds of a fit's sum-to-one W update: ``DNMF_FCLS_ROUNDS`` (read in the
    process that runs the kernel, e.g. a worker; ``exact`` for the exact solve, or a number),
    default :data:`FCLS_WARM_ROUNDS`."""
    import os

    value = os.environ.get("DNMF_FCLS_ROUNDS", "").strip().lower()
    if not value:
        return FCLS_WARM_ROUNDS
    if value == "exact":
        return None
    rounds = int(value)
    if rounds < 0:
        raise ValueError(f"DNMF_FCLS_ROUNDS must be 'exact' or a number >= 0, got {value!r}")
    return rounds


#: A warm start's row counts as feasible when it sums to one within this (float32 rows of an
#: exact update: ~1e-7); otherwise the fallback of an unconverged row is the rescaled iterate.
FEASIBLE_SUM_TOL = 1e-5


def fcls_rows(XHt: Array, HHt: Array, *, l1: float = 0.0, l2: float = 0.0,
              W: Array | None = None, weight: float = SUM_TO_ONE_WEIGHT_EXACT,
              max_iter: int | None = None) -> np.ndarray:
    """Rows of W by fully constrained least squares: ``W >= 0`` and rows summing to one.

    The augmented-row method (Heinz & Chang, 2001) solved exactly by NNLS (block principal
    pivoting): a column ``δ·1`` is appended to H and ``δ`` to every row of X, i.e.
    ``HHt + δ² 11ᵀ`` and ``XHt + δ²``. With ``δ² = weight * mean(diag(HHt))`` the row sums are 1
    to about ``1 / weight`` relative; because the NNLS solve is exact, a large weight costs no
    extra iterations (unlike HALS or MU, whose steps it would shrink).

    ``max_iter`` with a feasible warm start ``W`` (rows >= 0 summing to one) is the inexact
    update of a fit (:data:`FCLS_WARM_ROUNDS`): at most that many pivoting rounds from W's
    passive sets. A row whose passive set is already optimal (every row at a fit's fixed point)
    is solved exactly in round 0; a row still unconverged after the last round gets the better,
    by the least-squares objective, of its previous value and the last iterate clipped at 0 and
    rescaled to sum one. Both are feasible and neither is worse than the previous row, so the
    update never increases the objective.
    """
    HHt = np.asarray(HHt, dtype=np.float64)
    k = HHt.shape[0]
    delta2 = weight * max(float(np.trace(HHt)) / k, np.finfo(np.float64).tiny)
    gram = HHt + delta2 + (l2 * np.eye(k) if l2 else 0.0)
    rhs = np.asarray(XHt, dtype=np.float64).T + delta2
    if l1:
        rhs = rhs - l1
    init = None if W is None else np.asarray(W).T
    X, unconverged = _bpp(gram, rhs, init, max_iter)
    X = np.maximum(X, 0.0)
    if init is not None and max_iter is not None and unconverged.any():
        cols = np.flatnonzero(unconverged)
        X[:, cols] = _better_feasible(X[:, cols], init[:, cols], gram - delta2,
                                      rhs[:, cols] - delta2)
    return X.T


def _better_feasible(Z: np.ndarray, W0: np.ndarray, G: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Per column, the better for ``½ wᵀGw - bᵀw`` of ``Z`` rescaled to sum one and ``W0``,
    ``W0`` only where it is feasible (a custom start need not be)."""
    k = Z.shape[0]
    sums = Z.sum(axis=0)
    Z = np.where(sums > 0, Z / np.where(sums > 0, sums, 1.0), 1.0 / k)
    W0 = np.asarray(W0, dtype=np.float64)

    def objective(V: np.ndarray) -> np.ndarray:
        return 0.5 * np.einsum("ij,ij->j", V, G @ V) - np.einsum("ij,ij->j", B, V)

    feasible = (W0 >= 0).all(axis=0) & (np.abs(W0.sum(axis=0) - 1.0) <= FEASIBLE_SUM_TOL)
    return np.where(feasible & (objective(W0) < objective(Z)), W0, Z)


def update_w(
    W: Array,
    XHt: Array,
    HHt: Array,
    *,
    solver: str,
    l1: float = 0.0,
    l2: float = 0.0,
    inner_sweeps: int = W_INNER_SWEEPS,
    sum_to_one: bool = False,
    fcls_rounds: int | None | str = "auto",
) -> Array:
    """Update a block of rows of W given ``XHt = X_i @ H.T`` and ``HHt``.

    Rows of W are independent given H, so applying this per row panel is exactly the global W
    update of the chosen solver. With ``sum_to_one`` every solver updates W by
    :func:`fcls_rows` warm-started from W with at most ``fcls_rounds`` pivoting rounds (None:
    the exact solve; ``"auto"``: :func:`fcls_warm_rounds`), so that the abundance constraint
    holds at every iteration.
    hals and mu run in W's namespace (numpy or a device); the exact NNLS solves are numpy-only.
    """
    if (sum_to_one or solver == "anls") and array_namespace(W) is not np:
        raise ValueError("the exact NNLS W update (anls, sum-to-one) runs on numpy blocks only")
    if sum_to_one:
        rounds = fcls_warm_rounds() if fcls_rounds == "auto" else fcls_rounds
        return fcls_rows(XHt, HHt, l1=l1, l2=l2, W=W,
                         max_iter=rounds).astype(W.dtype, copy=False)
    if solver == "hals":  # inner_sweeps = 1 is plain HALS
        return hals_sweeps(W, XHt, HHt, sweeps=inner_sweeps, l1=l1, l2=l2)
    if solver == "mu":
        return mu_step(W, XHt, HHt, l1=l1, l2=l2)
    if solver == "anls":
        gram = np.asarray(HHt, dtype=np.float64)
        if l2:
            gram = gram + l2 * np.eye(gram.shape[0])
        rhs = np.asarray(XHt, dtype=np.float64).T
        if l1:
            rhs = rhs - l1
        return nnls_bpp(gram, rhs, init=np.asarray(W).T).T.astype(W.dtype, copy=False)
    raise ValueError(f"unknown solver {solver!r}")


def gram_partials(X: Array, W: Array) -> tuple[Array, Array]:
    """``(W.T @ X, W.T @ W)`` of one row panel, in float64 for accumulation across panels.

    The products run in the data's precision (fast BLAS); only the k x n and k x k results are
    promoted, so the sums over panels and the Gram-identity loss do not lose digits in float32.
    A sparse panel's ``W.T @ X`` is returned in X's dtype and promoted by :func:`sum_partials`.
    """
    xp = array_namespace(W)
    rows = PARTIAL_BLOCK_ROWS if xp is np else DEVICE_PARTIAL_BLOCK_ROWS
    if hasattr(X, "tocsr"):  # scipy.sparse block: keep the product sparse-dense
        # left in X's dtype: :func:`sum_partials` promotes it as it adds (the same sums),
        # and a float32 k x n partial waiting for its reduction takes half the memory
        return (X.T @ W).T, astype(W.T @ W, xp.float64)
    if X.dtype == xp.float32 and X.shape[0] > 2 * rows:
        return _blocked_gram_partials(X, W, rows)
    else:
        WtX = W.T @ X
    WtW = W.T @ W
    return astype(WtX, xp.float64), astype(WtW, xp.float64)


#: Rows per float32 product summed in float64 by :func:`gram_partials`.
PARTIAL_BLOCK_ROWS = 256
#: The same for device blocks: a GPU runs a 256-row product far below its speed (launch
#: overhead), and cuBLAS sums long products in blocks of its own. Not yet measured.
DEVICE_PARTIAL_BLOCK_ROWS = 4096


def _blocked_gram_partials(X: Array, W: Array,
                           rows: int = PARTIAL_BLOCK_ROWS) -> tuple[Array, Array]:
    """``(W.T @ X, W.T @ W)`` as float32 products of ``rows``-row blocks summed in float64.

    The loss comes from these by the Gram identity ``||X||² - 2<H, WᵀX> + <WᵀW, HHᵀ>``, which
    cancels: at a relative error of 0.5% the residual is 2.5e-5 of ``||X||²``, and one float32
    product over 33,554 rows (~5e-7 relative error) makes the loss ~2% wrong, more than any
    tolerance the stopping rule compares loss changes with. Short float32 sums carried in
    float64 are ~15x more accurate at the speed of one product (a float64 product would need a
    float64 copy of the panel and run at half the speed).
    """
    k, n = W.shape[1], X.shape[1]
    f64 = array_namespace(W).float64
    WtX = _zeros_on(W, (k, n), f64)
    WtW = _zeros_on(W, (k, k), f64)
    _add_gram_partials(X, W, WtX, WtW, rows)
    return WtX, WtW


#: Bounds of :func:`cache_block_rows`. Below 1,024 rows the Python-level steps of the W update
#: (k x sweeps numpy calls per block for HALS) cost more than the cache saves.
MIN_BLOCK_ROWS = 1024
MAX_BLOCK_ROWS = 16384


def panel_block_rows(n_features: int, itemsize: int) -> int:
    """Rows of the sub-blocks of :func:`panel_step`: the whole panel by default.

    Measured on this project's machine (AMD EPYC, OpenBLAS Haswell kernels, one 33,554 x 500
    float32 panel, k = 20, CPU time of one thread on an idle machine, 2026-12-07,
    ``benchmarks/panel_profile.py``): in cache-sized sub-blocks (:func:`cache_block_rows`,
    4,096 rows there) HALS took 52.9 ms against 44.8 ms for the whole panel, anls 412 against
    389 ms, mu 33.2 against 35.0 ms; in 1 GB fits on 2 workers the two were within the
    noise. The streamed products gain little from the cache and the W update's per-block
    Python steps cost more, so a Frobenius panel is processed whole. ``DNMF_PANEL_BLOCK_ROWS``
    (read where the kernel runs) sets another size: a number of rows, or ``cache``.
    """
    forced = forced_block_rows("DNMF_PANEL_BLOCK_ROWS", n_features, itemsize)
    return WHOLE_PANEL if forced is None else forced


def cache_block_rows(n_features: int, itemsize: int) -> int:
    """As many rows as fit half of one CPU's share of the last-level cache (so that a
    sub-block of X read by ``X_b Hᵀ`` is still there for ``W_bᵀ X_b``), a multiple of
    :data:`PARTIAL_BLOCK_ROWS`, within [:data:`MIN_BLOCK_ROWS`, :data:`MAX_BLOCK_ROWS`]. The
    choice changes speed only: the partial sums are added in :data:`PARTIAL_BLOCK_ROWS`-row
    pieces whatever the sub-block, and every row of W is updated by the same operations."""
    from dnmf.cpu_cache import l3_share_bytes

    rows = l3_share_bytes() // 2 // max(1, n_features * itemsize)
    rows = (rows // PARTIAL_BLOCK_ROWS) * PARTIAL_BLOCK_ROWS
    return int(min(max(rows, MIN_BLOCK_ROWS), MAX_BLOCK_ROWS))


def forced_block_rows(variable: str, n_features: int, itemsize: int) -> int | None:
    """Sub-block rows set by the environment variable ``variable`` (read in the process that
    runs the kernel, e.g. a worker): ``0`` for the whole panel at once, ``cache`` for
    :func:`cache_block_rows`, a positive number of rows; None when unset."""
    import os

    value = os.environ.get(variable, "").strip().lower()
    if not value:
        return None
    if value == "cache":
        return cache_block_rows(n_features, itemsize)
    rows = int(value)
    return rows if rows > 0 else WHOLE_PANEL


#: Sub-block rows that no panel reaches: the whole panel at once.
WHOLE_PANEL = 1 << 40


def panel_step(
    X: Array,
    W: Array,
    H: Array,
    HHt: Array,
    *,
    solver: str,
    l1: float = 0.0,
    l2: float = 0.0,
    inner_sweeps: int | None = None,
    sum_to_one: bool = False,
    block_rows: int | None = None,
) -> tuple[Array, tuple[Array, Array]]:
    """The one-pass task of a row panel: update ``W_i``, then ``W_i.T X_i`` and ``W_i.T W_i``.

    A dense numpy panel may be processed in sub-blocks of rows (``block_rows``; default
    :func:`panel_block_rows`, the whole panel, which measured faster here), each while it is
    in cache: ``X_b Hᵀ``, the W update of those rows (rows of W are independent given H, so
    this is exactly the panel's update), then ``W_bᵀ X_b`` and ``W_bᵀ W_b`` added to the
    float64 partial sums in :data:`PARTIAL_BLOCK_ROWS`-row pieces. Sparse and device panels
    take the whole panel at once (:func:`panel_step_unblocked`).

    Parameters
    ----------
    X : array of shape (r, n)
        The row panel ``X_i`` (read once per iteration): numpy, scipy.sparse, or a device
        array (CuPy) for hals and mu.
    W : array of shape (r, k)
        The current rows ``W_i``, in X's namespace and on its device.
    H : array of shape (k, n), in X's dtype
        Host numpy: copied to W's device here.
    HHt : array of shape (k, k)
    inner_sweeps : int, optional
        HALS sweeps of W; default :func:`w_inner_sweeps` for these shapes.
    block_rows : int, optional
        Rows per sub-block (a multiple of :data:`PARTIAL_BLOCK_ROWS`); default
        :func:`panel_block_rows`.

    Returns
    -------
    W_new : array of shape (r, k), X's dtype, in W's namespace
    (WtX, WtW) : host numpy float64 arrays of shape (k, n) and (k, k) computed with ``W_new``
    """
    if inner_sweeps is None:
        inner_sweeps = w_inner_sweeps(W.shape[1], X.shape[1])
    if hasattr(X, "tocsr") or array_namespace(W) is not np:
        return panel_step_unblocked(X, W, H, HHt, solver=solver, l1=l1, l2=l2,
                                    inner_sweeps=inner_sweeps, sum_to_one=sum_to_one)
    if block_rows is None:
        block_rows = panel_block_rows(X.shape[1], X.dtype.itemsize)
    if block_rows % PARTIAL_BLOCK_ROWS:
        raise ValueError(f"block_rows must be a multiple of {PARTIAL_BLOCK_ROWS}")
    H = np.asarray(H)
    m, k, n = X.shape[0], W.shape[1], X.shape[1]
    W_new = np.empty_like(W)
    WtX = np.zeros((k, n), dtype=np.float64)
    WtW = np.zeros((k, k), dtype=np.float64)
    for start in range(0, m, block_rows):
        stop = min(start + block_rows, m)
        Xb = X[start:stop]
        Wb = update_w(W[start:stop], Xb @ H.T, HHt, solver=solver, l1=l1, l2=l2,
                      inner_sweeps=inner_sweeps, sum_to_one=sum_to_one)
        W_new[start:stop] = Wb
        _add_gram_partials(Xb, Wb, WtX, WtW)
    return W_new, (WtX, WtW)


def _add_gram_partials(X: Array, W: Array, WtX: Array, WtW: Array,
                       rows: int = PARTIAL_BLOCK_ROWS) -> None:
    """Add ``W.T @ X`` and ``W.T @ W`` to the float64 sums, in ``rows``-row products (see
    :func:`_blocked_gram_partials` for why; :func:`panel_step` gives float64 panels the same
    pieces, so that a sum never depends on where a sub-block ends). Any array namespace."""
    for start in range(0, X.shape[0], rows):
        stop = min(start + rows, X.shape[0])  # a 2-D index: the array API has no flat one
        Wp = W[start:stop, :]
        WtX += Wp.T @ X[start:stop, :]
        WtW += Wp.T @ Wp


def panel_step_unblocked(
    X: Array,
    W: Array,
    H: Array,
    HHt: Array,
    *,
    solver: str,
    l1: float = 0.0,
    l2: float = 0.0,
    inner_sweeps: int,
    sum_to_one: bool = False,
) -> tuple[Array, tuple[Array, Array]]:
    """:func:`panel_step` on the whole panel at once: ``X Hᵀ``, the W update, then
    :func:`gram_partials`. The path of scipy.sparse panels and device (CuPy) blocks, whose
    libraries block the products themselves."""
    H = asarray_on(H, W)  # for device blocks, H (k x n) is copied to the device here
    XHt = X @ H.T
    if array_namespace(W) is np:
        XHt = np.asarray(XHt)  # a scipy.sparse panel may give np.matrix
    W_new = update_w(W, XHt, HHt, solver=solver, l1=l1, l2=l2, inner_sweeps=inner_sweeps,
                     sum_to_one=sum_to_one)
    WtX, WtW = gram_partials(X, W_new)
    return W_new, (to_host(WtX), to_host(WtW))


def sum_partials(*parts: Any) -> tuple:
    """Element-wise sum of equal-length tuples of partials (arrays or floats), in order.

    Used for ``(WtX, WtW)`` of :func:`panel_step` and the longer tuples of the β-divergence
    step; also accepts whole ``(W_new, partials)`` panel outputs.
    """
    tuples = [p[1] if len(p) == 2 and isinstance(p[1], tuple) else p for p in parts]
    # a float32 partial (a sparse panel's, see gram_partials) is summed in float64
    total = [np.array(v, dtype=np.float64 if v.dtype == np.float32 else v.dtype, copy=True)
             if isinstance(v, np.ndarray) else v for v in tuples[0]]
    for t in tuples[1:]:
        for j, v in enumerate(t):
            if isinstance(total[j], np.ndarray):
                total[j] += v
            else:
                total[j] = total[j] + v
    return tuple(total)


def partial_columns(part: Any, columns: slice) -> tuple:
    """``(WtX[:, columns], WtW)`` of a reduced ``(WtX, WtW)`` partial (a copy: the block
    travels to another worker, not the whole partial)."""
    WtX, WtW = part[1] if len(part) == 2 and isinstance(part[1], tuple) else part
    return np.ascontiguousarray(WtX[:, columns]), WtW


def update_h_columns(H: np.ndarray, *parts: Any, solver: str, l1: float = 0.0,
                     l2: float = 0.0) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """The H update of a block of H's columns, on a worker: its ``(WtX[:, block], WtW)``
    partials summed, then :func:`update_h` (columns of H are independent given WᵀW).

    Returns ``(H_block, <H_block, WtX_block>, H_block H_blockᵀ, WtW)``: summed over the
    blocks, the loss's terms (:func:`frobenius_loss`) without bringing WᵀX to the driver.
    """
    WtX, WtW = sum_partials(*parts)
    H = update_h(H, WtX, WtW, solver=solver, l1=l1, l2=l2)
    return H, float(np.vdot(H, WtX)), H @ H.T, WtW


# ---------------------------------------------------------------------------------------------
# H-side updates (on the driver, k x n) and the loss
# ---------------------------------------------------------------------------------------------


def update_h(
    H: np.ndarray,
    WtX: np.ndarray,
    WtW: np.ndarray,
    *,
    solver: str,
    l1: float = 0.0,
    l2: float = 0.0,
    inner_sweeps: int = H_INNER_SWEEPS,
) -> np.ndarray:
    """Update H (k, n) from the reduced ``WtX`` (k, n) and ``WtW`` (k, k); float64 in and out.

    HALS makes ``inner_sweeps`` sweeps (see :func:`hals_sweeps`; 1 is plain HALS).
    """
    H = np.asarray(H, dtype=np.float64)
    if solver == "hals":
        Ht = hals_sweeps(H.T, WtX.T, WtW, sweeps=inner_sweeps, l1=l1, l2=l2)
        return np.ascontiguousarray(Ht.T)
    if solver == "mu":
        return mu_step(H.T, WtX.T, WtW, l1=l1, l2=l2).T.copy()
    if solver == "anls":
        gram = WtW + l2 * np.eye(WtW.shape[0]) if l2 else WtW
        rhs = WtX - l1 if l1 else WtX
        return nnls_bpp(gram, rhs, init=H)
    raise ValueError(f"unknown solver {solver!r}")


def frobenius_loss(sq_norm: float, WtX: np.ndarray, WtW: np.ndarray, H: np.ndarray,
                   HHt: np.ndarray | None = None) -> float:
    """``||X - W H||_F^2`` from ``||X||^2``, ``W.T X`` and ``W.T W`` without forming ``W H``.

    ``||X||^2 - 2 <H, W.T X> + <W.T W, H H.T>``, evaluated in float64 and clipped at 0;
    ``HHt``: ``H @ H.T`` of the float64 H when the caller has it.
    """
    H = np.asarray(H, dtype=np.float64)
    return frobenius_loss_of_terms(sq_norm, float(np.vdot(H, WtX)), WtW,
                                   H @ H.T if HHt is None else HHt)


def frobenius_loss_of_terms(sq_norm: float, cross: float, WtW: np.ndarray,
                            HHt: np.ndarray) -> float:
    """:func:`frobenius_loss` from ``cross = <H, WᵀX>`` (summed over H's column blocks when
    they are updated apart, :func:`update_h_columns`)."""
    return max(sq_norm - 2.0 * cross + float(np.vdot(WtW, HHt)), 0.0)


def penalty(w_sum: float, w_sq: float, h_sum: float, h_sq: float, *, l1_w: float = 0.0,
            l2_w: float = 0.0, l1_h: float = 0.0, l2_h: float = 0.0, beta: float = 2.0) -> float:
    """The penalties of the objective, in the units of the recorded loss.

    scikit-learn minimises ``D + l1_W ||W||_1 + l2_W / 2 ||W||_F^2 + (the same for H)`` with
    ``D = ||X - W H||^2 / 2`` for Frobenius; the loss dnmf records is ``||X - W H||^2`` (twice
    that ``D``), so the penalties are doubled there. ``w_sum``/``h_sum`` are the entry sums (the
    L1 norms of non-negative factors), ``w_sq``/``h_sq`` the squared Frobenius norms.
    """
    scale = 2.0 if beta == 2.0 else 1.0
    return scale * (l1_w * w_sum + 0.5 * l2_w * w_sq + l1_h * h_sum + 0.5 * l2_h * h_sq)


# ---------------------------------------------------------------------------------------------
# Initialisation pieces that are per block
# ---------------------------------------------------------------------------------------------

#: Rows per independently seeded block of random W: makes random inits chunking-invariant.
RANDOM_BLOCK_ROWS = 4096


def random_rows(
    start: int, stop: int, k: int, *, seed: int, scale: float, dtype: Any, stream: int = 1
) -> np.ndarray:
    """Rows ``start:stop`` of a random non-negative (n_samples, k) factor.

    ``|scale * N(0, 1)|`` like scikit-learn's random init. Rows come from fixed blocks of
    :data:`RANDOM_BLOCK_ROWS` rows, each with its own seed derived from ``seed``, so the result
    does not depend on how the rows are chunked. ``stream`` separates factors drawn from one
    seed (1 for W, 0 for the columns of H).
    """
    out = np.empty((stop - start, k), dtype=dtype)
    first, last = start // RANDOM_BLOCK_ROWS, (stop - 1) // RANDOM_BLOCK_ROWS
    for b in range(first, last + 1):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, b)))
        block = rng.standard_normal((RANDOM_BLOCK_ROWS, k))
        lo = max(start, b * RANDOM_BLOCK_ROWS)
        hi = min(stop, (b + 1) * RANDOM_BLOCK_ROWS)
        out[lo - start : hi - start] = block[lo - b * RANDOM_BLOCK_ROWS : hi - b * RANDOM_BLOCK_ROWS]
    np.abs(out, out=out)
    out *= scale
    return out


def row_space_products(X: Array, Q: np.ndarray) -> tuple[np.ndarray]:
    """``Xᵀ (X Q)`` of one row panel, float64: a panel's share of one power step on the row
    space of X (the randomized SVD behind NNDSVD). X may be a ``scipy.sparse`` matrix."""
    Y = X @ Q
    return (np.asarray(X.T @ Y, dtype=np.float64),)


def project_rows(X: Array, Q: np.ndarray) -> np.ndarray:
    """``X Q`` of one row panel, as a dense array in ``Q``'s dtype."""
    return np.asarray(X @ Q, dtype=Q.dtype)


def gram_of_rows(Y: Array) -> tuple[np.ndarray]:
    """``Yᵀ Y`` of one row panel, float64."""
    Y = np.asarray(Y, dtype=np.float64)
    return (Y.T @ Y,)


def split_column_norms(Y: Array, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared norms of the positive and of the negative parts of the columns of ``U = Y M``
    over one row panel (NNDSVD picks the larger part of each singular vector)."""
    U = np.asarray(Y, dtype=np.float64) @ M
    pos = np.maximum(U, 0.0)
    return (pos * pos).sum(axis=0), ((U - pos) ** 2).sum(axis=0)


def nndsvd_rows(
    U: np.ndarray,
    signs: np.ndarray,
    norms: np.ndarray,
    root_scale: np.ndarray,
    *,
    fill: str,
    mean: float,
    start: int,
    seed: int,
    dtype: Any,
) -> np.ndarray:
    """Rows of the NNDSVD W factor (Boutsidis & Gallopoulos, 2008) from rows of ``U``.

    Parameters
    ----------
    U : (r, k) rows of the left singular vectors.
    signs : (k,) +1 to take the positive part of column j, -1 for the negative part
        (column 0 takes ``|U[:, 0]|``; encode it as 0).
    norms : (k,) norm of the chosen part over all rows (for normalisation).
    root_scale : (k,) ``sqrt(S_j * sigma_j)`` (``sqrt(S_0)`` for j = 0).
    fill : "zero" | "mean" | "random" — nndsvd, nndsvda, nndsvdar.
    """
    U = np.asarray(U, dtype=np.float64)
    W = np.empty_like(U)
    for j in range(U.shape[1]):
        if signs[j] == 0:
            part = np.abs(U[:, j])
        elif signs[j] > 0:
            part = np.maximum(U[:, j], 0.0)
        else:
            part = np.abs(np.minimum(U[:, j], 0.0))
        nrm = norms[j] if signs[j] != 0 else 1.0
        W[:, j] = root_scale[j] * part / (nrm if nrm > 0 else 1.0)
    W[W < 1e-6] = 0.0
    if fill == "mean":
        W[W == 0] = mean
    elif fill == "random":
        noise = random_rows(start, start + W.shape[0], W.shape[1], seed=seed, scale=mean / 100,
                            dtype=np.float64)
        zero = W == 0
        W[zero] = noise[zero]
    return W.astype(dtype, copy=False)


def transform_rows(X: Array, H: np.ndarray, HHt: np.ndarray, *, l1: float = 0.0,
                   l2: float = 0.0, sum_to_one: bool = False) -> np.ndarray:
    """Exact non-negative least squares for rows of W with H fixed: ``min ||X - W H||``.

    With ``sum_to_one`` the rows also sum to one (fully constrained, :func:`fcls_rows`).
    """
    XHt = np.asarray(X @ H.T, dtype=np.float64)
    if sum_to_one:
        return fcls_rows(XHt, HHt, l1=l1, l2=l2).astype(H.dtype, copy=False)
    gram = HHt + l2 * np.eye(HHt.shape[0]) if l2 else HHt
    rhs = XHt.T - l1 if l1 else XHt.T
    return nnls_bpp(gram, rhs).T.astype(H.dtype, copy=False)
