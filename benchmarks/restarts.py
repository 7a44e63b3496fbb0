"""Batched restarts: seconds per iteration of R = 10 restarts against R = 1, and one read of X.

``python -m benchmarks.restarts [--quick]`` measures, in one run and on one LocalCluster (one
1-thread worker process per core), with X streamed from its raw Zarr store every iteration
(``persist_x=False``):

(a) one streaming read of X (a sum of every chunk; warm-up, then median of reads before and
    after the fits);
(b) dnmf seconds/iteration (median over iterations after the first) at k = 8 with
    ``n_restarts=1`` and ``n_restarts=10`` (the ten restarts stacked: one read of X per
    iteration for all of them, ``n_samples x 80`` W), for each solver asked for;

and reports R=10 / R=1 and each against (a). The full profile uses the 4 GB store
``benchmarks/data/planted-2000000x500-k20-raw.zarr`` (made by
:func:`benchmarks.common.planted_zarr` when missing); ``--quick`` the 0.25 GB
``planted-125000x500-k20-raw.zarr``. Results go to ``benchmarks/results/restarts-<profile>.json``
and ``.md``.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    describe_store,
    machine_brief,
    new_report,
    parse_profile,
    planted_zarr,
    save_report,
    time_read,
)

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"rows": 125_000, "cols": 500, "planted_k": 20, "k": 8, "iters": 4, "reads": 2,
              "restarts": [1, 10], "solvers": ["hals"]},
    "full": {"rows": 2_000_000, "cols": 500, "planted_k": 20, "k": 8, "iters": 6, "reads": 3,
             "restarts": [1, 10], "solvers": ["hals", "mu"]},
}


def time_restarts(path: Path, client: Any, solver: str, k: int, restarts: int,
                  iters: int) -> dict[str, Any]:
    """One batched fit of ``restarts`` random starts, X streamed from the store."""
    import dnmf

    t0 = time.perf_counter()
    result = dnmf.factorize(str(path), k, solver=solver, n_restarts=restarts, init="random",
                            random_state=0, max_iter=iters, tol=0.0, client=client,
                            persist_x=False)
    wall = time.perf_counter() - t0
    per_iter = result.seconds_per_iteration[1:] or result.seconds_per_iteration
    return {"solver": solver, "restarts": restarts, "s_per_iter": statistics.median(per_iter),
            "seconds_per_iteration": result.seconds_per_iteration, "wall_s": wall,
            "n_panels": result.plan.n_panels, "best_relative_error": result.relative_error,
            "restart_relative_errors": result.restart_relative_errors}


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    x = report["x"]
    lines = [
        f"### Restarts, profile `{report['profile']}` — {report['date']}",
        "",
        machine_brief(m, "dnmf", "dask", "numpy"),
        "",
        f"X = {x['shape'][0]:,} x {x['shape'][1]} float32, {x['gb']:.2f} GB raw Zarr "
        f"({x['chunks']} chunks), streamed every iteration; k = {report['k']}; LocalCluster "
        f"{report['cluster']}.",
        "",
        "| what | seconds | ratio to one read of X | ratio to R = 1 |",
        "|---|---:|---:|---:|",
        f"| one read of X (median of {len(report['reads_s'])}, before and after) | "
        f"{report['read_s']:.2f} | 1.00 | |",
    ]
    base = {row["solver"]: row["s_per_iter"] for row in report["fits"] if row["restarts"] == 1}
    for row in report["fits"]:
        ratio = row["s_per_iter"] / base[row["solver"]] if row["solver"] in base else float("nan")
        lines.append(
            f"| dnmf {row['solver']}, {row['restarts']} restart(s), one iteration | "
            f"{row['s_per_iter']:.2f} | {row['s_per_iter'] / report['read_s']:.2f} | "
            f"{ratio:.2f} |")
    lines += ["", "R restarts stack W to n_samples x (R k) and H to (R k) x n_features: one read "
              "of X per iteration for all of them; the extra cost is compute (X_i H^T and "
              "W_i^T X_i with R k columns, and R k x k updates)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args, profile = parse_profile(__doc__, argv, quick_help="the 0.25 GB profile (~1 minute)",
                                  solvers=True)
    cfg = PROFILES[profile]
    from distributed import Client, LocalCluster

    path = planted_zarr(cfg["rows"], cfg["cols"], cfg["planted_k"])
    report = new_report(profile, k=cfg["k"], path=str(path), x=describe_store(path))
    cores = os.cpu_count() or 1
    with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        report["cluster"] = f"{cores} workers x 1 thread"
        time_read(path, client, 1)  # warm-up: worker imports, page cache
        first = [time_read(path, client, 1) for _ in range(cfg["reads"])]
        print(f"one read of X: {statistics.median(first):.2f} s", flush=True)
        report["fits"] = []
        for solver in args.solvers or cfg["solvers"]:
            for restarts in cfg["restarts"]:
                row = time_restarts(path, client, solver, cfg["k"], restarts, cfg["iters"])
                report["fits"].append(row)
                print(f"dnmf {solver}, {restarts} restart(s): {row['s_per_iter']:.2f} "
                      "s/iteration", flush=True)
        last = [time_read(path, client, 1) for _ in range(cfg["reads"])]
        report["reads_s"] = first + last
        report["read_s"] = statistics.median(first + last)
    save_report(f"restarts-{profile}", report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
