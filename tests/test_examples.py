"""The examples run as users run them: the quickstart on a LocalCluster, and cluster.py against
``dask scheduler`` / ``dask worker`` processes started on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from tests.conftest import dask_cli_cluster

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.cluster


@pytest.fixture
def loopback_cluster(tmp_path):
    """A real ``dask scheduler`` and one ``dask worker`` process on 127.0.0.1 (able to import
    dnmf from this checkout), torn down after."""
    directory = tmp_path / "dask-cluster"
    directory.mkdir()
    yield from dask_cli_cluster(directory, 1)


def test_cluster_example_against_scheduler_address(tmp_path, loopback_cluster):
    rng = np.random.default_rng(0)
    X = (rng.random((2000, 5)) @ rng.random((5, 40))).astype("float32")
    path = tmp_path / "X.zarr"
    zarr.create_array(str(path), shape=X.shape, chunks=(500, 40), dtype="float32")[...] = X
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "cluster.py"), loopback_cluster, str(path), "5"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "workers: 1" in proc.stdout and "existing Client: 1 worker(s)" in proc.stdout
    ds = xr.open_zarr(str(path) + ".nmf.zarr")
    assert ds.attrs["status"] == "complete" and ds.attrs["relative_error"] < 0.01


def test_cli_fit_against_scheduler_address(tmp_path, loopback_cluster):
    rng = np.random.default_rng(1)
    X = (rng.random((1000, 4)) @ rng.random((4, 30))).astype("float32")
    path = tmp_path / "X.zarr"
    zarr.create_array(str(path), shape=X.shape, chunks=(250, 30), dtype="float32")[...] = X
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DASK_SCHEDULER_ADDRESS": loopback_cluster}
    proc = subprocess.run(
        [sys.executable, "-c", "from dnmf.cli import main; main()", "fit", str(path), "-k", "4",
         "-o", str(tmp_path / "out.zarr"), "--seed", "0"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "scheduler: cluster: 1 worker(s)" in proc.stderr  # a log line: stderr
    assert xr.open_zarr(tmp_path / "out.zarr").attrs["relative_error"] < 0.01


def test_quickstart_example(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True,
        text=True, timeout=600, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "factorize:" in proc.stdout and "transform: (1000, 10)" in proc.stdout
    rel = float(proc.stdout.split("relative error ")[1].split()[0])
    assert rel < 0.05
    assert (tmp_path / "quickstart-data" / "result.zarr").exists()


def test_unmix_scene_example(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "unmix_scene.py")], capture_output=True,
        text=True, timeout=600, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    sad = float(proc.stdout.split("mean spectral angle ")[1].split()[0])
    rmse = float(proc.stdout.split("abundance RMSE ")[1].split()[0])
    assert sad < 2.0 and rmse < 0.04, proc.stdout
    assert "rgb_composite.png" in proc.stdout
    assert xr.open_zarr(tmp_path / "unmix-scene" / "unmix.zarr").attrs["status"] == "complete"
