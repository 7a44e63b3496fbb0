"""EMIT L2A surface reflectance (NetCDF-4), read as NASA lays it out, and its GLT.

The layout (EMIT L2A RFL product user guide; NASA's ``emit-utils``): ``reflectance``
(``downtrack, crosstrack, bands``, float32, ``_FillValue`` −9999) at the root, in swath
geometry; the group ``sensor_band_parameters`` with ``wavelengths`` and ``fwhm`` (nm) and
``good_wavelengths`` (1 good, 0 bad: the bad-band list) over ``bands``; the group
``location`` with ``lat``/``lon`` (swath) and the geometry lookup table ``glt_x``/``glt_y``
(``ortho_y, ortho_x``: the 1-based crosstrack and downtrack index of the swath pixel that
fills each pixel of the orthorectified grid, 0 where none does); root attributes
``geotransform`` (GDAL order) and ``spatial_ref`` (WKT) describe that grid.

:func:`open_emit` gives the swath cube (with ``wavelength``, ``fwhm`` and ``bbl``) and
records where its GLT is; :func:`orthorectify` puts maps computed in swath geometry onto the
orthorectified grid.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from dnmf.errors import InputError
from dnmf.hyperspectral.georef import make_grid, write_grid_mapping
from dnmf.io import netcdf
from dnmf.io.common import Location, resolve_location

__all__ = ["EMIT_FILL", "can_open", "open_emit", "orthorectify"]

#: EMIT's fill value for reflectance.
EMIT_FILL = -9999.0
_BANDS_GROUP = "sensor_band_parameters"
_LOCATION_GROUP = "location"


def can_open(loc: Location) -> bool:
    """Whether a local NetCDF-4 file has EMIT L2A's layout (``reflectance`` at the root,
    ``sensor_band_parameters/wavelengths``)."""
    if not loc.is_local:
        return False
    try:
        import h5py

        with h5py.File(loc.path, "r") as f:
            return (isinstance(f.get("reflectance"), h5py.Dataset)
                    and isinstance(f.get(f"{_BANDS_GROUP}/wavelengths"), h5py.Dataset))
    except (OSError, ValueError):
        return False


def open_emit(loc: Location, var: str | None) -> tuple[xr.DataArray, str, dict | None]:
    """The swath cube of an EMIT L2A file, lazily, values as stored.

    Returns
    -------
    (cube, "emit", stored chunks)
        ``cube`` has dims ``(downtrack, crosstrack, bands)``, coordinates ``wavelength``,
        ``fwhm`` and ``bbl`` (``good_wavelengths``), attrs ``_FillValue`` (−9999 unless the
        file says otherwise), ``crs_wkt`` and ``glt`` (where the lookup table is and the
        orthorectified grid's geotransform), read by :func:`orthorectify`.
    """
    if var not in (None, "reflectance"):
        raise InputError(f"{loc.original} is an EMIT L2A file: its cube is 'reflectance'; drop "
                         f"--var ({var!r})")
    root = netcdf.open_cube(loc)
    bands = netcdf.open_cube(loc, _BANDS_GROUP)
    cube = root["reflectance"]
    band_dim = cube.dims[-1]
    coords: dict[str, Any] = {
        "wavelength": (band_dim, np.asarray(bands["wavelengths"].values, dtype=np.float64),
                       {"units": "nm"})}
    if "fwhm" in bands:
        coords["fwhm"] = (band_dim, np.asarray(bands["fwhm"].values, dtype=np.float64),
                          {"units": "nm"})
    if "good_wavelengths" in bands:
        coords["bbl"] = (band_dim, (np.asarray(bands["good_wavelengths"].values) != 0)
                         .astype(np.int8))
    cube = cube.assign_coords(coords)
    attrs = dict(cube.attrs)
    attrs.setdefault("_FillValue", EMIT_FILL)
    if "spatial_ref" in root.attrs:
        attrs["crs_wkt"] = str(root.attrs["spatial_ref"])
    if "geotransform" in root.attrs:
        attrs["glt"] = {"path": loc.path, "group": _LOCATION_GROUP,
                        "geotransform": [float(v) for v in np.ravel(root.attrs["geotransform"])]}
    attrs["_stamp"] = loc.stamp()
    cube.attrs = attrs
    stored = netcdf.stored_chunks(cube)
    return cube, "emit", dict(zip(cube.dims, stored, strict=True)) if stored else None


def _gather(glt_x: np.ndarray, glt_y: np.ndarray, *, maps: np.ndarray) -> np.ndarray:
    """Block kernel: each ortho pixel takes the swath pixel its GLT names (NaN for 0)."""
    valid = (glt_x > 0) & (glt_y > 0)
    out = np.full((maps.shape[0], *glt_x.shape), np.nan, dtype=maps.dtype)
    out[:, valid] = maps[:, glt_y[valid] - 1, glt_x[valid] - 1]
    return out


def orthorectify(result: xr.Dataset, cube: xr.DataArray, maps: Iterable[Hashable]
                 ) -> xr.Dataset:
    """``result``'s maps moved from swath geometry onto the GLT's orthorectified grid.

    Parameters
    ----------
    result : xarray.Dataset
        Maps over the cube's two spatial dims (``downtrack, crosstrack``), any leading dims.
    cube : xarray.DataArray
        The cube :func:`open_emit` opened (its ``glt`` attr says where the GLT is).
    maps : names of the variables to move; the others are kept as they are.

    Returns
    -------
    xarray.Dataset
        The maps over ``(…, latitude, longitude)`` (pixel-centre coordinates from the
        geotransform), NaN where the GLT is 0, with the grid's CRS as a CF grid mapping.

    Notes
    -----
    Memory: the maps in swath geometry are read into memory (one float32 a pixel a map);
    the orthorectified maps are built lazily, tile by tile of the GLT.
    """
    glt = cube.attrs.get("glt")
    if not glt:
        raise InputError("--ortho needs a geometry lookup table (an EMIT L2A file's "
                         "location/glt_x, glt_y); this cube has none — drop --ortho")
    location = netcdf.open_cube(resolve_location(glt["path"]), glt["group"])
    glt_x = location["glt_x"].data
    glt_y = location["glt_y"].data
    if not isinstance(glt_x, da.Array):
        glt_x, glt_y = da.from_array(glt_x, chunks=512), da.from_array(glt_y, chunks=512)
    glt_y = glt_y.rechunk(glt_x.chunks)
    ny, nx = glt_x.shape
    x0, dx, _, y0, _, dy = glt["geotransform"]
    lat = y0 + dy * (np.arange(ny) + 0.5)
    lon = x0 + dx * (np.arange(nx) + 0.5)
    ydim, xdim = cube.attrs["spatial_dims"]
    out = result.drop_dims([ydim, xdim])
    for name in maps:
        array = result[name]
        lead = [d for d in array.dims if d not in (ydim, xdim)]
        swath = np.asarray(array.transpose(*lead, ydim, xdim).values)
        flat = swath.reshape(-1, *swath.shape[-2:])
        ortho = da.map_blocks(_gather, glt_x.astype(np.int64), glt_y.astype(np.int64),
                              maps=flat, new_axis=0, dtype=flat.dtype,
                              chunks=((flat.shape[0],), *glt_x.chunks))
        ortho = ortho.reshape(*swath.shape[:-2], ny, nx)
        out[name] = xr.Variable((*lead, "latitude", "longitude"), ortho, array.attrs)
    out = out.assign_coords(
        latitude=("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
        longitude=("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"}))
    grid = make_grid(cube.attrs.get("crs_wkt") or "EPSG:4326", glt["geotransform"])
    out.attrs["spatial_dims"] = ["latitude", "longitude"]
    return write_grid_mapping(out, grid, [m for m in maps if m in out])

