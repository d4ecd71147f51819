"""The new activations' dual maps against independent integrals (no neural-tangents):
K = E[φ(u)φ(v)] and K̇ = E[φ'(u)φ'(v)] by 2-D Gauss–Hermite quadrature of each layer's own
finite-width ``fn``/``derivative``, the self-variance maps against the pair map at c = q,
anti-parallel limits, and ElementwiseNumerical against the closed forms it approximates."""

import math

import numpy as np
import pytest
from numpy.polynomial import hermite_e

from ntkscale import stax
from ntkscale.stax.layers.numerical import FUNCTION_NAMES, FUNCTIONS

SMOOTH = {
    "Sigmoid_like": stax.Sigmoid_like(), "Cos": stax.Cos(1.1, 1.4, 0.3), "Rbf": stax.Rbf(0.7),
    "Exp": stax.Exp(0.5, 0.6), "Gaussian": stax.Gaussian(1.2, -0.8),
    "Gaussian_pos": stax.Gaussian(0.9, 0.05), "Gabor": stax.Gabor(),
    "Monomial3": stax.Monomial(3), "Monomial6": stax.Monomial(6), "Hermite4": stax.Hermite(4),
    "Polynomial": stax.Polynomial([0.1, 1.0, 0.5, -0.2, 0.05]),
    "Numerical_gelu": stax.ElementwiseNumerical("gelu", 80),
}
#: (q, q', c) triples: generic, near-parallel, anti-parallel, zero-correlation
TRIPLES = [(0.7, 1.3, 0.4), (1.1, 0.6, -0.5), (0.9, 0.9, 0.9), (1.2, 0.3, -0.6), (0.5, 2.0, 0.0),
           (1.0, 1.0, 1.0 - 1e-9)]


def _impl(layer):
    return layer[2].layers[0]


def _quadrature(f, q1, q2, c, deg=120):
    z, w = hermite_e.hermegauss(deg)
    w = w / math.sqrt(2.0 * math.pi)
    zz1, zz2 = np.meshgrid(z, z, indexing="ij")
    u = math.sqrt(q1) * zz1
    v = c / math.sqrt(q1) * zz1 + math.sqrt(max(q2 - c * c / q1, 0.0)) * zz2
    return float(np.sum(np.outer(w, w) * f(u) * f(v)))


@pytest.mark.parametrize("name", sorted(SMOOTH))
@pytest.mark.parametrize("triple", TRIPLES)
def test_dual_is_the_gaussian_integral(name, triple):
    impl = _impl(SMOOTH[name])
    q1, q2, c = triple
    if name.startswith("Hermite"):   # defined for unit-variance inputs only
        q1, q2, c = 1.0, 1.0, c / math.sqrt(q1 * q2)
    arr = lambda v: np.array([v], dtype=np.float64)  # noqa: E731
    nngp, dot = impl.dual(arr(c), arr(q1), arr(q2), np, True)
    want = _quadrature(impl.fn, q1, q2, c)
    want_dot = _quadrature(impl.derivative, q1, q2, c)
    tol = 1e-7 if name.startswith("Numerical") else 1e-9
    assert nngp[0] == pytest.approx(want, rel=tol, abs=1e-12)
    assert np.asarray(dot).item() == pytest.approx(want_dot, rel=tol, abs=1e-12)


@pytest.mark.parametrize("layer", list(SMOOTH.values()) + [stax.Sign(), stax.ExpNormalized(0.8),
                                                            stax.RectifiedMonomial(0),
                                                            stax.RectifiedMonomial(3)])
def test_self_variance_map_is_the_pair_map_at_c_equal_q(layer):
    impl = _impl(layer)
    q = np.array([0.3, 1.0, 2.2])
    pair = impl.dual(q, q, q, np, False)[0]
    np.testing.assert_allclose(impl.dual_diag(q, np), pair, rtol=1e-12)


@pytest.mark.parametrize("n", range(6))
def test_rectified_monomial_limits(n):
    impl = _impl(stax.RectifiedMonomial(n))
    q = np.array([0.5, 1.7])
    # (x ≥ 0)·x^n and (−x ≥ 0)·(−x)^n never both non-zero
    np.testing.assert_allclose(impl.dual(-q, q, q, np, False)[0], 0.0, atol=1e-13)
    np.testing.assert_allclose(impl.dual_diag(q, np), math.prod(range(2 * n - 1, 0, -2)) * q ** n / 2)
    # independent inputs: E[φ(u)]E[φ(v)] = (E[max(u, 0)^n])², E[max(u,0)^n] = q^{n/2}·2^{n/2}Γ((n+1)/2)/(2√π)
    mean = lambda s: s ** (n / 2) * 2 ** (n / 2) * math.gamma((n + 1) / 2) / (2 * math.sqrt(math.pi))  # noqa: E731
    got = impl.dual(np.array([0.0]), np.array([0.8]), np.array([1.9]), np, False)[0][0]
    assert got == pytest.approx(mean(0.8) * mean(1.9), rel=1e-12)


def test_rectified_monomial_one_is_relu():
    q1, q2 = np.array([[0.7], [1.2]]), np.array([[1.3, 0.4]])
    c = np.array([[0.3, -0.5], [1.1, 0.05]])
    for want_dot in (True,):
        a = _impl(stax.RectifiedMonomial(1)).dual(c, q1, q2, np, want_dot)
        b = _impl(stax.Relu()).dual(c, q1, q2, np, want_dot)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-13)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-13)


def test_sign_and_monomial_closed_forms():
    q1, q2, c = np.array([0.7]), np.array([1.3]), np.array([0.4])
    theta = math.acos(0.4 / math.sqrt(0.7 * 1.3))
    assert _impl(stax.Sign()).dual(c, q1, q2, np, False)[0][0] == pytest.approx(1 - 2 * theta / math.pi)
    k = _impl(stax.Monomial(2)).dual(c, q1, q2, np, True)
    assert k[0][0] == pytest.approx(0.7 * 1.3 + 2 * 0.16) and k[1][0] == pytest.approx(4 * 0.4)
    assert _impl(stax.Hermite(3)).dual(c, q1, q2, np, False)[0][0] == pytest.approx(0.4 ** 3)


@pytest.mark.parametrize("fn, closed, deg, rtol", [
    ("erf", stax.Erf(), 120, 1e-6), ("sin", stax.Sin(), 30, 1e-12), ("cos", stax.Cos(), 30, 1e-12),
    ("gelu", stax.Gelu(), 80, 1e-8), ("exp", stax.Exp(), 60, 1e-10), ("identity", stax.Identity(), 5, 1e-12)])
def test_numerical_matches_the_closed_form(fn, closed, deg, rtol):
    """Measured: erf at deg 120 within 2.5e-7, gelu at 80 within 8e-9, sin/cos exact to rounding."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4))
    head = stax.Dense(8, W_std=1.1, b_std=0.2)
    num = stax.serial(head, stax.ElementwiseNumerical(fn, deg), stax.Dense(1))[2](x, None)
    ref = stax.serial(head, closed, stax.Dense(1))[2](x, None)
    np.testing.assert_allclose(num.nngp, ref.nngp, rtol=rtol)
    np.testing.assert_allclose(num.ntk, ref.ntk, rtol=rtol)


@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_registry_derivatives(name):
    """Every registry entry's φ' is the derivative of its φ (central differences, away from kinks)."""
    phi, dphi, _ = FUNCTIONS[name]
    x = np.array([-2.3, -0.7, -0.2, 0.3, 0.9, 1.6])
    h = 1e-6
    fd = (phi(x + h, np) - phi(x - h, np)) / (2 * h)
    np.testing.assert_allclose(dphi(x, np), fd, rtol=1e-6, atol=1e-8)


def test_numerical_df_names_the_derivative():
    """df="sigmoid" for softplus is its exact derivative: the NTK equals the default's."""
    x = np.random.default_rng(4).standard_normal((4, 3))
    a = stax.serial(stax.Dense(4), stax.ElementwiseNumerical("softplus", 25), stax.Dense(1))[2](x)
    b = stax.serial(stax.Dense(4), stax.ElementwiseNumerical("softplus", 25, "sigmoid"), stax.Dense(1))[2](x)
    np.testing.assert_allclose(a.ntk, b.ntk, rtol=1e-14)
    c = stax.serial(stax.Dense(4), stax.ElementwiseNumerical("softplus", 25, "tanh"), stax.Dense(1))[2](x)
    assert not np.allclose(a.ntk, c.ntk) and np.allclose(a.nngp, c.nngp)


def test_array_api_strict_namespace():
    xps = pytest.importorskip("array_api_strict")
    x = np.random.default_rng(5).standard_normal((4, 3))
    for layer in (stax.Gabor(), stax.RectifiedMonomial(2), stax.Polynomial([0.2, 1.0, 0.3]),
                  stax.ElementwiseNumerical("gelu", 15), stax.Sign(), stax.Gaussian()):
        kfn = stax.serial(stax.Dense(4), layer, stax.Dense(1))[2]
        want = kfn(x, None, "ntk")
        got = kfn(xps.asarray(x), None, "ntk")
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)
