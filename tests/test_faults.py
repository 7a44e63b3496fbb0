"""Faults on a real cluster: a worker process killed mid-run, and the lineage the scheduler
keeps (bounded by checkpoints, which is also what a lost chunk is recomputed from)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import zarr

import dnmf
from tests.conftest import make_planted

pytestmark = pytest.mark.cluster


@pytest.fixture
def x_store(tmp_path):
    X = make_planted(8000, 50, 4, dtype="float32")[0]
    path = tmp_path / "x.zarr"
    zarr.create_array(str(path), shape=X.shape, chunks=(1000, 50), dtype="float32")[...] = X
    return str(path)


@pytest.mark.parametrize("persist_x", [False, True], ids=["streamed", "persisted"])
def test_worker_killed_mid_run_gives_the_undisturbed_result(tmp_path, x_store, persist_x):
    from distributed import Client, LocalCluster

    kw = dict(max_iter=10, tol=0.0, random_state=0, persist_x=persist_x, min_panel_bytes=0)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        reference = dnmf.factorize(x_store, 4, client=client, **kw)
        victim = sorted(client.run(os.getpid).values())[0]

        def kill_at_iteration_4(info):  # the marker: iteration 4 has completed
            if info.iteration == 4:
                os.kill(victim, signal.SIGKILL)

        disturbed = dnmf.factorize(x_store, 4, client=client, callback=kill_at_iteration_4,
                                   out=tmp_path / "r.zarr", checkpoint_every=3, **kw)
        assert victim not in client.run(os.getpid).values()  # it really died (and restarted)
    assert disturbed.n_iter == 10
    np.testing.assert_allclose(disturbed.H, reference.H, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(disturbed.loss_history, reference.loss_history, rtol=1e-5)


def test_checkpoints_bound_the_lineage_the_scheduler_keeps(tmp_path, local_client, x_store):
    def task_counts(**kw):
        counts = []

        def record(info):
            counts.append(local_client.run_on_scheduler(
                lambda dask_scheduler: len(dask_scheduler.tasks)))

        dnmf.factorize(x_store, 4, client=local_client, max_iter=16, tol=0.0, random_state=0,
                       persist_x=False, callback=record, **kw)
        return counts

    unbounded = task_counts()
    bounded = task_counts(out=tmp_path / "r.zarr", checkpoint_every=2, overwrite=True)
    # without checkpoints the scheduler keeps every iteration's tasks (to recompute lost
    # chunks); with them it keeps the iterations since the last checkpoint
    assert unbounded[-1] > unbounded[3] + 8 * 8
    assert max(bounded[4:]) <= bounded[3] + 8 * 3
