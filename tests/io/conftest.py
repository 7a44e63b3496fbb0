"""Fixtures for the io tests: a small matrix and real files of every format."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import h5py
import numpy as np
import pytest
import xarray as xr
import zarr


@pytest.fixture(scope="session")
def X() -> np.ndarray:
    """A 50 x 12 non-negative float32 matrix: the reference every opened file must equal."""
    rng = np.random.default_rng(42)
    return rng.gamma(2.0, 1.0, size=(50, 12)).astype(np.float32)


@pytest.fixture
def memory_prefix() -> Iterator[str]:
    """A unique ``memory://`` folder, removed afterwards (the memory filesystem is global)."""
    prefix = f"memory://dnmf-test-{uuid.uuid4().hex}"
    yield prefix
    fs = fsspec.filesystem("memory")
    path = prefix.removeprefix("memory://")
    if fs.exists(path):
        fs.rm(path, recursive=True)


# --- writers: (directory, X, memory prefix) -> (source, var, format, var reported) ----------
Written = tuple[str, str | None, str, str | None]
Writer = Callable[[Path, np.ndarray, str], Written]


def write_zarr_v3(d: Path, X: np.ndarray, mem: str) -> Written:
    z = zarr.create_array(d / "x.zarr", shape=X.shape, chunks=(8, 12), dtype=X.dtype)
    z[:] = X
    return str(d / "x.zarr"), None, "zarr", None


def write_zarr_v2(d: Path, X: np.ndarray, mem: str) -> Written:
    z = zarr.create_array(d / "x2.zarr", shape=X.shape, chunks=(8, 5), dtype=X.dtype, zarr_format=2)
    z[:] = X
    return str(d / "x2.zarr"), None, "zarr", None


def write_zarr_group_var(d: Path, X: np.ndarray, mem: str) -> Written:
    g = zarr.open_group(d / "g.zarr", mode="w")
    g.create_array("data/X", shape=X.shape, chunks=(10, 6), dtype=X.dtype)[:] = X
    g.create_array("data/Y", shape=(3, 4), dtype="f8")[:] = 1.0
    g.create_array("wavelength", shape=(12,), dtype="f8")[:] = np.arange(12.0)
    return str(d / "g.zarr"), "data/X", "zarr", "data/X"


def write_zarr_group_auto(d: Path, X: np.ndarray, mem: str) -> Written:
    g = zarr.open_group(d / "g1.zarr", mode="w", zarr_format=2)
    g.create_array("X", shape=X.shape, chunks=(25, 12), dtype=X.dtype)[:] = X
    g.create_array("wavelength", shape=(12,), dtype="f8")[:] = np.arange(12.0)
    return str(d / "g1.zarr"), None, "zarr", "X"


def _dataset(X: np.ndarray) -> xr.Dataset:
    return xr.Dataset(
        {"X": (("pixel", "band"), X)},
        coords={"band": np.linspace(400.0, 2500.0, X.shape[1])},
    )


def write_xarray_zarr(d: Path, X: np.ndarray, mem: str) -> Written:
    _dataset(X).to_zarr(d / "xr.zarr", consolidated=False)
    return str(d / "xr.zarr"), "X", "zarr", "X"


def write_xarray_netcdf(d: Path, X: np.ndarray, mem: str) -> Written:
    ds = _dataset(X)
    ds["X"].encoding["chunksizes"] = (10, 12)
    ds.to_netcdf(d / "x.nc", engine="h5netcdf")
    return str(d / "x.nc"), None, "netcdf", "X"


def write_netcdf3(d: Path, X: np.ndarray, mem: str) -> Written:
    _dataset(X).to_netcdf(d / "x3.nc", engine="scipy")
    return str(d / "x3.nc"), "X", "netcdf", "X"


def write_hdf5_chunked(d: Path, X: np.ndarray, mem: str) -> Written:
    with h5py.File(d / "x.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(7, 4), compression="gzip")
    return str(d / "x.h5"), None, "hdf5", "/X"


def write_hdf5_contiguous(d: Path, X: np.ndarray, mem: str) -> Written:
    with h5py.File(d / "x.hdf5", "w") as f:
        f.create_dataset("X", data=X)
        f.create_dataset("wavelength", data=np.arange(12.0))
    return str(d / "x.hdf5"), "X", "hdf5", "/X"


def write_hdf5_nested(d: Path, X: np.ndarray, mem: str) -> Written:
    with h5py.File(d / "nested.he5", "w") as f:
        f.create_dataset("HDFEOS/SWATHS/cube/Data", data=X, chunks=(10, 12))
        f.create_dataset("HDFEOS/SWATHS/cube/Other", data=np.ones((3, 3)))
    return str(d / "nested.he5"), "/HDFEOS/SWATHS/cube/Data", "hdf5", "/HDFEOS/SWATHS/cube/Data"


def write_hdf5_no_extension(d: Path, X: np.ndarray, mem: str) -> Written:
    with h5py.File(d / "scene.dat", "w") as f:  # recognised by its signature
        f.create_dataset("X", data=X)
    return str(d / "scene.dat"), None, "hdf5", "/X"


def write_npy(d: Path, X: np.ndarray, mem: str) -> Written:
    np.save(d / "x.npy", X)
    return str(d / "x.npy"), None, "npy", None


def write_npy_fortran(d: Path, X: np.ndarray, mem: str) -> Written:
    np.save(d / "xf.npy", np.asfortranarray(X))
    return str(d / "xf.npy"), None, "npy", None


def write_file_url_zarr(d: Path, X: np.ndarray, mem: str) -> Written:
    zarr.create_array(d / "u.zarr", shape=X.shape, chunks=(16, 12), dtype=X.dtype)[:] = X
    return (d / "u.zarr").as_uri(), None, "zarr", None


def write_memory_zarr(d: Path, X: np.ndarray, mem: str) -> Written:
    zarr.create_array(f"{mem}/m.zarr", shape=X.shape, chunks=(16, 12), dtype=X.dtype)[:] = X
    return f"{mem}/m.zarr", None, "zarr", None


def write_memory_hdf5(d: Path, X: np.ndarray, mem: str) -> Written:
    write_hdf5_chunked(d, X, mem)
    fsspec.filesystem("memory").pipe(
        f"{mem}/x.h5".removeprefix("memory://"), (d / "x.h5").read_bytes()
    )
    return f"{mem}/x.h5", "X", "hdf5", "/X"


def write_memory_npy(d: Path, X: np.ndarray, mem: str) -> Written:
    write_npy_fortran(d, X, mem)  # Fortran order: the remote reader fetches column ranges
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{mem}/xf.npy".removeprefix("memory://"), (d / "xf.npy").read_bytes())
    return f"{mem}/xf.npy", None, "npy", None


WRITERS: dict[str, Writer] = {
    f.__name__.removeprefix("write_"): f
    for f in (
        write_zarr_v3,
        write_zarr_v2,
        write_zarr_group_var,
        write_zarr_group_auto,
        write_xarray_zarr,
        write_xarray_netcdf,
        write_netcdf3,
        write_hdf5_chunked,
        write_hdf5_contiguous,
        write_hdf5_nested,
        write_hdf5_no_extension,
        write_npy,
        write_npy_fortran,
        write_file_url_zarr,
        write_memory_zarr,
        write_memory_hdf5,
        write_memory_npy,
    )
}


@pytest.fixture(params=list(WRITERS))
def written(request: pytest.FixtureRequest, tmp_path: Path, X: np.ndarray, memory_prefix: str):
    """Every supported on-disk (or in-URL) layout of X: (source, var, format, reported var)."""
    return WRITERS[request.param](tmp_path, X, memory_prefix)


# --- sparse (CSR) inputs --------------------------------------------------------------------


@pytest.fixture(scope="session")
def M() -> Any:
    """A 60 x 9 CSR matrix, float64, ~30% dense, with zero rows (3, 10, 40-44), a zero column
    (4) and an explicitly stored zero (row 10's only entry): the reference every sparse
    layout must equal."""
    import scipy.sparse as sp

    rng = np.random.default_rng(5)
    dense = rng.gamma(2.0, 1.0, size=(60, 9)) * (rng.random((60, 9)) < 0.3)
    dense[:, 4] = 0.0
    dense[~dense.any(axis=1), 2] = 1.0  # no zero rows but the planted ones
    dense[3] = 0.0
    dense[40:45] = 0.0
    dense[10] = 0.0
    dense[10, 0] = 1.5
    m = sp.csr_matrix(dense)
    m.data[m.indptr[10]] = 0.0  # an explicit zero: stored, yet row 10 is all zero
    dense[10, 0] = 0.0
    assert (m.toarray() == dense).all() and m.nnz > 100
    assert (~dense.any(axis=1)).sum() == 7 and (~dense.any(axis=0)).sum() == 1
    return m
