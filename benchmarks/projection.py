"""Projected seconds per iteration at 100 GB - 10 TB on 10 and 100 workers (no measurement).

``python -m benchmarks.projection``: for tall (n = 1,000) and wide (n = 100,000) float32 X
of 100 GB, 1 TB and 10 TB, k = 20 and 100, on 10 and 100 workers, the chunk plan dnmf makes
(stored chunks of 64 MiB rows, as ``open_matrix`` and ``benchmarks.common.planted_zarr``
write them) and :func:`dnmf.cost_model.predict_plan` for it, with the coefficients stored in
``dnmf/cost_model.py`` (fitted by ``benchmarks/cost_terms.py``). "before" is dnmf before the
cost model's issue: panels capped at 128 MiB (``max_panel_bytes=MAX_PANEL_BYTES``: the planner
before panels grew at scale) and H updated on the driver; "after" the default (panels grown
at scale, a wide X's H updated on the workers by column blocks). Writes ``results/projection.{md,json}``.
"""

from __future__ import annotations

import sys
from typing import Any

import dask.array as da
import numpy as np

from benchmarks.common import save_report
from dnmf import cost_model
from dnmf.plan import MAX_PANEL_BYTES, plan_chunks

#: one worker: a node of 8 cores and 64 GB, X read at 0.5 GB/s, a 10 Gbit/s link
THREADS, MEMORY = 8, 64 * 10**9
BANDWIDTHS = cost_model.Bandwidths(disk=0.5e9, network=1.25e9)
SIZES = {"100 GB": 1e11, "1 TB": 1e12, "10 TB": 1e13}
SHAPES = {"tall": 1000, "wide": 100_000}


def project(size: float, n: int, k: int, workers: int, before: bool) -> dict[str, Any]:
    m = int(size // (4 * n))
    stored = max(1, (64 * 2**20) // (4 * n))
    X = da.empty((m, n), chunks=(stored, n), dtype=np.float32)
    plan = plan_chunks(X, k, memory_per_worker=MEMORY, n_workers=workers,
                       threads_per_worker=THREADS, persist_x=False,
                       min_panels=2 * workers * THREADS, stored_rows=stored,
                       max_panel_bytes=MAX_PANEL_BYTES if before else None)
    pred = cost_model.predict_plan(plan, workers=workers, threads=THREADS,
                                   bandwidths=BANDWIDTHS, h_on_workers=not before)
    row = {"shape": [m, n], "k": k, "workers": workers, "planner": "before" if before else
           "after", "scheme": plan.scheme, "panel_rows": max(plan.row_chunks),
           "panel_mb": max(plan.row_chunks) * n * 4 / 1e6, "n_panels": plan.n_panels}
    if pred is not None:
        row.update(pred.as_dict(), shares=pred.shares())
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| X | shape | k | workers | planner | panels x rows (MB) | tasks/iter | s/iter | "
        "read | compute | sched | network | H update | GB/worker |",
        "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m, n = r["shape"]
        if "shares" not in r:
            lines.append(f"| {r['size']} | {m:,} x {n:,} | {r['k']} | {r['workers']} | "
                         f"{r['planner']} | {r['scheme']}: not modelled | | | | | | | | |")
            continue
        s = r["shares"]
        lines.append(
            f"| {r['size']} | {m:,} x {n:,} | {r['k']} | {r['workers']} | {r['planner']} | "
            f"{r['n_panels']:,} x {r['panel_rows']:,} ({r['panel_mb']:,.0f}) | "
            f"{r['tasks_per_iteration']:,} | {r['seconds_per_iteration']:,.1f} | "
            + " | ".join(f"{100 * s[t]:.0f}%" for t in
                         ("read", "compute", "scheduling", "network", "driver"))
            + f" | {r['memory_per_worker'] / 1e9:,.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    del argv
    rows = []
    for size_name, size in SIZES.items():
        for n in SHAPES.values():
            for k in (20, 100):
                for workers in (10, 100):
                    for before in (True, False):
                        rows.append({"size": size_name, **project(size, n, k, workers, before)})
    head = (f"Workers of {THREADS} threads and {MEMORY / 1e9:.0f} GB; disk "
            f"{BANDWIDTHS.disk / 1e9:g} GB/s and network {BANDWIDTHS.network / 1e9:g} GB/s per "
            f"worker; float32 X streamed (not persisted); hals. Coefficients: "
            f"{cost_model.CALIBRATED.provenance}.\n\n")
    report = {"threads": THREADS, "memory_per_worker": MEMORY,
              "bandwidths": BANDWIDTHS.__dict__,
              "coefficients": cost_model.CALIBRATED.__dict__, "rows": rows}
    save_report("projection", report, head + markdown(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
