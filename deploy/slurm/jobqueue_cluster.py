"""dnmf on Slurm through dask-jobqueue: each Slurm job runs one single-threaded Dask worker per
core; this script (the driver) runs the scheduler and the fit.

Run it on a login node (or in a small batch job) of a cluster whose compute nodes see the same
file system, with dnmf and dask-jobqueue installed in an environment the nodes can use::

    pip install "dnmf[jobqueue]"        # from a clone: pip install ".[jobqueue]"
    python deploy/slurm/jobqueue_cluster.py /shared/X.zarr 20 /shared/result.zarr \\
        --queue normal --account myproject --jobs 4 --cores 16 --memory 64GB

Each of the ``--jobs`` Slurm jobs asks for ``--cores`` CPUs and ``--memory`` and starts
``--cores`` worker processes with one thread and memory/cores each (``--nthreads 1``: dnmf's
panel tasks call BLAS; one single-threaded process per core keeps them from oversubscribing).
Rerun the same command with ``--resume`` to continue a fit whose driver was stopped.
For PBS use ``dask_jobqueue.PBSCluster`` with the same arguments (``account`` is ``project``).
"""

from __future__ import annotations

import argparse
from typing import Any

import dnmf


def make_cluster(
    *,
    cores: int = 16,
    memory: str = "64GB",
    queue: str | None = None,
    account: str | None = None,
    walltime: str = "04:00:00",
    interface: str | None = None,
    local_directory: str | None = None,
) -> Any:
    """A ``SLURMCluster`` whose jobs run ``cores`` single-threaded workers (nothing submitted
    until it is scaled)."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        cores=cores,
        processes=cores,  # one worker process per core, each with one thread
        memory=memory,  # per job; each worker's --memory-limit is memory / processes
        queue=queue,
        account=account,
        walltime=walltime,
        interface=interface,  # e.g. "ib0" when the nodes talk over InfiniBand
        local_directory=local_directory or "$TMPDIR",  # node-local spill space
        job_name="dnmf-worker",
        log_directory="dask-logs",
    )


def fit(client: Any, X: str, rank: int, out: str, *, resume: bool = False, **kwargs: Any) -> Any:
    """``dnmf.factorize`` on the cluster behind ``client``, checkpointing into ``out``."""
    return dnmf.factorize(X, rank, client=client, out=out, checkpoint_every=10, resume=resume,
                          **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("X", help="input: a path on the shared file system or an fsspec URL")
    parser.add_argument("rank", type=int, help="number of components k")
    parser.add_argument("out", help="result store (Zarr) on the shared file system or a URL")
    parser.add_argument("--jobs", type=int, default=4, help="Slurm jobs (nodes) to start")
    parser.add_argument("--cores", type=int, default=16, help="cores per job = workers per job")
    parser.add_argument("--memory", default="64GB", help="memory per job")
    parser.add_argument("--queue", help="Slurm partition")
    parser.add_argument("--account", help="Slurm account")
    parser.add_argument("--walltime", default="04:00:00")
    parser.add_argument("--interface", help="network interface of the nodes, e.g. ib0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    args = parser.parse_args(argv)

    import dask
    from distributed import Client

    from dnmf.cluster import wait_for_workers

    with make_cluster(cores=args.cores, memory=args.memory, queue=args.queue,
                      account=args.account, walltime=args.walltime,
                      interface=args.interface) as cluster, Client(cluster) as client:
        cluster.scale(jobs=args.jobs)
        print(f"dashboard: {client.dashboard_link}", flush=True)
        # plan the chunks for the whole cluster, not for the first job that starts (dnmf's
        # own wait: one error line after the timeout)
        with dask.config.set({"dnmf.wait-timeout": 3600}):
            wait_for_workers(client, "the SLURM cluster", n=args.jobs * args.cores)
        result = fit(client, args.X, args.rank, args.out, resume=args.resume,
                     random_state=args.seed, max_iter=args.max_iter,
                     callback=lambda info: print(
                         f"iteration {info.iteration}: relative error "
                         f"{info.relative_error:.6f}", flush=True))
    print(f"{result.n_iter} iterations, relative error {result.relative_error:.6f}; "
          f"W and H written to {result.path}")


if __name__ == "__main__":
    main()
