"""How many endmembers? The signal-subspace estimate behind ``dnmf unmix -k auto``.

HySime (Bioucas-Dias & Nascimento, "Hyperspectral subspace identification", IEEE TGRS 46(8),
2008) from the band Gram matrix alone, so the whole estimate is one pass over the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from dnmf.errors import InputError


@dataclass
class SubspaceEstimate:
    """The estimated number of endmembers and its evidence.

    Attributes
    ----------
    n_endmembers : int
        The count of signal eigen-directions whose projected power exceeds twice their
        projected noise power (HySime's minimum of the mean squared projection error).
    signal_power : ndarray (n_bands,)
        ``e_iᵀ R_y e_i`` for the eigenvectors ``e_i`` of the signal correlation matrix, in
        decreasing eigenvalue order.
    noise_power : ndarray (n_bands,)
        ``e_iᵀ R_n e_i``.
    cost : ndarray (n_bands,)
        ``-signal_power + 2 noise_power``; a direction is kept when negative.
    noise_std : ndarray (n_bands,)
        The estimated noise standard deviation of every band.
    criterion : str
    """

    n_endmembers: int
    signal_power: np.ndarray
    noise_power: np.ndarray
    cost: np.ndarray
    noise_std: np.ndarray
    criterion: str = "hysime"

    def describe(self, shown: int = 3) -> str:
        """One line of evidence: the kept count and the cost around the cut."""
        k = self.n_endmembers
        lo, hi = max(0, k - shown), min(len(self.cost), k + shown)
        terms = ", ".join(f"{i + 1}:{self.cost[i] / self.noise_power[i]:+.3g}"
                          for i in range(lo, hi))
        return (f"HySime signal subspace: {k} endmember(s) — (2·noise − signal)/noise "
                f"per direction {terms} (kept while negative)")


def hysime(gram: np.ndarray, n_pixels: int) -> SubspaceEstimate:
    """HySime from the band Gram matrix ``YᵀY`` of ``n_pixels`` pixels (rows of Y).

    Noise: the residual of regressing each band on all the others, which is
    ``Y R⁻¹ D`` with ``R = YᵀY`` and ``D = diag(1 / (R⁻¹)_ii)``, so its correlation
    ``D R⁻¹ D / n`` and the signal correlation ``(I - R⁻¹D)ᵀ R (I - R⁻¹D) / n`` follow from R.
    The data correlation is not centred: with abundances summing to one, k endmembers span a
    k-dimensional linear subspace.
    """
    R = np.asarray(gram, dtype=np.float64)
    b = R.shape[0]
    if b < 3 or n_pixels <= b:
        raise InputError(
            f"the endmember estimate needs more pixels than bands and >= 3 bands; got "
            f"{n_pixels} pixels x {b} bands — give -k explicitly")
    # a tiny ridge keeps R invertible when bands are exactly collinear (e.g. duplicated)
    ridge = 1e-12 * np.trace(R) / b
    R_inv = np.linalg.inv(R + ridge * np.eye(b))
    D = np.diag(1.0 / np.diag(R_inv))
    Rn = D @ R_inv @ D / n_pixels
    P = np.eye(b) - R_inv @ D
    Rx = P.T @ R @ P / n_pixels
    Ry = R / n_pixels
    values, vectors = np.linalg.eigh((Rx + Rx.T) / 2)
    E = vectors[:, np.argsort(values)[::-1]]
    signal = np.einsum("ji,jk,ki->i", E, Ry, E)
    noise = np.einsum("ji,jk,ki->i", E, Rn, E)
    cost = -signal + 2.0 * noise
    # HySime keeps the directions with negative cost (its argmin over subsets of eigenvectors)
    k = int(np.count_nonzero(cost < 0))
    return SubspaceEstimate(n_endmembers=max(k, 1), signal_power=signal, noise_power=noise,
                            cost=cost, noise_std=np.sqrt(np.maximum(np.diag(Rn), 0.0)))


def estimate_endmembers(X: da.Array | np.ndarray, *, max_endmembers: int | None = None
                        ) -> SubspaceEstimate:
    """HySime on a (pixels × bands) matrix: one pass for ``XᵀX``, the rest on the driver.

    Parameters
    ----------
    X : dask or numpy array (n_pixels, n_bands), no-data pixels already removed
    max_endmembers : int, optional
        An upper bound on the answer (e.g. the bands available).
    """
    Xd = X if isinstance(X, da.Array) else da.from_array(np.asarray(X))
    X64 = Xd.astype(np.float64)
    (gram,) = da.compute(X64.T @ X64)
    estimate = hysime(gram, X.shape[0])
    if max_endmembers is not None and estimate.n_endmembers > max_endmembers:
        estimate.n_endmembers = max_endmembers
    return estimate
