"""Sizes dnmf checks before it builds a graph: tasks per graph and bytes per stored chunk.

A matrix's metadata can declare any shape; dnmf refuses, from the metadata alone, what would
exhaust the driver's memory while the graph is built (one key per chunk, one panel per task) or
a worker's while a single stored chunk is decoded — one line naming the limit and how to lift
it, before anything is read.
"""

from __future__ import annotations

import math
import os

import numpy as np

from dnmf.errors import InputError

#: Tasks one graph may hold (chunks read in one pass, panels of an iteration): a million keys
#: take about a gigabyte on the driver and scheduler. ``DNMF_MAX_TASKS`` overrides it.
MAX_TASKS = 1_000_000
#: Bytes of one stored chunk (a task decodes a whole chunk to read any part of it).
#: ``DNMF_MAX_CHUNK_BYTES`` overrides it (bytes, or a size such as ``8GB``).
MAX_CHUNK_BYTES = 2 * 2**30


def max_tasks() -> int:
    """The task limit (``DNMF_MAX_TASKS`` or :data:`MAX_TASKS`)."""
    return _setting("DNMF_MAX_TASKS", MAX_TASKS)


def max_chunk_bytes() -> int:
    """The chunk-size limit (``DNMF_MAX_CHUNK_BYTES`` or :data:`MAX_CHUNK_BYTES`)."""
    return _setting("DNMF_MAX_CHUNK_BYTES", MAX_CHUNK_BYTES)


def _setting(name: str, default: int) -> int:
    text = os.environ.get(name)
    if not text:
        return default
    from dask.utils import parse_bytes

    try:
        value = int(parse_bytes(text))
    except (ValueError, TypeError):
        value = 0
    if value < 1:
        raise InputError(f"{name} must be a positive number; got {text!r}")
    return value


def check_task_count(n_tasks: int, what: str) -> None:
    """Refuse a graph of more than :func:`max_tasks` tasks; ``what`` says what they are."""
    limit = max_tasks()
    if n_tasks > limit:
        raise InputError(
            f"{what}: {n_tasks:,} tasks, more than the {limit:,} dnmf builds into one graph "
            "(each costs memory on the driver and the scheduler) — store X in larger chunks, "
            "give the workers more memory (larger panels), or raise the limit with "
            "DNMF_MAX_TASKS=N")


def check_chunk_grid(shape: tuple[int, ...], chunks: tuple[tuple[int, ...], ...],
                     stored_chunks: tuple[int, ...] | None, itemsize: int) -> None:
    """Refuse, from metadata alone, X whose chunk grid or stored chunks are too large to read."""
    n_blocks = math.prod(len(c) for c in chunks)
    check_task_count(n_blocks, f"X ({' x '.join(f'{s:,}' for s in shape)}) is read in "
                               f"{' x '.join(f'{len(c):,}' for c in chunks)} chunks")
    if stored_chunks:
        chunk_bytes = int(np.prod(stored_chunks, dtype=np.float64)) * itemsize
        limit = max_chunk_bytes()
        if chunk_bytes > limit:
            raise InputError(
                f"X's stored chunks are {chunk_bytes / 2**30:,.1f} GiB each "
                f"({' x '.join(f'{c:,}' for c in stored_chunks)}), and a task decodes a whole "
                f"chunk to read any of it; dnmf reads at most {limit / 2**30:,.1f} GiB at once "
                "— store X in smaller chunks, or raise the limit with DNMF_MAX_CHUNK_BYTES=SIZE")
