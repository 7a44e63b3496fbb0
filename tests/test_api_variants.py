"""factorize's variants: β-divergence losses, regularisation, missing values, sum-to-one rows,
and the combinations that make no sense — against scikit-learn and planted factors."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.decomposition import NMF as SkNMF

import dnmf
from dnmf.errors import InputError
from tests.conftest import make_planted, peak_rss, reset_peak_rss

LOSSES = ["kullback-leibler", "itakura-saito", 0.5, 1.5, 3.0, "frobenius"]


@pytest.fixture(scope="module")
def counts():
    """A 240 x 36 rank-4 Poisson count matrix (zeros included), and a start (W0, H0)."""
    rng = np.random.default_rng(0)
    X = rng.poisson(4.0 * rng.random((240, 4)) @ rng.random((4, 36))).astype(np.float64)
    return X, rng.random((240, 4)) + 0.1, rng.random((4, 36)) + 0.1


def _positive(X, loss):
    return X + 0.5 if loss in ("itakura-saito", 0.5) else X  # β <= 0 needs X > 0


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_final_loss_matches_scikit_learn_mu(counts, loss, dtype):
    X, W0, H0 = counts
    X = _positive(X, loss).astype(dtype)
    W0, H0 = W0.astype(dtype), H0.astype(dtype)
    ours = dnmf.factorize(da.from_array(X, chunks=(60, 36)), 4, solver="mu", beta_loss=loss,
                          init="custom", W_init=W0, H_init=H0, max_iter=150, tol=0,
                          min_panel_bytes=0, scheduler="threads")
    ref = SkNMF(4, solver="mu", beta_loss=loss, init="custom", max_iter=150, tol=0)
    W_ref = ref.fit_transform(X, W=W0.copy(), H=H0.copy())
    assert ours.reconstruction_err == pytest.approx(ref.reconstruction_err_, rel=1e-2)
    assert ours.beta_loss == (loss if isinstance(loss, str) else repr(float(loss)))
    if dtype == "float64":  # the same iterates up to summation order (components reordered)
        np.testing.assert_allclose(np.asarray(ours.W) @ ours.H, W_ref @ ref.components_,
                                   rtol=1e-6, atol=1e-9)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(n=st.integers(20, 90), m=st.integers(5, 30), k=st.integers(1, 4),
       rows=st.integers(7, 40), beta=st.sampled_from([0.0, 0.5, 1.0, 2.0, 2.5]),
       masked=st.booleans(), seed=st.integers(0, 2**16))
def test_mu_objective_never_increases(n, m, k, rows, beta, masked, seed):
    rng = np.random.default_rng(seed)
    X = rng.gamma(1.0, 1.0, (n, k)) @ rng.gamma(1.0, 1.0, (k, m)) + 0.01
    X += 0.1 * rng.random(X.shape)
    if masked:
        X[rng.random(X.shape) < 0.2] = np.nan
    result = dnmf.factorize(da.from_array(X, chunks=(rows, m)), k, beta_loss=beta,
                            missing="mask" if masked else "error", solver="mu", init="random",
                            random_state=seed, max_iter=25, tol=0, min_panel_bytes=0,
                            scheduler="sync", loss_every=1)  # every iteration's loss
    history = np.array(result.loss_history)
    # rounding only: relative increases below 1e-9 of the loss
    assert (np.diff(history) <= 1e-9 * history[:-1]).all(), history


@pytest.mark.parametrize("solver", ["mu", "hals"])
def test_l1_makes_h_sparser_and_matches_scikit_learn(solver):
    X, _, _ = make_planted(150, 40, 4, noise=0.05, seed=2)
    rng = np.random.default_rng(2)
    W0, H0 = rng.random((150, 4)) + 0.1, rng.random((4, 40)) + 0.1
    zeros = []
    for alpha in (0.0, 0.03, 0.1):
        # alpha_H="same": penalising one factor only lets the scale move to the other
        kw = dict(alpha_W=alpha, alpha_H="same", l1_ratio=1.0, init="custom", max_iter=200,
                  tol=0)
        ours = dnmf.factorize(X, 4, solver=solver, W_init=W0, H_init=H0, scheduler="threads",
                              **kw)
        ref = SkNMF(4, solver="mu" if solver == "mu" else "cd", shuffle=False, **kw).fit(
            X, W=W0.copy(), H=H0.copy())
        assert ours.reconstruction_err == pytest.approx(ref.reconstruction_err_, rel=1e-2)
        # MU only shrinks entries towards zero: count those below 1% of the largest
        frac = float(np.mean(ours.H <= 1e-2 * ours.H.max()))
        ref_frac = float(np.mean(ref.components_ <= 1e-2 * ref.components_.max()))
        assert frac == pytest.approx(ref_frac, abs=0.02)
        zeros.append(frac)
    assert zeros[0] < zeros[1] < zeros[2], zeros


@pytest.fixture(scope="module")
def hidden():
    """A planted rank-5 matrix with Gaussian noise; 20% of its entries hidden (NaN)."""
    rng = np.random.default_rng(7)
    clean = rng.random((600, 5)) @ rng.random((5, 80))
    sigma = 0.02 * clean.mean()
    X = np.maximum(clean + sigma * rng.standard_normal(clean.shape), 0)
    hide = rng.random(X.shape) < 0.2
    return np.where(hide, np.nan, X), hide, clean, sigma


def test_masked_fit_recovers_hidden_entries(hidden):
    X, hide, clean, sigma = hidden
    model = dnmf.NMF(5, missing="mask", max_iter=400, tol=1e-8, random_state=0,
                     scheduler="threads")
    model.fit(X)
    predicted = model.reconstruct()[hide]
    rmse = float(np.sqrt(np.mean((predicted - clean[hide]) ** 2)))
    col_mean = np.nanmean(X, axis=0)
    mean_rmse = float(np.sqrt(np.mean((np.broadcast_to(col_mean, X.shape)[hide]
                                       - clean[hide]) ** 2)))
    assert rmse < 1.5 * sigma, (rmse, sigma)  # close to the noise level
    assert rmse < mean_rmse / 5, (rmse, mean_rmse)  # far better than the column means
    sub = model.reconstruct(rows=slice(10, 20), cols=[1, 5])
    np.testing.assert_allclose(sub, np.asarray(model.W_)[10:20] @ model.components_[:, [1, 5]])


def test_masked_chunked_run_agrees_with_one_chunk(hidden):
    X = hidden[0]
    kw = dict(missing="mask", max_iter=60, tol=0, random_state=1, scheduler="threads",
              init="random")
    one = dnmf.factorize(X, 5, **kw)
    many = dnmf.factorize(da.from_array(X, chunks=(70, 80)), 5, min_panel_bytes=0, **kw)
    assert many.plan.n_panels == 9
    # the same arithmetic on each row; only the order of the float64 partial sums differs
    np.testing.assert_allclose(np.asarray(many.W), one.W, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(many.H, one.H, rtol=1e-6, atol=1e-9)
    assert many.loss_history[-1] == pytest.approx(one.loss_history[-1], rel=1e-9)


def test_explicit_mask_equals_nan_marking(hidden, tmp_path):
    X, hide, _, _ = hidden
    filled = np.where(hide, 123.0, X)  # junk where the mask says missing
    kw = dict(max_iter=30, tol=0, random_state=3, scheduler="threads", init="random")
    by_nan = dnmf.factorize(X, 5, missing="mask", **kw)
    np.save(tmp_path / "mask.npy", (~hide).astype(np.uint8))
    by_mask = dnmf.factorize(filled, 5, mask=str(tmp_path / "mask.npy"), **kw)
    np.testing.assert_allclose(by_mask.H, by_nan.H, rtol=1e-9)


@pytest.mark.parametrize(("solver", "loss", "tolerance"), [
    ("hals", "frobenius", 1e-5), ("anls", "frobenius", 1e-5), ("mu", "frobenius", 1e-5),
    ("mu", "kullback-leibler", 1e-2)])
def test_rows_of_w_sum_to_one(solver, loss, tolerance):
    rng = np.random.default_rng(4)
    A = rng.dirichlet(np.ones(4), size=400)
    X = A @ (rng.random((4, 50)) + 0.05)
    result = dnmf.factorize(X, 4, solver=solver, beta_loss=loss, w_sum_to_one=True,
                            max_iter=100, random_state=0, scheduler="threads")
    sums = result.W.sum(axis=1)
    assert np.abs(sums - 1).max() < tolerance
    assert (result.W >= 0).all() and result.relative_error < 0.2


def test_transform_with_fixed_h_for_each_loss(counts):
    X = counts[0]
    for loss in ("frobenius", "kullback-leibler"):
        model = dnmf.NMF(4, beta_loss=loss, max_iter=100, random_state=0, scheduler="threads")
        W_fit = model.fit_transform(X)
        W_new = model.transform(X)
        # refitting W for the same rows with H fixed is at least as good as the fit's W
        fit_loss = dnmf.divergence.beta_divergence(X, W_fit @ model.components_,
                                                   dnmf.divergence.beta_value(loss))
        new_loss = dnmf.divergence.beta_divergence(X, W_new @ model.components_,
                                                   dnmf.divergence.beta_value(loss))
        assert new_loss <= fit_loss * (1 + 1e-6)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(solver="hals", beta_loss="kullback-leibler"), "supports only the Frobenius"),
    (dict(solver="anls", beta_loss=0.5), "supports only the Frobenius"),
    (dict(solver="hals", missing="mask"), "missing values need multiplicative"),
    (dict(beta_loss="poisson"), "unknown loss"),
    (dict(beta_loss=float("nan")), "must be finite"),
    (dict(missing="drop"), "missing must be"),
    (dict(beta_loss="itakura-saito"), "needs X > 0"),
    (dict(beta_loss=-1.0), "needs X > 0"),
])
def test_combinations_that_make_no_sense_are_clear_errors(counts, kwargs, message):
    with pytest.raises(InputError, match=message):
        dnmf.factorize(counts[0], 4, scheduler="threads", max_iter=2, **kwargs)


def test_nan_without_missing_mask_names_the_count(hidden):
    with pytest.raises(InputError, match=r"[\d,]+ NaN"):
        dnmf.factorize(hidden[0], 5, scheduler="threads", max_iter=2)


def test_mask_of_another_shape_is_refused(counts, tmp_path):
    np.save(tmp_path / "m.npy", np.ones((10, 10), np.uint8))
    with pytest.raises(InputError, match="mask has shape"):
        dnmf.factorize(counts[0], 4, mask=str(tmp_path / "m.npy"), scheduler="threads")


def test_variants_need_row_panels():
    X = np.random.default_rng(0).random((64, 4096))
    with pytest.raises(InputError, match="need full-width row panels"):
        dnmf.factorize(X, 3, beta_loss="kullback-leibler", scheme="block-2d",
                       scheduler="threads", max_iter=2)


def test_auto_solver_is_mu_for_other_losses_and_missing(counts, hidden):
    assert dnmf.factorize(counts[0], 4, beta_loss=1, max_iter=3,
                          scheduler="threads").solver == "mu"
    assert dnmf.factorize(hidden[0], 5, missing="mask", max_iter=3,
                          scheduler="threads").solver == "mu"
    assert dnmf.factorize(counts[0], 4, max_iter=3, scheduler="threads").solver == "hals"


@pytest.fixture(scope="module")
def sparse_counts(tmp_path_factory):
    """A 2,000 x 300 CSR count matrix at density 2% in a Zarr store, and its dense copy."""
    import scipy.sparse as sp

    from dnmf.io.sparse import save_csr

    rng = np.random.default_rng(8)
    X = sp.random(2000, 300, density=0.02, random_state=8, format="csr", dtype=np.float64)
    X.data = rng.poisson(3.0, X.nnz) + 1.0
    path = tmp_path_factory.mktemp("sparse") / "x.zarr"
    save_csr(path, X, chunk_nnz=4000)
    return str(path), X.toarray()


@pytest.mark.parametrize("loss", ["frobenius", "kullback-leibler"])
def test_sparse_x_agrees_with_the_dense_path(sparse_counts, loss):
    path, dense = sparse_counts
    kw = dict(beta_loss=loss, init="random", random_state=0, max_iter=30, tol=0,
              scheduler="threads")
    sparse = dnmf.factorize(path, 5, **kw)
    panels = dnmf.io.open_matrix(path, chunks=300).array  # 7 CSR panels
    many = dnmf.factorize(panels, 5, **kw)
    assert many.plan.n_panels == 7
    ref = dnmf.factorize(dense, 5, **kw)
    np.testing.assert_allclose(many.H, ref.H, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sparse.H, ref.H, rtol=1e-6, atol=1e-9)
    assert sparse.reconstruction_err == pytest.approx(ref.reconstruction_err, rel=1e-8)
    assert sparse.relative_error == pytest.approx(ref.relative_error, rel=1e-8)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(missing="mask"), "not supported for sparse X"),
    (dict(beta_loss=0.5), "sparse X supports the frobenius and kullback-leibler"),
    (dict(beta_loss="itakura-saito"), "sparse X supports"),
])
def test_sparse_x_refuses_what_it_cannot_do(sparse_counts, kwargs, message):
    with pytest.raises(InputError, match=message):
        dnmf.factorize(sparse_counts[0], 5, scheduler="threads", max_iter=2, **kwargs)


@pytest.mark.cluster
@pytest.mark.parametrize("loss", ["frobenius", "kullback-leibler"])
def test_sparse_fit_on_a_cluster_stays_far_below_the_dense_size(tmp_path, local_client, loss):
    """20,000 x 50,000 at density 1e-3: 4 GB dense in float32, 8 MB as CSR. The workers' peak
    resident memory (measured in the worker processes) stays a fraction of the dense size."""
    import scipy.sparse as sp

    from dnmf.io.sparse import save_csr

    rng = np.random.default_rng(0)
    nnz = 1_000_000  # scipy.sparse.random would draw from all 1e9 positions: slow
    X = sp.csr_matrix(((rng.poisson(2.0, nnz) + 1).astype(np.float32),
                       (rng.integers(0, 20_000, nnz), rng.integers(0, 50_000, nnz))),
                      shape=(20_000, 50_000))
    path = tmp_path / "csr.zarr"
    save_csr(path, X)
    dense_bytes = 20_000 * 50_000 * 4
    local_client.run(reset_peak_rss)
    result = dnmf.factorize(str(path), 10, beta_loss=loss, init="random", random_state=0,
                            max_iter=3, tol=0, client=local_client)
    peak = max(local_client.run(peak_rss).values())
    assert result.n_iter == 3 and np.isfinite(result.reconstruction_err)
    assert peak < dense_bytes / 8, f"peak worker RSS {peak / 1e6:.0f} MB"
