"""The rank survey: criteria per k, the recommended k, the report's store, plots and CLI entry.

Planted data with a known k; nested data where two ks are plausible (four groups of two similar
components): the report must show both, not pick one silently.
"""

from __future__ import annotations

import io
import re

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import dnmf
from dnmf.errors import InputError, OutputError
from dnmf.rank import (
    CRITERIA,
    RankReport,
    RankStep,
    consensus_matrix,
    cophenetic_correlation,
    dispersion,
    elbow,
    heldout_mask,
    nmfk_silhouette,
    parse_ks,
    run_rank_cli,
)

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
    report = dnmf.select_rank(panels(X), ks=(7, 8, 9), n_runs=2, seed=seed, **FIT)
    assert report.criterion == "heldout_error"
    assert report.recommended_k == 8, report.summary()
    assert int(report.ks[np.argmin(report.heldout_error)]) == 8


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
    for name in (*CRITERIA, "relative_error_spread"):
        assert ds[name].dims == ("k",)
        np.testing.assert_allclose(ds[name].values, getattr(nested_report, name))
    assert ds["relative_error_runs"].dims == ("k", "run")
    assert ds.attrs["recommended_k"] == nested_report.recommended_k
    assert ds.attrs["criterion"] == "heldout_error" and ds.attrs["status"] == "complete"
    assert (ds.attrs["n_runs"], ds.attrs["heldout_fraction"], ds.attrs["seed"]) == (3, 0.1, 0)
    assert list(ds["k"].values) == [2, 4, 6, 8, 10]
    back = RankReport.open(path)
    assert back.recommended_k == nested_report.recommended_k
    np.testing.assert_allclose(back.heldout_error, nested_report.heldout_error)
    with pytest.raises(OutputError, match="already exists"):
        nested_report.save(path)
    nested_report.save(path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank.zarr"]  # no partial left


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
    X = panels(planted(300, 40, 3, noise=0.05))
    out = tmp_path / "rank.zarr"
    stream = io.StringIO()
    report = run_rank_cli(X, "2:3", runs=2, out=out, seed=1, scheduler="threads",
                          max_iter=30, stream=stream, min_panel_bytes=0,
                          max_consensus_features=25)
    lines = stream.getvalue().strip().splitlines()
    assert lines[-1] == f"recommended k: {report.recommended_k}"
    assert any(line.startswith("k=2") for line in lines)  # a progress line per finished fit
    assert xr.open_zarr(out).attrs["recommended_k"] == report.recommended_k
    assert report.n_consensus_features == 25  # a seeded sample of the 40 features
    with pytest.raises(OutputError, match="already exists"):  # before any work
        run_rank_cli(X, "2:4", out=out, scheduler="threads")
    quiet = io.StringIO()
    run_rank_cli(X, "2:2", runs=1, quiet=True, scheduler="threads", max_iter=5, stream=quiet)
    assert quiet.getvalue().strip().splitlines() == ["recommended k: 2"]
