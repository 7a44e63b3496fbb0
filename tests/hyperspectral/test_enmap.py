"""EnMAP L2A: the SPECTRAL_IMAGE GeoTIFF described by its METADATA.XML (wavelengths, FWHM,
gains and offsets, bands without data), built here with the product's names."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from dnmf.datasets import make_scene
from dnmf.errors import InputError
from dnmf.hyperspectral.cube import open_cube
from dnmf.hyperspectral.metrics import match_endmembers
from dnmf.hyperspectral.unmix import unmix

pytest.importorskip("rioxarray")
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # rioxarray

NAME = "ENMAP01-____L2A-DT0000001867_20220724T104526Z_008_V010302_20230628T165614Z"
NODATA = -32768
EMPTY = [40, 41]  # bands the sensor did not record: no-data everywhere
GAIN = 1e-4


def metadata_xml(wavelength, fwhm, empty) -> str:
    chars = "".join(
        f'<bandID number="{i + 1}"><wavelengthCenterOfBand>{w:.3f}</wavelengthCenterOfBand>'
        f"<FWHMOfBand>{f:.3f}</FWHMOfBand><GainOfBand>{GAIN}</GainOfBand>"
        f"<OffsetOfBand>0</OffsetOfBand></bandID>"
        for i, (w, f) in enumerate(zip(wavelength, fwhm, strict=True)))
    stats = "".join(
        f'<bandID number="{i + 1}"><mean>{-1000000 if i in empty else 1200.5}</mean>'
        f"<stdDeviation>{0 if i in empty else 310.2}</stdDeviation></bandID>"
        for i in range(len(wavelength)))
    return (f"<?xml version='1.0' encoding='UTF-8'?><level_X><specific><bandCharacterisation>"
            f"{chars}</bandCharacterisation></specific><product><bandStatistics>{stats}"
            f"</bandStatistics></product></level_X>")


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    scene = make_scene(rows=32, cols=36, n_endmembers=3, chunks=16, seed=6)
    d = tmp_path_factory.mktemp("enmap") / NAME
    d.mkdir()
    values = scene.reflectance.values
    stored = np.where(np.isnan(values), NODATA, np.round(values / GAIN)).astype(np.int16)
    stored[..., EMPTY] = NODATA
    image = xr.DataArray(np.moveaxis(stored, 2, 0), dims=("band", "y", "x"),
                         coords={"y": scene.y.values, "x": scene.x.values})
    image = image.rio.write_crs("EPSG:32633").rio.write_nodata(NODATA)
    image.rio.to_raster(d / f"{NAME}-SPECTRAL_IMAGE.TIF", tiled=True, blockxsize=16,
                        blockysize=16)
    wl = scene.wavelength.values
    (d / f"{NAME}-METADATA.XML").write_text(metadata_xml(wl, np.full(wl.size, 7.5), EMPTY))
    return d, scene


@pytest.mark.parametrize("given", ["image", "metadata"])
def test_enmap_cube_takes_its_bands_from_the_metadata(product, given):
    d, scene = product
    suffix = "-SPECTRAL_IMAGE.TIF" if given == "image" else "-METADATA.XML"
    cube = open_cube(d / f"{NAME}{suffix}")
    assert cube.attrs["source_format"] == "enmap"
    np.testing.assert_allclose(cube.wavelength.values, scene.wavelength.values, atol=5e-4)
    assert np.flatnonzero(cube.bbl.values == 0).tolist() == EMPTY
    values = cube.isel(band=5).values
    expected = scene.reflectance.isel(band=5).values
    np.testing.assert_allclose(values, expected, atol=GAIN / 2 + 1e-7)  # gain applied


def test_enmap_unmixes_to_the_truth_with_no_option(product):
    d, scene = product
    result = unmix(str(d / f"{NAME}-METADATA.XML"), 3, max_iter=150, tol=0.0,
                   scheduler="threads")
    assert result.attrs["bad_bands_rule"] == "bbl"
    assert np.isnan(result["endmembers"].values[:, EMPTY]).all()
    matching = match_endmembers(result["endmembers"].values, scene.endmembers_true.values)
    assert matching.angles_deg.max() < 1.5, matching.angles_deg
    assert result["abundances"].rio.crs.to_epsg() == 32633


def test_metadata_without_its_image(tmp_path):
    xml = tmp_path / f"{NAME}-METADATA.XML"
    xml.write_text(metadata_xml([500.0], [7.0], []))
    with pytest.raises(InputError, match="SPECTRAL_IMAGE.TIF is not beside it"):
        open_cube(xml)
