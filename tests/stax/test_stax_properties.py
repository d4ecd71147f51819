"""Properties: symmetry, PSD, precision, backends, blocking, specs, pickling."""

import json
import pickle
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntkscale import stax
from ntkscale.stax.engine import evaluate
from tests.support.nets import FLAT_ACTS as ACTS, fc_relu


@st.composite
def networks_and_inputs(draw):
    depth = draw(st.integers(1, 3))
    act = draw(st.sampled_from(ACTS))
    w = draw(st.floats(0.5, 2.0))
    b = draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(W_std=w, b_std=b), act]
    n = draw(st.integers(1, 12))
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2 ** 16))
    x = np.random.default_rng(seed).standard_normal((n, d)) * draw(st.floats(0.1, 3.0))
    return stax.serial(*layers, stax.Dense(W_std=w, b_std=b))[2], x


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks_and_inputs())
def test_gram_is_symmetric_and_psd(case):
    kernel_fn, x = case
    for k in kernel_fn(x, None, ("nngp", "ntk")):
        assert np.array_equal(k, k.T)
        scale = max(np.abs(k).max(), 1e-12)
        assert np.linalg.eigvalsh(k).min() > -1e-9 * scale * len(k)
    full = kernel_fn(x, None, "ntk")
    np.testing.assert_allclose(kernel_fn(x, x, "ntk"), full, rtol=1e-9, atol=1e-12 * np.abs(full).max())


@settings(max_examples=25, deadline=None)
@given(networks_and_inputs())
def test_fast_path_matches_reference(case):
    kernel_fn, x = case
    y = x[::-1] * 0.7
    for x2 in (None, y):
        fast = kernel_fn(x, x2, ("nngp", "ntk"))
        ref = kernel_fn(x, x2, ("nngp", "ntk"), fast=False)
        for a, b in zip(fast, ref):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13 * max(np.abs(b).max(), 1e-300))


def test_float32_close_to_float64_including_parallel_pairs(rng):
    x = rng.standard_normal((64, 20))
    x[1] = x[0]            # duplicate
    x[2] = -x[0]           # anti-parallel
    x[3] = 3 * x[0]        # parallel, other norm
    kernel_fn = fc_relu(3)[2]
    for fast in (True, False):
        k64 = kernel_fn(x, None, ("nngp", "ntk"), fast=fast)
        k32 = kernel_fn(x.astype(np.float32), None, ("nngp", "ntk"), fast=fast)
        for a, b in zip(k32, k64):
            assert a.dtype == np.float32
            rel = np.abs(a - b) / np.abs(b).max()
            assert rel.max() < 2e-5, rel.max()


def test_output_dtype_follows_input(rng):
    kernel_fn = fc_relu(2)[2]
    assert kernel_fn(rng.standard_normal((3, 2)).astype(np.float32), None, "ntk").dtype == np.float32
    assert kernel_fn(rng.standard_normal((3, 2)), None, "ntk").dtype == np.float64
    assert kernel_fn(np.arange(6).reshape(3, 2), None, "ntk").dtype == np.float64


def test_array_api_strict_namespace(rng):
    xs = pytest.importorskip("array_api_strict")
    x1, x2 = rng.standard_normal((5, 3)), rng.standard_normal((4, 3))
    for act in ACTS:
        kernel_fn = stax.serial(stax.Dense(W_std=1.5, b_std=0.1), act, stax.Dense(W_std=1.5, b_std=0.1))[2]
        ref = kernel_fn(x1, x2, ("nngp", "ntk"), fast=False)
        out = kernel_fn(xs.asarray(x1), xs.asarray(x2), ("nngp", "ntk"))
        for a, b in zip(out, ref):
            assert a.dtype == xs.float64
            np.testing.assert_allclose(np.from_dlpack(a), b, rtol=1e-12)
        diag = kernel_fn.diag(xs.asarray(x1), "ntk")
        np.testing.assert_allclose(np.from_dlpack(diag), kernel_fn.diag(x1, "ntk"), rtol=1e-12)


@pytest.mark.parametrize("rows", [1, 3, 7, 50])
def test_row_blocks_equal_all_at_once(rng, rows):
    x = rng.standard_normal((23, 4))
    y = rng.standard_normal((11, 4))
    layers = fc_relu(2)[2]._layers
    for x2 in (None, y):
        whole = evaluate(layers, x, x2, np, want_ntk=True, fast=False)
        blocked = evaluate(layers, x, x2, np, want_ntk=True, fast=False, block_rows=rows)
        for key in whole:
            np.testing.assert_allclose(blocked[key], whole[key], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("image", [False, True])
def test_memory_budget_controls_blocking(rng, image):
    """A smaller budget gives smaller reference tiles and a lower peak of
    temporaries (tracemalloc), with the same kernel."""
    if image:
        kernel_fn = stax.serial(stax.Conv(1, (3, 3), padding="SAME"), stax.Gelu(),
                                stax.GlobalAvgPool(), stax.Dense(1))[2]
        x = rng.standard_normal((24, 6, 6, 2))
    else:
        kernel_fn = fc_relu(2)[2]
        x = rng.standard_normal((300, 4))
    small = 1 << 16
    big = 1 << 30
    tiles = [kernel_fn.explain(x.shape, memory_budget=b, fast=False).tile for b in (small, big)]
    assert tiles[0][0] < tiles[1][0], tiles

    def run(budget):
        tracemalloc.start()
        out = kernel_fn(x, None, "ntk", fast=False, memory_budget=budget)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return out, peak

    whole, peak_big = run(big)
    tiny, peak_small = run(small)
    assert peak_small < 0.5 * peak_big
    np.testing.assert_allclose(tiny, whole, rtol=1e-13)


def test_gram_rows_equal_slices_of_full_gram(rng):
    """Row blocks against the full set equal the same rows of the full Gram (fast path)."""
    x = rng.standard_normal((64, 10))
    kernel_fn = fc_relu(3)[2]
    full = kernel_fn(x, None, "ntk")
    for r0 in range(0, 64, 16):
        np.testing.assert_allclose(kernel_fn(x[r0:r0 + 16], x, "ntk"), full[r0:r0 + 16], rtol=1e-12)


# -- specs ---------------------------------------------------------------

def test_spec_is_canonical_and_round_trips():
    layer = stax.serial(stax.Dense(512, W_std=1, b_std=0.1), stax.Relu(), stax.Dense(1))
    spec = layer[2].spec
    assert spec[0] == ["Dense", {"W_std": 1.0, "b_std": 0.1, "batch_axis": 0, "channel_axis": -1,
                                 "out_dim": 512, "parameterization": "ntk", "s": [1, 1]}]
    assert spec[1] == ["Relu", {"do_stabilize": False}]
    text = layer[2].spec_json
    assert json.loads(text) == spec
    assert list(spec[0][1]) == sorted(spec[0][1])
    again = stax.from_spec(text)
    assert again[2] == layer[2] and again[2].spec_hash == layer[2].spec_hash
    assert stax.from_spec([["Dense", {"out_dim": 512, "W_std": 1.0, "b_std": 0.1}], ["Relu", {}],
                           ["Dense", {"out_dim": 1}]])[2].spec_hash == layer[2].spec_hash


def test_no_semantic_aliasing_but_equal_values(rng):
    relu = stax.serial(stax.Dense(), stax.Relu(), stax.Dense())[2]
    abrelu = stax.serial(stax.Dense(), stax.ABRelu(0, 1), stax.Dense())[2]
    assert relu.spec_hash != abrelu.spec_hash
    x = rng.standard_normal((4, 3))
    np.testing.assert_allclose(relu(x, None, "ntk"), abrelu(x, None, "ntk"), rtol=1e-14)


def test_nested_serial_flattens_and_hash_is_stable():
    block = stax.serial(stax.Dense(8, W_std=2.0), stax.Erf())
    net = stax.serial(block, block, stax.Dense(1))
    assert [name for name, _ in net.spec] == ["Dense", "Erf", "Dense", "Erf", "Dense"]
    # A fixed network has a fixed hash across versions and machines.
    assert stax.serial(stax.Relu())[2].spec_hash == __import__("hashlib").sha256(
        b'[["Relu",{"do_stabilize":false}]]').hexdigest()


def test_pickling_all_three_functions(rng):
    init_fn, apply_fn, kernel_fn = fc_relu(2)
    x = rng.standard_normal((3, 4))
    for fn in (init_fn, apply_fn, kernel_fn):
        again = pickle.loads(pickle.dumps(fn))
        assert again == fn
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(kernel_fn))(x, None, "ntk"), kernel_fn(x, None, "ntk"))
    layer = pickle.loads(pickle.dumps(fc_relu(1)))
    assert isinstance(layer, stax.Layer) and len(layer) == 3


def test_positional_out_dim_like_neural_tangents():
    assert stax.Dense(10).spec[0][1]["out_dim"] == 10
    assert stax.Dense(10, 2.0, 0.1).spec[0][1]["W_std"] == 2.0
