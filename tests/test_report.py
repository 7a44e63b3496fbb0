"""dnmf.report: self-contained HTML reports of an unmixing, a fit and a rank survey, built from
lazy stores without a full-resolution map in memory, and loaded in a real headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import tempfile
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback
from matplotlib import image as mpimg

from dnmf.datasets import make_scene
from dnmf.hyperspectral.plots import MAX_SIDE
from dnmf.report import unmixing_report, write_report
from tests.test_cli import run_cli

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"

_UTM_WKT = ('PROJCS["WGS 84 / UTM zone 11N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID['
            '"WGS 84",6378137,298.257223563]],AUTHORITY["EPSG","4326"]],'
            'PROJECTION["Transverse_Mercator"],UNIT["metre",1],AUTHORITY["EPSG","32611"]]')


def _result(k: int = 3, ny: int = 30, nx: int = 40, bands: int = 25, *, named: bool,
            chunks: tuple[int, int] | None = None) -> xr.Dataset:
    """A hand-made unmixing result in ``dnmf unmix``'s layout, optionally with names, match
    angles and a CRS (what the spectral-library and CRS work add)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:ny, 0:nx]
    logits = np.stack([np.sin(yy / (5 + 3 * j)) + np.cos(xx / (4 + j)) for j in range(k)])
    abundances = (np.exp(logits) / np.exp(logits).sum(axis=0)).astype(np.float32)
    residual = (0.01 + 0.002 * rng.random((ny, nx))).astype(np.float32)
    if chunks is not None:
        abundances = da.from_array(abundances, chunks=(k, *chunks))
        residual = da.from_array(residual, chunks=chunks)
    ds = xr.Dataset(
        {"endmembers": (("endmember", "band"), rng.random((k, bands)).astype(np.float32)),
         "abundances": (("endmember", "y", "x"), abundances),
         "residual_rmse": (("y", "x"), residual)},
        coords={"wavelength": ("band", np.linspace(400.0, 2400.0, bands), {"units": "nm"}),
                "y": ("y", 4_000_000.0 - 30.0 * np.arange(ny), {"units": "m"}),
                "x": ("x", 300_000.0 + 30.0 * np.arange(nx), {"units": "m"}),
                "endmember": np.arange(k)},
        attrs={"loss_history": [9.0, 4.0, 3.5, 3.4], "n_endmembers": k,
               "relative_error": 0.0123, "n_iter": 4, "converged": True, "solver": "hals",
               "input": {"source": "cube.zarr", "format": "zarr", "shape": [ny, nx, bands]},
               "endmember_estimate": {"criterion": "hysime", "n_endmembers": k,
                                      "evidence": f"HySime signal subspace: {k} endmember(s)",
                                      "signal_power": list(np.geomspace(10, 1e-4, bands)),
                                      "noise_power": [1e-3] * bands}},
    )
    if named:
        ds = ds.assign_coords(
            endmember_name=("endmember", [f"library spectrum {j}" for j in range(k)]),
            match_angle=("endmember", [1.25 + j for j in range(k)], {"units": "deg"}),
            spatial_ref=((), 0, {"crs_wkt": _UTM_WKT}))
    return ds


_EXTERNAL = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?\s*|url\(\s*["']?\s*)https?://""",
                       re.IGNORECASE)


def _assert_self_contained(text: str) -> list[bytes]:
    """No http(s) resource anywhere (src, href, url()); every image an inline PNG that
    decodes to a real picture. Returns the PNGs."""
    assert _EXTERNAL.search(text) is None, _EXTERNAL.search(text)
    assert "<script" not in text.lower()
    sources = re.findall(r"""<img\b[^>]*\bsrc="([^"]*)\"""", text)
    assert sources, "no image"
    pngs = []
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        picture = mpimg.imread(io.BytesIO(png))
        assert picture.shape[0] > 100 and picture.shape[1] > 100
        assert picture[..., :3].reshape(-1, 3).var(axis=0).sum() > 1e-3  # not blank
        pngs.append(png)
    return pngs


def test_unmixing_report_shows_names_angles_crs_and_every_section():
    text = unmixing_report(_result(named=True))
    pngs = _assert_self_contained(text)
    # spectra, facets, RGB composite, residual, HySime, loss
    assert len(pngs) == 6
    assert text.count('class="map"') == 3 and text.count('class="spectrum"') == 1
    for j in range(3):
        assert f"library spectrum {j}" in text and f"<td class=\"num\">{1.25 + j:g}</td>" in text
    assert "match angle (deg)" in text
    assert "WGS 84 / UTM zone 11N (EPSG:32611)" in text
    for heading in ("Summary", "Endmembers", "Abundance maps", "Residual",
                    "Number of endmembers", "Convergence", "Input", "Parameters"):
        assert f"<h2>{heading}</h2>" in text
    assert "cube.zarr" in text and "0.0123" in text and "hals" in text


def test_unmixing_report_without_library_uses_indices():
    result = _result(named=False)
    result.attrs.pop("endmember_estimate")
    text = unmixing_report(result)
    _assert_self_contained(text)
    assert "endmember 2" in text and "match angle" not in text
    assert "No spectral library was matched" in text
    assert "Given by the user" in text and "Coordinate reference system" not in text


def test_report_text_is_escaped():
    result = _result(named=True)
    result = result.assign_coords(endmember_name=("endmember", ["<b>x</b>", "a&b", "c"]))
    text = unmixing_report(result)
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "a&amp;b" in text and "<b>x</b>" not in text


class _LargestResult(Callback):
    """The largest array any task of a dask computation returned, in bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        self.largest = max(self.largest, int(getattr(result, "nbytes", 0)))


def test_report_of_a_lazy_store_never_holds_a_full_map(tmp_path):
    """Maps taller than MAX_SIDE are read decimated, chunk by chunk: no task returns, and no
    step holds, as much as one full-resolution map."""
    ny, nx, k = 2 * MAX_SIDE + 100, 240, 3
    _result(k=k, ny=ny, nx=nx, named=False, chunks=(300, 240)).to_zarr(
        tmp_path / "r.zarr", mode="w", consolidated=False)
    lazy = xr.open_zarr(tmp_path / "r.zarr", consolidated=False)
    full_map = ny * nx * 4  # one float32 map
    with _LargestResult() as largest, dask.config.set(scheduler="threads"):
        text = unmixing_report(lazy)
    _assert_self_contained(text)
    assert 0 < largest.largest <= k * 300 * 240 * 4 < full_map


# ---------------------------------------------------------------------------------------------
# The CLI's --report, and the reports in a real browser
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_reports(tmp_path_factory) -> dict[str, Path]:
    """``--report`` from ``dnmf unmix``, ``dnmf fit`` and ``dnmf rank``, as users run them."""
    tmp = tmp_path_factory.mktemp("reports")
    make_scene(60, 50, n_endmembers=3, snr_db=30.0, seed=2, chunks=(30, 25)).to_zarr(
        tmp / "scene.zarr", mode="w", consolidated=False)
    X = np.random.default_rng(0).random((200, 30)).astype(np.float32)
    np.save(tmp / "x.npy", X)
    commands = {
        "unmix": ("unmix", str(tmp / "scene.zarr"), "--var", "reflectance", "-k", "auto",
                  "-o", str(tmp / "u.zarr")),
        "fit": ("fit", str(tmp / "x.npy"), "-k", "3", "-o", str(tmp / "f.zarr"),
                "--restarts", "2"),
        "rank": ("rank", str(tmp / "x.npy"), "--ks", "2:3", "--runs", "2", "--max-iter",
                 "30"),
    }
    reports = {}
    for name, command in commands.items():
        reports[name] = tmp / f"{name}.html"
        proc = run_cli(*command, "--report", str(reports[name]), "--scheduler", "threads",
                       "--quiet")
        assert proc.returncode == 0, proc.stderr
        assert reports[name].is_file()
    return reports


@pytest.mark.parametrize("kind", ["unmix", "fit", "rank"])
def test_cli_report_is_self_contained(cli_reports, kind):
    text = cli_reports[kind].read_text(encoding="utf-8")
    pngs = _assert_self_contained(text)
    assert len(pngs) >= {"unmix": 6, "fit": 3, "rank": 1}[kind]
    expected = {"unmix": "HySime signal subspace", "fit": "Restarts",
                "rank": "recommended k"}[kind]
    assert expected in text


def test_cli_report_refused_before_any_work(cli_reports, tmp_path):
    existing = cli_reports["fit"]
    scene = existing.parent / "scene.zarr"
    before = existing.read_bytes()
    proc = run_cli("unmix", str(scene), "--var", "reflectance", "-k", "2", "-o",
                   str(tmp_path / "o.zarr"), "--report", str(existing))
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
    assert "already exists" in proc.stderr and "Traceback" not in proc.stderr
    assert existing.read_bytes() == before and not (tmp_path / "o.zarr").exists()
    inside = scene / "report.html"
    proc = run_cli("unmix", str(scene), "--var", "reflectance", "-k", "2", "-o",
                   str(tmp_path / "o.zarr"), "--report", str(inside))
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "input" in proc.stderr
    assert not inside.exists() and not (tmp_path / "o.zarr").exists()


def test_write_report_is_atomic_and_leaves_no_temporary(tmp_path):
    path = write_report("<!DOCTYPE html><p>x</p>", tmp_path / "sub" / "r.html")
    assert path.read_text() == "<!DOCTYPE html><p>x</p>"
    assert [p.name for p in path.parent.iterdir()] == ["r.html"]


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, package in ((CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")):
        if not Path(path).exists():
            return f"{path} is missing (apt-get install chromium chromium-driver: {package})"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="dnmf-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the Debian driver, given explicitly: selenium's manager downloads nothing
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.parametrize("kind", ["unmix", "fit", "rank"])
def test_report_loads_in_headless_chromium(browser, cli_reports, kind, tmp_path):
    browser.get_log("browser")  # start from an empty console
    browser.get(cli_reports[kind].absolute().as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.className, i.alt, i.complete, "
        "i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width]);")
    assert images
    for role, alt, complete, width, height, shown in images:
        assert complete and width > 100 and height > 100 and shown > 100, (role, alt)
    roles = {image[0] for image in images}
    assert {"unmix": {"map", "spectrum", "plot"}, "fit": {"map", "spectrum", "plot"},
            "rank": {"plot"}}[kind] <= roles
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    shot = tmp_path / f"{kind}.png"
    assert browser.save_screenshot(str(shot))
    assert mpimg.imread(shot).shape[1] >= 1000
