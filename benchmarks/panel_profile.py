"""Where a panel's time goes: read, ``X Hᵀ``, the W update, ``Wᵀ X``, and the whole task,
for the whole-panel kernel (before the performance issue; still the default for Frobenius
panels) and the cache-sized sub-blocks (:func:`dnmf.kernels.cache_block_rows`).

``python -m benchmarks.panel_profile [--rows 33554] [--cols 500] [--k 20]`` writes
``results/panel-profile.{md,json}``. One float32 panel (64 MiB at the defaults, the stored
chunk of the benchmark stores) is written as a raw Zarr chunk and read back with dnmf's reader;
every part is timed alone on one thread, as CPU seconds of this process (``time.process_time``,
so that other processes on a shared machine do not count), median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_line, new_report, save_report

SOLVERS = ("hals", "mu", "anls")


def cpu_seconds(func: Any, repeats: int) -> float:
    """Median CPU seconds of ``func()`` over ``repeats`` calls, after one warm-up call."""
    func()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        func()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def profile(rows: int, cols: int, k: int, repeats: int) -> dict[str, Any]:
    import zarr
    from threadpoolctl import threadpool_limits

    from dnmf import kernels
    from dnmf.io import open_matrix

    rng = np.random.default_rng(0)
    X = rng.random((rows, cols), dtype=np.float32)
    W = rng.random((rows, k), dtype=np.float32)
    H = rng.random((k, cols), dtype=np.float32)
    HHt = H.astype(np.float64) @ H.T.astype(np.float64)
    sweeps = kernels.w_inner_sweeps(k, cols)
    out: dict[str, Any] = {"rows": rows, "cols": cols, "k": k, "sweeps": sweeps,
                           "block_rows": kernels.cache_block_rows(cols, 4), "solvers": {}}
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
        path = Path(tmp) / "panel.zarr"
        z = zarr.create_array(str(path), shape=X.shape, chunks=X.shape, dtype=X.dtype,
                              compressors=None)
        z[:] = X
        source = open_matrix(str(path)).array
        out["read_s"] = cpu_seconds(lambda: source.compute(scheduler="sync"), repeats)
        XHt = X @ H.T
        out["xht_s"] = cpu_seconds(lambda: X @ H.T, repeats)
        out["wtx_s"] = cpu_seconds(lambda: kernels.gram_partials(X, W), repeats)
        for solver in SOLVERS:
            reps = repeats if solver != "anls" else max(1, repeats // 3)
            row = {
                "w_update_s": cpu_seconds(lambda s=solver: kernels.update_w(
                    W, XHt, HHt, solver=s, inner_sweeps=sweeps), reps),
                "before_s": cpu_seconds(lambda s=solver: kernels.panel_step_unblocked(
                    X, W, H, HHt, solver=s, inner_sweeps=sweeps), reps),
                "after_s": cpu_seconds(lambda s=solver: kernels.panel_step(
                    X, W, H, HHt, solver=s, inner_sweeps=sweeps,
                    block_rows=kernels.cache_block_rows(cols, 4)), reps),
            }
            parts = out["xht_s"] + row["w_update_s"] + out["wtx_s"]
            row["overhead_before_s"] = row["before_s"] - parts
            row["after_to_before"] = row["after_s"] / row["before_s"]
            out["solvers"][solver] = row
    return out


def render(report: dict[str, Any]) -> str:
    p = report["profile"]
    ms = 1e3
    lines = [f"### Panel profile — {report['date']}", "", machine_line(report["machine"]), "",
             f"One {p['rows']:,} x {p['cols']} float32 panel, k = {p['k']} (HALS: "
             f"{p['sweeps']} W sweeps); CPU ms of one thread, median of {report['repeats']}. "
             f"Sub-blocks of {p['block_rows']:,} rows (from this CPU's cache). Read: the panel "
             f"from a raw Zarr chunk with dnmf's reader (page cache warm): {p['read_s'] * ms:.1f} "
             "ms.", "",
             "| solver | X·Hᵀ | W update | Wᵀ·X, WᵀW | overhead | whole panel (before) | "
             "cache sub-blocks | sub-blocks / whole |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for solver, r in p["solvers"].items():
        lines.append(f"| {solver} | {p['xht_s'] * ms:.1f} | {r['w_update_s'] * ms:.1f} | "
                     f"{p['wtx_s'] * ms:.1f} | {r['overhead_before_s'] * ms:.1f} | "
                     f"{r['before_s'] * ms:.1f} | {r['after_s'] * ms:.1f} | "
                     f"{r['after_to_before']:.2f} |")
    return "\n".join(lines) + "\n"


def panel_args(doc: str, argv: list[str] | None, repeats: int) -> argparse.Namespace:
    """The command line of a one-panel profile: ``--rows --cols --k --repeats`` (default: one
    64 MiB float32 panel of 500 columns, k = 20)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rows", type=int, default=33_554)
    parser.add_argument("--cols", type=int, default=500)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=repeats)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = panel_args(__doc__ or "", argv, repeats=9)
    report = new_report("panel", repeats=args.repeats)
    report["profile"] = profile(args.rows, args.cols, args.k, args.repeats)
    save_report("panel-profile", report, render(report))  # prints the table too
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
