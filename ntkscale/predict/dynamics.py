"""Gradient-descent training dynamics in closed form, dense (neural-tangents' ``predict``).

Continuous-time gradient descent on the MSE loss ``L = 1/(2N) ||f(X) - Y||²``
(``N = y_train.size``) of a network linearised around its initialisation moves
its outputs by the linear ODE ``df/dt = -(η/N) K (f - Y)``, with ``K`` the NTK
(Jacot et al. 2018, "Neural Tangent Kernel", NeurIPS; Lee et al. 2019, "Wide
Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent",
NeurIPS, Eqs. 9-11)::

    f_train(t) = Y + exp(-η t K / N) (f_train(0) - Y)
    f_test(t)  = f_test(0) + K_* K^{-1} (I - exp(-η t K / N)) (Y - f_train(0))

Here ``η`` is ``learning_rate`` and ``t`` the continuous time in units of
gradient steps, so only ``η t`` matters (docs/dynamics.md). The matrix
exponential goes through one eigendecomposition ``K + λ I = V diag(e) V^T``
shared by every time, as neural-tangents does; ``t = None`` means ``t = ∞``
and goes through a Cholesky solve instead (kernel ridge regression).

Conventions follow neural-tangents 0.6.5 exactly: ``diag_reg`` is relative to
``trace(K) / n`` unless ``diag_reg_absolute_scale``; eigenvalues below 0 are
clipped to 0 inside the exponentials; ``trace_axes`` are the output axes the
kernel does not carry (it is ``K ⊗ I`` along them). Arrays may be NumPy or CuPy.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.linalg

from ..backend import to_numpy
from ..errors import InputError, NotPSDError

Axes = Union[int, Sequence[int]]
ArrayOrScalar = Union[None, int, float, Any]


class Gaussian(NamedTuple):
    """``(mean, covariance)`` of a Gaussian over the outputs (neural-tangents'
    ``predict.Gaussian``): ``mean`` has the outputs' shape, ``covariance`` the
    kernel's shape (with a leading time axis for an array of times)."""

    mean: Any
    covariance: Any


# ------------------------------------------------------------ array module
def native(*arrays: Any) -> Any:
    """NumPy, or CuPy when any of ``arrays`` is a CuPy array (the operations
    here need ``einsum``/``eigh``, which both modules have)."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy  # noqa: PLC0415 (optional dependency)

            return cupy
    return np


def is_array(a: Any) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")


# ------------------------------------------------------------ axes helpers
def canonical_trace_axes(trace_axes: Axes, ndim: int) -> Tuple[int, ...]:
    """``trace_axes`` of ``y_train`` as sorted negative axes (neural-tangents'
    ``canonicalize_axis`` followed by ``-ndim + a``)."""
    axes = [trace_axes] if isinstance(trace_axes, (int, np.integer)) else list(trace_axes)
    out = set()
    for a in axes:
        if not -ndim <= int(a) < ndim:
            raise InputError(f"trace_axes={trace_axes!r} is out of range for targets with {ndim} axes")
        out.add(int(a) % ndim)
    return tuple(a - ndim for a in sorted(out))


def make_2d(k: Any, xp: Any) -> Any:
    """A ``(X1, X2, Y1, Y2, ...)``-zipped kernel as a ``(X1·Y1·..., X2·Y2·...)`` matrix."""
    if k.ndim % 2:
        raise InputError(f"a kernel needs an even number of axes (x1 and x2 zipped); got shape {k.shape}")
    half = k.ndim // 2
    k = xp.moveaxis(k, tuple(range(1, k.ndim, 2)), tuple(range(half, k.ndim)))
    return k.reshape(int(math.prod(k.shape[:half])), int(math.prod(k.shape[half:])))


def zip_cov(cov: Any, n_lead: int, xp: Any) -> Any:
    """``(T..., X, Y, ..., X, Y, ...) -> (T..., X, X, Y, Y, ...)``."""
    n = cov.ndim - n_lead
    half = n // 2
    last = tuple(range(cov.ndim - half, cov.ndim))
    odd = tuple(range(n_lead + 1, cov.ndim, 2))
    return xp.moveaxis(cov, last, odd)


class Targets:
    """``y``-shaped arrays <-> ``(rows, traced)`` matrices: the kernel's axes
    are the non-traced axes of ``y`` (flattened into rows), the traced axes
    go last (flattened into columns)."""

    def __init__(self, y_shape: Tuple[int, ...], trace_axes: Axes):
        self.ndim = len(y_shape)
        self.axes = canonical_trace_axes(trace_axes, self.ndim)
        self.last = tuple(range(-len(self.axes), 0))
        self.trace_shape = tuple(y_shape[a] for a in self.axes)
        self.width = int(math.prod(self.trace_shape))

    def flat(self, y: Any, xp: Any) -> Any:
        return xp.moveaxis(y, self.axes, self.last).reshape(-1, self.width)

    def unflat(self, m: Any, lead: Tuple[int, ...], rows_shape: Tuple[int, ...], xp: Any) -> Any:
        out = m.reshape(lead + tuple(rows_shape) + self.trace_shape)
        return xp.moveaxis(out, self.last, self.axes)


# ------------------------------------------------------------ linear algebra
def regularized(k2: Any, diag_reg: float, absolute: bool, xp: Any) -> Any:
    """``K + diag_reg · I``, with ``diag_reg`` scaled by ``trace(K) / n`` unless
    ``absolute`` (neural-tangents' ``_add_diagonal_regularizer``)."""
    n = k2.shape[0]
    reg = diag_reg if absolute else diag_reg * xp.trace(k2) / n
    return k2 + reg * xp.eye(n, dtype=k2.dtype)


def eigenbasis(k2: Any, diag_reg: float, absolute: bool, xp: Any) -> Tuple[Any, Any]:
    """Eigenvalues (as a ``(1, n)`` row) and eigenvectors of the regularised ``K``."""
    evals, evecs = xp.linalg.eigh(regularized(k2, diag_reg, absolute, xp))
    return evals[None, :], evecs


def expm1_flow(evals: Any, t: Any, size: int, xp: Any) -> Any:
    """``exp(-max(λ, 0) t / N) - 1`` for times ``t`` of shape ``(T, 1)``."""
    return xp.expm1(-xp.maximum(evals, 0.0) * t / size)


def inv_expm1_flow(evals: Any, t: Any, size: int, xp: Any) -> Any:
    """``(exp(-max(λ, 0) t / N) - 1) / |λ|``; at ``λ = 0`` exactly its limit
    ``-t / N`` (neural-tangents divides and gets NaN there)."""
    num = expm1_flow(evals, t, size, xp)
    lam = xp.abs(evals)
    safe = xp.where(lam == 0, 1.0, lam)
    return xp.where(lam == 0, -xp.broadcast_to(t, num.shape) / size, num / safe)


def apply_in_eigenbasis(evecs: Any, fvals: Any, rhs: Any, xp: Any) -> Any:
    """``V diag(fvals[t]) V^T rhs`` for every time: ``(T, n, k)``."""
    return xp.einsum("ji,ti,ik->tjk", evecs, fvals, evecs.T @ rhs)


def cho_solver(k2: Any, diag_reg: float, absolute: bool, xp: Any,
               what: str = "the training kernel") -> Callable[[Any], Any]:
    """``B -> (K + reg I)^{-1} B`` by Cholesky; a clear error when ``K + reg I`` is
    not positive definite (neural-tangents would return NaN)."""
    a = regularized(k2, diag_reg, absolute, xp)
    hint = (f"{what} ({a.shape[0]}x{a.shape[1]}) plus diag_reg is not positive definite; pass a larger "
            "diag_reg (e.g. diag_reg=1e-4, relative to the mean diagonal) or check the kernel for NaN")
    if xp is np:
        try:
            factor = scipy.linalg.cho_factor(a, lower=False)
        except np.linalg.LinAlgError:
            raise NotPSDError(hint) from None
        return lambda b: scipy.linalg.cho_solve(factor, b)
    import cupyx.scipy.linalg as cla  # noqa: PLC0415 (optional dependency)

    low = xp.linalg.cholesky(a)
    if not bool(xp.all(xp.isfinite(low))):
        raise NotPSDError(hint)
    return lambda b: cla.solve_triangular(low.T, cla.solve_triangular(low, b, lower=True), lower=False)


def as_times(t: Any, learning_rate: float) -> Tuple[Tuple[int, ...], np.ndarray]:
    """``(shape of t, η·t as a (T, 1) column)``; NaN or negative times are errors."""
    arr = np.asarray(to_numpy(t) if is_array(t) else t, dtype=np.float64)
    if np.any(np.isnan(arr)) or np.any(arr < 0):
        raise InputError(f"training times must be >= 0 (inf allowed, or t=None for infinity); got {arr.tolist()}")
    return arr.shape, (arr * learning_rate).reshape(-1, 1)


def check_inputs(fx_train_0: Any, fx_test_0: Any, k_test_train: Any) -> None:
    if fx_train_0 is None and fx_test_0 is None:
        raise InputError("both fx_train_0 and fx_test_0 are None, so nothing would be predicted; pass "
                         "fx_train_0=0. for train predictions or fx_test_0 with k_test_train for test predictions")
    if fx_test_0 is not None and k_test_train is None:
        raise InputError("test predictions (fx_test_0 given) need k_test_train, the test-by-train kernel")


# ------------------------------------------------------------ gradient_descent_mse
def gradient_descent_mse(k_train_train: Any, y_train: Any, learning_rate: float = 1., diag_reg: float = 0.,
                         diag_reg_absolute_scale: bool = False, trace_axes: Axes = (-1,)) -> Callable[..., Any]:
    """Outputs of continuous-time gradient descent on the MSE at any time, in
    closed form (neural-tangents' ``predict.gradient_descent_mse``; Lee et al.
    2019, Eqs. 9-11; Jacot et al. 2018).

    ``k_train_train``: the kernel on the training inputs, shape
    ``zip(y_train.shape, y_train.shape)`` without ``trace_axes`` (``(n, n)``
    for ``y_train`` of shape ``(n, k)``). ``learning_rate`` η; the flow is
    ``exp(-η t K / N)`` with ``N = y_train.size``. ``diag_reg``: added to the
    diagonal, times ``trace(K)/n`` unless ``diag_reg_absolute_scale``.

    Returns ``predict_fn(t=None, fx_train_0=0., fx_test_0=None,
    k_test_train=None)``: ``t`` a scalar or an array of times (outputs gain
    its shape as leading axes), ``None`` for ``t = ∞``; ``fx_train_0`` /
    ``fx_test_0`` the outputs at ``t = 0`` (``None``: skip that set). It
    returns ``fx_train_t``, ``fx_test_t`` or ``(fx_train_t, fx_test_t)``.
    The eigendecomposition (finite ``t``) and the Cholesky factor (``t=None``)
    are computed on first use and cached.
    """
    xp = native(k_train_train, y_train)
    targets = Targets(tuple(y_train.shape), trace_axes)
    if k_train_train.ndim != 2 * (targets.ndim - len(targets.axes)):
        raise InputError(f"k_train_train has shape {k_train_train.shape} but y_train {y_train.shape} with "
                         f"trace_axes={trace_axes!r} needs {2 * (targets.ndim - len(targets.axes))} kernel axes")
    size = int(math.prod(y_train.shape))
    k2 = make_2d(k_train_train, xp)
    rows = tuple(k_train_train.shape[::2])
    cache: Dict[str, Any] = {}

    def eig():
        if "eig" not in cache:
            cache["eig"] = eigenbasis(k2, diag_reg, diag_reg_absolute_scale, xp)
        return cache["eig"]

    def solve():
        if "solve" not in cache:
            cache["solve"] = cho_solver(k2, diag_reg, diag_reg_absolute_scale, xp)
        return cache["solve"]

    def test_rows(k_test_train: Any) -> Tuple[Any, Tuple[int, ...]]:
        k_td = make_2d(xp.asarray(k_test_train), xp)
        if k_td.shape[1] != k2.shape[0]:
            raise InputError(f"k_test_train has shape {k_test_train.shape}; its train axes must match "
                             f"k_train_train {k_train_train.shape}")
        return k_td, tuple(k_test_train.shape[::2])

    def predict_inf(fx_train_0, fx_test_0, k_test_train):
        fx_train_t = xp.asarray(y_train).astype(k2.dtype)
        if fx_test_0 is None:
            return fx_train_t
        rhs = y_train if fx_train_0 is None else y_train - fx_train_0
        k_td, test_shape = test_rows(k_test_train)
        flat = k_td @ solve()(targets.flat(xp.broadcast_to(rhs, y_train.shape), xp))
        fx_test_t = fx_test_0 + targets.unflat(flat, (), test_shape, xp)
        return fx_test_t if fx_train_0 is None else (fx_train_t, fx_test_t)

    def predict_finite(t, fx_train_0, fx_test_0, k_test_train):
        t_shape, tt = as_times(t, learning_rate)
        tt = xp.asarray(tt, dtype=k2.dtype)
        evals, evecs = eig()
        rhs = -y_train if fx_train_0 is None else fx_train_0 - y_train
        rhs = targets.flat(xp.broadcast_to(rhs, y_train.shape), xp)
        out = []
        if fx_train_0 is not None:
            d = apply_in_eigenbasis(evecs, expm1_flow(evals, tt, size, xp), rhs, xp)
            out.append(fx_train_0 + targets.unflat(d, t_shape, rows, xp))
        if fx_test_0 is not None:
            k_td, test_shape = test_rows(k_test_train)
            d = apply_in_eigenbasis(evecs, inv_expm1_flow(evals, tt, size, xp), rhs, xp)
            out.append(fx_test_0 + targets.unflat(xp.matmul(k_td, d), t_shape, test_shape, xp))
        return out[0] if len(out) == 1 else tuple(out)

    def predict_fn(t: Optional[ArrayOrScalar] = None, fx_train_0: ArrayOrScalar = 0.,
                   fx_test_0: Optional[ArrayOrScalar] = None, k_test_train: Optional[Any] = None) -> Any:
        """Train [and test] outputs at time(s) ``t`` (``None``: ``t = ∞``)."""
        check_inputs(fx_train_0, fx_test_0, k_test_train)
        if t is None:
            return predict_inf(fx_train_0, fx_test_0, k_test_train)
        return predict_finite(t, fx_train_0, fx_test_0, k_test_train)

    return predict_fn


def max_learning_rate(ntk_train_train: Any, y_train_size: Optional[int] = None, momentum: float = 0.,
                      eps: float = 1e-12) -> float:
    """The largest learning rate at which gradient descent (with ``momentum``) on
    ``1/(2N) ||f - y||²`` still converges for an infinitely wide network:
    ``2 (1 + momentum) N / (λ_max(NTK) + eps)`` (neural-tangents'
    ``predict.max_learning_rate``; Lee et al. 2019, Sec. 2.2 and App. G;
    momentum: Goh 2017, "Why Momentum Really Works"). ``N`` is
    ``y_train_size``, or the NTK's row count when None (``trace_axes=()``)."""
    xp = native(ntk_train_train)
    k2 = make_2d(ntk_train_train, xp)
    factor = k2.shape[0] if y_train_size is None else y_train_size
    if xp is np:
        n = k2.shape[0]
        top = scipy.linalg.eigh(k2, eigvals_only=True, subset_by_index=(n - 1, n - 1))[-1]
    else:
        top = xp.linalg.eigvalsh(k2)[-1]
    return float(2 * (1 + momentum) * factor / (float(top) + eps))
