"""The CLI's conventions, on real subprocesses of the console entry point: ``--version``,
shell completion, stdout for results and stderr for progress, ``--json`` (one parseable
object per command, nothing else on stdout), ``info``'s sparsity, codec and plan, and the
package's public names."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import dnmf
from tests.conftest import make_planted

DNMF = [sys.executable, "-c", "from dnmf.cli import main; main()"]


def run_cli(*args: str, timeout: float = 300, env: dict | None = None,
            **kw) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    environ.pop("DNMF_DEBUG", None)
    return subprocess.run([*DNMF, *args], capture_output=True, text=True, timeout=timeout,
                          env=environ, **kw)


def only_json(proc: subprocess.CompletedProcess) -> dict:
    """stdout is exactly one JSON object (and nothing else)."""
    assert proc.returncode == 0, proc.stderr
    value = json.loads(proc.stdout)  # raises on anything but one JSON document
    assert isinstance(value, dict) and proc.stdout.strip().count("\n") == 0, proc.stdout
    return value


def check_schema(value: dict, schema: dict[str, type | tuple[type, ...]]) -> None:
    missing = set(schema) - set(value)
    assert not missing, f"keys missing: {sorted(missing)}"
    for key, kind in schema.items():
        assert isinstance(value[key], kind), (key, value[key], kind)


NUMBER = (int, float)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("conv") / "x.zarr"
    X = make_planted(300, 40, 3, dtype="float32")[0]
    arr = zarr.create_array(path, shape=X.shape, chunks=(100, 40), dtype="float32",
                            compressors=zarr.codecs.ZstdCodec(level=3))
    arr[:] = X
    return path


@pytest.fixture(scope="module")
def fitted(planted, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "fit.zarr"
    proc = run_cli("fit", str(planted), "-k", "3", "-o", str(out), "--seed", "0",
                   "--scheduler", "threads", "--max-iter", "30")
    assert proc.returncode == 0, proc.stderr
    return out


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout == f"dnmf {importlib.metadata.version('dnmf')}\n"
    assert proc.stdout.strip() == f"dnmf {dnmf.__version__}"


CONSOLE_SCRIPT = Path(sys.executable).parent / "dnmf"


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="the dnmf console script is not "
                    "installed beside this Python (pip install -e . puts it there)")
def test_shell_completion_script_and_completions():
    # completion is named after the program: run the installed console script itself
    env = {k: v for k, v in os.environ.items() if k != "DNMF_DEBUG"}
    # --show-completion names the shell it runs under (shellingham reads the process tree):
    # run it from bash, whatever started the tests
    proc = subprocess.run(["bash", "-c", f"'{CONSOLE_SCRIPT}' --show-completion"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "complete -o default -F _dnmf_completion dnmf" in proc.stdout
    assert "_DNMF_COMPLETE=complete_bash" in proc.stdout
    done = subprocess.run([str(CONSOLE_SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**env, "_DNMF_COMPLETE": "complete_bash",
                               "COMP_WORDS": "dnmf tra", "COMP_CWORD": "1"})
    assert done.returncode == 0 and done.stdout.split() == ["transform"]


def test_fit_results_on_stdout_progress_on_stderr(planted, tmp_path):
    proc = run_cli("fit", str(planted), "-k", "3", "-o", str(tmp_path / "f.zarr"), "--seed",
                   "0", "--scheduler", "threads", "--max-iter", "20", "--tol", "0")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("stopped at max_iter after 20 iterations")
    err = proc.stderr
    assert "scheduler: " in err and "plan: " in err and "iter    20/20" in err
    assert not any(line.startswith(("iter ", "plan: ", "scheduler: ")) for line in out)


def test_dry_run_and_info_reports_are_results(planted):
    dry = run_cli("fit", str(planted), "-k", "3", "--dry-run", "--scheduler", "threads")
    assert dry.returncode == 0 and dry.stdout.rstrip().endswith(
        "dry run: nothing was read or written") and dry.stderr == ""
    info = run_cli("info", str(planted), "--scheduler", "threads")
    assert info.returncode == 0 and info.stdout.rstrip().endswith("usable for NMF: yes")
    assert info.stderr == ""


def test_fit_json(planted, tmp_path):
    out = tmp_path / "f.zarr"
    value = only_json(run_cli("fit", str(planted), "-k", "3", "-o", str(out), "--seed", "0",
                              "--scheduler", "threads", "--max-iter", "25", "--json"))
    check_schema(value, {"path": str, "n_components": int, "n_iter": int, "converged": bool,
                         "stop_reason": str, "relative_error": float,
                         "reconstruction_err": float, "wall_time_s": float, "solver": str,
                         "beta_loss": str, "init": str, "seed": int, "n_restarts": int,
                         "best_restart": int, "restart_losses": list, "scheduler": str,
                         "notes": list})
    assert value["path"] == str(out) and value["n_components"] == 3 and value["seed"] == 0
    assert value["n_iter"] == dnmf.load(out).n_iter_ and value["solver"] == "hals"


def test_fit_dry_run_json(planted):
    value = only_json(run_cli("fit", str(planted), "-k", "3", "--dry-run", "--json",
                              "--scheduler", "threads"))
    check_schema(value, {"dry_run": bool, "input": dict, "scheduler": str, "solver": str,
                         "init": str, "plan": dict})
    assert value["input"]["shape"] == [300, 40] and value["plan"]["n_panels"] >= 1


def test_transform_json(fitted, planted, tmp_path):
    out = tmp_path / "t.zarr"
    value = only_json(run_cli("transform", str(fitted), str(planted), "-o", str(out),
                              "--scheduler", "threads", "--json"))
    check_schema(value, {"path": str, "model": str, "input": str, "n_samples": int,
                         "n_components": int})
    assert value == {"path": str(out), "model": str(fitted), "input": str(planted),
                     "n_samples": 300, "n_components": 3}


def test_info_json_reports_codec_sparsity_and_the_plan(planted):
    value = only_json(run_cli("info", str(planted), "-k", "3", "--json",
                              "--scheduler", "threads"))
    check_schema(value, {"path": str, "format": str, "shape": list, "dtype": str,
                         "sparse": bool, "codec": str, "chunk_count": int, "chunk_shape": list,
                         "nbytes": int, "min": NUMBER, "max": NUMBER, "n_negative": int,
                         "n_nan": int, "frobenius_norm": float, "usable": bool, "plan": dict})
    assert value["shape"] == [300, 40] and value["sparse"] is False and value["usable"]
    assert value["codec"].startswith("ZstdCodec(level=3") and value["stored_chunks"] == [100, 40]
    assert value["plan"]["rank"] == 3 and value["nnz"] is None and value["problem"] is None


def test_info_names_a_sparse_matrix_and_its_nonzeros(tmp_path):
    X = sp.random(200, 50, density=0.1, format="csr", random_state=0, dtype=np.float32)
    path = tmp_path / "x.npz"
    sp.save_npz(path, X)
    proc = run_cli("info", str(path), "--scheduler", "threads")
    assert proc.returncode == 0, proc.stderr
    assert f"sparse: yes (CSR), {X.nnz:,} non-zeros (10.00%)" in proc.stdout
    assert "fit plan (k = 10" in proc.stdout


@pytest.mark.parametrize("args", [
    ("fit", "missing.zarr", "-k", "3", "-o", "out.zarr", "--json"),
    ("info", "missing.zarr", "--json"),
    ("fit", "x.zarr", "-k", "3", "-o", "x.zarr", "--json"),  # the output is the input
])
def test_json_adds_nothing_to_stdout_when_it_fails(planted, tmp_path, args):
    args = tuple(str(planted) if a == "x.zarr" else a for a in args)
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def test_dir_lists_the_public_names():
    names = dir(dnmf)
    assert set(dnmf.__all__) <= set(names)
    assert {"NMF", "factorize", "load", "select_rank", "__version__"} <= set(names)
    assert dnmf.__doc__ and "factorize" in dnmf.__doc__


def test_rank_json_is_one_object_and_the_edge_warning_goes_to_stderr(tmp_path):
    from tests.test_rank import planted

    X = planted(600, 40, 3, seed=1).astype(np.float32)  # rank 3: the top of ks 2:3
    path = tmp_path / "x.npy"
    np.save(path, X)
    proc = run_cli("rank", str(path), "--ks", "2:3", "--runs", "3", "--scheduler", "threads",
                   "--max-iter", "100", "--json")
    value = only_json(proc)
    check_schema(value, {"recommended_k": int, "warnings": list, "criterion": str, "ks": list,
                         "heldout_error": list, "heldout_error_se": list,
                         "heldout_error_runs": list, "relative_error": list, "cophenetic": list,
                         "dispersion": list, "silhouette": list, "elbow_k": int, "n_runs": int,
                         "wall_time_s": float, "plots": list})
    assert value["ks"] == [2, 3] and value["recommended_k"] == 3 and value["report"] is None
    assert len(value["heldout_error_runs"]) == 2 and len(value["heldout_error_runs"][0]) == 3
    assert any("largest surveyed" in w for w in value["warnings"])
    assert "warning: recommended k is the largest surveyed" in proc.stderr
