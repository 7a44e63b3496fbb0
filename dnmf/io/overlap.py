"""An output is never an input: compare where outputs go with where inputs live.

Every function that writes checks this before it reads anything. An output that is replaced
whole (a result store, a NetCDF file, a report) may not equal, contain or lie inside an
input, ``overwrite`` or not: replacing it would delete the input, or change it while a run
still reads it (an out-of-core fit streams X from disk at every iteration). A directory of
plots may hold an input (``--plots .`` beside the data) but may not lie inside one, and no
file it writes may be one.

Paths are compared after :func:`os.path.realpath` (symbolic links followed), ``file://`` URLs
as the local paths they name, other URLs with their protocol lower-cased and their path
normalised (``s3://b//x/./y/`` is ``s3://b/x/y``); two existing local paths that are one file
(a hard link) are equal too.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dnmf.errors import OutputError

__all__ = ["check_outputs_are_not_inputs", "check_plots_are_not_inputs", "storage_location"]

#: Protocols that name the same storage under two spellings.
_PROTOCOL_ALIASES = {"s3a": "s3", "gcs": "gs", "local": "file"}


@dataclass(frozen=True)
class _Where:
    """A storage location in comparable form: a real local path, or a normalised URL."""

    given: str  # as the user wrote it, for messages
    local: bool
    key: str  # realpath (local) or protocol://path (remote)

    def describe(self) -> str:
        if self.local and os.path.abspath(os.path.expanduser(self.given)) != self.key:
            return f"{self.given} (which is {self.key})"
        return self.given


def storage_location(obj: Any) -> str | None:
    """The path or URL that holds an input, or ``None`` for data that lives in memory.

    Understands paths and URLs, Zarr arrays and groups (their store's root), h5py datasets
    and files, ``numpy.memmap``, :class:`dnmf.io.MatrixSource` and xarray objects opened from
    a file (``encoding["source"]``). A dask array is not traced back to its store.
    """
    if obj is None:
        return None
    if isinstance(obj, str | os.PathLike):
        return os.fspath(obj)
    path = getattr(obj, "filename", None)  # numpy.memmap, h5py.File
    if isinstance(path, str | os.PathLike) and type(obj).__module__.split(".")[0] in (
            "numpy", "h5py"):
        return os.fspath(path)
    h5file = getattr(obj, "file", None)  # h5py.Dataset, h5py.Group
    if type(obj).__module__.split(".")[0] == "h5py" and h5file is not None:
        return os.fspath(h5file.filename)
    if type(obj).__module__.split(".")[0] == "zarr":
        return _zarr_store_location(getattr(obj, "store", None))
    if type(obj).__name__ == "MatrixSource":
        return obj.path
    encoding = getattr(obj, "encoding", None)  # xarray DataArray / Dataset
    if isinstance(encoding, Mapping) and isinstance(encoding.get("source"), str):
        return encoding["source"]
    return None


def _zarr_store_location(store: Any) -> str | None:
    root = getattr(store, "root", None)  # zarr.storage.LocalStore
    if isinstance(root, str | os.PathLike):
        return os.fspath(root)
    fs, path = getattr(store, "fs", None), getattr(store, "path", None)  # FsspecStore
    if fs is not None and isinstance(path, str):
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        return path if protocol in ("file", "local") else f"{protocol}://{path}"
    return None  # a memory store


def _where(target: Any) -> _Where | None:
    text = storage_location(target)
    if text is None or text == "":
        return None
    url = text.rsplit("::", 1)[-1]  # a chained URL (simplecache::s3://...) names its last
    protocol, sep, rest = url.partition("://")
    protocol = _PROTOCOL_ALIASES.get(protocol.lower(), protocol.lower()) if sep else "file"
    if protocol == "file":
        path = rest if sep else url
        if sep:  # file:// URLs are percent-encoded; prefer the spelling that exists
            unquoted = urllib.parse.unquote(path)
            if not os.path.exists(path) and os.path.exists(unquoted):
                path = unquoted
        return _Where(text, True, os.path.realpath(os.path.expanduser(path)))
    normal = posixpath.normpath("/" + rest.strip("/")).lstrip("/")
    return _Where(text, False, f"{protocol}://{normal}")


def _relation(out: _Where, inp: _Where) -> str | None:
    """How ``out`` overlaps ``inp``: "is", "contains", "inside" or None."""
    if out.local != inp.local:
        return None
    if out.key == inp.key:
        return "is"
    if out.local and os.path.exists(out.key) and os.path.exists(inp.key):
        try:
            if os.path.samefile(out.key, inp.key):  # hard links
                return "is"
        except OSError:
            pass
    join = os.path.join if out.local else posixpath.join
    if inp.key.startswith(join(out.key, "")):
        return "contains"
    if out.key.startswith(join(inp.key, "")):
        return "inside"
    return None


_WHY = {
    "is": "writing it would destroy the input",
    "contains": "replacing it would delete the input",
    "inside": "writing it would change the input",
}


def check_outputs_are_not_inputs(outputs: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
    """Refuse, whatever ``overwrite`` says, an output that equals, contains or lies inside an
    input.

    Parameters
    ----------
    outputs : mapping of label to path or URL
        What is written, e.g. ``{"output": out, "NetCDF output": netcdf}``; ``None`` values
        are skipped.
    inputs : mapping of label to an input
        Paths, URLs or opened stores (see :func:`storage_location`), e.g. ``{"the input":
        X, "the mask": mask}``; in-memory data and ``None`` are skipped.

    Raises
    ------
    OutputError
        One line naming both paths and the fix.
    """
    sources = [(label, w) for label, obj in inputs.items() if (w := _where(obj)) is not None]
    for out_label, target in outputs.items():
        out = _where(target)
        if out is None:
            continue
        for in_label, inp in sources:
            relation = _relation(out, inp)
            if relation is None:
                continue
            place = {"is": "is", "contains": "contains", "inside": "lies inside"}[relation]
            raise OutputError(
                f"{out_label} {out.describe()} {place} {in_label} {inp.describe()} — "
                f"{_WHY[relation]}, even with --overwrite (overwrite=True); choose an output "
                "path outside the input")


def check_plots_are_not_inputs(directory: Any, files: Iterable[str],
                               inputs: Mapping[str, Any]) -> None:
    """Refuse a plots directory that is or lies inside an input, or that would write a file
    that is one; a directory that holds an input (``--plots .`` beside it) is fine.

    Parameters
    ----------
    directory : path
    files : iterable of str
        The names the plots may take, as glob patterns (``abundance_*.png``).
    inputs : mapping of label to an input, as for :func:`check_outputs_are_not_inputs`

    Raises
    ------
    OutputError
    """
    out = _where(directory)
    if out is None:
        return
    patterns = list(files)
    for in_label, obj in inputs.items():
        inp = _where(obj)
        if inp is None:
            continue
        relation = _relation(out, inp)
        if relation in ("is", "inside"):
            place = "is" if relation == "is" else "lies inside"
            raise OutputError(
                f"plots directory {out.describe()} {place} {in_label} {inp.describe()} — "
                "writing plots there would change the input; choose a plots directory outside "
                "it")
        paths = os.path if out.local else posixpath
        if relation == "contains" and paths.dirname(inp.key) == out.key \
                and any(fnmatch.fnmatch(paths.basename(inp.key), p) for p in patterns):
            raise OutputError(
                f"plots directory {out.describe()} would write over {in_label} {inp.describe()}"
                " — choose another plots directory")
