"""The scikit-learn style estimator :class:`NMF`, a thin layer over :func:`dnmf.factorize`."""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from typing import Any

import numpy as np
import zarr
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, validate_data

from dnmf import api, labels, named_axes
from dnmf.aliases import ArrayLike, MatrixLike, PathLike, RandomStateLike, SchedulerLike
from dnmf.errors import InputError
from dnmf.io.remote import storage_options_used, zarr_store
from dnmf.io.result_store import open_result
from dnmf.reconstruct import reconstruct
from dnmf.spec import regularization

#: A fitted model keeps the training W (``W_``) in memory up to this size; a larger W is
#: dropped (``W_`` is None) unless it lives in a result store (``out=``), so that a pickled
#: model stays small: ``components_`` and the fit's summary plus at most this much.
KEEP_W_MAX_BYTES = 16 * 2**20

#: Methods of ``init`` that do not use given ``W``/``H`` (scikit-learn warns and ignores them).
_IGNORES_CUSTOM = ("random", "nndsvd", "nndsvda", "nndsvdar", "spa", "vca")


class NMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Non-negative matrix factorization ``X ~= W @ H`` on Dask, out of core.

    Parameters follow :class:`sklearn.decomposition.NMF`; the fit runs on a Dask scheduler over
    the row panels of X, reading X once per iteration.

    Parameters
    ----------
    n_components : int, "auto" or None
        Rank k. None means ``n_features``; ``"auto"`` takes k from ``W``/``H`` given to
        :meth:`fit` (``init="custom"``), else ``n_features`` (as scikit-learn).
    solver : {"auto", "hals", "cd", "mu", "anls"}
        ``auto``: hals for the Frobenius loss on fully observed data, mu otherwise.
    beta_loss : {"frobenius", "kullback-leibler", "itakura-saito"} or float
    init : {"auto", "random", "nndsvd", "nndsvda", "nndsvdar", "custom"}
    max_iter : int
    tol : float
        Relative decrease of the loss between iterations below which the fit stops.
    random_state : int, RandomState or None
    n_restarts : int
        Fit from this many starting points, batched so that they share every read of X, and
        keep the lowest final loss (see :func:`dnmf.factorize`). With more than one, the
        default init is random (restart 0 uses an explicit ``init``).
    alpha_W, alpha_H, l1_ratio : float
        Regularisation, with scikit-learn's meaning and scaling.
    missing : {"error", "mask"}
        ``"mask"``: NaN entries of X are missing values, left out of the fit (masked NMF);
        :meth:`reconstruct` predicts them.
    w_sum_to_one : bool
        Rows of W (abundances) sum to one.
    forget_factor : float
        :meth:`partial_fit` only: weight of the past batches' statistics at each new batch.
    scheduler : {"auto", "threads", "sync", "local", "cuda"}, address or distributed.Client
    device : {"cpu", "gpu"}
        Where the panel tasks of :meth:`fit` run: numpy on the host, or CuPy on a CUDA GPU
        (hals and mu; see :func:`dnmf.factorize`). :meth:`transform` and :meth:`partial_fit`
        run on the host.
    max_time : float, optional
        Wall-time budget of the iterations, in seconds.
    loss_every : int, optional
        β-divergences and missing values: evaluate the loss every this many iterations (and
        on the last); ``loss_history_`` is NaN at the others and ``tol`` compares the
        evaluated losses (see :func:`dnmf.factorize`). Default 10 for β != 2, else 1.
    persist_x : bool or "auto"
    verbose : int
        Print the loss of every iteration (to stdout).

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        H; an ``xarray.DataArray`` with X's column labels for labelled X (see Notes).
    n_components_ : int
    n_iter_ : int
    reconstruction_err_ : float
        ``||X - W H||_F``.
    relative_error_ : float
    loss_history_ : list of float
        The loss after each iteration; NaN where it was not evaluated (``loss_every``).
    restart_losses_ : list of float
        Final loss of every restart (one entry without restarts).
    best_restart_ : int
        The restart kept.
    result_ : dnmf.api.FitResult
        The fit's result (its ``W`` is ``W_``).
    W_ : ndarray, dask array or None
        The training W: kept when it takes at most :data:`KEEP_W_MAX_BYTES` (16 MiB) or is
        read lazily from the result store (``out=``); None otherwise. A pickled model is
        ``components_`` plus at most those 16 MiB.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Column names of a DataFrame given to :meth:`fit`; :meth:`transform` refuses another
        order or other names, as scikit-learn does.

    Notes
    -----
    In-memory input (numpy, lists, pandas, scipy.sparse) is checked as scikit-learn checks it
    (object arrays of numbers converted, integers become float64, float32 kept) and gets numpy
    W back from :meth:`fit_transform` and :meth:`transform`. Lazy input (dask, zarr, paths)
    gets a dask array from both: call ``.compute()`` on the rows you need.

    Labelled input keeps its labels: an ``xarray.DataArray`` (dims ``(rows, cols)``) or an
    ``anndata.AnnData`` (``obs_names``, ``var_names``; dims ``obs``, ``var``) gets W from
    :meth:`fit_transform`/:meth:`transform` as a DataArray with dims ``(rows, "component")``
    and X's row labels, and ``components_`` (H) as a DataArray with dims
    ``("component", cols)`` and X's column labels; ``np.asarray`` gives the bare values (numpy
    for in-memory X, dask inside for lazy X). The result store (``out=``) keeps the labels as
    its ``sample``/``feature`` coordinates, and :meth:`from_store` (``dnmf.load``) restores
    them.

    Examples
    --------
    >>> import numpy as np
    >>> from dnmf import NMF
    >>> X = np.random.default_rng(0).random((100, 20))
    >>> W = NMF(n_components=3, random_state=0, scheduler="threads").fit_transform(X)
    >>> W.shape
    (100, 3)
    """

    def __init__(
        self,
        n_components: int | None = None,
        *,
        solver: str = "auto",
        beta_loss: str | float = "frobenius",
        init: str | None = "auto",
        max_iter: int = 200,
        tol: float = 1e-4,
        random_state: RandomStateLike = None,
        n_restarts: int = 1,
        alpha_W: float = 0.0,
        alpha_H: float | str = "same",
        l1_ratio: float = 0.0,
        missing: str = "error",
        w_sum_to_one: bool = False,
        forget_factor: float = 0.7,
        scheduler: SchedulerLike = "auto",
        device: str = "cpu",
        max_time: float | None = None,
        loss_every: int | None = None,
        persist_x: bool | str = "auto",
        verbose: int = 0,
    ) -> None:
        self.n_components = n_components
        self.solver = solver
        self.beta_loss = beta_loss
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.n_restarts = n_restarts
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.missing = missing
        self.w_sum_to_one = w_sum_to_one
        self.forget_factor = forget_factor
        self.scheduler = scheduler
        self.device = device
        self.max_time = max_time
        self.loss_every = loss_every
        self.persist_x = persist_x
        self.verbose = verbose

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = self.missing == "mask"
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    @property
    def _n_features_out(self) -> int:
        """``get_feature_names_out`` names ``nmf0``, ``nmf1``, ... (one per component)."""
        return int(self.components_.shape[0])

    @classmethod
    def from_store(cls, path: PathLike,
                   storage_options: dict[str, Any] | None = None) -> NMF:
        """A fitted :class:`NMF` from a result store written by ``factorize(out=...)`` (also
        ``dnmf.load``).

        ``model.components_`` is H; ``model.W_`` is W, lazy from the store.
        ``storage_options``: fsspec options (endpoint, credentials) of a URL ``path``.
        """
        with storage_options_used(None, storage_options):
            W, H, attrs = open_result(path)
            axes = named_axes.stored_labels(zarr.open_group(zarr_store(path, read_only=True),
                                                            mode="r"))
        model = cls(n_components=int(attrs["n_components"]), solver=attrs["solver"],
                    init=attrs["init"], random_state=attrs["seed"],
                    beta_loss=attrs.get("beta_loss", "frobenius"),
                    missing=attrs.get("missing", "error"),
                    w_sum_to_one=bool(attrs.get("w_sum_to_one", False)),
                    alpha_W=attrs.get("alpha_W", 0.0), alpha_H=attrs.get("alpha_H", "same"),
                    l1_ratio=attrs.get("l1_ratio", 0.0),
                    n_restarts=int(attrs.get("n_restarts", 1)))
        model.components_ = named_axes.labelled(H, axes, "H")
        model.n_components_ = H.shape[0]
        model.n_features_in_ = H.shape[1]
        model.n_iter_ = int(attrs["n_iter"])
        model.reconstruction_err_ = _float_or_nan(attrs.get("reconstruction_err"))
        model.relative_error_ = _float_or_nan(attrs.get("relative_error"))
        # NaN (stored as null) where the loss was not evaluated (loss_every)
        model.loss_history_ = [float("nan") if v is None else v for v in attrs["loss_history"]]
        model.W_ = named_axes.labelled(W, axes, "W")
        model.attrs_ = attrs
        return model

    def fit(self, X: MatrixLike, y: object = None, W: ArrayLike | None = None, H: ArrayLike | None = None, **params: Any) -> NMF:
        """Learn W and H for X; see :meth:`fit_transform`."""
        self.fit_transform(X, W=W, H=H, **params)
        return self

    def fit_transform(self, X: MatrixLike, y: object = None, W: ArrayLike | None = None,
                      H: ArrayLike | None = None,
                      **params: Any) -> Any:
        """Learn the factorization and return W.

        Parameters
        ----------
        X : array-like, dask/zarr array or path of shape (n_samples, n_features)
        W, H : array-like, optional
            Initial factors (``init="custom"``).
        **params
            Passed to :func:`dnmf.factorize` (``var``, ``out``, ``client``, ``callback``,
            ``storage_options``, ...).

        Returns
        -------
        W : ndarray (numpy input) or dask array of shape (n_samples, n_components)
        """
        X, var, axes = named_axes.split(X)  # xarray / AnnData: W and H keep X's labels
        if var is not None:
            params["var"] = var
        in_memory = labels.in_memory(X)
        if in_memory:
            X = self._checked(X, reset=True)
        else:
            self.n_features_in_ = int(labels.shape_of(X)[1]) if labels.shape_of(X) else None
        W, H = self._custom_start(X, W, H)
        k = self._rank(X, W, H)
        self._n_components = k  # scikit-learn's name for the resolved rank
        if self.verbose and "callback" not in params:
            params["callback"] = _print_iteration
        result = api.factorize(
            X, k, solver=self.solver, beta_loss=self.beta_loss, init=self.init,
            max_iter=self.max_iter, tol=self.tol, random_state=self.random_state,
            n_restarts=self.n_restarts, W_init=W, H_init=H, alpha_W=self.alpha_W, alpha_H=self.alpha_H,
            l1_ratio=self.l1_ratio, missing=self.missing, w_sum_to_one=self.w_sum_to_one,
            scheduler=self.scheduler, device=self.device, max_time=self.max_time,
            loss_every=self.loss_every, persist_x=self.persist_x, axis_labels=axes, **params,
        )
        if result.stop_reason == "max_iter" and self.tol > 0:
            warnings.warn(f"Maximum number of iterations {self.max_iter} reached. Increase it "
                          "to improve convergence.", ConvergenceWarning, stacklevel=3)
        keep = result.path is not None or np.prod(np.shape(result.W)) * np.dtype(
            result.W.dtype).itemsize <= KEEP_W_MAX_BYTES
        W_out = result.W
        result = dataclasses.replace(result, W=result.W if keep else None)
        self.result_ = result
        self.components_ = result.H
        self.n_components_ = result.n_components
        self.n_features_in_ = result.H.shape[1]
        self.n_iter_ = result.n_iter
        self.reconstruction_err_ = result.reconstruction_err
        self.relative_error_ = result.relative_error
        self.loss_history_ = result.loss_history
        self.restart_losses_ = result.restart_losses
        self.best_restart_ = result.best_restart
        self.W_ = result.W
        return W_out

    def _checked(self, X: Any, *, reset: bool) -> Any:
        """In-memory X checked and converted as scikit-learn does (values are checked by
        dnmf's validation pass, with its messages)."""
        return validate_data(self, X, reset=reset, accept_sparse=("csr", "csc"),
                             dtype=[np.float64, np.float32],
                             ensure_all_finite=False)

    def _custom_start(self, X: Any, W: Any, H: Any) -> tuple[Any, Any]:
        """``(W, H)`` to start from: ignored with a warning when ``init`` does not use them,
        and of X's dtype (as scikit-learn requires)."""
        if W is None and H is None:
            return None, None
        if self.init in _IGNORES_CUSTOM:
            warnings.warn("When init!='custom', provided W or H are ignored. Set "
                          " init='custom' to use them as initialization.", RuntimeWarning,
                          stacklevel=3)
            return None, None
        dtype = getattr(X, "dtype", None)
        for name, F in (("W", W), ("H", H)):
            if F is not None and dtype is not None and getattr(F, "dtype", dtype) != dtype:
                raise TypeError(f"H and W should have the same dtype as X. Got "
                                f"{name}.dtype = {F.dtype} and X.dtype = {dtype}.")
        return W, H

    def _rank(self, X: Any, W: Any, H: Any) -> Any:
        """k from ``n_components``: None -> n_features; "auto" -> from W/H, else n_features."""
        k = self.n_components
        if isinstance(k, str) and k == "auto":
            if H is not None:
                return int(np.shape(H)[0])
            if W is not None:
                return int(np.shape(W)[1])
            k = None
        if k is None:
            shape = labels.shape_of(X)
            if shape is None:
                raise InputError("n_components=None needs X's number of columns — pass "
                                 "n_components=k for a path")
            return int(shape[1])
        return k

    def transform(self, X: MatrixLike, **params: Any) -> Any:
        """W for new rows with H fixed, in one pass over X.

        Frobenius: exact non-negative least squares per row (fully constrained with
        ``w_sum_to_one``); other losses or missing values: multiplicative updates per row panel
        to convergence. Returns a numpy array for numpy input, else a lazy dask array.
        """
        check_is_fitted(self, "components_")
        X, var, axes = named_axes.split(X)
        named_axes.check_columns(axes, self.components_)
        if var is not None:
            params["var"] = var
        if labels.in_memory(X):
            X = self._checked(X, reset=False)
        # the fit's penalties on W (scikit-learn's transform solves the same penalised problem)
        l1, l2, _, _ = regularization(self.alpha_W, self.alpha_H, self.l1_ratio,
                                      (1, int(self.components_.shape[1])))
        W = api.transform_rows(X, np.asarray(self.components_), scheduler=self.scheduler,
                               beta_loss=self.beta_loss, missing=self.missing,
                               w_sum_to_one=self.w_sum_to_one, l1=l1, l2=l2, **params)
        return named_axes.labelled(W, axes, "W")

    def partial_fit(self, X: MatrixLike, y: object = None, **params: Any) -> NMF:
        """Update H from one batch of rows (online NMF, constant memory).

        The first call initialises H from its batch (``init``); each later call folds the
        batch's statistics into running sums weighted by ``forget_factor`` and updates H, see
        :mod:`dnmf.online`. W of the batch is not kept; use :meth:`transform` for it.

        Parameters
        ----------
        X : array-like, dask array or path of shape (n_batch_rows, n_features)
        **params
            ``var``, ``client``.
        """
        state = getattr(self, "_online", None)
        if labels.in_memory(X):
            X = self._checked(X, reset=state is None)
        k = self._rank(X, None, None)
        state = api.partial_fit_batch(
            state, X, k, beta_loss=self.beta_loss, init=self.init,
            random_state=self.random_state, alpha_W=self.alpha_W, alpha_H=self.alpha_H,
            l1_ratio=self.l1_ratio, forget_factor=self.forget_factor,
            scheduler=self.scheduler, **params)
        self._online = state
        self.components_ = state.H.astype(state.dtype)
        self.n_components_ = state.H.shape[0]
        self.n_features_in_ = state.H.shape[1]
        self.n_steps_ = state.n_batches
        return self

    def inverse_transform(self, X: Any) -> Any:
        """``W @ H``: the data reconstructed from W (numpy or dask)."""
        check_is_fitted(self, "components_")
        H = self.components_
        if type(X).__module__.split(".")[0] == "xarray" or not hasattr(H, "dims"):
            return X @ H  # a labelled W @ labelled H: xarray's dot over "component"
        return X @ np.asarray(H)

    def reconstruct(self, rows: Any = None, cols: Any = None) -> Any:
        """``W[rows] @ H[:, cols]`` from the fitted W: predictions for missing entries.

        Lazy (dask) when W is lazy; ask for the rows and columns you need rather than all of a
        large matrix.
        """
        check_is_fitted(self, ["components_", "W_"])
        if self.W_ is None:
            raise InputError(
                f"the training W was not kept (over {KEEP_W_MAX_BYTES // 2**20} MiB) — fit "
                "with out=PATH to keep it in a result store, or use transform")
        return reconstruct(self.W_, self.components_, rows, cols)


def _print_iteration(info: Any) -> None:
    loss = "not evaluated" if math.isnan(info.loss) else f"{info.loss:.6g}"  # loss_every
    print(f"iteration {info.iteration}: loss {loss}", file=sys.stdout)


def _float_or_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)
