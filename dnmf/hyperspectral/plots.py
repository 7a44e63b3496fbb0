"""PNG figures of an unmixing result: endmember spectra, abundance maps, RGB, residual, loss.

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure`` with
``FigureCanvasAgg``): no pyplot, no global backend switch, nothing imported with dnmf. Maps
larger than ``MAX_SIDE`` pixels on a side are read with a stride, so only the decimated map is
ever in memory.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dnmf.errors import InputError

#: The names :func:`write_plots` may give its files (glob patterns), for the check that no
#: plot is written over an input.
PLOT_FILES = ("endmembers.png", "abundance_*.png", "rgb_composite.png", "residual_rmse.png",
              "loss.png")

__all__ = ["MAX_SIDE", "endmember_labels", "write_plots"]

#: Maps are decimated with a stride to at most this many pixels per side before plotting.
MAX_SIDE = 2000
#: Colour of no-data (NaN) pixels in every map: not in viridis, magma or a sum-to-one RGB.
NODATA_COLOR = "#d9d9d9"
_DPI = 100


def _figure(width: float = 7.0, height: float = 5.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)  # fixed axes rectangles: one draw per save
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI, facecolor="white")
    return path


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

    def __init__(self, da: Any, dims: Sequence[str]):
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
        if y is not None and x is not None:
            y, x = y[:: self.stride], x[:: self.stride]
            dy = y[1] - y[0] if len(y) > 1 else 1.0
            dx = x[1] - x[0] if len(x) > 1 else 1.0
            self.extent = (x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2)
            self.xlabel = self._axis_label(da, self.xdim)
            self.ylabel = self._axis_label(da, self.ydim)
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
    def _axis_label(da: Any, dim: str) -> str:
        units = da.coords[dim].attrs.get("units")
        return f"{dim} ({units})" if units else dim

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
                vmax: float, label: str, path: Path) -> Path:
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
    return _save(fig, path)


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


def _plot_endmembers(result: Any, endmembers: Any, path: Path) -> Path:
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
    return _save(fig, path)


def _plot_rgb(grid: _Grid, maps: np.ndarray, labels: list[str], path: Path) -> Path:
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
    return _save(fig, path)


def _plot_loss(loss_history: Sequence[float], path: Path) -> Path:
    loss = np.asarray(list(loss_history), dtype=np.float64).ravel()
    fig = _figure(6.5, 4.2)
    ax = fig.add_axes((0.12, 0.12, 0.84, 0.8))
    iterations = np.arange(1, len(loss) + 1)
    ax.plot(iterations, loss, marker="o" if len(loss) <= 30 else None, markersize=3)
    finite = loss[np.isfinite(loss)]
    if finite.size and (finite > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("loss history")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


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
        (dask, Zarr) and are read decimated.
    directory : str or Path
    loss_history : sequence of float, optional, keyword-only
        Loss per iteration; defaults to ``result.attrs["loss_history"]`` when present.

    Returns
    -------
    list of Path
        In order, those that apply: ``endmembers.png`` (spectra against wavelength, gaps and
        grey bands at dropped bands), ``abundance_<i>.png`` for each endmember position i
        (colour scale 0-1, no-data in light grey), ``rgb_composite.png`` (the three endmembers
        with the largest mean abundance as red, green, blue), ``residual_rmse.png``,
        ``loss.png`` (log scale when every value is positive).

    Raises
    ------
    dnmf.InputError
        ``result`` has none of the three variables.

    Notes
    -----
    A map larger than ``MAX_SIDE`` (2000) pixels on a side is read with the stride
    ``ceil(max(ny, nx) / 2000)`` on both axes: the figures show every stride-th pixel, and only
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
     'rgb_composite.png', 'loss.png']
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

    if "endmembers" in result:
        written.append(_plot_endmembers(result, result["endmembers"], out / "endmembers.png"))

    if "abundances" in result:
        abundances = result["abundances"]
        dim = _endmember_dim(abundances)
        spatial = [d for d in abundances.dims if d != dim]
        if len(spatial) != 2:
            raise InputError(
                f"abundances must have dims (endmember, y, x); got {abundances.dims}"
            )
        abundances = abundances.transpose(dim, *spatial)
        grid = _Grid(abundances, spatial)
        maps = grid.read(abundances)  # one pass over the store, decimated
        labels = endmember_labels(result, abundances)
        for i, label in enumerate(labels):
            written.append(_map_figure(
                grid, maps[i], title=f"abundance: {label}", cmap="viridis", vmin=0.0,
                vmax=1.0, label="abundance", path=out / f"abundance_{i}.png",
            ))
        written.append(_plot_rgb(grid, maps, labels, out / "rgb_composite.png"))
        del maps

    if "residual_rmse" in result:
        residual = result["residual_rmse"]
        if residual.ndim != 2:
            raise InputError(f"residual_rmse must be 2-D (y, x); got dims {residual.dims}")
        grid = _Grid(residual, residual.dims)
        image = grid.read(residual)
        finite = image[np.isfinite(image)]
        vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
        written.append(_map_figure(
            grid, image, title="residual RMSE per pixel", cmap="magma", vmin=0.0,
            vmax=vmax if vmax > 0 else 1.0, label="RMSE (reflectance)",
            path=out / "residual_rmse.png",
        ))

    if loss_history is None:
        loss_history = result.attrs.get("loss_history")
    if loss_history is not None and len(loss_history) > 0:
        written.append(_plot_loss(loss_history, out / "loss.png"))
    return written
