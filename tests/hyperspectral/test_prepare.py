"""Bad bands, the chunk-aligned pixel matrix, and maps back from per-pixel rows."""

from __future__ import annotations

import re
from typing import Any

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from dnmf.errors import InputError
from dnmf.hyperspectral.cube import open_cube
from dnmf.hyperspectral.envi import write_envi
from dnmf.hyperspectral.prepare import (
    VALID_RANGE_NM,
    WATER_ABSORPTION_NM,
    PixelMatrix,
    pixel_matrix,
    resolve_bad_bands,
)

NY, NX, NB = 9, 11, 6


def make_values(seed: int = 0, ny: int = NY, nx: int = NX, nb: int = NB) -> np.ndarray:
    """(y, x, band) float32 with NaN/inf pixels, a NaN in a single band, negatives."""
    rng = np.random.default_rng(seed)
    v = rng.gamma(2.0, 0.1, size=(ny, nx, nb)).astype(np.float32)
    v[rng.random((ny, nx)) < 0.2] = np.nan  # whole pixels without data
    if (ny, nx, nb) == (NY, NX, NB):
        v[1, 2, 3] = np.inf
        v[4, 5, 0] = np.nan  # no data in band 0 only
    else:
        v[-1, -1, -1] = np.inf
    v[rng.random((ny, nx, nb)) < 0.05] *= -0.01  # reflectance noise below 0
    return v


def make_cube(values: np.ndarray, chunks: Any = None) -> xr.DataArray:
    arr = xr.DataArray(values, dims=("y", "x", "band"),
                       coords={"y": np.arange(values.shape[0]) * -30.0,
                               "x": np.arange(values.shape[1]) * 30.0,
                               "wavelength": ("band", np.linspace(400, 2500, values.shape[2])),
                               "spatial_ref": ((), 0, {"crs_wkt": "WKT"})},
                       attrs={"crs_wkt": "WKT"})
    return open_cube(arr, chunks=chunks)


def slices(chunks: tuple[int, ...]) -> list[slice]:
    starts = np.cumsum((0, *chunks))
    return [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]


def reference(values: np.ndarray, keep: np.ndarray, tiles: tuple[tuple[int, ...], ...]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The numpy matrix in tile order (boolean indexing per tile), counts and valid mask."""
    sub = values[..., keep]
    valid = np.isfinite(sub).all(axis=-1)
    rows, counts = [], []
    for rs in slices(tiles[0]):
        counts.append([])
        for cs in slices(tiles[1]):
            rows.append(np.maximum(sub[rs, cs][valid[rs, cs]], 0))
            counts[-1].append(int(valid[rs, cs].sum()))
    return np.concatenate(rows), np.array(counts), valid


# --------------------------------------------------------------------------- bad bands


def band_cube(wavelength=None, bbl=None, n: int = 8) -> xr.DataArray:
    coords: dict[str, Any] = {}
    if wavelength is not None:
        coords["wavelength"] = ("band", np.asarray(wavelength, dtype=float))
    if bbl is not None:
        coords["bbl"] = ("band", np.asarray(bbl))
    n = len(wavelength) if wavelength is not None else n
    return xr.DataArray(np.zeros((2, 2, n), np.float32), dims=("y", "x", "band"), coords=coords,
                        attrs={"band_dim": "band"})


WLS = [350.0, 450, 1000, 1340, 1400, 1460, 1500, 1850, 2000, 2450, 2460]


@pytest.mark.parametrize(
    ("spec", "bbl", "dropped"),
    [
        (None, None, []),  # no bbl: keep all
        (None, [1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1], [2, 8]),  # the bbl
        ("none", [1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1], []),
        ("auto", None, [0, 3, 4, 5, 7, 10]),  # edges inclusive: 1340, 1460, 2450
        ("auto", [1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1], [0, 2, 3, 4, 5, 7, 8, 10]),
        ("AUTO ", None, [0, 3, 4, 5, 7, 10]),
        ("0,2-4", [0] * 11, [0, 2, 3, 4]),  # a list replaces the bbl
        ("1340-1460nm", None, [3, 4, 5]),
        ("1.8-1.9um, 10", None, [7, 10]),
        ("1400nm-1500nm", None, [4, 5, 6]),
        ([0, "2-3", "1.99-2.01µm"], None, [0, 2, 3, 8]),
        (np.arange(11) % 2 == 0, None, [1, 3, 5, 7, 9]),  # a keep mask
    ],
)
def test_resolve_bad_bands(spec, bbl, dropped):
    keep = resolve_bad_bands(band_cube(WLS, bbl), spec)
    assert keep.dtype == bool and keep.shape == (11,)
    assert np.flatnonzero(~keep).tolist() == dropped


def test_auto_uses_the_published_windows():
    wl = np.arange(300.0, 2600.0, 10.0)
    keep = resolve_bad_bands(band_cube(wl), "auto")
    lo, hi = VALID_RANGE_NM
    expected = (wl >= lo) & (wl <= hi)
    for a, b in WATER_ABSORPTION_NM:
        expected &= ~((wl >= a) & (wl <= b))
    np.testing.assert_array_equal(keep, expected)


@pytest.mark.parametrize(
    ("cube", "spec", "message"),
    [
        (band_cube(n=8), "auto", "--bad-bands auto needs band wavelengths, but the cube has no "
                                 "wavelength coordinate"),
        (band_cube(n=8), "1340-1460nm", "needs band wavelengths"),
        (band_cube(n=8), "8", "band index 8 in --bad-bands ('8') is out of range: the cube has 8 "
                              "bands (0-7)"),
        (band_cube(n=8), "5-2", "--bad-bands range '5-2' runs backwards: write 2-5"),
        (band_cube(n=8), "1460-1340nm", "runs backwards"),
        (band_cube(n=8), "a,b", "--bad-bands item 'a' is not understood"),
        (band_cube(n=8), "-1", "--bad-bands item '-1' is not understood"),
        (band_cube(n=8), " , ", "lists no bands"),
        (band_cube(n=8), "0-6", "only 1 of 8 bands remain after dropping bad bands "
                                "(--bad-bands '0-6'); NMF needs at least 2"),
        (band_cube(n=3, bbl=[0, 0, 1]), None, "only 1 of 3 bands remain after dropping bad "
                                              "bands (the bad band list (bbl))"),
        (band_cube([400.0, 1400.0]), "auto", "only 1 of 2 bands remain"),
        (band_cube(n=3), np.array([True, False]), "needs 3 values (one per band)"),
        (band_cube(n=3), [True], "item True is not a band"),
    ],
)
def test_bad_band_errors(cube, spec, message):
    with pytest.raises(InputError, match=re.escape(message)):
        resolve_bad_bands(cube, spec)


# --------------------------------------------------------------------------- the matrix


TILINGS = [
    {"y": -1, "x": -1},  # one tile
    {"y": 3, "x": 4},
    {"y": 2, "x": 11},  # row strips
    {"y": 5, "x": 1},  # one column per tile
]


@pytest.mark.parametrize("keep", [None, np.array([1, 0, 1, 1, 0, 1], bool)],
                         ids=["all", "subset"])
@pytest.mark.parametrize("chunks", TILINGS, ids=lambda c: f"{c['y']}x{c['x']}")
def test_matrix_is_chunk_aligned_and_equals_numpy(chunks, keep, count_computes):
    values = make_values()
    cube = make_cube(values, chunks=chunks)
    pm = pixel_matrix(cube, keep)
    assert count_computes.calls == 1, "one counting pass"
    keep_ = np.ones(NB, bool) if keep is None else keep
    tiles = cube.data.chunks[:2]
    ref_rows, ref_counts, valid = reference(values, keep_, tiles)
    assert pm.tile_chunks == tiles
    np.testing.assert_array_equal(pm.valid_counts, ref_counts)
    assert pm.X.chunks == (tuple(ref_counts.ravel()), (int(keep_.sum()),))
    assert pm.X.dtype == np.float32
    assert pm.n_valid == valid.sum() and pm.n_nodata == valid.size - valid.sum()
    sub = values[..., keep_]
    assert pm.n_negative_clipped == int(((sub < 0) & valid[..., None]).sum()) > 0
    X = pm.X.compute()
    np.testing.assert_array_equal(X, ref_rows)
    assert (X >= 0).all()
    np.testing.assert_array_equal(pm.valid_mask().compute(), valid)
    # rows back to maps: the clipped kept bands where valid, NaN elsewhere
    maps = pm.to_maps(pm.X)
    assert maps.chunks == ((int(keep_.sum()),), *tiles)
    expected = np.where(valid[..., None], np.maximum(sub, 0), np.nan).transpose(2, 0, 1)
    np.testing.assert_array_equal(maps.compute(), expected)
    assert count_computes.calls == 4  # X, the mask and the maps: one compute each


@pytest.mark.parametrize("chunks", TILINGS[1:], ids=lambda c: f"{c['y']}x{c['x']}")
def test_tiled_and_single_chunk_agree(chunks):
    values = make_values(seed=1)
    one = pixel_matrix(make_cube(values))
    tiled = pixel_matrix(make_cube(values, chunks=chunks))
    assert one.n_valid == tiled.n_valid and one.n_nodata == tiled.n_nodata
    assert one.n_negative_clipped == tiled.n_negative_clipped
    # the same pixels, in another order: compare them on the image
    np.testing.assert_array_equal(one.to_maps(one.X).compute(),
                                  tiled.to_maps(tiled.X).compute())
    # rows from one matrix's order map through the other only after reordering: use ids
    ids_one = one.to_map(np.arange(one.n_valid)).compute()
    ids_tiled = tiled.to_map(np.arange(tiled.n_valid)).compute()
    order = ids_one[np.isfinite(ids_tiled)].astype(int)[np.argsort(
        ids_tiled[np.isfinite(ids_tiled)])]
    np.testing.assert_array_equal(one.X.compute()[order], tiled.X.compute())


def test_to_maps_with_any_row_chunking_and_numpy():
    values = make_values(seed=2)
    pm = pixel_matrix(make_cube(values, chunks={"y": 4, "x": 5}))
    rng = np.random.default_rng(0)
    W = rng.random((pm.n_valid, 3))
    valid = pm.valid_mask().compute()
    got_np = pm.to_maps(W).compute()
    got_da = pm.to_maps(da.from_array(W, chunks=(7, 2))).compute()
    np.testing.assert_array_equal(got_np, got_da)
    # each valid pixel got its own row: the map of row ids is a permutation
    ids = pm.to_map(np.arange(pm.n_valid)).compute()
    assert np.isnan(ids[~valid]).all()
    assert sorted(ids[valid].astype(int).tolist()) == list(range(pm.n_valid))
    np.testing.assert_array_equal(got_np[:, valid], W[ids[valid].astype(int)].T)
    ints = pm.to_maps(np.ones((pm.n_valid, 1), np.int64))
    assert ints.dtype == np.float64
    filled = pm.to_map(np.ones(pm.n_valid, np.float32), fill=-1.0).compute()
    assert filled.dtype == np.float32 and (filled[~valid] == -1).all()


def test_wrap_maps_and_expand_bands():
    values = make_values(seed=3)
    cube = make_cube(values)
    keep = np.array([1, 1, 0, 1, 0, 1], bool)
    pm = pixel_matrix(cube, keep)
    maps = pm.wrap_maps(pm.to_maps(np.ones((pm.n_valid, 2))), dim="endmember", name="abundance")
    assert maps.dims == ("endmember", "y", "x") and maps.name == "abundance"
    np.testing.assert_array_equal(maps.x.values, cube.x.values)
    assert "spatial_ref" in maps.coords and maps.attrs == {"crs_wkt": "WKT"}
    assert isinstance(maps.data, da.Array)
    assert pm.wrap_maps(pm.to_map(np.ones(pm.n_valid))).dims == ("y", "x")
    spectra = pm.expand_bands(np.arange(8.0).reshape(2, 4))
    np.testing.assert_array_equal(spectra[:, ~keep], np.nan)
    np.testing.assert_array_equal(spectra[:, keep], np.arange(8.0).reshape(2, 4))
    np.testing.assert_array_equal(pm.band_coords["wavelength"].values, cube.wavelength.values)


def test_big_tiles_are_split_and_bands_joined():
    values = make_values(seed=4)
    cube = make_cube(values, chunks={"y": 9, "x": 11, "band": 2})  # bands in 3 chunks
    bytes_per_pixel = NB * 4
    pm = pixel_matrix(cube, max_tile_bytes=12 * bytes_per_pixel)  # 12 pixels a tile at most
    rows, cols = pm.tile_chunks
    assert max(rows) * max(cols) <= 12 and sum(rows) == NY and sum(cols) == NX
    assert pm.X.numblocks == (len(rows) * len(cols), 1)
    ref_rows, ref_counts, _ = reference(values, np.ones(NB, bool), pm.tile_chunks)
    np.testing.assert_array_equal(pm.valid_counts, ref_counts)
    np.testing.assert_array_equal(pm.X.compute(), ref_rows)
    # a single pixel bigger than the limit cannot be split further: one-pixel-wide tiles
    tiny = pixel_matrix(cube, max_tile_bytes=1)
    assert set(tiny.tile_chunks[0]) == {1} and set(tiny.tile_chunks[1]) == {1}


def test_open_cube_and_pixel_matrix_compute_once(tmp_path, count_computes):
    raw = (make_values(seed=5) * 10000).astype(np.float32)
    raw[~np.isfinite(raw)] = -9999.0
    write_envi(tmp_path / "c.img", raw.astype(np.int16), interleave="bip", nodata=-9999,
               scale_factor=10000.0, wavelength=np.linspace(400, 2500, NB))
    cube = open_cube(tmp_path / "c.hdr", chunks={"y": 4, "x": 4})
    keep = resolve_bad_bands(cube, "auto")
    pm = pixel_matrix(cube, keep)
    maps = pm.to_maps(pm.X)
    mask = pm.valid_mask()
    assert count_computes.calls == 1, "only the counting pass may compute"
    assert isinstance(maps, da.Array) and isinstance(mask, da.Array)
    assert not any(np.isnan(c) for c in pm.X.chunks[0])
    assert pm.X.shape == (pm.n_valid, int(keep.sum()))


def test_input_changed_between_passes(tmp_path):
    values = np.ones((4, 4, 3), np.float32)
    write_envi(tmp_path / "c.img", values)
    pm = pixel_matrix(open_cube(tmp_path / "c.img"))
    values[0, 0, 0] = np.nan
    write_envi(tmp_path / "c.img", values)  # same size: same graph, fewer valid pixels
    with pytest.raises(InputError, match=re.escape("tile (0, 0) of the cube now has 15 valid "
                                                   "pixels, 16 when they were counted")):
        pm.X.compute()


@pytest.mark.parametrize("keep_idx", [None, np.array([0, 2, 3])], ids=["all bands", "3 of 5"])
@pytest.mark.parametrize("hole", [False, True], ids=["all valid", "a no-data pixel"])
@pytest.mark.parametrize("negative", [False, True], ids=["non-negative", "a negative"])
def test_tile_rows_of_a_read_only_block(keep_idx, hole, negative):
    """A tile's rows (a mapped chunk is read-only): valid pixels in row-major order, the kept
    bands, negatives clipped to 0, the block itself never written."""
    from dnmf.hyperspectral.prepare import _tile_rows

    block = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
    if hole:
        block[1, 2, 4] = np.nan
    if negative:
        block[2, 0, 0] = -0.5
    before = block.copy()
    block.flags.writeable = False
    sub = block if keep_idx is None else block[..., keep_idx]
    valid = np.isfinite(sub).all(axis=-1)
    expected = np.maximum(sub[valid], 0)
    rows = _tile_rows(block, keep_idx, int(valid.sum()), (0, 0))
    assert rows.dtype == np.float32 and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_array_equal(block, before)
    with pytest.raises(InputError, match="the input changed while dnmf was reading it"):
        _tile_rows(block, keep_idx, int(valid.sum()) + 1, (0, 0))


def test_matrix_errors():
    cube = make_cube(make_values())
    with pytest.raises(InputError, match=re.escape("keep must be a boolean mask over the cube's "
                                                   "6 bands, got int64 (6,)")):
        pixel_matrix(cube, np.ones(6, int))
    with pytest.raises(InputError, match="keep leaves 1 bands"):
        pixel_matrix(cube, np.eye(6, dtype=bool)[0])
    with pytest.raises(InputError, match=re.escape("no pixel of the cube has data in every kept "
                                                   "band (4 pixels, 2 bands)")):
        pixel_matrix(make_cube(np.full((2, 2, 2), np.nan, np.float32)))
    with pytest.raises(InputError, match="needs an xarray.DataArray"):
        pixel_matrix(np.zeros((2, 2, 2)))  # type: ignore[arg-type]
    pm = pixel_matrix(cube)
    with pytest.raises(InputError, match=re.escape(f"rows must have shape (n_valid={pm.n_valid}, "
                                                   "c), got (3, 2)")):
        pm.to_maps(np.zeros((3, 2)))
    with pytest.raises(InputError, match="values must be 1-D"):
        pm.to_map(np.zeros((pm.n_valid, 2)))
    assert isinstance(pm, PixelMatrix)


def test_raw_integer_cube_goes_through_open_cube():
    raw = xr.DataArray(np.array([[[1000, -9999], [2000, 3000]]], np.int16),
                       dims=("band", "y", "x"), attrs={"scale_factor": 1e-4, "nodata": -9999})
    raw = xr.concat([raw, raw], dim="band")
    pm = pixel_matrix(raw)
    assert pm.n_valid == 3 and pm.spatial_dims == ("y", "x") and pm.band_dim == "band"
    np.testing.assert_allclose(pm.X.compute(), [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]], rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    ny=st.integers(1, 7), nx=st.integers(1, 7), cy=st.integers(1, 7), cx=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(ny, nx, cy, cx, seed):
    """For any shape and tiling: X holds exactly the valid pixels and maps back onto them."""
    values = make_values(seed=seed, ny=ny, nx=nx, nb=3)
    values[0, 0] = 0.5  # at least one valid pixel
    pm = pixel_matrix(make_cube(values, chunks={"y": cy, "x": cx}))
    _, counts, valid = reference(values, np.ones(3, bool), pm.tile_chunks)
    np.testing.assert_array_equal(pm.valid_counts, counts)
    maps = pm.to_maps(pm.X).compute()
    np.testing.assert_array_equal(
        maps, np.where(valid[..., None], np.maximum(values, 0), np.nan).transpose(2, 0, 1))
