"""The functional API: factorize, the result store, load, transform, and its errors."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

import dnmf
from dnmf import api
from dnmf.errors import InputError, OutputError
from tests.conftest import make_planted


@pytest.fixture
def X():
    return make_planted(200, 40, 4, dtype="float32")[0]


def test_numpy_in_numpy_out(X):
    result = dnmf.factorize(X, 4, random_state=0, max_iter=50)
    assert isinstance(result.W, np.ndarray) and result.W.shape == (200, 4)
    assert result.H.shape == (4, 40) and result.relative_error < 0.05
    assert result.reconstruction_err == pytest.approx(
        np.linalg.norm(X.astype(np.float64) - result.W.astype(np.float64) @ result.H), rel=1e-3
    )


def test_dask_in_dask_out(X):
    result = dnmf.factorize(da.from_array(X, chunks=(50, 40)), 4, random_state=0, max_iter=20,
                             min_panel_bytes=0)
    assert isinstance(result.W, da.Array) and result.W.chunks[0] == (50, 50, 50, 50)


def test_components_ordered_by_contribution(X):
    result = dnmf.factorize(X, 4, random_state=0, max_iter=50)
    contribution = np.linalg.norm(result.W, axis=0) * np.linalg.norm(result.H, axis=1)
    assert (np.diff(contribution) <= 1e-6 * contribution[0]).all()


def test_result_store_layout_and_load(tmp_path, X):
    out = tmp_path / "res.zarr"
    result = dnmf.factorize(X, 4, random_state=5, max_iter=30, out=out)
    assert result.path == str(out)
    root = zarr.open_group(str(out), mode="r")
    attrs = dict(root.attrs)
    assert attrs["status"] == "complete" and attrs["schema_version"] == 1
    for key in ("dnmf_version", "solver", "beta_loss", "n_components", "init", "seed", "n_iter",
                "converged", "relative_error", "loss_history", "input", "wall_time_s"):
        assert key in attrs
    assert attrs["seed"] == 5 and attrs["n_components"] == 4
    assert attrs["input"]["shape"] == [200, 40]
    ds = xr.open_zarr(out)
    assert ds["W"].dims == ("sample", "component") and ds["H"].dims == ("component", "feature")
    np.testing.assert_allclose(ds["H"].values, result.H)
    np.testing.assert_allclose(ds["W"].values, np.asarray(result.W))
    model = dnmf.load(out)
    np.testing.assert_allclose(model.components_, result.H)
    assert model.n_iter_ == result.n_iter
    assert model.reconstruction_err_ == pytest.approx(result.reconstruction_err)
    np.testing.assert_allclose(model.W_.compute(), np.asarray(result.W))
    # the model transforms new rows with H fixed
    W_new = model.transform(X[:10])
    assert W_new.shape == (10, 4)


def test_existing_output_refused_before_any_work(tmp_path, X):
    out = tmp_path / "res.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputError, match="already exists — pass --overwrite"):
        dnmf.factorize(X, 4, out=out)
    assert (out / "keep.txt").read_text() == "precious"
    dnmf.factorize(X, 4, out=out, overwrite=True, max_iter=5)
    assert not (out / "keep.txt").exists()
    assert zarr.open_group(str(out), mode="r").attrs["status"] == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["res.zarr"]  # no temp dirs left behind


def test_output_under_a_regular_file_is_refused(tmp_path, X):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        dnmf.factorize(X, 4, out=blocker / "res.zarr")


def test_failed_run_leaves_no_output(tmp_path, X):
    bad = X.copy()
    bad[3, 3] = -1
    out = tmp_path / "res.zarr"
    with pytest.raises(InputError, match="negative"):
        dnmf.factorize(bad, 4, out=out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(rank=0), "rank k=0 is impossible"),
        (dict(rank=41), "rank k=41 is impossible"),
        (dict(rank=2.5), "must be an integer"),
        (dict(rank=3, solver="newton"), "unknown solver 'newton'"),
        (dict(rank=3, init="magic"), "unknown init 'magic'"),
        (dict(rank=3, max_iter=0), "max_iter must be an integer >= 1"),
        (dict(rank=3, tol=-1.0), "tol must be a number >= 0"),
        (dict(rank=3, beta_loss="kullback-leibler", solver="anls"), "only the Frobenius"),
        (dict(rank=3, random_state=-4), "random_state must be >= 0"),
        (dict(rank=3, alpha_W=-1.0), "alpha_W must be a number >= 0"),
        (dict(rank=3, init="custom"), "needs W_init and H_init"),
    ],
)
def test_parameter_errors(X, kwargs, message):
    rank = kwargs.pop("rank")
    with pytest.raises(InputError, match=message):
        dnmf.factorize(X, rank, scheduler="threads", **kwargs)


def test_custom_init_shape_errors(X):
    with pytest.raises(InputError, match=r"H_init has shape \(3, 40\), expected"):
        dnmf.factorize(X, 4, W_init=np.ones((200, 4)), H_init=np.ones((3, 40)))


@pytest.mark.parametrize("init", ["random", "nndsvd", "nndsvda", "nndsvdar"])
def test_every_init_converges(X, init):
    result = dnmf.factorize(X, 4, init=init, random_state=0, max_iter=200, tol=1e-6)
    assert result.init == init
    assert result.relative_error < 0.05


def test_nndsvd_is_a_better_start_than_random(X):
    a = dnmf.factorize(X, 4, init="nndsvd", random_state=0, max_iter=1)
    b = dnmf.factorize(X, 4, init="random", random_state=0, max_iter=1)
    assert a.loss_history[0] < b.loss_history[0]


def test_max_time_stops_early(X):
    result = dnmf.factorize(X, 4, max_iter=100_000, tol=0.0, max_time=0.5)
    assert result.stop_reason == "max_time" and not result.converged
    assert result.n_iter < 100_000


def test_path_inputs_zarr_and_npy(tmp_path, X):
    np.save(tmp_path / "x.npy", X)
    z = zarr.create_array(str(tmp_path / "x.zarr"), shape=X.shape, chunks=(50, 40),
                          dtype="float32")
    z[...] = X
    a = dnmf.factorize(str(tmp_path / "x.npy"), 4, random_state=0, max_iter=10, tol=0)
    b = dnmf.factorize(str(tmp_path / "x.zarr"), 4, random_state=0, max_iter=10, tol=0)
    assert a.relative_error == pytest.approx(b.relative_error, rel=1e-4)


def test_integer_input_becomes_float32_with_a_note():
    X = np.random.default_rng(0).poisson(5.0, size=(100, 20)).astype(np.int32)
    result = dnmf.factorize(X, 3, random_state=0, max_iter=10)
    assert result.H.dtype == np.float32
    assert any("float32" in note for note in result.notes)


def test_callback_sees_each_iteration(X):
    seen = []
    dnmf.factorize(X, 4, max_iter=7, tol=0.0, callback=seen.append)
    assert [i.iteration for i in seen] == list(range(1, 8))
    assert all(i.relative_error > 0 and i.seconds >= 0 for i in seen)


@pytest.mark.cluster
def test_persisted_x_on_cluster_agrees_with_streaming(tmp_path, local_client, X):
    path = str(tmp_path / "x.zarr")
    z = zarr.create_array(path, shape=X.shape, chunks=(50, 40), dtype="float32")
    z[...] = X
    kw = dict(random_state=0, max_iter=15, tol=0.0, client=local_client)
    plans = []
    a = dnmf.factorize(path, 4, persist_x=True, on_plan=lambda p, c: plans.append(p), **kw)
    b = dnmf.factorize(path, 4, persist_x=False, on_plan=lambda p, c: plans.append(p), **kw)
    assert plans[0].persist_x and not plans[1].persist_x
    np.testing.assert_allclose(a.H, b.H, rtol=1e-6)
    assert os.path.exists(path)


@pytest.mark.parametrize("loss", ["frobenius", "kullback-leibler"])
def test_w_streamed_through_zarr_gives_the_persisted_result(tmp_path, loss):
    """persist_w=False: W lives in a Zarr scratch store between iterations (for W larger than
    the workers' memory); the iterates are the same, and the scratch store is removed."""
    X = make_planted(600, 30, 4, dtype="float64")[0]
    Xd = da.from_array(X, chunks=(100, 30))
    kw = dict(beta_loss=loss, init="random", random_state=0, max_iter=8, tol=0,
              min_panel_bytes=0, scheduler="threads")
    kept = dnmf.factorize(Xd, 4, **kw)
    streamed = dnmf.factorize(Xd, 4, persist_w=False, out=tmp_path / "r.zarr",
                              checkpoint_every=3, **kw)
    assert streamed.plan.w_in_store and "Zarr scratch store" in streamed.plan.describe()[-1]
    np.testing.assert_allclose(streamed.H, kept.H, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(streamed.W), np.asarray(kept.W), rtol=1e-10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]  # scratch removed


def test_scipy_input_gives_numpy_w():
    import scipy.sparse as sp

    X = sp.random(120, 30, density=0.3, format="csr", dtype=np.float32, random_state=0)
    result = dnmf.factorize(X, 3, random_state=0, max_iter=5, scheduler="threads")
    assert isinstance(result.W, np.ndarray) and result.W.shape == (120, 3)
    dense = dnmf.factorize(X.toarray(), 3, random_state=0, max_iter=5, scheduler="threads")
    np.testing.assert_allclose(result.W, dense.W, rtol=1e-4, atol=1e-6)


def test_an_in_memory_fit_imports_neither_distributed_nor_h5py():
    """In-process fits stay light: dask resolves a scheduler *name* by importing distributed
    (~13 MB), and h5py (~11 MB) is only needed to open an HDF5 file."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, dnmf\n"
        "X = np.random.default_rng(0).random((200, 20))\n"
        "dnmf.factorize(X, 3, max_iter=3, random_state=0)\n"
        "dnmf.factorize(X, 3, max_iter=3, random_state=0, scheduler='sync')\n"
        "print(sorted(m for m in ('distributed', 'h5py') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_transform_of_a_small_numpy_x_equals_the_graphs():
    """A small numpy X is transformed here by the graph's panel kernel, with the same checks:
    the same W as through the graph, bit for bit, and the same refusal of bad values."""
    rng = np.random.default_rng(4)
    X = rng.random((50, 9))
    H = rng.random((3, 9))
    here = api.transform_rows(X, H)
    graph = api.transform_rows(da.from_array(X, chunks=X.shape), H).compute()
    assert isinstance(here, np.ndarray)
    np.testing.assert_array_equal(here, graph)
    X[4, 2] = -1.0
    with pytest.raises(InputError, match="1 negative entries"):
        api.transform_rows(X, H)


# --- loss_every: the loss of β-divergence and masked fits every N-th iteration ----------------


@pytest.fixture
def counts():
    rng = np.random.default_rng(3)
    return rng.poisson(4.0 * rng.random((150, 3)) @ rng.random((3, 30))).astype(np.float64)


@pytest.mark.parametrize("where", ["in-process", "panels", "restarts"])
def test_loss_every_skips_the_loss_only(counts, where):
    # in-process: the panel task on the whole X; panels: the dask graph of 5 row panels;
    # restarts: the stacked step of two restarts
    options = {"in-process": {"scheduler": "threads"},
               "panels": {"scheduler": "sync", "min_panel_bytes": 0},
               "restarts": {"scheduler": "sync", "n_restarts": 2}}[where]
    X = counts if where == "in-process" else da.from_array(counts, chunks=(30, 30))
    runs = {n: dnmf.factorize(X, 3, beta_loss="kullback-leibler", random_state=0,
                              max_iter=23, tol=0, loss_every=n, **options) for n in (1, 5)}
    every, fifth = runs[1], runs[5]
    np.testing.assert_array_equal(np.asarray(every.W), np.asarray(fifth.W))
    np.testing.assert_array_equal(every.H, fifth.H)
    history = np.array(fifth.loss_history)
    evaluated = [4, 9, 14, 19, 22]  # every 5th iteration and the last (0-based entries)
    assert len(history) == 23 == fifth.n_iter
    assert np.isfinite(history[evaluated]).all()
    assert np.isnan(np.delete(history, evaluated)).all()
    # the same code computes the evaluated losses: the same numbers
    np.testing.assert_array_equal(history[evaluated], np.array(every.loss_history)[evaluated])
    assert fifth.restart_losses == every.restart_losses


def test_loss_every_on_a_masked_frobenius_fit(counts):
    X = counts.copy()
    X[np.random.default_rng(0).random(X.shape) < 0.1] = np.nan
    runs = [dnmf.factorize(X, 3, missing="mask", random_state=0, max_iter=10, tol=0,
                           loss_every=n, scheduler="threads") for n in (1, 3)]
    np.testing.assert_array_equal(runs[0].W, runs[1].W)
    np.testing.assert_array_equal(runs[0].H, runs[1].H)
    assert np.isnan(runs[1].loss_history[:2]).all() and np.isfinite(runs[1].loss_history[2])
    # Frobenius without missing values: the loss is free, every iteration has it
    plain = dnmf.factorize(counts, 3, random_state=0, max_iter=10, tol=0, loss_every=3)
    assert np.isfinite(plain.loss_history).all()


def test_loss_every_still_stops_on_tol_near_the_same_loss(counts):
    every = dnmf.factorize(counts, 3, beta_loss="kullback-leibler", random_state=0,
                           max_iter=2000, tol=1e-6, loss_every=1, scheduler="threads")
    tenth = dnmf.factorize(counts, 3, beta_loss="kullback-leibler", random_state=0,
                           max_iter=2000, tol=1e-6, loss_every=10, scheduler="threads")
    assert every.converged and tenth.converged and tenth.stop_reason == "tol"
    # it stops at an evaluated iteration, at most one window after the every-iteration test:
    # the mean decrease over the window is at least the last one's (MU's loss flattens)
    assert tenth.n_iter % 10 == 0 and every.n_iter <= tenth.n_iter <= every.n_iter + 10
    assert np.isfinite(tenth.loss_history[-1])
    # past the stop, decreases of < 1e-6 per iteration over < 20 iterations: below 1e-4
    assert tenth.restart_losses[0] == pytest.approx(every.restart_losses[0], rel=1e-4)


def test_loss_every_must_be_a_positive_integer(counts):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="loss_every must be an integer >= 1"):
            dnmf.factorize(counts, 3, beta_loss="kullback-leibler", loss_every=bad)


def test_loss_every_checkpoint_resumes_with_its_nan_entries(tmp_path, counts):
    from dnmf.solvers import Interrupted

    out = tmp_path / "kl.zarr"
    options = dict(beta_loss="kullback-leibler", random_state=0, max_iter=12, tol=0,
                   loss_every=3, checkpoint_every=4)

    def interrupt(info):
        if info.iteration == 5:  # a skipped loss: the checkpoint ends with NaN
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        dnmf.factorize(counts, 3, out=out, callback=interrupt, **options)
    resumed = dnmf.factorize(counts, 3, out=out, resume=True, **options)
    straight = dnmf.factorize(counts, 3, **options)
    np.testing.assert_array_equal(np.asarray(resumed.W), np.asarray(straight.W))
    np.testing.assert_array_equal(resumed.H, straight.H)
    history = np.array(resumed.loss_history)
    # every 3rd, the checkpoints' (4, 8) and the last
    evaluated = [2, 3, 5, 7, 8, 11]
    assert np.isfinite(history[evaluated]).all()
    assert np.isnan(np.delete(history, evaluated)).all()
