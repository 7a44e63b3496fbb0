"""Measured terms of one iteration, the cost model fitted to them, and its check.

``python -m benchmarks.cost_terms [--quick]``: each term of :mod:`dnmf.cost_model` measured on
this machine, the model's coefficients fitted to them, and the model checked against dnmf
hals fits measured in the same run. Writes ``results/cost-terms-<profile>.{md,json}``; the
fitted coefficients are printed as the literal to store in ``dnmf/cost_model.py``.

Terms (quick profile in brackets):

- compute: :func:`dnmf.kernels.panel_step` (hals and mu) on one BLAS thread in every worker at
  once (as a fit runs its panels), panels of 2^24 values (64 MiB of float32), n in
  {128, 500, 1024, 8192}, k in {10, 40, 100};
- mapping: the same kernel on a page-cached chunk freshly mapped by dnmf's raw reader, less
  the kernel on the chunk in memory (the CPU's own part of reading such a store);
- driver: :func:`dnmf.kernels.update_h` and the loss on (k, n), as the driver runs them;
- graph construction: :func:`dnmf.graph.iteration_graph` for 10^2 - 10^5 [10^4] panels;
- scheduling: seconds per iteration of ``dnmf.factorize`` on the procedural source
  (:mod:`dnmf.io.procedural`) in panels of 4 rows x 8 columns (no compute, X persisted) for
  3 - 10^5 [10^4] panels, LocalCluster 2 workers x 1 thread; the driver's peak memory;
- reduction: the tree sum of partials persisted on the workers, against fan-in and size;
- bytes sent per iteration: the workers' own transfer counters
  (``Worker.transfer_outgoing_bytes_total``) around iterations of the real graph;
- worker memory: peak RSS of the workers (VmHWM) in a streamed fit against the plan's
  task estimate and the model's;
- check: 1 GB and 4 GB raw Zarr fits (hals and mu, k = 20, X streamed) on a fresh
  LocalCluster against the model, and ``benchmarks.run``'s 1gb/4gb fits of the same day.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from typing import Any

import numpy as np
from distributed import wait
from scipy.optimize import nnls
from threadpoolctl import threadpool_limits

import dnmf
from benchmarks.common import (
    RESULTS,
    machine_line,
    new_report,
    parse_profile,
    peak_rss,
    planted_zarr,
    reset_peak_rss,
    save_report,
    status_bytes,
    time_read,
)
from dnmf import cost_model, graph, kernels
from dnmf.io.procedural import planted_array, planted_block, planted_source

WORKERS = 2
#: Panels of the quick profile's scheduling and graph sweeps.
PANELS_QUICK = [100, 300, 1000, 3000, 10_000]
#: Panels the scheduling sweep runs besides: where an iteration's fixed cost shows.
SMALL_PANELS = [3, 10, 30]


def best_of(func: Any, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def fit_nonneg(features: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Non-negative least squares of ``seconds ~ features @ coef`` in relative error (each
    row divided by its seconds: small and large points count alike)."""
    coef, _ = nnls(features / seconds[:, None], np.ones(len(seconds)))
    return coef


# --- in-process terms ---------------------------------------------------------------------


#: Values per panel of the compute terms: 64 MiB of float32, the check stores' chunks (and
#: the panels dnmf reads them in); panels of 16 MiB, partly in this CPU's L3 cache, measured
#: up to 12% faster per value than the fits' panels.
PANEL_VALUES = 2**24
COMPUTE_COLUMNS = (128, 500, 1024, 8192)
COMPUTE_RANKS = (10, 40, 100)


def compute_features(rows: int, n: int, k: int, solver: str) -> list[float]:
    """The model's compute features of one panel task: the products' flops, the W update
    (hals: r k² σ; mu: r k²), the values of the panel (:func:`dnmf.cost_model.panel_seconds`)."""
    sweeps = kernels.w_inner_sweeps(k, n)
    return [4 * rows * n * k, rows * k * k * sweeps if solver == "hals" else 0.0,
            rows * k * k if solver == "mu" else 0.0, rows * n]


def random_factors(rows: int, n: int, k: int, seed: int) -> tuple[np.ndarray, ...]:
    """W, H (float32) and H Hᵀ (float64) for one panel task of ``rows`` x ``n``."""
    rng = np.random.default_rng(seed)
    W = rng.random((rows, k), dtype=np.float32)
    H = rng.random((k, n), dtype=np.float32)
    return W, H, H.astype(np.float64) @ H.T.astype(np.float64)


def panel_task(X: np.ndarray, factors: tuple[np.ndarray, ...], solver: str) -> None:
    """One panel task as the fit's graph calls it."""
    kernels.call_aligned(kernels.panel_step, X, *factors, solver=solver)


def compute_grid(quick: bool) -> list[dict]:
    """Seconds of :func:`dnmf.kernels.panel_step` (hals and mu, one BLAS thread) at every
    point of the grid, in the calling process (a worker's task)."""
    out = []
    with threadpool_limits(1, user_api="blas"):
        for n in COMPUTE_COLUMNS:
            rows = PANEL_VALUES // n
            X = planted_block(0, rows, n, 8, seed=0, noise=0.05)
            for k in COMPUTE_RANKS:
                factors = random_factors(rows, n, k, seed=k)
                for solver in cost_model.SOLVERS:
                    def step(X=X, factors=factors, solver=solver) -> None:
                        panel_task(X, factors, solver)

                    step()  # first touch of the outputs, BLAS buffers
                    out.append({"rows": rows, "n_features": n, "k": k, "solver": solver,
                                "seconds": best_of(step, 2 if quick else 3),
                                "sweeps": kernels.w_inner_sweeps(k, n)})
            del X
    return out


def measure_compute(client: Any, quick: bool) -> list[dict]:
    """The compute grid as a fit runs its panels: one task pinned to each worker of the
    cluster, all at once (the cores share the memory bus and the last-level cache, and a
    worker's allocator is not this process's); each point's seconds are the mean over the
    workers (``per_worker_s`` has each)."""
    workers = sorted(client.scheduler_info()["workers"])
    futures = [client.submit(compute_grid, quick, workers=[w], allow_other_workers=False,
                             pure=False) for w in workers]
    out = []
    for points in zip(*client.gather(futures), strict=True):
        row = dict(points[0])
        row["per_worker_s"] = [p["seconds"] for p in points]
        row["seconds"] = statistics.mean(row["per_worker_s"])
        out.append(row)
    return out


def measure_mapping(path: Any, solver_rank: int = 20, chunks: int = 6) -> dict:
    """What reading a page-cached chunk through dnmf's raw reader costs the panel task.

    The reader maps the chunk's file (:class:`dnmf.io.zarr_.RawChunks`): no copy, the first
    touch of each page faults it into the process. Per chunk: the kernel
    (:func:`dnmf.kernels.panel_step`, one thread) on the freshly mapped chunk, read call
    included, less the kernel on the same values in this process's memory; the median over
    ``chunks`` chunks and both solvers, as the mapping's bytes per second (the model's
    ``Bandwidths.memory`` for such a store). The map-and-sum read that ``time_read`` times
    (one float64 pass over the bytes) is reported beside it."""
    import zarr

    from dnmf.io.zarr_ import RawChunks

    raw = RawChunks.of(zarr.open_array(str(path)))
    if raw is None:
        raise ValueError(f"{path} is not an uncompressed local Zarr")
    rows, n = raw.chunks
    k = solver_rank
    factors = random_factors(rows, n, k, seed=0)
    chunks = min(chunks, raw.shape[0] // rows)
    if chunks < 1:
        raise ValueError(f"{path} holds no whole chunk of rows to map")
    keys = [(slice(i * rows, (i + 1) * rows), slice(0, n)) for i in range(chunks)]
    for key in keys:  # into the page cache
        float(raw.read(key).sum())
    extra, summed = [], []
    with threadpool_limits(1, user_api="blas"):
        for solver in cost_model.SOLVERS:
            for key in keys:
                t0 = time.perf_counter()
                panel_task(raw.read(key), factors, solver)
                mapped = time.perf_counter() - t0
                in_memory = np.array(raw.read(key))
                panel_task(in_memory, factors, solver)
                t0 = time.perf_counter()
                panel_task(in_memory, factors, solver)
                extra.append(mapped - (time.perf_counter() - t0))
                t0 = time.perf_counter()
                float(raw.read(key).sum(dtype="float64"))
                summed.append(time.perf_counter() - t0)
    nbytes = rows * n * raw.file_dtype.itemsize
    per_chunk = statistics.median(extra)
    # differences of two ~50 ms timings: below ~0.5 ms they are noise; the model then reads
    # the chunk at 0.5 ms, not at an infinite rate
    floor = 5e-4
    return {"path": str(path), "chunk_mb": nbytes / 1e6, "k": k,
            "extra_s": extra, "extra_median_s": per_chunk,
            "map_gb_s": nbytes / max(per_chunk, floor) / 1e9,
            "read_and_sum_s": statistics.median(summed),
            "read_and_sum_gb_s": nbytes / statistics.median(summed) / 1e9}


def measure_driver(quick: bool) -> tuple[list[dict], np.ndarray]:
    out = []
    for k in (10, 40, 100):
        for n in (1000, 10000, 100000):
            rng = np.random.default_rng(0)
            H = rng.random((k, n))
            WtX = rng.random((k, n)) * n
            A = rng.random((k, 2 * k))
            WtW = A @ A.T

            def step(H=H, WtX=WtX, WtW=WtW) -> None:
                H1 = kernels.update_h(H, WtX, WtW, solver="hals")
                kernels.frobenius_loss(1.0, WtX, WtW, H1)
                H1 @ H1.T

            out.append({"k": k, "n_features": n, "seconds": best_of(step, 2 if quick else 3)})
    feats = np.array([[r["k"] ** 2 * r["n_features"], r["k"] * r["n_features"]] for r in out],
                     dtype=float)
    return out, fit_nonneg(feats, np.array([r["seconds"] for r in out]))


def measure_add() -> tuple[list[dict], float]:
    out = []
    for k, n in ((20, 1000), (20, 10000), (100, 10000)):
        parts = [(np.ones((k, n)), np.ones((k, k))) for _ in range(8)]
        t = best_of(lambda parts=parts: kernels.sum_partials(*parts))
        out.append({"k": k, "n_features": n, "fan_in": 8, "seconds": t,
                    "bytes": 8 * (k * n + k * k) * 8})
    per_byte = statistics.median(r["seconds"] / r["bytes"] for r in out)
    return out, per_byte


def measure_graph(panels: list[int]) -> list[dict]:
    out = []
    for P in panels:
        X = planted_array(4 * P, 8, 2, seed=0, noise=0.0, dtype=np.float32,
                          row_chunks=(4,) * P, block_rows=4)
        W = graph.random_w((4,) * P, 2, seed=0, scale=1.0, dtype=np.float32)
        H = np.ones((2, 8), dtype=np.float32)
        t0 = time.perf_counter()
        W_new, partials = graph.iteration_graph(X, W, H, solver="hals")
        built = time.perf_counter() - t0
        layers = W_new.__dask_graph__().layers
        n_tasks = sum(len(layer) for name, layer in layers.items()
                      if name not in (X.name, W.name))
        out.append({"panels": P, "build_s": built, "tasks": n_tasks,
                    "model_tasks": cost_model.tasks_per_iteration(P, graph.SPLIT_EVERY)})
    return out


# --- on a LocalCluster ---------------------------------------------------------------------


def cpu_seconds(client: Any) -> tuple[float, float]:
    """CPU seconds so far of this process (the driver, and a LocalCluster's scheduler, which
    runs here) and of all workers together."""
    workers = sum(client.run(time.process_time).values())
    return time.process_time(), workers


def iterate_graph(client: Any, X: Any, W: Any, H: np.ndarray,
                  iterations: int) -> list[tuple[float, float, float]]:
    """``(wall, driver and scheduler CPU, workers' CPU)`` seconds of each of ``iterations``
    iterations as :class:`dnmf.solvers` runs them: the graph built, ``W_next`` and the
    partials persisted in one call, the partials gathered, H updated on the driver."""
    times = []
    for _ in range(iterations):
        cpu0, wcpu0 = cpu_seconds(client)
        t0 = time.perf_counter()
        W_next, partials = graph.iteration_graph(X, W, H, solver="hals")
        W_next, partials = client.persist([W_next, partials], optimize_graph=False)
        WtX, WtW = partials.compute()
        H = kernels.update_h(H.astype(np.float64), WtX, WtW, solver="hals").astype(H.dtype)
        W = W_next
        wall = time.perf_counter() - t0
        cpu1, wcpu1 = cpu_seconds(client)
        times.append((wall, cpu1 - cpu0, wcpu1 - wcpu0))
    return times


def measure_scheduling(client: Any, panels: list[int]) -> tuple[list[dict], np.ndarray,
                                                                np.ndarray]:
    """Iterations of the real graph on X persisted in panels of 4 x 8 (no compute to speak
    of): what is left is Dask's and the driver's cost per task and per iteration.

    Returns the rows, the fit of the driver's and scheduler's CPU seconds (the serial part,
    what a dedicated scheduler node pays: the model's ``iteration_s``, ``panel_s``) and the
    fit of the wall seconds here (2 shared cores: scheduler, driver and workers compete)."""
    out = []
    for P in panels:
        src = planted_source(4 * P, 8, 2, seed=0, chunks=4, block_rows=4)
        X = client.persist(src.array)
        W = client.persist(graph.random_w(X.chunks[0], 2, seed=1, scale=1.0,
                                          dtype=np.float32))
        wait([X, W])
        gc.collect()
        reset_peak_rss()
        before = status_bytes("VmRSS") or 0
        iterations = 7 if P <= 100 else 3 if P <= 3000 else 2
        times = iterate_graph(client, X, W, np.ones((2, 8), np.float32), iterations)
        out.append({"panels": P,
                    "seconds_per_iteration": statistics.median(t[0] for t in times[1:]),
                    "driver_scheduler_cpu_s": statistics.median(t[1] for t in times[1:]),
                    "workers_cpu_s": statistics.median(t[2] for t in times[1:]),
                    "all_iterations": times,
                    "driver_peak_rss_growth_mb": (peak_rss() - before) / 1e6,
                    "tasks_per_iteration": cost_model.tasks_per_iteration(P,
                                                                          graph.SPLIT_EVERY)})
        del X, W
        print(f"  scheduling: {P:,} panels: {times} s", flush=True)
    feats = np.array([[1.0, r["panels"]] for r in out])
    cpu = fit_nonneg(feats, np.array([r["driver_scheduler_cpu_s"] for r in out]))
    wall = fit_nonneg(feats, np.array([r["seconds_per_iteration"] for r in out]))
    return out, cpu, wall


def factorize_cross_check(client: Any, P: int) -> dict:
    """The same tiny panels through ``dnmf.factorize``: its iterations cost what the loop's do."""
    src = planted_source(4 * P, 8, 2, seed=0, chunks=4, block_rows=4)
    res = dnmf.factorize(src, 2, solver="hals", init="random", max_iter=3, tol=0.0,
                         random_state=0, client=client, min_panel_bytes=0, persist_x=True)
    return {"panels": res.plan.n_panels, "all_iterations": res.seconds_per_iteration,
            "seconds_per_iteration": statistics.median(res.seconds_per_iteration[1:])}


def measure_reduction(client: Any, quick: bool, add_per_byte: float) -> tuple[list[dict], float]:
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    out = []
    P = 32
    sizes = [(20, 1000), (20, 10000), (100, 10000)] if quick else \
        [(20, 1000), (20, 10000), (100, 10000), (100, 40000)]
    for k, n in sizes:
        futures = [client.submit(lambda i, k=k, n=n: (np.full((k, n), float(i)), np.eye(k)), i,
                                 pure=False) for i in range(P)]
        wait(futures)
        for fan in (2, 8, 32):
            keys = [f.key for f in futures]
            name = f"reduce-{k}-{n}-{fan}-{time.monotonic_ns()}"
            layer, final = graph.tree_reduce_layer(keys, name, kernels.sum_partials, fan)
            # the persisted partials are the reduction's inputs (as futures in its graph)
            inputs = f"inputs-{name}"
            hlg = HighLevelGraph({name: layer, inputs: {f.key: f for f in futures}},
                                 {name: {inputs}, inputs: set()})
            t = best_of(lambda hlg=hlg, final=final, name=name: client.compute(
                Delayed(final, hlg, layer=name), optimize_graph=False).result(), 2)
            partial = (k * n + k * k) * 8
            levels = cost_model.reduction_levels(P, fan)
            out.append({"k": k, "n_features": n, "fan_in": fan, "panels": P, "levels": levels,
                        "partial_mb": partial / 1e6, "seconds": t})
        del futures
    # the per-byte cost between processes here (loopback): fit t = levels * (lat + f b c)
    feats = np.array([[r["levels"], r["levels"] * min(r["fan_in"], r["panels"])
                       * r["partial_mb"] * 1e6] for r in out])
    coef = fit_nonneg(feats, np.array([r["seconds"] for r in out]))
    for r in out:
        r["loopback_gb_s"] = (1 / max(coef[1] - add_per_byte, 1e-12)) / 1e9
    return out, float(coef[0]), float(coef[1])


def transfer_total(client: Any) -> int:
    return sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())


def measure_bytes(client: Any) -> list[dict]:
    """Bytes the workers send per iteration of the real graph (X and W persisted)."""
    out = []
    for m, n, k, rows in ((40_000, 1000, 20, 1000), (40_000, 4000, 20, 1000)):
        src = planted_source(m, n, k, seed=0, noise=0.05, chunks=rows)
        X = client.persist(src.array)
        W = client.persist(graph.random_w(X.chunks[0], k, seed=1, scale=1.0,
                                          dtype=np.float32))
        H = np.random.default_rng(0).random((k, n)).astype(np.float32)
        wait([X, W])
        iters = 3
        start = transfer_total(client)
        for _ in range(iters):
            W_next, partials = graph.iteration_graph(X, W, H, solver="hals")
            W_next, partials = client.persist([W_next, partials], optimize_graph=False)
            WtX, WtW = partials.compute()
            H = kernels.update_h(H.astype(np.float64), WtX, WtW, solver="hals").astype(
                np.float32)
            W = W_next
        sent = (transfer_total(client) - start) / iters
        pred = cost_model.predict(m, n, k, panel_rows=rows, workers=WORKERS, persist_x=True)
        out.append({"n_samples": m, "n_features": n, "k": k, "panels": -(-m // rows),
                    "measured_mb": sent / 1e6, "model_mb": pred.bytes_sent / 1e6})
        del X, W, W_next, partials
    return out


def measure_worker_memory(client: Any) -> dict:
    m, n, k = 200_000, 500, 20
    src = planted_source(m, n, k, seed=0, noise=0.05)
    client.run(gc.collect)
    base = client.run(lambda: status_bytes("VmRSS") or 0)
    client.run(reset_peak_rss)
    res = dnmf.factorize(src, k, solver="hals", init="random", max_iter=3, tol=0.0,
                         random_state=0, client=client, persist_x=False)
    peaks = client.run(peak_rss)
    growth = max(peaks[w] - base[w] for w in peaks)
    pred = cost_model.predict_plan(res.plan, workers=WORKERS, threads=1)
    return {"shape": [m, n], "k": k, "x_gb": m * n * 4 / 1e9, "panels": res.plan.n_panels,
            "panel_rows": max(res.plan.row_chunks),
            "plan_task_mb": res.plan.task_bytes / 1e6,
            "model_worker_mb": None if pred is None else pred.memory_per_worker / 1e6,
            "measured_peak_growth_mb": growth / 1e6}


CHECK_SIZES = {"quick": [(500_000, 500), (2_000_000, 500)],
               "full": [(500_000, 500), (2_000_000, 500)]}


def check_runs(client: Any, sizes: list[tuple[int, int]]) -> list[dict]:
    """dnmf hals and mu fits of raw Zarr stores (X streamed), each iteration's wall seconds
    and the workers' CPU seconds (this machine is shared: the CPU seconds are what dedicated
    cores would take), and one read of X (wall and CPU) in the same run; the mapping cost of
    the store's chunks (:func:`measure_mapping`) measured just before its fits."""
    out = []
    k = 20
    for rows, cols in sizes:
        path = planted_zarr(rows, cols, 20)  # the stores of benchmarks.run's profiles
        time_read(path, client, 1)  # warm the page cache
        _, w0 = cpu_seconds(client)
        read_s = time_read(path, client, 1)
        _, w1 = cpu_seconds(client)
        mapping = measure_mapping(path)
        for solver in cost_model.SOLVERS:
            marks: list[tuple[float, float]] = []

            def mark(info: Any, marks: list = marks) -> None:
                marks.append((time.perf_counter(), cpu_seconds(client)[1]))

            res = dnmf.factorize(str(path), k, solver=solver, init="random", max_iter=6,
                                 tol=0.0, random_state=0, client=client, persist_x=False,
                                 callback=mark)
            walls = [b[0] - a[0] for a, b in zip(marks, marks[1:], strict=False)]
            busy = [(b[1] - a[1]) / WORKERS for a, b in zip(marks, marks[1:], strict=False)]
            out.append({"gb": rows * cols * 4 / 1e9, "shape": [rows, cols], "k": k,
                        "solver": solver, "panels": res.plan.n_panels,
                        "panel_rows": max(res.plan.row_chunks),
                        "read_once_s": read_s, "read_once_busy_s": (w1 - w0) / WORKERS,
                        "disk_gb_s_per_worker": rows * cols * 4 / WORKERS / read_s / 1e9,
                        "disk_gb_s_per_busy_worker": rows * cols * 4 / max(w1 - w0, 1e-9) / 1e9,
                        "map_gb_s": mapping["map_gb_s"], "mapping": mapping,
                        "measured_s": statistics.median(walls),
                        "busy_s": statistics.median(busy),
                        "all_iterations": walls, "all_busy": busy})
            print(f"  check {out[-1]['gb']:.0f} GB {solver}: {walls} s, busy {busy} s, "
                  f"mapping {mapping['extra_median_s'] * 1e3:.1f} ms per chunk", flush=True)
    return out


def check_cluster() -> Any:
    """The LocalCluster of the check fits: :data:`WORKERS` workers of one thread with the
    default memory limit — ``benchmarks.run``'s own on a 2-core machine (it starts one per
    core) — fresh, not the one the scheduling sweeps of 10^4 panels have run on."""
    from distributed import LocalCluster

    return LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                        dashboard_address=None)


def fit_coefficients(report: dict[str, Any]) -> cost_model.Coefficients:
    """The model's coefficients from the measured rows of ``report`` (so ``--refit`` can
    recompute them from a saved report)."""
    comp = report["compute"]
    if not any(r.get("solver") == "mu" for r in comp):
        # a report from before mu was measured: its W update is not costed (NaN, not 0)
        print("warning: no mu rows in this report's compute terms: mu_s is NaN")
    gemm, sweep, mu, pass_ = fit_nonneg(
        np.array([compute_features(r["rows"], r["n_features"], r["k"],
                                   r.get("solver", "hals")) for r in comp], dtype=float),
        np.array([r["seconds"] for r in comp]))
    drv = report["driver"]
    # in absolute seconds: the large (k, n) the projection needs weigh most, and a small
    # point slowed by another user of the machine does not pull the fit
    drv_k2n, drv_kn = nnls(
        np.array([[r["k"] ** 2 * r["n_features"], r["k"] * r["n_features"]] for r in drv],
                 dtype=float), np.array([r["seconds"] for r in drv]))[0]
    add_per_byte = statistics.median(r["seconds"] / r["bytes"] for r in report["add"])
    graph_s = statistics.median(r["build_s"] / r["panels"] for r in report["graph"]
                                if r["panels"] >= 1000)
    sched = report["scheduling"]
    feats = np.array([[1.0, r["panels"]] for r in sched])
    iter_s, panel_s = fit_nonneg(feats, np.array([r["driver_scheduler_cpu_s"] for r in sched]))
    _, task_s = fit_nonneg(feats, np.array([r["workers_cpu_s"] for r in sched]))
    red = report["reduction"]
    level_s, _ = fit_nonneg(
        np.array([[r["levels"], r["levels"] * min(r["fan_in"], r["panels"]) * r["partial_mb"]
                   * 1e6] for r in red]), np.array([r["seconds"] for r in red]))
    return cost_model.Coefficients(
        gemm_s=float(gemm), sweep_s=float(sweep), pass_s=float(pass_),
        mu_s=float(mu) if any(r.get("solver") == "mu" for r in comp) else float("nan"),
        task_s=float(task_s),
        iteration_s=float(iter_s), panel_s=float(panel_s), graph_s=float(graph_s),
        level_s=float(level_s), add_s_per_byte=float(add_per_byte), driver_s=float(drv_k2n),
        driver_kn_s=float(drv_kn),
        provenance=f"benchmarks/cost_terms.py ({report['profile']}), {report['date']}, "
                   f"{report['machine']['cpu']}, {report['machine']['cores']} cores (shared, "
                   f"load {report['machine']['load_average'][0]:.1f})")


def predict_run(rows: int, cols: int, k: int, *, solver: str, panel_rows: int,
                disk_gb_s: float, map_gb_s: float,
                coefficients: cost_model.Coefficients) -> cost_model.Prediction:
    """The model's prediction of a fit of a raw Zarr in the page cache: the storage's rate
    is the read measured in the same run (per worker), the CPU's own part of the read the
    chunk mapping's (:func:`measure_mapping`)."""
    return cost_model.predict(rows, cols, k, panel_rows=panel_rows, workers=WORKERS,
                              threads=1, solver=solver,
                              bandwidths=cost_model.Bandwidths(disk=disk_gb_s * 1e9,
                                                               memory=map_gb_s * 1e9),
                              coefficients=coefficients)


def predict_checks(report: dict[str, Any], coefficients: cost_model.Coefficients) -> None:
    """The model's prediction of each check run (its plan's panels): against the wall
    seconds with the disk bandwidth measured by wall in the same run, and against the
    workers' busy (CPU) seconds with the bandwidth measured by CPU (a dedicated core's)."""
    for r in report["check"]:
        rows, cols = r["shape"]
        for key, disk, measured in (("wall", r["disk_gb_s_per_worker"], r["measured_s"]),
                                    ("busy", r["disk_gb_s_per_busy_worker"], r["busy_s"])):
            pred = predict_run(rows, cols, r["k"], solver=r.get("solver", "hals"),
                               panel_rows=r["panel_rows"], disk_gb_s=disk,
                               # reports from before the mapping term: a copy at the read's rate
                               map_gb_s=r.get("map_gb_s", disk), coefficients=coefficients)
            # busy seconds are the workers' own: the read and compute terms
            value = pred.total_s if key == "wall" else pred.read_s + pred.compute_s
            r[f"predicted_{key}_s"] = value
            r[f"error_{key}"] = value / measured - 1
            r[f"terms_{key}"] = pred.as_dict()


def predict_profiles(report: dict[str, Any], coefficients: cost_model.Coefficients) -> list[dict]:
    """The model against ``benchmarks.run``'s raw-store fits (``results/1gb.json``,
    ``4gb.json``) measured on the same day: each with the raw read (b) measured beside it
    and the mapping rate of this run's check of the same store."""
    out = []
    mapping = {tuple(r["shape"]): r["map_gb_s"] for r in report["check"] if "map_gb_s" in r}
    for profile in ("1gb", "4gb"):
        path = RESULTS / f"{profile}.json"
        if not path.exists():
            continue
        run_report = json.loads(path.read_text())
        if run_report.get("date") != report["date"]:
            continue
        ooc = run_report["out_of_core"]
        if ooc.get("cluster") != f"{WORKERS} workers x 1 thread":
            continue  # the model's check assumes the checks' cluster
        shape = tuple(ooc["stores"]["raw"]["shape"])
        for fit in ooc["fits"]:
            if fit["store"] != "raw" or fit["solver"] not in cost_model.SOLVERS \
                    or fit.get("persist_x") or shape not in mapping:
                continue
            raw_read = statistics.mean(fit["adjacent_reads_s"]["dnmf"])
            pred = predict_run(*shape, fit["k"], solver=fit["solver"],
                               panel_rows=-(-shape[0] // fit["n_panels"]),
                               disk_gb_s=shape[0] * shape[1] * 4 / WORKERS / raw_read / 1e9,
                               map_gb_s=mapping[shape], coefficients=coefficients)
            out.append({"profile": profile, "shape": list(shape), "solver": fit["solver"],
                        "k": fit["k"], "measured_s": fit["s_per_iter"],
                        "compute_floor_s": fit.get("compute_floor_s"),
                        "raw_read_s": raw_read, "predicted_s": pred.total_s,
                        "error": pred.total_s / fit["s_per_iter"] - 1,
                        "terms": pred.as_dict()})
    return out


def run(quick: bool) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    report: dict[str, Any] = new_report("quick" if quick else "full")
    print("driver ...", flush=True)
    report["driver"], _ = measure_driver(quick)
    report["add"], add_per_byte = measure_add()
    panels = PANELS_QUICK if quick else \
        [100, 300, 1000, 3000, 10_000, 30_000, 100_000]
    print("graph construction ...", flush=True)
    report["graph"] = measure_graph(panels)
    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, memory_limit="3GB",
                      dashboard_address=None, processes=True) as cluster, \
            Client(cluster) as client:
        print("reduction ...", flush=True)
        report["reduction"], _, level_byte_s = measure_reduction(client, quick, add_per_byte)
        report["loopback_s_per_byte"] = level_byte_s
        print("bytes ...", flush=True)
        report["bytes"] = measure_bytes(client)
        print("worker memory ...", flush=True)
        report["worker_memory"] = measure_worker_memory(client)
        print("scheduling ...", flush=True)
        # a few panels as well: the fixed cost of an iteration is the intercept
        report["scheduling"], _, wall_fit = measure_scheduling(client, SMALL_PANELS + panels)
        report["scheduling_wall_fit"] = {"iteration_s": float(wall_fit[0]),
                                         "panel_s": float(wall_fit[1])}
        report["factorize_cross_check"] = factorize_cross_check(client, 300)
    with check_cluster() as cluster, Client(cluster) as client:
        print("compute ...", flush=True)
        report["compute"] = measure_compute(client, quick)
        print("check ...", flush=True)
        report["check"] = check_runs(client, CHECK_SIZES["quick" if quick else "full"])
    return report


def markdown(report: dict[str, Any]) -> str:
    c = report["coefficients"]
    lines = [f"# Cost terms ({report['profile']}, {report['date']})", "",
             machine_line(report["machine"]), "", "## Fitted coefficients", ""]
    lines += [f"- `{k}` = {v:.4g}" if isinstance(v, float) else f"- `{k}`: {v}"
              for k, v in c.items()]
    lines += ["", f"## Compute: panel_step, one thread in each of the {WORKERS} workers at once", "",
              "| solver | rows | n | k | sweeps | seconds | model | error |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    coef = cost_model.Coefficients(**c)
    for r in report["compute"]:
        solver = r.get("solver", "hals")
        pred = cost_model.panel_seconds(r["rows"], r["n_features"], r["k"], coef, solver)
        lines.append(f"| {solver} | {r['rows']:,} | {r['n_features']:,} | {r['k']} | "
                     f"{r['sweeps'] if solver == 'hals' else '—'} | {r['seconds']:.4f} | "
                     f"{pred:.4f} | {100 * (pred / r['seconds'] - 1):+.0f}% |")
    lines += ["", "## Driver: H update and loss", "", "| k | n | seconds | model |",
              "|---:|---:|---:|---:|"]
    for r in report["driver"]:
        lines.append(f"| {r['k']} | {r['n_features']:,} | {r['seconds']:.4f} | "
                     f"{cost_model.driver_seconds(r['k'], r['n_features'], coef):.4f} |")
    lines += ["", "## Graph construction (driver, in-process)", "",
              "| panels | tasks (model) | build s | s per panel |", "|---:|---:|---:|---:|"]
    for r in report["graph"]:
        lines.append(f"| {r['panels']:,} | {r['model_tasks']:,} | {r['build_s']:.3f} | "
                     f"{r['build_s'] / r['panels'] * 1e6:.1f} µs |")
    lines += ["", f"## Scheduling: the iteration graph, procedural 4 x 8 panels, LocalCluster "
              f"{WORKERS} x 1 thread", "",
              "| panels | tasks/iteration | wall s/iteration | driver + scheduler CPU s | "
              "workers' CPU s | CPU ms per panel | model s | driver peak RSS growth MB |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["scheduling"]:
        model = c["iteration_s"] + c["panel_s"] * r["panels"]
        lines.append(f"| {r['panels']:,} | {r['tasks_per_iteration']:,} | "
                     f"{r['seconds_per_iteration']:.3f} | {r['driver_scheduler_cpu_s']:.3f} | "
                     f"{r['workers_cpu_s']:.3f} | "
                     f"{r['driver_scheduler_cpu_s'] / r['panels'] * 1e3:.3f} | {model:.3f} | "
                     f"{r['driver_peak_rss_growth_mb']:.0f} |")
    wf = report["scheduling_wall_fit"]
    lines += ["", f"Wall-clock fit here (2 shared cores): {wf['iteration_s']:.3f} s + "
              f"{wf['panel_s'] * 1e3:.2f} ms per panel; the model takes the serial CPU fit "
              f"({c['iteration_s']:.3f} s + {c['panel_s'] * 1e3:.2f} ms per panel)."]
    fx = report["factorize_cross_check"]
    lines += ["", f"Cross-check: `dnmf.factorize` on {fx['panels']:,} such panels: "
              f"{fx['seconds_per_iteration']:.3f} s per iteration (loop above: "
              f"{wf['iteration_s'] + wf['panel_s'] * fx['panels']:.3f} s by the wall fit)."]
    lines += ["", "## Tree reduction of persisted partials (32 panels)", "",
              "| k | n | partial MB | fan-in | levels | seconds |", "|---:|---:|---:|---:|---:|---:|"]
    for r in report["reduction"]:
        lines.append(f"| {r['k']} | {r['n_features']:,} | {r['partial_mb']:.2f} | "
                     f"{r['fan_in']} | {r['levels']} | {r['seconds']:.3f} |")
    lines += ["", f"Fitted: latency per level {c['level_s'] * 1e3:.1f} ms, "
              f"{report['loopback_s_per_byte'] * 1e9:.2f} ns per partial byte received and "
              f"added (add alone: {c['add_s_per_byte'] * 1e9:.2f} ns/byte).",
              "", "## Bytes sent by the workers per iteration (transfer counters)", "",
              "| X | k | panels | measured MB | model MB |", "|---|---:|---:|---:|---:|"]
    for r in report["bytes"]:
        lines.append(f"| {r['n_samples']:,} x {r['n_features']:,} | {r['k']} | {r['panels']} "
                     f"| {r['measured_mb']:.1f} | {r['model_mb']:.1f} |")
    wm = report["worker_memory"]
    lines += ["", "## Worker memory (streamed fit)", "",
              f"X {wm['shape'][0]:,} x {wm['shape'][1]} ({wm['x_gb']:.2f} GB), k = {wm['k']}, "
              f"{wm['panels']} panels of {wm['panel_rows']:,} rows: peak RSS growth of a worker "
              f"{wm['measured_peak_growth_mb']:.0f} MB; plan's task estimate "
              f"{wm['plan_task_mb']:.0f} MB; model {wm['model_worker_mb']:.0f} MB.",
              "", "## Mapping: the CPU's part of reading a page-cached raw chunk", ""]
    seen = set()
    for r in report["check"]:
        m = r.get("mapping")
        if m is None or m["path"] in seen:
            continue
        seen.add(m["path"])
        lines.append(f"- {r['gb']:.0f} GB store, {m['chunk_mb']:.0f} MB chunks: the kernel on a "
                     f"freshly mapped chunk costs {m['extra_median_s'] * 1e3:.1f} ms more than "
                     f"on the chunk in memory (median of {len(m['extra_s'])}; range "
                     f"{min(m['extra_s']) * 1e3:.1f} to {max(m['extra_s']) * 1e3:.1f} ms): "
                     f"{m['map_gb_s']:.0f} GB/s, the model's memory bandwidth for it; mapping "
                     f"and summing it in float64 (what the raw-read benchmark times) "
                     f"{m['read_and_sum_s'] * 1e3:.1f} ms ({m['read_and_sum_gb_s']:.1f} GB/s).")
    lines += ["", "## Check: fits of raw Zarr in the page cache (X streamed), k = 20, "
              f"{WORKERS} workers x 1 thread, a fresh LocalCluster", "",
              "| X | solver | panels | one read s (wall / busy per worker) | wall s/iter | "
              "predicted | error | workers' busy s/iter | predicted read + compute | error | "
              "predicted read / compute / sched / net / driver s (wall) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["check"]:
        t = r["terms_wall"]
        lines.append(f"| {r['gb']:.0f} GB | {r.get('solver', 'hals')} | {r['panels']} | "
                     f"{r['read_once_s']:.2f} / "
                     f"{r['read_once_busy_s']:.2f} | {r['measured_s']:.2f} | "
                     f"{r['predicted_wall_s']:.2f} | {100 * r['error_wall']:+.0f}% | "
                     f"{r['busy_s']:.2f} | {r['predicted_busy_s']:.2f} | "
                     f"{100 * r['error_busy']:+.0f}% | {t['read_s']:.2f} / "
                     f"{t['compute_s']:.2f} / {t['scheduling_s']:.2f} / {t['network_s']:.3f} / "
                     f"{t['driver_s']:.3f} |")
    if report.get("profiles_check"):
        lines += ["", "## Check: `benchmarks.run`'s raw-store fits of the same day", "",
                  "| profile | solver | s/iter | compute floor s | raw read s | predicted | "
                  "error | predicted read / compute / sched / net / driver s |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in report["profiles_check"]:
            t = r["terms"]
            floor = r["compute_floor_s"]
            lines.append(f"| {r['profile']} | {r['solver']} | {r['measured_s']:.2f} | "
                         f"{'—' if floor is None else f'{floor:.2f}'} | "
                         f"{r['raw_read_s']:.2f} | {r['predicted_s']:.2f} | "
                         f"{100 * r['error']:+.0f}% | {t['read_s']:.2f} / "
                         f"{t['compute_s']:.2f} / {t['scheduling_s']:.2f} / "
                         f"{t['network_s']:.3f} / {t['driver_s']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    refit, check_only = "--refit" in argv, "--check-only" in argv
    args, profile = parse_profile(__doc__ or "", [a for a in argv if a not in ("--refit",
                                                                          "--check-only")],
                                  quick_help="up to 10^4 panels (--refit: refit a saved "
                                             "report, measure nothing; --check-only: the "
                                             "1 and 4 GB checks again)")
    if refit or check_only:
        report = json.loads((RESULTS / f"cost-terms-{profile}.json").read_text())
        if check_only:  # the check again, in this session: its date, machine, worker setting
            from distributed import Client

            report.update(new_report(profile))
            with check_cluster() as cluster, Client(cluster) as client:
                report["check"] = check_runs(client, CHECK_SIZES[profile])
    else:
        report = run(args.quick)
    coefficients = fit_coefficients(report)
    report["coefficients"] = coefficients.__dict__
    predict_checks(report, coefficients)
    report["profiles_check"] = predict_profiles(report, coefficients)
    save_report(f"cost-terms-{profile}", report, markdown(report))
    print("coefficients for dnmf/cost_model.py:")
    print(json.dumps(report["coefficients"], indent=2))


if __name__ == "__main__":
    main()
