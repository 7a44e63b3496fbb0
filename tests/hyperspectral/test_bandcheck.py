"""Bad bands without a list: the auto default, noisy bands found in the data, --bad-bands
none, and integers that look unscaled (--scale-factor)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from dnmf.datasets import make_scene
from dnmf.errors import DnmfWarning, InputError
from dnmf.hyperspectral.bandcheck import (
    MIN_BAND_SNR,
    band_statistics,
    describe_bands,
    noisy_bands,
    screen_bands,
)
from dnmf.hyperspectral.cube import open_cube
from dnmf.hyperspectral.envi import write_envi
from dnmf.hyperspectral.metrics import match_endmembers
from dnmf.hyperspectral.unmix import unmix
from tests.test_cli import run_cli

pytest.importorskip("rioxarray")
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # rioxarray

FIT = {"max_iter": 150, "tol": 0.0, "scheduler": "threads"}
NODATA = -9999.0
# wavelengths of the garbage bands: inside 400-2450 nm and outside the water windows, so
# only the data can tell that they are noise
GARBAGE_NM = np.array([612.5, 1012.5, 1512.5, 2012.5, 2212.5])


@pytest.fixture(scope="module")
def scene():
    return make_scene(rows=48, cols=48, n_endmembers=4, chunks=24, seed=2)


def write_geotiff(path, values: np.ndarray, wavelength: np.ndarray, scene, nodata=NODATA):
    """A (y, x, band) array as a GeoTIFF with wavelengths in the band descriptions and no
    bad-band list, as GDAL makes it from an ENVI file."""
    band_first = xr.DataArray(np.moveaxis(values, 2, 0), dims=("band", "y", "x"),
                              coords={"y": scene.y.values, "x": scene.x.values})
    band_first = band_first.rio.write_crs("EPSG:32633").rio.write_nodata(nodata)
    band_first.attrs["long_name"] = tuple(f"{w:g} nm" for w in wavelength)
    band_first.rio.to_raster(path, tiled=True, blockxsize=16, blockysize=16)
    return str(path)


@pytest.fixture(scope="module")
def with_garbage(scene, tmp_path_factory):
    """The scene plus 5 bands of uniform noise, sorted by wavelength, as a GeoTIFF."""
    d = tmp_path_factory.mktemp("garbage")
    values = scene.reflectance.fillna(NODATA).values
    rng = np.random.default_rng(0)
    garbage = rng.uniform(0.0, 0.5, size=(*values.shape[:2], GARBAGE_NM.size))
    garbage[np.isnan(scene.reflectance.values[..., 0])] = NODATA
    wavelength = np.concatenate([scene.wavelength.values, GARBAGE_NM])
    order = np.argsort(wavelength, kind="stable")
    stacked = np.concatenate([values, garbage.astype(np.float32)], axis=2)[..., order]
    path = write_geotiff(d / "garbage.tif", stacked, wavelength[order], scene)
    return path, np.flatnonzero(np.isin(wavelength[order], GARBAGE_NM))


def test_geotiff_with_garbage_bands_unmixes_like_the_envi_file(scene, with_garbage, tmp_path):
    envi = tmp_path / "scene.img"
    write_envi(envi, scene.reflectance.fillna(NODATA), nodata=NODATA,
               wavelength=scene.wavelength.values, bbl=np.ones(scene.sizes["band"]))
    reference = unmix(str(envi.with_suffix(".hdr")), 4, **FIT)
    path, garbage = with_garbage
    lines: list[str] = []
    result = unmix(path, 4, on_message=lines.append, **FIT)  # no option given
    assert [line.split(":")[0] for line in lines] == ["note", "warning"]
    assert "no bad-band list (bbl): --bad-bands auto" in lines[0]
    assert lines[1].startswith("warning: 5 bands left out as noise")
    assert result.attrs["noisy_bands"] == garbage.tolist()
    assert result.attrs["bad_bands_rule"] == "auto" and result.attrs["notes"] == lines
    assert np.isnan(result["endmembers"].values[:, garbage]).all()
    scene_bands = np.setdiff1d(np.arange(result.sizes["band"]), garbage)
    matching = match_endmembers(result["endmembers"].values[:, scene_bands],
                                reference["endmembers"].values)
    assert matching.angles_deg.max() < 1.0, matching.angles_deg
    # the same file with every band used is far off: the test could fail
    kept_all = unmix(path, 4, bad_bands="none", on_message=lines.append, **FIT)
    assert kept_all.attrs["noisy_bands"] == [] and len(lines) == 2  # nothing said
    worse = match_endmembers(kept_all["endmembers"].values[:, scene_bands],
                             reference["endmembers"].values)
    assert worse.angles_deg.max() > 1.0


def test_noisy_bands_scores(scene):
    cube = open_cube(scene.reflectance)
    values = cube.values.copy()
    values[..., 10] = 0.3  # constant
    values[..., 20] = np.random.default_rng(1).uniform(0, 0.4, values.shape[:2])  # noise
    values[..., 30] = -np.abs(values[..., 30])  # negative
    values[..., 40] = np.nan  # no data: it must not make every pixel incomplete
    stats = band_statistics(open_cube(xr.DataArray(values, dims=("y", "x", "band"))))
    assert stats.n_pixels == int(np.isfinite(values[..., 0]).sum())
    keep = np.ones(values.shape[2], dtype=bool)
    noisy, snr = noisy_bands(stats, keep)
    assert np.flatnonzero(noisy).tolist() == [10, 20, 30, 40]
    assert snr[20] < MIN_BAND_SNR < np.nanmin(np.delete(snr, [10, 20, 30, 40]))
    # a band not kept is neither judged nor used
    keep[20] = False
    noisy, snr = noisy_bands(stats, keep)
    assert np.flatnonzero(noisy).tolist() == [10, 30, 40] and np.isnan(snr[20])
    assert describe_bands(np.array([3, 4, 7]), None) == "3-4, 7"
    # too few pixels for the regression: only the constant and negative bands are judged
    few = band_statistics(open_cube(xr.DataArray(values[:12, :12], dims=("y", "x", "band"))))
    noisy, snr = noisy_bands(few, np.ones(values.shape[2], dtype=bool))
    assert np.flatnonzero(noisy).tolist() == [10, 30, 40] and np.isnan(snr).all()


def test_explicit_lists_and_bbl_read_nothing_more(scene):
    cube = open_cube(scene.reflectance.assign_coords(bbl=("band", np.r_[0, np.ones(179)])))
    screen = screen_bands(cube)
    assert screen.rule == "bbl" and screen.messages == [] and not screen.keep[0]
    screen = screen_bands(open_cube(scene.reflectance), "0-2")
    assert screen.rule == "list" and screen.keep[:3].sum() == 0 and screen.messages == []
    no_wl = open_cube(scene.reflectance.drop_vars("wavelength"))
    assert screen_bands(no_wl).rule == "all" and screen_bands(no_wl).keep.all()


def test_int16_without_scale_factor_is_named_and_scale_factor_fixes_it(scene, tmp_path):
    values = scene.reflectance.values
    stored = np.where(np.isnan(values), -1, np.round(values * 10000)).astype(np.int16)
    path = write_geotiff(tmp_path / "int16.tif", stored, scene.wavelength.values, scene,
                         nodata=-1)
    with pytest.warns(DnmfWarning, match=r"int16 values up to \d+ with no scale factor.*"
                                         r"--scale-factor F"):
        unmix(path, 4, max_iter=2, scheduler="threads")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DnmfWarning)
        scaled = unmix(path, 4, scale_factor=1e-4, bad_bands="none", max_iter=2,
                       scheduler="threads")
    assert scaled.attrs["notes"] == []
    cube = open_cube(path, scale_factor=1e-4)
    expected = np.where(stored == -1, np.nan, stored * 1e-4).astype(np.float32)
    np.testing.assert_array_equal(cube.values, expected)  # both the float32 of value * 1e-4
    with pytest.raises(InputError, match="scale factor must be a positive number"):
        open_cube(path, scale_factor=0)


def test_cli_prints_the_note_and_the_warning(with_garbage, tmp_path):
    path, _ = with_garbage
    out = tmp_path / "out.zarr"
    proc = run_cli("unmix", path, "-k", "4", "-o", str(out), "--max-iter", "3",
                   "--scheduler", "threads", "--geotiff", str(tmp_path / "tif"))
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith(("note:", "warning:"))]
    assert notes[0].startswith("note: the input has no bad-band list")
    assert notes[1].startswith("warning: 5 bands left out as noise")
    assert (tmp_path / "tif" / "abundances.tif").is_file()
    proc = run_cli("unmix", path, "-k", "4", "-o", str(tmp_path / "b.zarr"),
                   "--scale-factor", "-1")
    assert proc.returncode == 1 and proc.stderr.startswith("error: the scale factor must be")
    assert "Traceback" not in proc.stderr and not (tmp_path / "b.zarr").exists()


def test_the_gram_is_sampled_beyond_max_pixels(scene):
    cube = open_cube(scene.reflectance)
    full = band_statistics(cube)
    sampled = band_statistics(cube, max_pixels=500)
    assert sampled.n_pixels == full.n_pixels > 2000
    assert 400 <= sampled.n_sampled <= 700  # every 5th pixel of each tile
    np.testing.assert_array_equal(sampled.maximum, full.maximum)  # ranges see every pixel
    np.testing.assert_allclose(sampled.mean, full.mean, rtol=0.05)
