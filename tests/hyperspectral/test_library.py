"""Spectral library readers (ENVI .sli, splib07 ASCII, CSV, earthlib), writers and
resampling onto a cube's bands."""

from __future__ import annotations

import numpy as np
import pytest

from dnmf.datasets import load_spectral_library
from dnmf.errors import InputError
from dnmf.hyperspectral.library import (
    SpectralLibrary,
    load_library,
    resample,
    write_csv,
    write_sli,
)


@pytest.fixture
def small_library() -> SpectralLibrary:
    rng = np.random.default_rng(3)
    wl = np.linspace(400.0, 2500.0, 50)
    return SpectralLibrary(spectra=rng.uniform(0.01, 0.9, (4, 50)), wavelength=wl,
                           names=("alunite", "kaolinite, KGa-1", "calcite", "grass"),
                           fwhm=np.full(50, 10.0), source="test")


def test_earthlib_is_the_bundled_library():
    lib = load_library("earthlib")
    spectra, wavelength, names, classes = load_spectral_library()
    assert lib.spectra.shape == spectra.shape and lib.source == "earthlib"
    np.testing.assert_array_equal(lib.spectra, spectra.astype(np.float64))
    assert lib.names[5] == f"{classes[5]}:{names[5]}"  # the names make_scene gives endmembers


def test_sli_written_by_spectral_python_is_read(small_library, tmp_path):
    spectral = pytest.importorskip("spectral")
    header = {"wavelength": small_library.wavelength.tolist(), "wavelength units": "nm",
              "spectra names": list(small_library.names), "fwhm": [10.0] * 50}
    spectral.envi.SpectralLibrary(small_library.spectra.astype(np.float32), header,
                                  {}).save(str(tmp_path / "spy"))
    lib = load_library(tmp_path / "spy.sli")
    assert lib.names[0] == "alunite" and len(lib.names) == 4
    # float32 storage: values agree to float32 rounding (2^-24 relative)
    np.testing.assert_allclose(lib.spectra, small_library.spectra, rtol=2**-23)
    np.testing.assert_allclose(lib.wavelength, small_library.wavelength, rtol=1e-6)
    np.testing.assert_allclose(lib.fwhm, 10.0)


def test_sli_written_by_dnmf_is_read_by_spectral_python_and_back(small_library, tmp_path):
    spectral = pytest.importorskip("spectral")
    path = write_sli(tmp_path / "lib.sli", small_library)
    spy = spectral.envi.open(str(path.with_suffix(".hdr")), str(path))
    np.testing.assert_allclose(spy.spectra, small_library.spectra, rtol=2**-23)
    back = load_library(path)
    assert back.names[1] == "kaolinite; KGa-1"  # a comma would split the ENVI list
    np.testing.assert_allclose(back.spectra, small_library.spectra, rtol=2**-23)


def test_csv_round_trip_and_micrometres(small_library, tmp_path):
    path = write_csv(tmp_path / "lib.csv", small_library)
    back = load_library(path)
    assert back.names == small_library.names
    np.testing.assert_allclose(back.spectra, small_library.spectra, rtol=1e-7)
    um = tmp_path / "um.csv"
    um.write_text("wavelength_um,a,b\n0.5,0.1,0.2\n1.0,0.3,\n1.5,0.5,0.6\n")
    lib = load_library(um)
    np.testing.assert_allclose(lib.wavelength, [500.0, 1000.0, 1500.0])
    assert np.isnan(lib.spectra[1, 1])  # an empty cell is missing


def test_splib07_ascii_directory(tmp_path):
    wl_um = np.array([0.40, 0.45, 0.50, 0.55])
    (tmp_path / "s07AV95a_Wavelengths_AVIRIS_1995.txt").write_text(
        "s07AV95a Record=1: Wavelengths in microns\n" + "\n".join(map(str, wl_um)) + "\n")
    (tmp_path / "s07AV95a_Alunite_GDS82_AREF.txt").write_text(
        "splib07a Record=1234: Alunite GDS82 Na82 AREF\n0.1\n0.2\n-1.23e+34\n0.4\n")
    (tmp_path / "s07AV95a_Calcite_WS272_AREF.txt").write_text(
        "splib07a Record=5678: Calcite WS272 AREF\n0.5\n0.6\n0.7\n0.8\n")
    lib = load_library(tmp_path)
    assert lib.names == ("Alunite GDS82 Na82", "Calcite WS272")
    np.testing.assert_allclose(lib.wavelength, wl_um * 1000.0)
    assert np.isnan(lib.spectra[0, 2]) and lib.spectra[1, 3] == 0.8  # deleted value -> NaN


def test_linear_resampling_is_exact_on_a_linear_spectrum_and_honours_gaps_and_bad_bands():
    wl = np.concatenate([np.arange(400.0, 1350.0, 2.0), np.arange(1460.0, 2500.0, 2.0)])
    lib = SpectralLibrary(spectra=(0.1 + 1e-4 * wl)[None], wavelength=wl, names=("lin",))
    target = np.arange(405.0, 2450.0, 10.0)
    keep = np.ones(target.size, dtype=bool)
    keep[:3] = False
    out = resample(lib, target, keep=keep).spectra[0]
    in_gap = (target > 1348.0) & (target < 1460.0)
    ok = keep & ~in_gap
    np.testing.assert_allclose(out[ok], 0.1 + 1e-4 * target[ok], rtol=1e-12)
    assert np.isnan(out[~keep]).all() and np.isnan(out[in_gap]).all()
    assert np.isnan(resample(lib, [300.0, 2600.0]).spectra).all()  # outside the library


def test_gaussian_resampling_where_both_have_fwhm():
    wl = np.arange(400.0, 1000.0, 1.0)
    peak = np.exp(-0.5 * ((wl - 700.0) / 3.0) ** 2)  # a narrow absorption-like feature
    lib = SpectralLibrary(spectra=peak[None], wavelength=wl, names=("peak",),
                          fwhm=np.full(wl.size, 1.0))
    target, fwhm = np.array([690.0, 700.0, 710.0]), np.full(3, 20.0)
    out = resample(lib, target, fwhm=fwhm).spectra[0]
    # a Gaussian of std 3 seen through one of FWHM sqrt(20^2 - 1^2): their convolution, whose
    # peak height is 3 / sqrt(3^2 + s^2). The response is cut at +-4 sigma and renormalised:
    # 6.3e-5 of its mass, so values agree to ~1e-4 relative (the 1 nm Riemann sum: < 1e-6)
    s = np.sqrt(20.0**2 - 1.0**2) / (2 * np.sqrt(2 * np.log(2)))
    total = np.sqrt(9.0 + s * s)
    expected = 3.0 / total * np.exp(-0.5 * ((target - 700.0) / total) ** 2)
    np.testing.assert_allclose(out, expected, rtol=2e-4)
    linear = resample(lib, target).spectra[0]  # without the target's FWHM: point samples
    np.testing.assert_allclose(linear, peak[[290, 300, 310]], rtol=1e-12)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("wavelength,a\n400,x\n500,1\n", "not a number"),
    ("wavelength\n400\n500\n", "not a spectral library CSV"),
])
def test_bad_libraries_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "lib.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_library(path)


def test_select_unknown_name_is_an_error(small_library):
    assert small_library.select(["calcite", "alunite"]).names == ("calcite", "alunite")
    with pytest.raises(InputError, match="'gypsum' is not in the library"):
        small_library.select(["gypsum"])
