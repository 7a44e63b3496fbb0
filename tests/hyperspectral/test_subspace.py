"""HySime endmember count from the band Gram matrix (``dnmf unmix -k auto``)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from dnmf.errors import InputError
from dnmf.hyperspectral.subspace import estimate_endmembers, hysime


def _mixed_pixels(k, *, n=20_000, bands=120, snr_db=30.0, seed=0):
    """Sum-to-one mixtures of k smooth random spectra plus white noise at ``snr_db``."""
    rng = np.random.default_rng(seed)
    wl = np.linspace(400, 2450, bands)
    centres = np.linspace(400, 2450, 12)
    E = np.stack([0.05 + sum(rng.random() * np.exp(-((wl - c) / 200) ** 2) for c in centres)
                  for _ in range(k)])
    E /= E.max()
    A = rng.dirichlet(np.full(k, 0.7), size=n)
    sigma = np.sqrt((E ** 2).mean() / 10 ** (snr_db / 10))
    return (A @ E + sigma * rng.standard_normal((n, bands))).astype(np.float32), sigma


@pytest.mark.parametrize("k", [3, 5, 6])
def test_hysime_finds_the_number_of_endmembers(k):
    X, _ = _mixed_pixels(k, seed=k)
    estimate = estimate_endmembers(da.from_array(X, chunks=(5000, X.shape[1])))
    assert estimate.n_endmembers == k, estimate.describe()
    assert f"{k} endmember(s)" in estimate.describe()


def test_hysime_noise_estimate_matches_the_added_noise():
    X, sigma = _mixed_pixels(4, snr_db=25.0)
    gram = X.astype(np.float64).T @ X.astype(np.float64)
    estimate = hysime(gram, X.shape[0])
    np.testing.assert_allclose(np.median(estimate.noise_std), sigma, rtol=0.1)


def test_hysime_same_on_numpy_and_chunked_input():
    X, _ = _mixed_pixels(4, n=6000, seed=9)
    a = estimate_endmembers(X)
    b = estimate_endmembers(da.from_array(X, chunks=(1000, X.shape[1])))
    assert a.n_endmembers == b.n_endmembers == 4
    np.testing.assert_allclose(a.cost, b.cost, rtol=1e-6, atol=1e-12)


def test_hysime_needs_more_pixels_than_bands():
    with pytest.raises(InputError, match="needs more pixels than bands"):
        hysime(np.eye(10), 5)
