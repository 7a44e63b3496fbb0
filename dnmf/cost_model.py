"""The cost model of one row-panel iteration: seconds (by term) and memory per worker.

One iteration of the row-panel scheme (see :mod:`dnmf.graph`) costs, with ``P`` panels of
``r`` rows on ``p`` workers of ``t`` threads (``s = p t`` slots):

* **read** — what of reading X is not hidden behind the compute. Each worker waits for its
  ``⌈P / p⌉`` panels from storage at the stated disk bandwidth (``read_wait``); each task also
  spends CPU bringing its panel into memory (the page-cache copy, the decoding) at the
  ``memory`` bandwidth per thread (``read_cpu``, ``⌈P / s⌉`` waves). A read waiting on a
  device overlaps the other tasks' compute (and ``MADV_WILLNEED`` reads a chunk ahead), a
  copy by the same cores does not: read = ``max(read_cpu, read_wait - compute)``, so an
  iteration costs about ``max(read_wait, compute + read_cpu)``. For X in the page cache the
  read is all CPU: read by a copy (a codec, zarr-python), ``memory`` is the copy's rate; read
  by dnmf's raw reader, which maps a cached chunk without copying it, ``memory`` is the
  mapping's rate (``benchmarks.cost_terms`` measures it: the kernel on a freshly mapped chunk
  less the kernel on the same values in memory, :data:`MAPPED_BANDWIDTH`). 0 when X is persisted in
  worker memory; W's rows, when W is streamed through a scratch store, are read and written
  besides;
* **compute** — ``⌈P / s⌉`` waves of one panel task (:func:`dnmf.kernels.panel_step`, one
  thread): ``a·4rnk + b·r k² σ + c·rn + d`` s for hals, σ the W sweeps
  (:func:`dnmf.kernels.w_inner_sweeps`); for mu ``b·r k² σ`` becomes ``m·r k²`` (one
  product W·HHᵀ and the element-wise ratio instead of the sweeps); ``d`` the worker's own
  cost per task;
* **scheduling** — what Dask costs around the tasks, serial on the scheduler and the driver:
  a fixed ``c0`` per iteration plus ``c1`` per panel (its task, the two getitems, its share of
  the reduction, the graph built and shipped by the driver);
* **network / reduction** — the k x n float64 partial sums summed ``f`` at a time over
  ``⌈log_f P⌉`` levels (each: a latency, ``f`` partials received over the network and added),
  or, when longer, all the partials' bytes over the ``p`` links; H sent to the workers (a
  broadcast tree: ``⌈log₂(p + 1)⌉`` rounds) and the final sum gathered by the driver;
* **H update** — :func:`dnmf.kernels.update_h` and the loss: O(k² n), on the driver, where it
  does not shrink with workers; for a wide X (WᵀX of :data:`dnmf.plan.H_ON_WORKERS_BYTES` or
  more) on the workers instead, ``B`` column blocks at once (:func:`dnmf.plan.h_column_blocks`),
  each its share.

The coefficients (:data:`CALIBRATED`) are fitted by ``python -m benchmarks.cost_terms`` to
terms measured on one machine (see their ``provenance``); re-running it after a kernel change
refits them. Bandwidths are inputs: the model cannot know the cluster's disks and network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from dnmf import kernels
from dnmf.errors import InputError
from dnmf.plan import ChunkPlan, h_column_blocks, task_memory

__all__ = ["CALIBRATED", "COPY_BANDWIDTH", "MAPPED_BANDWIDTH", "SOLVERS", "Bandwidths",
           "Coefficients", "Prediction", "predict", "predict_plan", "read_bandwidths"]

GB = 1e9


@dataclass(frozen=True)
class Coefficients:
    """Fitted constants of :func:`predict` (seconds per unit).

    Attributes
    ----------
    gemm_s : float
        Per flop of the panel's two skinny products (``4 r n k`` flops), one thread.
    sweep_s : float
        Per ``r k² σ`` of W's HALS sweeps.
    mu_s : float
        Per ``r k²`` of the multiplicative W update (its ``W HHᵀ`` and the element-wise ratio),
        which takes the sweeps' place for ``solver="mu"``.
    pass_s : float
        Per element ``r n`` of the panel (element-wise passes, copies).
    task_s : float
        A worker's own cost per panel beyond the arithmetic (Dask's task handling, the
        getitems, its share of the reduction tasks, the kernel's Python overhead).
    iteration_s : float
        Fixed scheduling seconds per iteration (graph submission, round trips to the
        scheduler, the driver's bookkeeping).
    panel_s : float
        Scheduling seconds per panel per iteration (serial at the scheduler and driver).
    graph_s : float
        The part of ``panel_s`` that is the driver building the iteration graph (reported,
        included in ``panel_s``).
    level_s : float
        Latency of one level of the tree reduction.
    add_s_per_byte : float
        Adding partial sums (per byte of a partial).
    driver_s : float
        Per ``k² n`` of the driver's H update and loss.
    driver_kn_s : float
        Per ``k n`` of the same (element-wise work on H).
    provenance : str
    """

    gemm_s: float
    sweep_s: float
    pass_s: float
    iteration_s: float
    panel_s: float
    graph_s: float
    level_s: float
    add_s_per_byte: float
    driver_s: float
    driver_kn_s: float
    task_s: float = 0.0
    mu_s: float = 0.0
    provenance: str = ""


#: Fitted by ``python -m benchmarks.cost_terms --quick`` (``benchmarks/results/cost-terms-quick``)
#: on the development machine (AMD EPYC with AVX-512, OpenBLAS SkylakeX kernels, 2 cores,
#: nothing else running): compute from :func:`dnmf.kernels.panel_step` (hals and mu) on
#: panels of 64 MiB, one BLAS thread in each of 2 LocalCluster workers at once (best of 2);
#: scheduling from the driver's and the LocalCluster scheduler's CPU seconds (the serial part,
#: what a dedicated scheduler node pays) over 3 - 10^4 panels; ``task_s`` from the workers' CPU
#: seconds in the same runs; the H update from ``kernels.update_h`` + the loss up to k = 100,
#: n = 10^5. In the same session it predicted the 1 and 4 GB hals and mu fits of raw Zarr in
#: the page cache within 6-10% (its own check fits) and 10-16% (``benchmarks.run``'s), low
#: in every case; the read term took the page mapping's rate measured in the same run
#: (16-18 GB/s per thread). Re-run it after a kernel change and paste its coefficients.
CALIBRATED = Coefficients(
    gemm_s=8.973e-12,
    sweep_s=1.812e-10,
    mu_s=1.226e-10,
    pass_s=1.425e-09,
    task_s=0.002643,
    iteration_s=0.01291,
    panel_s=0.001216,
    graph_s=6.109e-06,
    level_s=0.001335,
    add_s_per_byte=7.665e-11,
    driver_s=2.593e-09,
    driver_kn_s=0.0,
    provenance="benchmarks/cost_terms.py --quick, 2026-12-07, AMD EPYC with AVX-512, 2 cores "
               "(idle)",
)


#: The CPU's part of reading a panel that is not mapped (bytes received, a page-cache copy, a
#: decode), per thread, where it is not stated: the second run's 4 GB raw Zarr read from the
#: page cache and summed in float64 by 2 workers of 1 thread in 0.80 s
#: (``benchmarks/results/4gb.md`` then) — one pass over the bytes. A decode costs several
#: passes: zstd level 3 decoded at ~0.45 GB/s per worker thread on the development machine
#: (``results/1gb.md``: 1 GB in 1.10 s more than the raw read, 2 workers); state it.
COPY_BANDWIDTH = 2.5 * GB
#: The CPU's part of reading a panel inside one chunk of an uncompressed local Zarr, which
#: dnmf's raw reader maps without a copy (:class:`dnmf.io.zarr_.RawChunks`): its page faults,
#: 3.8-4.1 ms per 67 MB chunk on the development machine (``benchmarks.cost_terms``' mapping
#: term, 16-18 GB/s per thread).
MAPPED_BANDWIDTH = 16 * GB


@dataclass(frozen=True)
class Bandwidths:
    """The cluster's stated bandwidths, bytes per second per worker.

    ``disk``: what one worker reads X at (storage and decoding); ``network``: one worker's
    link (partial sums and H); ``memory``: what one thread brings a panel into memory at with
    its own CPU — the part of a read that cannot overlap the compute. None (the default):
    as the reader reads (:func:`read_bandwidths`, which the dry run calls with what it knows
    of X) — :data:`MAPPED_BANDWIDTH` for panels inside single chunks of an uncompressed local
    Zarr (mapped, not copied), :data:`COPY_BANDWIDTH` otherwise. For a compressed X in the
    page cache state its decode rate. Defaults: 0.5 GB/s and 1.25 GB/s (10 Gbit/s).
    """

    disk: float = 0.5 * GB
    network: float = 1.25 * GB
    memory: float | None = None

    def __post_init__(self) -> None:
        for name in ("disk", "network", "memory"):
            value = getattr(self, name)
            if name == "memory" and value is None:
                continue
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"the {name} bandwidth must be a positive number, not "
                                 f"{value / GB:g} GB/s — give --{name}-bandwidth in GB/s "
                                 f"(e.g. 0.5), or Bandwidths({name}=...) in bytes per second")


@dataclass(frozen=True)
class Prediction:
    """Seconds of one iteration by term, and memory per worker (bytes)."""

    read_s: float
    compute_s: float
    scheduling_s: float
    network_s: float
    driver_s: float
    memory_per_worker: int
    n_panels: int
    panel_rows: int
    tasks_per_iteration: int
    split_every: int
    bytes_sent: int
    notes: tuple[str, ...] = field(default=())

    @property
    def total_s(self) -> float:
        return self.read_s + self.compute_s + self.scheduling_s + self.network_s + self.driver_s

    def shares(self) -> dict[str, float]:
        """Each term's share of :attr:`total_s`."""
        total = self.total_s or 1.0
        return {name: getattr(self, f"{name}_s") / total
                for name in ("read", "compute", "scheduling", "network", "driver")}

    def describe(self) -> list[str]:
        """Human-readable lines (``dnmf fit --dry-run``)."""
        share = self.shares()
        terms = ", ".join(f"{name} {getattr(self, f'{name}_s'):,.3g} s ({100 * share[name]:.0f}%)"
                          for name in ("read", "compute", "scheduling", "network", "driver"))
        return [
            f"predicted: {self.total_s:,.3g} s per iteration ({terms})",
            f"predicted: {self.tasks_per_iteration:,} tasks and "
            f"{self.bytes_sent / 1e6:,.1f} MB sent between processes per iteration; "
            f"{self.memory_per_worker / 2**20:,.0f} MiB peak per worker",
            *[f"predicted: {n}" for n in self.notes],
        ]

    def as_dict(self) -> dict:
        return {"seconds_per_iteration": self.total_s,
                **{f"{k}_s": getattr(self, f"{k}_s")
                   for k in ("read", "compute", "scheduling", "network", "driver")},
                "memory_per_worker": self.memory_per_worker, "n_panels": self.n_panels,
                "panel_rows": self.panel_rows, "tasks_per_iteration": self.tasks_per_iteration,
                "split_every": self.split_every, "bytes_sent": self.bytes_sent,
                "notes": list(self.notes)}


#: The solvers the model covers: those whose panel task is :func:`dnmf.kernels.panel_step`.
SOLVERS = ("hals", "mu")


def panel_seconds(rows: int, n_features: int, k: int,
                  coefficients: Coefficients = CALIBRATED, solver: str = "hals") -> float:
    """Seconds of one panel task on one thread (:func:`dnmf.kernels.panel_step`)."""
    c = coefficients
    if solver == "mu":
        w_update = c.mu_s * rows * k * k
    elif solver == "hals":
        w_update = c.sweep_s * rows * k * k * kernels.w_inner_sweeps(k, n_features)
    else:
        raise ValueError(f"the cost model covers the solvers {SOLVERS}, not {solver!r}")
    return c.gemm_s * 4 * rows * n_features * k + w_update + c.pass_s * rows * n_features


def driver_seconds(k: int, n_features: int, coefficients: Coefficients = CALIBRATED) -> float:
    """Seconds of the driver's H update and loss (O(k² n), one process)."""
    return coefficients.driver_s * k * k * n_features + coefficients.driver_kn_s * k * n_features


def reduction_levels(n_panels: int, split_every: int) -> int:
    """Levels of the fixed-order tree of :func:`dnmf.graph.tree_reduce_layer` (at least 1)."""
    levels, n = 1, -(-n_panels // split_every)
    while n > 1:
        n, levels = -(-n // split_every), levels + 1
    return levels


def tasks_per_iteration(n_panels: int, split_every: int) -> int:
    """Tasks of one iteration's graph: per panel its task and two getitems (W rows and
    partials), the reduction's tasks, the two constants (H, H Hᵀ)."""
    reduce_tasks, n = 0, n_panels
    while True:
        n = -(-n // split_every)
        reduce_tasks += n
        if n == 1:
            break
    return 3 * n_panels + reduce_tasks + 2


def predict(
    n_samples: int,
    n_features: int,
    k: int,
    *,
    itemsize: int = 4,
    panel_rows: int,
    workers: int,
    threads: int = 1,
    bandwidths: Bandwidths = Bandwidths(),  # noqa: B008 - frozen, never mutated
    persist_x: bool = False,
    w_in_store: bool = False,
    split_every: int = 8,
    memory_per_worker: int | None = None,
    coefficients: Coefficients = CALIBRATED,
    h_on_workers: bool | None = None,
    solver: str = "hals",
) -> Prediction:
    """Predict one hals/mu iteration of the row-panel scheme.

    Parameters
    ----------
    n_samples, n_features, k : int
    itemsize : int
        X's bytes per value (4: float32).
    panel_rows : int
        Rows per panel (the plan's ``max(row_chunks)``).
    workers, threads : int
        Dask workers and threads per worker.
    bandwidths : Bandwidths
        Bytes/s: disk (one worker's read of X) and network per worker, and memory per
        thread (the CPU's own part of a read, which does not overlap the compute).
    persist_x : bool
        X held in worker memory: no read term.
    w_in_store : bool
        W streamed through a scratch store (the plan's ``w_in_store``): its rows are read and
        written every iteration at the disk bandwidth instead of held in memory.
    split_every : int
        Fan-in of the tree reduction.
    memory_per_worker : int, optional
        Only for the notes: a warning when the prediction exceeds it.
    coefficients : Coefficients
    h_on_workers : bool, optional
        H updated on the workers by column blocks; default as dnmf decides
        (:func:`dnmf.plan.h_column_blocks`), False for the driver's update.
    solver : {"hals", "mu"}
        The W update in the panel task (the H update is costed as hals's for both).

    Returns
    -------
    Prediction
    """
    c = coefficients
    rows = max(1, min(panel_rows, n_samples))
    P = -(-n_samples // rows)
    slots = max(1, workers * threads)
    panel_bytes = rows * n_features * itemsize
    per_worker_panels = -(-P // max(workers, 1))
    waves = -(-P // slots)
    compute = waves * (panel_seconds(rows, n_features, k, c, solver) + c.task_s)
    read = 0.0
    if not persist_x:
        read_wait = per_worker_panels * panel_bytes / bandwidths.disk
        # a memory bandwidth left to the reader, which predict cannot see: a copy's
        read_cpu = waves * panel_bytes / read_bandwidths(bandwidths, mapped=False).memory
        # the device's wait overlaps the compute, the CPU's copy does not
        read = max(read_cpu, read_wait - compute)
    w_rows_bytes = -(-n_samples // max(workers, 1)) * k * itemsize
    if w_in_store:
        read += 2 * w_rows_bytes / bandwidths.disk  # read the old W, write the new
    tasks = tasks_per_iteration(P, split_every)
    scheduling = c.iteration_s + c.panel_s * P
    partial = (k * n_features + k * k) * 8
    h_bytes = k * n_features * itemsize + k * k * 8
    levels = reduction_levels(P, split_every)
    fan = min(split_every, P)
    per_level = c.level_s + fan * partial * (c.add_s_per_byte + 1 / bandwidths.network)
    broadcast = math.ceil(math.log2(workers + 1)) * h_bytes / bandwidths.network
    # bytes crossing processes: the partials made elsewhere than their combiner, H to each
    # worker, the driver's two transfers
    reduce_tasks = tasks - 3 * P - 2
    sent = int((P + reduce_tasks - 1) * partial * (1 - 1 / max(workers, 1))
               + workers * h_bytes + partial + h_bytes)
    # the reduction costs its critical path (levels of f partials received and added) or the
    # partials' bytes over all links, whichever is longer; then H out, the final sum back
    network = (max(levels * per_level, sent / (max(workers, 1) * bandwidths.network))
               + broadcast + (partial + h_bytes) / bandwidths.network)
    h_blocks = len(h_column_blocks(k, n_features, slots)) if h_on_workers in (None, True) else 1
    # on the workers, B blocks at once (one wave: B <= slots); their tasks: a column piece of
    # each of the reduction's top partials, and the update
    driver = driver_seconds(k, n_features, c) / h_blocks
    if h_blocks > 1:
        tasks += h_blocks * (min(split_every, P) + 1) - 1
    x_share = -(-n_samples // max(workers, 1)) * n_features * itemsize if persist_x else 0
    w_share = 0 if w_in_store else 2 * w_rows_bytes  # old and new W
    memory = (threads * task_memory(rows, n_features, k, itemsize) + x_share + w_share
              + (fan + 1) * partial + 2 * h_bytes)
    notes = []
    if P > 10 * slots and scheduling > compute + read:
        notes.append(f"scheduling dominates: {P:,} panels for {slots:,} worker threads — "
                     "larger panels (--max-panel-bytes) cut it")
    if driver > 0.25 * (compute + read):
        notes.append("the driver's O(k² n) H update is a large share and does not shrink "
                     "with workers" if h_blocks == 1 else
                     f"the O(k² n) H update, on {h_blocks} workers' threads, is a large share")
    if memory_per_worker is not None and memory > memory_per_worker:
        notes.append(f"predicted worker memory {memory / 2**30:,.1f} GiB exceeds the "
                     f"{memory_per_worker / 2**30:,.1f} GiB limit")
    return Prediction(read_s=read, compute_s=compute, scheduling_s=scheduling,
                      network_s=network, driver_s=driver, memory_per_worker=int(memory),
                      n_panels=P, panel_rows=rows, tasks_per_iteration=tasks,
                      split_every=split_every, bytes_sent=sent, notes=tuple(notes))


def predict_plan(plan: ChunkPlan, *, workers: int, threads: int,
                 bandwidths: Bandwidths = Bandwidths(),  # noqa: B008
                 split_every: int = 8,
                 coefficients: Coefficients = CALIBRATED,
                 h_on_workers: bool | None = None,
                 solver: str = "hals") -> Prediction | None:
    """:func:`predict` for a chunk plan (row panels, dense X); None for the 2-D block scheme
    and sparse X, which the model does not cover. A memory bandwidth left to the reader is
    taken as a copy's; :func:`read_bandwidths` sets it from X's reader first (the dry run
    does, with :func:`dnmf.pipeline.panels_are_mapped`)."""
    if plan.is_2d or plan.sparse:
        return None
    n_samples, n_features = plan.shape
    return predict(n_samples, n_features, plan.rank, itemsize=plan.itemsize,
                   panel_rows=max(plan.row_chunks), workers=workers, threads=threads,
                   bandwidths=bandwidths, persist_x=plan.persist_x,
                   w_in_store=plan.w_in_store, split_every=split_every,
                   memory_per_worker=plan.memory_per_worker, coefficients=coefficients,
                   h_on_workers=h_on_workers, solver=solver)


def read_bandwidths(bandwidths: Bandwidths, *, mapped: bool) -> Bandwidths:
    """``bandwidths`` with the memory bandwidth the reader gives where it was left to it:
    :data:`MAPPED_BANDWIDTH` for panels mapped from their chunk files, else
    :data:`COPY_BANDWIDTH`. A stated one is kept."""
    if bandwidths.memory is not None:
        return bandwidths
    return replace(bandwidths, memory=MAPPED_BANDWIDTH if mapped else COPY_BANDWIDTH)
