"""Name endmembers: match each against spectral libraries by spectral angle (or correlation).

Every library is resampled onto the endmembers' bands (:func:`dnmf.hyperspectral.library.
resample`), every endmember is compared with every library spectrum over the bands both have,
and the closest spectra are its candidates. A best match within the threshold names the
endmember; a worse one leaves it "unidentified (closest: ... at N°)".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dnmf.errors import InputError
from dnmf.hyperspectral.library import SpectralLibrary, load_library, resample
from dnmf.hyperspectral.metrics import spectral_angle

__all__ = [
    "DEFAULT_THRESHOLD_DEG",
    "METRICS",
    "Candidate",
    "Identification",
    "identification_coords",
    "identify",
]

#: A best match further than this (degrees) leaves an endmember unidentified. 0.1 rad, the
#: usual SAM classification threshold, rounded.
DEFAULT_THRESHOLD_DEG = 5.0
#: ``angle``: the spectral angle; ``correlation``: the angle between the mean-removed spectra
#: (arccos of Pearson's r, the spectral correlation mapper), blind to an additive offset too.
METRICS = ("angle", "correlation")
#: Candidates kept per endmember.
TOP = 3
#: A library spectrum must share this fraction of an endmember's bands to be compared.
_MIN_SHARED = 0.5


@dataclass(frozen=True)
class Candidate:
    """One library spectrum close to an endmember."""

    name: str
    angle_deg: float
    library: str
    index: int  # its row in that library


@dataclass(frozen=True)
class Identification:
    """An endmember's closest library spectra, best first, and whether the best names it."""

    candidates: tuple[Candidate, ...]
    threshold_deg: float

    @property
    def identified(self) -> bool:
        """The best match lies within the threshold."""
        return bool(self.candidates) and self.candidates[0].angle_deg <= self.threshold_deg

    @property
    def angle_deg(self) -> float:
        """The best match's angle (NaN without any)."""
        return self.candidates[0].angle_deg if self.candidates else float("nan")

    @property
    def label(self) -> str:
        """The best name, or ``unidentified (closest: NAME at N°)``."""
        if self.identified:
            return self.candidates[0].name
        if not self.candidates:
            return "unidentified (no library spectrum covers its bands)"
        best = self.candidates[0]
        return f"unidentified (closest: {best.name} at {best.angle_deg:.1f}°)"


def _angles(endmembers: np.ndarray, spectra: np.ndarray, metric: str) -> np.ndarray:
    """(k, n) angles in degrees over the bands each pair shares; NaN when they share too few.
    One endmember at a time: the temporaries are (n, bands), whatever k."""
    out = np.full((endmembers.shape[0], spectra.shape[0]), np.nan)
    for i, row in enumerate(endmembers):
        shared = np.isfinite(row) & np.isfinite(spectra)
        est = np.where(shared, row, 0.0)
        ref = np.where(shared, spectra, 0.0)
        if metric == "correlation":  # remove each pair's mean over the bands it shares
            count = np.maximum(shared.sum(axis=1, keepdims=True), 1)
            est = np.where(shared, est - est.sum(1, keepdims=True) / count, 0.0)
            ref = np.where(shared, ref - ref.sum(1, keepdims=True) / count, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i] = np.asarray(spectral_angle(est, ref), dtype=np.float64)
        too_few = shared.sum(axis=1) < _MIN_SHARED * max(int(np.isfinite(row).sum()), 1)
        out[i, too_few] = np.nan
    return out


def identify(endmembers: Any, wavelength: Any, libraries: Sequence[Any] = ("earthlib",), *,
             fwhm: Any = None, keep: Any = None, threshold_deg: float = DEFAULT_THRESHOLD_DEG,
             metric: str = "angle", top: int = TOP) -> list[Identification]:
    """Match endmember spectra against spectral libraries.

    Parameters
    ----------
    endmembers : array_like of shape (k, n_bands)
        NaN at bands left out (they are ignored).
    wavelength : array_like of shape (n_bands,)
        The endmembers' band centres in nm.
    libraries : sequence of library sources or :class:`SpectralLibrary`
        Anything :func:`~dnmf.hyperspectral.library.load_library` reads; default the bundled
        earthlib.
    fwhm : array_like of shape (n_bands,), optional
        The bands' widths (for a Gaussian resampling of libraries that have FWHM too).
    keep : bool array of shape (n_bands,), optional
        Bands to compare on (bad bands False).
    threshold_deg : float
        The best match names the endmember only within this angle.
    metric : {"angle", "correlation"}
    top : int
        Candidates kept per endmember.

    Returns
    -------
    list of Identification
        One per endmember, in order.

    Examples
    --------
    >>> from dnmf.datasets import load_spectral_library
    >>> spectra, wavelength, names, classes = load_spectral_library()
    >>> found = identify(2.0 * spectra[[7]], wavelength)
    >>> found[0].candidates[0].index, found[0].angle_deg < 1e-6
    (7, True)
    """
    if metric not in METRICS:
        raise InputError(f"unknown match metric {metric!r}: choose one of {', '.join(METRICS)}")
    if not np.isfinite(threshold_deg) or threshold_deg < 0:
        raise InputError(f"the identification threshold must be an angle >= 0 degrees; got "
                         f"{threshold_deg!r}")
    E = np.asarray(endmembers, dtype=np.float64)
    if E.ndim != 2:
        raise InputError(f"endmembers must be (k, n_bands); got shape {E.shape}")
    if wavelength is None:
        raise InputError("identifying endmembers needs the cube's band wavelengths — add a "
                         "wavelength coordinate (or ENVI 'wavelength' list) to the input")
    wl = np.asarray(wavelength, dtype=np.float64)
    if keep is not None:
        E = np.where(np.asarray(keep, dtype=bool), E, np.nan)
    rows: list[np.ndarray] = []
    labels: list[tuple[str, str, int]] = []
    for source in libraries:
        lib: SpectralLibrary = resample(load_library(source), wl, fwhm=fwhm, keep=keep)
        rows.append(_angles(E, lib.spectra, metric))
        labels += [(name, lib.source, i) for i, name in enumerate(lib.names)]
    angles = np.hstack(rows) if rows else np.empty((E.shape[0], 0))
    out = []
    for a in angles:
        order = [j for j in np.argsort(np.where(np.isnan(a), np.inf, a), kind="stable")
                 if np.isfinite(a[j])][:top]
        out.append(Identification(
            candidates=tuple(Candidate(name=labels[j][0], angle_deg=float(a[j]),
                                       library=labels[j][1], index=labels[j][2])
                             for j in order),
            threshold_deg=float(threshold_deg)))
    return out


def identification_coords(found: Sequence[Identification], *, default_names: bool = False
                          ) -> dict[str, tuple[tuple[str, ...], Any, dict[str, str]]]:
    """xarray coordinates of a result: ``endmember_name``, ``match_angle`` (endmember) and
    ``match_candidate``, ``match_candidate_angle``, ``match_candidate_library``,
    ``match_candidate_index`` (endmember, candidate).

    With ``default_names`` (the bundled library, not asked for) an endmember without a match
    within the threshold keeps its plain name ``endmember i``.
    """
    top = max((len(f.candidates) for f in found), default=0)
    names = [f.label if f.identified or not default_names else f"endmember {i}"
             for i, f in enumerate(found)]

    def table(get: Any, fill: Any, dtype: Any) -> np.ndarray:
        values = np.full((len(found), top), fill, dtype=dtype)
        for i, f in enumerate(found):
            for j, c in enumerate(f.candidates):
                values[i, j] = get(c)
        return values

    pair = ("endmember", "candidate")
    return {
        "endmember_name": (("endmember",), np.asarray(names, dtype=object),
                           {"long_name": "library name of the best match within the "
                                         "threshold"}),
        "match_angle": (("endmember",), np.asarray([f.angle_deg for f in found]),
                        {"long_name": "angle to the best library match", "units": "degree"}),
        "match_candidate": (pair, table(lambda c: c.name, "", object),
                            {"long_name": "closest library spectra, best first"}),
        "match_candidate_angle": (pair, table(lambda c: c.angle_deg, np.nan, np.float64),
                                  {"units": "degree"}),
        "match_candidate_library": (pair, table(lambda c: c.library, "", object), {}),
        "match_candidate_index": (pair, table(lambda c: c.index, -1, np.int64),
                                  {"long_name": "row of the candidate in its library"}),
    }
