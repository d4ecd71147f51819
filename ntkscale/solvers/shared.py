"""Several ridges on one Cholesky factor: the smallest ridge exactly, the others by CG preconditioned with it.

A factor per ridge makes ``s`` ridges cost ``s`` factorisations. Instead the
smallest ridge ``l_0`` is factored once, ``K + l_0 I = L L^T``, its system is
solved exactly, and every larger ridge ``l_j`` is solved by preconditioned CG
with ``M = (K + l_0 I)^{-1}`` (Concus, Golub & O'Leary 1976). The preconditioned
matrix ``M (K + l_j I)`` has the eigenvalues ``(mu + l_j) / (mu + l_0)`` for the
eigenvalues ``mu`` of ``K``: all in ``[1, l_j / l_0]``, and close to 1 wherever
``mu`` is large against ``l_j`` (for the kernels measured, most of the spectrum),
so CG needs a few iterations; each is one Gram product and two triangular
sweeps of ``L``. The larger ridges iterate together as the columns of one
product (``ridge_path: batched`` of :func:`~ntkscale.solvers.cg.cg`), warm-started
from the smallest ridge's solution. The larger ridges' solutions are then as
accurate as CG's ``rtol``, not to rounding as the factored one.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np

from .cg import CGInfo, cg


class FactorPreconditioner:
    """``R -> (K + l_0 I)^{-1} R`` from a factor with ``solve(R)`` (e.g.
    :class:`~ntkscale.solvers.cholesky.TiledCholesky`), the same for every ridge:
    one sweep of the factor for all columns, whatever their ridge."""

    def __init__(self, factor: Any):
        self.factor = factor

    def solve(self, r: np.ndarray) -> np.ndarray:
        return np.asarray(self.factor.solve(r))

    def with_shift(self, mu: float) -> "FactorPreconditioner":
        return self

    def solve_shifted(self, r: np.ndarray, mu: np.ndarray) -> np.ndarray:
        return self.solve(r)


def shared_factor_solve(op: Any, y: np.ndarray, ridges: np.ndarray, factor_fn: Callable[[float], Any], *,
                        rtol: float = 1e-6, maxiter: Optional[int] = None, ridge_path: str = "batched",
                        progress: Any = None, progress_every: float = 5.0
                        ) -> Tuple[np.ndarray, Any, Optional[CGInfo]]:
    """``(alpha (s, n, k), factor, CGInfo or None)`` for the absolute ``ridges``
    (``op``'s own ridge included): ``factor_fn(l_0)`` factors ``K + l_0 I`` for the
    smallest ``l_0`` (and returns an object with ``solve``), the rest go through
    :func:`~ntkscale.solvers.cg.cg` preconditioned with that factor."""
    ridges = np.asarray(ridges, dtype=np.float64)
    j0 = int(np.argmin(ridges))
    f = factor_fn(float(ridges[j0]))
    x0 = np.asarray(f.solve(y))
    alpha = np.empty((len(ridges),) + x0.shape, dtype=x0.dtype)
    alpha[j0] = x0
    rest = [j for j in range(len(ridges)) if j != j0]
    if not rest:
        return alpha, f, None
    base = float(getattr(op, "ridge", 0.0))
    xs, info = cg(op, y, np.repeat(x0[None], len(rest), axis=0), rtol=rtol, maxiter=maxiter,
                  M=FactorPreconditioner(f), ridges=ridges[rest] - base, ridge_path=ridge_path,
                  progress=progress, progress_every=progress_every)
    alpha[rest] = xs
    return alpha, f, info
