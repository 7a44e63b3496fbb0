"""``open_matrix``: any supported input to one lazy :class:`MatrixSource`.

Dispatch only: each storage engine lives in its own module (:mod:`~dnmf.io.zarr_`,
:mod:`~dnmf.io.hdf5`, :mod:`~dnmf.io.netcdf`, :mod:`~dnmf.io.npy`); sparse (CSR) inputs in
any container go to :mod:`~dnmf.io.sparse`. :data:`ENGINES` names each format's entry points
(in the spirit of xarray's backend entry points): :func:`detect_format` asks them in turn
whether they recognise a path, and :func:`open_matrix` opens it with the one that does.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse as sp
import xarray as xr
import zarr

from dnmf.aliases import MatrixLike
from dnmf.errors import InputError
from dnmf.io import hdf5, netcdf, npy, sparse, zarr_
from dnmf.io.common import (
    SUPPORTED_FORMATS,
    Location,
    cannot_read,
    check_shape,
    float_dtype,
    not_found,
    resolve_location,
)
from dnmf.io.npy import from_numpy
from dnmf.io.source import MatrixSource
from dnmf.io.sparse import from_scipy, probe_sparse
from dnmf.io.zarr_ import from_zarr_array
from dnmf.limits import check_chunk_grid

__all__ = ["ENGINES", "EXTENSIONS", "Engine", "detect_format", "open_matrix"]


@dataclass(frozen=True)
class Engine:
    """One storage format's entry points.

    Attributes
    ----------
    can_open : callable ``(Location, head) -> bool``
        Whether the engine recognises an existing location by its signature: ``head`` is a
        file's first bytes (enough for an HDF5 superblock behind a 2 KiB user block), ``None``
        for a directory.
    open_matrix : callable ``(Location, var, *, dtype, chunks) -> MatrixSource``
        Opens X lazily (see :func:`open_matrix`).
    extensions : tuple of str
        File extensions that claim the format when no engine recognises the file's signature.
    csr_groups : bool
        The container may hold X as a CSR group: :func:`~dnmf.io.sparse.probe_sparse` looks
        for one before ``open_matrix`` reads X as dense.
    directory : bool
        The format is a directory (a zarr store): its extension never claims a file.
    """

    can_open: Callable[[Location, bytes | None], bool]
    open_matrix: Callable[..., MatrixSource]
    extensions: tuple[str, ...] = ()
    csr_groups: bool = False
    directory: bool = False


#: Format name (as :func:`detect_format` returns it) -> its engine, in the order they are
#: asked: the first whose ``can_open`` accepts the path opens it. NetCDF-4 is HDF5 inside, so
#: ``netcdf`` (HDF5 with a NetCDF extension) is asked before ``hdf5``.
ENGINES: dict[str, Engine] = {
    "zarr": Engine(zarr_.can_open, zarr_.open_zarr, zarr_.EXTENSIONS, csr_groups=True,
                   directory=True),
    "netcdf": Engine(netcdf.can_open, netcdf.open_netcdf, netcdf.EXTENSIONS),
    "hdf5": Engine(hdf5.can_open, hdf5.open_hdf5, hdf5.EXTENSIONS, csr_groups=True),
    "npy": Engine(npy.can_open, npy.open_npy, npy.EXTENSIONS),
    "netcdf3": Engine(netcdf.can_open_classic,
                      functools.partial(netcdf.open_netcdf, engine="scipy")),
    "npz": Engine(sparse.can_open_npz, sparse.open_npz, sparse.NPZ_EXTENSIONS),
}

#: What each file extension claims to be; the file's own signature wins where it has one.
EXTENSIONS = {ext: name for name, engine in ENGINES.items() for ext in engine.extensions}

# Enough bytes for an HDF5 signature behind a user block of up to 2 KiB.
_SNIFF_BYTES = 2048 + 8


def open_matrix(
    source: MatrixLike,
    var: str | None = None,
    *,
    dtype: str | np.dtype[Any] | None = None,
    chunks: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> MatrixSource:
    """Open X lazily from a file, URL or in-memory array.

    Parameters
    ----------
    source : str, os.PathLike, numpy.ndarray, scipy.sparse matrix, dask.array.Array or zarr.Array
        A local path or fsspec URL (``file://``, ``memory://``, ``s3://``, ...) of a zarr
        store, HDF5 file (``.h5``/``.hdf5``/``.he5``/``.h5ad``), NetCDF file
        (``.nc``/``.nc4``/``.cdf``), ``.npy`` file or ``scipy.sparse.save_npz`` file
        (``.npz``); the format comes from the file's signature, then its extension.
        Or an array already in memory (a ``scipy.sparse`` matrix of any format is read as
        CSR) or in a graph.
    var : str, optional
        Variable (NetCDF, ``"group/name"`` in groups), dataset (HDF5, ``"/grp/X"``), array
        (zarr group, ``"sub/X"``), or sparse group (zarr or HDF5: a group holding ``data``,
        ``indices`` and ``indptr``, e.g. ``"X"`` in an AnnData store) holding X. When
        omitted: the container itself when it is a sparse group, ``X`` in an AnnData store,
        else the container's only 2-D numeric variable or sparse group.
    dtype : {"float32", "float64"}, optional
        Force the computation dtype. By default floats keep their precision, float16 becomes
        float32, and integers and bools become float32.
    chunks : optional
        Block shape, anything :func:`dask.array.from_array` accepts. By default row panels
        with all columns (about 64 MiB each), in whole multiples of the stored chunking.
        Sparse X is always in row panels with all columns: an int (rows per panel) or a
        tuple of row-panel sizes; by default panels of about 64 MiB of stored entries
        (8 Mi float32 values with int32 indices), in whole multiples of the stored chunking
        of ``data``.
    storage_options : mapping, optional
        Passed to fsspec for URLs (credentials, endpoint, ...).

    Returns
    -------
    MatrixSource
        ``array`` is a lazy dask array of shape (n_samples, n_features); nothing was computed.
        For sparse input ``sparse`` is true and the blocks are ``scipy.sparse.csr_matrix``.

    Raises
    ------
    FileNotFoundError
        The path or URL does not exist.
    InputError
        The input is not a 2-D, non-empty, real numeric matrix; ``var`` names nothing in the
        container (the message lists what exists); or the file cannot be read.

    Examples
    --------
    >>> import numpy as np
    >>> from dnmf.io import open_matrix
    >>> src = open_matrix(np.arange(12, dtype=np.int16).reshape(4, 3))
    >>> src.array.dtype, src.notes
    (dtype('float32'), ('integer input int16 converted to float32',))
    """
    if isinstance(source, str | os.PathLike):
        opened = _open_path(resolve_location(source, storage_options), var, dtype, chunks)
        # from the metadata, before any graph over X is built or a chunk read
        check_chunk_grid(opened.shape, opened.chunks, opened.stored_chunks,
                         opened.dtype.itemsize)
        return opened
    if isinstance(source, MatrixSource) and var is None:
        # opened already (e.g. with storage_options): used as is, cast or rechunked if asked
        array = source.array
        if dtype is not None and np.dtype(dtype) != array.dtype:
            array = array.astype(dtype)
        if chunks is not None:
            array = array.rechunk(chunks)
        # cast or rechunked: its blocks are copies, no longer the mapped chunks
        return source if array is source.array else dataclasses.replace(source, array=array,
                                                                         mapped=False)
    if var is not None:
        raise InputError(
            f"var={var!r} applies to files only; X is an in-memory {type(source).__name__} — "
            "drop var or select the variable yourself"
        )
    if isinstance(source, da.Array):
        return _from_dask(source, dtype=dtype, chunks=chunks)
    if isinstance(source, zarr.Array):
        return from_zarr_array(source, dtype=dtype, chunks=chunks)
    if isinstance(source, xr.DataArray):
        return open_matrix(source.data, dtype=dtype, chunks=chunks)
    if isinstance(source, np.ndarray):
        return from_numpy(source, dtype=dtype, chunks=chunks)
    if sp.issparse(source):
        return from_scipy(source, dtype=dtype, chunks=chunks)
    if hasattr(source, "__array__") or isinstance(source, list | tuple):
        return from_numpy(np.asarray(source), dtype=dtype, chunks=chunks)
    raise InputError(
        f"cannot open a {type(source).__name__} as X: pass a path or URL ({SUPPORTED_FORMATS}), "
        "a numpy array, a scipy.sparse matrix, a dask array or a zarr array"
    )


def _from_dask(x: da.Array, *, dtype: Any, chunks: Any) -> MatrixSource:
    if any(isinstance(s, float) and math.isnan(s) for s in x.shape):
        raise InputError(
            f"X has unknown chunk sizes (shape {x.shape}); call X.compute_chunk_sizes() first"
        )
    check_shape(x.shape)
    target, notes = float_dtype(x.dtype, dtype)
    stored = str(x.dtype)
    if chunks is not None:
        x = x.rechunk(chunks)
    if x.dtype != target:
        x = x.astype(target)
    return MatrixSource(x, None, None, "dask", stored, notes, sparse=sp.issparse(x._meta))


def _open_path(loc: Location, var: str | None, dtype: Any, chunks: Any) -> MatrixSource:
    fmt = detect_format(loc)
    engine = ENGINES[fmt]
    if engine.csr_groups:
        # A group holding data/indices/indptr is a sparse (CSR) matrix.
        source, var = probe_sparse(loc, fmt, var, dtype=dtype, chunks=chunks)
        if source is not None:
            return source
    return engine.open_matrix(loc, var, dtype=dtype, chunks=chunks)


def detect_format(loc: Location) -> str:
    """``"zarr"``, ``"hdf5"``, ``"netcdf"``, ``"netcdf3"``, ``"npy"`` or ``"npz"`` for an
    existing path.

    Whether a zarr store or HDF5 file holds X as a sparse group is decided when it is opened
    (it depends on ``var``); ``"npz"`` files are ``scipy.sparse.save_npz`` archives.

    Raises
    ------
    FileNotFoundError
        Nothing exists at the location.
    InputError
        It exists but is none of the supported formats.
    """
    fs = loc.fs
    try:
        exists = fs.exists(loc.path)
        is_dir = exists and fs.isdir(loc.path)
    except Exception as err:  # noqa: BLE001 - network/credential failures of any backend
        raise InputError(f"cannot access {loc.original}: {type(err).__name__}: {err}") from err
    if not exists:
        raise not_found(loc)
    head: bytes | None = None
    if not is_dir:
        try:
            with fs.open(loc.path, "rb") as f:
                head = f.read(_SNIFF_BYTES)
        except OSError as err:
            raise cannot_read(loc, None, err) from err
    for name, engine in ENGINES.items():
        if engine.can_open(loc, head):
            return name
    ext = loc.extension
    if head is None:
        raise cannot_read(
            loc,
            None,
            "it is a directory without zarr metadata (zarr.json, .zarray or .zgroup) — "
            "point at a zarr store or a file",
        )
    claimed = EXTENSIONS.get(ext)
    if claimed is not None and not ENGINES[claimed].directory:
        return claimed  # the engine will say what is wrong with the file
    raise cannot_read(
        loc,
        None,
        f"unknown extension {ext or '(none)'!r} and no known file signature "
        f"(starts with {head[:8]!r}) — convert it to zarr, HDF5 or .npy",
    )
