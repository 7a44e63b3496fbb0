"""The compute device of a fit: numpy blocks on the host ("cpu") or CuPy blocks on a CUDA GPU
("gpu").

On a GPU the blocks of X are moved to the device as they are read (:func:`to_device`, or once
for the whole fit when X fits the device memory), W's blocks are created there once and stay
there, and only the k x n and k x k partial sums of each panel task come back to the host, where
the driver updates H (see :mod:`dnmf.kernels`). Factors written to Zarr or returned to the user
come back through :func:`to_host`.

CuPy is imported only when a GPU is asked for: CPU installs never need it. Functions here build
dask graphs and never compute.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from dnmf import kernels
from dnmf.errors import InputError

DEVICES = ("cpu", "gpu")

#: What to install for ``device="gpu"`` (pyproject's extra ``gpu``).
INSTALL_HINT = ("pip install 'dnmf[gpu]' (CuPy built for your CUDA, e.g. cupy-cuda13x, and "
                "dask-cuda)")

#: ``persist_x="auto"`` keeps X in device memory when it takes at most this share of the free
#: memory of the devices (the rest holds W, the panel products and CuPy's memory pool).
DEVICE_PERSIST_FRACTION = 0.5


def resolve_device(device: Any) -> str:
    """``"cpu"`` or ``"gpu"`` from the user's value (case-insensitive)."""
    if isinstance(device, str) and device.lower() in DEVICES:
        return device.lower()
    raise InputError(f"unknown device {device!r}: use 'cpu' or 'gpu'")


def import_cupy() -> Any:
    """The cupy module; InputError with the install hint when it is missing."""
    try:
        import cupy
    except ImportError:
        raise InputError(
            f"device='gpu' needs CuPy, which is not installed — {INSTALL_HINT}; or use "
            "device='cpu' (--device cpu)") from None
    return cupy


def gpu_count() -> int:
    """CUDA devices CuPy sees here; 0 without CuPy, a driver or a device (never raises)."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # ImportError, CUDARuntimeError (no driver / no device), ...
        return 0


def _no_device_reason() -> str:
    try:
        import cupy

        return f"{int(cupy.cuda.runtime.getDeviceCount())} devices"
    except Exception as exc:
        return " ".join(str(exc).split()) or type(exc).__name__


def require_gpu(client: Any = None) -> str:
    """Check that the GPU path can run; return a description of the device(s).

    In-process: CuPy here and at least one CUDA device. With a ``distributed.Client``: CuPy
    here (it builds the graphs' metadata) and a CUDA device on every worker.

    Raises
    ------
    InputError
        One line naming what is missing and how to fix it.
    """
    cupy = import_cupy()
    if client is not None:
        counts = client.run(gpu_count)
        without = sorted(addr for addr, n in counts.items() if n < 1)
        if not counts or without:
            raise InputError(
                f"device='gpu' but {len(without) or 'no'} of the cluster's {len(counts)} "
                f"worker(s) see a CUDA device{' (' + ', '.join(without[:3]) + ')' if without else ''}"
                " — start GPU workers (dask-cuda: --scheduler cuda, or dask cuda worker) or use "
                "device='cpu'")
        return f"{len(counts)} GPU worker(s)"
    n = gpu_count()
    if n < 1:
        raise InputError(
            f"device='gpu' but CuPy finds no CUDA device ({_no_device_reason()}) — check the "
            "NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or use device='cpu' "
            "(--device cpu)")
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    text = f"{name}, {props['totalGlobalMem'] / 2**30:.0f} GiB"
    return text + (f" (device 0 of {n})" if n > 1 else "")


def free_device_memory() -> int:
    """Free bytes on the current CUDA device."""
    free, _ = import_cupy().cuda.runtime.memGetInfo()
    return int(free)


def fits_on_device(nbytes: int, client: Any = None) -> bool:
    """Whether ``nbytes`` take at most :data:`DEVICE_PERSIST_FRACTION` of the free memory of
    the device here, or of all the workers' devices together with a ``distributed.Client``."""
    free = (sum(client.run(free_device_memory).values()) if client is not None
            else free_device_memory())
    return nbytes <= DEVICE_PERSIST_FRACTION * free


def to_device(X: da.Array) -> da.Array:
    """X with CuPy blocks: each block is copied to the GPU as it is computed (read)."""
    cupy = import_cupy()
    return X.map_blocks(cupy.asarray, dtype=X.dtype,
                        meta=cupy.empty((0,) * X.ndim, dtype=X.dtype), token="dnmf-to-gpu")


def on_host(A: da.Array) -> bool:
    """Whether A's blocks are numpy arrays (from its meta); a numpy A (an in-process fit's
    W) is on the host."""
    return isinstance(A, np.ndarray) or isinstance(A._meta, np.ndarray)


def to_host(A: da.Array) -> da.Array:
    """A with numpy blocks: A itself (no new task) when they are already numpy, else a
    device-to-host copy of each block (:func:`dnmf.kernels.to_host`)."""
    if on_host(A):
        return A
    return A.map_blocks(kernels.to_host, dtype=A.dtype,
                        meta=np.empty((0,) * A.ndim, dtype=A.dtype), token="dnmf-to-host")
