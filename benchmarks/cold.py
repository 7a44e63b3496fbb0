"""X larger than the machine's memory, read cold from disk: the 32 GB row of the growth table.

``python -m benchmarks.cold [--rows N] [--iters N]`` (or ``python -m benchmarks.run --profile
32gb``): a planted float32 raw Zarr of ``rows`` x 500 (default 16,000,000 rows: 32 GB, more
than this machine's memory, so the page cache cannot hold it), made once under
``benchmarks/data/``; on a LocalCluster of one single-threaded worker per core:

1. the **raw read from disk**: every chunk file evicted from the page cache
   (``posix_fadvise(POSIX_FADV_DONTNEED)``: in a container ``drop_caches`` is usually
   read-only), then one read of X with dnmf's reader (each chunk summed on its worker), before
   and after the fit;
2. **hals k = 20**, X streamed (``persist_x=False``), random init, ``iters`` iterations, every
   chunk file evicted before the fit and again after each iteration (from the fit's
   callback), so that every iteration reads X from disk; seconds per iteration, median of all
   (the first includes no initialisation pass: random init reads nothing);
3. the **compute floor** (:func:`benchmarks.floors.compute_floor`, panels in memory).

Not part of the suite (it takes ~10 minutes and 32 GB of disk); run once for the record.
Results go to ``benchmarks/results/cold-<rows>.{json,md}`` with the machine's description and
the disk's cold sequential read speed (one chunk file at a time, plain ``read``) for context.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    machine_line,
    new_report,
    planted_zarr,
    read_once,
    save_report,
)
from benchmarks.floors import compute_floor

COLS, K = 500, 20


def chunk_files(path: Path) -> list[Path]:
    """Every chunk file of the raw Zarr at ``path``."""
    return sorted(p for p in (path / "c").rglob("*") if p.is_file())


def evict(files: list[Path]) -> None:
    """Drop ``files`` from the page cache (the workers share this host's cache)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_read_speed(files: list[Path], n: int = 8) -> float:
    """Bytes/s of a cold sequential ``read`` of ``n`` chunk files, one after the other."""
    sample = files[:n]
    evict(sample)
    t0, total = time.perf_counter(), 0
    for f in sample:
        with open(f, "rb", buffering=0) as fh:
            while block := fh.read(8 << 20):
                total += len(block)
    return total / (time.perf_counter() - t0)


def cold_read(path: Path, files: list[Path], client: Any) -> float:
    evict(files)
    return read_once(path, client, "dnmf")


def cold_fit(path: Path, files: list[Path], client: Any, iters: int) -> dict[str, Any]:
    import dnmf

    evict(files)
    result = dnmf.factorize(str(path), K, solver="hals", init="random", random_state=0,
                            max_iter=iters, tol=0.0, client=client, persist_x=False,
                            callback=lambda info: evict(files))
    per_iter = result.seconds_per_iteration
    return {"s_per_iter": statistics.median(per_iter), "iterations_s": per_iter,
            "n_panels": len(result.plan.row_chunks), "relative_error": result.relative_error}


def render(report: dict[str, Any]) -> str:
    r = report["cold"]
    gb = r["gb"]
    lines = [f"### X read cold from disk, {r['rows']:,} x {COLS} float32 ({gb:.1f} GB) — "
             f"{report['date']}", "", machine_line(report["machine"]), "",
             f"LocalCluster {r['workers']} workers x 1 thread. Every chunk file evicted from "
             "the page cache before each read and before each iteration. Disk, cold "
             f"sequential read of one chunk file at a time: {r['disk_mib_s']:.0f} MiB/s.", "",
             "| what | seconds | per GB | ratio to the cold raw read |", "|---|---:|---:|---:|",
             f"| raw read from disk (dnmf reader), mean of before/after | {r['read_s']:.1f} | "
             f"{r['read_s'] / gb:.2f} | 1.00 |",
             f"| hals k = {K}, s/iteration (median of {len(r['fit']['iterations_s'])}) | "
             f"{r['fit']['s_per_iter']:.1f} | {r['fit']['s_per_iter'] / gb:.2f} | "
             f"{r['ratio_raw']:.2f} |",
             f"| compute floor (panels in memory) | {r['floor_s']:.1f} | "
             f"{r['floor_s'] / gb:.2f} | {r['floor_s'] / r['read_s']:.2f} |", "",
             f"Target (performance issue): s/iteration ≤ 1.3 × the raw read from disk — "
             f"{'met' if r['ratio_raw'] <= 1.3 else 'not met'} ({r['ratio_raw']:.2f}). "
             f"Iterations: {', '.join(f'{s:.1f}' for s in r['fit']['iterations_s'])} s; "
             f"reads: {', '.join(f'{s:.1f}' for s in r['reads_s'])} s; "
             f"{r['fit']['n_panels']} panels."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16_000_000)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args(argv)
    path = planted_zarr(args.rows, COLS, K)
    files = chunk_files(path)
    gb = sum(f.stat().st_size for f in files) / 1e9
    cores = os.cpu_count() or 1
    report = new_report(f"cold-{args.rows}")
    with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.run(lambda: __import__("dnmf.kernels"))  # worker imports outside the timings
        disk = disk_read_speed(files)
        before = cold_read(path, files, client)
        print(f"cold raw read: {before:.1f} s", flush=True)
        fit = cold_fit(path, files, client, args.iters)
        print(f"hals k={K}: {fit['iterations_s']} s/iteration", flush=True)
        after = cold_read(path, files, client)
        floor = compute_floor(path, client, k=K, solver="hals")
    read_s = (before + after) / 2
    report["cold"] = {"rows": args.rows, "gb": gb, "workers": cores,
                      "disk_mib_s": disk / 2**20, "reads_s": [before, after], "read_s": read_s,
                      "fit": fit, "floor_s": floor["s"], "ratio_raw": fit["s_per_iter"] / read_s,
                      "ratio_floor": fit["s_per_iter"] / max(read_s, floor["s"])}
    report["headlines"] = [{"what": f"out of core, {gb:.0f} GB read cold from disk, dnmf hals "
                                    f"k={K} s/iteration / cold raw read",
                            "ratio": report["cold"]["ratio_raw"], "target": 1.3,
                            "met": report["cold"]["ratio_raw"] <= 1.3}]
    save_report(f"cold-{args.rows}", report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
