"""Hyperspectral unmixing benchmarks: accuracy on a 200 x 200 scene, and a cube larger than the
workers' memory.

``python -m benchmarks.unmix [--quick]``:

(a) accuracy: a 200 x 200 scene of 6 measured earthlib spectra at 30 dB (``make_scene``),
    unmixed by dnmf's default (SPA init, sum-to-one) and by plain NMF (nndsvda init, no
    sum-to-one) for contrast; mean spectral angle (degrees, Hungarian-matched) and abundance
    RMSE against the truth, and the wall time;
(b) larger than memory: a scene cube streamed to a raw Zarr store several times the workers'
    memory limit (2 workers), unmixed to completion (``output`` written chunk by chunk); the
    workers' peak resident memory (``VmHWM``, reset before the run) against the limit, and the
    seconds per iteration against one read of the cube through the same cluster.

Results go to ``benchmarks/results/unmix-<profile>.json`` and ``.md``.
"""

from __future__ import annotations

import shutil
import statistics
import time
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
)

#: Endmembers of the larger-than-memory scene (``make_scene``'s 6 spectra).
K = 6

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"big": (1200, 1200), "tile": (200, 200), "limit": "400MB", "iters": 5},
    "full": {"big": (2400, 2400), "tile": (200, 200), "limit": "1GB", "iters": 10},
}


def accuracy() -> list[dict[str, Any]]:
    import xarray as xr

    from dnmf.datasets import make_scene
    from dnmf.hyperspectral.metrics import score
    from dnmf.hyperspectral.unmix import unmix

    scene = make_scene(200, 200, n_endmembers=6, snr_db=30.0, seed=0, chunks=(100, 100))
    cube = scene["reflectance"].compute()
    truth = xr.Dataset({"endmembers_true": scene["endmembers_true"],
                        "abundances_true": scene["abundances_true"].compute()})
    rows = []
    for name, kwargs in (("dnmf unmix (SPA, sum-to-one)", {}),
                         ("plain NMF (nndsvda, no sum-to-one)",
                          {"init": "nndsvda", "sum_to_one": False})):
        t0 = time.perf_counter()
        result = unmix(cube, 6, scheduler="threads", max_iter=500, tol=1e-6, **kwargs)
        seconds = time.perf_counter() - t0
        s = score(result, truth)
        rows.append({"method": name, "mean_sad_deg": s["mean_sad_deg"],
                     "abundance_rmse": s["abundance_rmse"], "n_iter": result.attrs["n_iter"],
                     "seconds": seconds})
        print(f"{name}: SAD {s['mean_sad_deg']:.2f} deg, RMSE {s['abundance_rmse']:.4f}, "
              f"{result.attrs['n_iter']} iterations, {seconds:.1f} s", flush=True)
    return rows


def _scene_store(rows: int, cols: int, tile: tuple[int, int]) -> Path:
    from dnmf.datasets import make_scene

    path = DATA / f"scene-{rows}x{cols}.zarr"
    if not (path / "zarr.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        scene = make_scene(rows, cols, n_endmembers=6, snr_db=30.0, seed=0, chunks=tile)
        encoding = {name: {"compressors": None} for name in scene.data_vars}
        t0 = time.perf_counter()
        scene.to_zarr(path, mode="w", encoding=encoding)
        print(f"wrote {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def _time_read(cube: Any, client: Any) -> float:
    """Seconds of one read of the cube through ``client``, each tile summed on its worker."""
    t0 = time.perf_counter()
    client.compute(cube.data.map_blocks(lambda b: np.array([[[np.nansum(b)]]]),
                                        chunks=(1, 1, 1)).sum(), sync=True)
    return time.perf_counter() - t0


def _reads(path: Path, client: Any) -> tuple[float, float]:
    """Median seconds of one read of the cube by dnmf's reader (what ``dnmf unmix`` reads:
    ``open_cube``, raw chunk files) and by xarray + zarr-python, after a warming read."""
    import xarray as xr

    from dnmf.hyperspectral.cube import open_cube

    raw = open_cube(str(path), var="reflectance")
    zarr_python = xr.open_zarr(path)["reflectance"]
    _time_read(raw, client)
    return (statistics.median(_time_read(raw, client) for _ in range(2)),
            statistics.median(_time_read(zarr_python, client) for _ in range(2)))


def larger_than_memory(cfg: dict[str, Any]) -> dict[str, Any]:
    import xarray as xr
    from distributed import Client, LocalCluster

    from benchmarks.floors import compute_floor
    from dnmf.hyperspectral.unmix import unmix

    rows, cols = cfg["big"]
    path = _scene_store(rows, cols, cfg["tile"])
    cube = xr.open_zarr(path)["reflectance"]
    out = DATA / "unmix-big-result.zarr"
    seconds: list[float] = []
    prepared: dict[str, Any] = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      memory_limit=cfg["limit"], dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        raw_read, zarr_read = _reads(path, client)
        client.run(reset_peak_rss)
        print(f"reads: raw {raw_read:.2f} s, zarr-python {zarr_read:.2f} s", flush=True)
        t0 = time.perf_counter()
        result = unmix(str(path), K, var="reflectance", client=client, output=out,
                       overwrite=True, max_iter=cfg["iters"], tol=0,
                       callback=lambda info: seconds.append(info.seconds),
                       on_prepared=lambda pm, k, estimate: prepared.update(X=pm.X))
        wall = time.perf_counter() - t0
        peaks = client.run(peak_rss)
        limit = next(iter(cluster.workers.values())).memory_manager.memory_limit
        # the fit's panel kernel (FCLS W update, products) alone on tiles' pixel rows in memory
        floor = compute_floor(prepared["X"], client, k=K, solver="hals", sum_to_one=True)
    s_per_iter = statistics.median(seconds[1:])
    res = {"shape": [rows, cols, int(cube.shape[2])], "gb": cube.nbytes / 1e9, "workers": 2,
           "memory_limit": limit, "peak_rss": sorted(peaks.values()), "read_s": raw_read,
           "read_zarr_python_s": zarr_read, "compute_floor_s": floor["s"],
           "floor_s_per_panel": floor["s_per_panel"], "n_panels": floor["n_panels"],
           "s_per_iter": s_per_iter, "n_iter": int(result.attrs["n_iter"]), "wall_s": wall}
    print(f"larger than memory: cube {res['gb']:.1f} GB, limit {limit / 1e9:.2f} GB per worker, "
          f"peak RSS {max(peaks.values()) / 1e9:.2f} GB, {s_per_iter:.2f} s/iteration (raw read "
          f"{raw_read:.2f} s, zarr-python read {zarr_read:.2f} s, compute floor "
          f"{floor['s']:.2f} s), {wall:.0f} s end to end", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return res


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"### Hyperspectral unmixing, profile `{report['profile']}` — {report['date']}", "",
             machine_brief(m, "dask"),
             "", "200 x 200 scene, 6 earthlib spectra, 30 dB, in-process threads:", "",
             "| method | mean SAD (deg) | abundance RMSE | iterations | seconds |",
             "|---|---:|---:|---:|---:|"]
    for r in report["accuracy"]:
        lines.append(f"| {r['method']} | {r['mean_sad_deg']:.2f} | {r['abundance_rmse']:.4f} | "
                     f"{r['n_iter']} | {r['seconds']:.1f} |")
    b = report["larger_than_memory"]
    lines += ["", f"Larger than memory: cube {b['shape'][0]:,} x {b['shape'][1]:,} x "
              f"{b['shape'][2]} float32 = {b['gb']:.1f} GB (raw Zarr), 2 workers limited to "
              f"{b['memory_limit'] / 1e9:.2f} GB each: peak worker RSS "
              f"{max(b['peak_rss']) / 1e9:.2f} GB; {b['n_iter']} iterations and the maps "
              f"written in {b['wall_s']:.0f} s.", "",
              "| s / iteration | raw read s (×) | compute floor s (× raw read) | "
              "× max(raw, floor) | read (a) s (×) |", "|---:|---:|---:|---:|---:|"]
    if "compute_floor_s" in b:
        s, raw, floor, zp = (b["s_per_iter"], b["read_s"], b["compute_floor_s"],
                             b["read_zarr_python_s"])
        lines.append(f"| {s:.2f} | {raw:.2f} ({s / raw:.2f}) | {floor:.2f} ({floor / raw:.2f}) | "
                     f"{s / max(raw, floor):.2f} | {zp:.2f} ({s / zp:.2f}) |")
        lines += ["", "Raw read: the cube read by dnmf's reader (`open_cube`: raw chunk files) "
                  "on the same workers; read (a): xarray + zarr-python. Compute floor: the "
                  f"fit's panel kernel (FCLS W update and products, k = {K}) alone on tiles' "
                  "pixel rows already in memory, from a W settled by "
                  "`benchmarks.floors.SETTLE_STEPS` steps (H fixed: a lower bound of the "
                  "pivoting a fit needs), times the tiles per worker."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    _, profile = parse_profile(__doc__, argv)
    report = new_report(profile)
    report["accuracy"] = accuracy()
    report["larger_than_memory"] = larger_than_memory(PROFILES[profile])
    save_report(f"unmix-{profile}", report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
