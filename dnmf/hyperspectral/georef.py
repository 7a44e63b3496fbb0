"""Where a cube lies on the Earth: its CRS and affine transform, found wherever the input
keeps them, and written back as a CF grid mapping that rioxarray and GDAL read.

Inputs keep their georeferencing in different places: rioxarray's ``spatial_ref``
coordinate (``crs_wkt``, ``GeoTransform``) for GeoTIFF, NetCDF and Zarr; an ENVI header's
``coordinate system string`` and ``map info``; or only regular 1-D ``y``/``x`` coordinates.
:func:`grid_of` reads them into one :class:`Grid`; :func:`write_grid_mapping` gives a
result Dataset the ``spatial_ref`` variable (``crs_wkt``, ``spatial_ref``, ``GeoTransform``
and the CF projection parameters) and the ``grid_mapping`` attribute on every map, the way
``rioxarray``'s ``rio.write_crs``/``rio.write_transform`` do. pyproj (a dependency of
rasterio and rioxarray: ``dnmf[geo]``) turns any CRS text into WKT; without it a WKT the
input gave is kept as it is.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["GRID_MAPPING", "Grid", "grid_of", "make_grid", "transform_of_coords",
           "write_grid_mapping"]

#: Name of the grid-mapping variable dnmf writes (rioxarray's default).
GRID_MAPPING = "spatial_ref"

# CRS text under these attr names, in the order they are trusted.
_CRS_KEYS = ("crs_wkt", "spatial_ref", "crs")


@dataclass(frozen=True)
class Grid:
    """A georeferenced pixel grid.

    Attributes
    ----------
    crs_wkt : str
        The CRS as WKT (WKT2 when pyproj made it; the input's own text otherwise).
    transform : tuple of 6 float
        GDAL order ``(x0, dx, row_rotation, y0, column_rotation, dy)``: the map coordinates
        of the upper-left corner of pixel (0, 0) and the pixel steps (``dy < 0`` north up).
    cf : dict
        CF grid-mapping attributes (``grid_mapping_name`` and the projection parameters)
        when pyproj could derive them; empty otherwise.
    """

    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]
    cf: Mapping[str, Any]

    @property
    def geotransform(self) -> str:
        """The ``GeoTransform`` attribute text GDAL reads."""
        return " ".join(repr(float(v)) for v in self.transform)

    def attrs(self) -> dict[str, Any]:
        """The attributes of the ``spatial_ref`` variable."""
        return {**self.cf, "crs_wkt": self.crs_wkt, "spatial_ref": self.crs_wkt,
                "GeoTransform": self.geotransform}

    def pixel_to_map(self, row: float, col: float) -> tuple[float, float]:
        """Map ``(x, y)`` of a pixel position (``row + 0.5`` is a pixel's centre)."""
        x0, dx, rx, y0, ry, dy = self.transform
        return x0 + col * dx + row * rx, y0 + col * ry + row * dy


def _pyproj_crs(text: Any) -> Any:
    try:
        from pyproj import CRS
        from pyproj.exceptions import CRSError
    except ImportError:
        return None
    try:
        return CRS.from_user_input(text)
    except (CRSError, TypeError, ValueError):
        return None


def _crs_wkt(candidates: Iterable[Any]) -> tuple[str, dict[str, Any]] | None:
    """The first CRS text pyproj understands, as WKT with CF attrs; without pyproj, the
    first WKT-looking text as it is."""
    texts = [c for c in candidates if isinstance(c, str) and c.strip()]
    for text in texts:
        crs = _pyproj_crs(text)
        if crs is not None:
            try:
                cf = dict(crs.to_cf())
            except Exception:  # noqa: BLE001 - a CRS CF cannot describe keeps its WKT only
                cf = {}
            for key in ("crs_wkt", "spatial_ref"):
                cf.pop(key, None)
            return crs.to_wkt(), cf
    try:
        import pyproj  # noqa: F401
    except ImportError:
        for text in texts:
            if text.lstrip().upper().startswith(("PROJCS", "GEOGCS", "PROJCRS", "GEOGCRS")):
                return text, {}
    return None


def _map_info_crs(map_info: Any) -> str | None:
    """EPSG text for the ENVI ``map info`` projections that name one: UTM on WGS-84 and
    geographic WGS-84."""
    from dnmf.errors import InputError
    from dnmf.hyperspectral.envi import parse_map_info

    try:
        info = parse_map_info(map_info)
    except InputError:
        return None
    projection = info["projection"].strip().lower()
    datum = str(info.get("datum", "WGS-84")).replace(" ", "").replace("-", "").upper()
    if datum not in ("WGS84", ""):
        return None
    if projection == "utm" and "zone" in info:
        try:
            zone = int(info["zone"])
        except (TypeError, ValueError):
            return None
        south = str(info.get("hemisphere", "North")).strip().lower().startswith("s")
        return f"EPSG:{(32700 if south else 32600) + zone}"
    if projection.startswith("geographic"):
        return "EPSG:4326"
    return None


def _map_info_transform(map_info: Any) -> tuple[float, ...] | None:
    from dnmf.errors import InputError
    from dnmf.hyperspectral.envi import parse_map_info

    try:
        info = parse_map_info(map_info)
    except InputError:
        return None
    if info["rotation"] % 360 != 0:
        return None
    # ENVI's reference pixel is 1-based at the pixel's upper-left corner.
    x0 = info["easting"] - (info["ref_x"] - 1.0) * info["dx"]
    y0 = info["northing"] + (info["ref_y"] - 1.0) * info["dy"]
    return (x0, info["dx"], 0.0, y0, 0.0, -info["dy"])


def transform_of_coords(y: np.ndarray, x: np.ndarray) -> tuple[float, ...] | None:
    """The transform of pixel-centre coordinates ``y`` and ``x`` when both are regular
    (equal steps within 1e-6 of a step), else ``None``.

    Examples
    --------
    >>> transform_of_coords(np.array([95.0, 85.0]), np.array([5.0, 15.0, 25.0]))
    (0.0, 10.0, 0.0, 100.0, 0.0, -10.0)
    """
    steps = []
    for values in (np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)):
        if values.ndim != 1 or values.size < 2 or not np.isfinite(values).all():
            return None
        diffs = np.diff(values)
        step = float(diffs.mean())
        if step == 0 or np.abs(diffs - step).max() > 1e-6 * abs(step):
            return None
        steps.append(step)
    dy, dx = steps
    return (float(x[0]) - dx / 2, dx, 0.0, float(y[0]) - dy / 2, 0.0, dy)


def _geotransform(text: Any) -> tuple[float, ...] | None:
    try:
        values = tuple(float(v) for v in (text.split() if isinstance(text, str) else text))
    except (TypeError, ValueError):
        return None
    return values if len(values) == 6 else None


def grid_of(cube: xr.DataArray | xr.Dataset, spatial_dims: tuple[Hashable, Hashable] | None
            = None) -> Grid | None:
    """The CRS and transform of a cube, from wherever its input kept them.

    Parameters
    ----------
    cube : xarray.DataArray or Dataset
        As :func:`~dnmf.hyperspectral.cube.open_cube` returns it, or any object with the
        same coordinates and attrs.
    spatial_dims : (ydim, xdim), optional
        Default: the cube's ``spatial_dims`` attr, else ``("y", "x")``.

    Returns
    -------
    Grid or None
        ``None`` when no CRS or no transform can be found. The CRS comes from the
        grid-mapping coordinate (``crs_wkt``, ``spatial_ref``, ``crs``, then its CF
        parameters), then the cube's attrs (``crs_wkt``, ``crs``), then an ENVI ``map info``
        naming UTM or geographic WGS-84. The transform from regular 1-D spatial coordinates
        (the stored ``GeoTransform`` or ``map info`` when they agree, their numbers being
        exact), else from the stored one alone.

    Examples
    --------
    >>> from dnmf.datasets import make_scene
    >>> grid = grid_of(make_scene(rows=4, cols=4, n_endmembers=2).reflectance)
    >>> grid.transform, "UTM zone 33N" in grid.crs_wkt
    ((500000.0, 30.0, 0.0, 5000000.0, 0.0, -30.0), True)
    """
    attrs = cube.attrs
    ydim, xdim = spatial_dims or tuple(attrs.get("spatial_dims", ("y", "x")))  # type: ignore[misc]
    grid_name = attrs.get("grid_mapping") or cube.encoding.get("grid_mapping") or GRID_MAPPING
    ref = cube.coords[grid_name].attrs if grid_name in cube.coords else {}
    candidates = [ref.get(k) for k in _CRS_KEYS] + [attrs.get(k) for k in _CRS_KEYS]
    map_info = attrs.get("map_info")
    if map_info is not None:
        candidates.append(_map_info_crs(map_info))
    found = _crs_wkt(candidates)
    if found is None and ref.get("grid_mapping_name"):
        try:
            from pyproj import CRS

            crs = CRS.from_cf(dict(ref))
            found = crs.to_wkt(), {k: v for k, v in crs.to_cf().items()
                                   if k not in ("crs_wkt", "spatial_ref")}
        except Exception:  # noqa: BLE001, S110 - incomplete CF parameters: no CRS
            pass
    if found is None:
        return None
    stored = _geotransform(ref.get("GeoTransform")) if ref.get("GeoTransform") else None
    if stored is None and map_info is not None:
        stored = _map_info_transform(map_info)
    from_coords = None
    if ydim in cube.coords and xdim in cube.coords:
        from_coords = transform_of_coords(cube.coords[ydim].values, cube.coords[xdim].values)
    # A cube cut out of a larger one keeps the larger one's stored transform: where regular
    # coordinates disagree with it they win; where they agree, the stored numbers are exact.
    transform = stored
    if from_coords is not None and (stored is None or not np.allclose(
            stored, from_coords, rtol=0, atol=1e-6 * max(abs(from_coords[1]),
                                                         abs(from_coords[5])))):
        transform = from_coords
    if transform is None:
        return None
    return Grid(found[0], tuple(float(v) for v in transform), found[1])  # type: ignore[arg-type]


def make_grid(crs: str, transform: Iterable[float]) -> Grid:
    """A :class:`Grid` from CRS text (WKT, ``"EPSG:4326"``) and a GDAL transform; the text is
    kept as it is when pyproj cannot read it.

    Examples
    --------
    >>> make_grid("EPSG:4326", [10.0, 0.1, 0, 50.0, 0, -0.1]).transform
    (10.0, 0.1, 0.0, 50.0, 0.0, -0.1)
    """
    found = _crs_wkt([crs]) or (crs, {})
    values = tuple(float(v) for v in transform)
    if len(values) != 6:
        raise ValueError(f"a geotransform has 6 numbers, got {len(values)}")
    return Grid(found[0], values, found[1])  # type: ignore[arg-type]


def write_grid_mapping(ds: xr.Dataset, grid: Grid, maps: Iterable[Hashable]) -> xr.Dataset:
    """``ds`` with a ``spatial_ref`` coordinate holding ``grid`` and ``grid_mapping`` on each
    of ``maps`` (CF), replacing any grid mapping it had.

    Examples
    --------
    >>> grid = Grid('GEOGCS["WGS 84"]', (0.0, 1.0, 0.0, 2.0, 0.0, -1.0), {})
    >>> ds = write_grid_mapping(xr.Dataset({"m": (("y", "x"), np.zeros((2, 2)))}), grid, ["m"])
    >>> ds["m"].attrs["grid_mapping"], ds["spatial_ref"].attrs["GeoTransform"]
    ('spatial_ref', '0.0 1.0 0.0 2.0 0.0 -1.0')
    """
    old = ds.attrs.get("grid_mapping")
    if old and old != GRID_MAPPING and old in ds.coords:
        ds = ds.drop_vars(old)
    ds = ds.assign_coords({GRID_MAPPING: xr.Variable((), np.int32(0), grid.attrs())})
    for name in maps:
        ds[name].attrs["grid_mapping"] = GRID_MAPPING
        ds[name].encoding.pop("grid_mapping", None)
    ds.attrs["grid_mapping"] = GRID_MAPPING
    ds.attrs["crs_wkt"] = grid.crs_wkt
    return ds
