"""Solver contract: every kernel-regression solver (CG, tiled Cholesky) inherits it.

A subclass sets ``method`` and may override ``tolerance``; each test runs
through :func:`ntkscale.solvers.solve`, the entry point the pipeline uses,
and compares with ``scipy.linalg`` on in-memory problems.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from ntkscale.errors import InputError, NotPSDError
from ntkscale.solvers import GramOperator, solve


def spd(n: int, rank: int, dtype=np.float64, seed: int = 0, floor: float = 1e-2) -> np.ndarray:
    """A kernel-like SPD matrix: low-rank plus a small floor on the spectrum."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, rank))
    return (g @ g.T / rank + floor * np.eye(n)).astype(dtype)


def reference(k: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    a = k.astype(np.float64) + ridge * np.eye(k.shape[0])
    return scipy.linalg.solve(a, y.astype(np.float64), assume_a="pos")


class CountingOperator(GramOperator):
    """Counts products, to prove that bad input is rejected before any work."""


class SolverContract:
    method: str = ""
    #: extra solver keywords (e.g. tile size) per test
    options: dict = {}

    def run(self, a, y, ridges, **kw):
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

    def test_single_ridge_and_vector_rhs(self):
        kmat = spd(80, 20)
        y = np.random.default_rng(2).standard_normal(80)
        res = self.run(kmat, y, 0.05, rtol=1e-12)
        np.testing.assert_allclose(res.alpha[0][:, 0] if res.alpha.ndim == 3 else res.alpha[0],
                                   reference(kmat, y, 0.05), rtol=1e-7, atol=1e-9)

    def test_zarr_gram(self, tmp_path):
        import zarr

        kmat = spd(150, 40)
        z = zarr.create_array(str(tmp_path / "k.zarr"), shape=kmat.shape, chunks=(64, 64), dtype="f8")
        z[:] = kmat
        y = np.random.default_rng(3).standard_normal((150, 2))
        res = self.run(GramOperator.from_zarr(z), y, [0.01], rtol=1e-10,
                       **({"tile": 64} if self.method == "cholesky" else {}))
        np.testing.assert_allclose(res.alpha[0], reference(kmat, y, 0.01), rtol=1e-6, atol=1e-8)

    def test_negative_ridge_rejected_before_any_work(self):
        op = GramOperator.from_array(spd(30, 5))
        with pytest.raises(InputError, match="ridge must be >= 0"):
            self.run(op, np.ones(30), [1e-3, -1e-3])
        assert op.n_passes == 0

    def test_nan_targets_rejected(self):
        y = np.ones((30, 2))
        y[[4, 17], 1] = np.nan
        with pytest.raises(InputError, match=r"2 NaN .*rows 4, 17"):
            self.run(spd(30, 5), y, [1e-3])

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
        np.testing.assert_allclose(res.alpha[0].reshape(-1), reference(kmat, y, 0.0), rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------- real-process helpers
ROOT = Path(__file__).resolve().parents[1]


def spawn(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(pred, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited early ({proc.returncode}): {err.decode()[-2000:]}")
        try:
            if pred():
                return
        except Exception:  # store half-created: keep polling
            pass
        time.sleep(0.05)
    proc.kill()
    pytest.fail("child made no progress")
