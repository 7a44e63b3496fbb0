"""NumPy inputs: ``.npy`` files (memory-mapped locally, byte ranges remotely) and arrays.

As with HDF5, the graph carries a small picklable :class:`NpyArray` rather than a
``numpy.memmap`` (which would pickle its whole contents to every worker process).

Engine surface (see :data:`dnmf.io.open.ENGINES`): :func:`can_open` and :func:`open_npy`;
:func:`from_numpy` wraps arrays already in memory.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from dnmf.errors import InputError
from dnmf.io.common import Location, cannot_read, check_shape, float_dtype, panel_chunks
from dnmf.io.source import MatrixSource

__all__ = ["EXTENSIONS", "NPY_MAGIC", "NpyArray", "can_open", "from_numpy", "open_npy"]

NPY_MAGIC = b"\x93NUMPY"

#: The file extension that claims ``.npy`` (the file's signature wins where it has one).
EXTENSIONS = (".npy",)


def can_open(loc: Location, head: bytes | None) -> bool:
    """Whether a file is a ``.npy`` file by its first bytes (``head``; ``None`` for a
    directory, which never is)."""
    return head is not None and head.startswith(NPY_MAGIC)

_MEMMAPS: dict[tuple[Any, ...], np.memmap] = {}
_MEMMAPS_LOCK = threading.Lock()


def _cached_memmap(path: str, stamp: tuple[Any, ...]) -> np.ndarray:
    # Keyed by pid so a mapping inherited through fork() is not shared with the parent.
    key = (os.getpid(), path, stamp)
    with _MEMMAPS_LOCK:
        mm = _MEMMAPS.get(key)
        if mm is None:
            for old in [k for k in _MEMMAPS if k[:2] == key[:2]]:
                del _MEMMAPS[old]
            mm = _MEMMAPS[key] = np.load(path, mmap_mode="r", allow_pickle=False)
        return mm


class NpyArray:
    """Picklable lazy view of a ``.npy`` file, for :func:`dask.array.from_array`.

    Local files are memory-mapped once per process; remote files (fsspec URLs) are read by
    byte range: one range per block for C order, one per column for Fortran order.
    """

    def __init__(
        self,
        location: Location,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        fortran_order: bool,
        offset: int,
        stamp: tuple[Any, ...] = (),
    ) -> None:
        self.location = location
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.fortran_order = fortran_order
        self.offset = offset
        self.stamp = stamp

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        if self.location.is_local:
            # Copy out of the mapping: the block then owns its memory and the page cache
            # can drop the file's pages.
            return np.array(_cached_memmap(self.location.path, self.stamp)[key])
        return self._read_remote(key)

    def _read_remote(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (2 - len(key))
        if not all(isinstance(k, slice) for k in key):
            raise TypeError(f"NpyArray supports slices only, got {key!r}")
        n_rows, n_cols = self.shape
        r0, r1, r_step = key[0].indices(n_rows)
        c0, c1, c_step = key[1].indices(n_cols)
        r1, c1 = max(r0, r1), max(c0, c1)
        size = self.dtype.itemsize
        fs, path = self.location.fs, self.location.path
        if not self.fortran_order:
            # Rows r0:r1 are one contiguous byte range.
            start = self.offset + r0 * n_cols * size
            raw = fs.cat_file(path, start=start, end=start + (r1 - r0) * n_cols * size)
            block = np.frombuffer(raw, dtype=self.dtype).reshape(r1 - r0, n_cols)
            return np.array(block[::r_step, c0:c1:c_step])
        # Fortran order: each column's rows r0:r1 are contiguous; fetch them all at once.
        cols = range(c0, c1)
        starts = [self.offset + (j * n_rows + r0) * size for j in cols]
        ends = [s + (r1 - r0) * size for s in starts]
        parts = fs.cat_ranges([path] * len(starts), starts, ends) if starts else []
        block = np.empty((r1 - r0, len(parts)), dtype=self.dtype, order="F")
        for j, part in enumerate(parts):
            block[:, j] = np.frombuffer(part, dtype=self.dtype)
        return np.array(block[::r_step, ::c_step])

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("dnmf.NpyArray", self.location.original, self.stamp, self.offset)

    def __repr__(self) -> str:
        return f"NpyArray({self.location.original!r}, shape={self.shape}, dtype={self.dtype})"


def _read_header(loc: Location) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    try:
        with loc.fs.open(loc.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = f.tell()
        size = loc.fs.size(loc.path)
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise cannot_read(loc, ".npy", err) from err
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if dtype.hasobject:
        needed = offset  # object arrays are rejected by the dtype check, not here
    if size is not None and size < needed:
        raise cannot_read(loc, ".npy", f"file is truncated ({size:,} of {needed:,} bytes)")
    return tuple(shape), bool(fortran), dtype, offset


def open_npy(
    loc: Location,
    var: str | None = None,
    *,
    dtype: str | np.dtype[Any] | None = None,
    chunks: Any = None,
) -> MatrixSource:
    """Open a ``.npy`` file as a lazy matrix (see :func:`dnmf.io.open_matrix`).

    The file holds one array: ``var`` must be ``None``.
    """
    if var is not None:
        raise InputError(
            f"{loc.original} is a .npy file holding one array, so var={var!r} does not apply "
            "— drop var (--var)"
        )
    shape, fortran, stored, offset = _read_header(loc)
    shape = check_shape(shape)
    target, notes = float_dtype(stored, dtype)
    if chunks is None:
        chunks = panel_chunks(shape, max(stored.itemsize, target.itemsize))
    proxy = NpyArray(loc, shape, stored, fortran, offset, loc.stamp())
    array = da.from_array(
        proxy,
        chunks=chunks,
        name="npy-" + tokenize(proxy, chunks),
        meta=np.empty((0, 0), dtype=stored),
        asarray=True,
        lock=False,
    )
    if array.dtype != target:
        array = array.astype(target)
    return MatrixSource(array, loc.original, None, "npy", str(stored), notes)


def from_numpy(
    x: np.ndarray, *, dtype: str | np.dtype[Any] | None = None, chunks: Any = None
) -> MatrixSource:
    """Wrap an in-memory numpy array in row panels (see :func:`dnmf.io.open_matrix`)."""
    shape = check_shape(x.shape)
    target, notes = float_dtype(x.dtype, dtype)
    if chunks is None:
        chunks = panel_chunks(shape, max(x.dtype.itemsize, target.itemsize))
    array = da.from_array(x, chunks=chunks)
    if array.dtype != target:
        array = array.astype(target)
    return MatrixSource(array, None, None, "numpy", str(x.dtype), notes)
