"""Golden cases: fixed small fits whose results pin what ``dnmf.factorize`` computes.

``python -m benchmarks.golden`` (or ``python benchmarks/golden.py``) from the repository root
runs every case of :data:`CASES` and prints one line per case: its name, the sha256 of W's
bytes, H's bytes and the loss history (float64, C order) together, and the iterations run.
On one machine (same CPU, same BLAS, same library versions) the hashes say whether a change
to the code changed any bit of any result::

    python -m benchmarks.golden --json /tmp/golden_before.json   # before the change
    python -m benchmarks.golden --compare /tmp/golden_before.json  # after: exit 1 if any differ

Across machines the last bits differ (other BLAS kernels, AVX-512 or not): there
``tests/test_golden.py`` compares the same cases with the fixtures in ``tests/data/golden/``
(written by ``tests/data/golden/make_golden.py``) within tolerances derived from the numerics.

The case table is shared by the three: every case is a data builder and the keyword arguments
of one ``dnmf.factorize`` call (a runner for the resumed case), run by :func:`run_case`. The
data are exact: integer planted factors whose product is exact in float64 whatever the
summation order, plus uniform noise added elementwise (correctly rounded), drawn from
``numpy.random.RandomState`` (a stream numpy keeps fixed): X is the same bits on every machine.
This module imports nothing of the benchmark suite, so the generators can load it by path next
to another copy of ``dnmf`` (``PYTHONPATH=/path/to/old/checkout``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

if __name__ == "__main__" and __package__ in (None, ""):
    # run as ``python benchmarks/golden.py``: this folder is first on sys.path, and its
    # sparse.py would hide the ``sparse`` package that dask imports
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]

#: The planted problem: 120 x 40, rank 4, float64.
N_SAMPLES, N_FEATURES, RANK = 120, 40, 4
#: Iterations of every case (``tol=0``: the count is fixed, never a convergence test).
MAX_ITER = 30
#: Keyword arguments of every case's ``factorize`` call.
COMMON: dict[str, Any] = {"scheduler": "threads", "random_state": 0, "tol": 0.0,
                          "max_iter": MAX_ITER}
#: Passed to every call besides :attr:`Case.call` (which the fixtures record, from before the
#: option): the loss of every iteration, as the fixtures hold it (the iterates do not depend on
#: ``loss_every``; only the β-divergence cases would otherwise skip the loss 9 times in 10).
EVERY_LOSS: dict[str, Any] = {"loss_every": 1}
#: The resumed case: interrupted at this iteration (a checkpoint every 5), resumed to MAX_ITER.
INTERRUPT_AT, CHECKPOINT_EVERY = 7, 5


def planted(n_samples: int = N_SAMPLES, n_features: int = N_FEATURES, rank: int = RANK, *,
            seed: int = 0, noise: float = 0.02, keep: float = 1.0, background: float = 0.5,
            simplex: bool = False, missing: float = 0.0) -> np.ndarray:
    """A planted non-negative ``X = W H + noise``, bit-identical on every machine.

    H: each component owns a block of ``n_features // rank`` features (integers 4..9) over a
    background of 0/1 (1 with probability ``background``): the components are far apart.
    W: integers 1..9 (a fraction ``1 - keep`` of them 0, every row keeping one), scaled by
    ``rank, rank - 1, ..., 1`` per column, so that the components' contributions differ by
    clear factors (their order is no near tie). ``W @ H`` is an exact integer. Noise:
    ``noise * mean(W H) * U[0, 1)`` added elementwise (only where ``W H > 0`` when
    ``keep < 1``, so that the zeros stay: the sparse case).

    simplex : rows of W divided by their sums (the abundances of ``w_sum_to_one``).
    missing : this fraction of the entries NaN (masked NMF).
    """
    rs = np.random.RandomState(seed)
    H = (rs.random_sample((rank, n_features)) < background).astype(np.int64)
    width = n_features // rank
    for j in range(rank):
        H[j, j * width:(j + 1) * width] = rs.randint(4, 10, size=width)
    W = rs.randint(1, 10, size=(n_samples, rank)).astype(np.int64)
    if keep < 1:
        kept = rs.random_sample((n_samples, rank)) < keep
        kept[np.arange(n_samples), np.arange(n_samples) % rank] = True
        W = W * kept
    W = W * np.arange(rank, 0, -1, dtype=np.int64)
    product = W @ H  # integers: exact in any order
    X = product.astype(np.float64)
    scale = noise * (float(product.sum()) / product.size)
    if simplex:
        rows = W.sum(axis=1, keepdims=True)
        X = X / rows.astype(np.float64)
        scale /= float(rows.sum()) / n_samples
    U = rs.random_sample(X.shape)
    X = X + (scale * U if keep == 1 else np.where(product > 0, scale * U, 0.0))
    if missing:
        X[rs.random_sample(X.shape) < missing] = np.nan
    return X


def planted_csr() -> Any:
    """A :func:`planted` X with 27% zeros (40% of W zero, 10% background in H) in CSR."""
    import scipy.sparse

    return scipy.sparse.csr_matrix(planted(keep=0.6, background=0.1, seed=3))


def _factorize(X: Any, workdir: Path, **kwargs: Any) -> Any:
    import dnmf

    return dnmf.factorize(X, RANK, **kwargs)


def _resumed(X: Any, workdir: Path, **kwargs: Any) -> Any:
    """Interrupted (Ctrl-C from the callback) after INTERRUPT_AT iterations, with a checkpoint
    every CHECKPOINT_EVERY; resumed from the store's checkpoint to ``max_iter``."""
    import dnmf

    out = workdir / "resumed.zarr"

    def interrupt(info: Any) -> None:
        if info.iteration == INTERRUPT_AT:
            raise KeyboardInterrupt

    try:
        dnmf.factorize(X, RANK, out=out, checkpoint_every=CHECKPOINT_EVERY, callback=interrupt,
                       **kwargs)
    except KeyboardInterrupt:  # dnmf.solvers.Interrupted: a checkpoint was written
        pass
    else:
        raise AssertionError(f"the run was not interrupted at iteration {INTERRUPT_AT}")
    return dnmf.factorize(X, RANK, out=out, checkpoint_every=CHECKPOINT_EVERY, resume=True,
                          **kwargs)


@dataclass(frozen=True)
class Case:
    """One golden fit: ``runner(data(), workdir, **COMMON, **kwargs)``."""

    name: str
    data: Callable[[], Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    runner: Callable[..., Any] = _factorize
    #: The result's chunk plan must be the 2-D block scheme.
    is_2d: bool = False

    @property
    def call(self) -> dict[str, Any]:
        return {**COMMON, **self.kwargs}


CASES: dict[str, Case] = {c.name: c for c in [
    Case("hals", planted, {"solver": "hals"}),
    Case("mu", planted, {"solver": "mu"}),
    Case("anls", planted, {"solver": "anls"}),
    Case("restarts", planted, {"solver": "hals", "n_restarts": 3}),
    Case("kl", lambda: planted(seed=1), {"solver": "mu", "beta_loss": "kullback-leibler"}),
    Case("masked", lambda: planted(missing=0.1, seed=2), {"solver": "mu", "missing": "mask"}),
    Case("sum_to_one", lambda: planted(simplex=True, seed=4),
         {"solver": "hals", "w_sum_to_one": True}),
    # 2-D blocks of 30 rows x 20 columns (4 x 2 blocks): NNDSVD needs full-width rows
    Case("block_2d", planted, {"solver": "hals", "scheme": "block-2d", "init": "random",
                               "max_panel_bytes": 30 * 20 * 8}, is_2d=True),
    Case("sparse", planted_csr, {"solver": "hals"}),
    Case("resumed", planted, {"solver": "hals"}, runner=_resumed),
]}


@dataclass
class Outcome:
    """What a golden case pins: the factors, the loss history and the iteration count."""

    W: np.ndarray
    H: np.ndarray
    loss_history: np.ndarray
    n_iter: int
    is_2d: bool
    #: Final loss of every restart (one entry without restarts).
    restart_losses: np.ndarray

    def hashes(self) -> dict[str, Any]:
        parts = {"W": self.W, "H": self.H, "loss": self.loss_history}
        out: dict[str, Any] = {name: _sha256(a) for name, a in parts.items()}
        out["all"] = _sha256(*parts.values())
        out["n_iter"] = self.n_iter
        return out


def _sha256(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return digest.hexdigest()


def x_sha256(X: Any) -> str:
    """The bytes of the input (a CSR matrix: its data, indices and index pointer)."""
    if hasattr(X, "tocsr"):
        X = X.tocsr()
        digest = hashlib.sha256()
        for part in (X.data, X.indices.astype(np.int64), X.indptr.astype(np.int64)):
            digest.update(np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()
    return _sha256(X)


def run_case(case: Case, X: Any = None, **overrides: Any) -> Outcome:
    """Run one case (on ``X``, default ``case.data()``); ``overrides`` replace its keyword
    arguments (to show what a changed call does to the comparison)."""
    X = case.data() if X is None else X
    with tempfile.TemporaryDirectory(prefix=f"dnmf-golden-{case.name}-") as tmp:
        result = case.runner(X, Path(tmp), **{**EVERY_LOSS, **case.call, **overrides})
        W = np.array(result.W, dtype=np.float64, order="C")  # a store's W is read here
    is_2d = bool(result.plan is not None and result.plan.is_2d)
    if case.is_2d and not is_2d:
        raise AssertionError(f"case {case.name}: the fit did not run the 2-D block scheme")
    return Outcome(W=W, H=np.array(result.H, dtype=np.float64, order="C"),
                   loss_history=np.asarray(result.loss_history, dtype=np.float64),
                   n_iter=int(result.n_iter), is_2d=is_2d,
                   restart_losses=np.asarray(result.restart_losses, dtype=np.float64))


def run_all(names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    hashes = {}
    for name in names or list(CASES):
        t0 = time.perf_counter()
        h = run_case(CASES[name]).hashes()
        hashes[name] = h
        print(f"{name:<12} {h['all']}  n_iter={h['n_iter']}  ({time.perf_counter() - t0:.2f} s)",
              flush=True)
    return hashes


def compare(current: dict[str, dict[str, Any]], saved: dict[str, dict[str, Any]]) -> list[str]:
    """One line per case that differs (which of W, H, the loss, n_iter), or is missing."""
    lines = []
    for name in sorted(set(current) | set(saved)):
        if name not in saved or name not in current:
            where = "the saved file" if name not in saved else "this run"
            lines.append(f"{name}: not in {where}")
            continue
        parts = [p for p in ("W", "H", "loss", "n_iter") if current[name][p] != saved[name][p]]
        if parts:
            lines.append(f"{name}: {', '.join(parts)} differ")
    return lines


def environment() -> dict[str, Any]:
    import platform

    import dnmf

    info: dict[str, Any] = {"dnmf": dnmf.__file__, "numpy": np.__version__,
                            "python": platform.python_version(), "machine": platform.machine()}
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: p.get(k) for k in ("internal_api", "version", "architecture")}
                        for p in threadpool_info()]
    except ImportError:  # pragma: no cover - a dependency of dnmf
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.golden",
        description="Run the golden cases; print a sha256 of W, H and the loss history of each "
                    "(bitwise identity on one machine).")
    parser.add_argument("--json", type=Path, help="save the hashes to this file")
    parser.add_argument("--compare", type=Path,
                        help="compare with hashes saved by --json; exit 1 if any differ")
    parser.add_argument("--only", nargs="+", choices=list(CASES), help="run these cases only")
    args = parser.parse_args(argv)
    env = environment()
    print(f"# dnmf from {env['dnmf']}, numpy {env['numpy']}", flush=True)
    hashes = run_all(args.only)
    if args.json is not None:
        args.json.write_text(json.dumps({"environment": env, "cases": hashes}, indent=2) + "\n")
        print(f"# saved to {args.json}")
    if args.compare is not None:
        saved = json.loads(args.compare.read_text())["cases"]
        if args.only:
            saved = {k: v for k, v in saved.items() if k in args.only}
        differ = compare(hashes, saved)
        if differ:
            print(f"# DIFFERENT from {args.compare}:")
            for line in differ:
                print(f"  {line}")
            return 1
        print(f"# all {len(hashes)} cases bit-identical to {args.compare}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
