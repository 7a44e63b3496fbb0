"""Check X in one pass: sign, finiteness, all-zero rows and columns, and ‖X‖².

Each block is summarised by a small numpy function (:func:`_block_stats`); summaries are
combined across the blocks of a row panel (zero rows need every column) and tree-reduced down
each column of blocks (zero columns need every row). Everything runs in a single
``dask.compute``, so X is read exactly once.

Sparse blocks (``scipy.sparse``, see :mod:`dnmf.io.sparse`) are summarised from their stored
values and column indices only (:func:`_sparse_block_stats`), never densified.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import dask
import dask.array as da
import dask.local
import numpy as np
import scipy.sparse as sp

from dnmf.errors import InputError
from dnmf.io.sparse import scipy_dask_array

__all__ = ["ValidationReport", "check_rank", "validate"]

# Elements per float64 slab when summing squares: bounds the temporary copy of a block.
_SLAB = 1 << 20
# Fan-in of the column-block tree reduction.
_FAN_IN = 8

Chunk = tuple[int, int]


@dataclass(frozen=True)
class ValidationReport:
    """What one pass over X found.

    Attributes
    ----------
    shape : tuple of int
        ``(n_samples, n_features)``.
    dtype : str
    n_chunks : int
        Number of blocks of X.
    n_negative : int
        Finite entries below zero (``-inf`` is counted in ``n_inf``).
    min_value, max_value : float
        Extremes of the finite entries; NaN when there are none.
    first_negative_chunk : tuple of int or None
        Block index of the first block (row-major) holding a negative entry.
    n_nan, n_inf : int
        NaN and ±Inf entries.
    first_nonfinite_chunk : tuple of int or None
        First block holding a NaN or an Inf.
    n_zero_rows, n_zero_cols : int
        Rows and columns whose entries are all exactly zero (allowed; reported only).
    sq_norm : float
        Sum of squares of the finite entries, accumulated in float64.
    total : float
        Sum of the finite entries, in float64 (its mean scales random initializations).
    first_inf_chunk : tuple of int or None
        First block holding an Inf (for messages when NaN is allowed).
    first_negative_at, first_nonfinite_at, first_inf_at : tuple of int or None
        ``(row, column)`` in X of the first such entry (row-major order).

    Notes
    -----
    For sparse X the counts are over the stored values (after summing duplicate entries);
    the implicit zeros count toward ``min_value``/``max_value`` wherever a block is not full,
    so the report equals that of the same matrix stored dense.
    """

    shape: tuple[int, int]
    dtype: str
    n_chunks: int
    n_negative: int
    min_value: float
    max_value: float
    first_negative_chunk: Chunk | None
    n_nan: int
    n_inf: int
    first_nonfinite_chunk: Chunk | None
    n_zero_rows: int
    n_zero_cols: int
    sq_norm: float
    total: float = 0.0
    first_inf_chunk: Chunk | None = None
    first_negative_at: Chunk | None = None
    first_nonfinite_at: Chunk | None = None
    first_inf_at: Chunk | None = None

    def problems(self, *, allow_nan: bool = False) -> list[str]:
        """One-line messages for everything that makes X unusable for NMF.

        Parameters
        ----------
        allow_nan : bool
            NaN marks missing values (``missing="mask"``), so it is not a problem.

        Returns
        -------
        list of str
            Empty when X is usable. All-zero rows and columns are not problems.
        """
        found = []
        if self.n_negative:
            found.append(
                f"X has {self.n_negative:,} negative entries (min {self.min_value:.3g}), the "
                f"first{_where(self.first_negative_at, self.first_negative_chunk)}; NMF needs "
                "X >= 0 — clip or shift the data first"
            )
        n_nan = 0 if allow_nan else self.n_nan
        if n_nan or self.n_inf:
            counts = [f"{n_nan:,} NaN"] if n_nan else []
            counts += [f"{self.n_inf:,} Inf"] if self.n_inf else []
            first = (_where(self.first_nonfinite_at, self.first_nonfinite_chunk) if n_nan
                     else _where(self.first_inf_at, self.first_inf_chunk))
            if n_nan:
                fix = ('fill or drop them, or leave NaN out of the fit with --missing mask '
                       '(missing="mask")')
            elif allow_nan:
                fix = "replace them (with NaN to mask them)"
            else:
                fix = "fill or drop them"
            found.append(
                f"X has {' and '.join(counts)} entries, the first{first}; NMF needs "
                f"finite values — {fix}"
            )
        return found

    def raise_if_invalid(self, *, allow_nan: bool = False) -> None:
        """Raise :class:`~dnmf.errors.InputError` with the first problem, if any.

        Parameters
        ----------
        allow_nan : bool
            As in :meth:`problems`.
        """
        found = self.problems(allow_nan=allow_nan)
        if found:
            raise InputError(found[0])

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists; NaN stays a float)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _where(at: Chunk | None, chunk: Chunk | None) -> str:
    """`` at row R, column C in chunk (i, j)`` for messages."""
    text = f" at row {at[0]:,}, column {at[1]:,}" if at is not None else ""
    return text + (f" in chunk {chunk}" if chunk is not None else "")


class _BlockStats(NamedTuple):
    first_negative_at: Chunk | None  # (row, column) in X of the first negative entry
    first_nonfinite_at: Chunk | None
    first_inf_at: Chunk | None
    n_negative: int
    min_value: float
    max_value: float
    n_nan: int
    n_inf: int
    sq_norm: float
    total: float
    row_nonzero: np.ndarray  # bool per row of the block: any entry != 0 (NaN counts)
    col_nonzero: np.ndarray  # bool per column of the block


class _RowSummary(NamedTuple):
    n_negative: int
    min_value: float
    max_value: float
    first_negative: Chunk | None
    n_nan: int
    n_inf: int
    first_nonfinite: Chunk | None
    first_inf: Chunk | None
    sq_norm: float
    total: float
    n_zero_rows: int


def _sum_squares(values: np.ndarray) -> float:
    """Σ x² in float64 without copying the whole block at once."""
    flat = values.reshape(-1)
    parts = []
    for start in range(0, flat.size, _SLAB):
        slab = flat[start : start + _SLAB].astype(np.float64)
        # numpy's pairwise summation keeps the float64 rounding error at O(log n) eps.
        with np.errstate(over="ignore"):  # an infinite norm is reported, not warned about
            parts.append(float(np.square(slab, out=slab).sum()))
    return math.fsum(parts)


def _first_at(mask: np.ndarray, offset: Chunk) -> Chunk:
    """Position in X of the first (row-major) True entry of a block's mask."""
    r, c = np.unravel_index(int(np.argmax(mask)), mask.shape)
    return (int(r) + offset[0], int(c) + offset[1])


def _block_stats(block: Any, offset: Chunk = (0, 0)) -> _BlockStats:
    """Summarise one block of X (pure numpy; runs on the workers)."""
    if sp.issparse(block):
        return _sparse_block_stats(block, offset)
    block = np.asarray(block)
    n_nan = n_inf = 0
    first_nonfinite_at = first_inf_at = first_negative_at = None
    values = block
    if block.dtype.kind in "fc":
        finite = np.isfinite(block)
        n_finite = int(np.count_nonzero(finite))
        if n_finite != block.size:
            n_nan = int(np.count_nonzero(np.isnan(block)))
            n_inf = block.size - n_finite - n_nan
            values = block[finite]  # 1-D copy of the finite entries
            first_nonfinite_at = _first_at(~finite, offset)
            if n_inf:
                first_inf_at = _first_at(np.isinf(block), offset)
    elif block.dtype.kind == "b":
        values = block.astype(np.uint8)
    if values.size:
        n_negative = int(np.count_nonzero(values < 0))
        min_value, max_value = float(values.min()), float(values.max())
        if n_negative:
            first_negative_at = _first_at(block < 0, offset)  # NaN < 0 is False
    else:
        n_negative, min_value, max_value = 0, math.nan, math.nan
    return _BlockStats(
        first_negative_at=first_negative_at,
        first_nonfinite_at=first_nonfinite_at,
        first_inf_at=first_inf_at,
        n_negative=n_negative,
        min_value=min_value,
        max_value=max_value,
        n_nan=n_nan,
        n_inf=n_inf,
        sq_norm=_sum_squares(values),
        total=float(values.sum(dtype=np.float64)),
        row_nonzero=block.any(axis=1),
        col_nonzero=block.any(axis=0),
    )


def _sparse_block_stats(block: Any, offset: Chunk = (0, 0)) -> _BlockStats:
    """Summarise one sparse block from its stored values, as :func:`_block_stats` would the
    same block dense (pure numpy and scipy; never densifies).

    Duplicate entries are summed first (on a copy, only for blocks not in canonical form), so
    every stored value is one entry of X. Positions come from ``indptr`` (row) and
    ``indices`` (column) of the first stored entry that matches, which is the row-major first
    once the indices are sorted.
    """
    csr = block.tocsr()
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()  # also sorts the indices of each row
    n_rows, n_cols = csr.shape
    indptr = csr.indptr
    data = csr.data[: indptr[-1]]
    indices = csr.indices[: indptr[-1]]
    has_implicit_zeros = data.size < n_rows * n_cols

    def first_at(mask: np.ndarray) -> Chunk:
        k = int(np.argmax(mask))
        row = int(np.searchsorted(indptr, k, side="right")) - 1
        return (row + offset[0], int(indices[k]) + offset[1])

    n_nan = n_inf = 0
    first_nonfinite_at = first_inf_at = first_negative_at = None
    values = data
    if data.dtype.kind in "fc":
        finite = np.isfinite(data)
        n_finite = int(np.count_nonzero(finite))
        if n_finite != data.size:
            n_nan = int(np.count_nonzero(np.isnan(data)))
            n_inf = data.size - n_finite - n_nan
            values = data[finite]
            first_nonfinite_at = first_at(~finite)
            if n_inf:
                first_inf_at = first_at(np.isinf(data))
    elif data.dtype.kind == "b":
        values = data.astype(np.uint8)
    n_negative = int(np.count_nonzero(values < 0)) if values.size else 0
    if n_negative:
        first_negative_at = first_at(data < 0)  # NaN < 0 is False
    extremes = [float(values.min()), float(values.max())] if values.size else []
    if has_implicit_zeros:
        extremes.append(0.0)
    min_value = min(extremes, default=math.nan)
    max_value = max(extremes, default=math.nan)
    nonzero = data != 0  # NaN != 0: a NaN entry makes its row and column non-zero, as dense
    if nonzero.all():
        row_nonzero = np.diff(indptr) > 0
        col_nonzero = np.bincount(indices, minlength=n_cols) > 0
    else:
        ends = np.concatenate(([0], np.cumsum(nonzero)))
        row_nonzero = ends[indptr[1:]] > ends[indptr[:-1]]
        col_nonzero = np.bincount(indices[nonzero], minlength=n_cols) > 0
    return _BlockStats(
        first_negative_at=first_negative_at,
        first_nonfinite_at=first_nonfinite_at,
        first_inf_at=first_inf_at,
        n_negative=n_negative,
        min_value=min_value,
        max_value=max_value,
        n_nan=n_nan,
        n_inf=n_inf,
        sq_norm=_sum_squares(values),
        total=float(values.sum(dtype=np.float64)),
        row_nonzero=row_nonzero,
        col_nonzero=col_nonzero[:n_cols],
    )


def _first(indices: list[Chunk]) -> Chunk | None:
    return min(indices) if indices else None


def _combine_row(*stats: _BlockStats) -> _RowSummary:
    """Merge the blocks of one row panel; a row is zero only if it is zero in every block."""
    row_nonzero = np.logical_or.reduce([s.row_nonzero for s in stats])
    finite_min = [s.min_value for s in stats if not math.isnan(s.min_value)]
    finite_max = [s.max_value for s in stats if not math.isnan(s.max_value)]
    return _RowSummary(
        n_negative=sum(s.n_negative for s in stats),
        min_value=min(finite_min, default=math.nan),
        max_value=max(finite_max, default=math.nan),
        first_negative=_first([s.first_negative_at for s in stats if s.n_negative]),
        n_nan=sum(s.n_nan for s in stats),
        n_inf=sum(s.n_inf for s in stats),
        first_nonfinite=_first([s.first_nonfinite_at for s in stats if s.n_nan or s.n_inf]),
        first_inf=_first([s.first_inf_at for s in stats if s.n_inf]),
        sq_norm=math.fsum(s.sq_norm for s in stats),
        total=math.fsum(s.total for s in stats),
        n_zero_rows=int(row_nonzero.size - np.count_nonzero(row_nonzero)),
    )


def _combine_cols(*parts: _BlockStats | np.ndarray) -> np.ndarray:
    """OR the per-column "any non-zero" flags of blocks stacked in one column of blocks."""
    flags = [p.col_nonzero if isinstance(p, _BlockStats) else p for p in parts]
    return np.logical_or.reduce(flags)


def _count_zero_cols(col_nonzero: np.ndarray) -> int:
    return int(col_nonzero.size - np.count_nonzero(col_nonzero))


def validate(X: Any, *, scheduler: Any = None, stored_chunks: tuple[int, ...] | None = None,
             optimize_graph: bool = True) -> ValidationReport:
    """Check X for NMF in one pass and measure ‖X‖².

    Parameters
    ----------
    X : dask.array.Array, shape (n_samples, n_features)
        Lazy input (a :class:`~dnmf.io.MatrixSource`, numpy array or ``scipy.sparse``
        matrix is accepted too). Blocks may be ``scipy.sparse`` matrices: they are summarised
        from their stored values, never densified.
    scheduler : optional
        Anything ``dask.compute(scheduler=...)`` accepts: ``None`` (the configured default),
        a name such as ``"threads"`` or ``"sync"``, or a ``distributed.Client``.
    stored_chunks : tuple of int, optional
        The chunk shape of the store X was read from: messages then name the stored chunk of
        the first bad entry (default: X's own chunks).
    optimize_graph : bool
        ``False`` when X's graph is already optimised and is submitted again later (as the
        iterations do): re-optimising it would give the same keys other tasks.

    Returns
    -------
    ValidationReport
        Counts and extremes; call :meth:`ValidationReport.raise_if_invalid` to enforce them.

    Notes
    -----
    Exactly one ``dask.compute`` call; each block of X is read once. The driver receives a
    few numbers per row panel and one count per column of blocks, never a row- or
    column-length vector.

    Examples
    --------
    >>> import dask.array as da
    >>> report = validate(da.ones((6, 4), chunks=(3, 2)), scheduler="sync")
    >>> report.n_negative, report.sq_norm, report.problems()
    (0, 24.0, [])
    """
    array = getattr(X, "array", X)  # a MatrixSource
    if isinstance(array, np.ndarray) and array.ndim == 2 and (
            array.nbytes <= ONE_BLOCK_HERE_MAX_BYTES):
        # a small X in memory (an in-process fit's): one block, summarised here, no graph
        only = _block_stats(array, (0, 0))
        return _report(array, [_combine_row(only)], [_count_zero_cols(_combine_cols(only))],
                       np.array([0, array.shape[0]]), np.array([0, array.shape[1]]),
                       stored_chunks)
    if sp.issparse(array):
        array = scipy_dask_array(array)
    if not isinstance(array, da.Array):
        array = da.asarray(array)
    if array.ndim != 2:
        raise InputError(
            f"X must be 2-D (n_samples, n_features); got shape {array.shape} — reshape it or "
            "pick a 2-D variable with --var"
        )
    blocks = array.to_delayed()
    n_row_blocks, n_col_blocks = blocks.shape
    row_starts = np.cumsum((0, *array.chunks[0]))
    col_starts = np.cumsum((0, *array.chunks[1]))
    if blocks.size == 1 and array.nbytes <= ONE_BLOCK_HERE_MAX_BYTES and _here(scheduler):
        # one small block (an in-memory X): the same summaries, computed here without a graph
        # and a thread pool, which cost more than the pass itself
        # one task: in this thread (the configured default when none is named)
        here = None if scheduler is None else dask.local.get_sync
        (block,) = dask.compute(blocks[0, 0], scheduler=here, optimize_graph=optimize_graph)
        only = _block_stats(block, (0, 0))
        row_summaries, zero_cols = [_combine_row(only)], [_count_zero_cols(_combine_cols(only))]
    else:
        row_summaries, zero_cols = _summaries(blocks, row_starts, col_starts, scheduler,
                                              optimize_graph)
    return _report(array, row_summaries, zero_cols, row_starts, col_starts, stored_chunks)


def _here(scheduler: Any) -> bool:
    """Whether ``scheduler`` runs in this process (a name, dask's own ``get``, or None)."""
    if scheduler is None or scheduler in ("threads", "threading", "sync", "synchronous",
                                          "single-threaded"):
        return True
    return callable(scheduler) and getattr(scheduler, "__module__", "") in (
        "dask.threaded", "dask.local", "dnmf.cluster")

#: A single block up to this size is checked in this process (see :func:`validate`).
ONE_BLOCK_HERE_MAX_BYTES = 64 * 2**20


def _summaries(blocks: np.ndarray, row_starts: np.ndarray, col_starts: np.ndarray,
               scheduler: Any, optimize_graph: bool) -> tuple[list, list]:
    """The per-row-panel summaries and per-column-of-blocks zero-column counts of
    :func:`validate`, in one ``dask.compute``."""
    n_row_blocks, n_col_blocks = blocks.shape
    stats_fn = dask.delayed(_block_stats, pure=True)
    stats = [
        [stats_fn(blocks[i, j], (int(row_starts[i]), int(col_starts[j])))
         for j in range(n_col_blocks)]
        for i in range(n_row_blocks)
    ]
    rows = [dask.delayed(_combine_row, pure=True)(*stats[i]) for i in range(n_row_blocks)]
    cols = []
    for j in range(n_col_blocks):
        level: list[Any] = [stats[i][j] for i in range(n_row_blocks)]
        while len(level) > 1:
            level = [
                dask.delayed(_combine_cols, pure=True)(*level[k : k + _FAN_IN])
                for k in range(0, len(level), _FAN_IN)
            ]
        top = level[0] if n_row_blocks > 1 else dask.delayed(_combine_cols, pure=True)(level[0])
        cols.append(dask.delayed(_count_zero_cols, pure=True)(top))
    row_summaries, zero_cols = dask.compute(rows, cols, scheduler=scheduler,
                                            optimize_graph=optimize_graph)
    return list(row_summaries), list(zero_cols)


def _report(array: da.Array, row_summaries: list, zero_cols: list, row_starts: np.ndarray,
            col_starts: np.ndarray, stored_chunks: tuple[int, ...] | None) -> ValidationReport:
    """:func:`validate`'s report from the summaries."""
    n_row_blocks, n_col_blocks = len(row_starts) - 1, len(col_starts) - 1

    def first(attr: str) -> Chunk | None:
        return _first([c for r in row_summaries if (c := getattr(r, attr)) is not None])

    def chunk_of(pos: Chunk | None) -> Chunk | None:
        if pos is None:
            return None
        if stored_chunks:
            return (pos[0] // stored_chunks[0], pos[1] // stored_chunks[1])
        return (int(np.searchsorted(row_starts, pos[0], side="right") - 1),
                int(np.searchsorted(col_starts, pos[1], side="right") - 1))

    finite_min = [r.min_value for r in row_summaries if not math.isnan(r.min_value)]
    finite_max = [r.max_value for r in row_summaries if not math.isnan(r.max_value)]
    return ValidationReport(
        shape=(int(array.shape[0]), int(array.shape[1])),
        dtype=str(array.dtype),
        n_chunks=n_row_blocks * n_col_blocks,
        n_negative=sum(r.n_negative for r in row_summaries),
        min_value=min(finite_min, default=math.nan),
        max_value=max(finite_max, default=math.nan),
        first_negative_chunk=chunk_of(first("first_negative")),
        first_negative_at=first("first_negative"),
        n_nan=sum(r.n_nan for r in row_summaries),
        n_inf=sum(r.n_inf for r in row_summaries),
        first_nonfinite_chunk=chunk_of(first("first_nonfinite")),
        first_nonfinite_at=first("first_nonfinite"),
        n_zero_rows=sum(r.n_zero_rows for r in row_summaries),
        n_zero_cols=sum(zero_cols),
        sq_norm=math.fsum(r.sq_norm for r in row_summaries),
        total=math.fsum(r.total for r in row_summaries),
        first_inf_chunk=chunk_of(first("first_inf")),
        first_inf_at=first("first_inf"),
    )


def check_rank(shape: tuple[int, ...], k: Any) -> int:
    """Check that rank ``k`` is possible for X of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        ``(n_samples, n_features)``.
    k : int
        Requested number of components.

    Returns
    -------
    int
        ``k`` as a Python int.

    Raises
    ------
    InputError
        Unless ``1 <= k <= min(shape)``.
    """
    limit = min(int(s) for s in shape)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise InputError(f"rank k={k!r} must be an integer: choose 1 <= k <= {limit}")
    if not 1 <= k <= limit:
        shape_text = tuple(int(s) for s in shape)
        raise InputError(
            f"rank k={k} is impossible for X of shape {shape_text}: choose 1 <= k <= {limit}"
        )
    return int(k)
