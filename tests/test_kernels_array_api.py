"""The dense kernels of an iteration are namespace-generic: they run on array-API arrays that
live on a device other than the host, without converting them to numpy, and agree with numpy.

``array_api_strict`` arrays on its ``device1`` stand in for a GPU: they refuse ``np.asarray``
(like CuPy's arrays) and refuse to mix with host arrays, so a hidden host conversion or a host
operand that was not moved makes these tests fail.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from dnmf import divergence, graph, kernels
from tests.conftest import make_planted

xps = pytest.importorskip("array_api_strict")
DEVICE = xps.Device("device1")


def on_device(a: np.ndarray):
    return xps.asarray(a, device=DEVICE)


def assert_on_device(a) -> None:
    assert type(a).__module__.startswith("array_api_strict"), type(a)
    assert a.device == DEVICE


def host(a) -> np.ndarray:
    return np.from_dlpack(a)


TOL = {np.float32: dict(rtol=1e-6, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}
#: HALS sweeps work on a C-ordered transposed copy of the factor with numpy, and on whatever
#: layout the namespace's copy keeps elsewhere: the k-term sums inside ``G[t] @ Fᵀ`` round in
#: another order, by ~1 float32 ulp per step, and a few sweeps carry that to ~3e-6 absolute
#: (measured on these panels). float64 stays at 1e-12.
HALS_TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: TOL[np.float64]}


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def panel(request):
    """A row panel X (1,200 x 40, rank 5) with current W (1,200 x 5), H and HHt."""
    dtype = request.param
    X, _, _ = make_planted(1200, 40, 5, seed=3, dtype=dtype.__name__)
    rng = np.random.default_rng(4)
    W = rng.random((1200, 5)).astype(dtype)
    H = rng.random((5, 40)).astype(dtype)
    HHt = H.astype(np.float64) @ H.T.astype(np.float64)
    return dtype, X, W, H, HHt


def test_the_device_refuses_host_conversion():
    # the premise of every test here: a kernel that converted a block to numpy would fail
    a = on_device(np.ones((2, 2)))
    with pytest.raises(RuntimeError, match="device"):
        np.asarray(a)
    with pytest.raises(ValueError, match="different devices"):
        a + xps.asarray(np.ones((2, 2)))


@pytest.mark.parametrize("solver", ["hals", "mu"])
@pytest.mark.parametrize("regs", [(0.0, 0.0), (0.05, 0.1)], ids=["plain", "l1-l2"])
def test_panel_step_on_device_matches_numpy(panel, solver, regs):
    dtype, X, W, H, HHt = panel
    l1, l2 = regs
    W_np, (WtX_np, WtW_np) = kernels.panel_step(X, W, H, HHt, solver=solver, l1=l1, l2=l2)
    W_dev, (WtX, WtW) = kernels.panel_step(on_device(X), on_device(W), H, HHt, solver=solver,
                                           l1=l1, l2=l2)
    assert_on_device(W_dev)
    # the partial sums leave the task as host numpy arrays, in float64
    assert isinstance(WtX, np.ndarray) and isinstance(WtW, np.ndarray)
    assert WtX.dtype == WtW.dtype == np.float64
    np.testing.assert_allclose(host(W_dev), W_np, **(HALS_TOL if solver == "hals" else TOL)[dtype])
    # float32: numpy sums 256-row products, a device 4,096-row ones (float32 rounding apart)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(WtX, WtX_np, rtol=rtol)
    np.testing.assert_allclose(WtW, WtW_np, rtol=rtol)


def test_hals_sweeps_and_mu_step_on_device(panel):
    dtype, X, W, H, HHt = panel
    XHt = X @ H.T
    for F_np, F_dev in [
        (kernels.hals_sweeps(W, XHt, HHt, sweeps=3, l2=0.1),
         kernels.hals_sweeps(on_device(W), on_device(XHt), HHt, sweeps=3, l2=0.1)),
        (kernels.mu_step(W, XHt, HHt, l1=0.01), kernels.mu_step(on_device(W), on_device(XHt),
                                                                 HHt, l1=0.01)),
    ]:
        assert_on_device(F_dev)
        np.testing.assert_allclose(host(F_dev), F_np, **HALS_TOL[dtype])


def test_blocked_float32_partials_on_device():
    # float32 panels longer than two blocks take the blocked float64 sums, on the device too
    rows = 2 * kernels.DEVICE_PARTIAL_BLOCK_ROWS + 123
    X, _, _ = make_planted(rows, 20, 4, dtype="float32")
    W = np.random.default_rng(0).random((rows, 4)).astype(np.float32)
    WtX, WtW = kernels.gram_partials(on_device(X), on_device(W))
    assert_on_device(WtX)
    assert WtX.dtype == xps.float64 and WtW.dtype == xps.float64
    exact = W.astype(np.float64).T @ X.astype(np.float64)
    np.testing.assert_allclose(host(WtX), exact, rtol=2e-6)
    np.testing.assert_allclose(host(WtW), W.astype(np.float64).T @ W, rtol=2e-6)


def test_exact_nnls_updates_refuse_device_blocks(panel):
    _, X, W, H, HHt = panel
    for kwargs in (dict(solver="anls"), dict(solver="hals", sum_to_one=True)):
        with pytest.raises(ValueError, match="numpy blocks only"):
            kernels.update_w(on_device(W), on_device(X @ H.T), HHt, **kwargs)


def _missing(kind: str, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(X, observed, masked) for no missing values, NaN entries, or an explicit mask."""
    if kind == "none":
        return X, None, False
    if kind == "nan":
        X = X.copy()
        X[::7, ::3] = np.nan
        return X, None, True
    return X, (np.arange(X.size).reshape(X.shape) % 5) > 0, True


BETAS = [2.0, 1.0, 0.0, 0.5, 3.0]


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("missing", ["none", "nan", "mask"])
def test_beta_panel_step_on_device_matches_numpy(panel, beta, missing):
    dtype, X, W, H, _ = panel
    X, observed, masked = _missing(missing, X + dtype(0.1))  # X > 0 for β <= 0
    W_np, parts_np = divergence.beta_panel_step(X, W, H, beta=beta, observed=observed,
                                                masked=masked, l1=0.01, l2=0.02)
    W_dev, parts = divergence.beta_panel_step(
        on_device(X), on_device(W), H, beta=beta,
        observed=None if observed is None else on_device(observed), masked=masked,
        l1=0.01, l2=0.02)
    assert_on_device(W_dev)
    np.testing.assert_allclose(host(W_dev), W_np, **TOL[dtype])
    numH, denH, loss, WtW = parts
    for got, want in zip((numH, denH, WtW), (parts_np[0], parts_np[1], parts_np[3]),
                         strict=True):
        assert isinstance(got, np.ndarray) and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-10)
    assert isinstance(loss, float)
    assert loss == pytest.approx(parts_np[2], rel=1e-10)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("missing", ["none", "nan", "mask"])
def test_panel_loss_on_device_matches_numpy(panel, beta, missing):
    dtype, X, W, H, _ = panel
    X, observed, masked = _missing(missing, X + dtype(0.1))
    want = divergence.panel_loss(X, W, H, beta=beta, observed=observed, masked=masked)
    got = divergence.panel_loss(on_device(X), on_device(W), H, beta=beta,
                                observed=None if observed is None else on_device(observed),
                                masked=masked)
    assert all(isinstance(v, float) for v in got)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_to_host_and_asarray_on():
    a = np.arange(6.0).reshape(2, 3)
    assert kernels.to_host(a) is a  # numpy: no copy
    assert kernels.asarray_on(a, a) is a
    moved = kernels.asarray_on(a, on_device(np.zeros(1)), dtype=xps.float32)
    assert_on_device(moved)
    assert moved.dtype == xps.float32
    back = kernels.to_host(moved)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, a)


@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_iteration_graph_with_device_blocks(solver):
    # the panel tasks, the W blocks and the tree-reduced partials with device blocks: W stays
    # on the device, the partials and the loss come back to the host, equal to numpy's
    X = make_planted(400, 30, 4, dtype="float32")[0]
    Xh = da.from_array(X, chunks=(100, 30))
    Wh = graph.random_w(Xh.chunks[0], 4, seed=0, scale=0.5, dtype=np.float32)
    H = np.random.default_rng(0).random((4, 30)).astype(np.float32)
    # numpy metas: dask's metadata needs numpy's API; the blocks themselves are on the device
    Xd = Xh.map_blocks(on_device, dtype=Xh.dtype, meta=Xh._meta)
    Wd = Wh.map_blocks(on_device, dtype=Wh.dtype, meta=Wh._meta)
    W_np, parts_np = graph.iteration_graph(Xh, Wh, H, solver=solver)
    W_dev, parts = graph.iteration_graph(Xd, Wd, H, solver=solver)
    loss_np = graph.loss_graph(Xh, W_np, H, beta=1.0)
    loss = graph.loss_graph(Xd, W_dev, H, beta=1.0)
    (want_W, want_parts, want_loss), (blocks, got_parts, got_loss) = dask.compute(
        (W_np, parts_np, loss_np), (W_dev.to_delayed().ravel().tolist(), parts, loss),
        scheduler="sync")
    for block in blocks:
        assert_on_device(block)
    np.testing.assert_allclose(np.vstack([host(b) for b in blocks]), want_W,
                               **(HALS_TOL if solver == "hals" else TOL)[np.float32])
    # from the same W (mu) the sums are equal; from W's float32 rounding apart (hals), close
    rtol = 1e-5 if solver == "hals" else 1e-12
    for got, want in zip(got_parts, want_parts, strict=True):
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, want, rtol=rtol)
    np.testing.assert_allclose(got_loss, want_loss, rtol=rtol)
