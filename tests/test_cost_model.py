"""The cost model: its terms move the way the scheme says, and the dry run prints it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from dnmf import cost_model, graph
from dnmf.cli import app
from dnmf.cost_model import Bandwidths, predict
from dnmf.io.procedural import planted_array

runner = CliRunner()
TALL = dict(n_samples=10_000_000, n_features=1000, k=20, panel_rows=30_000)


def test_terms_add_up_and_are_positive() -> None:
    p = predict(**TALL, workers=10, threads=4)
    terms = [p.read_s, p.compute_s, p.scheduling_s, p.network_s, p.driver_s]
    assert min(terms) > 0
    assert p.total_s == pytest.approx(sum(terms))
    assert sum(p.shares().values()) == pytest.approx(1.0)


def test_more_workers_shrink_read_and_compute_not_the_driver() -> None:
    few, many = predict(**TALL, workers=10), predict(**TALL, workers=100)
    assert many.read_s < few.read_s / 5 and many.compute_s < few.compute_s / 5
    assert many.driver_s == few.driver_s  # one process, whatever the cluster
    assert many.scheduling_s == few.scheduling_s  # serial at the scheduler


def test_persisted_x_reads_nothing_and_costs_memory() -> None:
    streamed, held = predict(**TALL, workers=10), predict(**TALL, workers=10, persist_x=True)
    assert held.read_s == 0 < streamed.read_s
    assert held.memory_per_worker - streamed.memory_per_worker == pytest.approx(
        TALL["n_samples"] * TALL["n_features"] * 4 / 10, rel=1e-6)


def test_bandwidth_and_size_monotone() -> None:
    slow = predict(**TALL, workers=10, bandwidths=Bandwidths(disk=0.1e9))
    fast = predict(**TALL, workers=10, bandwidths=Bandwidths(disk=1e9))
    assert slow.read_s > 5 * fast.read_s and slow.total_s > fast.total_s
    bigger = predict(**{**TALL, "n_samples": 2 * TALL["n_samples"]}, workers=10)
    assert bigger.total_s > fast.total_s
    wide = predict(**{**TALL, "n_features": 10 * TALL["n_features"]}, workers=10)
    assert wide.driver_s > 5 * fast.driver_s and wide.network_s > fast.network_s
    # O(k² n): k x5 costs more than x5
    assert predict(**{**TALL, "k": 100}, workers=10).driver_s > 5 * fast.driver_s


def test_a_read_waiting_on_a_disk_overlaps_the_compute_a_copy_does_not() -> None:
    """An iteration costs max(the device's read, compute + the CPU's copy): the 32 GB run read
    cold from disk cost its read alone, the 1 and 4 GB runs from the page cache read + compute."""
    panels = -(-TALL["n_samples"] // TALL["panel_rows"])
    per_worker_bytes = -(-panels // 10) * TALL["panel_rows"] * TALL["n_features"] * 4
    disk = predict(**TALL, workers=10, bandwidths=Bandwidths(disk=0.05e9, memory=2.5e9))
    wait = per_worker_bytes / 0.05e9
    assert disk.read_s + disk.compute_s == pytest.approx(wait, rel=0.01)  # compute hidden
    cached = predict(**TALL, workers=10, bandwidths=Bandwidths(disk=2e9, memory=2e9))
    assert cached.read_s == pytest.approx(per_worker_bytes / 2e9, rel=0.01)  # all copy, added
    assert cached.total_s > cached.read_s + cached.compute_s > cached.compute_s
    # a disk faster than the copy: the copy bounds the read
    fast = predict(**TALL, workers=10, bandwidths=Bandwidths(disk=20e9, memory=2e9))
    assert fast.read_s == pytest.approx(cached.read_s)


@pytest.mark.parametrize("panels", [1, 7, 8, 9, 65, 600])
def test_task_count_is_the_graphs(panels: int) -> None:
    """The scheduling term counts the tasks :func:`dnmf.graph.iteration_graph` really builds."""
    rows = (3,) * panels
    X = planted_array(3 * panels, 5, 2, seed=0, noise=0.0, dtype=np.float32, row_chunks=rows)
    W = graph.random_w(rows, 2, seed=0, scale=1.0, dtype=np.float32)
    W_new, _ = graph.iteration_graph(X, W, np.ones((2, 5), np.float32), solver="hals")
    layers = W_new.__dask_graph__().layers
    built = sum(len(layer) for name, layer in layers.items() if name not in (X.name, W.name))
    assert cost_model.tasks_per_iteration(panels, graph.SPLIT_EVERY) == built


def test_dry_run_prints_the_prediction(tmp_path) -> None:
    path = tmp_path / "x.zarr"
    z = zarr.create_array(str(path), shape=(400, 30), chunks=(100, 30), dtype="float32")
    z[...] = planted_array(400, 30, 3, seed=0, noise=0.0, dtype=np.float32,
                           row_chunks=(400,)).compute()
    args = ["fit", str(path), "-k", "3", "--dry-run", "--scheduler", "local",
            "--workers", "2", "--memory-limit", "1GB", "--disk-bandwidth", "0.2"]
    text = runner.invoke(app, args).output
    assert "s per iteration (read" in text and "disk 0.2 GB/s" in text, text
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    pred = json.loads(result.output)["prediction"]
    terms = sum(pred[f"{t}_s"] for t in ("read", "compute", "scheduling", "network", "driver"))
    assert pred["seconds_per_iteration"] == pytest.approx(terms)
    assert pred["n_panels"] == json.loads(result.output)["plan"]["n_panels"]
    bandwidths = json.loads(result.output)["bandwidths"]
    assert bandwidths["disk"] == pytest.approx(0.2e9) and bandwidths["memory_from_reader"]
    assert bandwidths["memory"] in (cost_model.MAPPED_BANDWIDTH, cost_model.COPY_BANDWIDTH)


def test_a_wide_xs_h_update_shrinks_with_the_workers_threads() -> None:
    """WᵀX of 80 MB (k = 100, n = 100,000): H is updated on the workers, one block of columns
    per thread (none narrower than H_BLOCK_COLUMNS); on the driver it would not shrink."""
    from dnmf.plan import H_BLOCK_COLUMNS, h_column_blocks

    wide = dict(n_samples=250_000, n_features=100_000, k=100, panel_rows=1_670)
    on_driver = predict(**wide, workers=10, threads=8, h_on_workers=False)
    few, many = (predict(**wide, workers=w, threads=t) for w, t in ((2, 1), (10, 8)))
    assert few.driver_s == pytest.approx(on_driver.driver_s / 2)
    blocks = h_column_blocks(100, 100_000, 80)
    assert len(blocks) == 100_000 // H_BLOCK_COLUMNS
    assert sum(b.stop - b.start for b in blocks) == 100_000
    assert many.driver_s == pytest.approx(on_driver.driver_s / len(blocks))
    assert many.tasks_per_iteration > on_driver.tasks_per_iteration
    assert h_column_blocks(20, 1_000, 80) == [slice(0, 1_000)]  # small WᵀX: the driver's


def test_the_solvers_own_w_update_is_costed() -> None:
    """mu's panel task replaces the HALS sweeps (r k² σ) by one r k² term; the products and
    the passes over the panel are the same; an unmodelled solver is refused by name."""
    c = cost_model.Coefficients(gemm_s=1e-11, sweep_s=2e-10, mu_s=5e-11, pass_s=1e-9,
                                iteration_s=0.0, panel_s=0.0, graph_s=0.0, level_s=0.0,
                                add_s_per_byte=0.0, driver_s=0.0, driver_kn_s=0.0)
    r, n, k = 30_000, 1_000, 20
    sweeps = cost_model.kernels.w_inner_sweeps(k, n)
    hals = cost_model.panel_seconds(r, n, k, c, "hals")
    mu = cost_model.panel_seconds(r, n, k, c, "mu")
    assert hals - mu == pytest.approx(r * k * k * (2e-10 * sweeps - 5e-11))
    assert predict(**TALL, workers=10, solver="mu", coefficients=c).compute_s < \
        predict(**TALL, workers=10, solver="hals", coefficients=c).compute_s
    with pytest.raises(ValueError, match="covers the solvers"):
        predict(**TALL, workers=10, solver="anls")


@pytest.mark.parametrize("field", ["disk", "network", "memory"])
@pytest.mark.parametrize("value", [0.0, -1e9, float("nan"), float("inf")])
def test_a_bandwidth_must_be_a_positive_number(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"the {field} bandwidth must be a positive number"):
        Bandwidths(**{field: value})


def test_dry_run_takes_the_memory_bandwidth_and_refuses_a_bad_one(tmp_path) -> None:
    """A stated memory bandwidth sets the CPU's part of the read (a faster one, a smaller read
    term) and is printed; a zero bandwidth is a one-line error, not a division by zero."""
    path = tmp_path / "x.zarr"
    z = zarr.create_array(str(path), shape=(400, 30), chunks=(100, 30), dtype="float32")
    z[...] = planted_array(400, 30, 3, seed=0, noise=0.0, dtype=np.float32,
                           row_chunks=(400,)).compute()
    from dnmf import api

    reads = {gbs: api.dry_run(str(path), 3, scheduler="local", workers=2, memory_limit="1GB",
                              persist_x=False, bandwidths=Bandwidths(memory=gbs * 1e9)
                              ).prediction.read_s for gbs in (0.01, 40)}
    assert reads[0.01] > 100 * reads[40] > 0
    args = ["fit", str(path), "-k", "3", "--dry-run", "--scheduler", "local", "--workers", "2",
            "--memory-limit", "1GB"]
    result = runner.invoke(app, [*args, "--memory-bandwidth", "7"])
    assert result.exit_code == 0 and "memory 7 GB/s per thread" in result.output, result.output
    from tests.test_cli import run_cli

    proc = run_cli(*args, "--memory-bandwidth", "0")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: the memory bandwidth must be a positive number, not 0 GB/s — give "
        "--memory-bandwidth in GB/s (e.g. 0.5), or Bandwidths(memory=...) in bytes per "
        "second"]


def test_the_calibration_recovers_the_coefficients_it_measures() -> None:
    """``benchmarks.cost_terms`` fits each coefficient to its measured term: on terms made
    by the model itself it gives the model's coefficients back (hals and mu compute fitted
    together, the scheduling intercept included)."""
    from benchmarks import cost_terms

    truth = cost_model.Coefficients(gemm_s=9e-12, sweep_s=1.8e-10, mu_s=1.2e-10, pass_s=1.4e-9,
                                    task_s=2.6e-3, iteration_s=0.013, panel_s=1.2e-3,
                                    graph_s=6e-6, level_s=1.3e-3, add_s_per_byte=5e-11,
                                    driver_s=2.6e-9, driver_kn_s=1e-8)
    compute = [{"rows": cost_terms.PANEL_VALUES // n, "n_features": n, "k": k, "solver": s,
                "seconds": cost_model.panel_seconds(cost_terms.PANEL_VALUES // n, n, k, truth,
                                                    s)}
               for n in cost_terms.COMPUTE_COLUMNS for k in cost_terms.COMPUTE_RANKS
               for s in cost_model.SOLVERS]
    report = {
        "profile": "test", "date": "2026-12-07",
        "machine": {"cpu": "test", "cores": 2, "load_average": [0.0]},
        "compute": compute,
        "driver": [{"k": k, "n_features": n, "seconds": cost_model.driver_seconds(k, n, truth)}
                   for k in (10, 100) for n in (1_000, 100_000)],
        "add": [{"bytes": b, "seconds": b * truth.add_s_per_byte} for b in (1e6, 1e7)],
        "graph": [{"panels": p, "build_s": p * truth.graph_s} for p in (1_000, 10_000)],
        "scheduling": [{"panels": p, "driver_scheduler_cpu_s": truth.iteration_s
                        + truth.panel_s * p, "workers_cpu_s": truth.task_s * p}
                       for p in cost_terms.SMALL_PANELS + cost_terms.PANELS_QUICK],
        "reduction": [{"levels": cost_model.reduction_levels(32, f), "fan_in": f, "panels": 32,
                       "partial_mb": mb, "seconds": cost_model.reduction_levels(32, f)
                       * (truth.level_s + f * mb * 1e6 * 1e-10)}
                      for f in (2, 8, 32) for mb in (0.16, 8.0)],
    }
    fitted = cost_terms.fit_coefficients(report)
    for name in ("gemm_s", "sweep_s", "mu_s", "pass_s", "task_s", "iteration_s", "panel_s",
                 "graph_s", "level_s", "add_s_per_byte", "driver_s", "driver_kn_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-6), name


def test_the_memory_bandwidth_follows_the_reader(tmp_path) -> None:
    """Left to the reader, the CPU's part of a read is the mapping of a chunk for panels that
    are whole chunks of an uncompressed local Zarr (read without a copy), and a copy for a
    compressed store, panels merged from several chunks, or X cast from its stored dtype; a
    stated bandwidth is kept."""
    from dnmf import api

    rows = 300_000  # one 36 MB chunk: more than half a panel, so a panel of its own
    X = np.random.default_rng(0).random((rows, 30), dtype=np.float32)
    stores = {}
    for name, chunk_rows, compressors, dtype in (
            ("raw", rows, None, "float32"), ("small chunks", 1_000, None, "float32"),
            ("zstd", rows, "auto", "float32"), ("int", rows, None, "int16")):
        stores[name] = tmp_path / f"{name}.zarr"
        z = zarr.create_array(str(stores[name]), shape=X.shape, chunks=(chunk_rows, 30),
                              dtype=dtype, compressors=compressors)
        z[...] = (100 * X).astype(dtype)

    def memory(name: str, opened: bool = False, **kw) -> float:
        X = zarr.open_array(str(stores[name])) if opened else str(stores[name])
        run = api.dry_run(X, 3, scheduler="local", workers=2, memory_limit="1GB",
                          persist_x=False, **kw)
        assert run.prediction is not None
        assert run.memory_from_reader == ("bandwidths" not in kw)
        return run.bandwidths.memory

    assert memory("raw") == cost_model.MAPPED_BANDWIDTH
    assert memory("raw", opened=True) == cost_model.MAPPED_BANDWIDTH  # its blocks: the chunk
    # panels of 75,000 rows inside the chunk: a path is re-opened in them (views of the
    # mapped chunk); an opened array is rechunked, which copies
    quarter = 75_000 * 30 * 4
    assert memory("raw", max_panel_bytes=quarter) == cost_model.MAPPED_BANDWIDTH
    assert memory("raw", opened=True, max_panel_bytes=quarter) == cost_model.COPY_BANDWIDTH
    assert memory("small chunks") == cost_model.COPY_BANDWIDTH  # panels span 1,000-row chunks
    assert memory("zstd") == cost_model.COPY_BANDWIDTH
    assert memory("int") == cost_model.COPY_BANDWIDTH  # cast to float32: a copy
    assert memory("raw", bandwidths=Bandwidths(memory=3e9)) == 3e9
