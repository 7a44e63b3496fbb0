"""The device choice (``device="cpu" | "gpu"``, ``--device``, ``--scheduler cuda``).

Everywhere: parsing, the clear errors when a GPU is asked for and cannot be used, and that
``device="cpu"`` is the default path bit for bit. Tests marked ``gpu`` run only where CuPy sees a
CUDA device (``tests/conftest.py`` skips them elsewhere, saying why): the GPU path agrees with the
CPU path and hands back numpy.
"""

from __future__ import annotations

import importlib.util
import re

import dask.array as da
import numpy as np
import pytest
import zarr

import dnmf
from dnmf import device
from dnmf.cluster import planned_context, resolve_scheduler_name
from dnmf.errors import InputError
from tests.conftest import make_planted
from tests.test_cli import run_cli

HAS_GPU = device.gpu_count() > 0
HAS_DASK_CUDA = importlib.util.find_spec("dask_cuda") is not None
NO_GPU_MESSAGE = r"device='gpu' (needs CuPy, which is not installed|but CuPy finds no CUDA device)"


@pytest.fixture(scope="module")
def planted32() -> np.ndarray:
    """A 2,000 x 120 rank-6 float32 matrix with 1% noise."""
    return make_planted(2000, 120, 6, seed=11, dtype="float32")[0]


@pytest.mark.parametrize(("value", "expected"), [("cpu", "cpu"), ("GPU", "gpu"), ("gpu", "gpu")])
def test_resolve_device(value, expected):
    assert device.resolve_device(value) == expected


@pytest.mark.parametrize("value", ["tpu", "", None, 0])
def test_unknown_device_is_an_input_error(value):
    with pytest.raises(InputError, match=re.escape(f"unknown device {value!r}: use 'cpu' or "
                                                   "'gpu'")):
        device.resolve_device(value)


def test_to_host_of_numpy_blocks_adds_no_task():
    A = da.ones((10, 3), chunks=(5, 3))
    assert device.on_host(A)
    assert device.to_host(A) is A


# ---------------------------------------------------------------------------------------------
# device="cpu" is the default path, bit for bit
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("solver", "beta_loss"), [("hals", "frobenius"), ("mu", "frobenius"),
                                                   ("mu", "kullback-leibler")])
def test_device_cpu_is_bit_identical_to_the_default(planted32, solver, beta_loss):
    kwargs = dict(solver=solver, beta_loss=beta_loss, random_state=0, max_iter=8, tol=0,
                  scheduler="threads")
    default = dnmf.factorize(planted32, 6, **kwargs)
    cpu = dnmf.factorize(planted32, 6, device="cpu", **kwargs)
    assert cpu.device == default.device == "cpu"
    np.testing.assert_array_equal(cpu.W, default.W)
    np.testing.assert_array_equal(cpu.H, default.H)
    np.testing.assert_array_equal(cpu.loss_history, default.loss_history)  # NaN: not evaluated


def test_estimator_and_store_record_the_device(planted32, tmp_path):
    model = dnmf.NMF(4, random_state=0, max_iter=5, scheduler="threads")
    assert model.get_params()["device"] == "cpu"
    model.fit(planted32, out=str(tmp_path / "r.zarr"))
    assert model.result_.device == "cpu"
    assert zarr.open_group(str(tmp_path / "r.zarr"), mode="r").attrs["device"] == "cpu"


# ---------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_GPU, reason="a CUDA device is present")
def test_gpu_without_cupy_or_device_is_one_clear_error(planted32, tmp_path):
    out = tmp_path / "o.zarr"
    with pytest.raises(InputError, match=NO_GPU_MESSAGE) as info:
        dnmf.factorize(planted32, 4, device="gpu", out=str(out), scheduler="threads")
    message = str(info.value)
    assert "\n" not in message and "device='cpu'" in message
    assert not out.exists()
    with pytest.raises(InputError, match=NO_GPU_MESSAGE):
        dnmf.NMF(4, device="gpu").fit(planted32)


@pytest.mark.skipif(HAS_GPU, reason="a CUDA device is present")
@pytest.mark.parametrize("extra", [[], ["--dry-run"]], ids=["fit", "dry-run"])
def test_cli_gpu_without_cupy_or_device_is_one_line(tmp_path, extra):
    X = make_planted(200, 20, 3, dtype="float32")[0]
    path = tmp_path / "x.zarr"
    zarr.create_array(str(path), shape=X.shape, chunks=(100, 20), dtype="float32")[...] = X
    out = tmp_path / "out.zarr"
    proc = run_cli("fit", str(path), "-k", "3", "-o", str(out), "--device", "gpu", *extra)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert re.search(NO_GPU_MESSAGE, lines[0]) and "--device cpu" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(solver="anls"), "solver='anls' solves exact NNLS problems on the host"),
    (dict(w_sum_to_one=True), "w_sum_to_one solves exact NNLS problems on the host"),
    (dict(n_restarts=3), "n_restarts=3 is not batched on the GPU"),
    (dict(persist_w=False), "persist_w=False streams W through a Zarr store"),
])
def test_what_the_gpu_does_not_run_is_refused_before_any_work(planted32, tmp_path, kwargs,
                                                              message):
    out = tmp_path / "o.zarr"
    with pytest.raises(InputError, match=re.escape(message)):
        dnmf.factorize(planted32, 4, device="gpu", out=str(out), **kwargs)
    assert not out.exists()


def test_gpu_with_sparse_x_is_refused():
    import scipy.sparse as sp

    X = sp.random(200, 50, density=0.1, format="csr", random_state=0, dtype=np.float32)
    with pytest.raises(InputError, match=re.escape("device='gpu' runs dense X only, and X is "
                                                   "sparse")):
        dnmf.factorize(X, 3, device="gpu", beta_loss="kullback-leibler")


def test_auto_scheduler_on_a_gpu_is_in_process(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    big = 10 * 2**30
    assert resolve_scheduler_name("auto", x_nbytes=big) == "local"
    assert resolve_scheduler_name("auto", x_nbytes=big, gpu=True) == "threads"
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://10.0.0.1:8786")
    assert resolve_scheduler_name("auto", x_nbytes=big, gpu=True) == "tcp://10.0.0.1:8786"


@pytest.mark.skipif(HAS_DASK_CUDA, reason="dask-cuda is installed")
def test_scheduler_cuda_without_dask_cuda_is_one_clear_error(planted32):
    message = "--scheduler cuda needs dask-cuda, which is not installed — pip install 'dnmf[gpu]'"
    with pytest.raises(InputError, match=re.escape(message)):
        planned_context("cuda")
    with pytest.raises(InputError, match=re.escape(message)):
        dnmf.factorize(planted32, 3, scheduler="cuda")


# ---------------------------------------------------------------------------------------------
# On a GPU
# ---------------------------------------------------------------------------------------------

#: (solver, loss, missing values): HALS and MU for Frobenius, KL by MU, masked MU
GPU_CASES = [("hals", "frobenius", False), ("mu", "frobenius", False),
             ("mu", "kullback-leibler", False), ("mu", "frobenius", True)]


def _relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.gpu
@pytest.mark.parametrize(("solver", "loss", "masked"), GPU_CASES)
def test_gpu_agrees_with_cpu_after_10_iterations(planted32, solver, loss, masked):
    X = planted32.copy()
    if masked:
        X[::13, ::7] = np.nan
    kwargs = dict(solver=solver, beta_loss=loss, random_state=0, max_iter=10, tol=0,
                  scheduler="threads", missing="mask" if masked else "error",
                  max_panel_bytes=250_000)  # several panels: the tree reduction runs too
    cpu = dnmf.factorize(X, 6, **kwargs)
    gpu = dnmf.factorize(X, 6, device="gpu", **kwargs)
    assert gpu.device == "gpu" and gpu.n_iter == cpu.n_iter == 10
    assert isinstance(gpu.W, np.ndarray) and isinstance(gpu.H, np.ndarray)
    assert gpu.W.dtype == gpu.H.dtype == np.float32
    # float32 products summed in another order: agreement to float32's digits, amplified by
    # ten iterations
    assert _relative_difference(gpu.W, cpu.W) < 1e-3
    assert _relative_difference(gpu.H, cpu.H) < 1e-3
    np.testing.assert_allclose(gpu.loss_history, cpu.loss_history, rtol=1e-4)
    assert abs(gpu.relative_error - cpu.relative_error) <= 0.005 * cpu.relative_error


@pytest.mark.gpu
def test_gpu_store_and_checkpoints_are_host_arrays(planted32, tmp_path):
    out = tmp_path / "g.zarr"
    # checkpoints every 3 iterations: W goes to the host for each and back to the device
    result = dnmf.factorize(planted32, 6, device="gpu", random_state=0, max_iter=7, tol=0,
                            scheduler="threads", out=str(out), checkpoint_every=3)
    reference = dnmf.factorize(planted32, 6, random_state=0, max_iter=7, tol=0,
                               scheduler="threads")
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["status"] == "complete" and group.attrs["device"] == "gpu"
    W_stored = group["W"][...]
    assert isinstance(W_stored, np.ndarray)
    assert isinstance(result.W, da.Array) and isinstance(result.W.compute(), np.ndarray)
    assert _relative_difference(W_stored, reference.W) < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("persist_x", [True, False], ids=["x-on-device", "x-streamed"])
def test_gpu_x_kept_on_device_or_streamed_give_the_same_fit(planted32, persist_x):
    kwargs = dict(random_state=0, max_iter=5, tol=0, scheduler="threads", device="gpu")
    streamed = dnmf.factorize(planted32, 6, persist_x=False, **kwargs)
    result = dnmf.factorize(planted32, 6, persist_x=persist_x, **kwargs)
    assert any("X kept in device memory" in n for n in result.notes) == persist_x
    np.testing.assert_allclose(result.W, streamed.W, rtol=1e-6, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_panel_step_on_cupy_blocks(solver):
    import cupy

    from dnmf import kernels

    X = make_planted(3000, 50, 5, dtype="float32")[0]
    W = np.random.default_rng(0).random((3000, 5)).astype(np.float32)
    H = np.random.default_rng(1).random((5, 50)).astype(np.float32)
    HHt = H.astype(np.float64) @ H.T.astype(np.float64)
    W_np, parts_np = kernels.panel_step(X, W, H, HHt, solver=solver)
    W_gpu, parts = kernels.panel_step(cupy.asarray(X), cupy.asarray(W), H, HHt, solver=solver)
    assert isinstance(W_gpu, cupy.ndarray) and W_gpu.dtype == cupy.float32
    assert all(isinstance(p, np.ndarray) and p.dtype == np.float64 for p in parts)
    np.testing.assert_allclose(W_gpu.get(), W_np, rtol=1e-4, atol=1e-5)
    for got, want in zip(parts, parts_np, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_DASK_CUDA, reason="needs dask-cuda")
def test_scheduler_cuda_runs_a_gpu_fit(planted32):
    kwargs = dict(random_state=0, max_iter=5, tol=0, device="gpu")
    threads = dnmf.factorize(planted32, 6, scheduler="threads", **kwargs)
    cuda = dnmf.factorize(planted32, 6, scheduler="cuda", **kwargs)
    assert cuda.scheduler.startswith("LocalCUDACluster")
    assert isinstance(cuda.W, np.ndarray)
    assert _relative_difference(cuda.W, threads.W) < 1e-4
