"""Endmember initialisations (SPA, VCA) as map-reduce passes over row panels."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

import dnmf
from dnmf import init
from dnmf.errors import InputError


def _separable(n=2000, m=40, k=5, noise=1e-3, seed=0):
    """Rows that are convex combinations of k endmember rows, each present as a pure row."""
    rng = np.random.default_rng(seed)
    E = rng.random((k, m)) + 0.1
    A = rng.dirichlet(np.full(k, 0.5), size=n)
    pure = rng.choice(n, size=k, replace=False)
    A[pure] = np.eye(k)
    X = A @ E + noise * rng.random((n, m))
    return X, E, pure


def _counting_reads(Xd):
    """Xd through a pass-through task that logs each block it reads."""
    reads = []

    def count(block):
        reads.append(1)
        return block

    return Xd.map_blocks(count, dtype=Xd.dtype, meta=np.empty((0, 0))), reads


def _angles_deg(H, E):
    Hn = H / np.linalg.norm(H, axis=1, keepdims=True)
    En = E / np.linalg.norm(E, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip((Hn @ En.T).max(axis=1), -1, 1)))


@pytest.mark.parametrize("method", ["spa", "vca"])
def test_endmember_rows_find_the_pure_rows(method):
    X, E, _ = _separable()
    H = init.endmember_rows(da.from_array(X, chunks=(300, 40)), 5, method=method, seed=3)
    assert H.shape == (5, 40)
    angles = _angles_deg(H, E)
    assert angles.max() < 0.5, angles
    # every endmember found once: the matching is a permutation
    Hn = H / np.linalg.norm(H, axis=1, keepdims=True)
    En = E / np.linalg.norm(E, axis=1, keepdims=True)
    assert sorted((Hn @ En.T).argmax(axis=1).tolist()) == list(range(5))


@pytest.mark.parametrize("method", ["spa", "vca"])
def test_endmember_rows_ignore_the_chunking(method):
    X, _, _ = _separable(seed=1)
    one = init.endmember_rows(da.from_array(X, chunks=(2000, 40)), 5, method=method, seed=0)
    many = init.endmember_rows(da.from_array(X, chunks=(123, 40)), 5, method=method, seed=0)
    # the same pixels: only the signal subspace's sums run in another order
    np.testing.assert_allclose(one, many, rtol=1e-9, atol=1e-12)


def test_spa_makes_one_pass_over_x_per_endmember_and_one_for_the_subspace():
    X, _, _ = _separable()
    Xd = da.from_array(X, chunks=(500, 40))
    counted, reads = _counting_reads(Xd)
    init.endmember_rows(counted, 5, method="spa")
    assert len(reads) == (5 + 1) * Xd.numblocks[0]


def test_rank_deficient_data_is_a_clear_error():
    rng = np.random.default_rng(0)
    X = rng.random((300, 2)) @ rng.random((2, 30))  # rank 2
    with pytest.raises(InputError, match="found only 2 linearly independent rows of X for k = 4"):
        init.endmember_rows(da.from_array(X, chunks=(100, 30)), 4, method="spa")


@pytest.mark.parametrize("init_name", ["spa", "vca"])
@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_factorize_with_endmember_init(init_name, solver):
    X, E, _ = _separable(n=1500, noise=1e-4, seed=2)
    with dask.config.set(scheduler="sync"):
        res = dnmf.factorize(da.from_array(X, chunks=(400, 40)), 5, init=init_name,
                             solver=solver, scheduler="threads", random_state=0, max_iter=50)
    assert res.init == init_name
    # starting at the pure rows, the fit is at the noise floor from the first iterations
    assert res.loss_history[0] / np.sum(X ** 2) < 1e-6
    assert _angles_deg(res.H, E).max() < 1.0


# --- NNDSVD: the randomized SVD on row panels ------------------------------------------------


def _spectrum(n=900, m=70, rank=8, seed=3):
    """X of exact rank ``rank`` with distinct singular values 10, 9, ..., (rank + 2)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    V, _ = np.linalg.qr(rng.standard_normal((m, rank)))
    return (U * np.arange(10.0, 10.0 - rank, -1.0)) @ V.T


@pytest.mark.parametrize("sparse", [False, True])
def test_truncated_svd_is_exact_on_a_low_rank_matrix(sparse):
    import scipy.sparse as sps

    X = _spectrum()
    Xd = da.from_array(X, chunks=(200, 70))
    if sparse:
        Xd = Xd.map_blocks(sps.csr_matrix, dtype=X.dtype, meta=sps.csr_matrix((0, 0)))
    k = 4
    svd = init.truncated_svd(Xd, k, seed=0)
    _, S_ref, Vt_ref = np.linalg.svd(X, full_matrices=False)
    # the basis (k + 10 columns) holds the whole rank-8 row space: the SVD is exact
    np.testing.assert_allclose(svd.S, S_ref[:k], rtol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(svd.V * Vt_ref[:k], axis=1)), 1.0, atol=1e-10)
    U = np.asarray(svd.XQ.compute()) @ svd.to_u
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=1e-10)
    np.testing.assert_allclose((U * svd.S) @ svd.V, X @ svd.V.T @ svd.V, atol=1e-9)


def test_truncated_svd_finds_the_leading_subspace_of_a_noisy_matrix():
    rng = np.random.default_rng(1)
    X = _spectrum(n=2000, m=300, rank=6) + 0.05 * rng.random((2000, 300))
    svd = init.truncated_svd(da.from_array(X, chunks=(500, 300)), 5, seed=2)
    S_ref = np.linalg.svd(X, compute_uv=False)[:5]
    # 3 passes: the subspace of one power iteration, singular values within 1e-3
    np.testing.assert_allclose(svd.S, S_ref, rtol=1e-3)


def test_truncated_svd_reads_x_once_per_pass_and_is_reproducible():
    X = _spectrum()
    Xd = da.from_array(X, chunks=(300, 70))
    counted, reads = _counting_reads(Xd)
    a = init.truncated_svd(counted, 3, seed=7)
    assert len(reads) == init.SVD_PASSES * Xd.numblocks[0]
    b = init.truncated_svd(Xd, 3, seed=7)
    np.testing.assert_array_equal(a.S, b.S)
    np.testing.assert_array_equal(a.V, b.V)
    with pytest.raises(ValueError, match="at least 2 passes"):
        init.truncated_svd(Xd, 3, seed=7, passes=1)


def test_nndsvd_equals_scikit_learns_on_an_exact_low_rank_matrix():
    from sklearn.decomposition._nmf import _initialize_nmf

    rng = np.random.default_rng(4)
    X = rng.random((400, 6)) @ rng.random((6, 50))  # non-negative, rank 6
    k = 6
    W_ref, H_ref = _initialize_nmf(X, k, init="nndsvd", random_state=0)
    W, H = init.initialize(da.from_array(X, chunks=(100, 50)), k, init="nndsvd", seed=0,
                           x_mean=float(X.mean()))
    np.testing.assert_allclose(H, H_ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(W.compute(), W_ref, rtol=1e-6, atol=1e-9)


def test_nndsvd_w_is_computed_from_x_by_the_first_iteration():
    """W is lazy on X's panels: nothing n-sized is held from the initialisation."""
    X = _spectrum()
    Xd = da.from_array(X, chunks=(300, 70))
    W, _ = init.initialize(Xd, 3, init="nndsvda", seed=0, x_mean=float(np.abs(X).mean()))
    assert Xd.name in W.dask.dependencies[W.name]
    assert W.chunks == (Xd.chunks[0], (3,))


@pytest.mark.parametrize("method", init.IN_PROCESS_INITS)
def test_in_memory_init_equals_the_graphs(method):
    """X in memory (an in-process fit's) is initialised by the same kernels without a graph:
    with X in one row panel, the graph's W and H to the bit; in several panels, sums over
    panels round differently (float64: rtol 1e-9, far above 40 terms' rounding)."""
    rng = np.random.default_rng(3)
    X = rng.random((90, 12)) @ rng.random((12, 40)) + 0.05 * rng.random((90, 40))
    kwargs = {"init": method, "seed": 5, "x_mean": float(X.mean())}
    W, H = init.initialize(X, 4, **kwargs)
    assert isinstance(W, np.ndarray) and W.dtype == X.dtype and H.dtype == X.dtype
    W1, H1 = init.initialize(da.from_array(X, chunks=X.shape), 4, **kwargs)
    np.testing.assert_array_equal(W, W1.compute())
    np.testing.assert_array_equal(H, H1)
    W3, H3 = init.initialize(da.from_array(X, chunks=(30, 40)), 4, **kwargs)
    np.testing.assert_allclose(H, H3, rtol=1e-9, atol=1e-12)
    # nndsvdar's noise too: each panel draws the rows where it starts, whatever the chunking
    np.testing.assert_allclose(W, W3.compute(), rtol=1e-9, atol=1e-12)
