"""Targets for kernel regression: label encoding, decoding and metrics.

``task="auto"`` treats integer, boolean and string labels as classification
and floating-point targets as regression. Classification regresses on
one-hot targets centred at 0, ``onehot - 1/C`` (the convention of Lee et al.
2019 and Novak et al. 2019 for NNGP/NTK classification on MNIST/CIFAR),
and predicts the argmax. Regression targets are used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from .choices import TASKS
from .errors import InputError


def _rows(bad: np.ndarray, limit: int = 5) -> str:
    rows = np.nonzero(bad)[0]
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    more = f", ... ({len(rows)} rows in all)" if len(rows) > limit else ""
    return f"row{'s' if len(rows) != 1 else ''} {shown}{more}"


def _check_labels(y: Any, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) if y.ndim == 1 else ~np.all(np.isfinite(y), axis=tuple(range(1, y.ndim)))
        if np.any(bad):
            n_nan = int(np.isnan(y).sum())
            raise InputError(f"{name} has {n_nan} NaN and {int((~np.isfinite(y)).sum()) - n_nan} infinite values "
                             f"({_rows(bad)}); clean or impute them")
    elif y.dtype.kind == "O":
        missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in y.reshape(-1)])
        if np.any(missing):
            raise InputError(f"{name} has {int(missing.sum())} missing labels ({_rows(missing)}); "
                             "drop those rows or give them a label")
    elif y.dtype.kind not in "biuUS":
        raise InputError(f"{name} has dtype {y.dtype}; use integer or string labels, or float targets")
    return y


def infer_task(y: np.ndarray) -> str:
    """``classification`` for integer/boolean/string labels, else ``regression``."""
    return "classification" if np.asarray(y).dtype.kind in "biuUSO" else "regression"


@dataclass
class TargetEncoder:
    """Fitted encoding: ``task``, ``classes_`` (classification) and the shapes."""

    task: str
    classes_: Optional[np.ndarray] = None
    vector: bool = False  # regression targets were 1-D
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def n_outputs(self) -> int:
        return len(self.classes_) if self.task == "classification" else int(self.extra.get("k", 1))

    def transform(self, y: Any, name: str = "y") -> np.ndarray:
        """Targets as a float64 ``(n, k)`` matrix (the right-hand sides)."""
        y = _check_labels(y, name)
        if self.task == "classification":
            idx = self._indices(y, name)
            c = len(self.classes_)
            out = np.full((len(y), c), -1.0 / c)
            out[np.arange(len(y)), idx] += 1.0
            return out
        y = y.astype(np.float64)
        return y.reshape(len(y), -1)

    def _indices(self, y: np.ndarray, name: str) -> np.ndarray:
        if y.ndim != 1:
            raise InputError(f"{name} has shape {y.shape}; class labels must be 1-D")
        pos = np.searchsorted(self.classes_, y)
        pos = np.clip(pos, 0, len(self.classes_) - 1)
        unknown = self.classes_[pos] != y
        if np.any(unknown):
            missing = np.unique(y[unknown])
            raise InputError(
                f"{name} has classes {missing.tolist()[:10]} that do not appear in the training labels "
                f"(train classes: {self.classes_.tolist()[:20]}); the model cannot predict them: add training "
                f"examples of those classes, or drop those rows ({_rows(unknown)})")
        return pos

    def decode(self, pred: np.ndarray) -> np.ndarray:
        """Predictions -> labels (argmax) for classification; unchanged for regression."""
        pred = np.asarray(pred)
        if self.task == "classification":
            return self.classes_[np.argmax(pred, axis=-1)]
        return pred[..., 0] if self.vector and pred.shape[-1] == 1 else pred

    def metrics(self, pred: np.ndarray, y: Any, prefix: str = "") -> Dict[str, float]:
        """Accuracy (classification) or MSE and R^2 (regression) of raw predictions."""
        y = _check_labels(y, "y")
        if self.task == "classification":
            return {f"{prefix}accuracy": accuracy(self.decode(pred), y)}
        t = y.astype(np.float64).reshape(len(y), -1)
        p = np.asarray(pred, dtype=np.float64).reshape(t.shape)
        return {f"{prefix}mse": mse(p, t), f"{prefix}r2": r2(p, t)}


def encode_targets(y_train: Any, task: str = "auto") -> TargetEncoder:
    """Fit the encoding on the training labels (``task``: auto|classification|regression)."""
    if task not in TASKS:
        raise InputError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    y = _check_labels(y_train, "y_train")
    if y.ndim == 0 or y.shape[0] == 0:
        raise InputError(f"y_train is empty (shape {y.shape}): the training data has no samples; check "
                         "data.train in the config")
    if task == "auto":
        task = infer_task(y)
    if task == "classification":
        if y.ndim != 1:
            raise InputError(f"y_train has shape {y.shape}; classification labels must be 1-D "
                             "(use task: regression for one-hot or multi-output targets)")
        if y.dtype.kind == "f" and not np.all(y == np.round(y)):
            raise InputError("y_train has non-integer floats but task is 'classification'; use integer labels "
                             "or task: regression")
        classes = np.unique(y)
        if len(classes) < 2:
            raise InputError(f"y_train has a single class {classes.tolist()}; classification needs at least two")
        return TargetEncoder("classification", classes_=classes)
    if y.dtype.kind not in "biuf":
        raise InputError(f"y_train has dtype {y.dtype}; regression needs numeric targets (or task: classification)")
    return TargetEncoder("regression", vector=y.ndim == 1, extra={"k": 1 if y.ndim == 1 else int(np.prod(y.shape[1:]))})


# --------------------------------------------------------------------------- metrics
def accuracy(pred_labels: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred_labels) == np.asarray(y)))


def mse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(pred, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def r2(pred: np.ndarray, y: np.ndarray) -> float:
    """Coefficient of determination, averaged uniformly over outputs (scikit-learn's default)."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    p = np.asarray(pred, dtype=np.float64).reshape(y.shape)
    ss_res = np.sum((y - p) ** 2, axis=0)
    ss_tot = np.sum((y - y.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    return float(np.mean(per))
