"""Derive ``earthlib_spectra.npz`` from the earthlib spectral library (reproducible).

earthlib (https://github.com/earth-chris/earthlib, MIT licence, see EARTHLIB_LICENSE.txt) ships
a library of 7,261 reflectance spectra on 180 bands, 400-2450 nm at 10 nm, with the water-vapour
bands (1350-1460 nm, 1790-1960 nm) removed, and a metadata table whose ``LEVEL_2`` column is the
land-cover class: ``bare`` (soils, sand, gravel), ``built`` (roofs, roads, paint...), ``npv``
(non-photosynthetic vegetation: bark, litter, wood), ``vegetation`` (canopies simulated with
PROSAIL, ``LEVEL_4 == "simulated"``) and ``burned`` (char). dnmf is not a user of earthlib at
run time: this script only documents how the small, class-balanced subset it ships was made.

Run it in a scratch environment, not dnmf's::

    python3 -m venv /tmp/elvenv && /tmp/elvenv/bin/pip install earthlib==1.1.0
    /tmp/elvenv/bin/python dnmf/datasets/data/derive_earthlib.py

The selection, for each class in ``CLASSES``: drop spectra with a non-finite value, a value
below 0 or above 1.5; shuffle the rest with a fixed seed; then take them round-robin over the
class's ``LEVEL_3`` sub-classes (soil, sand, gravel, dirt...; roof, road, paint...) until
``PER_CLASS`` are taken or the class runs out (``burned`` has 21). Spectra are stored in the
library's order.

The npz holds: ``spectra`` float32 (n, 180) reflectance; ``wavelength`` float64 (180,) in nm;
``names`` (earthlib's spectrum names, not all unique), ``classes`` (``LEVEL_2``),
``subclasses`` (``LEVEL_3``) and ``sources`` (``SOURCE``) as unicode arrays; ``measured`` bool
(False for the PROSAIL-simulated vegetation); ``library_index`` int32 (the row in earthlib's
``full_library``); ``earthlib_version`` (a 0-d unicode array).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

#: Land-cover classes (earthlib ``LEVEL_2``) and how many spectra to keep per class at most.
CLASSES = ("bare", "built", "npv", "vegetation", "burned")
PER_CLASS = 70
SEED = 20240601
OUT = Path(__file__).with_name("earthlib_spectra.npz")


def select(classes: np.ndarray, subclasses: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Indices of a class-balanced, sub-class round-robin subset (sorted)."""
    rng = np.random.default_rng(SEED)
    chosen: list[int] = []
    for cls in CLASSES:
        members = np.flatnonzero((classes == cls) & ok)
        members = members[rng.permutation(len(members))]
        by_sub: dict[str, list[int]] = {}
        for i in members:
            by_sub.setdefault(str(subclasses[i]), []).append(int(i))
        queues = [by_sub[s] for s in sorted(by_sub)]
        taken: list[int] = []
        while len(taken) < PER_CLASS and any(queues):
            for q in queues:
                if q and len(taken) < PER_CLASS:
                    taken.append(q.pop(0))
        chosen.extend(taken)
    return np.sort(np.asarray(chosen, dtype=np.int64))


def main() -> int:
    import earthlib

    lib = earthlib.full_library
    data = np.asarray(lib.data, dtype=np.float64)
    meta = lib.metadata.reset_index(drop=True)
    if data.shape != (len(meta), 180):
        raise SystemExit(f"unexpected earthlib library shape {data.shape}")
    unit = lib.sensor.wavelength_unit.lower()
    wavelength = np.asarray(lib.sensor.band_centers, dtype=np.float64)
    if unit == "micrometers":
        wavelength = wavelength * 1000.0
    wavelength = np.round(wavelength, 3)

    ok = np.isfinite(data).all(axis=1) & (data >= 0).all(axis=1) & (data <= 1.5).all(axis=1)
    classes = np.asarray(meta["LEVEL_2"].astype(str), dtype=str)
    subclasses = np.asarray(meta["LEVEL_3"].astype(str), dtype=str)
    idx = select(classes, subclasses, ok)

    np.savez_compressed(
        OUT,
        spectra=data[idx].astype(np.float32),
        wavelength=wavelength,
        names=np.asarray([str(lib.names[i]) for i in idx]),
        classes=classes[idx],
        subclasses=subclasses[idx],
        sources=np.asarray(meta["SOURCE"].astype(str), dtype=str)[idx],
        measured=np.asarray(meta["LEVEL_4"].astype(str), dtype=str)[idx] == "measured",
        library_index=idx.astype(np.int32),
        earthlib_version=np.asarray(earthlib.__version__),
    )
    counts = {c: int((classes[idx] == c).sum()) for c in CLASSES}
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB): {len(idx)} spectra {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
