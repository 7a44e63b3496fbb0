"""The 2-D block scheme: the same iterates as the row-panel scheme, two reads of X per
iteration, H chunked on the workers."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

import dnmf
from dnmf import graph
from dnmf.cluster import execution_context
from dnmf.solvers import iterate
from tests.conftest import logged_store, make_planted


def fit(X, chunks, scheme, **kw):
    kw.setdefault("scheduler", "threads")
    return dnmf.factorize(da.from_array(X, chunks=chunks), 5, init="random", random_state=0,
                          tol=0.0, scheme=scheme, min_panel_bytes=0, **kw)


@pytest.mark.parametrize("solver", ["hals", "mu", "anls"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_iterates_as_row_panels(solver, dtype):
    X = make_planted(dtype=dtype)[0]
    rows = fit(X, (50, 60), "row-panel", solver=solver, max_iter=15)
    blocks = fit(X, (50, 25), "block-2d", solver=solver, max_iter=15)
    assert blocks.plan.is_2d and blocks.plan.col_chunks == (25, 25, 10)
    rtol = 1e-4 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(np.asarray(blocks.H), rows.H, rtol=rtol, atol=rtol * rows.H.max())
    # float32 panel products: the Gram-identity loss carries ~1e-7 of the initial loss in
    # absolute rounding, whichever scheme sums it
    np.testing.assert_allclose(blocks.loss_history, rows.loss_history, rtol=rtol,
                               atol=rtol * 1e-2 * rows.loss_history[0])
    assert np.asarray(blocks.W).dtype == dtype


def test_mu_loss_is_monotone_in_2d():
    X = make_planted()[0]
    history = np.array(fit(X, (40, 20), "block-2d", solver="mu", max_iter=60).loss_history)
    assert (np.diff(history) <= 1e-10 * history[0]).all()


def test_two_reads_of_each_block_per_iteration(tmp_path):
    X = make_planted(240, 40, 4, dtype="float32")[0]
    store, Xd = logged_store(tmp_path / "x.zarr", X, (60, 20))
    W = graph.random_w(Xd.chunks[0], 4, seed=0, scale=1.0, dtype=np.float32)
    H = np.random.default_rng(0).random((4, 40)).astype(np.float32)
    with execution_context("threads") as ctx:
        store.counter.clear()
        state = iterate(Xd, W, H, sq_norm=float((X.astype(np.float64) ** 2).sum()),
                        solver="hals", ctx=ctx, max_iter=3, tol=0.0)
    assert isinstance(state.H, da.Array) and state.H.chunks[1] == (20, 20)
    assert store.counter["get"] == 3 * 2 * Xd.numblocks[0] * Xd.numblocks[1]


def test_result_store_with_chunked_h(tmp_path):
    X = make_planted(200, 60, 5, dtype="float32")[0]
    out = tmp_path / "res.zarr"
    result = fit(X, (50, 20), "block-2d", max_iter=20, out=out)
    ds = xr.open_zarr(out)
    assert ds["H"].shape == (5, 60) and ds.attrs["chunk_plan"]["n_column_blocks"] == 3
    np.testing.assert_allclose(ds["H"].values, np.asarray(result.H))
    W, H = ds["W"].values.astype(np.float64), ds["H"].values.astype(np.float64)
    direct = np.linalg.norm(X - W @ H) / np.linalg.norm(X)
    assert result.relative_error == pytest.approx(direct, rel=1e-3)


def test_nndsvd_needs_row_panels():
    X = make_planted()[0]
    with pytest.raises(dnmf.InputError, match="NNDSVD initialisation needs full-width"):
        dnmf.factorize(da.from_array(X, chunks=(50, 20)), 5, init="nndsvda", scheme="block-2d",
                       scheduler="threads")


@pytest.mark.cluster
def test_2d_on_a_local_cluster_matches_threads(local_client):
    X = make_planted(dtype="float32")[0]
    on_cluster = fit(X, (50, 25), "block-2d", max_iter=10, scheduler=local_client,
                     persist_x=False)
    in_process = fit(X, (50, 25), "block-2d", max_iter=10)
    np.testing.assert_allclose(np.asarray(on_cluster.H), np.asarray(in_process.H), rtol=1e-5)
    assert on_cluster.loss_history == pytest.approx(in_process.loss_history, rel=1e-6)


def test_auto_scheme_falls_back_to_2d_for_a_too_wide_store(tmp_path):
    # float64: the schemes sum the partial products in different orders, and in float32 the
    # Gram-identity loss of a good fit carries ~1e-4 of rounding (what is compared is the scheme)
    X = make_planted(200, 5000, 5, dtype="float64")[0]
    path = tmp_path / "wide.zarr"
    zarr.create_array(str(path), shape=X.shape, chunks=(50, 5000), dtype="float64")[...] = X
    kw = dict(init="random", random_state=0, max_iter=10, tol=0.0, scheduler="threads",
              persist_x=False)
    plans = []
    wide = dnmf.factorize(str(path), 5, memory_limit="2MB", on_plan=lambda p, c: plans.append(p),
                          **kw)
    assert plans[0].is_2d and plans[0].task_bytes <= 2e6 * 0.25
    assert wide.plan.is_2d and len(wide.plan.col_chunks) > 1
    ref = dnmf.factorize(str(path), 5, **kw)
    assert not ref.plan.is_2d
    np.testing.assert_allclose(wide.loss_history, ref.loss_history, rtol=1e-4)
