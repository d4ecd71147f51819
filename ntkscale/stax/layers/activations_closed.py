"""More closed-form dual activations, as in neural-tangents 0.6.5.

Same conventions as ``activations``: for (u, v) ~ N(0, [[q, c], [c, q']]) each
layer gives K = E[φ(u)φ(v)] and K̇ = E[φ'(u)φ'(v)], and Θ ← Θ·K̇ (Jacot et al.
2018). Sources of the closed forms:

- ``Sigmoid_like``: ``Erf(0.5, 1/2.4020563531719796, 0.5)`` (Williams 1997);
- ``Cos``: ``Sin`` with the phase shifted by π/2 (Pearce et al. 2020);
- ``Rbf``: φ(x) = √2·sin(√(2γ)x + π/4), K = exp(−γ(q + q' − 2c)), the random
  Fourier features of the RBF kernel (Rahimi & Recht 2007);
- ``Exp``, ``Gaussian``: Gaussian integrals of a·exp(bx) and a·exp(bx²)
  (e.g. Williams 1997, §3; Han et al. 2022, arXiv:2209.04121);
- ``ExpNormalized``: the "Gaussian normalized kernel" of Shankar et al. 2020
  (arXiv:2003.02237, p. 6), a kernel map without a finite-width network;
- ``Sign``: the arc-cosine kernel of degree 0, K = 1 − 2θ/π (Cho & Saul 2009);
- ``Gabor``: exp(−x²)·sin(x), neural-tangents' closed form.
"""

from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np

from ...errors import InputError, UnsupportedOptionError
from .activations import Elementwise, ErfImpl, SinImpl, cosine, gap
from ..network import Layer, make_layer
from ..spec import Param, register

#: The constant of neural-tangents' ``Sigmoid_like``: erf(x / s) / 2 + 1/2 ≈ sigmoid(x).
SIGMOID_LIKE_SCALE = 2.4020563531719796
_ABC = {"a": Param(1.0, "float"), "b": Param(1.0, "float"), "c": Param(0.0, "float")}


@register("Sigmoid_like", {})
class SigmoidLikeImpl(ErfImpl):
    """``0.5·erf(x / 2.4020563531719796) + 0.5``, a sigmoid fitted on [−5, 5]."""

    def coefficients(self) -> Tuple[float, float, float]:
        return 0.5, 1.0 / SIGMOID_LIKE_SCALE, 0.5


@register("Cos", dict(_ABC))
class CosImpl(SinImpl):
    """``a·cos(b·x + c)`` = ``a·sin(b·x + c + π/2)``."""

    def coefficients(self) -> Tuple[float, float, float]:
        return self.params["a"], self.params["b"], self.params["c"] + math.pi / 2.0


@register("Rbf", {"gamma": Param(1.0, "float")})
class RbfImpl(Elementwise):
    """φ(x) = √2·sin(√(2γ)·x + π/4): K = exp(−γ(q + q' − 2c)), K̇ = 2γ·K;
    K(x, x) = 1 (Rahimi & Recht 2007)."""

    def dual(self, cov, q1, q2, xp, want_dot):
        gamma = self.params["gamma"]
        nngp = xp.exp(gamma * (2.0 * cov - q1 - q2))
        return nngp, (2.0 * gamma * nngp if want_dot else None)

    def dual_diag(self, var, xp):
        return xp.ones_like(var)

    def fn(self, x):
        g = self.params["gamma"]
        return math.sqrt(2.0) * np.sin(math.sqrt(2.0 * g) * x + math.pi / 4.0)

    def derivative(self, x):
        g = self.params["gamma"]
        return 2.0 * math.sqrt(g) * np.cos(math.sqrt(2.0 * g) * x + math.pi / 4.0)


@register("Exp", {"a": Param(1.0, "float"), "b": Param(1.0, "float")})
class ExpImpl(Elementwise):
    """``a·exp(b·x)``: K = a²·exp(b²((q + q')/2 + c)), K̇ = b²·K."""

    def dual(self, cov, q1, q2, xp, want_dot):
        a, b = self.params["a"], self.params["b"]
        nngp = (a * a) * xp.exp((b * b) * (0.5 * (q1 + q2) + cov))
        return nngp, ((b * b) * nngp if want_dot else None)

    def dual_diag(self, var, xp):
        a, b = self.params["a"], self.params["b"]
        return (a * a) * xp.exp(2.0 * b * b * var)

    def fn(self, x):
        return self.params["a"] * np.exp(self.params["b"] * x)

    def derivative(self, x):
        return self.params["a"] * self.params["b"] * np.exp(self.params["b"] * x)


@register("Gaussian", {"a": Param(1.0, "float"), "b": Param(-1.0, "float")})
class GaussianImpl(Elementwise):
    """``a·exp(b·x²)``: with D = (1 − 2bq)(1 − 2bq') − 4b²c²,
    K = a²/√D and K̇ = a²·4b²c/D^{3/2}. For b > 0 the integral is finite only
    while every variance q < 1/(4b); larger inputs are refused."""

    def _check(self, var: Any, xp: Any) -> None:
        b = self.params["b"]
        if b <= 0 or var is None:
            return
        top = float(xp.max(var))
        if top * 4.0 * b >= 1.0:
            raise InputError(
                f"Gaussian(a={self.params['a']}, b={b}): E[exp(b·u²)²] diverges for an input "
                f"variance q >= 1/(4b) = {0.25 / b:.6g}, and this layer's input has q = {top:.6g}; "
                "use b < 0 (the default is -1) or scale the inputs/weights down")

    def kernel(self, state, xp):
        self._check(state.var1, xp)
        self._check(state.var2, xp)
        return super().kernel(state, xp)

    def dual(self, cov, q1, q2, xp, want_dot):
        a, b = self.params["a"], self.params["b"]
        det = 1.0 - 2.0 * b * (q1 + q2) + 4.0 * b * b * gap(cov, q1, q2, xp)
        root = xp.sqrt(det)
        nngp = (a * a) / root
        dot = (a * a * 4.0 * b * b) * cov / (root * det) if want_dot else None
        return nngp, dot

    def dual_diag(self, var, xp):
        a, b = self.params["a"], self.params["b"]
        return (a * a) / xp.sqrt(1.0 - 4.0 * b * var)

    def fn(self, x):
        return self.params["a"] * np.exp(self.params["b"] * x * x)

    def derivative(self, x):
        a, b = self.params["a"], self.params["b"]
        return 2.0 * a * b * x * np.exp(b * x * x)


@register("ExpNormalized", {"gamma": Param(1.0, "float"), "shift": Param(-1.0, "float"),
                            "do_clip": Param(False, "bool")})
class ExpNormalizedImpl(Elementwise):
    """Shankar et al. 2020's normalized Gaussian kernel:
    K = √(qq')·exp(γ(c/√(qq') + shift)) and Θ ← γ·exp(γ(c/√(qq') + shift))·Θ
    (√(qq') floored at 1e-15 as in neural-tangents; ``do_clip`` clips the
    cosine to [−1, 1]). A kernel map only: there is no finite-width network."""

    def _normalized(self, cov, q1, q2, xp):
        root = xp.sqrt(xp.clip(q1 * q2, 1e-30, None))
        cos = cov / root
        if self.params["do_clip"]:
            cos = xp.clip(cos, -1.0, 1.0)
        return root, xp.exp(self.params["gamma"] * (cos + self.params["shift"]))

    def dual(self, cov, q1, q2, xp, want_dot):
        root, e = self._normalized(cov, q1, q2, xp)
        return root * e, (self.params["gamma"] * e if want_dot else None)

    def dual_diag(self, var, xp):
        root, e = self._normalized(var, var, var, xp)
        return root * e

    def fn(self, x):
        raise UnsupportedOptionError(
            "ExpNormalized has no finite-width network (neural-tangents defines only its kernel, "
            "Shankar et al. 2020); use kernel_fn, or Rbf/Exp for an activation with an apply_fn")

    def derivative(self, x):
        return self.fn(x)


@register("Sign", {})
class SignImpl(Elementwise):
    """``sign(x)``: K = 1 − 2θ/π, θ the angle between the inputs (arc-cosine kernel
    of degree 0, Cho & Saul 2009; K = 0 when an input is zero); K(x, x) = 1 for
    x ≠ 0. φ' = 0 almost everywhere, so Θ ← 0 (as neural-tangents)."""

    def dual(self, cov, q1, q2, xp, want_dot):
        _, rho, sin = cosine(cov, q1, q2, xp)
        nngp = 1.0 - (2.0 / math.pi) * xp.atan2(sin, rho)
        return nngp, (0.0 if want_dot else None)

    def dual_diag(self, var, xp):
        return xp.where(var == 0.0, xp.zeros_like(var), xp.ones_like(var))

    def fn(self, x):
        return np.sign(x)

    def derivative(self, x):
        return np.zeros_like(x)


@register("Gabor", {})
class GaborImpl(Elementwise):
    """``exp(−x²)·sin(x)``: with s = q + q', δ = 4(qq' − c²), D = 2s + δ + 1,
    K = e^{−(s + δ + 2c)/2D}(e^{2c/D} − 1)/(2√D) and
    K̇ = e^{−(s + δ + 2c)/2D}(L + e^{2c/D}R)/(2D^{5/2}), L, R = 1 + 2s + 4(c² + qq')
    ∓ 4c(δ + 3s + 2) (neural-tangents' closed form)."""

    def dual(self, cov, q1, q2, xp, want_dot):
        total = q1 + q2
        diff = 4.0 * gap(cov, q1, q2, xp)
        denom = 2.0 * total + diff + 1.0
        left = xp.exp(-(total + diff + 2.0 * cov) / (2.0 * denom))
        right = xp.exp(2.0 * cov / denom)
        nngp = left * (right - 1.0) / (2.0 * xp.sqrt(denom))
        dot = None
        if want_dot:
            shared = 1.0 + 2.0 * total + 4.0 * (cov * cov + q1 * q2)
            cross = 4.0 * cov * (diff + 3.0 * total + 2.0)
            dot = left * ((shared - cross) + right * (shared + cross)) / (2.0 * denom ** 2.5)
        return nngp, dot

    def dual_diag(self, var, xp):
        denom = 1.0 + 4.0 * var
        return (1.0 - xp.exp(-2.0 * var / denom)) / (2.0 * xp.sqrt(denom))

    def fn(self, x):
        return np.exp(-x * x) * np.sin(x)

    def derivative(self, x):
        return np.exp(-x * x) * (np.cos(x) - 2.0 * x * np.sin(x))


def _make(name: str, **kwargs: Any) -> Layer:
    return make_layer(name, kwargs)


def Sigmoid_like() -> Layer:
    """``0.5·erf(x / 2.4020563531719796) + 0.5`` (neural-tangents ``stax.Sigmoid_like``)."""
    return _make("Sigmoid_like")


def Cos(a: float = 1.0, b: float = 1.0, c: float = 0.0) -> Layer:
    """``a·cos(b·x + c)``."""
    return _make("Cos", a=a, b=b, c=c)


def Rbf(gamma: float = 1.0) -> Layer:
    """``√2·sin(√(2γ)·x + π/4)``, whose NNGP is the RBF kernel exp(−γ‖x − x'‖²/d)."""
    return _make("Rbf", gamma=gamma)


def Exp(a: float = 1.0, b: float = 1.0) -> Layer:
    """``a·exp(b·x)``."""
    return _make("Exp", a=a, b=b)


def Gaussian(a: float = 1.0, b: float = -1.0) -> Layer:
    """``a·exp(b·x²)``."""
    return _make("Gaussian", a=a, b=b)


def ExpNormalized(gamma: float = 1.0, shift: float = -1.0, do_clip: bool = False) -> Layer:
    """The normalized Gaussian kernel of Shankar et al. 2020 (kernel only: ``apply_fn`` raises)."""
    return _make("ExpNormalized", gamma=gamma, shift=shift, do_clip=do_clip)


def Sign() -> Layer:
    """``sign(x)``; its NTK contribution is zero (φ' = 0 almost everywhere)."""
    return _make("Sign")


def Gabor() -> Layer:
    """``exp(−x²)·sin(x)``."""
    return _make("Gabor")
