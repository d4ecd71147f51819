"""Tiled out-of-core Cholesky: contract, tiles, jitter, resume, dask comparison."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import zarr

from ntkscale.errors import InputError, NotPSDError, NumericalWarning
from ntkscale.solvers import TiledCholesky, cholesky_solve
from ntkscale.solvers.cholesky import choose_tile
from tests.support.solvers import SolverContract, reference, spd


class TestCholeskyContract(SolverContract):
    method = "cholesky"


def _group(tmp_path=None):
    if tmp_path is None:
        return zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    return zarr.open_group(str(tmp_path / "f.zarr"), mode="a")


@pytest.mark.parametrize("n,tile,dtype", [(100, 30, np.float64), (64, 64, np.float64), (10, 64, np.float64),
                                          (131, 40, np.float32), (250, 96, np.float64)])
def test_factor_equals_lapack(n, tile, dtype):
    k = spd(n, n // 2 + 1, dtype)
    f = TiledCholesky(k, _group(), tile=tile, ridge=0.01, num_workers=2).factor()
    ref = np.linalg.cholesky(k.astype(np.float64) + 0.01 * np.eye(n))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(f.L[...], ref, atol=tol * np.abs(ref).max())
    assert f.L.dtype == dtype and f.tiles_done == f.tiles_total == (-(-n // tile)) * (-(-n // tile) + 1) // 2


def test_zarr_source_and_multi_rhs_solve(tmp_path):
    k = spd(300, 120)
    a = zarr.create_array(str(tmp_path / "k.zarr"), shape=k.shape, chunks=(64, 64), dtype="f8")
    a[:] = k
    b = np.random.default_rng(0).standard_normal((300, 5))
    f = TiledCholesky(a, _group(tmp_path), ridge=1e-3, memory_limit=2_000_000)
    assert f.tile == 128  # from the budget, a multiple of the chunk: tiles decode whole chunks
    np.testing.assert_allclose(f.solve(b), reference(k, b, 1e-3), rtol=1e-8, atol=1e-10)
    x = f.forward(b)
    np.testing.assert_allclose(x, scipy.linalg.solve_triangular(np.linalg.cholesky(k + 1e-3 * np.eye(300)), b,
                                                                lower=True), rtol=1e-8, atol=1e-10)


def test_several_ridges_keep_one_factor_each(tmp_path):
    k = spd(90, 30)
    b = np.ones((90, 2))
    g = _group(tmp_path)
    x = cholesky_solve(k, b, g, ridges=[1e-3, 1e-1], tile=40)
    assert x.shape == (2, 90, 2)
    for j, r in enumerate([1e-3, 1e-1]):
        np.testing.assert_allclose(x[j], reference(k, b, r), rtol=1e-8)
    assert {"cholesky-0.001", "cholesky-0.1"} <= set(g.group_keys())


def test_resume_reuses_done_tiles_and_rejects_another_matrix(tmp_path):
    k = spd(200, 50)
    g = _group(tmp_path)
    f = TiledCholesky(k, g, tile=50, ridge=1e-3)
    dsk, keys = f.graph()
    # run only the first column of tiles, as if killed after it
    import dask.threaded

    dask.threaded.get(dsk, [key for key in keys if key[2] == 0])
    assert f.tiles_done == 4
    again = TiledCholesky(k, g, tile=50, ridge=1e-3).factor()
    assert again.tiles_computed == 10 - 4
    np.testing.assert_allclose(again.L[...], np.linalg.cholesky(k + 1e-3 * np.eye(200)), atol=1e-12)
    assert TiledCholesky(k, g, tile=50, ridge=1e-3).factor().tiles_computed == 0
    with pytest.warns(NumericalWarning, match="discarding the stored Cholesky factor.*ridge"):
        other = TiledCholesky(k, g, tile=50, ridge=1e-2)
    assert other.tiles_done == 0


def test_jitter_is_added_from_the_failing_tile_and_reported():
    # PD leading block, singular trailing part: the first diagonal tile factors without jitter
    g = np.random.default_rng(1).standard_normal((120, 30))
    k = g @ g.T / 30
    k[:40, :40] += np.eye(40)
    with pytest.warns(NumericalWarning, match=r"diagonal tile \(1, 1\) failed.*jitter up to .*from row 40 on"):
        f = TiledCholesky(k, _group(), tile=40).factor()
    jit = np.asarray(f.jit[...])
    assert jit[0] == 0 and jit[1] > 0 and jit[2] >= jit[1]
    e = np.zeros(120)
    e[40:80], e[80:] = jit[1], jit[2]
    np.testing.assert_allclose(f.L[...] @ f.L[...].T, k + np.diag(e), atol=1e-10)


def test_not_psd_names_the_failing_tile():
    k = spd(100, 100)
    k[60, 60] = -5.0
    with pytest.raises(NotPSDError, match=r"diagonal tile \(1, 1\) \(rows 50\.\.99\).*larger ridge"):
        TiledCholesky(k, _group(), tile=50).factor()


def test_bad_inputs():
    with pytest.raises(InputError, match="square"):
        TiledCholesky(np.ones((3, 4)), _group())
    with pytest.raises(InputError, match="ridge must be >= 0"):
        TiledCholesky(np.eye(3), _group(), ridge=-1.0)
    k = np.eye(4)
    k[2, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        TiledCholesky(k, _group())


def test_choose_tile_respects_budget_and_chunks():
    assert choose_tile(100_000, 8, 2 * 2**30) == 4096
    assert choose_tile(100_000, 8, 256 * 2**20, chunk=1000) == 1000
    assert choose_tile(100_000, 8, 2 * 2**30, chunk=1000) == 4000
    assert choose_tile(500, 8, None) == 500
    t = choose_tile(100_000, 8, 64 * 2**20)
    assert 5 * t * t * 8 <= 32 * 2**20


def test_agrees_with_dask_array_linalg_cholesky():
    """dask.array.linalg.cholesky is the in-memory reference tile algorithm."""
    import dask.array as da

    k = spd(150, 60)
    ref = da.linalg.cholesky(da.from_array(k, chunks=50), lower=True).compute()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = TiledCholesky(k, _group(), tile=50).factor()
    np.testing.assert_allclose(f.L[...], ref, atol=1e-12)


def test_distributed_factor_and_solve_on_workers(tmp_path):
    distributed = pytest.importorskip("distributed")
    k = spd(260, 80)
    a = zarr.create_array(str(tmp_path / "k.zarr"), shape=k.shape, chunks=(64, 64), dtype="f8")
    a[:] = k
    b = np.random.default_rng(2).standard_normal((260, 3))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit="512MiB") as cluster, distributed.Client(cluster) as client:
        calls = []                                  # progress from the futures' states, on a timer
        f = TiledCholesky(a, _group(tmp_path), tile=64, ridge=1e-3, client=client,
                          progress=lambda *c: calls.append(c), progress_every=0.01).factor()
        assert f.tiles_computed == 15
        done = [c[0] for c in calls]
        assert done == sorted(done) and done[-1] == 15 and {c[1] for c in calls} == {15}
        np.testing.assert_allclose(f.solve(b), reference(k, b, 1e-3), rtol=1e-8, atol=1e-10)
        with pytest.raises(InputError, match="Zarr array"):
            TiledCholesky(k, _group(), tile=64, client=client).factor()
