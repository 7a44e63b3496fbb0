"""Bands that carry no signal, and stored values that look unscaled: found in one pass.

A cube that lost its bad-band list (a GeoTIFF made from an ENVI file, a product without
one) still has bands that are noise: detector edges, saturated water-vapour windows,
garbage. :func:`band_statistics` reads the cube once for every band's range and the band
Gram matrix of the pixels with data; :func:`noisy_bands` then flags bands that are
constant, mostly negative, or whose signal is below their noise, with the noise of each
band estimated as HySime does (the residual of regressing it on all the other bands,
:func:`dnmf.hyperspectral.subspace.hysime`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import dask
import numpy as np
import xarray as xr

__all__ = ["MIN_BAND_SNR", "BandScreen", "BandStatistics", "band_statistics", "describe_bands",
           "MAX_NOISY_SHARE", "MIN_PIXELS_PER_BAND", "looks_unscaled", "noisy_bands",
           "screen_bands"]

#: A band whose signal variance over the scene is below this multiple of its noise variance
#: is noise (-10 dB). A band of pure noise scores about 0 (within 0.04 at 1,600 pixels);
#: make_scene's bands at 15 dB score 0.15 and more at 40 x 40 pixels, 0.7 at 60 x 60.
MIN_BAND_SNR = 0.1
#: The SNR is judged only with at least this many (sampled) pixels per band: with fewer, the
#: regression fits the noise too (a 14 x 20 cut of make_scene, 175 bands: 2 false alarms).
MIN_PIXELS_PER_BAND = 5
#: When more than this share of the bands scores as noise, the scene is noisy rather than
#: those bands broken: they are reported and kept.
MAX_NOISY_SHARE = 0.25
#: Share of a band's values below zero above which it is not reflectance.
_MAX_NEGATIVE = 0.5


@dataclass(frozen=True)
class BandStatistics:
    """What one pass over a cube found, per band, over the pixels with data in every band.

    Attributes
    ----------
    n_pixels : int
        Pixels with data in every band.
    n_sampled : int
        Those of them in ``gram`` and ``mean``.
    mean : numpy.ndarray, shape (n_bands,)
        Over the sampled pixels.
    minimum, maximum, negative_fraction : numpy.ndarray, shape (n_bands,)
        Over every pixel with data.
    gram : numpy.ndarray, shape (n_bands, n_bands)
        ``YᵀY`` of the sampled pixels (rows), in float64.
    value_counts : numpy.ndarray of int, shape (n_bands,)
        Values (not NaN) of each band over the whole cube: 0 for a band without data.
    """

    n_pixels: int
    n_sampled: int
    mean: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    negative_fraction: np.ndarray
    gram: np.ndarray
    value_counts: np.ndarray


def _tile_sums(block: np.ndarray, stride: int) -> np.ndarray:
    """Block kernel: each band's count of values; count, minima, maxima and negatives of the
    complete pixels (a value in every band that has one in this tile: a band without data
    must not hide every pixel), and the Gram matrix and sums of every ``stride``-th of them,
    bands without data counted as 0."""
    Y = block.reshape(-1, block.shape[-1])
    finite = np.isfinite(Y)
    present = finite.any(axis=0)
    Y = np.where(present, Y, 0.0)[finite[:, present].all(axis=1)]
    nb = block.shape[-1]
    counts = finite.sum(axis=0)
    if Y.shape[0] == 0:
        empty = np.full(nb, np.nan)
        out = (0, empty, empty, np.zeros(nb), 0, np.zeros(nb), np.zeros((nb, nb)), counts)
    else:
        S = Y[::stride].astype(np.float64)
        low = np.where(present, Y.min(axis=0), np.nan).astype(np.float64)
        high = np.where(present, Y.max(axis=0), np.nan).astype(np.float64)
        out = (Y.shape[0], low, high, (Y < 0).sum(axis=0), S.shape[0], S.sum(axis=0), S.T @ S,
               counts)
    holder = np.empty((1, 1), dtype=object)
    holder[0, 0] = out
    return holder


def band_statistics(cube: xr.DataArray, *, max_pixels: int = 250_000) -> BandStatistics:
    """One pass over a cube (band dim last, as :func:`~dnmf.hyperspectral.cube.open_cube`
    returns it): per-band ranges of the complete pixels (no NaN in any band) and the band
    Gram matrix of at most about ``max_pixels`` of them (every s-th pixel of each tile).

    Memory: each task holds one tile and a ``n_bands²`` float64 matrix; the Gram costs
    ``max_pixels * n_bands²`` flops in all, whatever the cube's size.
    """
    data = cube.data
    if len(data.chunks[2]) != 1:
        data = data.rechunk({2: -1})
    n_pixels = int(data.shape[0]) * int(data.shape[1])
    stride = max(1, -(-n_pixels // max(1, int(max_pixels))))
    stats = data.map_blocks(_tile_sums, stride, drop_axis=2, dtype=object,
                            chunks=((1,) * len(data.chunks[0]), (1,) * len(data.chunks[1])),
                            meta=np.empty((0, 0), dtype=object))
    (grid,) = dask.compute(stats)
    counts = sum(p[7] for p in grid.ravel())
    parts = [p for p in grid.ravel() if p[0]]
    nb = int(data.shape[2])
    if not parts:
        empty = np.full(nb, np.nan)
        return BandStatistics(0, 0, empty, empty, empty, np.zeros(nb), np.zeros((nb, nb)),
                               counts)
    n = int(sum(p[0] for p in parts))
    sampled = int(sum(p[4] for p in parts))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a band without data: NaN range
        minimum = np.nanmin(np.stack([p[1] for p in parts]), axis=0)
        maximum = np.nanmax(np.stack([p[2] for p in parts]), axis=0)
    return BandStatistics(
        n_pixels=n, n_sampled=sampled, mean=sum(p[5] for p in parts) / max(sampled, 1),
        minimum=minimum, maximum=maximum, negative_fraction=sum(p[3] for p in parts) / n,
        gram=sum(p[6] for p in parts), value_counts=counts)


def noisy_bands(stats: BandStatistics, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bands among ``candidates`` that are noise, and every candidate's SNR.

    Parameters
    ----------
    stats : BandStatistics
    candidates : numpy.ndarray of bool, shape (n_bands,)
        The bands still kept (the others are neither judged nor used as regressors).

    Returns
    -------
    noisy : numpy.ndarray of bool, shape (n_bands,)
        Bands without data, constant bands, bands mostly below zero, and bands whose signal-to-noise ratio is
        below :data:`MIN_BAND_SNR` (judged with :data:`MIN_PIXELS_PER_BAND` pixels a band
        or more).
    snr : numpy.ndarray, shape (n_bands,)
        Signal variance over noise variance (NaN for bands not judged). The noise variance
        of band i is ``1 / (C⁻¹)_ii``, the residual variance of its regression on the other
        candidates (C their covariance over the complete pixels); the signal variance is the
        rest of ``C_ii``.
    """
    idx = np.flatnonzero(candidates)
    nb = candidates.size
    snr = np.full(nb, np.nan)
    noisy = np.zeros(nb, dtype=bool)
    n = stats.n_sampled
    if idx.size < 3:
        return noisy, snr
    mean = stats.mean[idx]
    C = stats.gram[np.ix_(idx, idx)] / n - np.outer(mean, mean)
    var = np.diag(C).copy()
    top = np.abs(stats.maximum[idx])
    scale = max(float(top[np.isfinite(top)].max()) if np.isfinite(top).any() else 0.0, 1e-30)
    constant = var <= (1e-12 * scale) ** 2
    live = ~constant
    # the regression on p other bands needs many more pixels than p to be a noise estimate
    if live.sum() >= 2 and n >= MIN_PIXELS_PER_BAND * live.sum():
        Cl = C[np.ix_(live, live)]
        ridge = 1e-12 * np.trace(Cl) / Cl.shape[0]
        noise = 1.0 / np.diag(np.linalg.inv(Cl + ridge * np.eye(Cl.shape[0])))
        # the in-sample residual shrinks by (n - p - 1) / n with p regressors: undo it, or a
        # band of pure noise would seem to carry a signal of p / (n - p) of its variance
        noise = noise * n / max(n - Cl.shape[0], 1)
        noise = np.clip(noise, 1e-300, None)
        band_snr = np.full(idx.size, np.nan)
        band_snr[live] = np.maximum(var[live] - noise, 0.0) / noise
        snr[idx] = band_snr
    noisy[idx] = constant | (stats.negative_fraction[idx] > _MAX_NEGATIVE)
    noisy[idx] |= stats.value_counts[idx] == 0  # no data at all
    noisy[idx] |= np.nan_to_num(snr[idx], nan=np.inf) < MIN_BAND_SNR
    return noisy, snr


def looks_unscaled(cube: xr.DataArray, stats: BandStatistics) -> bool:
    """Integers stored without a scale factor whose range is not reflectance (max > 1.5)."""
    stored = np.dtype(cube.attrs.get("stored_dtype", cube.dtype))
    if stored.kind not in "iu" or cube.attrs.get("scaled", False):
        return False
    finite = stats.maximum[np.isfinite(stats.maximum)]
    return bool(finite.size) and float(finite.max()) > 1.5


def describe_bands(indices: np.ndarray, wavelength: np.ndarray | None) -> str:
    """``"180-184 (2400.5-2448 nm), 7 (512 nm)"``: runs of band indices with wavelengths.

    Examples
    --------
    >>> describe_bands(np.array([3, 4, 5, 9]), np.array([0, 1, 2, 400, 410, 420, 6, 7, 8, 900.]))
    '3-5 (400-420 nm), 9 (900 nm)'
    """
    runs: list[list[int]] = []
    for i in (int(v) for v in indices):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    parts = []
    for run in runs:
        text = f"{run[0]}" if len(run) == 1 else f"{run[0]}-{run[-1]}"
        if wavelength is not None:
            a, b = float(wavelength[run[0]]), float(wavelength[run[-1]])
            text += f" ({a:g} nm)" if len(run) == 1 else f" ({a:g}-{b:g} nm)"
        parts.append(text)
    return ", ".join(parts)



@dataclass(frozen=True)
class BandScreen:
    """The bands an unmixing uses and what was said about them.

    Attributes
    ----------
    keep : numpy.ndarray of bool, shape (n_bands,)
    rule : str
        ``"bbl"``, ``"auto"``, ``"none"``, ``"list"`` or ``"all"`` (no bbl, no wavelengths).
    noisy : list of int
        Band indices found to be noise and left out.
    messages : list of str
        ``note: …`` and ``warning: …`` lines for the user.
    """

    keep: np.ndarray
    rule: str
    noisy: list[int]
    messages: list[str]

    def attrs(self) -> dict[str, object]:
        """What the result store records."""
        return {"bad_bands_rule": self.rule, "noisy_bands": list(self.noisy),
                "notes": list(self.messages)}


def screen_bands(cube: xr.DataArray, bad_bands: object = None) -> BandScreen:
    """The bands to unmix, from ``bad_bands`` and, where no list decides, from the data.

    ``bad_bands=None`` takes the cube's ``bbl``; a cube without one but with wavelengths
    gets ``"auto"`` (announced in a ``note:`` line). With ``"auto"`` one pass over the cube
    (:func:`band_statistics`) also finds the bands that are noise (:func:`noisy_bands`),
    named in a ``warning:`` line and dropped. Integers stored without a scale factor whose
    values exceed 1.5 get a ``warning:`` naming ``--scale-factor``. ``"none"`` keeps every
    band and reads nothing. Runs dask computations: call it where the cube is to be read.
    """
    from dnmf.hyperspectral.prepare import (
        VALID_RANGE_NM,
        WATER_ABSORPTION_NM,
        resolve_bad_bands,
    )

    messages: list[str] = []
    has_wl = "wavelength" in cube.coords and bool(
        np.isfinite(np.asarray(cube.coords["wavelength"].values, dtype=float)).all())
    spec = bad_bands
    if isinstance(spec, str) and spec.strip().lower() in ("auto", "none"):
        rule = spec.strip().lower()
    elif spec is None and "bbl" in cube.coords:
        rule = "bbl"
    elif spec is None and has_wl:
        rule, spec = "auto", "auto"
    elif spec is None:
        rule = "all"
    else:
        rule = "list"
    keep = resolve_bad_bands(cube, spec)
    if rule == "auto" and bad_bands is None:
        windows = ", ".join(f"{a}-{b}" for a, b in WATER_ABSORPTION_NM)
        messages.append(
            f"note: the input has no bad-band list (bbl): --bad-bands auto dropped "
            f"{int((~keep).sum())} bands (water vapour {windows} nm, outside "
            f"{VALID_RANGE_NM[0]}-{VALID_RANGE_NM[1]} nm) and checks the rest for noise; "
            "--bad-bands none keeps every band")
    noisy: list[int] = []
    unscaled_possible = (np.dtype(cube.attrs.get("stored_dtype", cube.dtype)).kind in "iu"
                         and not cube.attrs.get("scaled", False))
    if rule == "auto" or (unscaled_possible and rule != "none"):
        stats = band_statistics(cube)
        if rule == "auto":
            flagged, _ = noisy_bands(stats, keep)
            if flagged.sum() > MAX_NOISY_SHARE * keep.sum():
                messages.append(
                    f"warning: {int(flagged.sum())} of {int(keep.sum())} bands score as noise "
                    "by the HySime estimate; the scene is noisy, so all were kept — drop "
                    "bands with --bad-bands LIST if some are broken")
            elif flagged.any() and int((keep & ~flagged).sum()) >= 2:
                noisy = [int(i) for i in np.flatnonzero(flagged)]
                wl = (np.asarray(cube.coords["wavelength"].values, dtype=float)
                      if has_wl else None)
                messages.append(
                    f"warning: {len(noisy)} band{'' if len(noisy) == 1 else 's'} left out as "
                    "noise (no data, constant, mostly negative, or signal below noise by the "
                    f"HySime estimate): {describe_bands(np.asarray(noisy), wl)} — --bad-bands "
                    "none keeps them")
                keep = keep & ~flagged
        if unscaled_possible and looks_unscaled(cube, stats):
            top = float(np.nanmax(stats.maximum))
            messages.append(
                f"warning: the cube holds {cube.attrs.get('stored_dtype')} values up to "
                f"{top:g} with no scale factor, which looks like scaled reflectance — pass "
                "--scale-factor F (scale_factor=F; reflectance = value x F, e.g. 0.0001)")
    return BandScreen(keep=keep, rule=rule, noisy=noisy, messages=messages)
