"""Data sets for trying and testing dnmf.

:func:`make_scene` builds a synthetic hyperspectral scene (lazy, any size) from a small spectral
library derived from earthlib (MIT); :func:`load_spectral_library` returns that library.
"""

from dnmf.datasets.scene import load_spectral_library, make_scene

__all__ = ["load_spectral_library", "make_scene"]
