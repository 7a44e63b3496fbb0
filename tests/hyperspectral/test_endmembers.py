"""Endmember extraction: N-FINDR and ATGP recover pure-pixel scenes, pixel locations are the
cube's, ``dnmf endmembers`` writes a library that reads back."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from dnmf.datasets import make_scene
from dnmf.errors import InputError
from dnmf.hyperspectral.endmembers import METHODS, extract_endmembers
from dnmf.hyperspectral.library import load_library
from dnmf.hyperspectral.metrics import match_endmembers
from dnmf.separable import simplex_cofactors
from tests.test_cli import run_cli


@pytest.fixture(scope="module", params=[0, 1])
def pure_scene(request):
    """Pure patches of every endmember, 50 dB: the vertices are pixels of the cube."""
    return make_scene(rows=80, cols=80, n_endmembers=5, seed=request.param, chunks=40,
                      snr_db=50.0).compute()


@pytest.mark.parametrize("method", ["nfindr", "atgp"])
def test_recovers_pure_pixel_scenes_within_2_degrees(pure_scene, method):
    found = extract_endmembers(pure_scene.reflectance, 5, method=method, scheduler="threads")
    angles = match_endmembers(found.spectra, pure_scene.endmembers_true.values).angles_deg
    assert angles.max() < 2.0, angles
    # the pixels are where the spectra came from: mostly one endmember there
    rows, cols = found.pixels.T
    purity = pure_scene.abundances_true.values[:, rows, cols].max(axis=0)
    assert purity.min() > 0.9, purity
    np.testing.assert_array_equal(found.coords[:, 0], pure_scene.y.values[rows])


def test_every_method_on_a_cube_with_nodata_and_bad_bands():
    scene = make_scene(rows=60, cols=70, n_endmembers=3, seed=4, chunks=(30, 35),
                       snr_db=50.0).compute()
    for method in METHODS:
        found = extract_endmembers(scene.reflectance, 3, method=method, bad_bands="0-4",
                                   scheduler="threads")
        assert np.isnan(found.spectra[:, :5]).all() and np.isfinite(found.spectra[:, 5:]).all()
        pixels = scene.reflectance.values[found.pixels[:, 0], found.pixels[:, 1]]
        assert np.isfinite(pixels).all()  # never a no-data pixel
        # the spectrum is its pixel denoised: within the noise of the pixel itself
        cos = np.sum(pixels[:, 5:] * found.spectra[:, 5:], axis=1) / (
            np.linalg.norm(pixels[:, 5:], axis=1) * np.linalg.norm(found.spectra[:, 5:], axis=1))
        assert (cos > 0.999).all(), (method, cos)


def test_cofactors_give_the_volume_of_a_swap():
    rng = np.random.default_rng(0)
    Y, y = rng.standard_normal((4, 3)), rng.standard_normal(3)
    C = simplex_cofactors(Y)
    for j in range(4):
        swapped = Y.copy()
        swapped[j] = y
        det = np.linalg.det(np.vstack([np.ones((1, 4)), swapped.T]))
        np.testing.assert_allclose(C[:, j] @ np.concatenate([[1.0], y]), det, rtol=1e-12)


def test_bad_requests():
    scene = make_scene(rows=20, cols=20, n_endmembers=2, seed=0, chunks=20)
    with pytest.raises(InputError, match="unknown endmember method 'pca'"):
        extract_endmembers(scene.reflectance, 2, method="pca", scheduler="threads")
    with pytest.raises(InputError, match="-k must be an integer >= 1"):
        extract_endmembers(scene.reflectance, 0, scheduler="threads")


def test_cli_writes_sli_csv_and_pixels(tmp_path):
    scene = make_scene(rows=60, cols=60, n_endmembers=3, seed=3, chunks=30, snr_db=50.0)
    cube = tmp_path / "cube.zarr"
    scene.to_zarr(cube, mode="w", consolidated=False)
    out = tmp_path / "found"
    proc = run_cli("endmembers", str(cube), "--var", "reflectance", "-k", "3", "--method",
                   "nfindr", "-o", str(out), "--scheduler", "threads")
    assert proc.returncode == 0, proc.stderr
    sli, table = load_library(tmp_path / "found.sli"), load_library(tmp_path / "found.csv")
    assert sli.names == table.names and len(sli.names) == 3
    np.testing.assert_allclose(sli.spectra, table.spectra, rtol=1e-6)  # float32 vs 8 digits
    truth = scene.endmembers_true.values
    assert match_endmembers(sli.spectra, truth).angles_deg.max() < 2.0
    with (tmp_path / "found.pixels.csv").open() as f:
        rows = list(csv.DictReader(f))
    refl = scene.reflectance.values
    for row, spectrum in zip(rows, sli.spectra, strict=True):
        pixel = refl[int(row["row"]), int(row["col"])]
        assert float(row["x"]) == float(scene.x.values[int(row["col"])])
        cos = pixel @ spectrum / (np.linalg.norm(pixel) * np.linalg.norm(spectrum))
        assert cos > 0.999
    again = run_cli("endmembers", str(cube), "--var", "reflectance", "-k", "3", "-o", str(out))
    assert again.returncode == 1 and "exists — add --overwrite" in again.stderr
