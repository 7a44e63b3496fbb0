"""The scikit-learn style estimator: API conformance and agreement with scikit-learn."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.decomposition import NMF as SkNMF
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from dnmf import NMF
from tests.conftest import make_planted


@pytest.fixture
def X():
    return make_planted(150, 30, 3)[0]


def test_params_clone_and_repr():
    model = NMF(n_components=4, solver="mu", max_iter=10, random_state=1)
    params = model.get_params()
    assert params["n_components"] == 4 and params["solver"] == "mu"
    twin = clone(model)
    assert twin.get_params() == params and twin is not model
    model.set_params(tol=1e-3)
    assert model.tol == 1e-3
    assert "NMF(" in repr(model)


def test_fit_transform_and_fitted_attributes(X):
    model = NMF(n_components=3, random_state=0, max_iter=100, tol=1e-6)
    W = model.fit_transform(X)
    assert isinstance(W, np.ndarray) and W.shape == (150, 3)
    assert model.components_.shape == (3, 30)
    assert model.n_components_ == 3 and model.n_iter_ >= 1
    assert model.reconstruction_err_ == pytest.approx(np.linalg.norm(X - W @ model.components_),
                                                      rel=1e-6)
    assert len(model.loss_history_) == model.n_iter_


def test_dask_input_gives_dask_output(X):
    W = NMF(n_components=3, random_state=0, max_iter=10).fit_transform(
        da.from_array(X, chunks=(50, 30))
    )
    assert isinstance(W, da.Array)


def test_transform_solves_w_with_h_fixed(X):
    model = NMF(n_components=3, random_state=0, max_iter=300, tol=1e-8).fit(X)
    W_fit = model.W_
    W_new = model.transform(X)
    # exact NNLS with the fitted H is at least as good as the fitted W, row by row
    res_fit = np.linalg.norm(X - W_fit @ model.components_, axis=1)
    res_new = np.linalg.norm(X - W_new @ model.components_, axis=1)
    assert (res_new <= res_fit * (1 + 1e-9) + 1e-12).all()
    lazy = model.transform(da.from_array(X, chunks=(40, 30)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), W_new, rtol=1e-8, atol=1e-12)


def test_inverse_transform(X):
    model = NMF(n_components=3, random_state=0, max_iter=200, tol=1e-7)
    W = model.fit_transform(X)
    np.testing.assert_allclose(model.inverse_transform(W), W @ model.components_)
    assert np.linalg.norm(model.inverse_transform(W) - X) / np.linalg.norm(X) < 0.02


def test_not_fitted():
    with pytest.raises(NotFittedError):
        NMF(2).transform(np.ones((3, 3)))


def test_works_in_a_pipeline(X):
    pipe = make_pipeline(MinMaxScaler(), NMF(n_components=3, random_state=0, max_iter=50))
    W = pipe.fit_transform(X)
    assert W.shape == (150, 3) and (W >= 0).all()


@pytest.mark.parametrize("solver,sk_solver", [("hals", "cd"), ("mu", "mu"), ("cd", "cd")])
def test_default_init_error_close_to_sklearn(X, solver, sk_solver):
    ours = NMF(n_components=3, solver=solver, random_state=0, max_iter=400, tol=1e-6).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SkNMF(n_components=3, solver=sk_solver, random_state=0, max_iter=400,
                    tol=1e-6).fit(X)
    assert ours.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=0.01)
