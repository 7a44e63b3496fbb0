"""Hyperspectral unmixing: cubes in, endmember spectra and abundance maps out.

``unmix(cube, k)`` (also ``cube.dnmf.unmix(k)`` and ``dnmf unmix``) stacks a rows × cols ×
bands cube into a (pixel × band) matrix tile by tile, factorizes it with abundances that sum
to one, and writes the maps back tile by tile. Modules: :mod:`~dnmf.hyperspectral.cube`
(inputs), :mod:`~dnmf.hyperspectral.envi`, :mod:`~dnmf.hyperspectral.prepare` (bad bands,
no-data, stacking), :mod:`~dnmf.hyperspectral.subspace` (``-k auto``),
:mod:`~dnmf.hyperspectral.unmix`, :mod:`~dnmf.hyperspectral.metrics`,
:mod:`~dnmf.hyperspectral.plots`.
"""

from __future__ import annotations

from typing import Any

from dnmf.hyperspectral import accessor as _accessor  # noqa: F401  (registers cube.dnmf)

__all__ = ["estimate_endmembers", "metrics", "open_cube", "score", "unmix"]


def __getattr__(name: str) -> Any:  # lazy: the accessor must not pull in dask at import
    if name == "unmix":
        from dnmf.hyperspectral.unmix import unmix

        return unmix
    if name == "open_cube":
        from dnmf.hyperspectral.cube import open_cube

        return open_cube
    if name == "estimate_endmembers":
        from dnmf.hyperspectral.subspace import estimate_endmembers

        return estimate_endmembers
    if name == "score":
        from dnmf.hyperspectral.metrics import score

        return score
    if name == "metrics":
        import importlib

        return importlib.import_module("dnmf.hyperspectral.metrics")
    raise AttributeError(f"module 'dnmf.hyperspectral' has no attribute {name!r}")
