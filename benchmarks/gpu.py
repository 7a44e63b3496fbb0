"""GPU against CPU: seconds per iteration of hals and mu with ``device="gpu"`` and the CPU path.

``python -m benchmarks.gpu [--quick]`` (needs CuPy and a CUDA device: ``pip install
'.[gpu]'``) makes a dense float32 X in memory — planted rank 20 plus |noise|, 2,000,000 x 500
(4 GB; ``--quick``: 250,000 x 500, 0.5 GB) — and, on the same machine, in-process threads for
both, random init, ``tol=0``:

(a) the CPU path: numpy blocks, dask's threads over the cores;
(b) the GPU path: ``device="gpu"`` — X copied to the device once (it fits: ``persist_x``),
    W on the device, the k x n and k x k partial sums back to the host each iteration;

for hals and mu at k = 20 and k = 100. Per fit: seconds per iteration (median over the
iterations after the first), CPU / GPU (the speed-up), and the final relative errors of both
(they should agree within 0.5%). Results go to ``benchmarks/results/gpu-<profile>.json`` and
``.md`` with the machine's description and the GPU's.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from benchmarks.common import machine_line, new_report, parse_profile, save_report

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"rows": 250_000, "cols": 500, "planted_k": 20, "ks": [20, 100], "iters": 4},
    "full": {"rows": 2_000_000, "cols": 500, "planted_k": 20, "ks": [20, 100], "iters": 5},
}
SOLVERS = ("hals", "mu")
#: The issue's bar for the two paths' final relative errors (relative to the CPU's).
AGREEMENT = 0.005


def planted_matrix(rows: int, cols: int, k: int, *, seed: int = 0,
                   block_rows: int = 100_000) -> np.ndarray:
    """Dense float32 ``W H + 0.05 |N(0, 1)|`` with gamma(1) factors, made block by block (the
    same values for any ``block_rows``: each block has its own seed)."""
    rng = np.random.default_rng(seed)
    H = rng.gamma(1.0, 1.0, size=(k, cols)).astype(np.float32)
    X = np.empty((rows, cols), dtype=np.float32)
    for b, start in enumerate(range(0, rows, block_rows)):
        stop = min(rows, start + block_rows)
        block_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(b,)))
        W = block_rng.gamma(1.0, 1.0, size=(stop - start, k)).astype(np.float32)
        np.matmul(W, H, out=X[start:stop])
        X[start:stop] += 0.05 * np.abs(block_rng.standard_normal((stop - start, cols),
                                                                 dtype=np.float32))
    return X


def time_fit(X: np.ndarray, solver: str, k: int, iters: int, device: str) -> dict[str, Any]:
    """One fit on in-process threads; its seconds per iteration and final relative error."""
    import dnmf

    t0 = time.perf_counter()
    result = dnmf.factorize(X, k, solver=solver, init="random", random_state=0,
                            max_iter=iters, tol=0.0, scheduler="threads", device=device)
    wall = time.perf_counter() - t0
    per_iter = result.seconds_per_iteration[1:] or result.seconds_per_iteration
    return {"solver": solver, "k": k, "device": device,
            "s_per_iter": statistics.median(per_iter),
            "seconds_per_iteration": result.seconds_per_iteration, "wall_s": wall,
            "relative_error": result.relative_error, "n_panels": result.plan.n_panels,
            "notes": result.notes}


def compare(cpu: dict[str, Any], gpu: dict[str, Any]) -> dict[str, Any]:
    """One table row: both paths' seconds per iteration, CPU / GPU, and whether the final
    relative errors agree within :data:`AGREEMENT`."""
    gap = abs(gpu["relative_error"] - cpu["relative_error"]) / cpu["relative_error"]
    return {"solver": cpu["solver"], "k": cpu["k"], "cpu_s_per_iter": cpu["s_per_iter"],
            "gpu_s_per_iter": gpu["s_per_iter"],
            "speedup": cpu["s_per_iter"] / gpu["s_per_iter"],
            "cpu_relative_error": cpu["relative_error"],
            "gpu_relative_error": gpu["relative_error"], "relative_error_gap": gap,
            "agree": bool(gap <= AGREEMENT)}


def render(report: dict[str, Any]) -> str:
    """The Markdown report: the machine, the GPU, X, and one row per (solver, k)."""
    x = report["x"]
    lines = [
        f"# GPU against CPU ({report['profile']} profile, {report['date']})",
        "",
        machine_line(report["machine"]),
        f"GPU: {report['gpu']}; CuPy {report['cupy']}, CUDA runtime {report['cuda_runtime']}.",
        "",
        f"X: {x['rows']:,} x {x['cols']} float32 in memory ({x['gb']:.2f} GB), planted rank "
        f"{x['planted_k']} + |noise|; in-process threads for both paths, random init, tol = 0, "
        f"{report['iters']} iterations; seconds per iteration = median after the first.",
        "",
        "| solver | k | CPU s/iter | GPU s/iter | CPU / GPU | rel. error CPU | rel. error GPU "
        "| gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        flag = "" if r["agree"] else f" (over {AGREEMENT:.1%})"
        lines.append(
            f"| {r['solver']} | {r['k']} | {r['cpu_s_per_iter']:.3f} | {r['gpu_s_per_iter']:.3f} "
            f"| {r['speedup']:.1f}x | {r['cpu_relative_error']:.5f} | "
            f"{r['gpu_relative_error']:.5f} | {r['relative_error_gap']:.2e}{flag} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args, profile = parse_profile(__doc__, argv,
                                  quick_help="a 0.5 GB X instead of 4 GB (about a minute)")
    del args
    cfg = PROFILES[profile]
    from dnmf.device import import_cupy, require_gpu

    cupy = import_cupy()
    gpu = require_gpu()  # one clear line when there is no device
    X = planted_matrix(cfg["rows"], cfg["cols"], cfg["planted_k"])
    report = new_report(
        profile, gpu=gpu, cupy=cupy.__version__,
        cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(), iters=cfg["iters"],
        x={"rows": cfg["rows"], "cols": cfg["cols"], "planted_k": cfg["planted_k"],
           "gb": X.nbytes / 1e9})
    report["fits"], report["rows"] = [], []
    for k in cfg["ks"]:
        for solver in SOLVERS:
            pair = {}
            for device in ("gpu", "cpu"):
                pair[device] = time_fit(X, solver, k, cfg["iters"], device)
                report["fits"].append(pair[device])
                print(f"{solver} k={k} {device}: {pair[device]['s_per_iter']:.3f} s/iteration",
                      flush=True)
            report["rows"].append(compare(pair["cpu"], pair["gpu"]))
    save_report(f"gpu-{profile}", report, render(report))
    return 0 if all(r["agree"] for r in report["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
