"""Faults with real processes: a worker process killed mid-run, the driver killed with SIGKILL
(resumed from its last periodic checkpoint), a chunk of X garbled on disk (one clear error, the
checkpoint kept), and the lineage the scheduler keeps (bounded by checkpoints).

Processes are killed at a marker — a checkpoint appearing in OUT.zarr/checkpoint, or an
iteration's callback — never after a fixed sleep, and are always cleaned up.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import dnmf
from dnmf.errors import InputError
from dnmf.io.open import open_matrix
from tests.conftest import make_planted

ROOT = Path(__file__).resolve().parents[1]
DNMF = [sys.executable, "-c", "from dnmf.cli import main; main()"]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    for name in ("DNMF_DEBUG", "DASK_SCHEDULER_ADDRESS"):
        env.pop(name, None)
    return env


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*DNMF, *args], capture_output=True, text=True, timeout=timeout,
                          env=_env())


@pytest.fixture
def x_store(tmp_path):
    X = make_planted(8000, 50, 4, dtype="float32")[0]
    path = tmp_path / "x.zarr"
    zarr.create_array(str(path), shape=X.shape, chunks=(1000, 50), dtype="float32")[...] = X
    return str(path)


@pytest.fixture
def cli_store(tmp_path) -> Path:
    """20,000 x 100 float32 in ten stored chunks of 2,000 rows (the plan merges them)."""
    X = make_planted(20_000, 100, 5, dtype="float32")[0]
    path = tmp_path / "x.zarr"
    zarr.create_array(str(path), shape=X.shape, chunks=(2000, 100), dtype="float32")[...] = X
    return path


def _fit_args(src: Path, out: Path) -> list[str]:
    # threads: the driver is the whole run, so SIGKILL leaves no process behind
    return [str(src), "-k", "5", "-o", str(out), "--tol", "0", "--seed", "3", "--max-iter",
            "30", "--checkpoint-every", "2", "--scheduler", "threads"]


def _current_checkpoint(out: Path) -> dict | None:
    """The checkpoint group's attributes once a checkpoint is complete (None before)."""
    try:
        attrs = json.loads((out / "checkpoint" / "zarr.json").read_text())["attributes"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):  # not there, or mid-write
        return None
    return attrs if "current" in attrs else None


def _sigkill_after_first_checkpoint(args: list[str], out: Path) -> int:
    """Run ``dnmf fit ARGS``, SIGKILL it as soon as its first checkpoint is complete, and
    return the iteration of the checkpoint left in OUT."""
    proc = subprocess.Popen([*DNMF, "fit", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 120
        while _current_checkpoint(out) is None:  # the marker
            if proc.poll() is not None:
                pytest.fail(f"dnmf fit exited ({proc.returncode}) before its first checkpoint: "
                            f"{proc.stderr.read() if proc.stderr else ''}")
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["status"] == "running"  # killed mid-run: no final write, no "interrupted"
    done = _current_checkpoint(out)
    assert done is not None
    # the pointer and what --resume checks arrive together, or a kill between them leaves a
    # checkpoint that cannot be resumed
    assert {"current", "iteration", "params", "fingerprint"} <= set(done), (
        f"SIGKILL left the checkpoint's pointer without its metadata ({sorted(done)}): "
        "checkpoint.write must write the group's attributes in one write")
    assert 2 <= done["iteration"] < 30
    return int(done["iteration"])


def _factors(out: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    root = zarr.open_group(str(out), mode="r")
    return np.asarray(root["W"][...]), np.asarray(root["H"][...]), dict(root.attrs)


# --- a worker process dies ----------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.parametrize("persist_x", [False, True], ids=["streamed", "persisted"])
def test_worker_killed_mid_run_gives_the_undisturbed_result(tmp_path, x_store, persist_x):
    from distributed import Client, LocalCluster

    # the reference differs from the disturbed run in the kill alone: same output and
    # checkpoints (each continues from W as stored), same cluster
    kw = dict(max_iter=10, tol=0.0, random_state=0, persist_x=persist_x, min_panel_bytes=0,
              checkpoint_every=3)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        reference = dnmf.factorize(x_store, 4, client=client, out=tmp_path / "ref.zarr", **kw)
        victim = sorted(client.run(os.getpid).values())[0]

        def kill_at_iteration_4(info):  # the marker: iteration 4 has completed
            if info.iteration == 4:
                os.kill(victim, signal.SIGKILL)

        disturbed = dnmf.factorize(x_store, 4, client=client, callback=kill_at_iteration_4,
                                   out=tmp_path / "r.zarr", **kw)
        assert victim not in client.run(os.getpid).values()  # it really died (and restarted)
    assert disturbed.n_iter == 10
    # Bitwise: a recomputed panel takes the same BLAS path as the first computation, wherever
    # its operands arrived in memory (kernels.call_aligned; a misaligned operand made numpy
    # multiply without BLAS, and on OpenBLAS's SkylakeX kernels that rounds differently).
    np.testing.assert_array_equal(disturbed.H, reference.H)
    np.testing.assert_array_equal(np.asarray(disturbed.W), np.asarray(reference.W))
    assert disturbed.loss_history == reference.loss_history


@pytest.mark.cluster
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


# --- the driver dies --------------------------------------------------------------------------


@pytest.mark.cluster
def test_driver_sigkilled_after_a_checkpoint_resumes_to_the_undisturbed_result(
        tmp_path, cli_store):
    # float64: the checkpoint then holds W and H exactly as the driver iterates them (the
    # driver keeps H in float64; a float32 checkpoint rounds it, and the resumed float32 run
    # drifts by ~1e-6 of max|H| from the undisturbed one)
    def args(out: Path) -> list[str]:
        return [*_fit_args(cli_store, out), "--dtype", "float64"]

    undisturbed = run_cli("fit", *args(tmp_path / "ref.zarr"))
    assert undisturbed.returncode == 0, undisturbed.stderr

    out = tmp_path / "out.zarr"
    done = _sigkill_after_first_checkpoint(args(out), out)
    resumed = run_cli("fit", *args(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the checkpoint at iteration {done}" in resumed.stderr

    W, H, attrs = _factors(out)
    W_ref, H_ref, ref = _factors(tmp_path / "ref.zarr")
    assert attrs["status"] == "complete" and attrs["n_iter"] == ref["n_iter"] == 30
    assert "checkpoint" not in zarr.open_group(str(out), mode="r")
    # Same seed, same in-process scheduler, and the undisturbed run also restarts from W as
    # stored at each checkpoint: the resumed run repeats its arithmetic exactly (tolerance 0).
    np.testing.assert_array_equal(H, H_ref)
    np.testing.assert_array_equal(W, W_ref)
    assert attrs["loss_history"] == ref["loss_history"]


# --- a chunk of X is damaged --------------------------------------------------------------


def _store(tmp_path: Path, X: np.ndarray, chunks: tuple[int, int], **kw) -> Path:
    path = tmp_path / "d.zarr"
    zarr.create_array(str(path), shape=X.shape, chunks=chunks, dtype=X.dtype, **kw)[...] = X
    return path


DAMAGE = {
    "garbage": lambda data: os.urandom(len(data)),
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_chunk_is_named_with_its_rows_file_and_fix(tmp_path, damage):
    X = np.arange(4000, dtype="float32").reshape(400, 10)
    path = _store(tmp_path, X, (100, 10))
    src = open_matrix(str(path))
    assert src.array.numblocks == (1, 1)  # one block over four stored chunks: find the one
    chunk = path / "c" / "2" / "0"
    chunk.write_bytes(DAMAGE[damage](chunk.read_bytes()))
    with pytest.raises(InputError) as info:
        src.array.compute(scheduler="threads")
    message = str(info.value)
    assert message.startswith(f"cannot decode chunk (2, 0) of {path} (rows 200-299; file c/2/0)")
    assert message.endswith(
        "— the chunk file is damaged or truncated; restore it from a backup or re-create the "
        "store")
    assert "\n" not in message


def test_a_damaged_chunk_in_a_group_names_the_array_and_its_column_tile(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("scene/X", shape=(40, 20), chunks=(10, 5), dtype="f8")[...] = 1.0
    (tmp_path / "g.zarr" / "scene" / "X" / "c" / "3" / "1").write_bytes(b"not zstd")
    with pytest.raises(InputError, match=(
            r"^cannot decode chunk \(3, 1\) of array 'scene/X' in .*g\.zarr "
            r"\(rows 30-39, columns 5-9; file scene/X/c/3/1\): RuntimeError: ")):
        open_matrix(str(tmp_path / "g.zarr"), "scene/X").array.compute(scheduler="threads")


def test_a_damaged_shard_is_named_as_a_shard(tmp_path):
    X = np.ones((400, 10), dtype="float32")
    path = _store(tmp_path, X, (50, 10), shards=(100, 10))
    (path / "c" / "1" / "0").write_bytes(os.urandom(64))
    with pytest.raises(InputError, match=r"cannot decode shard \(1, 0\) of .* \(rows 100-199"):
        open_matrix(str(path)).array.compute(scheduler="threads")


def test_a_missing_chunk_reads_as_the_fill_value_without_error(tmp_path):
    # the caveat deploy/README.md documents: zarr treats an absent chunk as never written
    X = np.full((400, 10), 7.0, dtype="float32")
    path = _store(tmp_path, X, (100, 10))
    os.remove(path / "c" / "1" / "0")
    values = open_matrix(str(path)).array.compute(scheduler="threads")
    assert (values[100:200] == 0).all() and (values[:100] == 7).all()
    arr = zarr.open_array(str(path), mode="r")
    assert (arr.nchunks_initialized, arr.nchunks) == (3, 4)  # the check deploy/README shows


def _garble_mid_run(x_store: str, client, out: Path, **kw) -> tuple[type, str, bytes]:
    """Fit with checkpoints every 2 iterations and garble chunk (5, 0) of X right after
    iteration 3; return the error's type and message, and the chunk's original bytes."""
    chunk = Path(x_store) / "c" / "5" / "0"
    original = chunk.read_bytes()

    def garble_after_iteration_3(info):  # the marker: the checkpoint of iteration 2 is written
        if info.iteration == 3:
            assert _current_checkpoint(out)["iteration"] == 2
            chunk.write_bytes(os.urandom(len(original)))

    with pytest.raises(InputError) as info:  # raised on a worker, re-raised here
        dnmf.factorize(x_store, 4, client=client, out=out, checkpoint_every=2,
                       callback=garble_after_iteration_3, **kw)
    return type(info.value), str(info.value), original


@pytest.mark.cluster
def test_chunk_garbled_mid_run_on_worker_processes_raises_and_keeps_the_checkpoint(
        tmp_path, x_store):
    from distributed import Client, LocalCluster

    kw = dict(max_iter=8, tol=0.0, random_state=0, persist_x=False)  # X read every iteration
    out = tmp_path / "r.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        with Client(cluster, set_as_default=False) as client:
            # the reference checkpoints as the garbled run does: the two differ only in the
            # fault and the resume
            reference = dnmf.factorize(x_store, 4, client=client, out=tmp_path / "ref.zarr",
                                       checkpoint_every=2, **kw)
            kind, message, original = _garble_mid_run(x_store, client, out, **kw)
        assert kind is InputError  # the exception type survives the trip from the worker
        assert message.startswith(
            f"cannot decode chunk (5, 0) of {x_store} (rows 5,000-5,999; file c/5/0): ")
        assert _current_checkpoint(out)["iteration"] == 2
        assert zarr.open_group(str(out), mode="r").attrs["status"] == "running"

        (Path(x_store) / "c" / "5" / "0").write_bytes(original)  # the fix the message names
        # a fresh client, as a user restarting the command would have
        with Client(cluster, set_as_default=False) as client:
            resumed = dnmf.factorize(x_store, 4, client=client, out=out, resume=True, **kw)
    assert resumed.n_iter == 8
    # bitwise, for the reason given in test_worker_killed_mid_run_gives_the_undisturbed_result
    np.testing.assert_array_equal(resumed.H, reference.H)
    assert resumed.loss_history == reference.loss_history


@pytest.mark.cluster
def test_a_failed_run_leaves_no_futures_on_the_client(tmp_path, local_client, x_store):
    _garble_mid_run(x_store, local_client, tmp_path / "r.zarr", max_iter=8, tol=0.0,
                    random_state=0, persist_x=False)
    gc.collect()
    deadline = time.monotonic() + 5  # the client drops released keys on its event loop
    while local_client.refcount and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not local_client.refcount  # so a rerun after the fix reads X again


@pytest.mark.cluster
def test_cli_garbled_chunk_one_error_line_and_the_checkpoint_survives(tmp_path, cli_store):
    out = tmp_path / "out.zarr"
    args = _fit_args(cli_store, out)
    done = _sigkill_after_first_checkpoint(args, out)
    slot = _current_checkpoint(out)["current"]
    group = zarr.open_group(str(out / "checkpoint" / slot), mode="r")
    W_kept, H_kept = np.asarray(group["W"][...]), np.asarray(group["H"][...])

    chunk = cli_store / "c" / "3" / "0"
    original = chunk.read_bytes()
    chunk.write_bytes(os.urandom(len(original)))
    failed = run_cli("fit", *args, "--resume")
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith(
        f"error: cannot decode chunk (3, 0) of {cli_store} (rows 6,000-7,999; file c/3/0): ")
    assert lines[0].endswith("restore it from a backup or re-create the store")

    # the checkpoint is untouched ...
    kept = _current_checkpoint(out)
    assert (kept["current"], kept["iteration"]) == (slot, done)
    group = zarr.open_group(str(out / "checkpoint" / slot), mode="r")
    np.testing.assert_array_equal(group["W"][...], W_kept)
    np.testing.assert_array_equal(group["H"][...], H_kept)
    # ... and resumable once the chunk is restored
    chunk.write_bytes(original)
    resumed = run_cli("fit", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the checkpoint at iteration {done}" in resumed.stderr
    assert _factors(out)[2]["status"] == "complete"
