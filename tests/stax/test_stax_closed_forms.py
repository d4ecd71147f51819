"""Kernels against closed forms derived independently of the implementation."""

import math

import numpy as np
import pytest

from ntkscale import stax
from tests.support.derivations import relu_net_closed_form
from tests.support.nets import SQRT2, fc_relu


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("fast", [True, False])
def test_relu_net_matches_arccos_recursion(rng, depth, fast):
    x1, x2 = rng.standard_normal((6, 5)), rng.standard_normal((4, 5))
    nngp, ntk = fc_relu(depth)[2](x1, x2, ("nngp", "ntk"), fast=fast)
    ref_nngp, ref_ntk = relu_net_closed_form(x1, x2, depth, SQRT2, 0.1)
    np.testing.assert_allclose(nngp, ref_nngp, rtol=1e-12, atol=1e-13 * np.abs(ref_nngp).max())
    np.testing.assert_allclose(ntk, ref_ntk, rtol=1e-12, atol=1e-13 * np.abs(ref_ntk).max())


def test_depth1_arccos_explicit_formula(rng):
    """NNGP of Dense-Relu-Dense with W_std=1, b_std=0 is the arc-cosine kernel of <x,x'>/d."""
    x = rng.standard_normal((5, 3))
    k = stax.serial(stax.Dense(), stax.Relu(), stax.Dense())[2](x, None, "nngp")
    g = x @ x.T / 3
    n = np.sqrt(np.outer(np.diag(g), np.diag(g)))
    th = np.arccos(np.clip(g / n, -1, 1))
    np.testing.assert_allclose(k, n * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi), rtol=1e-12, atol=1e-15)


def test_erf_arcsin_formula(rng):
    x1, x2 = rng.standard_normal((4, 3)), rng.standard_normal((3, 3))
    k = stax.serial(stax.Dense(W_std=1.3), stax.Erf())[2](x1, x2, "nngp")
    s = 1.69 * x1 @ x2.T / 3
    q1, q2 = 1.69 * np.sum(x1 ** 2, 1) / 3, 1.69 * np.sum(x2 ** 2, 1) / 3
    ref = 2 / np.pi * np.arcsin(2 * s / np.sqrt(np.outer(1 + 2 * q1, 1 + 2 * q2)))
    np.testing.assert_allclose(k, ref, rtol=1e-12)


def test_identity_net_is_linear_kernel(rng):
    x = rng.standard_normal((5, 4))
    nngp, ntk = stax.serial(stax.Dense(W_std=2.0, b_std=0.5), stax.Identity(), stax.Dense(W_std=1.5))[2](x, None, ("nngp", "ntk"))
    s1 = 4.0 * x @ x.T / 4 + 0.25
    np.testing.assert_allclose(nngp, 2.25 * s1, rtol=1e-12)
    np.testing.assert_allclose(ntk, 2.25 * s1 + 2.25 * s1, rtol=1e-12)


def test_standard_parameterization_uses_widths(rng):
    x1, x2 = rng.standard_normal((3, 4)), rng.standard_normal((2, 4))
    _, _, kf = stax.serial(stax.Dense(64, W_std=1.3, b_std=0.1, parameterization="standard"),
                           stax.Identity(),
                           stax.Dense(1, W_std=1.3, b_std=0.1, parameterization="standard"))
    nngp, ntk = kf(x1, x2, ("nngp", "ntk"))
    k0 = x1 @ x2.T / 4
    s1 = 1.69 * k0 + 0.01
    t1 = 4 * k0 + 1.0
    np.testing.assert_allclose(nngp, 1.69 * s1 + 0.01, rtol=1e-12)
    np.testing.assert_allclose(ntk, 64 * s1 + 1.69 * t1 + 1.0, rtol=1e-12)


def test_standard_bias_none_differs_from_zero(rng):
    x = rng.standard_normal((3, 4))
    kw = dict(W_std=1.0, parameterization="standard")
    none = stax.serial(stax.Dense(8, b_std=None, **kw), stax.Relu(), stax.Dense(1, b_std=None, **kw))[2](x, None, "ntk")
    zero = stax.serial(stax.Dense(8, b_std=0.0, **kw), stax.Relu(), stax.Dense(1, b_std=0.0, **kw))[2](x, None, "ntk")
    # The first bias adds 1 to Θ1, which reaches the output as W²·K̇·1; the readout bias adds 1.
    np.testing.assert_allclose(zero - none, 1.0 + _relu_dot(x), rtol=1e-12)


def _relu_dot(x):
    g = x @ x.T / x.shape[1]
    n = np.sqrt(np.outer(np.diag(g), np.diag(g)))
    th = np.arccos(np.clip(g / n, -1, 1))
    np.fill_diagonal(th, 0.0)
    return (np.pi - th) / (2 * np.pi)


def test_ntk_parameterization_b_std_none_equals_zero(rng):
    x = rng.standard_normal((4, 3))
    a = fc_relu(2, b_std=None)[2](x, None, "ntk")
    b = fc_relu(2, b_std=0.0)[2](x, None, "ntk")
    np.testing.assert_array_equal(a, b)


def test_diag_matches_full_diagonal(rng):
    x = rng.standard_normal((7, 5))
    for act in [stax.Relu(), stax.Erf(), stax.Gelu(), stax.Sin(0.5, 2.0, 0.3), stax.Abs()]:
        _, _, kf = stax.serial(stax.Dense(W_std=1.4, b_std=0.2), act, stax.Dense(W_std=1.4, b_std=0.2))
        full = kf(x)
        diag = kf.diag(x)
        np.testing.assert_allclose(diag.nngp, np.diag(full.nngp), rtol=1e-12)
        np.testing.assert_allclose(diag.ntk, np.diag(full.ntk), rtol=1e-12)


def test_get_forms(rng):
    x = rng.standard_normal((3, 2))
    kf = fc_relu(1)[2]
    k = kf(x)
    assert isinstance(k, stax.Kernel)
    assert np.array_equal(kf(x, None, "ntk"), k.ntk)
    ntk, nngp = kf(x, None, ("ntk", "nngp"))
    assert np.array_equal(ntk, k.ntk) and np.array_equal(nngp, k.nngp)
    np.testing.assert_allclose(kf(x, x, "ntk"), k.ntk, rtol=1e-14)


def test_zero_norm_inputs_give_finite_kernels():
    x = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    for act in [stax.Relu(), stax.Erf(), stax.Gelu(), stax.Sin(), stax.LeakyRelu(0.2)]:
        _, _, kf = stax.serial(stax.Dense(), act, stax.Dense(), act, stax.Dense())
        for fast in (True, False):
            k = kf(x, None, fast=fast)
            assert np.all(np.isfinite(k.nngp)) and np.all(np.isfinite(k.ntk))
    # ReLU of zero-variance input: theta = pi/2 => K = 0, Kdot = 1/4.
    _, _, kf = stax.serial(stax.Dense(), stax.Relu(), stax.Dense())
    k = kf(x, None)
    assert k.nngp[0, 1] == 0.0 and math.isclose(k.ntk[0, 1], 0.0)
