"""``cube.dnmf.unmix(k)``: unmixing as an xarray accessor on DataArrays and Datasets."""

from __future__ import annotations

from typing import Any

import xarray as xr


class DnmfAccessor:
    """dnmf methods on an xarray object: ``cube.dnmf.unmix(5)``.

    Registered as ``.dnmf`` on :class:`xarray.DataArray` and :class:`xarray.Dataset` when
    :mod:`dnmf` is imported.
    """

    def __init__(self, obj: xr.DataArray | xr.Dataset) -> None:
        self._obj = obj

    def unmix(self, n_endmembers: int | str = "auto", **kwargs: Any) -> xr.Dataset:
        """Endmembers and abundance maps of this cube; see :func:`dnmf.hyperspectral.unmix`."""
        from dnmf.hyperspectral.unmix import unmix

        return unmix(self._obj, n_endmembers, **kwargs)


def register() -> None:
    """Attach the accessor (idempotent: xarray warns when a name is registered twice)."""
    if "dnmf" not in getattr(xr.DataArray, "__dict__", {}):
        xr.register_dataarray_accessor("dnmf")(DnmfAccessor)
    if "dnmf" not in getattr(xr.Dataset, "__dict__", {}):
        xr.register_dataset_accessor("dnmf")(DnmfAccessor)


register()
