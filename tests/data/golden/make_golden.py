"""Write the golden fixtures of ``tests/test_golden.py``: one ``<case>.npz`` per case of
``benchmarks/golden.py`` (W, H, the loss history, n_iter, the restarts' final losses, whether
the 2-D scheme ran, and the sha256 of the input X).

The fixtures in this directory were made with the code *before* the pipeline refactor, commit
09191ab, so that the tests prove the refactor changed no result::

    git worktree add /tmp/baseline 09191ab
    PYTHONPATH=/tmp/baseline python tests/data/golden/make_golden.py

Running it again (with the ``dnmf`` that ``PYTHONPATH`` selects) regenerates them; it prints
which ``dnmf`` it ran. The case table is loaded from this checkout's ``benchmarks/golden.py`` by
its path, so that an older ``benchmarks`` package on ``PYTHONPATH`` does not hide it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def load_cases():
    """``benchmarks/golden.py`` of this checkout, as a module."""
    spec = importlib.util.spec_from_file_location("golden_cases", ROOT / "benchmarks" / "golden.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def commit_of(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    import dnmf

    golden = load_cases()
    source = Path(dnmf.__file__).resolve().parent
    commit = commit_of(source)
    print(f"dnmf from {source} (commit {commit})")
    for name, case in golden.CASES.items():
        X = case.data()
        out = golden.run_case(case, X)
        path = HERE / f"{name}.npz"
        np.savez_compressed(
            path, W=out.W, H=out.H, loss_history=out.loss_history, n_iter=out.n_iter,
            is_2d=out.is_2d, restart_losses=out.restart_losses, x_sha256=golden.x_sha256(X),
            call=repr(case.call), runner=case.runner.__name__, dnmf_commit=commit,
            numpy=np.__version__)
        print(f"{name:<12} n_iter={out.n_iter} final loss {out.loss_history[-1]:.10g} -> "
              f"{path.name} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
