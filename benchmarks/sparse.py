"""Sparse bag-of-words NMF: dnmf against gensim's ``Nmf`` and scikit-learn on planted corpora.

``python -m benchmarks.sparse [--quick] [--skip-slow] [--large] [--only NAME ...]
[--corpus N_DOCS N_TERMS K] [--blas-threads N]``

Each corpus is drawn by :func:`benchmarks.corpus.planted_corpus` (k planted topics, cached under
``benchmarks/data/``). Every method runs **in a fresh subprocess** that imports its library,
loads X (CSR, float32 counts) and fits, timed (the fit alone); the process's peak resident
memory (``VmHWM``, see :func:`child`) is its peak, and its resident memory after the
imports and loading X is reported beside it. The parent then scores each method's topics H
(k x n_terms, rows normalised to sum to one), the same way for every method and untimed:

- **KL per token**: document weights refitted with H fixed by :data:`REFIT_ITER`
  multiplicative updates of the generalized KL divergence (only at the non-zeros of X), then
  ``D(X || W H)`` over the tokens of the scored documents: a fixed random sample of documents,
  the same for every method (the refit is per document, so the sample's score is exact for its
  documents, and differences between methods are paired);
- **relative Frobenius error** ``||X - W H||_F / ||X||_F`` over all of X after a Frobenius refit
  of W (:data:`HALS_SWEEPS` HALS sweeps from the Gram matrices, error by the Gram identity);
- **matched cosine**: the mean cosine similarity between the method's topics and the planted
  ones, matched one to one by the Hungarian algorithm.

Methods (:data:`METHODS`): gensim ``Nmf`` (one pass, chunksize 2000, its defaults otherwise)
fed a scipy CSC matrix (terms x documents, ``X.T`` of the CSR matrix: no copy) and fed a
streamed bag-of-words corpus (``Sparse2Corpus``); scikit-learn ``NMF`` (KL multiplicative
updates, 40 iterations; ``cd``) and ``MiniBatchNMF`` (KL); dnmf in several configurations.
``--skip-slow`` leaves out scikit-learn's full-batch solvers; ``--large`` adds a 1,000,000 x
100,000 corpus to the full profile; ``--only`` runs the methods whose names contain one of the
given strings; ``--corpus`` replaces the profile's corpora (report ``sparse-<N>x<M>-k<K>``).

Notes
-----
BLAS threads. Every fit process runs with ``OPENBLAS_NUM_THREADS=1`` (and ``OMP_``/``MKL_``) by
default: on the shared 2-core development machine, multi-threaded OpenBLAS stalls on small
products whenever another process holds a core (``W.T @ W`` of 20,000 x 20 took 0.4 ms on one
thread and 744 ms on two at load 5; gensim's fit of a 10,000-document corpus 0.7 s against
3.8 s, MiniBatchNMF 82 s against 226 s), so library defaults measured the load, not the
methods. ``--blas-threads 0`` keeps the library defaults. dnmf sets its own BLAS threads per
task inside its process (``dnmf.cluster.blas_threads_for``: two when X is one panel).

The headline dnmf row is dnmf's defaults (hals, nndsvda, tol 1e-4) with X handed over as the
scipy matrix: dnmf cuts it into CSR panels of about 1 M non-zeros itself (two or more per
thread) as views of the matrix, without copying it. What made it fast and lean (measured on
the 200,000 x 20,000 corpus, one process, 2 threads):

- NNDSVD from a randomized SVD on the row panels (:func:`dnmf.init.truncated_svd`, 3 reads):
  ``dask.array.linalg.svd_compressed`` read X 6 times and stacked the sparse panels into one
  single-threaded matrix; the initialisation went from 3.3 s and +480 MB to 1.5 s and +110 MB;
- panels of an in-memory matrix as views scipy does not copy, and the chunk plan re-cutting a
  CSR source rather than rechunking it (dask's rechunk copied X: +140 MB);
- the final loss pass by float64 row blocks instead of a float64 copy of each panel;
- no ``distributed`` import for in-process schedulers and no ``h5py`` import without an
  HDF5 file (-23 MB of baseline).

Before these, the defaults took 9.1 s at 820 MB (2.9 x gensim's memory), and tol 1e-3 was
the headline (6.9 s, but matched cosine 0.915 against gensim's 0.925). The rows with
``panel_nnz`` hand X over as a dask array of CSR panels instead (same panels).

Results go to ``benchmarks/results/sparse-<profile>.json``, ``.md`` and ``.png`` (seconds against
KL per token).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment

from benchmarks.common import RESULTS, new_report, parse_profile, save_report, status_mb
from benchmarks.corpus import corpus_path, describe, planted_corpus

#: Multiplicative KL updates of W (H fixed) before scoring KL per token: the same for every
#: method, so the score compares topics, not how far each method's own W had converged.
REFIT_ITER = 100
#: HALS sweeps of W (H fixed) before scoring the Frobenius error.
HALS_SWEEPS = 50
EPS = 1e-10
#: BLAS threads of each fit process unless --blas-threads says otherwise (see the Notes).
BLAS_THREADS = 1
#: The performance issue's targets for dnmf against gensim's CSC path (seconds: at equal or
#: lower KL per token and equal or better topic recovery).
TARGET_TIME_RATIO, TARGET_MEMORY_RATIO = 0.5, 1.5
GENSIM_CSC = "gensim Nmf, scipy CSC"

PROFILES: dict[str, dict[str, Any]] = {
    # repeats: runs of the methods marked fast (median reported); kl_docs: documents scored
    # for KL per token, a fixed random sample shared by every method
    # leave_out: methods the quick profile skips (each takes half a minute or more), so that
    # the whole quick suite stays within 5 minutes
    "quick": {"corpora": [(20_000, 5_000, 20)], "repeats": 3, "kl_docs": 2_000,
              "leave_out": ("sklearn NMF mu KL (40 it)", "sklearn MiniBatchNMF KL",
                            "dnmf mu KL, nndsvda, tol 1e-3 (30 it max), CSR panels")},
    "full": {"corpora": [(200_000, 20_000, 20)], "repeats": 3, "kl_docs": 20_000},
}
LARGE = (1_000_000, 100_000, 20)

#: dnmf's CSR panels: about this many non-zeros each (see ``panel_nnz`` in :data:`METHODS`).
PANEL_NNZ = 1_000_000

#: name -> (runner, parameters, slow, fast). ``slow`` methods are left out by --skip-slow;
#: ``fast`` ones are repeated (profile ``repeats``). dnmf's ``panel_nnz`` hands X over as a dask
#: array of CSR row panels of about that many non-zeros, at least two per core
#: (``dnmf.io.sparse.scipy_dask_array``, inside the timed fit); without it X goes in as the
#: scipy matrix. The first dnmf row is the headline (see the Notes).
METHODS: dict[str, tuple[str, dict[str, Any], bool, bool]] = {
    GENSIM_CSC: ("gensim", {"stream": False}, False, True),
    "gensim Nmf, streamed corpus": ("gensim", {"stream": True}, False, False),
    "sklearn NMF mu KL (40 it)": (
        "sklearn", {"solver": "mu", "beta_loss": "kullback-leibler", "init": "nndsvda",
                    "max_iter": 40}, True, False),
    "sklearn NMF cd (tol 1e-4)": (
        "sklearn", {"solver": "cd", "init": "nndsvda", "tol": 1e-4, "max_iter": 200},
        True, False),
    "sklearn MiniBatchNMF KL": ("minibatch", {"beta_loss": "kullback-leibler"}, False, False),
    "dnmf defaults (hals, nndsvda, tol 1e-4), scipy X": ("dnmf", {}, False, True),
    "dnmf hals, nndsvda, tol 1e-3, scipy X": (
        "dnmf", {"solver": "hals", "init": "nndsvda", "tol": 1e-3, "max_iter": 200},
        False, True),
    "dnmf hals, nndsvda, tol 1e-3, CSR panels": (
        "dnmf", {"solver": "hals", "init": "nndsvda", "tol": 1e-3, "max_iter": 200,
                 "panel_nnz": PANEL_NNZ, "scheduler": "threads"}, False, False),
    "dnmf hals, nndsvda, 5 it, CSR panels": (
        "dnmf", {"solver": "hals", "init": "nndsvda", "tol": 0.0, "max_iter": 5,
                 "panel_nnz": PANEL_NNZ, "scheduler": "threads"}, False, False),
    "dnmf hals, random, tol 1e-3, CSR panels": (
        "dnmf", {"solver": "hals", "init": "random", "tol": 1e-3, "max_iter": 200,
                 "panel_nnz": PANEL_NNZ, "scheduler": "threads"}, False, False),
    "dnmf mu KL, nndsvda, tol 1e-3 (30 it max), CSR panels": (
        "dnmf", {"solver": "mu", "beta_loss": "kullback-leibler", "init": "nndsvda",
                 "tol": 1e-3, "max_iter": 30, "panel_nnz": PANEL_NNZ, "scheduler": "threads"},
        False, False),
}


# --- the child: one fit, timed, in a fresh process -----------------------------------------


def _fit(runner: str, params: dict[str, Any], X: sp.csr_matrix, k: int) -> tuple[
        np.ndarray, dict[str, Any]]:
    """Fit one method on X (documents x terms); its topics (k x n_terms) and notes."""
    if runner == "gensim":
        from gensim.matutils import Sparse2Corpus
        from gensim.models.nmf import Nmf

        # gensim wants terms x documents; X.T of a CSR matrix is a CSC view (no copy)
        id2word = {j: str(j) for j in range(X.shape[1])}
        corpus: Any = X.T
        if params["stream"]:
            corpus = Sparse2Corpus(X.T, documents_columns=True)
        t0 = time.perf_counter()
        model = Nmf(corpus, num_topics=k, id2word=id2word, chunksize=2000, passes=1,
                    normalize=True, random_state=0)
        seconds = time.perf_counter() - t0
        return model.get_topics(), {"seconds": seconds}
    if runner in ("sklearn", "minibatch"):
        from sklearn.decomposition import NMF, MiniBatchNMF

        cls = NMF if runner == "sklearn" else MiniBatchNMF
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            model = cls(k, random_state=0, **params).fit(X)
            seconds = time.perf_counter() - t0
        return model.components_, {"seconds": seconds, "n_iter": int(model.n_iter_),
                                   "warnings": sorted({str(w.message)[:120] for w in caught})}
    if runner == "dnmf":
        import dnmf
        from dnmf.io.sparse import scipy_dask_array

        params = dict(params)
        panel_nnz = params.pop("panel_nnz", None)
        t0 = time.perf_counter()
        Xin = X
        if panel_nnz is not None:
            # a dask array of CSR row panels, at least two per core: each panel task then runs
            # single-threaded BLAS (dnmf.cluster.blas_threads_for) and the threads share them
            panels = max(2 * (os.cpu_count() or 1), -(-X.nnz // panel_nnz))
            Xin = scipy_dask_array(X, chunks=-(-X.shape[0] // panels))
        result = dnmf.factorize(Xin, k, random_state=0, **params)
        seconds = time.perf_counter() - t0
        return np.asarray(result.H), {
            "seconds": seconds, "n_iter": result.n_iter, "converged": result.converged,
            "seconds_per_iteration": result.seconds_per_iteration,
            "scheduler": result.scheduler,
            "panels": result.plan.n_panels if result.plan else None}
    raise ValueError(f"unknown runner {runner!r}")


def child(spec: dict[str, Any]) -> None:
    """Run the fit ``spec`` describes; write its topics and numbers next to ``spec["out"]``.

    The peak resident memory is ``VmHWM``, the high-water mark of this program's own address
    space. ``ru_maxrss`` would be the same number but for one thing: Linux carries the parent's
    resident size at ``fork`` into the child's ``ru_maxrss`` across ``exec``, so a child of a
    parent holding X starts with the parent's peak (both are recorded; the table uses
    ``VmHWM``).
    """
    runner = spec["runner"]
    # a warm-up fit of a tiny matrix first, for every method alike: imports (dnmf's are lazy,
    # and dask imports distributed on its first persist) and one-time setup stay out of the
    # fit's time and in the baseline memory
    tiny = (sp.random(300, 60, density=0.1, format="csr", dtype=np.float32, random_state=0)
            + sp.eye(300, 60, dtype=np.float32, format="csr"))
    _fit(runner, spec["params"], tiny.tocsr(), 3)
    X = sp.load_npz(spec["path"]).tocsr()
    baseline = status_mb("VmRSS")
    peak_before = status_mb("VmHWM")
    # the machine is shared: the 1-minute load average says how busy it was around the fit
    load = os.getloadavg()[0]
    H, info = _fit(runner, spec["params"], X, spec["k"])
    info.update(baseline_rss_mb=baseline, peak_rss_before_fit_mb=peak_before,
                peak_rss_mb=status_mb("VmHWM"), load_before=load, load_after=os.getloadavg()[0],
                ru_maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6)
    np.save(spec["out"] + ".npy", np.asarray(H, dtype=np.float64))
    Path(spec["out"] + ".json").write_text(json.dumps(info))


def run_method(name: str, path: Path, k: int, workdir: Path, *,
               blas_threads: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Run one method in a fresh interpreter; its topics and its numbers."""
    runner, params, _, _ = METHODS[name]
    out = str(workdir / f"fit-{time.monotonic_ns()}")
    spec = {"runner": runner, "params": params, "path": str(path), "k": k, "out": out}
    env = os.environ.copy()
    if blas_threads:  # 0 or None: the libraries' defaults
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(blas_threads)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.sparse", "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
    return np.load(out + ".npy"), json.loads(Path(out + ".json").read_text())


# --- scoring (untimed, in the parent) --------------------------------------------------------


def normalize_topics(H: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to one (an all-zero row stays zero)."""
    H = np.clip(np.asarray(H, dtype=np.float64), 0.0, None)
    sums = H.sum(axis=1, keepdims=True)
    return np.divide(H, sums, out=np.zeros_like(H), where=sums > 0)


def kl_per_token(X: sp.csr_matrix, H: np.ndarray, *, n_iter: int = REFIT_ITER,
                 docs: np.ndarray | None = None) -> float:
    """Generalized KL divergence per token of X against ``W H``, W refitted with H fixed.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix of shape (n_docs, n_terms)
    H : ndarray of shape (k, n_terms)
        Topics, rows summing to one (:func:`normalize_topics`).
    n_iter : int
        Multiplicative updates of W, from every document's tokens spread evenly over the topics.
    docs : ndarray of int, optional
        Score these documents only (the refit is per document, so a sample is exact for its
        documents).

    Returns
    -------
    float
        ``D(X || W H) / Σ X`` over the scored documents.

    Notes
    -----
    With rows of H summing to one the KL update of W is ``W ← W ∘ (R Hᵀ)``, ``R = X / (W H)``
    at the non-zeros; ``Σ_j (W H)_ij = Σ_t W_it``, so the divergence needs ``W H`` only at the
    non-zeros of X.
    """
    if docs is not None:
        X = X[np.sort(docs)]
    Ht = np.ascontiguousarray(H.T, dtype=np.float32)
    # blocks of documents small enough for the cache: the gathered (nnz x k) topic rows
    bounds = list(range(0, X.shape[0], 2048)) + [X.shape[0]]
    lengths = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    W = np.repeat((lengths / H.shape[0])[:, None], H.shape[0], axis=1).astype(np.float32)
    blocks = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        Xb = X[a:b]
        rows = np.repeat(np.arange(b - a), np.diff(Xb.indptr))
        blocks.append((a, b, Xb, rows, Ht[Xb.indices]))
    kl = 0.0
    for it in range(n_iter + 1):
        for a, b, Xb, rows, G in blocks:
            wh = np.maximum(np.einsum("ij,ij->i", W[a:b][rows], G), EPS)
            if it == n_iter:  # score the refitted W
                x = Xb.data.astype(np.float64)
                kl += float(x @ np.log(x / wh) - x.sum() + W[a:b].sum(dtype=np.float64))
            else:
                R = sp.csr_matrix((Xb.data / wh, Xb.indices, Xb.indptr), shape=Xb.shape)
                W[a:b] *= R @ Ht
    return kl / float(lengths.sum())


def frobenius_error(X: sp.csr_matrix, H: np.ndarray, *, sweeps: int = HALS_SWEEPS) -> float:
    """``||X - W H||_F / ||X||_F`` with W the Frobenius fit for fixed H (HALS sweeps).

    Never forms ``W H``: ``||X - W H||² = ||X||² - 2 <X Hᵀ, W> + <Wᵀ W, H Hᵀ>``.
    """
    H = np.asarray(H, dtype=np.float64)
    XHt = np.asarray(X @ H.T)
    HHt = H @ H.T
    # start from the unconstrained least-squares rows, clipped at zero
    W = np.clip(np.linalg.lstsq(HHt, XHt.T, rcond=None)[0].T, 0.0, None)
    for _ in range(sweeps):
        for t in range(H.shape[0]):
            if HHt[t, t] <= 0:
                continue
            W[:, t] = np.maximum(0.0, W[:, t] + (XHt[:, t] - W @ HHt[:, t]) / HHt[t, t])
    sq = float(X.data.astype(np.float64) @ X.data)
    residual = sq - 2.0 * float(np.vdot(XHt, W)) + float(np.vdot(W.T @ W, HHt))
    return float(np.sqrt(max(residual, 0.0) / sq))


def matched_cosine(H: np.ndarray, topics: np.ndarray) -> float:
    """Mean cosine between the rows of H and the planted topics, matched one to one."""
    def unit(M: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(M, axis=1, keepdims=True)
        return np.divide(M, n, out=np.zeros_like(M), where=n > 0)

    cos = unit(np.asarray(H, dtype=np.float64)) @ unit(topics).T
    rows, cols = linear_sum_assignment(-cos)
    return float(cos[rows, cols].mean())


def score(X: sp.csr_matrix, H: np.ndarray, topics: np.ndarray,
          docs: np.ndarray | None) -> dict[str, float]:
    """The three quality figures of one method's topics."""
    from threadpoolctl import threadpool_limits

    Hn = normalize_topics(H)
    # one BLAS thread: the products here are small, and multi-threaded OpenBLAS stalls on
    # them when the shared machine's cores are busy
    with threadpool_limits(1, user_api="blas"):
        return {"kl_per_token": kl_per_token(X, Hn, docs=docs),
                "rel_frobenius": frobenius_error(X, Hn),
                "matched_cosine": matched_cosine(Hn, topics)}


# --- the benchmark ----------------------------------------------------------------------------


def _cached(cache: dict[bytes, dict[str, float]], H: np.ndarray,
            compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``compute()``, once per distinct H."""
    key = hashlib.sha1(np.ascontiguousarray(H).tobytes()).digest()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def bench_corpus(n_docs: int, n_terms: int, k: int, *, methods: list[str], repeats: int,
                 kl_docs: int | None, blas_threads: int | None = None) -> dict[str, Any]:
    """Every method on one corpus: seconds, memory and scores."""
    t0 = time.perf_counter()
    X, topics, _ = planted_corpus(n_docs, n_terms, k)
    path = corpus_path(n_docs, n_terms, k)
    stats = describe(X, topics)
    print(f"corpus {n_docs:,} x {n_terms:,}, k = {k}: {stats['nnz']:,} non-zeros "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    docs = None
    if kl_docs is not None and kl_docs < n_docs:
        docs = np.random.default_rng(1).choice(n_docs, size=kl_docs, replace=False)
    rows = []
    # identical topics (one algorithm and start on X handed over two ways, as gensim's two
    # inputs or dnmf's panels and scipy X) are scored once
    scores: dict[bytes, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="dnmf-sparse-") as tmp:
        for name in methods:
            runs = []
            for _ in range(repeats if METHODS[name][3] else 1):
                H, info = run_method(name, path, k, Path(tmp), blas_threads=blas_threads)
                runs.append((H, info))
                print(f"  {name}: {info['seconds']:.2f} s, peak RSS {info['peak_rss_mb']:.0f} MB",
                      flush=True)
            # the run with the median time gives the scores
            times = [info["seconds"] for _, info in runs]
            H, info = sorted(runs, key=lambda r: r[1]["seconds"])[len(runs) // 2]
            row = {"method": name, "runner": METHODS[name][0], "params": METHODS[name][1],
                   "seconds": statistics.median(times), "seconds_all": times,
                   "peak_rss_mb": statistics.median(i["peak_rss_mb"] for _, i in runs),
                   "baseline_rss_mb": statistics.median(i["baseline_rss_mb"] for _, i in runs),
                   "load_before": statistics.median(i["load_before"] for _, i in runs),
                   "runs": [i for _, i in runs],
                   **{key: v for key, v in info.items()
                      if key not in ("seconds", "peak_rss_mb", "baseline_rss_mb", "load_before",
                                     "load_after", "peak_rss_before_fit_mb", "ru_maxrss_mb")},
                   **_cached(scores, H, lambda H=H: score(X, H, topics, docs))}
            rows.append(row)
            print(f"    KL/token {row['kl_per_token']:.4f}, rel. Frobenius "
                  f"{row['rel_frobenius']:.4f}, matched cosine {row['matched_cosine']:.3f}",
                  flush=True)
    truth = score(X, topics, topics, docs)
    return {"shape": [n_docs, n_terms], "k": k, **stats, "repeats": repeats,
            "kl_docs": len(docs) if docs is not None else n_docs, "refit_iter": REFIT_ITER,
            "hals_sweeps": HALS_SWEEPS, "planted": truth, "rows": rows}


def _dnmf_source() -> dict[str, Any]:
    """Where the dnmf under test comes from: its directory, and the git commit with a flag for
    uncommitted changes under ``dnmf/`` (other people edit the working tree)."""
    import dnmf

    where = Path(dnmf.__file__).resolve().parent
    out: dict[str, Any] = {"path": str(where)}
    try:
        git = ["git", "-C", str(where.parent)]
        out["commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True,
                                       text=True, check=True).stdout.strip()
        out["dirty"] = bool(subprocess.run([*git, "status", "--porcelain", "--", "dnmf"],
                                           capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass  # not a git checkout (an exported snapshot)
    return out


def headlines(corpus: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline dnmf row (the first dnmf one) against gensim's CSC path, with the targets;
    in the form ``python -m benchmarks`` summarises."""
    rows = {r["method"]: r for r in corpus["rows"]}
    base = rows.get(GENSIM_CSC)
    ours = next((r for r in corpus["rows"] if r["runner"] == "dnmf"), None)
    if base is None or ours is None:
        return []
    shape = f"{corpus['shape'][0]:,} x {corpus['shape'][1]:,}"
    as_good = (ours["kl_per_token"] <= base["kl_per_token"]
               and ours["matched_cosine"] >= base["matched_cosine"])
    t = ours["seconds"] / base["seconds"]
    m = ours["peak_rss_mb"] / base["peak_rss_mb"]
    return [
        {"what": f"sparse {shape}: {ours['method']} seconds / gensim CSC seconds (KL/token and "
                 f"matched cosine as good: {'yes' if as_good else 'no'})",
         "ratio": t, "target": TARGET_TIME_RATIO, "met": bool(t <= TARGET_TIME_RATIO and as_good)},
        {"what": f"sparse {shape}: {ours['method']} peak RSS / gensim CSC peak RSS",
         "ratio": m, "target": TARGET_MEMORY_RATIO, "met": bool(m <= TARGET_MEMORY_RATIO)},
    ]


def _describe_source(src: dict[str, Any]) -> str:
    if "commit" not in src:
        return f"from {src['path']}"
    return f"commit {src['commit'][:8]}" + (", with uncommitted changes" if src["dirty"] else "")


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}" if base else "—"


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['num_threads']} threads)"
                     for b in m["blas"])
    lines = [f"### Sparse bag-of-words NMF, profile `{report['profile']}` — {report['date']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; BLAS {blas}; "
             f"Python {m['python']}, numpy {m['numpy']}, scikit-learn {m['scikit-learn']}, "
             f"gensim {report['gensim']}, dask {m['dask']}, dnmf {m['dnmf']} "
             f"({_describe_source(report['dnmf_source'])}). BLAS threads per fit process: "
             f"{report['blas_threads'] or 'library defaults'}. The machine is shared: the last "
             "column is its 1-minute load average when each fit started (median over repeats); "
             "above 2 the cores were oversubscribed and times are inflated.", ""]
    for c in report["corpora"]:
        base = next((r for r in c["rows"] if r["method"] == GENSIM_CSC), None)
        t0 = base["seconds"] if base else None
        m0 = base["peak_rss_mb"] if base else None
        lines += [
            f"Planted corpus {c['shape'][0]:,} docs x {c['shape'][1]:,} terms, "
            f"{c['nnz']:,} non-zeros ({c['nnz_per_doc']:.1f} per document, "
            f"{c['tokens']:,.0f} tokens), k = {c['k']}; planted topics' mutual cosine "
            f"{c['mean_topic_cosine']:.2f} on average. Seconds: the fit alone, in a fresh process "
            f"after a warm-up fit of a tiny matrix"
            + (f", median of {c['repeats']} processes for the repeated methods (†)"
               if c["repeats"] > 1 else "") + ". KL/token after "
            f"{c['refit_iter']} KL updates of W with each method's H fixed, over "
            f"{c['kl_docs']:,} documents; Frobenius after {c['hals_sweeps']} HALS sweeps of W. "
            f"The planted topics themselves score KL/token {c['planted']['kl_per_token']:.4f}, "
            f"rel. Frobenius {c['planted']['rel_frobenius']:.4f}.", "",
            "| method | seconds | × gensim CSC | peak RSS MB (after loading X) | × gensim | "
            "KL/token | rel. Frobenius | matched cosine | load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in c["rows"]:
            rep = " †" if len(r["seconds_all"]) > 1 else ""
            lines.append(
                f"| {r['method']}{rep} | {r['seconds']:.2f} | {_ratio(r['seconds'], t0)} | "
                f"{r['peak_rss_mb']:.0f} ({r['baseline_rss_mb']:.0f}) | "
                f"{_ratio(r['peak_rss_mb'], m0)} | {r['kl_per_token']:.4f} | "
                f"{r['rel_frobenius']:.4f} | {r['matched_cosine']:.3f} | "
                f"{r['load_before']:.1f} |")
        heads = headlines(c)
        if heads:
            lines += ["", "Against the issue's targets: " + "; ".join(
                f"{h['what'].split(': ', 1)[1]} = {h['ratio']:.2f} (target ≤ {h['target']:g}: "
                f"{'met' if h['met'] else 'not met'})" for h in heads) + "."]
        lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Seconds against KL per token, one panel per corpus, every method a labelled point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = report["corpora"]
    fig, axes = plt.subplots(1, len(corpora), figsize=(8 * len(corpora), 7), squeeze=False)
    colors = {"gensim": "tab:green", "sklearn": "tab:orange", "minibatch": "tab:orange",
              "dnmf": "tab:blue"}
    for ax, c in zip(axes[0], corpora, strict=True):
        # numbered points and a legend below: the names are too long to sit by the points
        for i, r in enumerate(c["rows"], 1):
            ax.scatter(r["seconds"], r["kl_per_token"], color=colors[r["runner"]],
                       label=f"{i}. {r['method']} (cosine {r['matched_cosine']:.3f})")
            ax.annotate(str(i), (r["seconds"], r["kl_per_token"]), fontsize=8,
                        xytext=(4, 3), textcoords="offset points")
        ax.axhline(c["planted"]["kl_per_token"], color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("seconds (fit)")
        ax.set_ylabel("KL per token after refitting W (dashed: planted topics)")
        ax.set_title(f"{c['shape'][0]:,} x {c['shape'][1]:,}, {c['nnz']:,} nnz, k = {c['k']}")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1,
                  frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--child", default=None)
    extra.add_argument("--skip-slow", action="store_true")
    extra.add_argument("--large", action="store_true")
    extra.add_argument("--only", nargs="*", default=None)
    extra.add_argument("--blas-threads", type=int, default=BLAS_THREADS)
    extra.add_argument("--corpus", nargs=3, type=int, default=None,
                       metavar=("N_DOCS", "N_TERMS", "K"))
    opts, rest = extra.parse_known_args(argv)
    if opts.child is not None:
        child(json.loads(opts.child))
        return 0
    _, profile = parse_profile(__doc__, rest, quick_help="the ~3 minute profile")
    cfg = PROFILES[profile]
    methods = [name for name, (_, _, slow, _) in METHODS.items()
               if not (slow and opts.skip_slow) and name not in cfg.get("leave_out", ())
               and (opts.only is None or any(s in name for s in opts.only))]
    corpora = list(cfg["corpora"]) + ([LARGE] if opts.large and profile == "full" else [])
    name = f"sparse-{profile}"
    if opts.corpus is not None:  # an ad-hoc corpus gets a report of its own
        corpora = [tuple(opts.corpus)]
        name = f"sparse-{opts.corpus[0]}x{opts.corpus[1]}-k{opts.corpus[2]}"
    import gensim

    report = new_report(profile, gensim=gensim.__version__, dnmf_source=_dnmf_source(),
                        skip_slow=opts.skip_slow, blas_threads=opts.blas_threads or None,
                        corpora=[])
    for n_docs, n_terms, k in corpora:
        report["corpora"].append(bench_corpus(n_docs, n_terms, k, methods=methods,
                                              repeats=cfg["repeats"], kl_docs=cfg["kl_docs"],
                                              blas_threads=opts.blas_threads))
    report["headlines"] = [h for c in report["corpora"] for h in headlines(c)]
    save_report(name, report, render(report))
    plot(report, RESULTS / f"{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
