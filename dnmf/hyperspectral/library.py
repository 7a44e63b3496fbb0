"""Spectral libraries: read them, write them, resample them onto a cube's bands.

A library is a small (spectra × bands) table with names; it always fits in memory. Formats:
ENVI spectral libraries (``.sli`` + ``.hdr``), USGS splib07-style ASCII (a directory with one
spectrum per file and a wavelength file), CSV (a wavelength column and one column per
spectrum) and the bundled earthlib subset (``"earthlib"``). :func:`resample` puts a library
on a cube's bands: a Gaussian spectral response where both sides have FWHM, linear
interpolation otherwise, NaN at bad bands and where the library does not cover a band.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dnmf.errors import InputError
from dnmf.hyperspectral.envi import is_spectral_library, nm_factor, read_envi_header

__all__ = [
    "EARTHLIB",
    "SpectralLibrary",
    "load_library",
    "resample",
    "write_csv",
    "write_sli",
]

#: The name that selects the bundled earthlib subset (:func:`dnmf.datasets.load_spectral_library`).
EARTHLIB = "earthlib"

#: splib07 marks a deleted (missing) value with this number.
_SPLIB_DELETED = -1.0e30
#: FWHM of a Gaussian over its standard deviation.
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: A target band whose nearest library samples are further apart than this many typical library
#: spacings falls in a gap of the library (a removed water-vapour window): NaN, not interpolated.
_GAP_SPACINGS = 2.5
_FORMATS = ("an ENVI spectral library (.sli with its .hdr), a CSV file (wavelength column, "
            "one column per spectrum), a USGS splib07 ASCII directory (a *Wavelength* file "
            "and one spectrum per .txt file) or 'earthlib'")


@dataclass(frozen=True)
class SpectralLibrary:
    """Named reference spectra on one wavelength grid.

    Attributes
    ----------
    spectra : ndarray of shape (n_spectra, n_bands), float64
        NaN where a value is missing (a deleted splib07 value, a band not covered after
        :func:`resample`).
    wavelength : ndarray of shape (n_bands,), float64
        Band centres in nm, increasing (None only for an array given without wavelengths).
    names : tuple of str
        One per spectrum (they may repeat).
    fwhm : ndarray of shape (n_bands,) or None
        Band widths in nm, when the library has them.
    source : str
        Where it came from (a path or ``"earthlib"``): it labels every match.
    """

    spectra: np.ndarray
    wavelength: np.ndarray | None
    names: tuple[str, ...]
    fwhm: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        n, b = self.spectra.shape
        if len(self.names) != n:
            raise InputError(f"library {self.source}: {len(self.names)} names for {n} spectra")
        for what, values in (("wavelength", self.wavelength), ("fwhm", self.fwhm)):
            if values is not None and np.shape(values) != (b,):
                raise InputError(f"library {self.source}: {np.size(values)} {what} values for "
                                 f"{b} bands")

    @property
    def n_spectra(self) -> int:
        """Rows of :attr:`spectra`."""
        return int(self.spectra.shape[0])

    def select(self, names: Sequence[str]) -> SpectralLibrary:
        """The spectra with these names, in this order (the first of repeated names).

        Raises
        ------
        InputError
            A name is not in the library (the message lists a few that are).
        """
        index = []
        for name in names:
            hits = [i for i, n in enumerate(self.names) if n == name]
            if not hits:
                shown = ", ".join(repr(n) for n in self.names[:8])
                raise InputError(f"--select: {name!r} is not in the library {self.source} "
                                 f"({self.n_spectra} spectra, e.g. {shown}) — check the name")
            index.append(hits[0])
        return self.take(np.asarray(index, dtype=np.int64))

    def take(self, index: np.ndarray) -> SpectralLibrary:
        """The spectra at these rows."""
        return replace(self, spectra=self.spectra[index],
                       names=tuple(self.names[i] for i in index))


# --------------------------------------------------------------------------- readers


def load_library(source: Any) -> SpectralLibrary:
    """Read a spectral library.

    Parameters
    ----------
    source : str, path, SpectralLibrary
        ``"earthlib"`` (the bundled library :func:`dnmf.datasets.load_spectral_library`,
        names ``class:name``); an ENVI spectral library (the ``.sli`` binary or its
        ``.hdr``); a ``.csv`` file; or a directory of USGS splib07 ASCII files. A
        :class:`SpectralLibrary` is returned as is.

    Returns
    -------
    SpectralLibrary
        Wavelengths in nm (micrometres are converted), increasing.

    Raises
    ------
    InputError
        The file is missing, of an unknown kind, or malformed (the message says which).
    """
    if isinstance(source, SpectralLibrary):
        return source
    text = os.fspath(source)
    if text.strip().lower() == EARTHLIB:
        return _earthlib()
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"spectral library {text} does not exist — give {_FORMATS}")
    if path.is_dir():
        lib = _read_splib_dir(path)
    elif path.suffix.lower() == ".csv":
        lib = _read_csv(path)
    elif path.suffix.lower() in (".sli", ".hdr") or path.with_suffix(".hdr").is_file():
        lib = _read_sli(path)
    else:
        raise InputError(f"{text} is not a spectral library dnmf reads — give {_FORMATS}")
    return _sorted(lib)


def _earthlib() -> SpectralLibrary:
    from dnmf.datasets import load_spectral_library

    spectra, wavelength, names, classes = load_spectral_library()
    return SpectralLibrary(
        spectra=spectra.astype(np.float64), wavelength=wavelength,
        names=tuple(f"{c}:{n}" for c, n in zip(classes, names, strict=True)), source=EARTHLIB)


def _sorted(lib: SpectralLibrary) -> SpectralLibrary:
    wl = lib.wavelength
    if wl is None or lib.spectra.shape[1] < 2:
        raise InputError(f"spectral library {lib.source} needs at least 2 bands with "
                         "wavelengths")
    if not np.all(np.isfinite(wl)):
        raise InputError(f"spectral library {lib.source} has non-numeric wavelengths")
    order = np.argsort(wl, kind="stable")
    if np.any(np.diff(wl[order]) <= 0):
        raise InputError(f"spectral library {lib.source} repeats a wavelength — one value per "
                         "band")
    fwhm = None if lib.fwhm is None else lib.fwhm[order]
    return replace(lib, spectra=lib.spectra[:, order], wavelength=wl[order], fwhm=fwhm)


def _read_sli(path: Path) -> SpectralLibrary:
    header = read_envi_header(path)
    where = str(path)
    if not is_spectral_library(header):
        raise InputError(f"{where} is an ENVI file but not a spectral library (its file type "
                         f"is {header.get('file type', 'unset')!r}) — give a .sli library")
    if "wavelength" not in header:
        raise InputError(f"ENVI spectral library {where} has no wavelength list — add "
                         "'wavelength = {...}' to its header")
    from dnmf.hyperspectral.envi import ENVI_DTYPES, find_envi_files

    hdr, binary = (path, None) if path.suffix.lower() == ".hdr" else (None, path)
    if binary is None:
        for ext in (".sli", ".SLI", ".lib", ""):
            candidate = hdr.with_suffix(ext)
            if candidate.is_file() and candidate != hdr:
                binary = candidate
                break
        if binary is None:
            raise InputError(f"no .sli data file beside {where} — put it next to the header")
    else:
        find_envi_files(binary)  # the header must be there
    n_spectra, n_bands = int(header["lines"]), int(header["samples"])
    dtype = ENVI_DTYPES[header["data type"]].newbyteorder(">" if header["byte order"] else "<")
    values = np.fromfile(binary, dtype=dtype, offset=int(header["header offset"]))
    if values.size < n_spectra * n_bands:
        raise InputError(f"{binary} holds {values.size} values; its header promises "
                         f"{n_spectra} spectra x {n_bands} bands — the file is truncated")
    spectra = values[: n_spectra * n_bands].reshape(n_spectra, n_bands).astype(np.float64)
    spectra /= float(header.get("reflectance scale factor", 1.0) or 1.0)
    names = header.get("spectra names", [])
    names = [str(n) for n in names] if isinstance(names, list) else [str(names)]
    if len(names) != n_spectra:
        names = [f"spectrum {i}" for i in range(n_spectra)]
    if "bbl" in header:
        spectra[:, np.asarray(header["bbl"]) == 0] = np.nan
    return SpectralLibrary(spectra=spectra, wavelength=np.asarray(header["wavelength"]),
                           names=tuple(names), fwhm=header.get("fwhm"), source=where)


def _to_nm(values: np.ndarray, units: str, where: str) -> np.ndarray:
    factor = nm_factor(values, units)
    if factor is None:
        raise InputError(f"{where}: wavelength units {units!r} are not a length — give "
                         "nm or micrometres")
    return values * factor


def _read_csv(path: Path) -> SpectralLibrary:
    where = str(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if row and not row[0].lstrip().startswith("#")]
    if len(rows) < 3 or len(rows[0]) < 2:
        raise InputError(f"{where} is not a spectral library CSV: give a header row "
                         "(wavelength, name1, name2, ...) and one row per band")
    head = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in head]
    fwhm_col = next((i for i, h in enumerate(lower) if h.startswith("fwhm")), None)
    spectra_cols = [i for i in range(1, len(head)) if i != fwhm_col]
    try:
        table = np.array([[float(v) if v.strip() else np.nan for v in row] for row in rows[1:]],
                         dtype=np.float64)
    except ValueError as err:
        raise InputError(f"{where}: a value is not a number ({err}) — the CSV must hold "
                         "numbers below its header row") from None
    if table.ndim != 2 or table.shape[1] != len(head):
        raise InputError(f"{where}: every row must have {len(head)} values, like the header")
    units = "micrometers" if re.search(r"\b(um|µm|micro)", lower[0]) else (
        "nanometers" if re.search(r"\bnm\b|nano", lower[0]) else "")
    wavelength = _to_nm(table[:, 0], units, where)
    factor = wavelength[0] / table[0, 0] if table[0, 0] else 1.0  # FWHM shares the units
    fwhm = None if fwhm_col is None else table[:, fwhm_col] * factor
    return SpectralLibrary(spectra=table[:, spectra_cols].T.copy(), wavelength=wavelength,
                           names=tuple(head[i] for i in spectra_cols), fwhm=fwhm, source=where)


def _splib_values(path: Path) -> tuple[str, np.ndarray]:
    """splib07 ASCII: a title line, then one number per line."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines:
        raise InputError(f"{path} is empty — not a splib07 ASCII spectrum")
    try:
        values = np.array([float(v) for v in lines[1:] if v.strip()], dtype=np.float64)
    except ValueError as err:
        raise InputError(f"{path}: {err} — a splib07 file has a title line then one number "
                         "per line") from None
    values[values < _SPLIB_DELETED] = np.nan
    return lines[0].strip(), values


def _splib_name(title: str, path: Path) -> str:
    # "splib07a Record=1234: Alunite GDS82 Na82 W1R1Ba AREF" -> "Alunite GDS82 Na82 W1R1Ba"
    m = re.search(r"Record=\s*\d+\s*:\s*(.+)$", title)
    name = m[1] if m else path.stem
    return re.sub(r"\s+[A-Z]*REF$", "", name.strip()) or path.stem


def _read_splib_dir(path: Path) -> SpectralLibrary:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".txt")
    wl_files = [p for p in files if "wavelength" in p.name.lower()]
    bp_files = [p for p in files if "bandpass" in p.name.lower() or "fwhm" in p.name.lower()]
    if len(wl_files) != 1:
        raise InputError(
            f"{path}: a splib07 ASCII directory needs exactly one wavelength file (a .txt with "
            f"'Wavelength' in its name); found {len(wl_files)} — keep the one that matches "
            "the spectra's resolution")
    _, wavelength = _splib_values(wl_files[0])
    fwhm = _splib_values(bp_files[0])[1] if len(bp_files) == 1 else None
    spectra, names = [], []
    for p in files:
        if p in wl_files or p in bp_files:
            continue
        title, values = _splib_values(p)
        if values.size != wavelength.size:
            raise InputError(f"{p} has {values.size} values but {wl_files[0].name} "
                             f"{wavelength.size} wavelengths — keep spectra of one resolution "
                             "per directory")
        spectra.append(values)
        names.append(_splib_name(title, p))
    if not spectra:
        raise InputError(f"{path} holds no splib07 spectrum (.txt) besides its wavelengths")
    wl_nm = _to_nm(wavelength, "", str(wl_files[0]))
    if fwhm is not None:
        fwhm = fwhm * (wl_nm[np.isfinite(wl_nm)][0] / wavelength[np.isfinite(wavelength)][0])
    return SpectralLibrary(spectra=np.vstack(spectra), wavelength=wl_nm, names=tuple(names),
                           fwhm=fwhm, source=str(path))


# --------------------------------------------------------------------------- writers


def write_sli(path: str | os.PathLike[str], lib: SpectralLibrary) -> Path:
    """Write an ENVI spectral library: ``path`` (``.sli``, float32) and its ``.hdr``.

    NaN values are written as NaN. Returns the data file's path.
    """
    binary = Path(os.fspath(path)).expanduser()
    if binary.suffix.lower() != ".sli":
        binary = binary.with_name(binary.name + ".sli")
    header = binary.with_suffix(".hdr")
    n, b = lib.spectra.shape
    lib.spectra.astype("<f4").tofile(binary)
    names = ", ".join(n.replace(",", ";").replace("}", ")") for n in lib.names)
    entries = ["ENVI", "description = {written by dnmf}", f"samples = {b}", f"lines = {n}",
               "bands = 1", "header offset = 0", "file type = ENVI Spectral Library",
               "data type = 4", "interleave = bsq", "byte order = 0",
               "wavelength units = Nanometers",
               "wavelength = {" + ", ".join(f"{v:.6g}" for v in lib.wavelength) + "}"]
    if lib.fwhm is not None:
        entries.append("fwhm = {" + ", ".join(f"{v:.6g}" for v in lib.fwhm) + "}")
    entries.append("spectra names = {" + names + "}")
    header.write_text("\n".join(entries) + "\n", encoding="utf-8")
    return binary


def write_csv(path: str | os.PathLike[str], lib: SpectralLibrary) -> Path:
    """Write a library as CSV: ``wavelength_nm`` then one column per spectrum."""
    out = Path(os.fspath(path)).expanduser()
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["wavelength_nm", *lib.names])
        for j, wl in enumerate(lib.wavelength):
            w.writerow([f"{wl:.6g}", *(f"{v:.8g}" for v in lib.spectra[:, j])])
    return out


# --------------------------------------------------------------------------- resampling


def resample(lib: SpectralLibrary, wavelength: Any, fwhm: Any = None,
             keep: np.ndarray | None = None) -> SpectralLibrary:
    """The library on other bands (a cube's): one value per target band.

    Parameters
    ----------
    lib : SpectralLibrary
    wavelength : array_like of shape (n,)
        Target band centres in nm.
    fwhm : array_like of shape (n,), optional
        Target band widths in nm. Where the library has FWHM too and the target band is wider
        than the library's band, the value is the library convolved with the target's
        Gaussian response (of width ``sqrt(fwhm_target² - fwhm_library²)``, the library's own
        width being in its values already); elsewhere linear interpolation between the two
        nearest library bands.
    keep : bool array of shape (n,), optional
        Bands to use (bad bands False): the others are NaN.

    Returns
    -------
    SpectralLibrary
        On the target bands. NaN at a dropped band, outside the library's range, inside a gap
        of the library (its neighbours more than 2.5 typical spacings apart: a removed water
        window), and where the library's value is missing.
    """
    target = np.asarray(wavelength, dtype=np.float64)
    src_wl = lib.wavelength
    src = lib.spectra
    spacing = float(np.median(np.diff(src_wl)))
    pos = np.searchsorted(src_wl, target)
    lo, hi = np.clip(pos - 1, 0, src_wl.size - 1), np.clip(pos, 0, src_wl.size - 1)
    exact = src_wl[hi] == target
    lo = np.where(exact, hi, lo)
    span = src_wl[hi] - src_wl[lo]
    t = np.divide(target - src_wl[lo], span, out=np.zeros_like(target), where=span > 0)
    out = src[:, lo] * (1.0 - t) + src[:, hi] * t
    covered = (target >= src_wl[0]) & (target <= src_wl[-1]) & (span <= _GAP_SPACINGS * spacing)
    if fwhm is not None and lib.fwhm is not None:
        out = _gaussian(lib, target, np.asarray(fwhm, dtype=np.float64), out)
    out[:, ~covered] = np.nan
    if keep is not None:
        out[:, ~np.asarray(keep, dtype=bool)] = np.nan
    target_fwhm = None if fwhm is None else np.asarray(fwhm, dtype=np.float64)
    return replace(lib, spectra=out, wavelength=target, fwhm=target_fwhm)


def _gaussian(lib: SpectralLibrary, target: np.ndarray, fwhm: np.ndarray,
              linear: np.ndarray) -> np.ndarray:
    """Gaussian responses where the target band is wider than the library's, else ``linear``."""
    src_wl, src_fwhm = lib.wavelength, lib.fwhm
    width = np.gradient(src_wl)  # each library sample's share of the integral
    out = linear.copy()
    finite = np.isfinite(lib.spectra)
    values = np.where(finite, lib.spectra, 0.0)
    for i, (centre, f) in enumerate(zip(target, fwhm, strict=True)):
        f_src = float(np.interp(centre, src_wl, src_fwhm))
        if not np.isfinite(f) or f <= f_src:
            continue
        sigma = np.sqrt(f * f - f_src * f_src) / _FWHM_PER_SIGMA
        near = np.abs(src_wl - centre) <= 4.0 * sigma
        if near.sum() < 3:  # too few library samples under the response: interpolate
            continue
        w = np.exp(-0.5 * ((src_wl[near] - centre) / sigma) ** 2) * width[near]
        weight = finite[:, near] @ w
        with np.errstate(invalid="ignore", divide="ignore"):
            value = (values[:, near] @ w) / weight
        # most of the response must fall on values the library has
        out[:, i] = np.where(weight >= 0.5 * w.sum(), value, np.nan)
    return out
