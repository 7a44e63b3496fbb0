"""dnmf.hyperspectral.plots: the PNGs exist, are real images, and maps are decimated."""

from __future__ import annotations

import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from matplotlib import image as mpimg
from matplotlib.colors import to_rgb

from dnmf.errors import InputError
from dnmf.hyperspectral import plots
from dnmf.hyperspectral.plots import MAX_SIDE, NODATA_COLOR, write_plots


def _result(k: int = 4, ny: int = 40, nx: int = 50, bands: int = 30, *, lazy: bool = False):
    """A hand-made unmix result: NaN at bands 10-12 and in a no-data corner."""
    rng = np.random.default_rng(0)
    wavelength = np.linspace(400.0, 2400.0, bands)
    endmembers = rng.random((k, bands)) * 0.5
    endmembers[:, 10:13] = np.nan
    yy, xx = np.mgrid[0:ny, 0:nx]
    logits = np.stack([np.sin(yy / (3 + j)) + np.cos(xx / (4 + j)) for j in range(k)])
    abundances = np.exp(2 * logits) / np.exp(2 * logits).sum(axis=0)
    nodata = (yy / ny + xx / nx) < 0.25
    abundances[:, nodata] = np.nan
    residual = 0.01 + 0.005 * rng.random((ny, nx))
    residual[nodata] = np.nan
    if lazy:
        abundances = da.from_array(abundances, chunks=(k, ny // 2 or 1, nx // 2 or 1))
        residual = da.from_array(residual, chunks=(ny // 2 or 1, nx // 2 or 1))
    return xr.Dataset(
        {
            "endmembers": (("endmember", "band"), endmembers),
            "abundances": (("endmember", "y", "x"), abundances),
            "residual_rmse": (("y", "x"), residual),
        },
        coords={
            "wavelength": ("band", wavelength, {"units": "nm"}),
            "y": ("y", 4_000_000.0 - 30.0 * np.arange(ny), {"units": "m"}),
            "x": ("x", 300_000.0 + 30.0 * np.arange(nx), {"units": "m"}),
            "endmember_name": ("endmember", [f"em{j}" for j in range(k)]),
        },
        attrs={"loss_history": [10.0, 5.0, 3.0, 2.5, 2.4]},
    )


def _check_png(path) -> np.ndarray:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    rgb = img[..., :3]
    assert rgb.reshape(-1, 3).var(axis=0).sum() > 1e-3  # not a single colour
    return rgb


def _has_colour(rgb: np.ndarray, colour: str) -> bool:
    return bool((np.abs(rgb - np.asarray(to_rgb(colour))).max(axis=-1) < 2 / 255).any())


def test_write_plots_writes_every_figure(tmp_path):
    paths = write_plots(_result(k=3), tmp_path / "figs", loss_history=[4.0, 2.0, 1.0])
    names = [p.name for p in paths]
    assert names == ["endmembers.png", "abundance_0.png", "abundance_1.png", "abundance_2.png",
                     "abundances.png", "rgb_composite.png", "residual_rmse.png", "loss.png"]
    images = {p.name: _check_png(p) for p in paths}
    # no-data pixels are drawn in their own colour on every map
    for name in ("abundance_0.png", "rgb_composite.png", "residual_rmse.png"):
        assert _has_colour(images[name], NODATA_COLOR), name


def test_lazy_result_and_loss_from_attrs(tmp_path):
    paths = write_plots(_result(k=2, lazy=True).drop_vars("endmembers"), tmp_path)
    names = [p.name for p in paths]
    assert names == ["abundance_0.png", "abundance_1.png", "abundances.png",
                     "rgb_composite.png", "residual_rmse.png", "loss.png"]
    for p in paths:
        _check_png(p)


def test_no_loss_history_no_loss_plot(tmp_path):
    result = _result(k=3)[["endmembers"]]
    result.attrs = {}
    assert [p.name for p in write_plots(result, tmp_path)] == ["endmembers.png"]


def test_partial_results(tmp_path):
    only_endmembers = _result()[["endmembers"]]
    assert [p.name for p in write_plots(only_endmembers, tmp_path / "a")] == [
        "endmembers.png", "loss.png"]
    no_coords = _result(k=1).drop_vars(["endmembers", "x", "y", "wavelength", "endmember_name"])
    no_coords.attrs = {}
    paths = write_plots(no_coords, tmp_path / "b")
    assert [p.name for p in paths] == ["abundance_0.png", "abundances.png",
                                       "rgb_composite.png", "residual_rmse.png"]
    for p in paths:
        _check_png(p)
    with pytest.raises(InputError, match="nothing to plot"):
        write_plots(xr.Dataset({"foo": ("a", [1.0])}), tmp_path / "c")


def test_large_maps_are_decimated(tmp_path):
    ny, nx = 2050, 60
    assert plots._stride(ny, nx) == 3 and plots._stride(MAX_SIDE, 10) == 1
    residual = da.random.default_rng(1).random((ny, nx), chunks=(500, nx))
    result = xr.Dataset({"residual_rmse": (("y", "x"), residual)})
    grid = plots._Grid(result["residual_rmse"], ("y", "x"))
    assert grid.read(result["residual_rmse"]).shape == (684, 20)
    (path,) = write_plots(result, tmp_path)
    _check_png(path)


def test_importing_plots_does_not_import_matplotlib():
    code = ("import sys, dnmf.hyperspectral.plots, dnmf.hyperspectral.metrics;"
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_write_plots_leaves_pyplot_alone(tmp_path):
    before = sys.modules.get("matplotlib.pyplot")
    write_plots(_result(k=1)[["endmembers"]], tmp_path)
    assert sys.modules.get("matplotlib.pyplot") is before


def _text_outside(fig) -> list[str]:
    """What of a drawn figure leaves the canvas: each axes' rendered extent (its drawn tick
    labels, axis labels and title) and each figure-level text, in pixels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.canvas.get_width_height()
    boxes = [(f"axes {ax.get_label() or i}", ax.get_tightbbox(renderer))
             for i, ax in enumerate(fig.axes) if ax.get_visible()]
    boxes += [(repr(t.get_text()), t.get_window_extent(renderer)) for t in fig.texts
              if t.get_visible() and t.get_text().strip()]
    return [f"{name} at {box.bounds}" for name, box in boxes
            if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5]


@pytest.mark.parametrize("history", [
    [10.0, 5.0, 3.0, 2.5, 2.4],                       # a few points, log scale
    list(np.geomspace(3.7e7, 1.2e-3, 400)),            # ten decades: long tick labels
    list(np.linspace(-2.5e6, 1.0e6, 50)),              # negative values: linear scale
])
def test_loss_figure_keeps_every_label_inside(history):
    fig = plots.loss_figure(history)
    assert _text_outside(fig) == []
    ax = fig.axes[0]
    assert ax.get_ylabel() == "loss" and ax.get_xlabel() == "iteration"


_UTM_WKT = ('PROJCS["WGS 84 / UTM zone 11N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID['
            '"WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],'
            'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]],'
            'PROJECTION["Transverse_Mercator"],UNIT["metre",1],AUTHORITY["EPSG","32611"]]')


@pytest.mark.parametrize(("where", "expected"), [
    ("spatial_ref", "WGS 84 / UTM zone 11N (EPSG:32611)"),
    ("attr", "WGS 84 / UTM zone 11N (EPSG:32611)"),
    ("epsg", "EPSG:4326"),
    ("none", None),
])
def test_crs_name(where, expected):
    result = _result(k=2)
    if where == "spatial_ref":
        result = result.assign_coords(spatial_ref=((), 0, {"crs_wkt": _UTM_WKT}))
    elif where == "attr":
        result.attrs["crs_wkt"] = _UTM_WKT
    elif where == "epsg":
        result.attrs["crs"] = "epsg:4326"
    assert plots.crs_name(result) == expected


def test_maps_name_their_crs_on_the_axes():
    result = _result(k=2).assign_coords(spatial_ref=((), 0, {"crs_wkt": _UTM_WKT}))
    grid = plots._Grid(result["residual_rmse"], ("y", "x"), plots.crs_name(result))
    assert grid.xlabel == "x (m), WGS 84 / UTM zone 11N (EPSG:32611)"
    assert grid.ylabel == "y (m), WGS 84 / UTM zone 11N (EPSG:32611)"
    maps = grid.read(result["abundances"])
    fig = plots._plot_facets(grid, maps, ["em0", "em1"])
    assert fig.get_supxlabel() == grid.xlabel and fig.get_supylabel() == grid.ylabel
    assert _text_outside(fig) == []


def test_facets_show_every_map_with_its_label():
    result = _result(k=5)
    grid = plots._Grid(result["abundances"], ("y", "x"))
    maps = grid.read(result["abundances"])
    labels = ["em0", "em1", "em2", "em1", "em4"]  # two endmembers may match one library name
    fig = plots._plot_facets(grid, maps, labels)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 5
    for j, image in enumerate(images):
        np.testing.assert_array_equal(np.ma.filled(image.get_array(), np.nan), maps[j])
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles == labels
    assert _text_outside(fig) == []
    import matplotlib.pyplot as plt
    assert fig.number not in plt.get_fignums()  # closed in pyplot: no figure leaks
