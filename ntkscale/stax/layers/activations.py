"""Elementwise nonlinearities: closed-form dual activations.

For (u, v) ~ N(0, [[q, c], [c, q']]) each activation gives
K = E[φ(u)φ(v)] and K̇ = E[φ'(u)φ'(v)]; then Θ ← Θ·K̇ (Jacot et al. 2018).
One general closed form per family, thin wrappers for the special cases:
``Relu`` = ``ABRelu(0, 1)``, ``LeakyRelu(α)`` = ``ABRelu(α, 1)``,
``Abs`` = ``ABRelu(-1, 1)`` (arc-cosine kernel, Cho & Saul 2009; leaky form,
Tsuchida et al. 2018), ``Erf`` (Williams 1997), ``Gelu`` (Tsuchida et al.
2021, arXiv:2002.08517), ``Sin`` (Pearce et al. 2020).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np
from scipy import special

from .base import PARALLEL_TOLERANCE_EPS, LayerImpl, Shape
from ..network import Layer, make_layer
from ..spec import Param, register
from ..state import KernelState

Array = Any



def _eps(xp: Any, x: Array) -> float:
    return float(xp.finfo(x.dtype).eps)


def cosine(cov: Array, q1: Array, q2: Array, xp: Any) -> Tuple[Array, Array, Array]:
    """``(norm, rho, sin)`` with norm = √(q q'), rho = c / norm clipped to
    [-1, 1] and snapped to ±1 near (anti)parallel pairs, sin = √(1 − rho²).

    Zero-norm inputs give rho = 0 (θ = π/2), never NaN.
    """
    norm = xp.sqrt(q1 * q2)
    safe = xp.where(norm > 0, norm, xp.ones_like(norm))
    rho = xp.clip(cov / safe, -1.0, 1.0)
    tol = PARALLEL_TOLERANCE_EPS * _eps(xp, rho)
    one = xp.ones_like(rho)
    rho = xp.where(rho > 1.0 - tol, one, rho)
    rho = xp.where(rho < -1.0 + tol, -one, rho)
    sin = xp.sqrt((1.0 - rho) * (1.0 + rho))
    return norm, rho, sin


def gap(cov: Array, q1: Array, q2: Array, xp: Any) -> Array:
    """q q' − c² ≥ 0, computed without cancellation for near-parallel pairs."""
    norm, _, sin = cosine(cov, q1, q2, xp)
    return (norm * sin) ** 2


class Elementwise(LayerImpl):
    """An activation: ``dual`` (cross pairs) and ``dual_diag`` (x with itself)."""

    elementwise = True
    #: Only ``Identity`` keeps Gaussian activations Gaussian (neural-tangents' ``is_gaussian``).
    keeps_gaussian = False

    def dual(self, cov: Array, q1: Array, q2: Array, xp: Any,
             want_dot: bool) -> Tuple[Array, Optional[Array]]:  # pragma: no cover
        raise NotImplementedError

    def dual_diag(self, var: Array, xp: Any) -> Array:
        return self.dual(var, var, var, xp, False)[0]

    def kernel(self, state: KernelState, xp: Any) -> KernelState:
        q1, q2 = state.pair_variances(xp)
        nngp, dot = self.dual(state.nngp, q1, q2, xp, state.ntk is not None)
        ntk = None if state.ntk is None else state.ntk * dot
        gaussian = state.gaussian and self.keeps_gaussian
        return state.replace(nngp=nngp, ntk=ntk, gaussian=gaussian).map_variances(lambda v: self.dual_diag(v, xp))

    def fn(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def derivative(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover
        """``φ'(x)`` of the finite-width activation (the NTK's backward pass)."""
        raise NotImplementedError

    def apply(self, params: Any, x: np.ndarray) -> np.ndarray:
        return self.fn(x)


_STABILIZE = {"do_stabilize": Param(False, "bool")}


class _ABReluFamily(Elementwise):
    """``a·min(x, 0) + b·max(x, 0)``: K = A c + F (s − θ c)·√(q q'), with
    A = (a² + b²)/2, F = (a − b)²/2π, θ the angle between the inputs
    (Cho & Saul 2009; Tsuchida et al. 2018). ``do_stabilize`` only rescales
    in neural-tangents; the cosine form here is scale-free already.
    """

    def slopes(self) -> Tuple[float, float]:  # pragma: no cover
        raise NotImplementedError

    def dual(self, cov, q1, q2, xp, want_dot):
        a, b = self.slopes()
        big_a = (a * a + b * b) / 2.0
        f = (a - b) ** 2 / (2.0 * math.pi)
        norm, rho, sin = cosine(cov, q1, q2, xp)
        theta = xp.atan2(sin, rho)
        dot = big_a - f * theta
        return norm * (f * sin + dot * rho), (dot if want_dot else None)

    def dual_diag(self, var, xp):
        a, b = self.slopes()
        return ((a * a + b * b) / 2.0) * var

    def fn(self, x):
        a, b = self.slopes()
        return a * np.minimum(x, 0) + b * np.maximum(x, 0)

    def derivative(self, x):
        a, b = self.slopes()
        return np.where(x > 0, b, a)


@register("ABRelu", {"a": Param(None, "float", required=True),
                     "b": Param(None, "float", required=True), **_STABILIZE})
class ABReluImpl(_ABReluFamily):
    def slopes(self):
        return self.params["a"], self.params["b"]


@register("Relu", dict(_STABILIZE))
class ReluImpl(_ABReluFamily):
    def slopes(self):
        return 0.0, 1.0


@register("LeakyRelu", {"alpha": Param(None, "float", required=True), **_STABILIZE})
class LeakyReluImpl(_ABReluFamily):
    def slopes(self):
        return self.params["alpha"], 1.0


@register("Abs", dict(_STABILIZE))
class AbsImpl(_ABReluFamily):
    def slopes(self):
        return -1.0, 1.0


@register("Erf", {"a": Param(1.0, "float"), "b": Param(1.0, "float"), "c": Param(0.0, "float")})
class ErfImpl(Elementwise):
    """``a·erf(b·x) + c`` (Williams 1997):
    K = a²·(2/π)·atan2(2c̃, √D) + c², K̇ = a²b²·(4/π)/√D,
    D = (1 + 2q̃)(1 + 2q̃') − 4c̃², tildes scaled by b².
    """

    def coefficients(self) -> Tuple[float, float, float]:
        """``(a, b, c)`` of ``a·erf(b·x) + c``."""
        return self.params["a"], self.params["b"], self.params["c"]

    def dual(self, cov, q1, q2, xp, want_dot):
        a, b, shift = self.coefficients()
        b2 = b * b
        det = 1.0 + 2.0 * b2 * (q1 + q2) + 4.0 * b2 * b2 * gap(cov, q1, q2, xp)
        root = xp.sqrt(det)
        nngp = (a * a * 2.0 / math.pi) * xp.atan2(2.0 * b2 * cov, root) + shift * shift
        dot = (a * a * b2 * 4.0 / math.pi) / root if want_dot else None
        return nngp, dot

    def dual_diag(self, var, xp):
        a, b, shift = self.coefficients()
        v = b * b * var
        return (a * a * 2.0 / math.pi) * xp.atan2(2.0 * v, xp.sqrt(1.0 + 4.0 * v)) + shift * shift

    def fn(self, x):
        a, b, shift = self.coefficients()
        return a * special.erf(b * x) + shift

    def derivative(self, x: np.ndarray) -> np.ndarray:
        a, b, _ = self.coefficients()
        return a * b * (2.0 / math.sqrt(math.pi)) * np.exp(-(b * x) ** 2)


@register("Gelu", {"approximate": Param(False, "bool", supported=(False,))})
class GeluImpl(Elementwise):
    """``x·Φ(x)`` (exact GELU), closed form of Tsuchida et al. 2021
    (arXiv:2002.08517), with δ² = (q + 1)(q' + 1) − c²."""

    def dual(self, cov, q1, q2, xp, want_dot):
        prod = q1 * q2
        prod1 = (q1 + 1.0) * (q2 + 1.0)
        delta2 = gap(cov, q1, q2, xp) + q1 + q2 + 1.0
        delta = xp.sqrt(delta2)
        angle = xp.atan2(cov, delta)
        nngp = 0.25 * cov + ((cov * cov + prod * delta2) / (prod1 * delta) + cov * angle) / (2.0 * math.pi)
        dot = None
        if want_dot:
            first = (1.0 / delta2 + (1.0 - prod) / prod1 + 1.0) * cov / (delta * 2.0 * math.pi)
            dot = first + 0.25 + angle / (2.0 * math.pi)
        return nngp, dot

    def dual_diag(self, var, xp):
        root = xp.sqrt(1.0 + 2.0 * var)
        inner = var / ((var + 1.0) * root) + xp.atan2(var, root) / 2.0
        return var * (inner / math.pi + 0.25)

    def fn(self, x):
        return x * special.ndtr(x)

    def derivative(self, x):
        return special.ndtr(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


@register("Sin", {"a": Param(1.0, "float"), "b": Param(1.0, "float"), "c": Param(0.0, "float")})
class SinImpl(Elementwise):
    """``a·sin(b·x + c)``: K = a²/2·(e^{b²(c̃ − s/2)} − e^{−b²(c̃ + s/2)} cos 2c),
    K̇ = a²b²/2·(the same with +), s = q + q' (Pearce et al. 2020)."""

    def coefficients(self) -> Tuple[float, float, float]:
        """``(a, b, c)`` of ``a·sin(b·x + c)``."""
        return self.params["a"], self.params["b"], self.params["c"]

    def dual(self, cov, q1, q2, xp, want_dot):
        a, b, phase = self.coefficients()
        b2 = b * b
        half_sum = 0.5 * (q1 + q2)
        s1 = xp.exp(b2 * (cov - half_sum))
        s2 = xp.exp(-b2 * (cov + half_sum)) * math.cos(2.0 * phase)
        nngp = (a * a / 2.0) * (s1 - s2)
        dot = (a * a * b2 / 2.0) * (s1 + s2) if want_dot else None
        return nngp, dot

    def dual_diag(self, var, xp):
        a, b, phase = self.coefficients()
        return (a * a / 2.0) * (1.0 - xp.exp(-2.0 * b * b * var) * math.cos(2.0 * phase))

    def fn(self, x):
        a, b, phase = self.coefficients()
        return a * np.sin(b * x + phase)

    def derivative(self, x: np.ndarray) -> np.ndarray:
        a, b, phase = self.coefficients()
        return a * b * np.cos(b * x + phase)


@register("Identity", {})
class IdentityImpl(Elementwise):
    """φ(x) = x: K = c, K̇ = 1."""

    keeps_gaussian = True

    def dual(self, cov, q1, q2, xp, want_dot):
        return cov, (1.0 if want_dot else None)

    def dual_diag(self, var, xp):
        return var

    def fn(self, x):
        return x

    def derivative(self, x):
        return np.ones_like(x)

    def flops_per_entry(self, state_shape: Shape) -> float:
        return 0.0


def _make(name: str, **kwargs: Any) -> Layer:
    return make_layer(name, kwargs)


def ABRelu(a: float, b: float, do_stabilize: bool = False) -> Layer:
    """``a·min(x, 0) + b·max(x, 0)``."""
    return _make("ABRelu", a=a, b=b, do_stabilize=do_stabilize)


def Relu(do_stabilize: bool = False) -> Layer:
    """ReLU, ``ABRelu(0, 1)``; no factor 2 inside (He scaling is ``W_std=√2``)."""
    return _make("Relu", do_stabilize=do_stabilize)


def LeakyRelu(alpha: float, do_stabilize: bool = False) -> Layer:
    """``alpha·min(x, 0) + max(x, 0)``."""
    return _make("LeakyRelu", alpha=alpha, do_stabilize=do_stabilize)


def Abs(do_stabilize: bool = False) -> Layer:
    """``|x|`` = ``ABRelu(-1, 1)``."""
    return _make("Abs", do_stabilize=do_stabilize)


def Erf(a: float = 1.0, b: float = 1.0, c: float = 0.0) -> Layer:
    """``a·erf(b·x) + c``."""
    return _make("Erf", a=a, b=b, c=c)


def Gelu(approximate: bool = False) -> Layer:
    """Exact GELU ``x·Φ(x)``; ``approximate=True`` is not supported yet."""
    return _make("Gelu", approximate=approximate)


def Sin(a: float = 1.0, b: float = 1.0, c: float = 0.0) -> Layer:
    """``a·sin(b·x + c)``."""
    return _make("Sin", a=a, b=b, c=c)


def Identity() -> Layer:
    """``x``."""
    return _make("Identity")
