"""Supervised unmixing against given spectra: the FCLS oracle's accuracy, out of core, one
pass; NNLS without sum-to-one; the options' errors; the CLI."""

from __future__ import annotations

import itertools

import dask
import numpy as np
import pytest
import xarray as xr
import zarr

from dnmf.datasets import make_scene
from dnmf.errors import InputError
from dnmf.hyperspectral.library import SpectralLibrary, write_csv
from dnmf.hyperspectral.unmix import unmix
from tests.conftest import peak_rss, reset_peak_rss
from tests.test_cli import run_cli

#: Worker memory limit of the out-of-core test; an idle worker already takes ~150 MB, and a
#: task holds one cube tile (open_cube's ~32 MiB) twice (read, then its valid rows).
LIMIT = 350 * 10**6


def fcls_oracle(X: np.ndarray, E: np.ndarray) -> np.ndarray:
    """Exact FCLS by enumerating supports: for each subset S of endmembers, the
    equality-constrained least squares on S (a KKT solve); the best feasible one wins.

    The optimum is feasible for its own support, and every feasible candidate is a point of
    the simplex, so the least residual among the feasible candidates is the optimum."""
    n, k = X.shape[0], E.shape[0]
    G, XE = E @ E.T, X @ E.T
    xx = np.einsum("ij,ij->i", X, X)
    best, best_sse = np.zeros((n, k)), np.full(n, np.inf)
    for size in range(1, k + 1):
        for S in map(list, itertools.combinations(range(k), size)):
            K = np.zeros((size + 1, size + 1))
            K[:size, :size], K[:size, size], K[size, :size] = 2 * G[np.ix_(S, S)], 1, 1
            rhs = np.column_stack([2 * XE[:, S], np.ones(n)])
            a = np.zeros((n, k))
            a[:, S] = np.linalg.solve(K, rhs.T).T[:, :size]
            sse = xx - 2 * np.einsum("ij,ij->i", a, XE) + np.einsum("ij,jk,ik->i", a, G, a)
            better = (a >= -1e-12).all(axis=1) & (sse < best_sse)
            best[better], best_sse[better] = a[better], sse[better]
    return best


@pytest.fixture(scope="module")
def big_cube(tmp_path_factory):
    """A 720 x 720 x 180 float32 scene in Zarr: 373 MB, more than a worker's LIMIT."""
    path = tmp_path_factory.mktemp("sup") / "big.zarr"
    scene = make_scene(rows=720, cols=720, n_endmembers=4, seed=2, chunks=(90, 180))
    with dask.config.set(scheduler="threads"):
        scene.to_zarr(path, mode="w", consolidated=False)
    return path


def test_reaches_the_fcls_oracle_out_of_core(big_cube, tmp_path):
    from distributed import Client, LocalCluster

    truth = xr.open_zarr(big_cube, consolidated=False)
    assert truth.reflectance.nbytes > LIMIT
    E = truth.endmembers_true.values.astype(np.float64)
    out = tmp_path / "sup.zarr"
    with dask.config.set({"distributed.worker.memory.target": False,
                          "distributed.worker.memory.spill": False,
                          # a worker paused at 80% of its limit runs nothing more, so the run
                          # waits for ever (peaks reach ~80% here); the peak is asserted below
                          "distributed.worker.memory.pause": False}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                         memory_limit=LIMIT, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.run(reset_peak_rss)
        result = unmix(str(big_cube), var="reflectance", spectra=truth.endmembers_true,
                       client=client, output=out)
        peaks = client.run(peak_rss)
    assert len(peaks) == 1 and max(peaks.values()) < LIMIT, peaks  # no worker lost, none over
    assert result.attrs["n_iter"] == 0 and result.attrs["method"] == "FCLS"

    # the oracle and the RMSEs against the truth, tile by tile in numpy
    refl = zarr.open_array(str(big_cube / "reflectance"), mode="r")
    a_true = zarr.open_array(str(big_cube / "abundances_true"), mode="r")
    a_dnmf = zarr.open_array(str(out / "abundances"), mode="r")
    sse_oracle = sse_dnmf = count = 0.0
    worst = 0.0
    for r0 in range(0, 720, 180):
        x = np.asarray(refl[r0:r0 + 180], dtype=np.float64).reshape(-1, 180)
        t = np.asarray(a_true[:, r0:r0 + 180], dtype=np.float64).reshape(4, -1).T
        d = np.asarray(a_dnmf[:, r0:r0 + 180], dtype=np.float64).reshape(4, -1).T
        ok = np.isfinite(x).all(axis=1)
        assert (np.isnan(d[~ok])).all() and np.isfinite(d[ok]).all()
        oracle = fcls_oracle(x[ok], E)
        sse_oracle += float(((oracle - t[ok]) ** 2).sum())
        sse_dnmf += float(((d[ok] - t[ok]) ** 2).sum())
        count += t[ok].size
        worst = max(worst, float(np.abs(d[ok] - oracle).max()))
    rmse_oracle, rmse_dnmf = np.sqrt(sse_oracle / count), np.sqrt(sse_dnmf / count)
    assert abs(rmse_dnmf - rmse_oracle) < 1e-4, (rmse_dnmf, rmse_oracle)
    # per pixel too: float32 storage and the sum-to-one weight (1e-5) bound the difference
    assert worst < 1e-3, worst
    assert float(result.relative_error) < 0.05


@pytest.fixture(scope="module")
def small():
    return make_scene(rows=40, cols=50, n_endmembers=3, seed=1, chunks=20).compute()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nnls_without_sum_to_one_matches_scipy(small, dtype):
    from scipy.optimize import nnls

    cube = small.reflectance.astype(dtype)
    E = small.endmembers_true.values.astype(np.float64)
    result = unmix(cube, spectra=E, sum_to_one=False, scheduler="threads")
    assert result.attrs["method"] == "NNLS" and result.abundances.dtype == np.float32
    x = cube.values.reshape(-1, 180).astype(np.float64)
    got = result.abundances.values.reshape(3, -1).T
    ok = np.isfinite(x).all(axis=1)
    expected = np.array([nnls(E.T, row)[0] for row in x[ok]])
    # float32 output: ~1e-7 relative; the solvers agree to ~1e-12 in float64
    np.testing.assert_allclose(got[ok], expected, atol=1e-5)
    residual = np.sqrt(((x[ok] - expected @ E) ** 2).mean(axis=1))
    np.testing.assert_allclose(result.residual_rmse.values.ravel()[ok], residual, atol=1e-6)


def test_library_select_and_k_errors(small, tmp_path):
    names = [str(n) for n in small.endmember_name.values]
    lib = SpectralLibrary(spectra=small.endmembers_true.values.astype(np.float64),
                          wavelength=small.wavelength.values, names=tuple(names))
    path = write_csv(tmp_path / "lib.csv", lib)
    picked = unmix(small.reflectance, spectra=str(path), select=[names[2], names[0]],
                   scheduler="threads")
    assert [str(n) for n in picked.endmember_name.values] == [names[2], names[0]]
    np.testing.assert_allclose(picked.endmembers.values, lib.spectra[[2, 0]], rtol=1e-6)
    with pytest.raises(InputError, match="-k 2 differs from the 3 spectra"):
        unmix(small.reflectance, 2, spectra=str(path), scheduler="threads")
    with pytest.raises(InputError, match="'nothing' is not in the library"):
        unmix(small.reflectance, spectra=str(path), select=["nothing"], scheduler="threads")
    with pytest.raises(InputError, match="--sparsity does not apply"):
        unmix(small.reflectance, spectra=str(path), sum_to_one=False, sparsity=0.1,
              scheduler="threads")
    with pytest.raises(InputError, match=r"spectra must be \(k, 180\)"):
        unmix(small.reflectance, spectra=np.ones((2, 7)), scheduler="threads")
    narrow = tmp_path / "narrow.csv"
    narrow.write_text("wavelength,a\n500,0.1\n600,0.2\n700,0.3\n")
    with pytest.raises(InputError, match="no value at .* drop them with --bad-bands"):
        unmix(small.reflectance, spectra=str(narrow), scheduler="threads")


def test_cli_supervised(small, tmp_path):
    cube = tmp_path / "cube.zarr"
    small.to_zarr(cube, mode="w", consolidated=False)
    names = [str(n) for n in small.endmember_name.values]
    lib = SpectralLibrary(spectra=small.endmembers_true.values.astype(np.float64),
                          wavelength=small.wavelength.values, names=tuple(names))
    path = write_csv(tmp_path / "lib.csv", lib)
    out = tmp_path / "out.zarr"
    proc = run_cli("unmix", str(cube), "--var", "reflectance", "--spectra", str(path),
                   "--select", f"{names[1]},{names[0]}", "-o", str(out), "--scheduler",
                   "threads")
    assert proc.returncode == 0, proc.stderr
    assert "FCLS abundances of 2 given spectra" in proc.stdout
    assert [str(n) for n in xr.open_zarr(out).endmember_name.values] == [names[1], names[0]]
    bad = run_cli("unmix", str(cube), "--var", "reflectance", "--spectra", str(path), "-k",
                  "5", "-o", str(tmp_path / "bad.zarr"))
    assert bad.returncode == 1 and bad.stderr.splitlines()[-1].startswith("error: -k 5 differs")
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad.zarr").exists()
    none = run_cli("unmix", str(cube), "--var", "reflectance", "-o", str(tmp_path / "n.zarr"))
    assert none.returncode == 1 and "give -k N" in none.stderr


def test_one_pass_over_the_cube_after_the_counting_pass(small, tmp_path):
    from tests.conftest import logged_store

    values = small.reflectance.values  # 40 x 50 x 180, NaN in the no-data corner
    store, lazy = logged_store(tmp_path / "cube.zarr", values, (20, 25, 180))
    cube = xr.DataArray(lazy, dims=("y", "x", "band"),
                        coords={"wavelength": ("band", small.wavelength.values)})
    store.counter.clear()
    result = unmix(cube, spectra=small.endmembers_true, scheduler="threads")
    chunk_reads = sum(n for key, n in store.counter.items() if key == "get")
    # 4 chunks: one read each to count the valid pixels, one to solve (abundances, residual
    # and relative error together)
    assert chunk_reads == 2 * 4, dict(store.counter)
    assert float(result.relative_error) < 0.05
