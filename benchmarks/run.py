"""dnmf benchmarks: seconds/iteration against one read of X, and against scikit-learn.

Run ``python -m benchmarks.run --quick`` (under 2 minutes) or ``python -m benchmarks.run``
(the full profile: a 4 GB float32 raw Zarr). Everything is measured in one run, on one
LocalCluster, and reported as ratios against baselines measured in the same run:

(a) one streaming read of X from Zarr through the same cluster (the I/O limit of a one-pass
    iteration);
(b) dnmf seconds/iteration for hals, mu and anls (median over iterations, first excluded);
(c) scikit-learn's NMF on an in-memory matrix: seconds per iteration and time to its final loss,
    against dnmf on the same matrix with its default (in-process) scheduler.

Results go to ``benchmarks/results/<profile>.json`` and ``.md`` with the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"

PROFILES: dict[str, dict[str, Any]] = {
    # rows x 500 float32; 64 MiB row panels (32,768 rows) as stored chunks, no compressor
    "quick": {"rows": 125_000, "cols": 500, "k": 20, "iters": 4, "solvers": ["hals", "mu", "anls"],
              "reads": 2, "persisted": True, "sk": [(20_000, 500, 20)]},
    "full": {"rows": 2_000_000, "cols": 500, "k": 20, "iters": 6,
             "solvers": ["hals", "mu", "anls"], "reads": 3, "persisted": True,
             "sk": [(20_000, 500, 20), (100_000, 200, 10)]},
}


def machine() -> dict[str, Any]:
    """CPU, cores, memory, BLAS and its threads, library versions."""
    import dask
    import psutil
    import sklearn
    import zarr
    from threadpoolctl import threadpool_info

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = [
        {k: info.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
        for info in threadpool_info() if info.get("user_api") == "blas"
    ]
    import dnmf

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "blas": blas,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "dask": dask.__version__,
        "zarr": zarr.__version__,
        "scikit-learn": sklearn.__version__,
        "dnmf": dnmf.__version__,
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS")},
    }


def parse_profile(doc: str, argv: list[str] | None, *, quick_help: str | None = None,
                  solvers: bool = False) -> tuple[argparse.Namespace, str]:
    """The command line every benchmark shares: ``--quick`` (and ``--solvers``); the profile."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    if solvers:
        parser.add_argument("--solvers", nargs="*", default=None)
    args = parser.parse_args(argv)
    return args, "quick" if args.quick else "full"


def new_report(profile: str, **fields: Any) -> dict[str, Any]:
    """A report's header: profile, date and the machine's description, then ``fields``."""
    return {"profile": profile, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
            **fields}


def describe_store(path: Path) -> dict[str, Any]:
    """Shape, size and chunks of a Zarr array, for a report."""
    import zarr

    z = zarr.open_array(str(path))
    return {"shape": list(z.shape), "gb": z.nbytes / 1e9,
            "chunks": f"{z.chunks[0]:,} x {z.chunks[1]}"}


def save_report(name: str, report: dict[str, Any], text: str) -> None:
    """``results/<name>.json`` and ``.md``, and the table on stdout."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2))
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


def planted_zarr(rows: int, cols: int, k: int, *, seed: int = 0) -> Path:
    """A raw (uncompressed) float32 Zarr of planted rank-k data with 64 MiB row chunks."""
    import zarr

    path = DATA / f"planted-{rows}x{cols}-k{k}-raw.zarr"
    if (path / "zarr.json").exists() and zarr.open_array(str(path)).attrs.get("complete"):
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    chunk_rows = max(1, (64 * 2**20) // (cols * 4))
    arr = zarr.create_array(str(path), shape=(rows, cols), chunks=(chunk_rows, cols),
                            dtype="float32", compressors=None, overwrite=True)
    rng = np.random.default_rng(seed)
    H = rng.gamma(1.0, 1.0, size=(k, cols)).astype(np.float32)
    for start in range(0, rows, chunk_rows):
        stop = min(rows, start + chunk_rows)
        W = rng.gamma(1.0, 1.0, size=(stop - start, k)).astype(np.float32)
        block = W @ H
        block += 0.05 * np.abs(rng.standard_normal(block.shape, dtype=np.float32))
        arr[start:stop] = block
    arr.attrs["complete"] = True
    return path


def time_read(path: Path, client: Any, repeats: int) -> float:
    """Median seconds of one streaming read of X (a sum of every chunk) through ``client``."""
    import dask.array as da

    from dnmf.io import open_matrix

    X = open_matrix(str(path)).array
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        client.compute(X.sum(dtype="float64"), sync=True)
        times.append(time.perf_counter() - t0)
    assert isinstance(X, da.Array)
    return statistics.median(times)


def time_dnmf(path: Path, client: Any, solver: str, k: int, iters: int,
              persist_x: bool = False) -> dict[str, Any]:
    import dnmf

    # anls's exact NNLS costs ~1 s per 64 MiB panel at k = 20: fewer iterations suffice
    result = dnmf.factorize(str(path), k, solver=solver, init="random", random_state=0,
                            max_iter=iters if solver != "anls" else 3, tol=0.0, client=client,
                            persist_x=persist_x)
    per_iter = result.seconds_per_iteration[1:] or result.seconds_per_iteration
    label = solver + (", X persisted in worker memory" if persist_x else "")
    return {"solver": label, "s_per_iter": statistics.median(per_iter),
            "relative_error": result.relative_error, "n_panels": result.plan.n_panels}


def sklearn_vs_dnmf(rows: int, cols: int, k: int) -> dict[str, Any]:
    """scikit-learn cd (nndsvda, tol 1e-4) vs dnmf hals to scikit-learn's final loss."""
    from sklearn.decomposition import NMF as SkNMF

    import dnmf

    rng = np.random.default_rng(1)
    X = (rng.gamma(1.0, 1.0, (rows, k)) @ rng.gamma(1.0, 1.0, (k, cols))
         + 0.05 * np.abs(rng.standard_normal((rows, cols)))).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        sk = SkNMF(k, solver="cd", init="nndsvda", tol=1e-4, max_iter=1000).fit(X)
        sk_time = time.perf_counter() - t0
    target = sk.reconstruction_err_ ** 2 * (1 + 1e-3)
    reached: dict[str, float] = {}
    t0 = time.perf_counter()

    def stop_at_target(info: Any) -> None:
        if "t" not in reached and info.loss <= target:
            reached["t"] = time.perf_counter() - t0
            reached["iter"] = info.iteration

    res = dnmf.factorize(X, k, solver="hals", init="nndsvda", tol=1e-4, max_iter=1000,
                         random_state=0, callback=stop_at_target)
    total = time.perf_counter() - t0
    return {
        "shape": [rows, cols], "k": k,
        "sklearn_s": sk_time, "sklearn_iter": sk.n_iter_,
        "sklearn_rel_err": float(sk.reconstruction_err_ / np.linalg.norm(X)),
        "dnmf_s_to_sklearn_loss": reached.get("t"), "dnmf_iter_to_sklearn_loss": reached.get("iter"),
        "dnmf_s": total, "dnmf_iter": res.n_iter, "dnmf_rel_err": res.relative_error,
    }


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']}, "
                     f"{b['num_threads']} threads)" for b in m["blas"])
    lines = [
        f"### Profile `{report['profile']}` — {report['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; BLAS {blas}; "
        f"Python {m['python']}, numpy {m['numpy']}, dask {m['dask']}, zarr {m['zarr']}, "
        f"scikit-learn {m['scikit-learn']}, dnmf {m['dnmf']}.",
        "",
        f"Out of core: X = {report['x']['shape'][0]:,} x {report['x']['shape'][1]} float32, "
        f"{report['x']['gb']:.2f} GB raw Zarr, {report['x']['chunks']} chunks; k = {report['k']}; "
        f"LocalCluster {report['cluster']}; X streamed from the store every iteration "
        "(persist_x=False).",
        "",
        "| what | seconds | ratio to one read of X |",
        "|---|---:|---:|",
        f"| one read of X (sum of all chunks; median of {len(report['reads_s'])}, before and "
        f"after) | {report['read_s']:.2f} | 1.00 |",
    ]
    for row in report["dnmf"]:
        lines.append(f"| dnmf {row['solver']}, one iteration | {row['s_per_iter']:.2f} | "
                     f"{row['s_per_iter'] / report['read_s']:.2f} |")
    lines += ["", "In memory, against scikit-learn (`cd`, nndsvda, tol 1e-4); dnmf hals with its "
              "default scheduler (in-process threads for small X), time to reach scikit-learn's "
              "final loss (+0.1%):", "",
              "| X | k | sklearn s (iters) | dnmf s to sklearn's loss (iters) | ratio |",
              "|---|---:|---:|---:|---:|"]
    for row in report["sklearn"]:
        t = row["dnmf_s_to_sklearn_loss"]
        ratio = f"{t / row['sklearn_s']:.2f}" if t else "not reached"
        t_text = f"{t:.2f} ({row['dnmf_iter_to_sklearn_loss']})" if t else "—"
        lines.append(f"| {row['shape'][0]:,} x {row['shape'][1]} | {row['k']} | "
                     f"{row['sklearn_s']:.2f} ({row['sklearn_iter']}) | {t_text} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args, profile = parse_profile(__doc__, argv, quick_help="the ~2 minute profile",
                                  solvers=True)
    cfg = PROFILES[profile]
    from distributed import Client, LocalCluster

    path = planted_zarr(cfg["rows"], cfg["cols"], cfg["k"])
    report = new_report(profile, k=cfg["k"], x=describe_store(path))
    cores = os.cpu_count() or 1
    with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        report["cluster"] = f"{cores} workers x 1 thread"
        # the baseline is read before and after dnmf runs: its median absorbs drift in the
        # machine's speed over the run
        time_read(path, client, 1)  # warm-up: worker imports, page cache
        first_reads = [time_read(path, client, 1) for _ in range(cfg["reads"])]
        report["read_s"] = statistics.median(first_reads)
        print(f"one read of X: {report['read_s']:.2f} s", flush=True)
        report["dnmf"] = []
        for solver in args.solvers or cfg["solvers"]:
            row = time_dnmf(path, client, solver, cfg["k"], cfg["iters"])
            report["dnmf"].append(row)
            print(f"dnmf {solver}: {row['s_per_iter']:.2f} s/iteration", flush=True)
        if cfg.get("persisted"):
            row = time_dnmf(path, client, "hals", cfg["k"], cfg["iters"], persist_x=True)
            report["dnmf"].append(row)
            print(f"dnmf {row['solver']}: {row['s_per_iter']:.2f} s/iteration", flush=True)
        last_reads = [time_read(path, client, 1) for _ in range(cfg["reads"])]
        report["reads_s"] = first_reads + last_reads
        report["read_s"] = statistics.median(first_reads + last_reads)
        print(f"one read of X, median of {len(report['reads_s'])} before and after: "
              f"{report['read_s']:.2f} s", flush=True)
    report["sklearn"] = []
    for rows, cols, k in cfg["sk"]:
        row = sklearn_vs_dnmf(rows, cols, k)
        report["sklearn"].append(row)
        print(f"sklearn {rows}x{cols} k={k}: {row['sklearn_s']:.2f} s; dnmf to that loss "
              f"{row['dnmf_s_to_sklearn_loss']}", flush=True)
    save_report(profile, report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
