"""What the loss costs in a β-divergence panel step: :func:`dnmf.divergence.beta_panel_step`
with and without its loss terms (``with_loss``), for KL and for masked Frobenius.

``python -m benchmarks.loss_terms [--rows 33554] [--cols 500] [--k 20]`` writes
``results/loss-terms.{md,json}``. One float32 panel of Poisson counts (mean 2, about 14% zeros;
1% of the entries NaN for the masked fit), timed on one thread as CPU seconds of this process
(``time.process_time``), median of ``--repeats``: the measurement behind the default of
``loss_every``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import machine_line, new_report, save_report
from benchmarks.panel_profile import cpu_seconds, panel_args

#: ``(label, beta, masked)`` of the timed steps.
CASES = (("kullback-leibler", 1.0, False), ("masked frobenius", 2.0, True),
         ("itakura-saito", 0.0, False))


def profile(rows: int, cols: int, k: int, repeats: int) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    from dnmf.divergence import beta_block_rows, beta_panel_step

    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, size=(rows, cols)).astype(np.float32)
    W = rng.random((rows, k), dtype=np.float32) + np.float32(0.1)
    H = rng.random((k, cols), dtype=np.float32) + np.float32(0.1)
    Xnan = X.copy()
    Xnan[rng.random(X.shape) < 0.01] = np.nan
    Xpos = X + np.float32(1.0)  # Itakura-Saito needs X > 0
    out: dict[str, Any] = {"rows": rows, "cols": cols, "k": k,
                           "block_rows": beta_block_rows(cols, 4), "cases": {}}
    with threadpool_limits(1):
        for label, beta, masked in CASES:
            data = Xnan if masked else (Xpos if beta == 0.0 else X)
            row = {name: cpu_seconds(lambda w=with_loss, d=data, b=beta, m=masked: (
                beta_panel_step(d, W, H, beta=b, masked=m, with_loss=w)), repeats)
                for name, with_loss in (("with_loss_s", True), ("without_loss_s", False))}
            row["loss_share"] = 1.0 - row["without_loss_s"] / row["with_loss_s"]
            out["cases"][label] = row
    return out


def render(report: dict[str, Any]) -> str:
    p = report["profile"]
    ms = 1e3
    lines = [f"### Loss terms of a β panel step — {report['date']}", "",
             machine_line(report["machine"]), "",
             f"One {p['rows']:,} x {p['cols']} float32 panel of Poisson(2) counts, k = {p['k']}, "
             f"sub-blocks of {p['block_rows']:,} rows; CPU ms of one thread, median of "
             f"{report['repeats']}.", "",
             "| loss | step with the loss | without | loss share |", "|---|---:|---:|---:|"]
    for label, r in p["cases"].items():
        lines.append(f"| {label} | {r['with_loss_s'] * ms:.1f} | {r['without_loss_s'] * ms:.1f} "
                     f"| {r['loss_share']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = panel_args(__doc__ or "", argv, repeats=7)
    report = new_report("loss-terms", repeats=args.repeats)
    report["profile"] = profile(args.rows, args.cols, args.k, args.repeats)
    save_report("loss-terms", report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
