"""validate: one compute, counts equal numpy's on planted data, messages say what and where."""

from __future__ import annotations

import json
import math
import re

import dask.array as da
import numpy as np
import pytest

from dnmf.errors import InputError
from dnmf.io import ValidationReport, check_rank, open_matrix, validate


@pytest.fixture(scope="module")
def planted_bad() -> np.ndarray:
    """24 x 10 float32 with negatives, NaN, ±Inf, zero rows and zero columns at known places.

    With chunks (6, 4) the blocks are 4 x 3 (columns 4, 4, 2), and the planted rows and
    columns span several blocks.
    """
    rng = np.random.default_rng(7)
    X = rng.uniform(0.1, 1.0, size=(24, 10)).astype(np.float32)
    X[2, :] = 0.0  # zero row across all three column blocks
    X[10, :] = 0.0
    X[10, 9] = 0.5  # not zero: its only non-zero is in the last column block
    X[:, 4] = 0.0  # zero column across all four row blocks
    X[:, 8] = 0.0
    X[23, 8] = 0.2  # not zero: its only non-zero is in the last row block
    X[7, 5] = -0.5  # chunk (1, 1): the first negative
    X[20, 1] = -0.03  # chunk (3, 0)
    X[13, 9] = np.nan  # chunk (2, 2)
    X[3, 6] = np.inf  # chunk (0, 1): the first non-finite, and the first Inf
    X[22, 0] = -np.inf  # chunk (3, 0)
    return X


def numpy_report(X: np.ndarray) -> dict:
    """The reference, computed eagerly with numpy."""
    finite = np.isfinite(X)
    values = X[finite].astype(np.float64)
    return {
        "n_negative": int((values < 0).sum()),
        "min_value": float(values.min()),
        "max_value": float(values.max()),
        "n_nan": int(np.isnan(X).sum()),
        "n_inf": int(np.isinf(X).sum()),
        "n_zero_rows": int((X == 0).all(axis=1).sum()),
        "n_zero_cols": int((X == 0).all(axis=0).sum()),
        "sq_norm": float((values**2).sum()),
        "total": float(values.sum()),
    }


@pytest.mark.parametrize(
    "chunks, n_chunks",
    [
        ((6, 4), 12),  # the planted layout: 4 x 3 blocks
        ((24, 10), 1),  # one block
        ((5, 3), 20),  # uneven edges
        ((1, 10), 24),  # row panels, more than one level of the column tree reduction
        ((1, 1), 240),  # every entry its own block
    ],
)
def test_counts_match_numpy(planted_bad, chunks, n_chunks):
    report = validate(da.from_array(planted_bad, chunks=chunks), scheduler="sync")
    expected = numpy_report(planted_bad)
    assert report.n_chunks == n_chunks
    assert (report.shape, report.dtype) == ((24, 10), "float32")
    for name, value in expected.items():
        assert getattr(report, name) == pytest.approx(value, rel=1e-12), name
    assert expected["n_zero_rows"] == 1 and expected["n_zero_cols"] == 1


def test_first_chunks(planted_bad):
    report = validate(da.from_array(planted_bad, chunks=(6, 4)), scheduler="sync")
    assert report.first_negative_chunk == (1, 1)
    assert report.first_nonfinite_chunk == (0, 1)
    assert report.first_inf_chunk == (0, 1)
    assert report.first_negative_at == (7, 5) and report.first_nonfinite_at == (3, 6)
    # the chunk of a stored layout other than the array's own
    stored = validate(da.from_array(planted_bad, chunks=(6, 4)), scheduler="sync",
                      stored_chunks=(2, 2))
    assert stored.first_negative_chunk == (3, 2) and stored.first_negative_at == (7, 5)
    assert (report.n_negative, report.min_value, report.n_nan, report.n_inf) == (2, -0.5, 1, 2)


def test_one_compute_call(planted_bad, count_computes):
    X = da.from_array(planted_bad, chunks=(6, 4))
    validate(X)  # the configured scheduler
    assert count_computes.calls == 1
    validate(X, scheduler=count_computes)  # an explicit one
    assert count_computes.calls == 2


class RecordingArray:
    """Array-like that records the blocks read from it (on the instance: dask may copy the
    class's globals when tokenizing a locally defined class)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.reads = data, []
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]


def test_reads_each_block_once(planted_bad):
    recording = RecordingArray(planted_bad)
    X = da.from_array(recording, chunks=(6, 4), meta=np.empty((0, 0), np.float32))
    validate(X, scheduler="sync")
    assert len(recording.reads) == 12 and len(set(map(str, recording.reads))) == 12


@pytest.mark.parametrize("scheduler", [None, "sync", "threads"])
def test_schedulers_agree(planted_bad, scheduler):
    X = da.from_array(planted_bad, chunks=(5, 3))
    assert validate(X, scheduler=scheduler) == validate(X, scheduler="sync")


def test_sq_norm_float64_for_float32_input():
    # Large, spread-out float32 values: a float32 accumulator would be off by ~1e-4 relative.
    rng = np.random.default_rng(3)
    X = (rng.lognormal(0.0, 3.0, size=(2000, 40))).astype(np.float32)
    report = validate(da.from_array(X, chunks=(300, 40)), scheduler="threads")
    expected = float((X.astype(np.float64) ** 2).sum())
    assert math.isclose(report.sq_norm, expected, rel_tol=1e-12)
    assert math.isclose(report.total, float(X.astype(np.float64).sum()), rel_tol=1e-12)


def test_messages(planted_bad):
    report = validate(da.from_array(planted_bad, chunks=(6, 4)), scheduler="sync")
    assert report.problems() == [
        "X has 2 negative entries (min -0.5), the first at row 7, column 5 in chunk (1, 1); "
        "NMF needs X >= 0 — "
        "clip or shift the data first",
        "X has 1 NaN and 2 Inf entries, the first at row 3, column 6 in chunk (0, 1); NMF "
        "needs finite values — "
        'fill or drop them, or leave NaN out of the fit with --missing mask (missing="mask")',
    ]
    assert report.problems(allow_nan=True)[1] == (
        "X has 2 Inf entries, the first at row 3, column 6 in chunk (0, 1); NMF needs finite "
        "values — replace "
        "them (with NaN to mask them)"
    )
    with pytest.raises(InputError, match=re.escape(report.problems()[0])):
        report.raise_if_invalid()


def test_thousands_separator_and_nan_only():
    X = np.full((301, 4), -0.03, dtype=np.float32)
    X[300, 3] = np.nan
    report = validate(da.from_array(X, chunks=(100, 4)), scheduler="sync")
    assert report.problems()[0] == (
        "X has 1,203 negative entries (min -0.03), the first at row 0, column 0 in chunk "
        "(0, 0); NMF needs X >= 0 "
        "— clip or shift the data first"
    )
    assert report.problems()[1].startswith(
        "X has 1 NaN entries, the first at row 300, column 3 in chunk (3, 0);")
    assert report.problems(allow_nan=True) == report.problems()[:1]


def test_nan_allowed_when_masking():
    X = np.ones((6, 4), dtype=np.float32)
    X[4, 1] = np.nan
    report = validate(da.from_array(X, chunks=(3, 2)), scheduler="sync")
    with pytest.raises(InputError, match=r"X has 1 NaN entries, the first at row 4, column 1 in chunk \(1, 0\)"):
        report.raise_if_invalid()
    report.raise_if_invalid(allow_nan=True)
    assert report.sq_norm == 23.0


def test_clean_data_has_no_problems_and_zero_rows_are_allowed():
    X = np.ones((6, 4))
    X[0] = 0.0
    X[:, 3] = 0.0
    report = validate(open_matrix(X), scheduler="sync")  # a MatrixSource is accepted
    assert report.problems() == [] and report.first_negative_chunk is None
    report.raise_if_invalid()
    assert (report.n_zero_rows, report.n_zero_cols, report.sq_norm) == (1, 1, 15.0)
    assert (report.min_value, report.max_value) == (0.0, 1.0)


def test_all_nonfinite_block_and_integer_input():
    X = np.full((4, 4), np.nan)
    report = validate(da.from_array(X, chunks=(2, 2)), scheduler="sync")
    assert math.isnan(report.min_value) and report.n_nan == 16 and report.sq_norm == 0.0
    assert report.n_zero_rows == 0, "NaN is not zero"
    ints = np.arange(-3, 9, dtype=np.int16).reshape(3, 4)
    report = validate(da.from_array(ints, chunks=(2, 3)), scheduler="sync")
    assert (report.n_negative, report.min_value, report.n_zero_rows) == (3, -3.0, 0)
    assert report.sq_norm == float((ints.astype(np.float64) ** 2).sum())


def test_as_dict_is_json(planted_bad):
    report = validate(da.from_array(planted_bad, chunks=(6, 4)), scheduler="sync")
    data = report.as_dict()
    assert json.loads(json.dumps(data))["first_negative_chunk"] == [1, 1]
    assert isinstance(report, ValidationReport)


def test_validate_rejects_non_2d():
    with pytest.raises(InputError, match=r"X must be 2-D .* got shape \(2, 2, 2\)"):
        validate(da.ones((2, 2, 2)))


@pytest.mark.parametrize(
    "shape, k, message",
    [
        ((100, 20), 0, "rank k=0 is impossible for X of shape (100, 20): choose 1 <= k <= 20"),
        ((100, 20), -3, "rank k=-3 is impossible for X of shape (100, 20): choose 1 <= k <= 20"),
        ((100, 20), 21, "rank k=21 is impossible for X of shape (100, 20): choose 1 <= k <= 20"),
        ((5, 300), 6, "rank k=6 is impossible for X of shape (5, 300): choose 1 <= k <= 5"),
        ((100, 20), 2.5, "rank k=2.5 must be an integer: choose 1 <= k <= 20"),
        ((100, 20), True, "rank k=True must be an integer: choose 1 <= k <= 20"),
        ((100, 20), "3", "rank k='3' must be an integer: choose 1 <= k <= 20"),
    ],
)
def test_check_rank_errors(shape, k, message):
    with pytest.raises(InputError, match=re.escape(message)):
        check_rank(shape, k)


@pytest.mark.parametrize("k", [1, 20, np.int64(7)])
def test_check_rank_ok(k):
    assert check_rank((100, 20), k) == int(k) and type(check_rank((100, 20), k)) is int


@pytest.mark.parametrize("stored_chunks", [None, (6, 4)])
def test_numpy_x_is_validated_here_as_one_block(planted_bad, stored_chunks):
    """A numpy X (an in-process fit's) is summarised without a graph: the report of the same
    X as one dask block, field for field, messages and chunk positions included."""
    here = validate(planted_bad, stored_chunks=stored_chunks)
    graph = validate(da.from_array(planted_bad, chunks=planted_bad.shape), scheduler="sync",
                     stored_chunks=stored_chunks)
    assert here == graph
    assert here.problems() == graph.problems()
