"""Block kernels of the endmember (separable NMF) initialisations SPA and VCA. No dask here.

Both algorithms pick k rows of X, one per pass over the data: every row panel returns its best
candidate row (a small tuple) and the driver keeps the best of those
(:func:`best_candidate`, a deterministic map–reduce argmax). The graph code is in
:mod:`dnmf.init`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dnmf import kernels

#: A candidate row: (score, global row index, the row in float64, extra per-algorithm data).
Candidate = tuple[float, int, np.ndarray, Any]


def spa_candidate(X: Any, U: np.ndarray, basis: np.ndarray, start: int) -> Candidate:
    """The row of this panel farthest from the span of the rows already chosen.

    Successive projection (Araújo et al., 2001; Gillis & Vavasis, "Fast and robust recursive
    algorithms for separable nonnegative matrix factorization", IEEE TPAMI 36(4), 2014) on the
    rows projected on the k-dimensional signal subspace ``U`` (n_features × k), which removes
    most of the noise (a fraction k / n_features of it stays) so that noisy pixels of dark
    materials are not mistaken for vertices. The score of a projected row y is
    ``||y||² - ||Bᵀy||²``, its squared distance to the span of the orthonormal columns of
    ``basis`` (k × j). The row returned is the denoised one, ``U y`` clipped at 0; the extra
    data is y.
    """
    X = np.asarray(X)
    k = U.shape[1]
    if X.shape[0] == 0:
        return (-np.inf, -1, np.zeros(X.shape[1]), np.zeros(k))
    Y = X.astype(np.float64, copy=False) @ U
    score = np.einsum("ij,ij->i", Y, Y)
    if basis.shape[1]:
        proj = Y @ basis
        score -= np.einsum("ij,ij->i", proj, proj)
    i = int(np.argmax(score))
    return (float(score[i]), start + i, np.maximum(U @ Y[i], 0.0), Y[i].copy())


def vca_candidate(X: Any, U: np.ndarray, direction: np.ndarray, f: np.ndarray,
                  start: int) -> Candidate:
    """The row of this panel with the largest projection on ``f`` in VCA's projective space.

    Vertex component analysis (Nascimento & Bioucas-Dias, "Vertex component analysis: a fast
    algorithm to unmix hyperspectral data", IEEE TGRS 43(4), 2005), high-SNR branch: rows are
    projected on the k-dimensional signal subspace ``U`` (n_features × k) and scaled onto the
    hyperplane ``y · direction = 1``; the row returned is the denoised one, ``U y`` clipped at
    0, and the extra data is the projective row (for the next direction).
    """
    X = np.asarray(X)
    if X.shape[0] == 0:
        return (-np.inf, -1, np.zeros(X.shape[1]), np.zeros(U.shape[1]))
    Y = X.astype(np.float64, copy=False) @ U
    scale = Y @ direction
    Yp = Y / np.where(np.abs(scale) > 1e-12, scale, 1e-12)[:, None]
    score = np.abs(Yp @ f)
    i = int(np.argmax(score))
    return (float(score[i]), start + i, np.maximum(U @ Y[i], 0.0), Yp[i].copy())


def best_candidate(candidates: list[Candidate]) -> Candidate:
    """The highest score; ties go to the lowest row index, so the choice ignores chunking."""
    return max(candidates, key=lambda c: (c[0], -c[1]))


def extend_basis(basis: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, float]:
    """Append ``row``'s component orthogonal to ``basis`` (twice re-orthogonalised).

    Returns the new basis and the norm of that component (0 when ``row`` is in the span).
    """
    r = row.astype(np.float64).copy()
    for _ in range(2):  # classical Gram–Schmidt twice is as stable as modified
        if basis.shape[1]:
            r -= basis @ (basis.T @ r)
    norm = float(np.linalg.norm(r))
    if norm == 0.0:
        return basis, 0.0
    return np.column_stack([basis, r / norm]), norm


def vca_direction(A: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random unit direction orthogonal to the columns of ``A`` (k × k, chosen so far)."""
    w = rng.standard_normal(A.shape[0])
    f = w - A @ (np.linalg.pinv(A) @ w)
    norm = np.linalg.norm(f)
    return f / norm if norm > 0 else w / np.linalg.norm(w)


def signal_subspace(gram: np.ndarray, k: int) -> np.ndarray:
    """The k leading eigenvectors (n_features × k) of a symmetric Gram matrix."""
    values, vectors = np.linalg.eigh(np.asarray(gram, dtype=np.float64))
    return vectors[:, np.argsort(values)[::-1][:k]]


def start_rows(X: Any, H: np.ndarray, HHt: np.ndarray, *, out_dtype: Any) -> np.ndarray:
    """Rows of W for chosen endmembers H: exact NNLS, then a small floor.

    The floor (1e-3 of the row's sum, relative) keeps multiplicative updates able to move
    every entry: MU never leaves an exact zero.
    """
    W = kernels.transform_rows(np.asarray(X), H, HHt).astype(np.float64)
    floor = 1e-3 * W.sum(axis=1, keepdims=True) / max(W.shape[1], 1)
    return np.maximum(W, np.maximum(floor, np.finfo(np.float32).tiny)).astype(out_dtype)


def atgp_candidate(X: Any, basis: np.ndarray, start: int) -> Candidate:
    """The row of this panel farthest from the span of the targets already chosen.

    Automatic target generation process (Ren & Chang, "Automatic spectral target recognition
    in hyperspectral imagery", IEEE TAES 39(4), 2003): the score of a row x is
    ``||x||² - ||Bᵀx||²``, its squared norm after the orthogonal projection ``P⊥`` that
    removes the orthonormal columns of ``basis`` (n_features × j), on the full bands (no
    signal subspace, unlike :func:`spa_candidate`). The row and the extra data are x.
    """
    X = np.asarray(X)
    if X.shape[0] == 0:
        return (-np.inf, -1, np.zeros(X.shape[1]), np.zeros(X.shape[1]))
    X64 = X.astype(np.float64, copy=False)
    score = np.einsum("ij,ij->i", X64, X64)
    if basis.shape[1]:
        proj = X64 @ basis
        score -= np.einsum("ij,ij->i", proj, proj)
    i = int(np.argmax(score))
    return (float(score[i]), start + i, X64[i].copy(), X64[i].copy())


def simplex_cofactors(Y: np.ndarray) -> np.ndarray:
    """Cofactors ``C`` (k × k) of ``M = [1ᵀ; Yᵀ]`` for k vertices Y (k × (k-1)).

    ``det M`` is ``(k-1)!`` times the signed volume of the simplex; replacing vertex j by a
    point y gives ``det = C[:, j] · [1, y]`` (expansion along column j): linear in y, so one
    pass over the pixels finds the best replacement of every vertex.
    """
    k = Y.shape[0]
    M = np.vstack([np.ones((1, k)), np.asarray(Y, dtype=np.float64).T])
    C = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            minor = np.delete(np.delete(M, i, axis=0), j, axis=1)
            C[i, j] = (-1.0) ** (i + j) * (np.linalg.det(minor) if minor.size else 1.0)
    return C


def nfindr_candidates(X: Any, V: np.ndarray, mean: np.ndarray, C: np.ndarray,
                      start: int) -> list[Candidate]:
    """For every vertex j, the row of this panel whose swap in gives the largest volume.

    N-FINDR (Winter, "N-FINDR: an algorithm for fast autonomous spectral end-member
    determination in hyperspectral data", Proc. SPIE 3753, 1999) on the rows projected on
    the (k-1)-dimensional signal subspace ``V`` (n_features × (k-1)) around ``mean``. The score
    of row y for vertex j is ``|C[:, j] · [1, y]|`` (:func:`simplex_cofactors`). Returns k
    candidates; the row is x (float64), the extra data its projection y.
    """
    X = np.asarray(X)
    k = C.shape[0]
    if X.shape[0] == 0:
        return [(-np.inf, -1, np.zeros(X.shape[1]), np.zeros(k - 1))] * k
    X64 = X.astype(np.float64, copy=False)
    Y = (X64 - mean) @ V
    scores = np.abs(C[0] + Y @ C[1:])  # (n, k): det with each vertex replaced by each row
    best = np.argmax(scores, axis=0)
    return [(float(scores[i, j]), start + int(i), X64[i].copy(), Y[i].copy())
            for j, i in enumerate(best)]
