"""dnmf benchmarks, core section: seconds/iteration against one read of X, and in memory.

Run ``python -m benchmarks.run --quick`` or ``python -m benchmarks.run`` (the full profile: a
4 GB float32 raw Zarr); ``python -m benchmarks`` runs this with the other sections. Everything
is reported as ratios against baselines measured in the same run:

(a) out of core, on one LocalCluster (one 1-thread worker process per core): one streaming read
    of X through the cluster, two ways — plain dask + zarr-python (``da.from_zarr(path)``) and
    dnmf's own reader (``dnmf.io.open_matrix(path).array``), each summed in float64 — taken
    once to warm up, then before and after the fits (median); against them, dnmf seconds per
    iteration (median over the iterations after the first, X streamed) for hals, mu (k = 10,
    20, 100) and anls (k = 20), hals with X persisted in worker memory, a zstd-compressed copy
    of the store with reads of its own, and a sweep of the row-panel size (``max_panel_bytes``
    and ``min_panel_bytes`` of :func:`dnmf.factorize`);
(b) in memory, time to reach scikit-learn's final loss against ``sklearn.decomposition.NMF``
    and ``MiniBatchNMF`` (:mod:`benchmarks.inmemory`), with time-to-accuracy curves as a PNG.

``--parts`` runs one of the two. Results go to ``benchmarks/results/<profile>.json`` and
``.md`` with the machine's description (and ``time-to-accuracy-<profile>.png``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import inmemory
from benchmarks.common import (
    HERE,
    MIB,
    READERS,
    describe_store,
    machine_line,
    new_report,
    planted_zarr,
    read_once,
    save_report,
    yes_no,
)
from benchmarks.common import machine as machine  # re-exported: tests import it from here
from benchmarks.floors import compute_floor

#: The performance issue's targets for dnmf seconds/iteration with X streamed (k = 20, default
#: row panels): at most ``floor`` times the larger of the raw read and the compute floor
#: (:mod:`benchmarks.floors`), and at most ``raw`` times the raw read (dnmf's reader), both
#: measured in the same run.
OUT_OF_CORE_TARGETS = {("hals", 20): {"floor": 1.3, "raw": 2.0},
                       ("mu", 20): {"floor": 1.3, "raw": 1.8}}

PROFILES: dict[str, dict[str, Any]] = {
    # rows x 500 float32 planted rank 20; 64 MiB row panels (33,554 rows) as stored chunks.
    # ks: hals and mu at each; anls at anls_k only (exact NNLS: slow); zstd: (solver, k) fits
    # on the compressed copy; panels_mib: hals at k = 20 with these row-panel sizes besides the
    # stored 64 MiB
    "quick": {"rows": 125_000, "cols": 500, "planted_k": 20, "ks": [10, 20], "iters": 4,
              "reads": 2, "anls_k": 20, "anls_iters": 3, "persisted": True,
              "zstd": [("hals", 20)], "panels_mib": [16]},
    "1gb": {"rows": 500_000, "cols": 500, "planted_k": 20, "ks": [20], "iters": 5,
            "reads": 2, "anls_k": None, "anls_iters": 3, "persisted": False,
            "zstd": [("hals", 20)], "lz4": [("hals", 20)], "panels_mib": []},
    "4gb": {"rows": 2_000_000, "cols": 500, "planted_k": 20, "ks": [20], "iters": 4,
            "reads": 2, "anls_k": None, "anls_iters": 3, "persisted": False,
            "zstd": [("hals", 20)], "lz4": [("hals", 20)], "panels_mib": []},
    "full": {"rows": 2_000_000, "cols": 500, "planted_k": 20, "ks": [10, 20, 100], "iters": 6,
             "reads": 3, "anls_k": 20, "anls_iters": 3, "persisted": True,
             "zstd": [("hals", 10), ("hals", 20), ("mu", 20)], "panels_mib": [16, 256]},
}
PARTS = ("out-of-core", "in-memory")


#: The compressed copies a profile can ask for: store name -> file suffix (see :func:`codec`).
CODECS = {"zstd": "zstd3", "lz4": "blosc-lz4"}


def codec(name: str) -> Any:
    """The Zarr codec of a compressed store: zstd level 3, or blosc lz4 (level 5, byte
    shuffle), numcodecs' usual fast choice."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "zstd":
        return ZstdCodec(level=3)
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=4)


def zstd_copy(raw: Path, *, level: int = 3) -> Path:
    """A zstd-compressed copy of the Zarr array ``raw`` (same chunks), made chunk by chunk."""
    from zarr.codecs import ZstdCodec

    return compressed_copy(raw, f"zstd{level}", ZstdCodec(level=level))


def compressed_copy(raw: Path, suffix: str, codec: Any) -> Path:
    """A copy of the Zarr array ``raw`` compressed with ``codec`` (same chunks), made chunk
    by chunk, named ``<raw>-<suffix>.zarr``."""
    import zarr

    path = raw.with_name(raw.name.replace("-raw.zarr", "") + f"-{suffix}.zarr")
    if (path / "zarr.json").exists() and zarr.open_array(str(path)).attrs.get("complete"):
        return path
    src = zarr.open_array(str(raw), mode="r")
    dst = zarr.create_array(str(path), shape=src.shape, chunks=src.chunks, dtype=src.dtype,
                            compressors=codec, overwrite=True)
    step = src.chunks[0]
    for start in range(0, src.shape[0], step):
        dst[start:start + step] = src[start:start + step]
    dst.attrs["complete"] = True
    return path


def store_info(path: Path) -> dict[str, Any]:
    """:func:`describe_store` plus the compressor and the bytes on disk."""
    import zarr

    z = zarr.open_array(str(path), mode="r")
    stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    compressors = [type(c).__name__ for c in z.compressors]
    return {**describe_store(path), "path": str(path.relative_to(HERE.parent)),
            "compressor": ", ".join(compressors) or "none", "stored_gb": stored / 1e9,
            "n_chunks": int(np.prod(z.cdata_shape))}


def read_baselines(stores: dict[str, Path], client: Any, repeats: int,
                   reads: dict[str, dict[str, list[float]]]) -> None:
    """``repeats`` reads of every store with both readers, interleaved, into ``reads``."""
    for _ in range(repeats):
        for name, path in stores.items():
            for reader in READERS:
                reads[name][reader].append(read_once(path, client, reader))


def panel_options(panel_mib: int | None, stored_mib: float) -> dict[str, int]:
    """``factorize`` keywords for row panels of ``panel_mib`` MiB (None: dnmf's default)."""
    if panel_mib is None:
        return {}
    size = panel_mib * MIB
    if panel_mib > stored_mib:  # merge stored chunks: both bounds at the size
        return {"max_panel_bytes": size, "min_panel_bytes": size}
    return {"max_panel_bytes": size, "min_panel_bytes": 0}  # split, or keep as stored


def fit_specs(cfg: dict[str, Any], solvers: list[str] | None) -> list[dict[str, Any]]:
    """The out-of-core fits of a profile, in the order they run."""
    specs: list[dict[str, Any]] = []
    for k in cfg["ks"]:
        for solver in ("hals", "mu"):
            specs.append({"store": "raw", "solver": solver, "k": k})
        if cfg["anls_k"] is not None and k == cfg["anls_k"]:
            specs.append({"store": "raw", "solver": "anls", "k": k, "iters": cfg["anls_iters"]})
    if cfg.get("persisted"):
        specs.append({"store": "raw", "solver": "hals", "k": 20, "persist_x": True})
    for name in CODECS:
        for solver, k in cfg.get(name, []):
            specs.append({"store": name, "solver": solver, "k": k})
    for mib in cfg["panels_mib"]:
        specs.append({"store": "raw", "solver": "hals", "k": 20, "panel_mib": mib})
    return [s for s in specs if solvers is None or s["solver"] in solvers]


def time_fit(path: Path, client: Any, spec: dict[str, Any], iters: int,
             stored_mib: float) -> dict[str, Any]:
    """dnmf seconds per iteration of one fit: the median over the iterations after the first."""
    import dnmf

    persist_x = spec.get("persist_x", False)
    result = dnmf.factorize(str(path), spec["k"], solver=spec["solver"], init="random",
                            random_state=0, max_iter=spec.get("iters", iters), tol=0.0,
                            client=client, persist_x=persist_x,
                            **panel_options(spec.get("panel_mib"), stored_mib))
    per_iter = result.seconds_per_iteration[1:] or result.seconds_per_iteration
    plan = result.plan
    row_bytes = plan.shape[1] * plan.itemsize
    return {**spec, "persist_x": persist_x, "s_per_iter": statistics.median(per_iter),
            "iterations_s": result.seconds_per_iteration, "spread": [min(per_iter), max(per_iter)],
            "relative_error": result.relative_error, "n_panels": len(plan.row_chunks),
            "panel_mib_planned": max(plan.row_chunks) * row_bytes / MIB,
            "rechunk": plan.rechunk}


def out_of_core(cfg: dict[str, Any], solvers: list[str] | None) -> dict[str, Any]:
    """Reads of X (two readers, raw and zstd stores) and dnmf fits on one LocalCluster."""
    from distributed import Client, LocalCluster

    raw = planted_zarr(cfg["rows"], cfg["cols"], cfg["planted_k"])
    specs = fit_specs(cfg, solvers)
    stores = {"raw": raw}
    for name, suffix in CODECS.items():
        if any(s["store"] == name for s in specs):
            stores[name] = compressed_copy(raw, suffix, codec(name))
    info = {name: store_info(path) for name, path in stores.items()}
    stored_mib = cfg["cols"] * 4 * min(cfg["rows"], zarr_chunk_rows(raw)) / MIB
    reads: dict[str, dict[str, list[float]]] = {n: {r: [] for r in READERS} for n in stores}
    cores = os.cpu_count() or 1
    fits = []
    with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        warm: dict[str, dict[str, list[float]]] = {n: {r: [] for r in READERS} for n in stores}
        read_baselines(stores, client, 1, warm)  # worker imports, page cache
        read_baselines(stores, client, cfg["reads"], reads)
        for name in stores:
            print(f"one read of X ({name}): " + ", ".join(
                f"{r} {statistics.median(reads[name][r]):.2f} s" for r in READERS), flush=True)
        # each fit between reads of its store (a read after one fit is the read before the
        # next on the same store): its ratios follow the machine's speed at the time
        after: tuple[str, dict[str, float]] | None = None
        for spec in specs:
            path = stores[spec["store"]]
            before = (after[1] if after and after[0] == spec["store"]
                      else {r: read_once(path, client, r) for r in READERS})
            floor = compute_floor(path, client, k=spec["k"], solver=spec["solver"])
            row = time_fit(path, client, spec, cfg["iters"], stored_mib)
            row["compute_floor_s"] = floor["s"]
            row["compute_floor_per_panel_s"] = floor["s_per_panel"]
            after = (spec["store"], {r: read_once(path, client, r) for r in READERS})
            row["adjacent_reads_s"] = {r: [before[r], after[1][r]] for r in READERS}
            fits.append(row)
            print(f"dnmf {fit_label(row)}: {row['s_per_iter']:.2f} s/iteration (reads around "
                  "it: " + ", ".join(f"{r} {statistics.mean(v):.2f} s" for r, v in
                                     row["adjacent_reads_s"].items()) + ")", flush=True)
        read_baselines(stores, client, cfg["reads"], reads)
    read_s = {n: {r: statistics.median(v) for r, v in per.items()} for n, per in reads.items()}
    for row in fits:
        base = {r: statistics.mean(v) for r, v in row["adjacent_reads_s"].items()}
        row["ratio"] = {r: row["s_per_iter"] / base[r] for r in READERS}
        row["ratio_to_run_median"] = {r: row["s_per_iter"] / read_s[row["store"]][r]
                                      for r in READERS}
        raw_read = base["dnmf"]
        row["ratio_raw"] = row["s_per_iter"] / raw_read
        row["ratio_floor"] = row["s_per_iter"] / max(raw_read, row["compute_floor_s"])
        row["floor_to_raw"] = row["compute_floor_s"] / raw_read
        row["target"] = out_of_core_target(row)
        if row["target"] is not None:
            row["met"] = (row["ratio_floor"] <= row["target"]["floor"]
                          and row["ratio_raw"] <= row["target"]["raw"])
    return {"cluster": f"{cores} workers x 1 thread", "stores": info, "stored_panel_mib":
            stored_mib, "warm_up_reads_s": warm, "reads_s": reads, "read_s": read_s,
            "readers": READERS, "iterations": cfg["iters"], "fits": fits}


def zarr_chunk_rows(path: Path) -> int:
    import zarr

    return int(zarr.open_array(str(path), mode="r").chunks[0])


def out_of_core_target(row: dict[str, Any]) -> dict[str, float] | None:
    """The issue's targets for a fit, or None: hals and mu at k = 20 on the raw store, X
    streamed, default panels."""
    if (row["store"] == "raw" and not row["persist_x"] and not row.get("panel_mib")):
        return OUT_OF_CORE_TARGETS.get((row["solver"], row["k"]))
    return None


def fit_label(row: dict[str, Any]) -> str:
    label = f"{row['solver']} k={row['k']} ({row['store']})"
    if row.get("persist_x"):
        label += ", X persisted"
    if row.get("panel_mib"):
        label += f", {row['panel_mib']} MiB panels"
    return label


def headlines(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The ratios the issue sets targets for, with the target and whether it is met."""
    out = []
    for row in report.get("out_of_core", {}).get("fits", []):
        if row.get("target") is not None and row["store"] == "raw":
            out.append({"what": f"out of core, dnmf {row['solver']} k={row['k']} s/iteration "
                                "/ max(raw read, compute floor)",
                        "ratio": row["ratio_floor"], "target": row["target"]["floor"],
                        "met": row["ratio_floor"] <= row["target"]["floor"]})
            out.append({"what": f"out of core, dnmf {row['solver']} k={row['k']} s/iteration "
                                "/ raw read (dnmf reader)",
                        "ratio": row["ratio_raw"], "target": row["target"]["raw"],
                        "met": row["ratio_raw"] <= row["target"]["raw"]})
    for mat in report.get("in_memory", {}).get("matrices", []):
        for row in mat["methods"]:
            if row.get("target") is not None:
                out.append({"what": f"in memory {mat['shape'][0]:,} x {mat['shape'][1]} "
                                    f"k={mat['k']}, {row['method']} time to sklearn cd's loss / "
                                    "sklearn cd time",
                            "ratio": row["ratio"], "target": row["target"], "met": row["met"]})
    return out


def render_out_of_core(ooc: dict[str, Any]) -> list[str]:
    raw = ooc["stores"]["raw"]
    lines = [
        "#### Out of core",
        "",
        f"X = {raw['shape'][0]:,} x {raw['shape'][1]} float32, {raw['gb']:.2f} GB, "
        f"{raw['chunks']} stored chunks ({ooc['stored_panel_mib']:.0f} MiB). LocalCluster "
        f"{ooc['cluster']}; every fit and every read on it. X streamed from the store every "
        "iteration (`persist_x=False`) unless said; random init; seconds per iteration are the "
        f"median of the {ooc['iterations'] - 1} iterations after the first (anls: fewer), "
        "range beside it. Each fit's ratios are to the mean of the reads of its store taken "
        "just before and just after it (the machine's speed drifts on a shared machine); the "
        "JSON also has them against the run's medians below.",
        "",
        "One read of X (every chunk read and summed in float64 on the workers), one warm-up "
        f"read, then {len(next(iter(ooc['reads_s'].values()))['zarr']) // 2} before and as "
        "many after all the fits; median (range):",
        "",
        "| store | on disk | (a) dask + zarr-python `from_zarr` | (b) dnmf reader "
        "`open_matrix` | decode: (b) − raw (b) |",
        "|---|---:|---:|---:|---:|",
    ]
    raw_read = ooc["read_s"]["raw"]["dnmf"]
    for name, info in ooc["stores"].items():
        cells = []
        for reader in READERS:
            v = ooc["reads_s"][name][reader]
            cells.append(f"{ooc['read_s'][name][reader]:.2f} s ({min(v):.2f}–{max(v):.2f})")
        decode = ooc["read_s"][name]["dnmf"] - raw_read
        lines.append(f"| {name} ({info['compressor']}) | {info['stored_gb']:.2f} GB | "
                     + " | ".join(cells) + (f" | {decode:.2f} s |" if name != "raw" else " | — |"))
    lines += ["", "Compute floor: the fit's panel kernel alone on panels in worker memory, all "
              "workers at once, times the panels per worker (`benchmarks/floors.py`), measured "
              "just before the fit. Targets (k = 20, raw store): s/iteration ≤ 1.3 × max(raw "
              "read (b), compute floor), and ≤ 2.0 (hals) / 1.8 (mu) × raw read (b).", "",
              "| store | solver | k | row panels | s / iteration (range) | × read (a) | "
              "× raw read (b) | compute floor s (× raw read) | × max(raw, floor) | targets "
              "| met? |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in ooc["fits"]:
        solver = r["solver"] + (", X persisted" if r["persist_x"] else "")
        panels = f"{r['n_panels']} x {r['panel_mib_planned']:.0f} MiB"
        if r.get("panel_mib"):
            panels += f" (asked {r['panel_mib']})"
        t = r["target"]
        target = f"≤ {t['floor']:.1f} / ≤ {t['raw']:.1f}" if t is not None else "—"
        met = yes_no(r.get("met"))
        lines.append(f"| {r['store']} | {solver} | {r['k']} | {panels} | {r['s_per_iter']:.2f} "
                     f"({r['spread'][0]:.2f}–{r['spread'][1]:.2f}) | {r['ratio']['zarr']:.2f} | "
                     f"{r['ratio_raw']:.2f} | {r['compute_floor_s']:.2f} "
                     f"({r['floor_to_raw']:.2f}) | {r['ratio_floor']:.2f} | {target} | {met} |")
    return lines


def render(report: dict[str, Any]) -> str:
    lines = [f"### Profile `{report['profile']}` — {report['date']}", "",
             machine_line(report["machine"]), ""]
    if "out_of_core" in report:
        lines += render_out_of_core(report["out_of_core"]) + [""]
    if "in_memory" in report:
        lines += inmemory.render_in_memory(report["in_memory"]) + [""]
    heads = report.get("headlines", [])
    if heads:
        met = sum(1 for h in heads if h["met"])
        parts = ", ".join(f"{name.replace('_', ' ')} {report[name]['seconds']:.0f} s"
                          for name in ("out_of_core", "in_memory") if name in report)
        load = report.get("load_average_end")
        lines.append(f"Targets met: {met} of {len(heads)}. Run time {report['seconds']:.0f} s "
                     f"({parts})" + (f"; load average at the end {load[0]:.1f}" if load else "")
                     + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small profile (~3 minutes)")
    parser.add_argument("--profile", choices=[*sorted(PROFILES), "32gb"], default=None,
                        help="a named profile (1gb, 4gb: that size of X; hals and mu at k = 20; "
                             "hals on zstd and blosc-lz4 copies; 32gb: hals k = 20 on X read "
                             "cold from disk, benchmarks.cold, ~10 minutes)")
    parser.add_argument("--solvers", nargs="*", default=None,
                        help="out of core: only these solvers (hals, mu, anls)")
    parser.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS))
    args = parser.parse_args(argv)
    profile = args.profile or ("quick" if args.quick else "full")
    if profile == "32gb":  # the slow row of the growth table: not in the suite
        from benchmarks import cold

        return cold.main([])
    t0 = time.perf_counter()
    report = new_report(profile)
    if "out-of-core" in args.parts:
        t = time.perf_counter()
        report["out_of_core"] = out_of_core(PROFILES[profile], args.solvers)
        report["out_of_core"]["seconds"] = time.perf_counter() - t
    if "in-memory" in args.parts:
        t = time.perf_counter()
        in_memory_cfg = inmemory.PROFILES.get(profile, inmemory.PROFILES["quick"])
        report["in_memory"] = inmemory.in_memory(in_memory_cfg)
        report["in_memory"]["plot"] = inmemory.plot(report["in_memory"], profile)
        report["in_memory"]["seconds"] = time.perf_counter() - t
    report["headlines"] = headlines(report)
    report["seconds"] = time.perf_counter() - t0
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    save_report(profile, report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
