"""In memory: time to reach scikit-learn's final loss, dnmf against scikit-learn.

``python -m benchmarks.inmemory [--quick] [--matrix ROWS COLS K REPEATS] [--methods NAME ...]``
(also part of ``python -m benchmarks.run``). ``--matrix`` runs one planted matrix with the quick
profile's time budget (report ``inmemory-<ROWS>x<COLS>-k<K>``); ``--methods`` keeps only the
named comparisons besides the headline pair (scikit-learn cd, dnmf hals).

On planted float32 matrices (rank k plus 5% half-normal noise), every method starts from
nndsvda, stops on ``tol = 1e-4`` (its own rule) or ``max_iter = 1000``, and is timed end to
end (validation, initialisation and, for dnmf, its default scheduler choice included):

- scikit-learn ``NMF(solver="cd")``: its final loss ``||X - W H||_F^2`` (+0.1%) is the
  **target**; its median time over the repeats is the denominator of every ratio;
- scikit-learn ``NMF(solver="mu")`` and ``MiniBatchNMF`` (default batch size);
- dnmf ``hals`` and ``mu`` (``dnmf.factorize`` with no scheduler or client).

Time to target: dnmf reports the loss after every iteration (``callback``; wall clock since
the call began). scikit-learn reports only a final loss, so its curve is a series of separate
fits with ``max_iter`` = 1, 3, 8, 20, 50, ... (1, 3, 9, 27, ... in the quick profile), each
timed from scratch: the time it takes to get that loss by asking for that many iterations. Its
time to target is that of the first such fit that reaches it (an upper bound at that granularity), and the fit is repeated for the
median. Every method gets a time budget of ``budget`` x scikit-learn cd's time: a method that
has not reached the target by then is reported as not reached, with its best loss. dnmf's
repeats stop at the iteration that reached the target in its first run. The headline pair runs
interleaved (cd, dnmf hals, cd, dnmf hals, ...; hals's budget from cd's first run), and its
ratio is the median over the pairs of hals's time over the cd run just before it, so that a
change in the machine's speed during the run hits both sides of each ratio.

Results: ``benchmarks/results/inmemory-<profile>.json``/``.md`` when run alone, and
``time-to-accuracy-<profile>.png`` (loss / target against seconds, every method, per matrix).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    RESULTS,
    machine_line,
    new_report,
    parse_profile,
    save_report,
    yes_no,
)

TOL = 1e-4
MAX_ITER = 1000
#: The target is scikit-learn cd's final loss times (1 + SLACK).
SLACK = 1e-3
#: The issue's targets: dnmf hals time to the target / scikit-learn cd's time.
TARGETS = {(20_000, 500, 20): 0.7, (100_000, 200, 10): 0.5}

PROFILES: dict[str, dict[str, Any]] = {
    # matrices: (rows, cols, k, repeats); budget: multiple of sklearn cd's time each method
    # may take; growth: ratio of successive max_iter of scikit-learn's traced fits
    # methods: the comparisons run (the quick profile: the headline pair only, to stay within
    # the suite's 5 minutes)
    "quick": {"matrices": [(20_000, 500, 20, 3), (100_000, 200, 10, 3)], "budget": 1.0,
              "growth": 3.0, "methods": ("sklearn cd", "dnmf hals")},
    "full": {"matrices": [(20_000, 500, 20, 3), (100_000, 200, 10, 3), (500_000, 1_000, 20, 1)],
             "budget": 3.0, "growth": 2.5},
}
METHODS = ("sklearn cd", "sklearn mu", "sklearn MiniBatchNMF", "dnmf hals", "dnmf mu")


def planted(rows: int, cols: int, k: int, *, seed: int = 1) -> np.ndarray:
    """Planted rank-k float32 data: gamma factors plus 5% half-normal noise."""
    rng = np.random.default_rng(seed)
    X = rng.gamma(1.0, 1.0, (rows, k)) @ rng.gamma(1.0, 1.0, (k, cols))
    X += 0.05 * np.abs(rng.standard_normal((rows, cols)))
    return X.astype(np.float32)


def exact_loss(X: np.ndarray, W: Any, H: np.ndarray, *, block: int = 65_536) -> float:
    """``||X - W H||_F^2`` in float64, a block of rows at a time (untimed check)."""
    W = np.asarray(W)
    H64 = np.asarray(H, dtype=np.float64)
    total = 0.0
    for start in range(0, X.shape[0], block):
        R = X[start:start + block].astype(np.float64) - W[start:start + block] @ H64
        total += float(np.einsum("ij,ij->", R, R))
    return total


def _sklearn_maker(method: str, k: int) -> Callable[[int], Any]:
    from sklearn.decomposition import NMF, MiniBatchNMF

    if method == "sklearn MiniBatchNMF":
        return lambda m: MiniBatchNMF(k, init="nndsvda", tol=TOL, max_iter=m, random_state=0)
    solver = method.split()[-1]
    return lambda m: NMF(k, solver=solver, init="nndsvda", tol=TOL, max_iter=m, random_state=0)


def sklearn_fit(make: Callable[[int], Any], X: np.ndarray, max_iter: int) -> dict[str, Any]:
    """One timed scikit-learn fit: seconds, final loss, iterations, and whether it stopped on
    its own rule before ``max_iter``."""
    est = make(max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at small max_iter
        t0 = time.perf_counter()
        est.fit(X)
        seconds = time.perf_counter() - t0
    n_iter = int(est.n_iter_)
    if hasattr(est, "n_steps_"):  # MiniBatchNMF: max_iter counts passes over X
        per_pass = math.ceil(X.shape[0] / min(est.batch_size, X.shape[0]))
        stopped = est.n_steps_ < max_iter * per_pass
    else:
        stopped = n_iter < max_iter
    return {"max_iter": max_iter, "s": seconds, "loss": float(est.reconstruction_err_) ** 2,
            "n_iter": n_iter, "stopped": stopped}


def schedule(growth: float, below: int | None = None) -> list[int]:
    """``max_iter`` of the traced fits: 1, then growing by ``growth`` (under ``below``)."""
    out = [1]
    while out[-1] < (below or MAX_ITER):
        out.append(min(MAX_ITER, math.ceil(out[-1] * growth)))
    return [m for m in out if below is None or m < below]


def sklearn_cd(make: Callable[[int], Any], X: np.ndarray, full: list[dict[str, Any]],
               growth: float) -> dict[str, Any]:
    """scikit-learn cd from its full runs (``full``), traced by fits stopped before its end."""
    seconds = statistics.median(f["s"] for f in full)
    final = full[0]
    trace = [sklearn_fit(make, X, m) for m in schedule(growth, below=final["n_iter"])]
    trace.append({**final, "s": seconds})
    return {"method": "sklearn cd", "total_s": seconds, "total_runs_s": [f["s"] for f in full],
            "total_iter": final["n_iter"], "final_loss": final["loss"],
            "final_losses": [f["loss"] for f in full], "stop": "tol", "trace": trace,
            "curve": [[p["s"], p["loss"]] for p in trace]}


def sklearn_traced(method: str, X: np.ndarray, k: int, target: float, budget_s: float,
                   repeats: int, growth: float) -> dict[str, Any]:
    """Fits with growing ``max_iter`` until one reaches ``target``, stops on its own rule, or
    spends the budget (one fit that long, or all of them together twice that); the
    reaching fit is repeated for the median."""
    make = _sklearn_maker(method, k)
    trace: list[dict[str, Any]] = []
    m = 1
    stop = "max_iter"
    while True:
        point = sklearn_fit(make, X, m)
        trace.append(point)
        if point["loss"] <= target:
            stop = "reached"
            break
        if point["stopped"]:
            stop = "tol"
            break
        if point["s"] >= budget_s or sum(p["s"] for p in trace) >= 2 * budget_s:
            stop = "budget"
            break
        if m >= MAX_ITER:
            break
        m = _next_max_iter(trace, budget_s, growth)
    last = trace[-1]
    out = {"method": method, "total_s": last["s"], "total_iter": last["n_iter"],
           "final_loss": last["loss"], "best_loss": min(p["loss"] for p in trace), "stop": stop,
           "trace": trace, "curve": [[p["s"], p["loss"]] for p in trace]}
    if stop == "reached":
        runs = [last["s"]] + [sklearn_fit(make, X, m)["s"] for _ in range(repeats - 1)]
        out.update(s_to_target=statistics.median(runs), s_to_target_runs=runs,
                   iter_to_target=last["n_iter"])
    return out


def _next_max_iter(trace: list[dict[str, Any]], budget_s: float, growth: float) -> int:
    """The next traced ``max_iter``: ``growth`` times the last, but not past what the budget
    affords by a line through the first and last fits (a fit's fixed cost is its init)."""
    first, last = trace[0], trace[-1]
    m = last["max_iter"]
    nxt = min(MAX_ITER, math.ceil(m * growth))
    if m > first["max_iter"]:
        slope = (last["s"] - first["s"]) / (m - first["max_iter"])
        if slope > 0:
            nxt = min(nxt, max(m + 1, m + int((budget_s - last["s"]) / slope)))
    return nxt


def dnmf_fit(X: np.ndarray, k: int, solver: str, target: float, *, max_iter: int,
             max_time: float | None) -> dict[str, Any]:
    """One timed dnmf fit with its default scheduler; the loss after each iteration."""
    import dnmf

    curve: list[list[float]] = []
    reached: dict[str, Any] = {}
    t0 = time.perf_counter()

    def record(info: Any) -> None:
        s = time.perf_counter() - t0
        curve.append([s, float(info.loss)])
        if "s" not in reached and info.loss <= target:
            reached.update(s=s, iter=info.iteration)

    res = dnmf.factorize(X, k, solver=solver, init="nndsvda", tol=TOL, max_iter=max_iter,
                         random_state=0, max_time=max_time, callback=record)
    total = time.perf_counter() - t0
    return {"total_s": total, "total_iter": res.n_iter, "final_loss": res.loss_history[-1],
            "stop": res.stop_reason, "curve": curve, "reached": reached, "result": res}


def dnmf_method(solver: str, X: np.ndarray, k: int, target: float, budget_s: float,
                repeats: int, between: Callable[[], None] | None = None) -> dict[str, Any]:
    """dnmf to its own end (or the budget), then repeated up to the iteration that reached the
    target; ``between`` runs before each repeat (the baseline, interleaved)."""
    first = dnmf_fit(X, k, solver, target, max_iter=MAX_ITER, max_time=budget_s)
    res = first.pop("result")
    out = {"method": f"dnmf {solver}", **{k_: first[k_] for k_ in
                                          ("total_s", "total_iter", "final_loss", "stop",
                                           "curve")},
           "best_loss": min(c[1] for c in first["curve"]),
           "final_loss_exact": exact_loss(X, res.W, res.H)}
    # The loss dnmf reports per iteration comes from the Gram identity, which carries float32
    # rounding near a good fit; the target is confirmed on the factors themselves: a fit with
    # max_iter = the iteration that reported it ends with dnmf's exact final loss (a direct
    # pass in float32), and one more iteration is asked for until that is at the target. Each
    # repeat's time is the whole fit (validation, init, iterations and that final pass).
    runs: list[float | None] = []
    iters = first["reached"].get("iter")
    checked: list[dict[str, Any]] = []
    for repeat in range(repeats):
        if repeat and between is not None:
            between()
        if iters is None:
            runs.append(None)
            continue
        while True:
            again = dnmf_fit(X, k, solver, target, max_iter=iters, max_time=None)
            exact = float(again["result"].reconstruction_err) ** 2
            checked.append({"max_iter": iters, "exact_final_loss": exact,
                            "total_s": again["total_s"]})
            if exact <= target or iters >= first["total_iter"] + 5:
                break
            iters += 1
        runs.append(again["total_s"] if exact <= target else None)
    reached = [t for t in runs if t is not None]
    out["target_checks"] = checked
    if reached:
        out.update(s_to_target=statistics.median(reached), s_to_target_runs=runs,
                   iter_to_target=iters)
    return out


def one_matrix(rows: int, cols: int, k: int, repeats: int, budget: float,
               growth: float, methods_run: tuple[str, ...] = METHODS) -> dict[str, Any]:
    X = planted(rows, cols, k)
    make = _sklearn_maker("sklearn cd", k)
    full = [sklearn_fit(make, X, MAX_ITER)]
    target = full[0]["loss"] * (1 + SLACK)
    # the headline pair alternates (cd, hals, cd, hals, ...): drift in the machine's speed
    # hits both; hals's budget comes from cd's first run
    hals = dnmf_method("hals", X, k, target, budget * full[0]["s"], repeats,
                       between=lambda: full.append(sklearn_fit(make, X, MAX_ITER)))
    hals["budget_s"] = budget * full[0]["s"]
    cd = sklearn_cd(make, X, full, growth)
    budget_s = budget * cd["total_s"]
    reach = [p for p in cd["trace"] if p["loss"] <= target]
    cd.update(best_loss=min(cd["final_losses"]), s_to_target=reach[0]["s"],
              iter_to_target=reach[0]["n_iter"], budget_s=None)
    print(f"  sklearn cd: {cd['total_s']:.2f} s, {cd['total_iter']} iterations, loss "
          f"{cd['final_loss']:.6g}", flush=True)
    methods = [cd]
    for method in [m for m in METHODS[1:] if m in methods_run]:
        if method == "dnmf hals":
            row = hals
        elif method.startswith("dnmf"):
            row = dnmf_method(method.split()[1], X, k, target, budget_s, repeats)
            row["budget_s"] = budget_s
        else:
            row = sklearn_traced(method, X, k, target, budget_s, repeats, growth)
            row["budget_s"] = budget_s
        methods.append(row)
        t = row.get("s_to_target")
        print(f"  {method}: " + (f"{t:.2f} s to target" if t is not None else
                                 f"not reached in {row['total_s']:.2f} s ({row['stop']})"),
              flush=True)
    goal = TARGETS.get((rows, cols, k))
    for row in methods:
        t = row.get("s_to_target")
        row["ratio"] = t / cd["total_s"] if t is not None else None
    # the headline: each hals run over the cd run just before it, median
    paired = [h / c for h, c in zip(hals.get("s_to_target_runs", []), cd["total_runs_s"],
                                    strict=False) if h is not None]
    if paired:
        hals.update(ratio_of_medians=hals["ratio"], paired_ratios=paired,
                    ratio=statistics.median(paired))
    for row in methods:
        row["target"] = goal if row["method"] == "dnmf hals" else None
        if row["target"] is not None:
            row["met"] = row["ratio"] is not None and row["ratio"] <= row["target"]
    return {"shape": [rows, cols], "k": k, "repeats": repeats, "target_loss": target,
            "sklearn_cd_s": cd["total_s"], "budget_s": budget_s,
            "norm_x_sq": float(np.einsum("ij,ij->", X, X, dtype=np.float64)),
            "methods": methods}


def in_memory(cfg: dict[str, Any], methods: tuple[str, ...] | None = None) -> dict[str, Any]:
    methods = methods or cfg.get("methods", METHODS)
    mats = []
    for rows, cols, k, repeats in cfg["matrices"]:
        print(f"in memory {rows:,} x {cols} k={k}:", flush=True)
        mats.append(one_matrix(rows, cols, k, repeats, cfg["budget"], cfg["growth"], methods))
    return {"budget": cfg["budget"], "growth": cfg["growth"], "tol": TOL, "max_iter": MAX_ITER,
            "slack": SLACK, "matrices": mats}


def plot(section: dict[str, Any], profile: str) -> str:
    """Time-to-accuracy curves, one panel per matrix: loss / target against seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    mats = section["matrices"]
    fig, axes = plt.subplots(1, len(mats), figsize=(5.5 * len(mats), 4.2), squeeze=False)
    styles = {"sklearn cd": ("C0", "o-"), "sklearn mu": ("C1", "s-"),
              "sklearn MiniBatchNMF": ("C2", "^-"), "dnmf hals": ("C3", "-"),
              "dnmf mu": ("C4", "-")}
    for ax, mat in zip(axes[0], mats, strict=True):
        for row in mat["methods"]:
            color, style = styles[row["method"]]
            s = [c[0] for c in row["curve"]]
            y = [c[1] / mat["target_loss"] for c in row["curve"]]
            # scikit-learn's points are separate fits (max_iter 1, 3, 8, ...), joined in that order
            ax.plot(s, y, style, color=color, label=row["method"], markersize=4, linewidth=1.0)
        ax.axhline(1.0, color="k", linestyle="--", linewidth=0.8,
                   label="target: sklearn cd final loss + 0.1%")
        ax.axvline(mat["sklearn_cd_s"], color="C0", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("seconds (from the call, init included)")
        ax.set_ylabel("loss / target")
        ax.set_title(f"{mat['shape'][0]:,} x {mat['shape'][1]}, k = {mat['k']}")
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"time-to-accuracy-{profile}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.relative_to(Path(__file__).resolve().parent.parent))


def render_in_memory(section: dict[str, Any]) -> list[str]:
    lines = [
        "#### In memory",
        "",
        "Planted float32 X; nndsvda init, `tol = 1e-4`, `max_iter = 1000` for every method; "
        "the target is scikit-learn cd's final loss + 0.1%; ratios are time to the target over "
        "scikit-learn cd's time (median of the repeats); for dnmf hals, which runs interleaved "
        "with cd, the median over its runs of its time over the cd run just before it (the "
        "ratio of the medians is in the JSON). dnmf with its default scheduler "
        "(no client), included in its time. scikit-learn's time to a loss is that of the first "
        f"fit with `max_iter` = {', '.join(map(str, schedule(section['growth'])[:5]))}, ... "
        "(each a separate fit) reaching it. Budget per method: "
        f"{section['budget']:g} x scikit-learn cd's time. Curves: `{section.get('plot', '')}`.",
        "",
        "| X | k | method | s to target (iterations) | total s (iterations, stop) | "
        "best loss / target | × sklearn cd | target | met? |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for mat in section["matrices"]:
        shape = f"{mat['shape'][0]:,} x {mat['shape'][1]}"
        for row in mat["methods"]:
            t = row.get("s_to_target")
            to_target = (f"{t:.2f} ({row['iter_to_target']})" if t is not None
                         else "not reached")
            ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else (
                f"> {row['budget_s'] / mat['sklearn_cd_s']:.1f}"
                if row["stop"] in ("budget", "max_time") else "—")
            best = row.get("best_loss", row["final_loss"]) / mat["target_loss"]
            target = f"≤ {row['target']:.1f}" if row.get("target") is not None else "—"
            met = yes_no(row.get("met"))
            lines.append(f"| {shape} | {mat['k']} | {row['method']} | {to_target} | "
                         f"{row['total_s']:.2f} ({row['total_iter']}, {row['stop']}) | "
                         f"{best:.4g} | {ratio} | {target} | {met} |")
    lines += ["", throughput_line(section)]
    return lines


def throughput_line(section: dict[str, Any]) -> str:
    """Entries of X processed per second per core over each whole fit (start and init included)."""
    cores = os.cpu_count() or 1
    parts = []
    for mat in section["matrices"]:
        entries = mat["shape"][0] * mat["shape"][1]
        for row in mat["methods"]:
            rate = entries * row["total_iter"] / row["total_s"] / cores / 1e9
            parts.append(f"{row['method']} {rate:.3f} ({mat['shape'][0]:,} x {mat['shape'][1]}, "
                         f"k = {mat['k']})")
    return ("Throughput, G entries of X per second per core over the whole fit (iterations x "
            f"entries / total s / {cores} cores; start and init included): " + "; ".join(parts)
            + ". pyDNMFk publishes about 0.10 (its own hardware; not run here).")


def main(argv: list[str] | None = None) -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--matrix", nargs=4, type=int, default=None,
                       metavar=("ROWS", "COLS", "K", "REPEATS"))
    extra.add_argument("--methods", nargs="*", default=None)
    opts, rest = extra.parse_known_args(argv)
    _, profile = parse_profile(__doc__, rest)
    cfg = dict(PROFILES[profile])
    name = f"inmemory-{profile}"
    if opts.matrix is not None:  # one matrix, a report of its own (quick's time budget)
        rows, cols, k, repeats = opts.matrix
        cfg = {**PROFILES["quick"], "matrices": [(rows, cols, k, repeats)]}
        name = profile = f"inmemory-{rows}x{cols}-k{k}"
    methods = None if opts.methods is None else tuple(
        m for m in METHODS if m == "sklearn cd" or m == "dnmf hals" or m in opts.methods)
    t0 = time.perf_counter()
    report = new_report(profile)
    report["in_memory"] = in_memory(cfg, methods)
    report["in_memory"]["plot"] = plot(report["in_memory"], profile)
    report["seconds"] = time.perf_counter() - t0
    text = "\n".join([f"### In memory, profile `{profile}` — {report['date']}", "",
                      machine_line(report["machine"]), ""]
                     + render_in_memory(report["in_memory"])) + "\n"
    save_report(name, report, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
