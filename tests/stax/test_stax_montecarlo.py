"""Monte Carlo: finite-width networks from apply_fn converge to the kernels.

NNGP: the covariance of a wide network's outputs over random initialisations
(each of the readout's output units is one draw). NTK: the empirical NTK of a
wide MLP, averaged over initialisations.
"""

import math

import numpy as np
import pytest

from ntkscale import stax
from tests.support.derivations import empirical_ntk

ACTIVATIONS = {
    "Relu": stax.Relu(),
    "LeakyRelu": stax.LeakyRelu(0.2),
    "ABRelu": stax.ABRelu(-0.3, 1.2),
    "Abs": stax.Abs(),
    "Erf": stax.Erf(0.7, 1.3, 0.2),
    "Gelu": stax.Gelu(),
    "Sin": stax.Sin(0.8, 1.5, 0.3),
    "Identity": stax.Identity(),
}


def _inputs(rng):
    x = rng.standard_normal((4, 6))
    x[3] = -0.5 * x[0]  # an anti-parallel pair
    return x


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_nngp_matches_finite_width_covariance(act, rng):
    width, draws = 1024, 24
    layer = stax.serial(stax.Dense(width, W_std=1.3, b_std=0.2), ACTIVATIONS[act],
                        stax.Dense(width, W_std=1.3, b_std=0.2), ACTIVATIONS[act],
                        stax.Dense(1024, W_std=1.3, b_std=0.2))
    init_fn, apply_fn, kernel_fn = layer
    x = _inputs(rng)
    outs = []
    for seed in range(draws):
        _, params = init_fn(seed, x.shape)
        outs.append(apply_fn(params, x))
    f = np.concatenate(outs, axis=1)  # (n, width * draws) samples of the GP
    empirical = f @ f.T / f.shape[1]
    exact = kernel_fn(x, None, "nngp")
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    # Hidden-layer fluctuations dominate: ~1/sqrt(width·draws) ≈ 0.6% of scale.
    np.testing.assert_array_less(np.abs(empirical - exact) / scale, 0.05)


@pytest.mark.parametrize("act", ["Relu", "Erf", "Abs", "Sin"])
def test_ntk_matches_empirical_ntk(act, rng):
    # Sin(b=1.5) oscillates fast and needs a wider net for the same accuracy.
    width, draws = (2048, 6) if act == "Sin" else (1024, 10)
    layer = stax.serial(stax.Dense(width, W_std=1.4, b_std=0.3), ACTIVATIONS[act],
                        stax.Dense(width, W_std=1.4, b_std=0.3), ACTIVATIONS[act],
                        stax.Dense(1, W_std=1.4, b_std=0.3))
    init_fn, apply_fn, kernel_fn = layer
    x = _inputs(rng)
    emp = np.mean([empirical_ntk(layer, init_fn(s, x.shape)[1], x, x) for s in range(draws)], axis=0)
    exact = kernel_fn(x, None, "ntk")
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    np.testing.assert_array_less(np.abs(emp - exact) / scale, 0.07)


def test_init_apply_shapes_and_standard_parameterization(rng):
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Dense(2048, W_std=1.3, b_std=0.1, parameterization="standard"), stax.Relu(),
        stax.Dense(2048, W_std=1.3, b_std=0.1, parameterization="standard"))
    x = rng.standard_normal((3, 5))
    out_shape, params = init_fn(np.random.default_rng(1), x.shape)
    assert out_shape == (3, 2048)
    f = apply_fn(params, x)
    assert f.shape == (3, 2048)
    empirical = f @ f.T / f.shape[1]
    exact = kernel_fn(x, None, "nngp")
    scale = math.sqrt(np.diag(exact).max() ** 2)
    assert np.abs(empirical - exact).max() / scale < 0.1


def test_init_needs_out_dim():
    init_fn, _, _ = stax.serial(stax.Dense(), stax.Relu())
    with pytest.raises(Exception, match="out_dim"):
        init_fn(0, (2, 3))
