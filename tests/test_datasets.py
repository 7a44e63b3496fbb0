"""dnmf.datasets: the derived earthlib library and the lazy synthetic scene."""

from __future__ import annotations

import re
from importlib import resources

import dask
import numpy as np
import pytest
import xarray as xr

from dnmf.datasets import load_spectral_library, make_scene
from dnmf.errors import InputError


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ua = a / np.linalg.norm(a, axis=1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip(ua @ ub.T, -1, 1)))


def _no_compute(dsk, keys, **kwargs):
    raise AssertionError("building the scene computed a dask graph")


@pytest.fixture(scope="module")
def scene() -> xr.Dataset:
    """100 x 120, 5 endmembers, 30 dB, in memory (computed once)."""
    return make_scene(rows=100, cols=120, n_endmembers=5, chunks=(40, 50)).compute()


@pytest.fixture(scope="module")
def reference_scene() -> xr.Dataset:
    """60 x 70, 4 endmembers, in (30, 35) tiles, in memory."""
    return make_scene(rows=60, cols=70, n_endmembers=4, chunks=(30, 35)).compute()


# ------------------------------------------------------------------------------ library


def test_library_shapes_and_values():
    spectra, wavelength, names, classes = load_spectral_library()
    assert spectra.dtype == np.float32 and spectra.shape == (301, 180)
    assert wavelength.shape == (180,) and wavelength[0] == 400.0 and wavelength[-1] == 2450.0
    assert np.all(np.diff(wavelength) > 0)
    # water-vapour bands are absent
    assert not np.any((wavelength > 1350) & (wavelength < 1460))
    assert not np.any((wavelength > 1790) & (wavelength < 1960))
    assert np.isfinite(spectra).all() and spectra.min() >= 0 and spectra.max() <= 1.5
    assert names.shape == classes.shape == (301,)
    assert set(classes) == {"bare", "built", "npv", "vegetation", "burned"}
    counts = {c: int((classes == c).sum()) for c in set(classes)}
    assert counts == {"bare": 70, "built": 70, "npv": 70, "vegetation": 70, "burned": 21}


def test_library_returns_copies():
    spectra = load_spectral_library()[0]
    spectra[:] = -1
    assert load_spectral_library()[0].min() >= 0


def test_library_file_metadata_and_licence():
    data = resources.files("dnmf.datasets").joinpath("data")
    npz = data.joinpath("earthlib_spectra.npz")
    with npz.open("rb") as f:
        assert len(f.read()) <= 400 * 1024
    with npz.open("rb") as f, np.load(f) as z:  # no pickles needed
        assert str(z["earthlib_version"]) == "1.1.0"
        # only the PROSAIL vegetation is simulated
        assert np.array_equal(~z["measured"], z["classes"] == "vegetation")
        assert len(np.unique(z["library_index"])) == len(z["library_index"])
    licence = data.joinpath("EARTHLIB_LICENSE.txt").read_text()
    assert "MIT License" in licence and "earthlib 1.1.0" in licence
    assert data.joinpath("derive_earthlib.py").is_file()


# -------------------------------------------------------------------------------- scene


def test_scene_is_lazy_and_laid_out():
    with dask.config.set(scheduler=_no_compute):
        ds = make_scene(rows=60, cols=70, n_endmembers=4, chunks=(25, 30))
    refl, ab = ds["reflectance"], ds["abundances_true"]
    assert refl.dims == ("y", "x", "band") and refl.shape == (60, 70, 180)
    assert refl.dtype == np.float32 and ab.dtype == np.float32
    assert refl.data.chunks == ((25, 25, 10), (30, 30, 10), (180,))
    assert ab.dims == ("endmember", "y", "x") and ab.data.chunks == ((4,), *refl.data.chunks[:2])
    assert ds["endmembers_true"].dims == ("endmember", "band")
    assert ds["endmembers_true"].shape == (4, 180)
    np.testing.assert_array_equal(ds["wavelength"].values, load_spectral_library()[1])
    assert ds["wavelength"].attrs["units"] == "nm"
    assert np.all(np.diff(ds["y"].values) == -30.0) and np.all(np.diff(ds["x"].values) == 30.0)
    assert ds["endmember_name"].shape == (4,)
    assert ds.attrs["crs"] == "EPSG:32633" == ds["spatial_ref"].attrs["crs"]
    assert ds.attrs["snr_db"] == 30.0 and ds.attrs["seed"] == 0
    assert "earthlib" in ds.attrs["source"]
    assert ds.attrs["noise_sigma"] > 0


@pytest.mark.parametrize(
    "chunks",
    [
        (60, 70),  # one tile
        (17, 23),  # ragged tiles that straddle noise and cosine blocks
        (1, 70),  # one pixel row per tile
        9,  # an int: square tiles
    ],
)
def test_scene_is_bit_identical_for_any_chunking(chunks, reference_scene):
    ref = reference_scene
    other = make_scene(rows=60, cols=70, n_endmembers=4, chunks=chunks).compute()
    for name in ("reflectance", "abundances_true", "endmembers_true"):
        np.testing.assert_array_equal(other[name].values, ref[name].values, err_msg=name)


def test_graph_names_are_deterministic_and_chunk_specific():
    a = make_scene(rows=40, cols=40, chunks=20)["reflectance"].data
    b = make_scene(rows=40, cols=40, chunks=20)["reflectance"].data
    c = make_scene(rows=40, cols=40, chunks=10)["reflectance"].data
    assert a.name == b.name and a.name != c.name


def test_abundances_sum_to_one_and_no_data_corner(scene):
    ab = scene["abundances_true"].values.astype(np.float64)
    nodata = np.isnan(ab).any(axis=0)
    assert np.array_equal(nodata, np.isnan(ab).all(axis=0))
    assert 0.015 < nodata.mean() < 0.035
    assert nodata[0, 0] and not nodata[-1, -1]  # the north-west corner
    valid = ab[:, ~nodata]
    assert valid.min() >= 0
    np.testing.assert_allclose(valid.sum(axis=0), 1.0, atol=1e-6)
    refl = scene["reflectance"].values
    assert np.array_equal(np.isnan(refl).any(axis=-1), nodata)
    assert np.array_equal(np.isnan(refl).all(axis=-1), nodata)


def test_pure_patches_hold_every_endmember(scene):
    ab = scene["abundances_true"].values
    pure = ab == 1.0
    assert all(pure[j].sum() >= 1 for j in range(ab.shape[0]))
    assert 0 < pure.any(axis=0).mean() < 0.05
    mixed = make_scene(rows=100, cols=120, chunks=60, pure_patches=False, nodata_corner=False)
    mixed_ab = mixed["abundances_true"].values
    assert not np.isnan(mixed_ab).any()
    assert not (mixed_ab == 1.0).any()


def test_abundances_mix_realistically(scene):
    ab = scene["abundances_true"].values
    valid = ~np.isnan(ab).any(axis=0)
    dominant = ab[:, valid].max(axis=0)
    assert 0.1 < (dominant > 0.9).mean() < 0.6  # some pixels nearly pure
    assert (dominant < 0.6).mean() > 0.1  # and many real mixtures


def test_noise_level_matches_snr():
    ds = make_scene(rows=80, cols=80, n_endmembers=4, snr_db=25.0, chunks=40, clip=False,
                    dtype="float64").compute()
    e = ds["endmembers_true"].values
    sigma = np.sqrt(np.mean(e**2) / 10 ** (25.0 / 10))
    assert ds.attrs["noise_sigma"] == pytest.approx(sigma)
    clean = np.einsum("kyx,kb->yxb", ds["abundances_true"].values, e)
    noise = ds["reflectance"].values - clean
    noise = noise[np.isfinite(noise)]
    assert abs(noise.mean()) < 3 * sigma / np.sqrt(noise.size) + 1e-12
    assert noise.std() == pytest.approx(sigma, rel=0.02)


def test_clip_keeps_reflectance_non_negative():
    ds = make_scene(rows=40, cols=40, snr_db=5.0, chunks=40)
    refl = ds["reflectance"].values
    assert np.nanmin(refl) == 0.0


def test_seed_reproducible_and_distinct():
    a = make_scene(rows=30, cols=30, chunks=30)
    b = make_scene(rows=30, cols=30, chunks=30)
    c = make_scene(rows=30, cols=30, chunks=30, seed=1)
    np.testing.assert_array_equal(a["reflectance"].values, b["reflectance"].values)
    assert not np.array_equal(a["reflectance"].values, c["reflectance"].values, equal_nan=True)


@pytest.mark.parametrize("k", [1, 4, 5, 6, 8])
def test_endmembers_far_apart_and_from_distinct_classes(k):
    ds = make_scene(rows=40, cols=40, n_endmembers=k, chunks=40, min_angle_deg=5.0)
    e = ds["endmembers_true"].values.astype(np.float64)
    angles = _angles_deg(e, e)[~np.eye(k, dtype=bool)]
    assert (angles >= 5.0).all()
    classes = list(ds["endmember_class"].values)
    assert len(set(classes)) == min(k, 5)
    spectra, _, names, lib_classes = load_spectral_library()
    for j, i in enumerate(ds.attrs["library_index"]):
        np.testing.assert_array_equal(e[j], spectra[i])
        assert ds["endmember_name"].values[j] == f"{lib_classes[i]}:{names[i]}"


def test_float64_scene():
    ds = make_scene(rows=20, cols=20, chunks=10, dtype="float64")
    assert ds["reflectance"].dtype == np.float64 == ds["abundances_true"].dtype


def test_scene_round_trips_zarr_and_netcdf(tmp_path):
    ds = make_scene(rows=30, cols=40, n_endmembers=3, chunks=(15, 20))
    ds.to_zarr(tmp_path / "scene.zarr", consolidated=False)
    ds.to_netcdf(tmp_path / "scene.nc", engine="h5netcdf")
    for back in (
        xr.open_zarr(tmp_path / "scene.zarr", consolidated=False),
        xr.open_dataset(tmp_path / "scene.nc", engine="h5netcdf"),
    ):
        with back:
            np.testing.assert_array_equal(back["reflectance"].values, ds["reflectance"].values)
            np.testing.assert_array_equal(back["abundances_true"].values,
                                          ds["abundances_true"].values)
            assert list(back["endmember_name"].values) == list(ds["endmember_name"].values)
            assert back.attrs["crs"] == "EPSG:32633"
            assert back["spatial_ref"].attrs["grid_mapping_name"] == "transverse_mercator"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": 0}, "rows must be an integer >= 1, got 0"),
        ({"n_endmembers": 2.5}, "n_endmembers must be an integer >= 1, got 2.5"),
        ({"n_endmembers": 400}, "n_endmembers=400 exceeds the library's 301 spectra"),
        ({"chunks": (0, 5)}, "chunks must be positive, got (0, 5)"),
        ({"chunks": "auto"}, "chunks must be two positive integers"),
        ({"dtype": "int8"}, "dtype must be 'float32' or 'float64', got 'int8'"),
        ({"snr_db": float("nan")}, "snr_db must be a finite number, got nan"),
        ({"temperature": 0.0}, "length_scale and temperature must be > 0"),
        ({"n_endmembers": 5, "min_angle_deg": 60.0},
         "cannot choose 5 endmembers with pairwise spectral angles >= 60 degrees"),
        ({"rows": 2, "cols": 2, "n_endmembers": 5},
         "a 2 x 2 scene has no room for a pure patch of each of 5 endmembers"),
    ],
)
def test_errors_name_the_problem(kwargs, message):
    with pytest.raises(InputError, match=re.escape(message)):
        make_scene(**kwargs)
