"""An output is never an input (dnmf.io.overlap), through every command and API that writes.

Each refused case checks what a user would lose otherwise: exit code 1, one ``error:`` line
naming both paths, no traceback, the input's bytes unchanged, and nothing new on disk.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

import dnmf
from dnmf.errors import OutputError
from dnmf.io.overlap import (
    check_outputs_are_not_inputs,
    check_plots_are_not_inputs,
    storage_location,
)
from tests.conftest import make_planted

DNMF = [sys.executable, "-c", "from dnmf.cli import main; main()"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for name in ("DNMF_DEBUG", "DASK_SCHEDULER_ADDRESS"):
        env.pop(name, None)
    return subprocess.run([*DNMF, *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd)


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (names, link targets, file contents), for before/after."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                entries[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                entries[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                entries[rel] = "dir"
    return entries


def assert_refused(result: subprocess.CompletedProcess, before: dict[str, str], root: Path,
                   *names: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert "even with --overwrite" in lines[0] or "plots" in lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert tree_digest(root) == before  # the input intact, nothing new or partial


@pytest.fixture
def workdir(tmp_path) -> Path:
    """x.zarr (400 x 30 float32), x.npy, mask.zarr, and a link to x.zarr."""
    X = make_planted(400, 30, 3, dtype="float32")[0]
    zarr.create_array(str(tmp_path / "x.zarr"), shape=X.shape, chunks=(100, 30),
                      dtype="float32")[...] = X
    np.save(tmp_path / "x.npy", X)
    zarr.create_array(str(tmp_path / "mask.zarr"), shape=X.shape, chunks=(100, 30),
                      dtype="uint8")[...] = 1
    (tmp_path / "link.zarr").symlink_to(tmp_path / "x.zarr", target_is_directory=True)
    return tmp_path


@pytest.fixture
def model(workdir) -> Path:
    """A complete result store fitted to x.zarr."""
    path = workdir / "model.zarr"
    dnmf.factorize(str(workdir / "x.zarr"), 3, max_iter=5, scheduler="sync", out=path)
    return path


# --- the rule, on paths ------------------------------------------------------------------


@pytest.mark.parametrize("out,inp,relation", [
    ("x.zarr", "x.zarr", "is"),
    ("./d/../x.zarr", "x.zarr", "is"),
    ("d", "d/x.zarr", "contains"),
    ("x.zarr/result.zarr", "x.zarr", "lies inside"),
])
def test_equal_containing_and_inner_outputs_are_refused(tmp_path, monkeypatch, out, inp,
                                                        relation):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match=f"output {out} {relation} the input {inp} — "):
        check_outputs_are_not_inputs({"output": out}, {"the input": inp})


def test_neighbours_and_prefixes_are_not_overlaps(tmp_path):
    check_outputs_are_not_inputs(
        {"output": tmp_path / "x.zarr.out", "other": tmp_path / "y.zarr", "none": None},
        {"the input": tmp_path / "x.zarr", "in memory": np.ones((2, 2)), "absent": None})


def test_links_file_urls_and_hard_links_name_the_same_input(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "link.zarr").symlink_to(tmp_path / "x.zarr")
    with pytest.raises(OutputError, match=r"link.zarr \(which is .*x.zarr\) is the input"):
        check_outputs_are_not_inputs({"output": tmp_path / "link.zarr"},
                                     {"the input": tmp_path / "x.zarr"})
    with pytest.raises(OutputError, match="is the input file://"):
        check_outputs_are_not_inputs({"output": tmp_path / "x.zarr"},
                                     {"the input": (tmp_path / "x.zarr").as_uri()})
    (tmp_path / "x.npy").write_bytes(b"data")
    os.link(tmp_path / "x.npy", tmp_path / "hard.npy")
    with pytest.raises(OutputError, match="is the input"):
        check_outputs_are_not_inputs({"output": tmp_path / "hard.npy"},
                                     {"the input": tmp_path / "x.npy"})


def test_urls_are_compared_normalised_and_never_equal_local_paths():
    with pytest.raises(OutputError, match="is the input"):
        check_outputs_are_not_inputs({"output": "S3://bucket//data/./x.zarr/"},
                                     {"the input": "s3://bucket/data/x.zarr"})
    with pytest.raises(OutputError, match="lies inside the input"):
        check_outputs_are_not_inputs({"output": "simplecache::s3://bucket/data/x.zarr/r"},
                                     {"the input": "s3a://bucket/data/x.zarr"})
    check_outputs_are_not_inputs({"output": "gs://bucket/data/x.zarr"},
                                 {"the input": "s3://bucket/data/x.zarr"})


def test_opened_stores_are_traced_to_their_files(tmp_path, workdir):
    zarr_array = zarr.open_array(str(workdir / "x.zarr"), mode="r")
    assert os.path.samefile(storage_location(zarr_array), workdir / "x.zarr")
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["X"] = np.ones((3, 2))
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert os.path.samefile(storage_location(f["X"]), tmp_path / "x.h5")
    memmap = np.load(workdir / "x.npy", mmap_mode="r")
    assert os.path.samefile(storage_location(memmap), workdir / "x.npy")
    source = dnmf.io.open_matrix(str(workdir / "x.zarr"))
    assert storage_location(source) == str(workdir / "x.zarr")
    assert storage_location(np.ones(3)) is None
    with pytest.raises(OutputError, match="is the input"):
        dnmf.factorize(zarr_array, 2, out=workdir / "x.zarr", overwrite=True)


def test_plots_may_sit_beside_the_input_but_not_inside_it_or_on_it(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    files = ("endmembers.png", "abundance_*.png")
    check_plots_are_not_inputs(tmp_path, files, {"the cube": tmp_path / "x.zarr"})  # plots .
    with pytest.raises(OutputError, match="plots directory .* lies inside the cube"):
        check_plots_are_not_inputs(tmp_path / "x.zarr" / "p", files,
                                   {"the cube": tmp_path / "x.zarr"})
    with pytest.raises(OutputError, match="plots directory .* is the cube"):
        check_plots_are_not_inputs(tmp_path / "x.zarr", files, {"the cube": tmp_path / "x.zarr"})
    (tmp_path / "abundance_2.png").write_bytes(b"a cube saved as PNG")
    with pytest.raises(OutputError, match="would write over the cube"):
        check_plots_are_not_inputs(tmp_path, files, {"the cube": tmp_path / "abundance_2.png"})


# --- every command that writes, from the command line ------------------------------------


def _fit(inp: str, out: str, *extra: str) -> list[str]:
    return ["fit", inp, "-k", "3", "-o", out, "--overwrite", "--max-iter", "3", *extra]


@pytest.mark.parametrize("args,names", [
    # out of core with checkpoints: the input used to be deleted at the first checkpoint
    (_fit("x.zarr", "x.zarr", "--scheduler", "local", "--workers", "1", "--memory-limit",
          "300MB", "--checkpoint-every", "1"), ["output x.zarr is the input x.zarr"]),
    (_fit("x.zarr", "x.zarr", "--scheduler", "threads"), ["output x.zarr is the input x.zarr"]),
    (_fit("x.npy", "x.npy"), ["output x.npy is the input x.npy"]),
    (_fit("link.zarr", "x.zarr"), ["output x.zarr is the input link.zarr (which is "]),
    (_fit("x.zarr", "link.zarr"), ["output link.zarr (which is "]),
    (_fit("x.zarr", "mask.zarr", "--mask", "mask.zarr"), ["is the mask mask.zarr"]),
    (_fit("x.zarr", ".", "--scheduler", "threads"), ["output . contains the input x.zarr"]),
    (_fit("x.zarr", "x.zarr/result.zarr"), ["lies inside the input x.zarr"]),
    (["fit", "x.zarr", "-k", "3", "-o", "x.zarr", "--resume"], ["is the input x.zarr"]),
    (["fit", "x.zarr", "-k", "3", "-o", "x.zarr", "--overwrite", "--dry-run"],
     ["is the input x.zarr"]),
    (["rank", "x.zarr", "--ks", "2:3", "--runs", "2", "-o", "x.zarr", "--overwrite"],
     ["report x.zarr is the input x.zarr"]),
    (["rank", "x.zarr", "--ks", "2:3", "--runs", "2", "--plots", "x.zarr/plots"],
     ["plots directory x.zarr/plots lies inside the input x.zarr"]),
], ids=["zarr-out-of-core", "zarr-in-memory", "npy", "input-link", "output-link", "mask",
        "output-contains-input", "output-inside-input", "resume", "dry-run", "rank-report",
        "rank-plots"])
def test_cli_refuses_an_output_that_is_an_input(workdir, args, names):
    before = tree_digest(workdir)
    assert_refused(run_cli(*args, cwd=workdir), before, workdir, *names)


def test_cli_transform_and_reconstruct_refuse_to_write_onto_the_model_or_data(workdir, model):
    before = tree_digest(workdir)
    cases = [
        (["transform", "model.zarr", "x.zarr", "-o", "model.zarr", "--overwrite"],
         "output model.zarr is the model model.zarr"),
        (["transform", "model.zarr", "x.zarr", "-o", "x.zarr", "--overwrite"],
         "output x.zarr is the input x.zarr"),
        (["reconstruct", "model.zarr", "-o", "model.zarr", "--overwrite"],
         "output model.zarr is the result model.zarr"),
        (["reconstruct", "model.zarr", "-o", "x.zarr", "--only-missing", "x.zarr",
          "--overwrite"], "output x.zarr is the fitted input (--only-missing) x.zarr"),
    ]
    for args, name in cases:
        assert_refused(run_cli(*args, cwd=workdir), before, workdir, name)


@pytest.fixture
def cube_dir(tmp_path) -> Path:
    from dnmf.datasets import make_scene

    scene = make_scene(24, 24, n_endmembers=3, chunks=12, seed=1)
    scene.to_zarr(tmp_path / "cube.zarr", mode="w", consolidated=False)
    scene.to_netcdf(tmp_path / "cube.nc", engine="h5netcdf")
    return tmp_path


@pytest.mark.parametrize("args,name", [
    (["cube.zarr", "-o", "cube.zarr"], "output cube.zarr is the cube cube.zarr"),
    (["cube.nc", "-o", "out.zarr", "--netcdf", "cube.nc"],
     "NetCDF output cube.nc is the cube cube.nc"),
    (["cube.zarr", "-o", "out.zarr", "--plots", "cube.zarr/plots"],
     "plots directory cube.zarr/plots lies inside the cube cube.zarr"),
], ids=["zarr", "netcdf", "plots"])
def test_cli_unmix_refuses_to_write_onto_the_cube(cube_dir, args, name):
    before = tree_digest(cube_dir)
    result = run_cli("unmix", args[0], "-k", "3", "--var", "reflectance", *args[1:],
                     "--overwrite", "--max-iter", "3", cwd=cube_dir)
    assert_refused(result, before, cube_dir, name)


# --- the API functions that write ----------------------------------------------------------


def test_api_writers_raise_output_error_and_touch_nothing(workdir, model):
    from dnmf.hyperspectral.unmix import unmix
    from dnmf.rank import select_rank
    from dnmf.reconstruct import write_reconstruction

    x = workdir / "x.zarr"
    before = tree_digest(workdir)
    calls = [
        lambda: dnmf.factorize(str(x), 3, out=x, overwrite=True),
        lambda: dnmf.factorize(str(x), 3, mask=str(workdir / "mask.zarr"),
                               out=workdir / "mask.zarr", overwrite=True),
        lambda: dnmf.NMF(n_components=3, max_iter=3).fit(str(x), out=x, overwrite=True),
        lambda: dnmf.api.transform_to_store(str(model), str(x), model, overwrite=True),
        lambda: write_reconstruction(model, x, only_missing=str(x), overwrite=True),
        lambda: unmix(str(x), 2, output=x, overwrite=True),
        lambda: unmix(str(x), 2, plots=x / "plots"),
    ]
    for call in calls:
        with pytest.raises(OutputError):
            call()
    assert tree_digest(workdir) == before
    report = select_rank(str(x), [2], 2, max_iter=5, scheduler="sync")
    with pytest.raises(OutputError, match="report .* is the input"):
        report.save(x, overwrite=True)
    with pytest.raises(OutputError, match="plots directory .* lies inside the input"):
        report.plot(x / "plots")
    assert tree_digest(workdir) == before
    report.plot(workdir)  # beside the input: allowed
    assert (workdir / "rank-criteria.png").is_file()
