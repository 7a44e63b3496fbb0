"""β-divergence, masked and sum-to-one kernels (dnmf.divergence), against references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition._nmf import _beta_divergence

from dnmf import divergence, kernels


@pytest.fixture
def panel():
    rng = np.random.default_rng(0)
    X = rng.poisson(3.0 * rng.random((40, 4)) @ rng.random((4, 30))).astype(np.float64)
    W = rng.random((40, 4)) + 0.1
    H = rng.random((4, 30)) + 0.1
    return X, W, H


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
def test_beta_divergence_matches_scikit_learn(panel, beta):
    X, W, H = panel
    X = X + 0.5 if beta <= 0 else X  # Itakura-Saito needs X > 0
    ours = divergence.beta_divergence(X, W @ H, beta)
    ref = _beta_divergence(X, W, H, beta, square_root=False)
    if beta == 2.0:
        ref *= 2  # dnmf reports ||X - WH||^2, scikit-learn half of it
    assert ours == pytest.approx(ref, rel=1e-10)


def test_kl_is_exact_at_zeros_of_x():
    X = np.array([[0.0, 2.0], [1.0, 0.0]])
    WH = np.array([[0.5, 2.0], [1.0, 3.0]])
    # 0 log 0 = 0: only the "+ WH" term remains at zeros of X
    expected = 0.5 + 0.0 + 0.0 + 3.0
    assert divergence.beta_divergence(X, WH, 1.0) == pytest.approx(expected)


@pytest.mark.parametrize(("beta", "gamma"), [(0.0, 0.5), (0.5, 1 / 1.5), (1.0, 1.0),
                                             (2.0, 1.0), (3.0, 0.5)])
def test_mu_exponent_of_fevotte_idier(beta, gamma):
    assert divergence.mu_exponent(beta) == pytest.approx(gamma)


def test_loss_names():
    assert [divergence.beta_value(n) for n in ("frobenius", "kullback-leibler",
                                                "itakura-saito")] == [2.0, 1.0, 0.0]
    assert divergence.beta_name(1.0) == "kullback-leibler" and divergence.beta_name(1.5) == "1.5"
    with pytest.raises(ValueError, match="unknown"):
        divergence.beta_value("poisson")


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0, 3.0])
def test_panel_step_h_terms_are_the_global_mu_update(panel, beta):
    """Summing the panel partials over two halves gives scikit-learn's H numerator/denominator
    (the MU step's terms) with the new W."""
    X, W, H = panel
    halves = [divergence.beta_panel_step(X[s], W[s], H, beta=beta, masked=True)
              for s in (slice(0, 25), slice(25, 40))]
    W_new = np.vstack([h[0] for h in halves])
    numH, denH, loss, WtW = kernels.sum_partials(*halves)
    WH = W_new @ H
    safe = np.maximum(WH, divergence.EPSILON)
    num_ref = W_new.T @ (X * safe ** (beta - 2))
    den_ref = W_new.T @ (WH ** (beta - 1)) if beta != 1 else W_new.sum(0)[:, None]
    np.testing.assert_allclose(numH, num_ref, rtol=1e-10)
    np.testing.assert_allclose(np.broadcast_to(denH, num_ref.shape),
                               np.broadcast_to(den_ref, num_ref.shape), rtol=1e-10)
    assert loss == pytest.approx(divergence.beta_divergence(X, WH, beta), rel=1e-10)
    assert np.allclose(WtW, W_new.T @ W_new)


def test_missing_entries_never_enter_the_step(panel):
    """Whatever sits at a missing entry (NaN, or any value outside the mask) gives the same
    step; a full mask is the unmasked step."""
    X, W, H = panel
    rng = np.random.default_rng(1)
    observed = rng.random(X.shape) > 0.3
    X_nan = np.where(observed, X, np.nan)
    X_junk = np.where(observed, X, 1e6)
    a = divergence.beta_panel_step(X_nan, W, H, beta=1.0, masked=True)
    b = divergence.beta_panel_step(X_junk, W, H, beta=1.0, observed=observed)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
    for pa, pb in zip(a[1], b[1], strict=True):
        np.testing.assert_allclose(pa, pb, rtol=1e-12)
    # and the loss is the β-divergence over the observed entries only
    WH = a[0] @ H
    assert a[1][2] == pytest.approx(divergence.beta_divergence(X, WH, 1.0, observed), rel=1e-10)
    full = divergence.beta_panel_step(X, W, H, beta=1.0, observed=np.ones(X.shape, bool))
    plain = divergence.beta_panel_step(X, W, H, beta=1.0)
    np.testing.assert_allclose(full[0], plain[0], rtol=1e-12)


def test_sparse_kl_step_equals_the_dense_step(panel):
    X, W, H = panel
    dense = divergence.beta_panel_step(X, W, H, beta=1.0)
    sparse = divergence.beta_panel_step(sp.csr_matrix(X), W, H, beta=1.0)
    np.testing.assert_allclose(sparse[0], dense[0], rtol=1e-10)
    for a, b in zip(sparse[1], dense[1], strict=True):
        np.testing.assert_allclose(np.broadcast_to(a, np.shape(b)), b, rtol=1e-9)
    loss = divergence.panel_loss(sp.csr_matrix(X), W, H, beta=1.0)
    np.testing.assert_allclose(loss, divergence.panel_loss(X, W, H, beta=1.0), rtol=1e-9)


@pytest.mark.parametrize("beta", [2.0, 1.0])
def test_sparse_loss_by_blocks_equals_the_dense_loss(monkeypatch, beta):
    """The sparse panel's loss is summed over blocks of a few rows (bounded memory)."""
    rng = np.random.default_rng(8)
    X = (rng.random((60, 25)) * (rng.random((60, 25)) < 0.3)).astype(np.float32)
    W = rng.random((60, 3)).astype(np.float32)
    H = rng.random((3, 25)).astype(np.float32)
    whole = divergence.panel_loss(sp.csr_matrix(X), W, H, beta=beta)
    monkeypatch.setattr(divergence, "LOSS_BLOCK_NNZ", 7)  # ~ a row or two per block
    blocked = divergence.panel_loss(sp.csr_matrix(X), W, H, beta=beta)
    dense = divergence.panel_loss(X.astype(np.float64), W.astype(np.float64),
                                  H.astype(np.float64), beta=beta)
    np.testing.assert_allclose(blocked, whole, rtol=1e-12)
    np.testing.assert_allclose(blocked, dense, rtol=1e-9)


def test_sparse_panels_refuse_other_losses(panel):
    X, W, H = panel
    with pytest.raises(ValueError, match="Kullback-Leibler"):
        divergence.beta_panel_step(sp.csr_matrix(X), W, H, beta=0.5)


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_fcls_rows_sum_to_one_and_solve_the_constrained_problem(noise):
    rng = np.random.default_rng(3)
    A = rng.dirichlet(np.ones(5), size=300)
    E = rng.random((5, 40))
    X = A @ E + noise * rng.standard_normal((300, 40))
    W = kernels.fcls_rows(X @ E.T, E @ E.T)
    assert np.abs(W.sum(axis=1) - 1).max() < 1e-5 and (W >= 0).all()
    if noise == 0.0:
        np.testing.assert_allclose(W, A, atol=1e-6)
    else:  # no feasible point (W >= 0, rows on the simplex) fits X better
        fit = np.sum((X - W @ E) ** 2, axis=1)
        fit_truth = np.sum((X - A @ E) ** 2, axis=1)
        assert (fit <= fit_truth * (1 + 1e-6) + 1e-9).all()


def test_augmented_mu_alternation_pulls_rows_to_one(panel):
    """W and H steps alternating (H adapts its scale): the rows of W end near the simplex."""
    X, W, H = panel
    for _ in range(300):
        W, (numH, denH, *_) = divergence.beta_panel_step(X, W, H, beta=1.0, sum_to_one=True)
        H = divergence.update_h_beta(H, numH, denH, beta=1.0)
    assert np.abs(W.sum(axis=1) - 1).max() < 1e-2


def test_nnls_keeps_small_solutions_at_any_scale():
    """The zero threshold of the NNLS solve is relative to the solution, not to the Gram
    matrix: huge Gram entries with small solutions are still solved exactly."""
    rng = np.random.default_rng(4)
    A = rng.random((50, 4)) * 1e4
    x = np.array([1e-3, 2e-3, 0.0, 5e-4])
    b = A @ x
    sol = kernels.nnls_bpp(A.T @ A, (A.T @ b)[:, None])[:, 0]
    np.testing.assert_allclose(sol, x, atol=1e-9)


def test_transform_rows_beta_converges_to_the_fixed_h_optimum(panel):
    X, W, H = panel
    W_fit = divergence.transform_rows_beta(X, H, beta=1.0, max_iter=2000, tol=1e-12)
    base = divergence.beta_divergence(X, W_fit @ H, 1.0)
    rng = np.random.default_rng(5)
    for _ in range(5):  # no nearby non-negative W is better
        W_try = np.maximum(W_fit * (1 + 0.01 * rng.standard_normal(W_fit.shape)), 0)
        assert divergence.beta_divergence(X, W_try @ H, 1.0) >= base * (1 - 1e-9)


#: The sub-blocked β step makes the same element-wise operations per row; only the products
#: (``W_b H``, ``num_b Hᵀ``, ``W_bᵀ num_b``) and the float64 sums over rows may add in another
#: order: rounding of ~n·eps per entry (a 20-term or 300-term dot product), i.e. 1e-4 of the
#: largest entry in float32 and 1e-10 in float64 with margin for one MU step's ratio.
@pytest.mark.parametrize("beta,masked,sum_to_one", [(1.0, False, False), (0.5, False, False),
                                                    (2.0, True, False), (1.0, True, False),
                                                    (1.0, False, True), (0.0, False, False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sub_blocked_beta_step_equals_the_whole_panel_step(beta, masked, sum_to_one, dtype):
    rng = np.random.default_rng(3)
    X = (rng.poisson(3.0, (700, 300)) + (0.5 if beta <= 0 else 0.0)).astype(dtype)
    if masked:
        X[rng.random(X.shape) < 0.1] = np.nan
    W = (rng.random((700, 5)) + 0.1).astype(dtype)
    H = (rng.random((5, 300)) + 0.1).astype(dtype)
    options = {"beta": beta, "l1": 0.01, "l2": 0.0, "masked": masked, "sum_to_one": sum_to_one,
               "eps": divergence.EPSILON}
    W_ref, terms_ref = divergence._beta_block_step(X, W, H, observed=None, **options)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for block_rows in (256, 320, 1024):  # 700 rows: 3 blocks, 3 with a short tail, 1
        W_new, terms = divergence.beta_panel_step(X, W, H, block_rows=block_rows, **options)
        assert W_new.dtype == dtype
        np.testing.assert_allclose(W_new, W_ref, rtol=0, atol=tol * np.abs(W_ref).max())
        for got, ref in zip(terms, terms_ref, strict=True):
            ref = np.asarray(ref, dtype=np.float64)
            np.testing.assert_allclose(np.broadcast_to(got, ref.shape), ref, rtol=tol,
                                       atol=tol * np.abs(ref).max())


def test_beta_block_rows_is_bounded():
    for n_features in (1, 500, 10**6):
        rows = divergence.beta_block_rows(n_features, 4)
        assert divergence.BETA_MIN_BLOCK_ROWS <= rows <= divergence.BETA_MAX_BLOCK_ROWS
        assert rows % 64 == 0


@pytest.mark.parametrize(("beta", "masked"), [(1.0, False), (1.0, True), (0.0, False),
                                              (0.5, True), (2.0, True), (3.0, False)])
def test_panel_step_without_the_loss_gives_the_same_bits(panel, beta, masked):
    # loss_every: the iterations that skip the loss must not move the iterates at all
    X, W, H = panel
    X = X + 0.5 if beta <= 0 else X.copy()
    if masked:
        X[np.random.default_rng(1).random(X.shape) < 0.2] = np.nan
    # small sub-blocks: the skipped terms of every block, and the sums over blocks
    W_full, (num, den, loss, WtW) = divergence.beta_panel_step(X, W, H, beta=beta,
                                                               masked=masked, block_rows=16)
    W_fast, (num2, den2, loss2, WtW2) = divergence.beta_panel_step(
        X, W, H, beta=beta, masked=masked, block_rows=16, with_loss=False)
    for a, b in [(W_full, W_fast), (num, num2), (np.asarray(den), np.asarray(den2)),
                 (WtW, WtW2)]:
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(loss) and np.isnan(loss2)


def test_sparse_panel_step_without_the_loss_gives_the_same_bits(panel):
    X, W, H = panel
    Xs = sp.csr_matrix(X)
    W_full, (num, den, loss, WtW) = divergence.beta_panel_step(Xs, W, H, beta=1.0)
    W_fast, (num2, den2, loss2, WtW2) = divergence.beta_panel_step(Xs, W, H, beta=1.0,
                                                                   with_loss=False)
    for a, b in [(W_full, W_fast), (num, num2), (den, den2), (WtW, WtW2)]:
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(loss) and np.isnan(loss2)
