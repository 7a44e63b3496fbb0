"""Zarr inputs (format 2 and 3), local or behind any fsspec URL.

Raw zarr arrays are read chunk by chunk through :class:`ZarrChunkReader`, which turns a chunk
that fails to decode (a garbled or truncated chunk file) into an :class:`~dnmf.errors.InputError`
naming the array, the chunk, its rows and the fix. Arrays that xarray wrote with CF packing
(``scale_factor``, ``_FillValue``, ...) are read through xarray so the values are the ones they
stand for.

A chunk file that is *missing* is not an error to zarr: it reads as the array's fill value.

Engine surface (see :data:`dnmf.io.open.ENGINES`): :func:`can_open` and :func:`open_zarr`;
for hyperspectral cubes :func:`open_cube` (a store written by xarray) and, for plain stores,
:func:`open_node` and :func:`dimension_names`.
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
import posixpath
import uuid
import warnings
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
import zarr.errors
import zarr.storage
from dask.base import tokenize

from dnmf.errors import InputError
from dnmf.io.common import (
    Location,
    cannot_read,
    check_shape,
    float_dtype,
    missing_variable,
    panel_chunks,
    pick_variable,
)
from dnmf.io.netcdf import CF_ATTRS, from_xarray_dataset, open_dataset
from dnmf.io.source import MatrixSource

__all__ = [
    "EXTENSIONS",
    "ZARR_MARKERS",
    "ZarrChunkReader",
    "can_open",
    "dimension_names",
    "from_zarr_array",
    "open_cube",
    "open_node",
    "open_zarr",
    "owned_block",
    "read_version",
]

#: Metadata documents that mark a directory as a zarr store (v3, then v2).
ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")

#: The extension that claims a directory is a zarr store (never a file).
EXTENSIONS = (".zarr",)


def can_open(loc: Location, head: bytes | None) -> bool:
    """Whether a location is a zarr store: a directory (``head is None``; files never are)
    holding zarr metadata, or named ``*.zarr``."""
    if head is not None:
        return False
    markers = [m for m in ZARR_MARKERS if loc.fs.exists(posixpath.join(loc.path, m))]
    return bool(markers) or loc.extension in EXTENSIONS


def open_node(loc: Location) -> zarr.Array | zarr.Group:
    """The store's root array or group, read-only (metadata only).

    Raises
    ------
    InputError
        The store holds no zarr metadata, or it cannot be read.
    """
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


def dimension_names(arr: zarr.Array) -> Any:
    """The array's dim names as stored (zarr format 3 metadata, or xarray's
    ``_ARRAY_DIMENSIONS`` attribute in format 2); ``None`` when it has none."""
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
    node = open_node(loc)
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
        label=loc.original if component is None else f"array {component!r} in {loc.original}",
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
        codec=source.codec,
        chunks_written=source.chunks_written,
        mapped=source.mapped,
    )


def _is_cf_packed(arr: zarr.Array) -> bool:
    return any(a in arr.attrs for a in CF_ATTRS) and dimension_names(arr) is not None


def _xarray_options(loc: Location) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"consolidated": False}
    if not loc.is_local and loc.storage_options:
        kwargs["storage_options"] = dict(loc.storage_options)
    return kwargs


def open_cube(loc: Location, group: str | None = None) -> xr.Dataset:
    """The variables of a zarr store written by xarray (or of one of its groups) for a
    hyperspectral cube: lazily, values as stored (no CF masking or scaling: the cube decodes
    them itself) and coordinates decoded.

    Raises whatever xarray raises for a store it cannot read (a plain zarr array or group
    without dim names): read those with :func:`open_node`.
    """
    return open_dataset(loc.url, "zarr", group, mask_and_scale=False, decode_coords="all",
                        **_xarray_options(loc))


def _open_with_xarray(loc: Location, component: str, *, dtype: Any, chunks: Any) -> MatrixSource:
    group, _, name = component.rpartition("/")
    try:
        ds = open_dataset(loc.url, "zarr", group or None, **_xarray_options(loc))
    except Exception as err:  # noqa: BLE001
        raise cannot_read(loc, "zarr (xarray)", err) from err
    source = from_xarray_dataset(
        ds, name, loc, fmt="zarr", dtype=dtype, chunks=chunks, group=group or None
    )
    return source


def read_version(arr: zarr.Array, version: str | None = None) -> da.Array:
    """Lazily read a zarr array that dnmf rewrites in place (checkpoint slots, the scratch W).

    ``dask.array.from_zarr`` names the graph after the array's path, so a slot written again
    would get the same keys as its previous content, and a scheduler still holding those keys
    (a retained future, a lost chunk's lineage) would hand back the old W, or overwrite the
    held one with the new. ``version`` names the content instead (a fresh one when None).
    """
    version = uuid.uuid4().hex if version is None else version
    return da.from_zarr(arr, name="from-zarr-" + tokenize(str(arr.store_path), version))


def from_zarr_array(
    arr: zarr.Array,
    *,
    dtype: str | np.dtype[Any] | None = None,
    chunks: Any = None,
    name_token: Any = None,
    label: str | None = None,
) -> MatrixSource:
    """Wrap an opened ``zarr.Array`` lazily (format ``"zarr-array"``, no path).

    ``label`` names the array in the error raised for a chunk that cannot be decoded
    (default: the array's store path).
    """
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
    reader = ZarrChunkReader(arr, label or str(arr.store_path))
    array = da.from_array(
        reader,
        chunks=chunks,
        name="zarr-" + tokenize(name_token, str(arr.metadata), chunks),
        asarray=True,
        fancy=False,
        meta=np.empty((0,) * reader.ndim, dtype=reader.dtype),
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
        codec=codec_of(arr),
        chunks_written=chunks_written(arr, stored_chunks),
        mapped=reader.raw is not None and array.dtype == reader.dtype,
    )


def chunks_written(arr: zarr.Array, stored_chunks: tuple[int, ...]) -> tuple[int, int] | None:
    """``(stored, declared)`` chunk (or shard) files of an array in a local store, counted by
    listing its folder (zarr's ``nchunks_initialized`` visits every declared chunk: hours for a
    huge declared shape); None for other stores."""
    if not isinstance(arr.store, zarr.storage.LocalStore):
        return None
    folder = os.path.join(str(arr.store.root), arr.path)
    metadata = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}
    stored = 0
    for here, dirs, files in os.walk(folder):
        if here == folder:  # sibling arrays of a group live in their own folders, not here
            dirs[:] = [d for d in dirs if d == "c" or d.isdigit()]
        stored += sum(1 for f in files if f not in metadata)
    declared = math.prod(-(-n // c) for n, c in zip(arr.shape, stored_chunks, strict=True))
    return stored, declared


def codec_of(arr: zarr.Array) -> str:
    """The array's compressors as written in its metadata (``"none"`` without any)."""
    compressors = tuple(getattr(arr, "compressors", ()) or ())
    return ", ".join(repr(c) for c in compressors) or "none"


class ZarrChunkReader:
    """The zarr array behind X's Dask graph: a chunk that cannot be decoded becomes an
    :class:`~dnmf.errors.InputError` naming the array, the chunk and the fix.

    A block of X's graph may span several stored chunks (or shards). When reading it fails with
    anything but an I/O error (``OSError``: network, permissions — those are re-raised as they
    are), each stored chunk of the block is read on its own; the first one that fails is the
    damaged one, and the error names its index, its rows (and columns, when X is stored in
    column tiles), its file inside the store, and the decoder's complaint. When no single chunk
    fails, the original exception is re-raised unchanged.

    Picklable (a ``zarr.Array`` and a string), so it travels to worker processes with the
    graph; so does the ``InputError`` it raises, which the client re-raises as is.
    """

    def __init__(self, arr: zarr.Array, label: str) -> None:
        self.arr = arr
        self.label = label
        self.shape = tuple(int(n) for n in arr.shape)
        self.ndim = len(self.shape)
        self.dtype = _np_dtype(arr)
        shards = getattr(arr, "shards", None)
        self.unit = "shard" if shards else "chunk"
        self.stored_chunks = tuple(int(c) for c in (shards or arr.chunks))
        self.raw = RawChunks.of(arr)

    def __getitem__(self, key: Any) -> Any:
        try:
            if self.raw is not None:
                block = self.raw.read(key)
                if block is not None:
                    return block
            return self.arr[key]
        except (OSError, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - codecs raise RuntimeError, ValueError, ...
            damaged = self._find_damaged(key)
            if damaged is None:
                raise
            raise damaged from err

    def _find_damaged(self, key: Any) -> InputError | None:
        """Read each stored chunk under ``key`` alone; an error for the first that fails."""
        if not isinstance(key, tuple):
            key = (key,)
        ranges = []
        if len(key) != self.ndim:
            return None
        for k, size, chunk in zip(key, self.shape, self.stored_chunks, strict=True):
            if not isinstance(k, slice):
                return None
            start, stop, _ = k.indices(size)
            if stop <= start:
                return None
            ranges.append(range(start // chunk, (stop - 1) // chunk + 1))
        for index in itertools.product(*ranges):
            where = tuple(slice(i * c, min((i + 1) * c, n))
                          for i, c, n in zip(index, self.stored_chunks, self.shape, strict=True))
            try:
                self.arr[where]
            except (OSError, MemoryError):
                return None
            except Exception as err:  # noqa: BLE001
                return InputError(self._message(index, where, err))
        return None

    def _message(self, index: tuple[int, ...], where: tuple[slice, ...], err: Exception) -> str:
        rows = where[0]
        span = f"rows {rows.start:,}-{rows.stop - 1:,}"
        if self.ndim > 1 and self.stored_chunks[1] < self.shape[1]:
            span += f", columns {where[1].start:,}-{where[1].stop - 1:,}"
        try:
            key = self.arr.metadata.encode_chunk_key(index)
            path = f"{self.arr.path}/{key}" if self.arr.path else key
            span += f"; file {path}"
        except Exception:  # noqa: BLE001 - naming the file is a courtesy
            pass
        problem = " ".join(str(err).split()) or type(err).__name__
        return (
            f"cannot decode {self.unit} {index} of {self.label} ({span}): "
            f"{type(err).__name__}: {problem} — the {self.unit} file is damaged or truncated; "
            "restore it from a backup or re-create the store"
        )


class RawChunks:
    """Uncompressed chunks of a local zarr array, read as the bytes they are on disk.

    A chunk with no codec but the byte layout is a C-order array in its file, padded to the
    full chunk shape at the edges (zarr formats 2 and 3). Mapping the file and viewing it as an
    array skips zarr-python's codec pipeline and its copies: on a 64 MiB chunk in the page
    cache that is ~15 ms instead of ~90-200 ms, and a block that is one whole chunk is returned
    without any copy (the page cache's pages are the array). Blocks spanning several chunks are
    assembled into one new array. Anything else (compression, sharding, remote stores, a file
    whose size is not the chunk's) is left to zarr, so damaged files still get
    :class:`ZarrChunkReader`'s error.
    """

    def __init__(self, root: str, arr: zarr.Array, file_dtype: np.dtype[Any]) -> None:
        self.root, self.arr = root, arr
        self.file_dtype = file_dtype
        self.chunks = tuple(int(c) for c in arr.chunks)
        self.shape = tuple(int(n) for n in arr.shape)
        self.nbytes = int(np.prod(self.chunks)) * file_dtype.itemsize
        self.fill = arr.metadata.fill_value

    @classmethod
    def of(cls, arr: zarr.Array) -> RawChunks | None:
        """The raw reader of ``arr``, or None when its chunks are not plain bytes on disk."""
        try:
            dtype = np.dtype(arr.dtype)
        except TypeError:
            return None
        if not isinstance(arr.store, zarr.storage.LocalStore) or dtype.kind not in "biuf":
            return None
        if getattr(arr, "shards", None) or len(arr.shape) == 0:
            return None
        meta = arr.metadata
        if meta.zarr_format == 3:
            codecs = tuple(meta.codecs)
            if len(codecs) != 1 or type(codecs[0]).__name__ != "BytesCodec":
                return None
            endian = getattr(codecs[0].endian, "value", codecs[0].endian)
            order = {"little": "<", "big": ">", None: "="}.get(endian)
            if order is None:
                return None
            file_dtype = dtype.newbyteorder(order)
        else:
            if meta.compressor is not None or meta.filters or meta.order != "C":
                return None
            file_dtype = dtype
        if file_dtype != dtype:  # byte-swapped on disk: zarr converts it
            return None
        return cls(str(arr.store.root), arr, file_dtype)

    def _chunk(self, index: tuple[int, ...]) -> np.ndarray | None:
        """Chunk ``index`` mapped from its file (read-only); None when the file is missing
        (zarr reads the fill value there)."""
        key = self.arr.metadata.encode_chunk_key(index)
        path = os.path.join(self.root, self.arr.path, key) if self.arr.path else os.path.join(
            self.root, key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - the map outlives the file object
        except FileNotFoundError:
            if self.fill is None:  # format 2 without a fill value: zarr decides
                raise _NotRaw(path) from None
            return None
        with fh:
            if os.fstat(fh.fileno()).st_size != self.nbytes:
                raise _NotRaw(path)
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_WILLNEED"):
            # a chunk not in the page cache is then read ahead whole, in the background while
            # the task works through its first rows, instead of a fault's small read-around at
            # a time (cold 1 GB: ~600 against ~400 MiB/s); ~0.15 ms when the chunk is cached
            mapped.madvise(mmap.MADV_WILLNEED)
        return np.frombuffer(mapped, dtype=self.file_dtype).reshape(self.chunks)

    def read(self, key: Any) -> np.ndarray | None:
        """The block ``key`` (a tuple of unit-step slices), or None to let zarr read it."""
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) != len(self.shape) or not all(
                isinstance(k, slice) and k.step in (None, 1) for k in key):
            return None
        bounds = [k.indices(n)[:2] for k, n in zip(key, self.shape, strict=True)]
        if any(stop <= start for start, stop in bounds):
            return None
        ranges = [range(start // c, (stop - 1) // c + 1)
                  for (start, stop), c in zip(bounds, self.chunks, strict=True)]
        try:
            if all(len(r) == 1 for r in ranges):  # one chunk: a view of it, no copy
                index = tuple(r[0] for r in ranges)
                chunk = self._chunk(index)
                local = tuple(slice(start - i * c, stop - i * c)
                              for (start, stop), i, c in zip(bounds, index, self.chunks,
                                                             strict=True))
                if chunk is None:
                    return np.full([stop - start for start, stop in bounds], self.fill,
                                   dtype=self.file_dtype)
                return chunk[local]
            out = np.empty([stop - start for start, stop in bounds], dtype=self.file_dtype)
            for index in itertools.product(*ranges):
                chunk = self._chunk(index)
                src, dst = [], []
                for (start, stop), i, c in zip(bounds, index, self.chunks, strict=True):
                    lo, hi = max(start, i * c), min(stop, (i + 1) * c)
                    src.append(slice(lo - i * c, hi - i * c))
                    dst.append(slice(lo - start, hi - start))
                out[tuple(dst)] = self.fill if chunk is None else chunk[tuple(src)]
            return out
        except _NotRaw:
            return None


def owned_block(block: Any) -> Any:
    """``block`` in memory of its own: a view of a mapped chunk file (see :class:`RawChunks`)
    is copied, anything else returned as is. For X kept in worker memory between iterations."""
    if isinstance(block, np.ndarray) and not block.flags.writeable:  # mapped read-only
        return block.copy()
    return block


class _NotRaw(Exception):
    """A chunk file whose size is not the chunk's: zarr reads it (and names the damage)."""
