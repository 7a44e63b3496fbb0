"""Dask graphs of the 2-D block scheme, for X too wide for full-width row panels.

When even one full-width row panel does not fit a task (its ``k x n`` partial sums alone can
exceed the budget), X is cut into blocks ``X_ij`` (row block i, column block j), H into column
blocks ``H_j`` that stay on the workers, and one iteration reads X twice:

* pass 1: ``X_ij H_j^T`` summed over j gives ``XHt_i``; W_i is updated as in the row-panel
  scheme (only ``HHt``, k x k, comes from the driver);
* pass 2 (a second read of each block, under keys of its own so that no row of blocks is held
  in memory between the passes): ``W_i^T X_ij`` summed over i gives ``WtX_j``; with
  ``WtW = sum_i W_i^T W_i``, each ``H_j`` is updated where it lives;
* the driver receives k x k matrices and two scalars: ``HHt`` of the new H, ``<H, WtX>`` and
  ``WtW``, which give the loss exactly as in the row-panel scheme.
"""

from __future__ import annotations

import functools
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.graph_manipulation import clone
from dask.highlevelgraph import HighLevelGraph

from dnmf import kernels
from dnmf.graph import SPLIT_EVERY, tree_reduce_layer


def _xht_part(X: Any, H: Any) -> Any:
    return X @ np.asarray(H, dtype=X.dtype).T


def _sum_arrays(*parts: Any) -> Any:
    total = parts[0].copy()
    for p in parts[1:]:
        total += p
    return total


def _update_w_from_parts(W: Any, XHt: Any, HHt: Any, *, solver: str, l1: float,
                         l2: float, sweeps: int) -> Any:
    return kernels.update_w(W, XHt, HHt, solver=solver, l1=l1, l2=l2, inner_sweeps=sweeps)


def _wtx_part(W: Any, X: Any) -> Any:
    # float64 for the sums (a sparse block's product comes back in its own dtype)
    return kernels.astype(kernels.gram_partials(X, W)[0], np.float64)


def _wtw(W: Any) -> Any:
    return kernels.gram_of_rows(W)[0]


def _update_h_block(H: Any, WtX: Any, WtW: Any, *, solver: str, l1: float, l2: float) -> Any:
    return kernels.update_h(H, WtX, WtW, solver=solver, l1=l1, l2=l2).astype(H.dtype)


def _h_stats(H: Any, WtX: Any) -> tuple[Any, float]:
    H64 = np.asarray(H, dtype=np.float64)
    return H64 @ H64.T, float(np.vdot(H64, WtX))


def _sum_h_stats(*parts: tuple[Any, float]) -> tuple[Any, float]:
    return _sum_arrays(*[p[0] for p in parts]), float(sum(p[1] for p in parts))


def _collect(hh_cross: tuple[Any, float], WtW: Any) -> tuple[Any, float, Any]:
    return hh_cross[0], hh_cross[1], WtW


def iteration_graph_2d(
    X: da.Array,
    W: da.Array,
    H: da.Array,
    HHt: np.ndarray,
    *,
    solver: str,
    l1_w: float = 0.0,
    l2_w: float = 0.0,
    l1_h: float = 0.0,
    l2_h: float = 0.0,
    split_every: int = SPLIT_EVERY,
    second_read: bool = True,
) -> tuple[da.Array, da.Array, Delayed]:
    """The graph of one iteration of the 2-D block scheme.

    Parameters
    ----------
    X : dask array (n_samples, n_features) in blocks (row blocks i, column blocks j)
    W : dask array (n_samples, k), chunked like X's rows, one column chunk
    H : dask array (k, n_features), chunked like X's columns, one row chunk
    HHt : ndarray (k, k), float64, ``H @ H.T`` of the current H
    second_read : bool
        Read X again for pass 2 under new keys (X streamed from storage); ``False`` when X is
        persisted in worker memory, where both passes use the same blocks.

    Returns
    -------
    W_new : dask array (n_samples, k)
    H_new : dask array (k, n_features)
    stats : Delayed of ``(HHt_new (k, k), <H_new, WtX> (float), WtW (k, k))``
    """
    if X.chunks[0] != W.chunks[0] or X.chunks[1] != H.chunks[1]:
        raise ValueError("W's rows and H's columns must be chunked like X's")
    n_i, n_j = X.numblocks
    X2 = clone(X, seed="dnmf-second-read") if second_read else X
    token = tokenize(X.name, W.name, H.name, HHt, solver, l1_w, l2_w, l1_h, l2_h)
    names = {s: f"dnmf-2d-{s}-{token}" for s in (
        "xht-part", "xht", "hht", "W", "wtx-part", "wtx", "wtw", "H", "hstat", "hstats", "stats")}
    layers: dict[str, dict] = {name: {} for name in names.values()}
    hht_key = (names["hht"],)
    layers[names["hht"]][hht_key] = np.asarray(HHt, dtype=np.float64)
    # every task through call_aligned: operands moved between workers may arrive misaligned
    aligned = functools.partial(functools.partial, kernels.call_aligned)
    update_w = aligned(_update_w_from_parts, solver=solver, l1=l1_w, l2=l2_w,
                       sweeps=kernels.w_inner_sweeps(W.shape[1], X.shape[1]))
    update_h = aligned(_update_h_block, solver=solver, l1=l1_h, l2=l2_h)
    xht_part, wtx_part, wtw, h_stats = (aligned(f) for f in (_xht_part, _wtx_part, _wtw,
                                                               _h_stats))
    # pass 1: XHt_i = sum_j X_ij H_j^T, then W_i
    for i in range(n_i):
        parts = []
        for j in range(n_j):
            key = (names["xht-part"], i, j)
            layers[names["xht-part"]][key] = (xht_part, (X.name, i, j), (H.name, 0, j))
            parts.append(key)
        sub, final = tree_reduce_layer(parts, f"{names['xht']}-{i}", _sum_arrays, split_every)
        layers[names["xht"]].update(sub)
        layers[names["W"]][(names["W"], i, 0)] = (update_w, (W.name, i, 0), final, hht_key)
    # pass 2: WtX_j = sum_i W_i^T X_ij (second read), WtW, then H_j where it lives
    wtw_parts = []
    for i in range(n_i):
        key = (names["wtw"] + "-part", i)
        layers[names["wtw"]][key] = (wtw, (names["W"], i, 0))
        wtw_parts.append(key)
    sub, wtw_key = tree_reduce_layer(wtw_parts, names["wtw"], _sum_arrays, split_every)
    layers[names["wtw"]].update(sub)
    hstat_keys = []
    for j in range(n_j):
        parts = []
        for i in range(n_i):
            key = (names["wtx-part"], i, j)
            layers[names["wtx-part"]][key] = (wtx_part, (names["W"], i, 0), (X2.name, i, j))
            parts.append(key)
        sub, wtx_key = tree_reduce_layer(parts, f"{names['wtx']}-{j}", _sum_arrays, split_every)
        layers[names["wtx"]].update(sub)
        layers[names["H"]][(names["H"], 0, j)] = (update_h, (H.name, 0, j), wtx_key, wtw_key)
        hstat_keys.append((names["hstat"], j))
        layers[names["hstat"]][(names["hstat"], j)] = (h_stats, (names["H"], 0, j), wtx_key)
    sub, hstats_key = tree_reduce_layer(hstat_keys, names["hstats"], _sum_h_stats, split_every)
    layers[names["hstats"]].update(sub)
    stats_key = (names["stats"],)
    layers[names["stats"]][stats_key] = (_collect, hstats_key, wtw_key)

    n = names
    inputs = [X, X2, W, H] if second_read else [X, W, H]
    all_layers: dict = {}
    deps: dict = {}
    for coll in inputs:
        g = coll.__dask_graph__()
        all_layers.update(g.layers)
        deps.update(g.dependencies)
    all_layers.update(layers)
    deps.update({
        n["hht"]: set(),
        n["xht-part"]: {X.name, H.name},
        n["xht"]: {n["xht-part"]},
        n["W"]: {W.name, n["xht"], n["hht"]},
        n["wtw"]: {n["W"]},
        n["wtx-part"]: {n["W"], X2.name},
        n["wtx"]: {n["wtx-part"]},
        n["H"]: {H.name, n["wtx"], n["wtw"]},
        n["hstat"]: {n["H"], n["wtx"]},
        n["hstats"]: {n["hstat"]},
        n["stats"]: {n["hstats"], n["wtw"]},
    })
    graph = HighLevelGraph(all_layers, deps)
    W_new = da.Array(graph, names["W"], chunks=W.chunks, dtype=W.dtype)
    H_new = da.Array(graph, names["H"], chunks=H.chunks, dtype=H.dtype)
    stats = Delayed(stats_key, graph, layer=names["stats"])
    return W_new, H_new, stats

