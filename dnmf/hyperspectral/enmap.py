"""EnMAP L2A surface reflectance: a GeoTIFF whose bands are described in a metadata XML.

A product directory holds ``ENMAP01-____L2A-…-SPECTRAL_IMAGE.TIF`` (integers, one band per
channel) and ``ENMAP01-____L2A-…-METADATA.XML``. The XML's
``specific/bandCharacterisation/bandID`` elements give each band's ``wavelengthCenterOfBand``
and ``FWHMOfBand`` (nm) and ``GainOfBand``/``OffsetOfBand`` (reflectance = value × gain +
offset); ``product/bandStatistics/bandID`` gives ``mean`` and ``stdDeviation``, both
−1000000 and 0 for a band without data. :func:`describe_bands` turns them into the cube's
``wavelength``, ``fwhm`` and ``bbl`` coordinates and per-band scales; the image itself is
read as any GeoTIFF.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from dnmf.errors import InputError

__all__ = ["IMAGE_SUFFIX", "METADATA_SUFFIX", "annotate", "image_of", "metadata_of"]

IMAGE_SUFFIX = "-SPECTRAL_IMAGE"
METADATA_SUFFIX = "-METADATA.XML"
# bandStatistics of a band the sensor did not record
_NO_DATA_MEAN = -1000000.0


def metadata_of(path: str | os.PathLike[str]) -> Path | None:
    """The ``…-METADATA.XML`` beside an EnMAP L2A ``…-SPECTRAL_IMAGE.TIF``, if any."""
    p = Path(os.fspath(path))
    stem = p.stem
    if "L2A" not in p.name or not stem.upper().endswith(IMAGE_SUFFIX):
        return None
    for name in (stem[: -len(IMAGE_SUFFIX)] + METADATA_SUFFIX,
                 stem[: -len(IMAGE_SUFFIX)] + METADATA_SUFFIX.replace(".XML", ".xml")):
        if (p.parent / name).is_file():
            return p.parent / name
    return None


def image_of(path: str | os.PathLike[str]) -> Path | None:
    """The ``…-SPECTRAL_IMAGE.TIF`` of an EnMAP L2A ``…-METADATA.XML``; ``None`` for any
    other file. A metadata file without its image is an :class:`InputError`."""
    p = Path(os.fspath(path))
    if "L2A" not in p.name or not p.name.upper().endswith(METADATA_SUFFIX):
        return None
    base = p.name[: -len(METADATA_SUFFIX)] + IMAGE_SUFFIX
    for ext in (".TIF", ".tif", ".TIFF", ".tiff"):
        if (p.parent / (base + ext)).is_file():
            return p.parent / (base + ext)
    raise InputError(f"{p} is EnMAP L2A metadata but {base}.TIF is not beside it — put the "
                     "product's files together")


def _band_values(root: Any, path: str, tag: str) -> np.ndarray:
    texts = [e.text for e in root.findall(f"{path}/bandID/{tag}")]
    try:
        return np.asarray([float(t) for t in texts], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"EnMAP metadata: {tag} must be numbers ({err})") from err


def annotate(image: xr.DataArray, metadata: str | os.PathLike[str]) -> xr.DataArray:
    """The GeoTIFF cube (``band, y, x`` as rioxarray opens it) with the metadata's
    ``wavelength``, ``fwhm`` and ``bbl`` coordinates and its per-band gains and offsets as
    ``scales``/``offsets``."""
    try:
        root = ElementTree.parse(metadata).getroot()
    except (OSError, ElementTree.ParseError) as err:
        raise InputError(f"cannot read EnMAP metadata {metadata}: {err}") from err
    chars = "specific/bandCharacterisation"
    wavelength = _band_values(root, chars, "wavelengthCenterOfBand")
    n = image.sizes["band"]
    if wavelength.size != n:
        raise InputError(f"EnMAP metadata {metadata} describes {wavelength.size} bands, the "
                         f"image has {n} — the files belong to different products")
    coords: dict[str, Any] = {"wavelength": ("band", wavelength, {"units": "nm"})}
    fwhm = _band_values(root, chars, "FWHMOfBand")
    if fwhm.size == n:
        coords["fwhm"] = ("band", fwhm, {"units": "nm"})
    mean = _band_values(root, "product/bandStatistics", "mean")
    std = _band_values(root, "product/bandStatistics", "stdDeviation")
    if mean.size == n and std.size == n:
        coords["bbl"] = ("band", (~((mean == _NO_DATA_MEAN) & (std == 0))).astype(np.int8))
    out = image.assign_coords(coords)
    attrs = {k: v for k, v in out.attrs.items()
             if k not in ("scale_factor", "add_offset", "long_name")}
    gains = _band_values(root, chars, "GainOfBand")
    offsets = _band_values(root, chars, "OffsetOfBand")
    if gains.size == n:
        attrs["scales"] = gains.tolist()
    if offsets.size == n:
        attrs["offsets"] = offsets.tolist()
    attrs["source_format"] = "enmap"
    out.attrs = attrs
    return out
