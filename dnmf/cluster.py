"""The scheduler layer: where the Dask graphs run.

``auto`` runs in-process threads when X is small and starts a LocalCluster of worker processes
otherwise (in-process threads for a GPU fit: one process drives the GPU); ``cuda`` starts a
``dask_cuda.LocalCUDACluster`` (one worker per GPU); an address (or ``DASK_SCHEDULER_ADDRESS``)
connects to a running cluster; a ``distributed.Client`` (passed in, or current inside
``with Client(...)``) is used as is. This module knows nothing of NMF.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import dask
import psutil

from dnmf import kernels
from dnmf.errors import InputError

log = logging.getLogger(__name__)

#: Below this many bytes of X, ``scheduler="auto"`` stays in-process (threads).
AUTO_THREADS_MAX_BYTES = 1 << 30

SCHEDULER_NAMES = ("auto", "threads", "sync", "local", "cuda")
#: A Dask worker process needs about this much memory before it runs any task (Python, numpy,
#: dask and distributed imported, its own bookkeeping): the floor of ``--memory-limit``.
WORKER_BASE_MEMORY = 256 * 2**20
#: Seconds to wait for the first worker of a cluster started or reached here;
#: ``DNMF_WAIT_TIMEOUT`` overrides it (seconds).
WAIT_FOR_WORKERS_S = 60.0
#: Where the dashboard of a cluster started here listens: this host only, any free port (a
#: dashboard on every interface would show the run to the whole network).
DASHBOARD_ADDRESS = "127.0.0.1:0"
#: Dask config keys (set by the CLI's --wait-for-workers, --wait-timeout, --dashboard-address).
WAIT_WORKERS_KEY, WAIT_TIMEOUT_KEY, DASHBOARD_KEY = (
    "dnmf.wait-for-workers", "dnmf.wait-timeout", "dnmf.dashboard-address")
#: Called with the context of every cluster started or reached here (the CLI prints the link).
_ON_CLUSTER: ContextVar[Callable[[ExecutionContext], None] | None] = ContextVar(
    "dnmf_on_cluster", default=None)


def _threads_get() -> Any:
    return threads_or_here


#: A graph of at most this many tasks runs in the calling thread under the "threads"
#: scheduler: the thread pool's hand-offs (~1 ms each on a loaded machine) cost more than
#: such a graph (a small in-memory fit's setup computes several).
HERE_MAX_TASKS = 8


def threads_or_here(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    """dask's threaded ``get``, or its synchronous one for a graph of at most
    :data:`HERE_MAX_TASKS` tasks (the same tasks, so the same results)."""
    import dask.local
    import dask.threaded

    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()  # what either get does first: once, not twice
    if len(dsk) <= HERE_MAX_TASKS:
        kwargs.pop("num_workers", None)
        kwargs.pop("pool", None)
        return dask.local.get_sync(dsk, keys, **kwargs)
    return dask.threaded.get(dsk, keys, **kwargs)


def _sync_get() -> Any:
    import dask.local

    return dask.local.get_sync


_IN_PROCESS_GET = {"threads": _threads_get, "sync": _sync_get}


@dataclass
class ExecutionContext:
    """Where computations run, and how to persist/compute collections there.

    Attributes
    ----------
    kind : "threads" | "sync" | "local" | "cuda" | "address" | "client"
    client : distributed.Client or None
    n_workers, threads_per_worker : int
    memory_per_worker : int
        Bytes a worker may use (the machine's memory for in-process schedulers).
    dashboard_link : str or None
    """

    kind: str
    client: Any = None
    n_workers: int = 1
    threads_per_worker: int = 1
    memory_per_worker: int = 0
    dashboard_link: str | None = None
    #: The plan's estimated peak memory of one task, once planned (for KilledWorker's message).
    task_bytes: int | None = None

    @property
    def scheduler(self) -> Any:
        """The value for ``dask.compute(..., scheduler=...)``.

        In-process, dask's own ``get`` function rather than its name: dask resolves a name by
        importing ``distributed`` to look for a client (~13 MB and a second of imports).
        """
        if self.client is not None:
            return self.client
        get = _IN_PROCESS_GET.get(self.kind)
        return get() if get is not None else self.kind

    @property
    def total_memory(self) -> int:
        return self.memory_per_worker * self.n_workers

    @property
    def is_distributed(self) -> bool:
        return self.client is not None

    @property
    def remote_client(self) -> Any:
        """The client of workers that may run on other hosts (a cluster reached or passed
        in), which may not see this process's files; None in-process and for the clusters
        started here."""
        return None if self.kind in ("local", "cuda") else self.client

    def describe(self) -> str:
        where = {
            "threads": "in-process threads",
            "sync": "in-process, single thread",
            "local": "LocalCluster",
            "cuda": "LocalCUDACluster",
            "address": "cluster",
            "client": "existing Client",
        }[self.kind]
        text = (
            f"{where}: {self.n_workers} worker(s) x {self.threads_per_worker} thread(s), "
            f"{self.memory_per_worker / 2**30:.1f} GiB per worker"
        )
        if self.dashboard_link:
            text += f", dashboard {self.dashboard_text()}"
        return text

    def dashboard_text(self) -> str | None:
        """The dashboard's link, or how to get one where bokeh (which draws it) is missing:
        a link to a page saying "Dask needs bokeh" helps nobody."""
        if not self.dashboard_link:
            return None
        import importlib.util

        if importlib.util.find_spec("bokeh") is None:
            return "unavailable without bokeh (pip install 'dnmf[dashboard]')"
        return self.dashboard_link

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make this the default scheduler of plain ``.compute()``/``.persist()`` calls."""
        if self.client is not None:
            with self.client.as_current():
                yield
        else:
            with dask.config.set(scheduler=self.scheduler):
                yield

    def persist(self, *collections: Any, optimize: bool = True) -> list[Any]:
        """Persist collections in one scheduler call (futures on a cluster, memory in-process).

        ``optimize=False`` keeps the graph as built: collections of different types that share
        tasks (an Array and a Delayed fed by the same panel tasks) are otherwise optimized
        separately, and low-level fusion can duplicate the shared tasks — and the reads of X.
        """
        if self.client is not None:
            return list(self.client.persist(list(collections), optimize_graph=optimize))
        return list(dask.persist(*collections, scheduler=self.scheduler,
                                 optimize_graph=optimize))

    def compute(self, *collections: Any) -> list[Any]:
        """Compute collections in one scheduler call and return their values."""
        if self.client is not None:
            try:
                # deserialised results may be misaligned: numpy would multiply them without
                # BLAS, so the driver's H update would depend on the message (kernels.aligned)
                return kernels.aligned(list(self.client.compute(list(collections), sync=True)))
            except Exception as exc:
                raise self.explained(_detached(exc)) from None
        return list(dask.compute(*collections, scheduler=self.scheduler))

    def results_of(self, persisted: list[Any]) -> list[Any]:
        """The values of persisted Delayeds, gathered in one call on a cluster."""
        if self.client is not None and len(persisted) > 1:
            from distributed import futures_of

            futures = [futures_of(p) for p in persisted]
            if all(len(f) == 1 for f in futures):
                try:
                    return kernels.aligned(list(self.client.gather([f[0] for f in futures])))
                except Exception as exc:
                    raise self.explained(_detached(exc)) from None
        return [self.result_of(p) for p in persisted]

    def result_of(self, persisted: Any) -> Any:
        """The value of an already persisted Delayed, without a new graph where possible."""
        if self.client is not None:
            from distributed import futures_of

            futures = futures_of(persisted)
            if len(futures) == 1:
                try:
                    return kernels.aligned(futures[0].result())
                except Exception as exc:
                    raise self.explained(_detached(exc)) from None
            return self.compute(persisted)[0]
        # persisted in-process: the value sits in the graph under the collection's key
        from dask.base import is_dask_collection

        value = persisted.__dask_graph__().get(persisted.key)
        is_task = isinstance(value, tuple) and bool(value) and callable(value[0])
        if value is None or is_task or is_dask_collection(value) or callable(value):
            return self.compute(persisted)[0]
        return value


    @contextlib.contextmanager
    def failures_explained(self) -> Iterator[None]:
        """Re-raise what :meth:`explained` explains, from any computation in the block."""
        try:
            yield
        except Exception as exc:
            explained = self.explained(exc)
            if explained is exc:
                raise
            raise explained from None

    def explained(self, exc: BaseException) -> BaseException:
        """A worker killed while running a task (``KilledWorker``) as one line that names the
        planned task memory and the fix; any other exception as it is."""
        if type(exc).__name__ != "KilledWorker":
            return exc
        planned = ("" if self.task_bytes is None else
                   f"; the plan gives each task about {self.task_bytes / 2**20:,.0f} MiB")
        return InputError(
            f"a Dask worker died while running a task, again on retry (usually killed for "
            f"memory: {self.memory_per_worker / 2**20:,.0f} MiB per worker{planned}) — raise "
            "--memory-limit, use fewer workers per machine, or lower k")


def check_workers(workers: Any) -> None:
    """Refuse a worker count that is not a positive integer (LocalCluster would hang on it)."""
    if workers is None:
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"--workers must be an integer >= 1; got {workers!r}")


def check_memory_limit(memory: int | None) -> None:
    """Refuse a per-worker memory limit below what a worker process needs to run at all (for
    worker processes; in-process, ``memory_limit`` is only the chunk plan's budget)."""
    if memory is not None and memory < WORKER_BASE_MEMORY:
        raise InputError(
            f"--memory-limit {memory:,} bytes is below the {WORKER_BASE_MEMORY // 2**20} MiB a "
            "Dask worker process needs before it runs a task (the plan's tasks come on top) — "
            "give at least 512MB per worker")


#: The dask config key of the glibc setting distributed's nanny gives the workers it spawns.
MALLOC_TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
#: The variable as this process had it before any nanny: a nanny writes its value into the
#: parent's ``os.environ`` (and leaves it there), so a later look cannot tell who set it.
_MALLOC_TRIM_AT_IMPORT = os.environ.get("MALLOC_TRIM_THRESHOLD_")


#: Workers with less memory than this keep distributed's trimming: glibc's retained heap can
#: take them past the nanny's 95% line (measured: a 350 MB worker of a supervised unmixing
#: restarted again and again without it; 1 GB workers peaked at 0.57 GB of the limit with it).
MALLOC_FAST_MIN_MEMORY = 10**9


@contextlib.contextmanager
def worker_malloc_environment(memory_limit: int | None = None) -> Iterator[bool]:
    """Start dnmf's LocalCluster workers with glibc's own malloc thresholds; yields whether
    it did.

    distributed's nanny starts each worker with ``MALLOC_TRIM_THRESHOLD_=65536`` so that glibc
    hands freed memory back at once. Setting it also pins glibc's mmap threshold at 128 KiB:
    every large temporary of a panel task is then a fresh mapping, faulted in and zeroed page
    by page. Measured (one thread, one panel, AMD EPYC): HALS 44 -> 53 ms, KL 66-88 -> 150 ms,
    a 40,000-pixel tile's FCLS 28 -> 56 ms. Inside this context the nannies made do not set it
    and the workers do not inherit it (a previous nanny's value is taken out of ``os.environ``
    and put back after). A value the user chose — in the environment before dnmf was imported,
    or other than 65536 in the dask config — is kept, and so is distributed's setting for
    workers whose ``memory_limit`` is under :data:`MALLOC_FAST_MIN_MEMORY`.
    """
    chosen = (_MALLOC_TRIM_AT_IMPORT is not None
              or str(dask.config.get(MALLOC_TRIM_KEY, None)) != "65536")
    small = memory_limit is not None and 0 < memory_limit < MALLOC_FAST_MIN_MEMORY
    if chosen or small:
        yield False
        return
    left = os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)  # a previous nanny's
    try:
        with dask.config.set({MALLOC_TRIM_KEY: None}):
            yield True
    finally:
        if left is not None:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = left


def dashboard_address() -> str:
    """Where a started cluster's dashboard listens (``dnmf.dashboard-address`` in Dask's
    config, e.g. ``0.0.0.0:8787``; default this host only, a free port)."""
    return str(dask.config.get(DASHBOARD_KEY, None) or DASHBOARD_ADDRESS)


def announce_clusters(callback: Callable[[ExecutionContext], None] | None) -> None:
    """Call ``callback`` with every cluster started or reached from now on (in this context)."""
    _ON_CLUSTER.set(callback)


def _announce(ctx: ExecutionContext) -> None:
    callback = _ON_CLUSTER.get()
    if callback is not None:
        callback(ctx)


def wait_for_count() -> int:
    """How many workers a cluster reached at an address must have before the run starts
    (``dnmf.wait-for-workers`` in Dask's config; default 1)."""
    value = dask.config.get(WAIT_WORKERS_KEY, None)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"--wait-for-workers must be a whole number >= 1; got {value!r}")
    return value


def wait_timeout() -> float:
    """Seconds to wait for a cluster's workers (``--wait-timeout``, ``dnmf.wait-timeout`` in
    Dask's config, ``DNMF_WAIT_TIMEOUT``, or 60)."""
    configured = dask.config.get(WAIT_TIMEOUT_KEY, None)
    if configured is not None:
        value = float(configured)
        if not value > 0 or value == float("inf"):
            raise InputError(f"--wait-timeout must be a positive number of seconds; got "
                             f"{configured!r}")
        return value
    text = os.environ.get("DNMF_WAIT_TIMEOUT")
    if not text:
        return WAIT_FOR_WORKERS_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InputError(f"DNMF_WAIT_TIMEOUT must be a positive number of seconds; got {text!r}")
    return value


def wait_for_workers(client: Any, where: str, n: int | None = None) -> None:
    """Block until ``n`` workers (default :func:`wait_for_count`) are connected; one line
    after :func:`wait_timeout` seconds."""
    n = wait_for_count() if n is None else n
    timeout = wait_timeout()
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError:
        have = len(client.scheduler_info().get("workers", {}))
        joined = "no Dask worker" if have == 0 else f"only {have} of {n} Dask workers"
        raise InputError(
            f"{joined} joined {where} within {timeout:g} s — start workers "
            "('dask worker ADDRESS'), check that they can reach the scheduler, or wait longer "
            "with --wait-timeout SECONDS (DNMF_WAIT_TIMEOUT)") from None


def parse_memory(size: str | int | None) -> int | None:
    """Bytes from ``"2GB"``, ``"700MiB"``, an int or None."""
    if size is None or isinstance(size, int):
        return size
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(size))
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"cannot read memory size {size!r}: use a number of bytes or a size like '2GB'"
        ) from exc


def _current_client() -> Any:
    if "distributed" not in sys.modules:  # no client can exist yet; importing costs ~13 MB
        return None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _context_from_client(client: Any, kind: str) -> ExecutionContext:
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else (
        client.scheduler_info()
    )
    workers = list(info.get("workers", {}).values())
    n = max(len(workers), 1)
    threads = max((w.get("nthreads", 1) for w in workers), default=1)
    mem = min((w.get("memory_limit") or psutil.virtual_memory().total for w in workers),
              default=psutil.virtual_memory().total)
    return ExecutionContext(
        kind=kind,
        client=client,
        n_workers=n,
        threads_per_worker=threads,
        memory_per_worker=int(mem),
        dashboard_link=getattr(client, "dashboard_link", None),
    )


def _accepts_n_workers(client: Any) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def _detached(exc: BaseException) -> BaseException:
    """A copy of a task's exception without the traceback frames that hold on to futures.

    Re-raising the exception object a Future holds attaches dnmf's frames (with the run's
    futures in their locals) to it; the client would keep the failed run's futures alive and a
    rerun with the same client could get the old error back.
    """
    clone = copy.copy(exc)
    clone.__traceback__ = None
    exc.__traceback__ = None
    return clone


@contextlib.contextmanager
def execution_context(
    scheduler: Any = "auto",
    *,
    x_nbytes: int | None = None,
    workers: int | None = None,
    memory_limit: str | int | None = None,
    client: Any = None,
    gpu: bool = False,
    x_in_memory: bool = False,
) -> Iterator[ExecutionContext]:
    """Resolve ``scheduler`` into a running :class:`ExecutionContext`.

    Parameters
    ----------
    scheduler : str or distributed.Client
        ``"auto"``, ``"threads"``, ``"sync"``, ``"local"``, ``"cuda"`` (a
        ``dask_cuda.LocalCUDACluster``), a ``tcp://host:port`` address, or a Client.
    x_nbytes : int, optional
        Size of X, for ``auto``.
    workers : int, optional
        Workers of a LocalCluster (default: one per core), of a LocalCUDACluster (default: one
        per GPU) or threads in-process.
    memory_limit : str or int, optional
        Per-worker (host) memory limit of a LocalCluster or LocalCUDACluster, e.g. ``"2GB"``.
    client : distributed.Client, optional
        Used as is (takes precedence over ``scheduler``).
    gpu : bool
        The graphs run on a GPU: ``auto`` then means in-process threads whatever X's size (a
        LocalCluster's processes would share one GPU).
    x_in_memory : bool
        X is already in this process's memory (a numpy array or scipy matrix): ``auto`` then
        means in-process threads whatever X's size — worker processes would need a copy of X
        sent to them (pickled through the scheduler) before the first iteration.

    Yields
    ------
    ExecutionContext
        Clusters started here are closed on exit; clients passed in are left open.
    """
    if client is None and not isinstance(scheduler, str):
        client, scheduler = scheduler, "client"
    if client is not None:
        yield _context_from_client(client, "client")
        return
    check_workers(workers)
    mem_limit = parse_memory(memory_limit)
    if scheduler == "auto":
        current = _current_client()
        if current is not None:
            yield _context_from_client(current, "client")
            return
    scheduler = resolve_scheduler_name(scheduler, x_nbytes=x_nbytes, memory_limit=mem_limit,
                                       gpu=gpu, x_in_memory=x_in_memory)
    if scheduler in ("threads", "sync"):
        ctx = planned_context(scheduler, workers=workers, memory_limit=mem_limit)
        with dask.config.set(num_workers=ctx.threads_per_worker):
            yield ctx
        return
    if scheduler in ("local", "cuda"):  # in-process, the limit is only the plan's budget
        check_memory_limit(mem_limit)
    if scheduler == "local":
        from distributed import Client, LocalCluster

        planned = planned_context("local", workers=workers, memory_limit=mem_limit)
        # read as the nannies spawn their workers
        with worker_malloc_environment(planned.memory_per_worker):
            cluster = LocalCluster(
                n_workers=planned.n_workers,
                threads_per_worker=1,  # BLAS stays single-threaded in each worker process
                processes=True,
                memory_limit=planned.memory_per_worker,
                dashboard_address=dashboard_address(),
                # a failing task's traceback would break the CLI's one-line errors
                silence_logs=logging.DEBUG if os.environ.get("DNMF_DEBUG") == "1"
                else logging.CRITICAL,
            )
        local_client = Client(cluster, set_as_default=False)
        try:
            wait_for_workers(local_client, "the LocalCluster", n=1)
            ctx = _context_from_client(local_client, "local")
            log.info("started LocalCluster: %s", ctx.describe())
            _announce(ctx)
            yield ctx
        finally:
            local_client.close()
            cluster.close()
        return
    if scheduler == "cuda":
        with _local_cuda_cluster(workers, mem_limit) as cuda_client:
            ctx = _context_from_client(cuda_client, "cuda")
            log.info("started LocalCUDACluster: %s", ctx.describe())
            _announce(ctx)
            yield ctx
        return
    if isinstance(scheduler, str) and "://" in scheduler:
        from distributed import Client

        try:
            remote = Client(scheduler, set_as_default=False, timeout="10s")
        except OSError as exc:
            raise InputError(
                f"cannot reach the Dask scheduler at {scheduler}: {exc} — start it with "
                "'dask scheduler' or check the address"
            ) from exc
        try:
            wait_for_workers(remote, f"the cluster at {scheduler}")
            ctx = _context_from_client(remote, "address")
            _announce(ctx)
            yield ctx
        finally:
            remote.close()
        return
    raise InputError(
        f"unknown scheduler {scheduler!r}: use auto, threads, sync, local, cuda or an address "
        "like tcp://127.0.0.1:8786"
    )


def _cuda_gpus() -> int:
    """The GPUs a LocalCUDACluster would use; InputError without dask-cuda or a device."""
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        raise InputError(
            "--scheduler cuda needs dask-cuda, which is not installed — pip install "
            "'dnmf[gpu]' (or pip install dask-cuda), or use --scheduler threads") from None
    from dnmf.device import gpu_count

    n_gpus = gpu_count()
    if n_gpus < 1:
        raise InputError(
            "--scheduler cuda but no CUDA device is visible (CuPy sees none) — check the "
            "NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or use --scheduler threads")
    return n_gpus


@contextlib.contextmanager
def _local_cuda_cluster(workers: int | None, memory_limit: int | None) -> Iterator[Any]:
    """A ``dask_cuda.LocalCUDACluster`` (one single-threaded worker per GPU) and its Client."""
    n_gpus = _cuda_gpus()
    import dask_cuda
    from distributed import Client

    kwargs: dict[str, Any] = {"threads_per_worker": 1, "dashboard_address": dashboard_address(),
                              "silence_logs": logging.DEBUG if os.environ.get("DNMF_DEBUG") == "1"
                              else logging.CRITICAL}
    if workers:
        kwargs["n_workers"] = min(int(workers), n_gpus)
    if memory_limit:
        kwargs["memory_limit"] = memory_limit
    cluster = dask_cuda.LocalCUDACluster(**kwargs)
    client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def resolve_scheduler_name(
    scheduler: str, *, x_nbytes: int | None, memory_limit: int | None = None, gpu: bool = False,
    x_in_memory: bool = False,
) -> str:
    """What ``auto`` means for this X (a current Client aside): an address, threads or local
    (threads for a GPU fit: one process drives the GPU; ``cuda`` spreads over several; threads
    for X already in memory, see :func:`execution_context`)."""
    if scheduler != "auto":
        return scheduler
    address = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        return address
    if gpu or (x_in_memory and memory_limit is None):
        return "threads"
    if x_nbytes is not None and x_nbytes < AUTO_THREADS_MAX_BYTES and memory_limit is None:
        return "threads"
    return "local"


def planned_context(
    scheduler: str, *, workers: int | None = None, memory_limit: int | None = None
) -> ExecutionContext:
    """The context ``threads``, ``sync``, ``local`` or ``cuda`` would give, without starting
    anything.

    Used by ``--dry-run`` to plan against a LocalCluster that is never started.
    """
    check_workers(workers)
    if scheduler in ("local", "cuda"):
        check_memory_limit(memory_limit)
    cores = os.cpu_count() or 1
    if scheduler in ("threads", "sync"):
        n = 1 if scheduler == "sync" else (workers or cores)
        return ExecutionContext(
            kind=scheduler, n_workers=1, threads_per_worker=n,
            memory_per_worker=int(memory_limit or psutil.virtual_memory().available),
        )
    if scheduler in ("local", "cuda"):
        if scheduler == "cuda":
            gpus = _cuda_gpus()
            n = min(workers or gpus, gpus)
        else:
            n = workers or cores
        return ExecutionContext(
            kind=scheduler, n_workers=n, threads_per_worker=1,
            memory_per_worker=int(memory_limit or psutil.virtual_memory().total / n),
        )
    raise InputError(f"no plan without connecting for scheduler {scheduler!r}")


def blas_threads_for(ctx: ExecutionContext, n_tasks: int) -> int:
    """BLAS threads per task so that dask threads x BLAS threads <= cores (no oversubscription)."""
    cores = os.cpu_count() or 1
    if ctx.kind == "sync":
        return cores
    if ctx.kind == "threads":
        concurrent = max(1, min(ctx.threads_per_worker, n_tasks))
        return max(1, cores // concurrent)
    return 1
