"""Input checks shared by the solvers: reject bad input before any work."""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import numpy as np

from ..errors import InputError


def _rows(bad: np.ndarray, limit: int = 5) -> str:
    rows = np.nonzero(bad)[0]
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    more = f", ... ({len(rows)} rows in all)" if len(rows) > limit else ""
    return f"row{'s' if len(rows) != 1 else ''} {shown}{more}"


def check_ridges(ridges: Any, base: float = 0.0, name: str = "ridge") -> np.ndarray:
    """Ridges as a 1-D float64 array; negative, non-finite or empty -> InputError."""
    r = np.atleast_1d(np.asarray(ridges, dtype=np.float64))
    if r.ndim != 1 or r.size == 0:
        raise InputError(f"{name} must be a number or a non-empty list of numbers; got {ridges!r}")
    if not np.all(np.isfinite(r)):
        raise InputError(f"{name} has non-finite values {r[~np.isfinite(r)].tolist()}; use numbers >= 0")
    neg = r + base < 0
    if np.any(neg):
        raise InputError(
            f"{name} must be >= 0 (it is added to the Gram's diagonal; a negative ridge makes K + ridge I "
            f"indefinite); got {', '.join(f'{v:g}' for v in r[neg])}. Use e.g. 1e-6 relative to the mean diagonal")
    return r


def check_rhs(b: Any, n: int, name: str = "y") -> Tuple[np.ndarray, bool]:
    """Right-hand sides as ``(n, k)`` float array and whether they were 1-D."""
    b = np.asarray(b)
    if b.dtype.kind not in "fiub":
        raise InputError(f"{name} has dtype {b.dtype}; encode labels first (ntkscale.targets.encode_targets)")
    if b.ndim not in (1, 2) or b.shape[0] != n:
        raise InputError(f"{name} has shape {b.shape}; expected ({n},) or ({n}, k) to match the {n}x{n} Gram")
    vector = b.ndim == 1
    b2 = b.reshape(n, -1)
    if b2.dtype.kind != "f":
        b2 = b2.astype(np.float64)
    bad = ~np.isfinite(b2)
    if np.any(bad):
        n_nan = int(np.isnan(b2).sum())
        raise InputError(f"{name} has {n_nan} NaN and {int(bad.sum()) - n_nan} infinite values "
                         f"({_rows(np.any(bad, axis=1))}); clean or impute them")
    return b2, vector


def relative_ridges(ridges: Sequence[float], mean_diagonal: float) -> np.ndarray:
    """Absolute ridges from ridges relative to the Gram's mean diagonal."""
    r = check_ridges(ridges)
    return r * float(mean_diagonal)
