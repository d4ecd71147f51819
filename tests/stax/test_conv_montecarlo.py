"""Monte Carlo: finite-width conv nets from ``init_fn``/``apply_fn`` (NumPy,
same parameterization) have output covariance → the exact NNGP kernel."""

import numpy as np
import pytest

from ntkscale import stax

WIDTH, DRAWS = 256, 16


def _conv(width, *args, **kw):
    return stax.Conv(width, *args, W_std=1.4, b_std=0.2, **kw)


NETS = {
    "gap_same": lambda w: stax.serial(
        _conv(w, (3, 3), padding="SAME"), stax.Relu(),
        _conv(w, (3, 3), padding="SAME"), stax.Relu(),
        stax.GlobalAvgPool(), stax.Dense(512, W_std=1.4, b_std=0.2)),
    "flatten_valid_strides_erf": lambda w: stax.serial(
        _conv(w, (2, 3), strides=(2, 1), padding="VALID"), stax.Erf(),
        _conv(w, (2, 2), padding="VALID"), stax.Relu(),
        stax.Flatten(), stax.Dense(512, W_std=1.4, b_std=0.2)),
    "avgpool_circular_standard": lambda w: stax.serial(
        _conv(w, (3, 3), padding="CIRCULAR"), stax.Relu(),
        stax.AvgPool((2, 2), padding="SAME"),
        _conv(w, (3, 3), padding="SAME", parameterization="standard"), stax.Abs(),
        stax.GlobalAvgPool(), stax.Dense(512, W_std=1.4, b_std=0.2)),
    "myrtle_like_dense_head": lambda w: stax.serial(
        _conv(w, (3, 3), padding="SAME"), stax.Relu(),
        stax.AvgPool((2, 2), strides=(2, 2)),
        _conv(w, (3, 3), padding="SAME"), stax.LeakyRelu(0.1),
        stax.Flatten(), stax.Dense(w, W_std=1.4, b_std=0.2), stax.Relu(),
        stax.Dense(512, W_std=1.4, b_std=0.2)),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_conv_nngp_matches_finite_width_covariance(name):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (4, 5, 5, 2))
    x[3] = -0.5 * x[0]
    init_fn, apply_fn, kernel_fn = NETS[name](WIDTH)
    outs = []
    for seed in range(DRAWS):
        out_shape, params = init_fn(seed, x.shape)
        f = apply_fn(params, x)
        assert f.shape == out_shape
        outs.append(f)
    f = np.concatenate(outs, axis=1)       # (n, 512 · draws) draws of the GP
    empirical = f @ f.T / f.shape[1]
    exact = kernel_fn(x, None, "nngp")
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    # finite-width bias + sampling noise ~ a few % of scale at this size
    np.testing.assert_array_less(np.abs(empirical - exact) / scale, 0.1)


def test_finite_width_shapes_follow_the_layers():
    init_fn, apply_fn, _ = stax.presets.myrtle(5, width=3)
    shape, params = init_fn(0, (2, 32, 32, 3))
    assert shape == (2, 10)
    assert apply_fn(params, np.ones((2, 32, 32, 3))).shape == (2, 10)
    init_fn, apply_fn, _ = stax.serial(stax.Conv(4, (3, 2), strides=(2, 1), padding="SAME"),
                                       stax.AvgPool((3, 3), padding="SAME", normalize_edges=True))
    shape, params = init_fn(0, (1, 7, 6, 2))
    assert shape == (1, 4, 6, 4)
    out = apply_fn(params, np.ones((1, 7, 6, 2)))
    assert out.shape == shape


def test_kernel_only_widths_are_explained():
    with pytest.raises(Exception, match="out_chan"):
        stax.presets.cntk(2)[0](0, (1, 4, 4, 1))
