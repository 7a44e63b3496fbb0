"""dnmf.NMF as a drop-in scikit-learn estimator: the four bugs of issue 19, scikit-learn's
estimator checks, and its conventions (feature names, set_output, warnings, n_components)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF as SkNMF
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

import dnmf
from dnmf import NMF
from dnmf.errors import InputError
from tests.conftest import make_planted

#: check_estimator checks dnmf fails on purpose, with the reason.
EXPECTED_FAILED_CHECKS = {
    "check_positive_only_tag_during_fit": (
        "dnmf's message names the count, the minimum, the first entry and the fix "
        "('X has 328 negative entries (min -3.36), the first at row 0, ...') instead of "
        "scikit-learn's 'Negative values in data passed to ...'"),
    "check_estimators_nan_inf": (
        "raised (ValueError), but the check matches a lowercase 'inf'; dnmf's message reads "
        "'X has 2 Inf entries, the first at row 3, column 6 ...; NMF needs finite values'"),
}


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return make_planted(150, 30, 3)[0]


def penalised_objective(model: NMF, X: np.ndarray) -> float:
    """scikit-learn's objective (Frobenius): ``||X - WH||^2 / 2`` plus its scaled penalties."""
    W, H = np.asarray(model.W_), model.components_
    alpha, r = model.alpha_W, model.l1_ratio
    n, m = X.shape
    return float(0.5 * np.sum((X - W @ H) ** 2)
                 + m * alpha * (r * W.sum() + 0.5 * (1 - r) * np.sum(W**2))
                 + n * alpha * (r * H.sum() + 0.5 * (1 - r) * np.sum(H**2)))


# ---------------------------------------------------------------------------------------------
# The four bugs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_penalised_fit_stops_on_the_penalised_objective(solver):
    # bug 1: the tol test compared the unpenalised loss, which an L1 penalty makes rise, so the
    # fit stopped after a few iterations, "converged", 11-16% above the tol=0 objective here
    X = np.abs(np.random.default_rng(0).standard_normal((120, 50)))
    kw = dict(alpha_W=0.05, l1_ratio=1.0, solver=solver, random_state=0, max_iter=300)
    stopped = NMF(5, **kw).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        full = NMF(5, tol=0, **kw).fit(X)
    # the tol fit stops where the objective decreases by < 1e-4 per iteration: within 1% of
    # the objective 300 iterations reach
    assert penalised_objective(stopped, X) <= 1.01 * penalised_objective(full, X)
    # the history is the penalised objective (the data-fit loss doubled, as dnmf records it)
    assert full.loss_history_[-1] == pytest.approx(2 * penalised_objective(full, X), rel=1e-9)
    # ... and reconstruction_err_ stays ||X - WH||
    assert full.reconstruction_err_ == pytest.approx(
        np.linalg.norm(X - full.W_ @ full.components_), rel=1e-9)
    assert np.all(np.diff(full.loss_history_) <= 1e-9 * full.loss_history_[0])


def kl_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Planted data with zeros in both factors: KL multiplicative updates drive W entries
    below 2^-52 within 300 iterations (99 of them here)."""
    rng = np.random.default_rng(0)
    W0 = rng.random((60, 4)) * (rng.random((60, 4)) < 0.5)
    H0 = rng.random((4, 30)) * (rng.random((4, 30)) < 0.5)
    return W0 @ H0, rng.random((60, 4)), rng.random((4, 30))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_kl_mu_iterates_equal_scikit_learns(sparse):
    # bug 2: W entries below machine epsilon were zeroed (forever) for beta = 1; scikit-learn
    # zeroes them for beta < 1 only (and H for beta <= 1)
    X, W0, H0 = kl_data()
    kw = dict(solver="mu", beta_loss="kullback-leibler", init="custom", max_iter=300, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkNMF(4, **kw)
        W_sk = sk.fit_transform(X, W=W0.copy(), H=H0.copy())
        model = NMF(4, **kw)
        W = model.fit_transform(sp.csr_matrix(X) if sparse else X, W=W0.copy(), H=H0.copy())
    assert np.sum(W_sk < 1e-15) > 10  # the case the guard is about
    order = [int(np.argmin(np.abs(model.components_ - h).max(axis=1))) for h in sk.components_]
    assert sorted(order) == [0, 1, 2, 3]
    # multiplicative updates carry relative errors: after 300 iterations of products rounded
    # to 2.2e-16 and summed over <= 60 terms, entry by entry (the tiny ones included)
    rtol = 300 * 60 * 2.2e-16 * 10
    np.testing.assert_allclose(W[:, order], W_sk, rtol=rtol, atol=0)
    np.testing.assert_allclose(model.components_[order], sk.components_, rtol=rtol, atol=0)


@pytest.mark.parametrize(("bad", "message"), [
    (-1.0, "negative"), (np.nan, "NaN"), (np.inf, "Inf"),
])
def test_transform_checks_its_input_as_fit_does(X, bad, message):
    # bug 3: negative, NaN and inf were accepted (inf gave NaN in W)
    model = NMF(3, random_state=0, max_iter=30, tol=1e-3).fit(X)
    Xb = X.copy()
    Xb[3, 4] = bad
    with pytest.raises(InputError) as fit_error:
        NMF(3, random_state=0, max_iter=5).fit(Xb)
    with pytest.raises(InputError) as err:
        model.transform(Xb)
    assert message.lower() in str(err.value).lower()
    assert str(err.value) == str(fit_error.value)  # the same message as fit's
    with pytest.raises(InputError):
        dnmf.api.transform_rows(da.from_array(Xb, chunks=50), model.components_)


def test_cli_transform_refuses_bad_input_and_writes_nothing(tmp_path, X):
    import zarr

    model = tmp_path / "model.zarr"
    dnmf.factorize(X, 3, random_state=0, max_iter=20, out=model)
    Xb = X.copy()
    Xb[0, 0] = np.inf
    bad = tmp_path / "bad.zarr"
    zarr.save_array(str(bad), Xb)
    out = tmp_path / "t.zarr"
    proc = subprocess.run([sys.executable, "-c", "from dnmf.cli import main; main()",
                           "transform", str(model), str(bad), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Inf" in lines[0], lines
    assert not out.exists()


@pytest.mark.parametrize("solver", ["cd", "mu"])
def test_transform_applies_the_fits_penalty(X, solver):
    # bug 4: transform solved the unpenalised problem: on the training data it differed from
    # fit_transform by up to 0.14 here, against scikit-learn's 4e-4 (cd)
    rng = np.random.default_rng(0)
    W0, H0 = rng.random((150, 3)), rng.random((3, 30))
    kw = dict(alpha_W=0.05, l1_ratio=0.5, init="custom", solver=solver, max_iter=300, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkNMF(3, **kw)
        W_sk = sk.fit_transform(X, W=W0.copy(), H=H0.copy())
        sk_gap = np.abs(sk.transform(X) - W_sk).max()
        model = NMF(3, **kw)
        W_fit = model.fit_transform(X, W=W0.copy(), H=H0.copy())
        gap = np.abs(model.transform(X) - W_fit).max()
    assert gap <= 2 * sk_gap + 1e-6


# ---------------------------------------------------------------------------------------------
# scikit-learn's estimator checks
# ---------------------------------------------------------------------------------------------


@parametrize_with_checks([NMF(n_components=2, max_iter=500)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_tags_say_what_dnmf_does():
    tags = NMF().__sklearn_tags__()
    assert tags.input_tags.positive_only and tags.input_tags.sparse
    assert not tags.input_tags.allow_nan and NMF(missing="mask").__sklearn_tags__(
    ).input_tags.allow_nan
    assert tags.transformer_tags.preserves_dtype == ["float64", "float32"]


# ---------------------------------------------------------------------------------------------
# Conventions
# ---------------------------------------------------------------------------------------------


def test_feature_names_and_pandas_output(X):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(X, columns=[f"term{j}" for j in range(X.shape[1])])
    model = NMF(3, random_state=0, max_iter=50, tol=1e-3).set_output(transform="pandas")
    W = model.fit_transform(df)
    assert list(model.feature_names_in_) == list(df.columns)
    assert list(model.get_feature_names_out()) == ["nmf0", "nmf1", "nmf2"]
    assert isinstance(W, pd.DataFrame) and list(W.columns) == ["nmf0", "nmf1", "nmf2"]
    assert isinstance(model.transform(df), pd.DataFrame)
    with pytest.raises(ValueError, match="feature names"):
        model.transform(df[df.columns[::-1]])
    with pytest.raises(ValueError, match="feature names"):
        model.transform(df.rename(columns={"term0": "other"}))


def test_convergence_warning_when_max_iter_stops_the_fit(X):
    with pytest.warns(ConvergenceWarning, match="Maximum number of iterations 2 reached"):
        NMF(3, random_state=0, max_iter=2).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        NMF(3, random_state=0, max_iter=2, tol=0).fit(X)  # tol=0 asks for max_iter iterations
        NMF(3, random_state=0, max_iter=500, tol=1e-3).fit(X)


def test_verbose_prints_the_loss(X, capsys):
    NMF(3, random_state=0, max_iter=3, tol=0, verbose=1).fit(X)
    assert capsys.readouterr().out.count("loss") == 3


def test_verbose_says_where_the_loss_was_not_evaluated(X, capsys):
    NMF(3, beta_loss="kullback-leibler", solver="mu", loss_every=2, random_state=0, max_iter=3,
        tol=0, verbose=1).fit(X)
    lines = capsys.readouterr().out.splitlines()
    assert [line.endswith("loss not evaluated") for line in lines] == [True, False, False]
    assert float(lines[1].rsplit(" ", 1)[1]) > 0


def test_n_components_none_and_auto(X):
    assert NMF(None, max_iter=5, tol=0).fit(X[:, :6]).n_components_ == 6
    assert NMF("auto", max_iter=5, tol=0).fit(X[:, :6]).n_components_ == 6
    rng = np.random.default_rng(0)
    model = NMF("auto", init="custom", max_iter=5, tol=0)
    model.fit(X, W=rng.random((150, 4)), H=rng.random((4, 30)))
    assert model.n_components_ == 4


def test_w_h_ignored_by_init_warn_and_dtype_must_match(X):
    rng = np.random.default_rng(0)
    W0, H0 = rng.random((150, 3)), rng.random((3, 30))
    with pytest.warns(RuntimeWarning, match="provided W or H are ignored"):
        NMF(3, init="nndsvda", max_iter=5, tol=0).fit(X, W=W0, H=H0)
    with pytest.raises(TypeError, match="should have the same dtype as X"):
        NMF(3, init="custom", max_iter=5).fit(X, W=W0.astype(np.float32), H=H0)


@pytest.mark.parametrize("kind", ["numpy", "csr", "dask"])
def test_transform_returns_what_fit_transform_returns(X, kind):
    Xin = {"numpy": X, "csr": sp.csr_matrix(X), "dask": da.from_array(X, chunks=(50, 30))}[kind]
    model = NMF(3, random_state=0, max_iter=20, tol=1e-3)
    W_fit, W_new = model.fit_transform(Xin), model.transform(Xin)
    assert type(W_fit) is type(W_new)
    assert isinstance(W_new, da.Array if kind == "dask" else np.ndarray)


def test_pickle_is_small(X):
    model = NMF(3, random_state=0, max_iter=20, tol=1e-3).fit(X)
    twin = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(twin.transform(X), model.transform(X))
    # components_, the fit's summary and the small W: a few kB over W and H's bytes
    assert len(pickle.dumps(model)) < X.nbytes // 3 + model.components_.nbytes + 20_000


def test_in_process_fit_equals_the_graph_fit(X):
    # numpy X runs the loop in-process (no graph per iteration); a dask X of one panel runs
    # the same panel task through the graph: the same iterates, up to the summation order
    kw = dict(random_state=0, max_iter=40, tol=0)
    a = dnmf.factorize(X, 3, **kw)
    b = dnmf.factorize(da.from_array(X, chunks=X.shape), 3, **kw)
    np.testing.assert_allclose(a.W, np.asarray(b.W), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.loss_history, b.loss_history, rtol=1e-10)
