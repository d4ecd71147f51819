"""Ridge selection on a seeded validation split of the *training* data.

The test set never takes part: ``select_ridge`` carves ``validation_fraction``
of the training rows (a seeded permutation), solves on the rest for every
ridge at once, predicts the held-out rows with ``K(val, fit)`` and picks the
ridge with the best validation metric (accuracy, or MSE for regression).
The caller then solves on the whole training set (all ridges again, so each
ridge's test metric can be reported) and uses the chosen one.

The fit sub-problem ``K[fit, fit]`` is an operator over the full Gram (the
products embed into ``n`` rows; about ``n^2 / n_fit^2`` the work, 1.23x for a
10 % split) so it works for stored and streamed Grams alike; the Cholesky
method materialises the sub-Gram (in memory or into a Zarr group) tile by tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import InputError
from .api import SolveResult, solve
from .operator import as_operator
from .validate import check_ridges


def validation_split(n: int, fraction: float, seed: Any = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``(fit_idx, val_idx)``, sorted, from ``default_rng(seed).permutation(n)``."""
    if not 0.0 < float(fraction) < 1.0:
        raise InputError(f"validation_fraction must be between 0 and 1 (exclusive); got {fraction!r}")
    n_val = int(round(float(fraction) * n))
    if n_val < 1 or n - n_val < 2:
        raise InputError(f"validation_fraction {fraction:g} of {n} training rows leaves {n_val} for validation and "
                         f"{n - n_val} for fitting; use more data or another fraction")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class SubsetOperator:
    """``K[idx][:, idx] + ridge I`` of a symmetric Gram operator ``A``."""

    def __init__(self, A: Any, idx: np.ndarray, ridge: float = 0.0):
        self.A = as_operator(A)
        self.idx = np.asarray(idx, dtype=np.int64)
        n = len(self.idx)
        self.shape, self.dtype, self.ridge = (n, n), self.A.dtype, float(ridge)

    def with_ridge(self, ridge: float) -> "SubsetOperator":
        return SubsetOperator(self.A, self.idx, ridge)

    def _embed(self, x: np.ndarray) -> np.ndarray:
        full = np.zeros((self.A.shape[0],) + x.shape[1:], dtype=x.dtype)
        full[self.idx] = x
        return full

    def matmat(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        base = self.A.with_ridge(0.0) if hasattr(self.A, "with_ridge") else self.A
        y = np.asarray(base.matmat(self._embed(x)))[self.idx]
        return y + self.ridge * x if self.ridge else y

    def matvec(self, x: np.ndarray) -> np.ndarray:
        return self.matmat(np.asarray(x).reshape(-1, 1)).reshape(-1)

    def diagonal(self) -> np.ndarray:
        base = self.A.with_ridge(0.0) if hasattr(self.A, "with_ridge") else self.A
        return np.asarray(base.diagonal())[self.idx] + self.ridge

    def rows(self, r: np.ndarray) -> np.ndarray:
        base = self.A.with_ridge(0.0) if hasattr(self.A, "with_ridge") else self.A
        r = np.asarray(r)
        out = np.asarray(base.rows(self.idx[r]))[:, self.idx]
        if self.ridge:
            out[np.arange(len(r)), r] += self.ridge
        return out

    def materialize(self, group: Any = None, tile: int = 4096) -> Any:
        """``K[idx][:, idx]`` as an array: NumPy, or a Zarr array in ``group``
        written by row tiles (for the out-of-core Cholesky)."""
        src = self.A.source.array if hasattr(self.A, "source") else None
        if src is None:
            raise InputError("the Cholesky method needs a stored Gram to take a validation sub-Gram from")
        n = len(self.idx)
        if group is None:
            if isinstance(src, np.ndarray):
                return src[np.ix_(self.idx, self.idx)]
            return np.asarray(src.get_orthogonal_selection((self.idx, self.idx)))
        out = group.create_array("K_fit", shape=(n, n), chunks=(min(tile, n), min(tile, n)),
                                 dtype=src.dtype, compressors=None, overwrite=True)
        for i0 in range(0, n, tile):
            rows = self.idx[i0:i0 + tile]
            block = (src[np.ix_(rows, self.idx)] if isinstance(src, np.ndarray)
                     else src.get_orthogonal_selection((rows, self.idx)))
            out[i0:i0 + len(rows)] = block
        return out


@dataclass
class RidgeSelection:
    """Per-ridge validation metrics and the chosen ridge."""

    ridges: np.ndarray                 # absolute
    metrics: List[Dict[str, float]]    # one dict per ridge (val_accuracy | val_mse, val_r2)
    best_index: int
    fit_idx: np.ndarray
    val_idx: np.ndarray
    metric: str
    fit_result: Optional[SolveResult] = None

    @property
    def best_ridge(self) -> float:
        return float(self.ridges[self.best_index])


def choose_best(metrics: List[Dict[str, float]], key: str) -> int:
    """Index of the best metric (max for accuracy/R^2, min for MSE); ties -> the
    larger ridge is not assumed, the first (as listed) wins."""
    vals = np.array([m[key] for m in metrics], dtype=np.float64)
    if not np.any(np.isfinite(vals)):
        raise InputError(f"no ridge produced a finite {key}")
    return int(np.nanargmin(vals) if key.endswith("mse") else np.nanargmax(vals))


def select_ridge(A: Any, y_train: Any, ridges: Any, *, encoder: Any, validation_fraction: float = 0.1,
                 seed: Any = 0, method: str = "cg", group: Any = None, **solve_kw: Any) -> RidgeSelection:
    """Solve on a seeded ``1 - validation_fraction`` of the training rows for every
    ridge (absolute), score the held-out rows, pick the best (never uses test data)."""
    rid = check_ridges(ridges)
    op = as_operator(A)
    y_train = np.asarray(y_train)
    n = op.shape[0]
    if len(y_train) != n:
        raise InputError(f"y_train has {len(y_train)} rows but the Gram is {n}x{n}")
    fit, val = validation_split(n, validation_fraction, seed)
    sub = SubsetOperator(op, fit)
    target = sub
    if method == "cholesky":
        target = sub.materialize(group.require_group("validation") if group is not None else None)
    res = solve(target, encoder.transform(y_train[fit], "y_train"), ridges=rid, method=method,
                group=None if group is None else group.require_group("validation"), **solve_kw)
    # K(val, fit) alpha for every ridge in one sweep: embed alpha into n rows
    s, _, k = res.alpha.shape
    emb = np.zeros((n, s * k))
    emb[fit] = np.moveaxis(res.alpha, 0, 1).reshape(len(fit), s * k)
    base = op.with_ridge(0.0) if hasattr(op, "with_ridge") else op
    pred = np.asarray(base.matmat(emb))[val].reshape(len(val), s, k)
    metrics = [encoder.metrics(pred[:, j, :], y_train[val], prefix="val_") for j in range(s)]
    key = "val_accuracy" if encoder.task == "classification" else "val_mse"
    return RidgeSelection(rid, metrics, choose_best(metrics, key), fit, val, key, res)
