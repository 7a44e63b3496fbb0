"""The iteration loop: one Dask computation per iteration.

This is the only place that computes during a fit. Each iteration persists the new W (on the
workers, or in-process) together with the reduced products, so W's lineage is one iteration
deep. Two schemes share the loop: full-width row panels (:mod:`dnmf.graph`; H updated on the
driver, one read of X) and 2-D blocks (:mod:`dnmf.graph2d`; H chunked on the workers, two
reads).
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import dask.array as da
import numpy as np

from dnmf import divergence, graph, graph2d, kernels
from dnmf.cluster import ExecutionContext
from dnmf.errors import NON_FINITE_FIX, NumericalError
from dnmf.io.zarr_ import read_version
from dnmf.plan import H_ON_WORKERS_BYTES, h_column_blocks
from dnmf.stacked_kernels import block_grams

SOLVERS = ("hals", "mu", "anls")
SOLVER_ALIASES = {"cd": "hals", "auto": "hals"}


@dataclass(frozen=True)
class IterationInfo:
    """What one iteration did; passed to progress callbacks."""

    iteration: int
    loss: float
    relative_error: float
    seconds: float
    bytes_read: int
    max_iter: int


@dataclass
class SolverState:
    """The outcome of :func:`iterate`: W lazy/persisted, H and the products of the final W."""

    W: da.Array
    H: np.ndarray
    WtW: np.ndarray
    n_iter: int
    converged: bool
    loss_history: list[float] = field(default_factory=list)
    seconds_per_iteration: list[float] = field(default_factory=list)
    stop_reason: str = ""
    HHt: np.ndarray | None = None  # H @ H.T of the final H (float64)
    #: The loss and relative error of the final (W, H) (for MU on β-divergences and masked
    #: data, computed by one more pass at the end: the history holds the loss after each W
    #: update)
    final_loss: float | None = None
    final_relative_error: float | None = None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during :func:`iterate`; ``state`` is the last complete iteration."""

    def __init__(self, state: SolverState, resume_hint: str | None = None) -> None:
        message = f"interrupted after iteration {state.n_iter}"
        if resume_hint:
            message += (f"; checkpoint kept in {resume_hint} — continue with the same command "
                        "and --resume")
        super().__init__(message)
        self.state = state


class _RowPanelStep:
    """One row-panel iteration: W on the workers, H (float64) on the driver.

    The protocol of every step of :func:`run_iterations`: :meth:`prepare` the start,
    ``step(W, H, HHt, active, with_loss=True)`` returns ``(W_next, H_next, WtW (R, k, k),
    HHt_next, losses (R,))`` for its ``restarts`` R (1 here); with ``with_loss`` False a step
    whose loss costs element-wise work (β-divergences, missing values) may return NaN losses
    (the iterates are the same), one whose loss comes with its products (Frobenius) returns
    it anyway. :meth:`callback_error` is the relative error
    reported to progress callbacks and :meth:`final` the loss and relative error of each
    restart's final factors.
    """

    restarts = 1
    beta = 2.0

    def __init__(self, X: da.Array, ctx: ExecutionContext, *, solver: str, sq_norm: float,
                 l1_w: float, l2_w: float, l1_h: float, l2_h: float,
                 sum_to_one: bool = False, w_scratch: str | None = None,
                 local: object = None) -> None:
        self.X, self.ctx, self.solver, self.sq_norm = X, ctx, solver, sq_norm
        self.regs = (l1_w, l2_w, l1_h, l2_h)
        self.sum_to_one = sum_to_one
        self.w_store = None if w_scratch is None else _WStore(w_scratch, X)
        #: X itself (numpy or CSR) when the fit runs in this process: each iteration calls the
        #: panel task of the graph on it as one panel, W is numpy, no graph is built
        self.local = kernels.aligned(local)

    def prepare(self, W: da.Array, H: object) -> tuple[da.Array, np.ndarray, np.ndarray]:
        W = self.keep(W)
        H64 = np.asarray(H, dtype=np.float64)
        return W, H64, H64 @ H64.T

    def iterate_local(self, W: np.ndarray, H: np.ndarray, **options: object) -> tuple:
        """The graph's panel task (:func:`dnmf.graph.iteration_task`) on the whole X, here."""
        func, consts = graph.iteration_task(
            np.ascontiguousarray(H, dtype=self.X.dtype), l1_w=self.regs[0], l2_w=self.regs[1],
            inner_sweeps=kernels.w_inner_sweeps(W.shape[1], self.X.shape[1]),
            **options)  # type: ignore[arg-type]
        extra = (None,) if len(consts) == 1 else ()  # the β task takes the (absent) mask
        # called directly, not through kernels.call_aligned: X was aligned once (__init__),
        # W and the constants are arrays made here, aligned (the same BLAS path, the same bits)
        return func(self.local, W, *consts, *extra)

    def loss_local(self, W: np.ndarray, H: object, *, beta: float,
                   masked: bool = False) -> tuple[float, float, float]:
        """:func:`dnmf.graph.loss_graph`'s panel task on the whole X, here."""
        H = np.ascontiguousarray(H, dtype=self.X.dtype)
        return graph.loss_task(beta, masked)(self.local, W, H, None)

    def keep(self, W: da.Array) -> da.Array:
        """W between iterations: persisted on the workers, or written to the scratch store
        (in-process: computed once, numpy)."""
        if self.local is not None:
            return kernels.aligned(np.asarray(self.ctx.compute(W)[0] if isinstance(W, da.Array)
                                              else W))
        if isinstance(W, np.ndarray):  # an init made in memory (dnmf.init), run as a graph
            W = da.from_array(W, chunks=(self.X.chunks[0], (W.shape[1],)))
        if self.w_store is None:
            (W,) = self.ctx.persist(W)
            return W
        return self.w_store.put(W, self.ctx)

    def run(self, W_next: da.Array, partials: object) -> tuple[da.Array, object]:
        """Compute one iteration's graph: W_next kept (see :meth:`keep`) and the partials
        (a Delayed, or a list of them: their values as a list)."""
        several = isinstance(partials, list)
        collections = partials if several else [partials]
        if self.w_store is None:
            W_next, *persisted = self.ctx.persist(W_next, *collections, optimize=False)
            values = self.ctx.results_of(persisted)
        else:
            # one computation: each panel task feeds both its W rows' store and the partials
            stored, slot = self.w_store.store(W_next)
            _, *values = self.ctx.compute(stored, *collections)
            W_next = self.w_store.read(slot)
        return W_next, values if several else values[0]

    def h_columns(self, shape: tuple[int, int]) -> list[slice] | None:
        """H's column blocks when H is updated on the workers (:func:`dnmf.plan.h_column_blocks`,
        ``DNMF_H_ON_WORKERS_BYTES`` overriding its limit), else None: the driver updates H."""
        if self.sum_to_one or not self.ctx.is_distributed:
            return None
        limit = int(os.environ.get("DNMF_H_ON_WORKERS_BYTES", H_ON_WORKERS_BYTES))
        slots = max(self.ctx.n_workers, 1) * self.ctx.threads_per_worker
        columns = h_column_blocks(*shape, slots, limit=limit)
        return columns if len(columns) > 1 else None

    def resume_from(self, W: da.Array) -> da.Array:
        """W read back from a checkpoint, as the loop continues from it."""
        if self.local is not None:
            return self.keep(W)
        if self.w_store is None:
            (W,) = self.ctx.persist(W)
        return W

    def __call__(self, W: da.Array, H64: np.ndarray, HHt: np.ndarray,
                 active: list[bool] | None = None, with_loss: bool = True) -> tuple:
        # the loss comes from the Gram partials: with_loss changes nothing here
        # H stays float64 (as checkpoints store it, so a resumed run is exact); the API casts
        # the final H to X's dtype
        l1_w, l2_w, l1_h, l2_h = self.regs
        columns = None if self.local is not None else self.h_columns(H64.shape)
        if self.local is not None:
            W_next, (WtX, WtW) = self.iterate_local(W, H64, solver=self.solver, beta=2.0,
                                                    masked=False, sum_to_one=self.sum_to_one)
        elif columns is not None:  # H updated on the workers, a block of columns per task
            W_next, blocks = graph.iteration_graph(
                self.X, W, H64.astype(self.X.dtype), solver=self.solver, l1_w=l1_w,
                l2_w=l2_w, h_update={"H": H64, "columns": columns, "solver": self.solver,
                                     "l1": l1_h, "l2": l2_h})
            W_next, parts = self.run(W_next, blocks)
            H64 = np.concatenate([p[0] for p in parts], axis=1)
            HHt = functools.reduce(operator.add, (p[2] for p in parts))
            WtW = parts[0][3]
            loss = kernels.frobenius_loss_of_terms(
                self.sq_norm, sum(p[1] for p in parts), WtW, HHt)
            loss += self.penalty_of(W_next, WtW, H64)
            return W_next, H64, WtW[None], HHt, np.array([loss], dtype=np.float64)
        else:
            W_next, partials = graph.iteration_graph(
                self.X, W, H64.astype(self.X.dtype), solver=self.solver, l1_w=l1_w,
                l2_w=l2_w, sum_to_one=self.sum_to_one,
            )
            W_next, (WtX, WtW) = self.run(W_next, partials)
        H64 = kernels.update_h(H64, WtX, WtW, solver=self.solver, l1=l1_h, l2=l2_h)
        HHt = H64 @ H64.T
        loss = kernels.frobenius_loss(self.sq_norm, WtX, WtW, H64, HHt)
        loss += self.penalty_of(W_next, WtW, H64)
        return W_next, H64, WtW[None], HHt, np.array([loss], dtype=np.float64)

    def penalty_of(self, W: object, WtW: np.ndarray, H: object,
                   columns: slice = slice(None)) -> float:
        """The penalties of ``(W[:, columns], H)`` (0 without regularisation); ``WtW`` is that
        W's Gram matrix. The L1 term of W needs W's sum: one more pass over W (not X)."""
        if not any(self.regs):
            return 0.0
        l1_w, l2_w, l1_h, l2_h = self.regs
        w_sum = float(column_sums(W, self.ctx)[columns].sum()) if l1_w else 0.0
        h_sum, h_sq = factor_sums(H, self.ctx)
        return kernels.penalty(w_sum, float(np.trace(WtW)), h_sum, h_sq, l1_w=l1_w, l2_w=l2_w,
                               l1_h=l1_h, l2_h=l2_h, beta=self.beta)

    def callback_error(self, loss: float) -> float:
        return _ratio(loss, self.sq_norm)

    def final(self, W: da.Array, H: object,
              histories: list[list[float]]) -> tuple[list[float], list[float | None]]:
        loss, rel = self.final_one(W, H, histories[0][-1])
        return [loss], [rel]

    def final_one(self, W: da.Array, H: object, loss: float) -> tuple[float, float | None]:
        """The loss and relative error of the final factors.

        In float64 the history's last loss is exact. In float32 the Gram identity behind it
        cancels (products rounded to ~1e-7 against a residual that may be 1e-5 of ``||X||²``),
        so the final residual is computed directly, in one more pass over X; with penalties
        too (the history holds the penalised objective).
        """
        if self.X.dtype != np.float32 and not any(self.regs):
            return loss, None
        if self.local is not None:
            _, residual, _ = self.loss_local(W, H, beta=2.0)
        else:
            part = graph.loss_graph(self.X, W, np.asarray(H), beta=2.0)
            (total,) = self.ctx.compute(part)
            _, residual, _ = total
        return float(residual), _ratio(residual, self.sq_norm)


class _WStore:
    """W streamed through a Zarr scratch store: two slots, written in turn (an iteration reads
    W from one slot while its tasks write the new W into the other)."""

    def __init__(self, path: str, X: da.Array) -> None:
        self.path, self.row_chunks = path, X.chunks[0]
        self.rows = int(max(X.chunks[0]))
        self.turn = 0
        self.run = uuid.uuid4().hex  # with the turn, names each slot's content (read_version)

    def _array(self, slot: str, W: da.Array) -> object:
        import zarr

        return zarr.open_array(f"{self.path}/{slot}", mode="a", shape=W.shape,
                               chunks=(self.rows, W.shape[1]), dtype=W.dtype)

    def store(self, W: da.Array) -> tuple[object, str]:
        slot = "ab"[self.turn % 2]
        self.turn += 1
        aligned = W if all(c == self.rows for c in W.chunks[0][:-1]) else W.rechunk(
            {0: self.rows})
        return da.store(aligned, self._array(slot, W), lock=False, compute=False), slot

    def read(self, slot: str) -> da.Array:
        import zarr

        arr = zarr.open_array(f"{self.path}/{slot}", mode="r")
        return read_version(arr, f"{self.run}-{self.turn}").rechunk(
            (self.row_chunks, arr.shape[1]))

    def put(self, W: da.Array, ctx: ExecutionContext) -> da.Array:
        stored, slot = self.store(W)
        ctx.compute(stored)
        return self.read(slot)


class _BetaRowPanelStep(_RowPanelStep):
    """One MU iteration for a β-divergence and/or missing values (row panels).

    The history records the loss of ``(W_new, H_old)``, which the panel tasks compute exactly
    while forming ``W_new H`` for the H update; it is non-increasing under MU like the loss
    after the full iteration. :meth:`final` adds one pass for the loss of the final pair.
    """

    def __init__(self, X: da.Array, ctx: ExecutionContext, *, beta: float, masked: bool,
                 mask: da.Array | None, **kwargs: object) -> None:
        super().__init__(X, ctx, **kwargs)  # type: ignore[arg-type]
        self.beta, self.masked, self.mask = beta, masked, mask

    def __call__(self, W: da.Array, H64: np.ndarray, HHt: np.ndarray,
                 active: list[bool] | None = None, with_loss: bool = True) -> tuple:
        l1_w, l2_w, l1_h, l2_h = self.regs
        if self.local is not None:
            W_next, (numH, denH, loss, WtW) = self.iterate_local(
                W, H64, solver="mu", beta=self.beta, masked=self.masked,
                sum_to_one=self.sum_to_one, with_loss=with_loss)
        else:
            W_next, partials = graph.iteration_graph(
                self.X, W, H64.astype(self.X.dtype), solver="mu", l1_w=l1_w, l2_w=l2_w,
                beta=self.beta, masked=self.masked, mask=self.mask, sum_to_one=self.sum_to_one,
                with_loss=with_loss,
            )
            W_next, (numH, denH, loss, WtW) = self.run(W_next, partials)
        # the objective of (W_new, H_old), as the loss (see the class docstring); NaN where
        # the loss is skipped (the penalties' pass over W too)
        objective = (float(loss) + self.penalty_of(W_next, WtW, H64) if with_loss
                     else float("nan"))
        H64 = divergence.update_h_beta(H64, numH, denH, beta=self.beta, l1=l1_h, l2=l2_h)
        return W_next, H64, WtW[None], H64 @ H64.T, np.array([objective], dtype=np.float64)

    def callback_error(self, loss: float) -> float:
        # the Frobenius residual is only computed at the end (see final) for other losses;
        # masked Frobenius: ||X||^2 of the validation pass covers the entries that are not NaN
        return (_ratio(loss, self.sq_norm) if self.beta == 2.0 and self.mask is None
                else float("nan"))

    def final_one(self, W: da.Array, H: object, loss: float) -> tuple[float, float | None]:
        if self.local is not None:
            loss, residual, observed_sq = self.loss_local(W, H, beta=self.beta,
                                                          masked=self.masked)
            return float(loss), _ratio(residual, observed_sq)
        part = graph.loss_graph(self.X, W, np.asarray(H), beta=self.beta, masked=self.masked,
                                mask=self.mask)
        (total,) = self.ctx.compute(part)
        loss, residual, observed_sq = total
        return float(loss), _ratio(residual, observed_sq)


def _ratio(residual: float, sq: float) -> float:
    return float(np.sqrt(residual / sq)) if sq > 0 else 0.0


def column_sums(W: object, ctx: ExecutionContext) -> np.ndarray:
    """W's column sums in float64 (numpy W in place; a dask W in one scheduler call)."""
    if isinstance(W, da.Array):
        (sums,) = ctx.compute(W.astype(np.float64).sum(axis=0))
        return np.asarray(kernels.to_host(sums), dtype=np.float64)
    return np.asarray(W, dtype=np.float64).sum(axis=0)


def factor_sums(H: object, ctx: ExecutionContext) -> tuple[float, float]:
    """``(sum(H), ||H||_F^2)`` in float64 (a chunked H of the 2-D scheme in one call)."""
    if isinstance(H, da.Array):
        H64 = H.astype(np.float64)
        total, sq = ctx.compute(H64.sum(), (H64 * H64).sum())
        return float(total), float(sq)
    H64 = np.asarray(H, dtype=np.float64)
    return float(H64.sum()), float(np.vdot(H64, H64))


class _Block2DStep:
    """One 2-D block iteration: W and H both chunked on the workers (the protocol of
    :class:`_RowPanelStep`)."""

    restarts = 1

    def __init__(self, X: da.Array, ctx: ExecutionContext, *, solver: str, sq_norm: float,
                 l1_w: float, l2_w: float, l1_h: float, l2_h: float, second_read: bool) -> None:
        self.X, self.ctx, self.solver, self.sq_norm = X, ctx, solver, sq_norm
        self.regs = (l1_w, l2_w, l1_h, l2_h)
        self.second_read = second_read

    def prepare(self, W: da.Array, H: object) -> tuple[da.Array, da.Array, np.ndarray]:
        if not isinstance(H, da.Array):
            H = da.from_array(np.asarray(H), chunks=((np.shape(H)[0],), self.X.chunks[1]))
        H = H.astype(self.X.dtype).rechunk(((H.shape[0],), self.X.chunks[1]))
        W, H = self.ctx.persist(W, H)
        H64 = H.astype(np.float64)
        (HHt,) = self.ctx.compute(H64 @ H64.T)
        return W, H, HHt

    def resume_from(self, W: da.Array) -> da.Array:
        (W,) = self.ctx.persist(W)
        return W

    def __call__(self, W: da.Array, H: da.Array, HHt: np.ndarray,
                 active: list[bool] | None = None, with_loss: bool = True) -> tuple:
        l1_w, l2_w, l1_h, l2_h = self.regs  # the loss comes with the products: always
        W_next, H_next, stats = graph2d.iteration_graph_2d(
            self.X, W, H, HHt, solver=self.solver, l1_w=l1_w, l2_w=l2_w, l1_h=l1_h, l2_h=l2_h,
            second_read=self.second_read,
        )
        W_next, H_next, stats = self.ctx.persist(W_next, H_next, stats, optimize=False)
        HHt, cross, WtW = self.ctx.result_of(stats)
        loss = max(self.sq_norm - 2.0 * cross + float(np.vdot(WtW, HHt)), 0.0)
        loss += self.penalty_of(W_next, WtW, H_next)
        return W_next, H_next, WtW[None], HHt, np.array([loss], dtype=np.float64)

    penalty_of = _RowPanelStep.penalty_of
    beta = 2.0

    def callback_error(self, loss: float) -> float:
        return _ratio(loss, self.sq_norm)

    def final(self, W: da.Array, H: object,
              histories: list[list[float]]) -> tuple[list[float], list[float | None]]:
        loss = histories[0][-1]
        if any(self.regs):  # the history holds the objective: the loss is without penalties
            W64 = W.astype(np.float64)
            (WtW,) = self.ctx.compute(W64.T @ W64)
            loss -= self.penalty_of(W, kernels.to_host(WtW), H)
        return [loss], [None]


def component_order(WtW: np.ndarray, HHt: np.ndarray) -> np.ndarray:
    """Component permutation by decreasing ``||W_j|| * ||H_j||`` from the diagonals of the
    Gram matrices (``||W_j||^2 = WtW[j, j]``, ``||H_j||^2 = HHt[j, j]``)."""
    contribution = np.sqrt(np.clip(np.diag(WtW), 0, None) * np.clip(np.diag(HHt), 0, None))
    return np.argsort(-contribution, kind="stable")


# ---------------------------------------------------------------------------------------------
# Restarts: R factorizations batched into one pass over X per iteration
# ---------------------------------------------------------------------------------------------


@dataclass
class RestartsState:
    """The state of :func:`run_iterations`: R factorizations stacked side by side (a plain
    fit is one restart; then ``HHt`` is H Hᵀ of the one H, and H may be a chunked dask array).

    ``W`` is ``[W_1 ... W_R]`` (n_samples, R k) and ``H`` is ``[H_1; ...; H_R]`` (R k,
    n_features, float64); :meth:`block` gives restart ``r``'s columns/rows. ``n_iter`` counts
    the passes over X; each restart's own iterations are ``len(loss_history[r])``.
    """

    W: da.Array
    H: np.ndarray
    WtW: np.ndarray  # (R, k, k), of each restart's final W
    HHt: np.ndarray  # (R, k, k), of each restart's final H (float64)
    restarts: int
    n_iter: int
    loss_history: list[list[float]] = field(default_factory=list)
    seconds_per_iteration: list[float] = field(default_factory=list)
    #: per restart: "" while it runs, then "tol" / "exact" (converged), "max_iter", "max_time"
    stop_reasons: list[str] = field(default_factory=list)
    stop_reason: str = ""
    final_losses: list[float] = field(default_factory=list)
    final_relative_errors: list[float] = field(default_factory=list)

    @property
    def k(self) -> int:
        return self.H.shape[0] // self.restarts

    def block(self, r: int) -> slice:
        return slice(r * self.k, (r + 1) * self.k)

    @property
    def converged(self) -> list[bool]:
        return [s in ("tol", "exact") for s in self.stop_reasons]

    def solver_state(self, r: int) -> SolverState:
        """Restart ``r`` as an ordinary single-fit :class:`SolverState` (a plain fit: the
        state itself, its W and H as they are)."""
        single = self.restarts == 1
        sl = self.block(r)
        history = self.loss_history[r]
        done = len(self.final_losses) > r
        return SolverState(
            W=self.W if single else self.W[:, sl], H=self.H if single else self.H[sl],
            WtW=self.WtW[r], HHt=self.HHt if single else self.HHt[r],
            n_iter=self.n_iter if single else len(history), converged=self.converged[r],
            loss_history=list(history), seconds_per_iteration=list(self.seconds_per_iteration),
            stop_reason=self.stop_reasons[r] or self.stop_reason,
            final_loss=self.final_losses[r] if done else None,
            final_relative_error=self.final_relative_errors[r] if done else None)


#: The stop reason of a restart whose loss became NaN or infinite.
NON_FINITE = "non-finite"


def check_finite_losses(histories: list[list[float]], stop_reasons: list[str]) -> None:
    """Stop the fit once every restart's evaluated loss has become NaN or infinite (its stop
    reason :data:`NON_FINITE`; one restart is the plain fit; with several, a restart that
    diverges is only dropped: the others go on). NaN entries of iterations whose loss was not
    evaluated (``loss_every``) are not a diverged fit."""
    if not histories or not all(r == NON_FINITE for r in stop_reasons):
        return
    # a history holds every iteration from the first (a resumed run's too) and ends where its
    # loss was found non-finite: with loss_every 1, the first non-finite iteration
    start = min(len(h) for h in histories)
    raise NumericalError(
        f"the fit became non-finite at iteration {start} (loss {histories[0][-1]}) — "
        f"{NON_FINITE_FIX}", iteration=start)


def _loss_due(it: int, *, loss_every: int, max_iter: int, checkpoint_every: int,
              time_left: float | None) -> bool:
    """Whether iteration ``it`` evaluates the loss (see ``loss_every`` of
    :func:`run_iterations`): every ``loss_every``-th, the last, a checkpoint's (it stores the
    history), and the one ``max_time`` will likely end (``time_left`` after it, at the last
    iteration's pace, is not positive)."""
    return (loss_every <= 1 or it % loss_every == 0 or it >= max_iter
            or bool(checkpoint_every and it % checkpoint_every == 0)
            or (time_left is not None and time_left <= 0))


def _converged(history: list[float], tol: float) -> str:
    """The per-restart stopping test of :func:`run_iterations`: "tol", "exact" or "".

    Only evaluated losses count: NaN entries (``loss_every``) are skipped, and the decrease
    between the last two evaluated losses is spread over the iterations between them, so
    ``tol`` is a relative decrease per iteration whatever ``loss_every``.
    """
    if not history or math.isnan(history[-1]):
        return ""
    if tol > 0:
        j = len(history) - 2
        while j >= 0 and math.isnan(history[j]):
            j -= 1
        if j >= 0 and (history[j] - history[-1]) <= tol * history[j] * (len(history) - 1 - j):
            return "tol"
    if history[-1] == 0.0:
        return "exact"
    return ""


class _RestartsRowPanelStep(_RowPanelStep):
    """One iteration of R stacked factorizations (row panels): W (n, R k) on the workers, the
    R blocks of H (float64) on the driver, each updated from its own reduced products."""

    def __init__(self, X: da.Array, ctx: ExecutionContext, *, restarts: int, beta: float,
                 masked: bool, mask: da.Array | None, impute: bool = False,
                 **kwargs: object) -> None:
        super().__init__(X, ctx, **kwargs)  # type: ignore[arg-type]
        self.restarts, self.beta, self.masked, self.mask = restarts, beta, masked, mask
        missing = masked or mask is not None
        self.impute = impute and missing and beta == 2.0
        #: multiplicative updates on the observed entries (β-divergences, missing values)
        self.general = (beta != 2.0 or missing) and not self.impute
        #: the final losses need one more pass (the history holds intermediate ones, or the
        #: penalised objective)
        self.final_pass = beta != 2.0 or missing or any(self.regs)

    def prepare(self, W: da.Array, H: object) -> tuple[da.Array, np.ndarray, np.ndarray]:
        W, H64, _ = super().prepare(W, H)
        return W, H64, block_grams(H64, self.restarts)

    def __call__(self, W: da.Array, H64: np.ndarray, HHt: np.ndarray,  # type: ignore[override]
                 active: list[bool], with_loss: bool = True) -> tuple[
                     da.Array, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(W_next, H_next, WtW (R, k, k), HHt (R, k, k), loss (R,))``; inactive blocks are
        unchanged and their WtW and loss entries are NaN (the losses of multiplicative updates
        too without ``with_loss``)."""
        l1_w, l2_w, l1_h, l2_h = self.regs
        R = self.restarts
        k = H64.shape[0] // R
        W_next, partials = graph.restarts_iteration_graph(
            self.X, W, H64.astype(self.X.dtype), restarts=R, active=active,
            solver="mu" if self.general else self.solver, l1_w=l1_w, l2_w=l2_w, beta=self.beta,
            masked=self.masked, mask=self.mask, sum_to_one=self.sum_to_one, impute=self.impute,
            with_loss=with_loss)
        W_next, parts = self.run(W_next, partials)
        H_next = H64.copy()
        losses = np.full(R, np.nan)
        WtW = np.full((R, k, k), np.nan)
        for r in range(R):
            if not active[r]:
                continue
            sl = slice(r * k, (r + 1) * k)
            if self.general:
                numH, denH, loss, WtW_all = parts
                H_next[sl] = divergence.update_h_beta(H64[sl], numH[sl], denH[sl],
                                                      beta=self.beta, l1=l1_h, l2=l2_h)
                # the objective of (W_new, H_old), as the loss (NaN where it is skipped)
                if with_loss:
                    losses[r] = loss[r] + self.penalty_of(W_next, WtW_all[r], H64[sl], sl)
            else:
                # with impute, ||Z||^2 of the filled data replaces ||X||^2: the loss is the
                # EM surrogate, >= the masked loss of the new factors, <= that of the old ones
                WtX, WtW_all, *sq = parts
                H_next[sl] = kernels.update_h(H64[sl], WtX[sl], WtW_all[r], solver=self.solver,
                                              l1=l1_h, l2=l2_h)
                losses[r] = kernels.frobenius_loss(sq[0][r] if sq else self.sq_norm, WtX[sl],
                                                   WtW_all[r], H_next[sl])
                losses[r] += self.penalty_of(W_next, WtW_all[r], H_next[sl], sl)
            WtW[r] = WtW_all[r]
        return W_next, H_next, WtW, block_grams(H_next, R), losses

    def callback_error(self, loss: float) -> float:
        if not self.general or (self.beta == 2.0 and self.mask is None):
            return _ratio(loss, self.sq_norm)
        return float("nan")

    def final(self, W: da.Array, H64: np.ndarray,  # type: ignore[override]
              histories: list[list[float]]) -> tuple[list[float], list[float]]:
        """Final loss and relative error of each restart (one more pass for β / masked)."""
        if not self.final_pass:
            losses = [h[-1] if h else float("nan") for h in histories]
            return losses, [_ratio(v, self.sq_norm) if np.isfinite(v) else float("nan")
                            for v in losses]
        part = graph.restarts_loss_graph(self.X, W, H64, restarts=self.restarts,
                                         beta=self.beta, masked=self.masked, mask=self.mask)
        (total,) = self.ctx.compute(part)
        loss, residual, observed_sq = total
        return ([float(v) for v in loss],
                [_ratio(float(r), float(s)) for r, s in zip(residual, observed_sq, strict=True)])


def best_restart(losses: list[float] | np.ndarray) -> int:
    """The restart with the lowest loss (NaN never wins; the first on ties)."""
    values = np.asarray(losses, dtype=np.float64)
    return int(np.argmin(np.where(np.isnan(values), np.inf, values)))


Step = _RowPanelStep | _Block2DStep


def make_step(X: da.Array, ctx: ExecutionContext, *, solver: str, sq_norm: float,
              restarts: int = 1, stacked: bool = False, l1_w: float = 0.0, l2_w: float = 0.0,
              l1_h: float = 0.0, l2_h: float = 0.0, beta: float = 2.0, masked: bool = False,
              mask: da.Array | None = None, sum_to_one: bool = False,
              w_scratch: str | None = None, second_read: bool = True,
              impute: bool = False, local: object = None) -> Step:
    """The step of one iteration for X's layout and the loss.

    ``stacked`` (or ``restarts > 1``): R factorizations batched in row panels
    (:class:`_RestartsRowPanelStep`, also for EM imputation with ``impute``); else a single
    fit's own kernels: 2-D blocks when X has several column chunks, multiplicative updates for
    β-divergences and missing values, ``solver`` otherwise.

    ``local``: X itself (numpy or CSR, the same values as the dask X) for a single fit in row
    panels without an explicit mask: the loop runs in this process, calling the graph's panel
    task on the whole X each iteration (no graph is built; W is numpy).
    """
    if local is not None and (stacked or restarts > 1 or mask is not None
                              or w_scratch is not None):
        raise ValueError("in-process fits are single fits without a mask or a scratch store")
    regs = dict(l1_w=l1_w, l2_w=l2_w, l1_h=l1_h, l2_h=l2_h)
    general = beta != 2.0 or masked or mask is not None
    if stacked or restarts > 1:
        if len(X.chunks[1]) > 1:
            raise ValueError("restarts are batched in the row-panel scheme only")
        return _RestartsRowPanelStep(
            X, ctx, restarts=restarts, beta=beta, masked=masked, mask=mask, solver=solver,
            sq_norm=sq_norm, sum_to_one=sum_to_one, w_scratch=w_scratch, impute=impute, **regs)
    if len(X.chunks[1]) > 1:
        if general or sum_to_one:
            raise ValueError("β-divergences, missing values and sum-to-one need row panels")
        return _Block2DStep(X, ctx, solver=solver, sq_norm=sq_norm, second_read=second_read,
                            **regs)
    if general:
        return _BetaRowPanelStep(X, ctx, beta=beta, masked=masked, mask=mask, solver="mu",
                                 sq_norm=sq_norm, sum_to_one=sum_to_one, w_scratch=w_scratch,
                                 local=local, **regs)
    return _RowPanelStep(X, ctx, solver=solver, sq_norm=sq_norm, sum_to_one=sum_to_one,
                         w_scratch=w_scratch, local=local, **regs)


def run_iterations(
    step: Step,
    W: da.Array,
    H: object,
    *,
    max_iter: int = 200,
    tol: float = 1e-4,
    max_time: float | None = None,
    bytes_per_iteration: int = 0,
    callback: Callable[[IterationInfo], None] | None = None,
    start_iteration: int = 0,
    loss_history: list[list[float]] | None = None,
    seconds_per_iteration: list[float] | None = None,
    checkpoint: Callable[[object], da.Array | None] | None = None,
    checkpoint_every: int = 0,
    loss_every: int = 1,
) -> RestartsState:
    """THE iteration loop: one Dask computation per iteration, for every kind of fit.

    Each iteration runs ``step`` on the restarts still active (a plain fit is one restart).
    A restart stops when its loss decreases by less than ``tol`` relative to the previous
    iteration (``tol=0`` disables this test) or reaches 0; it is then frozen, so its result is
    the one a single fit would stop at. The loop ends when every restart has stopped, after
    ``max_iter`` iterations, or when ``max_time`` seconds have passed.

    ``loss_every`` N: steps whose loss costs element-wise work (β-divergences, missing values)
    compute it on every N-th iteration, on the last (``max_iter``, and the one ``max_time``
    is expected to end), and where a checkpoint is written; the history holds NaN at the
    others (one entry per iteration all the same). The iterates do not depend on N. The
    stopping test compares the last two evaluated losses: their decrease per iteration
    relative to the earlier one (for N = 1, the decrease from the previous iteration). The
    Frobenius steps compute their loss from their products every iteration whatever N.

    ``start_iteration``, ``loss_history`` (one list per restart) and ``seconds_per_iteration``
    say where a resumed run continues from. ``checkpoint`` is called with the public state
    (:class:`SolverState` for one restart, else :class:`RestartsState`) every
    ``checkpoint_every`` iterations (not after the last); when it returns W read back from the
    checkpoint, the loop continues from that, which bounds the lineage the scheduler keeps.
    The callback receives the lowest current loss among the restarts.

    Raises
    ------
    Interrupted
        On KeyboardInterrupt, carrying the public state of the last complete iteration.
    """
    R = step.restarts
    W, H_work, HHt = step.prepare(W, H)
    k = H_work.shape[0] // R
    histories = [list(h) for h in (loss_history or [[] for _ in range(R)])]
    if len(histories) != R:
        raise ValueError(f"{len(histories)} loss histories for {R} restarts")
    state = RestartsState(
        W=W, H=H_work, WtW=np.zeros((R, k, k)), HHt=HHt, restarts=R, n_iter=start_iteration,
        loss_history=histories, seconds_per_iteration=list(seconds_per_iteration or []),
        # resumed: a restart whose history is shorter than the passes had stopped before
        stop_reasons=[_converged(h, tol) if len(h) == start_iteration
                      else _converged(h, tol) or "tol" for h in histories],
        stop_reason="max_iter")

    updated = [False] * R  # restarts whose WtW this run computed

    def public(state: RestartsState) -> object:
        return state.solver_state(0) if R == 1 else state

    t_start = time.perf_counter()
    dt = 0.0
    try:
        for it in range(start_iteration + 1, max_iter + 1):
            active = [not s for s in state.stop_reasons]
            if not any(active):
                break
            t0 = time.perf_counter()
            evaluate = _loss_due(it, loss_every=loss_every, max_iter=max_iter,
                                 checkpoint_every=checkpoint_every if checkpoint else 0,
                                 time_left=None if max_time is None
                                 else max_time - (t0 - t_start) - dt)
            W, H_work, WtW, HHt, losses = step(W, H_work, HHt, active, with_loss=evaluate)
            dt = time.perf_counter() - t0
            # the previous W is released here: lineage stays one iteration deep
            state.W, state.H, state.HHt, state.n_iter = W, H_work, HHt, it
            state.seconds_per_iteration.append(dt)
            for r in [r for r in range(R) if active[r]]:
                updated[r] = True
                state.WtW[r] = WtW[r]
                loss_r = float(losses[r])
                state.loss_history[r].append(loss_r)
                if not evaluate and math.isnan(loss_r):
                    continue  # not evaluated (loss_every): nothing to test
                state.stop_reasons[r] = _converged(state.loss_history[r], tol)
                if not math.isfinite(loss_r):  # never checkpointed, never written
                    state.stop_reasons[r] = NON_FINITE
            check_finite_losses(state.loss_history, state.stop_reasons)
            if callback is not None:
                best = float(losses[best_restart(losses)])
                callback(IterationInfo(it, best, step.callback_error(best), dt,
                                       bytes_per_iteration, max_iter))
            if all(state.stop_reasons):
                break
            if max_time is not None and time.perf_counter() - t_start >= max_time:
                state.stop_reason = "max_time"
                break
            if checkpoint is not None and checkpoint_every and it % checkpoint_every == 0 and (
                    it < max_iter):
                restart = checkpoint(public(state))
                if restart is not None:
                    # continue from W as stored: the scheduler can forget the iterations before
                    # it, and a lost chunk is recomputed from the store, not from iteration 1
                    W = state.W = step.resume_from(restart.rechunk(W.chunks))
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        raise Interrupted(public(state)) from exc  # type: ignore[arg-type]
    state.stop_reasons = [s or state.stop_reason for s in state.stop_reasons]
    state.stop_reason = "tol" if all(state.converged) else state.stop_reason
    stale = [r for r in range(R) if not updated[r] and state.loss_history[r]]
    if stale:
        # resumed at (or after) a restart's stop: its W^T W, which orders the components, is
        # not in the checkpoint; one pass over W (not X) gives it
        W64 = state.W.astype(np.float64)
        (gram,) = step.ctx.compute(W64.T @ W64)
        gram = kernels.to_host(gram)
        for r in stale:
            state.WtW[r] = gram[r * k:(r + 1) * k, r * k:(r + 1) * k]
    if any(state.loss_history):
        state.final_losses, state.final_relative_errors = step.final(
            state.W, state.H, state.loss_history)
    return state


def iterate(X: da.Array, W: da.Array, H: object, *, sq_norm: float, solver: str,
            ctx: ExecutionContext, loss_history: list[float] | None = None,
            **options: object) -> SolverState:
    """One factorization from ``(W, H)``: :func:`run_iterations` with the step of
    :func:`make_step` (step options, e.g. ``beta``, ``mask``, ``w_scratch``, and loop options
    are keywords of those two), as a :class:`SolverState`."""
    step_options, loop_options = _split_options(options)
    step = make_step(X, ctx, solver=solver, sq_norm=sq_norm, **step_options)
    state = run_iterations(step, W, H, loss_history=[list(loss_history or [])], **loop_options)
    return state.solver_state(0)


def iterate_restarts(X: da.Array, W: da.Array, H: object, *, restarts: int, sq_norm: float,
                     solver: str, ctx: ExecutionContext, **options: object) -> RestartsState:
    """R factorizations from R stacked starting points, batched: one read of X per iteration.

    ``W = [W_1 ... W_R]`` (n_samples, R k) and ``H = [H_1; ...; H_R]`` (R k, n_features); the
    panel tasks of :func:`dnmf.graph.restarts_iteration_graph` update every block with exactly
    the kernel of a single fit, so restart ``r``'s iterates are those of :func:`iterate` from
    ``(W_r, H_r)``. ``impute`` (Frobenius with missing values): EM imputation with ``solver``
    instead of masked multiplicative updates; the history then holds the EM surrogate loss.
    Options as for :func:`iterate`; ``loss_history`` is one list per restart.
    """
    step_options, loop_options = _split_options(options)
    step = make_step(X, ctx, solver=solver, sq_norm=sq_norm, restarts=restarts, stacked=True,
                     **step_options)
    return run_iterations(step, W, H, **loop_options)


_LOOP_OPTIONS = frozenset(inspect.signature(run_iterations).parameters) - {"step", "W", "H"}


def _split_options(options: dict[str, object]) -> tuple[dict, dict]:
    step = {k: v for k, v in options.items() if k not in _LOOP_OPTIONS}
    return step, {k: v for k, v in options.items() if k in _LOOP_OPTIONS}
