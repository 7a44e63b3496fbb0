"""HDF5 inputs through h5py, readable from worker processes.

h5py ``Dataset`` objects hold an open file id and cannot be pickled, so the dask graph
carries an :class:`HDF5Array` instead: a small array-like that knows the file's location and
the dataset's name and opens the file on first use in each process, then keeps the handle.

Engine surface (see :data:`dnmf.io.open.ENGINES`): :func:`can_open` and :func:`open_hdf5`;
for readers built on HDF5 elsewhere (CSR groups, hyperspectral cubes): :func:`open_file` and
:func:`close` (a short-lived handle for metadata), :func:`datasets` (a file's listing) and
:func:`cached_file` (the per-process handle chunks are read through).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
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
from dnmf.io.source import MatrixSource

if TYPE_CHECKING:  # h5py is imported when a file is opened: ~11 MB a fit of in-memory X
    import h5py

__all__ = [
    "EXTENSIONS",
    "HDF5Array",
    "HDF5_SIGNATURE",
    "can_open",
    "cached_file",
    "close",
    "close_cached_files",
    "datasets",
    "open_file",
    "open_hdf5",
    "sniff_hdf5",
]

#: The 8 bytes that start an HDF5 superblock (at offset 0, 512, 1024, ... with a user block).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

#: File extensions that claim HDF5 (the file's signature wins where it has one).
EXTENSIONS = (".h5", ".hdf5", ".he5", ".h5ad")

# One open handle per (process, file, stamp). The pid is part of the key because a handle
# inherited through fork() must not be used by the child. The stamp (size, mtime) makes a
# re-written file get a fresh handle instead of a stale one. Handles stay open until
# close_cached_files() (or until _MAX_HANDLES other files push them out), so reading a chunk
# again does not re-open the file.
_HANDLES: OrderedDict[tuple[Any, ...], tuple[h5py.File, Any]] = OrderedDict()
_HANDLES_LOCK = threading.Lock()
_MAX_HANDLES = 64


def open_file(loc: Location) -> tuple[h5py.File, Any]:
    """Open the file read-only; returns the h5py file and the object keeping it alive (the
    fsspec file of a URL, else ``None``): hand both to :func:`close` when done."""
    import h5py

    if loc.is_local:
        return h5py.File(loc.path, "r"), None
    fileobj = loc.fs.open(loc.path, "rb")
    return h5py.File(fileobj, "r"), fileobj


def cached_file(loc: Location, stamp: tuple[Any, ...]) -> h5py.File:
    """This process's open handle on the file (opened on first use, then kept; see
    :func:`close_cached_files`), for readers that run on the workers."""
    key = (os.getpid(), loc.protocol, loc.path, stamp)
    with _HANDLES_LOCK:
        entry = _HANDLES.get(key)
        if entry is not None and entry[0].id.valid:
            _HANDLES.move_to_end(key)
            return entry[0]
        # One handle per file and process: drop handles of older versions of the file.
        for old in [k for k in _HANDLES if k[:3] == key[:3]]:
            close(_HANDLES.pop(old))
        while len(_HANDLES) >= _MAX_HANDLES:
            close(_HANDLES.popitem(last=False)[1])
        entry = open_file(loc)
        _HANDLES[key] = entry
        return entry[0]


def close(entry: tuple[h5py.File, Any]) -> None:
    """Close what :func:`open_file` returned; never raises."""
    h5file, fileobj = entry
    try:
        h5file.close()
        if fileobj is not None:
            fileobj.close()
    except Exception:  # noqa: BLE001 - closing a stale handle must never fail a read
        pass


def close_cached_files() -> None:
    """Close the HDF5 handles this process keeps open for reading chunks.

    HDF5 refuses to overwrite a file that is open in the same process: call this after
    computing on an HDF5 input in-process (threads scheduler) and before rewriting the file.
    """
    with _HANDLES_LOCK:
        while _HANDLES:
            close(_HANDLES.popitem()[1])


class HDF5Array:
    """Picklable, lazily opened view of one HDF5 dataset, for :func:`dask.array.from_array`.

    Parameters
    ----------
    location : Location
        Where the file lives (local path or fsspec URL).
    dataset : str
        Absolute path of the dataset inside the file, e.g. ``"/grp/X"``.
    shape : tuple of int
    dtype : numpy.dtype
        As stored.
    stamp : tuple
        The file's (size, mtime) when it was opened; part of the handle cache key and of the
        dask token.
    """

    def __init__(
        self,
        location: Location,
        dataset: str,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        stamp: tuple[Any, ...] = (),
    ) -> None:
        self.location = location
        self.dataset = dataset
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.stamp = stamp

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        dset = cached_file(self.location, self.stamp)[self.dataset]
        return dset[key]

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("dnmf.HDF5Array", self.location.original, self.dataset, self.stamp)

    def __repr__(self) -> str:
        return (
            f"HDF5Array({self.location.original!r}, {self.dataset!r}, shape={self.shape}, "
            f"dtype={self.dtype})"
        )


def datasets(h5file: h5py.File) -> list[tuple[str, tuple[int, ...], Any]]:
    """``(absolute path, shape, dtype)`` of every dataset in the file, for listings."""
    import h5py

    found: list[tuple[str, tuple[int, ...], Any]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(("/" + name, tuple(obj.shape or ()), obj.dtype))

    h5file.visititems(visit)
    return found


#: Set to ``allow`` to read HDF5 data that external links, external storage or virtual
#: datasets take from files outside the input's folder.
ALLOW_EXTERNAL_ENV = "DNMF_HDF5_EXTERNAL"


def check_external_data(h5file: h5py.File, name: str, loc: Location) -> None:
    """Refuse a dataset whose values come from a file outside the input's folder (an external
    link on its path, external raw storage, a virtual dataset's sources), unless allowed: a
    crafted file could otherwise make dnmf read any file the user can."""
    import h5py

    if os.environ.get(ALLOW_EXTERNAL_ENV) == "allow":
        return
    folder = os.path.dirname(os.path.abspath(loc.path)) if loc.is_local else None
    targets: list[tuple[str, str]] = []
    parts = [p for p in name.split("/") if p]
    for i in range(1, len(parts) + 1):
        link = h5file.get("/" + "/".join(parts[:i]), getlink=True)
        if isinstance(link, h5py.ExternalLink):
            targets.append(("an external link", link.filename))
            break  # what lies beyond is in the other file
    else:
        dset = h5file[name]
        targets += [("external storage", entry[0].decode() if isinstance(entry[0], bytes)
                     else str(entry[0])) for entry in (dset.external or ())]
        if dset.is_virtual:
            targets += [("a virtual dataset", src.file_name) for src in dset.virtual_sources()]
    for kind, target in targets:
        if target == "." and kind == "a virtual dataset":
            continue  # a virtual dataset over this very file
        resolved = os.path.abspath(os.path.join(folder or "", target))
        if folder is None or os.path.commonpath([folder, resolved]) != folder:
            raise InputError(
                f"{loc.original}: dataset {name} reads its values through {kind} from "
                f"{target}, outside the file's folder; dnmf refuses that by default (a crafted "
                f"file could read any file you can) — set {ALLOW_EXTERNAL_ENV}=allow if you "
                "trust this file")


def open_hdf5(
    loc: Location,
    var: str | None,
    *,
    dtype: str | np.dtype[Any] | None = None,
    chunks: Any = None,
) -> MatrixSource:
    """Open one dataset of an HDF5 file as a lazy matrix (see :func:`dnmf.io.open_matrix`)."""
    import h5py

    stamp = loc.stamp()
    try:
        # A short-lived handle for metadata: opening X leaves no file open behind it.
        h5file, fileobj = open_file(loc)
    except OSError as err:
        raise cannot_read(loc, "HDF5", err) from err
    try:
        entries = datasets(h5file)
        if var is None:
            name = pick_variable(entries, where=loc.original, noun="dataset")
        else:
            name = "/" + var.strip("/")
            if not isinstance(h5file.get(name), h5py.Dataset):
                raise missing_variable(var, loc.original, "dataset", entries)
        check_external_data(h5file, name, loc)
        dset = h5file[name]
        shape = check_shape(tuple(dset.shape or ()))
        stored = dset.dtype
        stored_chunks = dset.chunks  # None when contiguous or compact
        codec = "none" if dset.compression is None else (
            dset.compression + ("" if dset.compression_opts is None
                                else f"({dset.compression_opts})"))
    except (OSError, RuntimeError, KeyError) as err:
        # A damaged file can open but fail while walking its groups.
        raise cannot_read(loc, "HDF5", err) from err
    finally:
        close((h5file, fileobj))
    target, notes = float_dtype(stored, dtype)
    if chunks is None:
        itemsize = max(stored.itemsize, target.itemsize)
        chunks = panel_chunks(shape, itemsize, stored_chunks)
    proxy = HDF5Array(loc, name, shape, stored, stamp)
    array = da.from_array(
        proxy,
        chunks=chunks,
        name="hdf5-" + tokenize(proxy, chunks),
        meta=np.empty((0, 0), dtype=stored),
        asarray=True,
        lock=False,  # h5py serialises its own calls; a dask lock would add nothing
    )
    if array.dtype != target:
        array = array.astype(target)
    return MatrixSource(
        array=array,
        path=loc.original,
        var=name,
        format="hdf5",
        stored_dtype=str(stored),
        notes=notes,
        stored_chunks=stored_chunks,
        codec=codec,
    )


def can_open(loc: Location, head: bytes | None) -> bool:
    """Whether a file is HDF5 by its signature (``head``: its first bytes; ``None`` for a
    directory, which is never HDF5).

    NetCDF-4 files are HDF5 too: :mod:`~dnmf.io.netcdf` claims those whose extension says
    NetCDF, and is asked first.
    """
    return head is not None and sniff_hdf5(head)


def sniff_hdf5(head: bytes) -> bool:
    """Whether the first bytes of a file hold an HDF5 superblock (user blocks included)."""
    for offset in (0, 512, 1024, 2048):
        if head[offset : offset + 8] == HDF5_SIGNATURE:
            return True
    return False
