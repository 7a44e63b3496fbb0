"""Scaling and larger-than-memory benchmarks: 1 vs 2 workers, and X larger than the workers.

``python -m benchmarks.scaling [--quick]``:

(a) the same fit (hals, random init, 3 iterations after a warm-up one) on a LocalCluster of 1
    and of 2 worker processes (1 thread each), for an I/O-bound case (k = 10) and a
    compute-bound case (k = 100), with one streaming read of X on each cluster as the baseline;
(b) X larger than the workers' memory: a float32 raw Zarr several times the workers' total
    memory limit, streamed every iteration (``persist_x=False``); the workers' peak resident
    memory (``VmHWM``, reset before the fit, read from the worker processes) against the limit,
    seconds/iteration against one read of X.

Results go to ``benchmarks/results/scaling-<profile>.json`` and ``.md``.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.common import (
    machine_brief,
    new_report,
    parse_profile,
    peak_rss,
    planted_zarr,
    reset_peak_rss,
    save_report,
    time_read_blocks,
)

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"io": (250_000, 500, 10), "compute": (62_500, 500, 100), "iters": 3,
              "big": (1_000_000, 500), "big_limit": "500MB"},
    "full": {"io": (2_000_000, 500, 10), "compute": (500_000, 500, 100), "iters": 3,
             "big": (4_000_000, 500), "big_limit": "2GB"},
}


def _fit(path: Any, k: int, iters: int, client: Any) -> dict[str, Any]:
    import dnmf

    res = dnmf.factorize(str(path), k, solver="hals", init="random", random_state=0,
                         max_iter=iters + 1, tol=0, client=client, persist_x=False)
    return {"s_per_iter": statistics.median(res.seconds_per_iteration[1:]),
            "n_panels": res.plan.n_panels, "task_mib": res.plan.task_bytes / 2**20}


def scaling(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    from distributed import Client, LocalCluster

    rows = []
    for case in ("io", "compute"):
        n, m, k = cfg[case]
        path = planted_zarr(n, m, 20)
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=":0") as cluster, Client(cluster) as client:
                time_read_blocks(path, client)  # warm-up: imports, page cache
                read = statistics.median(time_read_blocks(path, client) for _ in range(3))
                fit = _fit(path, k, cfg["iters"], client)
            rows.append({"case": case, "shape": [n, m], "k": k, "workers": workers,
                         "read_s": read, **fit})
            print(f"{case} k={k} workers={workers}: read {read:.2f} s, "
                  f"{fit['s_per_iter']:.2f} s/iteration", flush=True)
    return rows


def larger_than_memory(cfg: dict[str, Any]) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    n, m = cfg["big"]
    path = planted_zarr(n, m, 20)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      memory_limit=cfg["big_limit"], dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        time_read_blocks(path, client)
        read = statistics.median(time_read_blocks(path, client) for _ in range(2))
        client.run(reset_peak_rss)
        fit = _fit(path, 10, cfg["iters"], client)
        peaks = client.run(peak_rss)
        limit = next(iter(cluster.workers.values())).memory_manager.memory_limit
    out = {"shape": [n, m], "gb": n * m * 4 / 1e9, "workers": 2, "memory_limit": limit,
           "peak_rss": sorted(peaks.values()), "read_s": read, **fit}
    print(f"larger than memory: X {out['gb']:.1f} GB, limit {limit / 1e9:.2f} GB per worker, "
          f"peak RSS {max(peaks.values()) / 1e9:.2f} GB, {fit['s_per_iter']:.2f} s/iteration "
          f"(read {read:.2f} s)", flush=True)
    return out


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"### Scaling and larger than memory, profile `{report['profile']}` — "
             f"{report['date']}", "",
             machine_brief(m, "dask"),
             "", "hals, X streamed from raw Zarr every iteration, LocalCluster of 1-thread "
             "worker processes:", "",
             "| case | X | k | workers | read s | s / iteration | ratio to read | speed-up |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    base: dict[str, float] = {}
    for r in report["scaling"]:
        if r["workers"] == 1:
            base[r["case"]] = r["s_per_iter"]
        speedup = base[r["case"]] / r["s_per_iter"]
        lines.append(f"| {r['case']} | {r['shape'][0]:,} x {r['shape'][1]} | {r['k']} | "
                     f"{r['workers']} | {r['read_s']:.2f} | {r['s_per_iter']:.2f} | "
                     f"{r['s_per_iter'] / r['read_s']:.2f} | {speedup:.2f} |")
    b = report["larger_than_memory"]
    lines += ["", f"Larger than memory: X {b['shape'][0]:,} x {b['shape'][1]} float32 = "
              f"{b['gb']:.1f} GB; 2 workers limited to {b['memory_limit'] / 1e9:.2f} GB each; "
              f"peak worker RSS {max(b['peak_rss']) / 1e9:.2f} GB; {b['s_per_iter']:.2f} s per "
              f"iteration against {b['read_s']:.2f} s for one read "
              f"({b['s_per_iter'] / b['read_s']:.2f}x); {b['n_panels']} panels, "
              f"{b['task_mib']:.0f} MiB per task (plan)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    _, profile = parse_profile(__doc__, argv)
    cfg = PROFILES[profile]
    report = new_report(profile)
    report["scaling"] = scaling(cfg)
    report["larger_than_memory"] = larger_than_memory(cfg)
    save_report(f"scaling-{profile}", report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
