"""Row and column labels of labelled input (xarray, AnnData), carried onto W and H.

The rule: an ``xarray.DataArray`` or an ``anndata.AnnData`` X gives W and H as
``xarray.DataArray``: W with dims ``(row_dim, "component")`` and X's row labels, H with dims
``("component", col_dim)`` and X's column labels. ``row_dim``/``col_dim`` are the DataArray's
own dims, or ``"obs"``/``"var"`` for AnnData (labels ``obs_names``/``var_names``). The values
inside are what an unlabelled fit gives (numpy for in-memory X, dask otherwise). In the result
store the labels are the coordinates ``sample`` and ``feature`` (written in chunks, readable by
``xr.open_zarr``) and the input's dim names are the attribute ``dims``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dnmf.errors import InputError

__all__ = ["INDEX_MAX_ROWS", "AxisLabels", "check_columns", "coord_values", "labelled", "labelled_result",
           "split", "store_coords", "stored_labels"]

#: Row labels read back from a result store up to this many become an index (``.sel`` works);
#: more stay a lazy coordinate (``W.set_xindex(dim)`` makes the index when wanted).
INDEX_MAX_ROWS = 2**20


@dataclass(frozen=True)
class AxisLabels:
    """Names and labels of X's two axes.

    Attributes
    ----------
    row_dim, col_dim : str
        Dimension names (an xarray DataArray's dims; ``"obs"``, ``"var"`` for AnnData).
    rows, cols : pandas.Index, dask array or None
        The labels, when X has them (a DataArray without a coordinate on a dim has none).
    """

    row_dim: str
    col_dim: str
    rows: Any = None
    cols: Any = None


def split(X: Any) -> tuple[Any, str | None, AxisLabels | None]:
    """``(matrix, var, labels)``: the array inside a labelled X (or X itself), the variable
    to read from a backed AnnData file, and X's labels (None for unlabelled X)."""
    module = type(X).__module__.split(".")[0]
    if module == "xarray" and hasattr(X, "dims") and hasattr(X, "indexes"):
        if X.ndim != 2:
            return X, None, None  # open_matrix says what is wrong with its shape
        row_dim, col_dim = (str(d) for d in X.dims)
        labels = AxisLabels(row_dim, col_dim, _index(X, row_dim), _index(X, col_dim))
        return X.data, None, labels
    if module == "anndata" and hasattr(X, "obs_names") and hasattr(X, "var_names"):
        labels = AxisLabels("obs", "var", X.obs_names, X.var_names)
        if getattr(X, "isbacked", False):  # X stays on disk: read it from the file
            return str(X.filename), "X", labels
        return X.X, None, labels
    return X, None, None


def _index(X: Any, dim: str) -> pd.Index | None:
    return X.indexes[dim] if dim in X.indexes else None


def labelled(values: Any, labels: AxisLabels | None, factor: str) -> Any:
    """``values`` (W when ``factor == "W"``, else H) as a DataArray with X's labels; as it is
    when X had none."""
    if labels is None or values is None:
        return values
    import xarray as xr

    if factor == "W":
        dim, names = labels.row_dim, labels.rows
        dims = (dim, "component")
    else:
        dim, names = labels.col_dim, labels.cols
        dims = ("component", dim)
    if names is None:
        return xr.DataArray(values, dims=dims)
    if isinstance(names, pd.Index):
        return xr.DataArray(values, dims=dims, coords={dim: names})
    # lazy labels read from a large store: a coordinate without an index (nothing read)
    coords = xr.Coordinates({dim: (dim, names)}, indexes={})
    return xr.DataArray(values, dims=dims, coords=coords)


def check_columns(labels: AxisLabels | None, H: Any) -> None:
    """Refuse an X whose column labels are not those H was fitted on (reordered or renamed
    columns), as scikit-learn refuses a DataFrame's."""
    if labels is None or labels.cols is None or not hasattr(H, "dims"):
        return
    fitted = H.indexes.get(H.dims[1])
    if fitted is None or fitted.equals(pd.Index(labels.cols)):
        return
    raise InputError(
        f"X's {labels.col_dim} labels differ from those seen in fit (first fitted: "
        f"{list(fitted[:3])}, given: {list(pd.Index(labels.cols)[:3])}) — select the fitted "
        f"columns in their order, e.g. X.sel({H.dims[1]}=model.components_.{H.dims[1]})")


def labelled_result(result: Any, labels: AxisLabels | None) -> Any:
    """A :class:`~dnmf.pipeline.FitResult` whose W and H carry X's labels."""
    if labels is None:
        return result
    return dataclasses.replace(result, W=labelled(result.W, labels, "W"),
                               H=labelled(result.H, labels, "H"))


def store_coords(labels: AxisLabels | None) -> dict[str, Any] | None:
    """What the result store keeps of the labels: ``{"sample": rows, "feature": cols,
    "dims": [row_dim, col_dim]}`` (labels None where X has none), or None."""
    if labels is None:
        return None
    return {"sample": labels.rows, "feature": labels.cols,
            "dims": [labels.row_dim, labels.col_dim]}


def coord_values(labels: Any, start: int, stop: int) -> np.ndarray:
    """Labels ``start:stop`` as a numpy array zarr writes (strings as ``str``)."""
    part = np.asarray(labels[start:stop])
    if part.dtype == object or part.dtype.kind in "US" or part.dtype.kind == "T":
        return np.asarray([str(v) for v in part], dtype=object)
    return part


def stored_labels(root: Any) -> AxisLabels | None:
    """X's labels from an open result-store group (None when the fit had unlabelled X)."""
    dims = root.attrs.get("dims")
    if not dims:
        return None
    rows = cols = None
    if "sample" in root:
        import dask.array as da

        arr = root["sample"]
        rows = _as_index(arr[...]) if arr.shape[0] <= INDEX_MAX_ROWS else da.from_zarr(arr)
    if "feature" in root:
        cols = _as_index(root["feature"][...])
    return AxisLabels(str(dims[0]), str(dims[1]), rows, cols)


def _as_index(values: Any) -> pd.Index:
    """Stored labels as a pandas Index: strings as Python ``str``, numbers as they are."""
    values = np.asarray(values)
    if values.dtype.kind in "OUST":
        return pd.Index(values.astype(object))
    return pd.Index(values)
