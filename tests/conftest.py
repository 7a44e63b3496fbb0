"""Shared fixtures: planted low-rank data and a real 2-process LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest


def make_planted(
    n_samples: int = 300,
    n_features: int = 60,
    rank: int = 5,
    *,
    noise: float = 0.01,
    seed: int = 0,
    dtype: str = "float64",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X = W H + |noise|, with W, H >= 0 known; noise is relative to X's mean."""
    rng = np.random.default_rng(seed)
    W = rng.gamma(1.0, 1.0, size=(n_samples, rank))
    H = rng.gamma(1.0, 1.0, size=(rank, n_features))
    X = W @ H
    X = X + noise * X.mean() * np.abs(rng.standard_normal(X.shape))
    return X.astype(dtype), W, H


@pytest.fixture(scope="session")
def planted() -> np.ndarray:
    """A 300 x 60 rank-5 matrix with 1% noise, float64."""
    return make_planted()[0]


@pytest.fixture(scope="session")
def local_client():
    """A real LocalCluster: 2 worker processes, 1 thread each (shared by the session)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        memory_limit="2GB",
    )
    client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()
