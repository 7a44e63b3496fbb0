"""Linear unmixing of a hyperspectral cube: endmember spectra and abundance maps.

The cube (rows × cols × bands) becomes a (valid pixels × kept bands) matrix whose row panels
are the cube's spatial tiles (:mod:`dnmf.hyperspectral.prepare`); NMF with abundances that sum
to one factorizes it (``X ≈ A M``: A = W the abundances, M = H the endmember spectra), and the
result goes back to maps tile by tile. Nothing here holds the cube or a full map in memory.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from dnmf import __version__
from dnmf.aliases import ArrayLike, ClientLike, PathLike, SchedulerLike
from dnmf.api import factorize
from dnmf.cluster import execution_context
from dnmf.errors import DnmfWarning, InputError
from dnmf.hyperspectral.bandcheck import screen_bands
from dnmf.hyperspectral.cube import open_cube
from dnmf.hyperspectral.emit import orthorectify
from dnmf.hyperspectral.envi import find_envi_files
from dnmf.hyperspectral.georef import grid_of, write_grid_mapping
from dnmf.hyperspectral.geotiff import GEOTIFF_FILES, check_geotiff_dir, write_geotiffs
from dnmf.hyperspectral.identify import DEFAULT_THRESHOLD_DEG
from dnmf.hyperspectral.plots import PLOT_FILES
from dnmf.hyperspectral.prepare import PixelMatrix, pixel_matrix, resolve_bad_bands
from dnmf.hyperspectral.subspace import SubspaceEstimate, estimate_endmembers
from dnmf.io.overlap import Stored, check_outputs_are_not_inputs, check_plots_are_not_inputs
from dnmf.io.reach import check_workers_reach
from dnmf.io.remote import claim_output, uses_storage_options, zarr_store
from dnmf.io.result_store import (
    check_directory_output,
    check_output,
    consolidate,
    jsonable,
    local_path,
    open_result,
    write_atomically,
)

UNMIX_INITS = ("spa", "vca", "nndsvda", "random")


@uses_storage_options
def unmix(
    cube: xr.DataArray | xr.Dataset | PathLike,
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
    scheduler: SchedulerLike = "auto",
    client: ClientLike | None = None,
    workers: int | None = None,
    memory_limit: str | int | None = None,
    output: PathLike | None = None,
    overwrite: bool = False,
    plots: str | os.PathLike | None = None,
    netcdf: str | os.PathLike | None = None,
    geotiff: str | os.PathLike | None = None,
    scale_factor: float | None = None,
    on_message: Callable[[str], None] | None = None,
    ortho: bool = False,
    callback: Callable[[Any], None] | None = None,
    on_prepared: Callable[[PixelMatrix, int, SubspaceEstimate | None], None] | None = None,
    checkpoint_every: int = 10,
    resume: bool = False,
    spectra: PathLike | ArrayLike | None = None,
    select: Sequence[str] | None = None,
    library: Sequence[Any] | None = None,
    match_threshold: float = DEFAULT_THRESHOLD_DEG,
    match_metric: str = "angle",
    storage_options: dict[str, Any] | None = None,
    out_storage_options: dict[str, Any] | None = None,
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
    checkpoint_every : int
        With ``output``: checkpoint the fit into ``output`` (its ``fit`` group) every N
        iterations (0: never), so that a killed unmixing resumes with ``resume``.
    resume : bool
        Continue the interrupted unmixing whose checkpoint is in ``output`` (same cube and
        options; ``max_iter`` may grow).
    spectra : library source, SpectralLibrary, xarray or numpy (k, bands), optional
        Supervised unmixing: abundances against these spectra (FCLS; NNLS without
        ``sum_to_one``) in one pass over the cube, no NMF
        (:mod:`dnmf.hyperspectral.supervised`); k is their number (an integer
        ``n_endmembers`` must equal it). A library is resampled onto the cube's bands.
    select : sequence of str, optional
        With ``spectra`` a library: the names to use, in this order.
    library : sequence of library sources, optional
        Name the endmembers by spectral matching against these libraries
        (:func:`dnmf.hyperspectral.identify.identify`); a match worse than
        ``match_threshold`` degrees is "unidentified (closest: ...)". Default: the bundled
        earthlib, naming only the endmembers it matches within the threshold.
    match_threshold : float
        Degrees.
    match_metric : {"angle", "correlation"}
    storage_options : dict, optional
        fsspec options (endpoint, credentials) of the URLs read and written; never stored,
        logged or shown.
    out_storage_options : dict, optional
        fsspec options of the outputs where they differ from ``storage_options``.

    Returns
    -------
    xarray.Dataset
        ``endmembers(endmember, band)``, ``abundances(endmember, y, x)`` (the input's spatial
        dims), ``residual_rmse(y, x)``; NaN at no-data pixels and dropped bands. Coordinates
        ``endmember_name``, ``match_angle`` (endmember) and ``match_candidate*`` (endmember,
        candidate): the library matches. Supervised: ``relative_error`` too.
    """
    t_start = time.perf_counter()
    _check_options(n_endmembers, init, sparsity, sum_to_one)
    _check_outputs(cube, var, output, netcdf, plots, overwrite=overwrite, resume=resume)
    if resume and output is None:
        raise InputError("resume needs the output whose checkpoint it continues — pass -o OUT")
    if geotiff is not None:
        check_plots_are_not_inputs(geotiff, GEOTIFF_FILES, {"the cube": Stored(cube, var),
                                                            **_envi_pair(cube)}, kind="GeoTIFF")
        check_geotiff_dir(geotiff, overwrite=overwrite)
    data = without_result_dims(open_cube(cube, var=var, band_dim=band_dim,
                                         scale_factor=scale_factor))
    keep = resolve_bad_bands(data, bad_bands)  # a malformed list fails before any cluster starts
    if ortho and not data.attrs.get("glt"):
        raise InputError("--ortho needs a geometry lookup table (an EMIT L2A file's "
                         "location/glt_x, glt_y); this cube has none — drop --ortho")
    if spectra is not None:
        if resume:
            raise InputError("--resume continues an NMF unmixing; unmixing against given "
                             "spectra (--spectra) is one pass with nothing to resume — run it "
                             "again without --resume")
        if sparsity:
            raise InputError("--sparsity does not apply to unmixing against given spectra "
                             "(--spectra): leave it out")
        return _supervised(data, keep, spectra, select, n_endmembers, sum_to_one, t_start,
                           scheduler=scheduler, workers=workers, memory_limit=memory_limit,
                           client=client, output=output, overwrite=overwrite, plots=plots,
                           netcdf=netcdf, cube=cube)
    with contextlib.ExitStack() as stack:
        if output is not None:
            stack.enter_context(claim_output(output))
        ctx = stack.enter_context(execution_context(
            scheduler, x_nbytes=int(data.nbytes), workers=workers, memory_limit=memory_limit,
            client=client))
        stack.enter_context(ctx.activate())
        check_workers_reach(ctx.remote_client, reads={"the cube": cube})  # before it is read
        screen = screen_bands(data, bad_bands)
        _say(screen.messages, on_message)
        keep = screen.keep
        namer = _namer(data, keep, library, match_threshold, match_metric)
        pm = pixel_matrix(data, keep)  # refuses a cube without one valid pixel
        k, estimate = _endmember_count(n_endmembers, pm, keep)
        if on_prepared is not None:
            on_prepared(pm, k, estimate)
        fit_store, scratch = _fit_store(output, resume)
        try:
            fit = factorize(
                pm.X, k, init=init, w_sum_to_one=sum_to_one, alpha_W=sparsity, alpha_H=0.0,
                l1_ratio=1.0, max_iter=max_iter, tol=tol, random_state=seed,
                client=ctx.client, scheduler=ctx.kind if ctx.client is None else "auto",
                out=fit_store, checkpoint_every=checkpoint_every if scratch is None else 0,
                resume=resume, overwrite=overwrite and not resume, callback=callback,
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
            dataset = namer(dataset)
            # replaces OUT, with the fit's checkpoint group, by the result (this run's)
            result = _delivered(dataset, output, netcdf, overwrite=overwrite, replace=True)
            if geotiff is not None:
                write_geotiffs(result, geotiff)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
    if plots is not None:
        from dnmf.hyperspectral.plots import write_plots

        write_plots(result, plots, loss_history=fit.loss_history)
    return result


def without_result_dims(data: xr.DataArray) -> xr.DataArray:
    """The cube with any dimension named like the result's own (``endmember``) renamed
    (``endmember_in``), so that the result's ``endmembers(endmember, band)`` cannot collide
    with it."""
    if "endmember" not in data.dims:
        return data
    renamed = data.rename({"endmember": "endmember_in"})
    attrs = {**data.attrs, "note": "the cube's dimension 'endmember' was renamed "
             "'endmember_in' (the result's endmember dimension has that name)"}
    for key in ("band_dim", "spatial_dims"):  # open_cube's names of the dims
        value = attrs.get(key)
        if value == "endmember":
            attrs[key] = "endmember_in"
        elif isinstance(value, list | tuple):
            attrs[key] = type(value)("endmember_in" if v == "endmember" else v for v in value)
    renamed.attrs = attrs
    return renamed


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


#: The group of an unmixing's output that holds its fit (checkpoints, then W and H) until the
#: maps replace it.
FIT_GROUP = "fit"


def _fit_store(output: Any, resume: bool) -> tuple[str, str | None]:
    """``(where the fit's W and H and checkpoints go, a scratch folder to remove or None)``:
    inside the output, where a killed run's checkpoint survives and every worker that writes
    the output can reach it; without an output, a temporary folder."""
    if output is None:
        scratch = tempfile.mkdtemp(prefix="dnmf-unmix-")
        return os.path.join(scratch, "fit.zarr"), scratch
    text = os.fspath(output)
    local = local_path(output)
    fit_store = (os.path.join(os.fspath(local.absolute()), FIT_GROUP) if local is not None
                 else posixpath.join(text.rstrip("/"), FIT_GROUP))
    if resume and local is not None and not os.path.isdir(fit_store):
        raise InputError(f"nothing to resume: {output} holds no interrupted unmixing (no "
                         f"{FIT_GROUP} group) — run without --resume")
    return fit_store, None


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
                    keep: np.ndarray, residual: da.Array | None = None) -> xr.Dataset:
    """The unmixing result, lazily: maps built tile by tile from W's rows (and the residual
    RMSE of every row, computed from X, W and H unless given)."""
    ydim, xdim = pm.spatial_dims
    band_dim = pm.band_dim
    k = H.shape[0]
    W_tiles = W.rechunk((pm.X.chunks[0], (k,)))
    H64 = np.asarray(H, dtype=np.float64)
    if residual is None:
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


def _pixel_attrs(data: xr.DataArray, pm: PixelMatrix, keep: np.ndarray) -> dict[str, Any]:
    """The attributes every unmixing result has about its cube: bands kept, pixels, input."""
    return {
        "bands_used": [int(i) for i in np.flatnonzero(keep)],
        "n_bands": int(keep.size),
        "n_pixels_valid": int(pm.X.shape[0]),
        "n_pixels_nodata": int(pm.n_nodata),
        "n_negative_clipped": int(pm.n_negative_clipped),
        "input": {"source": str(data.attrs.get("source", "")),
                  "format": str(data.attrs.get("source_format", "")),
                  "dims": list(data.dims), "shape": list(data.shape)},
    }


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
        **_pixel_attrs(data, pm, keep),
        "wall_time_s": wall_time_s,
        "scaling": "abundances sum to one" if sum_to_one else
                   "each endmember scaled so that its largest abundance is 1",
    })
    if estimate is not None:
        attrs["endmember_estimate"] = {"criterion": estimate.criterion,
                                       "n_endmembers": estimate.n_endmembers,
                                       "evidence": estimate.describe(),
                                       # the curves behind it, for the report's figure
                                       "signal_power": estimate.signal_power,
                                       "noise_power": estimate.noise_power}
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
                   overwrite: bool, resume: bool = False) -> None:
    """Before anything is read: no output is, holds or lies inside the cube (its ENVI header
    and binary both count), no plot is written over it, and each output may be written (the
    output under ``resume`` holds the checkpoint: it exists)."""
    cube_files = {"the cube": Stored(cube, var), **_envi_pair(cube)}
    check_outputs_are_not_inputs({"output": output, "NetCDF output": netcdf}, cube_files)
    check_plots_are_not_inputs(plots, PLOT_FILES, cube_files)
    if plots is not None:
        check_directory_output(plots)
    for path in (netcdf,) if resume else (output, netcdf):
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


def _delivered(dataset: xr.Dataset, output: Any, netcdf: Any, *, overwrite: bool,
               replace: bool) -> xr.Dataset:
    """The result computed into memory, or written to ``output`` (replacing what is there
    with ``replace``) and opened from it; the NetCDF copy besides."""
    if output is None:
        result = dataset.compute()
    else:
        _write_zarr(dataset, output, overwrite=replace)
        result = xr.open_zarr(zarr_store(output, read_only=True))
    if netcdf is not None:
        _write_netcdf(result, netcdf, overwrite=overwrite)
    return result


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


def _namer(data: xr.DataArray, keep: np.ndarray, library: Sequence[Any] | None,
           threshold: float, metric: str) -> Callable[[xr.Dataset], xr.Dataset]:
    """What names a result's endmembers by library matching (checked before the fit)."""
    from dnmf.hyperspectral.identify import identification_coords, identify
    from dnmf.hyperspectral.library import load_library

    explicit = bool(library)
    libraries = [load_library(src) for src in (library or ["earthlib"])]
    wavelength = data.coords["wavelength"].values if "wavelength" in data.coords else None
    if wavelength is None:
        if explicit:
            raise InputError("--library needs the cube's band wavelengths to match spectra — "
                             "add a wavelength coordinate (or ENVI 'wavelength' list)")
        return lambda dataset: dataset
    fwhm = data.coords["fwhm"].values if "fwhm" in data.coords else None
    identify(np.zeros((0, keep.size)), wavelength, [], keep=keep, threshold_deg=threshold,
             metric=metric)  # bad options fail now, not after the fit

    def name(dataset: xr.Dataset) -> xr.Dataset:
        found = identify(dataset["endmembers"].values, wavelength, libraries, fwhm=fwhm,
                         keep=keep, threshold_deg=threshold, metric=metric)
        named = dataset.assign_coords(identification_coords(found, default_names=not explicit))
        named.attrs["identification"] = {
            "libraries": [lib.source for lib in libraries], "threshold_deg": float(threshold),
            "metric": metric, "unidentified_label": "explicit" if explicit else "endmember i"}
        return named

    return name


def _supervised(data: xr.DataArray, keep: np.ndarray, spectra: Any, select: Any,
                n_endmembers: Any, sum_to_one: bool, t_start: float, *, scheduler: Any,
                workers: Any, memory_limit: Any, client: Any, output: Any, overwrite: bool,
                plots: Any, netcdf: Any, cube: Any = None) -> xr.Dataset:
    """Unmixing against given spectra: one pass over the cube, FCLS (or NNLS)."""
    from dnmf.hyperspectral.supervised import reference_spectra, supervised_rows

    reference = reference_spectra(spectra, data, keep, select=select)
    if n_endmembers != "auto" and int(n_endmembers) != reference.k:
        raise InputError(f"-k {n_endmembers} differs from the {reference.k} spectra given — "
                         "leave -k out with --spectra (k is the number of spectra)")
    with execution_context(scheduler, x_nbytes=int(data.nbytes), workers=workers,
                           memory_limit=memory_limit, client=client) as ctx, ctx.activate():
        check_workers_reach(ctx.remote_client, reads={"the cube": cube})
        pm = pixel_matrix(data, keep)
        H = reference.spectra[:, keep]
        A, rmse, relative = supervised_rows(pm.X, H, sum_to_one=sum_to_one)
        dataset = _result_dataset(data, pm, A, H, keep, residual=rmse.astype(np.float32))
        dataset["relative_error"] = ((), relative, {"long_name": "||X - A M|| / ||X||"})
        dataset = dataset.assign_coords(
            endmember_name=("endmember", np.asarray(reference.names, dtype=object)))
        dataset.attrs.update(jsonable({
            "dnmf_version": __version__, "schema_version": 1, "kind": "supervised unmixing",
            "method": "FCLS" if sum_to_one else "NNLS", "n_endmembers": reference.k,
            "n_iter": 0, "spectra_source": reference.source, "sum_to_one": bool(sum_to_one),
            **_pixel_attrs(data, pm, keep), "wall_time_s": time.perf_counter() - t_start}))
        result = _delivered(dataset, output, netcdf, overwrite=overwrite, replace=overwrite)
    if plots is not None:
        from dnmf.hyperspectral.plots import write_plots

        write_plots(result, plots)
    return result
