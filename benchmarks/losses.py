"""Benchmarks of the loss variants and of sparse X, measured against baselines in the same run.

``python -m benchmarks.losses [--quick]``:

(a) out of core, one LocalCluster (one 1-thread worker process per core): one streaming read of
    a Poisson count matrix X from raw Zarr, then dnmf seconds/iteration for each loss (and
    masked NMF, with NaN marking 10% of the entries), as ratios to the read;
(b) in memory, against scikit-learn's ``NMF(solver="mu", beta_loss=...)`` on the same matrix and
    the same start: seconds per iteration and the final loss of both (dnmf with its default
    in-process scheduler);
(c) sparse X: a CSR matrix in Zarr (200,000 x 50,000 at density 1e-3 in the full profile),
    factorized on a LocalCluster with a memory limit; the workers' peak resident memory
    (``VmHWM``, reset before the fit) against the dense size, seconds/iteration against one
    read of the CSR store, and scikit-learn on the same matrix in memory.

Results go to ``benchmarks/results/losses-<profile>.json`` and ``.md``.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DATA,
    machine_brief,
    new_report,
    parse_profile,
    peak_rss,
    reset_peak_rss,
    save_report,
    time_read_blocks,
    yes_no,
)
from benchmarks.floors import compute_floor

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"rows": 100_000, "cols": 500, "k": 10, "iters": 4, "sk": (5_000, 500, 10, 30),
              "sparse": (20_000, 50_000, 1e-3, 10, 4), "memory_limit": "1GB"},
    "full": {"rows": 500_000, "cols": 500, "k": 20, "iters": 5, "sk": (20_000, 500, 20, 30),
             "sparse": (200_000, 50_000, 1e-3, 10, 5), "memory_limit": "2GB"},
}
#: The performance issue's targets: seconds per iteration over the raw read (dnmf's reader) of
#: the same X, in the same run.
RAW_READ_TARGETS = {("kullback-leibler", "error"): 2.5, ("frobenius", "mask"): 2.5}
LOSSES = [("frobenius", "hals", "error"), ("frobenius", "mu", "error"),
          ("kullback-leibler", "mu", "error"), ("itakura-saito", "mu", "error"),
          (0.5, "mu", "error"), ("frobenius", "mu", "mask"), ("kullback-leibler", "mu", "mask")]


PARTS = ("in-memory", "sparse")  # the out-of-core part always runs


def counts_zarr(rows: int, cols: int, k: int, *, seed: int = 0) -> tuple[Path, Path]:
    """Raw float32 Zarr stores of Poisson counts of a planted rank-k intensity (+0.5, so that
    Itakura-Saito applies), 64 MiB row chunks; and a copy with 10% of the entries NaN."""
    import zarr

    paths = (DATA / f"counts-{rows}x{cols}-k{k}.zarr", DATA / f"counts-{rows}x{cols}-k{k}-nan.zarr")
    if all((p / "zarr.json").exists() and zarr.open_array(str(p)).attrs.get("complete")
           for p in paths):
        return paths
    DATA.mkdir(parents=True, exist_ok=True)
    chunk_rows = max(1, (64 * 2**20) // (cols * 4))
    arrays = [zarr.create_array(str(p), shape=(rows, cols), chunks=(chunk_rows, cols),
                                dtype="float32", compressors=None, overwrite=True) for p in paths]
    rng = np.random.default_rng(seed)
    H = rng.gamma(0.5, 1.0, size=(k, cols))
    for start in range(0, rows, chunk_rows):
        stop = min(rows, start + chunk_rows)
        W = rng.gamma(1.0, 1.0, size=(stop - start, k))
        block = (rng.poisson(2.0 * W @ H / k) + 0.5).astype(np.float32)
        arrays[0][start:stop] = block
        block[rng.random(block.shape) < 0.1] = np.nan
        arrays[1][start:stop] = block
    for a in arrays:
        a.attrs["complete"] = True
    return paths


def out_of_core(cfg: dict[str, Any]) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    import dnmf
    from dnmf.divergence import beta_value

    path, nan_path = counts_zarr(cfg["rows"], cfg["cols"], cfg["k"])
    cores = os.cpu_count() or 1
    rows = []
    with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        time_read_blocks(path, client)  # warm-up
        reads = [time_read_blocks(path, client) for _ in range(2)]
        for loss, solver, missing in LOSSES:
            src = nan_path if missing == "mask" else path
            floor = compute_floor(src, client, k=cfg["k"], solver=solver,
                                  beta=beta_value(loss), masked=missing == "mask")
            res = dnmf.factorize(str(src), cfg["k"], beta_loss=loss, solver=solver,
                                 missing=missing, init="random", random_state=0,
                                 max_iter=cfg["iters"], tol=0, client=client, persist_x=False)
            per_iter = statistics.median(res.seconds_per_iteration[1:])
            rows.append({"loss": str(loss), "solver": solver, "missing": missing,
                         "s_per_iter": per_iter, "n_panels": res.plan.n_panels,
                         "compute_floor_s": floor["s"],
                         "target": RAW_READ_TARGETS.get((str(loss), missing))})
            print(f"{loss} {solver} {missing}: {per_iter:.2f} s/iteration", flush=True)
        reads += [time_read_blocks(path, client) for _ in range(2)]
    import zarr

    z = zarr.open_array(str(path))
    return {"shape": list(z.shape), "gb": z.nbytes / 1e9, "k": cfg["k"],
            "cluster": f"{cores} workers x 1 thread", "reads_s": reads,
            "read_s": statistics.median(reads), "rows": rows}


def against_sklearn(rows: int, cols: int, k: int, iters: int) -> list[dict[str, Any]]:
    """Same matrix, same start, same number of MU iterations: seconds/iteration and loss."""
    from sklearn.decomposition import NMF as SkNMF

    import dnmf

    rng = np.random.default_rng(1)
    H = rng.gamma(0.5, 1.0, size=(k, cols))
    X = (rng.poisson(2.0 * rng.gamma(1.0, 1.0, (rows, k)) @ H / k) + 0.5).astype(np.float32)
    W0 = rng.random((rows, k)).astype(np.float32) + 0.1
    H0 = rng.random((k, cols)).astype(np.float32) + 0.1
    out = []
    for loss in ("frobenius", "kullback-leibler", "itakura-saito", 0.5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            sk = SkNMF(k, solver="mu", beta_loss=loss, init="custom", max_iter=iters,
                       tol=0).fit(X, W=W0.copy(), H=H0.copy())
            sk_s = (time.perf_counter() - t0) / iters
        t0 = time.perf_counter()
        res = dnmf.factorize(X, k, solver="mu", beta_loss=loss, init="custom", W_init=W0,
                             H_init=H0, max_iter=iters, tol=0)
        ours_s = (time.perf_counter() - t0) / iters
        out.append({"loss": str(loss), "shape": [rows, cols], "k": k, "iters": iters,
                    "sklearn_s_per_iter": sk_s, "dnmf_s_per_iter": ours_s,
                    "sklearn_err": float(sk.reconstruction_err_),
                    "dnmf_err": res.reconstruction_err})
        print(f"in memory {loss}: sklearn {sk_s * 1e3:.1f} ms/it, dnmf {ours_s * 1e3:.1f} ms/it",
              flush=True)
    return out


def sparse_csr(rows: int, cols: int, density: float, *, seed: int = 0) -> tuple[Path, Any]:
    import scipy.sparse as sp

    from dnmf.io.sparse import save_csr

    path = DATA / f"csr-{rows}x{cols}-{density:g}.zarr"
    rng = np.random.default_rng(seed)
    nnz = int(rows * cols * density)  # scipy.sparse.random draws from all positions: slow
    X = sp.csr_matrix(((rng.poisson(2.0, nnz) + 1).astype(np.float32),
                       (rng.integers(0, rows, nnz), rng.integers(0, cols, nnz))),
                      shape=(rows, cols))
    if not (path / "zarr.json").exists():
        DATA.mkdir(parents=True, exist_ok=True)
        save_csr(path, X, overwrite=True)
    return path, X


def sparse(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    from distributed import Client, LocalCluster
    from sklearn.decomposition import NMF as SkNMF

    import dnmf

    rows, cols, density, k, iters = cfg["sparse"]
    path, X = sparse_csr(rows, cols, density)
    cores = os.cpu_count() or 1
    out = []
    with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True,
                      memory_limit=cfg["memory_limit"], dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        time_read_blocks(path, client)
        read = statistics.median(time_read_blocks(path, client) for _ in range(3))
        for loss in ("frobenius", "kullback-leibler"):
            client.run(reset_peak_rss)
            res = dnmf.factorize(str(path), k, beta_loss=loss, init="random", random_state=0,
                                 max_iter=iters, tol=0, client=client, persist_x=False)
            peaks = client.run(peak_rss)
            per_iter = statistics.median(res.seconds_per_iteration[1:])
            out.append({"loss": loss, "shape": [rows, cols], "density": density, "nnz": X.nnz,
                        "k": k, "dense_gb": rows * cols * 4 / 1e9,
                        "stored_mb": (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 1e6,
                        "memory_limit": cfg["memory_limit"],
                        "peak_worker_rss_mb": max(peaks.values()) / 1e6,
                        "read_s": read, "s_per_iter": per_iter, "n_panels": res.plan.n_panels,
                        "relative_error": res.relative_error})
            print(f"sparse {loss}: {per_iter:.2f} s/iteration (read {read:.2f} s), peak worker "
                  f"RSS {max(peaks.values()) / 1e6:.0f} MB", flush=True)
    for row in out:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            SkNMF(k, solver="mu", beta_loss=row["loss"], init="random", random_state=0,
                  max_iter=iters, tol=0).fit(X)
            row["sklearn_s_per_iter"] = (time.perf_counter() - t0) / iters
    return out


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    ooc = report["out_of_core"]
    lines = [
        f"### Losses and sparse X, profile `{report['profile']}` — {report['date']}", "",
        machine_brief(m, "python", "numpy", "dask", "scikit-learn"), "",
        f"Out of core: Poisson counts {ooc['shape'][0]:,} x {ooc['shape'][1]} float32, "
        f"{ooc['gb']:.2f} GB raw Zarr; k = {ooc['k']}; LocalCluster {ooc['cluster']}; X read "
        "from the store every iteration.", "",
        "The read is dnmf's raw reader (every block summed on its worker); the compute floor "
        "is the panel kernel alone on panels in worker memory (`benchmarks/floors.py`).", "",
        "| loss | solver | missing | s / iteration | × raw read | compute floor s | "
        "× max(read, floor) | target (× read) | met? |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
        f"| (one read of X, median of {len(ooc['reads_s'])}) | | | {ooc['read_s']:.2f} | 1.00 "
        "| | | | |",
    ]
    for r in ooc["rows"]:
        floor = r.get("compute_floor_s", float("nan"))
        ratio = r["s_per_iter"] / ooc["read_s"]
        target = r.get("target")
        lines.append(f"| {r['loss']} | {r['solver']} | {r['missing']} | {r['s_per_iter']:.2f} | "
                     f"{ratio:.2f} | {floor:.2f} | "
                     f"{r['s_per_iter'] / max(ooc['read_s'], floor):.2f} | "
                     f"{f'≤ {target:.1f}' if target else '—'} | "
                     f"{yes_no(ratio <= target if target else None)} |")
    lines += ["", "In memory, same matrix and start, scikit-learn `NMF(solver='mu')` vs dnmf mu "
              "(default scheduler):", "",
              "| loss | X | k | sklearn ms/it | dnmf ms/it | ratio | sklearn err | dnmf err |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["sklearn"]:
        lines.append(f"| {r['loss']} | {r['shape'][0]:,} x {r['shape'][1]} | {r['k']} | "
                     f"{r['sklearn_s_per_iter'] * 1e3:.1f} | {r['dnmf_s_per_iter'] * 1e3:.1f} | "
                     f"{r['dnmf_s_per_iter'] / r['sklearn_s_per_iter']:.2f} | "
                     f"{r['sklearn_err']:.6g} | {r['dnmf_err']:.6g} |")
    lines += ["", "Sparse X (CSR in Zarr), LocalCluster with a memory limit per worker:", "",
              "| loss | X | nnz | dense size | stored | limit | peak worker RSS | s/it | "
              "read s | sklearn s/it (in memory) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["sparse"]:
        lines.append(f"| {r['loss']} | {r['shape'][0]:,} x {r['shape'][1]:,} | {r['nnz']:,} | "
                     f"{r['dense_gb']:.1f} GB | {r['stored_mb']:.0f} MB | {r['memory_limit']} | "
                     f"{r['peak_worker_rss_mb']:.0f} MB | {r['s_per_iter']:.2f} | "
                     f"{r['read_s']:.2f} | {r['sklearn_s_per_iter']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args, profile = parse_profile(__doc__, argv, parts=PARTS)
    cfg = PROFILES[profile]
    report = new_report(profile)
    report["out_of_core"] = out_of_core(cfg)
    report["sklearn"] = against_sklearn(*cfg["sk"]) if "in-memory" in args.parts else []
    report["sparse"] = sparse(cfg) if "sparse" in args.parts else []
    save_report(f"losses-{profile}", report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
