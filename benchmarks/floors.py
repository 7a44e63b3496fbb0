"""The two floors of an out-of-core iteration, measured on the cluster that runs the fits.

An iteration reads every panel of X once and runs the panel kernel on it, spread over the
workers; it cannot beat the larger of

* the **raw read**: every chunk file read by the same workers with dnmf's own reader
  (:func:`benchmarks.common.read_once` with ``"dnmf"``), and
* the **compute floor**: the panel kernel of the fit (:func:`dnmf.graph.iteration_task`, the
  very function the fit's tasks call) alone on a panel already in the worker's memory, timed
  on every worker at once (so that they share the memory bus as in a fit), times the panels
  per worker.

The performance issue's targets are ratios of a fit's seconds per iteration to these, in the
same run.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def _time_panel_kernel(X: np.ndarray, *, k: int, solver: str, beta: float, masked: bool,
                       repeats: int, seed: int, sum_to_one: bool = False) -> float:
    """Median seconds of the fit's panel kernel on the in-memory panel ``X`` (one thread),
    averaged as the fit runs it: a β or masked loss is evaluated every ``loss_every``-th
    iteration by default (:func:`dnmf.spec.default_loss_every`), the others skip its terms."""
    from dnmf.spec import default_loss_every

    every = default_loss_every(beta) if (beta != 2.0 or masked) else 1
    opts = {"k": k, "solver": solver, "beta": beta, "masked": masked, "repeats": repeats,
            "seed": seed, "sum_to_one": sum_to_one}
    with_loss = _time_kernel(X, **opts, with_loss=True)
    if every == 1:
        return with_loss
    without = _time_kernel(X, **opts, with_loss=False)
    return (with_loss + (every - 1) * without) / every


#: Sum-to-one fits warm-start each pixel's solve from the previous iteration's W: the floor
#: times the kernel from a W settled by this many steps (H fixed), as a fit's late iterations.
SETTLE_STEPS = 5


def _time_kernel(X: np.ndarray, *, k: int, solver: str, beta: float, masked: bool,
                 repeats: int, seed: int, with_loss: bool, sum_to_one: bool = False) -> float:
    from threadpoolctl import threadpool_limits

    from dnmf import graph, kernels

    rng = np.random.default_rng(seed)
    X = np.ascontiguousarray(X)
    scale = float(np.sqrt(max(X.mean(), 1e-12) / k))  # scikit-learn's random init scale
    W = (scale * np.abs(rng.standard_normal((X.shape[0], k)))).astype(X.dtype)
    H = (scale * np.abs(rng.standard_normal((k, X.shape[1])))).astype(X.dtype)
    if sum_to_one:  # endmembers are pixels (as SPA picks them), abundances start uniform
        H = X[rng.choice(X.shape[0], size=k, replace=False)].astype(X.dtype)
        W = np.full((X.shape[0], k), 1.0 / k, dtype=X.dtype)
    general = beta != 2.0 or masked
    step, consts = graph.iteration_task(H, solver=solver, l1_w=0.0, l2_w=0.0,
                                        inner_sweeps=kernels.w_inner_sweeps(k, X.shape[1]),
                                        beta=beta, masked=masked, with_loss=with_loss,
                                        sum_to_one=sum_to_one)
    args = (X, W, *consts) + ((None,) if general else ())
    times = []
    with threadpool_limits(1):
        step(*args)  # warm-up: first-touch of the outputs, BLAS buffers
        if sum_to_one:
            for _ in range(SETTLE_STEPS):
                args = (X, np.asarray(step(*args)[0], dtype=X.dtype), *args[2:])
        for _ in range(repeats):
            t0 = time.perf_counter()
            step(*args)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compute_floor(path: Path | str | Any, client: Any, *, k: int, solver: str = "hals",
                  beta: float = 2.0, masked: bool = False, repeats: int = 3,
                  sum_to_one: bool = False) -> dict[str, Any]:
    """Seconds per iteration of the panel kernel alone, with every panel in memory.

    One panel of X (as dnmf's reader gives it, or of the dask array ``path``) is loaded on
    each worker, and the kernel runs on all of them at the same time, ``repeats`` times; the
    floor is the median seconds per panel times ``n_panels / n_workers`` (the panels are equal
    but for the last). Panels of unequal rows (a cube's tiles, valid pixels only): the
    largest are timed, and the floor is their seconds per row times X's rows per worker.
    """
    import dask
    import dask.array as da

    from dnmf.io import open_matrix

    X = path if isinstance(path, da.Array) else open_matrix(str(path)).array
    workers = sorted(client.scheduler_info()["workers"])
    n_panels = X.numblocks[0]
    rows = np.asarray(X.chunks[0])
    equal = bool((rows[:-1] == rows[0]).all())
    chosen = range(n_panels) if equal else np.argsort(-rows, kind="stable")
    timer = dask.delayed(_time_panel_kernel, pure=False)
    futures = []
    for i, address in zip(chosen, workers[:n_panels], strict=False):
        panel = X.blocks[int(i), 0].to_delayed().ravel()[0]
        task = timer(panel, k=k, solver=solver, beta=beta, masked=masked, repeats=repeats,
                     seed=i, sum_to_one=sum_to_one)
        futures.append(client.compute(task, workers=[address], allow_other_workers=False))
    per_panel = client.gather(futures)
    used = min(len(workers), n_panels)
    if equal:
        seconds = statistics.mean(per_panel) * n_panels / used
    else:
        timed_rows = [int(rows[int(i)]) for i in list(chosen)[:used]]
        per_row = statistics.mean(s / r for s, r in zip(per_panel, timed_rows, strict=True))
        seconds = per_row * int(rows.sum()) / used
    return {"s_per_panel": per_panel, "n_panels": n_panels, "workers": len(workers),
            "s": seconds}
