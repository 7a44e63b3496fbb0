"""The solver contract: every solver inherits the same checks, and each matches scikit-learn.

References: ``sklearn.decomposition.NMF`` (``cd`` for hals/anls, ``mu`` for mu) from the same
initial factors; planted low-rank data; exact properties (non-negativity, monotone loss,
reproducibility, chunk invariance, dtype preservation).
"""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from sklearn.decomposition import NMF as SkNMF
from sklearn.decomposition._nmf import _initialize_nmf
from sklearn.exceptions import ConvergenceWarning

import dnmf
from tests.conftest import make_planted

CHUNKINGS = {
    "one-chunk": (300, 60),
    "row-panels": (40, 60),
    "irregular": ((70, 30, 100, 55, 45), (60,)),
    "tiles": (100, 25),  # column tiles: the plan merges them into row panels
}


def sklearn_reference(X, W0, H0, solver, max_iter):
    """scikit-learn's relative error from (W0, H0) after ``max_iter`` iterations (tol=0)."""
    model = SkNMF(
        n_components=W0.shape[1], solver={"hals": "cd", "anls": "cd", "mu": "mu"}[solver],
        init="custom", max_iter=max_iter, tol=0.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = model.fit_transform(X, W=W0.copy(), H=H0.copy())
    return W, model.components_, model.reconstruction_err_ / np.linalg.norm(X)


class SolverContract:
    """Checks every solver must pass; subclasses set ``solver`` and ``max_iter``."""

    solver: str
    max_iter: int = 100
    #: scikit-learn's iterations for the reference: equal to ours where the update rules are the
    #: same (mu = mu); to convergence where ours does more per iteration (accelerated hals,
    #: anls).
    sk_max_iter: int = 100
    #: our iterations in the comparison with scikit-learn (default: max_iter)
    match_iter: int | None = None
    monotone: bool = True

    def fit(self, X, chunks=None, **kw):
        kw.setdefault("scheduler", "threads")
        kw.setdefault("random_state", 0)
        kw.setdefault("max_iter", self.max_iter)
        kw.setdefault("tol", 0.0)
        kw.setdefault("min_panel_bytes", 0)  # keep the layouts under test
        data = da.from_array(X, chunks=chunks) if chunks is not None else X
        return dnmf.factorize(data, kw.pop("rank", 5), solver=self.solver, **kw)

    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    @pytest.mark.parametrize("layout", list(CHUNKINGS))
    def test_matches_sklearn_from_same_init(self, dtype, layout):
        X, _, _ = make_planted(dtype=dtype)
        W0, H0 = _initialize_nmf(X, 5, init="nndsvda", random_state=0)
        _, _, sk_rel = sklearn_reference(X, W0, H0, self.solver, self.sk_max_iter)
        n_iter = self.match_iter or self.max_iter
        result = self.fit(X, CHUNKINGS[layout], init="custom", W_init=W0, H_init=H0,
                          max_iter=n_iter)
        assert result.relative_error == pytest.approx(sk_rel, rel=0.01)
        assert result.n_iter == n_iter

    def test_non_negative_factors(self, planted):
        result = self.fit(planted, (40, 60))
        assert (np.asarray(result.W) >= 0).all() and (result.H >= 0).all()

    def test_loss_is_monotone(self, planted):
        if not self.monotone:
            pytest.skip("no monotonicity guarantee")
        result = self.fit(planted, (40, 60), init="random")
        history = np.array(result.loss_history)
        increases = np.diff(history)
        assert (increases <= 1e-10 * history[0]).all(), increases.max()

    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    def test_dtype_is_preserved(self, planted, dtype):
        result = self.fit(planted.astype(dtype), (60, 60), max_iter=5)
        assert np.asarray(result.W).dtype == dtype and result.H.dtype == dtype

    def test_same_seed_same_chunking_is_identical(self, planted):
        a = self.fit(planted, (40, 60), max_iter=20, random_state=3)
        b = self.fit(planted, (40, 60), max_iter=20, random_state=3)
        np.testing.assert_array_equal(np.asarray(a.W), np.asarray(b.W))
        np.testing.assert_array_equal(a.H, b.H)
        assert a.loss_history == b.loss_history

    def test_chunkings_agree(self, planted):
        # random init does not depend on the chunking, so the iterates differ by rounding only;
        # stated tolerance: relative errors within 1e-4 (relative), factors within 1e-3
        results = [
            self.fit(planted, chunks, init="random", max_iter=self.max_iter // 2)
            for chunks in CHUNKINGS.values()
        ]
        errors = [r.relative_error for r in results]
        assert max(errors) == pytest.approx(min(errors), rel=1e-4)
        for r in results[1:]:
            np.testing.assert_allclose(r.H, results[0].H, rtol=1e-3, atol=1e-6 * r.H.max())

    def test_recovers_planted_rank_to_noise_level(self):
        X, _, _ = make_planted(noise=0.001)
        result = self.fit(X, (50, 60), tol=1e-7, max_iter=2 * self.max_iter)
        assert result.relative_error < 0.01

    def test_all_zero_rows_and_columns_end_at_zero(self, planted):
        X = planted.copy()
        X[[3, 77]] = 0
        X[:, [5]] = 0
        result = self.fit(X, (40, 60), max_iter=50)
        W = np.asarray(result.W)
        assert np.abs(W[[3, 77]]).max() < 1e-6 * W.max()
        assert np.abs(result.H[:, 5]).max() < 1e-6 * result.H.max()


class TestHALS(SolverContract):
    solver = "hals"
    # accelerated HALS (several sweeps per update) is not scikit-learn's cd update for update
    # (one sweep is: test_kernels): compare with cd run to convergence
    match_iter = 150
    sk_max_iter = 2000


class TestMU(SolverContract):
    solver = "mu"
    max_iter = 200
    sk_max_iter = 200


class TestANLS(SolverContract):
    solver = "anls"
    max_iter = 150
    match_iter = 300
    sk_max_iter = 2000


@pytest.mark.cluster
@pytest.mark.parametrize("cls", [TestHALS, TestMU, TestANLS])
def test_matches_sklearn_on_local_cluster(local_client, cls):
    solver, max_iter = cls.solver, cls.match_iter or cls.max_iter
    X, _, _ = make_planted(dtype="float32")
    W0, H0 = _initialize_nmf(X, 5, init="nndsvda", random_state=0)
    _, _, sk_rel = sklearn_reference(X, W0, H0, solver, cls.sk_max_iter)
    result = dnmf.factorize(
        da.from_array(X, chunks=(40, 60)), 5, solver=solver, init="custom", W_init=W0,
        H_init=H0, max_iter=max_iter, tol=0.0, client=local_client, min_panel_bytes=0,
    )
    assert result.relative_error == pytest.approx(sk_rel, rel=0.01)
    assert np.asarray(result.W).dtype == np.float32


@pytest.mark.cluster
def test_cluster_and_threads_agree(local_client, planted):
    kw = dict(solver="hals", init="random", random_state=1, max_iter=30, tol=0.0,
              min_panel_bytes=0)
    on_cluster = dnmf.factorize(da.from_array(planted, chunks=(40, 60)), 5, client=local_client,
                                **kw)
    in_process = dnmf.factorize(da.from_array(planted, chunks=(40, 60)), 5, scheduler="threads",
                                **kw)
    np.testing.assert_allclose(on_cluster.H, in_process.H, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(on_cluster.W), np.asarray(in_process.W), rtol=1e-10)


@pytest.mark.parametrize("solver,beta_loss", [("hals", "frobenius"), ("mu", "frobenius"),
                                              ("mu", "kullback-leibler")])
def test_sub_blocked_kernels_keep_the_whole_panel_iterates(monkeypatch, solver, beta_loss):
    """The cache-blocked panel kernels change no iterate beyond rounding: 30 iterations from
    the same start with the whole-panel kernels (the kernels before sub-blocking) as the
    reference. float64, so that rounding (~1e-16 per product, summed in another order) stays
    far below the 1e-9 bound after 30 iterations of a non-expansive update."""
    from dnmf import divergence, kernels

    rng = np.random.default_rng(5)
    X = rng.poisson(4.0 * rng.random((3000, 6)) @ rng.random((6, 120))).astype(np.float64)
    options = {"solver": solver, "beta_loss": beta_loss, "init": "random", "random_state": 0,
               "max_iter": 30, "tol": 0.0}
    with monkeypatch.context() as patch:  # small sub-blocks: several per panel, a short tail
        patch.setattr(kernels, "panel_block_rows", lambda n, itemsize: 1024)
        patch.setattr(divergence, "beta_block_rows", lambda n, itemsize: 448)
        blocked = dnmf.factorize(X, 6, **options)
    whole_panel, whole_beta = kernels.panel_step_unblocked, divergence.beta_panel_step
    with monkeypatch.context() as patch:  # the kernels as they were: one pass per product
        patch.setattr(kernels, "panel_step", lambda X, W, H, HHt, inner_sweeps=None, **kw:
                      whole_panel(X, W, H, HHt, inner_sweeps=inner_sweeps or
                                  kernels.w_inner_sweeps(W.shape[1], X.shape[1]), **kw))
        patch.setattr(divergence, "beta_panel_step", lambda *a, **kw: whole_beta(
            *a, **{**kw, "block_rows": 1 << 20}))
        whole = dnmf.factorize(X, 6, **options)
    for got, ref in ((blocked.W, whole.W), (blocked.H, whole.H)):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9 * np.abs(ref).max())
    np.testing.assert_allclose(blocked.loss_history, whole.loss_history, rtol=1e-9)


@pytest.mark.cluster
@pytest.mark.parametrize(("solver", "alpha_H"), [("hals", 0.0), ("mu", 0.0), ("anls", 0.0),
                                                 ("hals", 0.05)])
def test_h_updated_on_the_workers_equals_the_drivers_update(local_client, planted, monkeypatch,
                                                            solver, alpha_H):
    """A wide X's H is updated by column blocks on the workers (no k x n WᵀX on the driver);
    columns of H are independent given WᵀW, so the iterates are the driver's to rounding."""
    from distributed import get_task_stream

    kw = dict(solver=solver, init="random", random_state=1, max_iter=15, tol=0.0,
              min_panel_bytes=0, alpha_W=alpha_H, alpha_H=alpha_H, l1_ratio=0.5)
    X = da.from_array(planted, chunks=(40, planted.shape[1]))
    on_driver = dnmf.factorize(X, 5, client=local_client, **kw)
    monkeypatch.setenv("DNMF_H_ON_WORKERS_BYTES", "1000")  # 5 x 60 x 8 B: 2 column blocks
    with get_task_stream(client=local_client) as stream:
        on_workers = dnmf.factorize(X, 5, client=local_client, **kw)
    names = {d["key"][0] for d in stream.data if isinstance(d["key"], tuple)}
    assert any(n.startswith("dnmf-partials-") and n.endswith("-h") for n in names)
    # float64 data: per-column products in other BLAS blockings differ in the last bits, and
    # 15 iterations of a contracting map keep them within a few hundred ulps
    np.testing.assert_allclose(on_workers.H, on_driver.H, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(on_workers.W), np.asarray(on_driver.W), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(on_workers.loss_history, on_driver.loss_history, rtol=1e-9)


# --- loss_every: the stopping test and the finiteness guard see evaluated losses only ---------


@pytest.mark.parametrize("seed", range(5))
def test_stopping_test_with_every_loss_is_the_previous_iteration_test(seed):
    from dnmf.solvers import _converged

    rng = np.random.default_rng(seed)
    history = list(np.cumsum(-rng.random(12) * 10.0 ** -rng.integers(1, 7, 12)) + 100.0)
    tol = 1e-4
    for t in range(1, len(history) + 1):
        h = history[:t]
        before = t > 1 and (h[-2] - h[-1]) <= tol * h[-2]  # the test before loss_every
        assert (_converged(h, tol) == "tol") == before


def test_stopping_test_skips_unevaluated_losses_and_spreads_the_decrease():
    from dnmf.solvers import _converged

    nan = float("nan")
    assert _converged([100.0, nan, nan], 1e-3) == ""  # the last loss was not evaluated
    # 100 -> 99.8 over 3 iterations: 6.7e-4 per iteration relative to 100
    assert _converged([100.0, nan, nan, 99.8], 1e-3) == "tol"
    assert _converged([100.0, nan, nan, 99.8], 5e-4) == ""
    assert _converged([nan, nan, 0.0], 1e-3) == "exact"


def test_unevaluated_losses_are_not_a_diverged_fit():
    from dnmf.errors import NumericalError
    from dnmf.solvers import NON_FINITE, check_finite_losses

    nan = float("nan")
    check_finite_losses([[5.0, nan, nan]], [""])  # skipped: no error
    check_finite_losses([[5.0, nan, 4.0], [5.0, nan, nan]], ["", NON_FINITE])
    with pytest.raises(NumericalError, match="non-finite at iteration 3") as info:
        check_finite_losses([[5.0, nan, nan], [5.0, nan, float("inf"), nan, nan]],
                            [NON_FINITE, NON_FINITE])
    assert info.value.iteration == 3
