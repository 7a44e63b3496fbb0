"""Sparse inputs: CSR matrices read in row panels, each block a ``scipy.sparse.csr_matrix``.

A CSR matrix is three 1-D arrays: ``indptr`` (n_samples + 1 offsets), and ``data`` and
``indices`` (the stored values and their columns, row after row). Rows ``[a, b)`` are the
slice ``indptr[a:b+1]`` and then ``data``/``indices`` over ``[indptr[a], indptr[b])``, so a
row panel reads only its own bytes and is never densified.

Layouts read:

- a zarr or HDF5 group holding arrays ``data``, ``indices`` and ``indptr``, with the shape in
  the group's attributes as anndata writes it (``encoding-type: "csr_matrix"``,
  ``shape: [n, m]``; ``X`` in an ``.h5ad`` file or a ``.zarr`` AnnData store), in the older
  ``h5sparse_format``/``h5sparse_shape`` attributes, or in a ``shape`` array (and ``format``
  array or attribute) as :func:`scipy.sparse.save_npz` names its members;
- ``.npz`` files written by :func:`scipy.sparse.save_npz` (read whole, see :func:`open_npz`);
- in-memory ``scipy.sparse`` matrices and arrays of any format (converted to CSR).

The dask graph carries a small picklable reader (:class:`CSRReader`) that opens the store in
each worker process, as :mod:`dnmf.io.hdf5` does, so a process-based cluster can read it.
:func:`save_csr` writes the zarr/HDF5 layout.

Engine surface (see :data:`dnmf.io.open.ENGINES`): :func:`probe_sparse`, which
:func:`dnmf.io.open_matrix` asks first for zarr stores and HDF5 files; :func:`can_open_npz`
and :func:`open_npz` for ``.npz`` files; :func:`from_scipy` for matrices in memory.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import dask.array as da
import numpy as np
import scipy.sparse as sp
import zarr
import zarr.errors
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

import dnmf.io.common as common
from dnmf.errors import InputError, OutputError
from dnmf.io import hdf5
from dnmf.io.common import Location, cannot_read, check_shape, float_dtype, listing
from dnmf.io.source import MatrixSource

if TYPE_CHECKING:  # imported where an HDF5 file is opened (~11 MB otherwise)
    import h5py

__all__ = [
    "CSRReader",
    "DEFAULT_CHUNK_NNZ",
    "NPZ_EXTENSIONS",
    "SPARSE_MEMBERS",
    "ZIP_MAGIC",
    "can_open_npz",
    "from_scipy",
    "open_npz",
    "panel_rows",
    "probe_sparse",
    "save_csr",
    "scipy_dask_array",
    "target_nnz",
]

#: The arrays a CSR group holds.
SPARSE_MEMBERS = ("data", "indices", "indptr")

#: First bytes of a zip archive (``.npz`` files are zip archives of ``.npy`` members).
ZIP_MAGIC = b"PK\x03\x04"

#: The file extension that claims a :func:`scipy.sparse.save_npz` archive.
NPZ_EXTENSIONS = (".npz",)

#: Stored chunk length of ``data``/``indices`` written by :func:`save_csr` (4 MiB of float32).
DEFAULT_CHUNK_NNZ = 1 << 20

_CSC_FIX = {
    "zarr": "dnmf.io.sparse.save_csr('X_csr.zarr', M.tocsr()) with M read by scipy or "
    "anndata (adata.X.tocsr())",
    "hdf5": "dnmf.io.sparse.save_csr('X_csr.h5', M.tocsr()) with M read by scipy or "
    "anndata (adata.X.tocsr())",
    "npz": "scipy.sparse.save_npz('X_csr.npz', scipy.sparse.load_npz(PATH).tocsr())",
}

# Guards the per-process caches of the readers (opened zarr arrays, loaded .npz members).
_CACHE_LOCK = threading.Lock()


# --- row panels -----------------------------------------------------------------------------


def target_nnz(itemsize: int, index_itemsize: int) -> int:
    """Stored entries per row panel: :data:`~dnmf.io.common.TARGET_CHUNK_BYTES` worth.

    One entry costs its value and its column index: float32 values with int32 indices give
    8 Mi entries (64 MiB) per panel, float64 with int64 indices 4 Mi.
    """
    return max(1, common.TARGET_CHUNK_BYTES // max(1, itemsize + index_itemsize))


def panel_rows(
    indptr: np.ndarray, target: int, stored: int | None = None
) -> tuple[int, ...]:
    """Row-panel sizes holding about ``target`` stored entries each, from ``indptr``.

    Parameters
    ----------
    indptr : numpy.ndarray, shape (n_samples + 1,)
        The CSR row offsets (read whole: n_samples + 1 integers).
    target : int
        Stored entries per panel. Each row also counts as one entry, so runs of empty rows
        still make bounded panels.
    stored : int, optional
        The stored chunk length of ``data``/``indices``: the target becomes a whole multiple
        of it (at least one), so panels read whole stored chunks rather than re-reading one
        stored chunk for many small panels.

    Returns
    -------
    tuple of int
        Rows per panel, summing to n_samples; every panel has at least one row, and a panel
        of more than one row never exceeds the target.

    Examples
    --------
    >>> panel_rows(np.array([0, 3, 3, 9, 10, 10]), target=6)
    (2, 1, 2)
    """
    ptr = np.asarray(indptr, dtype=np.int64)
    n_rows = ptr.size - 1
    target = max(1, int(target))
    if stored:
        target = max(stored, target // stored * stored)
    # Cumulative cost up to each row boundary: entries plus one per row (strictly increasing).
    cost = ptr - ptr[0] + np.arange(n_rows + 1, dtype=np.int64)
    bounds = [0]
    while bounds[-1] < n_rows:
        start = bounds[-1]
        stop = int(np.searchsorted(cost, cost[start] + target, side="right")) - 1
        bounds.append(min(n_rows, max(start + 1, stop)))
    return tuple(int(r) for r in np.diff(bounds))


def row_chunks(chunks: Any, shape: tuple[int, int], default: Callable[[], tuple[int, ...]]
               ) -> tuple[int, ...]:
    """The row panels a user's ``chunks=`` asks for (sparse X keeps all columns per block).

    ``None`` or ``"auto"``: ``default()``. An int: panels of that many rows (``-1``: one
    panel). A tuple of ints
    summing to n_samples: those panels. A dask-style ``(rows, cols)`` pair whose ``cols`` is
    all the columns (``n_features``, ``-1`` or ``None``): ``rows`` as above.
    """
    n_rows, n_cols = shape
    if chunks is None or (isinstance(chunks, str) and chunks == "auto"):
        return default()
    if _is_int(chunks):
        if chunks >= 1 or chunks == -1:
            return _uniform(n_rows, int(chunks) if chunks >= 1 else n_rows)
    elif isinstance(chunks, tuple | list):
        if chunks and all(_is_int(c) and c >= 1 for c in chunks) and sum(chunks) == n_rows:
            return tuple(int(c) for c in chunks)
        if len(chunks) == 2 and chunks[1] in (n_cols, -1, None, (n_cols,)):
            rows = chunks[0]
            if rows in (-1, None):
                return (n_rows,)
            return row_chunks(rows, shape, default)
    raise InputError(
        f"chunks={chunks!r} does not fit sparse X of shape {shape}: pass an int (rows per "
        f"panel) or a tuple of row-panel sizes summing to {n_rows:,}; sparse X is read in row "
        f"panels holding all {n_cols:,} columns"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _uniform(n_rows: int, size: int) -> tuple[int, ...]:
    full, rest = divmod(n_rows, size)
    return (size,) * full + ((rest,) if rest else ())


# --- readers --------------------------------------------------------------------------------


class CSRReader:
    """Picklable reader of row panels of one CSR matrix; blocks come back as ``csr_matrix``.

    Subclasses say where ``data``, ``indices`` and ``indptr`` live (:meth:`members`); the
    reading is shared. Whatever a subclass opens is cached per process and dropped when the
    reader is pickled, so each worker process opens the store itself, once.

    Parameters
    ----------
    shape : tuple of int
        ``(n_samples, n_features)``.
    dtype : numpy.dtype
        The dtype of the blocks' values (stored values are converted on read).
    """

    kind = "csr"

    def __init__(self, shape: tuple[int, int], dtype: Any) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)

    def members(self) -> tuple[Any, Any, Any]:
        """``(data, indices, indptr)``: anything sliceable by ``[start:stop]``."""
        raise NotImplementedError

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``[start, stop)`` as a ``csr_matrix`` of shape ``(stop - start, n_features)``.

        Reads ``indptr[start:stop + 1]``, then ``data`` and ``indices`` over that range only.
        """
        data, indices, indptr = self.members()
        ptr = np.asarray(indptr[start : stop + 1], dtype=np.int64)
        lo, hi = int(ptr[0]), int(ptr[-1])
        values = np.asarray(data[lo:hi]).astype(self.dtype, copy=False)
        cols = np.asarray(indices[lo:hi])
        if cols.size and (int(cols.min()) < 0 or int(cols.max()) >= self.shape[1]):
            bad = int(cols.max()) if int(cols.max()) >= self.shape[1] else int(cols.min())
            raise InputError(
                f"{self!r} has column index {bad:,} in rows {start:,}-{stop - 1:,}, outside "
                f"0..{self.shape[1] - 1:,} — the indices or the stored shape are wrong; "
                "rewrite the matrix (e.g. with dnmf.io.sparse.save_csr)"
            )
        # A new array: with int64 offsets, np.asarray above is a view of an in-memory indptr.
        ptr = ptr - lo
        return csr_panel(values, cols, ptr, (stop - start, self.shape[1]))

    def _cached(self, load: Callable[[], Any]) -> Any:
        """``load()`` once per process (a handle inherited through fork() is not reused)."""
        pid = os.getpid()
        entry = self.__dict__.get("_cache")
        if entry is None or entry[0] != pid:
            with _CACHE_LOCK:
                entry = self.__dict__.get("_cache")
                if entry is None or entry[0] != pid:
                    entry = (pid, load())
                    self.__dict__["_cache"] = entry
        return entry[1]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_cache", None)
        return state


class _Window:
    """A slice of a larger array, seen as an array of its own (``np.asarray(_Window(a[i:j]))``).

    scipy copies the ``data`` and ``indices`` of a sparse matrix that are views of less than
    half of a larger array ("pruning", ``a.base.size``), in its constructor and so in every
    operation that builds a matrix on the same arrays (``X.T``, ``X.T @ W``). A row panel of
    an in-memory matrix is such a view: each panel task would copy its share of X on every
    product. A view whose ``base`` is this object, of the view's own size, is left alone; it
    holds the larger array alive, as the view would.
    """

    def __init__(self, view: np.ndarray) -> None:
        self.__array_interface__ = view.__array_interface__
        self.size = view.size
        self._owner = view


def csr_panel(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray,
              shape: tuple[int, int]) -> sp.csr_matrix:
    """A ``csr_matrix`` on slices of larger arrays, which scipy will not copy (:class:`_Window`).

    Only ``indptr`` (one entry per row) may be converted, to the dtype of ``indices``.
    """
    if data.base is not None:
        data = np.asarray(_Window(data))
    if indices.base is not None:
        indices = np.asarray(_Window(indices))
    return sp.csr_matrix((data, indices, indptr), shape=shape)


def _read_rows(reader: CSRReader, start: int, stop: int) -> sp.csr_matrix:
    return reader.read(start, stop)


class ZarrCSR(CSRReader):
    """CSR arrays in a zarr group (``group`` is its path in the store, ``""`` for the root)."""

    def __init__(self, location: Location, group: str, shape: tuple[int, int], dtype: Any,
                 stamp: tuple[Any, ...] = ()) -> None:
        super().__init__(shape, dtype)
        self.location, self.group, self.stamp = location, group, stamp

    def members(self) -> tuple[Any, Any, Any]:
        def load() -> tuple[Any, Any, Any]:
            node = _open_zarr(self.location)
            grp = node[self.group] if self.group else node
            return tuple(grp[m] for m in SPARSE_MEMBERS)  # type: ignore[return-value]

        return self._cached(load)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("dnmf.ZarrCSR", self.location.original, self.group, self.stamp, self.shape,
                self.dtype.str)

    def __repr__(self) -> str:
        return f"ZarrCSR({self.location.original!r}, {self.group!r}, shape={self.shape})"


class HDF5CSR(CSRReader):
    """CSR datasets in an HDF5 group; the file handle is the one :mod:`~dnmf.io.hdf5` caches
    per process (close it with :func:`dnmf.io.hdf5.close_cached_files`)."""

    def __init__(self, location: Location, group: str, shape: tuple[int, int], dtype: Any,
                 stamp: tuple[Any, ...] = ()) -> None:
        super().__init__(shape, dtype)
        self.location, self.group, self.stamp = location, group, stamp

    def members(self) -> tuple[Any, Any, Any]:
        # Not cached here: the handle cache may close the file, and a lookup is cheap.
        grp = hdf5.cached_file(self.location, self.stamp)[self.group]
        return tuple(grp[m] for m in SPARSE_MEMBERS)  # type: ignore[return-value]

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("dnmf.HDF5CSR", self.location.original, self.group, self.stamp, self.shape,
                self.dtype.str)

    def __repr__(self) -> str:
        return f"HDF5CSR({self.location.original!r}, {self.group!r}, shape={self.shape})"


class NpzCSR(CSRReader):
    """A :func:`scipy.sparse.save_npz` file: members cannot be sliced, so each process loads
    ``data``, ``indices`` and ``indptr`` whole, once, and slices them in memory."""

    def __init__(self, location: Location, shape: tuple[int, int], dtype: Any,
                 stamp: tuple[Any, ...] = ()) -> None:
        super().__init__(shape, dtype)
        self.location, self.stamp = location, stamp

    def members(self) -> tuple[Any, Any, Any]:
        def load() -> tuple[Any, Any, Any]:
            with self.location.fs.open(self.location.path, "rb") as f, \
                    np.load(f, allow_pickle=False) as npz:
                return tuple(npz[m] for m in SPARSE_MEMBERS)  # type: ignore[return-value]

        return self._cached(load)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("dnmf.NpzCSR", self.location.original, self.stamp, self.shape, self.dtype.str)

    def __repr__(self) -> str:
        return f"NpzCSR({self.location.original!r}, shape={self.shape})"


class MemoryCSR(CSRReader):
    """An in-memory ``csr_matrix``; the graph holds it once and every panel slices it."""

    def __init__(self, matrix: sp.csr_matrix, dtype: Any) -> None:
        super().__init__(matrix.shape, dtype)
        self.matrix = matrix

    def members(self) -> tuple[Any, Any, Any]:
        m = self.matrix
        return m.data, m.indices, m.indptr

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        m = self.matrix
        return ("dnmf.MemoryCSR", tokenize(m.data, m.indices, m.indptr), self.shape,
                self.dtype.str)

    def __repr__(self) -> str:
        return f"MemoryCSR(shape={self.shape}, nnz={self.matrix.nnz})"


def csr_dask_array(reader: CSRReader, rows: tuple[int, ...], prefix: str = "csr") -> da.Array:
    """One task per row panel reading ``reader``; all columns in one chunk.

    The reader is one key of the graph, shared by the panel tasks (an in-memory matrix is
    then shipped once, not once per panel).
    """
    token = tokenize(reader, rows)
    name = f"{prefix}-{token}"
    reader_key = f"{prefix}-reader-{token}"
    layer: dict[Any, Any] = {reader_key: reader}
    start = 0
    for i, r in enumerate(rows):
        layer[(name, i, 0)] = (_read_rows, reader_key, start, start + r)
        start += r
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return da.Array(graph, name, chunks=(tuple(rows), (reader.shape[1],)),
                    meta=sp.csr_matrix((0, 0), dtype=reader.dtype))


# --- inspecting a group ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """What a CSR group's metadata (and its indptr) say."""

    shape: tuple[int, int]
    nnz: int
    stored_dtype: np.dtype[Any]
    nbytes: int  # bytes read over all panels: data + indices over nnz, indptr whole
    indptr: np.ndarray
    index_itemsize: int
    stored_nnz_chunk: int | None
    notes: tuple[str, ...]


def _text(value: Any) -> str | None:
    """An attribute or 0-d member as lower-case text (bytes, numpy scalars, 0-d arrays)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.reshape(()).item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.lower() if isinstance(value, str) else None


#: scipy.sparse format names a ``format`` attribute or member may declare.
_SCIPY_FORMATS = ("csr", "csc", "coo", "bsr", "dia", "lil", "dok")


def _declared_format(attrs: Mapping[str, Any], member: Callable[[str], Any]) -> str | None:
    """``"csr"``, ``"csc"`` (or another scipy format name) as the group declares it."""
    encoding = _text(attrs.get("encoding-type"))
    if encoding in ("csr_matrix", "csc_matrix"):
        return encoding[:3]
    for value in (attrs.get("h5sparse_format"), attrs.get("format"), member("format")):
        text = _text(value)
        if text in _SCIPY_FORMATS:
            return text
    return None


def _declared_shape(attrs: Mapping[str, Any], member: Callable[[str], Any]
                    ) -> tuple[int, ...] | None:
    for value in (attrs.get("shape"), attrs.get("h5sparse_shape"), member("shape")):
        if value is None:
            continue
        try:
            return tuple(int(s) for s in np.asarray(value).reshape(-1))
        except (TypeError, ValueError):
            continue
    return None


def _layout(
    arrays: Mapping[str, Any],
    attrs: Mapping[str, Any],
    member: Callable[[str], Any],
    *,
    where: str,
    engine: Literal["zarr", "hdf5", "npz"],
    dtype: Any,
    chunk_of: Callable[[Any], int | None] = lambda a: None,
) -> _Layout:
    """Check a CSR layout from its metadata and indptr; raise InputError when unusable."""
    fmt = _declared_format(attrs, member)
    shape = _declared_shape(attrs, member)
    data, indices, indptr = (arrays[m] for m in SPARSE_MEMBERS)
    if fmt == "csc":
        raise _csc_error(where, engine)
    if fmt not in (None, "csr"):
        raise InputError(
            f"{where} holds a {fmt.upper()} sparse matrix; dnmf reads CSR — convert to CSR, "
            f"e.g. {_CSC_FIX[engine]}"
        )
    if shape is None:
        raise InputError(
            f"{where} holds data/indices/indptr but no shape — add the attribute "
            "shape=[n_samples, n_features] to the group (as anndata writes it) or a 'shape' "
            "array (as scipy.sparse.save_npz names it)"
        )
    shape = check_shape(shape)
    n_rows, n_cols = shape
    for name, arr in zip(SPARSE_MEMBERS, (data, indices, indptr), strict=True):
        if len(arr.shape) != 1:
            raise _invalid(where, f"{name} has shape {tuple(arr.shape)}, not 1-D")
    if np.dtype(indices.dtype).kind not in "iu" or np.dtype(indptr.dtype).kind not in "iu":
        raise _invalid(where, f"indices ({indices.dtype}) and indptr ({indptr.dtype}) must "
                              "be integers")
    n_ptr = int(indptr.shape[0])
    if n_ptr != n_rows + 1:
        if fmt is None and n_ptr == n_cols + 1:
            raise _csc_error(where, engine, inferred=True)
        raise _invalid(where, f"indptr has {n_ptr:,} entries, expected n_samples + 1 = "
                              f"{n_rows + 1:,} for shape {shape}")
    _, notes = float_dtype(np.dtype(data.dtype), dtype)  # refuses complex and non-numeric
    ptr = np.asarray(indptr[...], dtype=np.int64)
    n_stored = min(int(data.shape[0]), int(indices.shape[0]))
    falls = np.flatnonzero(np.diff(ptr) < 0)
    if falls.size:
        raise _invalid(where, f"indptr decreases at row {int(falls[0]):,} (from "
                              f"{int(ptr[falls[0]]):,} to {int(ptr[falls[0] + 1]):,})")
    if ptr[0] < 0 or ptr[-1] > n_stored:
        raise _invalid(where, f"indptr runs {int(ptr[0]):,} .. {int(ptr[-1]):,}, outside "
                              f"0 .. {n_stored:,} (the length of data and indices)")
    if fmt is None and n_rows == n_cols:
        notes += ("sparse format not declared; read as CSR (a square matrix could be CSC — "
                  "transpose the result if so)",)
    nnz = int(ptr[-1] - ptr[0])
    data_item, index_item = np.dtype(data.dtype).itemsize, np.dtype(indices.dtype).itemsize
    nbytes = nnz * (data_item + index_item) + n_ptr * np.dtype(indptr.dtype).itemsize
    return _Layout(
        shape=shape,
        nnz=nnz,
        stored_dtype=np.dtype(data.dtype),
        nbytes=nbytes,
        indptr=ptr,
        index_itemsize=index_item,
        stored_nnz_chunk=chunk_of(data),
        notes=notes,
    )


def _csc_error(where: str, engine: str, *, inferred: bool = False) -> InputError:
    how = " (indptr has n_features + 1 entries)" if inferred else ""
    return InputError(
        f"{where} holds a CSC (compressed sparse column) matrix{how}; dnmf reads X in row "
        f"panels and needs CSR — convert to CSR, e.g. {_CSC_FIX[engine]}"
    )


def _invalid(where: str, reason: str) -> InputError:
    return InputError(
        f"{where} is not a valid CSR matrix: {reason} — rewrite it with scipy, anndata or "
        "dnmf.io.sparse.save_csr"
    )


def _source(layout: _Layout, reader: CSRReader, *, loc: Location | None, var: str | None,
            fmt: str, chunks: Any, notes: tuple[str, ...] = ()) -> MatrixSource:
    data_item = max(layout.stored_dtype.itemsize, reader.dtype.itemsize)
    target = target_nnz(data_item, layout.index_itemsize)
    rows = row_chunks(
        chunks, layout.shape, lambda: panel_rows(layout.indptr, target, layout.stored_nnz_chunk)
    )
    return MatrixSource(
        array=csr_dask_array(reader, rows, prefix=f"{fmt}-csr"),
        path=None if loc is None else loc.original,
        var=var,
        format=fmt,
        stored_dtype=str(layout.stored_dtype),
        notes=layout.notes + notes,
        stored_chunks=None,  # a CSR store can be cut at any row
        sparse=True,
        nnz=layout.nnz,
        stored_nbytes=layout.nbytes,
        in_row_panels=functools.partial(csr_dask_array, reader, prefix=f"{fmt}-csr"),
    )


# --- zarr and HDF5 groups -------------------------------------------------------------------


def _open_zarr(loc: Location) -> zarr.Array | zarr.Group:
    kwargs: dict[str, Any] = {}
    if not loc.is_local and loc.storage_options:
        kwargs["storage_options"] = dict(loc.storage_options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=zarr.errors.ZarrUserWarning)
        warnings.simplefilter("ignore", category=zarr.errors.ZarrFutureWarning)
        return zarr.open(store=loc.url, mode="r", **kwargs)


def _open_h5(loc: Location) -> tuple[h5py.File, Any]:
    """A short-lived handle for probing (closed before returning to the caller). A dense
    file is then opened again by :func:`dnmf.io.hdf5.open_hdf5`: one extra metadata open."""
    import h5py

    if loc.is_local:
        return h5py.File(loc.path, "r"), None
    fileobj = loc.fs.open(loc.path, "rb")
    return h5py.File(fileobj, "r"), fileobj


class _Tree:
    """The few operations the probe needs, over a zarr or an h5py hierarchy."""

    def __init__(self, root: Any, engine: Literal["zarr", "hdf5"]) -> None:
        self.root, self.engine = root, engine
        if engine == "zarr":
            self.group_type, self.array_type = zarr.Group, zarr.Array
        else:
            import h5py

            self.group_type, self.array_type = h5py.Group, h5py.Dataset

    def get(self, node: Any, path: str) -> Any:
        if not path:
            return node
        try:
            return node.get(path)
        except Exception:  # noqa: BLE001 - odd paths raise various errors in zarr and h5py
            return None

    def is_sparse_group(self, node: Any) -> bool:
        return isinstance(node, self.group_type) and all(
            isinstance(self.get(node, m), self.array_type) for m in SPARSE_MEMBERS
        )

    def walk(self) -> list[tuple[str, Any]]:
        if self.engine == "zarr":
            return sorted(self.root.members(max_depth=None), key=lambda e: e[0])
        found: list[tuple[str, Any]] = []
        self.root.visititems(lambda name, obj: found.append(("/" + name, obj)))
        return found

    def member(self, node: Any) -> Callable[[str], Any]:
        def read(name: str) -> Any:
            arr = self.get(node, name)
            if not isinstance(arr, self.array_type) or int(np.prod(arr.shape)) > 16:
                return None
            try:
                return arr[...]
            except Exception:  # noqa: BLE001 - an exotic dtype: treat as absent
                return None

        return read

    def chunk_of(self, arr: Any) -> int | None:
        if self.engine == "zarr":
            return int((getattr(arr, "shards", None) or arr.chunks)[0])
        return int(arr.chunks[0]) if arr.chunks else None


def probe_sparse(
    loc: Location,
    engine: Literal["zarr", "hdf5"],
    var: str | None,
    *,
    dtype: Any = None,
    chunks: Any = None,
) -> tuple[MatrixSource | None, str | None]:
    """Open X as sparse when the container holds it as a CSR group.

    The CSR group is ``var`` when given; otherwise the root when it is one, ``X`` in an
    AnnData store (root attribute ``encoding-type: anndata``), or the container's only CSR
    group when it holds no dense 2-D array.

    Returns
    -------
    (MatrixSource, None) or (None, str or None)
        The sparse source; or, when X is dense, the ``var`` the dense engine should open
        (``var`` itself, or ``"X"`` for an AnnData store with a dense X). A container this
        probe cannot open or walk counts as dense: the dense engine reports what is wrong.

    Raises
    ------
    InputError
        The CSR group is stored as CSC, or is malformed; or ``var`` is omitted and the
        container holds several candidate matrices (the message lists them).
    """
    try:
        if engine == "zarr":
            root, closer = _open_zarr(loc), None
        else:
            root, closer = _open_h5(loc)
    except Exception:  # noqa: BLE001 - the dense engine gives the precise error
        return None, var
    try:
        if engine == "zarr" and not isinstance(root, zarr.Group):
            return None, var
        tree = _Tree(root, engine)
        try:
            path, dense_var = _pick_group(tree, loc, var)
        except InputError:
            raise
        except Exception:  # noqa: BLE001 - a damaged member: the dense engine reports it
            return None, var
        if path is None:
            return None, dense_var
        node = tree.get(root, path)
        where = loc.original + (f" (group {path!r})" if path else "")
        try:
            arrays = {m: node[m] for m in SPARSE_MEMBERS}
            layout = _layout(arrays, dict(node.attrs), tree.member(node), where=where,
                             engine=engine, dtype=dtype, chunk_of=tree.chunk_of)
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - unreadable metadata or indptr
            raise cannot_read(loc, "HDF5" if engine == "hdf5" else "zarr", err) from err
    finally:
        if engine == "hdf5":
            hdf5.close((root, closer))
    target, _ = float_dtype(layout.stored_dtype, dtype)
    if engine == "zarr":
        reader: CSRReader = ZarrCSR(loc, path, layout.shape, target, loc.stamp())
        reported = path or None
    else:
        reader = HDF5CSR(loc, "/" + path, layout.shape, target, loc.stamp())
        reported = ("/" + path) if path else None
    source = _source(layout, reader, loc=loc, var=reported, fmt=engine, chunks=chunks)
    return source, None


def _pick_group(tree: _Tree, loc: Location, var: str | None) -> tuple[str | None, str | None]:
    """``(path of the CSR group, None)``, or ``(None, var for the dense engine)``."""
    root = tree.root
    if var is not None:
        path = var.strip("/")
        return (path, None) if tree.is_sparse_group(tree.get(root, path)) else (None, var)
    if tree.is_sparse_group(root):
        return "", None
    if _text(root.attrs.get("encoding-type")) == "anndata":
        x = tree.get(root, "X")
        if tree.is_sparse_group(x):
            return "X", None
        if isinstance(x, tree.array_type):
            return None, "X"  # a dense AnnData X
    entries = tree.walk()
    groups = [p.strip("/") for p, node in entries if tree.is_sparse_group(node)]
    if not groups:
        return None, None
    inside = tuple(g + "/" for g in groups)
    dense = [
        (p, tuple(node.shape), node.dtype)
        for p, node in entries
        if isinstance(node, tree.array_type) and not p.strip("/").startswith(inside)
        and common.is_candidate(tuple(node.shape), _dtype_or_none(node))
    ]
    if len(groups) == 1 and not dense:
        return groups[0], None
    prefix = "/" if tree.engine == "hdf5" else ""
    listed = [_describe_group(tree, g, prefix + g) for g in groups]
    if dense:
        listed.append(listing(dense))
    raise InputError(
        f"{loc.original} holds {len(groups) + len(dense)} candidate matrices ({len(groups)} "
        f"sparse, {len(dense)} dense); pick one with var= (--var): {', '.join(listed)}"
    )


def _dtype_or_none(node: Any) -> Any:
    try:
        return np.dtype(node.dtype)
    except TypeError:
        return None


def _describe_group(tree: _Tree, path: str, name: str) -> str:
    """``'X (100, 20) float32 sparse, 345 stored'`` for messages."""
    node = tree.get(tree.root, path)
    shape = _declared_shape(dict(node.attrs), tree.member(node))
    data = node["data"]
    stored = int(data.shape[0]) if data.shape else 0
    shape_text = str(tuple(shape)) if shape else "(shape unknown)"
    return f"{name} {shape_text} {data.dtype} sparse, {stored:,} stored"


# --- .npz -----------------------------------------------------------------------------------


def _npy_header(zf: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    with zf.open(name + ".npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), dtype


class _Header:
    """A member's shape and dtype, without its data (what :func:`_layout` needs)."""

    def __init__(self, shape: tuple[int, ...], dtype: Any, values: Any = None) -> None:
        self.shape, self.dtype, self.values = shape, np.dtype(dtype), values

    def __getitem__(self, key: Any) -> Any:
        return self.values[key]


def can_open_npz(loc: Location, head: bytes | None) -> bool:
    """Whether a file is a :func:`scipy.sparse.save_npz` archive: a zip archive by its first
    bytes (``head``; ``None`` for a directory, which never is) named ``*.npz`` or without an
    extension."""
    return head is not None and head.startswith(ZIP_MAGIC) and loc.extension in (
        "", *NPZ_EXTENSIONS)


def open_npz(loc: Location, var: str | None = None, *, dtype: Any = None, chunks: Any = None
             ) -> MatrixSource:
    """Open a :func:`scipy.sparse.save_npz` file (CSR) as a lazy sparse matrix.

    Opening reads the small ``format``, ``shape`` and ``indptr`` members and the headers of
    ``data`` and ``indices``. Members of a zip archive cannot be read in parts, so each worker
    process loads ``data`` and ``indices`` whole, once, on its first panel: the source's notes
    say so, and :func:`save_csr` converts the file to a zarr store read panel by panel. The
    file holds one matrix: ``var`` must be ``None``.
    """
    if var is not None:
        raise InputError(
            f"{loc.original} is an .npz file holding one sparse matrix, so var={var!r} "
            "does not apply — drop var (--var)"
        )
    try:
        with loc.fs.open(loc.path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            files = set(npz.files)
            if not set(SPARSE_MEMBERS) <= files:
                what = sorted(files)
                fmt = _text(npz["format"]) if "format" in files else None
                if fmt and fmt != "csr":
                    raise InputError(
                        f"{loc.original} holds a {fmt.upper()} sparse matrix; dnmf reads "
                        f"CSR — convert to CSR, e.g. {_CSC_FIX['npz']}"
                    )
                raise InputError(
                    f"{loc.original} is an .npz archive without a scipy sparse matrix "
                    f"(members: {', '.join(what) or 'none'}) — write it with "
                    "scipy.sparse.save_npz, or save a dense array with numpy.save (.npy)"
                )
            small = {k: npz[k] for k in ("format", "shape") if k in files}
            indptr = npz["indptr"]
            headers = {m: _npy_header(npz.zip, m) for m in ("data", "indices")}
    except InputError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise cannot_read(loc, ".npz", err) from err
    arrays = {
        "data": _Header(*headers["data"]),
        "indices": _Header(*headers["indices"]),
        "indptr": _Header(indptr.shape, indptr.dtype, indptr),
    }
    layout = _layout(arrays, {}, small.get, where=loc.original, engine="npz", dtype=dtype)
    target, _ = float_dtype(layout.stored_dtype, dtype)
    size_mb = layout.nbytes / 2**20
    note = (
        f".npz members cannot be read in parts: each worker process loads the whole matrix "
        f"({size_mb:,.1f} MiB) once — for large inputs convert it to zarr with "
        "dnmf.io.sparse.save_csr"
    )
    reader = NpzCSR(loc, layout.shape, target, loc.stamp())
    return _source(layout, reader, loc=loc, var=None, fmt="npz", chunks=chunks, notes=(note,))


# --- in memory ------------------------------------------------------------------------------


def from_scipy(matrix: Any, *, dtype: Any = None, chunks: Any = None) -> MatrixSource:
    """Wrap an in-memory ``scipy.sparse`` matrix or array (any format) in CSR row panels.

    See :func:`dnmf.io.open_matrix`. Non-CSR formats are converted to CSR first (a copy);
    values are converted to the computation dtype panel by panel, on read.
    """
    original = matrix.format
    csr = matrix if isinstance(matrix, sp.csr_matrix) else sp.csr_matrix(matrix)
    check_shape(csr.shape)
    target, _ = float_dtype(csr.dtype, dtype)
    arrays = {"data": csr.data, "indices": csr.indices, "indptr": csr.indptr}
    layout = _layout(arrays, {"encoding-type": "csr_matrix", "shape": list(csr.shape)},
                     lambda name: None, where="the in-memory matrix", engine="npz",
                     dtype=dtype)
    if original != "csr":
        layout = replace(layout, notes=layout.notes
                         + (f"in-memory {original.upper()} matrix converted to CSR",))
    return _source(layout, MemoryCSR(csr, target), loc=None, var=None, fmt="scipy",
                   chunks=chunks)


def scipy_dask_array(matrix: Any, chunks: Any = None) -> da.Array:
    """CSR row panels of an in-memory ``scipy.sparse`` matrix, in the matrix's own dtype."""
    csr = matrix if isinstance(matrix, sp.csr_matrix) else sp.csr_matrix(matrix)
    shape = check_shape(csr.shape)
    index_itemsize = csr.indices.dtype.itemsize
    rows = row_chunks(chunks, shape, lambda: panel_rows(
        csr.indptr, target_nnz(csr.dtype.itemsize, index_itemsize)))
    return csr_dask_array(MemoryCSR(csr, csr.dtype), rows, prefix="scipy-csr")


# --- writing --------------------------------------------------------------------------------

_HDF5_EXTENSIONS = (".h5", ".hdf5", ".he5", ".h5ad")


def save_csr(
    path: str | os.PathLike[str],
    matrix: Any,
    *,
    format: Literal["zarr", "hdf5"] | None = None,  # noqa: A002 - the natural name here
    var: str | None = None,
    chunk_nnz: int = DEFAULT_CHUNK_NNZ,
    overwrite: bool = False,
) -> None:
    """Write a matrix as a CSR group that :func:`dnmf.io.open_matrix` reads in row panels.

    The layout is anndata's: arrays ``data``, ``indices`` and ``indptr`` in a group with the
    attributes ``encoding-type: "csr_matrix"``, ``encoding-version: "0.1.0"`` and
    ``shape: [n_samples, n_features]``.

    Parameters
    ----------
    path : str or os.PathLike
        A local zarr store (directory) or HDF5 file.
    matrix : scipy.sparse matrix or array, or array-like, shape (n_samples, n_features)
        Any sparse format (converted to CSR) or a dense array (only its non-zeros are kept).
    format : {"zarr", "hdf5"}, optional
        Default: ``"hdf5"`` for ``.h5``, ``.hdf5``, ``.he5`` and ``.h5ad`` paths, else zarr.
    var : str, optional
        Write the group at this path inside the container (e.g. ``"X"``), keeping the rest of
        an existing container; default: the container's root.
    chunk_nnz : int
        Stored chunk length of ``data`` and ``indices`` (and of ``indptr``).
    overwrite : bool
        Replace an existing container (``var=None``) or group (``var``).

    Raises
    ------
    OutputError
        The container or group exists and ``overwrite`` is false.

    Examples
    --------
    >>> import scipy.sparse, tempfile, os
    >>> from dnmf.io import open_matrix
    >>> d = tempfile.mkdtemp()
    >>> save_csr(os.path.join(d, "x.zarr"), scipy.sparse.eye(4, 3, format="csr"), chunk_nnz=2)
    >>> src = open_matrix(os.path.join(d, "x.zarr"))
    >>> src.sparse, src.nnz, src.shape
    (True, 3, (4, 3))
    """
    csr = sp.csr_matrix(matrix) if sp.issparse(matrix) else sp.csr_matrix(np.asarray(matrix))
    check_shape(csr.shape)
    path = os.fspath(path)
    if format is None:
        format = "hdf5" if os.path.splitext(path)[1].lower() in _HDF5_EXTENSIONS else "zarr"
    if format not in ("zarr", "hdf5"):
        raise InputError(f"format={format!r} is not supported: choose 'zarr' or 'hdf5'")
    if not _is_int(chunk_nnz) or chunk_nnz < 1:
        raise InputError(f"chunk_nnz={chunk_nnz!r} must be a positive integer")
    attrs = {"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
             "shape": [int(s) for s in csr.shape]}
    members = {"data": csr.data, "indices": csr.indices, "indptr": csr.indptr}
    if format == "zarr":
        _write_zarr(path, var, members, attrs, int(chunk_nnz), overwrite)
    else:
        _write_hdf5(path, var, members, attrs, int(chunk_nnz), overwrite)


def _exists_error(what: str) -> OutputError:
    return OutputError(f"{what} already exists — pass overwrite=True to replace it")


def _write_zarr(path: str, var: str | None, members: Mapping[str, np.ndarray],
                attrs: dict[str, Any], chunk_nnz: int, overwrite: bool) -> None:
    if var is None:
        if os.path.exists(path) and not overwrite:
            raise _exists_error(path)
        group = zarr.open_group(path, mode="w")
    else:
        root = zarr.open_group(path, mode="a")
        name = var.strip("/")
        if name in root:
            if not overwrite:
                raise _exists_error(f"group {name!r} in {path}")
            del root[name]
        group = root.create_group(name)
    for name, values in members.items():
        group.create_array(name, data=values, chunks=(max(1, min(chunk_nnz, values.size)),))
    group.attrs.update(attrs)


def _write_hdf5(path: str, var: str | None, members: Mapping[str, np.ndarray],
                attrs: dict[str, Any], chunk_nnz: int, overwrite: bool) -> None:
    if os.path.exists(path):
        hdf5.close_cached_files()  # HDF5 refuses to rewrite a file this process holds open
        if var is None and not overwrite:
            raise _exists_error(path)
    import h5py

    with h5py.File(path, "w" if var is None else "a") as f:
        if var is None:
            group: h5py.Group = f
        else:
            name = var.strip("/")
            if name in f:
                if not overwrite:
                    raise _exists_error(f"group {name!r} in {path}")
                del f[name]
            group = f.create_group(name)
        for name, values in members.items():
            chunks = (min(chunk_nnz, values.size),) if values.size else None
            group.create_dataset(name, data=values, chunks=chunks)
        for key, value in attrs.items():
            group.attrs[key] = value


