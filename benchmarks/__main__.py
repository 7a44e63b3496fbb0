"""The dnmf benchmark suite: ``python -m benchmarks [--quick] [--only SECTION ...]``.

Sections, run one after the other in this process (each on its own LocalCluster where it needs
one, each writing its own results under ``benchmarks/results/``):

- ``core`` (:mod:`benchmarks.run`): out of core, dnmf seconds/iteration against one read of X
  through the same cluster; in memory, time to scikit-learn's final loss against scikit-learn
  (:mod:`benchmarks.inmemory`), with time-to-accuracy curves — ``<profile>.{json,md}``;
- ``sparse`` (:mod:`benchmarks.sparse`, when present): sparse bag-of-words against gensim and
  scikit-learn — ``sparse-<profile>.{json,md}``;
- ``scaling`` (:mod:`benchmarks.scaling`): 1 against 2 workers, and X larger than the workers'
  memory — ``scaling-<profile>.{json,md}``;
- ``rank`` (:mod:`benchmarks.rank`): the rank survey's hit rate on planted structures over
  seeds, and its wall time against the single fits it stands for — ``rank-<profile>.{json,md}``;
- ``endmembers`` (:mod:`benchmarks.endmembers`): SPA, VCA, N-FINDR and ATGP on five scenes,
  angles and times — ``endmembers-<profile>.{json,md}``;
- ``small`` (:mod:`benchmarks.small`): in-memory fits from 100 x 10 up, dnmf in-process and
  through the graph against scikit-learn's cd at equal loss, and a GridSearchCV —
  ``small-<profile>.{json,md}``;
- ``cost-terms`` (:mod:`benchmarks.cost_terms`): each term of the cost model measured
  (scheduling per panel, reduction, bytes sent, memories, panel compute, driver H update), its
  coefficients fitted and checked against hals fits — ``cost-terms-{profile}.{json,md}``;
- ``sklearn-tests`` (:mod:`benchmarks.sklearn_nmf_tests`): scikit-learn's installed
  test_nmf.py run on ``dnmf.NMF`` — ``sklearn-nmf-tests.{json,md}``.

A section that fails is reported and the others still run; the exit status is 1 then. The
summary (each section's time and results, the headline ratios against their targets, the total
time) is printed and written to ``suite-<profile>.{json,md}``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import time
import traceback
from typing import Any

from benchmarks.common import RESULTS, machine_line, new_report, save_report

#: section -> (module, results name with {profile})
SECTIONS: dict[str, tuple[str, str]] = {
    "core": ("benchmarks.run", "{profile}"),
    "sparse": ("benchmarks.sparse", "sparse-{profile}"),
    "scaling": ("benchmarks.scaling", "scaling-{profile}"),
    "rank": ("benchmarks.rank", "rank-{profile}"),
    "endmembers": ("benchmarks.endmembers", "endmembers-{profile}"),
    "small": ("benchmarks.small", "small-{profile}"),
    "cost-terms": ("benchmarks.cost_terms", "cost-terms-{profile}"),
    "sklearn-tests": ("benchmarks.sklearn_nmf_tests", "sklearn-nmf-tests"),
}


def run_section(name: str, profile: str) -> dict[str, Any]:
    """Run one section's ``main``; its status, seconds and results files."""
    module_name, results = SECTIONS[name]
    results = results.format(profile=profile)
    out: dict[str, Any] = {"section": name, "module": module_name, "results": results}
    if importlib.util.find_spec(module_name) is None:
        return {**out, "status": "skipped", "why": f"{module_name} is not there", "seconds": 0.0}
    print(f"\n=== {name} ({module_name}, {profile}) ===", flush=True)
    t0 = time.perf_counter()
    try:
        module = importlib.import_module(module_name)
        code = module.main(["--quick"] if profile == "quick" else [])
        status, why = ("ok", "") if not code else ("failed", f"main returned {code}")
    except (Exception, SystemExit) as exc:  # one section's failure must not stop the others
        traceback.print_exc()
        status, why = "failed", f"{type(exc).__name__}: {exc}"
    out.update(status=status, why=why, seconds=time.perf_counter() - t0)
    path = RESULTS / f"{results}.json"
    if status == "ok" and path.exists():
        report = json.loads(path.read_text())
        out["headlines"] = report.get("headlines", [])
    gc.collect()
    return out


def render(report: dict[str, Any]) -> str:
    lines = [f"### Benchmark suite, profile `{report['profile']}` — {report['date']}", "",
             machine_line(report["machine"]), "",
             "| section | status | seconds | results |", "|---|---|---:|---|"]
    for s in report["sections"]:
        status = s["status"] + (f" ({s['why']})" if s.get("why") else "")
        lines.append(f"| {s['section']} | {status} | {s['seconds']:.0f} | "
                     f"`results/{s['results']}.md` |")
    heads = [h for s in report["sections"] for h in s.get("headlines", [])]
    if heads:
        lines += ["", "| headline | ratio | target | met? |", "|---|---:|---:|---|"]
        for h in heads:
            ratio = "not reached" if h["ratio"] is None else f"{h['ratio']:.2f}"
            if h.get("ratio_dnmf_reader") is not None:
                ratio += f" ({h['ratio_dnmf_reader']:.2f})"
            lines.append(f"| {h['what']} | {ratio} | ≤ {h['target']:.1f} | "
                         f"{'yes' if h['met'] else 'no'} |")
    lines += ["", f"Total: {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the small profile of every section (a few minutes)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=None,
                        metavar="SECTION", help=f"run only these: {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    profile = "quick" if args.quick else "full"
    t0 = time.perf_counter()
    report = new_report(profile, sections=[])
    for name in args.only or list(SECTIONS):
        report["sections"].append(run_section(name, profile))
    report["seconds"] = time.perf_counter() - t0
    print("\n=== summary ===")
    save_report(f"suite-{profile}", report, render(report))
    return 0 if all(s["status"] != "failed" for s in report["sections"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
