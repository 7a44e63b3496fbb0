"""Naming endmembers by library matching: on unmixed make_scene cubes, against a library on
another wavelength grid, and with the true spectrum taken out."""

from __future__ import annotations

import numpy as np
import pytest

from dnmf.datasets import make_scene
from dnmf.errors import InputError
from dnmf.hyperspectral.identify import identify
from dnmf.hyperspectral.library import load_library, resample, write_csv
from dnmf.hyperspectral.metrics import match_endmembers, score, spectral_angle
from dnmf.hyperspectral.unmix import unmix

GRID_2NM = np.arange(401.0, 2450.0, 2.0)  # odd nm: every cube band is interpolated
#: seed 0, k = 4: library rows 249, 26, 135, 169; row 169 (a painted roof) is 8.1 degrees from
#: every other earthlib spectrum, so without it nothing is within the 5 degree threshold
SEED, K, LONELY = 0, 4, 169


@pytest.fixture(scope="module")
def scene():
    return make_scene(rows=60, cols=60, n_endmembers=K, seed=SEED, chunks=30).compute()


@pytest.fixture(scope="module")
def unmixed(scene):
    return unmix(scene.reflectance, K, scheduler="threads")


@pytest.fixture(scope="module")
def csv_2nm(tmp_path_factory):
    """earthlib on a 2 nm grid (linear; NaN in its water-vapour gaps), as a CSV file."""
    path = tmp_path_factory.mktemp("lib") / "earthlib_2nm.csv"
    write_csv(path, resample(load_library("earthlib"), GRID_2NM))
    return path


def _check_top_match(found, estimated, truth_rows, library):
    """The truth (by library row) is the top match, or the top match is within 0.5 degrees
    of it and the truth is among the top 3."""
    truth_ref = library.spectra[truth_rows]
    pairs = match_endmembers(estimated, truth_ref)
    for e, t in zip(pairs.estimated_index, pairs.reference_index, strict=True):
        cands = found[e].candidates
        truth = truth_rows[t]
        assert cands[0].angle_deg == found[e].angle_deg and found[e].identified
        if cands[0].index != truth:
            gap = float(spectral_angle(library.spectra[cands[0].index], library.spectra[truth]))
            assert gap < 0.5 and truth in [c.index for c in cands], (e, truth, cands)


def test_unmix_names_endmembers_by_the_bundled_library(scene, unmixed):
    truth = scene.attrs["library_index"]
    names = [str(n) for n in unmixed.coords["endmember_name"].values]
    assert sorted(names) == sorted(str(n) for n in scene.endmember_name.values)
    assert unmixed.coords["match_candidate"].shape == (K, 3)
    assert (unmixed.coords["match_angle"].values < 2.0).all()  # 30 dB noise, 60 x 60
    found = identify(unmixed.endmembers.values, scene.wavelength.values)
    _check_top_match(found, unmixed.endmembers.values, truth, load_library("earthlib"))
    # dnmf score reports the identification beside the truth's names
    report = score(unmixed, scene)
    assert all(p["identified_as"] == p["name"] for p in report["matching"])


def test_a_library_on_a_2nm_grid(scene, unmixed, csv_2nm):
    found = identify(unmixed.endmembers.values, scene.wavelength.values, [csv_2nm])
    lib = load_library(csv_2nm)
    assert found[0].candidates[0].library == str(csv_2nm)
    _check_top_match(found, unmixed.endmembers.values, scene.attrs["library_index"],
                     resample(lib, scene.wavelength.values))


def test_true_spectrum_removed_gives_unidentified(scene, unmixed, csv_2nm, tmp_path):
    lib = load_library(csv_2nm)
    without = lib.take(np.flatnonzero(np.arange(lib.n_spectra) != LONELY))
    path = write_csv(tmp_path / "without.csv", without)
    result = unmix(scene.reflectance, K, scheduler="threads", library=[str(path)])
    e = int(np.argmax([str(n) == str(scene.endmember_name.values[3])
                       for n in unmixed.coords["endmember_name"].values]))
    label = str(result.coords["endmember_name"].values[e])
    angle = float(result.coords["match_angle"].values[e])
    assert label.startswith("unidentified (closest: ") and angle > 5.0
    assert f"at {angle:.1f}°" in label
    assert result.attrs["identification"]["threshold_deg"] == 5.0
    others = [str(n) for i, n in enumerate(result.coords["endmember_name"].values) if i != e]
    assert not any(n.startswith("unidentified") for n in others)


def test_correlation_metric_ignores_an_offset(scene):
    truth = scene.endmembers_true.values.astype(np.float64)
    by_angle = identify(truth + 0.2, scene.wavelength.values)
    by_corr = identify(truth + 0.2, scene.wavelength.values, metric="correlation")
    rows = scene.attrs["library_index"]
    assert [f.candidates[0].index for f in by_corr] == rows
    assert max(f.angle_deg for f in by_corr) < 1e-6 < min(f.angle_deg for f in by_angle)


def test_bad_identification_options(scene):
    with pytest.raises(InputError, match="unknown match metric"):
        identify(scene.endmembers_true.values, scene.wavelength.values, metric="cosine")
    cube = scene.reflectance.drop_vars("wavelength")
    with pytest.raises(InputError, match="--library needs the cube's band wavelengths"):
        unmix(cube, K, scheduler="threads", library=["earthlib"])


def test_plots_are_labelled_with_the_matches(unmixed, tmp_path):
    from dnmf.hyperspectral.plots import endmember_labels, write_plots

    labels = endmember_labels(unmixed, unmixed.endmembers)
    for label, name, angle in zip(labels, unmixed.coords["endmember_name"].values,
                                  unmixed.coords["match_angle"].values, strict=True):
        assert label == f"{name} ({angle:.1f}°)"
    paths = write_plots(unmixed, tmp_path)
    assert (tmp_path / "endmembers.png") in paths and paths[0].stat().st_size > 10_000
