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
import json
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import zarr

from dnmf.errors import InputError, OutputError
from dnmf.io.common import one_line
from dnmf.io.remote import zarr_store
from dnmf.io.result_store import (
    SCHEMA_VERSION,
    consolidate,
    jsonable,
    local_path,
    remove_path,
    write_arrays,
    write_coords,
)
from dnmf.io.zarr_ import from_zarr_array, read_version

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
    notes: list[str] = field(default_factory=list)


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


def _store(out: str | os.PathLike) -> Any:
    """What zarr opens: a local path for ``file://`` URLs (fsspec's local file system
    creates no parent directories), an fsspec store with the run's options otherwise."""
    local = local_path(out)
    return str(local) if local is not None else zarr_store(out)


def start(out: str | os.PathLike, *, overwrite: bool) -> None:
    """Create OUT (status ``running``) for the first checkpoint, replacing it if allowed."""
    path = local_path(out)
    if path is not None and path.exists():
        if not overwrite:
            raise OutputError(f"output {path} already exists — pass --overwrite to replace it")
        trash = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, trash)
        remove_path(trash)
    root = zarr.open_group(_store(out), mode="w", zarr_format=3)
    root.attrs.update({"schema_version": SCHEMA_VERSION, "status": "running"})


def write(out: str | os.PathLike, *, W: da.Array, H: Any, iteration: int,
          loss_history: list[float], seconds_per_iteration: list[float], params: dict,
          fingerprint: dict, scheduler: Any = None) -> da.Array:
    """Write a checkpoint into the free slot, then point ``current`` at it.

    The slot is marked ``writing`` first (its old content is no longer a checkpoint), W and H
    are stored with a CRC32C per chunk, and the slot's attributes, with digests of H and the
    loss history, are written last. Returns the slot's W, lazily read back from the store.
    """
    root = zarr.open_group(_store(out), mode="r+")
    group = root.require_group(GROUP)
    current = group.attrs.get("current")
    slot = SLOTS[1] if current == SLOTS[0] else SLOTS[0]
    target = group.require_group(slot)
    target.attrs.put({"state": "writing"})
    write_arrays(target, W, H, scheduler, checksums=True)
    version = uuid.uuid4().hex  # names what the slot holds now (see read_version)
    target.attrs.put(jsonable({
        "iteration": iteration, "loss_history": loss_history,
        "seconds_per_iteration": seconds_per_iteration, "version": version,
        "state": "complete", "digest": _digests(H, loss_history)}))
    # one write of zarr.json: a kill between per-key updates would leave "current" without
    # its params
    group.attrs.put({**group.attrs.asdict(),
                     **jsonable({"current": slot, "iteration": iteration, "params": params,
                                 "fingerprint": fingerprint})})
    return _lazy_W(target, version, out)


def _digests(H: Any, loss_history: list[float]) -> dict[str, str | None]:
    """Digests of what a checkpoint's chunks do not verify: H as a whole (on the driver) and
    the loss history (None for a chunked H: its chunks carry their CRCs)."""
    h = None
    if not isinstance(H, da.Array):
        h = hashlib.blake2b(np.ascontiguousarray(H).tobytes(), digest_size=16).hexdigest()
    history = json.dumps(jsonable(loss_history), allow_nan=False)
    return {"H": h, "loss_history": hashlib.blake2b(history.encode(),
                                                    digest_size=16).hexdigest()}


def _lazy_W(slot: zarr.Group, version: str | None, out: Any) -> da.Array:
    """A slot's W read lazily; a chunk that fails its CRC is named with its file and the fix."""
    arr = slot["W"]
    return from_zarr_array(arr, chunks=arr.chunks, name_token=(str(arr.store_path), version),
                           label=f"the checkpoint's W in {out}").array


def mark(out: str | os.PathLike, status: str) -> None:
    """Set the store's ``status`` (``running``, ``interrupted``)."""
    zarr.open_group(_store(out), mode="r+").attrs["status"] = status


def read(out: str | os.PathLike) -> Checkpoint:
    """The current checkpoint of an incomplete store, verified; the other slot when the
    current one is damaged.

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
        status = root.attrs.get("status")
        group = root[GROUP] if GROUP in root else None
        group_attrs = dict(group.attrs) if group is not None else {}
    except Exception as exc:  # noqa: BLE001 - any unreadable store is the same user error
        raise InputError(
            f"cannot resume from {out}: its metadata cannot be read ({one_line(exc)}) — fit "
            "again with --overwrite") from exc
    if status == "complete":
        raise InputError(
            f"{out} is already complete — nothing to resume; use --overwrite to fit again"
        )
    if group is None or "current" not in group_attrs:
        raise InputError(f"{out} holds no checkpoint to resume from — fit again with --overwrite")
    for key in ("params", "fingerprint"):
        if not isinstance(group_attrs.get(key), dict):
            raise InputError(
                f"cannot resume from {out}: its checkpoint has no {key} "
                f"({posixpath.join(os.fspath(out), GROUP, 'zarr.json')} is damaged) — fit "
                "again with --overwrite")
    current = group_attrs["current"]
    order = [current] + [s for s in SLOTS if s != current]
    problems = []
    for slot in order:
        try:
            ckpt = _read_slot(group, slot, out)
        except _DamagedSlot as exc:
            problems.append(str(exc))
            continue
        ckpt.params, ckpt.fingerprint = dict(group_attrs["params"]), dict(
            group_attrs["fingerprint"])
        if slot != current:
            ckpt.notes.append(f"the current checkpoint is damaged ({problems[0]}); resumed "
                              f"from the previous one, at iteration {ckpt.iteration}")
        return ckpt
    raise InputError(
        f"cannot resume from {out}: its checkpoint is damaged ({'; '.join(problems)}) — fit "
        "again with --overwrite")


class _DamagedSlot(Exception):
    """A checkpoint slot that cannot be resumed from; the message names the file."""


def _read_slot(group: zarr.Group, slot: str, out: Any) -> Checkpoint:
    """One slot's checkpoint, its H and loss history checked against their digests."""
    where = posixpath.join(os.fspath(out), GROUP, slot)
    try:
        if slot not in group:
            raise _DamagedSlot(f"{where} is missing")
        target = group[slot]
        attrs = dict(target.attrs)
        if attrs.get("state") == "writing":
            raise _DamagedSlot(f"{where} was being written when the run stopped")
        W_arr, H_arr = target["W"], target["H"]
        iteration = int(attrs["iteration"])
        history = list(attrs["loss_history"])
    except _DamagedSlot:
        raise
    except Exception as exc:  # noqa: BLE001 - KeyError, JSON and codec errors alike
        raise _DamagedSlot(f"{where}: {one_line(exc)}") from exc
    if W_arr.shape[1] != H_arr.shape[0]:
        raise _DamagedSlot(f"{where}: W has {W_arr.shape[1]} columns but H has "
                           f"{H_arr.shape[0]} rows")
    version = attrs.get("version")
    try:
        H = (read_version(H_arr, version) if H_arr.chunks[1] < H_arr.shape[1]
             else np.asarray(H_arr[...]))
    except Exception as exc:  # noqa: BLE001 - a chunk that fails its CRC, or undecodable
        raise _DamagedSlot(f"{posixpath.join(where, 'H')}: {one_line(exc)}") from exc
    notes = []
    digest = attrs.get("digest")
    if digest is None:  # written before checkpoints were verified: resumed, and said so
        notes.append(f"unverified checkpoint ({where} was written before dnmf verified "
                     "checkpoints)")
    elif any(value is not None and _digests(H, history).get(key) != value
             for key, value in digest.items()):
        raise _DamagedSlot(f"{where}: H or the loss history differs from its digest")
    # NaN is stored as null (JSON): iterations whose loss was not evaluated (loss_every)
    history = [float("nan") if v is None else v for v in history]
    return Checkpoint(
        iteration=iteration, W=_lazy_W(target, version, out), H=H, loss_history=history,
        seconds_per_iteration=list(attrs.get("seconds_per_iteration", [])), params={},
        fingerprint={}, notes=notes)


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
           scheduler: Any = None, coords: dict[str, Any] | None = None) -> None:
    """Write the final W and H, the input's labels, the metadata, ``status = complete`` (last),
    drop the checkpoint."""
    root = zarr.open_group(_store(out), mode="r+")
    write_arrays(root, W, H, scheduler)
    write_coords(root, coords, int(max(W.chunks[0])))
    root.attrs.update({**jsonable(attrs), "schema_version": SCHEMA_VERSION})
    root.attrs["status"] = "complete"
    if GROUP in root:
        del root[GROUP]
    consolidate(_store(out))
