"""The fit specification: every parameter check that needs no data, done once.

:func:`resolve` turns the user's parameters (the names of :func:`dnmf.factorize`, or the
estimator's ``n_components``) into a frozen :class:`FitSpec` with inside names and resolved
values, or raises :class:`~dnmf.errors.InputError` with the same message wherever the
parameters came from (API, estimator, CLI, ``rank``). Simple type / interval / option checks are
one entry each in :data:`PARAMETERS`, in the spirit of scikit-learn's
``_parameter_constraints``; the checks that relate parameters follow in :func:`resolve`.

Adding an option: one entry in :data:`PARAMETERS` (if it has a simple constraint), one field of
:class:`FitSpec`, and its use; :meth:`FitSpec.checkpoint_params` and the store attrs are derived.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from dnmf import device as devices
from dnmf import divergence
from dnmf.errors import InputError
from dnmf.init import resolve_init
from dnmf.solvers import SOLVER_ALIASES, SOLVERS

MISSING = ("error", "mask")


# ---------------------------------------------------------------------------------------------
# Declarative constraints
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    """A number in ``[low, high]`` (``low`` excluded with ``open_low``); the message reads
    ``"{label} must be {what}; got {value!r}"``."""

    what: str
    integral: bool = False
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    allow_bool: bool = True
    allow_none: bool = False
    also: tuple[Any, ...] = ()  # accepted non-numbers (e.g. "same")

    def ok(self, value: Any) -> bool:
        if (value is None and self.allow_none) or (isinstance(value, str) and value in self.also):
            return True
        kind = numbers.Integral if self.integral else numbers.Real
        if not isinstance(value, kind) or (isinstance(value, bool) and not self.allow_bool):
            return False
        if not np.isfinite(value):  # NaN passes no comparison; inf would never stop or scale
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high


@dataclass(frozen=True)
class Options:
    """One of ``choices``."""

    what: str
    choices: tuple[Any, ...]

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.choices


#: ``name -> (label in the message, constraint)``, checked in this order.
PARAMETERS: dict[str, tuple[str, Number | Options]] = {
    "rank": ("rank (n_components)", Number("an integer", integral=True, allow_bool=False)),
    "max_iter": ("max_iter", Number("an integer >= 1", integral=True, low=1)),
    "tol": ("tol", Number("a number >= 0", low=0)),
    "max_time": ("max_time", Number("a positive number of seconds", low=0, open_low=True,
                                    allow_none=True)),
    "n_restarts": ("n_restarts", Number("an integer >= 1", integral=True, low=1,
                                        allow_bool=False)),
    "missing": ("missing", Options("'error' or 'mask'", MISSING)),
}
#: Checked after the loss, solver, device and init (the order of the messages users know).
LATE_PARAMETERS: dict[str, tuple[str, Number | Options]] = {
    "checkpoint_every": ("checkpoint_every", Number("an integer >= 0", integral=True, low=0)),
    "loss_every": ("loss_every", Number("an integer >= 1", integral=True, low=1,
                                        allow_bool=False, allow_none=True)),
    "alpha_W": ("alpha_W", Number("a number >= 0", low=0)),
    "alpha_H": ("alpha_H", Number("a number >= 0", low=0, also=("same",))),
    "l1_ratio": ("l1_ratio", Number("in [0, 1]", low=0, high=1)),
    "forget_factor": ("forget_factor", Number("in (0, 1]", low=0, open_low=True, high=1)),
}


def check_parameters(table: dict[str, tuple[str, Number | Options]], values: dict[str, Any]) -> None:
    """Raise for the first value of ``values`` (in the table's order) that breaks its entry."""
    for name, (label, constraint) in table.items():
        if name in values and not constraint.ok(values[name]):
            value = values[name]
            shown = value.item() if isinstance(value, np.generic) else value  # 1.5, not np.float64(1.5)
            raise InputError(f"{label} must be {constraint.what}; got {shown!r}")


# ---------------------------------------------------------------------------------------------
# Resolving single parameters (also used on their own: transform, partial_fit, rank)
# ---------------------------------------------------------------------------------------------


def resolve_beta(beta_loss: Any) -> float:
    """β from scikit-learn's loss names or a number; a clear error otherwise."""
    if isinstance(beta_loss, bool) or not isinstance(beta_loss, str | numbers.Real):
        raise InputError(f"beta_loss must be a loss name or a number; got {beta_loss!r}")
    if isinstance(beta_loss, str):
        try:
            return divergence.beta_value(beta_loss)
        except ValueError:
            try:
                return float(beta_loss)
            except ValueError:
                raise InputError(
                    f"unknown loss {beta_loss!r}: choose frobenius, kullback-leibler, "
                    "itakura-saito or a number (β)") from None
    if not np.isfinite(beta_loss):
        raise InputError(f"beta_loss must be finite; got {beta_loss!r}")
    return float(beta_loss)


def resolve_solver(solver: str, beta_loss: Any, *, masked: bool = False) -> str:
    """Map aliases and ``auto``; refuse combinations that make no sense.

    ``auto`` is hals for the unmasked Frobenius loss, mu otherwise. HALS and ANLS minimise the
    Frobenius loss on fully observed data only (as in scikit-learn, where only "mu" takes
    other losses).
    """
    beta = resolve_beta(beta_loss)
    if solver == "auto" and (beta != 2.0 or masked):
        return "mu"
    name = SOLVER_ALIASES.get(solver, solver)
    if name not in SOLVERS:
        raise InputError(
            f"unknown solver {solver!r}: choose auto, hals (alias cd), mu or anls"
        )
    if name != "mu" and beta != 2.0:
        raise InputError(
            f"solver {solver!r} supports only the Frobenius loss, not "
            f"{divergence.beta_name(beta)} — use solver='mu' (or auto)"
        )
    if name != "mu" and masked:
        raise InputError(
            f"missing values need multiplicative updates; solver {solver!r} cannot skip "
            "entries — use solver='mu' (or auto)"
        )
    return name


def resolve_seed(random_state: Any) -> int:
    """An int seed from None (fresh entropy), an int, or a numpy RandomState/Generator."""
    if random_state is None:
        return int(np.random.SeedSequence().entropy % (2**32))
    if isinstance(random_state, numbers.Integral):
        if random_state < 0:
            raise InputError(f"random_state must be >= 0; got {random_state}")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    raise InputError(f"random_state must be None, an int or a numpy RandomState; got {random_state!r}")


def regularization(alpha_W: float, alpha_H: float | str, l1_ratio: float,
                   shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """``(l1_W, l2_W, l1_H, l2_H)`` with scikit-learn's scaling.

    As in ``sklearn.decomposition.NMF``: the W penalties are multiplied by ``n_features`` and
    the H penalties by ``n_samples`` so that ``alpha`` does not depend on the data's size.
    """
    check_parameters(LATE_PARAMETERS, {"alpha_W": alpha_W, "alpha_H": alpha_H,
                                       "l1_ratio": l1_ratio})
    if alpha_H == "same":
        alpha_H = alpha_W
    n_samples, n_features = shape
    return (
        n_features * alpha_W * l1_ratio,
        n_features * alpha_W * (1 - l1_ratio),
        n_samples * float(alpha_H) * l1_ratio,
        n_samples * float(alpha_H) * (1 - l1_ratio),
    )


def restart_seeds(seed: int, n_restarts: int) -> list[int]:
    """The seed of each restart: ``seed`` itself for restart 0 (so one restart is the ordinary
    fit), then seeds drawn from ``SeedSequence(seed).spawn(n_restarts - 1)``."""
    children = np.random.SeedSequence(seed).spawn(max(n_restarts - 1, 0))
    return [int(seed)] + [int(c.generate_state(1, dtype=np.uint32)[0]) for c in children]


def best_restart(losses: list[float]) -> int:
    """The restart with the lowest final loss (NaN never wins; the first on ties)."""
    values = np.asarray(losses, dtype=np.float64)
    return int(np.argmin(np.where(np.isnan(values), np.inf, values)))


def check_gpu_params(solver: str, sum_to_one: bool, n_restarts: int,
                     persist_w: bool | str) -> None:
    """Refuse, before any work, what ``device="gpu"`` does not run."""
    if solver == "anls" or sum_to_one:
        what = "solver='anls'" if solver == "anls" else "w_sum_to_one"
        raise InputError(
            f"{what} solves exact NNLS problems on the host and does not run with "
            "device='gpu' — use solver='hals' or 'mu' without sum-to-one, or device='cpu'")
    if n_restarts > 1:
        raise InputError(
            f"n_restarts={n_restarts} is not batched on the GPU — run single fits with "
            "different random_state, or use device='cpu'")
    if persist_w is False:
        raise InputError(
            "persist_w=False streams W through a Zarr store, but with device='gpu' W stays in "
            "device memory — leave persist_w at 'auto', or use device='cpu'")


# ---------------------------------------------------------------------------------------------
# The specification
# ---------------------------------------------------------------------------------------------

#: The user's names that differ from the specification's.
OUTSIDE_NAMES = {"n_components": "rank", "w_sum_to_one": "sum_to_one",
                 "random_state": "seed", "beta_loss": "beta"}


@dataclass(frozen=True)
class FitSpec:
    """A validated fit: the parameters of :func:`dnmf.factorize` with inside names.

    ``missing`` is the user's value (checkpoints store it); ``masked`` says whether values
    may be missing (``missing="mask"`` or a mask given). ``seed`` is None only while resuming without ``random_state`` (the checkpoint's seed is
    taken, see :meth:`with_seed`). ``alpha_W``/``alpha_H``/``l1_ratio`` keep the user's values
    (they are stored); :meth:`penalties` gives the scaled L1/L2 terms for a shape.
    """

    rank: int
    solver: str
    beta: float
    init: str
    seed: int | None
    max_iter: int = 200
    tol: float = 1e-4
    max_time: float | None = None
    n_restarts: int = 1
    missing: str = "error"
    masked: bool = False
    sum_to_one: bool = False
    alpha_W: float = 0.0
    alpha_H: float | str = "same"
    l1_ratio: float = 0.0
    device: str = "cpu"
    persist_x: bool | str = "auto"
    persist_w: bool | str = "auto"
    max_panel_bytes: int | None = None
    min_panel_bytes: int | None = None
    scheme: str = "auto"
    checkpoint_every: int = 10
    resume: bool = False
    overwrite: bool = False
    loss_every: int = 1

    @property
    def beta_name(self) -> str:
        return divergence.beta_name(self.beta)

    @property
    def columns(self) -> int:
        """Columns of the stacked W the panels carry: ``n_restarts * rank``."""
        return self.rank * self.n_restarts

    def penalties(self, shape: tuple[int, int]) -> tuple[float, float, float, float]:
        """``(l1_W, l2_W, l1_H, l2_H)`` for X of ``shape`` (scikit-learn's scaling)."""
        return regularization(self.alpha_W, self.alpha_H, self.l1_ratio, shape)

    def restart_seeds(self) -> list[int]:
        return restart_seeds(int(self.seed), self.n_restarts)  # type: ignore[arg-type]

    def with_seed(self, random_state: Any) -> FitSpec:
        return dataclasses.replace(self, seed=resolve_seed(random_state))

    def checkpoint_params(self, *, dtype: Any, scheme: str, mask_path: str | None) -> dict:
        """What a resumed run must share with the checkpoint (``dnmf.io.checkpoint``)."""
        return {"solver": self.solver, "beta_loss": self.beta_name, "n_components": self.rank,
                "init": self.init, "seed": self.seed, "alpha_W": self.alpha_W,
                "alpha_H": self.alpha_H, "l1_ratio": self.l1_ratio, "dtype": str(dtype),
                "scheme": scheme, "missing": self.missing, "mask": mask_path,
                "w_sum_to_one": bool(self.sum_to_one), "n_restarts": self.n_restarts}

    @property
    def regularization(self) -> dict[str, Any]:
        return {"alpha_W": self.alpha_W, "alpha_H": self.alpha_H, "l1_ratio": self.l1_ratio}


def resolve(
    rank: Any = None,
    *,
    n_components: Any = None,
    solver: str = "auto",
    beta_loss: Any = "frobenius",
    init: str | None = "auto",
    max_iter: Any = 200,
    tol: Any = 1e-4,
    max_time: Any = None,
    random_state: Any = None,
    n_restarts: Any = 1,
    missing: str = "error",
    has_mask: bool = False,
    has_custom: bool = False,
    w_sum_to_one: bool = False,
    alpha_W: Any = 0.0,
    alpha_H: Any = "same",
    l1_ratio: Any = 0.0,
    device: str = "cpu",
    persist_x: bool | str = "auto",
    persist_w: bool | str = "auto",
    max_panel_bytes: int | None = None,
    min_panel_bytes: int | None = None,
    scheme: str = "auto",
    checkpoint_every: Any = 10,
    resume: bool = False,
    overwrite: bool = False,
    has_out: bool = True,
    loss_every: Any = None,
) -> FitSpec:
    """Check the parameters of a fit and resolve them into a :class:`FitSpec`; no data read.

    ``has_mask``/``has_custom``/``has_out``: whether a mask, ``W_init``/``H_init`` and an
    output were given (their values are checked where they are opened). With ``resume`` and
    no ``random_state`` the seed stays None until the checkpoint gives it.
    """
    rank = n_components if rank is None else rank
    check_parameters(PARAMETERS, {"rank": rank, "max_iter": max_iter, "tol": tol,
                                  "max_time": max_time, "n_restarts": n_restarts,
                                  "missing": missing})
    masked = missing == "mask" or has_mask
    beta = resolve_beta(beta_loss)
    solver_name = resolve_solver(solver, beta, masked=masked)
    dev = devices.resolve_device(device)
    if dev == "gpu":
        check_gpu_params(solver_name, w_sum_to_one, int(n_restarts), persist_w)
        persist_w = True  # W lives in device memory, not in the workers' (host) memory
    if n_restarts > 1 and init in (None, "auto") and not has_custom:
        init = "random"  # restarts from one deterministic start would all be the same fit
    init_name = resolve_init(init, has_custom=has_custom)
    check_parameters(LATE_PARAMETERS, {"checkpoint_every": checkpoint_every,
                                       "loss_every": loss_every, "alpha_W": alpha_W,
                                       "alpha_H": alpha_H, "l1_ratio": l1_ratio})
    if resume and not has_out:
        raise InputError("resume needs the output to resume — pass -o OUT.zarr")
    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other — pick one")
    seed = None if resume and random_state is None else resolve_seed(random_state)
    return FitSpec(
        rank=int(rank), solver=solver_name, beta=beta, init=init_name, seed=seed,
        max_iter=int(max_iter), tol=float(tol), max_time=max_time, n_restarts=int(n_restarts),
        missing=missing, masked=masked, sum_to_one=bool(w_sum_to_one),
        alpha_W=alpha_W, alpha_H=alpha_H, l1_ratio=l1_ratio, device=dev, persist_x=persist_x,
        persist_w=persist_w, max_panel_bytes=max_panel_bytes, min_panel_bytes=min_panel_bytes,
        scheme=scheme, checkpoint_every=int(checkpoint_every), resume=bool(resume),
        overwrite=bool(overwrite),
        loss_every=default_loss_every(beta) if loss_every is None else int(loss_every))


#: Iterations between evaluations of the loss of β-divergence fits (β != 2), by default: the
#: log and power terms only the loss needs take 45% (KL) and 25-32% (Itakura-Saito) of a panel
#: step (``benchmarks/loss_terms.py``: one 33,554 x 500 float32 panel of counts, k = 20,
#: one thread, AMD EPYC, 2026-12-07; scikit-learn evaluates every 10 too). Masked Frobenius
#: fits evaluate it every iteration by default: there it is 6-13% of the step
#: (two runs on a loaded machine): a saving that a tol stop up to 9 iterations later cancels.
LOSS_EVERY_BETA = 10


def default_loss_every(beta: float) -> int:
    """The default ``loss_every`` of a fit with loss β (see :data:`LOSS_EVERY_BETA`)."""
    return LOSS_EVERY_BETA if beta != 2.0 else 1
