"""Online NMF (dnmf.online, NMF.partial_fit): batches of rows update H in constant memory."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.decomposition import MiniBatchNMF

import dnmf
from dnmf.demo import matched_cosine
from dnmf.errors import InputError


@pytest.fixture(scope="module")
def stream():
    """A planted 3,000 x 60 rank-4 matrix with sparse-ish components, in batches of 300."""
    rng = np.random.default_rng(2)
    W = rng.random((3000, 4))
    H = rng.random((4, 60)) ** 3
    return W @ H, H


def _relative_error(model, X):
    W = model.transform(X)
    return np.linalg.norm(X - W @ model.components_) / np.linalg.norm(X)


@pytest.mark.parametrize("loss", ["frobenius", "kullback-leibler"])
def test_partial_fit_learns_h_at_least_as_well_as_minibatch_nmf(stream, loss):
    X, H_true = stream
    model = dnmf.NMF(4, beta_loss=loss, random_state=0, scheduler="threads", forget_factor=0.7)
    for _ in range(2):
        for start in range(0, X.shape[0], 300):
            model.partial_fit(X[start:start + 300])
    assert model.n_steps_ == 20 and model.components_.shape == (4, 60)
    ref = MiniBatchNMF(4, beta_loss=loss, batch_size=300, max_iter=2, tol=0,
                       max_no_improvement=None, forget_factor=0.7, random_state=0).fit(X)
    ours, theirs = _relative_error(model, X), _relative_error(ref, X)
    assert ours <= 1.05 * theirs, (ours, theirs)
    if loss == "frobenius":
        assert matched_cosine(model.components_, H_true) > 0.97


def test_partial_fit_reads_batches_from_files(tmp_path, stream):
    X = stream[0].astype(np.float32)
    for i in range(3):
        np.save(tmp_path / f"batch{i}.npy", X[i * 1000:(i + 1) * 1000])
    model = dnmf.NMF(4, random_state=0, scheduler="threads")
    for i in range(3):
        model.partial_fit(str(tmp_path / f"batch{i}.npy"))
    assert model.components_.dtype == np.float32 and model.n_steps_ == 3
    assert _relative_error(model, X) < 0.1


def test_partial_fit_refuses_batches_of_other_widths(stream):
    model = dnmf.NMF(4, random_state=0, scheduler="threads").partial_fit(stream[0][:300])
    # in-memory batches are checked as scikit-learn checks them (its message); others by dnmf
    with pytest.raises(ValueError, match="has 50 features, but NMF is expecting"):
        model.partial_fit(stream[0][:300, :50])
    with pytest.raises(InputError, match="same columns"):
        model.partial_fit(da.from_array(stream[0][:300, :50]))


def test_partial_fit_bad_forget_factor(stream):
    with pytest.raises(InputError, match="forget_factor"):
        dnmf.NMF(4, forget_factor=0.0, scheduler="threads").partial_fit(stream[0][:300])
