"""The rank survey: how often it recommends the right k, and what it costs.

``python -m benchmarks.rank [--quick] [--only hits|cost]`` measures:

(a) **hit rate** — :func:`dnmf.select_rank` on each planted structure of :data:`STRUCTURES`
    (k from 3 to 12, a noise level, an additive offset, a sparse CSR matrix) over
    :data:`PROFILES`' seeds (10 in the full profile), with the survey settings of
    :data:`SURVEY`. The expected answer is stated in each structure, before any run: the
    planted k, or k + 1 where the noise adds a non-negative offset (the offset is one more
    non-negative rank-one component). Per structure: the hit rate of the recommendation (the
    one-standard-error rule), of the bare minimum of the mean held-out error, of the elbow and
    of the consensus criteria's best k; and how often the consensus criteria disagree with the
    recommendation;
(b) **cost** — the survey's wall time against the ``R x |ks|`` single fits it stands for
    (``dnmf.factorize`` with ``n_restarts=1`` for every run seed of every k, the same
    ``max_iter`` and ``tol``), on a dense planted matrix streamed from a raw Zarr store every
    iteration (``persist_x=False``), in-process threads.

Results go to ``benchmarks/results/rank-<profile>.json`` and ``.md``. The suite test
``tests/test_rank.py`` surveys one seed of every structure with the same settings.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.common import DATA, machine_brief, new_report, save_report

#: The settings of every survey here and in the suite's tests.
SURVEY: dict[str, Any] = {"n_runs": 5, "heldout_fraction": 0.1, "max_iter": 100,
                          "tol": 1e-4, "scheduler": "threads", "min_panel_bytes": 0}

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"seeds": 3, "cost": {"rows": 10_000, "cols": 200, "planted_k": 6,
                                   "ks": (4, 5, 6, 7, 8), "runs": 3}},
    "full": {"seeds": 10, "cost": {"rows": 40_000, "cols": 400, "planted_k": 8,
                                   "ks": tuple(range(5, 12)), "runs": 5}},
}


def planted_dense(n: int, m: int, k: int, *, noise: float, offset: float = 0.0,
                  seed: int) -> np.ndarray:
    """``W H`` (gamma(1, 1) factors) plus ``offset x mean`` plus Gaussian noise of
    ``noise x mean``, clipped at 0."""
    rng = np.random.default_rng(seed)
    X = rng.gamma(1.0, 1.0, (n, k)) @ rng.gamma(1.0, 1.0, (k, m))
    mean = X.mean()
    X = X + offset * mean + noise * mean * rng.standard_normal(X.shape)
    return np.maximum(X, 0.0)


def planted_sparse(n: int, m: int, k: int, *, p_w: float, p_h: float, noise: float,
                   seed: int) -> Any:
    """A CSR ``W H`` of sparse gamma factors (an entry of W is non-zero with probability
    ``p_w``, of H with ``p_h``): X is exactly zero off the components' supports; its stored
    entries get multiplicative log-normal noise ``exp(noise N(0, 1))`` (no offset)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    W = rng.gamma(1.0, 1.0, (n, k)) * (rng.random((n, k)) < p_w)
    H = rng.gamma(1.0, 1.0, (k, m)) * (rng.random((k, m)) < p_h)
    X = sp.csr_matrix(W @ H)
    X.data *= np.exp(noise * rng.standard_normal(X.nnz))
    return X


@dataclass(frozen=True)
class Structure:
    """A planted structure: ``make(seed)`` gives X, surveyed over ``ks``; ``expected_k`` is
    the answer stated before running (``why``)."""

    name: str
    planted_k: int
    expected_k: int
    ks: tuple[int, ...]
    make: Callable[[int], Any]
    what: str
    why: str


STRUCTURES: dict[str, Structure] = {s.name: s for s in (
    Structure("k3", 3, 3, (2, 3, 4, 5, 6),
              lambda seed: planted_dense(600, 60, 3, noise=0.1, seed=seed),
              "dense 600 x 60, k = 3, Gaussian noise 10% of the mean",
              "zero-mean noise (clipping at 0 touches almost no entry): the planted k"),
    Structure("k7-offset", 7, 8, (5, 6, 7, 8, 9, 10, 11),
              lambda seed: planted_dense(800, 80, 7, noise=0.05, offset=0.1, seed=seed),
              "dense 800 x 80, k = 7, offset 10% of the mean + Gaussian noise 5%",
              "the offset is a non-negative rank-one term: k + 1"),
    Structure("k12-noisy", 12, 12, (9, 10, 11, 12, 13, 14, 15),
              lambda seed: planted_dense(1000, 100, 12, noise=0.2, seed=seed),
              "dense 1000 x 100, k = 12, Gaussian noise 20% of the mean",
              "zero-mean noise: the planted k"),
    Structure("sparse-k5", 5, 5, (3, 4, 5, 6, 7, 8),
              lambda seed: planted_sparse(2000, 300, 5, p_w=0.3, p_h=0.1, noise=0.1,
                                          seed=seed),
              "CSR 2000 x 300 (about 14% stored), k = 5, sparse factors, log-normal noise "
              "10% on the stored entries",
              "multiplicative noise on the stored entries, exact zeros: the planted k"),
)}


def survey_input(X: Any) -> Any:
    """Dense X as a dask array of two row panels (the survey's tasks see several panels);
    sparse X as it is."""
    if hasattr(X, "tocsr"):
        return X
    import dask.array as da

    return da.from_array(X, chunks=((X.shape[0] + 1) // 2, X.shape[1]))


def survey(structure: Structure, seed: int, **overrides: Any) -> Any:
    """One survey of ``structure``'s X for ``seed`` with :data:`SURVEY`'s settings."""
    import dnmf

    return dnmf.select_rank(survey_input(structure.make(seed)), ks=structure.ks, seed=seed,
                            **{**SURVEY, **overrides})


# --- (a) hit rate ------------------------------------------------------------------------------


def hit_rates(seeds: int) -> list[dict[str, Any]]:
    rows = []
    for structure in STRUCTURES.values():
        runs = []
        for seed in range(seeds):
            t0 = time.perf_counter()
            report = survey(structure, seed)
            picks = {"recommended": report.recommended_k, "minimum": report.heldout_min_k,
                     "elbow": report.elbow_k,
                     **{name: report.best_by(name)
                        for name in ("cophenetic", "dispersion", "silhouette")}}
            runs.append({"seed": seed, "seconds": time.perf_counter() - t0, "picks": picks,
                         "warnings": report.warnings,
                         "heldout_error": report.heldout_error.tolist(),
                         "heldout_error_se": report.heldout_error_se.tolist()})
            print(f"{structure.name} seed {seed}: {picks} ({runs[-1]['seconds']:.1f} s)",
                  flush=True)
        hits = {name: sum(r["picks"][name] == structure.expected_k for r in runs) / len(runs)
                for name in runs[0]["picks"]}
        disagree = sum(any(r["picks"][c] != r["picks"]["recommended"]
                           for c in ("cophenetic", "dispersion", "silhouette")) for r in runs)
        rows.append({"structure": structure.name, "what": structure.what,
                     "planted_k": structure.planted_k, "expected_k": structure.expected_k,
                     "why": structure.why, "ks": list(structure.ks), "seeds": seeds,
                     "hit_rate": hits, "consensus_disagrees": disagree, "runs": runs,
                     "seconds": sum(r["seconds"] for r in runs)})
    return rows


# --- (b) cost ----------------------------------------------------------------------------------


def planted_store(rows: int, cols: int, k: int) -> str:
    """A raw float32 Zarr of :func:`planted_dense` data (noise 10%), written once."""
    import zarr

    path = DATA / f"rank-planted-{rows}x{cols}-k{k}.zarr"
    if (path / "zarr.json").exists() and zarr.open_array(str(path)).attrs.get("complete"):
        return str(path)
    DATA.mkdir(parents=True, exist_ok=True)
    X = planted_dense(rows, cols, k, noise=0.1, seed=0).astype(np.float32)
    arr = zarr.create_array(str(path), shape=X.shape, chunks=(max(1, rows // 8), cols),
                            dtype="float32", compressors=None, overwrite=True)
    arr[:] = X
    arr.attrs["complete"] = True
    return str(path)


def cost(settings: dict[str, Any]) -> dict[str, Any]:
    import dnmf
    from dnmf.spec import restart_seeds

    path = planted_store(settings["rows"], settings["cols"], settings["planted_k"])
    ks, R = settings["ks"], settings["runs"]
    common = {"max_iter": SURVEY["max_iter"], "tol": SURVEY["tol"], "scheduler": "threads",
              "persist_x": False}
    t0 = time.perf_counter()
    report = dnmf.select_rank(path, ks=ks, n_runs=R, seed=0, **common)
    survey_s = time.perf_counter() - t0
    singles, passes = [], 0
    for k in ks:
        for run_seed in restart_seeds(1000 + k, R):  # R random starts of rank k
            t1 = time.perf_counter()
            fit = dnmf.factorize(path, k, init="random", random_state=run_seed, **common)
            singles.append(time.perf_counter() - t1)
            passes += fit.n_iter
    survey_passes = int(np.sum(report.n_iter) + np.sum(report.heldout_n_iter))
    return {"path": path, "shape": [settings["rows"], settings["cols"]],
            "planted_k": settings["planted_k"], "ks": list(ks), "runs": R,
            "survey_s": survey_s, "single_fits_s": sum(singles), "n_single_fits": len(singles),
            "single_fit_median_s": statistics.median(singles),
            "ratio": survey_s / sum(singles), "survey_iterations": survey_passes,
            "single_fit_iterations": passes, "recommended_k": report.recommended_k,
            "warnings": report.warnings}


# --- report ------------------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"### Rank survey, profile `{report['profile']}` — {report['date']}", "",
             machine_brief(m, "dnmf", "dask", "numpy") + (
                 f" Load average at start {m['load_average'][0]:.1f} (a shared machine)."
                 if m.get("load_average") else ""), "",
             "Survey settings: " + ", ".join(f"{k}={v}" for k, v in SURVEY.items()) + "."]
    if report.get("hits"):
        lines += ["", "#### Hit rate of the recommended k", "",
                  "| structure | planted k | expected k (stated before running) | seeds | "
                  "recommended (1-SE rule) | bare minimum | elbow | cophenetic | dispersion | "
                  "silhouette | consensus disagrees | s/survey |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in report["hits"]:
            h = row["hit_rate"]
            lines.append(
                f"| {row['what']} | {row['planted_k']} | {row['expected_k']} ({row['why']}) | "
                f"{row['seeds']} | {h['recommended']:.0%} | {h['minimum']:.0%} | "
                f"{h['elbow']:.0%} | {h['cophenetic']:.0%} | {h['dispersion']:.0%} | "
                f"{h['silhouette']:.0%} | {row['consensus_disagrees']}/{row['seeds']} | "
                f"{row['seconds'] / row['seeds']:.1f} |")
        lines += ["", "Picks per seed (recommended / bare minimum / elbow / cophenetic / "
                  "dispersion / silhouette):", ""]
        for row in report["hits"]:
            picks = "; ".join(
                "/".join(str(r["picks"][n]) for n in ("recommended", "minimum", "elbow",
                                                      "cophenetic", "dispersion",
                                                      "silhouette"))
                for r in row["runs"])
            lines.append(f"- {row['structure']}: {picks}")
    if report.get("cost"):
        c = report["cost"]
        lines += ["", "#### Cost", "",
                  f"X = {c['shape'][0]:,} x {c['shape'][1]} float32 (planted k = "
                  f"{c['planted_k']}), raw Zarr streamed every iteration, threads; ks = "
                  f"{c['ks'][0]}..{c['ks'][-1]} ({len(c['ks'])}), R = {c['runs']} runs.", "",
                  "| what | seconds | passes over X |", "|---|---:|---:|",
                  f"| the survey (per k: R runs batched, R held-out runs batched, their "
                  f"passes) | {c['survey_s']:.1f} | {c['survey_iterations']} (+ a few per k) |",
                  f"| R x \\|ks\\| = {c['n_single_fits']} single fits (factorize, n_restarts=1) "
                  f"| {c['single_fits_s']:.1f} | {c['single_fit_iterations']} |",
                  "", f"Survey / single fits: {c['ratio']:.2f}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds, a small cost case")
    parser.add_argument("--only", choices=("hits", "cost"), default=None)
    parser.add_argument("--seeds", type=int, default=None, help="seeds per structure")
    args = parser.parse_args(argv)
    profile = "quick" if args.quick else "full"
    settings = PROFILES[profile]
    report = new_report(profile, survey=SURVEY)
    if args.only in (None, "hits"):
        report["hits"] = hit_rates(args.seeds or settings["seeds"])
    if args.only in (None, "cost"):
        report["cost"] = cost(settings["cost"])
    save_report(f"rank-{profile}", report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
