"""The opened input matrix: a lazy dask array plus where it came from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

__all__ = ["MatrixSource"]


@dataclass(frozen=True)
class MatrixSource:
    """A lazily opened input matrix X and its provenance.

    Attributes
    ----------
    array : dask.array.Array, shape (n_samples, n_features)
        Lazy, 2-D, float32 or float64. Opening it read metadata only (for sparse stores, also
        ``indptr``). When ``sparse``, its blocks are ``scipy.sparse.csr_matrix`` row panels
        holding all columns.
    path : str or None
        The path or URL as the user gave it; ``None`` for in-memory inputs.
    var : str or None
        Variable or dataset name inside the container, if any.
    format : str
        ``"zarr"``, ``"hdf5"``, ``"netcdf"``, ``"npy"``, ``"numpy"``, ``"dask"`` or
        ``"zarr-array"``.
    stored_dtype : str
        The dtype as stored (e.g. ``"int16"``), before any conversion to float.
    notes : tuple of str
        Human-readable remarks, e.g. ``"integer input int16 converted to float32"``.
    stored_chunks : tuple of int or None
        The storage layout's own chunk shape (HDF5/zarr/NetCDF chunking); ``None`` when the
        data is contiguous or in memory. The chunk plan rechunks in whole multiples of it.
        ``None`` for sparse stores too: a CSR matrix can be cut at any row.
    sparse : bool
        X's blocks are ``scipy.sparse.csr_matrix`` (never densified by dnmf's reading).
    nnz : int or None
        Stored entries of a sparse X; ``None`` when X is dense, or sparse but only known
        through a dask array (counting would compute it).
    stored_nbytes : int or None
        For sparse stores, the bytes reading X once takes: the stored values and column
        indices of the ``nnz`` entries plus ``indptr``, in their stored dtypes. ``None`` for
        dense X.
    codec : str or None
        The stored compression, e.g. ``"ZstdCodec(level=3)"``, ``"gzip(4)"`` or ``"none"``;
        None where it is not known (in memory, sparse stores, remote metadata).
    mapped : bool
        A block inside one stored chunk is a view of the chunk file's pages, mapped without
        a copy (dnmf's raw reader of an uncompressed local Zarr,
        :class:`dnmf.io.zarr_.RawChunks`, with X in its stored dtype); the cost model's read
        then costs the mapping (:func:`dnmf.pipeline.panels_are_mapped`).
    chunks_written : tuple of (int, int) or None
        ``(stored, declared)`` chunks of a chunked store, where counting them is cheap (a
        local Zarr store, an HDF5 file); None otherwise. Chunks never written read as the fill
        value.
    in_row_panels : callable or None
        ``in_row_panels(rows)`` is X cut into row panels of ``rows`` rows (all columns in one
        chunk), each read on its own: where the store can be cut at any row (CSR), the chunk
        plan asks for its panels this way instead of rechunking, which would copy X.
    """

    array: da.Array
    path: str | None
    var: str | None
    format: str
    stored_dtype: str
    notes: tuple[str, ...] = ()
    stored_chunks: tuple[int, ...] | None = None
    sparse: bool = False
    nnz: int | None = None
    stored_nbytes: int | None = None
    in_row_panels: Callable[[tuple[int, ...]], da.Array] | None = None
    codec: str | None = None
    chunks_written: tuple[int, int] | None = None
    mapped: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape  # type: ignore[return-value]

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        return self.array.chunks

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.array.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of X: in memory when dense; read from storage when sparse (see
        ``stored_nbytes``), the dense size when that is unknown."""
        if self.sparse and self.stored_nbytes is not None:
            return int(self.stored_nbytes)
        return int(self.array.nbytes)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary for the result store's attributes.

        Returns
        -------
        dict
            ``{"path", "var", "format", "shape", "chunks", "dtype"}``; ``shape`` and
            ``chunks`` (the block shape, i.e. the largest block) are lists of int. A sparse
            X adds ``"sparse": "csr"``, ``"nnz"`` (int or None) and ``"nbytes"``.
        """
        desc: dict[str, Any] = {
            "path": self.path,
            "var": self.var,
            "format": self.format,
            "shape": [int(s) for s in self.array.shape],
            "chunks": [int(c) for c in self.array.chunksize],
            "dtype": str(self.array.dtype),
        }
        if self.sparse:
            desc.update(sparse="csr", nnz=self.nnz, nbytes=self.nbytes)
        return desc
