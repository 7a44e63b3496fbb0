"""Memory-bounded out of core: X larger than the workers' memory, streamed every iteration.

Two worker processes limited to 700 MB each (an idle worker already takes about 200 MB) fit an
X of 2.8 GB, twice their total memory. Spilling is switched off, so X cannot go to the workers'
disks; the peak resident memory of each worker process (``VmHWM``, reset before the fit) is
read from the workers and must stay under the limit.
"""

from __future__ import annotations

import dask
import numpy as np
import pytest
import zarr

import dnmf
from tests.conftest import peak_rss, reset_peak_rss

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LIMIT = 700 * 2**20


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """1,400,000 x 500 float32 (2.8 GB) raw Zarr of planted rank-5 data, 16 MiB chunks."""
    path = tmp_path_factory.mktemp("ooc") / "X.zarr"
    rows, cols, chunk = 1_400_000, 500, 8_192
    arr = zarr.create_array(str(path), shape=(rows, cols), chunks=(chunk, cols),
                            dtype="float32", compressors=None)
    rng = np.random.default_rng(0)
    H = rng.random((5, cols), dtype=np.float32)
    for start in range(0, rows, 16 * chunk):
        stop = min(rows, start + 16 * chunk)
        arr[start:stop] = rng.random((stop - start, 5), dtype=np.float32) @ H
    return path


def test_x_twice_the_workers_memory_fits_under_the_limit(big_store):
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.worker.memory.target": False,
                          "distributed.worker.memory.spill": False,
                          # a worker paused at 80% of its limit runs nothing more, so the run
                          # waits for ever (peaks reach ~80% here); the peak is asserted below
                          "distributed.worker.memory.pause": False}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         memory_limit=LIMIT, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.run(reset_peak_rss)
        result = dnmf.factorize(str(big_store), 10, init="random", random_state=0,
                                max_iter=2, tol=0, client=client)
        peaks = client.run(peak_rss)
        assert len(peaks) == 2  # no worker was lost (and restarted) on the way
    assert not result.plan.persist_x  # X is 2x the workers' memory: streamed, not kept
    assert result.plan.reads_per_iteration >= 2 * 2  # at least two panels per worker
    assert result.n_iter == 2 and result.relative_error < 0.5
    assert max(peaks.values()) < LIMIT, {k: v / 2**20 for k, v in peaks.items()}
