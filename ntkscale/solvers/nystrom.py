"""Low-rank preconditioners for ``K + mu I``: randomized Nyström, pivoted Cholesky.

Both build a rank-``r`` approximation ``K ~ U diag(lam) U^T`` (``U`` with
orthonormal columns) from the operator alone, then apply the inverse of the
shifted approximation by the Woodbury identity, which for orthonormal ``U``
reduces to (Frangella, Tropp & Udell 2021, "Randomized Nyström
preconditioning", eq. (5.3), arXiv:2110.02820)::

    P^{-1} = (lam_r + mu) U diag(1 / (lam + mu)) U^T + (I - U U^T)

i.e. exact ``(K_hat + mu I)^{-1}`` on range(U) and the tail eigenvalue
``lam_r`` assumed on its complement (``complement="tail"``, the default).
``complement="exact"`` applies the plain Woodbury inverse
``(U diag(lam) U^T + mu I)^{-1} = U diag(1/(lam+mu) - 1/mu) U^T + I/mu``
(Gardner et al. 2018, GPyTorch, Sec. 4), which treats the complement as if
``K`` were 0 there. The shift is free to change: ``with_shift(mu)`` reuses the
sketch, so one sketch serves every ridge.

* :func:`nystrom_preconditioner` - one product ``K @ Omega`` with a Gaussian
  test matrix, then the stable shifted Nyström approximation (FTU 2021,
  Alg. 2.1; Tropp, Yurtsever, Udell & Cevher 2017, Alg. 3). One sweep over
  a stored Gram: the choice for "stored" operators.
* :func:`pivoted_cholesky_preconditioner` - greedy partial pivoted Cholesky
  (Harbrecht, Peters & Schneider 2012; used as a preconditioner by Gardner,
  Pleiss, Bindel, Weinberger & Wilson 2018, GPyTorch): the diagonal plus ``r``
  selected rows. Each row of a Zarr Gram costs a chunk-row of I/O, so this is
  the choice for "streamed" (recomputed) and in-memory operators.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import scipy.linalg

from ..choices import PRECONDITIONERS
from ..errors import InputError


def _base(A: Any) -> Any:
    """The unshifted Gram ``K`` of an operator that may carry a ridge."""
    return A.with_ridge(0.0) if hasattr(A, "with_ridge") else A


class LowRankPreconditioner:
    """Applies ``(U diag(lam) U^T + shift I)^{-1}`` (see the module docstring).

    Attributes: ``U`` (n x r, orthonormal columns), ``eigenvalues`` (``lam``,
    descending, the spectrum estimate), ``shift``, ``kind``, ``complement``.
    """

    def __init__(self, U: np.ndarray, eigenvalues: np.ndarray, shift: float = 0.0, *,
                 kind: str = "nystrom", complement: str = "tail"):
        if complement not in ("tail", "exact"):
            raise InputError(f"complement must be 'tail' or 'exact'; got {complement!r}")
        self.U = U
        self.eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
        self.shift = float(shift)
        self.kind = kind
        self.complement = complement
        if self.shift < 0:
            raise InputError(f"the preconditioner shift must be >= 0; got {shift:g}")
        if complement == "exact" and self.shift == 0:
            raise InputError("complement='exact' needs a shift > 0 (it applies 1/shift off the sketch)")

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])

    def with_shift(self, shift: float) -> "LowRankPreconditioner":
        return LowRankPreconditioner(self.U, self.eigenvalues, shift, kind=self.kind, complement=self.complement)

    def solve(self, r: np.ndarray) -> np.ndarray:
        """``P^{-1} r`` for ``r`` of shape ``(n,)`` or ``(n, k)``."""
        r = np.asarray(r)
        U = self.U if self.U.dtype == r.dtype else self.U.astype(r.dtype)
        mu, lam = self.shift, self.eigenvalues
        utr = U.T @ r
        if self.complement == "tail":
            scale = (lam[-1] + mu) if lam.size else 1.0
            coef = (scale / (lam + mu) - 1.0).astype(r.dtype)
            return r + U @ (coef[:, None] * utr if r.ndim == 2 else coef * utr)
        coef = (1.0 / (lam + mu) - 1.0 / mu).astype(r.dtype)
        return r / mu + U @ (coef[:, None] * utr if r.ndim == 2 else coef * utr)

    __call__ = solve

    def solve_shifted(self, r: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """``P_{mu_c}^{-1} r_c`` for each column ``c`` with its own shift ``shifts[c]``:
        one pass over ``U`` for all ridges (applying ``U`` is memory-bound, so
        batched ridges cost what one does)."""
        r = np.asarray(r)
        mu = np.asarray(shifts, dtype=np.float64)[None, :]
        U = self.U if self.U.dtype == r.dtype else self.U.astype(r.dtype)
        lam = self.eigenvalues[:, None]
        utr = U.T @ r
        if self.complement == "tail":
            scale = (lam[-1] + mu) if lam.size else np.ones_like(mu)
            return r + U @ ((scale / (lam + mu) - 1.0).astype(r.dtype) * utr)
        if np.any(mu <= 0):
            raise InputError("complement='exact' needs every shift > 0")
        return r / mu.astype(r.dtype) + U @ ((1.0 / (lam + mu) - 1.0 / mu).astype(r.dtype) * utr)

    def __repr__(self) -> str:
        return (f"LowRankPreconditioner(kind={self.kind}, rank={self.rank}, shift={self.shift:g}, "
                f"complement={self.complement}, lam=[{self.eigenvalues[0]:.3g} .. {self.eigenvalues[-1]:.3g}])"
                if self.rank else "LowRankPreconditioner(rank=0)")


def nystrom_preconditioner(A: Any, rank: int, *, shift: Optional[float] = None, seed: Any = 0,
                           complement: str = "tail") -> LowRankPreconditioner:
    """Randomized Nyström preconditioner of rank ``rank`` for ``K + shift I``.

    ``A`` is a :class:`~ntkscale.solvers.operator.GramOperator` (its ridge is
    the default shift, and the sketch uses ``K`` without it) or any symmetric
    PSD operator with ``matmat``. Costs one product with ``rank`` columns.
    Algorithm 2.1 of Frangella, Tropp & Udell (2021), with the stabilising
    shift ``nu = sqrt(n) eps(||Y||)`` of Tropp et al. (2017), Alg. 3.
    """
    n = A.shape[0]
    rank = _check_rank(rank, n)
    shift = float(getattr(A, "ridge", 0.0)) if shift is None else float(shift)
    rng = np.random.default_rng(seed)
    omega, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    y = np.asarray(_base(A).matmat(omega), dtype=np.float64)
    nu = np.sqrt(n) * np.spacing(np.linalg.norm(y, "fro"))
    y += nu * omega
    core = omega.T @ y
    core = (core + core.T) / 2
    for extra in (0.0, 1e-12, 1e-10, 1e-8):  # rounding can leave core barely indefinite
        try:
            c = scipy.linalg.cholesky(core + extra * np.trace(core) / rank * np.eye(rank), lower=False)
            break
        except np.linalg.LinAlgError:
            continue
    else:  # pragma: no cover - K itself is indefinite
        raise InputError("the Nyström core Omega^T K Omega is not positive semi-definite; is K a Gram matrix?")
    b = scipy.linalg.solve_triangular(c, y.T, trans="T", lower=False).T  # b = y c^{-1}
    u, sv, _ = scipy.linalg.svd(b, full_matrices=False, check_finite=False)
    lam = np.maximum(sv ** 2 - nu, 0.0)
    return LowRankPreconditioner(u, lam, shift, kind="nystrom", complement=complement)


def pivoted_cholesky(A: Any, rank: int, *, rtol: float = 0.0) -> np.ndarray:
    """Greedy partial pivoted Cholesky ``K ~ L L^T`` of rank <= ``rank``
    (Harbrecht, Peters & Schneider 2012, Alg. 1): the diagonal plus one row
    per pivot. Stops early when the trace of the remainder falls below
    ``rtol * trace(K)``. Returns ``L`` (n x r)."""
    K = _base(A)
    n = K.shape[0]
    rank = _check_rank(rank, n)
    d = np.asarray(K.diagonal(), dtype=np.float64).copy()
    trace0 = float(d.sum())
    L = np.zeros((n, rank), dtype=np.float64)
    for m in range(rank):
        i = int(np.argmax(d))
        if d[i] <= 0 or d.sum() <= rtol * trace0:
            return L[:, :m]
        row = np.asarray(K.rows(np.array([i]))[0], dtype=np.float64)
        col = (row - L[:, :m] @ L[i, :m]) / np.sqrt(d[i])
        L[:, m] = col
        d -= col ** 2
        d[i] = 0.0
        np.maximum(d, 0.0, out=d)
    return L


def pivoted_cholesky_preconditioner(A: Any, rank: int, *, shift: Optional[float] = None,
                                    complement: str = "tail", rtol: float = 0.0) -> LowRankPreconditioner:
    """Pivoted-Cholesky preconditioner (Gardner et al. 2018) for ``K + shift I``:
    ``L L^T`` is diagonalised through a thin QR (``L = Q R``,
    ``R R^T = V S V^T``, ``U = Q V``) so that the shifted inverse is applied
    by the same stable Woodbury form as the Nyström one."""
    shift = float(getattr(A, "ridge", 0.0)) if shift is None else float(shift)
    L = pivoted_cholesky(A, rank, rtol=rtol)
    if L.shape[1] == 0:
        return LowRankPreconditioner(np.zeros((A.shape[0], 0)), np.zeros(0), shift, kind="pivoted_cholesky",
                                     complement=complement)
    q, r = np.linalg.qr(L)
    s, v = np.linalg.eigh(r @ r.T)
    order = np.argsort(s)[::-1]
    return LowRankPreconditioner(q @ v[:, order], np.maximum(s[order], 0.0), shift,
                                 kind="pivoted_cholesky", complement=complement)


def build_preconditioner(kind: Optional[str], A: Any, rank: int = 500, *, shift: Optional[float] = None,
                         seed: Any = 0, complement: str = "tail") -> Optional[LowRankPreconditioner]:
    """``kind``: ``nystrom`` | ``pivoted_cholesky`` | ``none`` (config ``solver.preconditioner``)."""
    if kind in (None, "none"):
        return None
    if kind == "nystrom":
        return nystrom_preconditioner(A, rank, shift=shift, seed=seed, complement=complement)
    if kind == "pivoted_cholesky":
        return pivoted_cholesky_preconditioner(A, rank, shift=shift, complement=complement)
    raise InputError(f"unknown preconditioner kind {kind!r}; "
                     f"choose {', '.join(PRECONDITIONERS[:-1])} or {PRECONDITIONERS[-1]}")


def _check_rank(rank: Any, n: int) -> int:
    try:
        r = int(rank)
    except (TypeError, ValueError):
        raise InputError(f"preconditioner rank must be an integer; got {rank!r}") from None
    if r < 1:
        raise InputError(f"preconditioner rank must be >= 1; got {r}")
    return min(r, n)
