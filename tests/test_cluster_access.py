"""Dask as its users expect: the dashboard of a cluster dnmf starts (this host only, served),
a fit that starts before its workers (--wait-for-workers), and clients dnmf did not create
(used, never closed)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import zarr

import dnmf
from dnmf.cluster import execution_context
from tests.conftest import dask_env

pytestmark = pytest.mark.cluster



def _non_loopback_address() -> str | None:
    """An IPv4 address of this host that is not loopback (None where there is none)."""
    import psutil

    for addresses in psutil.net_if_addrs().values():
        for addr in addresses:
            if addr.family == socket.AF_INET and not addr.address.startswith("127."):
                return addr.address
    return None


def test_local_cluster_dashboard_listens_on_loopback_only_and_serves_its_status_page():
    pytest.importorskip("bokeh", reason="bokeh is not installed (pip install dnmf[dashboard])")
    import psutil

    with execution_context("local", workers=1, memory_limit="1GB") as ctx:
        link = ctx.dashboard_link
        assert link is not None and link.startswith("http://127.0.0.1:"), link
        port = int(link.split(":")[2].split("/")[0])
        listening = [c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        assert listening == ["127.0.0.1"], listening
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30) as page:
            body = page.read().decode()
        assert page.status == 200 and "bokeh" in body.lower()
        other = _non_loopback_address()
        if other is not None:  # the same port on another interface of this host: refused
            with pytest.raises(OSError), socket.create_connection((other, port), timeout=5):
                pass


def test_wait_for_workers_starts_a_fit_before_its_worker_joins(scheduler_without_workers,
                                                               tmp_path, planted):
    address, start_worker = scheduler_without_workers
    zarr.create_array(tmp_path / "x.zarr", data=planted, chunks=(100, planted.shape[1]))
    fit = subprocess.Popen(
        [sys.executable, "-m", "dnmf", "fit", str(tmp_path / "x.zarr"), "-k", "3",
         "-o", str(tmp_path / "out.zarr"), "--scheduler", address, "--max-iter", "10",
         "--wait-for-workers", "1", "--wait-timeout", "120", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dask_env(), cwd=tmp_path)
    try:
        time.sleep(3)  # the fit is up and waiting; nothing written without a worker
        assert fit.poll() is None, fit.communicate()
        assert not (tmp_path / "out.zarr").exists()
        start_worker()
        stdout, stderr = fit.communicate(timeout=150)
    finally:
        if fit.poll() is None:
            fit.kill()
    assert fit.returncode == 0, stderr
    assert json.loads(stdout)["n_iter"] == 10
    assert dnmf.load(tmp_path / "out.zarr").n_components_ == 3


def test_too_few_workers_is_one_line_after_the_timeout(scheduler_without_workers, tmp_path,
                                                       planted):
    address, _ = scheduler_without_workers
    np.save(tmp_path / "x.npy", planted)
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "dnmf", "fit", str(tmp_path / "x.npy"), "-k", "3", "-o",
         str(tmp_path / "out.zarr"), "--scheduler", address, "--wait-for-workers", "2",
         "--wait-timeout", "1"], capture_output=True, text=True, env=dask_env(), timeout=120)
    assert run.returncode == 1 and time.monotonic() - start < 60
    assert run.stderr.startswith("error: no Dask worker joined the cluster at")
    assert "within 1 s" in run.stderr and "--wait-timeout" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "out.zarr").exists()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_an_existing_client_is_used_and_never_closed(local_client, planted):
    from distributed import Client

    result = dnmf.factorize(planted, 3, client=local_client, max_iter=5, random_state=0)
    assert result.n_iter == 5 and local_client.status == "running"
    assert result.scheduler.startswith("existing Client")
    # the current client (inside ``with``) is used by scheduler="auto" and left open too
    with Client(local_client.cluster, set_as_default=True) as current:
        used = dnmf.factorize(planted, 3, max_iter=5, random_state=0, scheduler="auto")
        assert used.scheduler.startswith("existing Client")
        dnmf.NMF(3, max_iter=5, random_state=0).fit(planted)
        assert current.status == "running"
        assert current.cluster.status.name == "running"
    assert local_client.status == "running"
    assert local_client.submit(sum, [1, 2]).result() == 3


def test_unmix_prints_the_dashboard_link_of_its_local_cluster(tmp_path):
    pytest.importorskip("bokeh", reason="bokeh is not installed (pip install dnmf[dashboard])")
    from dnmf.datasets import make_scene

    scene = make_scene(24, 20, n_endmembers=3, snr_db=30.0, seed=1, chunks=(24, 20))
    scene[["reflectance"]].to_zarr(tmp_path / "cube.zarr", mode="w", consolidated=False)
    run = subprocess.run(
        [sys.executable, "-m", "dnmf", "unmix", str(tmp_path / "cube.zarr"), "-k", "3",
         "--var", "reflectance", "-o", str(tmp_path / "out.zarr"), "--scheduler", "local",
         "--workers", "1", "--memory-limit", "1GB", "--max-iter", "3"],
        capture_output=True, text=True, env=dask_env(), timeout=180)
    assert run.returncode == 0, run.stderr
    assert "dashboard: http://127.0.0.1:" in run.stderr
