"""An output is never an input: compare where outputs go with where inputs live.

Every function that writes checks this before it reads anything. An output that is replaced
whole (a result store, a NetCDF file, a report) may not equal, contain or lie inside an
input, ``overwrite`` or not: replacing it would delete the input, or change it while a run
still reads it (an out-of-core fit streams X from disk at every iteration). A directory of
plots may hold an input (``--plots .`` beside the data) but may not be or lie inside one, and
no file it writes may be one. Two outputs of one run may not overlap either.

Each location is put in the form its own reader or writer gives it: inputs as
:func:`dnmf.io.common.resolve_location` opens them (``~`` expanded, a percent-encoded
``file://`` URL decoded when that names the existing path), outputs as the writers of
:mod:`dnmf.io.result_store` write them (no expansion). Local paths are then compared after
:func:`os.path.realpath` (symbolic links followed; two existing paths that are one file,
hard links, are equal too); other URLs with their protocol lower-cased and repeated or ``.``
path components dropped (``S3://b//x/./y/`` is ``s3://b/x/y``; ``..`` is kept, as object
stores take it literally).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dnmf.errors import OutputError
from dnmf.io.common import resolve_location
from dnmf.io.result_store import local_path

__all__ = [
    "Stored",
    "check_outputs_are_not_inputs",
    "check_plots_are_not_inputs",
    "resolved_locations",
    "storage_locations",
]

#: Protocols that name the same storage under two spellings.
_PROTOCOL_ALIASES = {"s3a": "s3", "gcs": "gs", "local": "file"}
#: Attributes through which array wrappers (xarray's lazy arrays) reach the array they wrap.
_WRAPPED = ("array", "_array", "datastore")
_MAX_WRAPPING = 8


@dataclass(frozen=True)
class Stored:
    """An input and the variable inside it (``var``: a Zarr array in a group), when the
    variable can live elsewhere than its container (a symbolic link inside the store)."""

    obj: Any
    var: str | None = None


@dataclass(frozen=True)
class _Where:
    """A storage location in comparable form: a real local path, or a normalised URL."""

    given: str  # as the user wrote it, for messages
    local: bool
    key: str  # realpath (local) or protocol://path (remote)

    def describe(self) -> str:
        if self.local and os.path.abspath(self.given) != self.key and self.given != self.key:
            return f"{self.given} (which is {self.key})"
        return self.given


def storage_locations(obj: Any) -> list[str]:
    """The paths or URLs that hold an input; empty for data that lives in memory.

    Understands paths and URLs (and tuples of them), Zarr arrays and groups, h5py datasets
    and files, ``numpy.memmap``, :class:`dnmf.io.MatrixSource`, dask arrays read from a store
    (``dask.array.from_zarr``, xarray's lazily opened variables) and xarray objects.
    """
    if obj is None:
        return []
    if isinstance(obj, str | os.PathLike):
        return [os.fspath(obj)]
    if isinstance(obj, tuple) and obj and all(isinstance(o, str | os.PathLike) for o in obj):
        return [os.fspath(o) for o in obj]
    found = _wrapped_location(obj)
    if found is not None:
        return [found]
    if type(obj).__name__ == "MatrixSource":
        return [obj.path] if obj.path else storage_locations(obj.array)
    locations = []
    encoding = getattr(obj, "encoding", None)  # xarray DataArray / Dataset opened from a file
    if isinstance(encoding, Mapping) and isinstance(encoding.get("source"), str):
        locations.append(encoding["source"])
    data_vars = getattr(obj, "data_vars", None)  # xarray Dataset
    if isinstance(data_vars, Mapping):
        for variable in data_vars.values():
            locations += storage_locations(variable)
    elif type(obj).__module__.startswith("xarray"):  # DataArray, Variable
        locations += storage_locations(getattr(obj, "data", None))
    elif hasattr(obj, "__dask_graph__"):
        locations += _dask_array_locations(obj)
    return list(dict.fromkeys(locations))


def _wrapped_location(obj: Any, depth: int = 0) -> str | None:
    """The file of a store object (zarr, h5py, numpy.memmap), or of the one it wraps."""
    package = type(obj).__module__.split(".")[0]
    if package == "zarr":
        return _zarr_location(obj)
    if package == "h5py":
        h5file = getattr(obj, "file", None)
        return os.fspath(h5file.filename) if h5file is not None else None
    if package == "numpy":
        filename = getattr(obj, "filename", None)  # numpy.memmap
        return os.fspath(filename) if isinstance(filename, str | os.PathLike) else None
    if depth >= _MAX_WRAPPING or package != "xarray":
        return None
    for attr in _WRAPPED:
        inner = getattr(obj, attr, None)
        if inner is not None:
            return _wrapped_location(inner, depth + 1)
    return None


def _zarr_location(obj: Any) -> str | None:
    store = getattr(obj, "store", None)
    inner = str(getattr(obj, "path", "") or "").strip("/")
    root = getattr(store, "root", None)  # zarr.storage.LocalStore
    if isinstance(root, str | os.PathLike):
        base = os.fspath(root)
        return os.path.join(base, inner) if inner else base
    fs, path = getattr(store, "fs", None), getattr(store, "path", None)  # FsspecStore
    if fs is None or not isinstance(path, str):
        return None  # a memory store
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    full = "/".join(p for p in (path.rstrip("/"), inner) if p)
    return full if protocol in ("file", "local") else f"{protocol}://{full}"


def _dask_array_locations(array: Any) -> list[str]:
    """The stores a dask array reads from: the objects ``from_array`` keeps in its
    ``original-`` layers (one key each; nothing is materialised)."""
    graph = array.__dask_graph__()
    layers = getattr(graph, "layers", {})
    locations = []
    for name, layer in layers.items():
        if str(name).startswith("original-"):
            for value in layer.values():
                found = _wrapped_location(value)
                if found is not None:
                    locations.append(found)
    return locations


def _where(text: str, *, role: str) -> _Where | None:
    """``text`` in comparable form; ``role`` is "input" or "output" (see the module doc)."""
    if not text:
        return None
    url = text.rsplit("::", 1)[-1] if "://" in text else text  # simplecache::s3://...
    protocol, sep, rest = url.partition("://")
    protocol = _PROTOCOL_ALIASES.get(protocol.lower(), protocol.lower()) if sep else "file"
    if protocol == "file":
        # spelled as the reader opens it, or as the writer writes it
        path = resolve_location(url).path if role == "input" else local_path(url)
        return _Where(text, True, os.path.realpath(path))
    parts = [p for p in rest.split("/") if p not in ("", ".")]
    return _Where(text, False, f"{protocol}://{'/'.join(parts)}")


def _input_wheres(value: Any) -> list[_Where]:
    stored = value if isinstance(value, Stored) else Stored(value)
    wheres = []
    for text in storage_locations(stored.obj):
        where = _where(text, role="input")
        if where is None:
            continue
        wheres.append(where)
        if stored.var and where.local:
            inner = os.path.join(where.key, stored.var.strip("/"))
            if os.path.lexists(inner) and os.path.realpath(inner) != inner:
                # the variable is a link out of its store: where it points is an input too
                wheres.append(_Where(os.path.join(text, stored.var.strip("/")), True,
                                     os.path.realpath(inner)))
    return wheres


def _sources(inputs: Mapping[str, Any]) -> list[tuple[str, _Where]]:
    return [(label, where) for label, value in inputs.items() for where in _input_wheres(value)]


def resolved_locations(obj: Any, var: str | None = None) -> tuple[str, ...]:
    """Where an input lives, resolved now (real paths, normalised URLs), to check outputs
    against later, after the working directory or links may have changed."""
    return tuple(w.key for w in _input_wheres(Stored(obj, var)))


def _relation(out: _Where, inp: _Where) -> str | None:
    """How ``out`` overlaps ``inp``: "is", "contains", "lies inside" or None."""
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
    sep = os.sep if out.local else "/"
    if inp.key.startswith(out.key.rstrip(sep) + sep):
        return "contains"
    if out.key.startswith(inp.key.rstrip(sep) + sep):
        return "lies inside"
    return None


_WHY = {
    "is": "writing it would destroy the input",
    "contains": "replacing it would delete the input",
    "lies inside": "writing it would change the input",
}


def check_outputs_are_not_inputs(outputs: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
    """Refuse, whatever ``overwrite`` says, an output that equals, contains or lies inside an
    input, or another output of the same run.

    Parameters
    ----------
    outputs : mapping of label to path or URL
        What is written, e.g. ``{"output": out, "NetCDF output": netcdf}``; ``None`` values
        are skipped.
    inputs : mapping of label to an input
        Paths, URLs, opened stores (see :func:`storage_locations`) or :class:`Stored`, e.g.
        ``{"the input": Stored(X, var), "the mask": mask}``; in-memory data and ``None`` are
        skipped.

    Raises
    ------
    OutputError
        One line naming both paths and the fix.
    """
    sources = _sources(inputs)
    targets = [(label, w) for label, value in outputs.items()
               if value is not None and (w := _where(os.fspath(value), role="output"))]
    for out_label, out in targets:
        for in_label, inp in sources:
            relation = _relation(out, inp)
            if relation is not None:
                raise OutputError(
                    f"{out_label} {out.describe()} {relation} {in_label} {inp.describe()} — "
                    f"{_WHY[relation]}, even with --overwrite (overwrite=True); choose an "
                    "output path outside the input")
    for i, (first_label, first) in enumerate(targets):
        for second_label, second in targets[i + 1:]:
            if _relation(first, second) is not None:
                raise OutputError(
                    f"{first_label} {first.describe()} and {second_label} {second.describe()} "
                    "overlap — one would replace the other; give them separate paths")


def check_plots_are_not_inputs(directory: Any, files: Iterable[str],
                               inputs: Mapping[str, Any], *, kind: str = "plots") -> None:
    """Refuse a plots directory that is or lies inside an input, or one of whose files (links
    followed) would be an input; a directory that holds an input (``--plots .`` beside it) is
    fine.

    Parameters
    ----------
    directory : path
    files : iterable of str
        The names the plots may take, as glob patterns (``abundance_*.png``).
    inputs : mapping of label to an input, as for :func:`check_outputs_are_not_inputs`
    kind : str
        What the directory holds, for the message (``"plots"``, ``"GeoTIFF"``).

    Raises
    ------
    OutputError
    """
    if directory is None:
        return
    out = _where(os.fspath(directory), role="output")
    if out is None or not out.local:
        return
    sources = _sources(inputs)
    plot_files = []
    for pattern in files:
        if glob.has_magic(pattern):  # only files that exist can be links to an input
            plot_files += glob.glob(os.path.join(glob.escape(out.key), pattern))
        else:
            plot_files.append(os.path.join(out.key, pattern))
    written = [_Where(path, True, os.path.realpath(path)) for path in plot_files]
    for in_label, inp in sources:
        relation = _relation(out, inp)
        if relation in ("is", "lies inside"):
            raise OutputError(
                f"{kind} directory {out.describe()} {relation} {in_label} {inp.describe()} — "
                f"writing into it would change the input; choose a {kind} directory "
                "outside it")
        for plot in written:
            if _relation(plot, inp) is not None:
                raise OutputError(
                    f"{kind} directory {out.describe()} would write {os.path.basename(plot.given)}"
                    f" over {in_label} {inp.describe()} — choose another {kind} directory")
