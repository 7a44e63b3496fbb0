"""The CPU cache sizes that size the fused panel kernel's sub-blocks."""

from __future__ import annotations

import pytest

from dnmf import cpu_cache


@pytest.mark.parametrize("text,expected", [("512K", 512 * 1024), ("32768K", 32 << 20),
                                           ("1M", 1 << 20), ("4096", 4096), (" 48K\n", 48 << 10)])
def test_cache_sizes_parse_as_the_kernel_writes_them(text, expected):
    assert cpu_cache._parse_size(text) == expected


@pytest.mark.parametrize("cpus,expected", [("0", 1), ("0-1", 2), ("0-3,8-11", 8), ("5,7", 2)])
def test_shared_cpu_lists_count_every_cpu(cpus, expected):
    assert cpu_cache._count_cpus(cpus) == expected


def test_cache_shares_are_positive_and_l3_falls_back_to_l2():
    shares = cpu_cache.data_cache_share()
    assert all(size > 0 for size in shares.values())
    assert cpu_cache.l2_bytes() > 0
    expected = shares.get(3, shares.get(2, cpu_cache.FALLBACK_L3_SHARE_BYTES))
    assert cpu_cache.l3_share_bytes() == expected
