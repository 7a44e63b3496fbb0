"""The raw chunk reader of uncompressed local Zarr: the same values as zarr-python, or none."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import zarr

from dnmf.errors import InputError
from dnmf.io import open_matrix
from dnmf.io.zarr_ import RawChunks, ZarrChunkReader

SHAPE, CHUNKS = (23, 10), (5, 4)  # edge chunks in both dimensions


@pytest.fixture
def values():
    return np.random.default_rng(0).random(SHAPE)


def store(tmp_path, values, *, zarr_format=3, dtype="float32", path="x.zarr", **kw):
    arr = zarr.create_array(str(tmp_path / path), shape=SHAPE, chunks=CHUNKS, dtype=dtype,
                            compressors=None, zarr_format=zarr_format, **kw)
    arr[...] = values.astype(dtype)
    return arr


BLOCKS = [
    (slice(0, 5), slice(0, 4)),  # exactly one chunk
    (slice(20, 23), slice(8, 10)),  # the corner edge chunk
    (slice(6, 9), slice(1, 3)),  # inside one chunk
    (slice(0, 23), slice(0, 10)),  # everything
    (slice(3, 17), slice(2, 9)),  # across chunks, unaligned
    (slice(None), slice(None)),
]


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int16", "uint8"])
def test_raw_blocks_equal_zarr(tmp_path, values, zarr_format, dtype):
    arr = store(tmp_path, values * 100, zarr_format=zarr_format, dtype=dtype)
    raw = RawChunks.of(arr)
    assert raw is not None
    for key in BLOCKS:
        block = raw.read(key)
        expected = arr[key]
        assert block.dtype == expected.dtype
        np.testing.assert_array_equal(block, expected)


def test_a_whole_chunk_is_a_view_of_the_file_and_a_span_is_a_new_array(tmp_path, values):
    raw = RawChunks.of(store(tmp_path, values))
    one = raw.read((slice(5, 10), slice(0, 4)))
    assert not one.flags.owndata and not one.flags.writeable  # the mapped file itself
    span = raw.read((slice(0, 10), slice(0, 4)))
    assert span.flags.owndata and span.flags.writeable


def test_missing_chunks_read_as_the_fill_value(tmp_path, values):
    arr = zarr.create_array(str(tmp_path / "x.zarr"), shape=SHAPE, chunks=CHUNKS,
                            dtype="float64", compressors=None, fill_value=-1.0)
    arr[:5, :4] = values[:5, :4]  # only chunk (0, 0) is written
    raw = RawChunks.of(arr)
    np.testing.assert_array_equal(raw.read((slice(0, 10), slice(0, 10))), arr[:10, :10])
    np.testing.assert_array_equal(raw.read((slice(6, 9), slice(5, 7))), -1.0)


def test_array_in_a_group(tmp_path, values):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    arr = group.create_array("sub/x", shape=SHAPE, chunks=CHUNKS, dtype="float32",
                             compressors=None)
    arr[...] = values
    raw = RawChunks.of(arr)
    np.testing.assert_array_equal(raw.read((slice(2, 19), slice(0, 10))), arr[2:19])


@pytest.mark.parametrize("kw", [
    dict(compressors=zarr.codecs.ZstdCodec()),
    dict(shards=(10, 8)),
    dict(dtype=">f8"),  # byte-swapped on disk: zarr converts it
], ids=["zstd", "sharded", "big-endian"])
def test_other_layouts_are_left_to_zarr(tmp_path, values, kw):
    kw = {"compressors": None, "dtype": "float64", **kw}
    arr = zarr.create_array(str(tmp_path / "x.zarr"), shape=SHAPE, chunks=CHUNKS, **kw)
    arr[...] = values
    assert RawChunks.of(arr) is None
    np.testing.assert_array_equal(ZarrChunkReader(arr, "x")[2:19, 1:9], values[2:19, 1:9])


def test_a_truncated_chunk_file_still_gets_the_damage_error(tmp_path, values):
    store(tmp_path, values)
    chunk = tmp_path / "x.zarr" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:7])
    X = open_matrix(str(tmp_path / "x.zarr")).array
    with pytest.raises(InputError, match=r"chunk \(1, 0\).*rows 5-9.*c/1/0.*damaged"):
        X.compute(scheduler="sync")


def test_reader_pickles_and_reads_after(tmp_path, values):
    reader = ZarrChunkReader(store(tmp_path, values), "x")
    again = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(again[0:23, 0:10], values.astype("float32"))


def test_open_matrix_reads_raw_stores_exactly(tmp_path, values):
    store(tmp_path, values, dtype="float64")
    X = open_matrix(str(tmp_path / "x.zarr")).array
    assert os.path.exists(tmp_path / "x.zarr" / "c" / "0" / "0")
    np.testing.assert_array_equal(X.compute(scheduler="sync"), values)
