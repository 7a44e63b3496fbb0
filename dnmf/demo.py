"""``dnmf demo``: a planted data set, factorized end to end, scored against the truth."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from scipy.optimize import linear_sum_assignment

#: The demo's planted problem: small enough for a laptop, chunked into several row panels.
DEMO_SHAPE = (40_000, 300)
DEMO_RANK = 8
DEMO_CHUNK_ROWS = 5_000


@dataclass
class DemoResult:
    input_path: str
    result_path: str
    relative_error: float
    noise_level: float
    mean_cosine: float
    fit: Any


def make_planted_store(
    path: Path, *, shape: tuple[int, int] = DEMO_SHAPE, rank: int = DEMO_RANK,
    noise: float = 0.05, seed: int = 0, chunk_rows: int = DEMO_CHUNK_ROWS,
) -> tuple[np.ndarray, float]:
    """Write ``X = W H + noise`` (float32, row panels) to a Zarr group; return (H_true, noise).

    The group holds ``X`` and the planted ``W_true``/``H_true``; the returned noise level is
    ``||noise||_F / ||X||_F``, the best relative error any rank-k fit can reach (about).
    """
    rng = np.random.default_rng(seed)
    n, m = shape
    H = rng.gamma(0.5, 1.0, size=(rank, m)).astype(np.float32)
    root = zarr.open_group(str(path), mode="w")
    X = root.create_array("X", shape=shape, chunks=(chunk_rows, m), dtype="float32",
                          dimension_names=("sample", "feature"))
    W_arr = root.create_array("W_true", shape=(n, rank), chunks=(chunk_rows, rank),
                              dtype="float32", dimension_names=("sample", "component"))
    root.create_array("H_true", shape=H.shape, dtype="float32",
                      dimension_names=("component", "feature"))[...] = H
    noise_sq = signal_sq = 0.0
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        W = rng.gamma(0.5, 1.0, size=(stop - start, rank)).astype(np.float32)
        clean = W @ H
        block = np.abs(clean + noise * clean.mean() * rng.standard_normal(clean.shape)).astype(
            np.float32)
        X[start:stop] = block
        W_arr[start:stop] = W
        noise_sq += float(((block - clean).astype(np.float64) ** 2).sum())
        signal_sq += float((block.astype(np.float64) ** 2).sum())
    return H, float(np.sqrt(noise_sq / signal_sq))


def matched_cosine(H: np.ndarray, H_true: np.ndarray) -> float:
    """Mean cosine between rows of H and of H_true after Hungarian matching."""
    A = H / np.maximum(np.linalg.norm(H, axis=1, keepdims=True), 1e-300)
    B = H_true / np.maximum(np.linalg.norm(H_true, axis=1, keepdims=True), 1e-300)
    cos = A @ B.T
    rows, cols = linear_sum_assignment(-cos)
    return float(cos[rows, cols].mean())


def run_demo(
    out_dir: str | Path = "dnmf-demo", *, scheduler: Any = "local", workers: int | None = 2,
    memory_limit: str | None = None, seed: int = 0,
    callback: Callable[..., None] | None = None, on_plan: Callable[..., None] | None = None,
) -> DemoResult:
    """Make the planted store in ``out_dir``, factorize it, and score the result.

    The demo's own two stores (``input.zarr``, ``result.zarr``) are replaced on each run.
    """
    from dnmf.api import factorize

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    input_path, result_path = out / "input.zarr", out / "result.zarr"
    for stale in (input_path, result_path):
        if stale.exists():
            shutil.rmtree(stale)
    H_true, noise = make_planted_store(input_path, seed=seed)
    fit = factorize(str(input_path), DEMO_RANK, var="X", random_state=seed, out=result_path,
                    scheduler=scheduler, workers=workers, memory_limit=memory_limit,
                    callback=callback, on_plan=on_plan, max_iter=300, tol=1e-5)
    return DemoResult(
        input_path=str(input_path), result_path=str(result_path),
        relative_error=fit.relative_error, noise_level=noise,
        mean_cosine=matched_cosine(fit.H, H_true), fit=fit,
    )


#: The unmixing demo's scene: real (earthlib) spectra, 30 dB, tiled like a large cube.
SCENE_SHAPE = (400, 400)
SCENE_ENDMEMBERS = 6
SCENE_SNR_DB = 30.0
SCENE_TILE = (100, 100)


@dataclass
class UnmixDemoResult:
    scene_path: str
    result_path: str
    plots_dir: str
    score: dict
    result: Any


def run_unmix_demo(
    out_dir: str | Path = "dnmf-demo", *, scheduler: Any = "local", workers: int | None = 2,
    memory_limit: str | None = None, seed: int = 0,
    callback: Callable[..., None] | None = None,
    on_prepared: Callable[..., None] | None = None,
) -> UnmixDemoResult:
    """Make a synthetic scene of measured spectra, unmix it, plot it and score it.

    ``out_dir`` gets ``scene.zarr`` (the cube and its ground truth), ``unmix.zarr`` (the
    result) and ``plots/``; the demo's own outputs are replaced on each run.
    """
    from dnmf.datasets import make_scene
    from dnmf.hyperspectral.metrics import score
    from dnmf.hyperspectral.unmix import unmix
    from dnmf.io.result_store import consolidate

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene_path, result_path, plots = out / "scene.zarr", out / "unmix.zarr", out / "plots"
    for stale in (scene_path, result_path, plots):
        if stale.exists():
            shutil.rmtree(stale)
    scene = make_scene(*SCENE_SHAPE, n_endmembers=SCENE_ENDMEMBERS, snr_db=SCENE_SNR_DB,
                       seed=seed, chunks=SCENE_TILE)
    # consolidated by our own helper: zarr warns that consolidated metadata is not (yet) in
    # the v3 spec, a warning for zarr's developers, not for a newcomer running the demo
    scene.to_zarr(scene_path, mode="w", consolidated=False, zarr_format=3)
    consolidate(str(scene_path))
    result = unmix(str(scene_path), SCENE_ENDMEMBERS, var="reflectance", seed=seed,
                   scheduler=scheduler, workers=workers, memory_limit=memory_limit,
                   output=result_path, plots=plots, callback=callback, on_prepared=on_prepared)
    truth = xr.open_zarr(scene_path)
    return UnmixDemoResult(scene_path=str(scene_path), result_path=str(result_path),
                           plots_dir=str(plots), score=score(result, truth), result=result)
