"""In-memory positive-definite solves with jitter retries (linear_operator style).

A Gram matrix that is not numerically positive definite is retried with a
growing multiple of its mean diagonal added; every retry warns with the
amount, and the last failure raises :class:`~ntkscale.errors.NotPSDError`.
"""

from __future__ import annotations

import warnings
from typing import Sequence, Tuple

import numpy as np
import scipy.linalg
import scipy.linalg.lapack

from ..errors import NotPSDError, NumericalWarning

#: Jitter tried after a failed factorisation, relative to the mean diagonal.
JITTER_STEPS: Tuple[float, ...] = (1e-10, 1e-8, 1e-6, 1e-4)


def mean_diagonal(k: np.ndarray) -> float:
    return float(np.mean(np.diagonal(k)))


def jitter_candidates(scale: float, start: float = 0.0,
                      jitter_steps: Sequence[float] = JITTER_STEPS) -> Tuple[float, ...]:
    """Absolute jitters to try in order: ``start`` (the jitter already in use,
    0 at first), then each step x ``scale`` that exceeds it."""
    return (float(start),) + tuple(s * scale for s in jitter_steps if s * scale > start)


def _not_psd_message(what: str, shape: Tuple[int, ...], scale: float, jitter_steps: Sequence[float]) -> str:
    return (
        f"{what} ({shape[0]}x{shape[1]}) is not positive definite even with jitter up to "
        f"{jitter_steps[-1]:g} x mean diagonal ({jitter_steps[-1] * scale:.3g}); use a larger ridge "
        "(e.g. ridge=1e-4 relative to the mean diagonal) or check the kernel for NaN/duplicates"
    )


def cholesky_with_jitter(a: np.ndarray, *, scale: float, start_jitter: float = 0.0,
                         jitter_steps: Sequence[float] = JITTER_STEPS,
                         what: str = "the Gram matrix") -> Tuple[np.ndarray, float]:
    """Lower Cholesky factor of ``a + jitter I`` with the smallest jitter of
    :func:`jitter_candidates` that works; returns ``(L, jitter)`` without
    warning (the caller reports it) or raises :class:`NotPSDError`.

    Only the lower triangle of ``a`` is read and ``a`` is not modified. Calls
    LAPACK ``potrf`` directly on the F-ordered view (a C-ordered ``a`` is
    factored through its transpose, no copy of the layout); ``L`` comes back
    in ``a``'s memory order. ``scale`` is the unit of the steps (the whole
    matrix's mean diagonal when ``a`` is one tile of it: the tiled Cholesky
    calls this per diagonal tile).
    """
    potrf = scipy.linalg.lapack.get_lapack_funcs("potrf", (a,))
    fa, lower = (a, 1) if a.flags.f_contiguous else (np.asarray(a).T, 0)
    if not fa.flags.f_contiguous:
        fa, lower = np.asfortranarray(a), 1
    diag = np.diag_indices(a.shape[0])
    for jitter in jitter_candidates(scale, start_jitter, jitter_steps):
        work = fa
        if jitter:
            work = fa.copy(order="F")
            work[diag] += jitter
        c, info = potrf(work, lower=lower, clean=1, overwrite_a=0)
        if info == 0:
            return (c if lower else c.T), jitter
        if info < 0:  # pragma: no cover - argument error
            raise ValueError(f"LAPACK potrf: illegal argument {-info}")
    raise NotPSDError(_not_psd_message(what, a.shape, scale, jitter_steps))


def cho_factor_with_jitter(k: np.ndarray, *, what: str = "the Gram matrix",
                           jitter_steps: Sequence[float] = JITTER_STEPS):
    """``scipy.linalg.cho_factor(k)``, retrying with growing diagonal jitter.

    Returns ``(factor, jitter_added)``; ``k`` is not modified.
    """
    scale = abs(mean_diagonal(k)) or 1.0
    for jitter in jitter_candidates(scale, 0.0, jitter_steps):
        try:
            a = k + jitter * np.eye(k.shape[0], dtype=k.dtype) if jitter else k
            factor = scipy.linalg.cho_factor(a, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            continue
        if jitter:
            warnings.warn(
                f"{what} is not numerically positive definite; added jitter {jitter:.3g} "
                f"({jitter / scale:g} x mean diagonal) to the diagonal to factor it",
                NumericalWarning, stacklevel=2,
            )
        return factor, jitter
    raise NotPSDError(_not_psd_message(what, k.shape, scale, jitter_steps))


def solve_psd(k: np.ndarray, y: np.ndarray, ridge: float = 0.0, *,
              what: str = "the Gram matrix") -> np.ndarray:
    """Solve ``(k + ridge I) x = y`` by Cholesky with jitter retries."""
    a = k + ridge * np.eye(k.shape[0], dtype=k.dtype) if ridge else k
    factor, _ = cho_factor_with_jitter(a, what=what)
    return scipy.linalg.cho_solve(factor, y, check_finite=False)
