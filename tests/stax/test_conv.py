"""Convolutional kernels: agreement with neural-tangents 0.6.5, layouts,
memory-bounded evaluation, the cost model and input errors.

Reference values and tolerances: tests/support/reference.py.
"""

import json

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.errors import InputError, SpecError, UnsupportedOptionError
from ntkscale.stax.engine import reference_image as conv_eval
from ntkscale.stax.engine import select_path
from tests.support.nets import SQRT2
from tests.support.reference import (NT_CONV_EXTRA, assert_case_matches_nt, assert_matches_nt, case_names,
                                     load_case, needs_nt, needs_nt_conv_extra)

CONV_CASES = case_names(prefixes=("conv", "myrtle"))
EXTRA_CASES = case_names(NT_CONV_EXTRA)


def small_net(head="gap", padding="SAME", strides=None, act=None, pool=None, b_std=0.1,
              parameterization="ntk", filter_shape=(3, 3), blocks=2):
    act = act or stax.Relu()
    layers = []
    for i in range(blocks):
        if i and pool is not None:
            layers.append(pool)
        layers += [stax.Conv(8, filter_shape, strides=strides, padding=padding, W_std=SQRT2,
                             b_std=b_std, parameterization=parameterization), act]
    layers.append(stax.GlobalAvgPool() if head == "gap" else stax.Flatten())
    return stax.serial(*layers, stax.Dense(1, W_std=SQRT2, b_std=b_std,
                                           parameterization=parameterization))


# ------------------------------------------------------------ neural-tangents
@needs_nt
@pytest.mark.parametrize("name", CONV_CASES)
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_conv_against_neural_tangents(name, fast):
    assert_case_matches_nt(name, fast)


@needs_nt_conv_extra
@pytest.mark.parametrize("name", EXTRA_CASES)
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_conv_extra_cases_against_neural_tangents(name, fast):
    """normalize_edges, CIRCULAR/strided pooling, Dense and activations on
    images, flat activations after pooling, Myrtle-7, ... (x1[2] = −x1[0]/2:
    anti-parallel images, compared like self pairs)."""
    assert_case_matches_nt(name, fast, NT_CONV_EXTRA)


def _pooled_slab_cases():
    cases = [(n, None) for n in CONV_CASES] + [(n, "extra") for n in EXTRA_CASES]
    out = []
    for name, which in cases:
        spec = load_case(name, NT_CONV_EXTRA if which else None).spec
        if any(l[0] == "AvgPool" for l in spec) and "CIRCULAR" not in json.dumps(spec):
            out.append((name, which))
    return out


@pytest.mark.parametrize("name,which", _pooled_slab_cases())
def test_pooling_cases_run_on_the_slab_path(name, which, monkeypatch):
    """The neural-tangents AvgPool cases (Myrtle-5/7, VALID/SAME pools,
    normalize_edges) go through the compiled slab path, not the reference."""
    spec, x1, x2, nngp, ntk = load_case(name, NT_CONV_EXTRA if which else None)
    kernel_fn = stax.from_spec(spec)[2]
    assert select_path(kernel_fn, x1.shape[1:]).name == "cpu_slab_pooled"

    def refuse(*args, **kwargs):
        raise AssertionError("reference path used")

    monkeypatch.setattr(conv_eval, "_pair_tile", refuse)
    monkeypatch.setattr(conv_eval, "self_trajectory", refuse)
    out = kernel_fn(x1, x2, ("nngp", "ntk"))
    assert_matches_nt(out[0], nngp, x1, x2)
    assert_matches_nt(out[1], ntk, x1, x2)


@needs_nt
def test_reference_covers_the_issue_cases():
    wanted = ["conv_same_gap", "conv_same_flatten", "conv_valid_gap", "conv_circular_gap",
              "conv_strides2_gap", "conv_avgpool_valid_gap", "conv_filter32_gap",
              "conv_bnone_gap", "conv_erf_gap", "conv_standard_gap", "myrtle5"]
    assert set(wanted) <= set(CONV_CASES)


@needs_nt
def test_myrtle_preset_is_the_reference_myrtle():
    spec, x1, x2, nngp, ntk = load_case("myrtle5")
    preset = stax.presets.myrtle(5, width=16, final_pools=1)
    assert preset.spec == stax.canonical_spec(spec)
    np.testing.assert_allclose(preset[2](x1, x2, "ntk"), ntk, rtol=1e-10)


# ----------------------------------------------------------------- layouts
def test_layouts_follow_pooling_and_flatten():
    x_shape = (8, 8, 1)
    gap = conv_eval.plan_image_net(small_net("gap")[2]._layers, x_shape)
    flat = conv_eval.plan_image_net(small_net("flatten")[2]._layers, x_shape)
    assert set(gap.layouts[:5]) == {"full"} and gap.pair_entries == 8 ** 4
    assert set(flat.layouts[:5]) == {"diag"} and flat.pair_entries == 64
    myrtle = stax.presets.myrtle(5, final_pools=1)[2]
    plan = conv_eval.plan_image_net(myrtle._layers, x_shape)
    # full up to the last AvgPool, which feeds Flatten: its output is diagonal
    assert plan.layouts[-4:] == ("full", "diag", "flat", "flat")
    assert plan.to_diag_after[-3] and sum(plan.to_diag_after) == 1


def test_flatten_net_only_tracks_matching_pixels(rng):
    """Flatten after convs = the locally connected net's kernel: tracking
    only the spatial diagonal gives the same numbers as tracking all pairs."""
    x = rng.uniform(size=(4, 6, 5, 2))
    kf = small_net("flatten", padding="VALID")[2]
    diag = kf(x, None, "ntk", fast=False)
    # Force the full layout by evaluating the same net as an explicit trace.
    layers = kf._layers
    plan = conv_eval.plan_image_net(layers, x.shape[1:])
    full_plan = conv_eval.ImagePlan(plan.input_shape, plan.hw,
                                    tuple("full" if l != "flat" else l for l in plan.layouts),
                                    plan.to_diag_after)
    traj, _ = conv_eval.self_trajectory(layers, full_plan, x, np, 1 << 30)
    k, t = conv_eval._pair_tile(layers, full_plan, x, x, traj, traj, np, True)
    np.testing.assert_allclose(conv_eval._mirror_upper(t, np), diag, rtol=1e-12)


# ------------------------------------------------------ memory-bounded tiles
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_results_identical_for_any_memory_budget(fast, rng):
    x1 = rng.uniform(size=(7, 6, 6, 2))
    x2 = rng.uniform(size=(5, 6, 6, 2))
    kf = small_net("gap", pool=stax.AvgPool((2, 2), padding="SAME") if not fast else None)[2]
    for x2_ in (None, x2):
        big = kf(x1, x2_, ("nngp", "ntk"), fast=fast, memory_budget=1 << 32)
        for budget in (1, 6 ** 4 * 8 * 16 * 3, 6 ** 4 * 8 * 16 * 10):
            small = kf(x1, x2_, ("nngp", "ntk"), fast=fast, memory_budget=budget)
            np.testing.assert_allclose(small[0], big[0], rtol=1e-14, atol=0)
            np.testing.assert_allclose(small[1], big[1], rtol=1e-14, atol=0)


@pytest.mark.parametrize("tile", [(1, 1), (2, 3), (3, 3), (7, 5)])
def test_reference_tiles_give_the_same_kernel(tile, rng):
    x1 = rng.uniform(size=(7, 5, 5, 1))
    x2 = rng.uniform(size=(5, 5, 5, 1))
    layers = small_net("gap", padding="CIRCULAR")[2]._layers
    ref = conv_eval.evaluate_image(layers, x1, x2, np, want_ntk=True, memory_budget=1 << 30)
    out = conv_eval.evaluate_image(layers, x1, x2, np, want_ntk=True, memory_budget=1 << 30,
                                   tile=tile)
    np.testing.assert_allclose(out["ntk"], ref["ntk"], rtol=1e-14)
    sym = conv_eval.evaluate_image(layers, x1, None, np, want_ntk=True, memory_budget=1 << 30,
                                   tile=tile)
    assert np.array_equal(sym["ntk"], sym["ntk"].T)


def test_tile_shape_fits_the_budget():
    assert conv_eval.tile_shape(100, 80, 1000, 10 ** 9, False) == (100, 80)
    r, c = conv_eval.tile_shape(100, 80, 1000, 50 * 1000, False)
    assert r * c * 1000 <= 50 * 1000
    b, b2 = conv_eval.tile_shape(100, 100, 1000, 50 * 1000, True)
    assert b == b2 and b * b * 1000 <= 50 * 1000
    assert conv_eval.tile_shape(3, 3, 10 ** 12, 1, True) == (1, 1)


# --------------------------------------------------------- self-consistency
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_x2_none_equals_x2_x1_and_diag(fast, rng):
    x = rng.uniform(size=(5, 5, 5, 3))
    kf = small_net("gap", act=stax.Erf())[2]
    sym = kf(x, None, ("nngp", "ntk"), fast=fast)
    full = kf(x, x, ("nngp", "ntk"), fast=fast)
    np.testing.assert_allclose(sym[0], full[0], rtol=1e-13)
    np.testing.assert_allclose(sym[1], full[1], rtol=1e-13)
    d = kf.diag(x, ("nngp", "ntk"))
    np.testing.assert_allclose(d[0], np.diag(sym[0]), rtol=1e-13)
    np.testing.assert_allclose(d[1], np.diag(sym[1]), rtol=1e-13)


def test_dense_and_activations_after_pooling(rng):
    """Flat layers after GlobalAvgPool need the pooled self-variance (the full
    self-covariance), not the mean of per-pixel variances."""
    x = rng.uniform(size=(4, 5, 5, 2))
    layer = stax.serial(stax.Conv(4, (3, 3), padding="SAME", W_std=1.5, b_std=0.2), stax.Relu(),
                        stax.GlobalAvgPool(), stax.Dense(16, W_std=1.5, b_std=0.2), stax.Erf(),
                        stax.Dense(1, W_std=1.5, b_std=0.2))
    fast = layer[2](x, None, ("nngp", "ntk"))
    ref = layer[2](x, None, ("nngp", "ntk"), fast=False)
    np.testing.assert_allclose(fast[0], ref[0], rtol=1e-12)
    np.testing.assert_allclose(fast[1], ref[1], rtol=1e-12)
    # the same by hand: the GAP-ed net's kernel fed through Dense/Erf/Dense
    head = stax.serial(stax.Conv(4, (3, 3), padding="SAME", W_std=1.5, b_std=0.2), stax.Relu(),
                       stax.GlobalAvgPool(), stax.Dense(16, W_std=1.5, b_std=0.2))[2]
    k = head(x, None, "nngp")
    q = np.diag(k)
    erf = (2 / np.pi) * np.arcsin(2 * k / np.sqrt(np.outer(1 + 2 * q, 1 + 2 * q)))
    np.testing.assert_allclose(ref[0], 1.5 ** 2 * erf + 0.2 ** 2, rtol=1e-10)


def test_zero_images_do_not_give_nan():
    x = np.zeros((3, 4, 4, 1))
    x[1, 1, 2, 0] = 1.0
    for fast in (True, False):
        out = small_net("gap")[2](x, None, ("nngp", "ntk"), fast=fast)
        assert np.isfinite(out[0]).all() and np.isfinite(out[1]).all()


def test_float32_stays_float32(rng):
    x = rng.uniform(size=(4, 5, 5, 1)).astype(np.float32)
    kf = small_net("gap", pool=stax.AvgPool((2, 2), padding="SAME"))[2]  # reference path
    out = kf(x, None, "ntk")
    assert out.dtype == np.float32
    ref = kf(x.astype(np.float64), None, "ntk")
    np.testing.assert_allclose(out, ref, rtol=2e-5)


def test_array_api_strict_namespace(rng):
    xp = pytest.importorskip("array_api_strict")
    x = rng.uniform(size=(3, 5, 5, 2))
    kf = small_net("gap", padding="CIRCULAR", pool=stax.AvgPool((2, 2), (1, 1), "SAME"))[2]
    out = kf(xp.asarray(x), None, "ntk")
    np.testing.assert_allclose(np.asarray(out), kf(x, None, "ntk", fast=False), rtol=1e-13)


# --------------------------------------------------------------- cost model
def test_cost_model_covers_conv_layers():
    kf = stax.presets.cntk(3)[2]
    c8 = kf.cost((8, 8, 1))
    c16 = kf.cost((16, 16, 1))
    assert c8["pair_entries"] == 8 ** 4 and c16["pair_entries"] == 16 ** 4
    assert 10 < c16["flops"] / c8["flops"] < 20            # O(H²W²)
    assert c8["bytes"] == 8 ** 4 * conv_eval.IMAGE_TEMPORARIES
    flat = stax.presets.cntk(3, "flatten")[2].cost((8, 8, 1))
    assert flat["pair_entries"] == 64 and flat["flops"] < c8["flops"] / 30
    with pytest.raises(InputError, match="layer 0"):
        stax.presets.cntk(3)[2].cost((8, 8))


# ------------------------------------------------------------------- errors
def test_non_4d_images_name_the_layer():
    kf = small_net()[2]
    with pytest.raises(InputError, match=r"4-D NHWC.*\(3, 8, 8\).*x\[\.\.\., None\].*layer 0 is Conv"):
        kf(np.zeros((3, 8, 8)))


def test_channel_mismatch_names_the_layer():
    with pytest.raises(InputError, match=r"\(8, 8, 3\).*\(8, 8, 1\).*layer 0 is Conv"):
        small_net()[2](np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 8, 1)))


def test_window_larger_than_image():
    kf = small_net(padding="VALID")[2]
    with pytest.raises(InputError, match=r"layer 2 \(Conv\(filter_shape=\(3, 3\), padding='VALID'\)\)"
                                         r".*at least 3x3.*input is 2x2.*images are 4x4x1"):
        kf(np.ones((2, 4, 4, 1)))


def test_pooling_that_empties_the_image():
    with pytest.raises(InputError, match=r"layer 11 \(AvgPool.*2x2.*input is 1x1.*images are 8x8x3"):
        stax.presets.myrtle(5, final_pools=3)[2](np.ones((2, 8, 8, 3)))


def test_structural_errors():
    with pytest.raises(SpecError, match="still an image"):
        stax.serial(stax.Conv(1, (3, 3)), stax.Relu())[2](np.ones((2, 4, 4, 1)))
    with pytest.raises(SpecError, match=r"layer 2 \(Conv.*already flat.*layer 1 is GlobalAvgPool"):
        stax.serial(stax.Conv(1, (3, 3), padding="SAME"), stax.GlobalAvgPool(),
                    stax.Conv(1, (3, 3)))[2](np.ones((2, 4, 4, 1)))
    with pytest.raises(SpecError, match="2 entries"):
        stax.Conv(1, (3, 3, 3))
    with pytest.raises(SpecError, match="filter_shape"):
        stax.Conv(1)
    with pytest.raises(SpecError, match="padding"):
        stax.Conv(1, (3, 3), padding="same")
    with pytest.raises(UnsupportedOptionError):
        stax.Conv(1, (3, 3), dimension_numbers=("NCHW", "OIHW", "NCHW"))


def test_spec_round_trip_and_hash():
    layer = stax.presets.myrtle(7)
    again = stax.from_spec(layer[2].spec_json)
    assert again.spec == layer.spec and again[2].spec_hash == layer[2].spec_hash
    assert stax.AvgPool((2, 2)).spec[0][1]["strides"] is None
