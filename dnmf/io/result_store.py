"""The result store: W, H and the run's metadata in a Zarr v3 group (schema_version 1).

Layout (see CONTRACT.md): ``W (sample, component)`` chunked like X's rows, ``H (component,
feature)``, group attributes with the run's metadata and ``status`` written last. Local outputs
are written into a hidden sibling directory and renamed into place, so a crash never leaves
something at OUT that looks like a result.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from dnmf.errors import InputError, OutputError
from dnmf.io.common import one_line
from dnmf.io.lock import claim
from dnmf.io.remote import claim_output, exists, redact, zarr_store
from dnmf.io.zarr_ import read_version
from dnmf.named_axes import coord_values

SCHEMA_VERSION = 1


def local_path(out: str | os.PathLike) -> Path | None:
    """The local path an output names (a plain path, ``file://`` or ``local://``), as the
    writers here write it (no ``~`` expansion, no percent-decoding); ``None`` for a remote
    URL."""
    text = os.fspath(out)
    for prefix in ("file://", "local://"):  # fsspec's two names of the local filesystem
        if text.startswith(prefix):
            return Path(text[len(prefix):])
    if "://" in text:
        return None
    return Path(text)


def check_output(out: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Refuse an output that exists (unless ``overwrite``) or cannot be created — before any work.

    Raises
    ------
    OutputError
    """
    if not os.fspath(out).strip():
        # Path("") is the working directory: replacing it would delete everything there
        raise OutputError("the output path is empty — give a path such as result.zarr")
    path = local_path(out)
    if path is None:
        # object stores follow the local rule: nothing existing is replaced without overwrite
        if not overwrite and exists(os.fspath(out)):
            raise OutputError(
                f"output {redact(out)} already exists — pass --overwrite (overwrite=True) to "
                "replace it or choose another URL")
        return
    if path.is_symlink() and not path.exists():
        raise OutputError(
            f"output {path} is a symbolic link to {os.readlink(path)}, which does not exist "
            "(or loops) — remove the link or choose another path")
    if path.exists() and not overwrite:
        raise OutputError(
            f"output {path} already exists — pass --overwrite (overwrite=True) to replace it "
            "or choose another path"
        )
    check_creatable(path.absolute().parent, f"output {path}")


def nearest_existing(path: Path) -> Path:
    """``path`` itself, or the closest folder above it that exists."""
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    return probe


def check_creatable(folder: Path, label: str) -> None:
    """Refuse ``label`` (an output, named in the message) when ``folder``, or the folder above
    it that exists, is a file or cannot be written into.

    Raises
    ------
    OutputError
    """
    probe = nearest_existing(folder)
    if not probe.is_dir():
        raise OutputError(
            f"cannot create {label}: {probe} is a file, not a directory — choose another path")
    if not can_create_in(probe):
        raise OutputError(f"cannot write {label}: {probe} is not writable — choose another path")


def check_free_space(out: str | os.PathLike, nbytes: int) -> None:
    """Refuse a local output whose file system has less than ``nbytes`` free (the plan knows
    the result's size) — before any work. Remote outputs are not checked.

    Raises
    ------
    OutputError
    """
    path = local_path(out)
    if path is None:
        return
    try:
        free = shutil.disk_usage(nearest_existing(path)).free
    except OSError:
        return  # the file system does not say: found, if at all, when writing
    if free < nbytes:
        raise OutputError(
            f"not enough space for {path}: the result needs up to {nbytes:,} bytes and "
            f"{free:,} are free there — free some space or write elsewhere")


@contextlib.contextmanager
def disk_errors_named(out: str | os.PathLike, nbytes: int | None = None) -> Iterator[None]:
    """A full disk (or quota) while writing ``out`` as one line naming the path and the bytes
    the write needs, instead of an ``OSError`` from deep inside zarr."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        need = "" if nbytes is None else f" (the write needs up to {nbytes:,} bytes)"
        raise OutputError(
            f"no space left on the device holding {out}{need} — free some space or write "
            "elsewhere") from None


def can_create_in(folder: Path) -> bool:
    """Whether a file can be made in ``folder``: tried, not guessed (``os.access`` says yes to
    root everywhere, and knows nothing of read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_directory_output(directory: str | os.PathLike) -> None:
    """Refuse a directory output (plots) that is a file or cannot be created — before any work.

    Raises
    ------
    OutputError
    """
    path = local_path(directory)
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, not a directory — give a directory for the plots")
    check_creatable(path, str(path))


def write_result(
    out: str | os.PathLike,
    *,
    W: da.Array,
    H: np.ndarray | da.Array,
    attrs: dict[str, Any],
    overwrite: bool = False,
    scheduler: Any = None,
    coords: dict[str, Any] | None = None,
) -> str:
    """Write W chunk by chunk (on the workers), H, the input's labels (``coords``, see
    :func:`write_coords`) and ``attrs``; mark the store complete last.

    Returns the path of the store.
    """
    return write_atomically(
        out, lambda store: _write_group(store, W, H, attrs, scheduler, coords),
        overwrite=overwrite)


def write_atomically(out: str | os.PathLike, write: Any, *, overwrite: bool = False) -> str:
    """Call ``write(store_path)`` on a hidden sibling of ``out``, then rename it into place.

    ``write`` may make a directory (a Zarr store) or a single file (NetCDF). A crash or an
    error leaves nothing at ``out`` (the partial output is removed); an existing ``out`` is
    replaced only with ``overwrite`` and only once the new one is whole. Remote URLs are
    written in place (no atomic rename on object stores: ``write`` gets an fsspec store, and
    writes ``status`` last so a reader never takes a partial store for a result). Returns the
    path.
    """
    check_output(out, overwrite=overwrite)
    path = local_path(out)
    if path is None:
        with claim_output(out):
            write(zarr_store(out))
        return os.fspath(out)
    with claim(path):
        return _write_and_rename(path, write, overwrite)


def _write_and_rename(path: Path, write: Any, overwrite: bool) -> str:
    """:func:`write_atomically` of a claimed local ``path``."""
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        write(str(tmp))
        if path.exists() or path.is_symlink():
            if not overwrite:  # appeared during the run: never replaced without overwrite
                raise OutputError(f"output {path} appeared while this run was writing it — "
                                  "pass --overwrite to replace it, or choose another path")
            trash = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, trash)
            os.replace(tmp, path)
            remove_path(trash)
        else:
            os.replace(tmp, path)
    finally:
        remove_path(tmp)
    return str(path)


def remove_path(path: Path) -> None:
    """Delete a directory tree, a file or a symbolic link (not its target), if there."""
    if path.is_symlink():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _write_group(store: str, W: da.Array, H: Any, attrs: dict, scheduler: Any,
                 coords: dict[str, Any] | None = None) -> None:
    root = zarr.open_group(store, mode="w", zarr_format=3)
    write_arrays(root, W, H, scheduler)
    write_coords(root, coords, int(max(W.chunks[0])))
    root.attrs.update({**jsonable(attrs), "schema_version": SCHEMA_VERSION, "status": "running"})
    root.attrs["status"] = "complete"  # last: every chunk of W and H is written by now
    consolidate(store)


def write_arrays(group: zarr.Group, W: da.Array, H: Any, scheduler: Any, *,
                 checksums: bool = False) -> None:
    """``W`` (chunk by chunk, on the workers) and ``H`` into ``group``, replacing old ones;
    with ``checksums`` every chunk carries a CRC32C that zarr verifies as it reads it."""
    rows = int(max(W.chunks[0]))
    k = W.shape[1]
    codecs: dict[str, Any] = {}
    if checksums:
        from zarr.codecs import Crc32cCodec, ZstdCodec

        codecs = {"compressors": [ZstdCodec(level=0), Crc32cCodec()]}
    w_arr = group.create_array(
        "W", shape=W.shape, chunks=(rows, k), dtype=W.dtype,
        dimension_names=("sample", "component"), overwrite=True, **codecs,
    )
    h_chunks = (H.shape[0], max(H.chunks[1])) if isinstance(H, da.Array) else H.shape
    h_arr = group.create_array(
        "H", shape=H.shape, chunks=h_chunks, dtype=H.dtype,
        dimension_names=("component", "feature"), overwrite=True, **codecs,
    )
    # zarr chunks are regular: realign irregular row chunks so no two tasks write one chunk.
    W_aligned = W if all(c == rows for c in W.chunks[0][:-1]) else W.rechunk({0: rows})
    if isinstance(H, da.Array):  # the 2-D scheme: H is chunked on the workers
        da.store([W_aligned, H.rechunk(h_chunks)], [w_arr, h_arr], lock=False,
                 scheduler=scheduler)
    else:
        h_arr[...] = H
        da.store(W_aligned, w_arr, lock=False, scheduler=scheduler)


def write_coords(group: zarr.Group, coords: dict[str, Any] | None, rows: int) -> None:
    """The input's labels as the coordinates ``sample`` and ``feature`` (1-D arrays on those
    dims, which ``xr.open_zarr`` makes W's and H's coordinates), written ``rows`` labels at a
    time, and the input's own dim names as the attribute ``dims``.

    ``coords`` is :func:`dnmf.named_axes.store_coords`'s; None writes nothing.
    """
    if not coords:
        return
    for name in ("sample", "feature"):
        labels = coords.get(name)
        if labels is None:
            continue
        n = len(labels)
        step = max(1, min(rows, n)) if name == "sample" else max(1, n)
        first = coord_values(labels, 0, min(step, n))
        dtype = str if first.dtype == object else first.dtype
        arr = group.create_array(name, shape=(n,), chunks=(step,), dtype=dtype,
                                 dimension_names=(name,), overwrite=True)
        arr[: len(first)] = first
        for start in range(step, n, step):
            arr[start:start + step] = coord_values(labels, start, min(start + step, n))
    group.attrs["dims"] = list(coords["dims"])


def consolidate(store: str) -> None:
    """Consolidated metadata, so ``xr.open_zarr`` opens the store in one read."""
    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not (yet) in the v3 spec; xarray uses it
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(store)


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def open_result(path: str | os.PathLike) -> tuple[da.Array, np.ndarray, dict[str, Any]]:
    """``(W lazy, H, attrs)`` of a complete result store.

    Raises
    ------
    FileNotFoundError, InputError
    """
    local = local_path(path)
    if local is not None and not local.exists():
        raise FileNotFoundError(f"no result store at {path} — check the path")
    try:
        root = zarr.open_group(zarr_store(path, read_only=True), mode="r")
        attrs = dict(root.attrs)
    except (KeyError, ValueError, OSError, zarr.errors.BaseZarrError) as exc:
        raise InputError(f"{path} is not a dnmf result store ({one_line(exc)}) — check "
                         "the path") from exc
    status = attrs.get("status")
    if status in ("running", "interrupted"):
        raise InputError(
            f"result store {path} is an interrupted run (status {status!r}), not a result — "
            "resume it with --resume (resume=True), or fit again with --overwrite")
    if status != "complete":
        raise InputError(
            f"{path} is not a complete dnmf result store (status {status!r}) — check the path, "
            "or fit again")
    try:
        W = read_version(root["W"])  # a store replaced by --overwrite is new content
        H = np.asarray(root["H"][...])
    except (KeyError, ValueError, OSError, zarr.errors.BaseZarrError) as exc:
        raise InputError(f"result store {path} is damaged: W or H cannot be read "
                         f"({one_line(exc)}) — fit again with --overwrite") from exc
    k = attrs.get("n_components", H.shape[0] if H.ndim == 2 else None)
    if W.ndim != 2 or H.ndim != 2 or W.shape[1] != H.shape[0] or H.shape[0] != k:
        raise InputError(
            f"result store {path} is damaged: W {W.shape}, H {H.shape} and n_components {k!r} "
            "disagree — fit again with --overwrite")
    return W, H, attrs
