"""Zarr inputs (format 2 and 3), local or behind any fsspec URL.

Raw zarr arrays go straight to :func:`dask.array.from_zarr`. Arrays that xarray wrote with
CF packing (``scale_factor``, ``_FillValue``, ...) are read through xarray so the values are
the ones they stand for.
"""

from __future__ import annotations

import warnings
from typing import Any

import dask.array as da
import numpy as np
import zarr
import zarr.errors
import zarr.storage
from dask.base import tokenize

from dnmf.errors import InputError
from dnmf.io._common import (
    Location,
    cannot_read,
    check_shape,
    float_dtype,
    missing_variable,
    panel_chunks,
    pick_variable,
)
from dnmf.io.netcdf import CF_ATTRS, _open_dataset, from_xarray_dataset
from dnmf.io.source import MatrixSource

__all__ = ["ZARR_MARKERS", "from_zarr_array", "open_zarr"]

#: Metadata documents that mark a directory as a zarr store (v3, then v2).
ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")


def _open_node(loc: Location) -> zarr.Array | zarr.Group:
    kwargs: dict[str, Any] = {}
    if not loc.is_local and loc.storage_options:
        kwargs["storage_options"] = dict(loc.storage_options)
    try:
        with warnings.catch_warnings():
            # Consolidated-metadata and spec-stability warnings say nothing about X.
            warnings.simplefilter("ignore", category=zarr.errors.ZarrUserWarning)
            warnings.simplefilter("ignore", category=zarr.errors.ZarrFutureWarning)
            return zarr.open(store=loc.url, mode="r", **kwargs)
    except zarr.errors.NodeNotFoundError as err:
        # The path exists (checked by open_matrix) but holds no zarr metadata.
        raise cannot_read(loc, "zarr", f"no zarr array or group found ({_markers_hint()})") from err
    except Exception as err:  # noqa: BLE001 - garbled metadata, unknown codecs, ...
        raise cannot_read(loc, "zarr", err) from err


def _markers_hint() -> str:
    return "expected " + ", ".join(ZARR_MARKERS)


def _arrays(group: zarr.Group) -> list[tuple[str, tuple[int, ...], Any]]:
    found = []
    for path, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array):
            found.append((path, tuple(node.shape), _np_dtype(node)))
    return sorted(found)


def _np_dtype(arr: zarr.Array) -> Any:
    try:
        return np.dtype(arr.dtype)
    except TypeError:  # zarr-specific dtypes (e.g. variable-length strings)
        return str(arr.dtype)


def _dimension_names(arr: zarr.Array) -> Any:
    names = getattr(arr.metadata, "dimension_names", None)  # zarr format 3
    return names or arr.attrs.get("_ARRAY_DIMENSIONS")  # zarr format 2, written by xarray


def open_zarr(
    loc: Location,
    var: str | None,
    *,
    dtype: str | np.dtype[Any] | None = None,
    chunks: Any = None,
) -> MatrixSource:
    """Open a zarr array, or an array inside a zarr group, as a lazy matrix.

    See :func:`dnmf.io.open_matrix`. ``var`` is the array's path inside the group
    (``"sub/x"``); with ``var=None`` a group's single 2-D numeric array is used.
    """
    node = _open_node(loc)
    component: str | None = None
    if isinstance(node, zarr.Group):
        try:
            entries = _arrays(node)
        except Exception as err:  # noqa: BLE001 - a damaged member's metadata
            raise cannot_read(loc, "zarr", err) from err
        if var is None:
            component = pick_variable(entries, where=loc.original, noun="array")
        else:
            component = var.strip("/")
            if component not in {e[0] for e in entries}:
                raise missing_variable(var, loc.original, "array", entries)
        arr = node[component]
        assert isinstance(arr, zarr.Array)
        if _is_cf_packed(arr):
            return _open_with_xarray(loc, component, dtype=dtype, chunks=chunks)
    else:
        arr = node
        if var not in (None, ""):
            raise InputError(
                f"{loc.original} is a single zarr array, so var={var!r} does not apply — "
                "drop var (--var) or point at the enclosing group"
            )
    source = from_zarr_array(
        arr,
        dtype=dtype,
        chunks=chunks,
        name_token=(loc.original, component, loc.stamp()),
    )
    notes = source.notes
    if component is None and _is_cf_packed(arr):
        notes += (
            "CF packing attributes present but not applied — open the enclosing group with "
            "var= to decode them",
        )
    return MatrixSource(
        array=source.array,
        path=loc.original,
        var=component,
        format="zarr",
        stored_dtype=source.stored_dtype,
        notes=notes,
        stored_chunks=source.stored_chunks,
    )


def _is_cf_packed(arr: zarr.Array) -> bool:
    return any(a in arr.attrs for a in CF_ATTRS) and _dimension_names(arr) is not None


def _open_with_xarray(loc: Location, component: str, *, dtype: Any, chunks: Any) -> MatrixSource:
    group, _, name = component.rpartition("/")
    kwargs: dict[str, Any] = {"consolidated": False}
    if not loc.is_local and loc.storage_options:
        kwargs["storage_options"] = dict(loc.storage_options)
    try:
        ds = _open_dataset(loc.url, "zarr", group or None, **kwargs)
    except Exception as err:  # noqa: BLE001
        raise cannot_read(loc, "zarr (xarray)", err) from err
    source = from_xarray_dataset(
        ds, name, loc, fmt="zarr", dtype=dtype, chunks=chunks, group=group or None
    )
    return source


def from_zarr_array(
    arr: zarr.Array,
    *,
    dtype: str | np.dtype[Any] | None = None,
    chunks: Any = None,
    name_token: Any = None,
) -> MatrixSource:
    """Wrap an opened ``zarr.Array`` lazily (format ``"zarr-array"``, no path)."""
    shape = check_shape(tuple(arr.shape))
    stored = _np_dtype(arr)
    target, notes = float_dtype(stored, dtype)
    # Sharded arrays are read a shard at a time; plain ones a chunk at a time.
    stored_chunks = tuple(int(c) for c in (getattr(arr, "shards", None) or arr.chunks))
    if chunks is None:
        chunks = panel_chunks(shape, max(stored.itemsize, target.itemsize), stored_chunks)
    if name_token is None:
        # Tokenizing the array itself would pickle an in-memory store's contents; the store
        # path (plus the object's identity for memory stores, whose contents can change)
        # names it well enough.
        name_token = (str(arr.store_path),)
        if isinstance(arr.store, zarr.storage.MemoryStore):
            name_token += (id(arr),)
    array = da.from_zarr(
        arr, chunks=chunks, name="zarr-" + tokenize(name_token, str(arr.metadata), chunks)
    )
    if array.dtype != target:
        array = array.astype(target)
    return MatrixSource(
        array=array,
        path=None,
        var=None,
        format="zarr-array",
        stored_dtype=str(stored),
        notes=notes,
        stored_chunks=stored_chunks,
    )
