"""Checkpoints in the result store, interruption, and resuming to the same result."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

import dnmf
from dnmf.errors import InputError
from dnmf.solvers import Interrupted
from tests.conftest import make_planted

KW = dict(solver="hals", init="random", random_state=3, tol=0.0, scheduler="threads",
          min_panel_bytes=0)


@pytest.fixture
def X():
    return make_planted(300, 40, 4, dtype="float64")[0]


def data(X):
    return da.from_array(X, chunks=(60, 40))


def interrupt_at(n):
    def callback(info):
        if info.iteration == n:
            raise KeyboardInterrupt

    return callback


def test_checkpoints_are_removed_when_complete(tmp_path, X):
    out = tmp_path / "r.zarr"
    dnmf.factorize(data(X), 4, out=out, max_iter=12, checkpoint_every=5, **KW)
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["status"] == "complete" and "checkpoint" not in root
    assert root.attrs["n_iter"] == 12


def test_interrupt_writes_a_checkpoint_and_resume_equals_an_undisturbed_run(tmp_path, X):
    reference = dnmf.factorize(data(X), 4, max_iter=20, **KW)
    out = tmp_path / "r.zarr"
    with pytest.raises(Interrupted, match="interrupted after iteration 12; checkpoint kept"):
        dnmf.factorize(data(X), 4, out=out, max_iter=20, checkpoint_every=5,
                       callback=interrupt_at(12), **KW)
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["status"] == "interrupted"
    assert root["checkpoint"].attrs["iteration"] == 12
    resumed = dnmf.factorize(data(X), 4, out=out, max_iter=20, resume=True,
                             **{**KW, "random_state": None})
    assert resumed.n_iter == 20 and len(resumed.loss_history) == 20
    np.testing.assert_allclose(resumed.H, reference.H, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(resumed.W), np.asarray(reference.W), rtol=1e-10)
    np.testing.assert_allclose(resumed.loss_history, reference.loss_history, rtol=1e-10)
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["status"] == "complete" and "checkpoint" not in root


def test_interrupt_at_the_first_iteration_is_resumable(tmp_path, X):
    out = tmp_path / "r.zarr"
    with pytest.raises(KeyboardInterrupt):
        dnmf.factorize(data(X), 4, out=out, max_iter=20, checkpoint_every=5,
                       callback=interrupt_at(1), **{**KW, "init": "custom",
                                                    "W_init": np.ones((300, 4)),
                                                    "H_init": np.ones((4, 40))})
    # iteration 1 completed before the interrupt: its checkpoint is the resumable state
    assert zarr.open_group(str(out), mode="r").attrs["status"] == "interrupted"


def test_without_checkpoints_an_interrupt_leaves_no_output(tmp_path, X):
    out = tmp_path / "r.zarr"
    with pytest.raises(KeyboardInterrupt):
        dnmf.factorize(data(X), 4, out=out, max_iter=20, checkpoint_every=0,
                       callback=interrupt_at(3), **KW)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_checkpoint_slots_alternate_and_pointer_moves(tmp_path, X):
    out = tmp_path / "r.zarr"
    with pytest.raises(Interrupted):
        dnmf.factorize(data(X), 4, out=out, max_iter=30, checkpoint_every=4,
                       callback=interrupt_at(10), **KW)
    group = zarr.open_group(str(out), mode="r")["checkpoint"]
    assert set(group.group_keys()) == {"a", "b"}
    current = group.attrs["current"]
    assert group[current].attrs["iteration"] == 10
    other = "a" if current == "b" else "b"
    assert group[other].attrs["iteration"] == 8


@pytest.fixture
def interrupted(tmp_path, X):
    out = tmp_path / "r.zarr"
    with pytest.raises(Interrupted):
        dnmf.factorize(data(X), 4, out=out, max_iter=20, checkpoint_every=5,
                       callback=interrupt_at(7), **KW)
    return out


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(random_state=4), "seed was 3, now 4"),
        (dict(solver="mu"), "solver was 'hals', now 'mu'"),
        (dict(max_iter=5), "beyond --max-iter 5"),
        (dict(rank=3), "n_components was 4, now 3"),
    ],
)
def test_resume_refuses_other_parameters(interrupted, X, change, message):
    kw = {**KW, "max_iter": 20, **change}
    rank = kw.pop("rank", 4)
    with pytest.raises(InputError, match=message):
        dnmf.factorize(data(X), rank, out=interrupted, resume=True, **kw)


def test_resume_refuses_other_input(interrupted, X):
    other = X.copy()
    other[0, 0] += 1.0
    with pytest.raises(InputError, match="the input differs from the checkpoint's"):
        dnmf.factorize(data(other), 4, out=interrupted, resume=True, max_iter=20, **KW)


def test_resume_refuses_complete_missing_and_contradictions(tmp_path, X):
    out = tmp_path / "r.zarr"
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        dnmf.factorize(data(X), 4, out=out, resume=True, max_iter=5, **KW)
    dnmf.factorize(data(X), 4, out=out, max_iter=5, **KW)
    with pytest.raises(InputError, match="already complete"):
        dnmf.factorize(data(X), 4, out=out, resume=True, max_iter=10, **KW)
    with pytest.raises(InputError, match="contradict"):
        dnmf.factorize(data(X), 4, out=out, resume=True, overwrite=True, **KW)


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_write_atomically_leaves_nothing_behind_on_failure_and_replaces_whole(tmp_path, kind):
    from dnmf.io.result_store import write_atomically

    out = tmp_path / ("out.zarr" if kind == "directory" else "out.nc")

    def write(path, text="new"):
        if kind == "directory":
            Path(path).mkdir()
            (Path(path) / "data").write_text(text)
        else:
            Path(path).write_text(text)

    def broken(path):
        write(path)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(out, broken)
    assert list(tmp_path.iterdir()) == []  # no output and no partial sibling
    write_atomically(out, lambda p: write(p, "first"))
    write_atomically(out, lambda p: write(p, "second"), overwrite=True)
    content = (out / "data") if kind == "directory" else out
    assert content.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # the old one is gone too


@pytest.mark.cluster
def test_a_reused_slot_reads_back_its_new_content_on_a_cluster(tmp_path, local_client):
    """Slots are rewritten in turn; each read-back must be a new graph key, or a scheduler that
    still holds the old read (a retained future, a lost chunk's lineage) hands back stale W."""
    from distributed import futures_of

    from dnmf.io import checkpoint

    out = tmp_path / "r.zarr"
    checkpoint.start(out, overwrite=False)
    kw = dict(loss_history=[], seconds_per_iteration=[], params={}, fingerprint={})
    first_W = da.full((40, 3), 1.0, chunks=(20, 3))
    first = checkpoint.write(out, W=first_W, H=np.ones((3, 5)), iteration=1, **kw)
    held = local_client.persist(first)  # the scheduler keeps the slot's first content
    local_client.gather(futures_of(held))  # read now, before the slot is rewritten
    checkpoint.write(out, W=first_W * 2, H=np.ones((3, 5)), iteration=2, **kw)  # other slot
    third = checkpoint.write(out, W=first_W * 3, H=np.ones((3, 5)), iteration=3, **kw)
    np.testing.assert_array_equal(local_client.compute(third).result(), 3.0)
    np.testing.assert_array_equal(local_client.compute(held).result(), 1.0)
