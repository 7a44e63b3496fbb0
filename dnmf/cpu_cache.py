"""The CPU's data caches, as the operating system reports them: what sizes the sub-blocks of
the fused panel kernel (:func:`dnmf.kernels.panel_step`).

Linux lists each cache of a CPU under ``/sys/devices/system/cpu/cpu0/cache/index*`` with its
level, type, size and the CPUs that share it; elsewhere ``os.sysconf`` may know the sizes. A
cache shared by several CPUs counts for its share per CPU, because every worker thread runs
its own panel at the same time.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

#: Assumed when the system reports nothing: a common server core's share (bytes).
FALLBACK_L2_BYTES = 1 << 20
FALLBACK_L3_SHARE_BYTES = 2 << 20

_SYS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


def _parse_size(text: str) -> int:
    """``"512K"``, ``"32768K"``, ``"1M"`` or a plain number of bytes."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def _count_cpus(cpu_list: str) -> int:
    """How many CPUs a list such as ``"0-3,8-11"`` names."""
    count = 0
    for part in cpu_list.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return max(count, 1)


@functools.lru_cache(maxsize=1)
def data_cache_share() -> dict[int, int]:
    """Bytes of each data (or unified) cache level available to one CPU: ``{level: bytes}``,
    each cache's size divided by the number of CPUs that share it. Empty when unknown."""
    shares: dict[int, int] = {}
    try:
        entries = sorted(_SYS_CACHE.glob("index*"))
        for entry in entries:
            if (entry / "type").read_text().strip() == "Instruction":
                continue
            level = int((entry / "level").read_text())
            size = _parse_size((entry / "size").read_text())
            sharing = _count_cpus((entry / "shared_cpu_list").read_text())
            shares[level] = size // sharing
    except (OSError, ValueError):
        shares = {}
    if not shares:
        for level, name in ((2, "SC_LEVEL2_CACHE_SIZE"), (3, "SC_LEVEL3_CACHE_SIZE")):
            try:
                size = os.sysconf(name)
            except (ValueError, OSError, AttributeError):
                continue
            if size and size > 0:
                shares[level] = int(size)
    return shares


def l2_bytes() -> int:
    """One CPU's level-2 cache (bytes)."""
    return data_cache_share().get(2, FALLBACK_L2_BYTES)


def l3_share_bytes() -> int:
    """One CPU's share of the last-level cache (bytes); its L2 where there is no L3."""
    shares = data_cache_share()
    return shares.get(3, shares.get(2, FALLBACK_L3_SHARE_BYTES))
