"""Initialisation of W and H: random, NNDSVD variants, SPA/VCA endmembers, or user-given factors.

Graph-level code: W comes back as a dask array chunked like X's rows; H as a numpy array. The
per-block arithmetic lives in :mod:`dnmf.kernels`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np

from dnmf import graph, kernels, separable
from dnmf.errors import InputError

INIT_METHODS = ("auto", "random", "nndsvd", "nndsvda", "nndsvdar", "spa", "vca", "custom")
#: Reads of X by the randomized SVD behind NNDSVD (:func:`truncated_svd`): the subspace of
#: one power iteration of ``dask.array.linalg.svd_compressed`` (which reads X 4 times for it).
SVD_PASSES = 3
#: Oversampling of that SVD's basis.
SVD_OVERSAMPLES = 10


def resolve_init(init: str | None, *, has_custom: bool) -> str:
    """The concrete method: "auto" means nndsvda (scikit-learn's default), custom when given."""
    if has_custom and init in (None, "auto", "custom"):
        return "custom"
    if init in (None, "auto"):
        return "nndsvda"
    if init not in INIT_METHODS:
        raise InputError(f"unknown init {init!r}: choose one of {', '.join(INIT_METHODS)}")
    if init == "custom" and not has_custom:
        raise InputError("init='custom' needs W_init and H_init — pass both, or pick another init")
    return init


def initialize(
    X: da.Array,
    k: int,
    *,
    init: str,
    seed: int,
    x_mean: float,
    W_init: Any = None,
    H_init: Any = None,
) -> tuple[da.Array, np.ndarray]:
    """Initial ``(W, H)`` for X.

    Parameters
    ----------
    X : dask array (n_samples, n_features) in row panels
    k : int
    init : "random" | "nndsvd" | "nndsvda" | "nndsvdar" | "spa" | "vca" | "custom"
    seed : int
    x_mean : float
        Mean of X (from the validation pass), for scaling and for the nndsvda fill.
    W_init, H_init : array-like, for ``init="custom"``

    Returns
    -------
    W : dask array (n_samples, k), lazy, chunked like X's rows, X's dtype
    H : ndarray (k, n_features), X's dtype; a dask array chunked like X's columns when X has
        several column chunks (the 2-D block scheme)

    Notes
    -----
    X may also be X itself in memory (numpy or CSR, as an in-process fit holds it; ``init``
    one of :data:`IN_PROCESS_INITS`): the same kernels then run on it as one panel, with no
    graph, and W comes back as numpy (the same numbers as the graph's with X in one row panel;
    with several, sums over panels round differently).

    NNDSVD (Boutsidis & Gallopoulos, 2008) takes the leading singular vectors from
    :func:`truncated_svd`: :data:`SVD_PASSES` reads of X, each a map-reduce over the row
    panels, so X is never held in memory across passes. W is lazy: each panel's rows are
    computed from X_i by the first iteration's task for that panel (no extra read).

    SPA and VCA pick k rows of X as the rows of H (endmembers; see :func:`endmember_rows`),
    one pass over X each (VCA one more for the signal subspace), and W starts from the exact
    NNLS fit of every row to them (lazy: computed with the first iteration's read of X).
    """
    if not isinstance(X, da.Array):
        return _initialize_here(X, k, init=init, seed=seed, x_mean=x_mean)
    dtype = X.dtype
    n_samples, n_features = X.shape
    if init == "custom":
        return _custom(X, k, W_init, H_init)
    if init == "random":
        scale = float(np.sqrt(x_mean / k))
        W = graph.random_w(X.chunks[0], k, seed=seed, scale=scale, dtype=dtype)
        Ht = graph.random_w(X.chunks[1], k, seed=seed, scale=scale, dtype=dtype, stream=0)
        # the row-panel scheme keeps H on the driver; the 2-D scheme keeps it chunked
        H = Ht.T if len(X.chunks[1]) > 1 else Ht.T.compute(scheduler="sync")
        return W, H
    if init in ("spa", "vca"):
        H = endmember_rows(X, k, method=init, seed=seed)
        HHt = H @ H.T
        W = graph.map_panels(X, separable.start_rows, k=k, dtype=dtype, name=f"dnmf-{init}-W",
                             H=H, HHt=HHt, out_dtype=dtype)
        return W, H.astype(dtype)
    return _nndsvd(X, k, fill={"nndsvd": "zero", "nndsvda": "mean", "nndsvdar": "random"}[init],
                   seed=seed, x_mean=x_mean)


#: The inits :func:`initialize` runs on an in-memory X without a graph.
IN_PROCESS_INITS = ("random", "nndsvd", "nndsvda", "nndsvdar")


def _initialize_here(X: Any, k: int, *, init: str, seed: int, x_mean: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`initialize` on X in memory (numpy or CSR) as one panel: numpy W and H."""
    if init not in IN_PROCESS_INITS:
        raise ValueError(f"init {init!r} runs on a dask X only")
    n_samples, n_features = X.shape
    dtype = X.dtype
    if init == "random":
        # kernels.random_rows is chunking-invariant: graph.random_w's numbers, to the bit
        scale = float(np.sqrt(x_mean / k))
        W = kernels.random_rows(0, n_samples, k, seed=seed, scale=scale, dtype=dtype)
        Ht = kernels.random_rows(0, n_features, k, seed=seed, scale=scale, dtype=dtype,
                                 stream=0)
        return W, np.ascontiguousarray(Ht.T)
    fill = {"nndsvd": "zero", "nndsvda": "mean", "nndsvdar": "random"}[init]
    svd = truncated_svd_here(X, k, seed=seed)
    pos_sq, neg_sq = kernels.call_aligned(kernels.split_column_norms, svd.XQ, M=svd.to_u)
    H, signs, norms, root = _nndsvd_h(svd, pos_sq, neg_sq, k, n_features, fill=fill, seed=seed,
                                      x_mean=x_mean)
    x_to_u = (svd.basis @ svd.to_u).astype(dtype)
    W = kernels.call_aligned(_nndsvd_block, X, x_to_u=x_to_u, signs=signs, norms=norms,
                             root=root, fill=fill, mean=x_mean, seed=seed,
                             out_dtype=np.dtype(dtype))
    return W, H.astype(dtype)


def checked_factor_block(block: np.ndarray, name: str = "W_init") -> np.ndarray:
    """``block`` of a user's initial factor, refused when it is not finite and >= 0."""
    if not np.all(np.isfinite(block)) or (block < 0).any():
        raise InputError(f"{name} must be finite and >= 0 — clip it at 0 and replace NaN/inf "
                         "first")
    return block


def _custom(X: da.Array, k: int, W_init: Any, H_init: Any) -> tuple[da.Array, np.ndarray]:
    if W_init is None or H_init is None:
        raise InputError("init='custom' needs both W_init and H_init")
    H = np.asarray(H_init)
    if H.shape != (k, X.shape[1]):
        raise InputError(
            f"H_init has shape {H.shape}, expected (k, n_features) = {(k, X.shape[1])}"
        )
    W = W_init if isinstance(W_init, da.Array) else da.from_array(np.asarray(W_init))
    if W.shape != (X.shape[0], k):
        raise InputError(
            f"W_init has shape {W.shape}, expected (n_samples, k) = {(X.shape[0], k)}"
        )
    if not np.all(np.isfinite(H)) or (H < 0).any():
        raise InputError("H_init must be finite and >= 0 — clip it at 0 first")
    if isinstance(W_init, da.Array):  # checked as its blocks are read, no extra pass
        W = W.map_blocks(checked_factor_block, dtype=W.dtype, name="dnmf-w-init-checked")
    else:
        checked_factor_block(np.asarray(W_init))
    W = W.astype(X.dtype).rechunk((X.chunks[0], (k,)))
    return W, H.astype(X.dtype)


def _nndsvd(X: da.Array, k: int, *, fill: str, seed: int, x_mean: float
            ) -> tuple[da.Array, np.ndarray]:
    if len(X.chunks[1]) > 1:
        raise InputError(
            "NNDSVD initialisation needs full-width row panels; X is too wide for them here "
            "(2-D block scheme) — use init='random' or raise the memory limit"
        )
    svd = truncated_svd(X, k, seed=seed)
    pos_sq, neg_sq = graph.map_reduce_panels(
        svd.XQ, functools.partial(kernels.split_column_norms, M=svd.to_u),
        name="dnmf-nndsvd-norms").compute()
    H, signs, norms, root = _nndsvd_h(svd, pos_sq, neg_sq, k, X.shape[1], fill=fill, seed=seed,
                                      x_mean=x_mean)
    # W (U's parts, scaled) stays lazy, computed from X_i by the first iteration's task for
    # panel i, which reads X_i anyway: nothing n-sized outlives the initialisation
    x_to_u = (svd.basis @ svd.to_u).astype(X.dtype)
    W = graph.map_panels(
        X, _nndsvd_block, k=k, dtype=X.dtype, name="dnmf-nndsvd-W",
        x_to_u=x_to_u, signs=signs, norms=norms, root=root, fill=fill, mean=x_mean, seed=seed,
        out_dtype=np.dtype(X.dtype),
    )
    return W, H.astype(X.dtype)


def _nndsvd_h(svd: TruncatedSVD, pos_sq: np.ndarray, neg_sq: np.ndarray, k: int,
              n_features: int, *, fill: str, seed: int, x_mean: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """NNDSVD's H (float64) and what W's rows are made with: ``(H, signs, norms, root)``,
    from the SVD and the squared norms of the positive and negative parts of U's columns."""
    S, V = svd.S, svd.V
    x_p_nrm, x_n_nrm = np.sqrt(pos_sq), np.sqrt(neg_sq)
    signs = np.zeros(k)
    norms = np.ones(k)
    root = np.zeros(k)
    H = np.zeros((k, n_features))
    root[0] = np.sqrt(S[0])
    H[0] = root[0] * np.abs(V[0])
    for j in range(1, k):
        y = V[j]
        y_p, y_n = np.maximum(y, 0), np.abs(np.minimum(y, 0))
        y_p_nrm, y_n_nrm = np.linalg.norm(y_p), np.linalg.norm(y_n)
        m_p, m_n = x_p_nrm[j] * y_p_nrm, x_n_nrm[j] * y_n_nrm
        if m_p > m_n:
            signs[j], norms[j], sigma = 1, x_p_nrm[j], m_p
            v_part = y_p / (y_p_nrm if y_p_nrm > 0 else 1.0)
        else:
            signs[j], norms[j], sigma = -1, x_n_nrm[j], m_n
            v_part = y_n / (y_n_nrm if y_n_nrm > 0 else 1.0)
        root[j] = np.sqrt(S[j] * sigma)
        H[j] = root[j] * v_part
    H[H < 1e-6] = 0.0
    if fill == "mean":
        H[H == 0] = x_mean
    elif fill == "random":
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
        zero = H == 0
        H[zero] = np.abs(x_mean * rng.standard_normal(int(zero.sum())) / 100)
    return H, signs, norms, root


def _nndsvd_block(X: Any, *, x_to_u: np.ndarray, signs: np.ndarray, norms: np.ndarray,
                  root: np.ndarray, fill: str, mean: float, seed: int, out_dtype: Any,
                  block_info: Any = None) -> np.ndarray:
    start = block_info[0]["array-location"][0][0] if block_info else 0
    U = np.asarray(kernels.project_rows(X, x_to_u), dtype=np.float64)
    return kernels.nndsvd_rows(U, signs, norms, root, fill=fill, mean=mean, start=start,
                               seed=seed, dtype=out_dtype)


class TruncatedSVD(NamedTuple):
    """The result of :func:`truncated_svd`."""

    #: ``X Q`` (n_samples x width), X's dtype, persisted: X projected on the basis.
    XQ: da.Array
    #: ``Q`` (n_features x width), float64: an orthonormal basis of X's leading row space.
    basis: np.ndarray
    #: (width, k): ``U = XQ @ to_u`` are the left singular vectors (``X @ (basis @ to_u)``).
    to_u: np.ndarray
    #: (k,) singular values, descending.
    S: np.ndarray
    #: (k, n_features) right singular vectors (rows).
    V: np.ndarray


def truncated_svd(X: da.Array, k: int, *, seed: int, passes: int = SVD_PASSES,
                  oversamples: int = SVD_OVERSAMPLES) -> TruncatedSVD:
    """The leading k singular triplets of X in row panels, by a randomized range finder on
    its row space (Halko, Martinsson & Tropp, SIAM Review 53(2), 2011, algorithms 4.3 and 5.1).

    Parameters
    ----------
    X : dask array (n_samples, n_features) in full-width row panels (dense or scipy.sparse)
    k : int
    seed : int
        Seeds the Gaussian test matrix: the result is reproducible for a seed and chunking.
    passes : int
        Reads of X, at least 2. Each but the last applies ``XᵀX`` to an orthonormal basis of
        ``k + oversamples`` columns (``Σᵢ Xᵢᵀ (Xᵢ Q)``, one task per panel: only the
        ``n_features x (k + oversamples)`` partial sums travel); the last projects X on it.
    oversamples : int
        Extra columns of the basis.

    Returns
    -------
    TruncatedSVD
        ``(XQ, basis, to_u, S, V)``; U is never formed as an n x k array: it is computed per
        panel where needed, from ``XQ`` or from X.

    Notes
    -----
    ``passes = p`` finds the singular vectors in the range of ``(XᵀX)^(p-1) Ω``: the subspace
    of ``dask.array.linalg.svd_compressed`` with ``p - 2`` power iterations, which reads X
    ``2p - 2`` times and keeps an n x (k + oversamples) basis besides. With X sparse, dask's
    version also assembles X into one matrix for the products. The last step is the
    Rayleigh-Ritz projection ``(XQ)ᵀ(XQ) = R Λ Rᵀ``: ``S = √Λ``, ``V = (Q R)ᵀ``,
    ``U = X Q R / S``; its Gram matrix is summed in float64, so singular values down to
    about 1e-8 of the largest are resolved, far below what NNDSVD uses.
    """
    if passes < 2:
        raise ValueError(f"truncated_svd needs at least 2 passes over X; got {passes}")
    Q = _svd_start(X.shape[1], k, seed, oversamples)
    for p in range(passes - 1):
        # the products run in X's dtype (float32 X: sgemm, and a scipy panel is not upcast);
        # the n_features x width partial sums are float64
        (Z,) = graph.map_reduce_panels(
            X, functools.partial(kernels.row_space_products, Q=Q.astype(X.dtype)),
            name=f"dnmf-svd-pass{p}").compute()
        Q, _ = np.linalg.qr(Z)
    Y = graph.map_panels(X, kernels.project_rows, k=Q.shape[1], dtype=X.dtype,
                         name="dnmf-svd-XQ", Q=Q.astype(X.dtype))
    (Y,) = dask.persist(Y)
    (gram,) = graph.map_reduce_panels(Y, kernels.gram_of_rows, name="dnmf-svd-gram").compute()
    return _rayleigh_ritz(Y, Q, gram, k)


def truncated_svd_here(X: Any, k: int, *, seed: int, passes: int = SVD_PASSES,
                       oversamples: int = SVD_OVERSAMPLES) -> TruncatedSVD:
    """:func:`truncated_svd` of X in memory (numpy or CSR) as one panel, without a graph:
    the same kernels on the same random basis (``XQ`` is numpy)."""
    if passes < 2:
        raise ValueError(f"truncated_svd needs at least 2 passes over X; got {passes}")
    Q = _svd_start(X.shape[1], k, seed, oversamples)
    for _ in range(passes - 1):
        (Z,) = kernels.call_aligned(kernels.row_space_products, X, Q=Q.astype(X.dtype))
        Q, _ = np.linalg.qr(Z)
    Y = kernels.call_aligned(kernels.project_rows, X, Q=Q.astype(X.dtype))
    (gram,) = kernels.gram_of_rows(Y)
    return _rayleigh_ritz(Y, Q, gram, k)


def _svd_start(n_features: int, k: int, seed: int, oversamples: int) -> np.ndarray:
    """The Gaussian test matrix of :func:`truncated_svd` (n_features x width)."""
    width = min(k + oversamples, n_features)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4,)))
    return rng.standard_normal((n_features, width))


def _rayleigh_ritz(Y: Any, Q: np.ndarray, gram: np.ndarray, k: int) -> TruncatedSVD:
    """:func:`truncated_svd`'s last step from ``Y = X Q`` and its Gram matrix."""
    eigvals, R = np.linalg.eigh(gram)
    order = np.argsort(eigvals)[::-1][:k]
    S = np.sqrt(np.maximum(eigvals[order], 0.0))
    R = R[:, order]
    # a singular value at rounding level carries no direction: its U column is set to zero
    tiny = S <= S[0] * 1e-8 if S.size and S[0] > 0 else np.ones(k, dtype=bool)
    to_u = np.divide(R, S, out=np.zeros_like(R), where=~tiny)
    V = (Q @ R).T
    return TruncatedSVD(Y, Q, to_u, S, V)


def endmember_rows(X: da.Array, k: int, *, method: str = "spa", seed: int = 0) -> np.ndarray:
    """k rows of X chosen as endmembers by SPA or VCA, as a (k, n_features) float64 array.

    :func:`endmember_pixels` with the rows only; see it for the parameters.
    """
    return endmember_pixels(X, k, method=method, seed=seed)[0]


def endmember_pixels(X: da.Array, k: int, *, method: str = "spa", seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """k rows of X chosen as endmembers by SPA or VCA, and their row indices in X.

    Returns ``(rows, index)``: a (k, n_features) float64 array and a (k,) int64 array.

    Parameters
    ----------
    X : dask array (n_samples, n_features) in full-width row panels
    k : int
    method : {"spa", "vca"}
        ``spa``: successive projection — the row of largest norm, then repeatedly the row
        farthest from the span of those chosen (Gillis & Vavasis, IEEE TPAMI 2014), on the
        rows projected on the k-dimensional signal subspace (leading eigenvectors of XᵀX);
        k + 1 passes.
        ``vca``: vertex component analysis, high-SNR projective branch (Nascimento &
        Bioucas-Dias, IEEE TGRS 2005) — one pass for the signal subspace (XᵀX), then per
        endmember the extreme row along a random direction orthogonal to those chosen; k + 1
        passes, reproducible for a given seed.
    seed : int

    Notes
    -----
    Both assume the rows of X are (close to) convex combinations of k of its rows — pixels
    whose abundances sum to one, with pure pixels present. Every pass is a map–reduce argmax:
    each row panel returns one candidate row; only those travel. Memory: one panel per task.
    The rows returned are the chosen pixels denoised: projected on the signal subspace and
    clipped at 0 (the projection keeps a fraction k / n_features of white noise).
    """
    if len(X.chunks[1]) > 1:
        raise InputError(
            f"init={method!r} needs full-width row panels; X is too wide for them here (2-D "
            "block scheme) — use init='random' or raise the memory limit")
    panels = list(X.to_delayed(optimize_graph=False).ravel())
    starts = np.cumsum((0, *X.chunks[0][:-1])).tolist()
    if method not in ("spa", "vca"):
        raise InputError(f"unknown endmember method {method!r}: use spa or vca")
    chosen: list[int] = []
    rows: list[np.ndarray] = []
    X64 = X.astype(np.float64)
    gram, mean = dask.compute(da.dot(X64.T, X64), X64.mean(axis=0))
    U = separable.signal_subspace(gram, k)
    basis = np.zeros((k, 0))
    if method == "spa":
        for _ in range(k):
            best = _best_row(panels, starts, separable.spa_candidate, U, basis)
            basis, norm = separable.extend_basis(basis, best[3])
            _check_new_row(best, norm, chosen, k, method, X.dtype)
            chosen.append(best[1])
            rows.append(best[2])
    else:
        direction = U.T @ np.asarray(mean)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
        A = np.zeros((k, k))
        A[-1, 0] = 1.0  # VCA's auxiliary start: the first direction avoids e_k
        for i in range(k):
            f = separable.vca_direction(A, rng)
            best = _best_row(panels, starts, separable.vca_candidate, U, direction, f)
            basis, norm = separable.extend_basis(basis, best[3])
            _check_new_row(best, norm, chosen, k, method, X.dtype)
            A[:, i] = best[3]
            chosen.append(best[1])
            rows.append(best[2])
    return np.vstack(rows), np.asarray(chosen, dtype=np.int64)


def _best_row(panels: list, starts: list[int], kernel: Any, *args: Any) -> separable.Candidate:
    # through call_aligned, as every task of dnmf.graph: a panel moved between workers may
    # arrive misaligned, and numpy would then multiply it without BLAS
    aligned_kernel = functools.partial(kernels.call_aligned, kernel)
    tasks = [dask.delayed(aligned_kernel, pure=True)(p, *args, start) for p, start in zip(
        panels, starts, strict=True)]
    return separable.best_candidate(list(dask.compute(*tasks, optimize_graph=False)))


def _check_new_row(best: separable.Candidate, norm: float, chosen: list[int], k: int,
                   method: str, dtype: Any) -> None:
    # a row within rounding of the span of those chosen adds nothing
    scale = float(np.linalg.norm(best[3]))
    tiny = 100 * float(np.finfo(dtype).eps) * max(scale, 1e-300)
    if best[1] < 0 or best[1] in chosen or norm <= tiny:
        raise InputError(
            f"init={method!r} found only {len(chosen)} linearly independent rows of X for "
            f"k = {k} — lower k, or use init='nndsvda'")
