"""What dnmf guarantees under bad input and faults, case by case (the docs' "What dnmf
guarantees", docs/pages/guide/guarantees.md).

Every case runs the real CLI in a subprocess (or the API) against real files and asserts:
the exit code; one ``error:`` line naming the problem and its fix; no traceback; nothing new at
any output (the working folder's listing before and after); the inputs unchanged (checksums).
Faults are real: SIGKILL of the driver during the final write, a second concurrent writer, a
full disk (a small tmpfs mounted inside ``unshare -m``, so that a crashed test leaves no mount
behind), damaged checkpoint slots, a worker killed for memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

import dnmf
from dnmf.errors import DnmfError
from tests.conftest import make_planted

ROOT = Path(__file__).resolve().parents[1]
DNMF = [sys.executable, "-c", "from dnmf.cli import main; main()"]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **extra}
    for name in ("DNMF_DEBUG", "DASK_SCHEDULER_ADDRESS", "DNMF_HDF5_EXTERNAL"):
        if name not in extra:
            env.pop(name, None)
    return env


def run_cli(args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 60, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*(prefix or []), *DNMF, *args], capture_output=True, text=True,
                          timeout=timeout, env=env or _env(), cwd=cwd)


def listing(folder: Path) -> set[str]:
    """Every path under ``folder`` (hidden ones included), relative."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def checksums(paths: list[Path]) -> dict[str, str]:
    out = {}
    for path in paths:
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        digest = hashlib.blake2b(digest_size=16)
        for f in files:
            if f.is_file():
                digest.update(str(f.relative_to(path.parent)).encode())
                digest.update(f.read_bytes())
        out[str(path)] = digest.hexdigest()
    return out


def write_zarr(path: Path, X: np.ndarray, chunks: tuple[int, int] | None = None) -> Path:
    arr = zarr.create_array(str(path), shape=X.shape, chunks=chunks or X.shape, dtype=X.dtype)
    arr[...] = X
    return path


# --- the data every case may use -------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A folder of inputs, good and bad, shared (read-only) by the cases."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    X = make_planted(400, 30, 3, dtype="float32")[0]
    write_zarr(d / "x.zarr", X, (100, 30))
    neg = X.copy()
    neg[5, 3] = -1.0
    write_zarr(d / "neg.zarr", neg)
    nan = X.copy()
    nan[7, 2] = np.nan
    write_zarr(d / "nan.zarr", nan)
    inf = X.copy()
    inf[1, 1] = np.inf
    write_zarr(d / "inf.zarr", inf)
    write_zarr(d / "subnormal.zarr", (rng.random((200, 20)) * 1e-40).astype(np.float32))
    write_zarr(d / "huge_f32.zarr", (rng.random((200, 20)) * 1e19).astype(np.float32))
    write_zarr(d / "huge_i64.zarr", rng.integers(2**61, 2**62, (200, 20)).astype(np.int64))
    write_zarr(d / "huge_f64.zarr", rng.random((200, 20)) * 1e300)
    zarr.create_array(str(d / "vector.zarr"), shape=(50,), dtype="f4")[...] = 1.0
    zarr.create_array(str(d / "cube3.zarr"), shape=(5, 5, 5), dtype="f4")[...] = 1.0
    zarr.create_array(str(d / "complex.zarr"), shape=(20, 5), dtype="c8")[...] = 1.0
    # declared, never written: 10^12 x 10^6; one 3.7 GiB chunk; 0 of 10 chunks
    zarr.create_array(str(d / "declared_huge.zarr"), shape=(10**12, 10**6),
                      chunks=(10**5, 10**3), dtype="f4")
    zarr.create_array(str(d / "big_chunks.zarr"), shape=(200_000, 5_000),
                      chunks=(200_000, 5_000), dtype="f4")
    zarr.create_array(str(d / "unwritten.zarr"), shape=(1000, 50), chunks=(100, 50),
                      dtype="f4")
    group = zarr.open_group(str(d / "group.zarr"), mode="w")
    group.create_array("X", shape=X.shape, dtype="f4")[...] = X
    # HDF5 whose values come from another file
    with h5py.File(d / "secret.h5", "w") as f:
        f["X"] = X
    (d / "h5").mkdir()
    with h5py.File(d / "h5" / "link.h5", "w") as f:
        f["X"] = h5py.ExternalLink(str(d / "secret.h5"), "/X")
    X.astype("<f4").tofile(d / "raw.bin")
    with h5py.File(d / "h5" / "external.h5", "w") as f:
        f.create_dataset("X", shape=X.shape, dtype="<f4",
                         external=[(str(d / "raw.bin"), 0, X.nbytes)])
    layout = h5py.VirtualLayout(shape=X.shape, dtype="f4")
    layout[:] = h5py.VirtualSource(str(d / "secret.h5"), "X", shape=X.shape)
    with h5py.File(d / "h5" / "virtual.h5", "w") as f:
        f.create_virtual_dataset("X", layout)
    # ENVI headers that lie
    cube = rng.random((4, 5, 6)).astype("<f4")
    cube.tofile(d / "cube.img")
    envi = ("ENVI\nsamples = 5\nlines = 4\nbands = 6\nheader offset = {offset}\n"
            "file type = ENVI Standard\ndata type = 4\ninterleave = bsq\nbyte order = 0\n")
    (d / "cube.hdr").write_text(envi.format(offset=-16))
    shutil.copy(d / "cube.img", d / "absurd.img")
    (d / "absurd.hdr").write_text(envi.format(offset=0).replace("lines = 4",
                                                                "lines = 1000000000"))
    # a complete result, a store interrupted mid-run, and damaged ones
    dnmf.factorize(str(d / "x.zarr"), 3, out=str(d / "model.zarr"), random_state=0,
                   max_iter=20)
    store = zarr.open_group(str(d / "running.zarr"), mode="w", zarr_format=3)
    store.attrs.update({"schema_version": 1, "status": "running"})
    shutil.copytree(d / "model.zarr", d / "mismatch.zarr")
    meta = json.loads((d / "mismatch.zarr" / "zarr.json").read_text())
    meta["attributes"]["n_components"] = 7
    meta.pop("consolidated_metadata", None)
    (d / "mismatch.zarr" / "zarr.json").write_text(json.dumps(meta))
    shutil.copytree(d / "model.zarr", d / "no_h.zarr")
    shutil.rmtree(d / "no_h.zarr" / "H")
    meta = json.loads((d / "no_h.zarr" / "zarr.json").read_text())
    meta.pop("consolidated_metadata", None)
    (d / "no_h.zarr" / "zarr.json").write_text(json.dumps(meta))
    return d


# --- the table ---------------------------------------------------------------------------------


@dataclass
class Case:
    """One bad input or fault: CLI arguments (``{d}`` is the inputs folder) and what must
    happen. ``exit_code`` 0 cases assert the note/warning line instead of ``error:``."""

    args: str
    message: str
    exit_code: int = 1
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[Path], None] | None = None
    memory_cap: bool = False
    only_line: bool = True  # the error is the only line on stderr (nothing ran before it)


def _dangling_link(work: Path) -> None:
    (work / "dangling.zarr").symlink_to(work / "nowhere" / "x.zarr")


def _link_loop(work: Path) -> None:
    (work / "loop.zarr").symlink_to(work / "loop.zarr")


def _a_file(work: Path) -> None:
    (work / "afile").write_text("not a folder")


def _existing_out(work: Path) -> None:
    (work / "out.zarr").mkdir()


def _live_lock(work: Path) -> None:
    """The claim of a live run (this test's own process) on out.zarr."""
    import socket

    lock = work / ".out.zarr.lock"
    lock.mkdir()
    (lock / "owner.json").write_text(json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "since": "2026-01-01T00:00:00"}))


F = "fit {d}/x.zarr -k 3 -o out.zarr"
CASES: dict[str, Case] = {
    # parameters: checked before anything is read (FitSpec)
    "tol-nan": Case(F + " --tol nan", r"tol must be a number >= 0; got nan"),
    "tol-inf": Case(F + " --tol inf", r"tol must be a number >= 0; got inf"),
    "tol-negative": Case(F + " --tol -1", r"tol must be a number >= 0"),
    "alpha-w-nan": Case(F + " --alpha-w nan", r"alpha_W must be a number >= 0; got nan"),
    "alpha-w-inf": Case(F + " --alpha-w inf", r"alpha_W must be a number >= 0; got inf"),
    "alpha-h-inf": Case(F + " --alpha-h inf", r"alpha_H must be a number >= 0"),
    "l1-ratio-nan": Case(F + " --l1-ratio nan", r"l1_ratio must be in \[0, 1\]; got nan"),
    "l1-ratio-2": Case(F + " --l1-ratio 2", r"l1_ratio must be in \[0, 1\]"),
    "max-time-nan": Case(F + " --max-time nan", r"max_time must be a positive number"),
    "max-time-0": Case(F + " --max-time 0", r"max_time must be a positive number"),
    "max-iter-0": Case(F + " --max-iter 0", r"max_iter must be an integer >= 1"),
    "rank-0": Case("fit {d}/x.zarr -k 0 -o out.zarr", r"rank"),
    "rank-too-large": Case("fit {d}/x.zarr -k 31 -o out.zarr", r"rank|n_components|k ="),
    "restarts-0": Case(F + " --restarts 0", r"n_restarts must be an integer >= 1"),
    "checkpoint-negative": Case(F + " --checkpoint-every -1", r"checkpoint_every must be"),
    "loss-unknown": Case(F + " --loss hinge", r"unknown loss 'hinge'"),
    "solver-vs-loss": Case(F + " --solver hals --loss kullback-leibler",
                           r"supports only the Frobenius loss"),
    "resume-and-overwrite": Case(F + " --resume --overwrite", r"contradict"),
    # the cluster
    "workers-0": Case(F + " --scheduler local --workers 0",
                      r"--workers must be an integer >= 1; got 0"),
    "workers-negative": Case(F + " --scheduler local --workers -1",
                             r"--workers must be an integer >= 1; got -1"),
    "memory-unparsable": Case(F + " --scheduler local --memory-limit lots",
                              r"cannot read memory size 'lots'"),
    "memory-below-floor": Case(F + " --scheduler local --memory-limit 1kB",
                               r"below the 256 MiB a Dask worker process needs"),
    "memory-negative": Case(F + " --scheduler local --memory-limit -5",
                            r"memory|below the 256 MiB"),
    "scheduler-unknown": Case(F + " --scheduler nowhere", r"unknown scheduler 'nowhere'"),
    "scheduler-unreachable": Case(F + " --scheduler tcp://127.0.0.1:9",
                                  r"cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
    # the data: sizes before graphs, values in one pass
    "declared-huge-fit": Case("fit {d}/declared_huge.zarr -k 3 -o out.zarr",
                              r"10,000,000,000 tasks, more than the 1,000,000 .* "
                              r"DNMF_MAX_TASKS", memory_cap=True),
    "declared-huge-info": Case("info {d}/declared_huge.zarr", r"DNMF_MAX_TASKS",
                               memory_cap=True),
    "big-chunks-info": Case("info {d}/big_chunks.zarr",
                            r"stored chunks are 3.7 GiB .* DNMF_MAX_CHUNK_BYTES",
                            memory_cap=True),
    "big-chunks-fit": Case("fit {d}/big_chunks.zarr -k 3 -o out.zarr",
                           r"DNMF_MAX_CHUNK_BYTES", memory_cap=True),
    "unwritten-fit": Case("fit {d}/unwritten.zarr -k 3 -o out.zarr",
                          r"no chunk of X is stored: .* declares 10 chunks"),
    "unwritten-info": Case("info {d}/unwritten.zarr", r"stored chunks: 0 of 10", exit_code=0),
    "negative-values": Case(F.replace("x.zarr", "neg.zarr"), r"negative", only_line=False),
    "nan-values": Case(F.replace("x.zarr", "nan.zarr"), r"NaN", only_line=False),
    "inf-values": Case(F.replace("x.zarr", "inf.zarr"), r"[Ii]nf", only_line=False),
    "subnormal": Case(F.replace("x.zarr", "subnormal.zarr"),
                      r"too small for float32 arithmetic .* rescale X", only_line=False),
    "huge-float32": Case(F.replace("x.zarr", "huge_f32.zarr"),
                         r"too large for float32 .* rescale X .*--dtype float64",
                         only_line=False),
    "huge-int64": Case(F.replace("x.zarr", "huge_i64.zarr"), r"too large for float32",
                       only_line=False),
    "huge-float64": Case(F.replace("x.zarr", "huge_f64.zarr"), r"too large for float64",
                         only_line=False),
    "missing-file": Case("fit {d}/absent.zarr -k 3 -o out.zarr", r"absent.zarr"),
    "missing-var": Case("fit {d}/group.zarr --var Y -k 3 -o out.zarr", r"'Y'"),
    "vector": Case("fit {d}/vector.zarr -k 1 -o out.zarr", r"2-D"),
    "three-d": Case("fit {d}/cube3.zarr -k 1 -o out.zarr", r"2-D"),
    "complex": Case("fit {d}/complex.zarr -k 1 -o out.zarr", r"complex|real"),
    "hdf5-external-link": Case("info {d}/h5/link.h5 --var X",
                               r"external link .* DNMF_HDF5_EXTERNAL=allow"),
    "hdf5-external-storage": Case("info {d}/h5/external.h5 --var X",
                                  r"external storage .* outside the file's folder"),
    "hdf5-virtual": Case("fit {d}/h5/virtual.h5 --var X -k 3 -o out.zarr",
                         r"virtual dataset .* outside the file's folder"),
    "envi-negative-offset": Case("unmix {d}/cube.hdr -k 2 -o out.zarr",
                                 r"header offset must be >= 0"),
    "envi-absurd-size": Case("unmix {d}/absurd.hdr -k 2 -o out.zarr", r"truncated"),
    # outputs: checked before the first read of X
    "out-exists": Case(F, r"already exists — pass --overwrite", prepare=_existing_out),
    "out-is-input": Case("fit {d}/x.zarr -k 3 -o {d}/x.zarr --overwrite", r"input"),
    "out-inside-input": Case("fit {d}/x.zarr -k 3 -o {d}/x.zarr/sub.zarr", r"input"),
    "out-parent-is-file": Case("fit {d}/x.zarr -k 3 -o afile/out.zarr",
                               r"is a file, not a directory", prepare=_a_file),
    "out-dangling-link": Case("fit {d}/x.zarr -k 3 -o dangling.zarr",
                              r"symbolic link .* does not exist", prepare=_dangling_link),
    "out-link-loop": Case("fit {d}/x.zarr -k 3 -o loop.zarr --overwrite",
                          r"symbolic link .* loops", prepare=_link_loop),
    "out-unwritable": Case("fit {d}/x.zarr -k 3 -o /proc/out.zarr", r"not writable"),
    "out-empty": Case("fit {d}/x.zarr -k 3 -o ''", r"output path is empty"),
    "out-locked": Case(F, r"out.zarr is being written by another run \(pid \d+",
                       prepare=_live_lock),
    "unmix-plots-is-file": Case("unmix {d}/cube.img -k 2 -o out.zarr --plots afile",
                                r"afile is a file, not a directory", prepare=_a_file),
    "unmix-netcdf-unwritable": Case("unmix {d}/x.zarr -k 2 -o out.zarr --netcdf /proc/r.nc",
                                    r"not writable"),
    "resume-nothing": Case(F + " --resume", r"nothing to resume"),
    "resume-complete": Case("fit {d}/x.zarr -k 3 -o {d}/model.zarr --resume",
                            r"already complete"),
    "unmix-resume-nothing": Case("unmix {d}/cube.img -k 2 -o out.zarr --resume",
                                 r"nothing to resume|header offset"),
    # result stores read back
    "transform-interrupted-model": Case("transform {d}/running.zarr {d}/x.zarr -o out.zarr",
                                        r"interrupted run .* --resume"),
    "transform-mismatched-model": Case("transform {d}/mismatch.zarr {d}/x.zarr -o out.zarr",
                                       r"damaged: W .* disagree"),
    "transform-negative-rows": Case("transform {d}/model.zarr {d}/neg.zarr -o out.zarr",
                                    r"negative"),
    "transform-model-without-h": Case("transform {d}/no_h.zarr {d}/x.zarr -o out.zarr",
                                      r"damaged: W or H cannot be read"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_one_line_nothing_written_inputs_unchanged(name, data, tmp_path):
    case = CASES[name]
    if case.prepare is not None:
        case.prepare(tmp_path)
    before_work, before_data = listing(tmp_path), listing(data)
    inputs = checksums(sorted(p for p in data.iterdir() if p.suffix != ".lock"))
    args = [a.replace("{d}", str(data)) for a in _split(case.args)]
    # a memory cap (no test may need more than 2 GB): a graph that grew with the declared
    # shape would die of MemoryError instead of refusing
    prefix = ["prlimit", "--as=2000000000"] if case.memory_cap else None
    res = run_cli(args, cwd=tmp_path, env=_env(**case.env), prefix=prefix)
    streams = res.stdout + res.stderr
    assert "Traceback" not in streams, streams
    assert res.returncode == case.exit_code, streams
    if case.exit_code:
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, res.stderr
        import re

        assert re.search(case.message, errors[0]), errors[0]
        if case.only_line:
            assert res.stderr.strip().splitlines() == errors, res.stderr
    else:
        import re

        assert re.search(case.message, res.stdout), res.stdout
    assert listing(tmp_path) == before_work, "something new at an output"
    assert listing(data) == before_data
    assert checksums(sorted(p for p in data.iterdir() if p.suffix != ".lock")) == inputs


def _split(args: str) -> list[str]:
    import shlex

    return shlex.split(args)


def test_the_table_has_sixty_cases():
    assert len(CASES) + len(API_CASES) >= 60


# --- the API gets the same checks --------------------------------------------------------------


def _api_load_interrupted(d: Path) -> None:
    dnmf.load(str(d / "running.zarr"))


def _api_load_mismatch(d: Path) -> None:
    dnmf.load(str(d / "mismatch.zarr"))


def _api_nan_w_init(d: Path) -> None:
    X = make_planted(60, 8, 2, dtype="float64")[0]
    W = np.full((60, 2), np.nan)
    dnmf.factorize(X, 2, init="custom", W_init=W, H_init=np.ones((2, 8)))


def _api_negative_w_init(d: Path) -> None:
    X = make_planted(60, 8, 2, dtype="float64")[0]
    dnmf.factorize(X, 2, init="custom", W_init=-np.ones((60, 2)), H_init=np.ones((2, 8)))


def _api_inf_alpha(d: Path) -> None:
    dnmf.NMF(2, alpha_W=float("inf")).fit(make_planted(60, 8, 2)[0])


def _api_nan_tol(d: Path) -> None:
    dnmf.NMF(2, tol=float("nan")).fit(make_planted(60, 8, 2)[0])


API_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "load-interrupted": (_api_load_interrupted, r"interrupted run"),
    "load-mismatched": (_api_load_mismatch, r"disagree"),
    "w-init-nan": (_api_nan_w_init, r"W_init must be finite and >= 0"),
    "w-init-negative": (_api_negative_w_init, r"W_init must be finite and >= 0"),
    "alpha-inf": (_api_inf_alpha, r"alpha_W must be a number >= 0; got inf"),
    "tol-nan": (_api_nan_tol, r"tol must be a number >= 0; got nan"),
}


@pytest.mark.parametrize("name", list(API_CASES))
def test_api_bad_input_raises_dnmf_error(name, data):
    call, message = API_CASES[name]
    with pytest.raises(DnmfError, match=message):
        call(data)


# --- faults ------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path) -> Path:
    X = make_planted(3000, 40, 4, dtype="float32")[0]
    return write_zarr(tmp_path / "x.zarr", X, (500, 40))


def _factors(out: Path) -> tuple[np.ndarray, np.ndarray]:
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["status"] == "complete"
    return np.asarray(root["W"][...]), np.asarray(root["H"][...])


FIT = ["-k", "4", "--seed", "3", "--max-iter", "12", "--tol", "0", "--checkpoint-every", "4",
       "-q"]


def test_sigkill_during_the_final_write_resumes_to_the_undisturbed_result(tmp_path, store):
    """The driver is SIGKILLed once the final W is stored but before the store is complete."""
    assert run_cli(["fit", str(store), "-o", "whole.zarr", *FIT], cwd=tmp_path).returncode == 0
    script = textwrap.dedent(f"""
        import os, signal, sys
        import dnmf.io.checkpoint as ck
        original = ck.write_arrays
        def write_then_die(group, W, H, scheduler, **kw):
            original(group, W, H, scheduler, **kw)
            if group.path == "":  # the final W and H, at the store's root
                os.kill(os.getpid(), signal.SIGKILL)
        ck.write_arrays = write_then_die
        sys.argv = ["dnmf", "fit", {str(store)!r}, "-o", "killed.zarr", *{FIT!r}]
        from dnmf.cli import main
        main()
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=_env(), cwd=tmp_path, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr
    attrs = zarr.open_group(str(tmp_path / "killed.zarr"), mode="r").attrs
    assert attrs["status"] == "running"  # never taken for a result
    with pytest.raises(DnmfError, match="interrupted run"):
        dnmf.load(str(tmp_path / "killed.zarr"))
    res = run_cli(["fit", str(store), "-o", "killed.zarr", *FIT, "--resume"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    W1, H1 = _factors(tmp_path / "whole.zarr")
    W2, H2 = _factors(tmp_path / "killed.zarr")
    np.testing.assert_allclose(H2, H1, rtol=1e-5, atol=1e-6 * np.abs(H1).max())
    np.testing.assert_allclose(W2, W1, rtol=1e-5, atol=1e-6 * np.abs(W1).max())
    assert not any(p.name.endswith(".lock") for p in tmp_path.iterdir())


def test_a_second_concurrent_writer_is_refused_at_once(tmp_path, store):
    first = subprocess.Popen([*DNMF, "fit", str(store), "-o", "out.zarr", "-k", "4",
                              "--max-iter", "100000", "--tol", "0", "-q"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_env(), cwd=tmp_path)
    try:
        lock = tmp_path / ".out.zarr.lock" / "owner.json"
        deadline = time.monotonic() + 60
        while not lock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.exists()
        t0 = time.monotonic()
        second = run_cli(["fit", str(store), "-o", "out.zarr", "-k", "4", "--overwrite"],
                         cwd=tmp_path)
        assert time.monotonic() - t0 < 30  # at once, not after the first run
        assert second.returncode == 1
        assert f"being written by another run (pid {first.pid}," in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)


def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path, store):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / ".out.zarr.lock"
    lock.mkdir()
    (lock / "owner.json").write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "since": "then"}))
    res = run_cli(["fit", str(store), "-o", "out.zarr", "-k", "3", "--max-iter", "5", "-q"],
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert not lock.exists()
    _factors(tmp_path / "out.zarr")


def _tmpfs_available() -> str | None:
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode:
        return f"unshare -m is not permitted here ({probe.stderr.decode().strip()})"
    return None


@pytest.mark.skipif(_tmpfs_available() is not None, reason=str(_tmpfs_available()))
@pytest.mark.parametrize("size, expected", [
    ("200k", r"not enough space for .*out.zarr: the result needs up to [\d,]+ bytes"),
    ("600k", r"no space left on the device holding .*out.zarr \(the write needs up to"),
])
def test_a_full_disk_is_one_line_and_leaves_nothing_unresumable(tmp_path, size, expected):
    """A tmpfs of ``size`` inside a private mount namespace: up front when the plan's result
    cannot fit, or while a checkpoint is written (the first one fits, the second does not)."""
    X = make_planted(20_000, 200, 5, dtype="float32")[0]
    src = write_zarr(tmp_path / "x.zarr", X, (2000, 200))
    disk = tmp_path / "disk"
    disk.mkdir()
    inner = (f"mount -t tmpfs -o size={size} tmpfs {disk} && "
             f"{sys.executable} -c 'from dnmf.cli import main; main()' fit {src} -k 5 "
             f"-o {disk}/out.zarr --checkpoint-every 2 --max-iter 10 --seed 1 -q; "
             f"echo rc=$?; cp -r {disk}/out.zarr {tmp_path}/copy.zarr 2>/dev/null; true")
    res = subprocess.run(["unshare", "-m", "sh", "-c", inner], capture_output=True,
                         text=True, env=_env(), timeout=120)
    assert "rc=1" in res.stdout, res.stdout + res.stderr
    import re

    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(expected, errors[0]), res.stderr
    assert "Traceback" not in res.stderr
    copy = tmp_path / "copy.zarr"
    if copy.exists():  # what the full disk kept must resume, never be refused
        again = run_cli(["fit", str(src), "-o", str(copy), "-k", "5", "--checkpoint-every", "2",
                         "--max-iter", "10", "--seed", "1", "-q", "--resume"], cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        _factors(copy)


# --- checkpoints are verified ------------------------------------------------------------------


@pytest.fixture
def interrupted(tmp_path, store) -> Path:
    """A store interrupted after iteration 8 (slots: a at 4, b at 8 current)."""
    out = tmp_path / "out.zarr"

    def stop_after_8(info):
        if info.iteration == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dnmf.factorize(str(store), 4, out=str(out), random_state=3, max_iter=12, tol=0,
                       checkpoint_every=4, callback=stop_after_8, scheduler="threads")
    group = zarr.open_group(str(out / "checkpoint"), mode="r")
    assert group.attrs["current"] == "b" and group["a"].attrs["iteration"] == 4
    return out


def _damage_h(slot: Path) -> None:
    chunk = next(p for p in (slot / "H").rglob("*") if p.is_file() and p.name != "zarr.json")
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))


def _resume(store: Path, out: Path) -> dnmf.api.FitResult:
    return dnmf.factorize(str(store), 4, out=str(out), random_state=3, max_iter=12, tol=0,
                          checkpoint_every=4, resume=True, scheduler="threads")


def test_a_damaged_current_slot_falls_back_to_the_other(interrupted, store):
    _damage_h(interrupted / "checkpoint" / "b")
    result = _resume(store, interrupted)
    assert any("current checkpoint is damaged" in n and "iteration 4" in n
               for n in result.notes), result.notes
    assert result.n_iter == 12


def test_a_damaged_loss_history_is_caught_by_its_digest(interrupted, store):
    meta_path = interrupted / "checkpoint" / "b" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["loss_history"][0] *= 2
    meta_path.write_text(json.dumps(meta))
    result = _resume(store, interrupted)
    assert any("differs from its digest" in n for n in result.notes), result.notes


def test_both_slots_damaged_is_refused_naming_the_files(interrupted, store):
    for slot in "ab":
        _damage_h(interrupted / "checkpoint" / slot)
    res = run_cli(["fit", str(store), "-o", str(interrupted), *FIT, "--resume"],
                  cwd=interrupted.parent)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot resume from") and "checkpoint is damaged" in line
    assert "checkpoint/a/H" in line and "checkpoint/b/H" in line and "--overwrite" in line


def test_a_garbled_checkpoint_group_names_its_file(interrupted, store):
    (interrupted / "checkpoint" / "zarr.json").write_text("{ not json")
    with pytest.raises(DnmfError, match=r"cannot resume from .*out.zarr.* --overwrite") as err:
        _resume(store, interrupted)
    assert "KeyError" not in str(err.value)


def test_a_slot_without_digests_resumes_as_unverified(interrupted, store):
    """A checkpoint written before dnmf verified them: resumed, with a note."""
    meta_path = interrupted / "checkpoint" / "b" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    for key in ("digest", "state"):
        meta["attributes"].pop(key)
    meta_path.write_text(json.dumps(meta))
    result = _resume(store, interrupted)
    assert any(n.startswith("unverified checkpoint") for n in result.notes), result.notes
    assert result.n_iter == 12


# --- unmixing resumes --------------------------------------------------------------------------


def test_a_killed_unmixing_resumes_to_the_undisturbed_result(tmp_path):
    from dnmf.datasets import make_scene

    make_scene(rows=40, cols=40, n_endmembers=3, seed=2, chunks=(20, 20)).to_zarr(
        tmp_path / "scene.zarr", zarr_format=3)
    args = ["unmix", "scene.zarr", "--var", "reflectance", "-k", "3", "--max-iter", "30",
            "--tol", "0", "--seed", "1", "--checkpoint-every", "5", "-q"]
    assert run_cli([*args, "-o", "whole.zarr"], cwd=tmp_path).returncode == 0
    proc = subprocess.Popen([*DNMF, *args, "-o", "killed.zarr"], env=_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "killed.zarr" / "fit" / "checkpoint" / "zarr.json"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if marker.exists() and '"current"' in marker.read_text(errors="replace"):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the unmixing ended before its first checkpoint"
        proc.kill()
    finally:
        proc.wait(timeout=30)
    res = run_cli([*args, "-o", "killed.zarr", "--resume"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    import xarray as xr

    whole, resumed = xr.open_zarr(tmp_path / "whole.zarr"), xr.open_zarr(
        tmp_path / "killed.zarr")
    assert resumed.attrs["status"] == "complete" and "fit" not in resumed
    np.testing.assert_allclose(resumed.endmembers.values, whole.endmembers.values, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(resumed.abundances.values, whole.abundances.values, rtol=1e-5,
                               atol=1e-6)


# --- the cluster ------------------------------------------------------------------------------


def test_a_cluster_without_workers_times_out_with_one_line(tmp_path, store,
                                                         scheduler_without_workers):
    address, _ = scheduler_without_workers
    t0 = time.monotonic()
    res = run_cli(["fit", str(store), "-k", "3", "-o", "out.zarr", "--scheduler", address],
                  cwd=tmp_path, env=_env(DNMF_WAIT_TIMEOUT="3"))
    assert time.monotonic() - t0 < 45
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"error: no Dask worker joined the cluster at {address} within 3 s")
    assert not (tmp_path / "out.zarr").exists()


def test_a_worker_killed_for_memory_is_one_line_naming_the_task_memory(tmp_path):
    """Blocks of 300 MB on workers limited to 400 MB: the nanny kills each worker that runs
    one, the scheduler gives up, and dnmf names the planned task memory and the fix."""
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    X = da.random.random((120_000, 640), chunks=(120_000, 640)).astype(np.float32)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), LocalCluster(
            n_workers=1, threads_per_worker=1, memory_limit="400MB", processes=True,
            dashboard_address=":0", silence_logs=50) as cluster, Client(cluster) as client:
        with pytest.raises(DnmfError, match=r"a Dask worker died .* MiB per worker; the plan "
                                            r"gives each task about [\d,]+ MiB\) — raise "
                                            r"--memory-limit"):
            dnmf.factorize(X, 3, client=client, max_iter=2, persist_x=False)
