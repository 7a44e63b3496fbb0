"""The fit specification: the declarative parameter table, name mapping and derived values."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import dnmf
from dnmf import spec as fitspec
from dnmf.errors import InputError
from dnmf.io import checkpoint
from tests.conftest import make_planted

LEGACY = Path(__file__).parent / "data" / "legacy"


@pytest.mark.parametrize(("params", "message"), [
    ({"rank": "3"}, "rank (n_components) must be an integer; got '3'"),
    ({"rank": True}, "rank (n_components) must be an integer; got True"),
    ({"max_iter": 0}, "max_iter must be an integer >= 1; got 0"),
    ({"max_iter": 2.5}, "max_iter must be an integer >= 1; got 2.5"),
    ({"tol": -1e-3}, "tol must be a number >= 0; got -0.001"),
    ({"tol": "small"}, "tol must be a number >= 0; got 'small'"),
    ({"max_time": 0}, "max_time must be a positive number of seconds; got 0"),
    ({"n_restarts": True}, "n_restarts must be an integer >= 1; got True"),
    ({"n_restarts": 0}, "n_restarts must be an integer >= 1; got 0"),
    ({"missing": "drop"}, "missing must be 'error' or 'mask'; got 'drop'"),
    ({"checkpoint_every": -1}, "checkpoint_every must be an integer >= 0; got -1"),
    ({"alpha_W": -0.1}, "alpha_W must be a number >= 0; got -0.1"),
    ({"alpha_H": "twice"}, "alpha_H must be a number >= 0; got 'twice'"),
    ({"l1_ratio": 1.5}, "l1_ratio must be in [0, 1]; got 1.5"),
    ({"l1_ratio": "half"}, "l1_ratio must be in [0, 1]; got 'half'"),  # a TypeError before
    ({"l1_ratio": np.float64(1.5)}, "l1_ratio must be in [0, 1]; got 1.5"),
    ({"max_iter": np.int64(0)}, "max_iter must be an integer >= 1; got 0"),
    ({"random_state": -1}, "random_state must be >= 0; got -1"),
    ({"resume": True, "has_out": False}, "resume needs the output to resume"),
    ({"resume": True, "overwrite": True}, "--resume and --overwrite contradict each other"),
    ({"solver": "hals", "beta_loss": "kullback-leibler"},
     "solver 'hals' supports only the Frobenius loss, not kullback-leibler"),
    ({"solver": "anls", "missing": "mask"}, "missing values need multiplicative updates"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"init": "pca"}, "unknown init 'pca'"),
])
def test_each_bad_parameter_gets_its_message(params, message):
    params = {"rank": 3, **params}
    with pytest.raises(InputError, match=re.escape(message)):
        fitspec.resolve(**params)


def test_the_first_bad_parameter_in_table_order_is_reported():
    with pytest.raises(InputError, match="^max_iter"):
        fitspec.resolve(3, max_iter=0, tol=-1, missing="drop")


@pytest.mark.parametrize("where", ["factorize", "estimator"])
def test_the_api_and_the_estimator_give_the_spec_messages(where):
    X = make_planted(40, 10, 2)[0]
    with pytest.raises(InputError, match=re.escape("max_iter must be an integer >= 1; got 0")):
        if where == "factorize":
            dnmf.factorize(X, 2, max_iter=0, scheduler="threads")
        else:
            dnmf.NMF(n_components=2, max_iter=0, scheduler="threads").fit(X)


def test_outside_names_map_to_inside_names():
    spec = fitspec.resolve(n_components=4, w_sum_to_one=True, random_state=np.random.RandomState(3),
                           beta_loss="kullback-leibler")
    assert spec.rank == 4 and spec.sum_to_one is True
    assert spec.seed == np.random.RandomState(3).randint(0, 2**31 - 1)
    assert spec.beta == 1.0 and spec.beta_name == "kullback-leibler" and spec.solver == "mu"
    assert set(fitspec.OUTSIDE_NAMES.values()) <= {f.name for f in dataclasses.fields(spec)} | {
        "beta"}


def test_restarts_start_at_random_unless_an_init_is_given():
    assert fitspec.resolve(3, n_restarts=3).init == "random"
    assert fitspec.resolve(3, n_restarts=1).init == "nndsvda"
    assert fitspec.resolve(3, n_restarts=3, init="nndsvd").init == "nndsvd"
    assert fitspec.resolve(3, n_restarts=3, has_custom=True).init == "custom"


def test_resume_without_a_seed_waits_for_the_checkpoints():
    spec = fitspec.resolve(3, resume=True)
    assert spec.seed is None and spec.with_seed(11).seed == 11
    assert fitspec.resolve(3, random_state=5, resume=True).seed == 5


def test_the_spec_is_frozen():
    spec = fitspec.resolve(3, random_state=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.rank = 4  # type: ignore[misc]


def test_gpu_forces_w_in_device_memory_and_refuses_what_it_does_not_run():
    assert fitspec.resolve(3, device="gpu").persist_w is True
    with pytest.raises(InputError, match="is not batched on the GPU"):
        fitspec.resolve(3, device="gpu", n_restarts=2)


def test_penalties_use_scikit_learns_scaling():
    spec = fitspec.resolve(3, alpha_W=0.5, l1_ratio=0.25)  # alpha_H "same"
    n_samples, n_features = 100, 40
    assert spec.penalties((n_samples, n_features)) == pytest.approx((
        n_features * 0.5 * 0.25, n_features * 0.5 * 0.75,
        n_samples * 0.5 * 0.25, n_samples * 0.5 * 0.75))


def test_checkpoint_params_match_a_checkpoint_written_before_the_spec(tmp_path):
    # the legacy fixture was written by the code before FitSpec existed: a resume compares
    # these keys, so the spec must produce every one of them, with the same values
    out = tmp_path / "ckpt.zarr"
    shutil.copytree(LEGACY / "checkpoint.zarr", out)
    stored = checkpoint.read(out).params
    spec = fitspec.resolve(stored["n_components"], solver=stored["solver"],
                           beta_loss=stored["beta_loss"], init=stored["init"],
                           random_state=stored["seed"], n_restarts=stored["n_restarts"],
                           missing=stored["missing"], w_sum_to_one=stored["w_sum_to_one"],
                           alpha_W=stored["alpha_W"], alpha_H=stored["alpha_H"],
                           l1_ratio=stored["l1_ratio"])
    derived = spec.checkpoint_params(dtype=stored["dtype"], scheme=stored["scheme"],
                                     mask_path=stored["mask"])
    assert derived == stored


def test_best_restart_never_picks_nan():
    from dnmf.solvers import best_restart

    assert best_restart([np.nan, 2.0, 1.0, 1.0]) == 2
    assert best_restart([np.nan, np.nan]) == 0
