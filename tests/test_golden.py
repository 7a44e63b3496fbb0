"""Golden tests: every case of ``benchmarks/golden.py`` gives today's W, H and loss history.

The fixtures in ``tests/data/golden/`` were written by ``make_golden.py`` there with the code
before the pipeline refactor (commit 09191ab). Each test re-runs exactly the same call
(``benchmarks.golden.CASES``: the same data builder, the same ``factorize`` arguments; the input
X is checked to be the fixture's, bit for bit) and compares the result with the fixture within
tolerances derived from the arithmetic, not measured on one machine: another CPU or BLAS (AVX2
against AVX-512 kernels, another OpenBLAS, MKL) rounds differently in the last bits, and these
tests must pass there while still failing for any change a refactor could make to the
algorithm. On one machine ``python -m benchmarks.golden --compare`` checks bitwise identity.

Tolerances (``eps = 2.2e-16``, float64's machine epsilon):

* W and H, per component (relative to the largest entry of that column of W / row of H; an
  entry-wise relative error is meaningless for the entries NMF drives to zero):
  ``rtol = SAFETY * n_iter * (L + kappa) * eps``.
  One iteration forms products summing over at most ``L = max(n_samples, n_features)`` terms
  (``W^T X`` over the rows, ``X H^T`` over the columns); the standard bound on the rounding of
  such a sum is ``L * eps`` relative to the sum of the magnitudes, which for these non-negative
  factors is the value itself. The updates then solve (exactly: ANLS, the sum-to-one W update;
  approximately: HALS sweeps, MU steps) k x k non-negative least squares problems, whose
  solution moves by ``kappa * eps`` relative from a backward-stable solve, ``kappa`` the
  condition number of the Gram matrix solved with (``W^T W``, ``H H^T``, or for sum-to-one
  ``H H^T + delta^2 1 1^T`` with ``delta^2 = 1e5 * mean(diag(H H^T))``, the augmented row of
  ``dnmf.kernels.fcls_rows``: kappa ~ 7e6 there, hence that case's wider tolerance). Each
  iteration's error is carried into the next one by an update that does not expand it (the
  iterations decrease the loss towards a stationary point, non-expansive near it), so after
  ``n_iter`` iterations the errors add up to at most ``n_iter`` times one iteration's.
  ``SAFETY = 10`` covers the first-order bounds' constants and the transient first iterations
  (kappa is taken at the final factors). The planted data keep kappa moderate (<= 2,400 for the
  plain Gram matrices): components on nearly disjoint blocks of features with contributions a
  factor >= 1.02 apart (``test_golden_cases_are_far_from_ties``), so the fit is a well-separated
  solution and no rounding can swap two components or pick another restart.
  Resulting rtol: 1e-11 to 4e-11 for the plain cases, 5e-7 for sum-to-one.
* The loss history, entry by entry: ``rtol_t = SAFETY * (L * eps / r_t^2) + 2 * rtol / r_t``
  with ``r_t^2 = loss_t / S`` (``S = ||X||_F^2``, or ``sum(X)`` for Kullback-Leibler, over the
  observed entries). The Frobenius loss comes from the Gram identity
  ``||X||^2 - 2 <H, W^T X> + <W^T W, H H^T>``: terms of size S whose difference is the loss, so
  their ``L * eps * S`` rounding is ``L * eps / r_t^2`` relative to it (the divergence's terms
  ``x log(x / y) - x + y`` cancel in the same way); and factors off by ``rtol`` move
  ``||X - W H||^2`` by at most ``2 ||X - W H|| ||W H|| rtol``, i.e. ``2 rtol / r_t`` relative.
* ``n_iter`` exactly (``tol=0``: a fixed number of iterations).

Evidence, measured with the code of 09191ab on an AMD EPYC (OpenBLAS 0.3.31, SkylakeX kernels),
that the tolerances absorb rounding and still catch a real change:

* rounding: forcing other OpenBLAS kernels (``OPENBLAS_CORETYPE`` = Haswell, SandyBridge,
  Nehalem, Prescott: AVX2+FMA, AVX and SSE kernels; every product rounds differently) moves W and H
  by 1e-15 to 4e-14 (1.5e-9 for sum-to-one) and the losses by up to 2e-11 relative: at most
  1/300 of the tolerances (W, H: 3.2e-3 of rtol for sum-to-one, <= 1.9e-3 for the others;
  losses: <= 2e-3);
* one more iteration moves W and H by 2.5e-3 to 2.6e-2 relative: 4e4 (sum-to-one) to 2e9
  times the tolerance (``test_tolerance_rejects_one_more_iteration`` checks it everywhere);
* a regularisation ``alpha_W=1e-9`` moves them 200 to 5e5 times the tolerance (every case);
* another ``random_state`` fails 8 cases (by 35 times the tolerance, anls, and up); it passes
  for sum-to-one and sparse, where the seed only starts the randomized SVD of the NNDSVD init
  and moves the result by 2e-9 and 9e-12 — no change of the algorithm, and below rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.golden import CASES, MAX_ITER, Outcome, run_case, x_sha256

GOLDEN = Path(__file__).parent / "data" / "golden"
EPS = float(np.finfo(np.float64).eps)
#: Margin over the first-order bounds (see the module docstring).
SAFETY = 10.0
#: Weight of the augmented row of the exact sum-to-one W update (``delta^2`` relative to
#: mean(diag(H H^T))): ``dnmf.kernels.SUM_TO_ONE_WEIGHT_EXACT`` when the fixtures were made.
SUM_TO_ONE_WEIGHT = 1e5


def golden(name: str) -> dict:
    with np.load(GOLDEN / f"{name}.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def condition(W: np.ndarray, H: np.ndarray, *, sum_to_one: bool = False) -> float:
    """The largest condition number of the k x k Gram matrices the updates solve with."""
    HHt = H @ H.T
    grams = [W.T @ W, HHt]
    if sum_to_one:
        delta2 = SUM_TO_ONE_WEIGHT * np.trace(HHt) / HHt.shape[0]
        grams.append(HHt + delta2)  # H H^T + delta^2 1 1^T: the augmented-row FCLS solve
    return max(float(np.linalg.cond(g)) for g in grams)


def factor_rtol(W: np.ndarray, H: np.ndarray, n_iter: int, *, sum_to_one: bool = False
                ) -> float:
    """``SAFETY * n_iter * (L + kappa) * eps`` for the factors (see the module docstring)."""
    L = max(W.shape[0], H.shape[1])
    return SAFETY * n_iter * (L + condition(W, H, sum_to_one=sum_to_one)) * EPS


def loss_scale(X, beta_loss: str = "frobenius") -> float:
    """S: ||X||_F^2, or sum(X) for Kullback-Leibler, over the observed entries."""
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    if beta_loss == "kullback-leibler":
        return float(np.nansum(X))
    return float(np.nansum(X * X))


def loss_rtol(loss: np.ndarray, S: float, L: int, rtol: float) -> np.ndarray:
    """Entry by entry: ``SAFETY * L * eps / r^2 + 2 * rtol / r`` with ``r^2 = loss / S``."""
    r2 = np.asarray(loss, dtype=np.float64) / S
    return SAFETY * L * EPS / r2 + 2.0 * rtol / np.sqrt(r2)


def case_rtol(name: str, fixture: dict) -> float:
    return factor_rtol(fixture["W"], fixture["H"], int(fixture["n_iter"]),
                       sum_to_one=bool(CASES[name].kwargs.get("w_sum_to_one")))


def case_loss_scale(name: str, X) -> float:
    return loss_scale(X, CASES[name].kwargs.get("beta_loss", "frobenius"))


def component_error(actual: np.ndarray, expected: np.ndarray, axis: int) -> float:
    """max |actual - expected| over each component, relative to that component's largest
    entry (W: columns, axis 0; H: rows, axis 1); the worst component."""
    scale = np.abs(expected).max(axis=axis)
    return float((np.abs(actual - expected).max(axis=axis) / scale).max())


def compare(name: str, out: Outcome, fixture: dict, S: float) -> list[str]:
    """What differs from the fixture beyond the tolerances (empty: the same result)."""
    problems = []
    if out.n_iter != int(fixture["n_iter"]):
        problems.append(f"n_iter {out.n_iter}, fixture {int(fixture['n_iter'])}")
    if out.is_2d != bool(fixture["is_2d"]):
        problems.append(f"2-D scheme {out.is_2d}, fixture {bool(fixture['is_2d'])}")
    rtol = case_rtol(name, fixture)
    for part, axis in (("W", 0), ("H", 1)):
        actual, expected = getattr(out, part), fixture[part]
        if actual.shape != expected.shape:
            problems.append(f"{part} shape {actual.shape}, fixture {expected.shape}")
            continue
        err = component_error(actual, expected, axis)
        if not err <= rtol:
            problems.append(f"{part} off by {err:.3g} relative (tolerance {rtol:.3g})")
    L = max(fixture["W"].shape[0], fixture["H"].shape[1])
    for what, actual, expected in (("loss history", out.loss_history, fixture["loss_history"]),
                                   ("restart losses", out.restart_losses,
                                    fixture["restart_losses"])):
        if actual.shape != expected.shape:
            problems.append(f"{what} has {actual.size} entries, fixture {expected.size}")
            continue
        tol = loss_rtol(expected, S, L, rtol)
        err = np.abs(actual - expected) / np.abs(expected)
        if not (err <= tol).all():
            t = int(np.argmax(err / tol))
            problems.append(f"{what}[{t}] off by {err[t]:.3g} relative (tolerance "
                            f"{tol[t]:.3g})")
    return problems


@pytest.mark.parametrize("name", list(CASES))
def test_golden(name):
    case, fixture = CASES[name], golden(name)
    X = case.data()
    # the same call: the data builder still gives the fixture's input, bit for bit
    assert x_sha256(X) == str(fixture["x_sha256"]), f"{name}: the case's X changed"
    assert str(fixture["call"]) == repr(case.call), f"{name}: the case's arguments changed"
    out = run_case(case, X)
    problems = compare(name, out, fixture, case_loss_scale(name, X))
    assert not problems, f"{name}: " + "; ".join(problems)


@pytest.mark.parametrize("name", list(CASES))
def test_tolerance_rejects_one_more_iteration(name):
    """The tolerances are tight: the fit one iteration further is not today's result (its W
    and H, its loss history and its n_iter all differ)."""
    case, fixture = CASES[name], golden(name)
    X = case.data()
    out = run_case(case, X, max_iter=MAX_ITER + 1)
    problems = compare(name, out, fixture, case_loss_scale(name, X))
    assert any(p.startswith("W off") for p in problems), problems
    assert any(p.startswith("H off") for p in problems), problems
    assert any(p.startswith("n_iter") for p in problems), problems
    # and the first MAX_ITER losses are the golden ones: only the extra iteration differs
    out.loss_history = out.loss_history[:MAX_ITER]
    out.n_iter, out.W, out.H = MAX_ITER, fixture["W"], fixture["H"]
    out.restart_losses = fixture["restart_losses"]
    assert not compare(name, out, fixture, case_loss_scale(name, X))


@pytest.mark.parametrize("name", list(CASES))
def test_golden_cases_are_far_from_ties(name):
    """No fixture sits near a discontinuity that rounding could tip: the components' order
    (by ||W_j|| ||H_j||) has gaps of at least 1%, and so has the choice of the best restart."""
    fixture = golden(name)
    W, H = fixture["W"], fixture["H"]
    contributions = np.linalg.norm(W, axis=0) * np.linalg.norm(H, axis=1)
    assert (contributions[:-1] >= 1.01 * contributions[1:]).all(), contributions
    losses = np.sort(fixture["restart_losses"])
    if losses.size > 1:
        assert losses[1] >= 1.01 * losses[0], losses
    assert case_rtol(name, fixture) < 1e-6  # a tolerance with teeth
