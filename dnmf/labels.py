"""What kind of input a user gave: in memory (checked as scikit-learn checks it) or lazy."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import scipy.sparse as sp

#: Packages whose arrays are read lazily (or live on a device): never converted whole.
LAZY_MODULES = ("dask", "zarr", "xarray", "anndata", "h5py", "cupy", "distributed")


def in_memory(X: Any) -> bool:
    """Whether X is an in-memory array-like: numpy, a list, pandas, scipy.sparse or anything
    else with ``__array__`` (not a path, dask, zarr, xarray, h5py, AnnData or CuPy)."""
    if isinstance(X, str | os.PathLike):
        return False
    if sp.issparse(X) or isinstance(X, list | tuple):
        return True
    if type(X).__module__.split(".")[0] in LAZY_MODULES:
        return False
    return hasattr(X, "__array__")


def shape_of(X: Any) -> tuple[int, ...] | None:
    """X's shape without reading it (None for a path)."""
    if isinstance(X, str | os.PathLike):
        return None
    shape = getattr(X, "shape", None)
    return tuple(int(n) for n in shape) if shape is not None else np.shape(X)
