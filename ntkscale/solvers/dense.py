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

from ..errors import NotPSDError, NumericalWarning

#: Jitter tried after a failed factorisation, relative to the mean diagonal.
JITTER_STEPS: Tuple[float, ...] = (1e-10, 1e-8, 1e-6, 1e-4)


def mean_diagonal(k: np.ndarray) -> float:
    return float(np.mean(np.diagonal(k)))


def cho_factor_with_jitter(k: np.ndarray, *, what: str = "the Gram matrix",
                           jitter_steps: Sequence[float] = JITTER_STEPS):
    """``scipy.linalg.cho_factor(k)``, retrying with growing diagonal jitter.

    Returns ``(factor, jitter_added)``; ``k`` is not modified.
    """
    scale = abs(mean_diagonal(k)) or 1.0
    try:
        return scipy.linalg.cho_factor(k, lower=True, check_finite=False), 0.0
    except np.linalg.LinAlgError:
        pass
    for step in jitter_steps:
        jitter = step * scale
        try:
            factor = scipy.linalg.cho_factor(k + jitter * np.eye(k.shape[0], dtype=k.dtype),
                                             lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            continue
        warnings.warn(
            f"{what} is not numerically positive definite; added jitter {jitter:.3g} "
            f"({step:g} x mean diagonal) to the diagonal to factor it",
            NumericalWarning, stacklevel=2,
        )
        return factor, jitter
    raise NotPSDError(
        f"{what} ({k.shape[0]}x{k.shape[0]}) is not positive definite even with jitter up to "
        f"{jitter_steps[-1]:g} x mean diagonal ({jitter_steps[-1] * scale:.3g}); use a larger ridge "
        "(e.g. ridge=1e-4 relative to the mean diagonal) or check the kernel for NaN/duplicates"
    )


def solve_psd(k: np.ndarray, y: np.ndarray, ridge: float = 0.0, *,
              what: str = "the Gram matrix") -> np.ndarray:
    """Solve ``(k + ridge I) x = y`` by Cholesky with jitter retries."""
    a = k + ridge * np.eye(k.shape[0], dtype=k.dtype) if ridge else k
    factor, _ = cho_factor_with_jitter(a, what=what)
    return scipy.linalg.cho_solve(factor, y, check_finite=False)
