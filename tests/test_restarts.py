"""Restarts: R factorizations batched into one pass over X per iteration, best one kept.

The batched restart r must be the single fit ``factorize(X, k, init="random",
random_state=restart_seeds[r])`` — same iterates, same final loss — while X is read once per
iteration whatever R is.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

import dnmf
from dnmf.api import restart_seeds
from dnmf.errors import InputError
from dnmf.solvers import Interrupted
from tests.conftest import make_planted

KW = dict(scheduler="threads", min_panel_bytes=0, persist_x=False)


@pytest.fixture(scope="module")
def X():
    return make_planted(240, 30, 4, noise=0.05, dtype="float64")[0]


def panels(X, rows=80):
    return da.from_array(X, chunks=(rows, X.shape[1]))


def separate_fits(X, k, seeds, **kw):
    """Restart r run alone: a plain single fit from its seed."""
    return [dnmf.factorize(panels(X), k, init="random", random_state=s, **{**KW, **kw})
            for s in seeds]


@pytest.mark.parametrize(("solver", "beta"), [("hals", 2.0), ("mu", 2.0), ("mu", 1.0)])
def test_x_is_read_once_per_iteration_for_1_and_10_restarts(logged_zarr, solver, beta):
    """Store reads between consecutive iterations, counted through the public API."""
    _, store, Xd = logged_zarr
    per_iteration = {}
    for R in (1, 10):
        marks: list[int] = []
        dnmf.factorize(Xd, 4, solver=solver, beta_loss=beta, n_restarts=R, init="random",
                       random_state=0, max_iter=5, tol=0.0,
                       callback=lambda info, marks=marks: marks.append(store.counter["get"]),
                       **KW)
        per_iteration[R] = np.diff(marks).tolist()
    assert per_iteration[1] == per_iteration[10] == [Xd.numblocks[0]] * 4  # 6 chunks


@pytest.mark.parametrize("solver", ["hals", "mu", "anls"])
def test_batched_restarts_equal_the_seeds_run_separately(X, solver):
    R = 3
    result = dnmf.factorize(panels(X), 4, solver=solver, n_restarts=R, random_state=7,
                            max_iter=20, tol=0.0, **KW)
    assert result.n_restarts == R and result.restart_seeds == restart_seeds(7, R)
    assert result.restart_seeds[0] == 7 and len(set(result.restart_seeds)) == R
    alone = separate_fits(X, 4, result.restart_seeds, solver=solver, max_iter=20, tol=0.0)
    np.testing.assert_allclose(result.restart_losses, [a.loss_history[-1] for a in alone],
                               rtol=1e-6)
    best = int(np.argmin([a.loss_history[-1] for a in alone]))
    assert result.best_restart == best
    assert result.init == "random"  # the default with restarts
    np.testing.assert_allclose(result.H, alone[best].H, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(result.W, alone[best].W, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(result.loss_history, alone[best].loss_history, rtol=1e-6)
    assert result.relative_error == pytest.approx(alone[best].relative_error, rel=1e-6)
    # the best of R is never worse than restart 0 (the single fit from random_state)
    assert result.restart_losses[result.best_restart] <= result.restart_losses[0]
    np.testing.assert_allclose(result.restart_H[best], alone[best].H, rtol=1e-6, atol=1e-10)


def test_each_restart_stops_on_its_own_tol(X):
    """A converged restart is frozen: its iterations and final loss are those of the single fit
    stopping at the same tolerance; the batch runs until the slowest one stops."""
    result = dnmf.factorize(panels(X), 4, solver="hals", n_restarts=3, random_state=3,
                            max_iter=200, tol=1e-3, **KW)
    alone = separate_fits(X, 4, result.restart_seeds, solver="hals", max_iter=200, tol=1e-3)
    assert result.restart_n_iter == [a.n_iter for a in alone]
    assert len(set(result.restart_n_iter)) > 1  # the test means something
    np.testing.assert_allclose(result.restart_losses, [a.loss_history[-1] for a in alone],
                               rtol=1e-6)
    assert result.converged and result.n_iter == result.restart_n_iter[result.best_restart]


@pytest.mark.parametrize("kw", [
    dict(beta_loss="kullback-leibler"),
    dict(missing="mask"),
    dict(beta_loss="kullback-leibler", missing="mask", w_sum_to_one=True),
    dict(w_sum_to_one=True, solver="hals"),
], ids=["kl", "masked", "kl-masked-sum-to-one", "sum-to-one"])
def test_other_losses_missing_values_and_sum_to_one_are_batched_too(X, kw):
    Xn = X.copy()
    if kw.get("missing") == "mask":
        Xn[::7, ::5] = np.nan
    result = dnmf.factorize(panels(Xn), 4, n_restarts=3, random_state=2, max_iter=10, tol=0.0,
                            **kw, **KW)
    alone = separate_fits(Xn, 4, result.restart_seeds, max_iter=10, tol=0.0, **kw)
    finals = [a.reconstruction_err**2 / (1 if kw.get("beta_loss") is None else 2) for a in alone]
    np.testing.assert_allclose(result.restart_losses, finals, rtol=1e-6)
    np.testing.assert_allclose(result.restart_relative_errors,
                               [a.relative_error for a in alone], rtol=1e-6)
    np.testing.assert_allclose(result.H, alone[result.best_restart].H, rtol=1e-6, atol=1e-10)


def test_explicit_init_is_restart_zero(X):
    result = dnmf.factorize(panels(X), 4, init="nndsvda", n_restarts=3, random_state=4,
                            max_iter=10, tol=0.0, **KW)
    single = dnmf.factorize(panels(X), 4, init="nndsvda", random_state=4, max_iter=10, tol=0.0,
                            **KW)
    assert result.init == "nndsvda"
    assert result.restart_losses[0] == pytest.approx(single.loss_history[-1], rel=1e-6)
    others = separate_fits(X, 4, result.restart_seeds[1:], max_iter=10, tol=0.0)
    np.testing.assert_allclose(result.restart_losses[1:], [a.loss_history[-1] for a in others],
                               rtol=1e-6)


def test_one_restart_is_the_ordinary_fit(X):
    a = dnmf.factorize(panels(X), 4, random_state=0, max_iter=10, **KW)
    b = dnmf.factorize(panels(X), 4, random_state=0, max_iter=10, n_restarts=1, **KW)
    assert a.init == b.init == "nndsvda"
    np.testing.assert_array_equal(a.H, b.H)
    assert b.restart_losses == [a.loss_history[-1]] and b.best_restart == 0
    assert b.restart_H.shape == (1, 4, 30)


def test_store_attributes_and_estimator(tmp_path, X):
    out = tmp_path / "r.zarr"
    model = dnmf.NMF(4, n_restarts=3, random_state=1, max_iter=20, scheduler="threads")
    model.fit(X, out=out, min_panel_bytes=0)
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    assert attrs["n_restarts"] == 3 and attrs["best_restart"] == model.best_restart_
    assert attrs["restart_losses"] == pytest.approx(model.restart_losses_)
    assert len(attrs["restart_seeds"]) == 3 and attrs["init"] == "random"
    assert model.components_.shape == (4, 30)
    assert dnmf.load(out).n_restarts == 3


def interrupt_at(n):
    def callback(info):
        if info.iteration == n:
            raise KeyboardInterrupt

    return callback


def test_interrupted_restarts_resume_to_the_undisturbed_result(tmp_path, X):
    kw = dict(solver="hals", n_restarts=3, random_state=5, max_iter=200, tol=1e-3, **KW)
    reference = dnmf.factorize(panels(X), 4, **kw)
    out = tmp_path / "r.zarr"
    with pytest.raises(Interrupted, match="interrupted after iteration 12; checkpoint kept"):
        dnmf.factorize(panels(X), 4, out=out, checkpoint_every=5, callback=interrupt_at(12),
                       **kw)
    with pytest.raises(InputError, match="n_restarts was 3, now 2"):
        dnmf.factorize(panels(X), 4, out=out, resume=True, **{**kw, "n_restarts": 2})
    resumed = dnmf.factorize(panels(X), 4, out=out, resume=True, **kw)
    assert resumed.restart_n_iter == reference.restart_n_iter
    np.testing.assert_allclose(resumed.restart_losses, reference.restart_losses, rtol=1e-10)
    np.testing.assert_allclose(resumed.H, reference.H, rtol=1e-10)
    assert zarr.open_group(str(out), mode="r").attrs["status"] == "complete"


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(n_restarts=0), "n_restarts must be an integer >= 1; got 0"),
    (dict(n_restarts=2.5), "n_restarts must be an integer >= 1; got 2.5"),
    (dict(n_restarts=True), "n_restarts must be an integer >= 1; got True"),
    (dict(n_restarts=2, scheme="block-2d"), "n_restarts=2 batches the restarts in full-width"),
])
def test_parameter_errors(X, kwargs, message):
    with pytest.raises(InputError, match=message):
        dnmf.factorize(X, 4, scheduler="threads", max_iter=2, **kwargs)


@pytest.mark.cluster
def test_restarts_on_a_local_cluster_match_threads(local_client, X):
    kw = dict(n_restarts=3, random_state=6, max_iter=5, tol=0.0, min_panel_bytes=0)
    on_cluster = dnmf.factorize(panels(X, 60), 4, client=local_client, **kw)
    in_process = dnmf.factorize(panels(X, 60), 4, scheduler="threads", **kw)
    np.testing.assert_allclose(on_cluster.restart_losses, in_process.restart_losses, rtol=1e-10)
    np.testing.assert_allclose(on_cluster.H, in_process.H, rtol=1e-8, atol=1e-12)
