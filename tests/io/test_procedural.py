"""The procedural planted source: reproducible chunks, any chunking, and a fit that finds it."""

from __future__ import annotations

import math

import numpy as np
import pytest

import dnmf
from dnmf.errors import InputError
from dnmf.io import open_matrix
from dnmf.io.procedural import planted_block, planted_h, planted_source, planted_w, signal_rms

SHAPE, K = (1000, 40), 4


def test_same_seed_and_rows_give_the_same_chunk() -> None:
    a = planted_block(300, 420, SHAPE[1], K, seed=7, noise=0.1)
    b = planted_block(300, 420, SHAPE[1], K, seed=7, noise=0.1)
    other = planted_block(300, 420, SHAPE[1], K, seed=8, noise=0.1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, other)
    assert a.dtype == np.float32 and a.shape == (120, SHAPE[1])


@pytest.mark.parametrize("chunks", [1000, 97, (1, 255, 256, 488)])
def test_any_chunking_gives_the_same_matrix(chunks) -> None:
    """Rows are drawn by fixed blocks: the panels a plan cuts change nothing."""
    reference = planted_source(*SHAPE, K, seed=3, noise=0.05, chunks=1000).array.compute()
    src = planted_source(*SHAPE, K, seed=3, noise=0.05, chunks=chunks)
    np.testing.assert_array_equal(src.array.compute(), reference)
    np.testing.assert_array_equal(src.in_row_panels((500, 500)).compute(), reference)


def test_noise_is_the_relative_error_of_the_planted_factors() -> None:
    """||X - W H|| / ||W H|| estimates ``noise`` from 200,000 normals: its relative standard
    error is 1/sqrt(2 N) ~ 0.2 %, so 2 % is far outside chance. Clipping at 0 hardly touches
    it: W H has mean k/4 = 1 and sigma = 0.05 * 1.05, so only entries of the rare rows with
    W H below ~0.15 can be clipped."""
    noise = 0.05
    rows = 5000
    X = planted_block(0, rows, SHAPE[1], K, seed=1, noise=noise, dtype=np.float64)
    WH = planted_w(0, rows, K, seed=1) @ planted_h(1, K, SHAPE[1])
    assert np.linalg.norm(X - WH) / np.linalg.norm(WH) == pytest.approx(noise, rel=0.02)
    # and the analytic mean square of W H that scales the noise
    assert math.sqrt(np.mean(WH**2)) == pytest.approx(signal_rms(K), rel=0.05)


def test_open_matrix_keeps_it_and_bad_sizes_are_refused() -> None:
    src = planted_source(*SHAPE, K, seed=0)
    assert open_matrix(src) is src
    assert src.format == "procedural" and src.path is None and src.dtype == np.float32
    with pytest.raises(InputError, match="cover"):
        planted_source(*SHAPE, K, chunks=(10, 10))
    with pytest.raises(InputError, match="noise"):
        planted_source(*SHAPE, K, noise=-1.0)


@pytest.mark.cluster
def test_a_fit_reaches_the_planted_error() -> None:
    """A rank-K fit of X = W H + E cannot do better than the part of E outside a rank-K fit's
    reach (about ``noise * sqrt(1 - K (m + n) / (m n))``, the residual of projecting i.i.d.
    noise on K (m + n) degrees of freedom) and should get within a few % of ``noise``;
    a fit stuck in a poor local minimum or a wrong graph would sit far above it."""
    noise = 0.05
    m, n = 4000, SHAPE[1]
    src = planted_source(m, n, K, seed=11, noise=noise, chunks=500)
    result = dnmf.factorize(src, K, solver="hals", max_iter=200, tol=1e-6, random_state=0,
                            scheduler="local", workers=2, memory_limit="1GB")
    floor = noise * math.sqrt(1 - K * (m + n) / (m * n))
    # ||X|| = ||W H|| sqrt(1 + noise^2): the relative error is measured against X
    floor /= math.sqrt(1 + noise**2)
    assert result.plan.n_panels >= 4
    assert 0.97 * floor <= result.relative_error <= 1.05 * noise


def test_the_estimator_fits_it_in_process() -> None:
    """``NMF.fit`` takes the source as X (in-process scheduler): same bounds as above."""
    noise, m, n, k = 0.02, 2000, 30, 3
    src = planted_source(m, n, k, seed=2, noise=noise, chunks=250)
    model = dnmf.NMF(k, solver="hals", max_iter=300, tol=1e-7, random_state=0).fit(src)
    relative = model.reconstruction_err_ / float(np.linalg.norm(src.array.compute()))
    floor = noise * math.sqrt(1 - k * (m + n) / (m * n)) / math.sqrt(1 + noise**2)
    assert 0.97 * floor <= relative <= 1.05 * noise
