"""The CPU-side logic of ``benchmarks/gpu.py``: its data, its comparison and its report (the
timings themselves need a GPU and run only as a benchmark)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import gpu
from benchmarks.run import machine
from dnmf.device import gpu_count
from dnmf.errors import InputError


def test_planted_matrix_does_not_depend_on_its_blocks():
    X = gpu.planted_matrix(1_000, 30, 4, seed=5, block_rows=300)
    assert X.shape == (1_000, 30) and X.dtype == np.float32
    assert X.min() >= 0
    np.testing.assert_array_equal(X[:300], gpu.planted_matrix(300, 30, 4, seed=5,
                                                              block_rows=300))
    # rank 4 plus a small noise: the fifth singular value is far below the fourth
    s = np.linalg.svd(X.astype(np.float64), compute_uv=False)
    assert s[4] < 0.05 * s[3]


def _fit(device: str, seconds: float, rel: float) -> dict:
    return {"solver": "hals", "k": 20, "device": device, "s_per_iter": seconds,
            "relative_error": rel}


@pytest.mark.parametrize(("gpu_rel", "agree"), [(0.1004, True), (0.1006, False)])
def test_compare_gives_the_speedup_and_the_agreement(gpu_rel, agree):
    row = gpu.compare(_fit("cpu", 3.0, 0.1), _fit("gpu", 0.25, gpu_rel))
    assert row["speedup"] == pytest.approx(12.0)
    assert row["relative_error_gap"] == pytest.approx(abs(gpu_rel - 0.1) / 0.1)
    assert row["agree"] is agree


def test_render_has_one_row_per_fit_and_flags_disagreement():
    rows = [gpu.compare(_fit("cpu", 3.0, 0.1), _fit("gpu", 0.25, 0.1)),
            gpu.compare(_fit("cpu", 3.0, 0.1), _fit("gpu", 0.5, 0.2))]
    report = {"profile": "quick", "date": "2026-01-01", "machine": machine(), "gpu": "a GPU",
              "cupy": "14.0", "cuda_runtime": 13000, "iters": 4, "rows": rows,
              "x": {"rows": 250_000, "cols": 500, "planted_k": 20, "gb": 0.5}}
    text = gpu.render(report)
    table = [line for line in text.splitlines() if line.startswith("| hals |")]
    assert len(table) == 2
    assert "| 12.0x |" in table[0] and "over" not in table[0]
    assert "(over 0.5%)" in table[1]


@pytest.mark.skipif(gpu_count() > 0, reason="a CUDA device is present")
def test_main_without_a_gpu_is_one_clear_error():
    with pytest.raises(InputError, match=r"device='gpu' (needs CuPy|but CuPy finds no CUDA)"):
        gpu.main(["--quick"])


def test_help_works():
    with pytest.raises(SystemExit) as info:
        gpu.main(["--help"])
    assert info.value.code == 0
