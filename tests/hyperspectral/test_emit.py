"""EMIT L2A reflectance as NASA lays it out: a swath cube with its bands' wavelengths and
good-band flags in groups, placed on the orthorectified grid through the GLT."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from dnmf.datasets import make_scene
from dnmf.errors import InputError
from dnmf.hyperspectral.cube import open_cube
from dnmf.hyperspectral.metrics import match_endmembers
from dnmf.hyperspectral.unmix import unmix

FILL = -9999.0
GEOTRANSFORM = [10.0, 0.0005, 0.0, 50.0, 0.0, -0.0005]
WGS84 = ('GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
         'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]')
ROWS, COLS, PAD = 30, 34, 2  # the ortho grid: the scene plus PAD rows outside the swath
BAD = [0, 1, 178, 179]  # flagged 0 in good_wavelengths, and garbage in the file
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # rioxarray


@pytest.fixture(scope="module")
def emit_file(tmp_path_factory):
    """An EMIT L2A RFL file whose swath is the scene turned by 90 degrees."""
    scene = make_scene(rows=ROWS, cols=COLS, n_endmembers=3, chunks=(15, 17), seed=5)
    ortho = scene.reflectance.values
    n_bands = ortho.shape[2]
    i, j = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
    down, cross = j, ROWS - 1 - i  # swath pixel of each ortho pixel
    swath = np.empty((COLS, ROWS, n_bands), dtype=np.float32)
    swath[down, cross] = ortho[i, j]
    valid = ~np.isnan(ortho[..., 0])
    swath[np.isnan(swath)] = FILL
    swath[..., BAD] = np.random.default_rng(0).uniform(-0.1, 5.0, (COLS, ROWS, len(BAD)))
    glt_x = np.zeros((ROWS + PAD, COLS), dtype=np.int32)  # 0: no swath pixel
    glt_y = np.zeros((ROWS + PAD, COLS), dtype=np.int32)
    glt_x[:ROWS][valid] = cross[valid] + 1  # 1-based
    glt_y[:ROWS][valid] = down[valid] + 1
    good = np.ones(n_bands, dtype=np.uint8)
    good[BAD] = 0

    path = tmp_path_factory.mktemp("emit") / "EMIT_L2A_RFL_001_20230101T000000_2300100_001.nc"
    root = xr.Dataset(
        {"reflectance": (("downtrack", "crosstrack", "bands"), swath,
                         {"long_name": "Surface Reflectance", "units": "unitless"})},
        attrs={"geotransform": np.asarray(GEOTRANSFORM), "spatial_ref": WGS84,
               "title": "EMIT L2A Estimated Surface Reflectance 60 m V001"})
    root.to_netcdf(path, engine="h5netcdf", encoding={"reflectance": {"_FillValue": FILL}})
    xr.Dataset({
        "wavelengths": ("bands", scene.wavelength.values.astype(np.float32),
                        {"long_name": "Wavelength Centers", "units": "nm"}),
        "fwhm": ("bands", np.full(n_bands, 8.5, np.float32), {"units": "nm"}),
        "good_wavelengths": ("bands", good, {"long_name": "Flag of good wavelengths"}),
    }).to_netcdf(path, group="sensor_band_parameters", mode="a", engine="h5netcdf")
    xr.Dataset({
        "glt_x": (("ortho_y", "ortho_x"), glt_x, {"long_name": "GLT Sample Lookup"}),
        "glt_y": (("ortho_y", "ortho_x"), glt_y, {"long_name": "GLT Line Lookup"}),
        "lat": (("downtrack", "crosstrack"), np.zeros((COLS, ROWS))),
        "lon": (("downtrack", "crosstrack"), np.zeros((COLS, ROWS))),
    }).to_netcdf(path, group="location", mode="a", engine="h5netcdf")
    truth = np.full((3, ROWS + PAD, COLS), np.nan)
    truth[:, :ROWS] = scene.abundances_true.values
    return path, scene, truth


def test_emit_swath_cube_has_wavelengths_bad_bands_and_fill(emit_file):
    path, scene, _ = emit_file
    cube = open_cube(path)
    assert cube.dims == ("downtrack", "crosstrack", "bands")
    assert cube.attrs["source_format"] == "emit"
    np.testing.assert_allclose(cube.wavelength.values, scene.wavelength.values, rtol=1e-6)
    assert np.flatnonzero(cube.bbl.values == 0).tolist() == BAD
    assert int(np.isnan(cube.values[..., 5]).sum()) == int(np.isnan(
        scene.reflectance.values[..., 5]).sum())  # the fill value is no-data


def test_emit_unmixes_to_the_truth_on_the_orthorectified_grid(emit_file, tmp_path):
    rioxarray = pytest.importorskip("rioxarray")  # noqa: F841
    path, scene, truth = emit_file
    out = tmp_path / "emit.zarr"
    unmix(path, 3, ortho=True, output=out, max_iter=150, tol=0.0, scheduler="threads")
    result = xr.open_zarr(out)
    abundances = result["abundances"]
    assert abundances.dims == ("endmember", "latitude", "longitude")
    np.testing.assert_allclose(result.latitude.values[:2], [49.99975, 49.99925])
    assert abundances.rio.crs.to_epsg() == 4326
    assert tuple(abundances.rio.transform())[:6] == pytest.approx(
        (0.0005, 0.0, 10.0, 0.0, -0.0005, 50.0))
    estimated = abundances.values
    np.testing.assert_array_equal(np.isnan(estimated), np.isnan(truth))  # GLT 0 -> NaN
    assert np.isnan(result["endmembers"].values[:, BAD]).all()  # good_wavelengths applied
    matching = match_endmembers(result["endmembers"].values, scene.endmembers_true.values)
    assert matching.angles_deg.max() < 2.0, matching.angles_deg
    paired = estimated[matching.estimated_index] - truth[matching.reference_index]
    assert np.sqrt(np.nanmean(paired**2)) < 0.05


def test_ortho_needs_a_glt(tmp_path):
    scene = make_scene(rows=10, cols=10, n_endmembers=2, chunks=10)
    with pytest.raises(InputError, match="--ortho needs a geometry lookup table"):
        unmix(scene.reflectance, 2, ortho=True, scheduler="threads")
