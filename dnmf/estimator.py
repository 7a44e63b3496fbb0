"""The scikit-learn style estimator :class:`NMF`, a thin layer over :func:`dnmf.factorize`."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from dnmf import api


class NMF(TransformerMixin, BaseEstimator):
    """Non-negative matrix factorization ``X ~= W @ H`` on Dask, out of core.

    Parameters follow :class:`sklearn.decomposition.NMF`; the fit runs on a Dask scheduler over
    the row panels of X, reading X once per iteration.

    Parameters
    ----------
    n_components : int, optional
        Rank k. None means ``n_features`` (as scikit-learn).
    solver : {"auto", "hals", "cd", "mu", "anls"}
    beta_loss : "frobenius"
    init : {"auto", "random", "nndsvd", "nndsvda", "nndsvdar", "custom"}
    max_iter : int
    tol : float
        Relative decrease of the loss between iterations below which the fit stops.
    random_state : int, RandomState or None
    alpha_W, alpha_H, l1_ratio : float
        Regularisation, with scikit-learn's meaning and scaling.
    scheduler : {"auto", "threads", "sync", "local"}, address or distributed.Client
    max_time : float, optional
        Wall-time budget of the iterations, in seconds.
    persist_x : bool or "auto"

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        H.
    n_components_ : int
    n_iter_ : int
    reconstruction_err_ : float
        ``||X - W H||_F``.
    relative_error_ : float
    loss_history_ : list of float
    result_ : dnmf.api.FitResult

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
        random_state: Any = None,
        alpha_W: float = 0.0,
        alpha_H: float | str = "same",
        l1_ratio: float = 0.0,
        scheduler: Any = "auto",
        max_time: float | None = None,
        persist_x: bool | str = "auto",
    ) -> None:
        self.n_components = n_components
        self.solver = solver
        self.beta_loss = beta_loss
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.scheduler = scheduler
        self.max_time = max_time
        self.persist_x = persist_x

    def fit(self, X: Any, y: Any = None, W: Any = None, H: Any = None, **params: Any) -> NMF:
        """Learn W and H for X; see :meth:`fit_transform`."""
        self.fit_transform(X, W=W, H=H, **params)
        return self

    def fit_transform(self, X: Any, y: Any = None, W: Any = None, H: Any = None,
                      **params: Any) -> Any:
        """Learn the factorization and return W.

        Parameters
        ----------
        X : array-like, dask/zarr array or path of shape (n_samples, n_features)
        W, H : array-like, optional
            Initial factors (``init="custom"``).
        **params
            Passed to :func:`dnmf.factorize` (``var``, ``out``, ``client``, ``callback``, ...).

        Returns
        -------
        W : ndarray (numpy input) or dask array of shape (n_samples, n_components)
        """
        k = self.n_components
        if k is None:
            k = int(np.shape(X)[1]) if hasattr(X, "shape") else None
        result = api.factorize(
            X, k, solver=self.solver, beta_loss=self.beta_loss, init=self.init,
            max_iter=self.max_iter, tol=self.tol, random_state=self.random_state,
            W_init=W, H_init=H, alpha_W=self.alpha_W, alpha_H=self.alpha_H,
            l1_ratio=self.l1_ratio, scheduler=self.scheduler, max_time=self.max_time,
            persist_x=self.persist_x, **params,
        )
        self.result_ = result
        self.components_ = result.H
        self.n_components_ = result.n_components
        self.n_features_in_ = result.H.shape[1]
        self.n_iter_ = result.n_iter
        self.reconstruction_err_ = result.reconstruction_err
        self.relative_error_ = result.relative_error
        self.loss_history_ = result.loss_history
        self.W_ = result.W
        return result.W

    def transform(self, X: Any, **params: Any) -> Any:
        """W for new rows with H fixed (exact non-negative least squares per row).

        Returns a numpy array for numpy input, else a lazy dask array.
        """
        check_is_fitted(self, "components_")
        return api.transform_rows(X, self.components_, scheduler=self.scheduler, **params)

    def inverse_transform(self, X: Any) -> Any:
        """``W @ H``: the data reconstructed from W (numpy or dask)."""
        check_is_fitted(self, "components_")
        return X @ self.components_
