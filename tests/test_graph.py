"""Graph structure: one read of each chunk of X per iteration, nothing computed while building."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from dask.callbacks import Callback
from zarr.storage import LocalStore

from dnmf import graph, kernels
from dnmf.cluster import ExecutionContext
from dnmf.solvers import iterate
from tests.conftest import make_planted


class CountComputes(Callback):
    """Counts scheduler runs (each dask.compute/persist on the local schedulers is one)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def _start(self, dsk):
        self.n += 1


@pytest.mark.parametrize("solver", ["hals", "mu", "anls"])
def test_one_iteration_reads_each_chunk_of_x_once(logged_zarr, solver):
    X, store, Xd = logged_zarr
    W = graph.random_w(Xd.chunks[0], 4, seed=0, scale=1.0, dtype=np.float32)
    H = np.abs(np.random.default_rng(0).random((4, 30))).astype(np.float32)
    (W,) = dask.persist(W, scheduler="sync")
    store.counter.clear()
    W_new, partials = graph.iteration_graph(Xd, W, H, solver=solver)
    assert store.counter["get"] == 0  # building reads nothing
    W_new, partials = dask.persist(W_new, partials, scheduler="threads")
    n_chunks = Xd.numblocks[0] * Xd.numblocks[1]
    assert store.counter["get"] == n_chunks == 6
    WtX, WtW = partials.compute(scheduler="sync")
    W_np = W_new.compute(scheduler="sync").astype(np.float64)
    np.testing.assert_allclose(WtX, W_np.T @ X, rtol=1e-5)
    np.testing.assert_allclose(WtW, W_np.T @ W_np, rtol=1e-5)


def test_iteration_graph_has_o_chunks_tasks_and_computes_nothing():
    X = da.from_array(np.ones((1000, 10)), chunks=(10, 10))
    W = da.ones((1000, 3), chunks=(10, 3))
    with CountComputes() as counter:
        W_new, partials = graph.iteration_graph(X, W, np.ones((3, 10)), solver="hals")
    assert counter.n == 0
    n = X.numblocks[0]
    layer_sizes = {name: len(layer) for name, layer in W_new.__dask_graph__().layers.items()
                   if name.startswith("dnmf-")}
    panel = next(v for k, v in layer_sizes.items() if k.startswith("dnmf-panel"))
    reduce = next(v for k, v in layer_sizes.items() if k.startswith("dnmf-partials"))
    assert panel == n
    assert reduce < n / (graph.SPLIT_EVERY - 1) + 2  # a tree: O(n / split_every) combines


def test_tree_reduction_equals_plain_sum():
    rng = np.random.default_rng(1)
    X = rng.random((370, 9))
    Xd = da.from_array(X, chunks=(10, 9))  # 37 panels: three levels at split_every=4
    W = da.from_array(rng.random((370, 2)), chunks=(10, 2))
    H = rng.random((2, 9))
    W_new, partials = graph.iteration_graph(Xd, W, H, solver="mu", split_every=4)
    WtX, WtW = partials.compute(scheduler="sync")
    Wn = W_new.compute(scheduler="sync")
    np.testing.assert_allclose(WtX, Wn.T @ X, rtol=1e-12)
    np.testing.assert_allclose(WtW, Wn.T @ Wn, rtol=1e-12)


def test_iteration_graph_rejects_column_chunks():
    X = da.ones((20, 10), chunks=(10, 5))
    with pytest.raises(ValueError, match="all columns in one chunk"):
        graph.iteration_graph(X, da.ones((20, 2), chunks=(10, 2)), np.ones((2, 10)),
                              solver="hals")


class CountingContext(ExecutionContext):
    """The real in-process context, counting its scheduler calls."""

    def __init__(self):
        super().__init__(kind="threads", n_workers=1, threads_per_worker=2)
        self.calls = 0

    def persist(self, *collections, **kwargs):
        self.calls += 1
        return super().persist(*collections, **kwargs)

    def compute(self, *collections):
        self.calls += 1
        return super().compute(*collections)


@pytest.mark.parametrize(("solver", "beta", "w_in_store"), [
    ("hals", 2.0, False), ("mu", 2.0, False), ("mu", 1.0, False), ("hals", 2.0, True),
    ("mu", 1.0, True)])
def test_iterate_makes_one_scheduler_round_trip_per_iteration(logged_zarr, tmp_path, solver,
                                                              beta, w_in_store):
    """One computation and one read of each chunk of X per iteration — also for KL, and with
    W streamed through a Zarr scratch store (its store and the partials in one computation)."""
    X, store, Xd = logged_zarr
    W = graph.random_w(Xd.chunks[0], 4, seed=0, scale=1.0, dtype=np.float32)
    H = np.random.default_rng(0).random((4, 30)).astype(np.float32)
    ctx = CountingContext()
    store.counter.clear()
    with CountComputes() as counter:
        state = iterate(Xd, W, H, sq_norm=float((X.astype(np.float64) ** 2).sum()),
                        solver=solver, ctx=ctx, max_iter=5, tol=0.0, beta=beta,
                        w_scratch=str(tmp_path / "w") if w_in_store else None)
    # one more pass for the loss of the final (W, H): other losses than Frobenius, and
    # Frobenius in float32 (the Gram identity cancels there)
    assert Xd.dtype == np.float32
    assert store.counter["get"] == 6 * Xd.numblocks[0]
    store.counter["get"] -= Xd.numblocks[0]
    ctx.calls -= 1
    counter.n -= 1
    assert state.n_iter == 5
    # one persist for the initial W, then one per iteration (persisted partials read back free)
    assert ctx.calls == 1 + 5
    assert counter.n == 1 + 5
    assert store.counter["get"] == 5 * Xd.numblocks[0]
    assert len(state.loss_history) == 5


def test_kernels_panel_step_is_what_the_graph_runs():
    rng = np.random.default_rng(3)
    X = rng.random((30, 8))
    W = rng.random((30, 2))
    H = rng.random((2, 8))
    W_new, partials = graph.iteration_graph(
        da.from_array(X, chunks=(30, 8)), da.from_array(W, chunks=(30, 2)), H, solver="hals"
    )
    expected_W, (WtX, _) = kernels.panel_step(X, W, H, H @ H.T, solver="hals")
    np.testing.assert_allclose(W_new.compute(scheduler="sync"), expected_W, rtol=1e-12)
    np.testing.assert_allclose(partials.compute(scheduler="sync")[0], WtX, rtol=1e-12)


class CountingReader:
    """A Zarr array read through ``from_array`` that appends a line to ``log`` per read, from
    whichever worker process reads (O_APPEND lines do not interleave)."""

    def __init__(self, path, log):
        self.path, self.log = str(path), str(log)
        arr = zarr.open_array(self.path, mode="r")
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim

    def __getitem__(self, key):
        with open(self.log, "a") as fh:
            fh.write(f"{key}\n")
        return zarr.open_array(self.path, mode="r")[key]


@pytest.mark.cluster
@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_on_a_cluster_each_panel_task_and_each_read_runs_once(tmp_path, local_client, solver):
    """Guards against graph optimisation duplicating the shared panel tasks (and X's reads),
    and checks that each panel is read inside its panel task (no task of its own whose result
    the scheduler could move between workers)."""
    from distributed import get_task_stream

    from dnmf.cluster import execution_context

    X, _, _ = make_planted(600, 30, 4, dtype="float32")
    path, log = tmp_path / "x.zarr", tmp_path / "reads.log"
    zarr.create_array(LocalStore(path), shape=X.shape, chunks=(100, 30), dtype="float32")[...] = X
    Xd = da.from_array(CountingReader(path, log), chunks=(100, 30), asarray=True,
                       meta=np.empty((0, 0), dtype=np.float32))
    W = graph.random_w(Xd.chunks[0], 4, seed=0, scale=1.0, dtype=np.float32)
    H = np.random.default_rng(0).random((4, 30)).astype(np.float32)
    with execution_context(local_client) as ctx:
        (W,) = ctx.persist(W)
        with get_task_stream(client=local_client) as stream:
            iterate(Xd, W, H, sq_norm=float((X.astype(np.float64) ** 2).sum()), solver=solver,
                    ctx=ctx, max_iter=3, tol=0.0)
    names = [d["key"][0] if isinstance(d["key"], tuple) else d["key"] for d in stream.data]
    panels = [n for n in names if n.startswith("dnmf-panel")]
    assert len(panels) == 3 * Xd.numblocks[0] == 18
    assert not [n for n in names if n == Xd.name]  # read inside the panel tasks
    reads = log.read_text().splitlines()
    assert len(reads) == (3 + 1) * Xd.numblocks[0]  # + the float32 final loss pass
    assert len(set(reads)) == Xd.numblocks[0]  # each panel, the same number of times
    assert not [n for n in names if "dnmf-panel" in n and not n.startswith("dnmf-panel-")]


def test_panel_tasks_read_their_block_inside_the_task(tmp_path):
    """A block read from storage (a task on root data only) runs inside the panel task; a block
    computed from other tasks, or already in memory, stays a key of its own."""
    from dask._task_spec import Task

    path = tmp_path / "x.zarr"
    zarr.create_array(LocalStore(path), shape=(40, 3), chunks=(10, 3), dtype="float32")[...] = 1
    X = da.from_zarr(str(path))

    def keys(A):
        return [row[0] for row in A.__dask_keys__()]

    assert all(isinstance(t, Task) and t.key is None for t in graph.inline_reads(X, keys(X)))
    Z = X.map_blocks(np.sqrt)  # a read, then a task only it feeds: both folded in
    assert all(isinstance(t, Task) and not t.dependencies & set(keys(X))
               for t in graph.inline_reads(Z, keys(Z)))
    Y = X.rechunk((20, 3)).rechunk((10, 3))  # blocks made of blocks they share
    assert graph.inline_reads(Y, keys(Y)) == keys(Y)
    (P,) = dask.persist(X, scheduler="sync")  # blocks in memory
    assert not any(isinstance(t, Task) for t in graph.inline_reads(P, keys(P)))
    got = graph.panel_map_reduce(X, lambda x: (x.sum(dtype=np.float64),), prefix="t",
                                 token="0", pass_mask=False).compute(scheduler="sync")
    assert got == (40 * 3,)


def test_a_fit_from_a_raw_zarr_path_maps_each_chunk_once_per_iteration(tmp_path, monkeypatch):
    """The raw chunk reader (uncompressed local Zarr) keeps the one-read-per-iteration rule."""
    import dnmf
    from dnmf.io.zarr_ import RawChunks

    X, _, _ = make_planted(600, 30, 4, dtype="float32")
    path = tmp_path / "x.zarr"
    zarr.create_array(str(path), shape=X.shape, chunks=(100, 30), dtype="float32",
                      compressors=None)[...] = X
    mapped = []
    original = RawChunks._chunk

    def counting(self, index):
        mapped.append(index)
        return original(self, index)

    monkeypatch.setattr(RawChunks, "_chunk", counting)
    marks = []
    dnmf.factorize(str(path), 4, scheduler="threads", max_iter=4, tol=0.0, min_panel_bytes=0,
                   persist_x=False,
                   callback=lambda info: marks.append(len(mapped)))
    assert np.diff(marks).tolist() == [6, 6, 6]
    assert sorted(mapped[marks[0]:marks[1]]) == [(i, 0) for i in range(6)]
