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
    Stored,
    check_outputs_are_not_inputs,
    check_plots_are_not_inputs,
    storage_locations,
)
from dnmf.io.result_store import check_output
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
    assert any(why in lines[0] for why in ("even with --overwrite", "plots", "overlap"))
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
    import dask.array as da
    import xarray as xr

    x = workdir / "x.zarr"
    zarr_array = zarr.open_array(str(x), mode="r")
    assert os.path.samefile(storage_locations(zarr_array)[0], x)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["X"] = np.ones((3, 2))
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert os.path.samefile(storage_locations(f["X"])[0], tmp_path / "x.h5")
    memmap = np.load(workdir / "x.npy", mmap_mode="r")
    assert os.path.samefile(storage_locations(memmap)[0], workdir / "x.npy")
    assert storage_locations(dnmf.io.open_matrix(str(x))) == [str(x)]
    assert os.path.samefile(storage_locations(da.from_zarr(str(x)))[0], x)
    xr.Dataset({"X": (("s", "f"), np.ones((4, 3), np.float32))}).to_zarr(
        tmp_path / "xa.zarr", consolidated=False)
    lazy = xr.open_zarr(tmp_path / "xa.zarr", consolidated=False)
    assert os.path.samefile(storage_locations(lazy["X"])[0], tmp_path / "xa.zarr" / "X")
    assert storage_locations(np.ones(3)) == [] and storage_locations(da.ones(3)) == []
    # each refused before anything is read or written
    before = tree_digest(tmp_path)
    for call in [
        lambda: dnmf.factorize(zarr_array, 2, out=x, overwrite=True),
        lambda: dnmf.factorize(da.from_zarr(str(x)), 2, out=x, overwrite=True),
        lambda: dnmf.factorize(lazy["X"], 2, out=tmp_path / "xa.zarr", overwrite=True),
    ]:
        with pytest.raises(OutputError, match="(is|contains) the input"):
            call()
    assert tree_digest(tmp_path) == before


def test_outputs_are_resolved_as_their_writers_write_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "~").mkdir()
    (tmp_path / "home").mkdir()
    # an output "~/x.zarr" is written to ./~/x.zarr (no expansion); an input is expanded
    with pytest.raises(OutputError, match="is the input"):
        check_outputs_are_not_inputs({"output": "~/x.zarr"}, {"the input": "./~/x.zarr"})
    check_outputs_are_not_inputs({"output": "~/x.zarr"}, {"the input": "~/x.zarr"})
    # "::" chains only URLs; in a local name it is a character
    check_outputs_are_not_inputs({"output": "a::b.zarr"}, {"the input": "c::b.zarr"})
    with pytest.raises(OutputError, match="output NetCDF u.zarr and output u.zarr overlap"):
        check_outputs_are_not_inputs({"output NetCDF": "u.zarr", "output": "u.zarr"}, {})
    with pytest.raises(OutputError, match="the output path is empty"):
        check_output("", overwrite=True)


def test_a_variable_linked_out_of_its_store_is_an_input_where_it_points(tmp_path):
    (tmp_path / "ext" / "X").mkdir(parents=True)
    (tmp_path / "g.zarr").mkdir()
    (tmp_path / "g.zarr" / "X").symlink_to(tmp_path / "ext" / "X")
    pattern = r"contains the input \S*g.zarr/X \(which is \S*ext/X\)"
    with pytest.raises(OutputError, match=pattern):
        check_outputs_are_not_inputs({"output": tmp_path / "ext"},
                                     {"the input": Stored(str(tmp_path / "g.zarr"), "X")})
    check_outputs_are_not_inputs({"output": tmp_path / "ext2"},
                                 {"the input": Stored(str(tmp_path / "g.zarr"), "X")})


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
    with pytest.raises(OutputError, match="would write abundance_2.png over the cube"):
        check_plots_are_not_inputs(tmp_path, files, {"the cube": tmp_path / "abundance_2.png"})
    # a plot file that is a link to the input: savefig would follow it
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "endmembers.png").symlink_to(tmp_path / "abundance_2.png")
    with pytest.raises(OutputError, match="would write endmembers.png over the cube"):
        check_plots_are_not_inputs(tmp_path / "plots", files,
                                   {"the cube": tmp_path / "abundance_2.png"})


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


def test_cli_refuses_an_empty_output_path_which_would_replace_the_working_directory(workdir):
    before = tree_digest(workdir)
    result = run_cli(*_fit("x.npy", ""), cwd=workdir)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: the output path is empty — give a path such as "
                                     "result.zarr")
    assert tree_digest(workdir) == before


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
    from dnmf.hyperspectral.envi import write_envi

    scene = make_scene(24, 24, n_endmembers=3, chunks=12, seed=1)
    scene.to_zarr(tmp_path / "cube.zarr", mode="w", consolidated=False)
    scene.to_netcdf(tmp_path / "cube.nc", engine="h5netcdf")
    write_envi(tmp_path / "scene.img",
               np.ascontiguousarray(scene["reflectance"].transpose("y", "x", "band").values))
    return tmp_path


@pytest.mark.parametrize("args,name", [
    pytest.param(["cube.zarr", "-o", "cube.zarr"], "output cube.zarr is the cube cube.zarr",
                 id="zarr"),
    pytest.param(["cube.nc", "-o", "out.zarr", "--netcdf", "cube.nc"],
                 "NetCDF output cube.nc is the cube cube.nc", id="netcdf"),
    pytest.param(["cube.zarr", "-o", "out.zarr", "--plots", "cube.zarr/plots"],
                 "plots directory cube.zarr/plots lies inside the cube cube.zarr", id="plots"),
    pytest.param(["scene.hdr", "-o", "scene.img"], "output scene.img is the cube's data file",
                 id="envi-binary"),
    pytest.param(["scene.hdr", "-o", "u.zarr", "--netcdf", "scene.img"],
                 "NetCDF output scene.img is the cube's data file", id="envi-netcdf"),
    pytest.param(["scene.img", "-o", "scene.hdr"], "output scene.hdr is the cube's header",
                 id="envi-header"),
    pytest.param(["cube.zarr", "-o", "u.zarr", "--netcdf", "u.zarr"],
                 "output u.zarr and NetCDF output u.zarr overlap", id="two-outputs"),
])
def test_cli_unmix_refuses_to_write_onto_the_cube(cube_dir, args, name):
    before = tree_digest(cube_dir)
    var = [] if args[0].startswith("scene.") else ["--var", "reflectance"]
    result = run_cli("unmix", args[0], "-k", "3", *var, *args[1:], "--overwrite",
                     "--max-iter", "3", cwd=cube_dir)
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


def test_a_rank_report_remembers_where_its_input_was(workdir, monkeypatch):
    from dnmf.rank import select_rank

    monkeypatch.chdir(workdir)
    opened = zarr.open_array("x.zarr", mode="r")
    by_path = select_rank("x.zarr", [2], 2, max_iter=5, scheduler="sync")
    by_array = select_rank(opened, [2], 2, max_iter=5, scheduler="sync")
    (workdir / "elsewhere").mkdir()
    monkeypatch.chdir(workdir / "elsewhere")  # a relative path would now name another place
    before = tree_digest(workdir)
    for report in (by_path, by_array):
        with pytest.raises(OutputError, match="is the input"):
            report.save(workdir / "x.zarr", overwrite=True)
    assert tree_digest(workdir) == before


def test_custom_initial_factors_read_from_the_output_are_inputs(workdir, model):
    from dnmf.io.result_store import open_result

    W, H, _ = open_result(model)  # W lazy on model.zarr
    before = tree_digest(workdir)
    with pytest.raises(OutputError, match="output .*model.zarr contains the initial W .*model.zarr/W"):
        dnmf.factorize(str(workdir / "x.zarr"), 3, init="custom", W_init=W, H_init=H,
                       out=model, overwrite=True)
    assert tree_digest(workdir) == before
