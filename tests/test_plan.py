"""The chunk plan: keeps stored row panels when they serve, rechunks only when needed."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from dnmf.errors import InputError
from dnmf.plan import apply_plan, plan_chunks, task_memory

GiB = 2**30


@pytest.mark.parametrize(
    "shape,chunks,expect_rechunk,expect_rows",
    [
        # stored row panels of 16 MiB within budget: kept as they are
        ((100_000, 1000), (4096, 1000), None, 4096),
        # column tiles: merged into full-width panels of the stored row height
        ((100_000, 1000), (4096, 250), "merge 4 column chunks", 4096),
        # over-tall stored chunks: split to the budget
        ((1_000_000, 1000), (500_000, 1000), "split row chunks", None),
        # many tiny stored panels: merged (no stored chunk split)
        ((10_000, 100), (10, 100), "small row chunks", None),
    ],
)
def test_plan_keeps_or_rechunks_with_reason(shape, chunks, expect_rechunk, expect_rows):
    X = da.zeros(shape, chunks=chunks, dtype=np.float32)
    plan = plan_chunks(X, 20, memory_per_worker=4 * GiB, persist_x=False)
    if expect_rechunk is None:
        assert plan.rechunk is None
    else:
        assert expect_rechunk in plan.rechunk
    if expect_rows is not None:
        assert max(plan.row_chunks) == expect_rows
    assert sum(plan.row_chunks) == shape[0]
    assert plan.task_bytes <= 4 * GiB * 0.25
    Xp = apply_plan(X, plan)
    assert Xp.chunks == (plan.row_chunks, (shape[1],))
    assert plan.reads_per_iteration == X.numblocks[0] * X.numblocks[1]


def test_merging_small_panels_never_splits_a_stored_chunk():
    X = da.zeros((1000, 100), chunks=((7,) * 142 + (6,), (100,)))
    plan = plan_chunks(X, 5, memory_per_worker=4 * GiB, persist_x=False)
    stored_bounds = set(np.cumsum(X.chunks[0]))
    assert set(np.cumsum(plan.row_chunks)) <= stored_bounds


def test_plan_respects_a_small_memory_budget():
    X = da.zeros((200_000, 500), chunks=(200_000, 500), dtype=np.float32)
    plan = plan_chunks(X, 20, memory_per_worker=200 * 2**20, persist_x=False)
    assert plan.task_bytes <= 200 * 2**20 * 0.25
    assert task_memory(max(plan.row_chunks) + 1, 500, 20, 4) > 200 * 2**20 * 0.25 or (
        max(plan.row_chunks) * 500 * 4 >= 128 * 2**20
    )


def test_too_wide_for_row_panels_falls_back_to_2d_blocks():
    X = da.zeros((1000, 10_000_000), chunks=(1, 10_000_000), dtype=np.float32)
    with pytest.raises(InputError, match="use the 2-D block scheme"):
        plan_chunks(X, 100, memory_per_worker=500 * 2**20, scheme="row-panel")
    plan = plan_chunks(X, 100, memory_per_worker=500 * 2**20, persist_x=False)
    assert plan.is_2d and len(plan.col_chunks) > 1 and sum(plan.col_chunks) == 10_000_000
    assert plan.task_bytes <= 500 * 2**20 * 0.25
    # blocks are read (re-opened in the planned blocks), each twice per iteration
    assert plan.reads_per_iteration == 2 * len(plan.row_chunks) * len(plan.col_chunks)
    text = "\n".join(plan.describe())
    assert "block-2d" in text and "twice (two passes)" in text
    assert apply_plan(X, plan).chunks == (plan.row_chunks, plan.col_chunks)


def test_unknown_scheme():
    with pytest.raises(InputError, match="unknown scheme 'tiles'"):
        plan_chunks(da.zeros((10, 10)), 2, memory_per_worker=GiB, scheme="tiles")


def test_persist_x_auto_when_it_fits_and_not_for_in_memory_data():
    X = da.zeros((10_000, 100), chunks=(1000, 100))
    fits = plan_chunks(X, 5, memory_per_worker=GiB, n_workers=2)
    assert fits.persist_x and fits.reads_per_iteration == 0
    too_big = plan_chunks(X, 5, memory_per_worker=10 * 2**20, n_workers=1)
    assert not too_big.persist_x
    in_memory = plan_chunks(X, 5, memory_per_worker=GiB, x_in_memory=True)
    assert not in_memory.persist_x


def test_describe_names_scheme_reads_and_memory():
    X = da.zeros((10_000, 100), chunks=(1000, 100))
    text = "\n".join(plan_chunks(X, 5, memory_per_worker=GiB, persist_x=False).describe())
    for word in ("row-panel", "reads per iteration: 10", "memory per task", "W (10,000 x 5)"):
        assert word in text


def test_small_x_on_a_cluster_is_split_so_every_worker_thread_has_work():
    X = da.zeros((40_000, 300), chunks=(40_000, 300), dtype=np.float32)
    plan = plan_chunks(X, 8, memory_per_worker=4 * GiB, n_workers=2, min_panels=4,
                       stored_rows=5_000)
    assert plan.n_panels == 4 and all(r % 5_000 == 0 for r in plan.row_chunks)
    assert "every worker thread has work" in plan.rechunk
    # never below the stored chunk: 3 stored chunks cannot make 4 panels
    X = da.zeros((15_000, 300), chunks=(15_000, 300), dtype=np.float32)
    plan = plan_chunks(X, 8, memory_per_worker=4 * GiB, min_panels=4, stored_rows=5_000)
    assert plan.row_chunks == (5_000, 5_000, 5_000)


def test_sparse_panels_split_by_stored_size_only_when_it_is_known():
    """CSR panels are split to ~SPARSE_PANEL_BYTES each from the stored bytes; a dask array
    of CSR blocks gives only its dense size (16 GB here for 17 M non-zeros), which must not
    cut it into thousands of panels."""
    import scipy.sparse as sp

    from dnmf.io.sparse import scipy_dask_array
    from dnmf.plan import SPARSE_PANEL_BYTES

    M = sp.random(20_000, 50, density=0.1, format="csr", dtype=np.float32, random_state=0)
    X = scipy_dask_array(M, chunks=5_000)  # 4 panels
    stored = M.data.nbytes + M.indices.nbytes + M.indptr.nbytes
    kw = {"memory_per_worker": 2**33, "min_panels": 4}
    dense = 200 * SPARSE_PANEL_BYTES  # stands for a dense size far above the stored one
    plan = plan_chunks(X, 5, sparse_nbytes=dense, sparse_bytes_known=False, **kw)
    assert plan.row_chunks == (5_000,) * 4
    plan = plan_chunks(X, 5, sparse_nbytes=dense, **kw)  # known: split by size
    assert len(plan.row_chunks) == 200
    plan = plan_chunks(X, 5, sparse_nbytes=stored, **kw)
    assert plan.row_chunks == (5_000,) * 4


def test_panels_grow_at_scale_within_the_budget():
    """10 TB in stored 64 MiB chunks: the default plan merges whole chunks until an iteration
    has at most MAX_PANELS panels (the scheduler's cost is per panel) or a panel one stored
    chunk larger would not fit a task; a panel size asked for is kept."""
    from dnmf.plan import MAX_PANEL_BYTES, MAX_PANELS

    rows = (64 * 2**20) // 4000
    X = da.empty((2_500_000_000, 1000), chunks=(rows, 1000), dtype=np.float32)
    kw = dict(memory_per_worker=64 * 10**9, n_workers=100, threads_per_worker=8,
              persist_x=False)
    plan = plan_chunks(X, 20, **kw)
    budget = 64 * 10**9 * 0.25 / 8
    assert plan.task_bytes <= budget
    assert plan.n_panels <= MAX_PANELS or task_memory(max(plan.row_chunks) + rows, 1000, 20,
                                                      4) > budget
    assert plan.n_panels < X.numblocks[0] / 10
    assert set(np.cumsum(plan.row_chunks)) <= set(np.cumsum(X.chunks[0]))
    kept = plan_chunks(X, 20, max_panel_bytes=MAX_PANEL_BYTES, **kw)
    assert kept.n_panels == X.numblocks[0]


def test_wide_panels_grow_until_partials_are_an_eighth_of_them():
    """n = 100,000, k = 100: a 64 MiB stored panel (167 rows) makes 80 MB of k x n float64
    partial sums; the plan merges to panels of at least 64 k / 4 = 1,600 rows."""
    X = da.empty((250_000, 100_000), chunks=(167, 100_000), dtype=np.float32)
    plan = plan_chunks(X, 100, memory_per_worker=64 * 10**9, threads_per_worker=8,
                       persist_x=False)
    assert min(plan.row_chunks[:-1]) >= 1600
    assert plan.task_bytes <= 64 * 10**9 * 0.25 / 8
