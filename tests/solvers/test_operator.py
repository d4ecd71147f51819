"""Blocked Gram operator: memory, Zarr (with and without Dask workers), streamed."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg
import zarr

from ntkscale import stax
from ntkscale.errors import InputError
from ntkscale.solvers import GramOperator, choose_mode, make_operator
from ntkscale.costs.measure import measure_flop_rate, measure_read_bandwidth
from tests.support.solvers import spd


def _net():
    return stax.serial(stax.Dense(64, W_std=1.5, b_std=0.1), stax.Relu(), stax.Dense(1, W_std=1.5, b_std=0.1))[2]


@pytest.fixture
def zgram(tmp_path):
    k = spd(230, 40)
    z = zarr.create_array(str(tmp_path / "g.zarr"), shape=k.shape, chunks=(64, 64), dtype="f8")
    z[:] = k
    return k, z


def test_memory_and_zarr_products_agree(zgram):
    k, z = zgram
    x = np.random.default_rng(0).standard_normal((230, 4))
    for op in (GramOperator.from_array(k, ridge=0.5), GramOperator.from_zarr(z, ridge=0.5, block_rows=64),
               GramOperator.from_zarr(z, ridge=0.5, block_rows=100)):
        np.testing.assert_allclose(op.matmat(x), k @ x + 0.5 * x, rtol=1e-12)
        np.testing.assert_allclose(op.matvec(x[:, 0]), k @ x[:, 0] + 0.5 * x[:, 0], rtol=1e-12)
        np.testing.assert_allclose(op.diagonal(), np.diag(k) + 0.5)
        np.testing.assert_allclose(op.row_panel(60, 130), (k + 0.5 * np.eye(230))[60:130])
        np.testing.assert_allclose(op.rows([5, 200]), (k + 0.5 * np.eye(230))[[5, 200]])
        assert op.shape == (230, 230) and op.dtype == np.float64


def test_zarr_panels_are_chunk_aligned(zgram):
    _, z = zgram
    op = GramOperator.from_zarr(z, panel_bytes=100 * 230 * 8)
    assert op.block_rows == 64
    assert GramOperator.from_zarr(z, panel_bytes=10**9).block_rows == 230


def test_streamed_operator_recomputes_blocks():
    kfn = _net()
    x = np.random.default_rng(1).standard_normal((90, 7))
    k = kfn(x, None, get="nngp")
    op = GramOperator.from_kernel(kfn, x, get="nngp", block_rows=32, ridge=0.1)
    v = np.random.default_rng(2).standard_normal((90, 3))
    np.testing.assert_allclose(op.matmat(v), k @ v + 0.1 * v, rtol=1e-10)
    np.testing.assert_allclose(op.diagonal(), np.diag(k) + 0.1, rtol=1e-12)
    np.testing.assert_allclose(op.rows([3, 50]), (k + 0.1 * np.eye(90))[[3, 50]], rtol=1e-10)
    cross = GramOperator.from_kernel(kfn, x[:20], x, get="nngp", symmetric=False)
    assert cross.shape == (20, 90)
    np.testing.assert_allclose(cross.matmat(v), k[:20] @ v, rtol=1e-10)
    assert op.mode == "streamed"


def test_scipy_linear_operator_and_counters():
    k = spd(50, 10)
    op = GramOperator.from_array(k, ridge=1e-2)
    assert isinstance(op, scipy.sparse.linalg.LinearOperator)
    x, code = scipy.sparse.linalg.cg(op, np.ones(50), rtol=1e-10)
    assert code == 0 and op.n_passes > 0
    shifted = op.with_ridge(1.0)
    shifted.matmat(np.ones((50, 3)))
    assert op.n_columns == shifted.n_columns  # counters are shared
    assert op.H is op


def test_rectangular_operator_rejects_ridge():
    with pytest.raises(InputError, match="square symmetric"):
        GramOperator.from_array(np.ones((3, 5)), ridge=1.0)


def test_nan_blocks_are_reported(zgram):
    _, z = zgram
    z[64:128, 0:64] = np.nan  # a block not computed yet (the store's NaN fill)
    with pytest.raises(InputError, match=r"NaN/inf entries in 64 row\(s\).*not all computed"):
        GramOperator.from_zarr(z).matvec(np.ones(230))


def test_distributed_products_read_panels_on_workers(zgram):
    distributed = pytest.importorskip("distributed")
    k, z = zgram
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit="512MiB") as cluster, distributed.Client(cluster) as client:
        op = GramOperator.from_zarr(z, client=client, block_rows=64, ridge=0.25)
        x = np.random.default_rng(3).standard_normal((230, 3))
        np.testing.assert_allclose(op.matmat(x), k @ x + 0.25 * x, rtol=1e-12)
        np.testing.assert_allclose(op.matmat(2 * x), 2 * (k @ x + 0.25 * x), rtol=1e-12)
        # the tasks ran on the workers: each read its own panel from Zarr
        tasks = client.run(lambda dask_worker: len(dask_worker.state.tasks))
        assert len(tasks) == 2
        # a mirrored Gram: the same products from the upper half only, on the workers too
        half = GramOperator.from_zarr(_upper_only(z, k), client=client, block_rows=64, ridge=0.25, mirrored=True)
        np.testing.assert_allclose(half.matmat(x), k @ x + 0.25 * x, rtol=1e-12)


def _upper_only(z, k):
    """``z`` rewritten with garbage below the diagonal blocks (chunks of 64): a product that
    reads only the diagonal blocks and the blocks right of them still gets ``k @ x``."""
    g = k.copy()
    for i0 in range(64, k.shape[0], 64):
        g[i0:, i0 - 64:i0] = np.nan if i0 % 128 else -7.0
    z[:] = g
    return z


def test_a_mirrored_gram_is_read_from_the_diagonal_rightwards(zgram):
    k, z = zgram
    x = np.random.default_rng(4).standard_normal((230, 5))
    for rows in (100, 128, 230):          # panels of any height over a symmetric Gram
        op = GramOperator.from_zarr(z, ridge=0.5, block_rows=rows, mirrored=True)
        np.testing.assert_allclose(op.matmat(x), k @ x + 0.5 * x, rtol=1e-12)
        np.testing.assert_allclose(op.matvec(x[:, 1]), k @ x[:, 1] + 0.5 * x[:, 1], rtol=1e-12)
    z = _upper_only(z, k)                 # panels of one chunk row never read below the diagonal
    op = GramOperator.from_zarr(z, ridge=0.5, block_rows=64, mirrored=True)
    np.testing.assert_allclose(op.matmat(x), k @ x + 0.5 * x, rtol=1e-12)
    with pytest.raises(InputError, match="NaN"):    # (the garbage is there: full panels read it)
        GramOperator.from_zarr(z, block_rows=64).matmat(x)
    cg = scipy.sparse.linalg.cg(op, x[:, 0], rtol=1e-12)[0]
    np.testing.assert_allclose((k + 0.5 * np.eye(230)) @ cg, x[:, 0], rtol=1e-8, atol=1e-9)
    with pytest.raises(InputError, match="a mirrored Gram is square"):
        GramOperator.from_zarr(zarr.create_array(zarr.storage.MemoryStore(), shape=(5, 7), dtype="f8"),
                               mirrored=True)


def test_choose_mode_from_the_cost_model():
    kfn = _net()
    flops = kfn.cost((7,))["flops"]
    # recomputing an entry (flops / 1e12 s) is cheaper than reading its 8 bytes at 1 GB/s
    cheap = choose_mode(kfn, (7,), 10_000, read_bandwidth=1e9, flop_rate=1e12)
    assert cheap.mode == "streamed"
    assert cheap.compute_seconds_per_pass == pytest.approx(1e8 * flops / 1e12)
    assert cheap.read_seconds_per_pass == pytest.approx(1e8 * 8 / 1e9)
    slow_kernel = choose_mode(kfn, (7,), 10_000, read_bandwidth=1e9, flop_rate=1e7)
    assert slow_kernel.mode == "stored"
    too_big = choose_mode(kfn, (7,), 10**6, gram_stored=False, free_disk=1e9, flop_rate=1e7)
    assert too_big.mode == "streamed" and "GiB" in too_big.reason


def test_make_operator_modes_and_calibration(zgram):
    k, z = zgram
    kfn = _net()
    x = np.random.default_rng(4).standard_normal((230, 7))
    assert make_operator(array=k).mode == "memory"
    assert make_operator(array=z).mode == "stored"
    assert make_operator(kernel_fn=kfn, x=x).mode == "streamed"
    auto = make_operator(array=z, kernel_fn=kfn, x=x, choice_kw={"read_bandwidth": 1e12, "flop_rate": 1.0})
    assert auto.mode == "stored"
    with pytest.raises(InputError, match="needs the Gram array"):
        make_operator(mode="stored", kernel_fn=kfn, x=x)
    assert measure_read_bandwidth(z) > 0 and measure_flop_rate(kfn, x, rows=64) > 0
