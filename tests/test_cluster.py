"""The scheduler layer: threads for small data, LocalCluster, addresses, existing clients."""

from __future__ import annotations

import os

import pytest

from dnmf.cluster import (
    AUTO_THREADS_MAX_BYTES,
    HERE_MAX_TASKS,
    MALLOC_TRIM_KEY,
    blas_threads_for,
    execution_context,
    parse_memory,
    resolve_scheduler_name,
    threads_or_here,
    worker_malloc_environment,
)
from dnmf.errors import InputError


def test_auto_picks_threads_for_small_data():
    with execution_context("auto", x_nbytes=10_000) as ctx:
        assert ctx.kind == "threads" and ctx.client is None
        assert ctx.threads_per_worker == (os.cpu_count() or 1)


def test_auto_keeps_x_that_is_already_in_memory_in_process():
    """A large numpy X would be pickled to worker processes: auto runs it in threads, unless
    a memory limit asks for workers."""
    with execution_context("auto", x_nbytes=4 * AUTO_THREADS_MAX_BYTES, x_in_memory=True) as ctx:
        assert ctx.kind == "threads" and ctx.client is None
    assert resolve_scheduler_name("auto", x_nbytes=4 * AUTO_THREADS_MAX_BYTES,
                                  x_in_memory=False) == "local"
    assert resolve_scheduler_name("auto", x_nbytes=4 * AUTO_THREADS_MAX_BYTES,
                                  memory_limit=2**30, x_in_memory=True) == "local"


@pytest.mark.cluster
def test_auto_starts_a_local_cluster_for_large_data_and_closes_it(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as an earlier LocalCluster leaves it
    with execution_context("auto", x_nbytes=AUTO_THREADS_MAX_BYTES + 1, workers=1,
                           memory_limit="1GB") as ctx:
        assert ctx.kind == "local" and ctx.n_workers == 1
        assert ctx.memory_per_worker == parse_memory("1GB")
        assert ctx.dashboard_link
        assert ctx.compute(__import__("dask").delayed(sum)([1, 2]))[0] == 3
        # glibc's adaptive malloc thresholds, not distributed's MALLOC_TRIM_THRESHOLD_=65536
        # (it made the panel kernels' large temporaries fresh mappings: 1.2-2x slower)
        environ = ctx.client.run(lambda: dict(os.environ))
        assert all("MALLOC_TRIM_THRESHOLD_" not in env and env["OPENBLAS_NUM_THREADS"] == "1"
                   for env in environ.values())
        client = ctx.client
    assert client.status == "closed"


@pytest.mark.parametrize(("at_import", "config", "expected"), [
    (None, 65536, True),  # distributed's default: unset for dnmf's workers
    (None, 1 << 20, False),  # the user's own choice is kept
    ("4096", 65536, False),
])
def test_worker_malloc_environment_keeps_a_users_choice(monkeypatch, at_import, config,
                                                        expected):
    """As dnmf's LocalCluster calls it: workers of 1 GB or more, or no limit."""
    import dask

    import dnmf.cluster

    monkeypatch.setattr(dnmf.cluster, "_MALLOC_TRIM_AT_IMPORT", at_import)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as a previous nanny leaves it
    with dask.config.set({MALLOC_TRIM_KEY: config}):
        with worker_malloc_environment() as unset:
            assert unset is expected
            assert ("MALLOC_TRIM_THRESHOLD_" not in os.environ) is expected
            assert (dask.config.get(MALLOC_TRIM_KEY) is None) is expected
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"
    with dask.config.set({MALLOC_TRIM_KEY: config}):
        with worker_malloc_environment(2 * 10**9) as unset:
            assert unset is expected


def test_small_workers_keep_distributeds_trimming(monkeypatch):
    """Under 1 GB a worker's retained heap can cross the nanny's 95% line: left as it is."""
    import dask

    import dnmf.cluster

    monkeypatch.setattr(dnmf.cluster, "_MALLOC_TRIM_AT_IMPORT", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with dask.config.set({MALLOC_TRIM_KEY: 65536}):
        with worker_malloc_environment(350 * 10**6) as unset:
            assert unset is False and os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"


@pytest.mark.cluster
def test_existing_client_is_used_as_is_and_left_open(local_client):
    with execution_context("auto", client=local_client) as ctx:
        assert ctx.kind == "client" and ctx.n_workers == 2
    assert local_client.status == "running"
    with execution_context(local_client) as ctx:
        assert ctx.client is local_client


@pytest.mark.cluster
def test_current_client_is_picked_up_by_auto(local_client):
    with local_client.as_current(), execution_context("auto", x_nbytes=10) as ctx:
        assert ctx.client is local_client


@pytest.mark.cluster
def test_address_and_environment_variable(local_client, monkeypatch):
    address = local_client.scheduler.address
    with execution_context(address) as ctx:
        assert ctx.kind == "address" and ctx.n_workers == 2
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    with execution_context("auto", x_nbytes=10) as ctx:
        assert ctx.kind == "address"


def test_unreachable_address_is_a_clear_error():
    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        with execution_context("tcp://127.0.0.1:1"):
            pass


def test_unknown_scheduler_name():
    with pytest.raises(InputError, match="unknown scheduler 'bogus'"):
        with execution_context("bogus"):
            pass


@pytest.mark.parametrize("text,expected", [("2GB", 2_000_000_000), ("700MiB", 700 * 2**20),
                                           (123, 123), (None, None)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


def test_parse_memory_error():
    with pytest.raises(InputError, match="cannot read memory size 'lots'"):
        parse_memory("lots")


def test_no_blas_oversubscription():
    cores = os.cpu_count() or 1
    with execution_context("threads") as ctx:
        assert blas_threads_for(ctx, n_tasks=100) * ctx.threads_per_worker <= cores
        assert blas_threads_for(ctx, n_tasks=1) == cores  # one panel: BLAS gets the cores


@pytest.mark.parametrize("n_tasks", [1, HERE_MAX_TASKS, HERE_MAX_TASKS + 10])
def test_threads_scheduler_runs_small_graphs_here(n_tasks: int) -> None:
    """A graph of at most HERE_MAX_TASKS tasks runs in the calling thread (no pool hand-offs),
    a larger one on dask's thread pool; both give the same results."""
    import threading

    import dask

    where = [dask.delayed(lambda i: (i * i, threading.get_ident()))(i) for i in range(n_tasks)]
    results = dask.compute(*where, scheduler=threads_or_here)
    assert [r[0] for r in results] == [i * i for i in range(n_tasks)]
    here = {r[1] for r in results} == {threading.get_ident()}
    assert here == (n_tasks <= HERE_MAX_TASKS)
