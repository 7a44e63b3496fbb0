"""An unmixing result as Cloud-Optimized GeoTIFFs: what QGIS and GDAL open in place.

Each map is written window by window (512 × 512 pixels, read from the result, which may be
a lazy Zarr store) into a tiled GeoTIFF, which GDAL's COG driver then copies, block by block,
into a COG with overviews. No full map is ever in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from dnmf.errors import InputError, OutputError
from dnmf.hyperspectral.georef import grid_of

__all__ = ["GEOTIFF_FILES", "check_geotiff_dir", "write_geotiffs"]

#: The files :func:`write_geotiffs` writes into its directory.
GEOTIFF_FILES = ("abundances.tif", "residual_rmse.tif", "rgb_composite.tif")

_WINDOW = 512


def check_geotiff_dir(directory: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Refuse a directory holding one of :data:`GEOTIFF_FILES` unless ``overwrite``, and
    say when rasterio is missing (before anything is computed)."""
    try:
        import rasterio  # noqa: F401
    except ImportError as err:
        raise InputError("GeoTIFF output needs rasterio: pip install 'dnmf[geo]'") from err
    out = Path(os.fspath(directory))
    if out.exists() and not out.is_dir():
        raise OutputError(f"--geotiff {out} is a file; give a directory")
    existing = [name for name in GEOTIFF_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise OutputError(f"{out} already holds {', '.join(existing)}; pass --overwrite "
                          "(overwrite=True) to replace them or choose another --geotiff DIR")


def _windows(ny: int, nx: int) -> Iterator[tuple[slice, slice]]:
    for r0 in range(0, ny, _WINDOW):
        for c0 in range(0, nx, _WINDOW):
            yield slice(r0, min(r0 + _WINDOW, ny)), slice(c0, min(c0 + _WINDOW, nx))


def _profile(ny: int, nx: int, count: int, dtype: str, nodata: float, grid: Any) -> dict:
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": nx, "height": ny, "count": count, "dtype": dtype,
        "nodata": nodata, "tiled": True, "blockxsize": _WINDOW, "blockysize": _WINDOW,
        "compress": "deflate",
    }
    if nx < _WINDOW or ny < _WINDOW:  # GeoTIFF tiles are multiples of 16 pixels
        profile.update(blockxsize=16 * max(1, min(32, -(-nx // 16))),
                       blockysize=16 * max(1, min(32, -(-ny // 16))))
    if grid is not None:
        from affine import Affine

        profile.update(crs=grid.crs_wkt, transform=Affine.from_gdal(*grid.transform))
    return profile


def _write_cog(path: Path, profile: dict, blocks: Iterator[tuple[tuple[slice, slice],
                                                                  np.ndarray]],
               descriptions: list[str] | None = None) -> Path:
    """A tiled GeoTIFF written window by window, then copied into a COG at ``path``."""
    import rasterio
    import rasterio.shutil
    from rasterio.windows import Window

    tmpdir = tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        tmp = Path(tmpdir) / "tiled.tif"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                if descriptions:
                    for i, text in enumerate(descriptions, start=1):
                        dst.set_band_description(i, text)
                for (rows, cols), block in blocks:
                    window = Window(cols.start, rows.start, cols.stop - cols.start,
                                    rows.stop - rows.start)
                    dst.write(block, window=window)
            staged = Path(tmpdir) / path.name
            rasterio.shutil.copy(tmp, staged, driver="COG", compress="deflate")
        os.replace(staged, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def _labels(result: xr.Dataset) -> list[str]:
    k = result.sizes["endmember"]
    if "endmember_name" in result.coords:
        return [str(v) for v in result.coords["endmember_name"].values]
    return [f"endmember {i}" for i in range(k)]


def write_geotiffs(result: xr.Dataset, directory: str | os.PathLike[str]) -> list[Path]:
    """Write an unmixing result's maps as Cloud-Optimized GeoTIFFs into ``directory``.

    Parameters
    ----------
    result : xarray.Dataset
        The :func:`dnmf.hyperspectral.unmix` layout: ``abundances(endmember, ydim, xdim)``,
        ``residual_rmse(ydim, xdim)`` (either may be lazy, e.g. opened from the Zarr output)
        and, for the georeferencing, a ``spatial_ref`` grid mapping or regular coordinates
        with a CRS (see :func:`dnmf.hyperspectral.georef.grid_of`).
    directory : str or path-like
        Created when missing; the files in :data:`GEOTIFF_FILES` are replaced.

    Returns
    -------
    list of Path
        ``abundances.tif`` (float32, one band per endmember, band descriptions = endmember
        names, no-data NaN), ``residual_rmse.tif`` (float32, no-data NaN) and
        ``rgb_composite.tif`` (uint8 RGB of the three endmembers with the largest mean
        abundance, abundance 0-1 as 1-255, no-data 0). Each carries the result's CRS and
        transform (none when the input had none).

    Notes
    -----
    Memory: one window of 512 × 512 pixels of every endmember at a time, plus GDAL's block
    cache while the COG is copied.
    """
    out = Path(os.fspath(directory))
    out.mkdir(parents=True, exist_ok=True)
    abundances = result["abundances"]
    ydim, xdim = abundances.dims[1:]
    grid = grid_of(result, (ydim, xdim))
    k, ny, nx = (int(s) for s in abundances.shape)
    labels = _labels(result)

    def read(array: xr.DataArray, dims: tuple[Hashable, ...]) -> Iterator[Any]:
        for rows, cols in _windows(ny, nx):
            block = array.isel({ydim: rows, xdim: cols}).transpose(*dims).values
            yield (rows, cols), np.asarray(block, dtype=np.float32)

    written = [_write_cog(out / "abundances.tif",
                          _profile(ny, nx, k, "float32", float("nan"), grid),
                          read(abundances, ("endmember", ydim, xdim)), labels)]
    if "residual_rmse" in result:
        written.append(_write_cog(
            out / "residual_rmse.tif", _profile(ny, nx, 1, "float32", float("nan"), grid),
            ((w, b[None]) for w, b in read(result["residual_rmse"], (ydim, xdim))),
            ["RMSE over the bands used"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN map
        means = np.asarray(abundances.mean((ydim, xdim), skipna=True).values, dtype=float)
    top = list(np.argsort(-np.where(np.isnan(means), -np.inf, means), kind="stable")[:3])
    rgb = abundances.isel(endmember=top)

    def rgb_blocks() -> Iterator[Any]:
        for window, block in read(rgb, ("endmember", ydim, xdim)):
            nodata = np.isnan(block).all(axis=0)
            scaled = 1 + np.round(np.clip(np.nan_to_num(block), 0.0, 1.0) * 254)
            scaled[:, nodata] = 0
            if scaled.shape[0] < 3:  # fewer than 3 endmembers: the missing colours are 0
                scaled = np.concatenate([scaled, np.zeros((3 - scaled.shape[0],
                                                           *scaled.shape[1:]))])
            yield window, scaled.astype(np.uint8)

    written.append(_write_cog(out / "rgb_composite.tif", _profile(ny, nx, 3, "uint8", 0, grid),
                              rgb_blocks(), [f"{colour}: {labels[top[c]] if c < len(top) else '(none)'}"
                                             for c, colour in enumerate(("red", "green", "blue"))]))
    return written
