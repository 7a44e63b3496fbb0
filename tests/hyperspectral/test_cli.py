"""``dnmf unmix``, ``dnmf score`` and ``dnmf demo`` as users run them (subprocesses)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from dnmf.datasets import make_scene
from dnmf.hyperspectral.envi import write_envi
from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def scene_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.zarr"
    make_scene(90, 80, n_endmembers=4, snr_db=30.0, seed=5, chunks=(45, 40)).to_zarr(
        path, mode="w", consolidated=False)
    return path


def test_unmix_k_auto_plots_then_score(scene_store, tmp_path):
    out, plots = tmp_path / "out.zarr", tmp_path / "plots"
    proc = run_cli("unmix", str(scene_store), "--var", "reflectance", "-k", "auto", "-o",
                   str(out), "--plots", str(plots), "--scheduler", "threads")
    assert proc.returncode == 0, proc.stderr
    # the cube and HySime lines are progress (stderr); the summary is the result (stdout)
    assert "HySime signal subspace: 4 endmember(s)" in proc.stderr
    assert "unmixing into 4 endmembers" in proc.stderr and "written to" in proc.stdout
    ds = xr.open_zarr(out)
    assert ds.attrs["status"] == "complete" and ds.sizes["endmember"] == 4
    assert (plots / "rgb_composite.png").stat().st_size > 10_000
    proc = run_cli("score", str(out), "--truth", str(scene_store))
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    sad = float(first.split("mean spectral angle ")[1].split()[0])
    rmse = float(proc.stdout.split("abundance RMSE ")[1].split()[0])
    assert sad < 2.0 and rmse < 0.04, proc.stdout


def test_unmix_and_score_json(scene_store, tmp_path):
    import json

    out = tmp_path / "j.zarr"
    proc = run_cli("unmix", str(scene_store), "--var", "reflectance", "-k", "4", "-o",
                   str(out), "--scheduler", "threads", "--json")
    assert proc.returncode == 0, proc.stderr
    value = json.loads(proc.stdout)  # stdout is exactly one JSON object
    assert proc.stdout.strip().count("\n") == 0
    schema = {"path": str, "n_endmembers": int, "n_iter": int, "relative_error": float,
              "wall_time_s": float}
    assert all(isinstance(value[key], kind) for key, kind in schema.items()), value
    assert value["path"] == str(out) and value["n_endmembers"] == 4
    assert value["plots"] is None and value["netcdf"] is None
    assert value["n_iter"] == xr.open_zarr(out).attrs["n_iter"]
    proc = run_cli("score", str(out), "--truth", str(scene_store), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert isinstance(report["mean_sad_deg"], float) and report["mean_sad_deg"] < 2.0
    assert isinstance(report["abundance_rmse"], float) and report["n_reference"] == 4
    assert len(report["matching"]) == 4 and {"estimated", "reference", "name", "sad_deg"} <= set(
        report["matching"][0])


def test_unmix_envi_with_bbl_and_no_sum_to_one(tmp_path):
    scene = make_scene(40, 40, n_endmembers=3, snr_db=35.0, seed=2, chunks=(40, 40))
    cube = scene["reflectance"].values
    bbl = np.ones(cube.shape[-1], dtype=int)
    bbl[100:110] = 0
    write_envi(tmp_path / "cube.img", np.nan_to_num(cube, nan=-1.0).astype(np.float32),
               interleave="bip", nodata=-1.0, wavelength=scene["wavelength"].values, bbl=bbl)
    out = tmp_path / "out.zarr"
    proc = run_cli("unmix", str(tmp_path / "cube.hdr"), "-k", "3", "-o", str(out),
                   "--no-sum-to-one", "--sparsity", "0.01", "--scheduler", "threads", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # --quiet
    ds = xr.open_zarr(out)
    assert ds.attrs["sum_to_one"] is False and ds.attrs["sparsity"] == 0.01
    assert np.isnan(ds["endmembers"].values[:, 100:110]).all()
    assert len(ds.attrs["bands_used"]) == cube.shape[-1] - 10
    assert np.isnan(ds["abundances"].values[:, 0, 0]).all()  # the no-data corner


@pytest.mark.parametrize(("args", "message"), [
    (["-k", "three"], "error: -k must be an integer or auto; got 'three'"),
    (["-k", "3", "--sparsity", "0.1"], "error: an L1 sparsity penalty is constant"),
    (["-k", "3", "--bad-bands", "abc"], "error: --bad-bands item 'abc' is not understood"),
])
def test_unmix_errors_are_one_line(scene_store, tmp_path, args, message):
    proc = run_cli("unmix", str(scene_store), "--var", "reflectance", "-o",
                   str(tmp_path / "o.zarr"), *args)
    assert proc.returncode == 1
    assert proc.stderr.startswith(message) and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.zarr").exists()


def test_unmix_without_var_names_the_candidates(scene_store, tmp_path):
    proc = run_cli("unmix", str(scene_store), "-k", "3", "-o", str(tmp_path / "o.zarr"))
    assert proc.returncode == 1 and "--var" in proc.stderr and "reflectance" in proc.stderr


@pytest.mark.cluster
def test_demo_unmixes_a_scene_on_a_local_cluster(tmp_path):
    # the README's command exactly (`dnmf demo`, into ./dnmf-demo)
    proc = run_cli("demo", timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # a newcomer sees no Python warning and none of dnmf's own warning: lines
    for line in (proc.stdout + proc.stderr).splitlines():
        assert "Warning:" not in line and not line.lower().startswith("warning:"), line
    assert len(proc.stdout.strip().splitlines()) == 2  # results only; progress on stderr
    assert "iter " in proc.stderr and "iter " not in proc.stdout
    last = proc.stdout.strip().splitlines()[-1]
    sad = float(last.split("mean spectral angle ")[1].split()[0])
    rmse = float(last.split("abundance RMSE ")[1].split()[0])
    assert sad < 2.0 and rmse < 0.04, proc.stdout
    assert (tmp_path / "dnmf-demo" / "plots" / "endmembers.png").exists()
    assert xr.open_zarr(tmp_path / "dnmf-demo" / "unmix.zarr").sizes["endmember"] == 6
