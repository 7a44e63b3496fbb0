"""``open_cube``: any hyperspectral cube (ENVI, GeoTIFF/COG, Zarr, NetCDF, HDF5, xarray) as one
lazy float32 ``(spatial, spatial, band)`` DataArray.

Every reader stops at metadata: the cube comes back as a dask graph. Stored integers are
scaled and no-data values masked inside that graph (one element-wise kernel per block), so
what the caller computes are reflectances with NaN where the sensor has no data.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import warnings
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from xarray.core import indexing

from dnmf.errors import InputError
from dnmf.hyperspectral import emit, enmap
from dnmf.hyperspectral.envi import (
    BINARY_EXTENSIONS,
    find_envi_files,
    nm_factor,
    open_envi,
    tile_shape,
)
from dnmf.io import hdf5, netcdf, zarr_
from dnmf.io.common import Location, listing, resolve_location
from dnmf.io.open import detect_format

__all__ = ["BAND_DIM_NAMES", "WAVELENGTH_NAMES", "describe_cube", "open_cube"]

#: Dim names taken to be the spectral dim (compared case-insensitively).
BAND_DIM_NAMES = ("band", "bands", "wavelength", "wavelengths", "spectral", "channel",
                  "channels", "lambda")
#: Coordinate names taken to hold band-centre wavelengths (case-insensitively).
WAVELENGTH_NAMES = ("wavelength", "wavelengths", "wl", "band_wavelength")
_FWHM_NAMES = ("fwhm",)
_BBL_NAMES = ("bbl", "bad_band_list")
#: Georeferencing attrs carried over to the cube (and to maps built from it).
GEO_ATTRS = ("crs", "crs_wkt", "map_info", "transform", "grid_mapping")
#: Attrs describing how values are stored; consumed by decoding, never kept on the cube.
_ENCODING_ATTRS = ("nodata", "_FillValue", "missing_value", "scale_factor", "add_offset",
                   "scales", "offsets")
_CUBE_FORMATS = "ENVI (.hdr + binary), GeoTIFF/COG (.tif), Zarr, NetCDF (.nc) or HDF5 (.h5)"
_HDF5_SKIP_ATTRS = {"DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME", "_Netcdf4Dimid",
                    "_Netcdf4Coordinates", "_nc3_strict"}
_WL_TEXT = re.compile(
    r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*"
    r"(nm|nanomet(?:er|re)s?|um|µm|μm|micromet(?:er|re)s?|microns?)(?![a-z])",
    re.IGNORECASE,
)


def open_cube(
    source: Any,
    *,
    var: str | None = None,
    band_dim: str | None = None,
    chunks: Any = None,
    scale_factor: float | None = None,
) -> xr.DataArray:
    """Open a hyperspectral cube lazily, band dim last, as float32 with NaN for no-data.

    Parameters
    ----------
    source : str, os.PathLike, xarray.DataArray or xarray.Dataset
        A path or fsspec URL of an ENVI raster (the ``.hdr`` or the binary beside it), a
        GeoTIFF/COG (``.tif``/``.tiff``, needs ``dnmf[geotiff]``), a Zarr store (written by
        xarray, or a plain array/group: name the array with ``var``), a NetCDF file
        (``.nc``) or an HDF5 file (``.h5``/``.hdf5``/``.he5``, dataset path in ``var``);
        or a cube already in xarray.
    var : str, optional
        The variable (Dataset, NetCDF, Zarr; ``"group/name"`` inside groups) or dataset path
        (HDF5) holding the cube; by default the only 3-D numeric one.
    band_dim : str, optional
        The spectral dim. By default a dim named band/bands/wavelength/spectral/channel/
        lambda, else the dim carrying a wavelength coordinate, else the smallest dim when
        it is strictly the smallest.
    chunks : dict or tuple, optional
        Dask chunks: a dict by dim name, or a tuple in the returned (spatial, spatial, band)
        order. By default all bands in one chunk and spatial tiles of about 32 MiB, in
        whole multiples of the stored chunking. A dask-backed input keeps its chunks.
    scale_factor : float, optional
        Reflectance = stored value × ``scale_factor`` (e.g. 0.0001 for reflectance stored as
        integers × 10000), replacing the input's own scale factor; its offset still applies.

    Returns
    -------
    xarray.DataArray, dims (spatial_0, spatial_1, band)
        Dask-backed float32; nothing was computed. The two spatial dims keep their names and
        order. Stored values were scaled (ENVI ``reflectance scale factor``: divided; CF
        ``scale_factor``/``add_offset``: multiplied and added) and the no-data value
        (``nodata``, ENVI ``data ignore value``, ``_FillValue``, ``missing_value``),
        compared before scaling, became NaN. Coordinates: ``wavelength(band)`` in nm when
        known, ``fwhm``/``bbl`` when known, spatial coords and ``spatial_ref``. Attrs:
        ``band_dim``, ``spatial_dims`` (2 names), ``source_format``, ``stored_dtype``,
        ``scaled`` (whether a scale or offset was applied),
        ``source`` (the path, for files) and any of ``crs``, ``crs_wkt``, ``map_info``,
        ``transform``, ``grid_mapping``.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    InputError
        The cube is not 3-D, the band dim is ambiguous (use ``band_dim``), several 3-D
        variables and no ``var``, an unsupported file, or ``rioxarray`` missing for GeoTIFF.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> raw = xr.DataArray(np.full((4, 3, 5), 1200, dtype=np.int16), dims=("band", "y", "x"),
    ...                    attrs={"scale_factor": 1e-4, "_FillValue": -9999})
    >>> cube = open_cube(raw)
    >>> cube.dims, cube.dtype, round(float(cube[0, 0, 0]), 6)
    (('y', 'x', 'band'), dtype('float32'), 0.12)
    """
    if isinstance(source, xr.Dataset):
        array = _pick_variable(source, var, "the Dataset")
        fmt, stored, chunked = "xarray", None, False
    elif isinstance(source, xr.DataArray):
        if var is not None and var != source.name:
            raise InputError(
                f"var={var!r} does not apply to a DataArray (named {source.name!r}) — drop var "
                "or pass the Dataset"
            )
        array, fmt, stored, chunked = source, "xarray", None, False
    elif isinstance(source, str | os.PathLike):
        array, fmt, stored = _open_path(os.fspath(source), var, chunks)
        chunked = fmt == "envi"  # open_envi applied ``chunks`` already
    else:
        raise InputError(
            f"cannot open a {type(source).__name__} as a cube: pass a path ({_CUBE_FORMATS}), "
            "an xarray.DataArray or an xarray.Dataset"
        )
    if array.ndim != 3:
        raise InputError(
            f"the cube must be 3-D (two spatial dims and a band dim); got dims "
            f"{_dims_text(array)} — select a 3-D variable (--var) or add/squeeze dims first"
        )
    if 0 in array.shape:
        raise InputError(f"the cube is empty: dims {_dims_text(array)} — check the input")
    array = _attach_wavelengths_from_attrs(array)
    bdim = _band_dim(array, band_dim)
    spatial = tuple(d for d in array.dims if d != bdim)
    array = _standard_band_coords(array, bdim)
    array = _chunk(array, bdim, spatial, None if chunked else chunks, stored, source)
    array = array.transpose(*spatial, bdim)
    out = _decode(array, bdim, spatial, fmt, _checked_scale(scale_factor))
    if isinstance(source, str | os.PathLike):
        out.attrs["source"] = os.fspath(source)
    return out


def describe_cube(cube: xr.DataArray) -> str:
    """One line telling what :func:`open_cube` detected, for the CLI.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> c = open_cube(xr.DataArray(np.ones((2, 3, 4), np.float32), dims=("y", "x", "band"),
    ...               coords={"wavelength": ("band", [400.0, 500, 600, 700])}))
    >>> describe_cube(c)
    'cube y=2 x=3 band=4 (6 pixels x 4 bands), band dim band, spatial dims (y, x), float32, wavelength 400-700 nm, source xarray; no-data pixels are counted when the cube is read'
    """
    bdim = cube.attrs.get("band_dim", cube.dims[-1])
    spatial = tuple(cube.attrs.get("spatial_dims", [d for d in cube.dims if d != bdim]))
    sizes = " ".join(f"{d}={n}" for d, n in cube.sizes.items())
    n_pixels = int(np.prod([cube.sizes[d] for d in spatial]))
    parts = [
        f"cube {sizes} ({n_pixels:,} pixels x {cube.sizes[bdim]} bands)",
        f"band dim {bdim}",
        f"spatial dims ({', '.join(map(str, spatial))})",
        str(cube.dtype),
    ]
    if "wavelength" in cube.coords:
        wl = np.asarray(cube.coords["wavelength"].values, dtype=float)
        if np.isfinite(wl).any():
            parts.append(f"wavelength {np.nanmin(wl):g}-{np.nanmax(wl):g} nm")
    else:
        parts.append("no wavelengths")
    if "bbl" in cube.coords:
        parts.append(f"{int((np.asarray(cube.coords['bbl'].values) == 0).sum())} bands flagged "
                     "bad (bbl)")
    parts.append(f"source {cube.attrs.get('source_format', 'unknown')}")
    return ", ".join(parts) + "; no-data pixels are counted when the cube is read"


# --------------------------------------------------------------------------- dims and coords


def _dims_text(array: xr.DataArray) -> str:
    return "(" + ", ".join(f"{d}={n}" for d, n in array.sizes.items()) + ")"


def _named(names: tuple[str, ...], name: Hashable) -> bool:
    return str(name).lower() in names


def _band_dim(array: xr.DataArray, band_dim: str | None) -> Hashable:
    dims = array.dims
    if band_dim is not None:
        if band_dim not in dims:
            raise InputError(
                f"band_dim={band_dim!r} is not a dim of the cube {_dims_text(array)} — pass "
                "one of its dims with --band-dim"
            )
        return band_dim
    named = [d for d in dims if _named(BAND_DIM_NAMES, d)]
    if len(named) == 1:
        return named[0]
    if not named:
        carrying = {array.coords[c].dims[0] for c in array.coords
                    if _named(WAVELENGTH_NAMES, c) and array.coords[c].ndim == 1}
        if len(carrying) == 1:
            return carrying.pop()
        sizes = sorted(array.shape)
        if not carrying and sizes[0] < sizes[1]:
            return dims[int(np.argmin(array.shape))]
    raise InputError(
        f"cannot tell which dim of the cube {_dims_text(array)} holds the bands — pass "
        "--band-dim NAME (band_dim=NAME)"
    )


def _units(attrs: Mapping[str, Any]) -> str:
    for key in ("units", "unit", "wavelength_units", "wavelength units"):
        if key in attrs:
            return str(attrs[key])
    return ""


def _standard_band_coords(array: xr.DataArray, bdim: Hashable) -> xr.DataArray:
    """``wavelength`` (nm), ``fwhm`` (nm) and ``bbl`` (0/1) coordinates along the band dim."""
    along = {str(c): c for c in array.coords
             if array.coords[c].dims == (bdim,) and array.coords[c].dtype.kind in "iuf"}
    factor: float | None = None

    def take(names: tuple[str, ...]) -> tuple[Hashable, xr.DataArray] | None:
        for key, c in along.items():
            if key.lower() in names:
                return c, array.coords[c]
        return None

    new: dict[str, Any] = {}
    drop: list[Hashable] = []
    found = take(WAVELENGTH_NAMES)
    if found is not None:
        name, coord = found
        values = np.asarray(coord.values, dtype=np.float64)
        factor = nm_factor(values, _units(coord.attrs))
        if factor is not None:
            new["wavelength"] = (bdim, values * factor, {"units": "nm"})
            if name not in ("wavelength", bdim):
                drop.append(name)
    found = take(_FWHM_NAMES)
    if found is not None:
        name, coord = found
        values = np.asarray(coord.values, dtype=np.float64)
        units = _units(coord.attrs)
        f = nm_factor(values, units) if units else factor
        if f is not None:
            new["fwhm"] = (bdim, values * f, {"units": "nm"})
            if name != "fwhm":
                drop.append(name)
    found = take(_BBL_NAMES)
    if found is not None:
        name, coord = found
        new["bbl"] = (bdim, (np.asarray(coord.values) != 0).astype(np.int8))
        if name != "bbl":
            drop.append(name)
    if drop:
        array = array.drop_vars(drop)
    return array.assign_coords(new) if new else array


def _attach_wavelengths_from_attrs(array: xr.DataArray) -> xr.DataArray:
    """A ``wavelength`` coordinate from band descriptions (GeoTIFF ``long_name``) when the
    cube has none."""
    if any(_named(WAVELENGTH_NAMES, c) for c in array.coords):
        return array
    names = array.attrs.get("long_name")
    if not isinstance(names, list | tuple) or len(names) < 2:
        return array
    dims = [d for d in array.dims if array.sizes[d] == len(names)]
    if len(dims) != 1:
        return array
    values = _wavelengths_from_text(names)
    if values is None:
        return array
    return array.assign_coords(wavelength=(dims[0], values, {"units": "nm"}))


def _wavelengths_from_text(texts: Any) -> np.ndarray | None:
    """Wavelengths in nm from band descriptions like ``"450.5 nm"``, ``"Band 3 (0.55 um)"``
    or plain numbers; ``None`` unless every description yields one."""
    values = []
    for text in texts:
        m = _WL_TEXT.search(str(text))
        if m:
            unit = m[2].lower()
            values.append(float(m[1]) * (1.0 if unit.startswith("n") else 1000.0))
            continue
        try:
            values.append(float(str(text).strip()))
        except ValueError:
            return None
    out = np.asarray(values, dtype=np.float64)
    if not any(_WL_TEXT.search(str(t)) for t in texts):
        out = out * (nm_factor(out, "") or 1.0)  # bare numbers: below 100 means µm
    return out


def _aux_coords(sizes: dict[str, int], aux: Mapping[str, tuple[np.ndarray, str]]
                ) -> dict[str, Any]:
    """Attach 1-D arrays (wavelength, fwhm, bbl found beside a raw array) to the one dim of
    matching length."""
    coords: dict[str, Any] = {}
    for name, (values, units) in aux.items():
        dims = [d for d, n in sizes.items() if n == values.shape[0]]
        if values.ndim == 1 and len(dims) == 1:
            coords[name] = (dims[0], values, {"units": units} if units else {})
    return coords


# --------------------------------------------------------------------------- chunking


def _chunk(array: xr.DataArray, bdim: Hashable, spatial: tuple[Hashable, ...], chunks: Any,
           stored: Mapping[Hashable, int] | None, source: Any) -> xr.DataArray:
    """Dask chunks: the caller's, else a dask input's own, else all bands by spatial tiles
    of about 32 MiB aligned to the stored chunking."""
    if chunks is not None:
        if isinstance(chunks, Mapping):
            unknown = [k for k in chunks if k not in array.dims]
            if unknown:
                raise InputError(
                    f"chunks name unknown dim(s) {unknown}; the cube's dims are "
                    f"{list(array.dims)}"
                )
            spec = dict(chunks)
        else:
            sizes = tuple(chunks) if isinstance(chunks, tuple | list) else (chunks,) * 3
            if len(sizes) != 3:
                raise InputError(f"chunks={chunks!r}: give 3 sizes (spatial, spatial, band)")
            spec = dict(zip((*spatial, bdim), sizes, strict=True))
        return _chunk_data(array, spec, source)
    if isinstance(array.data, da.Array):
        return array
    itemsize = max(array.dtype.itemsize, 4)
    s = (stored or {})
    tile = tile_shape((array.sizes[spatial[0]], array.sizes[spatial[1]]),
                      array.sizes[bdim] * itemsize,
                      (s.get(spatial[0], 1), s.get(spatial[1], 1)) if stored else None)
    spec = {spatial[0]: tile[0], spatial[1]: tile[1], bdim: -1}
    return _chunk_data(array, spec, source)


def _chunk_data(array: xr.DataArray, spec: dict[Hashable, Any], source: Any) -> xr.DataArray:
    """Chunk the values only: DataArray.chunk would turn the coordinates into dask arrays
    too, and reading the wavelengths would then be a dask computation."""
    name = None  # in-memory data: dask names it by its contents
    if isinstance(source, str | os.PathLike):
        # a deterministic graph name for file-backed arrays (path + stamp), as dnmf.io does
        name = "cube-" + tokenize(os.fspath(source), array.attrs.get("_stamp"), array.name, spec)
    data = array.variable.chunk(spec, name=name).data
    small = {k: c.variable.load() for k, c in array.coords.items()
             if c.ndim <= 1 and not isinstance(c.data, da.Array)}  # read now, file closed
    return array.copy(deep=False, data=data).assign_coords(small)


# --------------------------------------------------------------------------- decoding


def _scalar(value: Any) -> float:
    return float(np.asarray(value, dtype=np.float64).ravel()[0])


def _checked_scale(scale_factor: Any) -> float | None:
    if scale_factor is None:
        return None
    try:
        value = float(scale_factor)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"the scale factor must be a positive number (reflectance = stored "
                         f"value x F, e.g. 0.0001); got {scale_factor!r}")
    return value


def _decode(array: xr.DataArray, bdim: Hashable, spatial: tuple[Hashable, ...],
            fmt: str, scale_override: float | None = None) -> xr.DataArray:
    """Float32 reflectances: masked before scaling, scaled in float64, rounded once."""
    attrs = dict(array.attrs)
    fmt = attrs.pop("source_format", fmt)
    attrs.pop("_stamp", None)
    nodata = []
    for key in ("nodata", "_FillValue", "missing_value"):
        if attrs.get(key) is not None:
            nodata += [float(v) for v in np.asarray(attrs[key], dtype=np.float64).ravel()]
    nb = array.sizes[bdim]
    scale: Any = None
    offset: Any = None
    divide = fmt == "envi"  # ENVI's reflectance scale factor divides
    if attrs.get("scale_factor") is not None:
        scale = _scalar(attrs["scale_factor"])
    elif isinstance(attrs.get("scales"), list | tuple) and len(attrs["scales"]) == nb:
        scale = np.asarray(attrs["scales"], dtype=np.float64)  # per-band (rioxarray)
    if attrs.get("add_offset") is not None:
        offset = _scalar(attrs["add_offset"])
    elif isinstance(attrs.get("offsets"), list | tuple) and len(attrs["offsets"]) == nb:
        offset = np.asarray(attrs["offsets"], dtype=np.float64)
    if scale_override is not None:  # the caller's factor multiplies, whatever the format
        scale, divide = scale_override, False
    if scale is not None and np.all(np.asarray(scale) == 1.0):
        scale = None
    if offset is not None and np.all(np.asarray(offset) == 0.0):
        offset = None
    if scale is not None and np.any(np.asarray(scale) == 0.0):
        raise InputError("the cube's scale factor is 0 — fix the scale_factor attribute")
    # a NaN no-data value needs no masking: a float cube's NaN is already NaN (and an integer
    # cube holds none); dropping it spares a copy of every block on every read
    nodata = [v for v in nodata if not np.isnan(v)]
    stored = str(array.dtype)
    if array.dtype.kind not in "iuf":
        raise InputError(
            f"the cube has dtype {array.dtype}; it must be numeric (integer or float) — "
            "pick another variable (--var)"
        )
    data = array.data
    if nodata or scale is not None or offset is not None or data.dtype != np.float32:
        data = data.map_blocks(_decode_block, nodata=tuple(nodata), scale=scale, offset=offset,
                               divide=divide, dtype=np.float32,
                               name="decode-" + tokenize(data.name, nodata, scale, offset,
                                                         divide))
    for key in _ENCODING_ATTRS:
        attrs.pop(key, None)
    if isinstance(attrs.get("long_name"), tuple):
        del attrs["long_name"]  # per-band descriptions, now in the wavelength coordinate
    grid = array.encoding.get("grid_mapping") or attrs.get("grid_mapping")
    if grid:
        attrs["grid_mapping"] = grid
    ref_name = grid if grid in array.coords else ("spatial_ref" if "spatial_ref" in array.coords
                                                  else None)
    if ref_name is not None and "crs_wkt" not in attrs:
        ref_attrs = array.coords[ref_name].attrs
        wkt = ref_attrs.get("crs_wkt") or ref_attrs.get("spatial_ref")
        if wkt:
            attrs["crs_wkt"] = str(wkt)
    attrs.update(band_dim=bdim, spatial_dims=tuple(spatial), source_format=fmt,
                 stored_dtype=stored,
                 scaled=scale is not None or offset is not None or scale_override is not None)
    out = array.copy(deep=False, data=data)
    out.attrs = attrs
    out.encoding = {}
    return out


def _decode_block(block: np.ndarray, *, nodata: tuple[float, ...], scale: Any, offset: Any,
                  divide: bool) -> np.ndarray:
    """Block kernel: NaN where the stored value is a no-data value, then scale (band last)."""
    bad = None
    for value in nodata:
        hit = np.isnan(block) if np.isnan(value) else block == value
        bad = hit if bad is None else bad | hit
    if scale is not None or offset is not None:
        # float64 so the result is the correctly rounded float32 of value * scale + offset
        out64 = block.astype(np.float64)
        if scale is not None:
            out64 = out64 / scale if divide else out64 * scale
        if offset is not None:
            out64 += offset
        out = out64.astype(np.float32)
    else:
        out = block.astype(np.float32, copy=True)
    if bad is not None:
        out[bad] = np.nan
    return out


# --------------------------------------------------------------------------- variables


def _candidates(ds: xr.Dataset) -> list[Hashable]:
    return [k for k, v in ds.data_vars.items() if v.ndim == 3 and v.dtype.kind in "iuf"]


def _pick_variable(ds: xr.Dataset, var: str | None, where: str) -> xr.DataArray:
    entries = [(str(k), tuple(v.shape), v.dtype) for k, v in ds.data_vars.items()]
    if var is not None:
        if var not in ds.data_vars:
            raise InputError(f"no variable {var!r} in {where}; variables: {listing(entries)}")
        return ds[var]
    candidates = _candidates(ds)
    if len(candidates) == 1:
        return ds[candidates[0]]
    if len(candidates) > 1:
        listed = listing([e for e in entries if e[0] in map(str, candidates)])
        raise InputError(
            f"{where} holds {len(candidates)} 3-D variables; pick the cube with --var "
            f"(var=): {listed}"
        )
    if len(entries) == 1:
        return ds[next(iter(ds.data_vars))]  # its shape error says precisely what is wrong
    raise InputError(
        f"no 3-D numeric variable in {where}; variables: {listing(entries)} — pass the cube's "
        "variable with --var"
    )


# --------------------------------------------------------------------------- files


def _open_path(path: str, var: str | None, chunks: Any
               ) -> tuple[xr.DataArray, str, dict[Hashable, int] | None]:
    loc = resolve_location(path)
    ext = loc.extension
    if ext == ".hdr" or (loc.is_local and os.path.isfile(loc.path) and _has_envi_header(loc)):
        if not loc.is_local:
            raise InputError(f"ENVI files are read from local paths only; copy {path} first")
        if var is not None:
            raise InputError(f"{path} is an ENVI raster holding one cube; drop --var ({var!r})")
        envi_chunks = chunks
        if isinstance(chunks, tuple | list):
            envi_chunks = tuple(chunks)  # ENVI cubes are already (y, x, band)
        array = open_envi(loc.path, chunks=envi_chunks)
        return array, "envi", None
    image = enmap.image_of(loc.path) if loc.is_local else None
    if image is not None:  # an EnMAP L2A product given by its metadata file
        loc, ext = resolve_location(str(image)), ".tif"
    if ext in (".tif", ".tiff"):
        array, fmt, stored = _open_geotiff(loc, var)
        metadata = enmap.metadata_of(loc.path) if loc.is_local else None
        if metadata is not None:
            array, fmt = enmap.annotate(array, metadata), "enmap"
        return array, fmt, stored
    try:
        fmt = detect_format(loc)
    except InputError as err:
        raise InputError(f"cannot open {path} as a cube ({_CUBE_FORMATS}): {err}") from err
    for product_format, can_open, open_product in _PRODUCTS:
        if fmt == product_format and can_open(loc):
            return open_product(loc, var)
    reader = _CUBE_READERS.get(fmt)
    if reader is None:
        raise InputError(
            f"{path} is a {fmt} file; hyperspectral cubes are read from {_CUBE_FORMATS} — "
            "convert it to Zarr or NetCDF"
        )
    return reader(loc, var)


def _has_envi_header(loc: Location) -> bool:
    if loc.extension not in BINARY_EXTENSIONS and loc.extension not in (
            e.upper() for e in BINARY_EXTENSIONS):
        return False
    try:
        find_envi_files(loc.path)
    except (InputError, FileNotFoundError):
        return False
    return True


def _stored_map(variable: xr.DataArray) -> dict[Hashable, int] | None:
    stored = netcdf.stored_chunks(variable)
    return dict(zip(variable.dims, stored, strict=True)) if stored else None


def _split_var(var: str | None) -> tuple[str | None, str | None]:
    """``"group/sub/name"`` -> ``("group/sub", "name")``; a bare name has no group."""
    if var is not None and "/" in var.strip("/"):
        group, name = var.strip("/").rsplit("/", 1)
        return group, name
    return None, var


def _dataset_variable(open_group: Callable[[str | None], xr.Dataset], var: str | None,
                      loc: Location) -> tuple[xr.DataArray, dict[Hashable, int] | None]:
    """The cube's variable of a store xarray reads: ``open_group(group)`` opens the
    variables (of the group ``var`` names, if any)."""
    group, name = _split_var(var)
    ds = open_group(group)
    where = loc.original if group is None else f"{loc.original} (group {group})"
    array = _pick_variable(ds, name, where)
    array.attrs["_stamp"] = loc.stamp()
    return array, _stored_map(array)


def _open_netcdf(loc: Location, var: str | None, *, engine: str
                 ) -> tuple[xr.DataArray, str, dict[Hashable, int] | None]:
    try:
        array, stored = _dataset_variable(
            functools.partial(netcdf.open_cube, loc, engine=engine), var, loc)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - every backend failure becomes one message
        raise InputError(f"cannot read {loc.original} as NetCDF: {type(err).__name__}: {err} — "
                         "check the file and --var") from err
    return array, "netcdf", stored


def _open_zarr(loc: Location, var: str | None
               ) -> tuple[xr.DataArray, str, dict[Hashable, int] | None]:
    try:
        array, stored = _dataset_variable(functools.partial(zarr_.open_cube, loc), var, loc)
    except InputError:
        raise
    except Exception:  # noqa: BLE001 - not an xarray store: read the zarr array itself
        return _open_raw_zarr(loc, var)
    return _with_raw_reader(array, loc, var), "zarr", stored


def _with_raw_reader(array: xr.DataArray, loc: Location, var: str | None) -> xr.DataArray:
    """``array`` (an xarray store's cube variable, values as stored) read by dnmf's raw
    chunk reader when its chunks are plain bytes in local files (:class:`dnmf.io.zarr_.
    RawChunks`): the same values as zarr-python gives, without its codec pipeline's copies
    (a 200 x 200 x 180 float32 tile: ~5 ms instead of ~50 ms). Anything else is left as is."""
    import zarr

    if not loc.is_local:
        return array
    group, name = _split_var(var)
    try:
        node = zarr_.open_node(loc)
        arr = node[f"{group}/{array.name}" if group else str(array.name)]
    except Exception:  # noqa: BLE001 - not found as a plain array: xarray's reader stays
        return array
    if not isinstance(arr, zarr.Array) or zarr_.RawChunks.of(arr) is None or (
            tuple(arr.shape) != tuple(array.shape) or np.dtype(arr.dtype) != array.dtype):
        return array
    reader = zarr_.ZarrChunkReader(arr, f"array {array.name!r} in {loc.original}")
    out = _lazy(reader, array.dims, array.attrs, array.coords, array.name,
                array.attrs.get("_stamp"))
    out.encoding = dict(array.encoding)  # grid_mapping lives there (decode_coords="all")
    return out


class _ReaderBackend(xr.backends.BackendArray):
    """xarray's lazy-indexing protocol over a picklable reader (``HDF5Array``,
    ``ZarrChunkReader``), so the cube is chunked once its band dim is known."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.shape = tuple(reader.shape)
        self.dtype = np.dtype(reader.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._raw)

    def _raw(self, key: tuple[Any, ...]) -> np.ndarray:
        return np.asarray(self.reader[key])

    def __dask_tokenize__(self) -> Any:
        return tokenize(self.reader)


def _lazy(reader: Any, dims: tuple[str, ...], attrs: dict[str, Any], coords: dict[str, Any],
          name: str, stamp: Any) -> xr.DataArray:
    data = indexing.LazilyIndexedArray(_ReaderBackend(reader))
    variable = xr.Variable(dims, data, attrs={**attrs, "_stamp": stamp})
    return xr.DataArray(variable, coords=coords, name=name)


def _open_raw_zarr(loc: Location, var: str | None
                   ) -> tuple[xr.DataArray, str, dict[Hashable, int] | None]:
    import zarr

    node = zarr_.open_node(loc)
    parent = None
    if isinstance(node, zarr.Group):
        arrays = [(p, tuple(a.shape), a.dtype) for p, a in node.members(max_depth=None)
                  if isinstance(a, zarr.Array)]
        if var is None:
            cubes = [e for e in arrays if len(e[1]) == 3]
            if len(cubes) != 1:
                what = "no 3-D array" if not cubes else f"{len(cubes)} 3-D arrays"
                raise InputError(f"{loc.original} holds {what}; arrays: {listing(arrays)} — "
                                 "name the cube's array with --var")
            component = cubes[0][0]
        else:
            component = var.strip("/")
            if component not in {e[0] for e in arrays}:
                raise InputError(f"no array {var!r} in {loc.original}; arrays: "
                                 f"{listing(arrays)}")
        arr = node[component]
        head, _, _ = component.rpartition("/")
        parent = node[head] if head else node
        label = f"array {component!r} in {loc.original}"
    else:
        arr, component, label = node, None, loc.original
        if var not in (None, ""):
            raise InputError(f"{loc.original} is a single zarr array, so --var {var!r} does "
                             "not apply — drop it or point at the enclosing group")
    assert isinstance(arr, zarr.Array)
    names = zarr_.dimension_names(arr)
    dims = (tuple(str(n) for n in names) if names and all(names)
            else tuple(f"dim_{i}" for i in range(arr.ndim)))
    attrs = {k: v for k, v in arr.attrs.items() if k != "_ARRAY_DIMENSIONS"}
    aux: dict[str, tuple[np.ndarray, str]] = {}
    if parent is not None:
        for p, a in parent.members():
            if isinstance(a, zarr.Array) and a.ndim == 1 and str(p).lower() in (
                    *WAVELENGTH_NAMES, *_FWHM_NAMES, *_BBL_NAMES):
                aux[str(p)] = (np.asarray(a[:]), _units(a.attrs))
    aux.update(_aux_from_attrs(attrs))
    sizes = dict(zip(dims, arr.shape, strict=True))
    coords = _aux_coords(sizes, aux) if arr.ndim == 3 else {}
    reader = zarr_.ZarrChunkReader(arr, label)
    stored = dict(zip(dims, reader.stored_chunks, strict=True))
    name = (component or posixpath.basename(loc.path.rstrip("/"))).rsplit("/", 1)[-1]
    return _lazy(reader, dims, attrs, coords, name, loc.stamp()), "zarr", stored


def _aux_from_attrs(attrs: dict[str, Any]) -> dict[str, tuple[np.ndarray, str]]:
    """Wavelength/fwhm/bbl lists stored as attributes of the cube's array; removed from
    ``attrs``."""
    aux = {}
    for key in list(attrs):
        if str(key).lower() in (*WAVELENGTH_NAMES, *_FWHM_NAMES, *_BBL_NAMES):
            values = np.asarray(attrs[key])
            if values.ndim == 1 and values.dtype.kind in "iuf":
                aux[str(key)] = (values, _units(attrs) if "wave" in str(key).lower() else "")
                del attrs[key]
    return aux


def _open_hdf5(loc: Location, var: str | None
               ) -> tuple[xr.DataArray, str, dict[Hashable, int] | None]:
    import h5py

    stamp = loc.stamp()
    try:
        h5file, fileobj = hdf5.open_file(loc)
    except OSError as err:
        raise InputError(f"cannot read {loc.original} as HDF5: {err}") from err
    try:
        entries = hdf5.datasets(h5file)
        if var is None:
            cubes = [e for e in entries if len(e[1]) == 3]
            if len(cubes) != 1:
                what = "no 3-D dataset" if not cubes else f"{len(cubes)} 3-D datasets"
                raise InputError(f"{loc.original} holds {what}; datasets: {listing(entries)} "
                                 "— name the cube's dataset with --var")
            name = cubes[0][0]
        else:
            name = "/" + var.strip("/")
            if not isinstance(h5file.get(name), h5py.Dataset):
                raise InputError(f"no dataset {var!r} in {loc.original}; datasets: "
                                 f"{listing(entries)}")
        dset = h5file[name]
        shape = tuple(dset.shape or ())
        dims = tuple(_h5_dim_name(dset, i) for i in range(len(shape)))
        if len(set(dims)) != len(dims):
            dims = tuple(f"dim_{i}" for i in range(len(shape)))
        attrs = {k: _h5_attr(v) for k, v in dset.attrs.items() if k not in _HDF5_SKIP_ATTRS}
        aux = _aux_from_attrs(attrs)
        for key, obj in dset.parent.items():
            if (isinstance(obj, h5py.Dataset) and obj.ndim == 1 and key.lower() in (
                    *WAVELENGTH_NAMES, *_FWHM_NAMES, *_BBL_NAMES)):
                aux[key] = (np.asarray(obj[()]), _units({k: _h5_attr(v)
                                                         for k, v in obj.attrs.items()}))
        coords = _aux_coords(dict(zip(dims, shape, strict=True)), aux) if len(shape) == 3 else {}
        stored_dtype = dset.dtype
        stored = dict(zip(dims, dset.chunks, strict=True)) if dset.chunks else None
    except (OSError, RuntimeError, KeyError) as err:
        raise InputError(f"cannot read {loc.original} as HDF5: {err}") from err
    finally:
        hdf5.close((h5file, fileobj))
    reader = hdf5.HDF5Array(loc, name, shape, stored_dtype, stamp)
    array = _lazy(reader, dims, attrs, coords, name.rsplit("/", 1)[-1], stamp)
    return array, "hdf5", stored


def _h5_dim_name(dset: Any, i: int) -> str:
    dim = dset.dims[i]
    if dim.label:
        return str(dim.label)
    try:
        scales = list(dim.values())
    except Exception:  # noqa: BLE001 - broken dimension scales only lose the name
        scales = []
    if scales and scales[0].name:
        return posixpath.basename(scales[0].name)
    return f"dim_{i}"


def _h5_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        return [v.decode("utf-8", "replace") for v in value.ravel()]
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iuf":
        return value.ravel()[0].item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _open_geotiff(loc: Location, var: str | None
                  ) -> tuple[xr.DataArray, str, dict[Hashable, int] | None]:
    try:
        import rasterio
        import rioxarray
    except ImportError as err:
        raise InputError(
            f"reading GeoTIFF {loc.original} needs rioxarray: pip install 'dnmf[geotiff]'"
        ) from err
    if var is not None:
        raise InputError(f"{loc.original} is a GeoTIFF holding one cube; drop --var ({var!r})")
    target = loc.path if loc.is_local else loc.original
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning and friends
            with rasterio.open(target) as src:
                band_tags = [src.tags(i) for i in src.indexes]
                block = src.block_shapes[0] if src.block_shapes else None
            array = rioxarray.open_rasterio(target, mask_and_scale=False, cache=False,
                                            lock=False)
    except Exception as err:  # noqa: BLE001 - rasterio raises its own error types
        raise InputError(f"cannot read {loc.original} as GeoTIFF: {type(err).__name__}: {err}"
                         " — check that the file is a complete GeoTIFF") from err
    if isinstance(array, list):
        raise InputError(f"{loc.original} holds {len(array)} subdatasets; open one of them")
    if "band" in array.dims:
        wl = [t.get("wavelength") or t.get("WAVELENGTH") for t in band_tags]
        if all(w is not None for w in wl) and len(wl) == array.sizes["band"]:
            try:
                values = np.asarray([float(w) for w in wl])
            except ValueError:
                values = None
            if values is not None:
                units = (band_tags[0].get("wavelength_units")
                         or band_tags[0].get("WAVELENGTH_UNITS") or "")
                array = array.assign_coords(
                    wavelength=("band", values, {"units": units} if units else {}))
    array.attrs["_stamp"] = loc.stamp()
    stored = {"y": block[0], "x": block[1]} if block else None
    return array, "geotiff", stored


#: Format (as :func:`dnmf.io.open.detect_format` names it) -> the reader of a cube stored in
#: it, each built on its :mod:`dnmf.io` engine; other formats hold no cube.
_CUBE_READERS: dict[str, Callable[[Location, str | None],
                                  tuple[xr.DataArray, str, dict[Hashable, int] | None]]] = {
    "zarr": _open_zarr,
    "netcdf": functools.partial(_open_netcdf, engine="h5netcdf"),
    "netcdf3": functools.partial(_open_netcdf, engine="scipy"),
    "hdf5": _open_hdf5,
}

#: Public products whose layout is known, asked before the plain reader of their format:
#: (format, whether a file has the product's layout, its reader).
_PRODUCTS: tuple[tuple[str, Callable[[Location], bool], Callable[
    [Location, str | None], tuple[xr.DataArray, str, dict[Hashable, int] | None]]], ...] = (
    ("netcdf", emit.can_open, emit.open_emit),
)
