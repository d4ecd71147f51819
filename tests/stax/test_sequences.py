"""NWC sequences (n, length, channels) through the whole stax machinery: the compiled slab
paths agree with the reference path, init_fn/apply_fn keep the sequence shape, explain and
cost take sequence shapes, and the reference path's cost of attention grows as P³."""

import numpy as np
import pytest

from ntkscale import stax


def _conv_net(padding="SAME", pool="gap"):
    # the slab kernel does not combine CIRCULAR padding with AvgPool: a strided Conv instead
    down = (stax.Conv(16, (2,), strides=(2,), padding=padding) if padding == "CIRCULAR"
            else stax.AvgPool((2,), (2,)))
    body = [stax.Conv(16, (3,), padding=padding, W_std=1.4, b_std=0.1), stax.Relu(), down,
            stax.Conv(16, (2,), strides=(1,), padding=padding, W_std=1.3, b_std=0.05), stax.Erf()]
    end = stax.GlobalAvgPool() if pool == "gap" else stax.Flatten()
    return stax.serial(*body, end, stax.Dense(1, W_std=1.2, b_std=0.1))


@pytest.mark.parametrize("padding,pool", [("SAME", "gap"), ("VALID", "flatten"), ("CIRCULAR", "flatten")])
def test_fast_path_equals_reference_on_sequences(padding, pool, rng):
    kfn = _conv_net(padding, pool)[2]
    x1, x2 = rng.standard_normal((5, 12, 3)), rng.standard_normal((4, 12, 3))
    x2[0] = -2.0 * x1[1]
    path = kfn.explain(x1.shape, x2.shape).path
    assert path.startswith("cpu_slab"), path
    fast = kfn(x1, x2, ("nngp", "ntk"))
    ref = kfn(x1, x2, ("nngp", "ntk"), fast=False)
    for a, b in zip(fast, ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(kfn.diag(x1, "ntk"), np.diag(kfn(x1, None, "ntk")), rtol=1e-10)


def test_sequence_equals_the_one_row_image(rng):
    """A sequence is exactly a 1 x W image with (1, k) windows."""
    x = rng.standard_normal((4, 10, 2))
    seq = stax.serial(stax.Conv(8, (3,), padding="SAME"), stax.Relu(), stax.AvgPool((2,)),
                      stax.GlobalSelfAttention(8, 8, 8, 2), stax.GlobalAvgPool(), stax.Dense(1))
    img = stax.serial(stax.Conv(8, (1, 3), padding="SAME"), stax.Relu(), stax.AvgPool((1, 2)),
                      stax.GlobalSelfAttention(8, 8, 8, 2), stax.GlobalAvgPool(), stax.Dense(1))
    np.testing.assert_allclose(seq[2](x, None, "ntk"), img[2](x[:, None], None, "ntk"), rtol=1e-13)


def test_finite_width_keeps_the_sequence_shape(rng):
    net = stax.serial(stax.Conv(8, (3,), padding="SAME"), stax.Relu(),
                      stax.GlobalSelfAttention(6, 4, 4, 2, pos_emb_type="CONCAT"))
    shape, params = net[0](0, (5, 7, 3))
    assert shape == (5, 7, 6)
    out = net[1](params, rng.standard_normal((5, 7, 3)))
    assert out.shape == (5, 7, 6) and np.isfinite(out).all()
    flat = stax.serial(net, stax.Flatten(), stax.Dense(2))
    shape, params = flat[0](0, (5, 7, 3))
    assert shape == (5, 2) and flat[1](params, rng.standard_normal((5, 7, 3))).shape == (5, 2)


def test_explain_and_cost_take_sequence_shapes():
    att = stax.serial(stax.Dense(8), stax.GlobalSelfAttention(8, 8, 8, 2), stax.GlobalAvgPool(),
                      stax.Dense(1))
    e = att[2].explain((50, 16, 4))
    assert e.path == "reference" and "GlobalSelfAttention" in e.reason and e.entries == 50 * 51 // 2
    c16, c32 = att[2].cost((16, 4)), att[2].cost((32, 4))
    assert c16["pair_entries"] == 16 ** 2 and c32["pair_entries"] == 32 ** 2
    assert 6 < c32["flops"] / c16["flops"] < 9            # O(P³): attention's two P x P products
    agg = stax.serial(stax.Dense(8), stax.Aggregate(), stax.GlobalAvgPool(), stax.Dense(1))
    assert agg[2].explain((10, 6, 3)).path == "reference"
    assert agg[2].cost((6, 3))["flops"] > 0


def test_float32_sequences(rng):
    kfn = stax.presets.transformer(1, width=8, n_heads=2)[2]
    x = rng.standard_normal((4, 6, 3))
    k32 = kfn(x.astype(np.float32), None, "ntk")
    assert k32.dtype == np.float32
    np.testing.assert_allclose(k32, kfn(x, None, "ntk"), rtol=2e-4)


def test_estimator_on_sequences(rng):
    """The scikit-learn estimator takes NWC sequences with a transformer kernel."""
    from ntkscale.estimator import NTKRegressor

    x = rng.standard_normal((30, 6, 3))
    y = x.mean(axis=(1, 2))
    model = NTKRegressor(stax.presets.transformer(1, width=8, n_heads=2)).fit(x[:20], y[:20])
    pred = model.predict(x[20:])
    assert pred.shape == (10,) and np.corrcoef(pred, y[20:])[0, 1] > 0.8


def test_array_api_strict_namespace(rng):
    """The reference maps of attention and Aggregate are array-API: array-api-strict inputs
    give the NumPy numbers."""
    xp = pytest.importorskip("array_api_strict")
    x, p = rng.standard_normal((3, 5, 2)), (rng.random((3, 5, 5)) < 0.5).astype(float)
    net = stax.serial(stax.Dense(4), stax.Aggregate(),
                      stax.GlobalSelfAttention(4, 4, 4, 1, pos_emb_type="SUM", pos_emb_decay_fn="exponential"),
                      stax.LayerNorm(), stax.GlobalAvgPool(), stax.Dense(1))
    got = net[2](xp.asarray(x), None, "ntk", pattern=(xp.asarray(p), None))
    assert type(got).__module__.startswith("array_api_strict")
    np.testing.assert_allclose(np.asarray(got), net[2](x, None, "ntk", pattern=(p, None)), rtol=1e-13)
