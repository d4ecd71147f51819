"""Solver test helpers and the solver contract every kernel-regression solver inherits.

A contract subclass sets ``method`` (and may set ``options``); each test runs
through :func:`ntkscale.solvers.solve`, the entry point the pipeline uses,
and compares with ``scipy.linalg`` on in-memory problems.
"""

from __future__ import annotations

import warnings
from typing import Any, Tuple

import numpy as np
import pytest
import scipy.linalg
import zarr

from ntkscale.errors import InputError, NotPSDError
from ntkscale.solvers import GramOperator, solve
from ntkscale.solvers.api import SolveResult


def spd(n: int, rank: int, dtype: Any = np.float64, seed: int = 0, floor: float = 1e-2) -> np.ndarray:
    """A kernel-like SPD matrix: low-rank plus a small floor on the spectrum."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, rank))
    return (g @ g.T / rank + floor * np.eye(n)).astype(dtype)


def reference(k: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """``(k + ridge I)^{-1} y`` in float64 by LAPACK, shaped like ``y``."""
    a = k.astype(np.float64) + ridge * np.eye(k.shape[0])
    return scipy.linalg.solve(a, y.astype(np.float64), assume_a="pos")


class CountingOperator:
    """A dense symmetric matrix that counts the work a solver asks of it.

    ``products`` counts calls of ``matmat``/``matvec`` (one sweep over the
    matrix each, however many columns), ``reads`` counts slices taken (how the
    tiled Cholesky reads its tiles). Both start at 0.
    """

    ndim = 2

    def __init__(self, a: np.ndarray):
        self.a = np.asarray(a)
        self.shape: Tuple[int, int] = self.a.shape
        self.dtype = self.a.dtype
        self.products = 0
        self.reads = 0

    def matmat(self, x: np.ndarray) -> np.ndarray:
        self.products += 1
        return self.a @ x

    def matvec(self, x: np.ndarray) -> np.ndarray:
        return self.matmat(x)

    def __getitem__(self, key: Any) -> np.ndarray:
        self.reads += 1
        return self.a[key]


class SolverContract:
    """Tests every solver method passes; subclasses set ``method``."""

    method: str = ""
    #: extra solver keywords (e.g. the preconditioner) for every test
    options: dict = {}

    def run(self, a: Any, y: Any, ridges: Any, **kw: Any) -> SolveResult:
        return solve(a, y, ridges=ridges, method=self.method, **{**self.options, **kw})

    @pytest.mark.parametrize("n,k,dtype,tile", [
        (1, 1, np.float64, None), (37, 1, np.float64, 10), (120, 3, np.float64, 50),
        (257, 4, np.float32, 64), (300, 10, np.float64, 128),
    ])
    def test_agrees_with_scipy(self, n, k, dtype, tile):
        kmat = spd(n, max(1, n // 3), dtype)
        y = np.random.default_rng(1).standard_normal((n, k))
        ridges = [1e-3, 1e-1]
        res = self.run(kmat, y, ridges, rtol=1e-10 if dtype == np.float64 else 1e-6,
                       **({"tile": tile} if self.method == "cholesky" else {}))
        assert res.alpha.shape == (2, n, k)
        tol = 1e-7 if dtype == np.float64 else 2e-3
        for j, r in enumerate(ridges):
            ref = reference(kmat, y, r)
            err = np.abs(res.alpha[j] - ref).max() / np.abs(ref).max()
            assert err < tol, (j, r, err)

    @pytest.mark.parametrize("shape", [(40,), (40, 1), (40, 3)])
    def test_alpha_is_shaped_like_y_behind_a_ridge_axis(self, shape):
        """A 1-D ``y`` gives 1-D solutions ``(n,)``, an ``(n, k)`` one ``(n, k)``,
        as ``scipy.linalg.solve`` and :func:`~ntkscale.solvers.cg` do."""
        kmat = spd(40, 10)
        y = np.random.default_rng(2).standard_normal(shape)
        ridges = [1e-2, 1e-1, 1.0]
        res = self.run(kmat, y, ridges, rtol=1e-12)
        assert res.alpha.shape == (3,) + shape
        for j, r in enumerate(ridges):
            np.testing.assert_allclose(res.alpha[j], reference(kmat, y, r), rtol=1e-7, atol=1e-9)
        single = self.run(kmat, y, 0.05, rtol=1e-12)
        assert single.alpha.shape == (1,) + shape

    def test_zarr_gram(self, tmp_path):
        kmat = spd(150, 40)
        z = zarr.create_array(str(tmp_path / "k.zarr"), shape=kmat.shape, chunks=(64, 64), dtype="f8")
        z[:] = kmat
        y = np.random.default_rng(3).standard_normal((150, 2))
        res = self.run(GramOperator.from_zarr(z), y, [0.01], rtol=1e-10,
                       **({"tile": 64} if self.method == "cholesky" else {}))
        np.testing.assert_allclose(res.alpha[0], reference(kmat, y, 0.01), rtol=1e-6, atol=1e-8)

    def test_negative_ridge_rejected_before_any_work(self):
        op = CountingOperator(spd(30, 5))
        with pytest.raises(InputError, match="ridge must be >= 0"):
            self.run(op, np.ones(30), [1e-3, -1e-3])
        assert op.products == op.reads == 0
        self.run(op, np.ones(30), [1e-3])  # the same operator with a valid ridge does work
        assert op.products + op.reads > 0

    def test_nan_targets_rejected_before_any_work(self):
        op = CountingOperator(spd(30, 5))
        y = np.ones((30, 2))
        y[[4, 17], 1] = np.nan
        with pytest.raises(InputError, match=r"2 NaN .*rows 4, 17"):
            self.run(op, y, [1e-3])
        assert op.products == op.reads == 0

    def test_ridge_zero_singular_gram_suggests_a_ridge(self):
        g = np.random.default_rng(4).standard_normal((60, 6))
        kmat = g @ g.T  # rank 6: singular
        y = np.random.default_rng(5).standard_normal(60)  # not in the range of K
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(NotPSDError, match="ridge"):
                self.run(kmat, y, [0.0], maxiter=500)

    def test_ridge_zero_positive_definite_is_fine(self):
        kmat = spd(50, 50, floor=0.5)
        y = np.random.default_rng(6).standard_normal(50)
        res = self.run(kmat, y, 0.0, rtol=1e-12)
        assert res.alpha.shape == (1, 50)
        np.testing.assert_allclose(res.alpha[0], reference(kmat, y, 0.0), rtol=1e-7, atol=1e-9)
