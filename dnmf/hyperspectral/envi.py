"""ENVI raster files (a binary file plus a ``.hdr`` text header), read lazily.

The dask graph never carries a ``numpy.memmap``: pickling one would copy the whole file into
the graph. It carries an :class:`ENVIReader` instead, a few strings and numbers that open a
fresh memmap for each block read and hand back a copy of the requested slice.

ENVI header reference: the "ENVI Header Format" page of the ENVI documentation (NV5). The
``reflectance scale factor`` is the number the stored values are *divided* by to give
reflectance in 0-1, unlike CF's ``scale_factor`` which multiplies.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from dnmf.errors import InputError

__all__ = [
    "ENVIReader",
    "find_envi_files",
    "is_spectral_library",
    "nm_factor",
    "open_envi",
    "parse_map_info",
    "read_envi_header",
    "tile_shape",
    "write_envi",
]

#: ENVI ``data type`` codes dnmf reads (complex types 6 and 9 are not NMF input).
ENVI_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int16),
    3: np.dtype(np.int32),
    4: np.dtype(np.float32),
    5: np.dtype(np.float64),
    12: np.dtype(np.uint16),
    13: np.dtype(np.uint32),
    14: np.dtype(np.int64),
    15: np.dtype(np.uint64),
}
_DTYPE_CODES = {dt: code for code, dt in ENVI_DTYPES.items()}

#: Extensions an ENVI binary commonly carries next to its ``.hdr``, in search order.
BINARY_EXTENSIONS = ("", ".img", ".dat", ".bsq", ".bil", ".bip", ".raw")

INTERLEAVES = ("bsq", "bil", "bip")

#: Target bytes of one default spatial tile (all bands, in float32 or the stored dtype).
TILE_BYTES = 32 * 2**20

_REQUIRED = ("samples", "lines", "bands", "data type")
_INT_FIELDS = ("samples", "lines", "bands", "data type", "byte order", "header offset")
_ARRAY_FIELDS = ("wavelength", "fwhm", "bbl", "data gain values", "data offset values")
_TEXT_FIELDS = ("description", "coordinate system string")
_NM_UNITS = {"nanometers", "nanometer", "nanometres", "nanometre", "nm"}
_UM_UNITS = {"micrometers", "micrometer", "micrometres", "micrometre", "microns", "micron",
             "um", "µm", "μm"}
_UNKNOWN_UNITS = {"", "unknown"}


# --------------------------------------------------------------------------- header


def find_envi_files(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The ``(header, binary)`` pair of an ENVI raster, given the path of either.

    The header of ``scene.img`` is ``scene.hdr`` or ``scene.img.hdr``; the binary of
    ``scene.hdr`` is ``scene`` or ``scene`` + one of ``.img .dat .bsq .bil .bip .raw``
    (either case).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    InputError
        The sibling header or binary cannot be found.
    """
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist — check the path")
    if p.suffix.lower() == ".hdr":
        header = p
        stem = p.with_suffix("")
        candidates = [stem] if stem.suffix else []  # scene.img.hdr -> scene.img
        candidates += [stem.with_name(stem.name + e) for e in BINARY_EXTENSIONS]
        candidates += [stem.with_name(stem.name + e.upper()) for e in BINARY_EXTENSIONS if e]
        for c in candidates:
            if c.is_file() and c != header:
                return header, c
        tried = ", ".join(sorted({c.name for c in candidates}))
        raise InputError(
            f"ENVI header {p} has no binary file beside it (tried {tried}) — put the data file "
            "next to the header with the same name"
        )
    for h in (p.with_name(p.name + ".hdr"), p.with_suffix(".hdr"), p.with_name(p.name + ".HDR"),
              p.with_suffix(".HDR")):
        if h.is_file():
            return h, p
    raise InputError(
        f"{p} has no ENVI header beside it ({p.with_suffix('.hdr').name} or {p.name}.hdr) — "
        "pass the header's path or put the .hdr file next to the data"
    )


def _split_entries(text: str, where: str) -> dict[str, str]:
    """``key = value`` pairs of a header; ``{...}`` values may span lines."""
    lines = text.splitlines()
    if not lines or not lines[0].strip().upper().startswith("ENVI"):
        raise InputError(
            f"{where} is not an ENVI header: its first line must be 'ENVI' — pass the .hdr file "
            "of an ENVI raster"
        )
    entries: dict[str, str] = {}
    key: str | None = None
    parts: list[str] = []
    depth = 0
    for number, line in enumerate(lines[1:], start=2):
        if key is None:
            stripped = line.strip()
            if not stripped or stripped.startswith(";"):
                continue  # blank lines and comments
            if "=" not in stripped:
                raise InputError(
                    f"malformed ENVI header {where}: line {number} ({stripped[:40]!r}) is not "
                    "'key = value' — fix or remove the line"
                )
            name, value = stripped.split("=", 1)
            key = " ".join(name.lower().split())
            parts = [value.strip()]
            depth = value.count("{") - value.count("}")
        else:
            parts.append(line.strip())
            depth += line.count("{") - line.count("}")
        if depth <= 0:
            entries[key] = "\n".join(parts).strip()
            key = None
    if key is not None:
        raise InputError(
            f"malformed ENVI header {where}: the value of {key!r} opens '{{' but never closes "
            "it — add the closing '}'"
        )
    return entries


def _number(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _convert(key: str, raw: str, where: str) -> Any:
    if raw.startswith("{") and raw.endswith("}"):
        inner = raw[1:-1].strip()
        if key in _TEXT_FIELDS:
            return " ".join(inner.split()) if key == "coordinate system string" else inner
        items = [" ".join(s.split()) for s in inner.split(",")] if inner else []
        if key in _ARRAY_FIELDS:
            try:
                return np.array([float(s) for s in items], dtype=np.float64)
            except ValueError as err:
                raise InputError(
                    f"malformed ENVI header {where}: {key!r} must list numbers ({err}) — fix "
                    "the header"
                ) from err
        return [_number(s) for s in items]
    if key in _INT_FIELDS:
        try:
            return int(raw)
        except ValueError as err:
            raise InputError(
                f"malformed ENVI header {where}: {key!r} must be an integer, got {raw!r} — fix "
                "the header"
            ) from err
    if key in _ARRAY_FIELDS:  # a single value without braces
        try:
            return np.array([float(raw)], dtype=np.float64)
        except ValueError as err:
            raise InputError(
                f"malformed ENVI header {where}: {key!r} must list numbers, got {raw!r}"
            ) from err
    return _number(raw)


def nm_factor(values: np.ndarray, units: str) -> float | None:
    """What turns wavelengths in ``units`` into nm; ``None`` when ``units`` is not a length
    (``Index``, ``Wavenumber``, ``GHz``). Without units (or ``Unknown``) values below 100 are
    taken as micrometres.

    Used for ENVI headers here and for wavelength coordinates of every other cube by
    :func:`dnmf.hyperspectral.cube.open_cube`.

    Examples
    --------
    >>> nm_factor(np.array([0.45, 2.5]), ""), nm_factor(np.array([450.0]), "Micrometers")
    (1000.0, 1000.0)
    """
    u = units.strip().lower()
    if u in _NM_UNITS:
        return 1.0
    if u in _UM_UNITS:
        return 1000.0
    if u in {"millimeters", "millimeter", "mm"}:
        return 1e6
    if u in {"meters", "meter", "m"}:
        return 1e9
    if u in _UNKNOWN_UNITS:
        finite = values[np.isfinite(values)]
        return 1000.0 if finite.size and float(finite.max()) < 100 else 1.0
    return None


def read_envi_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse an ENVI header.

    Parameters
    ----------
    path : str or path-like
        The ``.hdr`` file, or the binary file beside it (``scene.img`` finds ``scene.hdr``
        or ``scene.img.hdr``).

    Returns
    -------
    dict
        Keys lower-cased with single spaces (``"data type"``, ``"map info"``). Integers and
        floats are converted; ``{...}`` values become lists (numbers converted), except
        ``wavelength``, ``fwhm``, ``bbl``, ``data gain values`` and ``data offset values``
        (float64 arrays) and ``description`` and ``coordinate system string`` (text).
        ``interleave`` is lower-cased and defaults to ``"bsq"``; ``byte order`` and
        ``header offset`` default to 0. Wavelengths (and FWHM) are converted to nm and
        ``wavelength units`` set to ``"Nanometers"`` when the header's units are a length
        (without units, values below 100 are micrometres); other units (``Index``,
        ``Wavenumber``) leave them as they are.

    Raises
    ------
    InputError
        The header is missing a required field (``samples``, ``lines``, ``bands``,
        ``data type``), has an unsupported value, or is not an ENVI header.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "s.hdr").write_text("ENVI\\nsamples = 2\\nlines = 3\\nbands = 2\\n"
    ...     "data type = 4\\ninterleave = bil\\nwavelength units = Micrometers\\n"
    ...     "wavelength = {0.45, 0.55}\\n")
    >>> h = read_envi_header(d / "s.hdr")
    >>> h["interleave"], h["wavelength"].tolist(), h["wavelength units"]
    ('bil', [450.0, 550.0], 'Nanometers')
    """
    p = Path(os.fspath(path)).expanduser()
    if p.suffix.lower() == ".hdr" and p.is_file():
        header = p
    else:
        header, _ = find_envi_files(p)
    where = str(header)
    try:
        text = header.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise InputError(f"cannot read ENVI header {where}: {err}") from err
    raw = _split_entries(text, where)
    h: dict[str, Any] = {key: _convert(key, value, where) for key, value in raw.items()}
    missing = [k for k in _REQUIRED if k not in h]
    if missing:
        raise InputError(
            f"ENVI header {where} lacks the required field(s) {', '.join(map(repr, missing))} "
            "— add them to the header"
        )
    for key in ("samples", "lines", "bands"):
        if h[key] < 1:
            raise InputError(f"ENVI header {where}: {key!r} = {h[key]} must be at least 1")
    if h["data type"] not in ENVI_DTYPES:
        kind = "complex " if h["data type"] in (6, 9) else ""
        raise InputError(
            f"ENVI header {where}: {kind}data type {h['data type']} is not supported — "
            f"convert the data to one of the codes {sorted(ENVI_DTYPES)}"
        )
    h["interleave"] = str(h.get("interleave", "bsq")).strip().lower()
    if h["interleave"] not in INTERLEAVES:
        raise InputError(
            f"ENVI header {where}: interleave {h['interleave']!r} is not bsq, bil or bip — fix "
            "the header"
        )
    h.setdefault("byte order", 0)
    h.setdefault("header offset", 0)
    if h["header offset"] < 0:
        raise InputError(f"ENVI header {where}: header offset must be >= 0, got "
                         f"{h['header offset']} — fix the header")
    if h["byte order"] not in (0, 1):
        raise InputError(f"ENVI header {where}: byte order must be 0 or 1, got {h['byte order']}")
    # a spectral library (.sli) stores one spectrum per line: its bands are the samples
    n_bands = h["samples"] if is_spectral_library(h) else h["bands"]
    for key in ("wavelength", "fwhm", "bbl"):
        if key in h and len(h[key]) != n_bands:
            raise InputError(
                f"ENVI header {where} lists {len(h[key])} {key} values for {n_bands} bands "
                f"— fix or remove {key!r}"
            )
    if "wavelength" in h:
        factor = nm_factor(h["wavelength"], str(h.get("wavelength units", "")))
        if factor is not None:
            h["wavelength"] = h["wavelength"] * factor
            if "fwhm" in h:
                h["fwhm"] = h["fwhm"] * factor  # FWHM shares the wavelengths' units
            h["wavelength units"] = "Nanometers"
    return h


def is_spectral_library(header: dict[str, Any]) -> bool:
    """Whether a parsed header is an ENVI spectral library (``file type = ENVI Spectral
    Library``): one spectrum per line, its bands along the samples."""
    return "spectral library" in str(header.get("file type", "")).lower()


def parse_map_info(map_info: Sequence[Any] | str) -> dict[str, Any]:
    """The fields of an ENVI ``map info`` value.

    Parameters
    ----------
    map_info : list or str
        As :func:`read_envi_header` returns it, or the text ``"{UTM, 1, 1, ...}"``.

    Returns
    -------
    dict
        ``projection``, ``ref_x``/``ref_y`` (the 1-based reference pixel: ``(1, 1)`` is the
        upper-left corner of the upper-left pixel), ``easting``/``northing`` (its map
        coordinates), ``dx``/``dy`` (pixel size), ``rotation`` (degrees, 0 when absent) and,
        when given, ``zone``, ``hemisphere``, ``datum``, ``units``.

    Raises
    ------
    InputError
        Fewer than 7 fields, or non-numeric reference/pixel-size fields.
    """
    if isinstance(map_info, str):
        items: list[Any] = [_number(" ".join(s.split())) for s in map_info.strip().strip("{}")
                            .split(",")]
    else:
        items = list(map_info)
    if len(items) < 7:
        raise InputError(
            f"ENVI map info {items!r} has {len(items)} fields, needs at least 7 (projection, "
            "reference pixel x and y, easting, northing, pixel size x and y) — fix the header"
        )
    try:
        ref_x, ref_y, easting, northing, dx, dy = (float(v) for v in items[1:7])
    except (TypeError, ValueError) as err:
        raise InputError(
            f"ENVI map info {items!r}: fields 2-7 must be numbers ({err}) — fix the header"
        ) from err
    info: dict[str, Any] = {
        "projection": str(items[0]), "ref_x": ref_x, "ref_y": ref_y, "easting": easting,
        "northing": northing, "dx": dx, "dy": dy, "rotation": 0.0,
    }
    rest = items[7:]
    if info["projection"].strip().upper() == "UTM" and len(rest) >= 2:
        info["zone"], info["hemisphere"] = rest[0], str(rest[1])
        rest = rest[2:]
    for item in rest:
        text = str(item)
        if "=" in text:
            name, value = (s.strip() for s in text.split("=", 1))
            if name.lower() == "rotation":
                info["rotation"] = float(value)
            else:
                info[name.lower()] = value
        elif "datum" not in info:
            info["datum"] = text
    return info


def _map_coords(map_info: Any, lines: int, samples: int) -> dict[str, Any]:
    """Pixel-centre ``y``/``x`` coordinates from ``map info`` (none when rotated)."""
    info = parse_map_info(map_info)
    if info["rotation"] % 360 != 0:
        return {}  # a rotated grid has no 1-D x/y coordinates
    # Pixel i (0-based) spans [i + 1, i + 2) in ENVI's 1-based pixel-corner coordinates.
    x = info["easting"] + (np.arange(samples) + 1.5 - info["ref_x"]) * info["dx"]
    y = info["northing"] - (np.arange(lines) + 1.5 - info["ref_y"]) * info["dy"]
    units = str(info.get("units", "")).lower()
    attrs = {"units": units} if units else {}
    return {"y": ("y", y, attrs), "x": ("x", x, attrs)}


def _map_info_text(map_info: Any) -> str:
    if isinstance(map_info, str):
        text = map_info.strip()
        return text if text.startswith("{") else "{" + text + "}"
    return "{" + ", ".join(_format_item(v) for v in map_info) + "}"


def _format_item(v: Any) -> str:
    if isinstance(v, float | np.floating):
        return repr(float(v))
    return str(v)


# --------------------------------------------------------------------------- reading


class ENVIReader:
    """Picklable array-like over an ENVI binary, for :func:`dask.array.from_array`.

    ``reader[key]`` opens a ``numpy.memmap`` of the file, copies the requested slice out in
    ``(line, sample, band)`` order and native byte order, and drops the memmap, so nothing
    but the path travels with the graph and no file handle outlives a read.

    Parameters
    ----------
    path : str
        The binary file.
    offset : int
        ``header offset``: bytes before the first value.
    dtype : numpy.dtype
        As stored (with its byte order).
    shape : tuple of int
        ``(lines, samples, bands)``.
    interleave : {"bsq", "bil", "bip"}
    stamp : tuple
        The file's (size, mtime); part of the dask token so a re-written file gets new keys.
    """

    def __init__(self, path: str, offset: int, dtype: Any, shape: tuple[int, int, int],
                 interleave: str, stamp: tuple[Any, ...] = ()) -> None:
        self.path = str(path)
        self.offset = int(offset)
        self.stored_dtype = np.dtype(dtype)
        self.dtype = self.stored_dtype.newbyteorder("=")
        self.shape = tuple(int(s) for s in shape)
        self.interleave = interleave
        self.stamp = stamp

    @property
    def ndim(self) -> int:
        return 3

    @property
    def _storage(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """Stored shape, and the (line, sample, band) axes' positions in it."""
        lines, samples, bands = self.shape
        if self.interleave == "bsq":
            return (bands, lines, samples), (1, 2, 0)
        if self.interleave == "bil":
            return (lines, bands, samples), (0, 2, 1)
        return (lines, samples, bands), (0, 1, 2)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (3 - len(key))
        squeeze = tuple(ax for ax, k in enumerate(key) if isinstance(k, int | np.integer))
        # Integers become length-1 slices so the transpose below sees three axes.
        key = tuple(slice(int(k), int(k) + 1 if int(k) != -1 else None)
                    if isinstance(k, int | np.integer) else k for k in key)
        stored_shape, axes = self._storage
        stored_key = [slice(None)] * 3
        for ax, k in enumerate(key):
            stored_key[axes[ax]] = k
        mm = np.memmap(self.path, dtype=self.stored_dtype, mode="r", offset=self.offset,
                       shape=stored_shape, order="C")
        try:
            view = mm[tuple(stored_key)].transpose(axes)
            out = np.array(view, dtype=self.dtype, order="C", copy=True)
        finally:
            del mm  # unmaps the file: the copy above owns its memory
        return out.squeeze(axis=squeeze) if squeeze else out

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("dnmf.ENVIReader", self.path, self.offset, self.stored_dtype.str, self.shape,
                self.interleave, self.stamp)

    def __repr__(self) -> str:
        return (f"ENVIReader({self.path!r}, shape={self.shape}, dtype={self.stored_dtype}, "
                f"interleave={self.interleave!r})")


def tile_shape(shape: tuple[int, int], bytes_per_pixel: int, stored: tuple[int, int] | None = None,
               *, target: int = TILE_BYTES) -> tuple[int, int]:
    """The spatial chunk of a cube with all its bands: a tile of about ``target`` bytes.

    Full-width row strips when a row fits, else square-ish tiles; whole multiples of
    ``stored`` (the storage's own spatial chunking), clipped to ``shape``. Used for ENVI
    rasters here and for every other cube by :func:`dnmf.hyperspectral.cube.open_cube`.

    Examples
    --------
    >>> tile_shape((1000, 500), 4 * 200, target=2**20)  # 1310 pixels of 200 float32 bands
    (2, 500)
    >>> tile_shape((100_000, 5000), 4 * 200, (64, 64), target=2**20)
    (64, 64)
    """
    n0, n1 = shape
    s0, s1 = stored if stored is not None else (1, 1)
    s0, s1 = max(1, min(s0, n0)), max(1, min(s1, n1))
    pixels = max(1, target // max(1, bytes_per_pixel))
    if n1 * s0 <= 2 * pixels:
        rows = max(s0, (pixels // n1) // s0 * s0)
        return min(rows, n0), n1
    side = max(1, math.isqrt(pixels))
    rows = max(s0, side // s0 * s0)
    cols = max(s1, (pixels // rows) // s1 * s1)
    return min(rows, n0), min(cols, n1)


def _normalize_chunks(chunks: Any, dims: tuple[str, ...]) -> Any:
    if isinstance(chunks, dict):
        unknown = [k for k in chunks if k not in dims and not isinstance(k, int)]
        if unknown:
            raise InputError(
                f"chunks names unknown dim(s) {unknown}; the cube's dims are {list(dims)}"
            )
        return {dims.index(k) if isinstance(k, str) else k: v for k, v in chunks.items()}
    return chunks


def open_envi(path: str | os.PathLike[str], chunks: Any = None) -> xr.DataArray:
    """Open an ENVI raster lazily as a ``(y, x, band)`` DataArray in its stored dtype.

    Parameters
    ----------
    path : str or path-like
        The ``.hdr`` file or the binary beside it.
    chunks : optional
        Anything :func:`dask.array.from_array` accepts, in ``(y, x, band)`` order, or a dict
        by dim name. By default all bands in one chunk and spatial tiles of about 32 MiB
        (full-width row strips when they fit).

    Returns
    -------
    xarray.DataArray, dims ``("y", "x", "band")``
        Dask-backed, in the stored dtype (native byte order), values as stored (no scaling,
        no masking). Coordinates: ``wavelength(band)`` in nm and ``fwhm(band)`` when the
        header has them, ``bbl(band)`` (1 good, 0 bad) when present, pixel-centre ``y``/``x``
        from ``map info`` (unrotated grids). Attrs: ``source_format="envi"``, ``interleave``,
        and when present ``nodata`` (``data ignore value``), ``scale_factor`` (``reflectance
        scale factor``: reflectance = value / scale_factor), ``map_info`` (the header text)
        and ``crs_wkt`` (``coordinate system string``).

    Raises
    ------
    InputError
        Missing or malformed header, or a binary file smaller than the header says.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_envi(d / "s.img", np.arange(24, dtype=np.int16).reshape(2, 3, 4),
    ...                interleave="bil", wavelength=[450.0, 550.0, 650.0, 750.0])
    >>> cube = open_envi(d / "s.hdr")
    >>> cube.dims, cube.dtype, cube.wavelength.values.tolist()
    (('y', 'x', 'band'), dtype('int16'), [450.0, 550.0, 650.0, 750.0])
    >>> int(cube[1, 2, 3])
    23
    """
    header_path, data_path = find_envi_files(path)
    h = read_envi_header(header_path)
    lines, samples, bands = h["lines"], h["samples"], h["bands"]
    dtype = ENVI_DTYPES[h["data type"]].newbyteorder("<" if h["byte order"] == 0 else ">")
    offset = h["header offset"]
    needed = offset + lines * samples * bands * dtype.itemsize
    st = os.stat(data_path)
    if st.st_size < needed:
        raise InputError(
            f"ENVI file {data_path} holds {st.st_size:,} bytes but its header describes "
            f"{needed:,} ({lines} lines x {samples} samples x {bands} bands of {dtype.name}"
            f" after {offset} header bytes) — the file is truncated or the header is wrong"
        )
    reader = ENVIReader(str(data_path), offset, dtype, (lines, samples, bands), h["interleave"],
                        (st.st_size, st.st_mtime_ns))
    dims = ("y", "x", "band")
    if chunks is None:
        itemsize = max(dtype.itemsize, 4)  # the cube becomes float32 downstream
        rows, cols = tile_shape((lines, samples), bands * itemsize)
        chunks = (rows, cols, bands)
    chunks = _normalize_chunks(chunks, dims)
    array = da.from_array(reader, chunks=chunks, name="envi-" + tokenize(reader, chunks),
                          asarray=True, fancy=False, lock=False,
                          meta=np.empty((0, 0, 0), dtype=reader.dtype))
    coords: dict[str, Any] = {}
    if "wavelength" in h and str(h.get("wavelength units", "")).lower() == "nanometers":
        coords["wavelength"] = ("band", h["wavelength"], {"units": "nm"})
        if "fwhm" in h:
            coords["fwhm"] = ("band", h["fwhm"], {"units": "nm"})
    elif "fwhm" in h:
        coords["fwhm"] = ("band", h["fwhm"])
    if "bbl" in h:
        coords["bbl"] = ("band", (h["bbl"] != 0).astype(np.int8))
    attrs: dict[str, Any] = {"source_format": "envi", "interleave": h["interleave"]}
    if "data ignore value" in h:
        attrs["nodata"] = h["data ignore value"]
    if "reflectance scale factor" in h:
        attrs["scale_factor"] = h["reflectance scale factor"]
    if "map info" in h:
        attrs["map_info"] = _map_info_text(h["map info"])
        try:
            coords.update(_map_coords(h["map info"], lines, samples))
        except InputError:
            pass  # an odd map info still travels as text; only the coordinates are skipped
    if "coordinate system string" in h:
        attrs["crs_wkt"] = h["coordinate system string"]
    name = data_path.stem if data_path.suffix else data_path.name
    return xr.DataArray(array, dims=dims, coords=coords, attrs=attrs, name=name)


# --------------------------------------------------------------------------- writing


class _ENVIWriter:
    """Picklable ``__setitem__`` target for :func:`dask.array.store`: (line, sample, band)
    blocks written into the interleaved file through a per-call memmap."""

    def __init__(self, path: str, dtype: np.dtype[Any], shape: tuple[int, int, int],
                 interleave: str) -> None:
        self.reader = ENVIReader(path, 0, dtype, shape, interleave)

    def __setitem__(self, key: tuple[slice, ...], value: np.ndarray) -> None:
        stored_shape, axes = self.reader._storage
        stored_key: list[Any] = [slice(None)] * 3
        for ax, k in enumerate(key):
            stored_key[axes[ax]] = k
        mm = np.memmap(self.reader.path, dtype=self.reader.stored_dtype, mode="r+",
                       shape=stored_shape, order="C")
        try:
            # axes maps (line, sample, band) to stored positions; argsort inverts it
            mm[tuple(stored_key)] = np.asarray(value).transpose(np.argsort(axes))
            mm.flush()
        finally:
            del mm


def _header_list(values: Any) -> str:
    return "{" + ", ".join(_format_item(float(v)) for v in np.asarray(values).ravel()) + "}"


def write_envi(
    path: str | os.PathLike[str],
    data: xr.DataArray | np.ndarray | da.Array,
    *,
    interleave: str = "bsq",
    dtype: Any = None,
    nodata: float | None = None,
    wavelength: Sequence[float] | np.ndarray | None = None,
    bbl: Sequence[float] | np.ndarray | None = None,
    scale_factor: float | None = None,
    map_info: Sequence[Any] | str | None = None,
    crs_wkt: str | None = None,
) -> Path:
    """Write a ``(line, sample, band)`` cube as an ENVI binary plus ``.hdr``.

    Dask input is written block by block into a memmap (one ``dask.array.store``), so the
    cube never has to fit in memory. Values are written as given: ``scale_factor`` and
    ``nodata`` are recorded in the header only.

    Parameters
    ----------
    path : str or path-like
        The binary file (e.g. ``scene.img``); the header goes to ``scene.hdr``. A path
        ending in ``.hdr`` writes the binary to the same name with ``.img``.
    data : xarray.DataArray, numpy.ndarray or dask.array.Array, shape (lines, samples, bands)
        A DataArray is transposed band-last when it names its band dim (a ``band_dim``
        attr or a dim called ``band``); its ``wavelength``/``fwhm``/``bbl`` coordinates and
        ``nodata``/``scale_factor``/``map_info``/``crs_wkt`` attrs fill in the arguments
        left as ``None``.
    interleave : {"bsq", "bil", "bip"}
    dtype : numpy dtype, optional
        Stored dtype (default: the data's); one of the ENVI data types.
    nodata : float, optional
        ``data ignore value``.
    wavelength : sequence of float, optional
        Band centres in nm.
    bbl : sequence of {0, 1}, optional
        Bad band list (0 = bad).
    scale_factor : float, optional
        ``reflectance scale factor`` (reflectance = value / scale_factor).
    map_info : list or str, optional
        ``map info`` fields, e.g. ``["UTM", 1, 1, 500000.0, 4100000.0, 30.0, 30.0, 13,
        "North", "WGS-84", "units=Meters"]``.
    crs_wkt : str, optional
        ``coordinate system string``.

    Returns
    -------
    pathlib.Path
        The binary file written.
    """
    if interleave not in INTERLEAVES:
        raise InputError(f"interleave={interleave!r}: choose bsq, bil or bip")
    binary = Path(os.fspath(path)).expanduser()
    if binary.suffix.lower() == ".hdr":
        binary = binary.with_suffix(".img")
    header = binary.with_suffix(".hdr") if binary.suffix else binary.with_name(binary.name + ".hdr")
    fwhm = None
    if isinstance(data, xr.DataArray):
        band_dim = data.attrs.get("band_dim", "band" if "band" in data.dims else None)
        if band_dim in data.dims and data.ndim == 3:
            data = data.transpose(*[d for d in data.dims if d != band_dim], band_dim)
        coords = data.coords
        wavelength = (coords["wavelength"].values if wavelength is None and "wavelength" in coords
                      else wavelength)
        fwhm = coords["fwhm"].values if "fwhm" in coords else None
        bbl = coords["bbl"].values if bbl is None and "bbl" in coords else bbl
        nodata = data.attrs.get("nodata") if nodata is None else nodata
        scale_factor = data.attrs.get("scale_factor") if scale_factor is None else scale_factor
        map_info = data.attrs.get("map_info") if map_info is None else map_info
        crs_wkt = data.attrs.get("crs_wkt") if crs_wkt is None else crs_wkt
        data = data.data
    if data.ndim != 3:
        raise InputError(f"write_envi needs a 3-D (lines, samples, bands) cube, got {data.shape}")
    out_dtype = np.dtype(dtype if dtype is not None else data.dtype).newbyteorder("<")
    code = _DTYPE_CODES.get(out_dtype.newbyteorder("="))
    if code is None:
        raise InputError(
            f"ENVI cannot store dtype {out_dtype.name}: choose one of "
            f"{sorted({d.name for d in ENVI_DTYPES.values()})}"
        )
    lines, samples, bands = (int(s) for s in data.shape)
    for name, values in (("wavelength", wavelength), ("bbl", bbl), ("fwhm", fwhm)):
        if values is not None and np.asarray(values).size != bands:
            raise InputError(f"{name} has {np.asarray(values).size} values for {bands} bands")
    writer = _ENVIWriter(str(binary), out_dtype, (lines, samples, bands), interleave)
    stored_shape, _ = writer.reader._storage
    # Create the file at its full size, then fill it block by block.
    np.memmap(binary, dtype=out_dtype, mode="w+", shape=stored_shape).flush()
    if isinstance(data, da.Array):
        da.store(data.astype(out_dtype), writer, lock=False)  # blocks are disjoint regions
    else:
        writer[(slice(None),) * 3] = np.asarray(data).astype(out_dtype)
    entries = [
        "ENVI",
        "description = {written by dnmf}",
        f"samples = {samples}",
        f"lines = {lines}",
        f"bands = {bands}",
        "header offset = 0",
        "file type = ENVI Standard",
        f"data type = {code}",
        f"interleave = {interleave}",
        "byte order = 0",
    ]
    if wavelength is not None:
        entries += ["wavelength units = Nanometers", f"wavelength = {_header_list(wavelength)}"]
    if fwhm is not None:
        entries.append(f"fwhm = {_header_list(fwhm)}")
    if bbl is not None:
        entries.append("bbl = {" + ", ".join(str(int(v)) for v in np.asarray(bbl)) + "}")
    if nodata is not None:
        entries.append(f"data ignore value = {_format_item(nodata)}")
    if scale_factor is not None:
        entries.append(f"reflectance scale factor = {_format_item(scale_factor)}")
    if map_info is not None:
        entries.append(f"map info = {_map_info_text(map_info)}")
    if crs_wkt is not None:
        entries.append("coordinate system string = {" + crs_wkt + "}")
    header.write_text("\n".join(entries) + "\n", encoding="utf-8")
    return binary

