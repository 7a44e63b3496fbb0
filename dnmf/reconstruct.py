"""Reconstruction ``W @ H`` from a fitted model: blocks of it, or a whole filled matrix on disk.

Masked NMF leaves missing entries out of the fit; its ``W @ H`` predicts them. The product is
never formed in one piece: :func:`reconstruct` returns the requested rows and columns (lazy
for a lazy W), :func:`write_reconstruction` writes it chunk by chunk into a Zarr store,
optionally keeping the observed entries of the input and filling only the missing ones.
"""

from __future__ import annotations

import os
from typing import Any

import dask.array as da
import numpy as np
import zarr

from dnmf._version import __version__
from dnmf.cluster import execution_context
from dnmf.errors import InputError
from dnmf.io import open_matrix
from dnmf.io.overlap import Stored, check_outputs_are_not_inputs
from dnmf.io.result_store import consolidate, open_result, write_atomically

#: Column chunk of the written reconstruction when the row panels would be too large.
MAX_CHUNK_BYTES = 64 * 2**20


def reconstruct(W: Any, H: np.ndarray, rows: Any = None, cols: Any = None) -> Any:
    """``W[rows] @ H[:, cols]``: numpy for a numpy W, else a lazy dask array.

    Parameters
    ----------
    W : array (n_samples, k), numpy or dask
    H : array (k, n_features)
    rows, cols : slice, int array or boolean mask, optional
        The rows and columns wanted (default all).
    """
    rows = slice(None) if rows is None else rows
    cols = slice(None) if cols is None else cols
    Wr = W[rows]
    Hc = np.asarray(H)[:, cols]
    if isinstance(Wr, da.Array):
        return Wr @ Hc.astype(Wr.dtype)
    return np.asarray(Wr) @ Hc


def write_reconstruction(
    result: str | os.PathLike,
    out: str | os.PathLike,
    *,
    only_missing: Any = None,
    var: str | None = None,
    overwrite: bool = False,
    scheduler: Any = "auto",
) -> tuple[str, int]:
    """Write ``W @ H`` of a result store to ``out`` (a Zarr v3 group with array ``X``).

    Parameters
    ----------
    result : path
        A complete result store (``dnmf fit -o``).
    out : path
        The new store; written atomically (nothing at ``out`` unless complete). It may not be,
        contain or lie inside ``result`` or ``only_missing`` (``OutputError``, even with
        ``overwrite``).
    only_missing : path or array, optional
        The input matrix: keep its observed entries and fill only its NaN entries.
    var : str, optional
        The variable inside ``only_missing``.

    Returns
    -------
    (path, n_filled) : the store and the number of entries taken from ``W @ H`` (all of them
        without ``only_missing``).
    """
    check_outputs_are_not_inputs({"output": out}, {
        "the result": result, "the fitted input (--only-missing)": Stored(only_missing, var)})
    W, H, attrs = open_result(result)
    n, m = W.shape[0], H.shape[1]
    WH = W @ H.astype(W.dtype)
    filled = WH
    source = None
    if only_missing is not None:
        source = open_matrix(only_missing, var, dtype=W.dtype)
        if source.shape != (n, m):
            raise InputError(
                f"the input has shape {source.shape} but the model was fitted to {(n, m)} — "
                "give the matrix the model was fitted to")
        X = source.array.rechunk((W.chunks[0], -1))
        filled = da.where(da.isnan(X), WH, X)
    rows = int(max(W.chunks[0]))
    cols = int(min(m, max(1, MAX_CHUNK_BYTES // max(rows * W.dtype.itemsize, 1))))
    filled = filled.rechunk((rows, cols))
    n_missing = (da.isnan(source.array).sum() if source is not None else None)

    def write(store: str) -> None:
        root = zarr.open_group(store, mode="w", zarr_format=3)
        arr = root.create_array("X", shape=(n, m), chunks=(rows, cols), dtype=W.dtype,
                                dimension_names=("sample", "feature"))
        stored = da.store(filled, arr, lock=False, compute=False)
        with execution_context(scheduler, x_nbytes=n * m * W.dtype.itemsize) as ctx:
            # one computation, so X is read once for both the values and the count
            if n_missing is None:
                ctx.compute(stored)
                count = n * m
            else:
                count = int(ctx.compute(stored, n_missing)[1])
        root.attrs.update({
            "dnmf_version": __version__, "source_result": os.fspath(result),
            "only_missing": None if source is None else source.path or source.format,
            "n_filled": count, "n_components": int(attrs["n_components"]),
        })
        root.attrs["status"] = "complete"
        consolidate(store)
        state["n_filled"] = count

    state: dict[str, int] = {}
    path = write_atomically(out, write, overwrite=overwrite)
    return path, state["n_filled"]
