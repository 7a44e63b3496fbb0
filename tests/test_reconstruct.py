"""Reconstruction W·H (dnmf.reconstruct): blocks, and whole filled matrices on disk."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

import dnmf
from dnmf.errors import InputError, OutputError
from dnmf.reconstruct import reconstruct, write_reconstruction


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A masked fit written to a result store, with its input (10% NaN) as a Zarr array."""
    rng = np.random.default_rng(3)
    X = (rng.random((500, 4)) @ rng.random((4, 40))).astype(np.float32)
    hide = rng.random(X.shape) < 0.1
    Xn = np.where(hide, np.nan, X)
    d = tmp_path_factory.mktemp("rec")
    da.from_array(Xn, chunks=(100, 40)).to_zarr(str(d / "x.zarr"))
    dnmf.factorize(str(d / "x.zarr"), 4, missing="mask", max_iter=300, tol=1e-8,
                   random_state=0, out=d / "fit.zarr", scheduler="threads")
    return d, X, Xn, hide


def test_reconstruct_blocks_numpy_and_lazy():
    rng = np.random.default_rng(0)
    W, H = rng.random((30, 3)), rng.random((3, 8))
    np.testing.assert_allclose(reconstruct(W, H, rows=slice(5, 9), cols=[0, 7]),
                               W[5:9] @ H[:, [0, 7]])
    lazy = reconstruct(da.from_array(W, chunks=10), H)
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), W @ H)


def test_fill_only_the_missing_entries(fitted, tmp_path):
    d, X, Xn, hide = fitted
    path, n_filled = write_reconstruction(d / "fit.zarr", tmp_path / "filled.zarr",
                                          only_missing=str(d / "x.zarr"), scheduler="threads")
    assert n_filled == int(hide.sum())
    root = zarr.open_group(path, mode="r")
    assert root.attrs["status"] == "complete" and root.attrs["n_filled"] == n_filled
    filled = root["X"][...]
    np.testing.assert_array_equal(filled[~hide], Xn[~hide])  # observed values kept as they are
    assert not np.isnan(filled).any()
    # the fill is W·H of the fit: far better than filling with the column means
    col_mean = np.broadcast_to(np.nanmean(Xn, axis=0), X.shape)
    rmse = np.sqrt(np.mean((filled[hide] - X[hide]) ** 2))
    assert rmse < 0.1 * np.sqrt(np.mean((col_mean[hide] - X[hide]) ** 2))


def test_full_reconstruction_and_refusals(fitted, tmp_path):
    d = fitted[0]
    model = dnmf.load(d / "fit.zarr")
    path, n = write_reconstruction(d / "fit.zarr", tmp_path / "wh.zarr", scheduler="threads")
    np.testing.assert_allclose(zarr.open_group(path, mode="r")["X"][...],
                               np.asarray(model.W_) @ model.components_, rtol=1e-5)
    assert n == 500 * 40
    with pytest.raises(OutputError, match="already exists"):
        write_reconstruction(d / "fit.zarr", tmp_path / "wh.zarr")
    np.save(tmp_path / "other.npy", np.ones((10, 40), np.float32))
    with pytest.raises(InputError, match="fitted to"):
        write_reconstruction(d / "fit.zarr", tmp_path / "x2.zarr",
                             only_missing=str(tmp_path / "other.npy"))
    assert not (tmp_path / "x2.zarr").exists()
