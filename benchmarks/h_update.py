"""A wide X's H update on the driver against on the workers, measured (the cost model's issue).

``python -m benchmarks.h_update [--rows N] [--cols N] [--k K] [--iters N]``: a random float32
X (default 2,000 x 100,000, 800 MB) persisted on a LocalCluster of one single-threaded worker
per core; hals, random init, ``iters`` iterations (``tol = 0``), twice: with H updated on the
driver (``DNMF_H_ON_WORKERS_BYTES`` above WᵀX's size) and as dnmf decides (WᵀX of k x n x 8
bytes over :data:`dnmf.plan.H_ON_WORKERS_BYTES`: one block of H's columns per worker thread).
Seconds per iteration (median after the first), the driver process's CPU seconds per
iteration, and the final losses (equal to rounding). Results in
``benchmarks/results/h-update.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from benchmarks.common import machine_line, new_report, save_report


def fit(X: Any, k: int, iters: int, client: Any, on_driver: bool) -> dict[str, Any]:
    import dnmf

    if on_driver:
        os.environ["DNMF_H_ON_WORKERS_BYTES"] = str(2**62)
    else:
        os.environ.pop("DNMF_H_ON_WORKERS_BYTES", None)
    cpu0 = time.process_time()
    result = dnmf.factorize(X, k, solver="hals", init="random", random_state=0,
                            max_iter=iters, tol=0.0, client=client, persist_x=True)
    cpu = time.process_time() - cpu0
    per_iter = result.seconds_per_iteration[1:] or result.seconds_per_iteration
    return {"where": "driver" if on_driver else "workers",
            "s_per_iter": statistics.median(per_iter), "iterations_s": result.seconds_per_iteration,
            "driver_cpu_s_per_iter": cpu / len(result.seconds_per_iteration),
            "final_loss": result.loss_history[-1]}


def main(argv: list[str] | None = None) -> int:
    import dask.array as da
    from distributed import Client, LocalCluster

    from dnmf.plan import h_column_blocks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000)
    parser.add_argument("--cols", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--iters", type=int, default=4)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    report = new_report("h-update", rows=args.rows, cols=args.cols, k=args.k, workers=cores,
                        blocks=len(h_column_blocks(args.k, args.cols, cores)))
    with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        X = da.random.default_rng(0).random((args.rows, args.cols), dtype="float32",
                                            chunks=(-(-args.rows // (2 * cores)), args.cols))
        X = client.persist(X)
        runs = [fit(X, args.k, args.iters, client, on_driver) for on_driver in (True, False)]
    report["runs"] = runs
    d, w = runs
    lines = [f"### H update of a wide X: driver against workers — {report['date']}", "",
             machine_line(report["machine"]), "",
             f"X {args.rows:,} x {args.cols:,} float32 (random, persisted), hals k = {args.k}, "
             f"LocalCluster {cores} workers x 1 thread; on the workers: {report['blocks']} "
             "column blocks.", "",
             "| H updated on | s/iteration | driver CPU s/iteration | final loss |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r['where']} | {r['s_per_iter']:.2f} | {r['driver_cpu_s_per_iter']:.2f} | "
              f"{r['final_loss']:.6e} |" for r in runs]
    lines += ["", f"Workers / driver, s/iteration: {w['s_per_iter'] / d['s_per_iter']:.2f}."]
    save_report("h-update", report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
