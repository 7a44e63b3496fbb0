"""Workers started with distributed's ``MALLOC_TRIM_THRESHOLD_=65536`` against glibc's own
thresholds (what dnmf's LocalCluster does, :func:`dnmf.cluster.worker_malloc_config`).

``python -m benchmarks.malloc``: the 1 GB planted raw Zarr of ``benchmarks.run --profile 1gb``
(500,000 x 500 float32, k = 20), a LocalCluster of 2 workers x 1 thread started each way in
turn (twice each, interleaved); in each: the compute floors of hals, mu and KL (the panel
kernels alone on panels in the workers' memory, :func:`benchmarks.floors.compute_floor`), the
seconds per iteration of a hals and a mu fit (X streamed, 5 iterations), and the workers'
peak resident memory (``VmHWM``, reset before the fits). Writes ``results/malloc.{md,json}``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.common import (
    machine_line,
    new_report,
    peak_rss,
    planted_zarr,
    reset_peak_rss,
    save_report,
)

ROWS, COLS, K, ITERS = 500_000, 500, 20, 5
SETTINGS = ("distributed's default (MALLOC_TRIM_THRESHOLD_=65536)", "dnmf's workers (unset)")


def one_cluster(path: Any, unset: bool) -> dict[str, Any]:
    import dask
    from distributed import Client, LocalCluster

    import dnmf
    from benchmarks.floors import compute_floor
    from dnmf.cluster import MALLOC_TRIM_KEY, worker_malloc_environment

    setting = worker_malloc_environment() if unset else dask.config.set({MALLOC_TRIM_KEY: 65536})
    with setting:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
    row: dict[str, Any] = {"unset": unset}
    with cluster, Client(cluster) as client:
        env = client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
        row["worker_env"] = sorted({str(v) for v in env.values()})
        for solver, beta in (("hals", 2.0), ("mu", 2.0), ("mu", 1.0)):
            name = solver if beta == 2.0 else "KL"
            row[f"floor_{name}_s"] = compute_floor(path, client, k=K, solver=solver, beta=beta)["s"]
        client.run(reset_peak_rss)
        for solver in ("hals", "mu"):
            seconds: list[float] = []
            t0 = time.perf_counter()
            dnmf.factorize(str(path), K, solver=solver, max_iter=ITERS, tol=0, random_state=0,
                           client=client, callback=lambda info, out=seconds: out.append(
                               info.seconds))
            row[f"fit_{solver}_s_per_iter"] = statistics.median(seconds[1:])
            row[f"fit_{solver}_wall_s"] = time.perf_counter() - t0
        row["peak_rss"] = sorted(client.run(peak_rss).values())
    print(f"{SETTINGS[unset]}: " + ", ".join(
        f"{k} {v:.3f}" for k, v in row.items() if k.endswith("_s") or k.endswith("_iter")),
        f"peak RSS {max(row['peak_rss']) / 1e9:.2f} GB", flush=True)
    return row


def render(report: dict[str, Any]) -> str:
    rows = report["rows"]
    lines = [f"### Worker malloc settings — {report['date']}", "", machine_line(report["machine"]),
             "", __doc__.split("\n\n")[1].replace("\n", " "), "",
             "| workers | hals floor s | mu floor s | KL floor s | hals fit s/it | mu fit s/it "
             "| peak worker RSS GB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for unset in (False, True):
        mine = [r for r in rows if r["unset"] == unset]
        med = {key: statistics.median(r[key] for r in mine) for key in
               ("floor_hals_s", "floor_mu_s", "floor_KL_s", "fit_hals_s_per_iter",
                "fit_mu_s_per_iter")}
        rss = max(max(r["peak_rss"]) for r in mine) / 1e9
        lines.append(f"| {SETTINGS[unset]} | {med['floor_hals_s']:.3f} | {med['floor_mu_s']:.3f} "
                     f"| {med['floor_KL_s']:.3f} | {med['fit_hals_s_per_iter']:.3f} | "
                     f"{med['fit_mu_s_per_iter']:.3f} | {rss:.2f} |")
    lines += ["", "Medians of the runs of each setting; the peak RSS is the largest."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    del argv
    path = planted_zarr(ROWS, COLS, K)
    report = new_report("malloc")
    report["rows"] = [one_cluster(path, unset) for unset in (False, True, False, True)]
    save_report("malloc", report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
