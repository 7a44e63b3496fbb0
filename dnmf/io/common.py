"""Helpers shared by the storage engines: locations, chunk sizing, dtype and shape checks.

Nothing here reads array data; every function works on metadata only.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from dnmf.errors import InputError
from dnmf.io.remote import input_options

#: Target size of one chunk of X in memory (after any dtype conversion).
TARGET_CHUNK_BYTES = 64 * 2**20

#: What the "cannot read" errors list as supported.
SUPPORTED_FORMATS = "zarr, HDF5, NetCDF or .npy"

#: How many entries an error message lists before it says "and N more".
_MAX_LISTED = 12


@dataclass(frozen=True)
class Location:
    """Where an input lives: a local path or an fsspec URL, resolved once.

    Picklable (plain strings and a dict), so engine proxies can carry it to worker processes
    and open the data there.
    """

    original: str  # as the user gave it, for messages and provenance
    protocol: str  # "file" for local paths
    path: str  # the path as the filesystem sees it (absolute local path for "file")
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        # fsspec caches filesystem instances, so this is cheap to call per read.
        return fsspec.filesystem(self.protocol, **dict(self.storage_options))

    @property
    def url(self) -> str:
        """The location as zarr/fsspec accept it: a local path, or the original URL."""
        return self.path if self.is_local else self.original

    @property
    def name(self) -> str:
        """Short name for messages: the last path component."""
        return os.path.basename(self.path.rstrip("/")) or self.original

    @property
    def extension(self) -> str:
        return os.path.splitext(self.path.rstrip("/"))[1].lower()

    def stamp(self) -> tuple[Any, ...]:
        """Size and modification time, so re-written inputs get new graph names."""
        try:
            if self.is_local:
                st = os.stat(self.path)
                return (st.st_size, st.st_mtime_ns)
            info = self.fs.info(self.path)
        except (OSError, ValueError):
            return ()
        keys = ("size", "mtime", "LastModified", "ETag", "etag", "created")
        return tuple(str(info.get(k)) for k in keys if info.get(k) is not None)


def resolve_location(
    source: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> Location:
    """Resolve a path or fsspec URL; ``file://`` URLs become plain local paths."""
    original = os.fspath(source)
    # without options of its own, a URL gets the ones of the call it is opened in
    options = dict(input_options() if storage_options is None else storage_options)
    if "://" not in original and "::" not in original:
        path = os.path.abspath(os.path.expanduser(original))
        return Location(original, "file", path, options)
    try:
        fs, path = fsspec.core.url_to_fs(original, **options)
    except (ImportError, ValueError) as err:
        # Unknown protocol or missing optional backend (e.g. s3fs not installed).
        raise InputError(
            f"cannot open {original}: {one_line(err)} — install the fsspec backend for this "
            "protocol (e.g. pip install s3fs) or check the URL"
        ) from err
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        path = os.path.abspath(path)
        # file:// URLs are percent-encoded (Path.as_uri writes "a%20b"); fsspec keeps them
        # literal. Prefer whichever names an existing path.
        unquoted = urllib.parse.unquote(path)
        if unquoted != path and not os.path.exists(path) and os.path.exists(unquoted):
            path = unquoted
        return Location(original, "file", path, options)
    if "::" in original:
        # Chained URLs (e.g. simplecache::s3://...) keep their own filesystem stack.
        protocol = original.split("::", 1)[0]
    return Location(original, protocol, path, options)


def panel_chunks(
    shape: tuple[int, int],
    itemsize: int,
    stored: tuple[int, ...] | None = None,
    *,
    target: int | None = None,
) -> tuple[int, int]:
    """Block shape for X: row panels holding all columns, aligned to the stored chunking.

    Parameters
    ----------
    shape : tuple of int
        ``(n_samples, n_features)``.
    itemsize : int
        Bytes per element in memory (after any dtype conversion).
    stored : tuple of int, optional
        The storage layout's own chunk shape; ``None`` for contiguous data (.npy, in-memory,
        unchunked HDF5), which can be cut at any row.
    target : int, optional
        Bytes per block; defaults to :data:`TARGET_CHUNK_BYTES`.

    Returns
    -------
    tuple of int
        ``(rows, cols)``: whole multiples of ``stored`` (except at the array's edge), with
        ``cols == n_features`` unless one band of stored chunks across all columns would exceed
        twice the target, in which case columns are split on stored chunk boundaries.
    """
    target = TARGET_CHUNK_BYTES if target is None else target
    n_rows, n_cols = shape
    stored_rows, stored_cols = (1, 1) if stored is None else (stored[0], stored[1])
    row_bytes = max(1, n_cols * itemsize)
    if stored_rows * row_bytes <= 2 * target:
        rows = max(stored_rows, (target // row_bytes) // stored_rows * stored_rows)
        return (max(1, min(rows, n_rows)), n_cols)
    # One band of stored chunks with all columns is too big: split the columns (a 2-D block
    # grid), still on stored chunk boundaries so no stored chunk is read twice.
    cols = max(stored_cols, (target // (stored_rows * itemsize)) // stored_cols * stored_cols)
    return (max(1, min(stored_rows, n_rows)), max(1, min(cols, n_cols)))


def float_dtype(
    stored: np.dtype[Any], requested: str | np.dtype[Any] | None, what: str = "X"
) -> tuple[np.dtype[Any], tuple[str, ...]]:
    """The floating dtype X is computed in, and the notes explaining any conversion.

    Integers and bools become float32 (exact for counts up to 2**24, half the memory of
    float64); float16 is widened to float32 since BLAS has no float16 kernels; float32 and
    float64 are kept. ``requested`` forces float32 or float64.
    """
    stored = np.dtype(stored)
    notes: list[str] = []
    kind = stored.kind
    if kind in "iu":
        result = np.dtype(np.float32)
        notes.append(f"integer input {stored} converted to float32")
    elif kind == "b":
        result = np.dtype(np.float32)
        notes.append("boolean input converted to float32")
    elif kind == "f":
        if stored.itemsize < 4:
            result = np.dtype(np.float32)
            notes.append(f"{stored} input converted to float32")
        elif stored.itemsize > 8:
            result = np.dtype(np.float64)
            notes.append(f"{stored} input converted to float64")
        else:
            result = stored
    elif kind == "c":
        raise InputError(
            f"{what} has complex dtype {stored}; NMF needs real non-negative values — "
            "take the magnitude (abs) or the real part first"
        )
    else:
        raise InputError(
            f"{what} has non-numeric dtype {describe_dtype(stored)}; NMF needs a numeric "
            "array — pick a numeric variable with --var or convert the data"
        )
    if requested is not None:
        try:
            forced = np.dtype(requested)
        except TypeError as err:
            raise InputError(
                f"dtype={requested!r} is not a dtype: choose float32 or float64"
            ) from err
        if forced.kind != "f" or forced.itemsize not in (4, 8):
            raise InputError(f"dtype={forced} is not supported: choose float32 or float64")
        if forced != result:
            notes = [n for n in notes if "converted" not in n]
            notes.append(f"{stored} input converted to {forced} (dtype={forced})")
            result = forced
    return result, tuple(notes)


def describe_dtype(dtype: np.dtype[Any]) -> str:
    """A short dtype name for messages (compound dtypes are not worth printing in full)."""
    dtype = np.dtype(dtype)
    if dtype.names:
        return "compound (" + ", ".join(dtype.names) + ")"
    if dtype.kind == "O":
        return "object"
    if dtype.kind in "SU":
        return f"string ({dtype})"
    return str(dtype)


def check_shape(shape: tuple[int, ...], what: str = "X") -> tuple[int, int]:
    """X must be 2-D with no zero dimension."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise InputError(
            f"{what} must be 2-D (n_samples, n_features); got shape {shape} — reshape it or "
            "pick a 2-D variable with --var"
        )
    if 0 in shape:
        raise InputError(
            f"{what} is empty: shape {shape} has a zero dimension — check the input file and "
            "variable (--var)"
        )
    return shape  # type: ignore[return-value]


def listing(entries: Iterable[tuple[str, tuple[int, ...], Any]]) -> str:
    """``'/a (100, 20) float32, /b (5,) int16'``, truncated after a dozen entries."""
    items = [f"{name} {tuple(shape)} {describe_dtype(dtype)}" for name, shape, dtype in entries]
    if not items:
        return "(none)"
    if len(items) > _MAX_LISTED:
        rest = len(items) - _MAX_LISTED
        items = items[:_MAX_LISTED] + [f"... and {rest} more"]
    return ", ".join(items)


def is_candidate(shape: tuple[int, ...], dtype: Any) -> bool:
    """Could this variable be X: 2-D and numeric (int, uint, bool or float)?"""
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        return False
    return len(shape) == 2 and kind in "iubf"


def pick_variable(
    entries: list[tuple[str, tuple[int, ...], Any]],
    *,
    where: str,
    noun: str,
) -> str:
    """Choose X among a container's variables when the user named none.

    The one 2-D numeric variable wins; failing that, a container with a single variable uses
    it (so its shape or dtype error is reported precisely); anything else is ambiguous.
    """
    candidates = [e for e in entries if is_candidate(e[1], e[2])]
    if len(candidates) == 1:
        return candidates[0][0]
    if not candidates and len(entries) == 1:
        return entries[0][0]
    if candidates:
        raise InputError(
            f"{where} holds {len(candidates)} 2-D numeric {noun}s; pick one with var= (--var): "
            f"{listing(candidates)}"
        )
    raise InputError(
        f"no 2-D numeric {noun} in {where}; {noun}s: {listing(entries)} — pass a 2-D {noun} "
        "with var= (--var)"
    )


def missing_variable(var: str, where: str, noun: str, entries: list[Any]) -> InputError:
    return InputError(f"no {noun} {var!r} in {where}; {noun}s: {listing(entries)}")


def cannot_read(loc: Location, fmt: str | None, err: BaseException | str) -> InputError:
    """The one error for inputs that exist but cannot be parsed."""
    reason = err if isinstance(err, str) else one_line(err)
    if fmt is None:
        return InputError(
            f"cannot read {loc.original} as any supported format ({SUPPORTED_FORMATS}): {reason}"
        )
    return InputError(
        f"cannot read {loc.original} as {fmt}: {reason} — check that the file is complete "
        f"and really is {fmt} (supported: {SUPPORTED_FORMATS})"
    )


def not_found(loc: Location) -> FileNotFoundError:
    where = "path" if loc.is_local else "URL (and credentials)"
    return FileNotFoundError(f"{loc.original} does not exist — check the {where}")


def one_line(err: BaseException) -> str:
    """A library error squeezed onto one line, with its type for context."""
    text = " ".join(str(err).split()) or "no details"
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(err).__name__}: {text}"
