"""The deploy/ recipes as users run them.

Manifests and the compose file parse, use the dnmf image of this version, and give `dnmf fit`,
`dask scheduler` and `dask worker` only options those commands accept (checked by their own
click parsers, so a renamed option fails here). The Slurm batch script and dnmf-job run for real
against `dask scheduler`/`dask worker` processes on 127.0.0.1 (srun replaced by a launcher that
runs its command once); the jobqueue example builds its job script without Slurm; an fsspec
file:// URL goes through `dnmf fit`; a fit through a scheduler address equals a LocalCluster's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import zarr

import dnmf
from dnmf.cli import app
from tests.conftest import dask_cli_cluster, make_planted

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DNMF = [sys.executable, "-c", "from dnmf.cli import main; main()"]
K8S_IMAGE = f"ghcr.io/your-org/dnmf:{dnmf.__version__}"
COMPOSE_IMAGE = f"dnmf:{dnmf.__version__}"


# --- helpers ----------------------------------------------------------------------------------


def _fit_command() -> Any:
    return typer.main.get_command(app).commands["fit"]  # type: ignore[attr-defined]


def check_fit_args(args: list[str]) -> dict[str, Any]:
    """Parse ``dnmf fit ARGS`` with the CLI's own parser (unknown options, bad choices and
    missing required options raise) and return the parsed parameters."""
    with _fit_command().make_context("fit", list(args)) as ctx:
        return dict(ctx.params)


def check_dask_args(command: list[str]) -> dict[str, Any]:
    """Parse ``dask scheduler|worker ARGS`` with distributed's own click commands."""
    from distributed.cli import dask_scheduler, dask_worker

    assert command[0] == "dask", command
    cli = {"scheduler": dask_scheduler.main, "worker": dask_worker.main}[command[1]]
    with cli.make_context(f"dask {command[1]}", list(command[2:])) as ctx:
        return dict(ctx.params)


_VAR = re.compile(r"\$\{(\w+)(?::([-+])([^}]*))?\}|\$(\w+)")


def expand(text: str, values: dict[str, str]) -> str:
    """Shell/compose variable expansion: $V, ${V}, ${V:-default}, ${V:+word}; unknown names
    fail (so a variable the recipe forgot to define does too)."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        if m.group(2) == "-":
            return values.get(name) or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if values.get(name) else ""
        assert name in values, f"${name} is not defined"
        return values[name]

    return _VAR.sub(sub, text)


def shell_defaults(script: str) -> dict[str, str]:
    """``NAME=${NAME:-default}`` lines of a shell script."""
    return {m.group(1): m.group(2)
            for m in re.finditer(r"^(\w+)=\$\{\1:-([^}]*)\}$", script, re.MULTILINE)}


def shell_commands(script: str, start: str) -> list[list[str]]:
    """The commands of ``script`` starting with ``start`` (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [shlex.split(ln.strip().split(" #")[0].rstrip(" &"))
            for ln in joined.splitlines() if ln.strip().startswith(start)]


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _shims(tmp_path: Path) -> dict[str, str]:
    """PATH with `dnmf` and `python` running this interpreter, then its environment's `dask`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "dnmf").write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -c '
        '"from dnmf.cli import main; main()" "$@"\n')
    (bin_dir / "dnmf").chmod(0o755)
    # a script, not a symlink: a virtual environment's python finds its pyvenv.cfg by the path
    # it was started from
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
           "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent),
                                    os.environ.get("PATH", "")])}
    for name in ("DNMF_DEBUG", "DASK_SCHEDULER_ADDRESS"):
        env.pop(name, None)
    return env


def _x_store(path: Path, n: int = 2000, m: int = 40, k: int = 4, chunk: int = 500) -> Path:
    X = make_planted(n, m, k, dtype="float32", seed=5)[0]
    zarr.create_array(str(path), shape=X.shape, chunks=(chunk, m), dtype="float32")[...] = X
    return path


def _checkpoint_attrs(out: Path) -> dict:
    try:
        return json.loads((out / "checkpoint" / "zarr.json").read_text())["attributes"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):  # not there yet, or mid-write
        return {}


def _factors(out: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    root = zarr.open_group(str(out), mode="r")
    return np.asarray(root["W"][...]), np.asarray(root["H"][...]), dict(root.attrs)


def _usage_error(check, args: list[str]) -> None:
    # click's usage errors (typer vendors its own click: compare the exit code, not the class)
    with pytest.raises(Exception) as info:
        check(args)
    assert getattr(info.value, "exit_code", None) == 2, repr(info.value)


def test_check_fit_args_rejects_what_the_cli_rejects():
    assert check_fit_args(["x.zarr", "-k", "3", "-o", "o.zarr"])["rank"] == 3
    for bad in (["x.zarr", "-k", "3", "--checkpoint", "2"],  # a renamed option
                ["x.zarr", "-k", "three"],  # a wrong type
                ["x.zarr", "-k", "3", "--solver", "als"],  # not a choice
                ["x.zarr", "-o", "o.zarr"]):  # -k missing
        _usage_error(check_fit_args, bad)
    _usage_error(check_dask_args, ["dask", "worker", "tcp://s:8786", "--nthread", "1"])


# --- docker -----------------------------------------------------------------------------------


def test_dockerfile_installs_dnmf_with_the_object_store_extras():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim$", text, re.MULTILINE)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    install = re.search(r'pip install "\.\[([\w,]+)\]"', text)
    assert install and set(install.group(1).split(",")) == {"s3", "gcs"} <= set(extras)
    assert "dnmf --help" in text  # the build fails if the console script does not run
    # the Helm chart starts `dask-scheduler` / `dask-worker`: the image provides them
    assert re.search(r"for role in scheduler worker;.*exec dask %s", text, re.DOTALL)
    # every file the image copies exists, and the build context lets it through
    copies = re.findall(r"^COPY (.+) \S+$", text, re.MULTILINE)
    sources = [s for line in copies for s in line.split()]
    assert {"pyproject.toml", "README.md", "dnmf", "deploy/docker/dnmf-job.sh"} <= set(sources)
    assert all((ROOT / s).exists() for s in sources)
    rules = [ln.strip() for ln in (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text()
             .splitlines() if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*"  # nothing else (data, benchmarks) is sent to the builder
    assert all(f"!{s}" in rules or f"!{s}/" in rules for s in sources)


def test_compose_file_runs_a_scheduler_single_threaded_workers_and_a_dnmf_job():
    path = DEPLOY / "docker" / "docker-compose.yml"
    services = load_yaml(path)["services"]
    assert set(services) == {"scheduler", "worker", "job"}
    for service in services.values():
        assert service["image"] == COMPOSE_IMAGE
        build = service["build"]
        assert (path.parent / build["context"] / build["dockerfile"]).resolve() == (
            DEPLOY / "docker" / "Dockerfile")

    scheduler = check_dask_args(services["scheduler"]["command"])
    worker = check_dask_args(services["worker"]["command"])
    port = scheduler["port"]
    assert worker["scheduler"] == f"tcp://scheduler:{port}"
    assert worker["nthreads"] == 1 and worker["memory_limit"] == "4GiB"
    replicas = services["worker"]["deploy"]["replicas"]
    assert replicas >= 2

    job = services["job"]
    assert job["command"][0] == "dnmf-job"
    fit_args = [expand(a, {}) for a in job["command"][1:]]  # compose's ${VAR:-default}
    params = check_fit_args(fit_args)
    assert params["input"] == "/data/X.zarr" and str(params["out"]) == "/data/result.zarr"
    assert "--scheduler" not in fit_args  # dnmf-job adds it from DASK_SCHEDULER_ADDRESS
    assert job["environment"]["DASK_SCHEDULER_ADDRESS"] == f"tcp://scheduler:{port}"
    assert int(job["environment"]["DNMF_WAIT_WORKERS"]) == replicas
    # the workers read X and write W where the job says: the same mount in both
    assert job["volumes"] == services["worker"]["volumes"]
    assert all(v.endswith(":/data") for v in job["volumes"])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS"):
        assert name in job["environment"] and name in services["worker"]["environment"]


# --- kubernetes -------------------------------------------------------------------------------


def _containers(pod_spec: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod_spec["containers"]}


def _check_cluster_spec(spec: dict, name: str) -> int:
    """A DaskCluster spec: dnmf's image everywhere, single-threaded workers whose memory limit
    is the container's, a scheduler service selecting this cluster. Returns the replicas."""
    worker = _containers(spec["worker"]["spec"])["worker"]
    scheduler = _containers(spec["scheduler"]["spec"])["scheduler"]
    assert worker["image"] == scheduler["image"] == K8S_IMAGE
    params = check_dask_args(worker["args"])
    assert params["nthreads"] == 1
    assert params["memory_limit"] == "4GiB" and worker["resources"]["limits"]["memory"] == "4Gi"
    assert worker["resources"]["limits"]["cpu"] == "1"
    check_dask_args(scheduler["args"])
    ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}
    service = spec["scheduler"]["service"]
    assert service["selector"] == {"dask.org/cluster-name": name,
                                   "dask.org/component": "scheduler"}
    assert {p["port"] for p in service["ports"]} == {8786, 8787}
    return int(spec["worker"]["replicas"])


def test_daskcluster_manifest():
    doc = load_yaml(DEPLOY / "kubernetes" / "daskcluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("kubernetes.dask.org/v1", "DaskCluster")
    assert _check_cluster_spec(doc["spec"], doc["metadata"]["name"]) >= 2


def test_daskjob_manifest_runs_dnmf_fit_on_the_same_cluster():
    doc = load_yaml(DEPLOY / "kubernetes" / "daskjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("kubernetes.dask.org/v1", "DaskJob")
    name = doc["metadata"]["name"]
    replicas = _check_cluster_spec(doc["spec"]["cluster"]["spec"], name)
    # the job's workers are daskcluster.yaml's, so the two recipes do not drift apart
    standalone = load_yaml(DEPLOY / "kubernetes" / "daskcluster.yaml")["spec"]
    assert doc["spec"]["cluster"]["spec"]["worker"] == standalone["worker"]
    assert doc["spec"]["cluster"]["spec"]["scheduler"]["spec"] == standalone["scheduler"]["spec"]

    pod = doc["spec"]["job"]["spec"]
    assert pod["restartPolicy"] == "OnFailure"  # dnmf-job resumes after a restart
    job = _containers(pod)["job"]
    assert job["image"] == K8S_IMAGE and job["args"][0] == "dnmf-job"
    params = check_fit_args(job["args"][1:])
    assert params["input"].startswith("s3://") and params["checkpoint_every"] > 0
    assert "--scheduler" not in job["args"]  # the operator sets DASK_SCHEDULER_ADDRESS
    env = {e["name"]: e["value"] for e in job["env"]}
    assert int(env["DNMF_WAIT_WORKERS"]) == replicas


# --- slurm ------------------------------------------------------------------------------------


def _jobqueue_example():
    spec = importlib.util.spec_from_file_location(
        "jobqueue_cluster", DEPLOY / "slurm" / "jobqueue_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_jobqueue_example_builds_single_threaded_worker_jobs():
    pytest.importorskip("dask_jobqueue")
    from dask.utils import format_bytes, parse_bytes

    example = _jobqueue_example()
    cluster = example.make_cluster(cores=8, memory="32GB", queue="normal", account="proj",
                                   walltime="01:00:00")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    per_worker = format_bytes(parse_bytes("32GB") / 8).replace(" ", "")
    worker_line = next(ln for ln in script.splitlines() if "--nthreads" in ln)
    assert "dask_worker" in worker_line or "dask worker" in worker_line
    args = shlex.split(worker_line)
    assert args[args.index("--nthreads") + 1] == "1"
    assert args[args.index("--nworkers") + 1] == "8"
    assert args[args.index("--memory-limit") + 1] == per_worker
    assert args[args.index("--local-directory") + 1] == "$TMPDIR"
    for directive in ("-p normal", "-A proj", "--cpus-per-task=8", "-t 01:00:00"):
        assert f"#SBATCH {directive}" in script
    assert re.search(r"^#SBATCH --mem=\d+G$", script, re.MULTILINE)


@pytest.mark.cluster
def test_jobqueue_example_fit_runs_on_a_cluster(tmp_path, local_client):
    example = _jobqueue_example()
    src = _x_store(tmp_path / "X.zarr")
    result = example.fit(local_client, str(src), 4, str(tmp_path / "out.zarr"),
                         random_state=0, max_iter=30)
    assert result.relative_error < 0.05
    assert dnmf.load(tmp_path / "out.zarr").components_.shape == (4, 40)


def test_sbatch_script_is_valid_bash_and_its_commands_parse():
    path = DEPLOY / "slurm" / "dnmf.sbatch"
    subprocess.run(["bash", "-n", str(path)], check=True)
    script = path.read_text()
    assert script.startswith("#!/bin/bash\n")
    assert re.search(r"^#SBATCH --cpus-per-task=1$", script, re.MULTILINE)
    values = {**shell_defaults(script), "ADDRESS": "tcp://10.0.0.1:8786", "RESUME": "",
              "SCHEDULER_FILE": "/s.json", "LOCAL_DIR": "/tmp/d"}
    (fit,) = shell_commands(script, "dnmf fit")
    params = check_fit_args([a for a in (expand(a, values) for a in fit[2:]) if a])
    assert params["scheduler"] == "tcp://10.0.0.1:8786" and params["checkpoint_every"] > 0
    # the scheduler and the workers are both started through srun
    launched = {}
    for srun in shell_commands(script, "srun "):
        dask_cmd = [expand(a, values) for a in srun[srun.index("dask"):]]
        launched[dask_cmd[1]] = check_dask_args(dask_cmd)
    assert set(launched) == {"scheduler", "worker"}
    assert launched["scheduler"]["scheduler_file"] == launched["worker"]["scheduler_file"]
    assert launched["worker"]["nthreads"] == 1


@pytest.mark.cluster
def test_sbatch_script_runs_scheduler_worker_and_fit(tmp_path):
    """The batch script end to end on this machine: `srun` runs its command once (one task),
    so one `dask worker` joins the `dask scheduler`; then `dnmf fit` runs against them."""
    env = _shims(tmp_path)
    srun = tmp_path / "bin" / "srun"
    srun.write_text('#!/bin/sh\nwhile [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n')
    srun.chmod(0o755)
    src = _x_store(tmp_path / "X.zarr")
    out = tmp_path / "result.zarr"
    env.update(INPUT=str(src), RANK="4", OUT=str(out), SLURM_SUBMIT_DIR=str(tmp_path),
               SLURM_JOB_ID="1234", SLURM_NTASKS="1", TMPDIR=str(tmp_path),
               WORKER_MEMORY="1GiB", CHECKPOINT_EVERY="5")
    proc = subprocess.Popen(["bash", str(DEPLOY / "slurm" / "dnmf.sbatch")], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        try:  # anything the script left behind in its session
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    assert proc.returncode == 0, output[-4000:]
    assert "scheduler: cluster: 1 worker(s)" in output
    assert not (tmp_path / "dask-scheduler-1234.json").exists()  # cleaned up
    W, H, attrs = _factors(out)
    assert attrs["status"] == "complete" and attrs["relative_error"] < 0.05
    assert H.shape == (4, 40)


# --- against real scheduler/worker processes ------------------------------------------------


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """`dask scheduler` + two `dask worker --nthreads 1` processes on 127.0.0.1 (module-wide)."""
    yield from dask_cli_cluster(tmp_path_factory.mktemp("dask-cluster"), 2)


@pytest.mark.cluster
def test_fit_through_a_scheduler_address_equals_a_local_cluster(tmp_path, two_workers):
    src = _x_store(tmp_path / "X.zarr", n=4000, chunk=500)
    common = [str(src), "-k", "4", "--seed", "1", "--tol", "0", "--max-iter", "25"]
    env = _shims(tmp_path)
    remote = subprocess.run([*DNMF, "fit", *common, "-o", str(tmp_path / "remote.zarr"),
                             "--scheduler", two_workers], capture_output=True, text=True,
                            timeout=300, env=env)
    assert remote.returncode == 0, remote.stderr
    local = subprocess.run([*DNMF, "fit", *common, "-o", str(tmp_path / "local.zarr"),
                            "--scheduler", "local", "--workers", "2", "--memory-limit", "1GB"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert local.returncode == 0, local.stderr
    assert "scheduler: cluster: 2 worker(s)" in remote.stderr  # log lines: stderr

    def plan(log: str) -> list[str]:
        return [ln for ln in log.splitlines() if ln.startswith("plan: ")]

    assert plan(remote.stderr) == plan(local.stderr) != []  # the same chunk plan ...
    W_r, H_r, attrs_r = _factors(tmp_path / "remote.zarr")
    W_l, H_l, attrs_l = _factors(tmp_path / "local.zarr")
    assert attrs_r["n_iter"] == attrs_l["n_iter"] == 25
    # ... so the same tasks: equal up to the order in which partial sums arrive (float32)
    np.testing.assert_allclose(H_r, H_l, rtol=1e-5, atol=1e-6 * np.abs(H_l).max())
    np.testing.assert_allclose(W_r, W_l, rtol=1e-5, atol=1e-6 * np.abs(W_l).max())


@pytest.mark.cluster
def test_dnmf_job_waits_for_the_workers_and_resumes_from_a_checkpoint(tmp_path, two_workers):
    env = {**_shims(tmp_path), "DASK_SCHEDULER_ADDRESS": two_workers, "DNMF_WAIT_WORKERS": "2"}
    src = _x_store(tmp_path / "X.zarr")
    out = tmp_path / "out.zarr"
    job = [str(DEPLOY / "docker" / "dnmf-job.sh"), str(src), "-k", "4", "-o", str(out),
           "--seed", "2", "--tol", "0"]
    # a first attempt, stopped the way a batch system stops a job (SIGTERM) once its first
    # checkpoint is in OUT
    first = subprocess.Popen([*job, "--max-iter", "100000", "--checkpoint-every", "3"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while "current" not in _checkpoint_attrs(out):  # the marker: a checkpoint is written
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        first.send_signal(signal.SIGTERM)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert stdout.startswith("dnmf-job: dnmf fit waits for 2 worker(s) at tcp://127.0.0.1:")
    assert first.returncode == 130, stderr
    done = zarr.open_group(str(out), mode="r")["checkpoint"].attrs["iteration"]

    second = subprocess.run([*job, "--max-iter", str(done + 3), "--checkpoint-every", "3"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"dnmf-job: {out} holds a checkpoint; continuing with --resume" in second.stdout
    assert f"resumed from the checkpoint at iteration {done}" in second.stderr
    assert _factors(out)[2]["n_iter"] == done + 3


# --- fsspec URLs ------------------------------------------------------------------------------


def test_fit_reads_a_file_url_end_to_end(tmp_path):
    src = _x_store(tmp_path / "X.zarr")
    common = ["-k", "4", "--seed", "0", "--max-iter", "20", "--scheduler", "threads"]
    env = _shims(tmp_path)
    by_url = subprocess.run([*DNMF, "fit", src.as_uri(), *common, "-o", str(tmp_path / "u.zarr")],
                            capture_output=True, text=True, timeout=180, env=env)
    assert by_url.returncode == 0, by_url.stderr
    by_path = subprocess.run([*DNMF, "fit", str(src), *common, "-o", str(tmp_path / "p.zarr")],
                             capture_output=True, text=True, timeout=180, env=env)
    assert by_path.returncode == 0, by_path.stderr
    model = dnmf.load(tmp_path / "u.zarr")
    assert model.components_.shape == (4, 40)
    assert zarr.open_group(str(tmp_path / "u.zarr"), mode="r").attrs["input"]["path"] == (
        src.as_uri())
    np.testing.assert_array_equal(model.components_, dnmf.load(tmp_path / "p.zarr").components_)


def test_fit_writes_to_a_file_url(tmp_path):
    src = _x_store(tmp_path / "X.zarr")
    out = tmp_path / "r.zarr"
    proc = subprocess.run([*DNMF, "fit", src.as_uri(), "-k", "4", "--max-iter", "5",
                           "--scheduler", "threads", "-o", out.as_uri()],
                          capture_output=True, text=True, timeout=180, env=_shims(tmp_path),
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert dnmf.load(out.as_uri()).components_.shape == (4, 40)
