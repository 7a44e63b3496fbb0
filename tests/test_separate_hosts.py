"""A cluster of separate hosts, simulated: every process in its own network namespace and its own
mount namespace with a private ``/tmp`` (root only; skipped with the reason otherwise).

The S3-compatible server (moto), the ``dask scheduler``, two ``dask worker`` processes and the
client (the ``dnmf`` command) each get a namespace ``dnmft-<pid>-<role>`` with one address on
10.77.0.0/24, joined by a bridge in a namespace of its own (the ``hub``): nothing is added to
this host's own network. They share only the object store; each sees an empty ``/tmp`` of its
own, so that a local path of the client does not exist on the workers. The fixture's teardown
kills every process and deletes every namespace (their veth pairs and the bridge go with them)
even when a test fails; namespaces a crashed run left behind are removed before starting.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import dask_env, private_tmp_script, start_process, stop_processes

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PREFIX = "dnmft"
SUBNET = "10.77.0"
#: The last byte of every role's address.
HOSTS = {"s3": 2, "scheduler": 3, "w0": 4, "w1": 5, "client": 6}
S3_PORT, SCHEDULER_PORT = 5000, 8786
KEY, SECRET, BUCKET = "AKIADNMFHOSTS0000001", "dnmf-hosts-secret-5e1f", "dnmf-hosts"
OPTIONS = json.dumps({"key": KEY, "secret": SECRET,
                      "endpoint_url": f"http://{SUBNET}.{HOSTS['s3']}:{S3_PORT}"})
SCHEDULER = f"tcp://{SUBNET}.{HOSTS['scheduler']}:{SCHEDULER_PORT}"
#: What each command runs in: an empty tmpfs on /tmp, in a new mount namespace; no AWS_*
#: variable reaches it (the endpoint and credentials come from --storage-options only).
PRIVATE_TMP = (private_tmp_script() + ' && for v in $(env | sed -n "s/^\\(AWS_[^=]*\\)=.*/'
               '\\1/p"); do unset "$v"; done && exec "$0" "$@"')


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


def skip_reason() -> str | None:
    """Why the namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    import importlib.util

    for module, extra in (("moto.server", "moto[server]"), ("s3fs", "s3fs")):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{extra} is not installed (the test extra has it)"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace here: {made.stderr.strip()}"
    try:
        inside = _run("ip", "netns", "exec", probe, "unshare", "-m", "--propagation",
                      "private", "sh", "-c", private_tmp_script(), check=False)
    finally:
        _run("ip", "netns", "del", probe, check=False)
    if inside.returncode != 0:
        return f"cannot mount a private /tmp in a namespace here: {inside.stderr.strip()}"
    return None


def remove_namespaces(stem: str, *, only_dead: bool = False) -> None:
    """Kill the processes in, and delete, every namespace named ``stem-*`` (with
    ``only_dead``: every ``dnmft-<pid>-*`` whose creating test process is gone)."""
    listed = _run("ip", "netns", "list", check=False).stdout.split("\n")
    for name in (line.split()[0] for line in listed if line.strip()):
        if not name.startswith(stem + "-"):
            continue
        if only_dead:
            try:
                os.kill(int(name.split("-")[1]), 0)
                continue  # the namespaces of a live test run (another session's)
            except (ValueError, IndexError, ProcessLookupError):
                pass  # not this test's naming, or its run is gone: removed
            except PermissionError:
                continue
        pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _run("ip", "netns", "del", name, check=False)


@dataclass
class Hosts:
    """The simulated hosts: their namespaces and the processes started in them."""

    stem: str
    logs: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def ns(self, role: str) -> str:
        return f"{self.stem}-{role}"

    def command(self, role: str, *args: str) -> list[str]:
        """``args`` run on host ``role``: its network namespace, a private /tmp."""
        return ["ip", "netns", "exec", self.ns(role), "unshare", "-m", "--propagation",
                "private", "sh", "-c", PRIVATE_TMP, *args]

    def start(self, role: str, *args: str) -> subprocess.Popen:
        proc = start_process(self.command(role, *args), self.logs / f"{role}.log")
        self.procs[role] = proc
        return proc

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        """``args`` on the client host, to the end."""
        return subprocess.run(self.command("client", *args), capture_output=True, text=True,
                              env=dask_env(), timeout=timeout)

    def python(self, code: str, timeout: float = 90) -> subprocess.CompletedProcess:
        """``python -c code OPTIONS`` on the client host."""
        return self.run(sys.executable, "-c", code, OPTIONS, timeout=timeout)

    def dnmf(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        """The ``dnmf`` command on the client host, on the cluster, with the S3 options."""
        return self.run(sys.executable, "-m", "dnmf", *args, "--scheduler", SCHEDULER,
                        "--storage-options", OPTIONS, timeout=timeout)

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in sorted(self.logs.glob("*.log")))

    def make_network(self) -> None:
        """The hub's bridge, and one veth pair from it to each host (``eth0`` there)."""
        hub = self.ns("hub")
        _run("ip", "netns", "add", hub)
        _run("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", hub, "link", "set", "br0", "up")
        for role, last in HOSTS.items():
            ns, port = self.ns(role), f"v-{role}"
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", hub, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                 "netns", ns)
            _run("ip", "-n", hub, "link", "set", port, "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{SUBNET}.{last}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")

    def start_worker(self, role: str) -> subprocess.Popen:
        # no nanny: the process started here is the worker, so that killing it kills it
        return self.start(role, sys.executable, "-m", "distributed.cli.dask_worker",
                          SCHEDULER, "--host", f"{SUBNET}.{HOSTS[role]}", "--nthreads", "1",
                          "--memory-limit", "1GB", "--no-dashboard", "--no-nanny",
                          "--name", role)


#: Run on the client host: wait for the object store and both workers, then put X (4000 x 50,
#: rank 5) and a 40 x 36 scene of 3 endmembers on S3.
SETUP = f"""
import json, sys, time
import s3fs, zarr
from zarr.storage import FsspecStore
from distributed import Client
from dnmf.datasets import make_scene
from tests.conftest import make_planted

options = json.loads(sys.argv[1])
fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
deadline = time.monotonic() + 60
while True:
    try:
        fs.mkdir("{BUCKET}")
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.3)
X = make_planted(4000, 50, 5, dtype="float32")[0]
store = FsspecStore.from_url("s3://{BUCKET}/x.zarr", storage_options=options)
zarr.create_array(store, shape=X.shape, chunks=(500, 50), dtype=X.dtype)[...] = X
scene = make_scene(40, 36, n_endmembers=3, snr_db=30.0, seed=3, chunks=(40, 36)).compute()
scene[["reflectance"]].to_zarr(FsspecStore.from_url("s3://{BUCKET}/cube.zarr",
                               storage_options=options), mode="w", consolidated=False)
with Client("{SCHEDULER}", timeout="60s") as client:
    client.wait_for_workers(2, timeout=90)
print("ready")
"""

#: Run on the client host: the fit's result read back from S3, as JSON on stdout.
READ_FIT = """
import json, sys
import numpy as np
import dnmf
options = json.loads(sys.argv[1])
model = dnmf.load(sys.argv[2], storage_options=options)
print(json.dumps({"W": list(np.asarray(model.W_).shape), "H": list(model.components_.shape),
                  "n_iter": int(model.n_iter_)}))
"""


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """The simulated hosts with the object store, the scheduler and two workers running, X
    and a scene on S3; everything removed afterwards."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    remove_namespaces(PREFIX, only_dead=True)  # what a crashed earlier run left
    hosts = Hosts(stem=f"{PREFIX}-{os.getpid()}", logs=tmp_path_factory.mktemp("hosts"))
    try:
        hosts.make_network()
        hosts.start("s3", sys.executable, "-m", "moto.server", "-H",
                    f"{SUBNET}.{HOSTS['s3']}", "-p", str(S3_PORT))
        hosts.start("scheduler", sys.executable, "-m", "distributed.cli.dask_scheduler",
                    "--host", f"{SUBNET}.{HOSTS['scheduler']}", "--port", str(SCHEDULER_PORT),
                    "--no-dashboard")
        hosts.start_worker("w0")
        hosts.start_worker("w1")
        setup = hosts.python(SETUP, timeout=120)
        assert setup.returncode == 0 and "ready" in setup.stdout, (
            f"{setup.stderr[-3000:]}\n{hosts.log_tails()}")
        yield hosts
    finally:
        remove_namespaces(hosts.stem)  # SIGKILL to every process in them first: disposable
        stop_processes(list(hosts.procs.values()))  # reaped, and their sessions killed


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_fit_s3_to_s3(hosts):
    done = hosts.dnmf("fit", f"s3://{BUCKET}/x.zarr", "-k", "5", "-o", f"s3://{BUCKET}/fit.zarr",
                      "--max-iter", "10", "--tol", "0", "--seed", "0", "--json")
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n{hosts.log_tails()}"
    summary = json.loads(done.stdout)
    # planted rank 5 with 1% noise: nndsvda + 10 HALS iterations are within 10% of X (0.05
    # after 10 iterations here; a broken fit stays near 1)
    assert summary["n_iter"] == 10 and summary["relative_error"] < 0.1
    read = hosts.run(sys.executable, "-c", READ_FIT, OPTIONS, f"s3://{BUCKET}/fit.zarr")
    assert read.returncode == 0, read.stderr[-3000:]
    assert json.loads(read.stdout) == {"W": [4000, 5], "H": [5, 50], "n_iter": 10}


def test_unmix_s3_to_s3_with_checkpoints(hosts):
    done = hosts.dnmf("unmix", f"s3://{BUCKET}/cube.zarr", "--var", "reflectance", "-k", "3",
                      "-o", f"s3://{BUCKET}/unmixed.zarr", "--max-iter", "12", "--tol", "0",
                      "--checkpoint-every", "4", "--json")
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n{hosts.log_tails()}"
    read = hosts.run(sys.executable, "-c", """
import json, sys
import xarray as xr
from zarr.storage import FsspecStore
store = FsspecStore.from_url(sys.argv[2], storage_options=json.loads(sys.argv[1]),
                             read_only=True)
ds = xr.open_zarr(store)
print(json.dumps({"status": ds.attrs["status"], "endmembers": list(ds["endmembers"].shape),
                  "abundances": list(ds["abundances"].shape)}))
""", OPTIONS, f"s3://{BUCKET}/unmixed.zarr")
    assert read.returncode == 0, read.stderr[-3000:]
    got = json.loads(read.stdout)
    assert got["status"] == "complete" and got["endmembers"][0] == 3
    assert got["abundances"][0] == 3 and got["abundances"][1:] == [40, 36]


def test_a_local_input_the_workers_cannot_see_fails_in_one_line(hosts):
    # X written into the client's own /tmp, then fitted on the cluster, in one mount namespace
    script = (f'"{sys.executable}" -c "import zarr, numpy as np; '
              "zarr.create_array('/tmp/x.zarr', shape=(400, 20), chunks=(100, 20), "
              "dtype='f4')[...] = np.ones((400, 20), 'f4')\" && exec \"$0\" \"$@\"")
    t0 = time.monotonic()
    done = hosts.run("sh", "-c", script, sys.executable, "-m", "dnmf", "fit", "/tmp/x.zarr",
                     "-k", "2", "-o", f"s3://{BUCKET}/never.zarr", "--scheduler", SCHEDULER,
                     "--storage-options", OPTIONS, timeout=60)
    took = time.monotonic() - t0
    line = _one_line_error(done)
    assert line.startswith("error: the Dask workers cannot read the input /tmp/x.zarr "
                           "(not readable by 2 of 2 workers"), line
    assert "every worker can reach" in line and "s3://" in line
    assert took < 45, f"took {took:.0f} s"  # refused up front: no task ran, nothing hung


def test_a_worker_killed_mid_run_is_survived(hosts):
    log, result = hosts.logs / "killed-run.log", hosts.logs / "killed-run.json"
    with open(log, "wb") as fh, open(result, "wb") as out:
        fit = subprocess.Popen(
            hosts.command("client", sys.executable, "-m", "dnmf", "fit",
                          f"s3://{BUCKET}/x.zarr", "-k", "5", "-o",
                          f"s3://{BUCKET}/survived.zarr", "--max-iter", "30", "--tol", "0",
                          "--seed", "0", "--checkpoint-every", "10", "--json", "--scheduler", SCHEDULER,
                          "--storage-options", OPTIONS),
            stdout=out, stderr=fh, env=dask_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "iter " not in log.read_text(errors="replace"):  # the first iteration is done
            assert fit.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, f"no iteration\n{hosts.log_tails()}"
            time.sleep(0.1)
        victim = hosts.procs["w1"]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        assert fit.poll() is None, "the fit ended before the worker was killed"  # mid-run
        assert fit.wait(timeout=120) == 0, f"{log.read_text(errors='replace')}"
    finally:
        if fit.poll() is None:
            os.killpg(fit.pid, signal.SIGKILL)
            fit.wait()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text
    summary = json.loads(result.read_text())
    assert summary["n_iter"] == 30 and summary["path"] == f"s3://{BUCKET}/survived.zarr"
    assert summary["relative_error"] < 0.05
