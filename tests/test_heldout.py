"""The rank survey's held-out sets (``dnmf.heldout``) and the stacked kernels that use them.

Each run hides its own seeded entries, generated in the panel task: the sets must not depend on
how X is cut into panels, must hide what they say (a fraction of the entries; for sparse X of
the stored entries, plus about as many zeros), and the EM step, the loss and the held-out error
of every run must equal the same computation done with that run's explicit mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from dnmf import divergence
from dnmf.heldout import (
    HeldoutSets,
    block_rows,
    dense_hidden,
    folds_per_repetition,
    heldout_panel_error,
    panel_stats,
    rows_dot,
    uniform_hash,
)
from dnmf.stacked_kernels import block_grams, stacked_panel_loss, stacked_panel_step


def dense_x(n=300, m=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.gamma(1.0, 1.0, (n, 4)) @ rng.gamma(1.0, 1.0, (4, m))


def sparse_x(n=300, m=60, seed=0, density=0.1):
    rng = np.random.default_rng(seed)
    return sp.random(n, m, density=density, format="csr", random_state=rng,
                     data_rvs=lambda size: rng.gamma(1.0, 1.0, size))


def as_set(rows, cols, start=0):
    return set(zip((np.asarray(rows) + start).tolist(), np.asarray(cols).tolist(), strict=True))


def hidden_mask(entries, shape):
    ok = np.ones(shape, dtype=bool)
    ok[entries.rows, entries.cols] = False
    return ok


# ---------------------------------------------------------------------------------------------
# The sets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "cuts"), [
    (5000, [1000, 2500]),   # panels cutting seeded blocks of rows
    (300, [1, 299]),        # one-row panels at both ends
    (9000, [4096, 8192]),   # cuts on the block boundaries
])
def test_dense_sets_do_not_depend_on_the_panels(n, cuts):
    m = 30
    whole = as_set(*dense_hidden(0, n, n_features=m, fraction=0.1, seed=3, run=2))
    bounds = [0, *cuts, n]
    pieces = set()
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        pieces |= as_set(*dense_hidden(lo, hi, n_features=m, fraction=0.1, seed=3, run=2), lo)
    assert pieces == whole
    assert 0.09 < len(whole) / (n * m) < 0.11


def test_dense_runs_are_folds_disjoint_within_a_repetition():
    def hidden(seed, run):
        return as_set(*dense_hidden(0, 2000, n_features=20, fraction=0.2, seed=seed, run=run))

    a = hidden(0, 0)
    assert a == hidden(0, 0)
    folds = [hidden(0, r) for r in range(5)]  # F = 5 folds of 20%: a partition of X
    assert sum(len(f) for f in folds) == len(set().union(*folds)) == 2000 * 20
    for other in (hidden(0, 5), hidden(1, 0)):  # the next repetition, another seed
        overlap = len(a & other) / len(a)
        assert 0.17 < overlap < 0.23  # independent: they share about `fraction` of a's
    assert folds_per_repetition(0.1) == 10 and folds_per_repetition(0.3) == 3
    three = [as_set(*dense_hidden(0, 2000, n_features=20, fraction=0.3, seed=0, run=r))
             for r in range(3)]  # 0.3: three disjoint folds, 10% in none
    assert len(set().union(*three)) / (2000 * 20) == pytest.approx(0.9, abs=0.01)


def test_wide_dense_x_uses_short_blocks():
    assert block_rows(30) == 4096 and block_rows(100_000) == 41 and block_rows(10**9) == 1


def test_uniform_hash_is_uniform_and_salted():
    u = uniform_hash(np.arange(200_000, dtype=np.uint64), 12345)
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005 and abs(np.mean(u < 0.1) - 0.1) < 0.003
    assert np.corrcoef(u[:-1], u[1:])[0, 1] < 0.01  # consecutive keys are not correlated
    assert not np.array_equal(u, uniform_hash(np.arange(200_000, dtype=np.uint64), 12346))


def test_sparse_sets_hide_stored_entries_and_about_as_many_zeros():
    X = sparse_x(3000, 200, density=0.05)
    nnz = X.nnz
    zero_rate = 0.1 * nnz / (X.shape[0] * X.shape[1] - nnz)
    sets = HeldoutSets(seed=1, runs=2, fraction=0.1, n_features=200, zero_rate=zero_rate)
    e = sets.panel(0, 3000).entries(0, X)
    stored = X[e.rows, e.cols].A1 != 0
    n_stored, n_zero = int(stored.sum()), int((~stored).sum())
    assert abs(n_stored / nnz - 0.1) < 0.01
    assert 0.85 < n_zero / n_stored < 1.1  # about one sampled zero per hidden stored entry
    np.testing.assert_array_equal(e.values[stored], X[e.rows[stored], e.cols[stored]].A1)
    assert np.all(e.values[~stored] == 0)
    assert len(as_set(e.rows, e.cols)) == len(e.rows)  # no entry twice
    # the stored entries of runs 0 and 1 are disjoint folds; their sampled zeros independent
    f = sets.panel(0, 3000).entries(1, X)
    f_stored = X[f.rows, f.cols].A1 != 0
    assert not as_set(e.rows[stored], e.cols[stored]) & as_set(f.rows[f_stored],
                                                               f.cols[f_stored])


@pytest.mark.parametrize("cut", [1, 700, 1499])
def test_sparse_sets_do_not_depend_on_the_panels_or_the_stored_order(cut):
    X = sparse_x(1500, 80)
    sets = HeldoutSets(seed=5, runs=3, fraction=0.2, n_features=80, zero_rate=0.05)
    whole = sets.panel(0, 1500).entries(2, X)
    top, bottom = sets.panel(0, cut).entries(2, X[:cut]), sets.panel(cut, 1500).entries(2, X[cut:])
    assert as_set(whole.rows, whole.cols) == (as_set(top.rows, top.cols)
                                              | as_set(bottom.rows, bottom.cols, cut))
    shuffled = X.copy()
    for i in range(shuffled.shape[0]):  # the same matrix, column indices unsorted in each row
        lo, hi = shuffled.indptr[i], shuffled.indptr[i + 1]
        order = np.arange(lo, hi)[::-1]
        shuffled.indices[lo:hi], shuffled.data[lo:hi] = X.indices[order], X.data[order]
    shuffled.has_sorted_indices = False
    again = sets.panel(0, 1500).entries(2, shuffled)
    assert as_set(again.rows, again.cols) == as_set(whole.rows, whole.cols)


def test_a_panel_of_the_wrong_height_is_refused():
    with pytest.raises(ValueError, match="a panel of 10 rows for held-out rows 0:20"):
        HeldoutSets(0, 1, 0.1, 5).panel(0, 20).entries(0, np.ones((10, 5)))


def test_rows_dot_and_panel_stats():
    rng = np.random.default_rng(0)
    W, H = rng.random((50, 3)), rng.random((3, 40))
    rows, cols = rng.integers(0, 50, 5000), rng.integers(0, 40, 5000)
    np.testing.assert_allclose(rows_dot(W, H, rows, cols), (W @ H)[rows, cols])
    X = sparse_x(100, 30)
    dense = X.toarray()
    np.testing.assert_allclose(panel_stats(X)[:2], panel_stats(dense)[:2])
    assert panel_stats(X)[3] == X.nnz == panel_stats(dense)[3]
    dense[0, 0] = np.nan
    assert panel_stats(dense)[2] == dense.size - 1


# ---------------------------------------------------------------------------------------------
# The stacked kernels with per-run sets: each run as with its own explicit mask
# ---------------------------------------------------------------------------------------------


def stacked_start(n, m, k, R, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (rng.random((n, R * k)).astype(dtype), rng.random((R * k, m)).astype(dtype))


@pytest.mark.parametrize("kind", ["dense", "dense-nan", "sparse"])
@pytest.mark.parametrize("solver", ["hals", "mu", "anls"])
def test_em_step_of_each_run_equals_its_own_masked_step(kind, solver):
    R, k = 3, 4
    X = sparse_x(120, 50, density=0.2) if kind == "sparse" else dense_x(120, 50)
    if kind == "dense-nan":
        X[np.random.default_rng(2).random(X.shape) < 0.05] = np.nan
    sets = HeldoutSets(seed=4, runs=R, fraction=0.2, n_features=50,
                       zero_rate=0.05 if kind == "sparse" else 0.0)
    panel = sets.panel(0, 120)
    W, H = stacked_start(120, 50, k, R)
    HHt = block_grams(H, R)
    active = (True, False, True)
    W_new, (WtX, WtW, sq) = stacked_panel_step(X, W, H, HHt, panel, restarts=R, active=active,
                                               solver=solver, impute=True)
    dense = X.toarray() if kind == "sparse" else X
    for b in range(R):
        sl = slice(b * k, (b + 1) * k)
        if not active[b]:
            np.testing.assert_array_equal(W_new[:, sl], W[:, sl])
            continue
        ok = hidden_mask(panel.entries(b, X), X.shape)
        Wb, (WtX_b, WtW_b, sq_b) = stacked_panel_step(
            dense, W[:, sl], H[sl], HHt[b:b + 1], ok, restarts=1, active=(True,),
            solver=solver, impute=True)
        np.testing.assert_allclose(W_new[:, sl], Wb, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(WtX[sl], WtX_b, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(WtW[b], WtW_b[0], rtol=1e-9)
        assert sq[b] == pytest.approx(sq_b[0], rel=1e-9)


def test_mu_step_of_each_run_sees_its_own_mask():
    R, k = 2, 3
    X = dense_x(90, 30)
    panel = HeldoutSets(seed=0, runs=R, fraction=0.1, n_features=30).panel(0, 90)
    W, H = stacked_start(90, 30, k, R)
    W_new, parts = stacked_panel_step(X, W, H, block_grams(H, R), panel, restarts=R,
                                      active=(True, True), solver="mu", beta=1.0)
    for b in range(R):
        sl = slice(b * k, (b + 1) * k)
        Wb, parts_b = divergence.beta_panel_step(X, W[:, sl], H[sl], beta=1.0,
                                                 observed=panel.observed(b, X))
        np.testing.assert_allclose(W_new[:, sl], Wb, rtol=1e-12)
        np.testing.assert_allclose(parts[0][sl], parts_b[0], rtol=1e-12)
        assert parts[2][b] == pytest.approx(parts_b[2], rel=1e-12)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_loss_and_heldout_error_of_each_run(kind):
    R, k = 3, 4
    X = sparse_x(100, 40, density=0.2) if kind == "sparse" else dense_x(100, 40)
    sets = HeldoutSets(seed=2, runs=R, fraction=0.15, n_features=40,
                       zero_rate=0.05 if kind == "sparse" else 0.0)
    panel = sets.panel(0, 100)
    W, H = stacked_start(100, 40, k, R)
    loss, residual, observed_sq = stacked_panel_loss(X, W, H, panel, restarts=R, beta=2.0)
    held_residual, held_norm = heldout_panel_error(X, W, H, panel, restarts=R)
    dense = X.toarray() if kind == "sparse" else X
    for b in range(R):
        sl = slice(b * k, (b + 1) * k)
        hidden = ~hidden_mask(panel.entries(b, X), X.shape)
        diff = dense - W[:, sl] @ H[sl]
        assert residual[b] == pytest.approx(np.sum(diff[~hidden] ** 2), rel=1e-9)
        assert loss[b] == residual[b]
        assert observed_sq[b] == pytest.approx(np.sum(dense[~hidden] ** 2), rel=1e-9)
        assert held_residual[b] == pytest.approx(np.sum(diff[hidden] ** 2), rel=1e-9)
        assert held_norm[b] == pytest.approx(np.sum(dense[hidden] ** 2), rel=1e-9)


def test_sparse_x_refuses_per_run_masks_without_impute():
    X = sparse_x(20, 10)
    W, H = stacked_start(20, 10, 2, 2)
    with pytest.raises(ValueError, match="need impute"):
        stacked_panel_step(X, W, H, block_grams(H, 2), HeldoutSets(0, 2, 0.1, 10).panel(0, 20),
                           restarts=2, active=(True, True), solver="mu", beta=1.0)
