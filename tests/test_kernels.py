"""Block kernels against references: scikit-learn's coordinate descent, scipy's NNLS."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
from sklearn.decomposition._nmf import _update_coordinate_descent

from dnmf import kernels


@pytest.fixture
def rng():
    return np.random.default_rng(42)


@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.2), (0.1, 0.4)])
def test_hals_sweep_equals_sklearn_coordinate_descent(rng, l1, l2):
    X = rng.random((50, 30))
    W = rng.random((50, 4))
    H = rng.random((4, 30))
    expected = W.copy()
    _update_coordinate_descent(X, expected, H.T, l1, l2, False, None)
    got = kernels.hals_sweep(W, X @ H.T, H @ H.T, l1=l1, l2=l2)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert (got >= 0).all()


def test_hals_sweep_skips_component_with_zero_gram(rng):
    W = rng.random((10, 3))
    H = rng.random((3, 8))
    H[1] = 0
    X = W @ H
    got = kernels.hals_sweep(W, X @ H.T, H @ H.T)
    np.testing.assert_array_equal(got[:, 1], W[:, 1])  # no information: left unchanged
    assert np.isfinite(got).all()


def test_mu_step_matches_lee_seung(rng):
    X = rng.random((40, 20))
    W = rng.random((40, 3))
    H = rng.random((3, 20))
    got = kernels.mu_step(W, X @ H.T, H @ H.T)
    np.testing.assert_allclose(got, W * (X @ H.T) / (W @ H @ H.T), rtol=1e-12)


def test_mu_step_zero_row_stays_zero_without_nan(rng):
    W = rng.random((5, 3))
    W[2] = 0
    H = rng.random((3, 7))
    got = kernels.mu_step(W, rng.random((5, 7)) @ H.T, H @ H.T)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got[2], 0)


@pytest.mark.parametrize("k,m", [(1, 7), (5, 50), (12, 300)])
@pytest.mark.parametrize("warm", [False, True])
def test_nnls_bpp_equals_scipy_nnls(rng, k, m, warm):
    A = rng.random((60, k))
    B = rng.random((60, m)) - 0.4  # negative parts force active constraints
    init = rng.random((k, m)) if warm else None
    got = kernels.nnls_bpp(A.T @ A, A.T @ B, init=init)
    expected = np.stack([scipy.optimize.nnls(A, B[:, j])[0] for j in range(m)], axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_nnls_bpp_rank_deficient_gram_stays_finite(rng):
    A = rng.random((30, 3))
    A = np.hstack([A, A[:, :1]])  # duplicated column: singular Gram matrix
    B = rng.random((30, 10))
    got = kernels.nnls_bpp(A.T @ A, A.T @ B)
    assert np.isfinite(got).all() and (got >= 0).all()
    ref = np.stack([scipy.optimize.nnls(A, B[:, j])[0] for j in range(10)], axis=1)
    # the residual is what is unique when the Gram matrix is singular
    np.testing.assert_allclose(
        np.linalg.norm(A @ got - B, axis=0), np.linalg.norm(A @ ref - B, axis=0), rtol=1e-8
    )


@pytest.mark.parametrize("solver", ["hals", "mu", "anls"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_panel_step_returns_new_w_and_float64_partials(rng, solver, dtype):
    X = rng.random((30, 12)).astype(dtype)
    W = rng.random((30, 3)).astype(dtype)
    H = rng.random((3, 12)).astype(dtype)
    W_new, (WtX, WtW) = kernels.panel_step(X, W, H, H.astype(np.float64) @ H.T, solver=solver)
    assert W_new.dtype == dtype and WtX.dtype == np.float64 and WtW.dtype == np.float64
    assert (W_new >= 0).all()
    np.testing.assert_allclose(WtX, W_new.astype(np.float64).T @ X, rtol=1e-5)
    np.testing.assert_allclose(WtW, W_new.astype(np.float64).T @ W_new, rtol=1e-5)


#: Rounding-level bounds for the sub-blocked panel step against the whole-panel one. Both make
#: the same operations per row of W; only ``X_b Hᵀ`` may round differently (BLAS picks its
#: kernel by the block's shape), by at most ~n·eps of each entry (300·6e-8 ≈ 2e-5 in float32).
#: The W update carries that through (5 HALS sweeps, or an exact NNLS solve whose Gram here
#: has a condition number near 10²; FCLS's appended row (weight 1e5) scales it further), so
#: the bound on W is 1e-4 of its largest entry in float32 and 1e-12 in float64 (1e-8 for
#: FCLS, whose appended row makes the solve ~1e5 times more sensitive to XHt).
BLOCKED_RTOL = {np.float32: 1e-4, np.float64: 1e-12}


@pytest.mark.parametrize("solver,sum_to_one", [("hals", False), ("mu", False),
                                               ("anls", False), ("hals", True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sub_blocked_panel_step_equals_the_whole_panel_step(rng, solver, sum_to_one, dtype):
    X = rng.random((2600, 300)).astype(dtype)
    W = rng.random((2600, 6)).astype(dtype)
    H = rng.random((6, 300)).astype(dtype)
    HHt = H.astype(np.float64) @ H.T.astype(np.float64)
    W_ref, (WtX_ref, WtW_ref) = kernels.panel_step_unblocked(
        X, W, H, HHt, solver=solver, inner_sweeps=5, sum_to_one=sum_to_one)
    rtol = BLOCKED_RTOL[dtype] * (1e4 if sum_to_one and dtype == np.float64 else 1.0)
    for block_rows in (1024, 2048, 4096):  # 2600 rows: two blocks with a short tail, or one
        W_new, (WtX, WtW) = kernels.panel_step(X, W, H, HHt, solver=solver, inner_sweeps=5,
                                               sum_to_one=sum_to_one, block_rows=block_rows)
        assert W_new.dtype == dtype and WtX.dtype == np.float64
        np.testing.assert_allclose(W_new, W_ref, rtol=0, atol=rtol * np.abs(W_ref).max())
        np.testing.assert_allclose(WtX, WtX_ref, rtol=0, atol=rtol * np.abs(WtX_ref).max())
        np.testing.assert_allclose(WtW, WtW_ref, rtol=0, atol=rtol * np.abs(WtW_ref).max())


def test_panel_step_refuses_a_block_that_splits_a_partial_sum(rng):
    X = rng.random((600, 10))
    W, H = rng.random((600, 2)), rng.random((2, 10))
    with pytest.raises(ValueError, match="multiple of 256"):
        kernels.panel_step(X, W, H, H @ H.T, solver="hals", block_rows=1000)


@pytest.mark.parametrize("n_features,itemsize", [(1, 4), (500, 4), (500, 8), (10**6, 4)])
def test_cache_block_rows_is_a_bounded_multiple_of_the_partial_rows(n_features, itemsize):
    rows = kernels.cache_block_rows(n_features, itemsize)
    assert rows % kernels.PARTIAL_BLOCK_ROWS == 0
    assert kernels.MIN_BLOCK_ROWS <= rows <= kernels.MAX_BLOCK_ROWS


def test_sum_partials_adds_panels_and_pairs(rng):
    parts = [(rng.random((2, 3)), (rng.random((2, 4)), rng.random((2, 2)))) for _ in range(3)]
    total = kernels.sum_partials(*parts)
    np.testing.assert_allclose(total[0], sum(p[1][0] for p in parts))
    again = kernels.sum_partials(total, (np.ones((2, 4)), np.ones((2, 2))))
    np.testing.assert_allclose(again[1], total[1] + 1)


@pytest.mark.parametrize("sweeps", [1, 5])
@pytest.mark.parametrize("solver", ["hals", "mu", "anls"])
def test_update_h_is_the_transposed_w_update(rng, solver, sweeps):
    X = rng.random((25, 10))
    W = rng.random((25, 3))
    H = rng.random((3, 10))
    got = kernels.update_h(H, W.T @ X, W.T @ W, solver=solver, inner_sweeps=sweeps)
    expected = kernels.update_w(H.T.copy(), X.T @ W, W.T @ W, solver=solver,
                                inner_sweeps=sweeps).T
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_hals_sweeps_descend_and_l1_makes_one(rng):
    X = rng.random((200, 30))
    H = rng.random((4, 30))
    W = rng.random((200, 4))
    A, G = X @ H.T, H @ H.T

    def objective(F):
        return float(np.linalg.norm(X - F @ H) ** 2)

    def sweeps(n, l1=0.0):
        F = W
        for _ in range(n):
            F = kernels.hals_sweep(F, A, G, l1=l1)
        return F

    losses = [objective(sweeps(n)) for n in range(6)]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(losses, losses[1:], strict=False))
    assert losses[5] < losses[1]
    np.testing.assert_array_equal(kernels.hals_sweeps(W, A, G, sweeps=5), sweeps(5))
    np.testing.assert_array_equal(kernels.hals_sweeps(W, A, G, sweeps=5, l1=0.5),
                                  sweeps(1, l1=0.5))


def test_frobenius_loss_from_grams_equals_direct(rng):
    X = rng.random((40, 15))
    W = rng.random((40, 4))
    H = rng.random((4, 15))
    got = kernels.frobenius_loss(float((X**2).sum()), W.T @ X, W.T @ W, H)
    assert got == pytest.approx(np.linalg.norm(X - W @ H) ** 2, rel=1e-10)


def test_random_rows_do_not_depend_on_chunking():
    whole = kernels.random_rows(0, 10000, 4, seed=7, scale=0.5, dtype=np.float32)
    pieces = np.vstack([
        kernels.random_rows(a, b, 4, seed=7, scale=0.5, dtype=np.float32)
        for a, b in [(0, 3), (3, 4100), (4100, 8192), (8192, 10000)]
    ])
    np.testing.assert_array_equal(whole, pieces)
    assert whole.dtype == np.float32 and (whole >= 0).all()
    assert not np.array_equal(whole, kernels.random_rows(0, 10000, 4, seed=8, scale=0.5,
                                                          dtype=np.float32))


def test_transform_rows_is_exact_nnls(rng):
    H = rng.random((3, 20))
    X = rng.random((15, 20))
    got = kernels.transform_rows(X, H, H @ H.T)
    expected = np.stack([scipy.optimize.nnls(H.T, x)[0] for x in X])
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_kernels_never_import_dask():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(kernels))
    names = [
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ] + [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not any(n.split(".")[0] == "dask" for n in names)


def test_worker_modules_do_not_import_scikit_learn():
    """A worker imports the kernels, the graph and the supervised unmixing panel; importing
    scikit-learn's decomposition package with them costs every worker ~40 MB (a worker held
    to 350 MB was pushed over by it), so the compiled sweep is imported on first use."""
    import subprocess
    import sys

    code = ("import sys, dnmf.kernels, dnmf.divergence, dnmf.graph, dnmf.hyperspectral.fcls; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_sum_partials_adds_float32_partials_in_float64():
    a = np.full((2, 3), 1.0, dtype=np.float32)
    b = np.full((2, 3), 2.0 ** -30, dtype=np.float32)
    (total,) = kernels.sum_partials((a,), (b,))
    assert total.dtype == np.float64
    np.testing.assert_array_equal(total, 1.0 + 2.0 ** -30)  # lost in a float32 sum
    assert kernels.sum_partials((a,))[0].dtype == np.float64  # a single panel too


def test_sparse_gram_partials_equal_the_dense_ones():
    import scipy.sparse as sp

    rng = np.random.default_rng(3)
    X = (rng.random((80, 40)) * (rng.random((80, 40)) < 0.2)).astype(np.float32)
    W = rng.random((80, 4)).astype(np.float32)
    WtX, WtW = kernels.sum_partials(kernels.gram_partials(sp.csr_matrix(X), W))
    np.testing.assert_allclose(WtX, W.T.astype(np.float64) @ X, rtol=1e-5)
    np.testing.assert_allclose(WtW, W.T.astype(np.float64) @ W, rtol=1e-5)


@pytest.mark.parametrize(("k", "n_features", "expected"), [
    (20, 500, kernels.W_INNER_SWEEPS),
    (10, 200, kernels.W_INNER_SWEEPS),
    (100, 500, 1),  # a sweep costs about what the products do
])
def test_w_inner_sweeps_rule(k, n_features, expected):
    assert kernels.w_inner_sweeps(k, n_features) == expected


def test_sweeps_on_the_transposed_factor_equal_column_sweeps(rng):
    """The numpy sweeps run on a transposed copy; the updates are those of the column loop."""
    X = rng.random((300, 40))
    H = rng.random((5, 40))
    W = rng.random((300, 5))
    A, G = X @ H.T, H @ H.T
    F = W.copy()
    for _ in range(3):  # the column-at-a-time sweep, written out
        for t in range(5):
            F[:, t] = np.maximum(F[:, t] - (F @ G[:, t] - A[:, t]) / G[t, t], 0.0)
    got = kernels.hals_sweeps(W, A, G, sweeps=3)
    np.testing.assert_allclose(got, F, rtol=1e-12, atol=1e-14)
    assert got.flags.c_contiguous and not np.shares_memory(got, W)


def _misaligned(a: np.ndarray, offset: int = 2) -> np.ndarray:
    """A copy of ``a`` whose data starts ``offset`` bytes past a 64-byte boundary, as an array
    deserialised from the middle of a received message can."""
    buf = np.empty(a.nbytes + 64, dtype=np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def test_aligned_copies_only_misaligned_arrays_at_any_depth(rng):
    a = rng.random((5, 3)).astype(np.float32)
    m = _misaligned(a)
    assert not m.flags.aligned
    assert kernels.aligned(a) is a  # nothing to do: no copy
    fixed = kernels.aligned(m)
    assert fixed.flags.aligned and fixed.dtype == a.dtype
    np.testing.assert_array_equal(fixed, a)
    nested = kernels.aligned((m, [1.5, m], "key", None))
    assert isinstance(nested, tuple) and isinstance(nested[1], list)
    assert nested[0].flags.aligned and nested[1][1].flags.aligned
    assert nested[1][0] == 1.5 and nested[2:] == ("key", None)
    untouched = (a, [a])
    assert kernels.aligned(untouched) is untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_call_aligned_gives_the_products_of_aligned_operands_bitwise(rng, dtype):
    # numpy multiplies misaligned operands without BLAS, adding in another order; through
    # call_aligned the product is the aligned one to the last bit, on every BLAS kernel
    X = rng.random((1000, 50)).astype(dtype)
    W = rng.random((1000, 4)).astype(dtype)
    H = rng.random((4, 50)).astype(dtype)
    HHt = H.astype(np.float64) @ H.T.astype(np.float64)
    expected = kernels.panel_step(X, W, H, HHt, solver="hals")
    got = kernels.call_aligned(kernels.panel_step, _misaligned(X), _misaligned(W),
                               _misaligned(H, 6), _misaligned(HHt, 4), solver="hals")
    np.testing.assert_array_equal(got[0], expected[0])
    for g, e in zip(got[1], expected[1], strict=True):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("l1", "l2"), [(0.0, 0.0), (0.3, 0.0), (0.0, 0.7)])
@pytest.mark.parametrize("rows", [8, 300])
def test_compiled_sweeps_equal_the_numpy_loop(rng, dtype, l1, l2, rows):
    """Small factors are swept by scikit-learn's compiled coordinate descent, larger ones by
    the numpy loop: the same updates, so they differ by rounding only.

    Each update's gradient is a k-term sum taken in another order (≤ k eps relative to the
    sum of magnitudes); the sweeps' errors add up, so rtol = 10 k sweeps eps, relative to the
    largest entry (entries driven to 0 make an entry-wise rtol meaningless)."""
    k, sweeps = 5, 4
    X = rng.random((rows, 30))
    H = rng.random((k, 30))
    W = rng.random((rows, k)).astype(dtype)
    A, G = (X @ H.T).astype(dtype), (H @ H.T).astype(dtype)
    assert W.size <= kernels.COMPILED_SWEEP_MAX_ENTRIES
    compiled = kernels.hals_sweeps(W, A, G, sweeps=sweeps, l1=l1, l2=l2)
    Ft, At = W.T.copy(), (A - np.asarray(l1, dtype=dtype)).T.copy()
    kernels._numpy_sweeps(Ft, At, G, np.diagonal(G).copy(), sweeps=1 if l1 else sweeps, l2=l2)
    eps = np.finfo(dtype).eps
    assert compiled.dtype == dtype and compiled.flags.c_contiguous
    np.testing.assert_allclose(compiled, Ft.T, rtol=0,
                               atol=10 * k * sweeps * eps * float(np.abs(Ft).max()))
    assert not np.shares_memory(compiled, W)


def test_compiled_sweeps_leave_their_operands_alone(rng):
    """The compiled kernel writes only the factor's copy: read-only G and A are accepted and
    unchanged (they come from a graph's constants)."""
    W, A, G = rng.random((10, 3)), rng.random((10, 3)), rng.random((3, 3)) + 1.0
    A.flags.writeable = G.flags.writeable = False
    before = (W.copy(), A.copy(), G.copy())
    kernels.hals_sweeps(W, A, G, sweeps=2, l2=0.5)
    for a, b in zip((W, A, G), before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value,expected", [("", kernels.WHOLE_PANEL), ("0", kernels.WHOLE_PANEL),
                                            ("2048", 2048), ("cache", None)])
def test_panel_block_rows_default_whole_and_set_by_the_environment(monkeypatch, value,
                                                                   expected):
    monkeypatch.setenv("DNMF_PANEL_BLOCK_ROWS", value)
    rows = kernels.panel_block_rows(500, 4)
    assert rows == (kernels.cache_block_rows(500, 4) if expected is None else expected)


# ---------------------------------------------------------------------------------------------
# The bounded, warm-started sum-to-one W update of a fit (issue #21)
# ---------------------------------------------------------------------------------------------

EPS64 = float(np.finfo(np.float64).eps)


@pytest.fixture
def mixtures(rng):
    """3000 pixels of 8 spectra over 60 bands, sparse abundances on the simplex, 1% noise;
    ``W_prev``: the exact FCLS rows for spectra perturbed by 30%, a feasible warm start whose
    passive sets are off for many rows (as early in a fit)."""
    k, bands, n = 8, 60, 3000
    E = 0.2 + rng.random((k, bands))
    A = rng.dirichlet(np.full(k, 0.3), size=n)
    A[A < 0.05] = 0.0
    A /= A.sum(axis=1, keepdims=True)
    X = A @ E + 0.01 * rng.standard_normal((n, bands))
    E_prev = E * (1.0 + 0.3 * rng.standard_normal(E.shape)).clip(0.1)
    W_prev = kernels.fcls_rows(X @ E_prev.T, E_prev @ E_prev.T)
    return X, E, W_prev


def fcls_objective(W: np.ndarray, XHt: np.ndarray, HHt: np.ndarray) -> np.ndarray:
    """Per row, ``½ wᵀ HHᵀ w - wᵀ (X Hᵀ)ᵀ``: the least-squares objective up to a constant."""
    return 0.5 * np.einsum("ij,ij->i", W @ HHt, W) - np.einsum("ij,ij->i", XHt, W)


def augmented_solve_tol(HHt: np.ndarray) -> float:
    """Rounding of one solve with FCLS's augmented Gram: its condition number times eps, times
    10 (the usual margin of these tests)."""
    k = HHt.shape[0]
    gram = HHt + kernels.SUM_TO_ONE_WEIGHT_EXACT * np.trace(HHt) / k
    return 10.0 * float(np.linalg.cond(gram)) * EPS64


@pytest.mark.parametrize("rounds", [0, 1, kernels.FCLS_WARM_ROUNDS])
def test_bounded_fcls_stays_feasible_and_never_increases_the_objective(mixtures, rounds):
    X, H, W_prev = mixtures
    XHt, HHt = X @ H.T, H @ H.T
    exact = kernels.fcls_rows(XHt, HHt)
    got = kernels.fcls_rows(XHt, HHt, W=W_prev, max_iter=rounds)
    assert (got >= 0).all()
    # rows sum to one within the augmented row's 1 / weight (exact rows; rescaled fallbacks
    # sum to one to rounding)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=10 / kernels.SUM_TO_ONE_WEIGHT_EXACT)
    f_prev, f_got, f_exact = (fcls_objective(V, XHt, HHt) for V in (W_prev, got, exact))
    scale = np.abs(f_prev) + 1.0
    assert (f_got <= f_prev + 1e-9 * scale).all()  # no row gets worse than its warm start
    assert (f_got >= f_exact - 1e-9 * scale).all()  # and none beats the exact solve
    assert (np.abs(got - exact).max(axis=1) > 1e-6).any()  # the bound binds (far-off start)


def test_more_rounds_leave_fewer_rows_off_the_exact_solve(mixtures):
    X, H, W_prev = mixtures
    XHt, HHt = X @ H.T, H @ H.T
    exact = kernels.fcls_rows(XHt, HHt)
    off = [int((np.abs(kernels.fcls_rows(XHt, HHt, W=W_prev, max_iter=r) - exact).max(axis=1)
                > 1e-6).sum()) for r in range(6)]
    assert off == sorted(off, reverse=True) and off[0] > off[-1]
    assert off[kernels.FCLS_WARM_ROUNDS] < 0.01 * len(X)  # the default: under 1% of the rows


def test_bounded_fcls_at_the_fixed_point_is_the_exact_solve(mixtures):
    """Warm-started from the exact rows (a fit's fixed point), round 0 already solves every row
    exactly: no pivoting, the same rows to the rounding of one solve."""
    X, H, _ = mixtures
    XHt, HHt = X @ H.T, H @ H.T
    exact = kernels.fcls_rows(XHt, HHt)
    again = kernels.fcls_rows(XHt, HHt, W=exact, max_iter=0)
    np.testing.assert_allclose(again, exact, rtol=0, atol=augmented_solve_tol(HHt))


def test_unbounded_fcls_from_a_warm_start_is_the_exact_solve(mixtures):
    X, H, W_prev = mixtures
    XHt, HHt = X @ H.T, H @ H.T
    np.testing.assert_allclose(kernels.fcls_rows(XHt, HHt, W=W_prev), kernels.fcls_rows(XHt, HHt),
                               rtol=0, atol=augmented_solve_tol(HHt))


def test_many_distinct_passive_sets_solve_as_scipy_nnls(rng):
    """Sparse solutions of k = 10 give hundreds of distinct passive sets: the batched path."""
    k, n, m = 10, 40, 1500
    A = rng.random((n, k))
    truth = rng.random((k, m)) * (rng.random((k, m)) < 0.4)
    B = A @ truth + 0.05 * rng.standard_normal((n, m))
    got = kernels.nnls_bpp(A.T @ A, A.T @ B)
    assert len(np.unique(got > 0, axis=1).T) > 100
    expected = np.stack([scipy.optimize.nnls(A, B[:, j])[0] for j in range(m)], axis=1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9 * np.abs(expected).max())


def test_fit_iterations_with_one_round_stay_feasible_and_descend(mixtures, monkeypatch):
    """The panel step of a sum-to-one fit with the bound at its tightest: every iterate is on
    the simplex, float32 stays float32, and the loss never increases."""
    monkeypatch.setenv("DNMF_FCLS_ROUNDS", "1")
    X, H_true, W_prev = mixtures
    X = X.clip(0).astype(np.float32)
    W = W_prev.astype(np.float32)
    H = (H_true * 1.3).clip(0)  # a start off the truth
    sq_norm = float(np.einsum("ij,ij->", X, X, dtype=np.float64))
    losses = []
    for _ in range(8):
        HHt = H @ H.T
        W, (WtX, WtW) = kernels.panel_step(X, W, H.astype(np.float32), HHt, solver="hals",
                                           sum_to_one=True)
        assert W.dtype == np.float32 and (W >= 0).all()
        np.testing.assert_allclose(W.sum(axis=1, dtype=np.float64), 1.0,
                                   atol=10 / kernels.SUM_TO_ONE_WEIGHT_EXACT)
        H = kernels.update_h(H, WtX, WtW, solver="hals")
        losses.append(kernels.frobenius_loss(sq_norm, WtX, WtW, H))
    # each step minimises over one factor; float32 products round at ~1e-6 of ||X||²
    assert all(b <= a + 1e-6 * sq_norm for a, b in zip(losses, losses[1:], strict=False))


@pytest.mark.parametrize("value,expected", [("", kernels.FCLS_WARM_ROUNDS), ("exact", None),
                                            ("EXACT", None), ("0", 0), ("7", 7)])
def test_fcls_warm_rounds_default_and_set_by_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("DNMF_FCLS_ROUNDS", value)
    assert kernels.fcls_warm_rounds() == expected


def test_fcls_warm_rounds_refuses_a_negative_count(monkeypatch):
    monkeypatch.setenv("DNMF_FCLS_ROUNDS", "-1")
    with pytest.raises(ValueError, match="DNMF_FCLS_ROUNDS"):
        kernels.fcls_warm_rounds()
