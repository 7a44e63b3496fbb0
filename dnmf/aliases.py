"""Type aliases of the public signatures: what a parameter accepts, named once.

They are for readers and type checkers only: the modules that use them import them under
``TYPE_CHECKING`` (their annotations are strings), so importing ``dnmf`` still pulls in none of
dask, zarr, xarray or anndata. The values are checked at run time where they are used, with
errors that name the fix.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:  # the aliases name these types; nothing here is imported at run time
    import anndata
    import dask.array
    import distributed
    import numpy as np
    import numpy.typing as npt
    import scipy.sparse
    import xarray as xr
    import zarr

__all__ = ["ArrayLike", "ClientLike", "DTypeLike", "MatrixLike", "PathLike", "RandomStateLike",
           "SchedulerLike"]

PathLike: TypeAlias = "str | os.PathLike[str]"
"""A local path or an fsspec URL (``s3://…``, ``gs://…``, ``file://…``)."""

ArrayLike: TypeAlias = (
    "npt.ArrayLike | dask.array.Array | zarr.Array | scipy.sparse.spmatrix"
    " | scipy.sparse.sparray | xr.DataArray | anndata.AnnData"
)
"""A matrix in memory or lazy: numpy (or anything numpy converts, e.g. a list or a pandas
DataFrame), a dask or zarr array, a scipy sparse matrix, a 2-D xarray DataArray or an AnnData
object (in memory, sparse or backed)."""

MatrixLike: TypeAlias = "ArrayLike | PathLike"
"""X as the fitting functions take it: an :data:`ArrayLike`, or a path or URL of a Zarr, HDF5,
NetCDF, ``.npy``, ``.npz`` (scipy sparse) or ``.h5ad`` file (with ``var=`` inside a
container)."""

ClientLike: TypeAlias = "distributed.Client"
"""A connected ``distributed.Client``; it is used as is and never closed."""

SchedulerLike: TypeAlias = "str | distributed.Client"
"""``"auto"``, ``"threads"``, ``"sync"``, ``"local"`` (a LocalCluster), ``"cuda"`` (a
``dask_cuda.LocalCUDACluster``), a scheduler address ``"tcp://host:port"``, or a Client."""

RandomStateLike: TypeAlias = "int | np.random.RandomState | np.random.Generator | None"
"""A seed (an int >= 0), a numpy RandomState or Generator (a seed is drawn from it), or
``None`` (fresh entropy)."""

DTypeLike: TypeAlias = "str | np.dtype | type | None"
"""The compute dtype: ``float32`` or ``float64`` (``None``: X's own float dtype)."""
