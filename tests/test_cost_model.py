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
