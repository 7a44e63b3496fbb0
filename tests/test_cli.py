"""The ``dnmf`` CLI: commands, progress, and one clear line for every kind of bad input.

In-process runs use typer's CliRunner; exit codes, stderr and signals are checked on real
subprocesses of the installed console script's entry point.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
import zarr
from typer.testing import CliRunner

import dnmf
from dnmf.cli import app
from tests.conftest import make_planted

runner = CliRunner()
DNMF = [sys.executable, "-c", "from dnmf.cli import main; main()"]


def run_cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DNMF_DEBUG", None)
    return subprocess.run([*DNMF, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, **kw)


@pytest.fixture
def good_zarr(tmp_path) -> Path:
    X = make_planted(400, 30, 3, dtype="float32")[0]
    path = tmp_path / "x.zarr"
    z = zarr.create_array(str(path), shape=X.shape, chunks=(100, 30), dtype="float32")
    z[...] = X
    return path


def _zarr(tmp_path: Path, values: np.ndarray, name: str = "bad.zarr") -> str:
    path = tmp_path / name
    z = zarr.create_array(str(path), shape=values.shape, chunks=values.shape or (1,),
                          dtype=values.dtype)
    z[...] = values
    return str(path)


def _negative(tmp_path):
    X = np.ones((100, 10), dtype="float32")
    X[60:62, 3] = -0.5
    path = tmp_path / "neg.zarr"
    z = zarr.create_array(str(path), shape=X.shape, chunks=(50, 10), dtype="float32")
    z[...] = X
    return [str(path), "-k", "2"], (
        r"X has 2 negative entries \(min -0.5\), the first at row 60, column 3 in chunk \(1, 0\)")


def _nan(tmp_path):
    X = np.ones((50, 10))
    X[3, 3] = np.nan
    X[4, 4] = np.inf
    return [_zarr(tmp_path, X), "-k", "2"], "X has 1 NaN and 1 Inf entries"


def _one_d(tmp_path):
    return [_zarr(tmp_path, np.ones(10)), "-k", "2"], "X must be 2-D"


def _three_d(tmp_path):
    return [_zarr(tmp_path, np.ones((4, 5, 6))), "-k", "2"], "X must be 2-D"


def _empty(tmp_path):
    return [_zarr(tmp_path, np.ones((0, 5))), "-k", "1"], "empty"


def _rank_zero(tmp_path):
    return [_zarr(tmp_path, np.ones((20, 5))), "-k", "0"], "rank k=0 is impossible"


def _rank_too_big(tmp_path):
    return [_zarr(tmp_path, np.ones((20, 5))), "-k", "6"], "rank k=6 is impossible"


def _missing_file(tmp_path):
    return [str(tmp_path / "nope.zarr"), "-k", "2"], "nope.zarr"


def _missing_var(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["counts"] = np.ones((10, 4))
        f["grp/other"] = np.ones((10, 4))
    return [str(path), "--var", "/missing", "-k", "2"], "counts"


def _garbled(tmp_path):
    path = tmp_path / "garbled.zarr"
    path.mkdir()
    (path / "zarr.json").write_text("{ this is not json")
    return [str(path), "-k", "2"], "garbled.zarr"


def _not_numeric(tmp_path):
    path = tmp_path / "strings.h5"
    with h5py.File(path, "w") as f:
        f["names"] = np.array([[b"a", b"b"], [b"c", b"d"]])
    return [str(path), "--var", "names", "-k", "1"], "non-numeric dtype string"


BAD_INPUTS = {
    "negative": _negative,
    "nan-inf": _nan,
    "one-d": _one_d,
    "three-d": _three_d,
    "empty": _empty,
    "rank-zero": _rank_zero,
    "rank-too-big": _rank_too_big,
    "missing-file": _missing_file,
    "missing-dataset": _missing_var,
    "garbled-store": _garbled,
    "not-numeric": _not_numeric,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_exit_1_no_output(tmp_path, case):
    args, message = BAD_INPUTS[case](tmp_path)
    out = tmp_path / "out.zarr"
    proc = run_cli("fit", *args, "-o", str(out), "--scheduler", "threads")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.zarr")]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_api_raises_same_message(tmp_path, case):
    import re

    args, message = BAD_INPUTS[case](tmp_path)
    var = args[args.index("--var") + 1] if "--var" in args else None
    rank = int(args[args.index("-k") + 1])
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        dnmf.factorize(args[0], rank, var=var, scheduler="threads")
    assert re.search(message, str(info.value))


def test_existing_output_needs_overwrite(tmp_path, good_zarr):
    out = tmp_path / "out.zarr"
    out.mkdir()
    proc = run_cli("fit", str(good_zarr), "-k", "3", "-o", str(out))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: output {out} already exists — pass --overwrite (overwrite=True) to replace it "
        "or choose another path"
    )


def test_unwritable_output_under_a_file(tmp_path, good_zarr):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    proc = run_cli("fit", str(good_zarr), "-k", "3", "-o", str(blocker / "out.zarr"))
    assert proc.returncode == 1 and "is a file, not a directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage_errors_exit_2():
    proc = run_cli("fit")
    assert proc.returncode == 2
    proc = run_cli("fit", "x.zarr", "-k", "2", "--solver", "newton")
    assert proc.returncode == 2 and "newton" in proc.stderr


def test_fit_writes_store_and_prints_plain_progress(tmp_path, good_zarr):
    out = tmp_path / "out.zarr"
    result = runner.invoke(app, ["fit", str(good_zarr), "-k", "3", "-o", str(out), "--seed", "1",
                                 "--max-iter", "25", "--tol", "0", "--scheduler", "threads"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    progress = [line for line in lines if line.startswith("iter ")]
    # not a terminal: the first iteration, every 10th and the last
    assert [line.split()[1] for line in progress] == ["1/25", "10/25", "20/25", "25/25"]
    assert "rel.err" in progress[0] and "s/it" in progress[0] and "ETA" in progress[0]
    assert any(line.startswith("plan: scheme: row-panel") for line in lines)
    # X is small: the plan keeps it in memory, and the progress line says so instead of GB/s
    assert "plan: X persisted in worker memory: 0 reads of storage per iteration" in lines
    assert "in memory" in progress[0]
    assert "stopped at max_iter after 25 iterations" in lines[-1] and str(out) in lines[-1]
    ds = xr.open_zarr(out)
    assert ds.attrs["seed"] == 1 and ds.attrs["n_iter"] == 25 and ds["W"].shape == (400, 3)


def test_fit_quiet_prints_nothing(tmp_path, good_zarr):
    result = runner.invoke(app, ["fit", str(good_zarr), "-k", "3", "-o", str(tmp_path / "o.zarr"),
                                 "--max-iter", "5", "--quiet", "--scheduler", "threads"])
    assert result.exit_code == 0 and result.output == ""


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, good_zarr):
    out = tmp_path / "out.zarr"
    result = runner.invoke(app, ["fit", str(good_zarr), "-k", "3", "-o", str(out), "--dry-run",
                                 "--scheduler", "local", "--workers", "2",
                                 "--memory-limit", "1GB"])
    assert result.exit_code == 0, result.output
    text = result.output
    for expected in ("scheme: row-panel", "per iteration", "memory per task",
                     "LocalCluster: 2 worker(s)", "(not started)", "W (400 x 3)",
                     "nothing was read or written"):
        assert expected in text, text
    assert not out.exists()


def test_dry_run_still_refuses_bad_parameters(tmp_path, good_zarr):
    result = runner.invoke(app, ["fit", str(good_zarr), "-k", "99", "--dry-run"])
    assert result.exit_code != 0


def test_info_reports_one_pass_facts(tmp_path):
    X = np.ones((100, 8), dtype="float32")
    X[5] = 0
    X[7, 2] = -1
    path = _zarr(tmp_path, X, "info.zarr")
    proc = run_cli("info", path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for expected in ("shape: 100 x 8", "dtype: float32", "negative entries: 1", "NaN: 0",
                     "all-zero rows: 1", "size on disk", "min / max: -1 / 1",
                     "usable for NMF: no"):
        assert expected in out, out


def test_missing_output_option_is_clear(good_zarr):
    proc = run_cli("fit", str(good_zarr), "-k", "2")
    assert proc.returncode == 1 and proc.stderr.startswith("error: no output given")


@pytest.mark.cluster
def test_planted_demo_runs_on_a_local_cluster(tmp_path):
    proc = run_cli("demo", "--planted", "--out", str(tmp_path / "demo"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    # the scheduler and its dashboard link are log lines (stderr); the results are stdout
    assert "LocalCluster" in proc.stderr and "dashboard" in proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    rel = float(last.split("relative error ")[1].split()[0])
    noise = float(last.split("noise level ")[1].split(")")[0])
    cosine = float(last.split("mean cosine ")[1].split(";")[0])
    assert rel < 1.2 * noise and cosine > 0.95
    assert xr.open_zarr(tmp_path / "demo" / "result.zarr")["H"].shape == (8, 300)


def _sigint_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_exits_130_keeps_a_checkpoint_and_resume_finishes(tmp_path, sig):
    X = make_planted(20_000, 100, 5, dtype="float32")[0]
    src = _zarr(tmp_path, X, "big.zarr")
    out = tmp_path / "out.zarr"
    args = [src, "-k", "5", "-o", str(out), "--tol", "0", "--scheduler", "threads", "--seed",
            "2", "--checkpoint-every", "3"]
    proc = subprocess.Popen(  # progress goes to stderr: read it there
        [*DNMF, "fit", *args, "--max-iter", "100000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # as from a terminal: a test run started in the background of a non-interactive
        # shell inherits SIGINT ignored, and Python then keeps ignoring Ctrl-C
        preexec_fn=_sigint_as_in_a_terminal,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # the marker: the progress line of iteration 10
        if line.startswith("iter ") and line.split()[1].startswith("10/"):
            break
        assert time.monotonic() < deadline, "no progress line"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted after iteration ") and "--resume" in last
    assert "Traceback" not in stderr
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["status"] == "interrupted"
    done = root["checkpoint"].attrs["iteration"]
    assert done >= 10
    resumed = run_cli("fit", *args, "--max-iter", str(done + 3), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from the checkpoint at iteration" in resumed.stderr  # a note: stderr
    ds = xr.open_zarr(out)
    assert ds.attrs["status"] == "complete" and ds.attrs["n_iter"] == done + 3


# --- losses, regularisation, missing values, sum-to-one; transform and reconstruct ----------


@pytest.fixture
def counts_zarr(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    X = rng.poisson(3.0 * rng.random((300, 3)) @ rng.random((3, 20))).astype("float32")
    path = tmp_path / "counts.zarr"
    zarr.create_array(str(path), shape=X.shape, chunks=(100, 20), dtype="float32")[...] = X
    return path


def test_fit_with_a_loss_and_regularisation_records_them(tmp_path, counts_zarr):
    out = tmp_path / "kl.zarr"
    res = runner.invoke(app, ["fit", str(counts_zarr), "-k", "3", "-o", str(out), "--loss",
                              "kullback-leibler", "--alpha-w", "0.01", "--l1-ratio", "1",
                              "--seed", "0", "--max-iter", "20", "-q"])
    assert res.exit_code == 0, res.output
    attrs = zarr.open_group(str(out), mode="r").attrs
    assert attrs["beta_loss"] == "kullback-leibler" and attrs["solver"] == "mu"
    assert attrs["alpha_W"] == 0.01 and attrs["l1_ratio"] == 1.0 and attrs["alpha_H"] == "same"
    model = dnmf.load(out)
    assert model.beta_loss == "kullback-leibler" and model.alpha_W == 0.01


def test_fit_loss_every_stores_nan_where_the_loss_was_skipped(tmp_path, counts_zarr):
    out = tmp_path / "kl.zarr"
    res = runner.invoke(app, ["fit", str(counts_zarr), "-k", "3", "-o", str(out), "--loss",
                              "kullback-leibler", "--loss-every", "4", "--seed", "0",
                              "--max-iter", "10", "--tol", "0"])
    assert res.exit_code == 0, res.output
    attrs = zarr.open_group(str(out), mode="r").attrs
    stored = attrs["loss_history"]
    assert len(stored) == 10 and [i for i, v in enumerate(stored) if v is not None] == [3, 7, 9]
    assert attrs["loss_every"] == 4
    # the progress line says so where the loss was skipped, and gives it where it was evaluated
    progress = {line.split()[1]: line for line in res.output.splitlines()
                if line.startswith("iter ")}
    assert "loss not evaluated" in progress["1/10"], res.output
    assert float(progress["10/10"].split("loss")[1].split()[0]) == pytest.approx(stored[9])
    history = np.array(dnmf.load(out).loss_history_, dtype=float)
    assert np.isfinite(history[[3, 7, 9]]).all() and np.isnan(history[[0, 1, 2, 4, 8]]).all()


def test_fit_loss_every_zero_is_one_line(counts_zarr, tmp_path):
    proc = run_cli("fit", str(counts_zarr), "-k", "3", "-o", str(tmp_path / "o.zarr"),
                   "--loss", "kullback-leibler", "--loss-every", "0")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: loss_every must be an integer >= 1")
    assert not (tmp_path / "o.zarr").exists()


def test_masked_fit_then_reconstruct_fills_the_missing(tmp_path):
    X = make_planted(300, 20, 3, dtype="float32")[0]
    X[np.random.default_rng(1).random(X.shape) < 0.1] = np.nan
    src = tmp_path / "nan.zarr"
    zarr.create_array(str(src), shape=X.shape, chunks=(100, 20), dtype="float32")[...] = X
    refused = run_cli("fit", str(src), "-k", "3", "-o", str(tmp_path / "r.zarr"))
    assert refused.returncode == 1 and "NaN" in refused.stderr and "--missing mask" in (
        refused.stderr)
    res = runner.invoke(app, ["fit", str(src), "-k", "3", "-o", str(tmp_path / "m.zarr"),
                              "--missing", "mask", "--seed", "0", "--max-iter", "50", "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["reconstruct", str(tmp_path / "m.zarr"), "-o",
                              str(tmp_path / "filled.zarr"), "--only-missing", str(src)])
    assert res.exit_code == 0, res.output
    n_missing = int(np.isnan(X).sum())
    assert f"{n_missing:,} missing entries filled" in res.output
    filled = zarr.open_group(str(tmp_path / "filled.zarr"), mode="r")["X"][...]
    assert not np.isnan(filled).any()
    np.testing.assert_array_equal(filled[~np.isnan(X)], X[~np.isnan(X)])


def test_explicit_mask_and_sum_to_one(tmp_path, counts_zarr):
    mask = tmp_path / "mask.npy"
    np.save(mask, (np.random.default_rng(2).random((300, 20)) > 0.1).astype(np.uint8))
    out = tmp_path / "s.zarr"
    res = runner.invoke(app, ["fit", str(counts_zarr), "-k", "3", "-o", str(out), "--mask",
                              str(mask), "--sum-to-one", "--seed", "0", "--max-iter", "100",
                              "-q"])
    assert res.exit_code == 0, res.output
    ds = xr.open_zarr(out)
    assert ds.attrs["missing"] == "mask" and ds.attrs["w_sum_to_one"] is True
    assert np.abs(ds["W"].values.sum(axis=1) - 1).max() < 2e-2


def test_transform_writes_a_store_with_the_models_h(tmp_path, counts_zarr):
    model = tmp_path / "model.zarr"
    assert runner.invoke(app, ["fit", str(counts_zarr), "-k", "3", "-o", str(model),
                               "--seed", "0", "--max-iter", "50", "-q"]).exit_code == 0
    out = tmp_path / "t.zarr"
    res = runner.invoke(app, ["transform", str(model), str(counts_zarr), "-o", str(out)])
    assert res.exit_code == 0, res.output
    fitted, new = dnmf.load(model), dnmf.load(out)
    np.testing.assert_array_equal(new.components_, fitted.components_)
    assert new.attrs_["transform_of"] == str(model)
    X = zarr.open_array(str(counts_zarr), mode="r")[...]
    err_new = np.linalg.norm(X - np.asarray(new.W_) @ new.components_)
    err_fit = np.linalg.norm(X - np.asarray(fitted.W_) @ fitted.components_)
    assert err_new <= err_fit * (1 + 1e-4)  # exact NNLS rows are at least as good
    again = run_cli("transform", str(model), str(counts_zarr), "-o", str(out))
    assert again.returncode == 1 and "already exists" in again.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--loss", "kullback-leibler", "--solver", "hals"], "supports only the Frobenius"),
    (["--loss", "itakura-saito"], "needs X > 0"),
    (["--loss", "poisson"], "unknown loss"),
    (["--missing", "mask", "--solver", "anls"], "missing values need multiplicative"),
    (["--alpha-h", "lots"], "--alpha-h must be a number"),
])
def test_variant_errors_are_one_line(tmp_path, counts_zarr, args, message):
    out = tmp_path / "o.zarr"
    proc = run_cli("fit", str(counts_zarr), "-k", "3", "-o", str(out), *args)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists()


def test_fit_with_restarts_reports_their_spread(good_zarr, tmp_path):
    out = tmp_path / "r.zarr"
    proc = run_cli("fit", str(good_zarr), "-k", "3", "-o", str(out), "--restarts", "4",
                   "--seed", "1", "--scheduler", "threads", "--max-iter", "50")
    assert proc.returncode == 0, proc.stderr
    assert "restarts: best " in proc.stdout and "of 4; final losses" in proc.stdout
    attrs = xr.open_zarr(out).attrs
    assert attrs["n_restarts"] == 4 and len(attrs["restart_losses"]) == 4
    assert min(attrs["restart_losses"]) == attrs["restart_losses"][attrs["best_restart"]]


def test_rank_survey_report_plots_and_last_line(tmp_path):
    from tests.test_rank import planted

    X = planted(600, 40, 3, seed=1).astype(np.float32)  # zero-mean noise: rank 3 exactly
    src = _zarr(tmp_path, X, "x.zarr")
    out, plots = tmp_path / "rank.zarr", tmp_path / "plots"
    proc = run_cli("rank", src, "--ks", "2:4", "--runs", "3", "-o", str(out), "--plots",
                   str(plots), "--scheduler", "threads", "--max-iter", "100")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "recommended k: 3"
    report = xr.open_zarr(out)
    assert report.attrs["recommended_k"] == 3 and report.attrs["criterion"] == "heldout_error"
    assert list(report["k"].values) == [2, 3, 4]
    for name in ("relative_error", "cophenetic", "dispersion", "silhouette", "heldout_error"):
        assert np.isfinite(report[name].values).all(), name
    assert len(list(plots.glob("*.png"))) >= 5
    bad = run_cli("rank", src, "--ks", "5:2", "-o", str(tmp_path / "r2.zarr"))
    assert bad.returncode == 1 and bad.stderr.startswith("error:")
