"""Block kernel of supervised unmixing: abundances of one row panel against given spectra.

No dask here; :mod:`dnmf.hyperspectral.supervised` builds the graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dnmf import kernels


def fcls_panel(X: Any, W: Any, H: np.ndarray, HHt: np.ndarray, *,
               sum_to_one: bool) -> tuple[np.ndarray, tuple[float, float]]:
    """Fully constrained (or non-negative) least squares abundances of a panel's pixels.

    Parameters
    ----------
    X : ndarray of shape (n, bands)
        The panel's pixels.
    W : ndarray of shape (n, k + 1)
        Unused (the graph's placeholder for the output's chunks).
    H : ndarray of shape (k, bands), float64
        The given spectra over the bands used.
    HHt : ndarray of shape (k, k)
        ``H Hᵀ``.
    sum_to_one : bool
        FCLS (:func:`dnmf.kernels.fcls_rows`) or, without it, NNLS.

    Returns
    -------
    (ndarray of shape (n, k + 1), (sse, sum_x2))
        The abundances with each pixel's residual RMSE over the bands as the last column, in
        X's dtype; and the panel's residual sum of squares and ``||X||²`` (float64).
    """
    X = np.asarray(X)
    k = H.shape[0]
    out = np.zeros((X.shape[0], k + 1), dtype=X.dtype)
    if X.shape[0] == 0:
        return out, (0.0, 0.0)
    X64 = X.astype(np.float64, copy=False)
    A = kernels.transform_rows(X64, H, HHt, sum_to_one=sum_to_one)
    R = X64 - A @ H
    sse_rows = np.einsum("ij,ij->i", R, R)
    out[:, :k] = A
    out[:, k] = np.sqrt(sse_rows / max(X.shape[1], 1))
    return out, (float(sse_rows.sum()), float(np.einsum("ij,ij->", X64, X64)))
