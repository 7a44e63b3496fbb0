"""Endmember extraction on its own: k pixels of a cube by SPA, VCA, N-FINDR or ATGP.

Every method is a sequence of passes over the pixel matrix's row panels in which each panel
returns its best candidate row(s) and only those travel (:mod:`dnmf.separable` holds the
block kernels; SPA and VCA are :func:`dnmf.init.endmember_pixels`). The spectra returned are
the chosen pixels denoised: projected on the k-dimensional signal subspace and clipped at 0.
"""

from __future__ import annotations

import csv
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from dnmf import kernels, separable
from dnmf.errors import InputError
from dnmf.init import endmember_pixels

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "Endmembers",
    "extract_endmembers",
    "extract_rows",
    "write_endmembers",
]

METHODS = ("spa", "vca", "nfindr", "atgp")
#: The default, from ``benchmarks/endmembers.py`` (benchmarks/README.md): SPA had the lowest
#: mean angle over the five scenes (0.56°; VCA 0.63, N-FINDR 0.64, ATGP 2.47) in k passes,
#: with no seed.
DEFAULT_METHOD = "spa"
#: N-FINDR stops after this many passes per endmember even if a swap still grows the volume.
NFINDR_PASSES_PER_ENDMEMBER = 10


def _panel_results(X: da.Array, kernel: Any, *args: Any) -> list[Any]:
    """One pass: the kernel's result for every row panel (aligned, as every dnmf task)."""
    panels = list(X.to_delayed(optimize_graph=False).ravel())
    starts = np.cumsum((0, *X.chunks[0][:-1])).tolist()
    call = functools.partial(kernels.call_aligned, kernel)
    tasks = [dask.delayed(call, pure=True)(p, *args, s) for p, s in zip(panels, starts,
                                                                          strict=True)]
    return list(dask.compute(*tasks, optimize_graph=False))


def _denoise(rows: np.ndarray, U: np.ndarray) -> np.ndarray:
    return np.maximum((rows @ U) @ U.T, 0.0)


def _atgp(X: da.Array, k: int, U: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    basis = np.zeros((X.shape[1], 0))
    rows, index = [], []
    for _ in range(k):
        best = separable.best_candidate(_panel_results(X, separable.atgp_candidate, basis))
        basis, norm = separable.extend_basis(basis, best[3])
        if best[1] < 0 or best[1] in index or norm <= 1e-12 * float(np.linalg.norm(best[3])):
            raise InputError(f"ATGP found only {len(index)} linearly independent pixels for "
                             f"k = {k} — lower -k")
        rows.append(best[2])
        index.append(best[1])
    return _denoise(np.vstack(rows), U), np.asarray(index, dtype=np.int64), k


def _nfindr(X: da.Array, k: int, U: np.ndarray, gram: np.ndarray, mean: np.ndarray,
            seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    n = int(X.shape[0])
    if k < 2:
        return _atgp(X, k, U)
    cov = gram / n - np.outer(mean, mean)
    V = separable.signal_subspace(cov, k - 1)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4,)))
    index = np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
    rows = np.asarray(X[index].compute(), dtype=np.float64)
    Y = (rows - mean) @ V
    passes = 0
    while passes < NFINDR_PASSES_PER_ENDMEMBER * k:
        passes += 1
        C = separable.simplex_cofactors(Y)
        volume = abs(float(C[:, 0] @ np.concatenate([[1.0], Y[0]])))
        results = _panel_results(X, separable.nfindr_candidates, V, mean, C)
        best = [separable.best_candidate([r[j] for r in results]) for j in range(k)]
        j = int(np.argmax([b[0] for b in best]))
        if best[j][0] <= volume * (1.0 + 1e-9) or best[j][1] in index:
            break
        index[j], rows[j], Y[j] = best[j][1], best[j][2], best[j][3]
    return _denoise(rows, U), index, passes


def extract_rows(X: da.Array, k: int, *, method: str = DEFAULT_METHOD, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """k endmember rows of a pixel matrix.

    Parameters
    ----------
    X : dask array (n_pixels, n_bands), full-width row panels
    k : int
    method : {"spa", "vca", "nfindr", "atgp"}
        ``spa`` and ``vca``: :func:`dnmf.init.endmember_pixels`. ``nfindr``: N-FINDR on the
        (k-1)-dimensional signal subspace (leading eigenvectors of the covariance) from k
        seeded random pixels; each pass finds, for every vertex, the pixel whose swap in gives
        the largest simplex volume, and makes the best swap; it stops when no swap grows the
        volume (at most ``10 k`` passes). ``atgp``: automatic target generation on the full
        bands, k passes.
    seed : int
        VCA's directions and N-FINDR's starting pixels.

    Returns
    -------
    (spectra (k, n_bands), index (k,), passes)
        Denoised spectra, the rows of X they came from, and the number of passes over X
        (besides the one for the signal subspace).
    """
    if method not in METHODS:
        raise InputError(f"unknown endmember method {method!r}: choose one of "
                         f"{', '.join(METHODS)}")
    if len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})
    if method in ("spa", "vca"):
        rows, index = endmember_pixels(X, k, method=method, seed=seed)
        return rows, index, k
    X64 = X.astype(np.float64)
    gram, mean = dask.compute(da.dot(X64.T, X64), X64.mean(axis=0))
    U = separable.signal_subspace(gram, k)
    if method == "atgp":
        return _atgp(X, k, U)
    return _nfindr(X, k, U, np.asarray(gram), np.asarray(mean), seed)


@dataclass(frozen=True)
class Endmembers:
    """Extracted endmembers of a cube and where they came from.

    Attributes
    ----------
    spectra : ndarray (k, n_bands), float64
        NaN at the bands left out.
    wavelength : ndarray (n_bands,) or None
    names : tuple of str
    pixels : ndarray (k, 2), int64
        (row, column) of each pixel in the cube (0-based).
    coords : ndarray (k, 2), float64
        The cube's (y, x) coordinate values at those pixels (the indices without coordinates).
    method : str
    passes : int
    wall_time_s : float
    """

    spectra: np.ndarray
    wavelength: np.ndarray | None
    names: tuple[str, ...]
    pixels: np.ndarray
    coords: np.ndarray
    method: str
    passes: int
    wall_time_s: float


def _pixel_positions(pm: Any, index: np.ndarray) -> np.ndarray:
    """(row, col) in the cube of rows of X: the tile by the valid counts, then the tile's mask
    (kept by the counting pass: no data is read)."""
    counts = pm.valid_counts.ravel()
    ends = np.cumsum(counts)
    mask = pm.valid_mask()
    y0 = np.cumsum((0, *pm.tile_chunks[0][:-1]))
    x0 = np.cumsum((0, *pm.tile_chunks[1][:-1]))
    n1 = len(pm.tile_chunks[1])
    out = np.empty((len(index), 2), dtype=np.int64)
    for e, r in enumerate(index):
        t = int(np.searchsorted(ends, r, side="right"))
        i, j = divmod(t, n1)
        offset = int(r - (ends[t] - counts[t]))
        tile = np.asarray(mask.blocks[i, j].compute())
        yy, xx = np.nonzero(tile)  # row-major, the order of X's rows within a tile
        out[e] = (y0[i] + yy[offset], x0[j] + xx[offset])
    return out


def extract_endmembers(cube: Any, k: int, *, method: str = DEFAULT_METHOD, seed: int = 0,
                       var: str | None = None, band_dim: str | None = None,
                       bad_bands: Any = None, scheduler: Any = "auto", client: Any = None,
                       workers: int | None = None, memory_limit: Any = None) -> Endmembers:
    """Extract k endmembers of a cube (``dnmf endmembers``).

    Parameters
    ----------
    cube : as for :func:`dnmf.hyperspectral.unmix.unmix`
    k : int
    method : {"spa", "vca", "nfindr", "atgp"}
        See :func:`extract_rows`.
    seed, var, band_dim, bad_bands, scheduler, client, workers, memory_limit
        As for :func:`~dnmf.hyperspectral.unmix.unmix`.

    Returns
    -------
    Endmembers
    """
    from dnmf.cluster import execution_context
    from dnmf.hyperspectral.cube import open_cube
    from dnmf.hyperspectral.prepare import pixel_matrix, resolve_bad_bands

    t0 = time.perf_counter()
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"-k must be an integer >= 1; got {k!r}")
    if method not in METHODS:
        raise InputError(f"unknown endmember method {method!r}: choose one of "
                         f"{', '.join(METHODS)}")
    data = open_cube(cube, var=var, band_dim=band_dim)
    keep = resolve_bad_bands(data, bad_bands)
    with execution_context(scheduler, x_nbytes=int(data.nbytes), workers=workers,
                           memory_limit=memory_limit, client=client) as ctx, ctx.activate():
        pm = pixel_matrix(data, keep)
        if k > min(pm.n_valid, int(keep.sum())):
            raise InputError(f"{k} endmembers is more than the {int(keep.sum())} bands kept "
                             f"or the {pm.n_valid} valid pixels allow — lower -k")
        rows, index, passes = extract_rows(pm.X, int(k), method=method, seed=seed)
        pixels = _pixel_positions(pm, index)
    ydim, xdim = pm.spatial_dims
    coords = np.column_stack([
        np.asarray(data.coords[d].values, dtype=np.float64)[pixels[:, a]]
        if d in data.coords else pixels[:, a].astype(np.float64)
        for a, d in enumerate((ydim, xdim))])
    wavelength = (np.asarray(data.coords["wavelength"].values, dtype=np.float64)
                  if "wavelength" in data.coords else None)
    names = tuple(f"endmember {e} at row {r} col {c}" for e, (r, c) in enumerate(pixels))
    return Endmembers(spectra=pm.expand_bands(rows).astype(np.float64), wavelength=wavelength,
                      names=names, pixels=pixels, coords=coords, method=method, passes=passes,
                      wall_time_s=time.perf_counter() - t0)


def write_endmembers(result: Endmembers, out: str | os.PathLike[str], *,
                     overwrite: bool = False) -> list[Path]:
    """Write ``OUT.sli`` (+ ``OUT.hdr``), ``OUT.csv`` (the spectra, readable as a library)
    and ``OUT.pixels.csv`` (endmember, name, row, col, y, x). ``OUT`` may end in ``.sli``.

    Raises
    ------
    InputError
        A file exists and ``overwrite`` is False, or the cube has no wavelengths.
    """
    from dnmf.hyperspectral.library import SpectralLibrary, write_csv, write_sli

    base = Path(os.fspath(out)).expanduser()
    if base.suffix.lower() in (".sli", ".csv", ".hdr"):
        base = base.with_suffix("")
    paths = [base.with_name(base.name + ext) for ext in (".sli", ".hdr", ".csv", ".pixels.csv")]
    if result.wavelength is None:
        raise InputError("a spectral library needs band wavelengths and the cube has none — "
                         "add a wavelength coordinate to the input")
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]} exists — add --overwrite to replace it")
    base.parent.mkdir(parents=True, exist_ok=True)
    lib = SpectralLibrary(spectra=result.spectra, wavelength=result.wavelength,
                          names=result.names, source=str(base))
    write_sli(paths[0], lib)
    write_csv(paths[2], lib)
    with paths[3].open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["endmember", "name", "row", "col", "y", "x"])
        for e, name in enumerate(result.names):
            (r, c), (y, x) = result.pixels[e], result.coords[e]
            w.writerow([e, name, int(r), int(c), f"{y:.10g}", f"{x:.10g}"])
    return paths
