"""Sparse (CSR) inputs: every layout opens lazily into csr_matrix row panels, reads only its
rows, works on worker processes, validates like the same matrix dense, and fails clearly."""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as da
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import dnmf.io.common as common
import dnmf.io.hdf5 as hdf5
from dnmf.errors import InputError, OutputError
from dnmf.io import MatrixSource, open_matrix, save_csr, validate
from dnmf.io.sparse import MemoryCSR, panel_rows, target_nnz

# --- layouts: (directory, matrix) -> (source, var, format, reported var) ---------------------
Written = tuple[Any, str | None, str, str | None]


def _anndata_attrs(group: Any, shape: tuple[int, int]) -> None:
    group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": [int(s) for s in shape]})


def write_zarr_root(d: Path, m: sp.csr_matrix) -> Written:
    save_csr(d / "x.zarr", m, chunk_nnz=16)
    return str(d / "x.zarr"), None, "zarr", None


def write_zarr_anndata(d: Path, m: sp.csr_matrix) -> Written:
    """An AnnData-like zarr v2 store: X is the sparse group; obsm/X_pca is a dense 2-D
    distractor that the plain dense engine would have picked."""
    root = zarr.open_group(d / "ad.zarr", mode="w", zarr_format=2)
    root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    x = root.create_group("X")
    for name in ("data", "indices", "indptr"):
        x.create_array(name, data=getattr(m, name), chunks=(32,))
    _anndata_attrs(x, m.shape)
    root.create_array("obsm/X_pca", data=np.ones((m.shape[0], 2), dtype="f4"))
    root.create_array("obs/_index", data=np.arange(m.shape[0]))
    return str(d / "ad.zarr"), None, "zarr", "X"


def write_zarr_scipy_names(d: Path, m: sp.csr_matrix) -> Written:
    """scipy.sparse.save_npz's member names in a zarr group: the shape is an array."""
    g = zarr.open_group(d / "s.zarr", mode="w").create_group("mats/counts")
    for name in ("data", "indices", "indptr"):
        g.create_array(name, data=getattr(m, name))
    g.create_array("shape", data=np.array(m.shape, dtype=np.int64))
    g.attrs["format"] = "csr"
    return str(d / "s.zarr"), "mats/counts", "zarr", "mats/counts"


def write_hdf5_root(d: Path, m: sp.csr_matrix) -> Written:
    save_csr(d / "x.h5", m, chunk_nnz=16)
    return str(d / "x.h5"), None, "hdf5", None


def write_h5ad(d: Path, m: sp.csr_matrix) -> Written:
    """An AnnData-like .h5ad: sparse X and layers/counts, a dense obsm/X_pca."""
    with h5py.File(d / "x.h5ad", "w") as f:
        f.attrs["encoding-type"] = "anndata"
        for path in ("X", "layers/counts"):
            g = f.create_group(path)
            for name in ("data", "indices", "indptr"):
                g.create_dataset(name, data=getattr(m, name))
            g.attrs["encoding-type"] = "csr_matrix"
            g.attrs["shape"] = np.array(m.shape)
        f.create_dataset("obsm/X_pca", data=np.ones((m.shape[0], 2)))
    return str(d / "x.h5ad"), None, "hdf5", "/X"


def write_h5sparse(d: Path, m: sp.csr_matrix) -> Written:
    """The older h5sparse attributes, bytes-valued, with var naming the group."""
    with h5py.File(d / "old.hdf5", "w") as f:
        g = f.create_group("data/M")
        for name in ("data", "indices", "indptr"):
            g.create_dataset(name, data=getattr(m, name), chunks=True)
        g.attrs["h5sparse_format"] = np.bytes_(b"csr")
        g.attrs["h5sparse_shape"] = np.array(m.shape)
    return str(d / "old.hdf5"), "/data/M", "hdf5", "/data/M"


def write_npz(d: Path, m: sp.csr_matrix) -> Written:
    sp.save_npz(d / "x.npz", m)
    return str(d / "x.npz"), None, "npz", None


def write_memory(d: Path, m: sp.csr_matrix) -> Written:
    return m, None, "scipy", None


LAYOUTS: dict[str, Callable[[Path, sp.csr_matrix], Written]] = {
    f.__name__.removeprefix("write_"): f
    for f in (write_zarr_root, write_zarr_anndata, write_zarr_scipy_names, write_hdf5_root,
              write_h5ad, write_h5sparse, write_npz, write_memory)
}


@pytest.fixture(params=["float32", "float64"])
def Md(request: pytest.FixtureRequest, M: sp.csr_matrix) -> sp.csr_matrix:
    """The reference matrix in each stored float dtype."""
    return M.astype(request.param)


@pytest.fixture(params=list(LAYOUTS))
def written(request: pytest.FixtureRequest, tmp_path: Path, Md: sp.csr_matrix):
    yield LAYOUTS[request.param](tmp_path, Md)
    hdf5.close_cached_files()


def stored_nbytes(m: sp.csr_matrix) -> int:
    return m.nnz * (m.data.itemsize + m.indices.itemsize) + m.indptr.nbytes


def block_list(src: MatrixSource, scheduler: Any = "sync") -> list[Any]:
    return list(da.compute(*src.array.to_delayed().ravel(), scheduler=scheduler))


def as_dense(blocks: list[Any]) -> np.ndarray:
    return sp.vstack(blocks).toarray()


# --- every layout ---------------------------------------------------------------------------


def test_open_every_layout_lazily(written, Md, count_computes):
    source, var, fmt, reported = written
    src = open_matrix(source, var)
    assert count_computes.calls == 0, "opening must not compute anything"
    path = None if fmt == "scipy" else source
    assert (src.format, src.path, src.var) == (fmt, path, reported)
    assert (src.sparse, src.nnz, src.stored_chunks) == (True, Md.nnz, None)
    assert (src.shape, src.dtype, src.stored_dtype) == (Md.shape, Md.dtype, str(Md.dtype))
    assert isinstance(src.array._meta, sp.csr_matrix) and src.chunks[1] == (9,)
    assert src.nbytes == stored_nbytes(Md) < Md.shape[0] * Md.shape[1] * Md.dtype.itemsize
    notes = [n for n in src.notes if not n.startswith(".npz members")]
    assert notes == [] and (fmt == "npz") == (len(src.notes) == 1)
    blocks = block_list(src)
    assert all(type(b) is sp.csr_matrix and b.dtype == Md.dtype for b in blocks)
    np.testing.assert_array_equal(as_dense(blocks), Md.toarray())


def test_describe_is_json_and_honest(written, Md):
    source, var, fmt, _ = written
    desc = open_matrix(source, var).describe()
    assert json.loads(json.dumps(desc)) == desc
    assert (desc["format"], desc["shape"], desc["dtype"]) == (fmt, [60, 9], str(Md.dtype))
    assert (desc["sparse"], desc["nnz"], desc["nbytes"]) == ("csr", Md.nnz, stored_nbytes(Md))


def test_requested_row_chunks(written, Md):
    source, var, *_ = written
    for chunks, expected in [
        (7, (7,) * 8 + (4,)),  # panels of 7 rows, the last one short
        ((20, 30, 10), (20, 30, 10)),  # explicit panels summing to n_samples
        ((25, 9), (25, 25, 10)),  # dask-style (rows, all columns)
        ((25, -1), (25, 25, 10)),
        (-1, (60,)),  # one panel
    ]:
        src = open_matrix(source, var, chunks=chunks)
        assert src.chunks == (expected, (9,)), chunks
    blocks = block_list(open_matrix(source, var, chunks=7))
    assert [b.shape for b in blocks] == [(7, 9)] * 8 + [(4, 9)]
    for i, b in enumerate(blocks):
        np.testing.assert_array_equal(b.toarray(), Md[7 * i : 7 * i + 7].toarray())


def test_forced_dtype_converts_on_read(written, Md):
    source, var, *_ = written
    other = "float32" if Md.dtype == np.float64 else "float64"
    src = open_matrix(source, var, dtype=other)
    assert src.dtype == np.dtype(other) and src.stored_dtype == str(Md.dtype)
    assert f"{Md.dtype} input converted to {other} (dtype={other})" in src.notes
    blocks = block_list(src)
    assert {b.dtype for b in blocks} == {np.dtype(other)}
    np.testing.assert_allclose(as_dense(blocks), Md.toarray(), rtol=1e-6)


def test_validate_matches_dense(written, Md):
    source, var, *_ = written
    src = open_matrix(source, var, chunks=13)
    report = validate(src, scheduler="sync")
    dense = validate(da.from_array(Md.toarray(), chunks=(13, 9)), scheduler="sync")
    assert (report.n_zero_rows, report.n_zero_cols) == (7, 1)  # rows 3, 10, 40-44; column 4
    assert report.min_value == 0.0 and report.max_value == Md.max()
    for name, value in dense.as_dict().items():
        if name in ("sq_norm", "total"):
            assert getattr(report, name) == pytest.approx(value, rel=1e-12), name
        else:
            assert report.as_dict()[name] == value, name


# --- row panels -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "indptr, target, stored, expected",
    [
        # each row costs its entries + 1: rows cost 4, 1, 7, 2, 1
        ([0, 3, 3, 9, 10, 10], 6, None, (2, 1, 2)),
        # a target below one row's cost still gives a panel of that one row
        ([0, 3, 3, 9, 10, 10], 1, None, (1, 1, 1, 1, 1)),
        # everything fits: one panel
        ([0, 3, 3, 9, 10, 10], 100, None, (5,)),
        # a stored chunk of 12 entries raises the target 6 to one whole stored chunk
        ([0, 3, 3, 9, 10, 10], 6, 12, (3, 2)),
        # the target is rounded down to whole stored chunks (14 -> 12; 14 would give (4, 1))
        ([0, 3, 3, 9, 10, 10], 14, 4, (3, 2)),
        ([0, 3, 3, 9, 10, 10], 14, None, (4, 1)),
        # empty rows only: bounded by the one-per-row cost
        ([0] * 11, 4, None, (4, 4, 2)),
        # indptr need not start at zero (a slice of a bigger store)
        ([5, 8, 8, 14, 15, 15], 6, None, (2, 1, 2)),
    ],
)
def test_panel_rows(indptr, target, stored, expected):
    assert panel_rows(np.array(indptr), target, stored) == expected


def test_default_panels_follow_the_entries(tmp_path, monkeypatch):
    # Rows 0-99 hold 1 entry each, rows 100-119 hold 20: panels get shorter where it is dense.
    dense = np.zeros((120, 30), dtype=np.float32)
    dense[:100, 0] = 1.0
    dense[100:, 10:] = 2.0
    m = sp.csr_matrix(dense)
    monkeypatch.setattr(common, "TARGET_CHUNK_BYTES", 8 * 42)  # 42 entries of float32 + int32
    assert target_nnz(4, 4) == 42
    src = open_matrix(m)
    rows = src.chunks[0]
    assert sum(rows) == 120 and rows[0] == 21 and rows[-1] == 2, rows
    starts = np.cumsum((0, *rows))
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        assert m.indptr[b] - m.indptr[a] + (b - a) <= 42 or b - a == 1
    # a zarr store's data chunking (64 entries) raises the target to one stored chunk
    save_csr(tmp_path / "c.zarr", m, chunk_nnz=64)
    rows = open_matrix(tmp_path / "c.zarr").chunks[0]
    assert rows[0] == 32 and sum(rows) == 120, rows


def test_reader_reads_only_its_rows(M):
    class Recording:
        def __init__(self, values: np.ndarray, log: list) -> None:
            self.values, self.log = values, log

        def __getitem__(self, key: slice) -> np.ndarray:
            self.log.append((key.start, key.stop))
            return self.values[key]

    class RecordingCSR(MemoryCSR):
        def __init__(self, matrix: sp.csr_matrix) -> None:
            super().__init__(matrix, np.float32)
            self.log: dict[str, list] = {"data": [], "indices": [], "indptr": []}

        def members(self) -> tuple[Any, Any, Any]:
            return tuple(Recording(getattr(self.matrix, k), self.log[k])
                         for k in ("data", "indices", "indptr"))

    reader = RecordingCSR(M)
    block = reader.read(20, 30)
    lo, hi = int(M.indptr[20]), int(M.indptr[30])
    assert reader.log == {"indptr": [(20, 31)], "data": [(lo, hi)], "indices": [(lo, hi)]}
    assert type(block) is sp.csr_matrix and block.shape == (10, 9) and block.dtype == np.float32
    np.testing.assert_array_equal(block.toarray(), M[20:30].toarray().astype(np.float32))


def test_panels_of_an_in_memory_matrix_share_its_memory():
    """A panel is a view of the matrix, and scipy does not copy it in products either (it
    copies views of less than half an array; see dnmf.io.sparse._Window)."""
    M = sp.random(400, 30, density=0.2, format="csr", dtype=np.float32, random_state=1)
    block = MemoryCSR(M, np.float32).read(100, 150)
    assert np.shares_memory(block.data, M.data) and np.shares_memory(block.indices, M.indices)
    assert np.shares_memory(block.T.data, M.data)
    W = np.random.default_rng(0).random((50, 3)).astype(np.float32)
    np.testing.assert_allclose(block.T @ W, M[100:150].toarray().T @ W, rtol=1e-6)
    # a conversion of the values copies them, as it must, and leaves M alone
    block64 = MemoryCSR(M, np.float64).read(100, 150)
    assert block64.dtype == np.float64 and not np.shares_memory(block64.data, M.data)
    np.testing.assert_array_equal(block64.toarray(), M[100:150].toarray())


def test_in_row_panels_cuts_without_rechunking(M):
    """The chunk plan's panels of a CSR source are read from the matrix, not split from a
    larger panel by dask (which copies)."""
    src = open_matrix(M)
    panels = src.in_row_panels((25, 35))
    assert panels.chunks == ((25, 35), (9,))
    assert not any(name.startswith("rechunk") for name in panels.dask.layers)
    blocks = panels.to_delayed().ravel()
    first = blocks[0].compute(scheduler="sync")
    assert np.shares_memory(first.data, M.data)
    np.testing.assert_array_equal(panels.compute().toarray(), M.toarray())


# --- worker processes -----------------------------------------------------------------------


@pytest.mark.cluster
def test_layouts_on_process_cluster(local_client, tmp_path, M):
    """Readers travel to 2 worker processes and open the stores there."""
    sources = [LAYOUTS[k](tmp_path, M)[:2]
               for k in ("zarr_root", "hdf5_root", "h5ad", "npz", "memory")]
    for source, var in sources:
        src = open_matrix(source, var, chunks=15)
        blocks = local_client.gather(local_client.compute(list(src.array.to_delayed().ravel())))
        assert [type(b) for b in blocks] == [sp.csr_matrix] * 4, source
        np.testing.assert_array_equal(as_dense(blocks), M.toarray())
        report = validate(src.array, scheduler=local_client)
        assert (report.n_chunks, report.n_zero_rows, report.n_negative) == (4, 7, 0)
    workers = local_client.run(lambda: __import__("os").getpid())
    assert len(set(workers.values())) == 2


def test_reader_pickles_without_its_cache(tmp_path, M):
    save_csr(tmp_path / "p.zarr", M)
    src = open_matrix(tmp_path / "p.zarr")
    src.array.compute(scheduler="sync")  # fills the reader's per-process cache
    restored = pickle.loads(pickle.dumps(src.array))
    np.testing.assert_array_equal(restored.compute(scheduler="sync").toarray(), M.toarray())
    reader = next(v for v in src.array.dask.values() if hasattr(v, "read"))
    assert "_cache" in reader.__dict__ and "_cache" not in pickle.loads(pickle.dumps(reader)).__dict__


# --- validation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad() -> sp.csr_matrix:
    """20 x 6 float32 with negatives, NaN and Inf at known places, stored sparse."""
    dense = np.zeros((20, 6), dtype=np.float32)
    dense[::2, 1] = 1.0
    dense[1::3, 5] = 2.0
    dense[7, 3] = -0.5  # the first negative: panel (1, 0) with 5-row panels
    dense[16, 0] = -0.25
    dense[12, 2] = np.nan  # the first non-finite
    dense[18, 4] = np.inf
    dense[19, 1] = -np.inf
    return sp.csr_matrix(dense)


def test_validate_sparse_counts_and_positions(bad):
    report = validate(open_matrix(bad, chunks=5), scheduler="sync")
    assert (report.n_negative, report.n_nan, report.n_inf) == (2, 1, 2)
    assert (report.min_value, report.max_value) == (-0.5, 2.0)
    assert report.first_negative_at == (7, 3) and report.first_negative_chunk == (1, 0)
    assert report.first_nonfinite_at == (12, 2) and report.first_nonfinite_chunk == (2, 0)
    assert report.first_inf_at == (18, 4) and report.first_inf_chunk == (3, 0)
    assert report.problems()[0] == (
        "X has 2 negative entries (min -0.5), the first at row 7, column 3 in chunk (1, 0); "
        "NMF needs X >= 0 — clip or shift the data first"
    )
    dense = validate(da.from_array(bad.toarray(), chunks=(5, 6)), scheduler="sync")
    assert report.problems() == dense.problems()
    assert report.sq_norm == pytest.approx(dense.sq_norm, rel=1e-12)


@pytest.mark.parametrize(
    "dense, expected_min, expected_max",
    [
        (np.array([[1.0, 2.0], [3.0, 4.0]]), 1.0, 4.0),  # every entry stored: no implicit 0
        (np.array([[1.0, 0.0], [3.0, 4.0]]), 0.0, 4.0),  # one implicit zero counts
        (np.array([[-1.0, 0.0], [0.0, -3.0]]), -3.0, 0.0),  # ... toward the max as well
        (np.array([[np.nan, 0.0], [0.0, 0.0]]), 0.0, 0.0),  # NaN is not a value
    ],
)
def test_implicit_zeros_in_min_and_max(dense, expected_min, expected_max):
    m = sp.csr_matrix(dense)
    report = validate(open_matrix(m, chunks=1), scheduler="sync")
    assert (report.min_value, report.max_value) == (expected_min, expected_max)
    reference = validate(da.from_array(dense, chunks=(1, 2)), scheduler="sync")
    assert (reference.min_value, reference.max_value) == (expected_min, expected_max)


def test_huge_shape_is_never_densified():
    # 2e6 x 3e6 float64 would be 48 TB dense; 10 stored entries, one of them negative.
    rows = np.arange(10) * 150_000
    cols = np.arange(10) * 290_000 + 7
    values = np.arange(1.0, 11.0)
    values[6] = -2.0
    m = sp.csr_matrix((values, (rows, cols)), shape=(2_000_000, 3_000_000))
    src = open_matrix(m, chunks=500_000)
    assert src.nbytes == 10 * 12 + 2_000_001 * 4
    report = validate(src, scheduler="sync")
    assert (report.n_zero_rows, report.n_zero_cols) == (2_000_000 - 10, 3_000_000 - 10)
    assert (report.min_value, report.max_value, report.n_negative) == (-2.0, 10.0, 1)
    assert report.first_negative_at == (900_000, 1_740_007)
    assert report.first_negative_chunk == (1, 0)
    assert report.sq_norm == float((values**2).sum())


def test_validate_sums_duplicate_entries():
    # (0, 1) stored twice, +2 and -2: the entry is 0, so row 0 and column 1 are zero.
    m = sp.csr_matrix((np.array([2.0, 5.0, -2.0, 1.0]), np.array([1, 0, 1, 0]),
                       np.array([0, 3, 4])), shape=(2, 3))
    assert not m.has_canonical_format
    report = validate(open_matrix(m), scheduler="sync")
    assert (report.n_negative, report.n_zero_cols, report.sq_norm) == (0, 2, 26.0)
    assert report.first_negative_at is None
    np.testing.assert_array_equal(m.toarray(), [[5.0, 0.0, 0.0], [1.0, 0.0, 0.0]])


def test_validate_sparse_in_one_compute(M, count_computes):
    validate(open_matrix(M, chunks=10))
    assert count_computes.calls == 1
    report = validate(M)  # a bare scipy matrix is accepted too
    assert count_computes.calls == 2 and report.n_zero_rows == 7 and report.dtype == "float64"


# --- dtypes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zarr", "hdf5", "npz", "memory"])
def test_integer_counts_become_float32(tmp_path, fmt):
    counts = sp.random(30, 8, density=0.4, format="csr", random_state=2, dtype=np.float64)
    counts.data = np.ceil(counts.data * 50)
    counts = counts.astype(np.int64)
    if fmt == "memory":
        source = counts
    elif fmt == "npz":
        sp.save_npz(tmp_path / "c.npz", counts)
        source = tmp_path / "c.npz"
    else:
        source = tmp_path / f"c.{'zarr' if fmt == 'zarr' else 'h5'}"
        save_csr(source, counts)
    src = open_matrix(source, chunks=8)
    assert src.dtype == np.float32 and src.stored_dtype == "int64"
    assert src.notes[0] == "integer input int64 converted to float32"
    blocks = block_list(src)
    assert {b.dtype for b in blocks} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(as_dense(blocks), counts.toarray().astype(np.float32))
    hdf5.close_cached_files()


def test_other_in_memory_formats_become_csr(M):
    for matrix in (M.tocoo(), M.tocsc(), sp.csr_array(M), M.tolil()):
        src = open_matrix(matrix)
        assert src.format == "scipy" and src.nnz == M.nnz
        if matrix.format != "csr":
            assert src.notes == (f"in-memory {matrix.format.upper()} matrix converted to CSR",)
        assert type(src.array.blocks[0].compute(scheduler="sync")) is sp.csr_matrix
        np.testing.assert_array_equal(src.array.compute(scheduler="sync").toarray(), M.toarray())


def test_reading_leaves_the_matrix_unchanged(M):
    # int64 offsets: the reader slices indptr without a dtype conversion (a view)
    m = M.copy()
    m.indices, m.indptr = m.indices.astype(np.int64), m.indptr.astype(np.int64)
    before = m.indptr.copy()
    assert m.indptr.dtype == np.int64
    blocks = block_list(open_matrix(m, chunks=7), scheduler="threads")
    np.testing.assert_array_equal(m.indptr, before)
    np.testing.assert_array_equal(as_dense(blocks), M.toarray())


def test_urls(memory_prefix, tmp_path, M):
    import fsspec

    fs = fsspec.filesystem("memory")
    save_csr(f"{memory_prefix}/m.zarr", M, chunk_nnz=32)
    write_h5ad(tmp_path, M)
    sp.save_npz(tmp_path / "m.npz", M)
    for name in ("x.h5ad", "m.npz"):
        fs.pipe(f"{memory_prefix}/{name}".removeprefix("memory://"), (tmp_path / name).read_bytes())
    file_url = (tmp_path / "x.h5ad").as_uri()
    for url, fmt in [(f"{memory_prefix}/m.zarr", "zarr"), (f"{memory_prefix}/x.h5ad", "hdf5"),
                     (f"{memory_prefix}/m.npz", "npz"), (file_url, "hdf5")]:
        src = open_matrix(url, chunks=25)
        assert (src.format, src.path, src.nnz) == (fmt, url, M.nnz)
        np.testing.assert_array_equal(as_dense(block_list(src)), M.toarray())
    hdf5.close_cached_files()


def test_dense_sources_are_not_sparse(X):
    src = open_matrix(X)
    assert (src.sparse, src.nnz, src.stored_nbytes) == (False, None, None)
    assert src.nbytes == X.nbytes and "sparse" not in src.describe()


def test_dask_array_of_sparse_blocks(M):
    x = da.from_array(M, chunks=(20, 9), asarray=False)
    src = open_matrix(x)
    assert (src.format, src.sparse, src.nnz) == ("dask", True, None)


# --- containers -----------------------------------------------------------------------------


def test_anndata_var_selects_other_layers(tmp_path, M):
    source, *_ = write_h5ad(tmp_path, M)
    src = open_matrix(source, "layers/counts")
    assert (src.var, src.sparse) == ("/layers/counts", True)
    dense = open_matrix(source, "obsm/X_pca")  # a dense member of the same file
    assert (dense.sparse, dense.shape) == (False, (60, 2))


def test_anndata_with_dense_x(tmp_path, X):
    root = zarr.open_group(tmp_path / "d.zarr", mode="w")
    root.attrs["encoding-type"] = "anndata"
    root.create_array("X", data=X)
    root.create_array("obsm/X_pca", data=X[:, :2])
    src = open_matrix(tmp_path / "d.zarr")
    assert (src.var, src.sparse, src.shape) == ("X", False, X.shape)


def test_save_csr_keeps_the_container(tmp_path, M):
    path = tmp_path / "k.zarr"
    zarr.open_group(path, mode="w").create_array("other", data=np.arange(3))
    save_csr(path, M, var="X")
    with pytest.raises(OutputError, match=r"group 'X' in .*k\.zarr already exists — pass "
                                          r"overwrite=True to replace it"):
        save_csr(path, M, var="X")
    save_csr(path, 2 * M, var="X", overwrite=True)
    assert "other" in zarr.open_group(path, mode="r")
    np.testing.assert_array_equal(open_matrix(path, "X").array.compute().toarray(), 2 * M.toarray())
    with pytest.raises(OutputError, match=r"k\.zarr already exists"):
        save_csr(path, M)
    attrs = dict(zarr.open_group(path, mode="r")["X"].attrs)
    assert attrs == {"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [60, 9]}


def test_save_csr_hdf5_over_an_open_file(tmp_path, M):
    path = tmp_path / "o.h5"
    save_csr(path, M)
    open_matrix(path).array.compute(scheduler="sync")  # leaves a cached handle open
    save_csr(path, 3 * M, overwrite=True)
    np.testing.assert_array_equal(open_matrix(path).array.compute().toarray(), 3 * M.toarray())
    hdf5.close_cached_files()


# --- errors ---------------------------------------------------------------------------------


def _group(d: Path, engine: str, attrs: dict, m: sp.spmatrix, *, extra: dict | None = None,
           **members: Any) -> Path:
    values = {"data": m.data, "indices": m.indices, "indptr": m.indptr, **members}
    values.update(extra or {})
    if engine == "zarr":
        g = zarr.open_group(d / "e.zarr", mode="w")
        for k, v in values.items():
            g.create_array(k, data=np.asarray(v))
        g.attrs.update(attrs)
        return d / "e.zarr"
    with h5py.File(d / "e.h5", "w") as f:
        for k, v in values.items():
            f.create_dataset(k, data=np.asarray(v))
        f.attrs.update(attrs)
    return d / "e.h5"


def _csc_npz(d: Path) -> Path:
    sp.save_npz(d / "c.npz", SMALL.tocsc())
    return d / "c.npz"


def _dense_npz(d: Path) -> Path:
    np.savez(d / "dense.npz", a=np.ones((2, 2)))
    return d / "dense.npz"


def _two_groups(d: Path) -> Path:
    save_csr(d / "two.zarr", SMALL, var="a")
    save_csr(d / "two.zarr", SMALL, var="b/c")
    zarr.open_group(d / "two.zarr", mode="a").create_array("d", data=np.ones((4, 3), "f4"))
    return d / "two.zarr"


SMALL = sp.csr_matrix(np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0], [4.0, 5.0, 0.0],
                                [0.0, 6.0, 0.0]]))
CSR = {"encoding-type": "csr_matrix", "shape": [4, 3]}
CSC = {"encoding-type": "csc_matrix", "shape": [4, 3]}
CONVERT = "convert to CSR, e.g. dnmf.io.sparse.save_csr("

# One row per error: id, input made from tmp_path, var, kwargs, message (regex).
# fmt: off
ERRORS = [
    ("csc zarr (anndata)", lambda d: _group(d, "zarr", CSC, SMALL.tocsc()), None, {},
     r"e\.zarr holds a CSC \(compressed sparse column\) matrix; dnmf reads X in row panels "
     r"and needs CSR — " + re.escape(CONVERT + "'X_csr.zarr', M.tocsr())")),
    ("csc hdf5 (h5sparse)",
     lambda d: _group(d, "hdf5", {"h5sparse_format": "csc", "h5sparse_shape": [4, 3]},
                      SMALL.tocsc()), None, {},
     r"e\.h5 holds a CSC .*" + re.escape(CONVERT + "'X_csr.h5', M.tocsr())")),
    ("csc inferred from indptr",
     lambda d: _group(d, "zarr", {"shape": [4, 3]}, SMALL.tocsc()), None, {},
     r"holds a CSC \(compressed sparse column\) matrix \(indptr has n_features \+ 1 "
     r"entries\)"),
    ("csc npz", _csc_npz, None, {},
     r"c\.npz holds a CSC .* — convert to CSR, e\.g\. scipy\.sparse\.save_npz\('X_csr\.npz', "
     r"scipy\.sparse\.load_npz\(PATH\)\.tocsr\(\)\)"),
    ("coo declared", lambda d: _group(d, "zarr", {"format": "coo", "shape": [4, 3]}, SMALL),
     None, {}, r"holds a COO sparse matrix; dnmf reads CSR — convert to CSR"),
    ("no shape", lambda d: _group(d, "hdf5", {}, SMALL), None, {},
     r"e\.h5 holds data/indices/indptr but no shape — add the attribute "
     r"shape=\[n_samples, n_features\]"),
    ("indptr too short", lambda d: _group(d, "zarr", CSR, SMALL, indptr=SMALL.indptr[:-1]),
     None, {},
     r"e\.zarr is not a valid CSR matrix: indptr has 4 entries, expected n_samples \+ 1 = 5 "
     r"for shape \(4, 3\) — rewrite it"),
    ("indptr falls", lambda d: _group(d, "zarr", CSR, SMALL, indptr=[0, 2, 1, 5, 6]),
     None, {}, r"e\.zarr is not a valid CSR matrix: indptr decreases at row 1 \(from 2 to 1\)"),
    ("indptr past data", lambda d: _group(d, "hdf5", CSR, SMALL, indptr=[0, 2, 3, 5, 9]),
     None, {}, r"indptr runs 0 \.\. 9, outside 0 \.\. 6 \(the length of data and indices\)"),
    ("float indices", lambda d: _group(d, "zarr", CSR, SMALL, indices=SMALL.indices * 1.0),
     None, {}, r"indices \(float64\) and indptr \(int32\) must be integers"),
    ("complex data", lambda d: _group(d, "zarr", CSR, SMALL, data=SMALL.data + 1j), None, {},
     r"X has complex dtype complex128"),
    ("empty shape", lambda d: _group(d, "zarr", {"shape": [0, 3]}, SMALL, indptr=[0]),
     None, {}, r"X is empty: shape \(0, 3\)"),
    ("two sparse groups and a dense array", _two_groups, None, {},
     r"two\.zarr holds 3 candidate matrices \(2 sparse, 1 dense\); pick one with var= "
     r"\(--var\): a \(4, 3\) float64 sparse, 6 stored, b/c \(4, 3\) float64 sparse, 6 stored, "
     r"d \(4, 3\) float32$"),
    ("npz without a sparse matrix", _dense_npz, None, {},
     r"dense\.npz is an \.npz archive without a scipy sparse matrix \(members: a\) — write it "
     r"with scipy\.sparse\.save_npz"),
    ("garbage npz", lambda d: (d / "g.npz").write_bytes(b"PK\x03\x04garbage") and d / "g.npz",
     None, {}, r"cannot read .*g\.npz as \.npz: "),
    ("var on npz", lambda d: sp.save_npz(d / "v.npz", SMALL) or d / "v.npz", "X", {},
     r"v\.npz is an \.npz file holding one sparse matrix, so var='X' does not apply"),
    ("var on in-memory sparse", lambda d: SMALL, "X", {}, r"var='X' applies to files only"),
    ("column chunks", lambda d: SMALL, None, {"chunks": (2, 1)},
     r"chunks=\(2, 1\) does not fit sparse X of shape \(4, 3\): pass an int \(rows per panel\) "
     r"or a tuple of row-panel sizes summing to 4; sparse X is read in row panels holding all "
     r"3 columns"),
    ("zero chunks", lambda d: SMALL, None, {"chunks": 0}, r"chunks=0 does not fit"),
]
# fmt: on


@pytest.mark.parametrize(
    "make, var, kwargs, message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_open_errors(make, var, kwargs, message, tmp_path):
    source = make(tmp_path)
    with pytest.raises(InputError, match=message) as info:
        open_matrix(source, var, **kwargs)
    assert "\n" not in str(info.value), "errors are one line"


def test_undeclared_square_matrix_gets_a_note(tmp_path):
    square = sp.csr_matrix(np.triu(np.ones((3, 3))))
    _group(tmp_path, "zarr", {}, square, shape=[3, 3])  # a 'shape' array, no format at all
    src = open_matrix(tmp_path / "e.zarr")
    assert src.notes == ("sparse format not declared; read as CSR (a square matrix could be "
                         "CSC — transpose the result if so)",)
    np.testing.assert_array_equal(src.array.compute().toarray(), square.toarray())


def test_bad_column_index_fails_on_read(tmp_path):
    _group(tmp_path, "zarr", CSR, SMALL, indices=[0, 2, 2, 0, 1, 7])
    src = open_matrix(tmp_path / "e.zarr", chunks=2)
    src.array.blocks[0].compute(scheduler="sync")  # rows 0-1 are fine
    with pytest.raises(InputError, match=r"column index 7 in rows 2-3, outside 0\.\.2"):
        src.array.blocks[1].compute(scheduler="sync")


def test_save_csr_argument_errors(tmp_path):
    with pytest.raises(InputError, match=r"format='npz' is not supported: choose 'zarr' or"):
        save_csr(tmp_path / "x", SMALL, format="npz")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"chunk_nnz=0 must be a positive integer"):
        save_csr(tmp_path / "x.zarr", SMALL, chunk_nnz=0)
    save_csr(tmp_path / "d.h5ad", SMALL.toarray())  # dense input keeps its non-zeros
    src = open_matrix(tmp_path / "d.h5ad")
    assert (src.format, src.nnz) == ("hdf5", 6)
    assert math.isclose(validate(src, scheduler="sync").sq_norm, float((SMALL.data**2).sum()))
    hdf5.close_cached_files()
