"""dnmf.hyperspectral.metrics against hand-computed cases."""

from __future__ import annotations

import json
import re

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.local import get_sync

from dnmf.datasets import make_scene
from dnmf.errors import InputError
from dnmf.hyperspectral.metrics import (
    Matching,
    abundance_rmse,
    format_score,
    match_endmembers,
    open_dataset,
    reconstruction_rmse,
    score,
    spectral_angle,
)


class CountingScheduler:
    """A synchronous dask scheduler that counts the computes."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, dsk, keys, **kwargs):
        self.n += 1
        return get_sync(dsk, keys, **kwargs)


# ------------------------------------------------------------------------- spectral_angle


def test_orthogonal_spectra_are_90_degrees():
    assert spectral_angle([1.0, 0.0, 0.0], [0.0, 2.0, 0.0]) == pytest.approx(90.0)
    assert spectral_angle([1.0, 0.0], [0.0, 3.0], degrees=False) == pytest.approx(np.pi / 2)


def test_scaled_spectra_are_0_degrees():
    a = np.array([0.1, 0.4, 0.35, 0.2])
    assert spectral_angle(a, 7.5 * a) == pytest.approx(0.0, abs=1e-6)
    assert spectral_angle(a.astype(np.float32), 0.5 * a) == pytest.approx(0.0, abs=1e-5)


def test_known_angles():
    assert spectral_angle([1.0, 0.0], [1.0, 1.0]) == pytest.approx(45.0)
    assert spectral_angle([1.0, 0.0], [-1.0, 0.0]) == pytest.approx(180.0)
    # small angles keep their digits: tan(theta) = 1e-7
    assert spectral_angle([1.0, 0.0], [1.0, 1e-7], degrees=False) == pytest.approx(1e-7, rel=1e-6)


def test_broadcasting_over_leading_axes():
    a = np.random.default_rng(0).random((4, 1, 6))
    b = np.random.default_rng(1).random((1, 3, 6))
    out = spectral_angle(a, b)
    assert out.shape == (4, 3)
    assert out[2, 1] == pytest.approx(spectral_angle(a[2, 0], b[0, 1]))


def test_nan_bands_are_ignored():
    assert spectral_angle([1.0, np.nan, 0.0], [1.0, 5.0, 0.0]) == pytest.approx(0.0, abs=1e-7)
    assert spectral_angle([1.0, 0.0, np.nan], [0.0, 1.0, 7.0]) == pytest.approx(90.0)
    # the NaN of one pair does not drop the band from another pair
    a = np.array([[1.0, np.nan], [1.0, 1.0]])
    out = spectral_angle(a, [1.0, 1.0])
    np.testing.assert_allclose(out, [0.0, 0.0], atol=1e-7)


def test_zero_or_all_nan_spectrum_is_nan():
    assert np.isnan(spectral_angle([0.0, 0.0], [1.0, 2.0]))
    assert np.isnan(spectral_angle([np.nan, np.nan], [1.0, 2.0]))


def test_dask_input_stays_lazy():
    a = np.random.default_rng(2).random((50, 8))
    b = np.random.default_rng(3).random(8)
    lazy = spectral_angle(da.from_array(a, chunks=(10, 8)), b)
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), spectral_angle(a, b))


def test_band_mismatch_is_an_error():
    with pytest.raises(InputError, match=re.escape("got shapes (3,) and (4,)")):
        spectral_angle(np.ones(3), np.ones(4))


# ----------------------------------------------------------------------- match_endmembers


@pytest.fixture
def reference() -> np.ndarray:
    rng = np.random.default_rng(4)
    return rng.random((4, 20))


def test_permuted_endmembers_are_matched_back(reference):
    perm = np.array([2, 0, 3, 1])
    m = match_endmembers(3.0 * reference[perm], reference)
    assert isinstance(m, Matching)
    np.testing.assert_array_equal(m.reference_index, [0, 1, 2, 3])
    np.testing.assert_array_equal(reference[perm][m.estimated_index], reference)
    np.testing.assert_allclose(m.angles_deg, 0.0, atol=1e-6)
    assert m.mean_sad_deg == pytest.approx(0.0, abs=1e-6)
    assert m.mean_sad_rad == pytest.approx(np.radians(m.mean_sad_deg))
    assert m.sad_matrix_deg.shape == (4, 4)
    assert len(m.unmatched_estimated) == len(m.unmatched_reference) == 0


def test_matching_minimises_the_total_angle():
    ref = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    est = np.array([[1.0, 0.9, 0.0], [1.0, 0.1, 0.0]])
    m = match_endmembers(est, ref)
    np.testing.assert_array_equal(m.estimated_index, [1, 0])
    expected = [np.degrees(np.arctan(0.1)), 45.0 - np.degrees(np.arctan(0.9))]
    np.testing.assert_allclose(m.angles_deg, expected)
    assert m.mean_sad_deg == pytest.approx(np.mean(expected))


def test_more_estimated_than_reference(reference):
    extra = np.vstack([reference[[1, 0]], np.ones((1, 20)), reference[[3, 2]]])
    m = match_endmembers(extra, reference, reference_names=["a", "b", "c", "d"])
    np.testing.assert_array_equal(m.estimated_index, [1, 0, 4, 3])
    np.testing.assert_array_equal(m.unmatched_estimated, [2])
    assert len(m.unmatched_reference) == 0
    assert m.names == ["a", "b", "c", "d"]


def test_fewer_estimated_than_reference(reference):
    m = match_endmembers(reference[[3, 1]], reference)
    np.testing.assert_array_equal(m.reference_index, [1, 3])
    np.testing.assert_array_equal(m.estimated_index, [1, 0])
    np.testing.assert_array_equal(m.unmatched_reference, [0, 2])
    assert m.names is None


def test_nan_bands_and_all_nan_endmember(reference):
    est = reference.copy()
    est[:, 5:8] = np.nan  # dropped bands
    est[2] = np.nan  # a failed endmember is matched last, with a NaN angle
    m = match_endmembers(est, reference)
    np.testing.assert_array_equal(m.estimated_index, [0, 1, 2, 3])
    np.testing.assert_allclose(m.angles_deg[[0, 1, 3]], 0.0, atol=1e-6)
    assert np.isnan(m.angles_deg[2]) and np.isnan(m.mean_sad_deg)


def test_match_errors(reference):
    with pytest.raises(InputError, match="have 19 bands and the reference 20"):
        match_endmembers(reference[:, :19], reference)
    with pytest.raises(InputError, match=re.escape("must be 2-D (k, n_bands), got shape (20,)")):
        match_endmembers(reference[0], reference)
    with pytest.raises(InputError, match="2 reference_names for 4 reference endmembers"):
        match_endmembers(reference, reference, reference_names=["a", "b"])


# ------------------------------------------------------------------------- abundance_rmse


def test_abundance_rmse_hand_computed():
    ref = np.array([[[1.0, 0.5], [0.0, np.nan]], [[0.0, 0.5], [1.0, np.nan]]])
    est = ref[::-1].copy()  # swapped endmembers
    est[1, 0, 0] += 0.3  # estimated 1 <-> reference 0, one pixel off by 0.3
    est[0, 1, 0] = np.nan  # a pixel missing in one map only: left out of that pair
    m = match_endmembers(np.eye(2)[::-1], np.eye(2))
    # pair (est 1, ref 0): 3 valid pixels, squared errors 0.09, 0, 0;
    # pair (est 0, ref 1): 2 valid pixels (one NaN in est, one in both), errors 0, 0
    assert abundance_rmse(est, ref, m) == pytest.approx(np.sqrt(0.09 / 5))


def test_abundance_rmse_on_dask_computes_once():
    rng = np.random.default_rng(5)
    ref = rng.random((3, 40, 30))
    ref[:, :4, :4] = np.nan
    est = ref[[2, 0, 1]] + rng.normal(0, 0.05, ref.shape)
    m = match_endmembers(np.eye(3)[[2, 0, 1]], np.eye(3))
    expected = abundance_rmse(est, ref, m)
    counter = CountingScheduler()
    with dask.config.set(scheduler=counter):
        got = abundance_rmse(da.from_array(est, chunks=(3, 10, 10)),
                             da.from_array(ref, chunks=(1, 20, 30)), m)
    assert counter.n == 1
    assert got == pytest.approx(expected)
    assert expected == pytest.approx(0.05, rel=0.1)


def test_abundance_rmse_pixel_mismatch():
    m = match_endmembers(np.eye(2), np.eye(2))
    with pytest.raises(InputError, match=r"pixel shape \(4, 5\) and the reference \(5, 4\)"):
        abundance_rmse(np.zeros((2, 4, 5)), np.zeros((2, 5, 4)), m)


# -------------------------------------------------------------------- reconstruction_rmse


def test_reconstruction_rmse_per_row():
    X = np.array([[1.0, 2.0], [3.0, np.nan], [np.nan, np.nan]])
    W = np.ones((3, 1))
    H = np.array([[1.0, 1.0]])
    np.testing.assert_allclose(reconstruction_rmse(X, W, H), [np.sqrt(0.5), 2.0, np.nan])


def test_reconstruction_rmse_dask_is_lazy():
    rng = np.random.default_rng(6)
    W, H = rng.random((60, 3)), rng.random((3, 9))
    X = W @ H + 0.1
    out = reconstruction_rmse(da.from_array(X, chunks=(20, 9)), W, H)
    assert isinstance(out, da.Array) and out.chunks == ((20, 20, 20),)
    np.testing.assert_allclose(out.compute(), 0.1)
    out = reconstruction_rmse(X, da.from_array(W, chunks=(15, 3)), H)
    np.testing.assert_allclose(out.compute(), 0.1)


def test_reconstruction_rmse_shape_error():
    with pytest.raises(InputError, match=re.escape("expected W (4, k) and H (k, 3)")):
        reconstruction_rmse(np.zeros((4, 3)), np.zeros((4, 2)), np.zeros((2, 4)))


# ---------------------------------------------------------------------------------- score


@pytest.fixture(scope="module")
def truth() -> xr.Dataset:
    return make_scene(rows=30, cols=40, n_endmembers=4, chunks=(15, 20))


def _result_from(truth: xr.Dataset, perm, *, offset: float = 0.0) -> xr.Dataset:
    """An unmix-layout result: the truth's endmembers permuted and scaled, bands 10-14
    dropped (NaN), abundances permuted (lazily) with ``offset`` added."""
    e = truth["endmembers_true"].values[perm] * 2.0
    e[:, 10:15] = np.nan
    a = truth["abundances_true"].data[perm] + offset
    return xr.Dataset(
        {
            "endmembers": (("endmember", "band"), e),
            "abundances": (("endmember", "y", "x"), a),
        },
        coords={"wavelength": truth["wavelength"], "y": truth["y"], "x": truth["x"]},
    )


def test_score_perfect_permuted_result(truth):
    perm = [3, 1, 0, 2]
    s = score(_result_from(truth, perm), truth)
    assert s["mean_sad_deg"] == pytest.approx(0.0, abs=1e-4)
    assert s["abundance_rmse"] == pytest.approx(0.0, abs=1e-7)
    assert [p["estimated"] for p in s["matching"]] == [2, 1, 3, 0]
    assert [p["reference"] for p in s["matching"]] == [0, 1, 2, 3]
    assert [p["name"] for p in s["matching"]] == list(truth["endmember_name"].values)
    assert s["n_estimated"] == s["n_reference"] == 4
    assert s["unmatched_estimated"] == s["unmatched_reference"] == []
    json.dumps(s)  # JSON-ready


def test_score_abundance_offset_and_transposed_dims(truth):
    result = _result_from(truth, [1, 0, 2, 3], offset=0.1)
    result["abundances"] = result["abundances"].transpose("endmember", "x", "y")
    s = score(result, truth)
    assert s["abundance_rmse"] == pytest.approx(0.1, rel=1e-5)
    np.testing.assert_allclose(s["abundance_rmse_per_endmember"], 0.1, rtol=1e-5)
    assert s["sad_deg"] == pytest.approx([0.0] * 4, abs=1e-4)


def test_score_k_mismatch(truth):
    s = score(_result_from(truth, [2, 0]), truth)
    assert [p["reference"] for p in s["matching"]] == [0, 2]
    assert s["unmatched_reference"] == [1, 3]
    assert s["unmatched_reference_names"] == list(truth["endmember_name"].values[[1, 3]])
    extra = _result_from(truth, [0, 1, 2, 3])
    extra = xr.concat([extra, extra.isel(endmember=[0]) * 0 + 1.0], dim="endmember")
    s = score(extra, truth)
    assert s["unmatched_estimated"] == [4] and s["n_estimated"] == 5


def test_score_aligns_bands_on_wavelength(truth):
    result = _result_from(truth, [0, 1, 2, 3]).isel(band=slice(20, 150))
    s = score(result, truth)
    assert s["mean_sad_deg"] == pytest.approx(0.0, abs=1e-4)


def test_score_without_abundances_and_with_plain_names(truth):
    result = _result_from(truth, [0, 1, 2, 3])[["endmembers"]]
    plain = truth.rename(endmembers_true="endmembers").drop_vars(
        ["abundances_true", "endmember_name"])
    s = score(result, plain)
    assert s["abundance_rmse"] is None and s["abundance_rmse_per_endmember"] is None
    assert s["matching"][0]["name"] is None and s["matching"][0]["abundance_rmse"] is None


def test_score_errors(truth):
    with pytest.raises(InputError, match="the result has none of the variables endmembers"):
        score(xr.Dataset({"foo": ("a", [1.0])}), truth)
    no_wl = _result_from(truth, [0, 1, 2, 3]).drop_vars("wavelength").isel(band=slice(0, 100))
    with pytest.raises(InputError, match="the result has 100 bands and the truth 180"):
        score(no_wl, truth)
    small = _result_from(truth, [0, 1, 2, 3]).isel(x=slice(0, 10))
    with pytest.raises(InputError, match="score a result unmixed from the truth's own cube"):
        score(small, truth)


# ------------------------------------------------------------- open_dataset, format_score


def test_open_dataset_zarr_netcdf_and_errors(truth, tmp_path):
    small = truth.isel(y=slice(0, 10), x=slice(0, 10))
    small.to_zarr(tmp_path / "t.zarr", consolidated=False)
    small.to_netcdf(tmp_path / "t.nc", engine="h5netcdf")
    for path in (tmp_path / "t.zarr", str(tmp_path / "t.nc"), f"file://{tmp_path}/t.zarr"):
        ds = open_dataset(path)
        assert ds["abundances_true"].chunks is not None  # lazy
        s = score(ds, small)
        assert s["mean_sad_deg"] == pytest.approx(0.0, abs=1e-6)
        assert s["abundance_rmse"] == 0.0
    assert open_dataset(small) is small
    with pytest.raises(InputError, match="does not exist; give a Zarr store"):
        open_dataset(tmp_path / "missing.zarr")
    (tmp_path / "junk.nc").write_text("not netcdf")
    with pytest.raises(InputError, match="cannot open .*junk.nc as a dataset"):
        open_dataset(tmp_path / "junk.nc")


def test_format_score_lines(truth):
    lines = format_score(score(_result_from(truth, [2, 0, 3]), truth))
    assert lines[0].startswith("mean spectral angle 0.00 deg (0.0000 rad) over 3 matched "
                               "endmembers (3 estimated, 4 true)")
    assert lines[1] == "abundance RMSE 0.0000"
    name1 = truth["endmember_name"].values[1]
    assert lines[-1] == f"true endmembers not found: 1 ({name1})"
    extra = xr.concat([_result_from(truth, [0, 1, 2, 3])] * 2, dim="endmember")
    assert format_score(score(extra, truth))[-1] == (
        "estimated endmembers without a true match: 4, 5, 6, 7")
