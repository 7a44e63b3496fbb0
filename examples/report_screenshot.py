"""Make ``examples/report.png``: a demo unmixing report, as headless Chromium shows it.

A generated 120 x 160 scene of 5 measured spectra (30 dB, a UTM CRS), ``dnmf unmix -k auto
--report``, then a screenshot of the report's first screens, reduced to 256 colours. Needs the
test extras (selenium) and Debian's ``chromium`` and ``chromium-driver``.

    python examples/report_screenshot.py [OUT.png]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import xarray as xr
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from dnmf.datasets import make_scene

UTM_11N = ('PROJCS["WGS 84 / UTM zone 11N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",'
           '6378137,298.257223563]],AUTHORITY["EPSG","4326"]],PROJECTION["Transverse_Mercator"],'
           'UNIT["metre",1],AUTHORITY["EPSG","32611"]]')


def main(out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="dnmf-report-demo-"))
    scene = make_scene(120, 160, n_endmembers=5, snr_db=30.0, seed=4, chunks=(60, 80))
    scene = scene.assign_coords(spatial_ref=xr.DataArray(0, attrs={"crs_wkt": UTM_11N}))
    scene.to_zarr(work / "scene.zarr", mode="w", consolidated=False)
    report = work / "report.html"
    subprocess.run(["dnmf", "unmix", str(work / "scene.zarr"), "--var", "reflectance", "-k",
                    "auto", "-o", str(work / "unmix.zarr"), "--report", str(report),
                    "--scheduler", "threads", "--quiet"], check=True)
    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", f"--user-data-dir={work / 'profile'}",
                 "--window-size=1200,1800", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(report.as_uri())
        driver.save_screenshot(str(work / "shot.png"))
    finally:
        driver.quit()
    image = Image.open(work / "shot.png").convert("RGB")
    image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        out, optimize=True)
    print(f"{out}: {out.stat().st_size / 1e3:.0f} kB (report: {report})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("report.png"))
