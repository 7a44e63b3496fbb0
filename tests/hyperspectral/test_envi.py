"""ENVI header parsing, lazy reading through ENVIReader, and write_envi round trips,
cross-checked against Spectral Python (``spectral.open_image``)."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from dnmf.errors import InputError
from dnmf.hyperspectral.envi import (
    ENVIReader,
    find_envi_files,
    open_envi,
    parse_map_info,
    read_envi_header,
    write_envi,
)

UTM = ["UTM", 1.0, 1.0, 500000.0, 4100000.0, 30.0, 30.0, 13, "North", "WGS-84", "units=Meters"]
WKT = 'PROJCS["WGS 84 / UTM zone 13N",GEOGCS["WGS 84"],UNIT["metre",1]]'


def make_cube(dtype: str, shape=(7, 9, 5), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        x = rng.gamma(2.0, 0.1, size=shape).astype(dtype)
        x[0, 0, :] = -9999.0
    else:
        x = rng.integers(-200, 5000, size=shape).astype(dtype)
        x[0, 0, :] = -9999
    return x


def spy_load(img, scale: bool = True) -> np.ndarray:
    """What SPy reads: raw values in the stored dtype (its own memmap) or, with ``scale``,
    its scaled float32 ``load`` as a plain ndarray."""
    if not scale:
        return np.array(img.open_memmap(interleave="bip"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # SPy's old __array_wrap__
        return np.array(img.load()).view(np.ndarray)


def write_header(path: Path, text: str) -> Path:
    path.write_text("ENVI\n" + text)
    return path


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ["int16", "float32", "uint16", "float64"])
@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_round_trip_matches_spectral_python(tmp_path, interleave, dtype):
    spectral = pytest.importorskip("spectral")
    x = make_cube("int16" if dtype == "uint16" else dtype)
    if dtype == "uint16":
        x = np.abs(x).astype(np.uint16)
    wl = np.linspace(400.5, 2400.25, x.shape[2])
    bbl = np.array([1, 1, 0, 1, 1])
    write_envi(tmp_path / "scene.img", x, interleave=interleave, nodata=-9999,
               wavelength=wl, bbl=bbl, scale_factor=10000.0, map_info=UTM, crs_wkt=WKT)
    cube = open_envi(tmp_path / "scene.hdr")
    assert cube.dims == ("y", "x", "band") and isinstance(cube.data, da.Array)
    assert cube.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(cube.values, x)
    np.testing.assert_array_equal(cube.wavelength.values, wl)
    np.testing.assert_array_equal(cube.bbl.values, bbl)
    assert cube.attrs == {
        "source_format": "envi", "interleave": interleave, "nodata": -9999,
        "scale_factor": 10000.0, "map_info": cube.attrs["map_info"], "crs_wkt": WKT,
    }
    # the independent reader agrees, raw values (scale=False) and its own scaling alike
    img = spectral.open_image(str(tmp_path / "scene.hdr"))
    raw_spy = spy_load(img, scale=False)
    assert raw_spy.dtype == x.dtype
    np.testing.assert_array_equal(raw_spy, x)
    if x.dtype.kind in "iu":  # SPy applies the reflectance scale factor to integers only
        np.testing.assert_allclose(spy_load(img), x / 10000.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(img.bands.centers), wl)
    assert img.shape == x.shape


@pytest.mark.parametrize("chunks", [(2, 3, 5), (7, 9, 2), (3, 9, 1), {"y": 4, "x": 5}])
@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_any_chunking_reads_the_same(tmp_path, interleave, chunks):
    x = make_cube("int16")
    write_envi(tmp_path / "s.bsq", x, interleave=interleave)
    cube = open_envi(tmp_path / "s.bsq", chunks=chunks)
    np.testing.assert_array_equal(cube.values, x)
    # integer and partial indexing go through the reader too
    assert int(cube[3, 4, 2]) == x[3, 4, 2]
    np.testing.assert_array_equal(cube[1:5, -3:, 1].values, x[1:5, -3:, 1])


def test_default_chunks_keep_all_bands_in_one_chunk(tmp_path):
    x = make_cube("int16", shape=(40, 30, 12))
    write_envi(tmp_path / "s.img", x)
    cube = open_envi(tmp_path / "s.img")
    assert cube.data.chunks[2] == (12,)
    # tiles of ~32 MiB: this small cube is a single tile
    assert cube.data.numblocks == (1, 1, 1)


def test_open_computes_nothing_and_the_graph_holds_no_memmap(tmp_path):
    x = make_cube("float32")
    write_envi(tmp_path / "s.img", x, interleave="bil")
    with dask.config.set(scheduler=_refuse):
        cube = open_envi(tmp_path / "s.img", chunks=(3, 4, 5))
    graph = dict(cube.data.__dask_graph__())
    blob = pickle.dumps(graph)
    assert b"memmap" not in blob
    assert len(blob) < 4000  # path, offsets and shapes only: not the file's 1 KiB of data x N
    readers = [v for v in graph.values() if isinstance(v, ENVIReader)]
    assert readers and pickle.loads(pickle.dumps(readers[0]))[0:2, 0:2, 0:5].shape == (2, 2, 5)


def _refuse(*args, **kwargs):
    raise AssertionError("opening must not compute")


def test_write_envi_from_dask_and_from_dataarray(tmp_path):
    x = make_cube("float32")
    write_envi(tmp_path / "a.img", da.from_array(x, chunks=(3, 4, 2)), interleave="bip")
    np.testing.assert_array_equal(open_envi(tmp_path / "a.img").values, x)
    # a DataArray carries its coordinates and attrs into the header
    first = open_envi(tmp_path / "a.img")
    first = first.assign_coords(wavelength=("band", np.arange(5) * 100.0 + 400),
                                fwhm=("band", np.full(5, 10.0)))
    first.attrs.update(nodata=-9999.0, map_info="{UTM, 1, 1, 0, 0, 1, 1, 13, North}")
    write_envi(tmp_path / "b.hdr", first.transpose("band", "y", "x"), interleave="bsq",
               dtype="float64")
    again = open_envi(tmp_path / "b.img")
    assert again.dtype == np.float64
    np.testing.assert_array_equal(again.values, x)
    np.testing.assert_array_equal(again.fwhm.values, np.full(5, 10.0))
    assert again.attrs["nodata"] == -9999.0
    np.testing.assert_array_equal(again.x.values, np.arange(9) + 0.5)


def test_big_endian_and_header_offset(tmp_path):
    spectral = pytest.importorskip("spectral")
    x = make_cube("int16")
    stored = np.ascontiguousarray(x.transpose(0, 2, 1)).astype(">i2")  # bil
    (tmp_path / "be.dat").write_bytes(b"\0" * 128 + stored.tobytes())
    write_header(tmp_path / "be.hdr",
                 "samples = 9\nlines = 7\nbands = 5\nheader offset = 128\n"
                 "data type = 2\ninterleave = BIL\nbyte order = 1\n")
    cube = open_envi(tmp_path / "be.dat")
    assert cube.dtype == np.dtype("int16") and cube.dtype.isnative
    np.testing.assert_array_equal(cube.values, x)
    img = spectral.open_image(str(tmp_path / "be.hdr"))
    np.testing.assert_array_equal(spy_load(img, scale=False), x)


# --------------------------------------------------------------------------- header


def test_header_parsing(tmp_path):
    write_header(tmp_path / "h.hdr", """description = {A scene,
  over two lines}
; a comment line
Samples = 4
lines   = 3
bands = 3
header offset = 0
data type = 12
Interleave = bip
byte order = 0
wavelength units = Micrometers
Wavelength = {
 0.45, 0.55,
 0.65 }
fwhm = {0.01, 0.01, 0.02}
bbl = {1, 0, 1}
data ignore value = -1
reflectance scale factor = 10000
map info = {UTM, 1.5, 1.5, 100.0, 200.0, 2.0, 3.0, 13, North, WGS-84, units=Meters}
coordinate system string = {PROJCS["x",GEOGCS["y"]]}
band names = {Band 1, Band 2, Band 3}
""")
    h = read_envi_header(tmp_path / "h.hdr")
    assert (h["samples"], h["lines"], h["bands"], h["data type"]) == (4, 3, 3, 12)
    assert h["interleave"] == "bip" and h["byte order"] == 0
    np.testing.assert_allclose(h["wavelength"], [450.0, 550.0, 650.0])
    np.testing.assert_allclose(h["fwhm"], [10.0, 10.0, 20.0])
    assert h["wavelength units"] == "Nanometers"
    np.testing.assert_array_equal(h["bbl"], [1.0, 0.0, 1.0])
    assert h["data ignore value"] == -1 and h["reflectance scale factor"] == 10000
    assert h["map info"][:3] == ["UTM", 1.5, 1.5] and h["map info"][7] == 13
    assert h["coordinate system string"] == 'PROJCS["x",GEOGCS["y"]]'
    assert h["band names"] == ["Band 1", "Band 2", "Band 3"]
    assert h["description"].startswith("A scene")


@pytest.mark.parametrize(
    ("units", "values", "expected"),
    [
        ("Nanometers", "400, 500", [400.0, 500.0]),
        ("micrometers", "0.4, 0.5", [400.0, 500.0]),
        (None, "0.4, 0.5", [400.0, 500.0]),  # no units, values < 100: micrometres
        (None, "400, 500", [400.0, 500.0]),
        ("Unknown", "1.2, 2.4", [1200.0, 2400.0]),
    ],
)
def test_wavelength_units(tmp_path, units, values, expected):
    text = "samples = 1\nlines = 1\nbands = 2\ndata type = 4\n"
    text += f"wavelength units = {units}\n" if units else ""
    write_header(tmp_path / "w.hdr", text + f"wavelength = {{{values}}}\n")
    np.testing.assert_allclose(read_envi_header(tmp_path / "w.hdr")["wavelength"], expected)


def test_index_units_give_no_wavelength_coordinate(tmp_path):
    np.zeros((1, 1, 2), np.float32).tofile(tmp_path / "i.img")
    write_header(tmp_path / "i.hdr", "samples = 1\nlines = 1\nbands = 2\ndata type = 4\n"
                 "wavelength units = Index\nwavelength = {1, 2}\n")
    assert "wavelength" not in open_envi(tmp_path / "i.hdr").coords


@pytest.mark.parametrize(
    ("binary", "header"),
    [("s.img", "s.hdr"), ("s.img", "s.img.hdr"), ("s", "s.hdr"), ("s.RAW", "s.hdr"),
     ("s.bil", "s.bil.hdr")],
)
def test_find_envi_files_from_either_path(tmp_path, binary, header):
    (tmp_path / binary).write_bytes(b"\0" * 4)
    write_header(tmp_path / header, "samples = 1\nlines = 1\nbands = 1\ndata type = 4\n")
    expected = (tmp_path / header, tmp_path / binary)
    assert find_envi_files(tmp_path / header) == expected
    assert find_envi_files(tmp_path / binary) == expected
    assert open_envi(tmp_path / binary).shape == (1, 1, 1)


def test_map_info_gives_pixel_centres(tmp_path):
    x = make_cube("int16", shape=(3, 4, 2))
    write_envi(tmp_path / "m.img", x, map_info=UTM)
    cube = open_envi(tmp_path / "m.img")
    # reference pixel (1, 1) is the upper-left corner of the upper-left pixel
    np.testing.assert_array_equal(cube.x.values, 500000.0 + 15.0 + 30.0 * np.arange(4))
    np.testing.assert_array_equal(cube.y.values, 4100000.0 - 15.0 - 30.0 * np.arange(3))
    # a reference at the first pixel's centre (1.5, 1.5)
    write_envi(tmp_path / "c.img", x, map_info="UTM, 1.5, 1.5, 10.0, 20.0, 2.0, 4.0, 13, North")
    centred = open_envi(tmp_path / "c.img")
    np.testing.assert_array_equal(centred.x.values, [10.0, 12.0, 14.0, 16.0])
    np.testing.assert_array_equal(centred.y.values, [20.0, 16.0, 12.0])
    # rotated grids keep the text but get no 1-D coordinates
    write_envi(tmp_path / "r.img", x, map_info=[*UTM, "rotation=30.0"])
    rotated = open_envi(tmp_path / "r.img")
    assert "x" not in rotated.coords and "rotation=30.0" in rotated.attrs["map_info"]


def test_parse_map_info():
    info = parse_map_info("{UTM, 1, 1, 500000, 4100000, 30, 30, 13, North, WGS-84, "
                          "units=Meters, rotation=10}")
    assert info == {"projection": "UTM", "ref_x": 1.0, "ref_y": 1.0, "easting": 500000.0,
                    "northing": 4100000.0, "dx": 30.0, "dy": 30.0, "rotation": 10.0,
                    "zone": 13, "hemisphere": "North", "datum": "WGS-84", "units": "Meters"}
    with pytest.raises(InputError, match=re.escape("has 3 fields, needs at least 7")):
        parse_map_info(["UTM", 1, 1])


# --------------------------------------------------------------------------- errors


BASE = "samples = 2\nlines = 2\nbands = 2\ndata type = 4\n"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("lines = 2\nbands = 2\ndata type = 4\n", "lacks the required field(s) 'samples'"),
        ("samples = 2\nlines = 2\nbands = 2\n", "lacks the required field(s) 'data type'"),
        (BASE.replace("4", "6"), "complex data type 6 is not supported"),
        (BASE + "interleave = bxq\n", "interleave 'bxq' is not bsq, bil or bip"),
        (BASE + "wavelength = {1, 2, 3}\n", "lists 3 wavelength values for 2 bands"),
        (BASE + "wavelength = {400, 500\n", "opens '{' but never closes it"),
        (BASE + "samples two\n", "line 6 ('samples two') is not 'key = value'"),
        (BASE.replace("= 2\nlines", "= two\nlines"), "'samples' must be an integer, got 'two'"),
        (BASE + "fwhm = {1, x}\n", "'fwhm' must list numbers"),
    ],
)
def test_malformed_headers(tmp_path, header, message):
    np.zeros((2, 2, 2), np.float32).tofile(tmp_path / "e.img")
    write_header(tmp_path / "e.hdr", header)
    with pytest.raises(InputError, match=re.escape(message)) as info:
        open_envi(tmp_path / "e.img")
    assert "e.hdr" in str(info.value)


def test_not_an_envi_header(tmp_path):
    (tmp_path / "x.hdr").write_text("samples = 2\n")
    with pytest.raises(InputError, match="first line must be 'ENVI'"):
        read_envi_header(tmp_path / "x.hdr")


def test_truncated_binary(tmp_path):
    np.zeros(7, np.float32).tofile(tmp_path / "t.img")
    write_header(tmp_path / "t.hdr", BASE)
    with pytest.raises(InputError, match=re.escape("holds 28 bytes but its header describes 32")):
        open_envi(tmp_path / "t.hdr")


def test_missing_sibling_files(tmp_path):
    write_header(tmp_path / "lonely.hdr", BASE)
    with pytest.raises(InputError, match="has no binary file beside it"):
        open_envi(tmp_path / "lonely.hdr")
    (tmp_path / "data.img").write_bytes(b"\0" * 32)
    with pytest.raises(InputError, match=re.escape("has no ENVI header beside it (data.hdr")):
        open_envi(tmp_path / "data.img")
    with pytest.raises(FileNotFoundError):
        open_envi(tmp_path / "nothing.hdr")


def test_write_envi_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match="ENVI cannot store dtype bool"):
        write_envi(tmp_path / "b.img", np.zeros((2, 2, 2), bool))
    with pytest.raises(InputError, match="interleave='xyz'"):
        write_envi(tmp_path / "b.img", np.zeros((2, 2, 2)), interleave="xyz")
    with pytest.raises(InputError, match="wavelength has 3 values for 2 bands"):
        write_envi(tmp_path / "b.img", np.zeros((2, 2, 2)), wavelength=[1, 2, 3])
    with pytest.raises(InputError, match=re.escape("got (2, 2)")):
        write_envi(tmp_path / "b.img", xr.DataArray(np.zeros((2, 2))))
