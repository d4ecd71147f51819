"""scikit-learn estimators: exact NTK/NNGP kernel regression in memory.

``__init__`` only stores parameters; fitted attributes end in ``_``.
``kernel`` is a ``kernel_fn`` (or a ``stax`` layer triple), a list of layers
or a spec list, or ``"precomputed"`` (then ``fit``/``predict`` take Gram
matrices). The ridge is relative to the mean diagonal of the training Gram by
default, as neural-tangents' ``diag_reg``.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from . import stax
from .choices import KERNELS
from .predict.dynamics import apply_in_eigenbasis, eigenbasis, inv_expm1_flow
from .errors import InputError, SpecError
from .solvers.dense import mean_diagonal, solve_psd
from .stax.network import KernelFn, Layer

KernelLike = Union[None, str, KernelFn, Layer, Sequence[Any]]


def default_layers(depth: int = 3, W_std: float = math.sqrt(2.0), b_std: float = 0.1) -> Layer:
    """The default network: ``depth`` × [Dense(W_std, b_std), Relu] then a
    Dense(1) readout with the same W_std/b_std (He scaling, W_std = √2);
    ``stax.presets.fc``."""
    return stax.presets.fc(depth, W_std=W_std, b_std=b_std)


def resolve_kernel(kernel: KernelLike) -> Optional[KernelFn]:
    """``kernel`` parameter -> ``KernelFn`` (``None`` for ``"precomputed"``)."""
    if kernel is None:
        return default_layers()[2]
    if isinstance(kernel, str):
        if kernel == "precomputed":
            return None
        raise SpecError(f"kernel={kernel!r} is not understood; pass a kernel_fn, a layer list or 'precomputed'")
    if isinstance(kernel, KernelFn):
        return kernel
    if isinstance(kernel, Layer):
        return kernel[2]
    if isinstance(kernel, Sequence):
        if all(isinstance(item, Layer) for item in kernel):
            return stax.serial(*kernel)[2]
        return stax.from_spec(list(kernel))[2]
    raise SpecError(
        f"kernel of type {type(kernel).__name__} is not understood; pass a kernel_fn from "
        "ntkscale.stax.serial(...), a list of layers, a [[LayerName, {kwargs}], ...] spec or 'precomputed'"
    )


def _flow_coefficients(k: np.ndarray, Y: np.ndarray, ridge: float, eta_t: float) -> np.ndarray:
    """``V diag((1 − exp(−η t λ/N)) / λ) V^T Y`` (``K + ridge·I = V diag(λ) V^T``,
    ``N = Y.size``): the dual coefficients of the gradient-flow prediction at
    time ``t`` (Lee et al. 2019, Eq. 11), computed as
    :func:`ntkscale.predict.gradient_descent_mse` does."""
    evals, evecs = eigenbasis(k, ridge, True, np)
    gain = inv_expm1_flow(evals, np.array([[eta_t]]), Y.size, np)
    return apply_in_eigenbasis(evecs, gain, -Y, np)[0]


class _KernelRidgeBase(BaseEstimator):
    """Shared fit/predict of the NTK/NNGP kernel-ridge estimators."""

    def __init__(self, kernel: KernelLike = None, *, get: str = "ntk", ridge: float = 1e-6,
                 ridge_relative: bool = True, t: Optional[float] = None, learning_rate: float = 1.0):
        self.kernel = kernel
        self.get = get
        self.ridge = ridge
        self.ridge_relative = ridge_relative
        self.t = t
        self.learning_rate = learning_rate

    # -- helpers --------------------------------------------------------
    def _precomputed(self) -> bool:
        return isinstance(self.kernel, str) and self.kernel == "precomputed"

    def _check_params(self) -> Optional[KernelFn]:
        if self.get not in KERNELS:
            raise InputError(f"get={self.get!r} is not available; choose 'nngp' or 'ntk'")
        if not isinstance(self.ridge, (int, float)) or not math.isfinite(self.ridge) or self.ridge < 0:
            raise InputError(f"ridge={self.ridge!r} must be a finite number >= 0")
        if self.t is not None and (not isinstance(self.t, (int, float)) or math.isnan(self.t) or self.t < 0):
            raise InputError(f"t={self.t!r} must be a training time >= 0 (inf allowed), or None for t = infinity")
        if not isinstance(self.learning_rate, (int, float)) or not 0 < self.learning_rate < math.inf:
            raise InputError(f"learning_rate={self.learning_rate!r} must be a finite number > 0")
        return resolve_kernel(self.kernel)

    def _validate_x(self, X: Any, reset: bool, kernel_fn: Optional[KernelFn], y: Any = None,
                    fitting: bool = False):
        # Kernels are computed in float64: the in-memory solve needs the
        # accuracy (a float32 Gram has eigenvalues ~1e-6·max below zero).
        image = kernel_fn is not None and kernel_fn.is_image_net
        kwargs = dict(dtype=np.float64, reset=reset)
        if image:
            kwargs.update(allow_nd=True, ensure_2d=False)
        if not fitting:
            return validate_data(self, X, **kwargs), None
        return validate_data(self, X, y, multi_output=True, y_numeric=False, **kwargs)

    def _check_pattern(self, kernel_fn: Optional[KernelFn], pattern: Any, where: str) -> Any:
        """Graph networks (``stax.Aggregate``) need the rows' patterns, others refuse them."""
        uses = kernel_fn is not None and kernel_fn.uses_patterns
        if uses and pattern is None:
            raise InputError(f"the network has Aggregate layers: pass {where}(X, ..., pattern=P) with one graph "
                             "pattern per row of X (neural-tangents' layout); without it Aggregate is the identity")
        if pattern is not None and not uses:
            raise InputError(f"{where} got pattern= but the network has no Aggregate layer; leave it out")
        return None if pattern is None else np.asarray(pattern, dtype=np.float64)

    def _gram(self, kernel_fn: Optional[KernelFn], X: np.ndarray, X2: Optional[np.ndarray],
              patterns: Any = None) -> np.ndarray:
        if kernel_fn is None:
            return np.asarray(X, dtype=np.float64)
        if patterns is not None and patterns[0] is not None:
            return np.asarray(kernel_fn(X, X2, self.get, pattern=patterns), dtype=np.float64)
        return np.asarray(kernel_fn(X, X2, self.get), dtype=np.float64)

    def _fit_targets(self, X: Any, Y: np.ndarray, pattern: Any = None) -> "_KernelRidgeBase":
        kernel_fn = self._kernel_fn_
        self.pattern_fit_ = self._check_pattern(kernel_fn, pattern, "fit")
        k = self._gram(kernel_fn, X, None, (self.pattern_fit_, None))
        if self._precomputed() and k.shape[0] != k.shape[1]:
            raise InputError(f"with kernel='precomputed', fit takes the square training Gram; got shape {k.shape}")
        scale = mean_diagonal(k) if self.ridge_relative else 1.0
        self.ridge_absolute_ = float(self.ridge) * scale
        if self.t is None:
            self.dual_coef_ = solve_psd(k, Y, self.ridge_absolute_, what=f"the training {self.get.upper()} Gram")
        else:
            self.dual_coef_ = _flow_coefficients(k, Y, self.ridge_absolute_, self.learning_rate * float(self.t))
        self.X_fit_ = None if kernel_fn is None else X
        self.n_train_ = k.shape[0]
        return self

    def _decision(self, X: Any, pattern: Any = None) -> np.ndarray:
        check_is_fitted(self, "dual_coef_")
        pattern = self._check_pattern(self._kernel_fn_, pattern, "predict")
        X, _ = self._validate_x(X, False, self._kernel_fn_)
        if self._kernel_fn_ is None:
            k = np.asarray(X, dtype=np.float64)
            if k.shape[1] != self.n_train_:
                raise InputError(
                    f"with kernel='precomputed', predict takes K(test, train) with {self.n_train_} "
                    f"columns; got shape {k.shape}"
                )
        else:
            k = self._gram(self._kernel_fn_, X, self.X_fit_, (pattern, self.pattern_fit_))
        return k @ self.dual_coef_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.pairwise = self._precomputed()
        return tags


class NTKRegressor(RegressorMixin, _KernelRidgeBase):
    """Kernel ridge regression with an exact infinite-width NTK (or NNGP).

    Parameters
    ----------
    kernel : kernel_fn, layer list, spec list, ``"precomputed"`` or None
        None uses :func:`default_layers` (FC ReLU, depth 3, W_std=√2, b_std=0.1).
    get : ``"ntk"`` or ``"nngp"``
    ridge : float, default 1e-6
        Added to the diagonal; multiplied by the mean diagonal of the training
        Gram when ``ridge_relative`` (neural-tangents' ``diag_reg``).
    t : float or None, default None
        Training time of gradient descent on the MSE (None: t = ∞, kernel ridge
        regression); ``learning_rate`` η multiplies it (only η·t matters).

    Graph networks (``stax.Aggregate``) take the rows' patterns as neural-tangents
    does: ``fit(X, y, pattern=P)`` and ``predict(X, pattern=P_test)``.
    """

    def fit(self, X: Any, y: Any, pattern: Any = None) -> "NTKRegressor":
        self._kernel_fn_ = self._check_params()
        X, y = self._validate_x(X, True, self._kernel_fn_, y, fitting=True)
        y = np.asarray(y, dtype=np.float64)
        self._y_1d_ = y.ndim == 1
        Y = y.reshape(len(y), -1)
        return self._fit_targets(X, Y, pattern)

    def predict(self, X: Any, pattern: Any = None) -> np.ndarray:
        out = self._decision(X, pattern)
        return out[:, 0] if self._y_1d_ else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class NTKClassifier(ClassifierMixin, _KernelRidgeBase):
    """Classification by kernel regression on one-hot targets centred at 0
    (``onehot − 1/n_classes``) with an exact NTK/NNGP; predicts the argmax."""

    def fit(self, X: Any, y: Any, pattern: Any = None) -> "NTKClassifier":
        self._kernel_fn_ = self._check_params()
        X, y = self._validate_x(X, True, self._kernel_fn_, y, fitting=True)
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        self._encoder_ = LabelEncoder().fit(y)
        self.classes_ = self._encoder_.classes_
        codes = self._encoder_.transform(y)
        k = len(self.classes_)
        Y = np.eye(k)[codes] - 1.0 / k
        return self._fit_targets(X, Y, pattern)

    def decision_function(self, X: Any, pattern: Any = None) -> np.ndarray:
        """Per-class scores; for two classes, score(classes_[1]) − score(classes_[0])."""
        scores = self._decision(X, pattern)
        return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores

    def predict(self, X: Any, pattern: Any = None) -> np.ndarray:
        check_is_fitted(self, "dual_coef_")
        return self.classes_[np.argmax(self._decision(X, pattern), axis=1)]
