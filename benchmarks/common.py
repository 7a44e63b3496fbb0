"""What the benchmark sections share: paths, the machine's description, the command line,
reports, the planted Zarr store, reads of X, and the process's memory from ``/proc``.

Every section (:mod:`benchmarks.run`, :mod:`benchmarks.inmemory`, :mod:`benchmarks.sparse`,
...) imports from here and this module imports no section, so the imports go one way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np

from dnmf.cluster import MALLOC_TRIM_KEY

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"
MIB = 2**20


def machine() -> dict[str, Any]:
    """CPU, cores, memory, BLAS and its threads, library versions, load average."""
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
        # other users of a shared machine show here: compare it with the cores
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(m: dict[str, Any]) -> str:
    """The machine's description as one Markdown line."""
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']}, "
                     f"{b['num_threads']} threads)" for b in m["blas"])
    load = m.get("load_average")
    load_text = f"; load average at start {load[0]:.1f}" if load else ""
    return (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; BLAS {blas}; "
            f"Python {m['python']}, numpy {m['numpy']}, dask {m['dask']}, zarr {m['zarr']}, "
            f"scikit-learn {m['scikit-learn']}, dnmf {m['dnmf']}{load_text}.")


def machine_brief(m: dict[str, Any], *libraries: str) -> str:
    """The machine's CPU, cores and memory and the versions of ``libraries`` (keys of
    :func:`machine`), as one line: the short form of :func:`machine_line`."""
    versions = ", ".join(f"{'Python' if lib == 'python' else lib} {m[lib]}" for lib in libraries)
    return f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {versions}."


def parse_profile(doc: str, argv: list[str] | None, *, quick_help: str | None = None,
                  solvers: bool = False,
                  parts: tuple[str, ...] = ()) -> tuple[argparse.Namespace, str]:
    """The command line every benchmark shares: ``--quick`` (and ``--solvers``, ``--parts``
    where the benchmark has several); the profile."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    if solvers:
        parser.add_argument("--solvers", nargs="*", default=None)
    if parts:
        parser.add_argument("--parts", nargs="*", choices=parts, default=list(parts))
    args = parser.parse_args(argv)
    return args, "quick" if args.quick else "full"


def new_report(profile: str, **fields: Any) -> dict[str, Any]:
    """A report's header: profile, date and the machine's description, then ``fields``.

    Every benchmark starts with it, so from here its LocalClusters start their workers as
    dnmf's own LocalCluster starts workers of 1 GB or more: with glibc's malloc thresholds,
    not distributed's MALLOC_TRIM_THRESHOLD_=65536 (``dnmf.cluster.worker_malloc_environment``;
    ``benchmarks/malloc.py`` measures both). Not at import: the tests import this module.
    """
    dask.config.set({MALLOC_TRIM_KEY: None})
    return {"profile": profile, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
            **fields}


def save_report(name: str, report: dict[str, Any], text: str) -> None:
    """``results/<name>.json`` and ``.md``, and the table on stdout."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2))
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


def describe_store(path: Path) -> dict[str, Any]:
    """Shape, size and chunks of a Zarr array, for a report."""
    import zarr

    z = zarr.open_array(str(path))
    return {"shape": list(z.shape), "gb": z.nbytes / 1e9,
            "chunks": f"{z.chunks[0]:,} x {z.chunks[1]}"}


def planted_zarr(rows: int, cols: int, k: int, *, seed: int = 0) -> Path:
    """A raw (uncompressed) float32 Zarr of planted rank-k data with 64 MiB row chunks."""
    import zarr

    path = DATA / f"planted-{rows}x{cols}-k{k}-raw.zarr"
    if (path / "zarr.json").exists() and zarr.open_array(str(path)).attrs.get("complete"):
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    chunk_rows = max(1, (64 * MIB) // (cols * 4))
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


READERS = {"zarr": "dask + zarr-python: da.from_zarr(path).sum(dtype='float64')",
           "dnmf": "dnmf's reader: open_matrix(path).array.sum(dtype='float64')"}


def read_once(path: Path, client: Any, reader: str) -> float:
    """Seconds of one streaming read of X through ``client``: every chunk read and summed.

    ``reader`` is ``"zarr"`` (plain ``dask.array.from_zarr``, the stored chunks) or ``"dnmf"``
    (``dnmf.io.open_matrix(path).array``, the reader dnmf's fits use).
    """
    import dask.array as da

    from dnmf.io import open_matrix

    if reader == "zarr":
        X = da.from_zarr(str(path))
    else:
        X = open_matrix(str(path)).array
    t0 = time.perf_counter()
    client.compute(X.sum(dtype="float64"), sync=True)
    return time.perf_counter() - t0


def time_read(path: Path, client: Any, repeats: int) -> float:
    """Median seconds of one streaming read of X with dnmf's reader through ``client``."""
    return statistics.median(read_once(path, client, "dnmf") for _ in range(repeats))


def time_read_blocks(path: Path | str, client: Any) -> float:
    """Seconds of one streaming read of X with dnmf's reader through ``client``, each block
    summed on its worker (dense or sparse blocks alike)."""
    from dnmf.io import open_matrix

    X = open_matrix(str(path)).array
    t0 = time.perf_counter()
    client.compute(X.map_blocks(lambda b: np.array([[b.sum()]]), chunks=(1, 1)).sum(),
                   sync=True)
    return time.perf_counter() - t0


def yes_no(met: bool | None) -> str:
    """A report's "met?" cell: yes, no, or a dash where there is no target."""
    return "—" if met is None else ("yes" if met else "no")


# --- this process's memory, from /proc/self (Linux) -----------------------------------------


def status_bytes(field: str) -> int | None:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...; KiB there) in
    bytes; None where the field is not there."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def status_mb(field: str) -> float:
    """:func:`status_bytes` in MB (10**6 bytes); NaN where the field is not there."""
    value = status_bytes(field)
    return float("nan") if value is None else value / 1e6


def peak_rss() -> int:
    """Peak resident memory of this process (``VmHWM``) in bytes, 0 where unknown; run it on
    the workers with ``client.run(peak_rss)``."""
    return status_bytes("VmHWM") or 0


def reset_peak_rss() -> None:
    """Reset this process's ``VmHWM`` to its current resident memory (``client.run`` it on the
    workers before what is measured)."""
    with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets VmHWM to the current RSS
        f.write("5")
