"""The named stages of a fit (dnmf.pipeline) and the one iteration loop (dnmf.solvers)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import dnmf
from dnmf import pipeline, solvers
from dnmf.spec import resolve
from tests.conftest import make_planted


@pytest.fixture
def X():
    return make_planted(120, 30, 3, dtype="float64")[0]


def stage_by_stage(X, spec, callback=None):
    opened = pipeline.open_input(spec, X)
    with contextlib.ExitStack() as stack:
        ctx = pipeline.fit_context(opened, stack, scheduler="threads")
        prepared = pipeline.prepare(spec, opened, ctx, stack, X)
        start = pipeline.starting_point(spec, opened, prepared, None)
        loop = pipeline.run(spec, opened, prepared, start, ctx, callback=callback)
        return pipeline.finish(spec, opened, prepared, loop, ctx, t_start=0.0), loop


@pytest.mark.parametrize("n_restarts", [1, 3])
def test_the_stages_in_sequence_are_factorize(X, n_restarts):
    spec = resolve(3, random_state=4, max_iter=15, tol=0.0, n_restarts=n_restarts)
    staged, _ = stage_by_stage(X, spec)
    direct = dnmf.factorize(X, 3, random_state=4, max_iter=15, tol=0.0, n_restarts=n_restarts,
                            scheduler="threads")
    np.testing.assert_array_equal(staged.W, direct.W)
    np.testing.assert_array_equal(staged.H, direct.H)
    assert staged.loss_history == direct.loss_history
    assert staged.restart_losses == direct.restart_losses


def test_a_plain_fit_is_one_restart_of_the_same_loop(X):
    spec = resolve(3, random_state=0, max_iter=8, tol=0.0)
    seen = []
    _, loop = stage_by_stage(X, spec, callback=seen.append)
    assert loop.restarts == 1 and len(loop.loss_history) == 1
    assert [info.iteration for info in seen] == list(range(1, 9))
    assert [info.loss for info in seen] == loop.loss_history[0]


def test_single_fits_keep_their_own_kernels_and_restarts_are_stacked(X):
    import dask.array as da

    Xd = da.from_array(X, chunks=(40, 30))
    step = solvers.make_step(Xd, None, solver="hals", sq_norm=1.0)
    assert step.restarts == 1 and not isinstance(step, solvers._RestartsRowPanelStep)
    stacked = solvers.make_step(Xd, None, solver="hals", sq_norm=1.0, restarts=3)
    assert stacked.restarts == 3 and isinstance(stacked, solvers._RestartsRowPanelStep)
    two_d = solvers.make_step(da.from_array(X, chunks=(40, 10)), None, solver="hals",
                              sq_norm=1.0)
    assert isinstance(two_d, solvers._Block2DStep)


@pytest.mark.parametrize(("n_restarts", "kind"), [(1, solvers.SolverState),
                                                   (2, solvers.RestartsState)])
def test_checkpoints_and_interrupts_see_the_public_state(X, n_restarts, kind):
    spec = resolve(3, random_state=0, max_iter=10, tol=0.0, n_restarts=n_restarts)
    opened = pipeline.open_input(spec, X)
    seen = []

    def checkpoint(state):
        seen.append((state.n_iter, type(state)))

    def stop_at_five(info):
        if info.iteration == 5:
            raise KeyboardInterrupt

    with contextlib.ExitStack() as stack:
        ctx = pipeline.fit_context(opened, stack, scheduler="threads")
        prepared = pipeline.prepare(spec, opened, ctx, stack, X)
        start = pipeline.starting_point(spec, opened, prepared, None)
        step = solvers.make_step(prepared.X, ctx, solver=spec.solver,
                                 sq_norm=prepared.report.sq_norm, restarts=n_restarts)
        with pytest.raises(solvers.Interrupted) as caught:
            solvers.run_iterations(step, start.W, start.H, max_iter=10, tol=0.0,
                                   checkpoint=checkpoint, checkpoint_every=2,
                                   callback=stop_at_five)
    assert seen == [(2, kind), (4, kind)]
    assert isinstance(caught.value.state, kind) and caught.value.state.n_iter == 5


def test_a_feasible_start_for_sum_to_one_in_every_restart(X):
    import dask.array as da

    Xd = da.from_array(X, chunks=(40, 30))
    W, H = pipeline.initial_factors(Xd, 3, init="random", seeds=[1, 2], x_mean=float(X.mean()),
                                    sum_to_one=True)
    W = np.asarray(W)
    assert W.shape == (120, 6) and H.shape == (6, 30)
    for block in (W[:, :3], W[:, 3:]):
        np.testing.assert_allclose(block.sum(axis=1), 1.0, rtol=1e-12)


def test_the_loop_stops_each_restart_on_its_own_tol(X):
    spec = resolve(3, random_state=0, max_iter=300, tol=1e-3, n_restarts=3)
    _, loop = stage_by_stage(X, spec)
    lengths = [len(h) for h in loop.loss_history]
    assert loop.n_iter == max(lengths) < 300
    for history in loop.loss_history:  # stopped at the first iteration that met tol
        decrease = (np.asarray(history[:-1]) - history[1:]) / np.asarray(history[:-1])
        assert decrease[-1] <= 1e-3 and np.all(decrease[:-1] > 1e-3)


def test_a_run_interrupted_at_its_converging_iteration_resumes_to_the_same_result(X, tmp_path):
    # the callback runs before the stop test, so the checkpoint of an interrupt there already
    # meets tol: the resumed run must stop at once, as the undisturbed run did
    kwargs = dict(random_state=0, max_iter=200, tol=1e-2, scheduler="threads")
    whole = dnmf.factorize(X, 3, **kwargs)
    assert whole.stop_reason == "tol" and whole.n_iter > 2

    def interrupt_at_the_last(info):
        if info.iteration == whole.n_iter:
            raise KeyboardInterrupt

    out = tmp_path / "fit.zarr"
    with pytest.raises(solvers.Interrupted):
        dnmf.factorize(X, 3, out=out, checkpoint_every=1, callback=interrupt_at_the_last, **kwargs)
    resumed = dnmf.factorize(X, 3, out=out, resume=True, **kwargs)
    assert resumed.n_iter == whole.n_iter and resumed.stop_reason == "tol"
    assert resumed.loss_history == whole.loss_history
    np.testing.assert_array_equal(resumed.H, whole.H)
