"""Local files the workers cannot see are refused in one line before the first iteration.

The worker here is a real ``dask worker`` process on this host, but in its own mount namespace
with a private ``/tmp`` (root only): it sees every file of this host except the test's
temporary folder, as a worker on another host would. Everything outside ``/tmp`` (here a
folder under the repository's ``.pytest-reach`` folder, deleted afterwards) it sees.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import dnmf
from dnmf.errors import InputError, OutputError
from tests.conftest import (
    make_planted,
    private_tmp_script,
    start_process,
    start_scheduler,
    stop_processes,
)

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
#: Runs the command with a private, empty /tmp (a tmpfs in a new mount namespace).
PRIVATE_TMP = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               private_tmp_script() + ' && exec "$0" "$@"']


def _no_private_tmp() -> str | None:
    """Why a process with a private /tmp cannot be started here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root: the worker's private /tmp is a mount namespace"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    import subprocess

    probe = subprocess.run([*PRIVATE_TMP, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a mount namespace here: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def blind_worker(tmp_path_factory):
    """The address of a ``dask scheduler`` with one worker that cannot see ``/tmp``."""
    reason = _no_private_tmp()
    if reason:
        pytest.skip(reason)
    logs = tmp_path_factory.mktemp("blind-worker")
    procs: list = []
    try:
        address = start_scheduler(logs, procs)
        procs.append(start_process([*PRIVATE_TMP, sys.executable, "-m",
                                    "distributed.cli.dask_worker", address, "--nthreads", "1",
                                    "--memory-limit", "1GB", "--no-dashboard", "--host",
                                    "127.0.0.1"], logs / "worker.log"))
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=90)
        yield address
    finally:
        stop_processes(procs)


@pytest.fixture
def shared_dir():
    """A folder outside /tmp, which the worker sees too."""
    path = ROOT / ".pytest-reach" / f"{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)
    with_parent = path.parent
    if with_parent.exists() and not any(with_parent.iterdir()):
        with_parent.rmdir()


def _write_x(path: Path) -> np.ndarray:
    X = make_planted(400, 30, 3, dtype="float32")[0]
    zarr.create_array(str(path), shape=X.shape, chunks=(100, 30), dtype=X.dtype)[...] = X
    return X


FIT = {"max_iter": 5, "random_state": 0}


def test_an_input_the_workers_cannot_see_is_refused(blind_worker, tmp_path, shared_dir):
    x = tmp_path / "x.zarr"  # this process's /tmp: not the worker's
    _write_x(x)
    t0 = time.monotonic()
    with pytest.raises(InputError) as info:
        dnmf.factorize(str(x), 3, scheduler=blind_worker, out=str(shared_dir / "o.zarr"), **FIT)
    message = str(info.value)
    assert message.startswith(f"the Dask workers cannot read the input {x} (not readable by "
                              "1 of 1 workers")
    assert "every worker can reach" in message and "\n" not in message
    assert time.monotonic() - t0 < 30  # refused up front, not after a task timed out
    assert not (shared_dir / "o.zarr").exists()


def test_an_output_the_workers_cannot_see_is_refused(blind_worker, tmp_path, shared_dir):
    _write_x(shared_dir / "x.zarr")
    out = tmp_path / "o.zarr"  # the worker would write W into its own /tmp
    with pytest.raises(OutputError, match=r"^the Dask workers cannot write the output "
                       f"{out} \\(its folder is not the one 1 of 1 workers see"):
        dnmf.factorize(str(shared_dir / "x.zarr"), 3, scheduler=blind_worker, out=str(out),
                       **FIT)
    assert not out.exists() and not (tmp_path / ".o.zarr.lock").exists()


def test_a_scratch_folder_the_workers_cannot_see_is_refused(blind_worker, shared_dir,
                                                            monkeypatch):
    _write_x(shared_dir / "x.zarr")
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")  # W streamed through this host's /tmp
    with pytest.raises(OutputError, match="cannot write the scratch folder of W .*TMPDIR="):
        dnmf.factorize(str(shared_dir / "x.zarr"), 3, scheduler=blind_worker,
                       persist_w=False, **FIT)


def test_files_every_worker_sees_pass(blind_worker, shared_dir, monkeypatch):
    """No false refusal: a relative input and output outside /tmp, which the worker sees."""
    X = _write_x(shared_dir / "x.zarr")
    monkeypatch.chdir(shared_dir)
    result = dnmf.factorize("x.zarr", 3, scheduler=blind_worker, out="o.zarr", **FIT)
    assert result.n_iter == FIT["max_iter"]
    assert np.asarray(dnmf.load("o.zarr").W_).shape == (X.shape[0], 3)
