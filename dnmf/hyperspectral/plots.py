"""PNG figures of an unmixing result: endmember spectra, abundance maps, RGB, residual, loss.

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure`` with
``FigureCanvasAgg``): no global backend switch, nothing imported with dnmf. The one exception
is the faceted figure of all abundance maps, drawn by xarray's FacetGrid, which makes its
figure through pyplot (closed again at once). Maps larger than ``MAX_SIDE`` pixels on a side
are read with a stride, so only the decimated map is ever in memory.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dnmf.errors import InputError

#: The names :func:`write_plots` may give its files (glob patterns), for the check that no
#: plot is written over an input.
PLOT_FILES = ("endmembers.png", "abundance_*.png", "abundances.png", "rgb_composite.png",
              "residual_rmse.png", "loss.png")

__all__ = ["MAX_SIDE", "crs_name", "endmember_labels", "loss_figure", "png_bytes",
           "render_plots", "write_plots"]

#: Maps are decimated with a stride to at most this many pixels per side before plotting: over
#: twice the ~420 pixels a map's axes span in its PNG, and matplotlib's resampling of a
#: 2000-pixel image cost ~270 MB a figure (a 6-map facet figure ~400 MB).
MAX_SIDE = 1000
#: Colour of no-data (NaN) pixels in every map: not in viridis, magma or a sum-to-one RGB.
NODATA_COLOR = "#d9d9d9"
_DPI = 100


def _figure(width: float = 7.0, height: float = 5.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)  # fixed axes rectangles: one draw per save
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (white background)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    return buffer.getvalue()


def crs_name(result: Any) -> str | None:
    """A short name of the maps' coordinate reference system, or None when none is known.

    Read from the WKT of a ``spatial_ref`` coordinate (``crs_wkt`` or ``spatial_ref`` attr, the
    rioxarray/CF layout) or from a ``crs_wkt`` or ``crs`` attribute of ``result``: the WKT's
    name and its EPSG code when it has one, e.g. ``"WGS 84 / UTM zone 11N (EPSG:32611)"``.
    """
    texts = []
    if "spatial_ref" in getattr(result, "coords", {}):
        attrs = result.coords["spatial_ref"].attrs
        texts += [attrs.get("crs_wkt"), attrs.get("spatial_ref")]
    attrs = getattr(result, "attrs", {})
    texts += [attrs.get("crs_wkt"), attrs.get("crs")]
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            continue
        text = text.strip()
        if re.fullmatch(r"(?i)epsg:\d+", text):
            return text.upper()
        name = re.match(r'\s*[A-Z_]+\s*\[\s*"([^"]*)"', text)
        # the top-level AUTHORITY/ID closes the WKT: the last one names the whole CRS
        codes = re.findall(r'(?:AUTHORITY|ID)\s*\[\s*"EPSG"\s*,\s*"?(\d+)"?\s*\]', text)
        if name is None and not codes:
            continue
        label = name.group(1) if name else ""
        if codes:
            label = f"{label} (EPSG:{codes[-1]})" if label else f"EPSG:{codes[-1]}"
        return label
    return None


def _stride(*sizes: int) -> int:
    """The stride that brings every size to at most ``MAX_SIDE``."""
    return max(1, math.ceil(max(sizes) / MAX_SIDE))


def _endmember_dim(da: Any) -> str:
    return "endmember" if "endmember" in da.dims else str(da.dims[0])


def endmember_labels(result: Any, da: Any) -> list[str]:
    """The legend label of each endmember of ``da``: its ``endmember_name`` (with the library
    match's angle, ``match_angle``, when the name does not already say it), else
    ``endmember i``."""
    dim = _endmember_dim(da)
    if "endmember_name" in result.coords and result.coords["endmember_name"].dims == (dim,):
        names = [str(v) for v in result.coords["endmember_name"].values]
        if "match_angle" in result.coords and result.coords["match_angle"].dims == (dim,):
            angles = np.asarray(result.coords["match_angle"].values, dtype=np.float64)
            names = [f"{n} ({a:.1f}°)" if np.isfinite(a) and "°" not in n
                     and not n.startswith("endmember ") else n
                     for n, a in zip(names, angles, strict=True)]
        return names
    if dim in da.coords:
        return [f"endmember {v}" for v in da.coords[dim].values]
    return [f"endmember {i}" for i in range(da.sizes[dim])]


class _Grid:
    """The two spatial dims of a map, the stride, and the decimated extent for imshow."""

    def __init__(self, da: Any, dims: Sequence[str], crs: str | None = None):
        self.ydim, self.xdim = str(dims[0]), str(dims[1])
        ny, nx = da.sizes[self.ydim], da.sizes[self.xdim]
        self.stride = _stride(ny, nx)
        self.select = {self.ydim: slice(None, None, self.stride),
                       self.xdim: slice(None, None, self.stride)}
        self.extent = None
        self.xlabel = f"{self.xdim} (pixel)"
        self.ylabel = f"{self.ydim} (pixel)"
        y = self._coord(da, self.ydim)
        x = self._coord(da, self.xdim)
        #: the decimated coordinates (pixel indices without coordinates), for FacetGrid
        self.y = np.arange(ny, dtype=np.float64)[:: self.stride]
        self.x = np.arange(nx, dtype=np.float64)[:: self.stride]
        self.has_coords = y is not None and x is not None
        if y is not None and x is not None:
            y, x = y[:: self.stride], x[:: self.stride]
            self.y, self.x = y, x
            dy = y[1] - y[0] if len(y) > 1 else 1.0
            dx = x[1] - x[0] if len(x) > 1 else 1.0
            self.extent = (x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2)
            self.xlabel = self._axis_label(da, self.xdim, crs)
            self.ylabel = self._axis_label(da, self.ydim, crs)
        else:
            self.extent = (-0.5, nx - 0.5, ny - 0.5, -0.5)

    @staticmethod
    def _coord(da: Any, dim: str) -> np.ndarray | None:
        if dim not in da.coords or da.coords[dim].ndim != 1:
            return None
        values = np.asarray(da.coords[dim].values)
        if values.dtype.kind not in "iuf":
            return None
        return values.astype(np.float64)

    @staticmethod
    def _axis_label(da: Any, dim: str, crs: str | None) -> str:
        units = da.coords[dim].attrs.get("units")
        label = f"{dim} ({units})" if units else dim
        return f"{label}, {crs}" if crs else label

    def read(self, da: Any) -> np.ndarray:
        """The decimated map(s) in memory, float32 (NaN kept)."""
        return np.asarray(da.isel(self.select).values, dtype=np.float32)

    def label_axes(self, ax) -> None:
        from matplotlib.ticker import MaxNLocator

        ax.set_xlabel(self.xlabel)
        ax.set_ylabel(self.ylabel)
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))

    def title_suffix(self) -> str:
        return f" (every {self.stride}th pixel)" if self.stride > 1 else ""


def _nodata_legend(ax, has_nodata: bool, extra: Sequence[Any] = ()) -> None:
    from matplotlib.patches import Patch

    handles = list(extra)
    if has_nodata:
        handles.append(Patch(facecolor=NODATA_COLOR, edgecolor="0.4", label="no data"))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.9)


def _map_figure(grid: _Grid, image: np.ndarray, *, title: str, cmap: str, vmin: float,
                vmax: float, label: str):
    import matplotlib as mpl

    colormap = mpl.colormaps[cmap].with_extremes(bad=NODATA_COLOR)
    fig = _figure(6.5, 5.5)
    ax = fig.add_axes((0.14, 0.1, 0.64, 0.8))
    cax = fig.add_axes((0.84, 0.15, 0.03, 0.7))
    im = ax.imshow(image, cmap=colormap, vmin=vmin, vmax=vmax, extent=grid.extent,
                   interpolation="nearest", origin="upper")
    fig.colorbar(im, cax=cax, label=label)
    ax.set_title(title + grid.title_suffix())
    grid.label_axes(ax)
    _nodata_legend(ax, bool(np.isnan(image).any()))
    return fig


def _break_at_gaps(x: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert a NaN column where the band spacing jumps (bands absent from the data, e.g. water
    vapour), so lines are not drawn across them."""
    if len(x) < 3:
        return x, values
    step = np.diff(x)
    jumps = np.flatnonzero(np.abs(step) > 1.5 * np.median(np.abs(step)))
    if not len(jumps):
        return x, values
    x_new = np.insert(x, jumps + 1, (x[jumps] + x[jumps + 1]) / 2)
    values_new = np.insert(values, jumps + 1, np.nan, axis=1)
    return x_new, values_new


def _plot_endmembers(result: Any, endmembers: Any):
    dim = _endmember_dim(endmembers)
    endmembers = endmembers.transpose(dim, ...)
    values = np.asarray(endmembers.values, dtype=np.float64)
    band = endmembers.dims[1]
    if "wavelength" in endmembers.coords and endmembers.coords["wavelength"].dims == (band,):
        x = np.asarray(endmembers.coords["wavelength"].values, dtype=np.float64)
        units = endmembers.coords["wavelength"].attrs.get("units", "")
        xlabel = f"wavelength ({units})" if units else "wavelength"
    else:
        x = np.arange(values.shape[1], dtype=np.float64)
        xlabel = f"{band} (index)"
    fig = _figure(9.5, 4.8)
    ax = fig.add_axes((0.07, 0.11, 0.6, 0.82))
    x_gapped, values_gapped = _break_at_gaps(x, values)
    for label, spectrum in zip(endmember_labels(result, endmembers), values_gapped, strict=True):
        ax.plot(x_gapped, spectrum, label=label, linewidth=1.4)  # NaN bands leave gaps
    dropped = np.isnan(values).all(axis=0)
    if dropped.any() and len(x) > 1:
        step = np.median(np.diff(x))
        for xi in x[dropped]:
            ax.axvspan(xi - step / 2, xi + step / 2, color="0.92", zorder=0, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("reflectance")
    ax.set_title("endmembers" + (" (grey: dropped bands)" if dropped.any() else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _plot_rgb(grid: _Grid, maps: np.ndarray, labels: list[str]):
    from matplotlib.patches import Patch

    k = maps.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN map: mean of empty slice
        means = np.nanmean(maps.reshape(k, -1), axis=1)
    means = np.where(np.isnan(means), -np.inf, means)
    top = list(np.argsort(-means, kind="stable")[:3])
    nodata = np.isnan(maps).all(axis=0)
    rgb = np.zeros((*maps.shape[1:], 4), dtype=np.float32)
    for channel, i in enumerate(top):
        rgb[..., channel] = np.clip(np.nan_to_num(maps[i], nan=0.0), 0.0, 1.0)
    rgb[..., 3] = np.where(nodata, 0.0, 1.0)  # transparent: the axes' no-data colour shows
    fig = _figure(6.5, 5.5)
    ax = fig.add_axes((0.14, 0.1, 0.8, 0.8))
    ax.set_facecolor(NODATA_COLOR)
    ax.imshow(rgb, extent=grid.extent, interpolation="nearest", origin="upper")
    names = ("red", "green", "blue")
    handles = [Patch(facecolor=names[c], label=f"{names[c][0].upper()}: {labels[i]}")
               for c, i in enumerate(top)]
    ax.set_title("abundance composite" + grid.title_suffix())
    grid.label_axes(ax)
    _nodata_legend(ax, bool(nodata.any()), handles)
    return fig


def _plot_facets(grid: _Grid, maps: np.ndarray, labels: list[str]):
    """All abundance maps in one figure, one panel each, a shared 0-1 colour scale (xarray's
    FacetGrid; it draws through pyplot, so the figure is closed there at once)."""
    import matplotlib as mpl
    import matplotlib.pyplot as plt
    import xarray as xr

    k = maps.shape[0]
    ny, nx = maps.shape[1:]
    panel = xr.DataArray(maps, dims=("endmember", "y", "x"),
                         coords={"endmember": np.arange(k), "y": grid.y, "x": grid.x})
    ncol = min(k, 4)
    nrow = math.ceil(k / ncol)
    panel_height = min(4.5, max(1.8, 3.2 * ny / max(nx, 1)))
    with plt.ioff():  # never shown: no window in an interactive session
        facets = panel.plot.imshow(
            col="endmember", col_wrap=ncol, figsize=(3.2 * ncol + 1.4, panel_height * nrow + 1.4),
            vmin=0.0, vmax=1.0, cmap=mpl.colormaps["viridis"].with_extremes(bad=NODATA_COLOR),
            interpolation="nearest", yincrease=grid.has_coords, add_colorbar=False)
    plt.close(facets.fig)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(facets.fig)  # drawn on Agg like every other figure, whatever pyplot uses
    # titles set here, not by FacetGrid: facets select by label, and names may repeat
    for ax, selection in zip(facets.axs.flat, facets.name_dicts.flat, strict=True):
        if selection is not None:
            ax.set_title(labels[int(selection["endmember"])], size="medium")
    facets.set_xlabels("")
    facets.set_ylabels("")
    facets.fig.supxlabel(grid.xlabel)  # once for the grid: a CRS name is longer than a panel
    facets.fig.supylabel(grid.ylabel)
    for ax in facets.axs.flat:
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(nbins=3))
    note = "; grey: no data" if bool(np.isnan(maps).any()) else ""
    facets.fig.suptitle(f"abundances{grid.title_suffix()}{note}")
    # xarray lays the grid out once (tight); constrained layout from here on, before the colour
    # bar exists, so that long CRS labels, the titles and the colour bar all fit
    facets.fig.set_layout_engine("constrained")
    facets.fig.colorbar(facets.axs.flat[0].images[0], ax=facets.axs, label="abundance",
                        shrink=0.8)
    return facets.fig


def loss_figure(loss_history: Sequence[float]):
    """The loss per iteration (log scale when every value is positive), laid out by
    matplotlib's constrained layout so that tick labels and the axis labels fit."""
    loss = np.asarray(list(loss_history), dtype=np.float64).ravel()
    fig = _figure(6.5, 4.2)
    fig.set_layout_engine("constrained")  # log-scale tick labels vary in width
    ax = fig.add_subplot()
    iterations = np.arange(1, len(loss) + 1)
    ax.plot(iterations, loss, marker="o" if len(loss) <= 30 else None, markersize=3)
    finite = loss[np.isfinite(loss)]
    if finite.size and (finite > 0).all():
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("loss history")
    ax.grid(alpha=0.3, which="both")
    return fig


def render_plots(
    result: Any,
    *,
    loss_history: Sequence[float] | None = None,
) -> dict[str, bytes]:
    """The figures of :func:`write_plots` as PNG bytes, by file name, in memory.

    Parameters and figures as for :func:`write_plots`; a result with nothing to plot gives an
    empty dict. Every map is read once, decimated (see :func:`write_plots`'s Notes), and each
    figure is encoded and freed before the next is drawn.
    """
    rendered: dict[str, bytes] = {}
    crs = crs_name(result)
    if "endmembers" in result:
        rendered["endmembers.png"] = png_bytes(_plot_endmembers(result, result["endmembers"]))

    if "abundances" in result:
        abundances = result["abundances"]
        dim = _endmember_dim(abundances)
        spatial = [d for d in abundances.dims if d != dim]
        if len(spatial) != 2:
            raise InputError(
                f"abundances must have dims (endmember, y, x); got {abundances.dims}"
            )
        abundances = abundances.transpose(dim, *spatial)
        grid = _Grid(abundances, spatial, crs)
        maps = grid.read(abundances)  # one pass over the store, decimated
        labels = endmember_labels(result, abundances)
        for i, label in enumerate(labels):
            rendered[f"abundance_{i}.png"] = png_bytes(_map_figure(
                grid, maps[i], title=f"abundance: {label}", cmap="viridis", vmin=0.0,
                vmax=1.0, label="abundance"))
        rendered["abundances.png"] = png_bytes(_plot_facets(grid, maps, labels))
        rendered["rgb_composite.png"] = png_bytes(_plot_rgb(grid, maps, labels))
        del maps

    if "residual_rmse" in result:
        residual = result["residual_rmse"]
        if residual.ndim != 2:
            raise InputError(f"residual_rmse must be 2-D (y, x); got dims {residual.dims}")
        grid = _Grid(residual, residual.dims, crs)
        image = grid.read(residual)
        finite = image[np.isfinite(image)]
        vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
        rendered["residual_rmse.png"] = png_bytes(_map_figure(
            grid, image, title="residual RMSE per pixel", cmap="magma", vmin=0.0,
            vmax=vmax if vmax > 0 else 1.0, label="RMSE (reflectance)"))

    if loss_history is None:
        loss_history = result.attrs.get("loss_history")
    if loss_history is not None and len(loss_history) > 0:
        rendered["loss.png"] = png_bytes(loss_figure(loss_history))
    return rendered


def write_plots(
    result: Any,
    directory: str | Path,
    *,
    loss_history: Sequence[float] | None = None,
) -> list[Path]:
    """Write PNG figures of an unmixing result into ``directory`` (created if needed).

    Parameters
    ----------
    result : xarray.Dataset
        The ``dnmf unmix`` output layout: ``endmembers(endmember, band)`` (NaN at dropped
        bands, coordinate ``wavelength(band)`` when known), ``abundances(endmember, ydim,
        xdim)`` (NaN at no-data), ``residual_rmse(ydim, xdim)``; an ``endmember_name``
        coordinate labels the endmembers. Any of the three may be missing; maps may be lazy
        (dask, Zarr) and are read decimated. A coordinate reference system named by a
        ``spatial_ref`` coordinate or a ``crs_wkt`` attribute (:func:`crs_name`) is named on
        the maps' axes.
    directory : str or Path
    loss_history : sequence of float, optional, keyword-only
        Loss per iteration; defaults to ``result.attrs["loss_history"]`` when present.

    Returns
    -------
    list of Path
        In order, those that apply: ``endmembers.png`` (spectra against wavelength, gaps and
        grey bands at dropped bands), ``abundance_<i>.png`` for each endmember position i
        (colour scale 0-1, no-data in light grey), ``abundances.png`` (all abundance maps in
        one faceted figure), ``rgb_composite.png`` (the three endmembers with the largest mean
        abundance as red, green, blue), ``residual_rmse.png``, ``loss.png`` (log scale when
        every value is positive).

    Raises
    ------
    dnmf.InputError
        ``result`` has none of the three variables.

    Notes
    -----
    A map larger than ``MAX_SIDE`` (1000) pixels on a side is read with the stride
    ``ceil(max(ny, nx) / 1000)`` on both axes: the figures show every stride-th pixel, and only
    the decimated maps (``k * (ny / stride) * (nx / stride)`` float32) are in memory.

    Examples
    --------
    >>> import tempfile
    >>> from dnmf.datasets import make_scene
    >>> from dnmf.hyperspectral.plots import write_plots
    >>> truth = make_scene(rows=40, cols=40, n_endmembers=3, chunks=20)
    >>> result = truth.rename(endmembers_true="endmembers", abundances_true="abundances")
    >>> paths = write_plots(result, tempfile.mkdtemp(), loss_history=[3.0, 2.0, 1.5])
    >>> [p.name for p in paths]  # doctest: +NORMALIZE_WHITESPACE
    ['endmembers.png', 'abundance_0.png', 'abundance_1.png', 'abundance_2.png',
     'abundances.png', 'rgb_composite.png', 'loss.png']
    """
    variables = [v for v in ("endmembers", "abundances", "residual_rmse") if v in result]
    if not variables:
        raise InputError(
            "nothing to plot: the result has none of the variables endmembers, abundances, "
            f"residual_rmse (it has {', '.join(map(str, result.data_vars)) or 'none'})"
        )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, data in render_plots(result, loss_history=loss_history).items():
        (out / name).write_bytes(data)
        written.append(out / name)
    return written
