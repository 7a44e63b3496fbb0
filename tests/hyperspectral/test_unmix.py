"""Unmixing end to end: accuracy on a scene of measured spectra, invariance to chunking,
scheduler and input format, no-data handling, -k auto, outputs and pictures."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import dnmf.hyperspectral  # noqa: F401  (the cube.dnmf accessor)
from dnmf.datasets import make_scene
from dnmf.errors import InputError, OutputError
from dnmf.hyperspectral.envi import write_envi
from dnmf.hyperspectral.metrics import score
from dnmf.hyperspectral.unmix import unmix

#: Invariance runs stop after a fixed number of iterations: a tolerance test could stop one
#: run an iteration earlier than another on rounding alone.
FIXED = {"max_iter": 12, "tol": 0.0, "scheduler": "threads"}


@pytest.fixture(scope="module")
def scene200():
    """The issue's case: 200 x 200, 6 earthlib spectra, 30 dB, tiles of 100 x 100."""
    return make_scene(200, 200, n_endmembers=6, snr_db=30.0, seed=0, chunks=(100, 100))


@pytest.fixture(scope="module")
def small():
    """80 x 72 pixels, 4 endmembers, 30 dB, in memory (tiles re-made per test)."""
    return make_scene(80, 72, n_endmembers=4, snr_db=30.0, seed=3, chunks=(80, 72)).compute()


def _truth(scene):
    return scene[["endmembers_true", "abundances_true"]]


def test_accuracy_on_a_200x200_scene_of_measured_spectra(scene200):
    result = unmix(scene200["reflectance"], 6, scheduler="threads", seed=0)
    s = score(result, _truth(scene200))
    print(f"\nsum-to-one SPA: mean SAD {s['mean_sad_deg']:.3f} deg, abundance RMSE "
          f"{s['abundance_rmse']:.4f}, {result.attrs['n_iter']} iterations")
    assert s["mean_sad_deg"] <= 2.0
    assert s["abundance_rmse"] <= 0.04
    assert s["n_estimated"] == s["n_reference"] == 6 and not s["unmatched_reference"]
    # abundances are fractions: non-negative, summing to one at every valid pixel
    A = result["abundances"].values
    valid = ~np.isnan(A[0])
    assert (A[:, valid] >= -1e-6).all()
    np.testing.assert_allclose(A[:, valid].sum(axis=0), 1.0, atol=1e-4)
    # the residual is at the noise level
    sigma = scene200.attrs["noise_sigma"]
    assert np.nanmedian(result["residual_rmse"].values) == pytest.approx(sigma, rel=0.1)


def test_plain_nmf_scored_the_same_way_is_worse(small):
    """The contrast the issue asks for: without the sum-to-one constraint and the endmember
    init, NMF's factors are not the endmembers (mixtures of them fit as well)."""
    cube, truth = small["reflectance"], _truth(small)
    constrained = score(unmix(cube, 4, scheduler="threads"), truth)
    plain = score(unmix(cube, 4, init="nndsvda", sum_to_one=False, scheduler="threads",
                        max_iter=200), truth)
    print(f"\nunmix: SAD {constrained['mean_sad_deg']:.2f} deg, RMSE "
          f"{constrained['abundance_rmse']:.4f}; plain NMF: SAD {plain['mean_sad_deg']:.2f} "
          f"deg, RMSE {plain['abundance_rmse']:.4f}")
    assert constrained["mean_sad_deg"] < plain["mean_sad_deg"]
    assert constrained["abundance_rmse"] < plain["abundance_rmse"]


#: Issue #21's bounds for the bounded, warm-started W update (``DNMF_FCLS_ROUNDS``) against the
#: exact FCLS of every iteration: the same fixed point, so the same accuracy to these margins.
SAD_MARGIN_DEG, RMSE_MARGIN = 0.05, 0.002


def _accuracy_with_rounds(cube, truth, k, rounds, monkeypatch):
    monkeypatch.setenv("DNMF_FCLS_ROUNDS", rounds)
    result = unmix(cube, k, scheduler="threads", seed=0)
    A = result["abundances"].values
    valid = ~np.isnan(A[0])
    assert (A[:, valid] >= 0).all()
    np.testing.assert_allclose(A[:, valid].sum(axis=0), 1.0, atol=1e-4)
    return score(result, truth)


@pytest.mark.parametrize("scene,rounds", [("small", "1"), ("small", "2"), ("small", ""),
                                          ("scene200", "")],
                         ids=["small-1", "small-2", "small-default", "scene200-default"])
def test_bounded_fcls_rounds_reach_the_exact_fits_accuracy(request, scene, rounds,
                                                           monkeypatch):
    data = request.getfixturevalue(scene)
    cube, truth = data["reflectance"], _truth(data)
    k = data.sizes["endmember"]
    exact = _accuracy_with_rounds(cube, truth, k, "exact", monkeypatch)
    bounded = _accuracy_with_rounds(cube, truth, k, rounds, monkeypatch)
    print(f"\n{scene}: exact SAD {exact['mean_sad_deg']:.4f} deg, RMSE "
          f"{exact['abundance_rmse']:.5f}; rounds {rounds or 'default'}: SAD "
          f"{bounded['mean_sad_deg']:.4f} deg, RMSE {bounded['abundance_rmse']:.5f}")
    assert abs(bounded["mean_sad_deg"] - exact["mean_sad_deg"]) <= SAD_MARGIN_DEG
    assert abs(bounded["abundance_rmse"] - exact["abundance_rmse"]) <= RMSE_MARGIN


@pytest.mark.parametrize("tiles", [(40, 36), (17, 72), (80, 9)], ids=["2x2", "rows", "cols"])
def test_same_result_for_one_chunk_or_many_tiles(small, tiles):
    cube = small["reflectance"]
    one = unmix(cube.chunk({"y": -1, "x": -1}), 4, **FIXED)
    many = unmix(cube.chunk(dict(zip(("y", "x"), tiles, strict=True))), 4, **FIXED)
    np.testing.assert_allclose(many["endmembers"].values, one["endmembers"].values,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(many["abundances"].values, one["abundances"].values, atol=1e-4)
    np.testing.assert_allclose(many["residual_rmse"].values, one["residual_rmse"].values,
                               rtol=1e-4, equal_nan=True)


@pytest.mark.cluster
def test_same_result_on_a_local_cluster(small, local_client):
    cube = small["reflectance"].chunk({"y": 40, "x": 36})
    threads = unmix(cube, 4, **FIXED)
    cluster = unmix(cube, 4, client=local_client, max_iter=12, tol=0.0)
    np.testing.assert_allclose(cluster["endmembers"].values, threads["endmembers"].values,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cluster["abundances"].values, threads["abundances"].values,
                               atol=1e-4)


def test_envi_netcdf_and_zarr_inputs_give_the_same_result(small, tmp_path):
    cube = small["reflectance"]
    zarr_path, nc_path = tmp_path / "cube.zarr", tmp_path / "cube.nc"
    small[["reflectance"]].to_zarr(zarr_path, mode="w", consolidated=False)
    small[["reflectance"]].to_netcdf(nc_path, engine="h5netcdf")
    # ENVI as reflectance x 10000 in int16 with a no-data value: the usual delivery format
    scaled = np.round(cube.values * 10_000)
    scaled[np.isnan(scaled)] = -9999
    write_envi(tmp_path / "cube.bil", scaled.astype(np.int16), interleave="bil", nodata=-9999,
               scale_factor=10_000, wavelength=cube["wavelength"].values)
    quantised = xr.DataArray(np.where(np.isnan(cube.values), np.nan, scaled / 10_000),
                             dims=cube.dims, coords=cube.coords).astype(np.float32)
    results = {
        "zarr": unmix(zarr_path, 4, var="reflectance", **FIXED),
        "netcdf": unmix(nc_path, 4, var="reflectance", **FIXED),
        "memory": unmix(cube, 4, **FIXED),
        "envi": unmix(tmp_path / "cube.hdr", 4, **FIXED),
        "quantised": unmix(quantised, 4, **FIXED),
    }
    ref = results["memory"]
    for name in ("zarr", "netcdf"):
        np.testing.assert_allclose(results[name]["abundances"].values, ref["abundances"].values,
                                   atol=1e-5, err_msg=name)
    # ENVI's int16 cube is the same data rounded to 1e-4: equal to that, bit for bit in the input
    np.testing.assert_allclose(results["envi"]["abundances"].values,
                               results["quantised"]["abundances"].values, atol=1e-5)
    np.testing.assert_allclose(results["envi"]["endmembers"].values,
                               results["quantised"]["endmembers"].values, rtol=1e-4, atol=1e-6)
    for res in results.values():
        assert np.array_equal(np.isnan(res["residual_rmse"].values),
                              np.isnan(cube.values).any(axis=-1))


def test_nodata_pixels_are_nan_and_never_touch_the_fit(small):
    cube = small["reflectance"]
    nodata = np.isnan(cube.values).any(axis=-1)
    assert 0 < nodata.sum() < nodata.size
    garbage = cube.where(~nodata[..., None], -1.0)  # a no-data value instead of NaN
    garbage.attrs["nodata"] = -1.0
    ref = unmix(cube, 4, **FIXED)
    res = unmix(garbage, 4, **FIXED)
    np.testing.assert_array_equal(res["abundances"].values, ref["abundances"].values)
    np.testing.assert_array_equal(res["endmembers"].values, ref["endmembers"].values)
    A = res["abundances"].values
    assert np.isnan(A[:, nodata]).all() and not np.isnan(A[:, ~nodata]).any()
    assert res.attrs["n_pixels_nodata"] == int(nodata.sum())


def test_bad_bands_are_left_out_and_nan_in_the_endmembers(small):
    cube = small["reflectance"]
    result = unmix(cube, 4, bad_bands="0-9,1340-1460nm", **FIXED)
    wl = cube["wavelength"].values
    dropped = (np.arange(wl.size) < 10) | ((wl >= 1340) & (wl <= 1460))
    spectra = result["endmembers"].values
    assert np.isnan(spectra[:, dropped]).all() and not np.isnan(spectra[:, ~dropped]).any()
    assert result.attrs["bands_used"] == np.flatnonzero(~dropped).tolist()
    np.testing.assert_array_equal(result["band_used"].values, (~dropped).astype(np.int8))
    assert "wavelength" in result["endmembers"].coords


def test_k_auto_estimates_the_number_of_endmembers(small):
    seen = {}
    result = unmix(small["reflectance"], "auto", on_prepared=lambda pm, k, est: seen.update(
        k=k, evidence=est.describe()), **FIXED)
    assert seen["k"] == 4 and result.sizes["endmember"] == 4
    assert result.attrs["endmember_estimate"]["n_endmembers"] == 4
    assert "HySime" in result.attrs["endmember_estimate"]["evidence"]


def test_output_store_plots_netcdf_and_accessor(small, tmp_path):
    from matplotlib.image import imread

    cube = small["reflectance"].chunk({"y": 40, "x": 36})
    out, plots, nc = tmp_path / "unmix.zarr", tmp_path / "plots", tmp_path / "unmix.nc"
    result = cube.dnmf.unmix(4, output=out, plots=plots, netcdf=nc, **FIXED)
    stored = xr.open_zarr(out)
    assert stored.attrs["status"] == "complete" and stored.attrs["sum_to_one"] is True
    assert stored["abundances"].dims == ("endmember", "y", "x")
    assert stored["endmembers"].dims == ("endmember", "band")
    np.testing.assert_array_equal(stored["x"].values, cube["x"].values)  # map coordinates kept
    # the CF grid mapping travels: the spatial_ref coordinate and the variables naming it
    assert stored["spatial_ref"].attrs["GeoTransform"].split() == [
        repr(float(v)) for v in cube["spatial_ref"].attrs["GeoTransform"].split()]
    assert "UTM zone 33N" in stored["spatial_ref"].attrs["crs_wkt"]
    assert stored["abundances"].attrs["grid_mapping"] == "spatial_ref"
    np.testing.assert_array_equal(stored["abundances"].values, result["abundances"].values)
    from_nc = xr.open_dataset(nc, engine="h5netcdf")
    np.testing.assert_array_equal(from_nc["abundances"].values, stored["abundances"].values)
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert {"endmembers.png", "rgb_composite.png", "residual_rmse.png", "loss.png",
            "abundance_0.png", "abundance_3.png"} <= set(pngs)
    for name in pngs:
        image = imread(plots / name)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.01, name
    # nothing left behind next to the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots", "unmix.nc", "unmix.zarr"]
    with pytest.raises(OutputError, match="exists"):
        unmix(cube, 4, output=out, **FIXED)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_endmembers": 0}, "must be an integer >= 1 or 'auto'"),
    # no bbl: the default --bad-bands auto drops the 5 bands on the water windows' edges
    ({"n_endmembers": 500}, "more than the 175 bands kept"),
    ({"init": "nndsvd"}, "unknown init 'nndsvd' for unmixing"),
    ({"sparsity": 0.1}, "add --no-sum-to-one to use --sparsity"),
    ({"bad_bands": "0-179"}, "bands"),
])
def test_bad_options_are_clear_errors(small, kwargs, message):
    kwargs = {"n_endmembers": 4, **kwargs}
    with pytest.raises(InputError, match=message):
        unmix(small["reflectance"], scheduler="threads", **kwargs)
