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
    reads = []

    def count(block):
        reads.append(1)
        return block

    counted = Xd.map_blocks(count, dtype=Xd.dtype, meta=np.empty((0, 0)))
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
