"""Shared fixtures: planted low-rank data, a real 2-process LocalCluster, counters of computes
and of store reads."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore, LoggingStore


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``gpu`` where CuPy sees no CUDA device, saying so."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    from dnmf.device import gpu_count

    if gpu_count() < 1:
        skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
        for item in gpu_items:
            item.add_marker(skip)


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


def dask_cli_cluster(directory, n_workers: int, *, memory_limit: str = "1GB"):
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker`` processes (1 thread each) on
    127.0.0.1, on free ports the OS picks; yield the scheduler's address once every worker is
    connected; stop them all afterwards, even when the test failed.

    A generator for fixtures: ``yield from dask_cli_cluster(tmp_path, 2)``. Each process runs in
    its own session, so a worker a nanny leaves behind is killed with its process group.
    """
    import json
    import subprocess
    import sys
    import time
    from pathlib import Path

    directory = Path(directory)
    scheduler_file = directory / "scheduler.json"
    bin_dir = Path(sys.executable).parent
    dask_cli = ([str(bin_dir / "dask")] if (bin_dir / "dask").exists()
                else [sys.executable, "-m", "dask"])
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []

    env = dask_env()

    def start(name: str, *args: str) -> None:
        log = directory / f"{name}.log"
        logs.append(log)
        with open(log, "wb") as fh:
            procs.append(subprocess.Popen([*dask_cli, *args], stdout=fh, env=env,
                                          stderr=subprocess.STDOUT, start_new_session=True))

    def log_tails() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in logs if p.exists())

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0",
              "--no-dashboard", "--scheduler-file", str(scheduler_file))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert procs[0].poll() is None, f"dask scheduler exited\n{log_tails()}"
            assert time.monotonic() < deadline, f"dask scheduler did not start\n{log_tails()}"
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(n_workers):
            start(f"worker-{i}", "worker", address, "--nthreads", "1", "--memory-limit",
                  memory_limit, "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}")
        from distributed import Client

        with Client(address, timeout="30s") as client:
            try:
                client.wait_for_workers(n_workers, timeout=90)
            except TimeoutError as exc:
                raise AssertionError(f"workers did not connect\n{log_tails()}") from exc
        yield address
    finally:
        stop_processes(procs)


def dask_env() -> dict[str, str]:
    """The environment of a ``dask scheduler``/``worker`` or ``dnmf`` process started by a
    test: this checkout importable (they unpickle dnmf's tasks), no ambient scheduler."""
    import os

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


def private_tmp_script() -> str:
    """sh commands that give the process running them (in a new mount namespace) an empty
    ``/tmp`` of its own, as a host of its own would have, while the paths it needs to run that
    lie under ``/tmp`` stay visible at the same place: the repository and the Python
    environment (a CI clone checked out in ``/tmp``). Each is bound to a holding folder on a
    tmpfs over ``/mnt`` (private to the namespace), then bound back over the new ``/tmp``."""
    import sys

    needed = sorted({str(Path(p).resolve()) for p in (Path(__file__).parents[1], sys.prefix,
                                                      Path(sys.executable).parent)})
    keep: list[str] = []
    for path in needed:
        if path.startswith("/tmp/") and not any(path.startswith(k + "/") for k in keep):
            keep.append(path)
    if not keep:
        return "mount -t tmpfs tmpfs /tmp"
    steps = ["mount -t tmpfs tmpfs /mnt"]
    for i, path in enumerate(keep):
        steps += [f"mkdir -p /mnt/keep{i}", f"mount --bind '{path}' /mnt/keep{i}"]
    steps.append("mount -t tmpfs tmpfs /tmp")
    for i, path in enumerate(keep):
        steps += [f"mkdir -p '{path}'", f"mount --bind /mnt/keep{i} '{path}'"]
    return " && ".join(steps)


def start_process(args: list[str], log: Path) -> Any:
    """A process in its own session (see :func:`stop_processes`), its output in ``log``."""
    import subprocess

    with open(log, "wb") as fh:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=dask_env(),
                                start_new_session=True)


def stop_processes(procs: list[Any]) -> None:
    """Stop started processes, the last started first (workers before their scheduler), and
    whatever each left in its session (a nanny's worker)."""
    import os
    import signal
    import subprocess

    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def scheduler_without_workers(tmp_path):
    """``(address, start_worker)``: a ``dask scheduler`` on 127.0.0.1 with no worker yet."""
    import sys

    procs: list[Any] = []

    def start_worker() -> None:
        procs.append(start_process([sys.executable, "-m", "distributed.cli.dask_worker",
                                    address, "--nthreads", "1", "--memory-limit", "1GB",
                                    "--no-dashboard", "--host", "127.0.0.1"],
                                   tmp_path / f"worker{len(procs)}.log"))

    try:
        address = start_scheduler(tmp_path, procs)
        yield address, start_worker
    finally:
        stop_processes(procs)


def start_scheduler(directory: Path, procs: list[Any]) -> str:
    """Start a ``dask scheduler`` on 127.0.0.1 (a free port, no dashboard; its log and
    scheduler file in ``directory``), appended to ``procs`` for :func:`stop_processes`; its
    address once it is up (an assertion with its log if it dies or takes over 60 s)."""
    import json
    import sys
    import time

    scheduler_file = directory / "scheduler.json"
    proc = start_process([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                          "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                          str(scheduler_file)], directory / "scheduler.log")
    procs.append(proc)
    deadline = time.monotonic() + 60
    while not scheduler_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline, (
            (directory / "scheduler.log").read_text())
        time.sleep(0.1)
    return json.loads(scheduler_file.read_text())["address"]


@pytest.fixture
def loopback_two_workers(tmp_path):
    """A real ``dask scheduler`` and two ``dask worker --nthreads 1`` processes on 127.0.0.1
    (random free ports); yields the scheduler's ``tcp://`` address; torn down after."""
    directory = tmp_path / "dask-cluster"
    directory.mkdir()
    yield from dask_cli_cluster(directory, 2)


def reset_peak_rss() -> None:
    """Linux: restart this process's peak resident memory (VmHWM) from its current RSS; run on
    workers with ``client.run(reset_peak_rss)``."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM), e.g. ``client.run(peak_rss)``."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class ComputeCounter:
    """A dask scheduler that counts how often it is asked to compute (then runs in-thread).

    Installed with ``dask.config.set(scheduler=...)`` it sees every ``compute``/``persist``,
    the same idea as xarray's ``raise_if_dask_computes``.
    """

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return dask.get(dsk, keys, **kwargs)


@pytest.fixture
def count_computes() -> Iterator[ComputeCounter]:
    """Route every dask compute in the test through a counter."""
    counter = ComputeCounter()
    with dask.config.set(scheduler=counter):
        yield counter


def logged_store(path: Path, X: np.ndarray, chunks: tuple[int, int]
                 ) -> tuple[LoggingStore, da.Array]:
    """Write X to a Zarr array at ``path`` and open it through a store that counts its reads
    (``store.counter["get"]``), as a dask array of the stored chunks."""
    zarr.create_array(LocalStore(path), shape=X.shape, chunks=chunks, dtype=X.dtype)[...] = X
    store = LoggingStore(LocalStore(path, read_only=True), log_handler=logging.NullHandler())
    return store, da.from_zarr(zarr.open_array(store, mode="r"))


@pytest.fixture
def logged_zarr(tmp_path) -> tuple[np.ndarray, LoggingStore, da.Array]:
    """A planted 240 x 30 float32 X in 40-row chunks, read through a counting store."""
    X, _, _ = make_planted(240, 30, 4, dtype="float32")
    return (X, *logged_store(tmp_path / "x.zarr", X, (40, 30)))
