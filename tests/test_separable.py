"""SPA/VCA block kernels against direct numpy computations."""

from __future__ import annotations

import numpy as np
import pytest

from dnmf import separable


@pytest.fixture
def rows():
    return np.random.default_rng(0).random((50, 12)).astype(np.float32)


def test_spa_candidate_is_the_farthest_projected_row_from_the_span(rows):
    U = separable.signal_subspace(rows.T.astype(np.float64) @ rows, 4)
    Y = rows.astype(np.float64) @ U
    basis, _ = separable.extend_basis(np.zeros((4, 0)), Y[3])
    score, index, row, y = separable.spa_candidate(rows, U, basis, start=100)
    residual = Y - (Y @ basis) @ basis.T
    expected = int(np.argmax((residual ** 2).sum(axis=1)))
    assert index == 100 + expected
    np.testing.assert_allclose(score, (residual[expected] ** 2).sum(), rtol=1e-10)
    np.testing.assert_allclose(y, Y[expected])
    np.testing.assert_allclose(row, np.maximum(U @ Y[expected], 0))  # denoised, >= 0


def test_best_candidate_breaks_ties_by_lowest_index():
    a = (1.0, 7, np.zeros(2), None)
    b = (1.0, 3, np.ones(2), None)
    c = (0.5, 1, np.ones(2), None)
    assert separable.best_candidate([a, b, c])[1] == 3


def test_extend_basis_is_orthonormal_and_reports_dependence(rows):
    basis = np.zeros((12, 0))
    for r in rows[:5]:
        basis, norm = separable.extend_basis(basis, r)
        assert norm > 0
    np.testing.assert_allclose(basis.T @ basis, np.eye(5), atol=1e-12)
    _, norm = separable.extend_basis(basis, rows[0].astype(np.float64) + 2 * rows[1])
    assert norm < 1e-12 * np.linalg.norm(rows[0])  # in the span: nothing new


def test_vca_direction_is_orthogonal_to_the_chosen_columns():
    rng = np.random.default_rng(1)
    A = np.zeros((4, 4))
    A[:, :2] = rng.random((4, 2))
    f = separable.vca_direction(A, rng)
    np.testing.assert_allclose(A[:, :2].T @ f, 0, atol=1e-12)
    assert np.isclose(np.linalg.norm(f), 1.0)


def test_start_rows_fit_and_floor():
    rng = np.random.default_rng(2)
    H = rng.random((3, 20))
    W_true = rng.dirichlet(np.ones(3), size=30)
    W = separable.start_rows(W_true @ H, H, H @ H.T, out_dtype=np.float32)
    assert W.dtype == np.float32 and (W > 0).all()  # MU can move every entry
    np.testing.assert_allclose(W, W_true, atol=2e-3)
