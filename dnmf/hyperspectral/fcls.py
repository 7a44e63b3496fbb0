"""Block kernel of supervised unmixing: abundances of one row panel against given spectra.

No dask here; :mod:`dnmf.hyperspectral.supervised` builds the graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dnmf import kernels

#: Rows solved at a time (4096 x 200 bands in float64: 6.5 MB per temporary).
ROWS_PER_BLOCK = 4096


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
    sse = xx = 0.0
    # rows in blocks: the float64 temporaries stay a few MB whatever the panel's size
    for r0 in range(0, X.shape[0], ROWS_PER_BLOCK):
        X64 = X[r0:r0 + ROWS_PER_BLOCK].astype(np.float64)
        A = kernels.transform_rows(X64, H, HHt, sum_to_one=sum_to_one)
        R = X64 - A @ H
        sse_rows = np.einsum("ij,ij->i", R, R)
        out[r0:r0 + len(X64), :k] = A
        out[r0:r0 + len(X64), k] = np.sqrt(sse_rows / max(X.shape[1], 1))
        sse += float(sse_rows.sum())
        xx += float(np.einsum("ij,ij->", X64, X64))
    return out, (sse, xx)
