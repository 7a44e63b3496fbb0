"""Linear unmixing of a hyperspectral cube: endmember spectra and abundance maps.

The cube (rows × cols × bands) becomes a (valid pixels × kept bands) matrix whose row panels
are the cube's spatial tiles (:mod:`dnmf.hyperspectral.prepare`); NMF with abundances that sum
to one factorizes it (``X ≈ A M``: A = W the abundances, M = H the endmember spectra), and the
result goes back to maps tile by tile. Nothing here holds the cube or a full map in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from dnmf import __version__
from dnmf.api import factorize
from dnmf.cluster import execution_context
from dnmf.errors import DnmfWarning, InputError
from dnmf.hyperspectral.bandcheck import screen_bands
from dnmf.hyperspectral.cube import open_cube
from dnmf.hyperspectral.emit import orthorectify
from dnmf.hyperspectral.envi import find_envi_files
from dnmf.hyperspectral.georef import grid_of, write_grid_mapping
from dnmf.hyperspectral.geotiff import GEOTIFF_FILES, check_geotiff_dir, write_geotiffs
from dnmf.hyperspectral.plots import PLOT_FILES
from dnmf.hyperspectral.prepare import PixelMatrix, pixel_matrix, resolve_bad_bands
from dnmf.hyperspectral.subspace import SubspaceEstimate, estimate_endmembers
from dnmf.io.overlap import Stored, check_outputs_are_not_inputs, check_plots_are_not_inputs
from dnmf.io.result_store import (
    check_output,
    consolidate,
    jsonable,
    local_path,
    open_result,
    write_atomically,
)

UNMIX_INITS = ("spa", "vca", "nndsvda", "random")


def unmix(
    cube: Any,
    n_endmembers: int | str = "auto",
    *,
    var: str | None = None,
    band_dim: str | None = None,
    bad_bands: Any = None,
    init: str = "spa",
    sum_to_one: bool = True,
    sparsity: float = 0.0,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int = 0,
    scheduler: Any = "auto",
    client: Any = None,
    workers: int | None = None,
    memory_limit: str | int | None = None,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    plots: str | os.PathLike | None = None,
    netcdf: str | os.PathLike | None = None,
    geotiff: str | os.PathLike | None = None,
    scale_factor: float | None = None,
    on_message: Callable[[str], None] | None = None,
    ortho: bool = False,
    callback: Callable[[Any], None] | None = None,
    on_prepared: Callable[[PixelMatrix, int, SubspaceEstimate | None], None] | None = None,
) -> xr.Dataset:
    """Unmix a hyperspectral cube into endmember spectra and abundance maps.

    Parameters
    ----------
    cube : xarray DataArray/Dataset or path
        Rows × cols × bands in any dimension order: ENVI (``.hdr``), Zarr, NetCDF, HDF5 or
        GeoTIFF (see :func:`dnmf.hyperspectral.cube.open_cube`).
    n_endmembers : int or "auto"
        ``auto`` estimates it with HySime (:mod:`dnmf.hyperspectral.subspace`), one pass.
    var, band_dim : str, optional
        The variable in a container and the band dimension, when detection is ambiguous.
    bad_bands : None, "auto", "none" or a list
        Bands left out of the fit (NaN in ``endmembers``); see
        :func:`dnmf.hyperspectral.prepare.resolve_bad_bands`. Default: the ``bbl`` of the
        input when present, else ``"auto"`` when wavelengths are known. ``"auto"`` also
        drops the bands that are noise (:func:`dnmf.hyperspectral.bandcheck.screen_bands`).
    init : {"spa", "vca", "nndsvda", "random"}
        Endmember initialisation; SPA and VCA pick pixels of the cube.
    sum_to_one : bool
        Abundances of every pixel sum to one (fully constrained least squares for every W
        update). Without it, each endmember is scaled so that its largest abundance is 1.
    sparsity : float
        L1 penalty on the abundances (``alpha_W`` with ``l1_ratio=1``); it needs
        ``sum_to_one=False`` (with sum-to-one the L1 norm is constant).
    max_iter, tol, seed : as for :func:`dnmf.factorize`
    scheduler, client, workers, memory_limit : as for :func:`dnmf.factorize`
    output : path, optional
        Write the result to this Zarr store (atomically, chunk by chunk) and return it opened
        lazily. Without it, the result is computed into memory. ``output``, ``netcdf`` and
        ``plots`` may not be (or lie inside) the cube: :class:`~dnmf.errors.OutputError`, even
        with ``overwrite``.
    overwrite : bool
        Replace an existing ``output``.
    plots : path, optional
        Directory for PNGs: endmember spectra, one abundance map per endmember, an RGB
        composite of the three most abundant, the residual map and the loss curve.
    netcdf : path, optional
        Also write the result as NetCDF (h5netcdf).
    geotiff : path, optional
        Directory for Cloud-Optimized GeoTIFFs of the maps, with the input's CRS and
        transform (:func:`dnmf.hyperspectral.geotiff.write_geotiffs`; needs rasterio).
    scale_factor : float, optional
        Reflectance = stored value × ``scale_factor``, replacing the input's own factor.
    ortho : bool
        Put the maps on the orthorectified grid of the input's geometry lookup table (EMIT
        L2A: ``location/glt_x``, ``glt_y``), with its CRS.
    on_message : callable, optional
        Called with each ``note: …``/``warning: …`` line about the bands and the scaling;
        by default warnings are issued as :class:`dnmf.errors.DnmfWarning`. All of them
        are kept in the ``notes`` attr.
    callback : callable, optional
        Called after each iteration with :class:`dnmf.api.IterationInfo`.
    on_prepared : callable, optional
        Called with the pixel matrix, the endmember count and the HySime estimate (or None)
        before the fit.

    Returns
    -------
    xarray.Dataset
        ``endmembers(endmember, band)``, ``abundances(endmember, y, x)`` (the input's spatial
        dims), ``residual_rmse(y, x)``; NaN at no-data pixels and dropped bands.
    """
    t_start = time.perf_counter()
    _check_options(n_endmembers, init, sparsity, sum_to_one)
    _check_outputs(cube, var, output, netcdf, plots, overwrite=overwrite)
    if geotiff is not None:
        check_plots_are_not_inputs(geotiff, GEOTIFF_FILES, {"the cube": Stored(cube, var),
                                                            **_envi_pair(cube)}, kind="GeoTIFF")
        check_geotiff_dir(geotiff, overwrite=overwrite)
    data = open_cube(cube, var=var, band_dim=band_dim, scale_factor=scale_factor)
    resolve_bad_bands(data, bad_bands)  # a malformed list fails before any cluster starts
    if ortho and not data.attrs.get("glt"):
        raise InputError("--ortho needs a geometry lookup table (an EMIT L2A file's "
                         "location/glt_x, glt_y); this cube has none — drop --ortho")
    with execution_context(scheduler, x_nbytes=int(data.nbytes), workers=workers,
                           memory_limit=memory_limit, client=client) as ctx, ctx.activate():
        screen = screen_bands(data, bad_bands)
        _say(screen.messages, on_message)
        keep = screen.keep
        pm = pixel_matrix(data, keep)  # refuses a cube without one valid pixel
        k, estimate = _endmember_count(n_endmembers, pm, keep)
        if on_prepared is not None:
            on_prepared(pm, k, estimate)
        scratch = _scratch_dir(output)
        try:
            fit = factorize(
                pm.X, k, init=init, w_sum_to_one=sum_to_one, alpha_W=sparsity, alpha_H=0.0,
                l1_ratio=1.0, max_iter=max_iter, tol=tol, random_state=seed,
                client=ctx.client, scheduler=ctx.kind if ctx.client is None else "auto",
                out=os.path.join(scratch, "fit.zarr"), checkpoint_every=0, callback=callback,
            )
            W, H, fit_attrs = open_result(fit.path)
            if not sum_to_one:
                W, H = _purest_pixel_scale(W, H, ctx)
            dataset = _result_dataset(data, pm, W, H, keep)
            if ortho:
                dataset = orthorectify(dataset, data, ("abundances", "residual_rmse"))
            attrs = _unmix_attrs(fit_attrs, data, pm, keep, sum_to_one, sparsity, estimate,
                                 time.perf_counter() - t_start)
            dataset.attrs.update(attrs)
            dataset.attrs.update(jsonable(screen.attrs()))
            if output is None:
                result = dataset.compute()
            else:
                _write_zarr(dataset, output, overwrite=overwrite)
                result = xr.open_zarr(os.fspath(output))
            if netcdf is not None:
                _write_netcdf(result, netcdf, overwrite=overwrite)
            if geotiff is not None:
                write_geotiffs(result, geotiff)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if plots is not None:
        from dnmf.hyperspectral.plots import write_plots

        write_plots(result, plots, loss_history=fit.loss_history)
    return result


def _say(messages: list[str], on_message: Callable[[str], None] | None) -> None:
    for line in messages:
        if on_message is not None:
            on_message(line)
        elif line.startswith("warning: "):
            warnings.warn(line.removeprefix("warning: "), DnmfWarning, stacklevel=3)


def _check_options(n_endmembers: Any, init: str, sparsity: float, sum_to_one: bool) -> None:
    if n_endmembers != "auto" and (isinstance(n_endmembers, bool) or not isinstance(
            n_endmembers, int | np.integer) or n_endmembers < 1):
        raise InputError(f"the number of endmembers must be an integer >= 1 or 'auto'; got "
                         f"{n_endmembers!r}")
    if init not in UNMIX_INITS:
        raise InputError(f"unknown init {init!r} for unmixing: choose one of "
                         f"{', '.join(UNMIX_INITS)}")
    if sparsity < 0:
        raise InputError(f"sparsity must be >= 0; got {sparsity}")
    if sparsity and sum_to_one:
        raise InputError(
            "an L1 sparsity penalty is constant when abundances sum to one — add "
            "--no-sum-to-one to use --sparsity")


def _scratch_dir(output: Any) -> str:
    """Where the fit's W and H live until the maps are written: next to the output."""
    local = None if output is None else local_path(output)
    if local is None:
        return tempfile.mkdtemp(prefix="dnmf-unmix-")
    local = local.absolute()
    local.parent.mkdir(parents=True, exist_ok=True)
    path = local.parent / f".{local.name}.fit-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return str(path)


def _purest_pixel_scale(W: da.Array, H: np.ndarray, ctx: Any) -> tuple[da.Array, np.ndarray]:
    """Scale every component so its largest abundance is 1 (W·H unchanged)."""
    (peak,) = ctx.compute(W.max(axis=0))
    peak = np.where(np.asarray(peak) > 0, np.asarray(peak, dtype=np.float64), 1.0)
    return W / peak.astype(W.dtype), np.asarray(H) * peak[:, None]


def _residual_rows(X: np.ndarray, W: np.ndarray, H: np.ndarray) -> np.ndarray:
    """The RMSE over the bands of every row's residual ``x - w H``."""
    R = np.asarray(X, dtype=np.float64) - np.asarray(W, dtype=np.float64) @ H
    return np.sqrt(np.einsum("ij,ij->i", R, R) / max(X.shape[1], 1)).astype(np.float32)


def _result_dataset(data: xr.DataArray, pm: PixelMatrix, W: da.Array, H: np.ndarray,
                    keep: np.ndarray) -> xr.Dataset:
    """The unmixing result, lazily: maps built tile by tile from W's rows."""
    ydim, xdim = pm.spatial_dims
    band_dim = pm.band_dim
    k = H.shape[0]
    W_tiles = W.rechunk((pm.X.chunks[0], (k,)))
    H64 = np.asarray(H, dtype=np.float64)
    residual = da.map_blocks(_residual_rows, pm.X, W_tiles, H=H64, drop_axis=1,
                             dtype=np.float32, chunks=(pm.X.chunks[0],))
    spectra = np.full((k, keep.size), np.nan, dtype=np.float32)
    spectra[:, keep] = H64
    abundances = pm.to_maps(W_tiles).astype(np.float32)
    coords = {name: coord for name, coord in data.coords.items()
              if set(coord.dims) <= {ydim, xdim, band_dim}}
    ds = xr.Dataset(
        {
            "endmembers": (("endmember", band_dim), spectra,
                           {"long_name": "endmember spectra",
                            "note": "NaN at the bands left out of the fit"}),
            "abundances": (("endmember", ydim, xdim), abundances,
                           {"long_name": "abundance fractions", "note": "NaN at no-data"}),
            "residual_rmse": ((ydim, xdim), pm.to_map(residual).astype(np.float32),
                              {"long_name": "RMSE over the bands used of x - a M"}),
        },
        coords={**coords, "endmember": np.arange(k),
                "band_used": (band_dim, keep.astype(np.int8))},
    )
    for name in ("crs", "crs_wkt", "map_info", "transform", "grid_mapping"):
        if name in data.attrs:
            ds.attrs[name] = data.attrs[name]
    grid = grid_of(data, (ydim, xdim))
    if grid is not None:  # CF grid mapping that rioxarray and GDAL read
        return write_grid_mapping(ds, grid, ("abundances", "residual_rmse"))
    if "grid_mapping" in data.attrs:  # CF: the maps name their grid-mapping coordinate
        for name in ("abundances", "residual_rmse"):
            ds[name].attrs["grid_mapping"] = data.attrs["grid_mapping"]
    return ds


def _unmix_attrs(fit_attrs: dict, data: xr.DataArray, pm: PixelMatrix, keep: np.ndarray,
                 sum_to_one: bool, sparsity: float, estimate: SubspaceEstimate | None,
                 wall_time_s: float) -> dict[str, Any]:
    skip = {"status", "w_sum_to_one", "input", "chunk_plan", "scaling", "missing"}
    attrs = {key: value for key, value in fit_attrs.items() if key not in skip}
    attrs.update({
        "dnmf_version": __version__,
        "schema_version": 1,
        "kind": "unmixing",
        "n_endmembers": int(fit_attrs.get("n_components", 0)),
        "sum_to_one": bool(sum_to_one),
        "sparsity": float(sparsity),
        "bands_used": [int(i) for i in np.flatnonzero(keep)],
        "n_bands": int(keep.size),
        "n_pixels_valid": int(pm.X.shape[0]),
        "n_pixels_nodata": int(pm.n_nodata),
        "n_negative_clipped": int(pm.n_negative_clipped),
        "input": {"source": str(data.attrs.get("source", "")),
                  "format": str(data.attrs.get("source_format", "")),
                  "dims": list(data.dims), "shape": list(data.shape)},
        "wall_time_s": wall_time_s,
        "scaling": "abundances sum to one" if sum_to_one else
                   "each endmember scaled so that its largest abundance is 1",
    })
    if estimate is not None:
        attrs["endmember_estimate"] = {"criterion": estimate.criterion,
                                       "n_endmembers": estimate.n_endmembers,
                                       "evidence": estimate.describe()}
    return jsonable(attrs)


def _endmember_count(n_endmembers: int | str, pm: PixelMatrix,
                     keep: np.ndarray) -> tuple[int, SubspaceEstimate | None]:
    """k, and HySime's estimate when k is "auto"; a k above what the kept bands or the valid
    pixels allow is refused."""
    n_valid = int(pm.X.shape[0])
    if n_endmembers == "auto":
        estimate = estimate_endmembers(pm.X, max_endmembers=min(n_valid, int(keep.sum())))
        return estimate.n_endmembers, estimate
    k = int(n_endmembers)
    if k > min(n_valid, int(keep.sum())):
        raise InputError(
            f"{k} endmembers is more than the {int(keep.sum())} bands kept or the "
            f"{n_valid} valid pixels allow — lower -k")
    return k, None


def _check_outputs(cube: Any, var: str | None, output: Any, netcdf: Any, plots: Any, *,
                   overwrite: bool) -> None:
    """Before anything is read: no output is, holds or lies inside the cube (its ENVI header
    and binary both count), no plot is written over it, and each output may be written."""
    cube_files = {"the cube": Stored(cube, var), **_envi_pair(cube)}
    check_outputs_are_not_inputs({"output": output, "NetCDF output": netcdf}, cube_files)
    check_plots_are_not_inputs(plots, PLOT_FILES, cube_files)
    for path in (output, netcdf):
        if path is not None:
            check_output(path, overwrite=overwrite)


def _envi_pair(cube: Any) -> dict[str, Path]:
    """The header and the binary of an ENVI cube given as either: both are the input."""
    if not isinstance(cube, str | os.PathLike) or "://" in os.fspath(cube):
        return {}
    try:
        header, binary = find_envi_files(cube)
    except (OSError, InputError):  # not ENVI, or not there (open_cube says which)
        return {}
    return {"the cube's header": header, "the cube's data file": binary}


def _write_zarr(dataset: xr.Dataset, output: Any, *, overwrite: bool) -> None:
    def write(path: str) -> None:
        ds = dataset.copy()
        ds.attrs["status"] = "running"
        encoding = {name: {"chunks": _zarr_chunks(ds[name])} for name in ds.data_vars}
        ds.to_zarr(path, mode="w", encoding=encoding, consolidated=False, zarr_format=3)
        import zarr

        zarr.open_group(path, mode="r+").attrs["status"] = "complete"
        consolidate(path)

    write_atomically(output, write, overwrite=overwrite)


def _zarr_chunks(array: xr.DataArray) -> tuple[int, ...]:
    if array.chunks is None:
        return tuple(array.shape)
    return tuple(max(c) if c else 1 for c in array.chunks)


def _write_netcdf(dataset: xr.Dataset, path: Any, *, overwrite: bool) -> None:
    """A NetCDF copy, written atomically; attrs NetCDF cannot hold become JSON text."""
    import json

    ds = dataset.copy()
    ds.attrs = {key: value if isinstance(value, str | int | float) and not isinstance(
        value, bool) else json.dumps(jsonable(value)) for key, value in ds.attrs.items()}
    write_atomically(Path(path), lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"),
                     overwrite=overwrite)
