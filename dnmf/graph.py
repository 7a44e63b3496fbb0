"""Dask graphs of the row-panel scheme, built from the block kernels.

Builders here never compute: they return dask collections. One iteration is one graph:

* a task per row panel ``i`` runs :func:`dnmf.kernels.panel_step` on ``(X_i, W_i, H, HHt)``,
  reading ``X_i`` once and returning the new ``W_i`` with its ``(W_i.T X_i, W_i.T W_i)``;
* the new W is a dask array whose chunks are the first element of those tasks;
* the float64 partial sums are tree-reduced (``split_every`` at a time, fixed order, so the
  result is reproducible for a given chunking) to one ``(WtX, WtW)`` Delayed.

Every task calls its kernel through :func:`dnmf.kernels.call_aligned`: operands that arrive
through Dask's serialisation may be misaligned, and numpy multiplies those without BLAS, in
another order, so a recomputed panel would not give the same bits as the first.
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
from dask._task_spec import Alias, Task
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from dnmf import divergence, kernels
from dnmf.stacked_kernels import block_grams, stacked_panel_loss, stacked_panel_step

#: Fan-in of the tree reduction of partial sums.
SPLIT_EVERY = 8


def _panel_keys(A: da.Array) -> list[Any]:
    if len(A.chunks[1]) != 1:
        raise ValueError(
            f"row-panel scheme needs all columns in one chunk; got column chunks {A.chunks[1]}"
        )
    return [row[0] for row in A.__dask_keys__()]


def tree_reduce_layer(
    keys: Sequence[Any], name: str, combine: Any, split_every: int = SPLIT_EVERY
) -> tuple[dict, Any]:
    """Tasks that combine ``keys`` ``split_every`` at a time; returns (layer, final key)."""
    layer, (final,) = reduce_levels(keys, name, combine, split_every, until=1)
    return layer, final


def reduce_levels(keys: Sequence[Any], name: str, combine: Any, split_every: int = SPLIT_EVERY,
                  *, until: int = 1) -> tuple[dict, list[Any]]:
    """The levels of :func:`tree_reduce_layer` until at most ``until`` keys remain (at least
    one level when ``until`` is 1); returns (layer, remaining keys)."""
    layer: dict = {}
    level = 0
    current = list(keys)
    while until == 1 or len(current) > until:
        groups = [current[i : i + split_every] for i in range(0, len(current), split_every)]
        nxt = []
        for j, group in enumerate(groups):
            key = (name, level, j)
            layer[key] = (kernels.call_aligned, combine, *group)
            nxt.append(key)
        current = nxt
        level += 1
        if len(nxt) == 1:
            break
    return layer, current


def iteration_graph(
    X: da.Array,
    W: da.Array,
    H: np.ndarray,
    *,
    solver: str,
    l1_w: float = 0.0,
    l2_w: float = 0.0,
    inner_sweeps: int | None = None,
    beta: float = 2.0,
    masked: bool = False,
    mask: da.Array | None = None,
    sum_to_one: bool = False,
    with_loss: bool = True,
    split_every: int = SPLIT_EVERY,
    h_update: dict[str, Any] | None = None,
) -> tuple[da.Array, Any]:
    """The graph of one iteration of the row-panel scheme.

    Parameters
    ----------
    X : dask array (n_samples, n_features), row panels (one column chunk)
        numpy blocks, or device blocks (CuPy, :func:`dnmf.device.to_device`) for hals and mu.
    W : dask array (n_samples, k), chunked like X's rows, with blocks of X's kind
    H : ndarray (k, n_features)
        Cast to X's dtype for the panel products; copied to the device inside each task.
    solver : "hals" | "mu" | "anls"
    beta : float
        β of the loss; other than 2 runs :func:`dnmf.divergence.beta_panel_step` (MU).
    masked : bool
        NaN entries of X are missing (MU on the observed entries).
    mask : dask array (n_samples, n_features), optional
        Observed entries (non-zero), chunked like X; read with X in the same task.
    sum_to_one : bool
        Rows of W sum to one (exact FCLS for Frobenius, augmented row for MU).
    with_loss : bool
        β-divergences and missing values: compute the loss (False: NaN, the element-wise
        terms only the loss needs are skipped; the iterates are the same). The unmasked
        Frobenius partials give the loss for free, whatever this says.
    inner_sweeps : int, optional
        HALS sweeps of each panel's W; default :func:`dnmf.kernels.w_inner_sweeps`.
    h_update : dict, optional
        Unmasked Frobenius loss only: H updated on the workers, a block of its columns per
        task (:func:`dnmf.kernels.update_h_columns`), instead of WᵀX brought to the driver:
        ``{"H": float64 H (k, n), "columns": [slice, ...], "solver", "l1", "l2"}``. The top of
        the reduction is then split by those columns (each block's partials summed where its
        H update runs), so that no task holds all of WᵀX.

    Returns
    -------
    W_new : dask array (n_samples, k)
    partials : Delayed of ``(WtX (k, n), WtW (k, k))`` (float64, computed with W_new) for the
        unmasked Frobenius loss; otherwise of ``(numH, denH, loss, residual, observed_sq,
        WtW)``, see :func:`dnmf.divergence.beta_panel_step`. With ``h_update``, a list of
        Delayed, one per column block, of :func:`dnmf.kernels.update_h_columns`'s tuple.
    """
    if inner_sweeps is None:
        inner_sweeps = kernels.w_inner_sweeps(W.shape[1], X.shape[1])
    H = np.ascontiguousarray(H, dtype=X.dtype)
    general = beta != 2.0 or masked or mask is not None
    token = tokenize(X.name, W.name, None if mask is None else mask.name, H, solver, l1_w, l2_w,
                     inner_sweeps, beta, masked, sum_to_one, general and with_loss)
    step, consts = iteration_task(H, solver=solver, l1_w=l1_w, l2_w=l2_w,
                                  inner_sweeps=inner_sweeps, beta=beta, masked=masked,
                                  has_mask=mask is not None, sum_to_one=sum_to_one,
                                  with_loss=with_loss)
    if general:
        return panel_map_reduce(X, step, prefix="dnmf", token=token, W=W, mask=mask,
                                consts=consts, with_w=True, split_every=split_every)
    if h_update is not None:
        token = tokenize(token, h_update["H"], h_update["columns"])
    return panel_map_reduce(X, step, prefix="dnmf", token=token, W=W, consts=consts,
                            with_w=True, pass_mask=False, split_every=split_every,
                            h_update=h_update)


def iteration_task(H: np.ndarray, *, solver: str, l1_w: float, l2_w: float,
                   inner_sweeps: int, beta: float, masked: bool, has_mask: bool = False,
                   sum_to_one: bool = False, with_loss: bool = True) -> tuple[Any, tuple]:
    """``(func, consts)``: the panel task of :func:`iteration_graph`, called as
    ``func(X_i, W_i, *consts)`` (plus ``mask_i``, or None, for β-divergences and missing
    values). ``H`` is X's dtype. An in-process fit calls it on the whole X (one panel)."""
    if beta != 2.0 or masked or has_mask:
        return functools.partial(_beta_task, beta=beta, l1=l1_w, l2=l2_w, masked=masked,
                                 sum_to_one=sum_to_one, with_loss=with_loss), (H,)
    HHt = H.astype(np.float64) @ H.T.astype(np.float64)
    return functools.partial(kernels.panel_step, solver=solver, l1=l1_w, l2=l2_w,
                             inner_sweeps=inner_sweeps, sum_to_one=sum_to_one), (H, HHt)


def loss_task(beta: float, masked: bool = False) -> Any:
    """The panel task of :func:`loss_graph`, ``func(X_i, W_i, H, mask_i)``."""
    return functools.partial(_loss_task, beta=beta, masked=masked)


def panel_map_reduce(X: da.Array, func: Any, *, prefix: str, token: str,
                     W: da.Array | None = None, mask: da.Array | None = None,
                     consts: Sequence[Any] = (), with_w: bool = False, pass_mask: bool = True,
                     split_every: int = SPLIT_EVERY,
                     h_update: dict[str, Any] | None = None) -> Any:
    """THE graph of one pass over the row panels: a task per panel, its partials summed in a
    fixed-order tree (:func:`tree_reduce_layer`). Every builder of this module uses it.

    Each task runs ``func(X_i[, W_i], *consts[, mask_i])`` through
    :func:`dnmf.kernels.call_aligned` (``W_i`` when ``W`` is given; ``mask_i``, or None
    without a mask, unless ``pass_mask`` is False). ``consts`` (H, HHᵀ) are put in the graph
    once. With ``with_w`` the task returns ``(W_new_i, partials_i)``: the partials get keys of
    their own so that the reduction moves only them between workers, never the panel's W rows.

    Returns
    -------
    ``(W_new, partials)`` with ``with_w`` (W_new chunked like W, blocks of W's kind), else
    ``partials``: a Delayed of the reduced partials. Layer names: ``{prefix}-panel-{token}``,
    ``{prefix}-partials-{token}`` (and ``{prefix}-W-``, ``{prefix}-partial-``,
    ``{prefix}-consts-``).
    """
    x_keys = _panel_keys(X)
    n = len(x_keys)
    w_keys: list[Any] = [] if W is None else _panel_keys(W)
    if W is not None and X.chunks[0] != W.chunks[0]:
        raise ValueError(f"W's row chunks {W.chunks[0]} differ from X's {X.chunks[0]}")
    if mask is not None and mask.chunks != X.chunks:
        raise ValueError(f"the mask's chunks {mask.chunks} differ from X's {X.chunks}")
    m_keys = _panel_keys(mask) if mask is not None else [None] * n
    const_name = f"{prefix}-consts-{token}"
    const_keys = [(const_name, i) for i in range(len(consts))]
    task_name, sum_name = f"{prefix}-panel-{token}", f"{prefix}-partials-{token}"

    x_in = inline_reads(X, x_keys)
    m_in = inline_reads(mask, m_keys) if mask is not None else m_keys

    def args(i: int) -> tuple:
        head = (x_in[i],) if W is None else (x_in[i], w_keys[i])
        return (*head, *const_keys, *((m_in[i],) if pass_mask else ()))

    inputs = [A for A in (X, W, mask) if A is not None]
    layers = {name: layer for A in inputs for name, layer in A.__dask_graph__().layers.items()}
    deps = {name: dep for A in inputs
            for name, dep in A.__dask_graph__().dependencies.items()}
    layers[task_name] = {(task_name, i): (kernels.call_aligned, func, *args(i))
                         for i in range(n)}
    deps[task_name] = {A.name for A in inputs}
    if consts:
        layers[const_name] = {(const_name, i): v for i, v in enumerate(consts)}
        deps[const_name] = set()
        deps[task_name].add(const_name)
    part_name = task_name
    if with_w:
        w_name, part_name = f"{prefix}-W-{token}", f"{prefix}-partial-{token}"
        layers[w_name] = {(w_name, i, 0): (operator.getitem, (task_name, i), 0)
                          for i in range(n)}
        layers[part_name] = {(part_name, i): (operator.getitem, (task_name, i), 1)
                             for i in range(n)}
        deps[w_name] = {task_name}
        deps[part_name] = {task_name}
    part_keys = [(part_name, i) for i in range(n)]
    if h_update is None:
        sum_layer, final_key = tree_reduce_layer(part_keys, sum_name, kernels.sum_partials,
                                                 split_every)
        finals = None
    else:
        sum_layer, finals = _h_update_layer(part_keys, sum_name, h_update, split_every)
    layers[sum_name] = sum_layer
    deps[sum_name] = {part_name}
    hlg = HighLevelGraph(layers, deps)
    partials: Any = (Delayed(final_key, hlg, layer=sum_name) if finals is None
                     else [Delayed(key, hlg, layer=sum_name) for key in finals])
    if not with_w:
        return partials
    assert W is not None
    W_new = da.Array(hlg, w_name, chunks=W.chunks, dtype=X.dtype, meta=_block_meta(W, X.dtype))
    return W_new, partials


def _h_update_layer(part_keys: list[Any], name: str, h_update: dict[str, Any],
                    split_every: int) -> tuple[dict, list[Any]]:
    """The reduction of ``part_keys`` down to at most ``split_every`` partials, each cut into
    H's column blocks where it lies, and one :func:`dnmf.kernels.update_h_columns` task per
    block on those pieces; returns (layer, the block tasks' keys)."""
    layer, top = reduce_levels(part_keys, name, kernels.sum_partials, split_every,
                               until=split_every)
    H = h_update["H"]
    update = functools.partial(kernels.update_h_columns, solver=h_update["solver"],
                               l1=h_update.get("l1", 0.0), l2=h_update.get("l2", 0.0))
    finals = []
    for b, columns in enumerate(h_update["columns"]):
        pieces = []
        for j, key in enumerate(top):
            piece = (f"{name}-columns", j, b)
            layer[piece] = (kernels.partial_columns, key, columns)
            pieces.append(piece)
        layer[(f"{name}-h", b)] = (kernels.call_aligned, update,
                                   np.ascontiguousarray(H[:, columns]), *pieces)
        finals.append((f"{name}-h", b))
    return layer, finals


def inline_reads(A: da.Array, keys: Sequence[Any]) -> list[Any]:
    """Each of ``keys`` (blocks of ``A``), or the task that reads it from storage when that
    task depends only on root data (the opened array or file that ``from_array`` keeps),
    directly or through tasks that only it consumes (a cube's tile read, then cut into
    pixel rows): run inside the consuming task, the block is read where the task runs, so the
    scheduler places the task by its other inputs (a panel's W rows) and never moves a panel
    of X between workers, and a worker keeps no task of its own per read."""
    graph = A.__dask_graph__()
    consumers: dict[Any, int] = {}
    for node in graph.values():
        if isinstance(node, Task | Alias):
            for dep in node.dependencies:
                consumers[dep] = consumers.get(dep, 0) + 1

    def inlined(key: Any, depth: int = 0) -> Task | None:
        node = graph.get(key)
        if isinstance(node, Alias) and depth <= INLINE_DEPTH:  # another name of a block
            return inlined(node.target, depth + 1) if consumers.get(node.target) == 1 else None
        if not isinstance(node, Task) or depth > INLINE_DEPTH:
            return None
        subs = {}
        for dep in node.dependencies:
            if not isinstance(graph.get(dep), Task):
                continue  # root data (the opened array): stays a key
            inner = inlined(dep, depth + 1) if consumers.get(dep) == 1 else None
            if inner is None:
                return None  # computed from shared or other tasks: left as it is
            subs[dep] = inner
        task = Task(None, node.func, *node.args, **node.kwargs)
        return task.substitute(subs) if subs else task

    out: list[Any] = []
    for key in keys:
        task = inlined(key) if key is not None else None
        out.append(key if task is None else task)
    return out


#: Tasks chained below a block that :func:`inline_reads` folds into its consumer at most.
INLINE_DEPTH = 4


def _block_meta(A: da.Array, dtype: Any) -> Any:
    """The meta of a new array with A's kind of blocks: None (dask's numpy default) for numpy
    blocks; device blocks (CuPy) keep their type, so that :func:`dnmf.device.to_host` sees
    them."""
    if isinstance(A._meta, np.ndarray):
        return None
    return da.utils.meta_from_array(A._meta, ndim=2, dtype=dtype)


def _beta_task(X: Any, W: Any, H: Any, observed: Any, **kwargs: Any) -> tuple:
    return divergence.beta_panel_step(X, W, H, observed=observed, **kwargs)


def loss_graph(X: da.Array, W: da.Array, H: np.ndarray, *, beta: float, masked: bool = False,
               mask: da.Array | None = None, split_every: int = SPLIT_EVERY) -> Delayed:
    """``(β-divergence, squared Frobenius residual, Σ M X²)`` of ``(W, H)``: one read of X."""
    H = np.ascontiguousarray(H, dtype=X.dtype)
    token = tokenize(X.name, W.name, None if mask is None else mask.name, H, beta, masked)
    func = loss_task(beta, masked)
    return panel_map_reduce(X, func, prefix="dnmf-loss", token=token, W=W, mask=mask,
                            consts=(H,), split_every=split_every)


def map_reduce_panels(X: da.Array, func: Any, *, name: str,
                      split_every: int = SPLIT_EVERY) -> Delayed:
    """``func(X_i)`` on every row panel (tuples of partials), summed in a fixed-order tree."""
    return panel_map_reduce(X, func, prefix=name, token=tokenize(X.name, func), pass_mask=False,
                            split_every=split_every)


def _loss_task(X: Any, W: Any, H: Any, observed: Any, **kwargs: Any) -> tuple:
    return divergence.panel_loss(X, W, H, observed=observed, **kwargs)


def map_panels(
    X: da.Array, func: Any, *, k: int, dtype: Any, name: str, **kwargs: Any
) -> da.Array:
    """A (n_samples, k) array from ``func(X_i, **kwargs)`` on each row panel; a ``func`` with
    a ``block_info`` parameter gets dask's (where the panel starts, for row-seeded noise)."""
    task: Any = functools.partial(kernels.call_aligned, func)
    if "block_info" in inspect.signature(func).parameters:
        # dask passes block_info only to a function that names it: the wrapper must
        task = functools.partial(_aligned_with_block_info, func)
    return X.map_blocks(
        task, dtype=dtype, chunks=(X.chunks[0], (k,)),
        name=f"{name}-{tokenize(X, kwargs)}", **kwargs,
    )


def _aligned_with_block_info(func: Any, X: Any, block_info: Any = None, **kwargs: Any) -> Any:
    """:func:`dnmf.kernels.call_aligned` of ``func`` with dask's ``block_info`` passed on."""
    return kernels.call_aligned(func, X, block_info=block_info, **kwargs)


def random_w(
    row_chunks: Sequence[int], k: int, *, seed: int, scale: float, dtype: Any, stream: int = 1
) -> da.Array:
    """A random non-negative W (chunking-invariant, see :func:`dnmf.kernels.random_rows`).

    With ``stream=0`` and the column chunks of X, the transpose of a random H.
    """
    starts = np.cumsum((0, *row_chunks[:-1]))
    token = tokenize(tuple(row_chunks), k, seed, scale, np.dtype(dtype).str, stream)
    name = f"dnmf-random-W-{token}"
    layer = {
        (name, i, 0): (
            functools.partial(kernels.random_rows, seed=seed, scale=scale, dtype=np.dtype(dtype),
                              stream=stream),
            int(s),
            int(s + r),
            k,
        )
        for i, (s, r) in enumerate(zip(starts, row_chunks, strict=True))
    }
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return da.Array(graph, name, chunks=(tuple(row_chunks), (k,)), dtype=dtype)



# ---------------------------------------------------------------------------------------------
# Restarts: R factorizations side by side, one read of X per iteration for all of them
# ---------------------------------------------------------------------------------------------


def restarts_iteration_graph(
    X: da.Array,
    W: da.Array,
    H: np.ndarray,
    *,
    restarts: int,
    active: Sequence[bool] | None = None,
    solver: str,
    l1_w: float = 0.0,
    l2_w: float = 0.0,
    beta: float = 2.0,
    masked: bool = False,
    mask: da.Array | None = None,
    sum_to_one: bool = False,
    impute: bool = False,
    with_loss: bool = True,
    split_every: int = SPLIT_EVERY,
) -> tuple[da.Array, Delayed]:
    """One iteration of ``restarts`` factorizations stacked side by side: one read of X.

    Parameters
    ----------
    X : dask array (n_samples, n_features), row panels
    W : dask array (n_samples, R k), chunked like X's rows: ``[W_1 ... W_R]``
    H : ndarray (R k, n_features): ``[H_1; ...; H_R]``, cast to X's dtype
    restarts : int
        R; ``W.shape[1]`` and ``H.shape[0]`` are multiples of it.
    active : sequence of R bools, optional
        Blocks to update (default all); the others are carried over unchanged.
    solver, l1_w, l2_w, beta, masked, mask, sum_to_one, with_loss
        As :func:`iteration_graph`, for every block.
    impute : bool
        Missing values (Frobenius): EM imputation with ``solver`` instead of masked
        multiplicative updates, see :func:`dnmf.stacked_kernels.stacked_panel_step`.

    Returns
    -------
    W_new : dask array (n_samples, R k)
    partials : Delayed of the reduced partials of :func:`dnmf.stacked_kernels.stacked_panel_step`.

    Notes
    -----
    The k x k Gram matrix each block's W update sees is its own ``H_b H_b^T``: the
    block-diagonal of the stacked ``H H^T``. This is what makes the stacked iteration R
    independent ones (for the Frobenius loss, HALS, MU and ANLS with a block-diagonal Gram
    matrix are exactly the per-block updates).
    """
    if W.shape[1] % restarts or H.shape[0] != W.shape[1]:
        raise ValueError(f"W {W.shape} and H {H.shape} do not hold {restarts} equal blocks")
    active = tuple(bool(a) for a in (active if active is not None else [True] * restarts))
    if not any(active):
        raise ValueError("no active restart to update")
    H = np.ascontiguousarray(H, dtype=X.dtype)
    HHt = block_grams(H, restarts)
    general = beta != 2.0 or masked or mask is not None
    token = tokenize(X.name, W.name, None if mask is None else mask.name, H, restarts, active,
                     solver, l1_w, l2_w, beta, masked, sum_to_one, impute, with_loss)
    func = functools.partial(stacked_panel_step, restarts=restarts, active=active,
                             solver=solver, l1=l1_w, l2=l2_w, beta=beta, masked=masked,
                             sum_to_one=sum_to_one, impute=impute, with_loss=with_loss)
    return panel_map_reduce(X, func, prefix="dnmf-restarts", token=token, W=W,
                            mask=mask if general else None, consts=(H, HHt), with_w=True,
                            split_every=split_every)


def restarts_loss_graph(X: da.Array, W: da.Array, H: np.ndarray, *, restarts: int,
                        beta: float, masked: bool = False, mask: da.Array | None = None,
                        split_every: int = SPLIT_EVERY) -> Delayed:
    """``(β-divergence (R,), squared Frobenius residual (R,), Σ M X² (R,))`` of each stacked
    factorization: one read of X."""
    H = np.ascontiguousarray(H, dtype=X.dtype)
    token = tokenize(X.name, W.name, None if mask is None else mask.name, H, restarts, beta,
                     masked)
    func = functools.partial(stacked_panel_loss, restarts=restarts, beta=beta, masked=masked)
    return panel_map_reduce(X, func, prefix="dnmf-restarts-loss", token=token, W=W, mask=mask,
                            consts=(H,), split_every=split_every)
