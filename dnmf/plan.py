"""The chunk plan: how X is cut into row panels, and whether it stays in worker memory.

The row-panel scheme needs every chunk of X to hold all columns of a block of rows. The plan
keeps the stored chunks when they serve, merges column tiles or splits over-tall chunks
otherwise (a rechunk that still reads each stored chunk once per iteration), and says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import dask.array as da
import numpy as np

from dnmf.errors import InputError
from dnmf.limits import check_task_count

#: Fraction of a worker's memory the plan lets one task use (the rest: other tasks, Dask).
TASK_MEMORY_FRACTION = 0.25
#: Largest row panel the plan builds by default; larger panels gain nothing in throughput.
MAX_PANEL_BYTES = 128 * 2**20
#: Stored row panels smaller than this are merged (fewer tasks per iteration).
MIN_PANEL_BYTES = 2 * 2**20
#: At scale, panels grow past :data:`MAX_PANEL_BYTES` (within the memory budget) so that an
#: iteration has at most this many: the scheduler's and driver's cost is serial, 3.3 ms of CPU
#: per panel measured (``benchmarks/cost_terms.py``; ~27 s per iteration at this many), and
#: does not shrink with workers.
MAX_PANELS = 8192
#: Panels grow (within the memory budget) to at least this many rows per column of W per
#: byte of X's dtype: a panel's k x n float64 partial sums, which the reduction moves and
#: adds, then weigh at most 1/8 of the panel itself (``8 k / (rows * itemsize) <= 1/8``).
PARTIAL_ROWS_PER_RANK = 64
#: ``persist_x="auto"`` keeps X in worker memory when it takes at most this share of it.
PERSIST_FRACTION = 0.4
#: ``persist_w="auto"`` keeps W in worker memory when it takes at most this share of it (an
#: iteration holds the old and the new W); otherwise W is streamed through a Zarr store.
W_PERSIST_FRACTION = 0.2
W_IN_STORE = "streamed to and from a Zarr scratch store every iteration (too large for the " \
             "workers' memory)"


@dataclass(frozen=True)
class ChunkPlan:
    """The row-panel layout of one fit.

    Attributes
    ----------
    scheme : "row-panel"
    row_chunks : tuple of int
        Rows of each panel.
    rechunk : str or None
        What the plan changed in the stored layout, and why; None when it kept it.
    persist_x : bool
        X is read once and kept in worker memory (zero store reads per iteration).
    reads_per_iteration : int
        Chunks of X read from storage per iteration.
    task_bytes : int
        Estimated peak memory of one panel task.
    memory_per_worker : int
    w_location : str
    """

    scheme: str
    shape: tuple[int, int]
    rank: int
    itemsize: int
    row_chunks: tuple[int, ...]
    stored_chunks: tuple[tuple[int, ...], tuple[int, ...]]
    rechunk: str | None
    persist_x: bool
    reads_per_iteration: int
    task_bytes: int
    memory_per_worker: int
    w_location: str
    col_chunks: tuple[int, ...] = ()
    w_in_store: bool = False
    sparse: bool = False

    @property
    def is_2d(self) -> bool:
        return self.scheme == "block-2d"

    @property
    def n_panels(self) -> int:
        return len(self.row_chunks)

    @property
    def panel_bytes(self) -> int:
        return max(self.row_chunks) * max(self.col_chunks or (self.shape[1],)) * self.itemsize

    def describe(self) -> list[str]:
        """Human-readable lines, for ``--dry-run`` and the log."""
        mib = 2**20
        if self.is_2d:
            head = (
                f"scheme: block-2d (X too wide for full-width row panels), "
                f"{self.n_panels} x {len(self.col_chunks)} blocks of up to "
                f"{max(self.row_chunks):,} x {max(self.col_chunks):,} "
                f"({self.panel_bytes / mib:,.1f} MiB); H stays chunked on the workers"
            )
        elif self.sparse:
            head = (
                f"scheme: {self.scheme}, {self.n_panels} CSR panel(s) of up to "
                f"{max(self.row_chunks):,} rows x {self.shape[1]:,} columns (sparse, never "
                "densified)"
            )
        else:
            head = (
                f"scheme: {self.scheme}, {self.n_panels} panel(s) of up to "
                f"{max(self.row_chunks):,} rows x {self.shape[1]:,} columns "
                f"({self.panel_bytes / mib:,.1f} MiB)"
            )
        lines = [
            head,
            "stored chunks kept" if self.rechunk is None else f"rechunk: {self.rechunk}",
            (
                "X persisted in worker memory: 0 reads of storage per iteration"
                if self.persist_x
                else f"reads per iteration: {self.reads_per_iteration} chunk(s), each "
                + ("twice (two passes)" if self.is_2d else "once")
            ),
            f"estimated memory per task: {self.task_bytes / mib:,.1f} MiB "
            f"(worker budget {self.memory_per_worker / mib:,.0f} MiB)",
            f"W ({self.shape[0]:,} x {self.rank}): {self.w_location}",
        ]
        return lines

    def as_dict(self) -> dict:
        return {
            "scheme": self.scheme,
            "n_panels": self.n_panels,
            "max_panel_rows": max(self.row_chunks),
            "n_column_blocks": len(self.col_chunks) or 1,
            "rechunk": self.rechunk,
            "persist_x": self.persist_x,
            "reads_per_iteration": self.reads_per_iteration,
            "task_bytes": self.task_bytes,
            "w_in_store": self.w_in_store,
        }


def _should_persist(X: da.Array, persist_x: bool | str, x_in_memory: bool,
                    total_memory: int) -> bool:
    """``persist_x="auto"``: X from storage that takes at most PERSIST_FRACTION of the workers'
    memory stays there; in-memory X has nothing to persist."""
    if persist_x == "auto":
        return not x_in_memory and X.nbytes <= PERSIST_FRACTION * total_memory
    return bool(persist_x)


#: WᵀX (k x n float64) of at least this many bytes: H is updated on the workers, a block of
#: its columns per task, instead of on the driver, whose O(k² n) update and the k x n transfer
#: would not shrink with the cluster (``DNMF_H_ON_WORKERS_BYTES`` overrides it).
H_ON_WORKERS_BYTES = 32 * 2**20


def h_column_blocks(k: int, n_features: int, slots: int, *,
                    limit: int = H_ON_WORKERS_BYTES) -> list[slice]:
    """Column blocks of H updated on the workers (:func:`dnmf.graph.iteration_graph`'s
    ``h_update``): one block (the driver updates H) when WᵀX (k x n float64) is under
    ``limit``; else one block per worker thread (``slots``), none narrower than
    :data:`H_BLOCK_COLUMNS` columns (at least two blocks)."""
    if k * n_features * 8 < limit or slots < 2:
        return [slice(0, n_features)]
    n_blocks = max(2, min(slots, n_features // H_BLOCK_COLUMNS, n_features))
    n_blocks = min(n_blocks, n_features)
    edges = np.linspace(0, n_features, n_blocks + 1).astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


#: The narrowest block of H's columns updated on a worker: narrower, its task costs more in
#: scheduling than its O(k² n) update saves.
H_BLOCK_COLUMNS = 2048


def task_memory(rows: int, n: int, k: int, itemsize: int) -> int:
    """Peak bytes of one panel task: X_i (and a decoded copy), W_i products, k x n partials."""
    return 2 * rows * n * itemsize + 4 * rows * k * itemsize + 3 * k * n * 8


def _split_rows(total: int, target: int) -> tuple[int, ...]:
    target = max(1, min(target, total))
    n, rem = divmod(total, target)
    # before the tuple is built: a declared 10^12 rows would exhaust memory here
    check_task_count(n + bool(rem), f"X's {total:,} rows in panels of {target:,}")
    return (target,) * n + ((rem,) if rem else ())


def _merge_rows(chunks: tuple[int, ...], target: int) -> tuple[int, ...]:
    """Merge consecutive stored row chunks up to ``target`` rows (no stored chunk is split)."""
    out: list[int] = []
    acc = 0
    for c in chunks:
        if acc and acc + c > target:
            out.append(acc)
            acc = 0
        acc += c
    if acc:
        out.append(acc)
    return tuple(out)


def plan_chunks(X: da.Array, rank: int, *, persist_w: bool | str = "auto",
                **kwargs: object) -> ChunkPlan:
    """Choose the row panels of X for rank ``rank`` within a memory budget.

    See :func:`_plan_chunks` for the parameters; ``persist_w`` decides where W lives between
    iterations (row panels only): True keeps it in worker memory, False streams it through a
    Zarr scratch store, ``"auto"`` keeps it in memory when it takes at most
    :data:`W_PERSIST_FRACTION` of the workers' memory.
    """
    plan = _plan_chunks(X, rank, **kwargs)  # type: ignore[arg-type]
    if plan.is_2d:
        return plan
    w_bytes = X.shape[0] * rank * np.dtype(X.dtype).itemsize
    n_workers = int(kwargs.get("n_workers") or 1)  # type: ignore[call-overload]
    total = plan.memory_per_worker * max(n_workers, 1)
    in_store = (w_bytes > W_PERSIST_FRACTION * total) if persist_w == "auto" else not persist_w
    if not in_store:
        return plan
    return dataclasses.replace(plan, w_in_store=True, w_location=W_IN_STORE)


def _plan_chunks(
    X: da.Array,
    rank: int,
    *,
    memory_per_worker: int,
    n_workers: int = 1,
    threads_per_worker: int = 1,
    persist_x: bool | str = "auto",
    x_in_memory: bool = False,
    max_panel_bytes: int | None = None,
    min_panel_bytes: int | None = None,
    min_panels: int = 1,
    stored_rows: int | None = None,
    scheme: str = "auto",
    sparse_nbytes: int | None = None,
    sparse_bytes_known: bool = True,
) -> ChunkPlan:
    """Choose the row panels of X for rank ``rank`` within a memory budget.

    Parameters
    ----------
    X : dask array of shape (n_samples, n_features)
    rank : int
    memory_per_worker : int
        Bytes per worker; a task may use :data:`TASK_MEMORY_FRACTION` of it per thread.
    n_workers, threads_per_worker : int
    persist_x : bool or "auto"
        Keep X in worker memory between iterations. ``"auto"``: when X is backed by storage and
        takes at most :data:`PERSIST_FRACTION` of the workers' total memory.
    x_in_memory : bool
        X already lives in memory (a numpy array wrapped by dask): nothing to persist.
    max_panel_bytes : int, optional
        Cap on a panel's size (default :data:`MAX_PANEL_BYTES`).
    min_panel_bytes : int, optional
        Stored row panels below this size are merged (default :data:`MIN_PANEL_BYTES`; 0 keeps
        the stored row chunks however small).
    min_panels : int
        Split X into at least this many panels when it has fewer (so every worker thread of a
        cluster has work), cutting only at multiples of ``stored_rows``.
    stored_rows : int, optional
        Rows of the storage's own chunks; panels are whole multiples of it.
    scheme : {"auto", "row-panel", "block-2d"}
        ``auto`` uses full-width row panels (one read of X per iteration) and falls back to
        2-D blocks (two reads) only when one full-width row does not fit a task.
    sparse_nbytes : int, optional
        X's blocks are ``scipy.sparse`` CSR matrices holding this many bytes in all: the row
        panels of the opened store (balanced by non-zeros) are kept, see :func:`_plan_sparse`.
    sparse_bytes_known : bool
        False when ``sparse_nbytes`` is only an upper bound (a dask array of CSR blocks, whose
        non-zeros are not counted: its dense size): the panels are not split by size then.

    Raises
    ------
    InputError
        When not even a single-row panel fits the budget.
    """
    n_samples, n_features = X.shape
    itemsize = np.dtype(X.dtype).itemsize
    budget = int(memory_per_worker * TASK_MEMORY_FRACTION / max(threads_per_worker, 1))
    if sparse_nbytes is not None:
        return _plan_sparse(X, rank, nbytes=sparse_nbytes, budget=budget, persist_x=persist_x,
                            x_in_memory=x_in_memory, n_workers=n_workers,
                            memory_per_worker=memory_per_worker, min_panels=min_panels,
                            split_by_size=sparse_bytes_known)
    cap = max_panel_bytes or MAX_PANEL_BYTES
    floor = MIN_PANEL_BYTES if min_panel_bytes is None else min_panel_bytes
    row_bytes = n_features * itemsize
    fixed = task_memory(0, n_features, rank, itemsize)
    per_row = task_memory(1, n_features, rank, itemsize) - fixed
    max_rows_budget = (budget - fixed) // per_row if budget > fixed else 0
    if scheme not in ("auto", "row-panel", "block-2d"):
        raise InputError(f"unknown scheme {scheme!r}: choose auto, row-panel or block-2d")
    if scheme == "block-2d" or (scheme == "auto" and max_rows_budget < 1):
        return _plan_2d(X, rank, budget=budget, cap=cap, persist_x=persist_x,
                        x_in_memory=x_in_memory, n_workers=n_workers,
                        memory_per_worker=memory_per_worker)
    if max_rows_budget < 1:
        raise InputError(
            f"one row panel of X ({n_features:,} columns, k={rank}) needs "
            f"{task_memory(1, n_features, rank, itemsize) / 2**20:,.0f} MiB, more than the "
            f"{budget / 2**20:,.0f} MiB a task may use — raise --memory-limit, lower k, or "
            "use the 2-D block scheme (scheme='block-2d')"
        )
    target_rows = int(max(1, min(max_rows_budget, cap // max(row_bytes, 1))))
    # at scale (by default only: panel sizes asked for are kept): rows enough that the tasks
    # per iteration and the partial sums do not outgrow X (MAX_PANELS, PARTIAL_ROWS_PER_RANK)
    asked = max_panel_bytes is not None or min_panel_bytes is not None
    grow = 0 if asked else int(min(max_rows_budget, max(
        -(-n_samples // MAX_PANELS), PARTIAL_ROWS_PER_RANK * rank // itemsize)))
    target_rows = max(target_rows, grow)

    x_rows, x_cols = X.chunks
    notes = []
    if len(x_cols) > 1:
        notes.append(f"merge {len(x_cols)} column chunks into full-width row panels")
    small = max(x_rows) * row_bytes < floor
    if max(x_rows) > target_rows:
        rows = _split_rows(n_samples, target_rows)
        notes.append(
            f"split row chunks of up to {max(x_rows):,} rows into panels of "
            f"{target_rows:,} rows (memory budget)"
        )
    elif len(x_rows) > 1 and (small or max(x_rows) < grow):
        # whole stored chunks: small ones up to MIN_PANEL_BYTES, and at scale until each
        # panel has at least ``grow`` rows
        to = max(min(target_rows, floor // row_bytes) if small else 0,
                 grow + max(x_rows) - 1 if max(x_rows) < grow else 0)
        rows = _merge_rows(x_rows, max(1, min(max_rows_budget, to)))
        if rows != x_rows:
            why = "small row chunks" if small else (
                f"row chunks (at most {MAX_PANELS:,} panels per iteration, partial sums at "
                "most 1/8 of a panel)")
            notes.append(f"merge {len(x_rows)} {why} into {len(rows)} panels")
    else:
        rows = x_rows
    if len(rows) < min_panels and n_samples >= 2 * min_panels:
        unit = stored_rows or 1
        per_panel = -(-n_samples // min_panels)  # ceil
        per_panel = -(-per_panel // unit) * unit  # whole stored chunks
        if per_panel < max(rows):
            rows = _split_rows(n_samples, per_panel)
            notes.append(f"split into {len(rows)} panels of {per_panel:,} rows so that every "
                         "worker thread has work")
    rechunk = "; ".join(notes) if notes else None

    persist = _should_persist(X, persist_x, x_in_memory, memory_per_worker * max(n_workers, 1))
    reads = 0 if persist else len(x_rows) * len(x_cols)
    task_bytes = task_memory(max(rows), n_features, rank, itemsize)
    return ChunkPlan(
        scheme="row-panel",
        shape=(n_samples, n_features),
        rank=rank,
        itemsize=itemsize,
        row_chunks=tuple(rows),
        stored_chunks=(tuple(x_rows), tuple(x_cols)),
        rechunk=rechunk,
        persist_x=persist,
        reads_per_iteration=reads,
        task_bytes=task_bytes,
        memory_per_worker=memory_per_worker,
        w_location="persisted in worker memory, chunked like X's rows",
    )


#: Stored bytes (values and column indices) per sparse row panel when X's own panels are fewer.
SPARSE_PANEL_BYTES = 8 * 2**20


def _plan_sparse(X: da.Array, rank: int, *, nbytes: int, budget: int,
                 persist_x: bool | str, x_in_memory: bool, n_workers: int,
                 memory_per_worker: int, min_panels: int,
                 split_by_size: bool = True) -> ChunkPlan:
    """Row panels of a CSR matrix: the opened panels (balanced by non-zeros) are kept, split
    evenly by rows when there are too few for the workers (or, with ``split_by_size``, when
    they hold more than :data:`SPARSE_PANEL_BYTES` each). A panel's task never densifies it:
    it holds the panel's non-zeros, its W rows and k x n float64 partial sums."""
    n_samples, n_features = X.shape
    itemsize = np.dtype(X.dtype).itemsize
    rows = tuple(X.chunks[0])
    note = None
    # scipy's sparse products run on one thread: panels are the parallelism, and ones of
    # about a million non-zeros keep a panel's products in cache (measured 2-5x faster than
    # one panel in-process)
    # (not from a dense upper bound: 16 GB for a 17 M non-zero corpus gave 1,900 panels)
    wanted = max(min_panels, -(-nbytes // SPARSE_PANEL_BYTES) if split_by_size else 1)
    if len(rows) < wanted and n_samples >= 2 * wanted:
        rows = _split_rows(n_samples, -(-n_samples // wanted))
        note = (f"split into {len(rows)} panels so that every worker thread has work and "
                f"each holds at most about {SPARSE_PANEL_BYTES // 2**20} MiB of non-zeros")
    panel_share = nbytes * max(rows) / max(n_samples, 1)
    task_bytes = int(2 * panel_share + 4 * max(rows) * rank * itemsize
                     + 4 * rank * n_features * 8)
    if task_bytes > budget:
        raise InputError(
            f"a sparse row panel task needs about {task_bytes / 2**20:,.0f} MiB (its k x n "
            f"partial sums: k={rank}, {n_features:,} columns), more than the "
            f"{budget / 2**20:,.0f} MiB a task may use — raise --memory-limit or lower k")
    if persist_x == "auto":
        persist = not x_in_memory and nbytes <= PERSIST_FRACTION * memory_per_worker * max(
            n_workers, 1)
    else:
        persist = bool(persist_x)
    return ChunkPlan(
        scheme="row-panel", shape=(n_samples, n_features), rank=rank, itemsize=itemsize,
        row_chunks=rows, stored_chunks=X.chunks, rechunk=note, persist_x=persist,
        reads_per_iteration=0 if persist else len(rows), task_bytes=task_bytes,
        memory_per_worker=memory_per_worker,
        w_location="persisted in worker memory, chunked like X's rows", sparse=True,
    )


def _plan_2d(X: da.Array, rank: int, *, budget: int, cap: int, persist_x: bool | str,
             x_in_memory: bool, n_workers: int, memory_per_worker: int) -> ChunkPlan:
    """Blocks for the 2-D scheme: column blocks whose k x n_j partial sums (a tree reduction
    holds up to SPLIT_EVERY + 2 of them) fit half a task's budget, rows to fill the block."""
    n_samples, n_features = X.shape
    itemsize = np.dtype(X.dtype).itemsize
    if len(X.chunks[1]) > 1 and task_memory_2d(max(X.chunks[0]), max(X.chunks[1]), rank,
                                                itemsize) <= budget:
        rows, cols = X.chunks
        note = None
    else:
        width = max(1, min(n_features, (budget // 2) // (10 * rank * 8)))
        if width >= n_features:
            width = -(-n_features // 2)  # asked for 2-D blocks: at least two column blocks
        height = max(1, min(n_samples, cap // (width * itemsize),
                            (budget // 2) // (2 * width * itemsize + 2 * rank * itemsize)))
        rows, cols = _split_rows(n_samples, height), _split_rows(n_features, width)
        check_task_count(len(rows) * len(cols), f"X in 2-D blocks of {height:,} x {width:,}")
        note = f"2-D blocks of {height:,} x {width:,} (memory budget)"
    persist = _should_persist(X, persist_x, x_in_memory, memory_per_worker * max(n_workers, 1))
    return ChunkPlan(
        scheme="block-2d", shape=(n_samples, n_features), rank=rank, itemsize=itemsize,
        row_chunks=tuple(rows), col_chunks=tuple(cols), stored_chunks=X.chunks, rechunk=note,
        persist_x=persist, reads_per_iteration=0 if persist else 2 * len(rows) * len(cols),
        task_bytes=task_memory_2d(max(rows), max(cols), rank, itemsize),
        memory_per_worker=memory_per_worker,
        w_location="persisted in worker memory, chunked like X's rows",
    )


def task_memory_2d(rows: int, cols: int, k: int, itemsize: int) -> int:
    """Peak bytes of a 2-D block task: the block (and a copy), W_i, and k x n_j partials."""
    return 2 * rows * cols * itemsize + 2 * rows * k * itemsize + 10 * k * cols * 8


def apply_plan(X: da.Array, plan: ChunkPlan) -> da.Array:
    """X rechunked to the plan's blocks (a no-op when the stored chunks serve)."""
    target = (plan.row_chunks, plan.col_chunks or (plan.shape[1],))
    if X.chunks == target:
        return X
    return X.rechunk(target)
