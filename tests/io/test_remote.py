"""Object-store inputs and outputs against a local S3-compatible server (moto) on 127.0.0.1.

Every run gets its endpoint and credentials through ``storage_options`` only: the tests run
with no ``AWS_*`` variables in the environment.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dnmf
from dnmf.errors import OutputError
from dnmf.io.remote import lock_url, redact, storage_options_used

pytest.importorskip("s3fs", reason="s3fs is not installed (pip install dnmf[s3])")
moto_server = pytest.importorskip(
    "moto.server", reason="moto[server] is not installed (the test extra has it)")

#: Recognisable credentials: found anywhere the run wrote, they leaked.
KEY = "AKIADNMFTESTKEY00001"
SECRET = "dnmf-SECRET-c0ffee-7f3a9c"
BUCKET = "dnmf-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (a free port), stopped at the end."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(),
                                            verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """``(storage_options, fs, bucket URL)``: a fresh bucket, no AWS variables set."""
    import s3fs

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)  # no profile from the home directory
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    options = {"key": KEY, "secret": SECRET, "endpoint_url": s3_endpoint}
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    bucket = f"{BUCKET}-{time.monotonic_ns()}"
    fs.mkdir(bucket)
    yield options, fs, f"s3://{bucket}"
    fs.rm(bucket, recursive=True)


def _put_matrix(options: dict, url: str, X: np.ndarray, rows: int) -> None:
    import zarr
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url(url, storage_options=options)
    arr = zarr.create_array(store, shape=X.shape, chunks=(rows, X.shape[1]), dtype=X.dtype)
    arr[...] = X


def _dnmf(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([sys.executable, "-m", "dnmf", *args], capture_output=True,
                          text=True, env=env, timeout=120, **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fit_s3_to_s3_with_storage_options_only(s3, planted, dtype):
    options, fs, bucket = s3
    X = planted.astype(dtype)
    _put_matrix(options, f"{bucket}/x.zarr", X, rows=100)
    out = f"{bucket}/out.zarr"
    result = dnmf.factorize(f"{bucket}/x.zarr", 4, out=out, storage_options=options,
                            scheduler="threads", max_iter=30, random_state=0)
    assert result.path == out
    model = dnmf.load(out, storage_options=options)
    np.testing.assert_array_equal(model.components_, result.H)
    W = np.asarray(model.W_)
    assert W.shape == (X.shape[0], 4) and W.dtype == dtype
    # the store is whole and marked complete; the claim object is gone
    assert fs.exists(f"{out}/zarr.json") and not fs.exists(lock_url(out))
    # a source opened with the options is accepted as X, and transform reads URLs too
    source = dnmf.io.open_matrix(f"{bucket}/x.zarr", storage_options=options)
    again = dnmf.factorize(source, 4, scheduler="threads", max_iter=30, random_state=0)
    np.testing.assert_allclose(again.H, result.H, rtol=1e-4 if dtype == np.float32 else 1e-10)
    W_new = model.transform(f"{bucket}/x.zarr", storage_options=options)
    assert np.asarray(W_new).shape == (X.shape[0], 4)
    # the command line's transform: model and X in, a store out, all on S3
    written = dnmf.api.transform_to_store(out, f"{bucket}/x.zarr", f"{bucket}/t.zarr",
                                          storage_options=options, scheduler="threads")
    np.testing.assert_array_equal(dnmf.load(written, storage_options=options).components_,
                                  result.H)


def test_existing_output_refused_without_overwrite(s3, planted):
    options, fs, bucket = s3
    _put_matrix(options, f"{bucket}/x.zarr", planted[:200], rows=100)
    out = f"{bucket}/out.zarr"
    fs.pipe(f"{out}/zarr.json", b'{"zarr_format": 3, "node_type": "group"}')
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        dnmf.factorize(f"{bucket}/x.zarr", 3, out=out, storage_options=options,
                       scheduler="threads", max_iter=5)
    assert fs.cat(f"{out}/zarr.json") == b'{"zarr_format": 3, "node_type": "group"}'
    dnmf.factorize(f"{bucket}/x.zarr", 3, out=out, overwrite=True, storage_options=options,
                   scheduler="threads", max_iter=5)
    assert dnmf.load(out, storage_options=options).n_components_ == 3


def test_one_writer_per_remote_output(s3, planted):
    options, fs, bucket = s3
    _put_matrix(options, f"{bucket}/x.zarr", planted[:200], rows=100)
    out = f"{bucket}/out.zarr"
    # another live run of this host (our parent process) holds the output
    owner = {"pid": os.getppid(), "host": socket.gethostname(), "since": "now"}
    fs.pipe(lock_url(out), json.dumps(owner).encode())
    with pytest.raises(OutputError, match="being written by another run"):
        dnmf.factorize(f"{bucket}/x.zarr", 3, out=out, storage_options=options,
                       scheduler="threads", max_iter=5)
    assert not fs.exists(out)
    # a claim whose run is gone (no such pid) is stale: taken over, then removed
    fs.pipe(lock_url(out), json.dumps({**owner, "pid": 2**22 + 1}).encode())
    dnmf.factorize(f"{bucket}/x.zarr", 3, out=out, storage_options=options,
                   scheduler="threads", max_iter=5)
    assert not fs.exists(lock_url(out)) and fs.exists(f"{out}/zarr.json")


def test_conditional_put_lets_one_claim_win(s3):
    """Eight claims of one lock object at once: the conditional put lets exactly one in."""
    from concurrent.futures import ThreadPoolExecutor

    from dnmf.io.remote import create_exclusive

    options, fs, bucket = s3
    lock = lock_url(f"{bucket}/race.zarr")

    def try_create(i: int) -> str:
        try:
            create_exclusive(fs, lock, str(i).encode())
            return "won"
        except FileExistsError:
            return "refused"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(try_create, range(8)))
    assert outcomes.count("won") == 1 and outcomes.count("refused") == 7
    assert fs.cat(lock) == str(outcomes.index("won")).encode()


def test_resume_after_a_killed_run(s3, planted, tmp_path):
    options, fs, bucket = s3
    rng = np.random.default_rng(0)
    X = rng.random((1000, 8)) @ rng.random((8, 40))
    _put_matrix(options, f"{bucket}/x.zarr", X, rows=250)
    out = f"{bucket}/out.zarr"
    opts = tmp_path / "s3.json"
    opts.write_text(json.dumps(options))
    args = ["fit", f"{bucket}/x.zarr", "-k", "8", "-o", out, "--storage-options", str(opts),
            "--scheduler", "threads", "--checkpoint-every", "20", "--max-iter", "200",
            "--tol", "0", "--seed", "1", "-q"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen([sys.executable, "-m", "dnmf", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        fs.invalidate_cache()
        if fs.exists(f"{out}/checkpoint/zarr.json"):
            attrs = json.loads(fs.cat(f"{out}/checkpoint/zarr.json")).get("attributes", {})
            if attrs.get("current"):
                break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fs.invalidate_cache()
    assert fs.exists(lock_url(out))  # the killed run's claim is left behind ...
    done = _dnmf(*args, "--resume")  # ... and taken over: its pid is gone
    assert done.returncode == 0, done.stderr
    model = dnmf.load(out, storage_options=options)
    assert model.n_iter_ == 200
    assert not fs.exists(lock_url(out))


def test_credentials_never_leave_the_process(s3, planted, tmp_path):
    options, fs, bucket = s3
    _put_matrix(options, f"{bucket}/x.zarr", planted[:200], rows=100)
    out = f"{bucket}/out.zarr"
    so = json.dumps(options)
    runs = [
        _dnmf("fit", f"{bucket}/x.zarr", "-k", "3", "-o", out, "--storage-options", so,
              "--scheduler", "threads", "--max-iter", "5", "--json", cwd=tmp_path),
        _dnmf("fit", f"{bucket}/x.zarr", "-k", "3", "-o", f"{bucket}/o3.zarr",
              "--storage-options", so, "--dry-run", "--json", cwd=tmp_path),
        # refused (exists): the error line must not carry the secret either
        _dnmf("fit", f"{bucket}/x.zarr", "-k", "3", "-o", out, "--storage-options", so,
              "--scheduler", "threads", cwd=tmp_path),
        # credentials that do not work: botocore's message must not echo them
        _dnmf("fit", f"{bucket}/x.zarr", "-k", "3", "-o", f"{bucket}/o2.zarr",
              "--storage-options", json.dumps({
                  **options, "endpoint_url": "http://127.0.0.1:9",
                  "config_kwargs": {"retries": {"max_attempts": 1}}}),
              "--scheduler", "threads", cwd=tmp_path),
        _dnmf("info", f"{bucket}/x.zarr", "--storage-options", so, "--json", cwd=tmp_path),
    ]
    assert [r.returncode for r in runs] == [0, 0, 1, 1, 0], [r.stderr for r in runs]
    assert "already exists" in runs[2].stderr
    for run in runs:
        for stream in (run.stdout, run.stderr):
            assert SECRET not in stream and KEY not in stream
    for path in fs.find(bucket):
        content = fs.cat(path)
        assert SECRET.encode() not in content and KEY.encode() not in content, path
    for path in tmp_path.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert SECRET.encode() not in content and KEY.encode() not in content, path
    attrs = dnmf.load(out, storage_options=options).attrs_
    assert SECRET not in json.dumps(attrs)


def test_urls_with_credentials_are_redacted():
    text = "cannot open https://alice:pa55word@example.org/x.zarr and s3://k:s@bucket/y"
    shown = redact(text)
    assert "pa55word" not in shown and "k:s@" not in shown
    assert "https://***@example.org/x.zarr" in shown and "s3://***@bucket/y" in shown
    with storage_options_used({"client_kwargs": {"aws_secret_access_key": "hush-hush-42"},
                               "endpoint_url": "http://127.0.0.1:1"}):
        assert redact("denied for hush-hush-42 at http://127.0.0.1:1") == (
            "denied for *** at http://127.0.0.1:1")


def test_storage_options_cli_errors_name_the_problem(tmp_path):
    bad = _dnmf("fit", "s3://b/x.zarr", "-k", "2", "-o", "s3://b/o.zarr",
                "--storage-options", '{"secret": "dnmf-oops-9"', cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith("error: --storage-options is not")
    assert "dnmf-oops-9" not in bad.stderr and "Traceback" not in bad.stderr
    missing = _dnmf("fit", "s3://b/x.zarr", "-k", "2", "-o", "s3://b/o.zarr",
                    "--storage-options", str(Path(tmp_path) / "none.json"), cwd=tmp_path)
    assert missing.returncode == 1 and "cannot read --storage-options file" in missing.stderr


def test_unmix_s3_to_s3_matches_the_local_run(s3, tmp_path):
    import xarray as xr
    from zarr.storage import FsspecStore

    from dnmf.datasets import make_scene
    from dnmf.hyperspectral.unmix import unmix

    options, fs, bucket = s3
    scene = make_scene(40, 36, n_endmembers=3, snr_db=30.0, seed=3, chunks=(40, 36)).compute()
    cube = f"{bucket}/cube.zarr"
    scene[["reflectance"]].to_zarr(FsspecStore.from_url(cube, storage_options=options),
                                   mode="w", consolidated=False)
    fixed = {"max_iter": 10, "tol": 0.0, "scheduler": "threads"}
    out = f"{bucket}/unmixed.zarr"
    remote = unmix(cube, 3, var="reflectance", output=out, storage_options=options, **fixed)
    local = unmix(scene["reflectance"], 3, **fixed)
    # the same arithmetic on the same values: equal to the last bits of float32 sums
    np.testing.assert_allclose(remote["endmembers"].values, local["endmembers"].values,
                               rtol=1e-5, atol=1e-7)
    stored = xr.open_zarr(FsspecStore.from_url(out, storage_options=options, read_only=True))
    assert stored.attrs["status"] == "complete"
    assert not fs.exists(lock_url(out))
    with pytest.raises(OutputError, match="already exists"):
        unmix(cube, 3, var="reflectance", output=out, storage_options=options, **fixed)
