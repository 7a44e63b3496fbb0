"""Labelled input (xarray, AnnData) keeps its row and column labels on W and H: in memory, in
the result store (``sample``/``feature`` coordinates) and through ``dnmf.load``."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import xarray as xr
import zarr

import dnmf
from dnmf import NMF
from dnmf.errors import InputError
from tests.conftest import make_planted

K = 3


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return make_planted(40, 12, K, seed=3)[0]


@pytest.fixture(scope="module")
def cells() -> list[str]:
    return [f"cell-{i:03d}" for i in range(40)]


@pytest.fixture(scope="module")
def genes() -> list[str]:
    return [f"GENE{j}" for j in range(12)]


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory: pytest.TempPathFactory, X: np.ndarray, cells: list[str],
         genes: list[str]) -> Path:
    """A real .h5ad written by anndata: sparse float32 counts with obs/var names."""
    path = tmp_path_factory.mktemp("adata") / "counts.h5ad"
    adata = ad.AnnData(sp.csr_matrix(X.astype(np.float32)),
                       obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes))
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, X: np.ndarray, cells: list[str]) -> Path:
    """A real xarray dataset on disk (Zarr): counts(cell, wavelength), numeric column labels,
    written in row chunks of 10."""
    path = tmp_path_factory.mktemp("xr") / "counts.zarr"
    wavelengths = np.linspace(400.0, 700.0, X.shape[1])
    ds = xr.Dataset({"counts": (("cell", "wavelength"), X)},
                    coords={"cell": cells, "wavelength": wavelengths})
    ds.chunk({"cell": 10}).to_zarr(path, zarr_format=3)
    return path


def estimator() -> NMF:
    return NMF(K, random_state=0, max_iter=60, tol=0, scheduler="threads")


def test_xarray_in_memory_labels_on_W_and_H(X: np.ndarray, cells: list[str],
                                            genes: list[str]) -> None:
    A = xr.DataArray(X, dims=("cell", "gene"), coords={"cell": cells, "gene": genes})
    model = estimator()
    W = model.fit_transform(A)
    plain = estimator()
    W_plain = plain.fit_transform(X)
    assert isinstance(W, xr.DataArray) and W.dims == ("cell", "component")
    assert list(W["cell"].values) == cells
    assert isinstance(W.data, np.ndarray)  # in-memory X: numpy inside
    H = model.components_
    assert isinstance(H, xr.DataArray) and H.dims == ("component", "gene")
    assert list(H["gene"].values) == genes
    # the labels change nothing in the numbers
    np.testing.assert_array_equal(np.asarray(W), W_plain)
    np.testing.assert_array_equal(np.asarray(H), plain.components_)
    W_new = model.transform(A.isel(cell=slice(5, 15)))
    assert list(W_new["cell"].values) == cells[5:15]
    np.testing.assert_allclose(np.asarray(W_new), plain.transform(X[5:15]), rtol=0, atol=0)
    X_back = model.inverse_transform(W)
    assert X_back.dims == ("cell", "gene") and list(X_back["gene"].values) == genes


def test_transform_refuses_other_column_labels(X: np.ndarray, cells: list[str],
                                               genes: list[str]) -> None:
    A = xr.DataArray(X, dims=("cell", "gene"), coords={"cell": cells, "gene": genes})
    model = estimator().fit(A)
    with pytest.raises(InputError, match="labels differ from those seen in fit"):
        model.transform(A.isel(gene=slice(None, None, -1)))
    assert model.transform(A.isel(gene=slice(None, None, -1)).sel(gene=genes)).shape == (40, K)


def test_xarray_dataset_round_trip_through_the_store(dataset: Path, tmp_path: Path,
                                                     cells: list[str]) -> None:
    counts = xr.open_zarr(dataset)["counts"]  # lazy: dask inside
    out = tmp_path / "result.zarr"
    result = dnmf.factorize(counts, K, random_state=0, max_iter=30, out=out, checkpoint_every=0,
                            scheduler="threads", min_panel_bytes=0)
    wavelengths = counts["wavelength"].values
    assert result.W.dims == ("cell", "component") and list(result.W["cell"].values) == cells
    assert isinstance(result.W.data, da.Array)
    np.testing.assert_array_equal(result.H["wavelength"].values, wavelengths)
    # the store: coordinates on sample/feature, read by xarray itself, written in W's chunks
    stored = xr.open_zarr(out)
    assert list(stored["sample"].values) == cells
    assert stored["feature"].dtype == np.float64
    np.testing.assert_array_equal(stored["feature"].values, wavelengths)
    np.testing.assert_array_equal(stored["W"].values, np.asarray(result.W))
    root = zarr.open_group(out, mode="r")
    assert root["sample"].chunks == (root["W"].chunks[0],) and root["W"].chunks[0] < len(cells)
    # dnmf.load restores the input's dim names and labels (written without checkpoints here,
    # through the last checkpoint in the AnnData test)
    model = dnmf.load(out)
    assert model.W_.dims == ("cell", "component")
    assert list(model.W_["cell"].values) == cells
    assert model.components_.dims == ("component", "wavelength")
    np.testing.assert_array_equal(model.components_["wavelength"].values, wavelengths)
    np.testing.assert_array_equal(np.asarray(model.components_), np.asarray(result.H))


def test_anndata_h5ad_labels_in_memory_and_in_the_store(h5ad: Path, tmp_path: Path,
                                                        cells: list[str],
                                                        genes: list[str]) -> None:
    adata = ad.read_h5ad(h5ad)
    assert sp.issparse(adata.X)
    model = estimator()
    out = tmp_path / "topics.zarr"
    W = model.fit_transform(adata, out=out)
    assert W.dims == ("obs", "component") and list(W["obs"].values) == cells
    assert W.dtype == np.float32
    assert model.components_.dims == ("component", "var")
    assert list(model.components_["var"].values) == genes
    plain = estimator().fit(adata.X)
    # float32 (eps 6e-8) summed in another order on the out= path; 60 sweeps amplify that to
    # ~1e-5 relative
    H = np.asarray(model.components_)
    np.testing.assert_allclose(H, plain.components_, rtol=1e-4, atol=1e-4 * H.max())
    assert list(model.transform(adata[:7])["obs"].values) == cells[:7]
    stored = xr.open_zarr(out)
    assert list(stored["sample"].values) == cells and list(stored["feature"].values) == genes
    loaded = dnmf.load(out)
    assert loaded.W_.dims == ("obs", "component") and list(loaded.W_["obs"].values) == cells
    assert list(loaded.components_["var"].values) == genes


def test_backed_anndata_is_read_from_its_file(h5ad: Path, cells: list[str]) -> None:
    backed = ad.read_h5ad(h5ad, backed="r")
    result = dnmf.factorize(backed, K, random_state=0, max_iter=30, scheduler="threads")
    in_memory = dnmf.factorize(ad.read_h5ad(h5ad), K, random_state=0, max_iter=30,
                               scheduler="threads")
    assert list(result.W["obs"].values) == cells
    np.testing.assert_allclose(np.asarray(result.W), np.asarray(in_memory.W), rtol=1e-4,
                               atol=1e-5)  # float32 fits, panels vs in process


def test_dims_without_coordinates_keep_their_names(X: np.ndarray, tmp_path: Path) -> None:
    A = xr.DataArray(X, dims=("pixel", "band"))
    out = tmp_path / "r.zarr"
    result = dnmf.factorize(A, K, random_state=0, max_iter=10, out=out, scheduler="threads")
    assert result.W.dims == ("pixel", "component") and "pixel" not in result.W.coords
    root = zarr.open_group(out, mode="r")
    assert "sample" not in root and "feature" not in root
    assert dnmf.load(out).components_.dims == ("component", "band")


def test_unlabelled_input_is_unchanged(X: np.ndarray, tmp_path: Path) -> None:
    out = tmp_path / "r.zarr"
    result = dnmf.factorize(X, K, random_state=0, max_iter=10, out=out, scheduler="threads")
    assert isinstance(result.H, np.ndarray)
    root = zarr.open_group(out, mode="r")
    assert "sample" not in root and "dims" not in root.attrs
    assert isinstance(dnmf.load(out).components_, np.ndarray)
