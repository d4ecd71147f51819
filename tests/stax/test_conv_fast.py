"""Parity of the compiled slab kernel (conv_fast) with the array-API
reference path, on a sampled grid of conv networks (principle 13: sampled,
not exhausted), plus its building blocks."""

import math

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.stax.engine import reference_image as conv_eval
from ntkscale.stax.engine import cost_per_entry, cpu_slab as conv_fast, select_path, slab_kernels, slab_program
from ntkscale.stax.layers.base import PARALLEL_TOLERANCE_EPS
from ntkscale.stax.layers.activations import ErfImpl, ReluImpl, LeakyReluImpl
from tests.support.nets import SLAB_NETS as NETS


def _images(rng, n, hw=(6, 6), c=2):
    x = rng.uniform(-1, 1, size=(n,) + hw + (c,))
    x[-1] = -2.0 * x[0]          # anti-parallel images
    return x


@pytest.mark.parametrize("i", range(len(NETS)))
def test_fast_matches_reference(i, rng):
    kf = NETS[i][2]
    x1 = _images(rng, 5, (6, 5), 2)
    x2 = _images(rng, 4, (6, 5), 2)
    assert select_path(kf, x1.shape[1:]).name in ("cpu_slab", "cpu_slab_pooled")
    for a, b in ((x1, None), (x1, x2)):
        fast = kf(a, b, ("nngp", "ntk"))
        ref = kf(a, b, ("nngp", "ntk"), fast=False)
        scale = np.abs(ref[1]).max()
        np.testing.assert_allclose(fast[0], ref[0], rtol=1e-11, atol=1e-13 * np.abs(ref[0]).max())
        np.testing.assert_allclose(fast[1], ref[1], rtol=1e-11, atol=1e-13 * scale)
    nngp_only = kf(x1, x2, "nngp")
    np.testing.assert_allclose(nngp_only, kf(x1, x2, "nngp", fast=False), rtol=1e-11,
                               atol=1e-13 * np.abs(nngp_only).max())
    diag = kf.diag(x1, ("nngp", "ntk"))
    np.testing.assert_allclose(diag[1], np.diag(kf(x1, None, "ntk", fast=False)), rtol=1e-11)


def pooled_nets():
    """Nets with AvgPool the slab kernel runs (no CIRCULAR): Myrtle-5/7 and
    variants: SAME/VALID and strided/stride-1 pools, normalize_edges,
    GAP/Flatten ends, an AvgPool before any Conv (Θ still zero) and one
    right after a Dense on images, strided and VALID convs, Erf/LeakyRelu/
    ABRelu, the standard parameterization, a flat activation tail."""
    def conv(**kw):
        return stax.Conv(3, (3, 3), padding="SAME", W_std=1.4, b_std=0.1, **kw)

    return {
        "myrtle5_8x8": (stax.presets.myrtle(5, final_pools=1), (8, 8), 3),
        "myrtle7_8x8": (stax.presets.myrtle(7, final_pools=1), (8, 8), 1),
        "myrtle5_16x16": (stax.presets.myrtle(5, final_pools=2), (16, 16), 2),
        "same_pools_gap": (stax.serial(
            conv(), stax.Relu(), stax.AvgPool((2, 2), padding="SAME"), conv(), stax.Erf(),
            stax.AvgPool((3, 3), strides=(2, 2), padding="SAME", normalize_edges=True),
            conv(), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1)), (8, 8), 2),
        "pool_first_standard": (stax.serial(
            stax.AvgPool((2, 2), strides=(2, 2)),
            stax.Conv(4, (3, 3), padding="VALID", b_std=None, parameterization="standard"),
            stax.LeakyRelu(0.2), stax.Dense(5, W_std=1.2, b_std=0.3, parameterization="standard"),
            stax.AvgPool((2, 2)), stax.Flatten(),
            stax.Dense(3, W_std=1.3, b_std=0.2, parameterization="standard"), stax.Erf(),
            stax.Dense(1, parameterization="standard")), (16, 12), 1),
        "strided_conv_valid_pool": (stax.serial(
            stax.Conv(4, (3, 3), strides=(2, 2), padding="SAME", b_std=0.2), stax.Relu(),
            stax.AvgPool((3, 3), strides=(2, 2)), stax.Conv(4, (2, 2), padding="VALID"),
            stax.ABRelu(-0.3, 1.2), stax.GlobalAvgPool(), stax.Dense(1)), (16, 16), 3),
    }


POOLED = pooled_nets()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(POOLED))
def test_pooled_fast_matches_reference(name, dtype, rng):
    """AvgPool nets run on the slab path (stages of slabs joined by pooling
    gathers) and agree with the reference path; 11 images (66 symmetric
    pairs) and 11 × 5 do not fill the lanes."""
    layer, hw, c = POOLED[name]
    kf = layer[2]
    x1 = _images(rng, 11, hw, c).astype(dtype)
    x2 = _images(rng, 5, hw, c).astype(dtype)
    assert select_path(kf, x1.shape[1:]).name == "cpu_slab_pooled"
    assert select_path(kf, x1.shape[1:], "gpu").name == "cuda_slab"   # pooling stages on the GPU kernel too
    rtol = 1e-11 if dtype == "float64" else 1e-5
    for a, b in ((x1, None), (x1, x2)):
        fast = kf(a, b, ("nngp", "ntk"))
        ref = kf(a, b, ("nngp", "ntk"), fast=False)
        for f, r in zip(fast, ref):
            assert f.dtype == np.dtype(dtype)
            np.testing.assert_allclose(f, r, rtol=rtol, atol=rtol * 1e-2 * np.abs(r).max())
    nngp_only = kf(x1, x2, "nngp")
    np.testing.assert_allclose(nngp_only, kf(x1, x2, "nngp", fast=False), rtol=rtol,
                               atol=rtol * 1e-2 * np.abs(nngp_only).max())
    diag = kf.diag(x1, ("nngp", "ntk"))
    ref = kf(x1, None, ("nngp", "ntk"), fast=False)
    np.testing.assert_allclose(diag[0], np.diag(ref[0]), rtol=rtol)
    np.testing.assert_allclose(diag[1], np.diag(ref[1]), rtol=rtol)


def test_pooled_results_do_not_depend_on_lanes_or_threads(rng, monkeypatch):
    kf = POOLED["same_pools_gap"][0][2]
    x1, x2 = _images(rng, 13, (8, 8), 2), _images(rng, 4, (8, 8), 2)
    base, base_sym = kf(x1, x2, "ntk"), kf(x1, None, "ntk")
    for lanes, threads in ((8, 1), (16, 2), (64, 3)):
        monkeypatch.setattr(conv_fast, "LANES_MIN", lanes)
        monkeypatch.setattr(slab_program, "LANES_MIN", lanes)
        monkeypatch.setattr(conv_fast, "LANES_MAX", lanes)
        monkeypatch.setattr(slab_program, "LANES_MAX", lanes)
        monkeypatch.setattr(conv_fast, "n_threads", lambda t=threads: t)
        assert np.array_equal(kf(x1, x2, "ntk"), base)
        assert np.array_equal(kf(x1, None, "ntk"), base_sym)
    assert np.array_equal(base_sym, base_sym.T)


def test_lanes_and_chunks_do_not_change_results(rng, monkeypatch):
    kf = stax.presets.cntk(2)[2]
    x1, x2 = _images(rng, 11, (5, 5), 1), _images(rng, 6, (5, 5), 1)
    base = kf(x1, x2, "ntk")
    base_sym = kf(x1, None, "ntk")
    for lanes, chunk in ((8, 64), (16, 64), (64, 64), (8, 9)):
        monkeypatch.setattr(conv_fast, "LANES_MIN", lanes)
        monkeypatch.setattr(slab_program, "LANES_MIN", lanes)
        monkeypatch.setattr(conv_fast, "LANES_MAX", lanes)
        monkeypatch.setattr(slab_program, "LANES_MAX", lanes)
        monkeypatch.setattr(conv_fast, "CHUNK_PAIRS", chunk)
        assert np.array_equal(kf(x1, x2, "ntk"), base)
        assert np.array_equal(kf(x1, None, "ntk"), base_sym)
    assert np.array_equal(base_sym, base_sym.T)


def test_threads_do_not_change_results(rng, monkeypatch):
    kf = stax.presets.cntk(2, b_std=None)[2]
    x = _images(rng, 40, (4, 4), 1)
    one = None
    for threads in (1, 2, 3):
        monkeypatch.setattr(conv_fast, "n_threads", lambda t=threads: t)
        out = kf(x, None, "ntk")
        one = out if one is None else one
        assert np.array_equal(out, one)


def test_unsupported_nets_use_the_reference_path(rng):
    x = _images(rng, 3, (4, 4), 1)
    for layer in (stax.serial(stax.Conv(2, (3, 3), padding="CIRCULAR"), stax.Relu(),
                              stax.AvgPool((2, 2), (2, 2), padding="CIRCULAR"), stax.Flatten(),
                              stax.Dense(1)),
                  stax.serial(stax.Conv(2, (3, 3), padding="CIRCULAR"), stax.Relu(),
                              stax.AvgPool((2, 2), (2, 2)), stax.Flatten(), stax.Dense(1)),
                  stax.serial(stax.Conv(2, (3, 3), padding="SAME"), stax.Gelu(),
                              stax.GlobalAvgPool(), stax.Dense(1)),
                  stax.serial(stax.Conv(2, (3, 3), padding="SAME"), stax.Relu(),
                              stax.Conv(2, (3, 3), padding="CIRCULAR"), stax.Relu(),
                              stax.GlobalAvgPool(), stax.Dense(1))):
        assert select_path(layer, x.shape[1:]).name == "reference"
        np.testing.assert_array_equal(layer[2](x, None, "ntk"), layer[2](x, None, "ntk", fast=False))


@pytest.mark.slow
def test_float32_fast_path(rng):
    kf = stax.presets.cntk(3)[2]
    x = _images(rng, 9, (6, 6), 1)
    out = kf(x.astype(np.float32), None, ("nngp", "ntk"))
    ref = kf(x, None, ("nngp", "ntk"), fast=False)
    assert out[0].dtype == np.float32
    np.testing.assert_allclose(out[0], ref[0], rtol=3e-5)
    np.testing.assert_allclose(out[1], ref[1], rtol=3e-5)


def test_atan_polynomial_is_accurate():
    t = np.linspace(0.0, math.tan(math.pi / 8), 20001)
    z = t * t
    r = np.zeros_like(t)
    for c in slab_kernels.ATAN_R:
        r = r * z + c
    approx = t + t * z * r
    ulp = np.spacing(np.maximum(np.arctan(t), 1e-300))
    assert np.max(np.abs(approx - np.arctan(t)) / ulp) <= 2.0


@pytest.mark.parametrize("impl", [ReluImpl({"do_stabilize": False}),
                                  LeakyReluImpl({"alpha": -0.4, "do_stabilize": False})])
def test_abrelu_row_matches_closed_form(impl, rng):
    """The scale-free vectorised dual against ``_ABReluFamily.dual``,
    including exactly (anti)parallel, orthogonal, clipped and zero-norm pairs."""
    q1 = rng.uniform(0.1, 3.0, 4000)
    q2 = rng.uniform(0.1, 3.0, 4000)
    norm = np.sqrt(q1 * q2)
    rho = np.concatenate([rng.uniform(-1, 1, 3990),
                          [1.0, -1.0, 0.0, 1 - 1e-15, -1 + 1e-15, 1 + 1e-15, 0.5, -0.5, 1e-9, -1e-9]])
    c = rho * norm
    q1[-1] = 0.0
    c[-1] = 0.0
    a, b = impl.slopes()
    consts = np.array(slab_kernels.CONSTS + (PARALLEL_TOLERANCE_EPS * np.finfo(float).eps,
                                           1.0))
    kr, tr = c.copy(), np.ones_like(c)
    slab_kernels.abrelu_row(kr, tr, np.sqrt(q1), np.sqrt(q2), (a * a + b * b) / 2,
                          (a - b) ** 2 / (2 * np.pi), True, consts)
    k, kdot = impl.dual(c, q1, q2, np, True)
    np.testing.assert_allclose(kr, k, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(tr, kdot, rtol=1e-13, atol=1e-15)


def test_erf_row_matches_closed_form(rng):
    impl = ErfImpl({"a": 0.7, "b": 1.3, "c": 0.2})
    q1 = rng.uniform(0.0, 3.0, 2000)
    q2 = rng.uniform(0.1, 3.0, 2000)
    c = rng.uniform(-1, 1, 2000) * np.sqrt(q1 * q2)
    c[:3] = (np.sqrt(q1 * q2))[:3] * np.array([1.0, -1.0, 0.0])
    consts = np.array(slab_kernels.CONSTS + (PARALLEL_TOLERANCE_EPS * np.finfo(float).eps,
                                           1.0))
    kr, tr = c.copy(), np.ones_like(c)
    slab_kernels.erf_row(kr, tr, q1, np.sqrt(q1), q2, np.sqrt(q2), 0.7, 1.3, 0.2, True, consts)
    k, kdot = impl.dual(c, q1, q2, np, True)
    np.testing.assert_allclose(kr, k, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(tr, kdot, rtol=1e-13)


def test_flops_per_pair_counts_slab_entries():
    layers = stax.presets.cntk(3)[2]._layers
    plan = conv_eval.plan_image_net(layers, (8, 8, 1))
    flops = slab_program.flops_per_pair(layers, plan)
    # 4 stages of 8^4 pixel pairs; conv 14 + relu 37 flops per entry and layer
    assert 3 * 8 ** 4 * 51 < flops <= 3 * 8 ** 4 * 51 + 5 * 8 ** 4


def test_flops_per_pair_of_a_pooled_net():
    """Myrtle-5 on 8×8: every pixel pair through 2 Conv+Relu, then the 4×4
    stage (all pairs), then the 2×2 stage (its 9 offsets), plus K0 (7 per
    pair of pixels) and the pooling (2 per pooled pair, 6 per divided one)."""
    layers = stax.presets.myrtle(5, final_pools=1)[2]._layers
    plan = conv_eval.plan_image_net(layers, (8, 8, 3))
    flops = slab_program.flops_per_pair(layers, plan)
    body = 2 * 8 ** 4 * 51 + 4 ** 4 * 51 + 2 ** 4 * 51
    assert body + 9 * 8 ** 4 < flops < body + 10 * 8 ** 4
    cost = cost_per_entry(layers, (8, 8, 3))
    assert flops <= cost["flops"] < flops + 100   # plus the readout Dense
