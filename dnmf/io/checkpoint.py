"""Checkpoints inside the result store: ``OUT.zarr/checkpoint/{a,b}`` and a pointer.

Each checkpoint writes W (chunk by chunk, on the workers), H, the iteration, the loss history,
the parameters and a fingerprint of the input into the slot *not* in use, then switches the
``checkpoint`` group's ``current`` attribute to it: zarr writes metadata files atomically, so a
crash leaves the previous checkpoint intact. OUT appears with the first checkpoint (status
``running``); ``status`` turns ``interrupted`` when a run is stopped and ``complete`` once the
final W and H are written, after which the checkpoint group is removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import zarr

from dnmf.errors import InputError, OutputError
from dnmf.io.result_store import (
    SCHEMA_VERSION,
    consolidate,
    jsonable,
    local_path,
    write_arrays,
)
from dnmf.io.zarr_ import read_version

GROUP = "checkpoint"
SLOTS = ("a", "b")
#: Parameters that must match for ``--resume`` (``max_iter`` may grow, ``tol`` may change).
RESUME_PARAMS = ("solver", "beta_loss", "n_components", "init", "seed", "alpha_W", "alpha_H",
                 "l1_ratio", "dtype", "scheme", "missing", "mask", "w_sum_to_one")


@dataclass
class Checkpoint:
    """A checkpoint read back from a store."""

    iteration: int
    W: da.Array
    H: Any
    loss_history: list[float]
    seconds_per_iteration: list[float]
    params: dict[str, Any]
    fingerprint: dict[str, Any]


def fingerprint(X: da.Array, scheduler: Any = None) -> dict[str, Any]:
    """Shape, dtype and a hash of three sampled row blocks (first, middle, last) of X."""
    n = X.numblocks[0]
    picks = sorted({0, n // 2, n - 1})
    blocks = [X.blocks[i] for i in picks]
    values = da.compute(*blocks, scheduler=scheduler)
    digest = hashlib.blake2b(digest_size=16)
    for v in values:
        if hasattr(v, "tocsr"):  # a sparse block: hash its arrays, not the object
            v = v.tocsr()
            for part in (v.data, v.indices, v.indptr):
                digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(np.ascontiguousarray(v).tobytes())
    return {"shape": list(X.shape), "dtype": str(X.dtype), "sample_rows": picks,
            "sample_hash": digest.hexdigest()}


def _store(out: str | os.PathLike) -> str:
    """The path zarr opens: a local path for ``file://`` URLs (fsspec's local file system
    creates no parent directories), the URL otherwise."""
    local = local_path(out)
    return str(local) if local is not None else os.fspath(out)


def start(out: str | os.PathLike, *, overwrite: bool) -> None:
    """Create OUT (status ``running``) for the first checkpoint, replacing it if allowed."""
    path = local_path(out)
    if path is not None and path.exists():
        if not overwrite:
            raise OutputError(f"output {path} already exists — pass --overwrite to replace it")
        trash = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    root = zarr.open_group(_store(out), mode="w", zarr_format=3)
    root.attrs.update({"schema_version": SCHEMA_VERSION, "status": "running"})


def write(out: str | os.PathLike, *, W: da.Array, H: Any, iteration: int,
          loss_history: list[float], seconds_per_iteration: list[float], params: dict,
          fingerprint: dict, scheduler: Any = None) -> da.Array:
    """Write a checkpoint into the free slot, then point ``current`` at it.

    Returns the slot's W, lazily read back from the store.
    """
    root = zarr.open_group(_store(out), mode="r+")
    group = root.require_group(GROUP)
    current = group.attrs.get("current")
    slot = SLOTS[1] if current == SLOTS[0] else SLOTS[0]
    target = group.require_group(slot)
    write_arrays(target, W, H, scheduler)
    version = uuid.uuid4().hex  # names what the slot holds now (see read_version)
    target.attrs.update(jsonable({"iteration": iteration, "loss_history": loss_history,
                                   "seconds_per_iteration": seconds_per_iteration,
                                   "version": version}))
    # one write of zarr.json: a kill between per-key updates would leave "current" without
    # its params
    group.attrs.put({**group.attrs.asdict(),
                     **jsonable({"current": slot, "iteration": iteration, "params": params,
                                 "fingerprint": fingerprint})})
    return read_version(target["W"], version)


def mark(out: str | os.PathLike, status: str) -> None:
    """Set the store's ``status`` (``running``, ``interrupted``)."""
    zarr.open_group(_store(out), mode="r+").attrs["status"] = status


def read(out: str | os.PathLike) -> Checkpoint:
    """The current checkpoint of an incomplete store.

    Raises
    ------
    FileNotFoundError, InputError
    """
    path = local_path(out)
    if path is not None and not path.exists():
        raise FileNotFoundError(
            f"nothing to resume: {out} does not exist — run without --resume to start"
        )
    try:
        root = zarr.open_group(_store(out), mode="r")
    except Exception as exc:  # noqa: BLE001 - any unreadable store is the same user error
        raise InputError(f"cannot resume from {out}: not a dnmf result store ({exc})") from exc
    status = root.attrs.get("status")
    if status == "complete":
        raise InputError(
            f"{out} is already complete — nothing to resume; use --overwrite to fit again"
        )
    if GROUP not in root or "current" not in root[GROUP].attrs:
        raise InputError(f"{out} holds no checkpoint to resume from — fit again with --overwrite")
    group = root[GROUP]
    slot = group[group.attrs["current"]]
    H_arr = slot["H"]
    version = slot.attrs.get("version")
    H = (read_version(H_arr, version) if H_arr.chunks[1] < H_arr.shape[1]
         else np.asarray(H_arr[...]))
    return Checkpoint(
        iteration=int(slot.attrs["iteration"]),
        W=read_version(slot["W"], version),
        H=H,
        loss_history=list(slot.attrs["loss_history"]),
        seconds_per_iteration=list(slot.attrs.get("seconds_per_iteration", [])),
        params=dict(group.attrs["params"]),
        fingerprint=dict(group.attrs["fingerprint"]),
    )


def check_compatible(ckpt: Checkpoint, params: dict, fp: dict, *, max_iter: int) -> None:
    """Refuse to resume with other input or parameters (``max_iter`` may only grow)."""
    for key in ("shape", "dtype", "sample_hash"):
        if ckpt.fingerprint.get(key) != fp.get(key):
            raise InputError(
                f"cannot resume: the input differs from the checkpoint's ({key} "
                f"{ckpt.fingerprint.get(key)} then, {fp.get(key)} now) — resume with the same "
                "input, or fit again with --overwrite"
            )
    for key in RESUME_PARAMS:
        if jsonable(params.get(key)) != ckpt.params.get(key):
            raise InputError(
                f"cannot resume: {key} was {ckpt.params.get(key)!r}, now {params.get(key)!r} — "
                "resume with the same parameters (only --max-iter may grow)"
            )
    if max_iter < ckpt.iteration:
        raise InputError(
            f"cannot resume: the checkpoint is at iteration {ckpt.iteration}, beyond --max-iter "
            f"{max_iter} — raise --max-iter"
        )


def finish(out: str | os.PathLike, *, W: da.Array, H: Any, attrs: dict,
           scheduler: Any = None) -> None:
    """Write the final W and H, the metadata, ``status = complete`` (last), drop the checkpoint."""
    root = zarr.open_group(_store(out), mode="r+")
    write_arrays(root, W, H, scheduler)
    root.attrs.update({**jsonable(attrs), "schema_version": SCHEMA_VERSION})
    root.attrs["status"] = "complete"
    if GROUP in root:
        del root[GROUP]
    consolidate(_store(out))
