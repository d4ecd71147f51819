"""``ElementwiseNumerical``: the dual of any activation by Gauss–Hermite quadrature.

For (u, v) ~ N(0, [[q, c], [c, q']]) write u = √(2q)·x, v = √2·c/√q·x + √(2(qq' − c²)/q)·y
with x, y ~ N(0, 1/2); then with the ``deg`` Gauss–Hermite nodes x_i and weights w_i

    I(q, q', c) = (1/π)·Σ_ij w_i w_j φ(u_i) φ(v_ij),   K(x, x) = (1/√π)·Σ_i w_i φ(√(2q) x_i)²

(Han et al. 2022, "Fast Neural Kernel Embeddings for General Activations",
arXiv:2209.04121, §4; neural-tangents 0.6.5's ``ElementwiseNumerical``), and K̇ the
same with φ'. The rule conditions on u, so I(q, q', c) ≠ I(q', q, c) by the
quadrature error; neural-tangents returns I, which makes its Gram matrices slightly
non-symmetric. ntkscale returns I for every pair of a cross kernel (x1 ≠ x2), and for
x2 = x1 the upper triangle of neural-tangents' matrix mirrored onto the lower one, as
its image path and compiled paths do for every layer: a symmetric Gram, equal to what
a Gram store (which mirrors its off-diagonal blocks) holds. The error falls fast with ``deg`` for smooth φ (25 is a good start);
kinks (relu, abs) converge slowly.

A spec is data, so φ is a NAME from :data:`FUNCTIONS` (each with its exact
derivative, used for the NTK unless ``df`` names another entry). A Python
callable cannot be written into a spec, a Gram store or a Dask task, so it is
refused with the list of names.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
from scipy import special

from ...backend import is_cupy_namespace, is_numpy_namespace, to_numpy
from ...errors import SpecError
from .activations import Elementwise, gap
from ..network import Layer, make_layer
from ..spec import Param, register

Fn = Callable[[Any, Any], Any]

#: SELU's constants (Klambauer et al. 2017), as ``jax.nn.selu``.
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
#: ``leaky_relu``'s negative slope, as ``jax.nn.leaky_relu``'s default.
LEAKY_SLOPE = 0.01
_GELU_TANH = math.sqrt(2.0 / math.pi)


def _erf(x: Any, xp: Any) -> Any:
    """erf on any namespace: SciPy for NumPy, cupyx for CuPy, else through NumPy."""
    if is_numpy_namespace(xp):
        return special.erf(x)
    if is_cupy_namespace(xp):
        from cupyx.scipy import special as cupy_special  # optional dependency
        return cupy_special.erf(x)
    return xp.asarray(special.erf(to_numpy(x)), dtype=x.dtype)


def _sigmoid(x: Any, xp: Any) -> Any:
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(x: Any, xp: Any) -> Any:
    return xp.logaddexp(x, xp.zeros_like(x))


def _ndtr(x: Any, xp: Any) -> Any:
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0), xp))


def _gelu_tanh(x: Any, xp: Any) -> Tuple[Any, Any]:
    t = xp.tanh(_GELU_TANH * (x + 0.044715 * x ** 3))
    dt = (1.0 - t * t) * _GELU_TANH * (1.0 + 3.0 * 0.044715 * x * x)
    return 0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * dt


def _one(x: Any, xp: Any) -> Any:
    return xp.ones_like(x)


def _step(x: Any, xp: Any, low: float, high: float) -> Any:
    return xp.where(x > 0, xp.zeros_like(x) + high, xp.zeros_like(x) + low)


#: The activations ``ElementwiseNumerical`` knows: name -> (φ, φ', definition), each
#: a function of ``(x, xp)`` on an array of namespace ``xp``. Same formulas as ``jax.nn``.
FUNCTIONS: Dict[str, Tuple[Fn, Fn, str]] = {
    "abs": (lambda x, xp: xp.abs(x), lambda x, xp: xp.sign(x), "|x|"),
    "cos": (lambda x, xp: xp.cos(x), lambda x, xp: -xp.sin(x), "cos(x)"),
    "elu": (lambda x, xp: xp.where(x > 0, x, xp.expm1(xp.where(x > 0, xp.zeros_like(x), x))),
            lambda x, xp: xp.where(x > 0, xp.ones_like(x), xp.exp(xp.where(x > 0, xp.zeros_like(x), x))),
            "x for x > 0, exp(x) − 1 otherwise (jax.nn.elu, alpha = 1)"),
    "erf": (_erf, lambda x, xp: (2.0 / math.sqrt(math.pi)) * xp.exp(-x * x), "erf(x)"),
    "exp": (lambda x, xp: xp.exp(x), lambda x, xp: xp.exp(x), "exp(x)"),
    "gelu": (lambda x, xp: x * _ndtr(x, xp),
             lambda x, xp: _ndtr(x, xp) + x * xp.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi),
             "x·Φ(x), the exact GELU (jax.nn.gelu(approximate=False))"),
    "gelu_tanh": (lambda x, xp: _gelu_tanh(x, xp)[0], lambda x, xp: _gelu_tanh(x, xp)[1],
                  "x/2·(1 + tanh(√(2/π)(x + 0.044715x³))) (jax.nn.gelu(approximate=True))"),
    "hard_tanh": (lambda x, xp: xp.clip(x, -1.0, 1.0),
                  lambda x, xp: xp.where(xp.abs(x) < 1.0, xp.ones_like(x), xp.zeros_like(x)),
                  "clip(x, −1, 1)"),
    "identity": (lambda x, xp: x, _one, "x"),
    "leaky_relu": (lambda x, xp: xp.where(x > 0, x, LEAKY_SLOPE * x),
                   lambda x, xp: _step(x, xp, LEAKY_SLOPE, 1.0),
                   f"x for x > 0, {LEAKY_SLOPE}·x otherwise (jax.nn.leaky_relu)"),
    "mish": (lambda x, xp: x * xp.tanh(_softplus(x, xp)),
             lambda x, xp: (xp.tanh(_softplus(x, xp))
                            + x * (1.0 - xp.tanh(_softplus(x, xp)) ** 2) * _sigmoid(x, xp)),
             "x·tanh(softplus(x)) (Misra 2019)"),
    "relu": (lambda x, xp: xp.where(x > 0, x, xp.zeros_like(x)),
             lambda x, xp: _step(x, xp, 0.0, 1.0), "max(x, 0)"),
    "selu": (lambda x, xp: SELU_SCALE * xp.where(
                 x > 0, x, SELU_ALPHA * xp.expm1(xp.where(x > 0, xp.zeros_like(x), x))),
             lambda x, xp: SELU_SCALE * xp.where(
                 x > 0, xp.ones_like(x), SELU_ALPHA * xp.exp(xp.where(x > 0, xp.zeros_like(x), x))),
             "1.0507·(x for x > 0, 1.6733·(exp(x) − 1) otherwise) (jax.nn.selu)"),
    "sigmoid": (_sigmoid, lambda x, xp: _sigmoid(x, xp) * (1.0 - _sigmoid(x, xp)), "1/(1 + exp(−x))"),
    "silu": (lambda x, xp: x * _sigmoid(x, xp),
             lambda x, xp: _sigmoid(x, xp) * (1.0 + x * (1.0 - _sigmoid(x, xp))),
             "x·sigmoid(x) (the same function as swish)"),
    "sin": (lambda x, xp: xp.sin(x), lambda x, xp: xp.cos(x), "sin(x)"),
    "softplus": (_softplus, _sigmoid, "log(1 + exp(x))"),
    "softsign": (lambda x, xp: x / (1.0 + xp.abs(x)), lambda x, xp: 1.0 / (1.0 + xp.abs(x)) ** 2,
                 "x/(1 + |x|)"),
    "swish": (lambda x, xp: x * _sigmoid(x, xp),
              lambda x, xp: _sigmoid(x, xp) * (1.0 + x * (1.0 - _sigmoid(x, xp))),
              "x·sigmoid(x) (Ramachandran et al. 2017; jax.nn.swish)"),
    "tanh": (lambda x, xp: xp.tanh(x), lambda x, xp: 1.0 - xp.tanh(x) ** 2, "tanh(x)"),
}
FUNCTION_NAMES = tuple(sorted(FUNCTIONS))


@register("ElementwiseNumerical", {
    "fn": Param(None, "str", choices=FUNCTION_NAMES, required=True),
    "deg": Param(None, "int", required=True),
    "df": Param(None, "str", choices=(None,) + FUNCTION_NAMES),
})
class ElementwiseNumericalImpl(Elementwise):
    """Gauss–Hermite dual of the registry function ``fn`` with ``deg`` nodes (see the
    module docstring); ``df`` (a registry name) replaces the NTK's derivative."""

    def __init__(self, params):
        super().__init__(params)
        self.phi = FUNCTIONS[params["fn"]][0]
        # φ' for the NTK: the registry's exact derivative of fn, or the function df names
        df = params["df"]
        self.dphi = FUNCTIONS[params["fn"]][1] if df is None else FUNCTIONS[df][0]
        nodes, weights = special.roots_hermite(int(params["deg"]))
        self.nodes = [float(v) for v in nodes]
        self.weights = [float(v) for v in weights]

    def _integrate(self, f: Fn, cov: Any, q1: Any, q2: Any, xp: Any) -> Any:
        pos = q1 > 0
        q1s = xp.where(pos, q1, xp.ones_like(q1))
        lead = math.sqrt(2.0) * xp.where(pos, cov / xp.sqrt(q1s), xp.zeros_like(cov))
        rest = xp.sqrt(2.0 * xp.where(pos, gap(cov, q1, q2, xp) / q1s, q2 + xp.zeros_like(q1)))
        root1 = xp.sqrt(2.0 * q1)
        total = None
        for x, w in zip(self.nodes, self.weights):
            inner = None
            shift = lead * x
            for y, v in zip(self.nodes, self.weights):
                term = v * f(shift + rest * y, xp)
                inner = term if inner is None else inner + term
            term = w * f(root1 * x, xp) * inner
            total = term if total is None else total + term
        return total / math.pi

    def dual(self, cov, q1, q2, xp, want_dot):
        nngp = self._integrate(self.phi, cov, q1, q2, xp)
        dot = self._integrate(self.dphi, cov, q1, q2, xp) if want_dot else None
        return nngp, dot

    @staticmethod
    def _offset(state: Any) -> Optional[int]:
        """Where x2 = x1 puts the diagonal of a flat pair state (``diag_offset``; 0 for a
        ``symmetric`` state without one), or None for a cross state."""
        if state.diagonal_batch or state.spatial is not None:
            return None
        if state.diag_offset is not None:
            return state.diag_offset
        return 0 if state.symmetric and state.nngp.shape[0] == state.nngp.shape[1] else None

    def kernel(self, state, xp):
        """For x2 = x1 the flat entries below the diagonal use the swapped order
        I(q', q, c): the Gram is symmetric and its upper triangle is neural-tangents'
        (the image path mirrors its upper tiles the same way)."""
        offset = self._offset(state)
        if offset is None:
            return super().kernel(state, xp)
        q1, q2 = state.pair_variances(xp)
        n1, n2 = state.nngp.shape
        rows = xp.reshape(xp.arange(n1), (n1, 1)) + offset
        lower = xp.reshape(xp.arange(n2), (1, n2)) < rows
        want = state.ntk is not None
        upper = self.dual(state.nngp, q1, q2, xp, want)
        swapped = self.dual(state.nngp, q2, q1, xp, want)
        nngp = xp.where(lower, swapped[0], upper[0])
        ntk = None if not want else state.ntk * xp.where(lower, swapped[1], upper[1])
        return state.replace(nngp=nngp, ntk=ntk, gaussian=False).map_variances(
            lambda v: self.dual_diag(v, xp))

    def dual_diag(self, var, xp):
        root = xp.sqrt(2.0 * var)
        total = None
        for x, w in zip(self.nodes, self.weights):
            term = w * self.phi(root * x, xp) ** 2
            total = term if total is None else total + term
        return total / math.sqrt(math.pi)

    def fn(self, x):
        return self.phi(x, np)

    def derivative(self, x):
        return self.dphi(x, np)

    def flops_per_entry(self, state_shape):
        deg = int(self.params["deg"])
        return 60.0 * deg * deg * float(np.prod(state_shape or (1,)))


def ElementwiseNumerical(fn: str, deg: int, df: Optional[str] = None) -> Layer:
    """Any activation by Gauss–Hermite quadrature of ``deg`` points; ``fn`` (and the
    optional ``df``) are names from :data:`FUNCTIONS` (neural-tangents takes callables,
    but a spec is data)."""
    for key, value in (("fn", fn), ("df", df)):
        if callable(value):
            raise SpecError(
                f"ElementwiseNumerical({key}={getattr(value, '__name__', value)!r}): a network spec is "
                "data, so the function must be named; choose one of "
                f"{', '.join(FUNCTION_NAMES)} (docs/layers.md lists their definitions)")
    return make_layer("ElementwiseNumerical", {"fn": fn, "deg": deg, "df": df})
