"""From a cube to the NMF input matrix and back: bad bands, valid pixels, maps.

:func:`pixel_matrix` turns a ``(y, x, band)`` cube into X, the ``(n_valid_pixels,
n_kept_bands)`` float32 matrix NMF factorizes, with one row chunk per spatial tile of the
cube, so every row panel of X (and of W) is one tile. One dask pass counts the valid pixels
of each tile (and keeps a bit-packed valid mask per tile, 1/8 byte a pixel); after it X has
known chunk sizes and :meth:`PixelMatrix.to_maps` scatters per-pixel rows back into
``(c, y, x)`` maps tile by tile, NaN where a pixel had no data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from dnmf.errors import InputError
from dnmf.hyperspectral.cube import GEO_ATTRS, open_cube

__all__ = [
    "VALID_RANGE_NM",
    "WATER_ABSORPTION_NM",
    "PixelMatrix",
    "pixel_matrix",
    "resolve_bad_bands",
]

#: Atmospheric water vapour absorption windows (nm) that ``--bad-bands auto`` drops.
WATER_ABSORPTION_NM = ((1340, 1460), (1790, 1960))
#: Bands outside this range (nm) are dropped by ``--bad-bands auto`` (detector edges).
VALID_RANGE_NM = (400, 2450)

_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
_INDEX = re.compile(r"^\d+$")
_INDEX_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")
_WL_RANGE = re.compile(rf"^{_NUM}\s*(nm|um|µm|μm)?\s*-\s*{_NUM}\s*(nm|um|µm|μm)$", re.IGNORECASE)
_LIST_SYNTAX = ("comma-separated 0-based band indices ('3'), index ranges ('0-5', inclusive) "
                "and wavelength ranges with a unit ('1340-1460nm', '1.34-1.46um')")


# --------------------------------------------------------------------------- bad bands


def _band_dim(cube: xr.DataArray) -> Hashable:
    return cube.attrs.get("band_dim", cube.dims[-1])


def _wavelengths(cube: xr.DataArray, what: str) -> np.ndarray:
    if "wavelength" not in cube.coords:
        raise InputError(
            f"{what} needs band wavelengths, but the cube has no wavelength coordinate — give "
            "band indices instead (--bad-bands 0-5,120-130) or add wavelengths to the input"
        )
    return np.asarray(cube.coords["wavelength"].values, dtype=np.float64)


def resolve_bad_bands(cube: xr.DataArray, spec: str | Sequence[Any] | np.ndarray | None = None
                      ) -> np.ndarray:
    """Which bands to keep, from a ``--bad-bands`` specification.

    Parameters
    ----------
    cube : xarray.DataArray
        As :func:`~dnmf.hyperspectral.cube.open_cube` returns it (its ``band_dim`` attr,
        else the last dim, is the band dim).
    spec : None, "none", "auto", str, sequence or bool array
        ``None``: drop the bands the ``bbl`` coordinate flags (0), keep all when there is
        none. ``"none"``: keep every band. ``"auto"``: drop the water absorption windows
        :data:`WATER_ABSORPTION_NM`, everything outside :data:`VALID_RANGE_NM` (needs
        wavelengths) and ``bbl``-flagged bands. A list, as a string ``"0-4,100,1340-1460nm"``
        or a sequence of ints and such strings: drop exactly those band indices (0-based,
        ranges inclusive) and bands whose wavelength lies in a range (ends included); the
        ``bbl`` coordinate is not applied. A boolean array of one value per band is taken as
        the keep mask itself.

    Returns
    -------
    numpy.ndarray of bool, shape (n_bands,)
        True for the bands to keep.

    Raises
    ------
    InputError
        A malformed item, an index out of range, wavelength ranges without wavelengths, or
        fewer than 2 bands left.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.zeros((1, 1, 6)), dims=("y", "x", "band"),
    ...     coords={"wavelength": ("band", [380.0, 600, 1400, 1700, 1850, 2500])})
    >>> resolve_bad_bands(cube, "auto").astype(int).tolist()
    [0, 1, 0, 1, 0, 0]
    >>> resolve_bad_bands(cube, "0,2-3,1800-1900nm").astype(int).tolist()
    [0, 1, 0, 0, 0, 1]
    """
    bdim = _band_dim(cube)
    n = int(cube.sizes[bdim])
    bbl_keep = (np.asarray(cube.coords["bbl"].values) != 0 if "bbl" in cube.coords
                else np.ones(n, dtype=bool))
    label = "--bad-bands"
    if spec is None:
        keep = bbl_keep.copy()
        label = "the bad band list (bbl)"
    elif isinstance(spec, str) and spec.strip().lower() == "none":
        keep = np.ones(n, dtype=bool)
    elif isinstance(spec, str) and spec.strip().lower() == "auto":
        wl = _wavelengths(cube, "--bad-bands auto")
        lo, hi = VALID_RANGE_NM
        keep = bbl_keep & (wl >= lo) & (wl <= hi)  # NaN wavelengths fail both: dropped
        for a, b in WATER_ABSORPTION_NM:
            keep &= ~((wl >= a) & (wl <= b))
        label = "--bad-bands auto"
    elif isinstance(spec, np.ndarray) and spec.dtype == bool:
        if spec.shape != (n,):
            raise InputError(f"a boolean bad-band mask needs {n} values (one per band), got "
                             f"shape {spec.shape}")
        keep = spec.copy()
    else:
        keep = ~_drop_mask(cube, spec, n)
        label = f"--bad-bands {spec if isinstance(spec, str) else list(spec)!r}"
    kept = int(keep.sum())
    if kept < 2:
        raise InputError(
            f"only {kept} of {n} bands remain after dropping bad bands ({label}); NMF needs at "
            "least 2 — drop fewer bands (--bad-bands none, or a shorter list)"
        )
    return keep


def _drop_mask(cube: xr.DataArray, spec: str | Sequence[Any], n: int) -> np.ndarray:
    items: list[Any]
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = list(spec)
    if not items:
        raise InputError(f"--bad-bands {spec!r} lists no bands: give {_LIST_SYNTAX}")
    drop = np.zeros(n, dtype=bool)

    def check(i: int, item: Any) -> int:
        if not 0 <= i < n:
            raise InputError(
                f"band index {i} in --bad-bands ({item!r}) is out of range: the cube has {n} "
                f"bands (0-{n - 1})"
            )
        return i

    for item in items:
        if isinstance(item, bool):
            raise InputError(f"--bad-bands item {item!r} is not a band: give {_LIST_SYNTAX}")
        if isinstance(item, int | np.integer):
            drop[check(int(item), item)] = True
            continue
        text = str(item).strip()
        if _INDEX.match(text):
            drop[check(int(text), item)] = True
        elif m := _INDEX_RANGE.match(text):
            a, b = check(int(m[1]), item), check(int(m[2]), item)
            if a > b:
                raise InputError(f"--bad-bands range {text!r} runs backwards: write {b}-{a}")
            drop[a:b + 1] = True
        elif m := _WL_RANGE.match(text):
            unit = (m[4] or m[2]).lower()
            factor = 1.0 if unit == "nm" else 1000.0
            a, b = float(m[1]) * factor, float(m[3]) * factor
            if a > b:
                raise InputError(f"--bad-bands range {text!r} runs backwards: write the "
                                 "shorter wavelength first")
            wl = _wavelengths(cube, f"--bad-bands wavelength range {text!r}")
            drop |= (wl >= a) & (wl <= b)
        else:
            raise InputError(f"--bad-bands item {text!r} is not understood: give "
                             f"{_LIST_SYNTAX}")
    return drop


# --------------------------------------------------------------------------- block kernels


def _select(block: np.ndarray, keep_idx: np.ndarray | None) -> np.ndarray:
    # take, not block[..., keep_idx]: the same copy, ~3x faster along the last axis
    sub = block if keep_idx is None else np.take(block, keep_idx, axis=-1)
    return sub.astype(np.float32, copy=False)


def _tile_stats(block: np.ndarray, keep_idx: np.ndarray | None) -> np.ndarray:
    """Block kernel: ``[[(n_valid, n_negative, packed valid mask)]]`` (a 1 x 1 object array
    so that dask can stack the tiles' results into one grid)."""
    sub = _select(block, keep_idx)
    valid = np.isfinite(sub).all(axis=-1)
    n_negative = int(np.count_nonzero((sub < 0) & valid[..., None]))
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = (int(valid.sum()), n_negative, np.packbits(valid.ravel()))
    return out


def _tile_rows(block: np.ndarray, keep_idx: np.ndarray | None, expected: int,
               tile: tuple[int, int]) -> np.ndarray:
    """Block kernel: the tile's valid pixels (row-major) as rows, negatives clipped to 0."""
    sub = _select(block, keep_idx)
    valid = np.isfinite(sub).all(axis=-1)
    n_valid = int(np.count_nonzero(valid))
    if n_valid == valid.size and n_valid == expected:
        # every pixel valid (the usual tile): the rows are the tile itself, row-major, with
        # no copy when nothing needs clipping (the block may be a read-only mapped chunk)
        rows = sub.reshape(-1, sub.shape[-1])
        if rows.size and rows.min() < 0:
            rows = np.maximum(rows, 0)
        return np.ascontiguousarray(rows, dtype=np.float32)
    rows = sub[valid]  # boolean indexing copies, in row-major pixel order
    if rows.shape[0] != expected:
        raise InputError(
            f"tile {tile} of the cube now has {rows.shape[0]} valid pixels, {expected} when "
            "they were counted: the input changed while dnmf was reading it — do not modify it "
            "during a run"
        )
    np.maximum(rows, 0, out=rows)
    return np.ascontiguousarray(rows, dtype=np.float32)


def _unpack_mask(packed: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return np.unpackbits(packed, count=rows * cols).astype(bool).reshape(rows, cols)


def _scatter(rows: np.ndarray, mask: np.ndarray, fill: float, dtype: np.dtype[Any]
             ) -> np.ndarray:
    """Block kernel: ``(n_valid, c)`` rows into a ``(c, r, cols)`` tile, ``fill`` elsewhere."""
    out = np.full((rows.shape[1], *mask.shape), fill, dtype=dtype)
    out[:, mask] = rows.T
    return out


# --------------------------------------------------------------------------- the matrix


@dataclass(frozen=True, eq=False)
class PixelMatrix:
    """The NMF input built from a cube, and what is needed to map results back onto it.

    Attributes
    ----------
    X : dask.array.Array, shape (n_valid, n_kept), float32
        Valid pixels by kept bands, negatives clipped to 0. One row chunk per spatial tile
        (tiles in row-major grid order, pixels row-major within a tile), chunk sizes known;
        one column chunk.
    valid_counts : numpy.ndarray of int64, shape (n_tiles_0, n_tiles_1)
        Valid pixels per tile; ``X.chunks[0] == tuple(valid_counts.ravel())``.
    tile_chunks : tuple of two tuples of int
        The spatial chunks of the tiles (the cube's, split where a tile was too big).
    keep : numpy.ndarray of bool, shape (n_bands,)
        The bands kept (columns of X) among all the cube's bands.
    n_nodata : int
        Pixels left out: some kept band was NaN, inf or no-data.
    n_negative_clipped : int
        Values below 0 in valid pixels, set to 0.
    spatial_dims : tuple of two names
    band_dim : name
    shape : tuple of int
        ``(n_0, n_1)``: the cube's spatial shape.
    coords : dict
        The cube's coordinates on its spatial dims (and 0-D ones such as ``spatial_ref``).
    band_coords : dict
        The cube's coordinates along the band dim (``wavelength``, ``fwhm``, ``bbl``), over
        all bands.
    attrs : dict
        Georeferencing attrs (``crs``, ``crs_wkt``, ``map_info``, ``transform``,
        ``grid_mapping``) present on the cube.
    """

    X: da.Array
    valid_counts: np.ndarray
    tile_chunks: tuple[tuple[int, ...], tuple[int, ...]]
    keep: np.ndarray
    n_nodata: int
    n_negative_clipped: int
    spatial_dims: tuple[Hashable, Hashable]
    band_dim: Hashable
    shape: tuple[int, int]
    coords: dict[Hashable, xr.Variable] = field(default_factory=dict)
    band_coords: dict[Hashable, xr.Variable] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    _packed: tuple[tuple[np.ndarray, ...], ...] = field(default=(), repr=False)
    _token: str = field(default="", repr=False)

    @property
    def n_valid(self) -> int:
        """Rows of X: pixels with data in every kept band."""
        return int(self.valid_counts.sum())

    @property
    def n_bands(self) -> int:
        """Bands of the cube, kept or not."""
        return int(self.keep.size)

    def valid_mask(self) -> da.Array:
        """Lazy ``(n_0, n_1)`` bool map, True where a pixel is a row of X; the cube's tiles.

        Built from the masks kept by the counting pass: computing it reads no data.
        """
        name = f"pixel-valid-{self._token}"
        layer = {
            (name, i, j): (_unpack_mask, self._packed[i][j], r, c)
            for i, r in enumerate(self.tile_chunks[0])
            for j, c in enumerate(self.tile_chunks[1])
        }
        graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
        return da.Array(graph, name, chunks=self.tile_chunks, dtype=bool)

    def to_maps(self, rows: np.ndarray | da.Array, fill: float = np.nan) -> da.Array:
        """Per-pixel rows back onto the image: ``(n_valid, c)`` -> ``(c, n_0, n_1)``.

        Parameters
        ----------
        rows : numpy.ndarray or dask.array.Array, shape (n_valid, c)
            One row per row of X (e.g. abundances W), any row chunking.
        fill : float
            Value at pixels that are not rows of X.

        Returns
        -------
        dask.array.Array, shape (c, n_0, n_1)
            Chunked ``(c, tile, tile)`` like the cube; one scatter task per tile, nothing
            computed. Float rows keep their dtype; integer rows become float64 when ``fill``
            is NaN.
        """
        rows = rows if isinstance(rows, da.Array) else np.asarray(rows)
        if rows.ndim != 2 or rows.shape[0] != self.n_valid:
            raise InputError(
                f"rows must have shape (n_valid={self.n_valid}, c), got {tuple(rows.shape)} — "
                "pass one row per row of X"
            )
        counts = tuple(int(v) for v in self.valid_counts.ravel())
        c = int(rows.shape[1])
        if isinstance(rows, da.Array):
            rows = rows.rechunk((counts, (c,)))  # lazily aligned to the tiles
        else:
            rows = da.from_array(rows, chunks=(counts, (c,)))
        dtype = rows.dtype
        if dtype.kind != "f" and isinstance(fill, float) and math.isnan(fill):
            dtype = np.dtype(np.float64)
        mask = self.valid_mask()
        name = f"pixel-maps-{tokenize(rows.name, mask.name, fill, dtype.str)}"
        n1 = len(self.tile_chunks[1])
        layer = {
            (name, 0, i, j): (_scatter, (rows.name, i * n1 + j, 0), (mask.name, i, j), fill,
                              dtype)
            for i in range(len(self.tile_chunks[0])) for j in range(n1)
        }
        graph = HighLevelGraph.from_collections(name, layer, dependencies=[rows, mask])
        return da.Array(graph, name, chunks=((c,), *self.tile_chunks), dtype=dtype)

    def to_map(self, values: np.ndarray | da.Array, fill: float = np.nan) -> da.Array:
        """One value per row of X -> a lazy ``(n_0, n_1)`` map (``fill`` at no-data)."""
        if values.ndim != 1:
            raise InputError(f"values must be 1-D (n_valid={self.n_valid},), got shape "
                             f"{tuple(values.shape)}")
        return self.to_maps(values[:, None], fill=fill)[0]

    def wrap_maps(self, maps: Any, dim: str | None = "endmember", name: str | None = None
                  ) -> xr.DataArray:
        """A DataArray over ``(dim, *spatial_dims)`` (or the spatial dims only, for a 2-D
        map) with the cube's spatial coordinates and georeferencing attrs."""
        dims = (*(() if maps.ndim == 2 else (dim,)), *self.spatial_dims)
        return xr.DataArray(maps, dims=dims, coords=dict(self.coords), attrs=dict(self.attrs),
                            name=name)

    def expand_bands(self, spectra: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """``(c, n_kept)`` spectra over the kept bands -> ``(c, n_bands)``, ``fill`` at the
        dropped bands."""
        spectra = np.asarray(spectra)
        if spectra.shape[-1] != int(self.keep.sum()):
            raise InputError(f"spectra have {spectra.shape[-1]} bands, the matrix "
                             f"{int(self.keep.sum())} kept bands")
        dtype = np.result_type(spectra.dtype, np.float32)
        out = np.full((*spectra.shape[:-1], self.n_bands), fill, dtype=dtype)
        out[..., self.keep] = spectra
        return out


def _split(chunks: tuple[int, ...], limit_per_unit: float) -> tuple[int, ...]:
    """Each chunk cut into near-equal parts of at most ``limit_per_unit`` (>= 1)."""
    out: list[int] = []
    for c in chunks:
        parts = max(1, math.ceil(c / max(1.0, limit_per_unit)))
        out += [c // parts + (1 if p < c % parts else 0) for p in range(parts)]
    return tuple(out)


def pixel_matrix(cube: xr.DataArray, keep: np.ndarray | None = None, *,
                 max_tile_bytes: int = 64 * 2**20) -> PixelMatrix:
    """Stack a cube into the NMF input matrix X, one row chunk per spatial tile.

    Parameters
    ----------
    cube : xarray.DataArray
        As :func:`~dnmf.hyperspectral.cube.open_cube` returns it (anything else goes through
        ``open_cube`` first): dask-backed, float, band dim last.
    keep : numpy.ndarray of bool, shape (n_bands,), optional
        Bands to keep (:func:`resolve_bad_bands`); all by default.
    max_tile_bytes : int
        Largest tile (all bands, float32) one task reads; bigger tiles of the cube are split
        into near-equal parts. The band dim becomes one chunk; no other rechunking.

    Returns
    -------
    PixelMatrix
        ``X`` is lazy with known chunk sizes. Building it ran one dask computation, which
        read the cube once to count the valid pixels, negatives and no-data pixels of every
        tile; computing ``X`` reads the cube again.

    Raises
    ------
    InputError
        ``keep`` has the wrong length or keeps fewer than 2 bands, or no pixel has data in
        every kept band.

    Notes
    -----
    Memory: a task holds one tile of all bands plus its valid rows. The driver keeps the
    per-tile counts and a bit-packed valid mask (one bit a pixel), used by
    :meth:`PixelMatrix.to_maps` and :meth:`PixelMatrix.valid_mask` without reading the cube.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    >>> data[0, 1, 2] = np.nan
    >>> pm = pixel_matrix(xr.DataArray(data, dims=("y", "x", "band")))
    >>> pm.X.shape, pm.n_nodata, pm.valid_counts.tolist()
    ((5, 4), 1, [[5]])
    >>> pm.to_map(np.arange(5.0)).compute().tolist()
    [[0.0, nan, 1.0], [2.0, 3.0, 4.0]]
    """
    if not isinstance(cube, xr.DataArray):
        raise InputError(f"pixel_matrix needs an xarray.DataArray cube (open_cube), got "
                         f"{type(cube).__name__}")
    if "band_dim" not in cube.attrs or not isinstance(cube.data, da.Array) or (
            cube.dtype.kind != "f"):
        cube = open_cube(cube)
    bdim = cube.attrs["band_dim"]
    spatial = tuple(d for d in cube.dims if d != bdim)
    cube = cube.transpose(*spatial, bdim)
    n_bands = int(cube.sizes[bdim])
    keep = np.ones(n_bands, dtype=bool) if keep is None else np.asarray(keep)
    if keep.dtype != bool or keep.shape != (n_bands,):
        raise InputError(
            f"keep must be a boolean mask over the cube's {n_bands} bands, got "
            f"{keep.dtype} {keep.shape} — use resolve_bad_bands(cube, spec)"
        )
    if keep.sum() < 2:
        raise InputError(f"keep leaves {int(keep.sum())} bands; NMF needs at least 2")
    keep_idx = None if keep.all() else np.flatnonzero(keep)
    n_kept = int(keep.sum())

    data = cube.data
    bytes_per_pixel = n_bands * max(4, data.dtype.itemsize)
    # Columns first (so that a single row fits), then rows; splitting only, never merging.
    cols = _split(data.chunks[1], max_tile_bytes / bytes_per_pixel)
    rows = _split(data.chunks[0], max_tile_bytes / (bytes_per_pixel * max(cols)))
    if (rows, cols) != data.chunks[:2] or len(data.chunks[2]) != 1:
        data = data.rechunk((rows, cols, (n_bands,)))
    tile_chunks = (tuple(data.chunks[0]), tuple(data.chunks[1]))
    n0, n1 = len(rows), len(cols)

    # The one pass over the data: per-tile counts and packed masks, stacked by dask.
    stats = data.map_blocks(
        _tile_stats, keep_idx=keep_idx, drop_axis=2, chunks=((1,) * n0, (1,) * n1), dtype=object,
        meta=np.empty((0, 0), dtype=object),
        name=f"pixel-stats-{tokenize(data.name, keep_idx)}",
    )
    (grid,) = dask.compute(stats)
    valid_counts = np.array([[grid[i, j][0] for j in range(n1)] for i in range(n0)],
                            dtype=np.int64)
    n_negative = int(sum(grid[i, j][1] for i in range(n0) for j in range(n1)))
    packed = tuple(tuple(grid[i, j][2] for j in range(n1)) for i in range(n0))
    n_valid = int(valid_counts.sum())
    n_pixels = int(np.prod(cube.shape[:2]))
    if n_valid == 0:
        raise InputError(
            f"no pixel of the cube has data in every kept band ({n_pixels:,} pixels, "
            f"{n_kept} bands): check the no-data value and drop all-NaN bands with --bad-bands"
        )

    token = tokenize(data.name, keep_idx, valid_counts)
    name = f"pixel-matrix-{token}"
    layer = {
        (name, i * n1 + j, 0): (_tile_rows, (data.name, i, j, 0), keep_idx,
                                int(valid_counts[i, j]), (i, j))
        for i in range(n0) for j in range(n1)
    }
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[data])
    X = da.Array(graph, name, chunks=(tuple(int(v) for v in valid_counts.ravel()), (n_kept,)),
                 dtype=np.float32)
    spatial_set = set(spatial)
    coords = {k: v.variable for k, v in cube.coords.items() if set(v.dims) <= spatial_set}
    band_coords = {k: v.variable for k, v in cube.coords.items() if v.dims == (bdim,)}
    attrs = {k: cube.attrs[k] for k in GEO_ATTRS if k in cube.attrs}
    return PixelMatrix(
        X=X, valid_counts=valid_counts, tile_chunks=tile_chunks, keep=keep,
        n_nodata=n_pixels - n_valid, n_negative_clipped=n_negative,
        spatial_dims=(spatial[0], spatial[1]), band_dim=bdim,
        shape=(int(cube.shape[0]), int(cube.shape[1])), coords=coords,
        band_coords=band_coords, attrs=attrs, _packed=packed, _token=token,
    )
