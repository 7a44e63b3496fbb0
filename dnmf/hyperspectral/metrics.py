"""Unmixing quality: spectral angles, endmember matching, abundance and reconstruction errors.

Every function takes numpy or dask arrays (xarray DataArrays too, through their ``.data``);
the ones that reduce a large array (:func:`abundance_rmse`) compute once, and
:func:`reconstruction_rmse` stays lazy on dask input. dask is imported only when given.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dnmf.errors import InputError

__all__ = [
    "Matching",
    "abundance_rmse",
    "format_score",
    "match_endmembers",
    "open_dataset",
    "reconstruction_rmse",
    "score",
    "spectral_angle",
]


def _is_dask(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "dask"


def _as_array(x: Any) -> Any:
    """The array behind x: a dask array stays lazy, anything else becomes a float ndarray."""
    data = getattr(x, "data", x) if type(x).__module__.split(".")[0] == "xarray" else x
    if _is_dask(data):
        return data if np.issubdtype(data.dtype, np.floating) else data.astype(np.float64)
    data = np.asarray(data)
    return data if np.issubdtype(data.dtype, np.floating) else data.astype(np.float64)


def spectral_angle(a: Any, b: Any, *, degrees: bool = True) -> Any:
    """Spectral angle between spectra along the last axis, broadcasting over leading axes.

    Bands where either spectrum is NaN are left out of that pair's angle. The angle is
    ``2 * arctan2(|u - v|, |u + v|)`` with u, v the unit-normalised spectra, accurate for small
    and large angles alike (``arccos`` of the cosine loses half the digits near 0).

    Parameters
    ----------
    a, b : array_like or dask array of shape (..., n_bands)
        Spectra; leading axes broadcast against each other.
    degrees : bool, keyword-only
        Degrees (default) or radians.

    Returns
    -------
    float ndarray of shape broadcast(a.shape[:-1], b.shape[:-1]), or a float for two spectra
        The angles in [0, 180] degrees (or [0, pi]); NaN where a spectrum is zero, or all NaN,
        over the bands the pair shares. Lazy when an input is a dask array.

    Examples
    --------
    >>> import numpy as np
    >>> from dnmf.hyperspectral.metrics import spectral_angle
    >>> round(float(spectral_angle([1.0, 0.0, 0.0], [0.0, 2.0, 0.0])), 6)
    90.0
    >>> spectral_angle(np.eye(3), [1.0, 1.0, 1.0]).round(4).tolist()
    [54.7356, 54.7356, 54.7356]
    """
    a, b = _as_array(a), _as_array(b)
    if a.ndim == 0 or b.ndim == 0 or a.shape[-1] != b.shape[-1]:
        raise InputError(
            f"spectral_angle needs spectra with the same number of bands on the last axis; got "
            f"shapes {a.shape} and {b.shape}"
        )
    if not _is_dask(a) and not _is_dask(b):
        a, b = a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)
    valid = ~(np.isnan(a) | np.isnan(b))
    a0, b0 = np.where(valid, a, 0.0), np.where(valid, b, 0.0)
    na = np.sqrt(np.sum(a0 * a0, axis=-1, keepdims=True, dtype=np.float64))
    nb = np.sqrt(np.sum(b0 * b0, axis=-1, keepdims=True, dtype=np.float64))
    ua = a0 / np.where(na > 0, na, np.nan)
    ub = b0 / np.where(nb > 0, nb, np.nan)
    diff = np.sqrt(np.sum((ua - ub) ** 2, axis=-1))
    total = np.sqrt(np.sum((ua + ub) ** 2, axis=-1))
    angle = 2.0 * np.arctan2(diff, total)
    if degrees:
        angle = np.degrees(angle)
    if not _is_dask(angle) and angle.ndim == 0:
        return float(angle)
    return angle


@dataclass(frozen=True)
class Matching:
    """A one-to-one assignment of estimated endmembers to reference endmembers.

    Pairs are listed in increasing ``reference_index``. With k1 estimated and k2 reference
    endmembers, ``min(k1, k2)`` pairs are matched; the others are listed as unmatched.

    Attributes
    ----------
    estimated_index, reference_index : ndarray of shape (n_pairs,), int
        Matched rows of the estimated and the reference endmember matrices.
    angles_deg, angles_rad : ndarray of shape (n_pairs,)
        Spectral angle of each pair.
    mean_sad_deg, mean_sad_rad : float
        Mean spectral angle over the pairs (NaN when a pair's angle is undefined).
    sad_matrix_deg : ndarray of shape (k1, k2)
        Every estimated-to-reference angle, in degrees.
    unmatched_estimated, unmatched_reference : ndarray of int
        Rows left out of the assignment.
    reference_names : tuple of str or None
        Names of the reference endmembers (all of them, by reference row), when known.
    """

    estimated_index: np.ndarray
    reference_index: np.ndarray
    angles_deg: np.ndarray
    angles_rad: np.ndarray
    mean_sad_deg: float
    mean_sad_rad: float
    sad_matrix_deg: np.ndarray = field(repr=False)
    unmatched_estimated: np.ndarray
    unmatched_reference: np.ndarray
    reference_names: tuple[str, ...] | None = None

    @property
    def names(self) -> list[str] | None:
        """Reference names of the matched pairs, in pair order (None when unknown)."""
        if self.reference_names is None:
            return None
        return [self.reference_names[j] for j in self.reference_index]


def match_endmembers(
    estimated: Any, reference: Any, *, reference_names: Any = None
) -> Matching:
    """Pair estimated endmembers with reference ones, minimising the total spectral angle.

    The Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the spectral-angle
    matrix; NaN bands are ignored per pair (see :func:`spectral_angle`), and a pair whose
    angle is undefined (an all-NaN or zero spectrum) is matched last.

    Parameters
    ----------
    estimated : array_like of shape (k1, n_bands)
    reference : array_like of shape (k2, n_bands)
    reference_names : sequence of str of length k2, optional, keyword-only

    Returns
    -------
    Matching

    Examples
    --------
    >>> import numpy as np
    >>> from dnmf.hyperspectral.metrics import match_endmembers
    >>> ref = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    >>> m = match_endmembers(2.0 * ref[[2, 0, 1]], ref)
    >>> m.estimated_index.tolist(), m.mean_sad_deg
    ([1, 2, 0], 0.0)
    """
    from scipy.optimize import linear_sum_assignment

    est, ref = _small(estimated, "estimated"), _small(reference, "reference")
    if est.shape[1] != ref.shape[1]:
        raise InputError(
            f"estimated endmembers have {est.shape[1]} bands and the reference {ref.shape[1]}; "
            "give both on the same bands"
        )
    if reference_names is not None:
        reference_names = tuple(str(n) for n in reference_names)
        if len(reference_names) != ref.shape[0]:
            raise InputError(
                f"{len(reference_names)} reference_names for {ref.shape[0]} reference endmembers"
            )
    rad = np.asarray(spectral_angle(est[:, None, :], ref[None, :, :], degrees=False))
    cost = np.where(np.isnan(rad), 4.0 * np.pi, rad)  # undefined angles go last
    rows, cols = linear_sum_assignment(cost)
    order = np.argsort(cols, kind="stable")
    rows, cols = rows[order].astype(np.int64), cols[order].astype(np.int64)
    angles_rad = rad[rows, cols]
    mean_rad = float(np.mean(angles_rad)) if len(angles_rad) else float("nan")
    return Matching(
        estimated_index=rows,
        reference_index=cols,
        angles_deg=np.degrees(angles_rad),
        angles_rad=angles_rad,
        mean_sad_deg=float(np.degrees(mean_rad)),
        mean_sad_rad=mean_rad,
        sad_matrix_deg=np.degrees(rad),
        unmatched_estimated=np.setdiff1d(np.arange(est.shape[0]), rows),
        unmatched_reference=np.setdiff1d(np.arange(ref.shape[0]), cols),
        reference_names=reference_names,
    )


def _small(x: Any, name: str) -> np.ndarray:
    """A small 2-D matrix in memory (endmembers)."""
    x = _as_array(x)
    if _is_dask(x):
        x = x.compute()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"{name} endmembers must be 2-D (k, n_bands), got shape {x.shape}")
    return x


def _abundance_sse(estimated: Any, reference: Any, matching: Matching):
    """Per matched pair: the sum of squared differences and the number of pixels both have."""
    est, ref = _as_array(estimated), _as_array(reference)
    if est.shape[1:] != ref.shape[1:]:
        raise InputError(
            f"estimated abundances have pixel shape {est.shape[1:]} and the reference "
            f"{ref.shape[1:]}; they must cover the same pixels"
        )
    ei, ri = matching.estimated_index, matching.reference_index
    if len(ei) and (ei.max() >= est.shape[0] or ri.max() >= ref.shape[0]):
        raise InputError(
            f"the matching pairs rows up to ({ei.max()}, {ri.max()}) but the abundances have "
            f"{est.shape[0]} and {ref.shape[0]} endmembers"
        )
    diff = est[ei] - ref[ri]
    ok = ~np.isnan(diff)
    axes = tuple(range(1, diff.ndim))
    sse = np.sum(np.where(ok, diff * diff, 0.0), axis=axes, dtype=np.float64)
    count = np.sum(ok, axis=axes, dtype=np.int64)
    if _is_dask(sse) or _is_dask(count):
        import dask

        sse, count = dask.compute(sse, count)
    return np.asarray(sse, dtype=np.float64), np.asarray(count, dtype=np.int64)


def abundance_rmse(estimated: Any, reference: Any, matching: Matching) -> float:
    """Root-mean-square abundance error over the matched endmembers and the valid pixels.

    Pixels where either abundance is NaN (no-data) are left out. Dask inputs are reduced in
    one ``compute``; nothing the size of a map is brought to memory.

    Parameters
    ----------
    estimated : array_like or dask array of shape (k1, ...)
        Estimated abundance maps, endmember first (any number of pixel axes).
    reference : array_like or dask array of shape (k2, ...)
        Reference maps on the same pixels.
    matching : Matching
        From :func:`match_endmembers` (estimated rows to reference rows).

    Returns
    -------
    float
        ``sqrt(sum (A_est[i] - A_ref[j])^2 / count)`` over the pairs (i, j) and the pixels both
        have; NaN when no pixel or no pair is left.

    Examples
    --------
    >>> import numpy as np
    >>> from dnmf.hyperspectral.metrics import abundance_rmse, match_endmembers
    >>> E = np.eye(2)
    >>> A = np.array([[[1.0, 0.5]], [[0.0, 0.5]]])          # (k, rows, cols)
    >>> A_est = np.array([[[0.0, 0.3]], [[1.0, 0.7]]])      # endmembers swapped, 0.2 off
    >>> round(abundance_rmse(A_est, A, match_endmembers(E[::-1], E)), 4)  # sqrt(2 * 0.2**2 / 4)
    0.1414
    """
    sse, count = _abundance_sse(estimated, reference, matching)
    n = int(count.sum())
    return float(np.sqrt(sse.sum() / n)) if n else float("nan")


def reconstruction_rmse(X: Any, W: Any, H: Any) -> Any:
    """Root-mean-square residual of each row of X against W @ H, ignoring NaN entries of X.

    Parameters
    ----------
    X : array_like or dask array of shape (n_samples, n_features)
    W : array_like or dask array of shape (n_samples, n_components)
    H : array_like of shape (n_components, n_features)

    Returns
    -------
    ndarray or dask array of shape (n_samples,), float64
        ``sqrt(mean_f (X - W H)^2)`` over each row's non-NaN entries (NaN for an all-NaN row);
        lazy when X or W is a dask array.

    Examples
    --------
    >>> import numpy as np
    >>> from dnmf.hyperspectral.metrics import reconstruction_rmse
    >>> X = np.array([[1.0, 2.0], [3.0, np.nan]])
    >>> reconstruction_rmse(X, np.ones((2, 1)), np.array([[1.0, 1.0]])).tolist()
    [0.7071067811865476, 2.0]
    """
    X, W, H = _as_array(X), _as_array(W), _as_array(H)
    if X.ndim != 2 or W.ndim != 2 or H.ndim != 2:
        raise InputError(
            f"X, W and H must be 2-D, got shapes {X.shape}, {W.shape} and {H.shape}"
        )
    if W.shape[0] != X.shape[0] or H.shape[1] != X.shape[1] or W.shape[1] != H.shape[0]:
        raise InputError(
            f"shapes do not chain: X {X.shape} ~ W {W.shape} @ H {H.shape}; expected W "
            f"({X.shape[0]}, k) and H (k, {X.shape[1]})"
        )
    if _is_dask(H):
        H = H.compute()
    if _is_dask(X) and not _is_dask(W):
        import dask.array as da

        W = da.from_array(np.asarray(W), chunks=(X.chunks[0], -1))
    elif _is_dask(W) and not _is_dask(X):
        import dask.array as da

        X = da.from_array(X, chunks=(W.chunks[0], -1))
    residual = X - W @ H
    ok = ~np.isnan(residual)
    sse = np.sum(np.where(ok, residual * residual, 0.0), axis=1, dtype=np.float64)
    count = np.sum(ok, axis=1, dtype=np.int64)
    return np.sqrt(sse / np.where(count > 0, count, np.nan))


# ---------------------------------------------------------------------------------- score


def _pick(ds: Any, names: tuple[str, ...], what: str, required: bool = True):
    for name in names:
        if name in ds.data_vars:
            return ds[name]
    if required:
        raise InputError(
            f"the {what} has none of the variables {', '.join(names)} (it has "
            f"{', '.join(map(str, ds.data_vars)) or 'none'}); give an unmix result and a "
            "make_scene-like truth"
        )
    return None


def _endmember_dim(da: Any) -> str:
    return "endmember" if "endmember" in da.dims else str(da.dims[0])


def _align_bands(est: Any, ref: Any):
    """est and ref (endmember, band) restricted to the bands they share, as numpy arrays."""
    e_dim, r_dim = _endmember_dim(est), _endmember_dim(ref)
    if est.ndim != 2 or ref.ndim != 2:
        raise InputError(
            f"endmembers must be 2-D (endmember, band); got dims {est.dims} and {ref.dims}"
        )
    est = est.transpose(e_dim, ...)
    ref = ref.transpose(r_dim, ...)
    e_band, r_band = est.dims[1], ref.dims[1]
    e_wl = est.coords["wavelength"].values if "wavelength" in est.coords else None
    r_wl = ref.coords["wavelength"].values if "wavelength" in ref.coords else None
    e_val, r_val = np.asarray(est.values, np.float64), np.asarray(ref.values, np.float64)
    if e_wl is not None and r_wl is not None and e_wl.ndim == 1 and r_wl.ndim == 1:
        if e_wl.shape == r_wl.shape and np.allclose(e_wl, r_wl, rtol=0, atol=0.5):
            return e_val, r_val
        pos = np.clip(np.searchsorted(r_wl, e_wl), 0, len(r_wl) - 1)
        pos_lo = np.clip(pos - 1, 0, len(r_wl) - 1)
        nearest = np.where(np.abs(r_wl[pos_lo] - e_wl) < np.abs(r_wl[pos] - e_wl), pos_lo, pos)
        hit = np.abs(r_wl[nearest] - e_wl) <= 0.5
        if not hit.any():
            raise InputError(
                f"the result's wavelengths ({e_wl.min():g}-{e_wl.max():g}) share no band with "
                f"the truth's ({r_wl.min():g}-{r_wl.max():g}) within 0.5; check the units"
            )
        return e_val[:, hit], r_val[:, nearest[hit]]
    if est.sizes[e_band] != ref.sizes[r_band]:
        raise InputError(
            f"the result has {est.sizes[e_band]} bands and the truth {ref.sizes[r_band]}, and "
            "without a wavelength coordinate on both they cannot be aligned"
        )
    return e_val, r_val


def _reference_names(ref: Any) -> list[str] | None:
    dim = _endmember_dim(ref)
    if "endmember_name" in ref.coords and ref.coords["endmember_name"].dims == (dim,):
        return [str(v) for v in ref.coords["endmember_name"].values]
    if dim in ref.coords and ref.coords[dim].dtype.kind in "OUS":
        return [str(v) for v in ref.coords[dim].values]
    return None


def _abundance_pair(est: Any, ref: Any):
    """The dask/numpy arrays behind est and ref, endmember first, pixel axes in one order."""
    e_dim, r_dim = _endmember_dim(est), _endmember_dim(ref)
    e_pix = [d for d in est.dims if d != e_dim]
    r_pix = [d for d in ref.dims if d != r_dim]
    if set(e_pix) == set(r_pix):
        est = est.transpose(e_dim, *r_pix)
    else:
        est = est.transpose(e_dim, ...)
    ref = ref.transpose(r_dim, ...)
    if est.shape[1:] != ref.shape[1:]:
        raise InputError(
            f"the result's abundances cover {dict(zip(est.dims[1:], est.shape[1:], strict=True))}"
            f" and the truth's {dict(zip(ref.dims[1:], ref.shape[1:], strict=True))}; score a "
            "result unmixed from the truth's own cube"
        )
    return est.data, ref.data


def score(result: Any, truth: Any) -> dict[str, Any]:
    """Score an unmixing result against the truth: spectral angles and abundance error.

    Endmembers are matched with :func:`match_endmembers` (Hungarian on the spectral angles);
    bands NaN in the result (dropped bands) are ignored; the abundance RMSE runs over the
    matched endmembers and the pixels valid in both (one ``compute`` on dask data).

    Parameters
    ----------
    result : xarray.Dataset
        The ``dnmf unmix`` layout: ``endmembers(endmember, band)`` (NaN at dropped bands) and,
        optionally, ``abundances(endmember, <spatial dims>)``. Variables named
        ``endmembers_true``/``abundances_true`` are accepted too.
    truth : xarray.Dataset
        The :func:`dnmf.datasets.make_scene` layout: ``endmembers_true(endmember, band)``,
        optionally ``abundances_true(endmember, <spatial dims>)`` and an ``endmember_name``
        coordinate; ``endmembers``/``abundances`` are accepted too. Bands are aligned on the
        ``wavelength`` coordinates when both have one, else by position.

    Returns
    -------
    dict
        JSON-ready: ``mean_sad_deg``, ``mean_sad_rad``; ``sad_deg``, ``sad_rad`` (per matched
        pair, in truth order); ``abundance_rmse`` and ``abundance_rmse_per_endmember`` (None
        without abundances in both); ``matching``: a list of ``{"estimated", "reference",
        "name", "identified_as", "sad_deg", "sad_rad", "abundance_rmse"}`` (``identified_as``:
        the result's ``endmember_name``, e.g. its library match, or None); ``unmatched_estimated``,
        ``unmatched_reference``, ``unmatched_reference_names``; ``n_estimated``,
        ``n_reference``.

    Examples
    --------
    >>> from dnmf.datasets import make_scene
    >>> from dnmf.hyperspectral.metrics import score
    >>> truth = make_scene(rows=40, cols=40, n_endmembers=3, chunks=20)
    >>> perfect = truth.rename(endmembers_true="endmembers", abundances_true="abundances")
    >>> s = score(perfect, truth)
    >>> s["mean_sad_deg"] < 1e-4, s["abundance_rmse"]
    (True, 0.0)
    """
    est_e = _pick(result, ("endmembers", "endmembers_true"), "result")
    ref_e = _pick(truth, ("endmembers_true", "endmembers"), "truth")
    est_vals, ref_vals = _align_bands(est_e, ref_e)
    names = _reference_names(ref_e)
    est_names = _reference_names(est_e)  # a result's library identification, when it has one
    matching = match_endmembers(est_vals, ref_vals, reference_names=names)

    est_a = _pick(result, ("abundances", "abundances_true"), "result", required=False)
    ref_a = _pick(truth, ("abundances_true", "abundances"), "truth", required=False)
    per_pair: list[float | None] = [None] * len(matching.estimated_index)
    total: float | None = None
    if est_a is not None and ref_a is not None:
        e_arr, r_arr = _abundance_pair(est_a, ref_a)
        sse, count = _abundance_sse(e_arr, r_arr, matching)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_pair = [float(v) for v in np.sqrt(sse / np.where(count > 0, count, np.nan))]
        n = int(count.sum())
        total = float(np.sqrt(sse.sum() / n)) if n else float("nan")

    pairs = []
    for p, (i, j) in enumerate(zip(matching.estimated_index, matching.reference_index,
                                   strict=True)):
        pairs.append({
            "estimated": int(i),
            "reference": int(j),
            "name": names[j] if names else None,
            "identified_as": est_names[i] if est_names else None,
            "sad_deg": float(matching.angles_deg[p]),
            "sad_rad": float(matching.angles_rad[p]),
            "abundance_rmse": per_pair[p],
        })
    return {
        "mean_sad_deg": matching.mean_sad_deg,
        "mean_sad_rad": matching.mean_sad_rad,
        "sad_deg": [float(v) for v in matching.angles_deg],
        "sad_rad": [float(v) for v in matching.angles_rad],
        "abundance_rmse": total,
        "abundance_rmse_per_endmember": None if total is None else per_pair,
        "matching": pairs,
        "unmatched_estimated": [int(i) for i in matching.unmatched_estimated],
        "unmatched_reference": [int(j) for j in matching.unmatched_reference],
        "unmatched_reference_names": (
            [names[j] for j in matching.unmatched_reference] if names else None
        ),
        "n_estimated": int(est_vals.shape[0]),
        "n_reference": int(ref_vals.shape[0]),
    }


def format_score(report: dict[str, Any]) -> list[str]:
    """The lines ``dnmf score`` prints for a :func:`score` report.

    Examples
    --------
    >>> from dnmf.datasets import make_scene
    >>> from dnmf.hyperspectral.metrics import format_score, score
    >>> truth = make_scene(rows=20, cols=20, n_endmembers=2, chunks=20)
    >>> result = truth.rename(endmembers_true="endmembers", abundances_true="abundances")
    >>> print("\\n".join(format_score(score(result, truth))))  # doctest: +ELLIPSIS
    mean spectral angle 0.00 deg (0.0000 rad) over 2 matched endmembers (2 estimated, 2 true)
    abundance RMSE 0.0000
      true 0 (vegetation:...) <- estimated 0: 0.00 deg, abundance RMSE 0.0000, identified as vegetation:...
      true 1 (bare:...) <- estimated 1: 0.00 deg, abundance RMSE 0.0000, identified as bare:...
    """
    lines = [
        f"mean spectral angle {report['mean_sad_deg']:.2f} deg ({report['mean_sad_rad']:.4f} "
        f"rad) over {len(report['matching'])} matched endmembers ({report['n_estimated']} "
        f"estimated, {report['n_reference']} true)"
    ]
    if report.get("abundance_rmse") is not None:
        lines.append(f"abundance RMSE {report['abundance_rmse']:.4f}")
    for pair in report["matching"]:
        name = f" ({pair['name']})" if pair.get("name") else ""
        rmse = pair.get("abundance_rmse")
        tail = f", abundance RMSE {rmse:.4f}" if rmse is not None else ""
        if pair.get("identified_as"):
            tail += f", identified as {pair['identified_as']}"
        lines.append(f"  true {pair['reference']}{name} <- estimated {pair['estimated']}: "
                     f"{pair['sad_deg']:.2f} deg{tail}")
    if report.get("unmatched_reference"):
        names = report.get("unmatched_reference_names")
        listed = ", ".join(
            f"{j} ({n})" for j, n in zip(report["unmatched_reference"], names, strict=True)
        ) if names else ", ".join(map(str, report["unmatched_reference"]))
        lines.append(f"true endmembers not found: {listed}")
    if report.get("unmatched_estimated"):
        lines.append("estimated endmembers without a true match: "
                     + ", ".join(map(str, report["unmatched_estimated"])))
    return lines


def open_dataset(path: Any) -> Any:
    """Open a result or truth store for :func:`score`: Zarr (path or URL), NetCDF or HDF5.

    An ``xarray.Dataset`` is returned as is. Files ending ``.nc``, ``.nc4``, ``.h5``,
    ``.hdf5`` or ``.cdf`` open with h5netcdf; anything else as Zarr. Lazy either way.
    """
    import xarray as xr

    if isinstance(path, xr.Dataset):
        return path
    text = str(path)
    local = "://" not in text or text.startswith("file://")
    local_path = text[len("file://"):] if text.startswith("file://") else text
    from pathlib import Path

    if local and not Path(local_path).exists():
        raise InputError(f"{text} does not exist; give a Zarr store or a NetCDF/HDF5 file")
    try:
        if text.lower().endswith((".nc", ".nc4", ".h5", ".hdf5", ".cdf")):
            return xr.open_dataset(local_path if local else text, engine="h5netcdf",
                                   chunks={})
        with warnings.catch_warnings():  # a store without consolidated metadata is fine
            warnings.filterwarnings("ignore", message=".*consolidated metadata",
                                    category=RuntimeWarning)
            return xr.open_zarr(text)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"cannot open {text} as a dataset ({type(exc).__name__}: {exc}); give a Zarr "
            "store or a NetCDF/HDF5 file written by dnmf unmix or dnmf.datasets.make_scene"
        ) from None
