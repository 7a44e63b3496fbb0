"""Georeferencing end to end: the CRS and transform of ENVI, GeoTIFF and make_scene inputs
reach the Zarr output, the NetCDF copy and the GeoTIFFs, as rioxarray and GDAL read them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from dnmf.datasets import make_scene
from dnmf.errors import OutputError
from dnmf.hyperspectral.envi import write_envi
from dnmf.hyperspectral.georef import grid_of, make_grid, transform_of_coords
from dnmf.hyperspectral.unmix import unmix

rasterio = pytest.importorskip("rasterio")
rioxarray = pytest.importorskip("rioxarray")
from pyproj import CRS  # noqa: E402  (comes with rasterio)

# rioxarray 0.19 with affine 3 warns about its own use of `*`
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

EPSG = 32633
NODATA = -9999.0
FIT = {"max_iter": 60, "tol": 0.0, "scheduler": "threads"}
# the scene's grid: upper-left corner (500000, 5000000), 30 m pixels, north up
TRANSFORM = (500000.0, 30.0, 0.0, 5000000.0, 0.0, -30.0)
UTM_MAP_INFO = ["UTM", 1.0, 1.0, 500000.0, 5000000.0, 30.0, 30.0, 33, "North", "WGS-84",
                "units=Meters"]


@pytest.fixture(scope="module")
def scene():
    return make_scene(rows=36, cols=40, n_endmembers=3, chunks=(18, 20), seed=4)


def write_envi_input(d, scene, *, crs_string: bool):
    cube = scene.reflectance.fillna(NODATA)
    wkt = CRS.from_epsg(EPSG).to_wkt("WKT1_ESRI") if crs_string else None
    write_envi(d / "scene.img", cube, map_info=UTM_MAP_INFO, crs_wkt=wkt, nodata=NODATA,
               wavelength=scene.wavelength.values)
    return str(d / "scene.hdr")


def write_geotiff_input(d, scene):
    band_first = scene.reflectance.fillna(NODATA).transpose("band", "y", "x").drop_vars(
        ["wavelength", "spatial_ref"])
    band_first = band_first.rio.write_crs(f"EPSG:{EPSG}").rio.write_nodata(NODATA)
    band_first.attrs = {"long_name": tuple(f"{w:g} nm" for w in scene.wavelength.values)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        band_first.rio.to_raster(d / "scene.tif", tiled=True, blockxsize=16, blockysize=16)
    return str(d / "scene.tif")


def write_zarr_input(d, scene):
    scene.to_zarr(d / "scene.zarr", zarr_format=3, consolidated=False)
    return str(d / "scene.zarr")


INPUTS = {
    "envi-map-info": lambda d, s: write_envi_input(d, s, crs_string=False),
    "envi-crs-string": lambda d, s: write_envi_input(d, s, crs_string=True),
    "geotiff": write_geotiff_input,
    "make_scene-zarr": write_zarr_input,
}


def assert_grid(crs, transform):
    assert CRS.from_user_input(crs).to_epsg() == EPSG
    np.testing.assert_allclose(tuple(transform)[:6], (30.0, 0.0, 500000.0, 0.0, -30.0,
                                                      5000000.0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt", INPUTS)
def test_crs_and_transform_reach_every_output(fmt, scene, tmp_path):
    source = INPUTS[fmt](tmp_path, scene)
    out, nc = tmp_path / "out.zarr", tmp_path / "out.nc"
    unmix(source, 3, var="reflectance" if fmt.endswith("zarr") else None, output=out,
          netcdf=nc, geotiff=tmp_path / "tif", **FIT)
    stored = xr.open_zarr(out)
    for name in ("abundances", "residual_rmse"):
        assert stored[name].encoding.get("grid_mapping", stored[name].attrs.get(
            "grid_mapping")) == "spatial_ref"
        assert_grid(stored[name].rio.crs, stored[name].rio.transform())
    for name, count in (("abundances", 3), ("residual_rmse", 1)):
        with rasterio.open(f"netcdf:{nc}:{name}") as src:  # GDAL's netCDF driver
            assert src.count == count
            assert_grid(src.crs, src.transform)
    for name in ("abundances", "residual_rmse", "rgb_composite"):
        with rasterio.open(tmp_path / "tif" / f"{name}.tif") as src:
            assert_grid(src.crs, src.transform)
        opened = rioxarray.open_rasterio(tmp_path / "tif" / f"{name}.tif")
        assert_grid(opened.rio.crs, opened.rio.transform())


def test_make_scene_carries_a_full_crs(scene):
    crs = scene.reflectance.rio.crs
    assert crs.to_epsg() == EPSG and "WGS 84" in crs.to_wkt()
    assert tuple(scene.reflectance.rio.transform())[:6] == (30.0, 0.0, 500000.0, 0.0, -30.0,
                                                             5000000.0)


def test_envi_to_geotiff_round_trip_keeps_pure_patches_in_place(scene, tmp_path):
    """A pure patch's pixels land on the same map coordinates in the GeoTIFF as in the
    input, and show one endmember there."""
    source = write_envi_input(tmp_path, scene, crs_string=False)
    result = unmix(source, 3, geotiff=tmp_path / "tif", **FIT)
    # band descriptions are the endmembers' names: the library's match (earthlib names those
    # within its threshold), "endmember i" otherwise
    names = tuple(str(n) for n in result["endmember_name"].values) if (
        "endmember_name" in result.coords) else ("endmember 0", "endmember 1", "endmember 2")
    truth = scene.abundances_true.values
    with np.errstate(invalid="ignore"):
        pure = np.argwhere(np.nan_to_num(truth).max(axis=0) >= 0.999)
    assert len(pure) >= 6
    with rasterio.open(tmp_path / "tif" / "abundances.tif") as src:
        assert src.descriptions == names
        assert src.overviews(1) == [] or all(f > 1 for f in src.overviews(1))
        maps = src.read()
        assert np.isnan(src.nodata)
        picked: dict[int, set[int]] = {}
        for row, col in pure:
            x, y = float(scene.x[col]), float(scene.y[row])  # the input's pixel centre
            assert src.index(x, y) == (row, col)
            assert src.xy(row, col) == pytest.approx((x, y), abs=1e-6)
            values = maps[:, row, col]
            assert values.max() >= 0.9, (row, col, values)
            picked.setdefault(int(np.nanargmax(truth[:, row, col])), set()).add(
                int(values.argmax()))
    # every true endmember's patches show one and the same estimated endmember
    assert all(len(v) == 1 for v in picked.values()) and len(picked) == 3
    with rasterio.open(tmp_path / "tif" / "rgb_composite.tif") as src:
        rgb = src.read()
        assert rgb.dtype == np.uint8 and src.nodata == 0 and rgb.shape == (3, 36, 40)
        assert rgb[0].max() > 200  # a pure patch of the red endmember


def test_geotiff_files_are_cogs_and_refuse_to_be_replaced(scene, tmp_path):
    source = write_envi_input(tmp_path, scene, crs_string=False)
    unmix(source, 3, geotiff=tmp_path / "tif", **FIT)
    from rasterio.env import GDALVersion  # noqa: F401  (GDAL is there)

    with rasterio.open(tmp_path / "tif" / "abundances.tif") as src:
        assert src.profile["tiled"] and src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    with pytest.raises(OutputError, match="already holds abundances.tif"):
        unmix(source, 3, geotiff=tmp_path / "tif", **FIT)


def test_grid_helpers():
    assert transform_of_coords(np.array([1.0, 2.0, 4.0]), np.array([0.0, 1.0])) is None
    grid = make_grid(f"EPSG:{EPSG}", TRANSFORM)
    assert grid.pixel_to_map(0.5, 0.5) == (500015.0, 4999985.0)
    rotated = xr.DataArray(np.zeros((2, 2, 3)), dims=("y", "x", "band"),
                           attrs={"map_info": UTM_MAP_INFO[:7] + ["rotation=30"]})
    assert grid_of(rotated) is None  # a rotated ENVI grid without a CRS: nothing guessed


def test_geotiff_dir_never_writes_over_the_cube(scene, tmp_path):
    source = write_geotiff_input(tmp_path, scene)
    renamed = tmp_path / "abundances.tif"
    Path(source).rename(renamed)
    with pytest.raises(OutputError, match="GeoTIFF directory .* would write abundances.tif "
                                          "over the cube"):
        unmix(str(renamed), 3, geotiff=tmp_path, **FIT)
    assert renamed.is_file()


def test_a_cut_out_cube_gets_its_own_transform(scene):
    """The spatial_ref of the whole scene travels with a slice; the slice's coordinates win."""
    part = scene.reflectance.isel(y=slice(6, 20), x=slice(10, 30))
    grid = grid_of(part)
    assert grid.transform == (500000.0 + 10 * 30, 30.0, 0.0, 5000000.0 - 6 * 30, 0.0, -30.0)
    assert grid_of(scene.reflectance).transform == TRANSFORM
    result = unmix(part, 3, **FIT)
    assert tuple(result["abundances"].rio.transform())[:6] == (30.0, 0.0, 500300.0, 0.0, -30.0,
                                                               4999820.0)
