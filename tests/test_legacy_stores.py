"""Result stores written by an older dnmf (``tests/data/legacy/``, made by ``make_legacy.py``
there with the code before the pipeline refactor, commit 09191ab) still open, transform,
reconstruct, score and resume with the current code.

The fixtures are read in place and never written: a store a test resumes or writes next to is
copied into ``tmp_path`` first, and ``legacy_unchanged`` fails the module if any file of
``tests/data/legacy/`` changed. What the stores hold is compared bit for bit (reading stored
bytes involves no arithmetic); what the current code computes from them is compared within the
tolerances derived in ``tests/test_golden.py``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import dnmf
from dnmf.hyperspectral.metrics import format_score, open_dataset, score
from dnmf.reconstruct import reconstruct, write_reconstruction
from tests.test_golden import EPS, SAFETY, component_error, factor_rtol, loss_rtol, loss_scale

LEGACY = Path(__file__).parent / "data" / "legacy"


def expected(name: str) -> dict:
    with np.load(LEGACY / f"{name}.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module", autouse=True)
def legacy_unchanged():
    """No test modifies the fixtures (a resume or a write goes to a copy in tmp_path)."""
    before = _digest(LEGACY)
    yield
    assert _digest(LEGACY) == before, f"a test modified the fixtures in {LEGACY}"


def copy_store(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(LEGACY / name, target)
    return target


# --- (a) a complete fit ------------------------------------------------------------------------


def test_fit_store_loads_with_what_was_written():
    e = expected("fit")
    model = dnmf.load(LEGACY / "fit.zarr")
    np.testing.assert_array_equal(model.components_, e["H"])
    np.testing.assert_array_equal(np.asarray(model.W_), e["W"])
    assert model.n_components_ == int(e["rank"]) and model.n_features_in_ == e["X"].shape[1]
    assert model.n_iter_ == int(e["n_iter"])
    np.testing.assert_array_equal(model.loss_history_, e["loss_history"])
    call = json.loads(str(e["call"]))
    assert model.attrs_["status"] == "complete"
    assert model.attrs_["solver"] == call["solver"] and model.attrs_["seed"] == 0
    assert model.attrs_["schema_version"] == 1


def test_fit_store_transforms_new_rows():
    e = expected("fit")
    W = np.asarray(dnmf.load(LEGACY / "fit.zarr").transform(e["X"]))
    assert W.shape == e["transform"].shape and (W >= 0).all()
    # one exact NNLS solve per row with H fixed: n_iter = 1 in the golden tolerance
    rtol = factor_rtol(e["transform"], e["H"], 1)
    assert component_error(W, e["transform"], axis=0) <= rtol


def test_fit_store_reconstructs(tmp_path):
    e = expected("fit")
    model = dnmf.load(LEGACY / "fit.zarr")
    WH = e["W"] @ e["H"]
    # sums of k non-negative products: at most k * eps relative, in any order
    rtol = SAFETY * int(e["rank"]) * EPS
    np.testing.assert_allclose(np.asarray(reconstruct(model.W_, model.components_)), WH,
                               rtol=rtol, atol=0)
    rows, cols = np.array([0, 7, 119]), slice(5, 25)
    np.testing.assert_allclose(np.asarray(reconstruct(model.W_, model.components_, rows, cols)),
                               WH[rows, cols], rtol=rtol, atol=0)

    path, n_filled = write_reconstruction(LEGACY / "fit.zarr", tmp_path / "wh.zarr",
                                          scheduler="threads")
    assert n_filled == WH.size
    np.testing.assert_allclose(zarr.open_array(f"{path}/X", mode="r")[...], WH, rtol=rtol, atol=0)

    # --only-missing: the input's values kept bit for bit, its NaN filled from W H
    X = e["X"].copy()
    holes = np.zeros(X.shape, dtype=bool)
    holes[::7, ::3] = True
    X[holes] = np.nan
    path, n_filled = write_reconstruction(LEGACY / "fit.zarr", tmp_path / "filled.zarr",
                                          only_missing=X, scheduler="threads")
    assert n_filled == int(holes.sum())
    filled = zarr.open_array(f"{path}/X", mode="r")[...]
    np.testing.assert_array_equal(filled[~holes], X[~holes])
    np.testing.assert_allclose(filled[holes], WH[holes], rtol=rtol, atol=0)


# --- (b) a complete unmixing -------------------------------------------------------------------


def test_unmix_store_reads_back_what_was_written():
    e = expected("unmix")
    for stored in (xr.open_zarr(LEGACY / "unmix.zarr"), open_dataset(LEGACY / "unmix.zarr")):
        for name in ("endmembers", "abundances", "residual_rmse"):
            np.testing.assert_array_equal(stored[name].values, e[name])  # NaN where NaN
        assert stored.attrs["status"] == "complete" and stored.attrs["kind"] == "unmixing"
        assert stored.attrs["n_endmembers"] == e["endmembers"].shape[0]
        assert stored.attrs["sum_to_one"] is True
        assert stored.attrs["n_iter"] == int(e["n_iter"])
        np.testing.assert_array_equal(stored.attrs["loss_history"], e["loss_history"])
    A = e["abundances"]
    valid = ~np.isnan(A[0])
    assert valid.any() and (~valid).any()  # the scene's no-data corner
    assert (A[:, valid] >= -1e-6).all()
    np.testing.assert_allclose(A[:, valid].sum(axis=0), 1.0, atol=1e-4)


def test_unmix_store_scores_against_the_truth():
    e = expected("unmix")
    saved = json.loads(str(e["score"]))
    report = score(open_dataset(LEGACY / "unmix.zarr"), open_dataset(LEGACY / "truth.zarr"))
    assert [(p["estimated"], p["reference"]) for p in report["matching"]] == [
        (p["estimated"], p["reference"]) for p in saved["matching"]]
    assert report["n_estimated"] == saved["n_estimated"] == e["endmembers"].shape[0]
    assert not report["unmatched_reference"] and not report["unmatched_estimated"]
    # the same stored float32 arrays, scored in float64: angles from dot products over the
    # bands, rounded to n_bands * eps relative, an angle t moves by that over sin(t); the RMSE
    # sums squares over the pixels
    n_bands = e["endmembers"].shape[1]
    sad = np.asarray(saved["sad_rad"])
    np.testing.assert_allclose(report["sad_rad"], sad,
                               rtol=SAFETY * n_bands * EPS / np.sin(sad).min())
    n_pixels = int((~np.isnan(e["abundances"][0])).sum())
    assert report["abundance_rmse"] == pytest.approx(saved["abundance_rmse"],
                                                     rel=SAFETY * n_pixels * EPS)
    assert format_score(report)[0].startswith("mean spectral angle")


# --- (c) an interrupted fit, resumed -----------------------------------------------------------


def test_checkpoint_store_resumes_to_the_uninterrupted_fit(tmp_path):
    e = expected("checkpoint")
    call = json.loads(str(e["call"]))
    done = int(e["checkpoint_iteration"])
    root = zarr.open_group(str(LEGACY / "checkpoint.zarr"), mode="r")
    assert root.attrs["status"] == "interrupted" and "checkpoint" in root

    out = copy_store("checkpoint.zarr", tmp_path)
    result = dnmf.factorize(e["X"], int(e["rank"]), out=out, resume=True, **call)
    assert f"resumed from the checkpoint at iteration {done}" in result.notes
    assert result.n_iter == int(e["n_iter"]) == call["max_iter"]
    W, H = np.asarray(result.W), np.asarray(result.H)
    rtol = factor_rtol(e["W"], e["H"], int(e["n_iter"]))
    assert component_error(W, e["W"], axis=0) <= rtol
    assert component_error(H, e["H"], axis=1) <= rtol
    history = np.asarray(result.loss_history)
    # the iterations before the checkpoint are the store's own record (written by the same
    # machine as the uninterrupted run): bit for bit; the rest within the golden tolerance
    np.testing.assert_array_equal(history[:done], e["loss_history"][:done])
    tol = loss_rtol(e["loss_history"], loss_scale(e["X"]), max(e["X"].shape), rtol)
    err = np.abs(history - e["loss_history"]) / e["loss_history"]
    assert (err <= tol).all(), (err / tol).max()
    # the resumed store is complete, and what the fit returned
    model = dnmf.load(out)
    assert model.attrs_["status"] == "complete" and model.n_iter_ == result.n_iter
    np.testing.assert_array_equal(model.components_, H)
