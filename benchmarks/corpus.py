"""Planted bag-of-words corpora: documents drawn from known topics, for sparse NMF benchmarks.

The generative model is LDA's, with a text-like vocabulary:

- a Zipf–Mandelbrot base measure over the terms (``p_j ∝ (j + 100)^-1``), so that term
  frequencies fall off as in text (the offset flattens the head: with ``(j + 10)^-1.1`` and
  ``c = 0.1`` the frequent terms take most of every topic and any two topics have cosine ~0.86);
- topics ``φ_t ~ Dirichlet(c · n_terms · p)`` with a small concentration ``c = 0.02`` (the mean
  Dirichlet parameter per term): each topic puts its mass on a few hundred to a few thousand
  terms, and two topics have cosine ~0.12 on average at 20,000 terms, so they are
  distinguishable (at ``c = 0.05`` the shared frequent terms give ~0.26, and gensim's ``Nmf``
  recovers them with cosine ~0.5 only);
- document proportions ``θ_d ~ Dirichlet(α)``, ``α = 0.1`` (most documents are about one to three
  topics), lengths ``~ Poisson(mean_doc_length)``;
- counts ``X_d ~ Multinomial(length_d, θ_d · φ)``.

Tokens are drawn per topic, not per document: the tokens of topic ``t`` over all documents of a
batch are one ``searchsorted`` on φ_t's cumulative distribution, and ``np.unique`` over
``doc * n_terms + term`` adds them up into CSR counts. 200,000 x 20,000 at 92 tokens per document
(17.4 M non-zeros: few terms repeat within a document) takes about 6 seconds.

``python -m benchmarks.corpus N_DOCS N_TERMS K`` generates (and caches) one corpus and prints
its statistics.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from benchmarks.common import DATA

#: Documents drawn per batch: bounds the token arrays (about 40 bytes per token) to ~1 GB.
BATCH_DOCS = 200_000
#: The Zipf exponent and offset of the base measure over terms.
ZIPF_EXPONENT, ZIPF_OFFSET = 1.0, 100.0
#: Defaults of :func:`planted_corpus`: 200,000 x 20,000 gives 17.4 M non-zeros.
MEAN_DOC_LENGTH, TOPIC_CONCENTRATION, DOC_CONCENTRATION = 92.0, 0.02, 0.1


def corpus_path(n_docs: int, n_terms: int, k: int, *,
                mean_doc_length: float = MEAN_DOC_LENGTH, seed: int = 0,
                topic_concentration: float = TOPIC_CONCENTRATION,
                doc_concentration: float = DOC_CONCENTRATION) -> Path:
    """Where the corpus of these parameters is cached (X; the truth sits next to it)."""
    return DATA / (f"corpus-{n_docs}x{n_terms}-k{k}-len{mean_doc_length:g}"
                   f"-c{topic_concentration:g}-a{doc_concentration:g}-s{seed}.npz")


def planted_corpus(
    n_docs: int,
    n_terms: int,
    k: int,
    *,
    mean_doc_length: float = MEAN_DOC_LENGTH,
    seed: int = 0,
    topic_concentration: float = TOPIC_CONCENTRATION,
    doc_concentration: float = DOC_CONCENTRATION,
    cache: bool = True,
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """A bag-of-words corpus drawn from ``k`` known topics.

    Parameters
    ----------
    n_docs, n_terms : int
        Documents (rows of X) and vocabulary size (columns).
    k : int
        Number of planted topics.
    mean_doc_length : float
        Mean tokens per document (Poisson lengths). Repeated terms make the distinct terms
        per document fewer: 92 tokens give about 87 non-zeros per document at 20,000 terms.
    seed : int
        Everything is drawn from ``numpy.random.default_rng(seed)``: one seed, one corpus.
    topic_concentration : float
        ``c`` of the topics' Dirichlet ``c · n_terms · p`` (``p`` the Zipf base measure).
    doc_concentration : float
        ``α`` of the documents' Dirichlet over topics.
    cache : bool
        Load from / save to ``benchmarks/data/`` (:func:`corpus_path`).

    Returns
    -------
    X : scipy.sparse.csr_matrix of shape (n_docs, n_terms), float32
        Term counts, sorted indices, no explicit zeros (empty documents are empty rows).
    topics : ndarray of shape (k, n_terms), float64
        The planted topics φ, rows summing to one.
    proportions : ndarray of shape (n_docs, k), float64
        The planted θ, rows summing to one.

    Examples
    --------
    >>> X, topics, theta = planted_corpus(100, 500, 5, cache=False)
    >>> X.shape, topics.shape, theta.shape
    ((100, 500), (5, 500), (100, 5))
    """
    path = corpus_path(n_docs, n_terms, k, mean_doc_length=mean_doc_length, seed=seed,
                       topic_concentration=topic_concentration,
                       doc_concentration=doc_concentration)
    truth_path = path.with_name(path.stem + "-truth.npz")
    if cache and path.exists() and truth_path.exists():
        truth = np.load(truth_path)
        return sp.load_npz(path).tocsr(), truth["topics"], truth["proportions"]
    rng = np.random.default_rng(seed)
    base = (np.arange(n_terms) + ZIPF_OFFSET) ** -ZIPF_EXPONENT
    base /= base.sum()
    # Dirichlet through normalised gammas; tiny shapes underflow to exact zeros, which is fine
    # as long as no topic is all zero (the frequent terms have shapes far above 1)
    topics = rng.gamma(topic_concentration * n_terms * base, size=(k, n_terms))
    topics /= topics.sum(axis=1, keepdims=True)
    cdf = np.cumsum(topics, axis=1)
    cdf /= cdf[:, -1:]  # the last entry exactly 1: searchsorted never runs past the end
    proportions = rng.dirichlet(np.full(k, doc_concentration), size=n_docs)
    blocks = [_draw_batch(rng, proportions[start:start + BATCH_DOCS], cdf, mean_doc_length)
              for start in range(0, n_docs, BATCH_DOCS)]
    X = sp.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]
    if cache:
        DATA.mkdir(parents=True, exist_ok=True)
        sp.save_npz(path, X, compressed=False)
        np.savez(truth_path, topics=topics, proportions=proportions)
    return X, topics, proportions


def _draw_batch(rng: np.random.Generator, theta: np.ndarray, cdf: np.ndarray,
                mean_doc_length: float) -> sp.csr_matrix:
    """CSR counts of the documents with proportions ``theta`` (rows), topics' CDFs ``cdf``."""
    n_docs, k = theta.shape
    n_terms = cdf.shape[1]
    lengths = rng.poisson(mean_doc_length, size=n_docs)
    per_topic = rng.multinomial(lengths, theta)  # (n_docs, k): tokens of each doc per topic
    keys = []
    docs = np.arange(n_docs, dtype=np.int64)
    for t in range(k):
        n_tokens = int(per_topic[:, t].sum())
        terms = np.searchsorted(cdf[t], rng.random(n_tokens), side="right")
        keys.append(np.repeat(docs, per_topic[:, t]) * n_terms + terms)
    key, counts = np.unique(np.concatenate(keys), return_counts=True)
    indptr = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(key // n_terms, minlength=n_docs), out=indptr[1:])
    index_dtype = np.int32 if max(key.size, n_terms) < 2**31 else np.int64
    return sp.csr_matrix((counts.astype(np.float32), (key % n_terms).astype(index_dtype),
                          indptr.astype(index_dtype)), shape=(n_docs, n_terms))


def describe(X: sp.csr_matrix, topics: np.ndarray) -> dict[str, float]:
    """Size and shape statistics of a corpus: non-zeros, tokens, distinct terms per document,
    the largest overlap (cosine) between two planted topics."""
    norm = topics / np.linalg.norm(topics, axis=1, keepdims=True)
    cos = norm @ norm.T
    np.fill_diagonal(cos, 0.0)
    return {"nnz": int(X.nnz), "tokens": float(X.sum()), "nnz_per_doc": X.nnz / X.shape[0],
            "density": X.nnz / (X.shape[0] * X.shape[1]),
            "max_topic_cosine": float(cos.max()),
            "mean_topic_cosine": float(cos.sum() / max(1, cos.size - len(cos)))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate and cache a planted corpus.")
    parser.add_argument("n_docs", type=int)
    parser.add_argument("n_terms", type=int)
    parser.add_argument("k", type=int)
    parser.add_argument("--mean-doc-length", type=float, default=MEAN_DOC_LENGTH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    X, topics, _ = planted_corpus(args.n_docs, args.n_terms, args.k,
                                  mean_doc_length=args.mean_doc_length, seed=args.seed,
                                  cache=not args.no_cache)
    print(f"{X.shape[0]:,} x {X.shape[1]:,}, k = {args.k}: {time.perf_counter() - t0:.1f} s")
    for name, value in describe(X, topics).items():
        print(f"  {name}: {value:,.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
