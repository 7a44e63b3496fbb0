"""Write the legacy result stores of ``tests/test_legacy_stores.py``: stores written by an older
``dnmf`` that the current one must still read (and resume).

The stores in this directory were made with the code *before* the pipeline refactor, commit
09191ab::

    git worktree add /tmp/baseline 09191ab
    PYTHONPATH=/tmp/baseline python tests/data/legacy/make_legacy.py

Running it again replaces them (with the ``dnmf`` that ``PYTHONPATH`` selects; it prints which).

- ``fit.zarr``: a complete fit (``factorize(..., out=...)``), and ``fit.npz``: its input X, the
  W, H and loss history the fit returned, the call's arguments (JSON), and the baseline's
  ``transform`` of X with the stored H;
- ``unmix.zarr``: a complete unmixing (``dnmf.hyperspectral.unmix.unmix(..., output=...)``) of
  a small synthetic scene, ``truth.zarr``: the scene's true endmembers and abundances, and
  ``unmix.npz``: the arrays the baseline read back from ``unmix.zarr`` and its score against
  the truth;
- ``checkpoint.zarr``: an incomplete fit (status ``interrupted``), stopped by Ctrl-C (a
  ``KeyboardInterrupt`` from the callback) after iteration 7 of 20, checkpoints every 5; and
  ``checkpoint.npz``: X, the call's arguments and the W, H and loss history of the same fit run
  to the end without interruption.

Inputs come from ``benchmarks/golden.py``'s :func:`planted` (bit-identical on every machine),
loaded by its path.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

#: The fits: 120 x 40 planted X, rank 4, a fixed number of iterations.
FIT_CALL = {"solver": "hals", "max_iter": 20, "tol": 0.0, "random_state": 0,
            "scheduler": "threads"}
CHECKPOINT_CALL = {**FIT_CALL, "checkpoint_every": 5}
INTERRUPT_AT = 7
#: The scene: 24 x 20 pixels, 3 endmembers, two tiles; the unmixing: 12 iterations.
SCENE = {"rows": 24, "cols": 20, "n_endmembers": 3, "seed": 0, "chunks": [12, 20]}
UNMIX_CALL = {"max_iter": 12, "tol": 0.0, "seed": 0, "scheduler": "threads"}
RANK = 4


def golden_generator():
    """``tests/data/golden/make_golden.py``, loaded by its path: its ``load_cases`` (the case
    table of ``benchmarks/golden.py``) and ``commit_of`` serve this generator too."""
    spec = importlib.util.spec_from_file_location("make_golden",
                                                  HERE.parent / "golden" / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def make_fit(X: np.ndarray, meta: dict) -> None:
    import dnmf

    result = dnmf.factorize(X, RANK, out=fresh(HERE / "fit.zarr"), **FIT_CALL)
    transformed = dnmf.load(HERE / "fit.zarr").transform(X)
    np.savez_compressed(
        HERE / "fit.npz", X=X, W=np.asarray(result.W), H=result.H,
        loss_history=np.asarray(result.loss_history), n_iter=result.n_iter,
        transform=np.asarray(transformed), rank=RANK, call=json.dumps(FIT_CALL), **meta)


def make_checkpoint(X: np.ndarray, meta: dict) -> None:
    import dnmf
    from dnmf.io import checkpoint

    def interrupt(info) -> None:
        if info.iteration == INTERRUPT_AT:
            raise KeyboardInterrupt

    out = fresh(HERE / "checkpoint.zarr")
    try:
        dnmf.factorize(X, RANK, out=out, callback=interrupt, **CHECKPOINT_CALL)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the fit was not interrupted")
    ckpt = checkpoint.read(out)
    assert ckpt.iteration == INTERRUPT_AT, ckpt.iteration
    full = dnmf.factorize(X, RANK, **FIT_CALL)  # the same fit, not interrupted
    np.savez_compressed(
        HERE / "checkpoint.npz", X=X, W=np.asarray(full.W), H=full.H,
        loss_history=np.asarray(full.loss_history), n_iter=full.n_iter,
        checkpoint_iteration=ckpt.iteration, rank=RANK, call=json.dumps(CHECKPOINT_CALL),
        **meta)


def make_unmix(meta: dict) -> None:
    import xarray as xr

    from dnmf.datasets import make_scene
    from dnmf.hyperspectral.metrics import open_dataset, score
    from dnmf.hyperspectral.unmix import unmix

    scene = make_scene(SCENE["rows"], SCENE["cols"], n_endmembers=SCENE["n_endmembers"],
                       seed=SCENE["seed"], chunks=tuple(SCENE["chunks"])).compute()
    # without the name coordinates: strings have no stable Zarr v3 data type yet
    truth = scene[["endmembers_true", "abundances_true"]].drop_vars(
        ["endmember_name", "endmember_class"])
    truth.to_zarr(fresh(HERE / "truth.zarr"), mode="w", consolidated=False, zarr_format=3)
    out = fresh(HERE / "unmix.zarr")
    unmix(scene["reflectance"], SCENE["n_endmembers"], output=out, **UNMIX_CALL)
    stored = xr.open_zarr(out)
    report = score(open_dataset(out), open_dataset(HERE / "truth.zarr"))
    np.savez_compressed(
        HERE / "unmix.npz", endmembers=stored["endmembers"].values,
        abundances=stored["abundances"].values, residual_rmse=stored["residual_rmse"].values,
        n_iter=int(stored.attrs["n_iter"]), loss_history=np.asarray(stored.attrs["loss_history"]),
        score=json.dumps(report), scene=json.dumps(SCENE), call=json.dumps(UNMIX_CALL), **meta)


def main() -> None:
    import dnmf

    source = Path(dnmf.__file__).resolve().parent
    golden = golden_generator()
    commit = golden.commit_of(source)
    print(f"dnmf from {source} (commit {commit})")
    meta = {"dnmf_commit": commit, "numpy": np.__version__}
    X = golden.load_cases().planted()
    make_fit(X, meta)
    make_checkpoint(X, meta)
    make_unmix(meta)
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file() and p.suffix != ".py")
    print(f"written to {HERE}: {total:,} bytes")


if __name__ == "__main__":
    main()
