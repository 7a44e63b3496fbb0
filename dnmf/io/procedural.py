"""A procedural input: X generated chunk by chunk from a seeded planted model, no storage.

``planted_source(n_samples, n_features, k, seed=...)`` is a :class:`MatrixSource` whose every
block is computed from its row range alone: ``X = max(W_true H_true + E, 0)`` with

* ``H_true`` (k x n_features), uniform on [0, 1), drawn from ``seed`` alone;
* ``W_true``'s rows and the noise ``E``'s rows, drawn in fixed blocks of ``block_rows`` rows,
  each block from its own seed ``(seed, block index)`` — so a row's values do not depend on
  how X is chunked, only on ``block_rows``;
* ``E`` Gaussian with standard deviation ``noise * s``, ``s² = E[(W H)²] = k/36 + k²/16``
  the planted product's mean square (uniform factors), so that ``noise`` is the relative
  error of the planted factors: ``||X - W_true H_true||_F / ||W_true H_true||_F ≈ noise``.

A graph over it holds one small task per panel and nothing else, which is what lets the
benchmarks build and run fits of 10^4-10^5 panels on one machine (and tests fit a known
model without writing a file).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from dnmf.errors import InputError
from dnmf.io.source import MatrixSource

__all__ = ["BLOCK_ROWS", "planted_block", "planted_h", "planted_source", "planted_w",
           "signal_rms"]

#: Rows drawn from one seed: the unit of chunking-invariance (any chunking gives the same X).
BLOCK_ROWS = 256
# the stream of each factor within a block's seed
_W, _NOISE, _H = 1, 2, 0


def signal_rms(k: int) -> float:
    """``sqrt(E[(W H)_ij²])`` for W, H uniform on [0, 1): ``k Var(wh) + (k E[wh])²``."""
    return math.sqrt(k * (1 / 9 - 1 / 16) + k * k / 16)


@functools.lru_cache(maxsize=8)
def planted_h(seed: int, k: int, n_features: int) -> np.ndarray:
    """``H_true`` (k, n_features) float64, from ``seed`` alone (cached: every panel task of a
    process needs it)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_H,)))
    H = rng.random((k, n_features))
    H.setflags(write=False)
    return H


def _block_rng(seed: int, stream: int, block: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, block)))


def planted_w(start: int, stop: int, k: int, *, seed: int,
              block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """Rows ``start:stop`` of ``W_true`` (float64), drawn by blocks of ``block_rows`` rows."""
    out = np.empty((stop - start, k))
    for b in range(start // block_rows, (stop - 1) // block_rows + 1):
        lo, hi = max(start, b * block_rows), min(stop, (b + 1) * block_rows)
        block = _block_rng(seed, _W, b).random((block_rows, k))
        out[lo - start:hi - start] = block[lo - b * block_rows:hi - b * block_rows]
    return out


def planted_block(start: int, stop: int, n_features: int, k: int, *, seed: int,
                  noise: float = 0.0, dtype: Any = np.float32,
                  block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """Rows ``start:stop`` of the planted X, in ``dtype`` (the chunk function of
    :func:`planted_source`).

    Each block of ``block_rows`` rows is computed whole, in float64, then cast and cut: the
    same arithmetic whatever the chunking (a BLAS product of another shape may round
    differently), and no float64 copy of the whole panel (a panel's task holds only X_i).
    """
    out = np.empty((stop - start, n_features), dtype=dtype)
    H = planted_h(seed, k, n_features)
    sigma = noise * signal_rms(k)
    for b in range(start // block_rows, (stop - 1) // block_rows + 1):
        lo, hi = max(start, b * block_rows), min(stop, (b + 1) * block_rows)
        block = _block_rng(seed, _W, b).random((block_rows, k)) @ H
        if noise:
            block += sigma * _block_rng(seed, _NOISE, b).standard_normal((block_rows,
                                                                          n_features))
            np.maximum(block, 0.0, out=block)
        out[lo - start:hi - start] = block[lo - b * block_rows:hi - b * block_rows]
    return out


def _row_chunks(n_samples: int, chunks: Any) -> tuple[int, ...]:
    if isinstance(chunks, int | np.integer):
        rows = int(chunks)
        if rows < 1:
            raise InputError(f"rows per panel must be at least 1, got {rows}")
        full, rem = divmod(n_samples, rows)
        return (rows,) * full + ((rem,) if rem else ())
    out = tuple(int(c) for c in chunks)
    if sum(out) != n_samples or min(out) < 1:
        raise InputError(f"row chunks {out} do not cover {n_samples:,} rows")
    return out


def planted_array(n_samples: int, n_features: int, k: int, *, seed: int, noise: float,
                  dtype: Any, row_chunks: tuple[int, ...],
                  block_rows: int = BLOCK_ROWS) -> da.Array:
    """The planted X as a dask array of full-width row panels: one task per panel, no input."""
    dtype = np.dtype(dtype)
    token = tokenize(n_samples, n_features, k, seed, noise, dtype.str, row_chunks, block_rows)
    name = f"dnmf-planted-{token}"
    func = functools.partial(planted_block, n_features=n_features, k=k, seed=seed, noise=noise,
                             dtype=dtype, block_rows=block_rows)
    starts = np.cumsum((0, *row_chunks[:-1]))
    layer = {(name, i, 0): (func, int(s), int(s + r))
             for i, (s, r) in enumerate(zip(starts, row_chunks, strict=True))}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return da.Array(graph, name, chunks=(row_chunks, (n_features,)), dtype=dtype)


def planted_source(n_samples: int, n_features: int, k: int, *, seed: int = 0,
                   noise: float = 0.0, dtype: Any = np.float32, chunks: Any = None,
                   block_rows: int = BLOCK_ROWS) -> MatrixSource:
    """X from a seeded planted NMF model, generated per chunk (nothing stored or held).

    Parameters
    ----------
    n_samples, n_features : int
    k : int
        Rank of the planted model.
    seed : int
        Same seed and rows give the same values, whatever the chunking.
    noise : float
        Relative noise level: the planted factors' relative error (see the module notes).
    dtype : {"float32", "float64"}
    chunks : int or tuple of int, optional
        Rows per panel (or each panel's rows); default panels of about 64 MiB, in whole
        blocks of ``block_rows``. The fit's chunk plan re-cuts X at any row through
        ``in_row_panels`` (no rechunk: each panel is generated as such).
    block_rows : int
        Rows drawn from one seed; a multiple of it per panel wastes no draws of the noise.

    Returns
    -------
    MatrixSource
        ``format="procedural"``, ``path=None``; ``factorize`` and ``NMF.fit`` take it as X.
    """
    if min(n_samples, n_features, k) < 1:
        raise InputError(f"planted X needs positive sizes, got {n_samples} x {n_features}, "
                         f"k={k}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise InputError(f"dtype must be float32 or float64, got {dtype}")
    if noise < 0:
        raise InputError(f"noise must be >= 0, got {noise}")
    itemsize = np.dtype(dtype).itemsize
    if chunks is None:
        rows = max(1, (64 * 2**20) // (n_features * itemsize))
        chunks = max(block_rows, rows // block_rows * block_rows)
    row_chunks = _row_chunks(n_samples, chunks)
    make = functools.partial(planted_array, n_samples, n_features, k, seed=seed, noise=noise,
                             dtype=dtype, block_rows=block_rows)
    return MatrixSource(
        make(row_chunks=row_chunks), None, None, "procedural", np.dtype(dtype).name,
        notes=(f"procedural planted model: k={k}, seed={seed}, relative noise {noise:g}",),
        in_row_panels=lambda rows: make(row_chunks=tuple(int(r) for r in rows)),
    )
