"""Peak memory of ``dnmf.report.unmixing_report`` on a large unmixing result store.

``python -m benchmarks.report_memory [--gb 1.0] [--keep DIR [--reuse]]``: writes an unmixing result in
``dnmf unmix``'s layout (k abundance maps + the residual map, float32, Zarr, 1000 x 1000 tiles)
of about ``--gb`` gigabytes, chunk by chunk, then builds the HTML report from the lazily opened
store in a fresh process and prints that process's peak resident memory (``VmHWM``) against
its resident memory after the imports and the size of one full-resolution map.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

K = 6
TILE = 1000

_MEASURE = """
import json, sys, time
import dask, xarray as xr
from dnmf.report import unmixing_report
import matplotlib.figure, matplotlib.backends.backend_agg  # imports counted in the baseline

def status(field):  # kiB; VmHWM is this process's own peak (ru_maxrss inherits the parent's)
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(field)))

before = status("VmRSS:")
t = time.perf_counter()
with dask.config.set(scheduler="threads", num_workers=2):
    text = unmixing_report(xr.open_zarr(sys.argv[1], consolidated=False))
seconds = time.perf_counter() - t
open(sys.argv[2], "w").write(text)
print(json.dumps({"rss_before_kib": before, "peak_kib": status("VmHWM:"), "seconds": seconds,
                  "html_bytes": len(text.encode())}))
"""


def _tile(block: np.ndarray, block_info=None) -> np.ndarray:
    """Smooth sum-to-one abundances of one tile, from its position (no RNG state shared)."""
    (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    logits = np.stack([np.sin(yy / (300 + 70 * j)) + np.cos(xx / (250 + 50 * j))
                       for j in range(block.shape[0])])
    maps = np.exp(2 * logits)
    return (maps / maps.sum(axis=0)).astype(np.float32)


def write_store(path: Path, gb: float) -> tuple[int, int]:
    side = int(math.sqrt(gb * 1e9 / ((K + 1) * 4)))
    side = max(TILE, math.ceil(side / TILE) * TILE)  # at least the size asked for
    abundances = da.map_blocks(_tile, da.empty((K, side, side), chunks=(K, TILE, TILE),
                                               dtype=np.float32), dtype=np.float32)
    residual = (abundances[0] * 0.01 + 0.005).astype(np.float32)
    bands = 200
    wavelength = np.linspace(400.0, 2500.0, bands)
    spectra = np.stack([0.1 + 0.3 * np.sin(wavelength / (200 + 40 * j)) ** 2 for j in range(K)])
    ds = xr.Dataset(
        {"endmembers": (("endmember", "band"), spectra.astype(np.float32)),
         "abundances": (("endmember", "y", "x"), abundances),
         "residual_rmse": (("y", "x"), residual)},
        coords={"wavelength": ("band", wavelength, {"units": "nm"}),
                "y": ("y", 5_000_000.0 - 10.0 * np.arange(side), {"units": "m"}),
                "x": ("x", 400_000.0 + 10.0 * np.arange(side), {"units": "m"}),
                "endmember": np.arange(K)},
        attrs={"kind": "unmixing", "n_endmembers": K, "relative_error": 0.01, "n_iter": 50,
               "converged": True, "loss_history": list(np.geomspace(100, 1, 50)),
               "input": {"source": "synthetic", "shape": [side, side, bands]}},
    )
    with dask.config.set(scheduler="threads", num_workers=2):
        ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
    return side, side


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="size of the maps (GB)")
    parser.add_argument("--keep", type=Path, default=None, help="write the store/report here")
    parser.add_argument("--reuse", action="store_true",
                        help="measure the store already in --keep (written by an earlier run)")
    args = parser.parse_args(argv)
    where = Path(args.keep or tempfile.mkdtemp(prefix="dnmf-report-memory-"))
    where.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        if args.reuse and args.keep is not None:
            ny, nx = xr.open_zarr(where / "result.zarr", consolidated=False).residual_rmse.shape
        else:
            ny, nx = write_store(where / "result.zarr", args.gb)
        written_s = time.perf_counter() - t
        nbytes = (K + 1) * ny * nx * 4
        proc = subprocess.run([sys.executable, "-c", _MEASURE, str(where / "result.zarr"),
                               str(where / "report.html")], capture_output=True, text=True,
                              check=True)
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if args.keep is None:
            shutil.rmtree(where, ignore_errors=True)
    result = {
        "maps": f"{K} abundance maps + residual, {ny} x {nx} float32, tiles {TILE}",
        "store_gb": nbytes / 1e9, "one_map_mb": ny * nx * 4 / 1e6,
        "rss_before_mb": measured["rss_before_kib"] / 1024, "peak_mb": measured["peak_kib"] / 1024,
        "report_s": measured["seconds"], "html_kb": measured["html_bytes"] / 1e3,
        "write_s": written_s,
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
