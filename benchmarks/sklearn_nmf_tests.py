"""scikit-learn's own NMF tests, run on ``dnmf.NMF``: ``python -m benchmarks.sklearn_nmf_tests``.

Runs the installed ``sklearn/decomposition/tests/test_nmf.py`` (not a copy) with
``sklearn.decomposition.NMF`` replaced by :class:`dnmf.NMF` before the file is imported, so
that its ``from sklearn.decomposition import NMF`` and its parametrisations get dnmf's class.
Counts the tests that exercise ``NMF`` (an ``NMF`` parameter, or ``NMF`` in the test's source
when it has no estimator parameter; ``MiniBatchNMF`` and ``non_negative_factorization`` stay
scikit-learn's and their tests are not counted) and writes each failure's first line, with the
classification of :data:`KNOWN_DIFFERENCES`, to ``benchmarks/results/sklearn-nmf-tests.{json,md}``.
"""

from __future__ import annotations

import inspect
import re
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine_brief, new_report, save_report

#: test name (without parameters) -> why dnmf differs, on purpose (checked by hand on
#: scikit-learn 1.9.1; README "scikit-learn compatibility" lists them).
KNOWN_DIFFERENCES: dict[str, str] = {
    "test_non_negative_factorization_consistency": (
        "order and stopping: compares scikit-learn's own non_negative_factorization with "
        "dnmf.NMF at tol=1e-2; dnmf orders components by decreasing ‖W_j‖·‖H_j‖, draws "
        "random inits from its own streams and stops on the relative loss decrease, not on "
        "scikit-learn's cd violation / every-10-iterations mu test"),
    "test_nmf_minibatchnmf_equivalence": (
        "order: dnmf's components are ordered by contribution; up to that permutation W "
        "equals scikit-learn's NMF/MiniBatchNMF within 8e-12 for every beta"),
    "test_parameter_checking": (
        "message: dnmf's own wording ('solver ... supports only the Frobenius loss ... use "
        "solver=\'mu\'', 'X has n negative entries ...; NMF needs X >= 0')"),
    "test_nmf_custom_init_shape_error": (
        "message: 'W_init has shape (5, 2), expected (n_samples, k) = (6, 2)'"),
    "test_n_components_greater_n_features": (
        "refused: dnmf requires 1 <= k <= min(n_samples, n_features) with a message naming "
        "the range (scikit-learn fits a degenerate k > n_features)"),
    "test_convergence_warning": (
        "no warning on an exact fit: np.ones((2, 2)) reaches loss 0 in one mu iteration, "
        "which dnmf reports as converged ('exact'); it warns when max_iter stops a fit"),
    "test_nmf_float32_float64_consistency": (
        "tolerance: k = n_features (7) on 50 x 7 is not unique; dnmf's tol on the relative "
        "loss decrease does not stop it in 200 iterations and float32 rounding drifts along "
        "the flat valley (0.7 max difference; scikit-learn's cd stops early on its own rule)"),
}


class PatchNMF:
    """A pytest plugin: NMF is dnmf's before the test file is imported; outcomes recorded."""

    def __init__(self) -> None:
        self.outcomes: dict[str, dict[str, Any]] = {}

    def pytest_configure(self, config: Any) -> None:
        import sklearn.decomposition

        import dnmf

        sklearn.decomposition.NMF = dnmf.NMF

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            error = ""
            if report.outcome == "failed":
                text = str(report.longrepr.reprcrash.message) if hasattr(
                    report.longrepr, "reprcrash") else str(report.longrepr)
                error = text.strip().splitlines()[0][:300] if text.strip() else ""
            self.outcomes[report.nodeid] = {"outcome": report.outcome, "error": error}

    def pytest_collection_modifyitems(self, items: list[Any]) -> None:
        import dnmf

        self.touches = {item.nodeid for item in items if touches_nmf(item, dnmf.NMF)}


def touches_nmf(item: Any, cls: type) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    if any(v is cls for v in params.values()):
        return True
    if any(isinstance(v, type) for v in params.values()):
        return False  # parametrised over another estimator (MiniBatchNMF)
    source = inspect.getsource(item.function)
    return re.search(r"(?<![\w.])NMF\(", source) is not None


def main(argv: list[str] | None = None) -> int:
    import pytest
    import sklearn

    path = Path(sklearn.__file__).parent / "decomposition" / "tests" / "test_nmf.py"
    plugin = PatchNMF()
    t0 = time.perf_counter()
    pytest.main([str(path), "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                 "-W", "ignore::sklearn.exceptions.ConvergenceWarning"], plugins=[plugin])
    seconds = time.perf_counter() - t0
    rows = []
    for nodeid in sorted(plugin.touches):
        outcome = plugin.outcomes.get(nodeid, {"outcome": "not run", "error": ""})
        name = nodeid.split("::")[-1].split("[")[0]
        rows.append({"test": nodeid.split("::")[-1], "name": name, **outcome,
                     "why": KNOWN_DIFFERENCES.get(name, "") if outcome["outcome"] == "failed"
                     else ""})
    passed = sum(r["outcome"] == "passed" for r in rows)
    report = new_report("sklearn-nmf-tests", sklearn=sklearn.__version__, seconds=seconds,
                        touching_nmf=len(rows), passed=passed, tests=rows)
    lines = [f"### scikit-learn {sklearn.__version__}'s test_nmf.py on dnmf.NMF — "
             f"{report['date']}", "", machine_brief(report["machine"], "python",
                                                    "scikit-learn"), "",
             f"{passed} of {len(rows)} tests that exercise NMF pass "
             f"({sum(r['outcome'] == 'skipped' for r in rows)} skipped); {seconds:.0f} s.", "",
             "| failing test | parametrisations | first error | why (intentional difference) |",
             "|---|---:|---|---|"]
    failed: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["outcome"] == "failed":
            failed.setdefault(r["name"], []).append(r)
    for name, group in failed.items():
        error = group[0]["error"].replace("|", "\\|")
        lines.append(f"| `{name}` | {len(group)} | {error} | "
                     f"{group[0]['why'] or 'unclassified'} |")
    save_report("sklearn-nmf-tests", report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
