"""Monte Carlo: finite-width networks (init_fn/apply_fn) with the new activations and
SumPool/GlobalSumPool converge to the exact kernels.

NNGP: the covariance of one very wide hidden layer's units (the activation map itself),
and of a wide two-layer network's outputs over initialisations (each readout unit one
draw) for the bounded activations. NTK: the empirical NTK of a wide MLP (explicit backward pass
with each activation's ``derivative``), averaged over initialisations.
"""

import numpy as np
import pytest

from ntkscale import stax


ACTIVATIONS = {
    "Sigmoid_like": stax.Sigmoid_like(),
    "Rbf": stax.Rbf(0.6),
    "Gaussian": stax.Gaussian(1.1, -0.7),
    "Exp": stax.Exp(0.6, 0.5),
    "Cos": stax.Cos(0.9, 1.2, 0.4),
    "Sign": stax.Sign(),
    "Gabor": stax.Gabor(),
    "Monomial2": stax.Monomial(2),
    "RectifiedMonomial2": stax.RectifiedMonomial(2),
    "Polynomial": stax.Polynomial([0.2, 1.0, 0.3, -0.1]),
    "Numerical_tanh": stax.ElementwiseNumerical("tanh", 25),
    "Numerical_swish": stax.ElementwiseNumerical("swish", 25),
}


def _inputs(rng, d=6):
    """Rows of unit mean square (moderate variances keep the polynomial and exponential
    activations' heavy tails in check) and an anti-parallel pair."""
    x = rng.standard_normal((4, d))
    x /= np.sqrt(np.mean(x ** 2, axis=1, keepdims=True))
    x[3] = -0.5 * x[0]
    return x


def _relative_error(empirical, exact):
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    return np.abs(empirical - exact) / scale


def _empirical_nngp(net, x, draws):
    init_fn, apply_fn, _ = net
    outs = [apply_fn(init_fn(seed, x.shape)[1], x) for seed in range(draws)]
    f = np.concatenate(outs, axis=1)
    return f @ f.T / f.shape[1]


#: bounded activations, whose two-layer networks converge fast at width 1024
BOUNDED = ["Sigmoid_like", "Rbf", "Gaussian", "Cos", "Sign", "Gabor", "Numerical_tanh"]


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_activation_map_matches_hidden_units(act, rng):
    """E[φ(u)φ(v)] over 2^18 hidden units of one exactly Gaussian layer (no readout noise):
    the sampling error is ~ sqrt(Var φ(u)φ(v) / 2^18), under 1% here."""
    width = 1 << 18
    net = stax.serial(stax.Dense(width, W_std=1.2, b_std=0.2), ACTIVATIONS[act])
    x = _inputs(rng)
    f = net[1](net[0](7, x.shape)[1], x)
    exact = net[2](x, None, "nngp")
    assert _relative_error(f @ f.T / width, exact).max() < 0.04


@pytest.mark.parametrize("act", BOUNDED)
def test_two_layer_nngp_matches_finite_width_covariance(act, rng):
    width = 1024
    net = stax.serial(stax.Dense(width, W_std=1.2, b_std=0.2), ACTIVATIONS[act],
                      stax.Dense(width, W_std=1.2, b_std=0.2), ACTIVATIONS[act],
                      stax.Dense(1024, W_std=1.2, b_std=0.2))
    x = _inputs(rng)
    exact = net[2](x, None, "nngp")
    # hidden-layer fluctuations: ~1/sqrt(width·draws) of the scale
    assert _relative_error(_empirical_nngp(net, x, 8), exact).max() < 0.05


def test_hermite_on_unit_variance_inputs(rng):
    """Unit-variance inputs, W_std=1 and no bias: q = 1 exactly at the Hermite layer."""
    x = _inputs(rng, 8)
    x[3] = -x[0]
    width = 1 << 18
    for degree in (0, 1, 2, 3):
        net = stax.serial(stax.Dense(width, W_std=1.0, b_std=None), stax.Hermite(degree))
        f = net[1](net[0](degree, x.shape)[1], x)
        exact = net[2](x, None, "nngp")
        assert _relative_error(f @ f.T / width, exact).max() < 0.05, degree


def _empirical_ntk(net, params, x):
    """Σ over parameters of ∂f(x_i)/∂p ∂f(x_j)/∂p for a scalar-output Dense/activation net
    ("ntk" parameterization), by an explicit backward pass."""
    layers = net[2].layers
    acts = [x]
    for layer, p in zip(layers, params):
        acts.append(layer.apply(p, acts[-1]))
    grads, delta = [], np.ones((x.shape[0], 1))
    for layer, p, h in reversed(list(zip(layers, params, acts[:-1]))):
        if layer.layer_name == "Dense":
            W, _ = p
            scale = layer.params["W_std"] / np.sqrt(W.shape[0])
            grads.append((scale * np.einsum("ni,nj->nij", h, delta)).reshape(len(x), -1))
            grads.append(layer.params["b_std"] * delta)
            delta = scale * delta @ W.T
        else:
            delta = delta * layer.derivative(h)
    g = np.concatenate(grads, axis=1)
    return g @ g.T


@pytest.mark.parametrize("act", ["Gabor", "RectifiedMonomial2", "Numerical_swish", "Rbf", "Polynomial"])
def test_ntk_matches_empirical_ntk(act, rng):
    width, draws = 8192, 4
    net = stax.serial(stax.Dense(width, W_std=1.3, b_std=0.3), ACTIVATIONS[act],
                      stax.Dense(1, W_std=1.3, b_std=0.3))
    x = _inputs(rng)
    emp = np.mean([_empirical_ntk(net, net[0](s, x.shape)[1], x) for s in range(draws)], axis=0)
    exact = net[2](x, None, "ntk")
    assert _relative_error(emp, exact).max() < 0.05


@pytest.mark.parametrize("pool", ["SumPool", "GlobalSumPool"])
def test_sum_pooling_nngp(pool, rng):
    x = 0.7 * rng.standard_normal((3, 5, 5, 2))
    x[2] = -0.5 * x[0]
    head = [stax.Conv(256, (3, 3), padding="SAME", W_std=1.3, b_std=0.1), stax.Erf()]
    if pool == "SumPool":
        body = [stax.SumPool((2, 2), strides=(1, 2)), stax.Conv(256, (2, 2), W_std=1.2, b_std=0.1),
                stax.Relu(), stax.Flatten()]
    else:
        body = [stax.GlobalSumPool()]
    net = stax.serial(*head, *body, stax.Dense(1024, W_std=1.1, b_std=0.1))
    exact = net[2](x, None, "nngp")
    assert _relative_error(_empirical_nngp(net, x, 8), exact).max() < 0.06
