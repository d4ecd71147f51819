"""Monte Carlo: finite-width residual, concatenating, multiplying and LayerNorm networks
(init_fn/apply_fn) have output covariances that converge to the exact NNGP."""

import numpy as np
import pytest

from ntkscale import stax


def _res_block(width):
    main = stax.serial(stax.Relu(), stax.Dense(width, W_std=1.2, b_std=0.1))
    return stax.serial(stax.FanOut(2), stax.parallel(main, stax.Identity()), stax.FanInSum())


def _nets(width):
    d = lambda w=width, s=1.3, b=0.2: stax.Dense(w, W_std=s, b_std=b)  # noqa: E731
    return {
        "residual": stax.serial(d(), _res_block(width), _res_block(width), stax.Relu(), d(1024)),
        "dense_shortcut": stax.serial(d(), stax.FanOut(2), stax.parallel(
            stax.serial(stax.Erf(), d()), d(s=0.7, b=0.0)), stax.FanInSum(), stax.Relu(), d(1024)),
        "concat": stax.serial(d(), stax.FanOut(2), stax.parallel(d(width // 2), stax.serial(
            stax.Relu(), d(width + width // 2))), stax.FanInConcat(), d(), stax.Relu(), d(1024)),
        "prod": stax.serial(d(), stax.FanOut(2), stax.parallel(d(), stax.serial(stax.Erf(), d())),
                            stax.FanInProd(), d(), stax.Relu(), d(1024)),
        "layernorm": stax.serial(d(b=0.5), stax.LayerNorm(), stax.Relu(), d(), stax.LayerNorm(eps=0.1),
                                 stax.Erf(), d(1024)),
    }


@pytest.mark.parametrize("name", ["residual", "dense_shortcut", "concat", "prod", "layernorm"])
def test_nngp_matches_finite_width_covariance(name, rng):
    width, draws = 1024, 12
    init_fn, apply_fn, kernel_fn = _nets(width)[name]
    x = rng.standard_normal((4, 6))
    x[3] = -0.5 * x[0]
    outs = []
    for seed in range(draws):
        _, params = init_fn(seed, x.shape)
        outs.append(apply_fn(params, x))
    f = np.concatenate(outs, axis=1)
    empirical = f @ f.T / f.shape[1]
    exact = kernel_fn(x, None, "nngp")
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    # ~1/sqrt(width·draws) per hidden layer; the 512-wide concat branch and the product
    # of two Gaussians fluctuate more (checked: the error halves with 4x the draws).
    tol = 0.1 if name in ("concat", "prod") else 0.06
    np.testing.assert_array_less(np.abs(empirical - exact) / scale, tol)


def test_conv_residual_layernorm_nngp(rng):
    c = lambda ch=128, f=(3, 3), s=None: stax.Conv(ch, f, strides=s, padding="SAME",  # noqa: E731
                                                  W_std=1.4, b_std=0.1)
    main = stax.serial(stax.Relu(), c(), stax.Relu(), c(s=(2, 2)))
    net = stax.serial(c(), stax.FanOut(2), stax.parallel(main, c(f=(1, 1), s=(2, 2))),
                      stax.FanInSum(), stax.LayerNorm(axis=(1, 2, 3)), stax.Relu(),
                      stax.GlobalAvgPool(), stax.Dense(512, W_std=1.2))
    init_fn, apply_fn, kernel_fn = net
    x = rng.standard_normal((3, 4, 4, 2))
    x[2] = -x[0]
    outs = []
    for seed in range(10):
        _, params = init_fn(seed, x.shape)
        outs.append(apply_fn(params, x))
    f = np.concatenate(outs, axis=1)
    empirical = f @ f.T / f.shape[1]
    exact = kernel_fn(x, None, "nngp")
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    np.testing.assert_array_less(np.abs(empirical - exact) / scale, 0.08)


def test_dropout_test_mode_and_train_mode_apply(rng):
    init_fn, apply_fn, _ = stax.serial(stax.Dense(64), stax.Dropout(0.5, mode="test"))
    x = rng.standard_normal((2, 3))
    _, params = init_fn(0, x.shape)
    np.testing.assert_allclose(apply_fn(params, x), x @ params[0][0] / np.sqrt(3), rtol=1e-12)
    init_fn, apply_fn, _ = stax.serial(stax.Dense(4096), stax.Dropout(0.5))
    _, params = init_fn(0, x.shape)
    dropped = apply_fn(params, x, rng=1)
    zero = dropped == 0
    assert 0.4 < zero.mean() < 0.6
    np.testing.assert_allclose(dropped[~zero], 2 * (x @ params[0][0] / np.sqrt(3))[~zero])
