"""SumPool/GlobalSumPool: AvgPool/GlobalAvgPool without the normalisation, in the kernel
map (every padding and stride), the finite-width network and a whole kernel_fn."""

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.stax.state import KernelState


def _impl(layer):
    return layer[2].layers[0]


def _state(rng, n1=2, n2=3, h=5, w=4):
    nngp = rng.standard_normal((n1, n2, h, h, w, w))
    ntk = rng.standard_normal((n1, n2, h, h, w, w))
    return KernelState(nngp=nngp, ntk=ntk, var1=None, var2=None, spatial=(h, w))


@pytest.mark.parametrize("window, strides, padding", [
    ((2, 2), None, "VALID"), ((3, 2), (2, 1), "VALID"), ((3, 3), None, "SAME"),
    ((2, 3), (2, 2), "SAME"), ((2, 2), (1, 2), "CIRCULAR")])
def test_sum_is_the_average_times_the_window(window, strides, padding, rng):
    state = _state(rng)
    got = _impl(stax.SumPool(window, strides, padding)).kernel(state, np)
    avg = _impl(stax.AvgPool(window, strides, padding)).kernel(state, np)
    scale = float(window[0] * window[1]) ** 2
    np.testing.assert_allclose(got.nngp, avg.nngp * scale, rtol=1e-13)
    np.testing.assert_allclose(got.ntk, avg.ntk * scale, rtol=1e-13)
    assert got.spatial == avg.spatial and got.var1 is None


def test_global_sum_is_the_global_mean_times_the_pixel_pairs(rng):
    state = _state(rng)
    got = _impl(stax.GlobalSumPool()).kernel(state, np)
    avg = _impl(stax.GlobalAvgPool()).kernel(state, np)
    np.testing.assert_allclose(got.nngp, avg.nngp * (5 * 5 * 4 * 4), rtol=1e-13)
    np.testing.assert_allclose(got.ntk, avg.ntk * (5 * 5 * 4 * 4), rtol=1e-13)
    assert got.spatial is None and got.nngp.shape == (2, 3)


def test_finite_width_network(rng):
    x = rng.standard_normal((2, 6, 5, 3))
    init_fn, apply_fn, _ = stax.serial(stax.SumPool((2, 2), (2, 1), "SAME"))
    shape, params = init_fn(0, x.shape)
    out = apply_fn(params, x)
    assert shape == out.shape == (2, 3, 5, 3)
    padded = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 0)))
    assert out[0, 1, 2, 1] == pytest.approx(padded[0, 2:4, 2:4, 1].sum())
    avg = stax.serial(stax.AvgPool((2, 2), (2, 1), "SAME"))[1]([()], x)
    np.testing.assert_allclose(out, 4.0 * avg)
    g_shape, _ = stax.GlobalSumPool()[0](0, x.shape)
    assert g_shape == (2, 3)
    np.testing.assert_allclose(stax.GlobalSumPool()[1]([()], x), x.sum(axis=(1, 2)))


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_network_kernel_scales_by_the_window(padding, rng):
    """Without a bias after the pooling, SumPool multiplies NNGP and NTK by the window size²
    and GlobalSumPool by the number of pixel pairs, against the averaging layers."""
    x = rng.standard_normal((3, 6, 6, 2))
    head = [stax.Conv(4, (3, 3), padding="SAME", W_std=1.3, b_std=0.2), stax.Relu()]
    tail = [stax.Conv(4, (2, 2), W_std=1.1, b_std=None), stax.Relu()]
    make = lambda pool, gpool: stax.serial(*head, pool, *tail, gpool, stax.Dense(1, b_std=None))  # noqa: E731
    sums = make(stax.SumPool((2, 2), (2, 2), padding), stax.GlobalSumPool())[2](x, None)
    avgs = make(stax.AvgPool((2, 2), (2, 2), padding), stax.GlobalAvgPool())[2](x, None)
    # Relu is positively homogeneous: the 16× from SumPool passes through Conv/Relu;
    # 2×2 pooled pixels, so GlobalSumPool adds (2·2)² = 16 more
    np.testing.assert_allclose(sums.nngp, avgs.nngp * 16 * 16, rtol=1e-12)
    np.testing.assert_allclose(sums.ntk, avgs.ntk * 16 * 16, rtol=1e-12)
