"""Endmember extraction benchmark: SPA, VCA, N-FINDR and ATGP on five make_scene cubes.

``python -m benchmarks.endmembers [--quick]``: for each scene (earthlib spectra, synthetic
abundances, white noise; four with pure patches, one without) and each method of
``dnmf endmembers``, the mean and largest spectral angle to the true endmembers (Hungarian
matched, degrees), the wall time and the passes over the cube. The cube is in memory
(threads scheduler): the times are the methods' own, not the reading of a file.

Results go to ``benchmarks/results/endmembers-<profile>.json`` and ``.md``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import machine_brief, new_report, parse_profile, save_report

#: (seed, k, SNR dB, pure patches)
SCENES = ((0, 5, 30.0, True), (1, 5, 40.0, True), (2, 6, 30.0, True), (3, 8, 35.0, True),
          (4, 5, 30.0, False))
SIZES = {"quick": 100, "full": 300}


def run_scene(seed: int, k: int, snr_db: float, pure: bool, side: int) -> list[dict[str, Any]]:
    from dnmf.datasets import make_scene
    from dnmf.hyperspectral.endmembers import METHODS, extract_endmembers
    from dnmf.hyperspectral.metrics import match_endmembers

    scene = make_scene(side, side, n_endmembers=k, snr_db=snr_db, seed=seed,
                       chunks=(side // 2, side // 2), pure_patches=pure).compute()
    rows = []
    for method in METHODS:
        t0 = time.perf_counter()
        found = extract_endmembers(scene.reflectance, k, method=method, seed=seed,
                                   scheduler="threads")
        seconds = time.perf_counter() - t0
        angles = match_endmembers(found.spectra, scene.endmembers_true.values).angles_deg
        rows.append({"scene": f"seed {seed}, k={k}, {snr_db:g} dB"
                              + ("" if pure else ", no pure pixels"),
                     "method": method, "mean_deg": float(np.mean(angles)),
                     "max_deg": float(np.max(angles)), "seconds": seconds,
                     "passes": int(found.passes)})
        print(rows[-1], flush=True)
    return rows


def render(report: dict[str, Any]) -> str:
    side = report["side"]
    lines = [f"### Endmember extraction, {side} x {side} x 180 scenes — {report['date']}", "",
             machine_brief(report["machine"], "numpy", "dask"), "",
             "| scene | method | mean angle (°) | max angle (°) | seconds | passes |",
             "|---|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['scene']} | {r['method']} | {r['mean_deg']:.2f} | "
                     f"{r['max_deg']:.2f} | {r['seconds']:.2f} | {r['passes']} |")
    lines += ["", "| method | mean angle over scenes (°) | worst angle (°) | total seconds |",
              "|---|---:|---:|---:|"]
    for method, s in report["summary"].items():
        lines.append(f"| {method} | {s['mean_deg']:.2f} | {s['max_deg']:.2f} | "
                     f"{s['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    _, profile = parse_profile(__doc__, argv)
    side = SIZES[profile]
    rows = [r for scene in SCENES for r in run_scene(*scene, side)]
    summary = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {"mean_deg": float(np.mean([r["mean_deg"] for r in mine])),
                           "max_deg": float(np.max([r["max_deg"] for r in mine])),
                           "seconds": float(np.sum([r["seconds"] for r in mine]))}
    report = new_report(profile, side=side, rows=rows, summary=summary)
    save_report(f"endmembers-{profile}", report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
