"""dnmf against a running Dask cluster, by its scheduler address.

Start a cluster first, e.g. on one machine::

    dask scheduler --port 8786 &
    dask worker tcp://127.0.0.1:8786 --nworkers 2 --nthreads 1 --memory-limit 4GB &

then ``python examples/cluster.py tcp://127.0.0.1:8786 PATH/TO/X.zarr 20``. The workers must
see the same paths (a shared file system or an object store URL such as ``s3://bucket/x.zarr``).
The same works from the shell: ``dnmf fit X.zarr -k 20 -o result.zarr --scheduler ADDRESS``,
or with ``DASK_SCHEDULER_ADDRESS`` set.
"""

from __future__ import annotations

import sys

from distributed import Client

import dnmf


def main(address: str, path: str, rank: int) -> None:
    with Client(address) as client:
        print("workers:", len(client.scheduler_info()["workers"]), "dashboard:",
              client.dashboard_link)
        plan = dnmf.dry_run(path, rank, scheduler=client)
        print("\n".join(plan.describe()))
        result = dnmf.factorize(path, rank, client=client, out=path.rstrip("/") + ".nmf.zarr",
                                overwrite=True, random_state=0,
                                callback=lambda i: print(f"iter {i.iteration}: "
                                                         f"rel.err {i.relative_error:.5f}"))
        print(f"done: relative error {result.relative_error:.5f}, written to {result.path}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python examples/cluster.py SCHEDULER_ADDRESS X.zarr RANK")
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
