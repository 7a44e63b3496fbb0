"""Local files the Dask workers must reach, checked on the workers before the first iteration.

A cluster's workers may run on other hosts, which see neither this process's disk nor its
``/tmp``. There a fit of a local X would fail in its first task, or worse read a Zarr X's
missing chunks as the fill value, and each worker would write its chunks of a local output onto
its own disk. One small function run on every connected worker (``client.run``, no task graph)
asks first:

- an input (X, a mask, a cube) must be readable at the absolute path the tasks open (the
  readers resolve a relative path here, in this process's folder);
- an output (OUT, its checkpoints) must be the one this run claimed: the workers must read the
  claim's ``owner.json`` (:mod:`dnmf.io.lock`) with this run's content, which a same-named
  folder on another disk does not have;
- a scratch folder (W streamed through Zarr) made here with a unique name must be seen.

Remote URLs (``s3://`` and the like) are not checked here: every worker opens them itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dnmf.errors import InputError, OutputError
from dnmf.io.lock import OWNER_FILE, lock_path
from dnmf.io.result_store import local_path

SCRATCH = "the scratch folder of W"
#: The remedy every refusal names.
SHARED = ("every worker can reach (an object store such as s3://bucket/..., or a shared file "
          "system mounted at the same path on every host)")


def check_workers_reach(client: Any, *, reads: Mapping[str, Any] | None = None,
                        writes: Mapping[str, Any] | None = None,
                        scratch: str | None = None) -> None:
    """Refuse, in one line, a local path that a connected worker cannot use.

    Parameters
    ----------
    client : distributed.Client or None
        The cluster's client; ``None`` (in-process schedulers) checks nothing.
    reads : mapping of str to path, optional
        What the workers read, by the name the message uses (``{"the input": "x.zarr"}``);
        ``None`` values, in-memory inputs and remote URLs are skipped.
    writes : mapping of str to path, optional
        Outputs the workers write, each claimed by this run (an unclaimed one is skipped).
    scratch : str, optional
        A folder made here for the workers to write into.

    Raises
    ------
    InputError
        An input that some worker cannot read.
    OutputError
        An output or scratch folder some worker does not see as this process does.
    """
    if client is None:
        return
    inputs = {name: os.path.abspath(path) for name, path in _local(reads).items()}
    marks: dict[str, tuple[str, str, str]] = {}  # name: (path, file to read, its content)
    for name, path in _local(writes).items():
        record = lock_path(path) / OWNER_FILE
        try:  # the claim this run holds: its record is unique to this run
            marks[name] = (os.path.abspath(path), os.fspath(record), record.read_text())
        except OSError:
            continue
    if scratch is not None:
        marks[SCRATCH] = (os.path.abspath(scratch), "", "")
    if not inputs and not marks:
        return
    seen = client.run(workers_view, inputs, marks)
    if not seen:
        return
    for name, path in inputs.items():
        if blind := [worker for worker, missing in seen.items() if name in missing]:
            raise InputError(
                f"the Dask workers cannot read {name} {path} (not readable by {len(blind)} of "
                f"{len(seen)} workers: they run on other hosts or see other file systems) — "
                f"put it on storage {SHARED}, or run on this machine (--scheduler local)")
    for name, (path, _, _) in marks.items():
        if blind := [worker for worker, missing in seen.items() if name in missing]:
            hint = ", e.g. TMPDIR=/shared/tmp" if name == SCRATCH else ""
            raise OutputError(
                f"the Dask workers cannot write {name} {path} (its folder is not the one "
                f"{len(blind)} of {len(seen)} workers see: they run on other hosts or see other "
                f"file systems) — write it where {SHARED}{hint}")


def _local(paths: Mapping[str, Any] | None) -> dict[str, os.PathLike]:
    """The local paths among ``paths`` (remote URLs and in-memory values left out)."""
    out = {}
    for name, value in (paths or {}).items():
        if isinstance(value, str | os.PathLike):
            local = local_path(value)
            if local is not None:
                out[name] = local
    return out


def workers_view(inputs: Mapping[str, str],
                 marks: Mapping[str, tuple[str, str, str]]) -> list[str]:
    """Run on a worker: the names of the inputs it cannot read, and of the outputs whose
    claim record it does not read with this run's content (without a record file, the folder
    itself it does not see)."""
    missing = [name for name, path in inputs.items() if not os.access(path, os.R_OK)]
    for name, (path, record, content) in marks.items():
        if not record:
            seen = os.path.isdir(path)
        else:
            try:
                with open(record, encoding="utf-8") as fh:
                    seen = fh.read() == content
            except OSError:
                seen = False
        if not seen:
            missing.append(name)
    return missing
