"""Polynomial activations: ``Polynomial``, ``Monomial``, ``Hermite``, ``RectifiedMonomial``.

Closed forms (Han et al. 2022, "Fast Neural Kernel Embeddings for General
Activations", arXiv:2209.04121, which neural-tangents 0.6.5 implements):

- ``Polynomial(coef)``: expand φ(√q·z) in normalised Hermite polynomials,
  φ(√q z) = Σ_l r_l(q)·h_l(z) with r_l(q) = q^{l/2}·s_l(q),
  s_l(q) = Σ_i coef[2i+l]·(2i+l)!/(2^i i! √(l!))·q^i. Then
  K = Σ_l s_l(q)s_l(q')·c^l and K̇ = Σ_l l·s_l(q)s_l(q')·c^{l−1} — a
  polynomial in (c, q, q'), so no division by √(qq') (neural-tangents
  writes the same sum with ρ = c/√(qq'));
- ``Monomial(d)`` = ``Polynomial`` of x^d (neural-tangents lists the cases 0–5);
- ``Hermite(d)``: the normalised probabilists' Hermite polynomial He_d/√(d!),
  K = c^d, K̇ = d·c^{d−1}, valid for unit-variance inputs (q = 1);
- ``RectifiedMonomial(n)``: (x ≥ 0)·x^n, the arc-cosine kernel of degree n
  (Cho & Saul 2009), K = (qq')^{n/2}/(2π)·J_n(θ) with
  J_n = (1 − t²)^{n+1/2}·dⁿ/dtⁿ[(π − arccos t)/√(1 − t²)], t = cos θ, written
  as J_n = (π − θ)·P_n(t) + Q_n(t)·sin θ with P_0 = 1, Q_0 = 0,
  P_{n+1} = (1 − t²)P_n' + (2n+1)t·P_n, Q_{n+1} = P_n + (1 − t²)Q_n' + 2n·t·Q_n;
  K̇ = dK/dc = n²·(qq')^{(n−1)/2}/(2π)·J_{n−1}(θ).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, List, Sequence, Tuple

import numpy as np
from numpy.polynomial import hermite_e
from numpy.polynomial import polynomial as npoly

from ...errors import NumericalWarning, SpecError
from .activations import Elementwise, cosine
from ..network import Layer, make_layer
from ..spec import Param, register

_DEGREE = {"degree": Param(None, "int0", required=True)}


def _degree(layer: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise SpecError(f"{layer}(degree={value!r}): the degree must be a non-negative integer "
                        "(0, 1, 2, ...)")
    return int(value)


def _horner(coef: Sequence[float], x: Any, xp: Any) -> Any:
    """``Σ_k coef[k]·x^k`` on arrays of namespace ``xp`` (coef: Python floats)."""
    out = xp.zeros_like(x) + float(coef[-1]) if len(coef) else xp.zeros_like(x)
    for a in reversed(coef[:-1]):
        out = out * x + float(a)
    return out


def hermite_series(coef: Sequence[float]) -> List[List[float]]:
    """``s_l`` as power series in q, for l = 0 .. len(coef) − 1 (see module docstring)."""
    n = len(coef)
    out = []
    for l in range(n):
        series = [coef[2 * i + l] * math.factorial(2 * i + l)
                  / (2.0 ** i * math.factorial(i) * math.sqrt(math.factorial(l)))
                  for i in range((n - 1 - l) // 2 + 1)]
        out.append([float(v) for v in series])
    return out


class _PolynomialFamily(Elementwise):
    """Dual of a polynomial activation from its coefficients (``power_coefficients``)."""

    def power_coefficients(self) -> List[float]:  # pragma: no cover
        raise NotImplementedError

    def __init__(self, params):
        super().__init__(params)
        self.coef = self.power_coefficients()
        self.series = hermite_series(self.coef)

    def dual(self, cov, q1, q2, xp, want_dot):
        nngp = xp.zeros_like(cov * q1 * q2)
        dot = xp.zeros_like(nngp) if want_dot else None
        power = xp.ones_like(nngp)          # c^l
        for l, s in enumerate(self.series):
            both = _horner(s, q1, xp) * _horner(s, q2, xp)
            if want_dot and l >= 1:
                dot = dot + float(l) * both * prev
            nngp = nngp + both * power
            prev = power
            power = power * cov
        return nngp, dot

    def dual_diag(self, var, xp):
        out = xp.zeros_like(var)
        power = xp.ones_like(var)
        for s in self.series:
            r = _horner(s, var, xp)
            out = out + r * r * power
            power = power * var
        return out

    def fn(self, x):
        return npoly.polyval(x, self.coef) if self.coef else np.zeros_like(x)

    def derivative(self, x):
        return npoly.polyval(x, npoly.polyder(self.coef)) if len(self.coef) > 1 else np.zeros_like(x)

    def flops_per_entry(self, state_shape):
        return float(4 * len(self.coef) ** 2 + 10) * float(np.prod(state_shape or (1,)))


@register("Polynomial", {"coef": Param(None, "floats", required=True)})
class PolynomialImpl(_PolynomialFamily):
    """``coef[0] + coef[1]·x + … + coef[n]·x^n`` (numpy.polynomial order)."""

    def power_coefficients(self):
        coef = self.params["coef"]
        bad = (isinstance(coef, (str, bytes)) or not isinstance(coef, (list, tuple))
               or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                      for v in coef))
        if bad:
            raise SpecError(f"Polynomial(coef={coef!r}): coef must be a list of finite numbers, "
                            "lowest power first (e.g. [0.0, 1.0, 0.5] for x + x²/2)")
        return [float(v) for v in coef]


@register("Monomial", dict(_DEGREE))
class MonomialImpl(_PolynomialFamily):
    """``x^degree``: K = E[u^d v^d], e.g. qq' + 2c² for d = 2, 9cqq' + 6c³ for d = 3."""

    def power_coefficients(self):
        d = _degree("Monomial", self.params["degree"])
        return [0.0] * d + [1.0]


@register("Hermite", dict(_DEGREE))
class HermiteImpl(Elementwise):
    """He_d(x)/√(d!): K = c^d, K̇ = d·c^{d−1}, K(x, x) = q^d, for inputs of unit
    variance (q = 1; a ``NumericalWarning`` says when they are not)."""

    def __init__(self, params):
        super().__init__(params)
        self.degree = _degree("Hermite", params["degree"])
        self.coef = [float(v) for v in hermite_e.herme2poly([0] * self.degree + [1])]
        self.norm = math.sqrt(math.factorial(self.degree))

    def kernel(self, state, xp):
        for var in (state.var1, state.var2):
            if var is not None and self.degree > 0:
                off = float(xp.max(xp.abs(var - 1.0)))
                if off > 1e-6:
                    warnings.warn(
                        f"Hermite(degree={self.degree}) assumes inputs of unit variance (q = 1); this "
                        f"layer's input has |q − 1| up to {off:.3g}, so its kernel is not E[φ(u)φ(v)]. "
                        "Normalise the inputs (and use b_std=None, W_std=1) before it",
                        NumericalWarning, stacklevel=2)
                    break
        return super().kernel(state, xp)

    def dual(self, cov, q1, q2, xp, want_dot):
        d = self.degree
        dot = None
        if want_dot:
            dot = 0.0 if d == 0 else float(d) * cov ** (d - 1)
        return cov ** d, dot

    def dual_diag(self, var, xp):
        return var ** self.degree

    def fn(self, x):
        return npoly.polyval(x, self.coef) / self.norm

    def derivative(self, x):
        return npoly.polyval(x, npoly.polyder(self.coef)) / self.norm if self.degree else np.zeros_like(x)


def arccos_polynomials(n: int) -> Tuple[List[float], List[float]]:
    """``(P_n, Q_n)`` power coefficients with J_n = (π − θ)P_n(cos θ) + Q_n(cos θ) sin θ."""
    p, q = np.array([1.0]), np.array([0.0])
    one_minus = np.array([1.0, 0.0, -1.0])
    t = np.array([0.0, 1.0])
    for k in range(n):
        p, q = (npoly.polyadd(npoly.polymul(one_minus, npoly.polyder(p)), (2 * k + 1) * npoly.polymul(t, p)),
                npoly.polyadd(npoly.polyadd(p, npoly.polymul(one_minus, npoly.polyder(q))),
                              2 * k * npoly.polymul(t, q)))
    return [float(v) for v in p], [float(v) for v in q]


@register("RectifiedMonomial", dict(_DEGREE))
class RectifiedMonomialImpl(Elementwise):
    """``(x ≥ 0)·x^degree``: K = (qq')^{n/2}/(2π)·J_n(θ), K̇ = n²(qq')^{(n−1)/2}/(2π)·J_{n−1}(θ),
    K(x, x) = (2n − 1)!!·q^n/2 (Cho & Saul 2009)."""

    def __init__(self, params):
        super().__init__(params)
        self.degree = _degree("RectifiedMonomial", params["degree"])
        self.j = arccos_polynomials(self.degree)
        self.j_prev = arccos_polynomials(self.degree - 1) if self.degree else None

    @staticmethod
    def _j(pq: Tuple[List[float], List[float]], theta: Any, rho: Any, sin: Any, xp: Any) -> Any:
        return (math.pi - theta) * _horner(pq[0], rho, xp) + _horner(pq[1], rho, xp) * sin

    def dual(self, cov, q1, q2, xp, want_dot):
        n = self.degree
        norm, rho, sin = cosine(cov, q1, q2, xp)
        theta = xp.atan2(sin, rho)
        nngp = norm ** n / (2.0 * math.pi) * self._j(self.j, theta, rho, sin, xp)
        dot = None
        if want_dot:
            dot = 0.0 if n == 0 else (n * n / (2.0 * math.pi)) * norm ** (n - 1) * self._j(
                self.j_prev, theta, rho, sin, xp)
        return nngp, dot

    def dual_diag(self, var, xp):
        n = self.degree
        return float(math.prod(range(2 * n - 1, 0, -2))) / 2.0 * var ** n

    def fn(self, x):
        return np.where(x >= 0, x ** self.degree, 0.0)

    def derivative(self, x):
        n = self.degree
        return np.where(x >= 0, n * x ** (n - 1), 0.0) if n else np.zeros_like(x)


def _make(name: str, **kwargs: Any) -> Layer:
    return make_layer(name, kwargs)


def Polynomial(coef: Sequence[float]) -> Layer:
    """``coef[0] + coef[1]·x + … + coef[n]·x^n`` (numpy.polynomial order, as neural-tangents)."""
    if isinstance(coef, np.ndarray):
        coef = coef.tolist()
    if isinstance(coef, (list, tuple)):
        coef = [float(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else v
                for v in coef]
    return _make("Polynomial", coef=coef)


def Monomial(degree: int) -> Layer:
    """``x^degree`` (neural-tangents allows 0–5; any non-negative degree works here)."""
    return _make("Monomial", degree=degree)


def RectifiedMonomial(degree: int) -> Layer:
    """``(x ≥ 0)·x^degree`` (degree 1 is ReLU, 0 the Heaviside step)."""
    return _make("RectifiedMonomial", degree=degree)


def Hermite(degree: int) -> Layer:
    """The normalised Hermite polynomial He_degree(x)/√(degree!) (unit-variance inputs)."""
    return _make("Hermite", degree=degree)
