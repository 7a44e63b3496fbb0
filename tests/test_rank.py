"""The rank survey: criteria per k, the recommended k, the report's store, plots and CLI entry.

Planted data with a known k (one seed of each structure of ``benchmarks/rank.py``, whose hit
rate over ten seeds is measured there); nested data where two ks are plausible (four groups of
two similar components): the report must show both, not pick one silently. The recommendation
follows the one-standard-error rule on the held-out error, each run hiding its own entries.
"""

from __future__ import annotations

import io
import json
import re

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import dnmf
from benchmarks.rank import STRUCTURES, planted_sparse, survey
from dnmf.errors import InputError, OutputError
from dnmf.io import save_csr
from dnmf.io.result_store import consolidate
from dnmf.rank import (
    CRITERIA,
    RankReport,
    RankStep,
    consensus_matrix,
    cophenetic_correlation,
    dispersion,
    edge_warnings,
    elbow,
    heldout_mask,
    mean_and_standard_error,
    nmfk_silhouette,
    one_standard_error,
    parse_ks,
    run_rank_cli,
)
from tests.conftest import logged_store

FIT = dict(scheduler="threads", min_panel_bytes=0, max_iter=100, tol=1e-4)


def planted(n, m, k, *, noise=0.1, seed=0):
    """W H (gamma factors) plus Gaussian noise of ``noise`` x mean(X), clipped at 0."""
    rng = np.random.default_rng(seed)
    X = rng.gamma(1.0, 1.0, (n, k)) @ rng.gamma(1.0, 1.0, (k, m))
    return np.maximum(X + noise * X.mean() * rng.standard_normal(X.shape), 0)


def nested(n, m, *, noise=0.1, seed=0):
    """Four strong components, each split into two weaker ones: its rows of W differ by a
    gamma(4) factor (mean 1), its H by a log-normal factor exp(0.5 N(0, 1)) per feature."""
    rng = np.random.default_rng(seed)
    W = np.repeat(rng.gamma(1.0, 1.0, (n, 4)), 2, axis=1) * rng.gamma(4.0, 0.25, (n, 8))
    H = np.repeat(rng.gamma(1.0, 1.0, (4, m)), 2, axis=0) * np.exp(
        0.5 * rng.standard_normal((8, m)))
    X = W @ H
    return np.maximum(X + noise * X.mean() * rng.standard_normal(X.shape), 0)


def panels(X):
    return da.from_array(X, chunks=(X.shape[0] // 2, X.shape[1]))


def top(report, name, n=2):
    """The n best ks by a criterion."""
    values = report.criterion_values(name)
    order = np.argsort(values if not dnmf.rank.HIGHER_IS_BETTER[name] else -values,
                       kind="stable")
    return [int(report.ks[i]) for i in order[:n]]


@pytest.fixture(scope="module")
def nested_report():
    return dnmf.select_rank(panels(nested(800, 80)), ks=(2, 4, 6, 8, 10), n_runs=3, seed=0,
                            **FIT)


@pytest.mark.parametrize("seed", [0, 1])
def test_recommends_the_planted_rank(seed):
    """k = 8 must beat both neighbours on held-out error (the hardest comparison)."""
    X = planted(800, 80, 8, seed=seed)
    report = dnmf.select_rank(panels(X), ks=(7, 8, 9), n_runs=3, seed=seed, **FIT)
    assert (report.criterion, report.rule) == ("heldout_error", "one_standard_error")
    assert report.recommended_k == 8, report.summary()
    assert report.heldout_min_k == int(report.ks[np.argmin(report.heldout_error)]) == 8
    assert report.warnings == []


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_planted_structures(name):
    """One seed of each structure whose hit rate ``benchmarks/rank.py`` measures: the answer
    stated there before running (the planted k; k + 1 where the noise adds an offset)."""
    structure = STRUCTURES[name]
    report = survey(structure, seed=0)
    assert report.recommended_k == structure.expected_k, report.summary()
    R = report.n_runs
    assert report.heldout_error_runs.shape == (len(structure.ks), R) == (len(report.ks), 5)
    np.testing.assert_allclose(report.heldout_error, report.heldout_error_runs.mean(axis=1))
    np.testing.assert_allclose(report.heldout_error_se,
                               report.heldout_error_runs.std(axis=1, ddof=1) / np.sqrt(R))
    i = list(report.ks).index(report.heldout_min_k)
    assert report.heldout_threshold == pytest.approx(
        report.heldout_error[i] + report.heldout_error_se[i])
    # the rule: the smallest k within one standard error of the minimum
    within = report.ks[report.heldout_error <= report.heldout_threshold]
    assert report.recommended_k == within.min() <= report.heldout_min_k
    assert report.warnings == []  # the expected k is inside every structure's range
    if hasattr(structure.make(0), "tocsr"):
        assert report.attrs["heldout_entries"].startswith("stored entries and a sample")
        assert 0 < report.attrs["heldout_zero_rate"] < 0.1


def test_one_standard_error_rule():
    ks = [2, 3, 4, 5, 6]
    mean = [0.50, 0.21, 0.200, 0.195, 0.199]
    # the minimum is at 5 (0.195 +- 0.01): 4 (0.200) is within, 3 (0.21) is not
    assert one_standard_error(ks, mean, [0.01] * 5) == (4, 5, pytest.approx(0.205))
    assert one_standard_error(ks, mean, [0.0] * 5)[0] == 5  # no spread: the minimum
    assert one_standard_error(ks, mean, [np.nan] * 5)[0] == 5  # one run: the minimum
    assert one_standard_error(ks, [np.nan, 0.3, 0.2, np.nan, 0.25], [0.1] * 5)[:2] == (3, 4)
    with pytest.raises(InputError, match="no held-out error is finite"):
        one_standard_error(ks, [np.nan] * 5, [0.1] * 5)


def test_mean_and_standard_error_skip_missing_runs():
    mean, se = mean_and_standard_error(np.array([[1.0, 2.0, 3.0], [4.0, np.nan, np.nan],
                                                 [np.nan] * 3]))
    np.testing.assert_allclose(mean[:2], [2.0, 4.0])
    assert se[0] == pytest.approx(1.0 / np.sqrt(3)) and np.isnan(se[1]) and np.isnan(mean[2])


@pytest.mark.parametrize(("ks", "recommended", "expected"), [
    ([2, 3, 4], 4, ["recommended k is the largest surveyed: widen --ks"]),
    ([2, 3, 4], 2, ["recommended k is the smallest surveyed: widen --ks"]),
    ([2, 3, 4], 3, []),
    ([1, 2, 3], 1, []),          # nothing below k = 1
    ([8, 9, 10], 10, []),        # k = min(shape) = 10: nothing above
    ([3], 3, ["only k = 3 was surveyed"]),
])
def test_edge_warnings(ks, recommended, expected):
    warnings = edge_warnings(ks, recommended, (200, 10))
    assert len(warnings) == len(expected)
    for warning, start in zip(warnings, expected, strict=True):
        assert warning.startswith(start)


def test_nested_structure_shows_both_candidates(nested_report):
    r = nested_report
    for name in CRITERIA:
        assert np.all(np.isfinite(r.criterion_values(name))), name
    assert np.all(np.diff(r.relative_error) < 0)  # more components always fit better
    # the eight weak components predict hidden entries best ...
    assert 8 in top(r, "heldout_error"), r.summary()
    # ... while the four strong ones are where the error curve bends, and are stable
    assert 4 == r.elbow_k or 4 in top(r, "silhouette") or 4 in top(r, "cophenetic"), r.summary()
    assert r.recommended_k in (4, 8)


def test_report_round_trips_through_xr_open_zarr(tmp_path, nested_report):
    path = tmp_path / "rank.zarr"
    nested_report.save(path)
    ds = xr.open_zarr(path)
    for name in (*CRITERIA, "relative_error_spread", "heldout_error_se"):
        assert ds[name].dims == ("k",)
        np.testing.assert_allclose(ds[name].values, getattr(nested_report, name))
    for name in ("relative_error_runs", "heldout_error_runs"):
        assert ds[name].dims == ("k", "run") and ds[name].shape == (5, 3)
    np.testing.assert_allclose(ds["heldout_error_runs"], nested_report.heldout_error_runs)
    assert ds.attrs["recommended_k"] == nested_report.recommended_k
    assert ds.attrs["criterion"] == "heldout_error" and ds.attrs["status"] == "complete"
    assert ds.attrs["rule"] == "one_standard_error" and "within one standard error" in (
        ds.attrs["rule_description"])
    assert ds.attrs["heldout_min_k"] == nested_report.heldout_min_k
    assert ds.attrs["heldout_min_error"] == pytest.approx(np.min(nested_report.heldout_error))
    assert ds.attrs["heldout_threshold"] == pytest.approx(nested_report.heldout_threshold)
    assert ds.attrs["warnings"] == nested_report.warnings
    assert (ds.attrs["n_runs"], ds.attrs["heldout_fraction"], ds.attrs["seed"]) == (3, 0.1, 0)
    assert list(ds["k"].values) == [2, 4, 6, 8, 10]
    back = RankReport.open(path)
    assert back.recommended_k == nested_report.recommended_k
    assert (back.rule, back.heldout_min_k, back.warnings) == (
        nested_report.rule, nested_report.heldout_min_k, nested_report.warnings)
    np.testing.assert_allclose(back.heldout_error, nested_report.heldout_error)
    np.testing.assert_allclose(back.heldout_error_runs, nested_report.heldout_error_runs)
    with pytest.raises(OutputError, match="already exists"):
        nested_report.save(path)
    nested_report.save(path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank.zarr"]  # no partial left


def test_a_report_written_before_the_rule_still_opens(tmp_path, nested_report):
    ds = nested_report.to_dataset().drop_vars(["heldout_error_se", "heldout_error_runs"])
    for name in ("rule", "rule_description", "heldout_min_k", "heldout_min_error",
                 "heldout_threshold", "warnings"):
        del ds.attrs[name]
    ds.attrs["status"] = "complete"
    ds.to_zarr(tmp_path / "old.zarr", zarr_format=3, consolidated=False)
    consolidate(str(tmp_path / "old.zarr"))  # as RankReport.save writes it
    old = RankReport.open(tmp_path / "old.zarr")
    assert old.rule == "minimum" and old.warnings == []
    assert old.heldout_min_k == int(old.ks[np.argmin(old.heldout_error)])
    assert old.heldout_error_runs.shape == (5, 3) and np.isnan(old.heldout_error_se).all()
    assert "criterion: heldout_error (minimum)" in old.summary()
    old.save(tmp_path / "again.zarr")  # and it can be written again, with the new members
    assert xr.open_zarr(tmp_path / "again.zarr").attrs["rule"] == "minimum"


def test_plots_are_valid_pngs_with_content(tmp_path, nested_report):
    from matplotlib.image import imread

    paths = nested_report.plot(tmp_path / "plots")
    assert sorted(p.name for p in paths) == sorted(
        [f"rank-{name}.png" for name in CRITERIA] + ["rank-criteria.png"])
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and float(pixels.std()) > 0.05


def test_summary_marks_the_recommended_k(nested_report):
    text = nested_report.summary()
    rows = [line for line in text.splitlines() if "<- recommended" in line]
    assert len(rows) == 1 and rows[0].split()[0] == str(nested_report.recommended_k)
    assert "one-standard-error rule" in text and "± SE" in text


def test_nested_structure_says_where_consensus_disagrees(nested_report):
    """The consensus criteria and the elbow are evidence: where their best k differs from the
    recommendation the report names them, and the recommendation follows the held-out error."""
    r = nested_report
    others = r.disagreements()
    picks = {name: r.best_by(name) for name in ("cophenetic", "dispersion", "silhouette")}
    assert others == {name: k for name, k in {**picks, "elbow": r.elbow_k}.items()
                      if k != r.recommended_k}
    last = r.summary().splitlines()[-1]
    if others:
        assert "the recommendation follows the held-out error" in last
        for name, k in others.items():
            assert f"{name} picks k = {k}" in last
    else:
        assert last.endswith("the other criteria agree")


# ---------------------------------------------------------------------------------------------
# The criteria on known cases
# ---------------------------------------------------------------------------------------------


def test_consensus_of_identical_partitions_is_perfect():
    labels = np.array([[0, 0, 1, 1, 2], [1, 1, 0, 0, 2], [2, 2, 1, 1, 0]])  # relabelled
    C = consensus_matrix(labels)
    assert set(np.unique(C)) == {0.0, 1.0}
    assert cophenetic_correlation(C) == 1.0 and dispersion(C) == 1.0


def test_unstable_partitions_score_lower():
    rng = np.random.default_rng(0)
    noisy = consensus_matrix(rng.integers(0, 3, (10, 60)))
    assert dispersion(noisy) < 0.5
    assert dispersion(np.full((4, 4), 0.5)) == 0.0
    assert -1.0 <= cophenetic_correlation(noisy) < 1.0


def test_nmfk_silhouette_separates_stable_from_random_components():
    rng = np.random.default_rng(1)
    base = rng.gamma(1.0, 1.0, (4, 50))
    stable = np.stack([base[rng.permutation(4)] * (1 + 0.01 * rng.random((4, 50)))
                       for _ in range(5)])
    low, mean = nmfk_silhouette(stable)
    assert low > 0.9 and mean > 0.9
    random_low, _ = nmfk_silhouette(rng.gamma(1.0, 1.0, (5, 4, 50)))
    assert random_low < 0.3
    assert np.isnan(nmfk_silhouette(stable[:, :1])[0])  # one cluster: undefined


def test_elbow_is_the_point_farthest_from_the_chord():
    ks = [2, 3, 4, 5, 6, 7]
    assert elbow(ks, [1.0, 0.6, 0.2, 0.18, 0.16, 0.14]) == 4
    assert elbow([2, 3], [1.0, 0.5]) == 2


def test_heldout_mask_is_seeded_lazy_and_chunking_invariant():
    a = heldout_mask((5000, 30), ((5000,), (30,)), fraction=0.1, seed=3)
    b = heldout_mask((5000, 30), ((1000, 2500, 1500), (10, 20)), fraction=0.1, seed=3)
    assert isinstance(a, da.Array) and a.dtype == bool
    np.testing.assert_array_equal(a.compute(), b.compute())
    hidden = 1 - a.mean().compute()
    assert 0.09 < hidden < 0.11
    other = heldout_mask((5000, 30), ((5000,), (30,)), fraction=0.1, seed=4).compute()
    assert not np.array_equal(a.compute(), other)
    run1 = heldout_mask((5000, 30), ((5000,), (30,)), fraction=0.1, seed=3, run=1).compute()
    assert not np.any(~a.compute() & ~run1)  # runs 0..9 hide disjoint folds
    run10 = heldout_mask((5000, 30), ((5000,), (30,)), fraction=0.1, seed=3, run=10).compute()
    assert 0.005 < np.mean(~a.compute() & ~run10) < 0.015  # another repetition: independent


def test_heldout_fits_read_x_once_per_iteration(tmp_path):
    """Every run has its own hidden entries, generated in the panel task: the R held-out fits
    still read each chunk of X once per iteration, all runs together."""
    X = planted(240, 30, 3, noise=0.05).astype(np.float32)
    store, Xd = logged_store(tmp_path / "x.zarr", X, (40, 30))
    marks: list[int] = []

    def progress(step):
        if step.stage == "heldout" and step.iteration > 0:
            marks.append(store.counter["get"])

    dnmf.select_rank(Xd, ks=(3,), n_runs=4, max_iter=5, tol=0.0, progress=progress,
                     scheduler="threads", min_panel_bytes=0, persist_x=False)
    assert np.diff(marks).tolist() == [Xd.numblocks[0]] * (len(marks) - 1)
    assert len(marks) == 10  # heldout_max_iter = 2 * max_iter


def test_sparse_csr_store_is_surveyed_out_of_core(tmp_path):
    """A CSR store is read in row panels; its held-out entries are stored ones plus sampled
    zeros, made in the panel tasks (nothing of n_samples x n_features is ever formed)."""
    X = planted_sparse(600, 120, 3, p_w=0.4, p_h=0.2, noise=0.1, seed=0)
    path = tmp_path / "x.zarr"
    save_csr(path, X, chunk_nnz=2000)
    report = dnmf.select_rank(str(path), ks=(2, 3, 4), n_runs=3, max_iter=60,
                              scheduler="threads")
    assert report.recommended_k == 3, report.summary()
    assert report.attrs["input"]["sparse"] == "csr"
    in_memory = dnmf.select_rank(X, ks=(2, 3, 4), n_runs=3, max_iter=60, scheduler="threads")
    np.testing.assert_allclose(in_memory.heldout_error, report.heldout_error, rtol=1e-4)


def test_sparse_x_needs_the_frobenius_loss():
    X = planted_sparse(60, 20, 2, p_w=0.5, p_h=0.5, noise=0.1, seed=0)
    with pytest.raises(InputError, match=re.escape(
            "the rank survey of sparse X fits its held-out entries by EM imputation, which "
            "needs the Frobenius loss")):
        dnmf.select_rank(X, ks=[2], scheduler="threads", beta_loss="kullback-leibler")


def test_kullback_leibler_survey_runs_each_run_on_its_own_mask():
    X = planted(300, 30, 3, noise=0.05)
    report = dnmf.select_rank(panels(X), ks=(2, 3, 4), n_runs=3, beta_loss="kullback-leibler",
                              **{**FIT, "max_iter": 80})
    assert np.all(np.isfinite(report.heldout_error_runs))
    assert report.recommended_k == 3, report.summary()


# ---------------------------------------------------------------------------------------------
# Parameters, progress and the CLI entry
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ("2-10", "is not a range: write A:B"),
    ("a:b", "is not a range"),
    ("0:4", "starts at 0: ranks start at 1"),
    ("9:3", "is empty (9 > 3): write the smaller rank first, e.g. 3:9"),
])
def test_parse_ks_errors(spec, message):
    with pytest.raises(InputError, match=re.escape(message)):
        parse_ks(spec)


def test_parse_ks_is_inclusive():
    assert list(parse_ks("2:5")) == [2, 3, 4, 5] and list(parse_ks(" 3 : 3 ")) == [3]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(n_runs=0), "n_runs must be an integer >= 1"),
    (dict(heldout_fraction=0.0), "heldout_fraction must be in (0, 0.5]"),
    (dict(ks=[2, 99]), "ranks [99] are impossible"),
    (dict(ks=[]), "ks is empty"),
    (dict(n_restarts=3), "select_rank sets n_restarts itself"),
    (dict(mask=np.ones((60, 20))), "select_rank sets mask itself"),
    (dict(progress=42), "progress must be a callable or a rich.progress.Progress"),
])
def test_select_rank_parameter_errors(kwargs, message):
    kwargs.setdefault("ks", [2])
    with pytest.raises(InputError, match=re.escape(message)):
        dnmf.select_rank(planted(60, 20, 2), scheduler="threads", max_iter=2, **kwargs)


def test_progress_callable_and_rich_progress():
    from rich.progress import Progress

    X = panels(planted(200, 30, 2))
    steps: list[RankStep] = []
    dnmf.select_rank(X, ks=(1, 2), n_runs=2, progress=steps.append, **{**FIT, "max_iter": 10})
    assert {(s.k, s.stage) for s in steps} == {(1, "fit"), (1, "heldout"), (2, "fit"),
                                                (2, "heldout")}
    assert steps[-1].done == steps[-1].total == 4 and steps[-1].n_runs == 2
    assert any(s.eta_s is not None for s in steps) and "ETA" in steps[1].describe()
    with Progress(disable=True) as bar:
        dnmf.select_rank(X, ks=(2,), n_runs=2, progress=bar, **{**FIT, "max_iter": 10})
        assert bar.tasks[0].completed == bar.tasks[0].total == 2


def test_run_rank_cli_writes_the_report_and_ends_with_the_recommendation(tmp_path):
    """Results (the table, then ``recommended k: N``) on ``out_stream``, stdout by default;
    progress and logs on ``stream``, stderr by default."""
    X = panels(planted(300, 40, 3, noise=0.05))
    out = tmp_path / "rank.zarr"
    progress, results = io.StringIO(), io.StringIO()
    report = run_rank_cli(X, "2:4", runs=2, out=out, seed=1, scheduler="threads",
                          max_iter=30, stream=progress, out_stream=results, min_panel_bytes=0,
                          max_consensus_features=25)
    lines = results.getvalue().strip().splitlines()
    assert lines[-1] == f"recommended k: {report.recommended_k}"
    assert lines[0].startswith("rank survey:") and not any(
        line.startswith(("k=", "report:", "warning:")) for line in lines)
    logs = progress.getvalue().strip().splitlines()
    assert any(line.startswith("k=2") for line in logs)  # a progress line per finished fit
    assert f"report: {out}" in logs and "recommended k" not in progress.getvalue()
    assert xr.open_zarr(out).attrs["recommended_k"] == report.recommended_k
    assert report.n_consensus_features == 25  # a seeded sample of the 40 features
    with pytest.raises(OutputError, match="already exists"):  # before any work
        run_rank_cli(X, "2:4", out=out, scheduler="threads")
    quiet, quiet_logs = io.StringIO(), io.StringIO()
    again = run_rank_cli(X, "2:4", runs=1, quiet=True, scheduler="threads", max_iter=5,
                         stream=quiet_logs, out_stream=quiet)
    assert quiet.getvalue().strip().splitlines()[-1] == f"recommended k: {again.recommended_k}"
    assert all(line.startswith("warning:") for line in quiet_logs.getvalue().splitlines())


def test_run_rank_cli_defaults_to_stdout_for_results_and_stderr_for_the_rest(capsys):
    X = panels(planted(200, 30, 2, noise=0.05))
    report = run_rank_cli(X, "1:3", runs=2, scheduler="threads", max_iter=20, min_panel_bytes=0)
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == f"recommended k: {report.recommended_k}"
    assert "k=1" in captured.err and "k=1" not in captured.out


def test_the_edge_warning_when_the_error_still_falls_at_the_top(tmp_path):
    """Planted k = 6 surveyed over 2..4: the held-out error still falls at 4, so the survey
    says so on the log stream (stderr), in the report and in its store; the last line of the
    results stays the recommendation."""
    X = panels(planted(300, 40, 6, noise=0.05))
    progress, results = io.StringIO(), io.StringIO()
    out = tmp_path / "rank.zarr"
    report = run_rank_cli(X, "2:4", runs=3, out=out, scheduler="threads", max_iter=40,
                          stream=progress, out_stream=results, min_panel_bytes=0)
    assert report.recommended_k == 4, report.summary()
    warning = "warning: recommended k is the largest surveyed: widen --ks"
    assert [line for line in progress.getvalue().splitlines()
            if line.startswith("warning:")][0].startswith(warning)
    assert "warning" not in results.getvalue()
    assert results.getvalue().strip().splitlines()[-1] == "recommended k: 4"
    assert report.warnings[0].startswith(warning.removeprefix("warning: "))
    assert xr.open_zarr(out).attrs["warnings"] == report.warnings
    quiet = io.StringIO()  # warnings are not progress: --quiet keeps them
    run_rank_cli(X, "2:4", runs=3, scheduler="threads", max_iter=40, stream=quiet,
                 out_stream=io.StringIO(), quiet=True, min_panel_bytes=0)
    assert quiet.getvalue().startswith(warning)


def test_run_rank_cli_json_is_one_strict_object(tmp_path):
    X = panels(planted(300, 40, 3, noise=0.05))
    progress, results = io.StringIO(), io.StringIO()
    plots = tmp_path / "plots"
    report = run_rank_cli(X, "2:4", runs=1, out=tmp_path / "r.zarr", plots=plots, json=True,
                          scheduler="threads", max_iter=30, stream=progress,
                          out_stream=results, min_panel_bytes=0)

    def no_nan(token):
        raise AssertionError(f"{token} in the JSON")

    document = json.loads(results.getvalue(), parse_constant=no_nan)  # exactly one object
    assert results.getvalue().count("\n") == 1 and isinstance(document, dict)
    assert document["recommended_k"] == report.recommended_k == 3
    assert document["criterion"] == "heldout_error" and document["rule"] == "one_standard_error"
    assert document["warnings"] == [] and document["ks"] == [2, 3, 4]
    assert document["heldout_error_se"] == [None, None, None]  # one run: no standard error
    assert np.shape(document["heldout_error_runs"]) == (3, 1)
    for key in ("heldout_error", "relative_error", "cophenetic", "dispersion"):
        assert len(document[key]) == 3 and all(isinstance(v, float) for v in document[key])
    assert len(document["silhouette"]) == 3
    assert isinstance(document["elbow_k"], int) and document["n_runs"] == 1
    assert document["wall_time_s"] > 0 and document["report"] == str(tmp_path / "r.zarr")
    assert sorted(document["plots"]) == sorted(str(p) for p in plots.glob("*.png"))
    assert "report:" in progress.getvalue() and "k=2" in progress.getvalue()
    assert all(key == key.lower() for key in document)


def test_as_json_dict_has_no_nan():
    report = RankReport(
        ks=np.array([1, 2]), relative_error=np.array([0.5, np.nan]),
        relative_error_spread=np.zeros(2), relative_error_runs=np.zeros((2, 1)),
        cophenetic=np.array([1.0, 1.0]), dispersion=np.ones(2),
        silhouette=np.array([np.nan, 0.5]), silhouette_mean=np.array([np.nan, 0.5]),
        heldout_error=np.array([0.3, 0.2]), n_iter=np.array([3, 4]),
        heldout_n_iter=np.array([5, 6]), recommended_k=2, criterion="heldout_error",
        elbow_k=1, n_runs=1, heldout_fraction=0.1, seed=0, n_consensus_features=2)
    document = report.as_json_dict()
    text = json.dumps(document, allow_nan=False)
    assert document["silhouette"] == [None, 0.5] and document["relative_error"] == [0.5, None]
    assert json.loads(text)["n_iter"] == [3, 4] and document["report"] is None
