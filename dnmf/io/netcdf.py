"""NetCDF inputs through xarray (h5netcdf for NetCDF-4, scipy for classic NetCDF-3).

xarray applies the CF conventions (``scale_factor``, ``add_offset``, ``_FillValue``), so
packed integers come back as the floats they stand for and fill values as NaN. The same
path serves zarr variables written by xarray with CF packing (see :mod:`dnmf.io.zarr_`).

Engine surface (see :data:`dnmf.io.open.ENGINES`): :func:`can_open` (NetCDF-4) and
:func:`can_open_classic` (NetCDF-3), :func:`open_netcdf` (X), :func:`open_cube` (the variables
of a hyperspectral cube, values as stored) with :func:`stored_chunks`; :func:`open_dataset`
and :func:`from_xarray_dataset` also serve :mod:`~dnmf.io.zarr_`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
from dask.base import tokenize

from dnmf.io.common import (
    Location,
    cannot_read,
    check_shape,
    float_dtype,
    missing_variable,
    panel_chunks,
    pick_variable,
)
from dnmf.io.hdf5 import sniff_hdf5
from dnmf.io.source import MatrixSource

__all__ = [
    "CF_ATTRS",
    "EXTENSIONS",
    "NETCDF3_MAGICS",
    "can_open",
    "can_open_classic",
    "from_xarray_dataset",
    "open_cube",
    "open_dataset",
    "open_netcdf",
    "stored_chunks",
]

#: File extensions that claim NetCDF (the file's signature wins where it has one).
EXTENSIONS = (".nc", ".nc4", ".cdf")

#: First bytes of classic NetCDF files (CDF-1 and CDF-2; CDF-5 is not readable by scipy).
NETCDF3_MAGICS = (b"CDF\x01", b"CDF\x02")

#: Attributes whose presence means the stored values are not the values they stand for.
CF_ATTRS = ("scale_factor", "add_offset", "_FillValue", "missing_value")

_ENGINE_NAMES = {"h5netcdf": "NetCDF-4", "scipy": "NetCDF-3", "zarr": "zarr (xarray)"}


def can_open(loc: Location, head: bytes | None) -> bool:
    """Whether a file is NetCDF-4: HDF5 inside (``head``: its first bytes; ``None`` for a
    directory) with a NetCDF extension, which says which reader the user expects."""
    return head is not None and sniff_hdf5(head) and loc.extension in EXTENSIONS


def can_open_classic(loc: Location, head: bytes | None) -> bool:
    """Whether a file is classic NetCDF-3 (CDF-1 or CDF-2) by its first bytes."""
    return head is not None and head[:4] in NETCDF3_MAGICS


def open_dataset(target: Any, engine: str, group: str | None, **kwargs: Any) -> xr.Dataset:
    """``xarray.open_dataset`` of a file (or zarr store), lazily: backend arrays, no dask
    chunks, no cache, times left as numbers; ``kwargs`` go to xarray."""
    with warnings.catch_warnings():
        # Non-standard CF attributes warn on decode; they do not change what we read.
        warnings.simplefilter("ignore", category=xr.SerializationWarning)
        return xr.open_dataset(
            target,
            engine=engine,
            group=group,
            chunks=None,  # lazy backend arrays; we pick the dask chunks ourselves below
            cache=False,  # never keep a loaded copy on the Dataset
            decode_times=False,
            decode_timedelta=False,
            **kwargs,
        )


def open_netcdf(
    loc: Location,
    var: str | None,
    *,
    dtype: str | np.dtype[Any] | None = None,
    chunks: Any = None,
    engine: str = "h5netcdf",
) -> MatrixSource:
    """Open one variable of a NetCDF file as a lazy matrix (see :func:`dnmf.io.open_matrix`).

    ``var`` may name a variable inside a group as ``"group/sub/name"``.
    """
    group, name = (None, var)
    if var is not None and "/" in var.strip("/"):
        group, name = var.strip("/").rsplit("/", 1)
    target = _target(loc)
    fmt = _ENGINE_NAMES[engine]
    try:
        ds = open_dataset(target, engine, group)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - every backend failure becomes one message
        if group is not None:
            try:
                root = open_dataset(target, engine, None)
            except Exception:  # noqa: BLE001
                raise cannot_read(loc, fmt, err) from err
            raise missing_variable(var or "", loc.original, "variable", _entries(root)) from err
        raise cannot_read(loc, fmt, err) from err
    return from_xarray_dataset(ds, name, loc, fmt="netcdf", dtype=dtype, chunks=chunks, group=group)


def open_cube(loc: Location, group: str | None = None, *, engine: str = "h5netcdf"
              ) -> xr.Dataset:
    """The variables of a NetCDF file (or of one of its groups) for a hyperspectral cube:
    lazily, values as stored (no CF masking or scaling: the cube decodes them itself) and
    coordinates decoded (``grid_mapping`` and friends become coordinates).

    ``engine`` is ``"h5netcdf"`` (NetCDF-4) or ``"scipy"`` (NetCDF-3). Backend errors are
    raised as they are.
    """
    return open_dataset(_target(loc), engine, group, mask_and_scale=False,
                        decode_coords="all")


def _target(loc: Location) -> Any:
    """What xarray opens: the local path, or an fsspec file object for a URL."""
    return loc.path if loc.is_local else loc.fs.open(loc.path, "rb")


def _entries(ds: xr.Dataset) -> list[tuple[str, tuple[int, ...], Any]]:
    return [(str(k), tuple(v.shape), v.dtype) for k, v in ds.data_vars.items()]


def stored_chunks(variable: xr.DataArray) -> tuple[int, ...] | None:
    """The storage's own chunk shape of a variable opened by xarray (from its encoding), one
    size per dim; ``None`` when contiguous or unknown."""
    enc = variable.encoding
    for key in ("chunksizes", "chunks"):
        if enc.get(key):
            return tuple(int(c) for c in enc[key])
    preferred: Mapping[Any, int] | None = enc.get("preferred_chunks")
    if preferred and all(d in preferred for d in variable.dims):
        return tuple(int(preferred[d]) for d in variable.dims)
    return None


def from_xarray_dataset(
    ds: xr.Dataset,
    var: str | None,
    loc: Location,
    *,
    fmt: str,
    dtype: str | np.dtype[Any] | None = None,
    chunks: Any = None,
    group: str | None = None,
) -> MatrixSource:
    """Turn one data variable of a lazily opened Dataset into a :class:`MatrixSource`."""
    entries = _entries(ds)
    where = loc.original if group is None else f"{loc.original} (group {group})"
    if var is None:
        var = pick_variable(entries, where=where, noun="variable")
    elif var not in ds.data_vars:
        raise missing_variable(var, where, "variable", entries)
    variable = ds[var]
    shape = check_shape(tuple(variable.shape))
    decoded = np.dtype(variable.dtype)
    stored = np.dtype(variable.encoding.get("dtype", decoded))
    target, notes = float_dtype(decoded, dtype)
    if decoded != stored:
        applied = [a for a in CF_ATTRS if a in variable.encoding or a in variable.attrs]
        notes = (f"CF decoding ({', '.join(applied)}) read {stored} as {decoded}",) + notes
    chunking = stored_chunks(variable)
    if chunks is None:
        itemsize = max(stored.itemsize, decoded.itemsize, target.itemsize)
        chunks = panel_chunks(shape, itemsize, chunking)
    if isinstance(chunks, tuple | list) and len(chunks) == 2:
        chunks = dict(zip(variable.dims, chunks, strict=True))
    token = tokenize(loc.original, group, var, loc.stamp(), chunks)
    array = variable.variable.chunk(chunks, name=f"{fmt}-{token}").data
    if array.dtype != target:
        array = array.astype(target)
    full_var = var if group is None else f"{group}/{var}"
    return MatrixSource(
        array=array,
        path=loc.original,
        var=full_var,
        format=fmt,
        stored_dtype=str(stored),
        notes=notes,
        stored_chunks=chunking,
        codec=netcdf_codec(variable.encoding),
    )


def netcdf_codec(encoding: dict[str, Any]) -> str:
    """The compression xarray read from a NetCDF variable's encoding (``"none"`` without)."""
    name = encoding.get("compression") or ("zlib" if encoding.get("zlib") else None)
    if name is None:
        return "none"
    level = encoding.get("complevel")
    return f"{name}({level})" if level is not None else str(name)
