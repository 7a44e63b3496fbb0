"""A synthetic hyperspectral scene with known endmembers and abundances, built lazily.

The endmembers come from a small spectral library derived from earthlib (MIT; see
``data/EARTHLIB_LICENSE.txt`` and ``data/derive_earthlib.py``). Every tile of the scene is
computed on its own from the tile's pixel coordinates and the seed, so the cube is the same,
bit for bit, whatever the chunking, and a scene larger than memory streams to Zarr tile by tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal

import numpy as np

from dnmf.errors import InputError

__all__ = ["load_spectral_library", "make_scene"]

_LIBRARY_FILE = "earthlib_spectra.npz"

#: Class order in which endmembers are drawn: one per class before a class repeats.
_CLASS_ORDER = ("vegetation", "bare", "npv", "built", "burned")

#: Candidates weighed per endmember slot (the most distinct of them is taken).
_CANDIDATES = 8
#: Random Fourier modes per abundance field.
_N_MODES = 32
#: Noise is drawn per pixel row in blocks of this many columns, aligned on the scene's columns,
#: so that a tile draws the same numbers whatever its extent.
_NOISE_BLOCK = 64
#: Cosines along an axis are evaluated on aligned blocks of this many pixels (same reason).
_AXIS_BLOCK = 256
#: Fraction of the scene in the no-data corner (a right triangle in the north-west corner).
_NODATA_FRACTION = 0.025
#: The map grid: UTM zone 33N, 30 m pixels, north-west corner at (500000 E, 5000000 N).
_CRS = "EPSG:32633"
# EPSG:32633 as WKT (GDAL's WKT1, from pyproj): a full CRS (datum included) for rioxarray
# and GDAL, without needing pyproj here.
_CRS_WKT = (
    'PROJCS["WGS 84 / UTM zone 33N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",'
    '6378137,298.257223563,AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],'
    'PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,'
    'AUTHORITY["EPSG","9122"]],AUTHORITY["EPSG","4326"]],PROJECTION["Transverse_Mercator"],'
    'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",15],'
    'PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],'
    'PARAMETER["false_northing",0],UNIT["metre",1,AUTHORITY["EPSG","9001"]],'
    'AXIS["Easting",EAST],AXIS["Northing",NORTH],AUTHORITY["EPSG","32633"]]'
)
_PIXEL_SIZE = 30.0
_X0, _Y0 = 500_000.0, 5_000_000.0

# SeedSequence spawn keys: one stream per purpose, so changing one never moves another.
_KEY_ENDMEMBERS, _KEY_FIELDS, _KEY_PATCHES, _KEY_NOISE = 0, 1, 2, 3

SOURCE = (
    "endmember spectra from earthlib 1.1.0 (C. B. Anderson, MIT licence, "
    "https://github.com/earth-chris/earthlib); synthetic abundances and noise by dnmf"
)


@lru_cache(maxsize=1)
def _library() -> dict[str, np.ndarray]:
    ref = resources.files("dnmf.datasets").joinpath("data", _LIBRARY_FILE)
    with ref.open("rb") as f, np.load(f) as z:
        return {name: z[name] for name in z.files}


def load_spectral_library() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The spectral library that :func:`make_scene` draws its endmembers from.

    301 reflectance spectra from earthlib 1.1.0 (MIT licence), balanced over the land-cover
    classes ``bare`` (soil, sand, gravel), ``built`` (roofs, roads, paint...), ``npv``
    (bark, litter, wood), ``vegetation`` (canopies simulated with PROSAIL) and ``burned``
    (char); see ``dnmf/datasets/data/derive_earthlib.py`` for how they were chosen.

    Returns
    -------
    spectra : ndarray of shape (n_spectra, 180), float32
        Reflectance in [0, ~1].
    wavelength : ndarray of shape (180,), float64
        Band centres in nm, 400-2450 nm at 10 nm, without the water-vapour bands
        (1350-1460 nm and 1790-1960 nm).
    names : ndarray of shape (n_spectra,), str
        earthlib's spectrum names (a few repeat).
    classes : ndarray of shape (n_spectra,), str
        earthlib's level-2 land-cover class of each spectrum.

    Examples
    --------
    >>> from dnmf.datasets import load_spectral_library
    >>> spectra, wavelength, names, classes = load_spectral_library()
    >>> spectra.shape, wavelength[[0, -1]].tolist()
    ((301, 180), [400.0, 2450.0])
    """
    lib = _library()
    return (
        lib["spectra"].copy(),
        lib["wavelength"].copy(),
        lib["names"].copy(),
        lib["classes"].copy(),
    )


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spectral angles (degrees) between the rows of a (n, bands) and b (m, bands): (n, m)."""
    ua = a / np.linalg.norm(a, axis=-1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip(ua @ ub.T, -1.0, 1.0)))


def _choose_endmembers(n_endmembers: int, min_angle_deg: float, seed: int) -> np.ndarray:
    """Library indices of ``n_endmembers`` spectra, pairwise angles >= min_angle_deg.

    Slot i prefers class ``_CLASS_ORDER[i % 5]`` and a sub-class not used yet. Of the first
    ``_CANDIDATES`` spectra (in a seeded shuffle) of the best preference level that are at least
    ``min_angle_deg`` from every chosen one, the one farthest from them is taken.
    """
    lib = _library()
    spectra = lib["spectra"].astype(np.float64)
    classes, subclasses = lib["classes"], lib["subclasses"]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_KEY_ENDMEMBERS,)))
    shuffle = rng.permutation(len(spectra))
    chosen: list[int] = []
    used: set[tuple[str, str]] = set()
    for slot in range(n_endmembers):
        cls = _CLASS_ORDER[slot % len(_CLASS_ORDER)]
        candidates = shuffle[~np.isin(shuffle, chosen)]
        nearest = np.zeros(len(candidates))
        if chosen:
            nearest = _angles_deg(spectra[candidates], spectra[chosen]).min(axis=1)
            far = nearest >= min_angle_deg
            candidates, nearest = candidates[far], nearest[far]
        if len(candidates) == 0:
            raise InputError(
                f"cannot choose {n_endmembers} endmembers with pairwise spectral angles >= "
                f"{min_angle_deg:g} degrees from the {len(spectra)}-spectrum library (found "
                f"{len(chosen)}); lower min_angle_deg or n_endmembers"
            )
        # preference level: 0 = the slot's class and a new sub-class, 1 = its class, 2+ = other
        level = 2 * (classes[candidates] != cls) + np.array(
            [(c, s) in used for c, s in zip(classes[candidates], subclasses[candidates],
                                            strict=True)])
        best = np.flatnonzero(level == level.min())[:_CANDIDATES]
        pick = int(candidates[best[np.argmax(nearest[best])]])
        chosen.append(pick)
        used.add((str(classes[pick]), str(subclasses[pick])))
    return np.asarray(chosen, dtype=np.int64)


@dataclass(frozen=True)
class _Spec:
    """Everything a tile needs; small (a few KB), embedded in each task."""

    rows: int
    cols: int
    seed: int
    endmembers: np.ndarray  # (k, bands) float64
    freq_y: np.ndarray  # (k, modes) cycles per pixel
    freq_x: np.ndarray  # (k, modes)
    phase: np.ndarray  # (k, modes)
    temperature: float
    patches: np.ndarray  # (n, 4) int64: row0, col0, side, endmember
    nodata_edge: float  # pixel (i, j) is no-data when (i+.5)/rows + (j+.5)/cols < nodata_edge
    sigma: float
    clip: bool
    dtype: str


def _axis_cos_sin(freq: np.ndarray, phase: np.ndarray | None, start: int, stop: int):
    """cos and sin of 2*pi*freq*t (+ phase) for t in [start, stop): (k, modes, stop-start).

    Evaluated on whole ``_AXIS_BLOCK``-aligned blocks and sliced, so each value is computed in
    the same position of the same vector whatever the tile: bit-identical under any chunking.
    """
    b0 = (start // _AXIS_BLOCK) * _AXIS_BLOCK
    b1 = -(-stop // _AXIS_BLOCK) * _AXIS_BLOCK
    t = np.arange(b0, b1, dtype=np.float64)
    arg = (2.0 * np.pi) * freq[:, :, None] * t
    if phase is not None:
        arg = arg + phase[:, :, None]
    sl = slice(start - b0, stop - b0)
    return np.cos(arg)[:, :, sl], np.sin(arg)[:, :, sl]


def _abundance_tile(spec: _Spec, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """True abundances of the pixels [r0, r1) x [c0, c1): (k, r1-r0, c1-c0) float64."""
    k, n_modes = spec.freq_y.shape
    cy, sy = _axis_cos_sin(spec.freq_y, spec.phase, r0, r1)
    cx, sx = _axis_cos_sin(spec.freq_x, None, c0, c1)
    # z_j = sqrt(2/M) sum_m cos(a_m + b_m), a = 2 pi fy y + phase, b = 2 pi fx x: a smooth
    # random field of unit variance (random Fourier features of a Gaussian kernel). The sum runs
    # element-wise in a fixed order (no BLAS), so every pixel's value ignores the tile shape.
    logits = np.zeros((k, r1 - r0, c1 - c0))
    for j in range(k):
        acc = logits[j]
        for m in range(n_modes):
            acc += cy[j, m][:, None] * cx[j, m][None, :]
            acc -= sy[j, m][:, None] * sx[j, m][None, :]
    logits *= math.sqrt(2.0 / n_modes) / spec.temperature
    logits -= logits.max(axis=0)
    weights = np.exp(logits)
    total = np.zeros(weights.shape[1:])
    for j in range(k):
        total += weights[j]
    abundances = weights / total

    for row0, col0, side, e in spec.patches:
        a0, a1 = max(row0, r0), min(row0 + side, r1)
        b0, b1 = max(col0, c0), min(col0 + side, c1)
        if a0 < a1 and b0 < b1:
            abundances[:, a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = 0.0
            abundances[e, a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = 1.0

    nodata = _nodata_tile(spec, r0, r1, c0, c1)
    if nodata is not None:
        abundances[:, nodata] = np.nan
    return abundances


def _nodata_tile(spec: _Spec, r0: int, r1: int, c0: int, c1: int) -> np.ndarray | None:
    if spec.nodata_edge <= 0:
        return None
    fy = (np.arange(r0, r1) + 0.5) / spec.rows
    fx = (np.arange(c0, c1) + 0.5) / spec.cols
    return (fy[:, None] + fx[None, :]) < spec.nodata_edge


def _noise_tile(spec: _Spec, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Standard normal noise for the pixels [r0, r1) x [c0, c1): (rows, cols, bands).

    Pixel row i, column block c draws from ``SeedSequence(seed, spawn_key=(3, i, c))``, a block
    being ``_NOISE_BLOCK`` scene columns: the same numbers for a pixel whatever the tiling.
    """
    bands = spec.endmembers.shape[1]
    dtype = np.dtype(spec.dtype)
    out = np.empty((r1 - r0, c1 - c0, bands), dtype=dtype)
    blk0, blk1 = c0 // _NOISE_BLOCK, (c1 - 1) // _NOISE_BLOCK
    for i in range(r0, r1):
        for blk in range(blk0, blk1 + 1):
            ss = np.random.SeedSequence(spec.seed, spawn_key=(_KEY_NOISE, i, blk))
            draw = np.random.Generator(np.random.PCG64(ss)).standard_normal(
                (_NOISE_BLOCK, bands), dtype=dtype
            )
            lo, hi = blk * _NOISE_BLOCK, (blk + 1) * _NOISE_BLOCK
            a, b = max(lo, c0), min(hi, c1)
            out[i - r0, a - c0 : b - c0] = draw[a - lo : b - lo]
    return out


def _abundance_block(spec: _Spec, block_info=None) -> np.ndarray:
    (_, _), (r0, r1), (c0, c1) = block_info[None]["array-location"]
    return _abundance_tile(spec, r0, r1, c0, c1).astype(spec.dtype)


def _reflectance_block(spec: _Spec, block_info=None) -> np.ndarray:
    (r0, r1), (c0, c1), (_, _) = block_info[None]["array-location"]
    dtype = np.dtype(spec.dtype)
    abundances = _abundance_tile(spec, r0, r1, c0, c1).astype(dtype)
    endmembers = spec.endmembers.astype(dtype)
    # element-wise, in a fixed order, in the output dtype: no BLAS blocking effects, and a
    # float32 tile needs two (rows, cols, bands) float32 buffers besides the noise
    mixed = np.zeros((r1 - r0, c1 - c0, endmembers.shape[1]), dtype=dtype)
    term = np.empty_like(mixed)
    for j in range(endmembers.shape[0]):
        np.multiply(abundances[j][:, :, None], endmembers[j], out=term)
        mixed += term
    noise = _noise_tile(spec, r0, r1, c0, c1)
    noise *= dtype.type(spec.sigma)
    mixed += noise
    if spec.clip:
        np.maximum(mixed, 0, out=mixed)  # NaN (no-data) stays NaN
    return mixed


def _place_patches(rows: int, cols: int, k: int, nodata_edge: float, seed: int) -> np.ndarray:
    """Non-overlapping square pure patches, at least one per endmember (n, 4) int64."""
    side = int(np.clip(min(rows, cols) // 40, 1, 8))
    per_endmember = int(np.clip(round(2 * rows * cols / 200**2), 2, 20))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_KEY_PATCHES,)))
    placed: list[tuple[int, int, int, int]] = []
    gap = 1 if min(rows, cols) >= 4 * side else 0
    for _ in range(per_endmember):
        for e in range(k):
            for _attempt in range(200):
                r = int(rng.integers(0, rows - side + 1))
                c = int(rng.integers(0, cols - side + 1))
                if (r + 0.5) / rows + (c + 0.5) / cols < nodata_edge:
                    continue  # touches the no-data corner
                if all(
                    r + side + gap <= pr or pr + ps + gap <= r
                    or c + side + gap <= pc or pc + ps + gap <= c
                    for pr, pc, ps, _e in placed
                ):
                    placed.append((r, c, side, e))
                    break
    counts = np.bincount([p[3] for p in placed], minlength=k)
    if (counts == 0).any():
        raise InputError(
            f"a {rows} x {cols} scene has no room for a pure patch of each of {k} endmembers; "
            "make the scene larger or pass pure_patches=False"
        )
    return np.asarray(placed, dtype=np.int64).reshape(-1, 4)


def _normalize_chunks(chunks, rows: int, cols: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if isinstance(chunks, int | np.integer):
        chunks = (int(chunks), int(chunks))
    try:
        cy, cx = (int(c) for c in chunks)
    except (TypeError, ValueError):
        raise InputError(
            f"chunks must be two positive integers (rows, cols) per tile, got {chunks!r}"
        ) from None
    if cy < 1 or cx < 1:
        raise InputError(f"chunks must be positive, got {(cy, cx)}; e.g. chunks=(100, 100)")
    cy, cx = min(cy, rows), min(cx, cols)

    def split(n: int, c: int) -> tuple[int, ...]:
        return (c,) * (n // c) + ((n % c,) if n % c else ())

    return split(rows, cy), split(cols, cx)


def make_scene(
    rows: int = 200,
    cols: int = 200,
    n_endmembers: int = 5,
    snr_db: float = 30.0,
    seed: int = 0,
    chunks: int | tuple[int, int] = (100, 100),
    *,
    min_angle_deg: float = 5.0,
    pure_patches: bool = True,
    nodata_corner: bool = True,
    dtype: Literal["float32", "float64"] = "float32",
    length_scale: float = 20.0,
    temperature: float = 0.35,
    clip: bool = True,
):
    """A synthetic hyperspectral scene: linear mixtures of library spectra plus noise.

    Nothing is computed: the reflectance and the true abundances are dask arrays whose tiles
    are generated independently from the seed and the tile's pixel coordinates, so the scene
    is bit-identical for any ``chunks`` and can be larger than memory (stream it with
    ``ds.to_zarr``).

    Parameters
    ----------
    rows, cols : int
        Scene size in pixels (``y`` and ``x``).
    n_endmembers : int
        Number of endmembers k, drawn from :func:`load_spectral_library`: one per land-cover
        class in the order vegetation, bare, npv, built, burned, then again with sub-classes
        not used yet; the draw depends on ``seed`` only.
    snr_db : float
        Signal-to-noise ratio in dB. The noise is white Gaussian, the same sigma in every band
        and pixel, with ``sigma**2 = mean(endmembers**2) / 10**(snr_db / 10)``: the mean power
        of the (pure) endmember spectra over the noise power.
    seed : int
        Seed of every random choice: endmembers, abundance fields, pure patches, noise.
    chunks : int or (int, int)
        Spatial tile size (rows, cols); the band axis is one chunk.
    min_angle_deg : float, keyword-only
        Least spectral angle between any two endmembers (degrees).
    pure_patches : bool, keyword-only
        Place small square patches where one endmember has abundance 1: at least two per
        endmember (more on large scenes, at most 20 each), side ``min(rows, cols) // 40``
        clipped to 1..8 pixels.
    nodata_corner : bool, keyword-only
        Make a triangle in the north-west corner (2.5% of the pixels) no-data: reflectance and
        true abundances are NaN there.
    dtype : {"float32", "float64"}, keyword-only
        Data type of ``reflectance`` and ``abundances_true``.
    length_scale : float, keyword-only
        Correlation length of the abundance fields in pixels.
    temperature : float, keyword-only
        Softmax temperature turning the fields into abundances: smaller gives more pixels
        dominated by one endmember, larger gives more even mixtures.
    clip : bool, keyword-only
        Clip negative reflectance (noise on dark pixels) to 0, as a reflectance product would;
        NMF needs non-negative input.

    Returns
    -------
    xarray.Dataset
        ``reflectance(y, x, band)`` (dask), ``abundances_true(endmember, y, x)`` (dask, same
        spatial chunks; sums to 1), ``endmembers_true(endmember, band)``; coordinates
        ``wavelength(band)`` in nm, ``y`` and ``x`` (UTM 33N northing and easting of pixel
        centres, 30 m, ``y`` decreasing), ``endmember_name`` and ``endmember_class``
        (endmember), ``spatial_ref`` (CF grid mapping); attributes ``crs``, ``snr_db``,
        ``seed``, ``noise_sigma``, ``source`` and the other parameters.

    Raises
    ------
    dnmf.InputError
        A parameter is out of range, or the library has no ``n_endmembers`` spectra that far
        apart (lower ``min_angle_deg``).

    Notes
    -----
    Abundances: for each endmember a smooth Gaussian random field (``_N_MODES`` = 32 random
    Fourier features of a Gaussian kernel with ``length_scale``), then a softmax over the
    endmembers with ``temperature``: non-negative, summing to one, with a realistic share of
    dominated pixels. Reflectance ``= abundances . endmembers + sigma * N(0, 1)``, abundances
    computed per tile in float64, the mixture in ``dtype``. Noise for pixel row i is drawn in 64-column blocks
    from ``SeedSequence(seed, spawn_key=(3, i, block))``. A tile of ``r x c`` pixels costs about
    ``3 * r * c * 180`` values of ``dtype`` in temporaries.

    Examples
    --------
    >>> from dnmf.datasets import make_scene
    >>> ds = make_scene(rows=60, cols=80, n_endmembers=4, chunks=(30, 40))
    >>> ds.reflectance.dims, ds.reflectance.shape
    (('y', 'x', 'band'), (60, 80, 180))
    >>> float(ds.abundances_true.sum("endmember").max()) <= 1.0 + 1e-6
    True
    """
    import dask.array as da
    import xarray as xr
    from dask.base import tokenize

    rows, cols, n_endmembers, seed = _check_int(rows, "rows"), _check_int(cols, "cols"), \
        _check_int(n_endmembers, "n_endmembers"), _check_int(seed, "seed", minimum=0)
    lib = _library()
    if n_endmembers > len(lib["spectra"]):
        raise InputError(
            f"n_endmembers={n_endmembers} exceeds the library's {len(lib['spectra'])} spectra"
        )
    for name, value in (("snr_db", snr_db), ("min_angle_deg", min_angle_deg),
                        ("length_scale", length_scale), ("temperature", temperature)):
        if not np.isfinite(value):
            raise InputError(f"{name} must be a finite number, got {value!r}")
    if length_scale <= 0 or temperature <= 0:
        raise InputError(
            f"length_scale and temperature must be > 0, got {length_scale!r} and {temperature!r}"
        )
    if str(dtype) not in ("float32", "float64"):
        raise InputError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    dtype = str(dtype)  # type: ignore[assignment]
    ychunks, xchunks = _normalize_chunks(chunks, rows, cols)

    index = _choose_endmembers(n_endmembers, float(min_angle_deg), seed)
    endmembers = lib["spectra"][index].astype(np.float64)
    k, bands = endmembers.shape
    sigma = float(np.sqrt(np.mean(endmembers**2) / 10.0 ** (float(snr_db) / 10.0)))

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_KEY_FIELDS,)))
    # a Gaussian kernel exp(-d^2 / (2 l^2)) has a Gaussian spectrum with std 1 / (2 pi l)
    freq = rng.normal(0.0, 1.0 / (2.0 * np.pi * float(length_scale)), size=(2, k, _N_MODES))
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(k, _N_MODES))
    nodata_edge = math.sqrt(2.0 * _NODATA_FRACTION) if nodata_corner else 0.0
    patches = (
        _place_patches(rows, cols, k, nodata_edge, seed)
        if pure_patches else np.zeros((0, 4), dtype=np.int64)
    )
    spec = _Spec(rows=rows, cols=cols, seed=seed, endmembers=endmembers, freq_y=freq[0],
                 freq_x=freq[1], phase=phase, temperature=float(temperature), patches=patches,
                 nodata_edge=nodata_edge, sigma=sigma, clip=bool(clip), dtype=dtype)

    token = tokenize(rows, cols, seed, endmembers, freq, phase, float(temperature), patches,
                     nodata_edge, sigma, bool(clip), dtype, ychunks, xchunks)
    reflectance = da.map_blocks(
        _reflectance_block, spec=spec, chunks=(ychunks, xchunks, (bands,)), dtype=dtype,
        name=f"make_scene-reflectance-{token}", meta=np.empty((0, 0, 0), dtype=dtype),
    )
    abundances = da.map_blocks(
        _abundance_block, spec=spec, chunks=((k,), ychunks, xchunks), dtype=dtype,
        name=f"make_scene-abundances-{token}", meta=np.empty((0, 0, 0), dtype=dtype),
    )

    y = _Y0 - _PIXEL_SIZE * (np.arange(rows) + 0.5)
    x = _X0 + _PIXEL_SIZE * (np.arange(cols) + 0.5)
    names = np.asarray([f"{lib['classes'][i]}:{lib['names'][i]}" for i in index])
    grid = {"grid_mapping": "spatial_ref"}
    ds = xr.Dataset(
        {
            "reflectance": (("y", "x", "band"), reflectance,
                            {"long_name": "surface reflectance", "units": "1", **grid}),
            "abundances_true": (("endmember", "y", "x"), abundances,
                                {"long_name": "true abundance fractions", "units": "1", **grid}),
            "endmembers_true": (("endmember", "band"), endmembers.astype(dtype),
                                {"long_name": "true endmember reflectance", "units": "1"}),
        },
        coords={
            "y": ("y", y, {"units": "m", "standard_name": "projection_y_coordinate",
                           "long_name": "northing"}),
            "x": ("x", x, {"units": "m", "standard_name": "projection_x_coordinate",
                           "long_name": "easting"}),
            "endmember": ("endmember", np.arange(k)),
            "wavelength": ("band", lib["wavelength"].copy(), {"units": "nm"}),
            "endmember_name": ("endmember", names.astype(object)),
            "endmember_class": ("endmember", lib["classes"][index].astype(object)),
            "spatial_ref": ((), np.int32(0), _grid_mapping_attrs()),
        },
        attrs={
            "title": "dnmf synthetic hyperspectral scene",
            "crs": _CRS,
            "snr_db": float(snr_db),
            "seed": seed,
            "noise_sigma": sigma,
            "n_endmembers": k,
            "min_angle_deg": float(min_angle_deg),
            "length_scale": float(length_scale),
            "temperature": float(temperature),
            "pure_patches": int(bool(pure_patches)),
            "nodata_corner": int(bool(nodata_corner)),
            "clip": int(bool(clip)),
            "library_index": index.tolist(),
            "source": SOURCE,
        },
    )
    return ds


def _grid_mapping_attrs() -> dict:
    """CF grid mapping of UTM zone 33N on WGS 84 (EPSG:32633), and a GDAL geotransform."""
    return {
        "crs": _CRS,
        "crs_wkt": _CRS_WKT,
        "spatial_ref": _CRS_WKT,
        "grid_mapping_name": "transverse_mercator",
        "longitude_of_central_meridian": 15.0,
        "latitude_of_projection_origin": 0.0,
        "scale_factor_at_central_meridian": 0.9996,
        "false_easting": 500000.0,
        "false_northing": 0.0,
        "semi_major_axis": 6378137.0,
        "inverse_flattening": 298.257223563,
        "GeoTransform": f"{_X0:.1f} {_PIXEL_SIZE:.1f} 0.0 {_Y0:.1f} 0.0 {-_PIXEL_SIZE:.1f}",
    }


def _check_int(value, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
