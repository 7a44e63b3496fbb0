"""One self-contained HTML report of an unmixing, a fit or a rank survey.

Each report is a pure function from a result (an unmixing Dataset, a result store, a
:class:`~dnmf.rank.RankReport`) to one HTML string: styles inline, every figure a PNG inlined
as a ``data:`` URI, no script, nothing fetched from the network. :func:`write_report` writes it
atomically.

Why static PNGs drawn by matplotlib: the figures are the ones ``--plots`` already writes (one
drawing code, tested), a PNG of a map is a few tens of kB whatever the map's size, and a page
with no JavaScript opens the same in any browser, e-mail client or archive, offline, with
nothing to execute or to fail. An interactive library would inline about 1-4 MB of JavaScript
into every file (Bokeh, Plotly) for zoom and hover the downsampled maps do not need.

Memory: maps are read decimated to at most :data:`dnmf.hyperspectral.plots.MAX_SIDE` pixels a
side, tile by tile from the lazy store (:func:`dnmf.hyperspectral.plots.render_plots`); no
full-resolution map is ever held.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dnmf._version import __version__
from dnmf.errors import OutputError

__all__ = ["check_report_path", "fit_report", "rank_report", "unmixing_report", "write_report"]

#: Rows of W drawn in a fit report's W figure (read with a stride, chunk by chunk).
W_ROWS_SHOWN = 400

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1b1b1b; background: #fafafa; }
header { background: #21415e; color: white; padding: 1.2rem 2rem; }
header h1 { margin: 0 0 .3rem 0; font-size: 1.5rem; }
header p { margin: 0; opacity: .85; font-size: .9rem; }
main { max-width: 1200px; margin: 0 auto; padding: 1rem 2rem 3rem; }
section { background: white; border: 1px solid #e2e2e2; border-radius: 6px;
          padding: .8rem 1.2rem; margin: 1rem 0; }
h2 { font-size: 1.15rem; margin: .2rem 0 .8rem; color: #21415e; }
table { border-collapse: collapse; font-size: .9rem; margin: .4rem 0; }
th, td { text-align: left; padding: .25rem .8rem .25rem 0; border-bottom: 1px solid #eee;
         vertical-align: top; }
th { font-weight: 600; color: #444; }
td.num { font-variant-numeric: tabular-nums; text-align: right; }
img { max-width: 100%; height: auto; display: block; margin: .4rem 0; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
.figures img { max-width: 48%; }
.metrics { display: flex; flex-wrap: wrap; gap: .6rem; }
.metric { background: #eef3f8; border-radius: 4px; padding: .4rem .8rem; min-width: 9rem; }
.metric b { display: block; font-size: 1.15rem; }
.metric span { font-size: .8rem; color: #555; }
.warning { background: #fff4d6; border-left: 4px solid #e0a100; padding: .4rem .8rem; }
pre { background: #f4f4f4; padding: .6rem; overflow-x: auto; font-size: .82rem; }
code { font-size: .85rem; }
"""


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def check_report_path(path: str | os.PathLike, inputs: Mapping[str, Any], *,
                      overwrite: bool = False) -> None:
    """Refuse, before any work, a report path that is remote, an input (or inside one), or
    exists without ``overwrite``.

    Raises
    ------
    OutputError
    """
    from dnmf.io.overlap import check_outputs_are_not_inputs
    from dnmf.io.result_store import check_output, local_path

    if local_path(path) is None:
        raise OutputError(f"the report {os.fspath(path)} must be a local file — give a path "
                          "such as report.html")
    check_outputs_are_not_inputs({"report": path}, inputs)
    check_output(path, overwrite=overwrite)
    if Path(path).is_dir():
        raise OutputError(f"the report {os.fspath(path)} is a directory — give a file name "
                          "such as report.html")


def write_report(text: str, path: str | os.PathLike) -> Path:
    """Write the HTML atomically (a temporary file beside it, renamed into place)."""
    target = Path(path).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as handle:  # the umask's permissions
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Path(path)


# ---------------------------------------------------------------------------------------------
# HTML pieces
# ---------------------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str, role: str) -> str:
    """An inline PNG; ``role`` (map, spectrum, plot) is its class, for tests and styles."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{role}" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _format(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        value = float(value)
        if not math.isfinite(value):
            return "—"
        return f"{value:.6g}"
    if isinstance(value, dict | list | tuple):
        text = json.dumps(value, default=str)
        return text if len(text) <= 160 else text[:157] + "…"
    return str(value)


def _table(rows: Iterable[tuple[Any, Any]]) -> str:
    body = "".join(f"<tr><th>{_esc(key)}</th><td>{_esc(_format(value))}</td></tr>"
                   for key, value in rows)
    return f"<table>{body}</table>"


def _grid_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{_esc(_format(v))}</td>' if isinstance(v, int | float | np.number)
            and not isinstance(v, bool) else f"<td>{_esc(_format(v))}</td>" for v in row)
        + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics(items: Iterable[tuple[str, Any]]) -> str:
    cards = "".join(f'<div class="metric"><b>{_esc(_format(v))}</b><span>{_esc(k)}</span></div>'
                    for k, v in items if v is not None)
    return f'<div class="metrics">{cards}</div>'


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{_esc(title)}</h2>{''.join(parts)}</section>"


def _page(title: str, subtitle: str, sections: Iterable[str]) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_esc(title)}</title>"
        '<link rel="icon" href="data:,">'  # no favicon request
        f"<style>{_STYLE}</style></head><body>"
        f"<header><h1>{_esc(title)}</h1><p>{_esc(subtitle)} · dnmf {_esc(__version__)} · "
        f"{_esc(now)}</p></header><main>{''.join(sections)}</main></body></html>\n"
    )


def _parameters(attrs: Mapping[str, Any], skip: Iterable[str]) -> str:
    """Every scalar or short attribute not shown elsewhere, sorted by name."""
    skipped = set(skip)
    rows = [(key, value) for key, value in sorted(attrs.items()) if key not in skipped]
    return _table(rows)


def _input_rows(described: Any) -> list[tuple[str, Any]]:
    if not isinstance(described, Mapping):
        return [("input", described)]
    return [(key, value) for key, value in described.items() if value not in ("", None)]


# ---------------------------------------------------------------------------------------------
# Unmixing
# ---------------------------------------------------------------------------------------------


def _per_endmember(result: Any, name: str, k: int) -> list[Any] | None:
    """An ``endmember``-dim coordinate or variable, else a list attribute of length k."""
    if name in result.variables and result[name].dims == ("endmember",):
        return [v.item() if hasattr(v, "item") else v for v in np.asarray(result[name].values)]
    value = result.attrs.get(name)
    if isinstance(value, list | tuple | np.ndarray) and len(value) == k:
        return list(value)
    return None


def _endmember_table(result: Any) -> str:
    k = int(result.sizes.get("endmember", 0))
    names = _per_endmember(result, "endmember_name", k)
    angles = _per_endmember(result, "match_angle", k)
    header = ["endmember", "name"]
    if angles is not None:
        units = result["match_angle"].attrs.get("units", "") if "match_angle" in \
            result.variables else result.attrs.get("match_angle_units", "")
        header.append(f"match angle ({units})" if units else "match angle")
    rows = []
    for i in range(k):
        row = [i, names[i] if names is not None else f"endmember {i}"]
        if angles is not None:
            row.append(angles[i])
        rows.append(row)
    note = "" if names is not None else (
        "<p>No spectral library was matched: endmembers are named by their index.</p>")
    return _grid_table(header, rows) + note


def _figure(width: float, height: float):
    """A figure on matplotlib's Agg canvas (no pyplot), laid out by constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _hysime_figure(estimate: Mapping[str, Any]) -> bytes | None:
    signal = estimate.get("signal_power")
    noise = estimate.get("noise_power")
    if signal is None or noise is None:
        return None
    from dnmf.hyperspectral.plots import png_bytes

    signal = np.asarray(signal, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    shown = min(len(signal), max(2 * int(estimate.get("n_endmembers", 1)) + 5, 15))
    directions = np.arange(1, shown + 1)
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    ax.semilogy(directions, np.abs(signal[:shown]), "o-", label="signal power")
    ax.semilogy(directions, 2 * np.abs(noise[:shown]), "s--", label="2 × noise power")
    k = int(estimate.get("n_endmembers", 0))
    ax.axvline(k + 0.5, color="C3", ls=":", label=f"kept: k = {k}")
    ax.set_xlabel("eigen-direction (decreasing signal eigenvalue)")
    ax.set_ylabel("power")
    ax.set_title("HySime: a direction is kept while signal > 2 × noise")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return png_bytes(fig)


def unmixing_report(result: Any, *, loss_history: Sequence[float] | None = None,
                    title: str = "dnmf unmixing report") -> str:
    """The HTML report of an unmixing result.

    Parameters
    ----------
    result : xarray.Dataset
        ``dnmf unmix``'s output (in memory or opened lazily from its Zarr store):
        ``endmembers``, ``abundances``, ``residual_rmse`` and the run's attrs. Names and match
        angles are shown when the result has ``endmember_name`` / ``match_angle`` (coordinates,
        variables or attrs), indices otherwise; the CRS when a ``spatial_ref`` coordinate or a
        ``crs_wkt`` attribute names one.
    loss_history : sequence of float, optional
        Defaults to ``result.attrs["loss_history"]``.
    title : str

    Returns
    -------
    str
        One self-contained HTML document: the metrics, the endmember spectra with their names
        and match angles, all abundance maps (one faceted figure) and an RGB composite, the
        residual map, the evidence for the number of endmembers (HySime's curves when k was
        estimated), the loss curve, the input and every parameter. Maps are read decimated,
        tile by tile.
    """
    from dnmf.hyperspectral.plots import crs_name, render_plots

    attrs = dict(result.attrs)
    pngs = render_plots(result, loss_history=loss_history)
    described = attrs.get("input") or {}
    source = described.get("source") if isinstance(described, Mapping) else None
    bands_used = attrs.get("bands_used")
    n_bands = attrs.get("n_bands")
    sections = [_section("Summary", _metrics([
        ("endmembers", attrs.get("n_endmembers", result.sizes.get("endmember"))),
        ("relative error ‖X−AM‖/‖X‖", attrs.get("relative_error")),
        ("iterations", attrs.get("n_iter")),
        ("converged", attrs.get("converged")),
        ("wall time (s)", round(float(attrs["wall_time_s"]), 1)
         if attrs.get("wall_time_s") is not None else None),
        ("valid pixels", attrs.get("n_pixels_valid")),
        ("no-data pixels", attrs.get("n_pixels_nodata")),
        ("bands used", f"{len(bands_used)} of {n_bands}"
         if bands_used is not None and n_bands is not None else None),
    ]))]
    parts = [_endmember_table(result)] if "endmember" in result.sizes else []
    if "endmembers.png" in pngs:
        parts.append(_img(pngs["endmembers.png"], "endmember spectra", "spectrum"))
    if parts:
        sections.append(_section("Endmembers", *parts))
    maps = [_img(pngs[name], alt, "map") for name, alt in (
        ("abundances.png", "all abundance maps"), ("rgb_composite.png", "abundance composite"))
        if name in pngs]
    if maps:
        crs = crs_name(result)
        sections.append(_section(
            "Abundance maps", f"<p>Coordinate reference system: {_esc(crs)}</p>" if crs else "",
            *maps))
    if "residual_rmse.png" in pngs:
        sections.append(_section("Residual", _img(pngs["residual_rmse.png"],
                                                  "residual RMSE per pixel", "map")))
    estimate = attrs.get("endmember_estimate")
    if isinstance(estimate, Mapping):
        figure = _hysime_figure(estimate)
        sections.append(_section(
            "Number of endmembers", f"<p>{_esc(estimate.get('evidence', ''))}</p>",
            _img(figure, "HySime signal and noise power", "plot") if figure else ""))
    else:
        sections.append(_section("Number of endmembers", "<p>Given by the user (-k).</p>"))
    if "loss.png" in pngs:
        sections.append(_section("Convergence", _img(pngs["loss.png"], "loss history", "plot")))
    sections.append(_section("Input", _table(_input_rows(described))))
    sections.append(_section("Parameters", _parameters(attrs, skip=(
        "loss_history", "bands_used", "input", "endmember_estimate", "endmember_name",
        "match_angle"))))
    return _page(title, f"{source}" if source else "unmixing", sections)


# ---------------------------------------------------------------------------------------------
# Fit
# ---------------------------------------------------------------------------------------------


def _components_figure(H: np.ndarray) -> bytes:
    from dnmf.hyperspectral.plots import png_bytes

    k, n = H.shape
    fig = _figure(9.0, 4.2)
    ax = fig.add_subplot()
    if n <= 2000:
        for j in range(k):
            ax.plot(np.arange(n), H[j], linewidth=1.2, label=f"component {j}")
        ax.set_xlabel("feature")
        ax.set_ylabel("H (loading)")
        if k <= 12:
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:  # many features: one row per component, colour = loading
        image = ax.imshow(H, aspect="auto", interpolation="nearest", cmap="viridis")
        fig.colorbar(image, ax=ax, label="H (loading)")
        ax.set_xlabel("feature")
        ax.set_ylabel("component")
    ax.set_title(f"components H ({k} × {n})")
    return png_bytes(fig)


def _w_figure(W: Any) -> tuple[bytes, int]:
    """A heatmap of W's rows read with a stride (chunk by chunk): at most W_ROWS_SHOWN."""
    from dnmf.hyperspectral.plots import png_bytes

    n, k = W.shape
    stride = max(1, math.ceil(n / W_ROWS_SHOWN))
    rows = np.asarray(W[::stride], dtype=np.float64)
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    image = ax.imshow(rows, aspect="auto", interpolation="nearest", cmap="viridis",
                      extent=(-0.5, k - 0.5, (len(rows) - 0.5) * stride, -0.5 * stride))
    fig.colorbar(image, ax=ax, label="W")
    ax.set_xlabel("component")
    ax.set_ylabel("sample")
    ax.set_title("W" + (f" (every {stride}th row)" if stride > 1 else ""))
    return png_bytes(fig), stride


def fit_report(path: str | os.PathLike, *, title: str = "dnmf fit report") -> str:
    """The HTML report of a result store written by ``dnmf fit``: metrics, H's components, W
    (rows read with a stride, chunk by chunk), the loss curve, the restarts, the input and
    every parameter."""
    from dnmf.hyperspectral.plots import loss_figure, png_bytes
    from dnmf.io.result_store import open_result

    W, H, attrs = open_result(path)
    H = np.asarray(H, dtype=np.float64)
    described = attrs.get("input") or {}
    sections = [_section("Summary", _metrics([
        ("components k", attrs.get("n_components", H.shape[0])),
        ("relative error ‖X−WH‖/‖X‖", attrs.get("relative_error")),
        ("iterations", attrs.get("n_iter")),
        ("converged", attrs.get("converged")),
        ("stop reason", attrs.get("stop_reason")),
        ("wall time (s)", round(float(attrs["wall_time_s"]), 1)
         if attrs.get("wall_time_s") is not None else None),
        ("solver", attrs.get("solver")),
        ("loss", attrs.get("beta_loss")),
    ]))]
    w_png, _ = _w_figure(W)
    sections.append(_section("Factors", f"<p>X ({W.shape[0]:,} × {H.shape[1]:,}) ≈ W H; "
                             f"result store <code>{_esc(os.fspath(path))}</code></p>",
                             _img(_components_figure(H), "components H", "spectrum"),
                             _img(w_png, "W", "map")))
    history = attrs.get("loss_history") or []
    if history:
        sections.append(_section("Convergence", _img(png_bytes(loss_figure(history)),
                                                     "loss history", "plot")))
    losses = attrs.get("restart_losses")
    if isinstance(losses, list) and len(losses) > 1:
        rows = zip(range(len(losses)), losses, attrs.get("restart_relative_errors") or
                   [None] * len(losses), attrs.get("restart_n_iter") or [None] * len(losses),
                   strict=False)
        sections.append(_section(
            "Restarts", f"<p>Best: run {_esc(attrs.get('best_restart'))}</p>",
            _grid_table(["run", "final loss", "relative error", "iterations"], rows)))
    sections.append(_section("Input", _table(_input_rows(described))))
    sections.append(_section("Parameters", _parameters(attrs, skip=(
        "loss_history", "input", "restart_losses", "restart_relative_errors",
        "restart_n_iter", "restart_seeds", "chunk_plan"))))
    return _page(title, str(described.get("path", "")) if isinstance(described, Mapping)
                 else "fit", sections)


# ---------------------------------------------------------------------------------------------
# Rank survey
# ---------------------------------------------------------------------------------------------


def rank_report(report: Any, *, title: str = "dnmf rank survey") -> str:
    """The HTML report of a rank survey (:class:`dnmf.rank.RankReport`): the recommended k
    and its rule, every criterion's curve against k, the table, warnings and parameters."""
    sections = [_section("Recommendation", _metrics([
        ("recommended k", int(report.recommended_k)),
        ("criterion", report.criterion),
        ("rule", report.rule),
        ("held-out minimum at k", report.heldout_min_k),
        ("elbow of the relative error", int(report.elbow_k)),
        ("runs per k", int(report.n_runs)),
    ]), "".join(f'<p class="warning">warning: {_esc(w)}</p>' for w in report.warnings))]
    with tempfile.TemporaryDirectory(prefix="dnmf-rank-report-") as tmp:
        paths = report.plot(tmp)
        figure = next(p for p in paths if p.name == "rank-criteria.png").read_bytes()
    sections.append(_section("Criteria against k",
                             _img(figure, "rank survey criteria", "plot")))
    se = np.asarray(report.heldout_error_se, dtype=np.float64)
    rows = [[int(k), float(report.relative_error[i]), float(report.relative_error_spread[i]),
             float(report.cophenetic[i]), float(report.dispersion[i]),
             float(report.silhouette[i]), float(report.heldout_error[i]), float(se[i])]
            for i, k in enumerate(report.ks)]
    sections.append(_section("Table", _grid_table(
        ["k", "relative error", "spread", "cophenetic", "dispersion", "silhouette",
         "held-out error", "± SE"], rows)))
    described = report.attrs.get("input") or {}
    sections.append(_section("Input", _table(_input_rows(described))))
    sections.append(_section("Parameters", _table([
        ("heldout_fraction", report.heldout_fraction), ("seed", report.seed),
        ("n_consensus_features", report.n_consensus_features),
        ("wall_time_s", report.wall_time_s),
        *[(k, v) for k, v in sorted(report.attrs.items()) if k != "input"]])))
    return _page(title, str(described.get("path", "")) if isinstance(described, Mapping)
                 else "rank survey", sections)
