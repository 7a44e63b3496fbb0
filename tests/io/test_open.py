"""open_matrix: every format opens lazily and equals the original; every error is one line."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import cloudpickle
import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr
import zarr
from dask.array.utils import assert_eq

import dnmf.io.common as common
import dnmf.io.hdf5 as hdf5
from dnmf.errors import InputError
from dnmf.io import MatrixSource, open_matrix, validate
from dnmf.io.common import panel_chunks

# --- every format ---------------------------------------------------------------------------


def test_open_every_format_lazily(written, X, count_computes):
    source, var, fmt, reported_var = written
    src = open_matrix(source, var)
    assert count_computes.calls == 0, "opening must not compute anything"
    assert isinstance(src, MatrixSource)
    assert (src.format, src.path, src.var) == (fmt, source, reported_var)
    assert (src.shape, src.dtype, src.stored_dtype, src.notes) == (X.shape, X.dtype, "float32", ())
    assert src.nbytes == X.nbytes
    assert_eq(src.array, X)


def test_describe_is_json(written, X):
    source, var, fmt, reported_var = written
    desc = open_matrix(source, var).describe()
    assert json.loads(json.dumps(desc)) == desc
    assert desc["path"] == source and desc["format"] == fmt and desc["var"] == reported_var
    assert desc["shape"] == [50, 12] and desc["dtype"] == "float32"
    assert len(desc["chunks"]) == 2


@pytest.mark.parametrize(
    "make, fmt, stored",
    [
        (lambda X: X, "numpy", "float32"),
        (lambda X: X.tolist(), "numpy", "float64"),  # Python floats are float64
        (lambda X: da.from_array(X, chunks=(10, 6)), "dask", "float32"),
        (lambda X: xr.DataArray(da.from_array(X, chunks=(10, 6))), "dask", "float32"),
        (lambda X: _memory_zarr(X), "zarr-array", "float32"),
    ],
    ids=["numpy", "list", "dask", "xarray", "zarr-array"],
)
def test_open_in_memory(make, fmt, stored, X, count_computes):
    src = open_matrix(make(X))
    assert count_computes.calls == 0
    assert (src.format, src.path, src.var, src.stored_dtype) == (fmt, None, None, stored)
    assert_eq(src.array, X.astype(stored))


def _memory_zarr(X: np.ndarray) -> zarr.Array:
    z = zarr.create_array(zarr.storage.MemoryStore(), shape=X.shape, chunks=(5, 6), dtype=X.dtype)
    z[:] = X
    return z


def test_dask_input_kept_as_is(X):
    x = da.from_array(X, chunks=(10, 6))
    assert open_matrix(x).array is x
    assert open_matrix(x, chunks=(25, 12)).array.chunks == ((25, 25), (12,))


def test_zarr_array_object_from_disk(tmp_path, X):
    z = zarr.create_array(tmp_path / "a.zarr", shape=X.shape, chunks=(10, 12), dtype="f4")
    z[:] = X
    src = open_matrix(zarr.open_array(tmp_path / "a.zarr", mode="r"))
    assert src.format == "zarr-array" and src.stored_chunks == (10, 12)
    assert_eq(src.array, X)


def test_netcdf_variable_in_group(tmp_path, X):
    xr.Dataset({"X": (("pixel", "band"), X)}).to_netcdf(
        tmp_path / "g.nc", engine="h5netcdf", group="scene/L2"
    )
    src = open_matrix(tmp_path / "g.nc", "scene/L2/X")
    assert src.var == "scene/L2/X"
    assert_eq(src.array, X)


# --- chunking -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, itemsize, stored, target, expected",
    [
        # contiguous: as many whole rows as fit the target
        ((1000, 10), 4, None, 4000, (100, 10)),
        # everything fits: one block
        ((50, 12), 4, None, 64 * 2**20, (50, 12)),
        # stored (7, 4): rows a multiple of 7, all columns
        ((50, 12), 4, (7, 4), 1000, (14, 12)),
        # one band of stored chunks is bigger than the target: at least one band
        ((50, 12), 4, (7, 4), 200, (7, 12)),
        # a band across all columns is over twice the target: split on stored column chunks
        ((50, 1200), 4, (7, 40), 4000, (7, 120)),
        # a single contiguous row over twice the target: split the columns
        ((10, 10_000), 8, None, 1000, (1, 125)),
    ],
)
def test_panel_chunks(shape, itemsize, stored, target, expected):
    assert panel_chunks(shape, itemsize, stored, target=target) == expected


def test_default_chunks_are_row_panels_aligned_to_storage(written, X, monkeypatch):
    # A 480-byte target makes ~10-row panels out of the 50 x 12 float32 test matrix.
    monkeypatch.setattr(common, "TARGET_CHUNK_BYTES", 480)
    source, var, *_ = written
    src = open_matrix(source, var)
    row_chunks, col_chunks = src.chunks
    assert col_chunks == (12,), "row panels hold all columns"
    assert len(row_chunks) > 1 or (src.stored_chunks or (1,))[0] >= 25
    stored_rows = (src.stored_chunks or (1,))[0]
    assert all(r % stored_rows == 0 for r in row_chunks[:-1]), "whole stored chunks only"
    assert_eq(src.array, X)


def test_user_chunks_win(tmp_path, X):
    np.save(tmp_path / "x.npy", X)
    assert open_matrix(tmp_path / "x.npy", chunks=(10, 6)).chunks == ((10,) * 5, (6, 6))
    assert open_matrix(X, chunks=(20, 12)).chunks == ((20, 20, 10), (12,))


# --- dtypes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stored, forced, expected, note",
    [
        ("int16", None, "float32", "integer input int16 converted to float32"),
        ("uint8", None, "float32", "integer input uint8 converted to float32"),
        ("int64", None, "float32", "integer input int64 converted to float32"),
        ("bool", None, "float32", "boolean input converted to float32"),
        ("float16", None, "float32", "float16 input converted to float32"),
        ("float32", None, "float32", None),
        ("float64", None, "float64", None),
        ("float64", "float32", "float32", "float64 input converted to float32 (dtype=float32)"),
        ("int16", "float64", "float64", "int16 input converted to float64 (dtype=float64)"),
        ("float32", np.float32, "float32", None),
    ],
)
def test_dtype_conversion(stored, forced, expected, note, tmp_path, X, count_computes):
    data = (X * 10).astype(stored)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f.create_dataset("X", data=data, chunks=(10, 12))
    for src in (open_matrix(tmp_path / "t.h5", dtype=forced), open_matrix(data, dtype=forced)):
        assert count_computes.calls == 0
        assert src.dtype == np.dtype(expected) and src.stored_dtype == stored
        assert src.notes == ((note,) if note else ())
        assert_eq(src.array, data.astype(expected))


def test_cf_packed_netcdf_is_decoded(tmp_path, X):
    ds = xr.Dataset({"X": (("pixel", "band"), X)})
    ds["X"].encoding.update(dtype="int16", scale_factor=0.001, add_offset=0.0, _FillValue=-9999)
    ds.to_netcdf(tmp_path / "packed.nc", engine="h5netcdf")
    src = open_matrix(tmp_path / "packed.nc")
    assert src.stored_dtype == "int16" and src.dtype.kind == "f"
    assert src.notes[0].startswith("CF decoding (scale_factor, add_offset, _FillValue) read int16")
    np.testing.assert_allclose(src.array.compute(), X, atol=0.0006)


def test_cf_packed_zarr_group_is_decoded(tmp_path, X):
    Xn = X.copy()
    Xn[3, 4] = np.nan  # becomes the fill value on disk and NaN again on read
    ds = xr.Dataset({"X": (("pixel", "band"), Xn)})
    ds["X"].encoding.update(dtype="int16", scale_factor=0.001, _FillValue=-1)
    ds.to_zarr(tmp_path / "packed.zarr", consolidated=False)
    src = open_matrix(tmp_path / "packed.zarr", "X")
    assert src.stored_dtype == "int16" and src.format == "zarr"
    got = src.array.compute()
    assert np.isnan(got[3, 4])
    np.testing.assert_allclose(got, Xn, atol=0.0006)


# --- HDF5 across processes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "dumps, loads", [(pickle.dumps, pickle.loads), (cloudpickle.dumps, pickle.loads)]
)
def test_hdf5_array_pickles(dumps, loads, tmp_path, X):
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f.create_dataset("grp/X", data=X, chunks=(10, 12))
    src = open_matrix(tmp_path / "p.h5", "grp/X")
    proxy = hdf5.HDF5Array(common.resolve_location(tmp_path / "p.h5"), "/grp/X", X.shape, X.dtype)
    hdf5.close_cached_files()  # the unpickled copies must open the file themselves
    restored = loads(dumps(proxy))
    np.testing.assert_array_equal(restored[5:9, 2:7], X[5:9, 2:7])
    assert (restored.shape, restored.dtype, restored.ndim) == (X.shape, X.dtype, 2)
    hdf5.close_cached_files()
    assert_eq(loads(dumps(src.array)), X)


@pytest.fixture
def h5_opens(monkeypatch) -> list[str]:
    """Paths of every HDF5 file opened from now on (a spy around the real opener)."""
    opened: list[str] = []
    real_open = hdf5.open_file

    def spy(loc):
        opened.append(loc.path)
        return real_open(loc)

    hdf5.close_cached_files()
    monkeypatch.setattr(hdf5, "open_file", spy)
    yield opened
    hdf5.close_cached_files()


def test_hdf5_file_opened_once_per_process(tmp_path, X, h5_opens):
    with h5py.File(tmp_path / "o.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(5, 12))
    src = open_matrix(tmp_path / "o.h5", chunks=(5, 12))
    assert h5_opens == [str(tmp_path / "o.h5")], "metadata is read once"
    assert not hdf5._HANDLES, "opening leaves no handle behind"
    h5_opens.clear()
    for _ in range(3):
        src.array.blocks[2].compute(scheduler="sync")
    src.array.compute(scheduler="threads")
    assert h5_opens == [str(tmp_path / "o.h5")], "chunks reuse one handle"


def test_hdf5_new_version_of_file_gets_new_handle(tmp_path, X, h5_opens):
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X)
    open_matrix(path).array.compute(scheduler="sync")
    os.utime(path, ns=(1, 1))  # looks like a new version of the file
    open_matrix(path).array.compute(scheduler="sync")
    assert len(h5_opens) == 4 and len(hdf5._HANDLES) == 1, "old handle closed, new one cached"
    # Rewriting a file this process has open needs the handles closed first.
    hdf5.close_cached_files()
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=2 * X)
    os.utime(path, ns=(2, 2))
    assert_eq(open_matrix(path).array, 2 * X)


@pytest.mark.cluster
def test_hdf5_and_npy_on_process_cluster(local_client, tmp_path, X):
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(10, 12))
    np.save(tmp_path / "c.npy", X)
    for path in ("c.h5", "c.npy"):
        src = open_matrix(tmp_path / path, chunks=(10, 12))
        np.testing.assert_array_equal(local_client.compute(src.array).result(), X)
        report = validate(src.array, scheduler=local_client)
        assert report.n_chunks == 5 and report.n_negative == 0


# --- errors ---------------------------------------------------------------------------------


def _h5(d: Path, name: str = "data.h5", **datasets: Any) -> Path:
    with h5py.File(d / name, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key.replace("__", "/"), data=value)
    return d / name


def _npy(d: Path, value: Any, name: str = "x.npy") -> Path:
    np.save(d / name, value, allow_pickle=True)
    return d / name


def _bytes(d: Path, name: str, data: bytes) -> Path:
    (d / name).write_bytes(data)
    return d / name


def _garbled_zarr(d: Path) -> Path:
    (d / "bad.zarr").mkdir()
    (d / "bad.zarr" / "zarr.json").write_text("{not json")
    return d / "bad.zarr"


def _truncated_h5(d: Path) -> Path:
    path = _h5(d, "cut.h5", X=np.ones((200, 50)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _zarr_group(d: Path, **arrays: Any) -> Path:
    g = zarr.open_group(d / "grp.zarr", mode="w")
    for key, value in arrays.items():
        g.create_array(key, data=np.asarray(value))
    return d / "grp.zarr"


def _nc(d: Path, **variables: Any) -> Path:
    ds = xr.Dataset(
        {k: (tuple(f"{k}{i}" for i in range(np.ndim(v))), v) for k, v in variables.items()}
    )
    ds.to_netcdf(d / "v.nc", engine="h5netcdf")
    return d / "v.nc"


A = np.ones((100, 20), dtype=np.float32)
B = np.ones((5, 3), dtype=np.int16)

# One row per error: id, input made from tmp_path, var, kwargs, error type, message regex.
# fmt: off
ERRORS = [
    ("missing file", lambda d: d / "nope.h5", None, {}, FileNotFoundError,
     r"nope\.h5 does not exist — check the path"),
    ("missing zarr dir", lambda d: d / "nope.zarr", None, {}, FileNotFoundError,
     r"nope\.zarr does not exist"),
    ("missing url", lambda d: "memory://dnmf-nothing/x.zarr", None, {}, FileNotFoundError,
     r"memory://dnmf-nothing/x\.zarr does not exist — check the URL"),
    ("missing hdf5 dataset", lambda d: _h5(d, a=A, grp__b=B), "foo", {}, InputError,
     r"no dataset 'foo' in .*data\.h5; datasets: /a \(100, 20\) float32, /grp/b \(5, 3\) int16$"),
    ("hdf5 var is a group", lambda d: _h5(d, a=A, grp__b=B), "grp", {}, InputError,
     r"no dataset 'grp' in .*data\.h5; datasets: /a"),
    ("ambiguous hdf5", lambda d: _h5(d, a=A, grp__b=B), None, {}, InputError,
     r"data\.h5 holds 2 2-D numeric datasets; pick one with var= \(--var\): /a \(100, 20\)"),
    ("no 2-D hdf5 dataset", lambda d: _h5(d, a=np.ones(3), b=np.ones(4)), None, {}, InputError,
     r"no 2-D numeric dataset in .*data\.h5; datasets: /a \(3,\) float64, /b \(4,\) float64"),
    ("missing netcdf variable", lambda d: _nc(d, X=A), "Y", {}, InputError,
     r"no variable 'Y' in .*v\.nc; variables: X \(100, 20\) float32$"),
    ("missing netcdf group", lambda d: _nc(d, X=A), "nogroup/X", {}, InputError,
     r"no variable 'nogroup/X' in .*v\.nc; variables: X \(100, 20\)"),
    ("missing zarr array", lambda d: _zarr_group(d, a=A, b=B), "c", {}, InputError,
     r"no array 'c' in .*grp\.zarr; arrays: a \(100, 20\) float32, b \(5, 3\) int16$"),
    ("ambiguous zarr group", lambda d: _zarr_group(d, a=A, b=B), None, {}, InputError,
     r"grp\.zarr holds 2 2-D numeric arrays; pick one with var="),
    ("1-D npy", lambda d: _npy(d, np.ones(5)), None, {}, InputError,
     r"X must be 2-D \(n_samples, n_features\); got shape \(5,\) — reshape it or pick a 2-D "
     r"variable with --var"),
    ("3-D npy", lambda d: _npy(d, np.ones((4, 5, 6))), None, {}, InputError,
     r"got shape \(4, 5, 6\)"),
    ("3-D hdf5 dataset", lambda d: _h5(d, cube=np.ones((4, 5, 6))), None, {}, InputError,
     r"got shape \(4, 5, 6\)"),
    ("3-D zarr", lambda d: _zarr_group(d, cube=np.ones((4, 5, 6))), None, {}, InputError,
     r"got shape \(4, 5, 6\)"),
    ("1-D in-memory", lambda d: np.ones(3), None, {}, InputError,
     r"got shape \(3,\)"),
    ("empty npy", lambda d: _npy(d, np.ones((0, 5))), None, {}, InputError,
     r"X is empty: shape \(0, 5\) has a zero dimension"),
    ("empty hdf5", lambda d: _h5(d, X=np.ones((5, 0))), None, {}, InputError,
     r"X is empty: shape \(5, 0\)"),
    ("empty dask", lambda d: da.ones((0, 3)), None, {}, InputError,
     r"X is empty"),
    ("string hdf5", lambda d: _h5(d, s=np.array([[b"a", b"b"]] * 2)), None, {}, InputError,
     r"X has non-numeric dtype string \(\|S1\); NMF needs a numeric array"),
    ("compound hdf5",
     lambda d: _h5(d, c=np.zeros((3, 2), dtype=[("a", "f4"), ("b", "i4")])), None, {}, InputError,
     r"X has non-numeric dtype compound \(a, b\)"),
    ("object npy", lambda d: _npy(d, np.array([[1, "a"]], dtype=object)), None, {}, InputError,
     r"X has non-numeric dtype object"),
    ("complex npy", lambda d: _npy(d, np.ones((3, 3), dtype=np.complex64)), None, {}, InputError,
     r"X has complex dtype complex64; NMF needs real non-negative values — take the magnitude"),
    ("datetime in-memory", lambda d: np.zeros((2, 2), dtype="M8[s]"), None, {}, InputError,
     r"non-numeric dtype datetime64\[s\]"),
    ("dtype not float", lambda d: A, None, {"dtype": "int32"}, InputError,
     r"dtype=int32 is not supported: choose float32 or float64"),
    ("dtype not a dtype", lambda d: A, None, {"dtype": "nonsense"}, InputError,
     r"dtype='nonsense' is not a dtype"),
    ("directory not zarr", lambda d: d, None, {}, InputError,
     r"cannot read .* as any supported format \(zarr, HDF5, NetCDF or \.npy\): it is a "
     r"directory without zarr metadata"),
    ("garbled zarr.json", _garbled_zarr, None, {}, InputError,
     r"cannot read .*bad\.zarr as zarr: JSONDecodeError"),
    ("empty .zarr dir", lambda d: (d / "e.zarr").mkdir() or d / "e.zarr", None, {}, InputError,
     r"cannot read .*e\.zarr as zarr: no zarr array or group found"),
    ("truncated hdf5", _truncated_h5, None, {}, InputError,
     r"cannot read .*cut\.h5 as HDF5: .*truncated"),
    ("garbage .h5", lambda d: _bytes(d, "g.h5", b"not an hdf5 file at all"), None, {}, InputError,
     r"cannot read .*g\.h5 as HDF5: .*signature"),
    ("garbage .nc", lambda d: _bytes(d, "g.nc", b"garbage" * 10), None, {}, InputError,
     r"cannot read .*g\.nc as NetCDF-4: "),
    ("garbage .npy", lambda d: _bytes(d, "g.npy", b"garbage" * 10), None, {}, InputError,
     r"cannot read .*g\.npy as \.npy: "),
    ("truncated npy", lambda d: _bytes(d, "t.npy", _npy(d, A).read_bytes()[:500]), None, {},
     InputError,
     r"cannot read .*t\.npy as \.npy: file is truncated \(500 of 8,128 bytes\)"),
    ("unknown format", lambda d: _bytes(d, "x.bin", b"\x00\x01garbage"), None, {}, InputError,
     r"cannot read .*x\.bin as any supported format .*unknown extension '\.bin' and no known "
     r"file signature"),
    ("var on npy", lambda d: _npy(d, A), "X", {}, InputError,
     r"var='X' does not apply"),
    ("var on zarr array", lambda d: _zarr_group(d, a=A) / "a", "a", {}, InputError,
     r"is a single zarr array, so var='a' does not apply"),
    ("var on in-memory", lambda d: A, "X", {}, InputError,
     r"var='X' applies to files only"),
    ("not an array", lambda d: 3, None, {}, InputError,
     r"cannot open a int as X"),
    ("unknown protocol", lambda d: "nosuchproto://x/y.zarr", None, {}, InputError,
     r"cannot open nosuchproto://x/y\.zarr: "),
]
# fmt: on


@pytest.mark.parametrize(
    "make, var, kwargs, error, message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_open_errors(make, var, kwargs, error, message, tmp_path):
    source = make(tmp_path)
    with pytest.raises(error, match=message) as info:
        open_matrix(source, var, **kwargs)
    text = str(info.value)
    assert "\n" not in text, "errors are one line"
    assert error is FileNotFoundError or isinstance(info.value, InputError)


def test_error_listing_is_truncated(tmp_path):
    path = _h5(tmp_path, **{f"d{i:02d}": np.ones((2, 2)) for i in range(20)})
    with pytest.raises(InputError, match=r"/d11 \(2, 2\) float64, \.\.\. and 8 more$"):
        open_matrix(path, "missing")


def test_file_url_is_percent_decoded(tmp_path, X):
    zarr.create_array(tmp_path / "a b.zarr", shape=X.shape, dtype=X.dtype)[:] = X
    url = (tmp_path / "a b.zarr").as_uri()
    assert "%20" in url
    src = open_matrix(url)
    assert src.path == url
    assert_eq(src.array, X)
