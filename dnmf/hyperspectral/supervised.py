"""Supervised unmixing: abundances against spectra one already has, in one pass over the cube.

The given spectra (a library, a subset of it, or a (k, bands) array) are put on the cube's
bands; every row panel of the pixel matrix then gets its abundances by fully constrained least
squares (FCLS; NNLS without sum-to-one) and its residual in one task of
:func:`dnmf.graph.panel_map_reduce`. No NMF iterations: X is read once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from dnmf.errors import InputError
from dnmf.graph import panel_map_reduce
from dnmf.hyperspectral.fcls import fcls_panel
from dnmf.hyperspectral.library import SpectralLibrary, load_library, resample

__all__ = ["ReferenceSpectra", "reference_spectra", "supervised_rows"]


@dataclass(frozen=True)
class ReferenceSpectra:
    """The spectra to unmix against, on the cube's bands.

    Attributes
    ----------
    spectra : ndarray of shape (k, n_bands), float64
        On all the cube's bands; NaN at bands left out.
    names : tuple of str
    source : str
        The library (or ``"array"``).
    """

    spectra: np.ndarray
    names: tuple[str, ...]
    source: str

    @property
    def k(self) -> int:
        """The number of spectra."""
        return int(self.spectra.shape[0])


def _from_array(spectra: Any, n_bands: int) -> SpectralLibrary | np.ndarray:
    """An xarray (k, bands) with a wavelength coordinate becomes a library; else an array."""
    if isinstance(spectra, xr.DataArray):
        dim = "endmember" if "endmember" in spectra.dims else spectra.dims[0]
        spectra = spectra.transpose(dim, ...)
        names = (spectra.coords["endmember_name"].values if "endmember_name" in spectra.coords
                 else [f"spectrum {i}" for i in range(spectra.shape[0])])
        if "wavelength" in spectra.coords and spectra.ndim == 2:
            return SpectralLibrary(spectra=np.asarray(spectra.values, dtype=np.float64),
                                   wavelength=np.asarray(spectra.coords["wavelength"].values,
                                                         dtype=np.float64),
                                   names=tuple(str(n) for n in names), source="array")
        spectra = spectra.values
    array = np.asarray(spectra, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != n_bands:
        raise InputError(f"spectra must be (k, {n_bands}): one row per spectrum on the cube's "
                         f"{n_bands} bands; got shape {array.shape}")
    return array


def reference_spectra(spectra: Any, data: xr.DataArray, keep: np.ndarray, *,
                      select: Sequence[str] | None = None) -> ReferenceSpectra:
    """Resolve ``spectra`` (a library source, a SpectralLibrary, an xarray or numpy (k, bands)
    array) onto the cube's bands, keeping the ``select``-ed names in that order.

    Raises
    ------
    InputError
        Wrong shape, an unknown name, or a kept band the spectra do not cover (the message
        says which bands to drop).
    """
    n_bands = int(keep.size)
    is_array = isinstance(spectra, np.ndarray | xr.DataArray | list | tuple)
    lib = _from_array(spectra, n_bands) if is_array else load_library(spectra)
    if isinstance(lib, np.ndarray):
        if select:
            raise InputError("--select needs named spectra (a library); give a library, or "
                             "an xarray with an endmember_name coordinate")
        values, names, source = lib.copy(), tuple(f"spectrum {i}" for i in range(len(lib))), \
            "array"
    else:
        if select:
            lib = lib.select(list(select))
        wl = data.coords["wavelength"].values if "wavelength" in data.coords else None
        if wl is None:
            raise InputError("unmixing against a spectral library needs the cube's band "
                             "wavelengths — add a wavelength coordinate, or give a (k, bands) "
                             "array")
        fwhm = data.coords["fwhm"].values if "fwhm" in data.coords else None
        values = resample(lib, wl, fwhm=fwhm).spectra
        names, source = lib.names, lib.source
    if values.shape[0] < 1:
        raise InputError("no spectra to unmix against — check --select")
    values[:, ~keep] = np.nan
    missing = np.flatnonzero(keep & np.isnan(values).any(axis=0))
    if missing.size:
        wl = data.coords["wavelength"].values if "wavelength" in data.coords else None
        where = (f"{wl[missing[0]]:g}-{wl[missing[-1]]:g} nm" if wl is not None else
                 f"{missing[0]}-{missing[-1]}")
        raise InputError(
            f"the spectra have no value at {missing.size} of the bands used ({where}) — drop "
            f"them with --bad-bands (e.g. --bad-bands {where.replace(' ', '')}) or give "
            "spectra that cover the cube's range")
    if np.any(values[:, keep] < 0):
        raise InputError("the spectra have negative values — supervised unmixing needs "
                         "non-negative reference spectra")
    return ReferenceSpectra(spectra=values, names=tuple(names), source=source)


def supervised_rows(X: da.Array, H: np.ndarray, *, sum_to_one: bool
                    ) -> tuple[da.Array, da.Array, da.Array]:
    """Abundances of every row of X against the spectra H, lazily, one task per row panel.

    Parameters
    ----------
    X : dask array of shape (n, bands)
        Full-width row panels (the pixel matrix).
    H : ndarray of shape (k, bands)
        The spectra over X's bands.
    sum_to_one : bool
        FCLS, or NNLS without it.

    Returns
    -------
    (abundances (n, k), residual_rmse (n,), relative_error ())
        Dask arrays that share the one pass over X: computed together, X is read once.
        ``relative_error`` is ``||X - A H||_F / ||X||_F``.
    """
    if len(X.chunks[1]) != 1:
        X = X.rechunk({1: -1})
    H = np.asarray(H, dtype=np.float64)
    k = H.shape[0]
    placeholder = da.zeros((X.shape[0], k + 1), chunks=(X.chunks[0], (k + 1,)), dtype=X.dtype)
    func = functools.partial(fcls_panel, sum_to_one=bool(sum_to_one))
    token = tokenize(X.name, H, bool(sum_to_one))
    rows, partials = panel_map_reduce(X, func, prefix="dnmf-supervised", token=token,
                                      W=placeholder, consts=(H, H @ H.T), with_w=True,
                                      pass_mask=False)
    ratio = dask.delayed(_relative_error, pure=True)(partials)
    relative = da.from_delayed(ratio, shape=(), dtype=np.float64)
    return rows[:, :k], rows[:, k], relative


def _relative_error(partials: tuple[float, float]) -> np.ndarray:
    sse, xx = partials
    return np.asarray(np.sqrt(sse / xx) if xx > 0 else 0.0, dtype=np.float64)  # a 0-d block
