"""Initialisation of W and H: random, NNDSVD variants, SPA/VCA endmembers, or user-given factors.

Graph-level code: W comes back as a dask array chunked like X's rows; H as a numpy array. The
per-block arithmetic lives in :mod:`dnmf.kernels`.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np

from dnmf import graph, kernels, separable
from dnmf.errors import InputError

INIT_METHODS = ("auto", "random", "nndsvd", "nndsvda", "nndsvdar", "spa", "vca", "custom")
#: Power iterations of the randomized SVD behind NNDSVD: each costs two reads of X.
SVD_POWER_ITERATIONS = 2


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
    NNDSVD (Boutsidis & Gallopoulos, 2008) uses ``dask.array.linalg.svd_compressed`` with
    :data:`SVD_POWER_ITERATIONS` power iterations: ``2 * SVD_POWER_ITERATIONS + 2`` reads of X,
    each pass persisted so X is never held in memory across passes.

    SPA and VCA pick k rows of X as the rows of H (endmembers; see :func:`endmember_rows`),
    one pass over X each (VCA one more for the signal subspace), and W starts from the exact
    NNLS fit of every row to them (lazy: computed with the first iteration's read of X).
    """
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
    W = W.astype(X.dtype).rechunk((X.chunks[0], (k,)))
    return W, H.astype(X.dtype)


def _nndsvd(X: da.Array, k: int, *, fill: str, seed: int, x_mean: float
            ) -> tuple[da.Array, np.ndarray]:
    if len(X.chunks[1]) > 1:
        raise InputError(
            "NNDSVD initialisation needs full-width row panels; X is too wide for them here "
            "(2-D block scheme) — use init='random' or raise the memory limit"
        )
    u, s, v = da.linalg.svd_compressed(
        X, k, n_power_iter=SVD_POWER_ITERATIONS, seed=seed, compute=True
    )
    u = u.rechunk((X.chunks[0], (k,)))
    # Persist U (n_samples x k), S and V together: W below must not re-run the SVD (re-read X),
    # and submitting their shared upstream keys twice, optimised differently, upsets the
    # distributed scheduler.
    u, s, v = dask.persist(u, s, v)
    pos_sq = (da.maximum(u, 0) ** 2).sum(axis=0)
    neg_sq = (da.minimum(u, 0) ** 2).sum(axis=0)
    S, V, pos_sq, neg_sq = dask.compute(s, v, pos_sq, neg_sq)
    S = np.asarray(S, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    x_p_nrm, x_n_nrm = np.sqrt(pos_sq), np.sqrt(neg_sq)
    signs = np.zeros(k)
    norms = np.ones(k)
    root = np.zeros(k)
    H = np.zeros((k, X.shape[1]))
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
    W = u.map_blocks(
        _nndsvd_block,
        signs=signs, norms=norms, root=root, fill=fill, mean=x_mean, seed=seed,
        out_dtype=np.dtype(X.dtype), dtype=X.dtype, chunks=u.chunks,
    )
    return W, H.astype(X.dtype)


def _nndsvd_block(U: np.ndarray, *, signs: np.ndarray, norms: np.ndarray, root: np.ndarray,
                  fill: str, mean: float, seed: int, out_dtype: Any, block_info: Any = None
                  ) -> np.ndarray:
    start = block_info[0]["array-location"][0][0] if block_info else 0
    return kernels.nndsvd_rows(U, signs, norms, root, fill=fill, mean=mean, start=start,
                               seed=seed, dtype=out_dtype)


def endmember_rows(X: da.Array, k: int, *, method: str = "spa", seed: int = 0) -> np.ndarray:
    """k rows of X chosen as endmembers by SPA or VCA, as a (k, n_features) float64 array.

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
    return np.vstack(rows)


def _best_row(panels: list, starts: list[int], kernel: Any, *args: Any) -> separable.Candidate:
    tasks = [dask.delayed(kernel, pure=True)(p, *args, start) for p, start in zip(
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
