"""open_cube: every format gives the same float32 cube (scaled, no-data as NaN), band dim
last, wavelengths in nm, spatial coords and CRS kept, nothing computed."""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr
import zarr

from dnmf.errors import InputError
from dnmf.hyperspectral.cube import describe_cube, open_cube
from dnmf.hyperspectral.envi import write_envi
from dnmf.hyperspectral.prepare import pixel_matrix, resolve_bad_bands

NY, NX, NB = 6, 7, 5
NODATA = -9999
WL = np.array([450.0, 550.5, 650.0, 1400.0, 2200.0])
Y = 4100000.0 - 15.0 - 30.0 * np.arange(NY)
X_ = 500000.0 + 15.0 + 30.0 * np.arange(NX)
UTM = ["UTM", 1.0, 1.0, 500000.0, 4100000.0, 30.0, 30.0, 13, "North", "WGS-84", "units=Meters"]


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    """(y, x, band) int16 with a no-data pixel, a no-data value in one band, negatives."""
    rng = np.random.default_rng(3)
    r = rng.integers(-40, 6000, size=(NY, NX, NB)).astype(np.int16)
    r[0, 0, :] = NODATA
    r[2, 3, 1] = NODATA
    return r


@pytest.fixture(scope="module")
def expected(raw) -> np.ndarray:
    """The float32 reflectances every reader must produce: masked, then raw * 1e-4."""
    return np.where(raw == NODATA, np.nan, raw.astype(np.float64) * 1e-4).astype(np.float32)


def _decoded_dataset(raw: np.ndarray) -> xr.Dataset:
    """The cube as xarray sees it after CF decoding; written with CF int16 packing."""
    values = np.where(raw == NODATA, np.nan, raw * 1e-4)
    ds = xr.Dataset(
        {"reflectance": (("y", "x", "band"), values, {"grid_mapping": "spatial_ref"})},
        coords={"y": Y, "x": X_, "wavelength": ("band", WL / 1000.0, {"units": "um"}),
                "spatial_ref": ((), 0, {"crs_wkt": "WKT-OF-UTM-13N"})},
    )
    ds["reflectance"].encoding.update(dtype="int16", scale_factor=1e-4, _FillValue=NODATA)
    return ds


def write_netcdf(d: Path, raw: np.ndarray) -> tuple[str, str | None]:
    _decoded_dataset(raw).to_netcdf(d / "c.nc", engine="h5netcdf")
    return str(d / "c.nc"), None


def write_zarr(d: Path, raw: np.ndarray) -> tuple[str, str | None]:
    ds = _decoded_dataset(raw)
    ds["other"] = (("y", "x"), np.zeros((NY, NX)))  # a 2-D variable does not compete
    ds.to_zarr(d / "c.zarr", consolidated=False)
    return str(d / "c.zarr"), None


def write_uncompressed_zarr(d: Path, raw: np.ndarray) -> tuple[str, str | None]:
    """As ``write_zarr``, chunks stored as plain bytes: dnmf's raw chunk reader reads them."""
    ds = _decoded_dataset(raw)
    ds["reflectance"].encoding.update(compressors=None, chunks=(4, 3, NB))
    ds.to_zarr(d / "u.zarr", consolidated=False)
    return str(d / "u.zarr"), None


def write_hdf5(d: Path, raw: np.ndarray) -> tuple[str, str | None]:
    with h5py.File(d / "c.h5", "w") as f:
        # stored band-first, as many sensors do; a sibling wavelength dataset names the bands
        dset = f.create_dataset("scene/reflectance", data=raw.transpose(2, 0, 1), chunks=(5, 3, 7))
        dset.attrs["scale_factor"] = 1e-4
        dset.attrs["_FillValue"] = np.int16(NODATA)
        f.create_dataset("scene/wavelength", data=WL).attrs["units"] = "nm"
        f.create_dataset("scene/flat", data=np.zeros((4, 4)))
    return str(d / "c.h5"), "scene/reflectance"


def write_envi_file(d: Path, raw: np.ndarray) -> tuple[str, str | None]:
    write_envi(d / "c.img", raw, interleave="bil", nodata=NODATA, scale_factor=10000.0,
               wavelength=WL, map_info=UTM, crs_wkt="WKT-OF-UTM-13N")
    return str(d / "c.hdr"), None


def write_geotiff(d: Path, raw: np.ndarray) -> tuple[str, str | None]:
    pytest.importorskip("rioxarray")
    band_first = xr.DataArray(raw.transpose(2, 0, 1), dims=("band", "y", "x"),
                              coords={"band": np.arange(1, NB + 1), "y": Y, "x": X_})
    band_first = band_first.rio.write_crs("EPSG:32613")
    band_first.attrs.update(long_name=tuple(f"Band {i + 1} ({w / 1000} um)"
                                            for i, w in enumerate(WL)),
                            scale_factor=1e-4, add_offset=0.0, _FillValue=NODATA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # rioxarray with affine 3
        band_first.rio.to_raster(d / "c.tif", tiled=True, blockxsize=16, blockysize=16)
    return str(d / "c.tif"), None


def write_raw_zarr(d: Path, raw: np.ndarray) -> tuple[str, str | None]:
    """A plain zarr group (no xarray dims): the cube is named with var, wavelengths beside."""
    g = zarr.open_group(d / "raw.zarr", mode="w")
    a = g.create_array("data/cube", shape=raw.shape, chunks=(3, 4, NB), dtype="int16")
    a[:] = raw
    a.attrs.update(scale_factor=1e-4, nodata=NODATA)
    g.create_array("data/wavelength", shape=(NB,), dtype="f8")[:] = WL
    return str(d / "raw.zarr"), "data/cube"


WRITERS: dict[str, Callable[[Path, np.ndarray], tuple[str, str | None]]] = {
    "netcdf": write_netcdf, "zarr": write_zarr, "uncompressed-zarr": write_uncompressed_zarr,
    "hdf5": write_hdf5, "envi": write_envi_file,
    "geotiff": write_geotiff, "raw-zarr": write_raw_zarr,
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_format_gives_the_same_cube(fmt, tmp_path, raw, expected, count_computes):
    path, var = WRITERS[fmt](tmp_path, raw)
    cube = open_cube(path, var=var)
    assert count_computes.calls == 0, "opening must not compute"
    assert isinstance(cube.data, da.Array) and cube.dtype == np.float32
    assert cube.attrs["band_dim"] == cube.dims[2]
    assert cube.attrs["spatial_dims"] == cube.dims[:2]
    assert cube.attrs["source_format"] == fmt.replace("raw-", "").replace("uncompressed-", "")
    assert cube.attrs["stored_dtype"] == "int16" and cube.attrs["source"] == path
    assert cube.data.chunks[2] == (NB,), "all bands in one chunk"
    np.testing.assert_array_equal(cube.values, expected)  # exact, NaN where no data
    np.testing.assert_allclose(cube.wavelength.values, WL, rtol=1e-12)
    assert cube.wavelength.attrs["units"] == "nm"
    for gone in ("scale_factor", "_FillValue", "nodata", "add_offset"):
        assert gone not in cube.attrs  # decoded: opening it again must not scale twice
    if fmt in ("netcdf", "zarr", "uncompressed-zarr", "envi", "geotiff"):
        assert cube.dims == ("y", "x", "band")
        np.testing.assert_allclose(cube.y.values, Y)
        np.testing.assert_allclose(cube.x.values, X_)
        assert "crs_wkt" in cube.attrs
    if fmt in ("netcdf", "zarr", "uncompressed-zarr", "geotiff"):
        assert "spatial_ref" in cube.coords and cube.attrs["grid_mapping"] == "spatial_ref"
    if fmt == "geotiff":
        assert "UTM zone 13N" in cube.attrs["crs_wkt"]
    if fmt == "envi":
        assert cube.attrs["map_info"].startswith("{UTM, 1")
    if fmt == "hdf5":  # stored (band, y, x): the band dim (by its wavelengths) moves last
        assert cube.dims == ("dim_1", "dim_2", "dim_0")
    again = open_cube(cube)
    np.testing.assert_array_equal(again.values, expected)


def _cube_readers(cube: xr.DataArray) -> list[object]:
    """The objects the cube's dask graph reads its tiles from (xarray's lazy arrays)."""
    found = []
    for value in cube.data.dask.values():
        inner = getattr(getattr(value, "array", None), "array", None)
        if inner is not None:
            found.append(inner)
    return found


@pytest.mark.parametrize(("fmt", "raw_reader"), [("zarr", False), ("uncompressed-zarr", True)])
def test_an_xarray_stores_plain_chunks_are_read_by_dnmfs_raw_reader(fmt, raw_reader, tmp_path,
                                                                     raw, expected):
    from dnmf.hyperspectral.cube import _ReaderBackend

    path, var = WRITERS[fmt](tmp_path, raw)
    cube = open_cube(path, var=var)
    readers = _cube_readers(cube)
    assert readers and all(isinstance(r, _ReaderBackend) == raw_reader for r in readers)
    if raw_reader:
        assert all(r.reader.raw is not None for r in readers)
    np.testing.assert_array_equal(cube.values, expected)


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_open_and_prepare_compute_once(fmt, tmp_path, raw, expected, count_computes):
    """Opening, bad bands and the pixel matrix run one dask computation: the counting pass."""
    path, var = WRITERS[fmt](tmp_path, raw)
    cube = open_cube(path, var=var, chunks=(4, 3, NB))
    describe_cube(cube)
    keep = resolve_bad_bands(cube, "auto")  # drops the 1400 nm band
    pm = pixel_matrix(cube, keep)
    pm.to_maps(pm.X)
    assert count_computes.calls == 1
    for name, coord in cube.coords.items():
        assert not isinstance(coord.data, da.Array), f"coordinate {name} must not be dask"
    valid = np.isfinite(expected[..., keep]).all(axis=-1)
    assert pm.n_valid == valid.sum() and pm.X.chunks[1] == (int(keep.sum()),)
    assert pm.n_negative_clipped == int((expected[..., keep][valid] < 0).sum())


def test_in_memory_inputs(raw, expected, count_computes):
    da_raw = xr.DataArray(raw.transpose(2, 0, 1), dims=("band", "row", "col"),
                          attrs={"scale_factor": 1e-4, "_FillValue": NODATA, "crs": "EPSG:1"})
    cube = open_cube(da_raw)
    assert cube.dims == ("row", "col", "band") and cube.attrs["crs"] == "EPSG:1"
    assert count_computes.calls == 0
    np.testing.assert_array_equal(cube.values, expected)
    ds = xr.Dataset({"cube": da_raw, "mask": (("row", "col"), np.ones((NY, NX)))})
    np.testing.assert_array_equal(open_cube(ds).values, expected)
    np.testing.assert_array_equal(open_cube(ds, var="cube").values, expected)
    # a float cube without encoding attrs passes through as float32, NaN kept
    floats = open_cube(xr.DataArray(expected.astype(np.float64), dims=("y", "x", "band")))
    np.testing.assert_array_equal(floats.values, expected)


def test_envi_reflectance_scale_factor_divides(tmp_path):
    raw = np.full((2, 2, 3), 2500, np.int16)
    write_envi(tmp_path / "s.img", raw, scale_factor=10000.0, nodata=0)
    np.testing.assert_array_equal(open_cube(tmp_path / "s.img").values, np.float32(0.25))


def test_cf_offset_and_float_nodata():
    raw = xr.DataArray(np.array([[[1.0, -1.0], [3.0, 4.0]]], np.float32), dims=("y", "x", "band"),
                       attrs={"scale_factor": 2.0, "add_offset": 1.0, "missing_value": -1.0})
    np.testing.assert_array_equal(open_cube(raw).values, [[[3.0, np.nan], [7.0, 9.0]]])


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ({"y": 2, "x": 3}, ((2, 2, 2), (3, 3, 1), (5,))),
        ((4, 7, 2), ((4, 2), (7,), (2, 2, 1))),
        (None, ((6,), (7,), (5,))),
    ],
)
@pytest.mark.parametrize("fmt", ["envi", "netcdf", "hdf5"])
def test_chunks(fmt, chunks, expected, tmp_path, raw):
    path, var = WRITERS[fmt](tmp_path, raw)
    if fmt == "hdf5" and isinstance(chunks, dict):
        chunks = {"dim_1": 2, "dim_2": 3}
    cube = open_cube(path, var=var, chunks=chunks)
    assert cube.data.chunks == expected


def test_default_tiles_follow_the_stored_chunking(tmp_path):
    big = np.zeros((300, 200, 150), np.int16)  # 36 MB as float32: more than one tile
    xr.Dataset({"r": (("y", "x", "band"), big)}).to_zarr(
        tmp_path / "b.zarr", encoding={"r": {"chunks": (7, 200, 150)}}, consolidated=False)
    cube = open_cube(tmp_path / "b.zarr")
    rows = cube.data.chunks[0]
    assert len(rows) > 1 and all(r % 7 == 0 for r in rows[:-1])
    assert cube.data.chunks[1:] == ((200,), (150,))


# --------------------------------------------------------------------------- band dim


@pytest.mark.parametrize(
    ("dims", "shape", "coords", "band_dim", "expected"),
    [
        (("y", "x", "band"), (4, 5, 6), {}, None, "band"),  # by name
        (("Wavelength", "y", "x"), (9, 2, 3), {}, None, "Wavelength"),  # any case
        (("channel", "lat", "lon"), (3, 4, 5), {}, None, "channel"),
        (("a", "b", "c"), (4, 5, 6), {"wl": ("c", [1.0, 2, 3, 4, 5, 6])}, None, "c"),  # coord
        (("a", "b", "c"), (40, 50, 6), {}, None, "c"),  # strictly smallest
        (("a", "b", "c"), (4, 5, 6), {}, "b", "b"),  # explicit
        (("band", "y", "x"), (4, 5, 6), {}, "x", "x"),  # explicit beats the name
    ],
)
def test_band_dim_detection(dims, shape, coords, band_dim, expected):
    cube = open_cube(xr.DataArray(np.ones(shape, np.float32), dims=dims, coords=coords),
                     band_dim=band_dim)
    assert cube.attrs["band_dim"] == expected and cube.dims[-1] == expected
    assert cube.attrs["spatial_dims"] == tuple(d for d in dims if d != expected)


@pytest.mark.parametrize(
    ("dims", "shape", "band_dim", "message"),
    [
        (("a", "b", "c"), (4, 4, 6), None, "cannot tell which dim of the cube (a=4, b=4, c=6)"
                                           " holds the bands — pass --band-dim NAME"),
        (("band", "wavelength", "c"), (4, 4, 6), None, "pass --band-dim NAME"),
        (("a", "b", "c"), (4, 5, 6), "z", "band_dim='z' is not a dim of the cube (a=4, b=5, "
                                          "c=6)"),
        (("a", "b"), (4, 5), None, "the cube must be 3-D (two spatial dims and a band dim); "
                                   "got dims (a=4, b=5)"),
        (("a", "b", "c", "d"), (1, 2, 3, 4), None, "got dims (a=1, b=2, c=3, d=4) — select"),
        (("y", "x", "band"), (0, 2, 3), None, "the cube is empty"),
    ],
)
def test_band_dim_and_shape_errors(dims, shape, band_dim, message):
    with pytest.raises(InputError, match=re.escape(message)):
        open_cube(xr.DataArray(np.ones(shape), dims=dims), band_dim=band_dim)


def test_dataset_variable_errors():
    cube = (("y", "x", "band"), np.ones((2, 3, 4)))
    ds = xr.Dataset({"a": cube, "b": cube})
    with pytest.raises(InputError, match=re.escape("holds 2 3-D variables; pick the cube with "
                                                   "--var (var=): a (2, 3, 4) float64, b")):
        open_cube(ds)
    with pytest.raises(InputError, match=re.escape("no variable 'c' in the Dataset; variables: "
                                                   "a (2, 3, 4)")):
        open_cube(ds, var="c")
    with pytest.raises(InputError, match="no 3-D numeric variable"):
        open_cube(xr.Dataset({"p": (("y",), [1.0]), "q": (("y",), [2.0])}))
    with pytest.raises(InputError, match="does not apply to a DataArray"):
        open_cube(ds["a"], var="zz")
    with pytest.raises(InputError, match="must be numeric"):
        open_cube(xr.DataArray(np.full((2, 2, 2), "s"), dims=("y", "x", "band")))


# --------------------------------------------------------------------------- band coords


@pytest.mark.parametrize(
    ("name", "values", "attrs", "expected"),
    [
        ("wavelength", [400.0, 500, 600], {"units": "nm"}, [400.0, 500, 600]),
        ("wavelengths", [0.4, 0.5, 0.6], {"units": "micrometers"}, [400.0, 500, 600]),
        ("wl", [0.4, 0.5, 0.6], {}, [400.0, 500, 600]),  # no units, < 100: µm
        ("band_wavelength", [400.0, 500, 600], {}, [400.0, 500, 600]),
    ],
)
def test_wavelength_coordinates(name, values, attrs, expected):
    arr = xr.DataArray(np.ones((2, 2, 3), np.float32), dims=("y", "x", "band"),
                       coords={name: ("band", values, attrs),
                               "FWHM": ("band", [0.01, 0.01, 0.02], {"units": "um"}),
                               "bbl": ("band", [1.0, 0.0, 1.0])})
    cube = open_cube(arr)
    np.testing.assert_allclose(cube.wavelength.values, expected)
    np.testing.assert_allclose(cube.fwhm.values, [10.0, 10.0, 20.0])
    np.testing.assert_array_equal(cube.bbl.values, [1, 0, 1])
    assert cube.bbl.dtype == np.int8 and "FWHM" not in cube.coords


def test_band_descriptions_and_band_tags_of_geotiffs(tmp_path):
    pytest.importorskip("rioxarray")
    import rasterio

    arr = xr.DataArray(np.ones((3, 4, 5), np.float32), dims=("band", "y", "x"),
                       coords={"band": [1, 2, 3], "y": np.arange(4.0), "x": np.arange(5.0)})
    arr.attrs["long_name"] = ("450.5", "551", "652")  # bare numbers in nm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # rioxarray with affine 3
        arr.rio.to_raster(tmp_path / "d.tif")
    np.testing.assert_allclose(open_cube(tmp_path / "d.tif").wavelength.values,
                               [450.5, 551, 652])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not georeferenced
        with rasterio.open(tmp_path / "t.tif", "w", driver="GTiff", width=5, height=4, count=3,
                           dtype="float32") as dst:
            dst.write(np.ones((3, 4, 5), np.float32))
            for i, w in enumerate((0.45, 0.55, 0.65), start=1):
                dst.update_tags(i, wavelength=str(w), wavelength_units="Micrometers")
    np.testing.assert_allclose(open_cube(tmp_path / "t.tif").wavelength.values,
                               [450.0, 550.0, 650.0])


def test_geotiff_needs_rioxarray(tmp_path, monkeypatch):
    (tmp_path / "x.tif").write_bytes(b"II*\0")
    monkeypatch.setitem(sys.modules, "rioxarray", None)
    with pytest.raises(InputError, match=re.escape("pip install 'dnmf[geotiff]'")):
        open_cube(tmp_path / "x.tif")


# --------------------------------------------------------------------------- files


def test_file_errors(tmp_path, raw):
    np.save(tmp_path / "c.npy", raw)
    with pytest.raises(InputError, match="is a npy file; hyperspectral cubes are read from"):
        open_cube(tmp_path / "c.npy")
    (tmp_path / "c.xyz").write_bytes(b"nothing known")
    with pytest.raises(InputError, match=re.escape("cannot open")):
        open_cube(tmp_path / "c.xyz")
    with pytest.raises(FileNotFoundError):
        open_cube(tmp_path / "missing.nc")
    path, _ = write_hdf5(tmp_path, raw)
    with pytest.raises(InputError, match=re.escape("no dataset 'nope' in")):
        open_cube(path, var="nope")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((2, 2, 2))
        f["b"] = np.zeros((2, 2, 2))
    with pytest.raises(InputError, match=re.escape("holds 2 3-D datasets; datasets: /a")):
        open_cube(tmp_path / "two.h5")
    path, _ = write_envi_file(tmp_path, raw)
    with pytest.raises(InputError, match="holding one cube; drop --var"):
        open_cube(path, var="x")
    with pytest.raises(InputError, match=re.escape("cannot open a int as a cube")):
        open_cube(3)


def test_describe_cube(tmp_path, raw):
    path, _ = write_envi_file(tmp_path, raw)
    text = describe_cube(open_cube(path))
    assert text == ("cube y=6 x=7 band=5 (42 pixels x 5 bands), band dim band, spatial dims "
                    "(y, x), float32, wavelength 450-2200 nm, source envi; no-data pixels are "
                    "counted when the cube is read")
    assert "\n" not in text
