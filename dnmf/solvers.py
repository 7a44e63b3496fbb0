"""The iteration loop: one Dask computation per iteration.

This is the only place that computes during a fit. Each iteration persists the new W (on the
workers, or in-process) together with the reduced products, so W's lineage is one iteration
deep. Two schemes share the loop: full-width row panels (:mod:`dnmf.graph`; H updated on the
driver, one read of X) and 2-D blocks (:mod:`dnmf.graph2d`; H chunked on the workers, two
reads).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import dask.array as da
import numpy as np

from dnmf import divergence, graph, graph2d, kernels
from dnmf.cluster import ExecutionContext
from dnmf.io.zarr_ import read_version

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
    """One row-panel iteration: W on the workers, H (float64) on the driver."""

    relative_error: float | None = None  # None: from the loss and ||X||^2

    def __init__(self, X: da.Array, ctx: ExecutionContext, *, solver: str, sq_norm: float,
                 l1_w: float, l2_w: float, l1_h: float, l2_h: float,
                 sum_to_one: bool = False, w_scratch: str | None = None) -> None:
        self.X, self.ctx, self.solver, self.sq_norm = X, ctx, solver, sq_norm
        self.regs = (l1_w, l2_w, l1_h, l2_h)
        self.sum_to_one = sum_to_one
        self.w_store = None if w_scratch is None else _WStore(w_scratch, X)

    def prepare(self, W: da.Array, H: object) -> tuple[da.Array, np.ndarray, np.ndarray]:
        W = self.keep(W)
        H64 = np.asarray(H, dtype=np.float64)
        return W, H64, H64 @ H64.T

    def keep(self, W: da.Array) -> da.Array:
        """W between iterations: persisted on the workers, or written to the scratch store."""
        if self.w_store is None:
            (W,) = self.ctx.persist(W)
            return W
        return self.w_store.put(W, self.ctx)

    def run(self, W_next: da.Array, partials: object) -> tuple[da.Array, object]:
        """Compute one iteration's graph: W_next kept (see :meth:`keep`) and the partials."""
        if self.w_store is None:
            W_next, partials = self.ctx.persist(W_next, partials, optimize=False)
            return W_next, self.ctx.result_of(partials)
        # one computation: each panel task feeds both its W rows' store and the partials
        stored, slot = self.w_store.store(W_next)
        _, value = self.ctx.compute(stored, partials)
        return self.w_store.read(slot), value

    def __call__(self, W: da.Array, H64: np.ndarray, HHt: np.ndarray) -> tuple:
        l1_w, l2_w, l1_h, l2_h = self.regs
        W_next, partials = graph.iteration_graph(
            self.X, W, H64.astype(self.X.dtype), solver=self.solver, l1_w=l1_w, l2_w=l2_w,
            sum_to_one=self.sum_to_one,
        )
        W_next, (WtX, WtW) = self.run(W_next, partials)
        H64 = kernels.update_h(H64, WtX, WtW, solver=self.solver, l1=l1_h, l2=l2_h)
        loss = kernels.frobenius_loss(self.sq_norm, WtX, WtW, H64)
        return W_next, H64, WtW, H64 @ H64.T, loss

    def public_h(self, H64: np.ndarray) -> np.ndarray:
        # float64, as the loop keeps it: checkpoints store it so a resumed run is exact; the
        # API casts the final H to X's dtype
        return H64

    def final(self, W: da.Array, H: object, loss: float) -> tuple[float, float | None]:
        """The loss and relative error of the final factors.

        In float64 the history's last loss is exact. In float32 the Gram identity behind it
        cancels (products rounded to ~1e-7 against a residual that may be 1e-5 of ``||X||²``),
        so the final residual is computed directly, in one more pass over X.
        """
        if self.X.dtype != np.float32:
            return loss, None
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

    def __call__(self, W: da.Array, H64: np.ndarray, HHt: np.ndarray) -> tuple:
        l1_w, l2_w, l1_h, l2_h = self.regs
        W_next, partials = graph.iteration_graph(
            self.X, W, H64.astype(self.X.dtype), solver="mu", l1_w=l1_w, l2_w=l2_w,
            beta=self.beta, masked=self.masked, mask=self.mask, sum_to_one=self.sum_to_one,
        )
        W_next, (numH, denH, loss, WtW) = self.run(W_next, partials)
        H64 = divergence.update_h_beta(H64, numH, denH, beta=self.beta, l1=l1_h, l2=l2_h)
        # the Frobenius residual is only computed at the end (see final) for other losses;
        # masked Frobenius: ||X||^2 of the validation pass covers the entries that are not NaN
        self.relative_error = (_ratio(loss, self.sq_norm) if self.beta == 2.0 and self.mask is None
                               else float("nan"))
        return W_next, H64, WtW, H64 @ H64.T, float(loss)

    def final(self, W: da.Array, H: object, loss: float) -> tuple[float, float | None]:
        part = graph.loss_graph(self.X, W, np.asarray(H), beta=self.beta, masked=self.masked,
                                mask=self.mask)
        (total,) = self.ctx.compute(part)
        loss, residual, observed_sq = total
        return float(loss), _ratio(residual, observed_sq)


def _ratio(residual: float, sq: float) -> float:
    return float(np.sqrt(residual / sq)) if sq > 0 else 0.0


class _Block2DStep:
    """One 2-D block iteration: W and H both chunked on the workers."""

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

    def __call__(self, W: da.Array, H: da.Array, HHt: np.ndarray) -> tuple:
        l1_w, l2_w, l1_h, l2_h = self.regs
        W_next, H_next, stats = graph2d.iteration_graph_2d(
            self.X, W, H, HHt, solver=self.solver, l1_w=l1_w, l2_w=l2_w, l1_h=l1_h, l2_h=l2_h,
            second_read=self.second_read,
        )
        W_next, H_next, stats = self.ctx.persist(W_next, H_next, stats, optimize=False)
        HHt, cross, WtW = self.ctx.result_of(stats)
        loss = max(self.sq_norm - 2.0 * cross + float(np.vdot(WtW, HHt)), 0.0)
        return W_next, H_next, WtW, HHt, loss

    def public_h(self, H: da.Array) -> da.Array:
        return H

    relative_error = None

    def final(self, W: da.Array, H: object, loss: float) -> tuple[float, float | None]:
        return loss, None


def iterate(
    X: da.Array,
    W: da.Array,
    H: object,
    *,
    sq_norm: float,
    solver: str,
    ctx: ExecutionContext,
    max_iter: int = 200,
    tol: float = 1e-4,
    max_time: float | None = None,
    l1_w: float = 0.0,
    l2_w: float = 0.0,
    l1_h: float = 0.0,
    l2_h: float = 0.0,
    bytes_per_iteration: int = 0,
    callback: Callable[[IterationInfo], None] | None = None,
    second_read: bool = True,
    start_iteration: int = 0,
    loss_history: list[float] | None = None,
    seconds_per_iteration: list[float] | None = None,
    checkpoint: Callable[[SolverState], da.Array | None] | None = None,
    checkpoint_every: int = 0,
    beta: float = 2.0,
    masked: bool = False,
    mask: da.Array | None = None,
    sum_to_one: bool = False,
    w_scratch: str | None = None,
) -> SolverState:
    """Alternate W and H updates until converged.

    Stops when the relative decrease of the loss, ``(f[t-1] - f[t]) / f[t-1]``, falls below
    ``tol`` (``tol=0`` disables this test), after ``max_iter`` iterations, or when ``max_time``
    seconds have passed.

    Parameters
    ----------
    X : dask array (n_samples, n_features), row panels (one column chunk), or 2-D blocks
    W : dask array (n_samples, k), chunked like X's rows
    H : ndarray (k, n_features); with 2-D blocks also a dask array chunked like X's columns
    sq_norm : float
        ``||X||_F^2`` in float64 (from the validation pass).
    solver : "hals" | "mu" | "anls"
    ctx : ExecutionContext
    second_read : bool
        2-D blocks only: read X again for the second pass (``False`` when X is persisted).
    start_iteration, loss_history, seconds_per_iteration
        Where a resumed run continues from.
    checkpoint : callable, optional
        Called with the state every ``checkpoint_every`` iterations (not after the last). When
        it returns W read back from the checkpoint, the loop continues from that, which bounds
        the lineage the scheduler keeps.
    beta, masked, mask
        β of the loss, and missing values (NaN in X, or ``mask`` zero): anything but the
        unmasked Frobenius loss runs multiplicative updates (:mod:`dnmf.divergence`), row panels
        only.
    sum_to_one : bool
        Rows of W sum to one (row panels only).
    w_scratch : str, optional
        Row panels: keep W between iterations in a Zarr store at this path (two slots written
        in turn) instead of worker memory — for W larger than the workers' memory.

    Raises
    ------
    Interrupted
        On KeyboardInterrupt, carrying the state of the last complete iteration.
    """
    regs = dict(l1_w=l1_w, l2_w=l2_w, l1_h=l1_h, l2_h=l2_h)
    general = beta != 2.0 or masked or mask is not None
    if len(X.chunks[1]) > 1:
        if general or sum_to_one:
            raise ValueError("β-divergences, missing values and sum-to-one need row panels")
        step: _RowPanelStep | _Block2DStep = _Block2DStep(
            X, ctx, solver=solver, sq_norm=sq_norm, second_read=second_read, **regs)
    elif general:
        step = _BetaRowPanelStep(X, ctx, beta=beta, masked=masked, mask=mask, solver="mu",
                                 sq_norm=sq_norm, sum_to_one=sum_to_one, w_scratch=w_scratch,
                                 **regs)
    else:
        step = _RowPanelStep(X, ctx, solver=solver, sq_norm=sq_norm, sum_to_one=sum_to_one,
                             w_scratch=w_scratch, **regs)
    W, H_work, HHt = step.prepare(W, H)
    state = SolverState(
        W=W, H=step.public_h(H_work), WtW=np.zeros_like(HHt), HHt=HHt, n_iter=start_iteration,
        converged=False, loss_history=list(loss_history or []),
        seconds_per_iteration=list(seconds_per_iteration or []), stop_reason="max_iter",
    )
    t_start = time.perf_counter()
    try:
        for it in range(start_iteration + 1, max_iter + 1):
            t0 = time.perf_counter()
            W, H_work, WtW, HHt, loss = step(W, H_work, HHt)
            # the previous W is released here: lineage stays one iteration deep
            state.W, state.H, state.WtW, state.HHt, state.n_iter = (
                W, step.public_h(H_work), WtW, HHt, it)
            state.stop_reason = _record(
                state.loss_history, state.seconds_per_iteration, loss,
                time.perf_counter() - t0, it, sq_norm=sq_norm, tol=tol, max_iter=max_iter,
                max_time=max_time, t_start=t_start, bytes_per_iteration=bytes_per_iteration,
                callback=callback, relative_error=step.relative_error)
            if state.stop_reason != "max_iter":
                break
            if checkpoint is not None and checkpoint_every and it % checkpoint_every == 0 and (
                    it < max_iter):
                restart = checkpoint(state)
                if restart is not None:
                    # continue from W as stored: the scheduler can forget the iterations before
                    # it, and a lost chunk is recomputed from the store, not from iteration 1
                    W = restart.rechunk(W.chunks)
                    if w_scratch is None:
                        (W,) = ctx.persist(W)
                    state.W = W
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        raise Interrupted(state) from exc
    state.converged = state.stop_reason in ("tol", "exact")
    if state.loss_history:
        state.final_loss, state.final_relative_error = step.final(
            state.W, H_work, state.loss_history[-1])
    return state


def _record(history: list[float], seconds: list[float], loss: float, dt: float, it: int, *,
            sq_norm: float, tol: float, max_iter: int, max_time: float | None, t_start: float,
            bytes_per_iteration: int, callback: Callable[[IterationInfo], None] | None,
            relative_error: float | None = None) -> str:
    """Append an iteration's loss and time, report it, and say why to stop (or "max_iter")."""
    history.append(loss)
    seconds.append(dt)
    if callback is not None:
        rel = relative_error if relative_error is not None else _ratio(loss, sq_norm)
        callback(IterationInfo(it, loss, rel, dt, bytes_per_iteration, max_iter))
    if len(history) > 1 and tol > 0 and (history[-2] - loss) <= tol * history[-2]:
        return "tol"  # tol=0 runs max_iter iterations
    if loss == 0.0:
        return "exact"
    if max_time is not None and time.perf_counter() - t_start >= max_time:
        return "max_time"
    return "max_iter"


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
    """The outcome of :func:`iterate_restarts`: R factorizations stacked side by side.

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
        """Restart ``r`` as an ordinary single-fit :class:`SolverState`."""
        sl = self.block(r)
        history = self.loss_history[r]
        return SolverState(
            W=self.W[:, sl], H=self.H[sl], WtW=self.WtW[r], HHt=self.HHt[r],
            n_iter=len(history), converged=self.converged[r], loss_history=list(history),
            seconds_per_iteration=list(self.seconds_per_iteration),
            stop_reason=self.stop_reasons[r], final_loss=self.final_losses[r],
            final_relative_error=self.final_relative_errors[r])


def _converged(history: list[float], tol: float) -> str:
    """The per-restart stopping test of :func:`_record`: "tol", "exact" or ""."""
    if len(history) > 1 and tol > 0 and (history[-2] - history[-1]) <= tol * history[-2]:
        return "tol"
    if history and history[-1] == 0.0:
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
        #: the final losses need one more pass (the history holds intermediate ones)
        self.final_pass = beta != 2.0 or missing

    def __call__(self, W: da.Array, H64: np.ndarray, active: list[bool]  # type: ignore[override]
                 ) -> tuple[da.Array, np.ndarray, np.ndarray, np.ndarray]:
        """``(W_next, H_next, WtW (R, k, k), loss (R,))``; inactive blocks are unchanged and
        their WtW and loss entries are NaN."""
        l1_w, l2_w, l1_h, l2_h = self.regs
        R = self.restarts
        k = H64.shape[0] // R
        W_next, partials = graph.restarts_iteration_graph(
            self.X, W, H64.astype(self.X.dtype), restarts=R, active=active,
            solver="mu" if self.general else self.solver, l1_w=l1_w, l2_w=l2_w, beta=self.beta,
            masked=self.masked, mask=self.mask, sum_to_one=self.sum_to_one, impute=self.impute)
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
                losses[r] = loss[r]
            else:
                # with impute, ||Z||^2 of the filled data replaces ||X||^2: the loss is the
                # EM surrogate, >= the masked loss of the new factors, <= that of the old ones
                WtX, WtW_all, *sq = parts
                H_next[sl] = kernels.update_h(H64[sl], WtX[sl], WtW_all[r], solver=self.solver,
                                              l1=l1_h, l2=l2_h)
                losses[r] = kernels.frobenius_loss(sq[0][r] if sq else self.sq_norm, WtX[sl],
                                                   WtW_all[r], H_next[sl])
            WtW[r] = WtW_all[r]
        return W_next, H_next, WtW, losses

    def final_all(self, W: da.Array, H64: np.ndarray,
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


def iterate_restarts(
    X: da.Array,
    W: da.Array,
    H: object,
    *,
    restarts: int,
    sq_norm: float,
    solver: str,
    ctx: ExecutionContext,
    max_iter: int = 200,
    tol: float = 1e-4,
    max_time: float | None = None,
    l1_w: float = 0.0,
    l2_w: float = 0.0,
    l1_h: float = 0.0,
    l2_h: float = 0.0,
    bytes_per_iteration: int = 0,
    callback: Callable[[IterationInfo], None] | None = None,
    start_iteration: int = 0,
    loss_history: list[list[float]] | None = None,
    seconds_per_iteration: list[float] | None = None,
    checkpoint: Callable[[RestartsState], da.Array | None] | None = None,
    checkpoint_every: int = 0,
    beta: float = 2.0,
    masked: bool = False,
    mask: da.Array | None = None,
    sum_to_one: bool = False,
    w_scratch: str | None = None,
    impute: bool = False,
) -> RestartsState:
    """R factorizations from R starting points, batched: one read of X per iteration for all.

    ``W = [W_1 ... W_R]`` (n_samples, R k) and ``H = [H_1; ...; H_R]`` (R k, n_features) are
    stacked; each iteration runs :func:`dnmf.graph.restarts_iteration_graph`, whose panel tasks
    update every block with exactly the kernel of a single fit, and updates each block of H on
    the driver from its own ``W_b^T X`` and ``W_b^T W_b``. Restart ``r``'s iterates are those of
    :func:`iterate` started from ``(W_r, H_r)``.

    Each restart stops on its own when its loss decreases by less than ``tol`` (relative) or
    reaches 0: it is then frozen (no longer updated), so its result is the one a single fit
    would stop at. The loop ends when every restart has stopped, after ``max_iter`` iterations,
    or when ``max_time`` has passed. Row panels only (the 2-D block scheme is not batched).

    Parameters are those of :func:`iterate`; ``loss_history`` is one list per restart (for a
    resumed run) and ``checkpoint`` is called with the :class:`RestartsState`. The callback
    receives the lowest current loss among the restarts. ``impute`` (Frobenius with missing
    values): EM imputation with ``solver`` (hals, anls or mu on the filled data, see
    :func:`dnmf.graph.stacked_panel_step`) instead of masked multiplicative updates; the
    history then holds the EM surrogate loss (an upper bound of the masked loss, which never
    rises) and the final losses are the exact masked ones.

    Raises
    ------
    Interrupted
        On KeyboardInterrupt, carrying the :class:`RestartsState` of the last complete
        iteration.
    """
    if len(X.chunks[1]) > 1:
        raise ValueError("restarts are batched in the row-panel scheme only")
    step = _RestartsRowPanelStep(
        X, ctx, restarts=restarts, beta=beta, masked=masked, mask=mask, solver=solver,
        sq_norm=sq_norm, sum_to_one=sum_to_one, w_scratch=w_scratch, l1_w=l1_w, l2_w=l2_w,
        l1_h=l1_h, l2_h=l2_h, impute=impute)
    W, H64, _ = step.prepare(W, H)
    k = H64.shape[0] // restarts
    histories = [list(h) for h in (loss_history or [[] for _ in range(restarts)])]
    if len(histories) != restarts:
        raise ValueError(f"{len(histories)} loss histories for {restarts} restarts")
    state = RestartsState(
        W=W, H=H64, WtW=np.zeros((restarts, k, k)), HHt=graph.block_grams(H64, restarts),
        restarts=restarts, n_iter=start_iteration, loss_history=histories,
        seconds_per_iteration=list(seconds_per_iteration or []),
        # resumed: a restart whose history is shorter than the passes had stopped before
        stop_reasons=[_converged(h, tol) if len(h) == start_iteration
                      else _converged(h, tol) or "tol" for h in histories],
        stop_reason="max_iter")
    t_start = time.perf_counter()
    try:
        for it in range(start_iteration + 1, max_iter + 1):
            active = [not s for s in state.stop_reasons]
            if not any(active):
                break
            t0 = time.perf_counter()
            W, H64, WtW, losses = step(W, H64, active)
            dt = time.perf_counter() - t0
            state.W, state.H, state.n_iter = W, H64, it
            state.seconds_per_iteration.append(dt)
            for r in np.flatnonzero(active):
                state.WtW[r] = WtW[r]
                state.loss_history[r].append(float(losses[r]))
                state.stop_reasons[r] = _converged(state.loss_history[r], tol)
            state.HHt = graph.block_grams(H64, restarts)
            best = int(np.nanargmin(losses))
            if callback is not None:
                rel = (_ratio(losses[best], sq_norm) if not step.general
                       or (beta == 2.0 and mask is None) else float("nan"))
                callback(IterationInfo(it, float(losses[best]), rel, dt, bytes_per_iteration,
                                       max_iter))
            if all(state.stop_reasons):
                break
            if max_time is not None and time.perf_counter() - t_start >= max_time:
                state.stop_reason = "max_time"
                break
            if checkpoint is not None and checkpoint_every and it % checkpoint_every == 0 and (
                    it < max_iter):
                restart = checkpoint(state)
                if restart is not None:
                    W = restart.rechunk(W.chunks)
                    if w_scratch is None:
                        (W,) = ctx.persist(W)
                    state.W = W
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        raise Interrupted(state) from exc  # type: ignore[arg-type]
    state.stop_reasons = [s or state.stop_reason for s in state.stop_reasons]
    state.stop_reason = "tol" if all(state.converged) else state.stop_reason
    state.final_losses, state.final_relative_errors = step.final_all(
        state.W, state.H, state.loss_history)
    return state
