"""Input and output: open X lazily from any supported store and validate it in one pass.

One module per storage engine (:mod:`~dnmf.io.zarr_`, :mod:`~dnmf.io.hdf5`,
:mod:`~dnmf.io.netcdf`, :mod:`~dnmf.io.npy`, and :mod:`~dnmf.io.sparse` for CSR matrices in
zarr, HDF5, ``.npz`` or memory); :func:`open_matrix` dispatches among them through the table
:data:`dnmf.io.open.ENGINES` (format name -> the engine's entry points). Helpers the engines
share (locations, chunk sizing, dtype and shape checks, messages) are in :mod:`dnmf.io.common`.
"""

from __future__ import annotations

from dnmf.io.open import open_matrix
from dnmf.io.source import MatrixSource
from dnmf.io.sparse import save_csr
from dnmf.io.validate import ValidationReport, check_rank, validate

__all__ = [
    "MatrixSource",
    "ValidationReport",
    "check_rank",
    "open_matrix",
    "save_csr",
    "validate",
]
