"""Several ridges on one Cholesky factor: the smallest ridge exactly, the others from the same factor.

A factor per ridge makes ``s`` ridges cost ``s`` factorisations. Instead the
smallest ridge ``l_0`` is factored once, ``C = K + l_0 I = L L^T``, and its
system is solved exactly. For a larger ridge ``l_j = l_0 + d_j``, write
``alpha = L^{-T} u``; then ``(C + d_j I) alpha = y`` is
``(I + d_j B) u = w`` with ``B = L^{-1} L^{-T}`` and ``w = L^{-1} y``, i.e.

    ``(B + s_j I) v = w``,  ``u = s_j v``,  ``s_j = 1 / d_j``:

one matrix ``B`` with shifts, so shifted CG (Jegerlehner 1996; van den Eshof &
Sleijpen 2004; :func:`~ntkscale.solvers.cg_ridges.multishift_cg`) solves every
larger ridge over one Krylov space, each iteration two triangular sweeps of
``L`` with ``k`` columns and no Gram product (``ridge_path: auto``). ``B`` has the
eigenvalues ``1 / (mu + l_0)`` for the eigenvalues ``mu`` of ``K``, so the hardest
shift (the largest ridge) has condition ``(1 / (mu_min + l_0) + s) / s``, small
whenever the largest ridge is not far below ``mu_min``. Convergence: the
residual of the original system is ``L`` times that of the shifted one and
``||L||_2 <= ||L||_F = sqrt(trace C)``, so each column stops at
``||r_v|| <= rtol ||y|| / sqrt(trace C)``, which guarantees ``rtol`` for ``alpha``.

``ridge_path: batched`` or ``sequential`` instead runs CG on ``K + l_j I``
preconditioned with ``C^{-1}`` (Concus, Golub & O'Leary 1976): eigenvalues
``(mu + l_j) / (mu + l_0)`` in ``[1, l_j / l_0]``, but each iteration also
costs a Gram product with ``s k`` columns (measured slower:
``benchmarks/README.md``, "Solver crossover"). Either way the larger ridges
are solved to ``rtol``, not to rounding as the factored one.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Tuple

import numpy as np
import psutil
import scipy.linalg

from ..errors import NumericalWarning
from .cg import CGInfo, cg
from .cg_core import CheckpointSaver
from .cg_ridges import multishift_cg


class _DenseFactor:
    """A factor's ``L`` read once into memory: the triangular sweeps of each
    shifted-CG iteration are then two LAPACK calls, not tile reads. ``U = L^T``
    of the C-ordered copy is Fortran-ordered, so LAPACK takes it without a copy."""

    def __init__(self, factor: Any):
        self.U = np.asarray(factor.L[...]).T

    def forward(self, b: np.ndarray) -> np.ndarray:
        return scipy.linalg.solve_triangular(self.U, b, lower=False, trans="T", check_finite=False)

    def backward(self, y: np.ndarray) -> np.ndarray:
        return scipy.linalg.solve_triangular(self.U, y, lower=False, check_finite=False)


def _sweeps(f: Any) -> Any:
    """``f`` itself, or its ``L`` in memory when ``n^2`` entries take under a quarter of
    the memory available now (the tiled sweeps read every tile at each iteration)."""
    if not hasattr(f, "L") or getattr(f, "client", None) is not None:
        return f
    need = f.n * f.n * np.dtype(f.dtype).itemsize
    return _DenseFactor(f) if need <= psutil.virtual_memory().available / 4 else f


class _FactorInverse:
    """``B + shift I`` with ``B = L^{-1} L^{-T}`` from a factor's triangular sweeps."""

    def __init__(self, factor: Any, shift: float, n: int, dtype: Any):
        self.factor, self.shift, self.shape, self.dtype = factor, float(shift), (n, n), dtype

    def matmat(self, x: np.ndarray) -> np.ndarray:
        return self.factor.forward(self.factor.backward(x)) + self.shift * x


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
    smallest ``l_0`` (and returns an object with ``solve``); the larger ridges go
    through shifted CG on that factor (``ridge_path="auto"``; no ``CGInfo``) or
    through :func:`~ntkscale.solvers.cg.cg` preconditioned with it (other paths)."""
    ridges = np.asarray(ridges, dtype=np.float64)
    j0 = int(np.argmin(ridges))
    f = factor_fn(float(ridges[j0]))
    x0 = np.asarray(f.solve(y))
    alpha = np.empty((len(ridges),) + x0.shape, dtype=x0.dtype)
    alpha[j0] = x0
    alpha[ridges == ridges[j0]] = x0
    rest = [j for j in range(len(ridges)) if ridges[j] > ridges[j0]]
    if not rest:
        return alpha, f, None
    if ridge_path == "auto":
        alpha[rest] = _shifted(f, y, ridges[rest] - ridges[j0], rtol, maxiter, ridges[rest])
        return alpha, f, None
    base = float(getattr(op, "ridge", 0.0))
    xs, info = cg(op, y, np.repeat(x0[None], len(rest), axis=0), rtol=rtol, maxiter=maxiter,
                  M=FactorPreconditioner(f), ridges=ridges[rest] - base, ridge_path=ridge_path,
                  progress=progress, progress_every=progress_every)
    alpha[rest] = xs
    return alpha, f, info


def _shifted(f: Any, y: np.ndarray, deltas: np.ndarray, rtol: float, maxiter: Optional[int],
             ridges: np.ndarray) -> np.ndarray:
    """``(C + d_j I)^{-1} y`` for ``d_j > 0`` by shifted CG on ``B = L^{-1} L^{-T}`` (module docstring)."""
    n, k = y.shape
    out = np.empty((len(deltas), n, k), dtype=np.result_type(y.dtype, np.float64))
    sig = 1.0 / deltas
    order = np.argsort(sig, kind="stable")           # the smallest shift (largest ridge) is the base
    tri = _sweeps(f)
    w = np.asarray(tri.forward(y))
    trace = float(np.sum(f.diag)) + n * f.ridge       # trace C = ||L||_F^2
    tol = rtol * np.linalg.norm(y, axis=0) / np.sqrt(max(trace, np.finfo(float).tiny))
    base = _FactorInverse(tri, sig[order[0]], n, out.dtype)
    v, _, res, _, _ = multishift_cg(base, w, sig[order] - sig[order[0]], np.repeat(tol[None], len(sig), axis=0),
                                  10 * n if maxiter is None else int(maxiter), None, CheckpointSaver(None, 1, ""),
                                  None, ridges[order])
    wnorm = np.where(np.linalg.norm(w, axis=0) > 0, np.linalg.norm(w, axis=0), 1.0)
    if np.any(res * wnorm[None] > tol[None]):
        warnings.warn(f"shifted CG on the Cholesky factor stopped above its tolerance (relative residual "
                      f"{float(np.max(res)):.3g} of L^-1 y) at ridge(s) "
                      f"{', '.join(f'{r:.3g}' for r in ridges[order][np.any(res * wnorm[None] > tol[None], axis=1)])}"
                      "; raise maxiter or use ridge_path: per_ridge", NumericalWarning, stacklevel=3)
    for pos, j in enumerate(order):
        out[j] = tri.backward(sig[j] * v[pos])
    return out
