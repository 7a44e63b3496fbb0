"""dnmf's Python API on a laptop: a LocalCluster, a Zarr store, the estimator and factorize.

Run: ``python examples/quickstart.py`` (writes ``quickstart-data/`` in the current directory).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from distributed import Client, LocalCluster

import dnmf


def make_store(path: Path, n_samples: int = 100_000, n_features: int = 200, rank: int = 10):
    """A planted rank-10 float32 matrix in 10,000-row panels."""
    rng = np.random.default_rng(0)
    H = rng.gamma(0.5, 1.0, (rank, n_features)).astype(np.float32)
    z = zarr.create_array(str(path), shape=(n_samples, n_features), chunks=(10_000, n_features),
                          dtype="float32", overwrite=True)
    for start in range(0, n_samples, 10_000):
        W = rng.gamma(0.5, 1.0, (10_000, rank)).astype(np.float32)
        z[start:start + 10_000] = W @ H + 0.01 * rng.random((10_000, n_features), np.float32)


def main() -> None:
    data = Path("quickstart-data")
    data.mkdir(exist_ok=True)
    make_store(data / "X.zarr")

    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        print("dashboard:", client.dashboard_link)

        # 1. functional: out of core, result store written chunk by chunk
        result = dnmf.factorize(data / "X.zarr", 10, client=client, random_state=0,
                                out=data / "result.zarr", overwrite=True)
        print(f"factorize: {result.n_iter} iterations, relative error "
              f"{result.relative_error:.4f}")
        print("\n".join(result.plan.describe()))
        print(xr.open_zarr(data / "result.zarr"))

        # 2. scikit-learn style on an in-memory sample, then transform new rows with H fixed
        sample = zarr.open_array(str(data / "X.zarr"))[:5_000]
        model = dnmf.NMF(n_components=10, random_state=0, scheduler=client)
        W = model.fit_transform(sample)
        print("estimator:", W.shape, model.components_.shape,
              f"reconstruction error {model.reconstruction_err_:.3f}")
        W_new = model.transform(zarr.open_array(str(data / "X.zarr"))[5_000:6_000])
        print("transform:", W_new.shape)

    # 3. a fitted model back from the store
    model = dnmf.load(data / "result.zarr")
    print("loaded:", model.components_.shape, "W lazily:", model.W_)


if __name__ == "__main__":
    main()
