"""Parity with neural-tangents 0.6.5 for NWC sequences (1-D Conv/AvgPool, GlobalAvgPool,
Flatten, Dense), GlobalSelfAttention (every attention_mechanism, linear_scaling True and
False, pos_emb_type NONE/SUM/CONCAT, val_pos_emb, n_chan_pos_emb, decay functions), the
transformer preset and attention on NHWC images; float64, symmetric and cross kernels with
(anti)parallel rows (tests/reference/nt_attention.npz, generate_nt_attention.py)."""

import numpy as np
import pytest

from ntkscale import stax
from tests.support.reference import assert_matches_nt, case_names, load_case
from tests.support.paths import REFERENCE

NT_ATTENTION = np.load(REFERENCE / "nt_attention.npz") if (REFERENCE / "nt_attention.npz").exists() else None
needs_ref = pytest.mark.skipif(NT_ATTENTION is None, reason="attention reference file missing")
CASES = case_names(NT_ATTENTION)
#: the issue's bar: 1e-6 relative (the policy's rtol 1e-10/1e-7 also holds, see below)
RTOL = 1e-6


@needs_ref
@pytest.mark.parametrize("name", CASES)
def test_matches_neural_tangents(name):
    case = load_case(name, NT_ATTENTION)
    kfn = stax.from_spec(case.spec)[2]
    nngp, ntk = kfn(case.x1, case.x2, get=("nngp", "ntk"))
    for got, ref in ((nngp, case.nngp), (ntk, case.ntk)):
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=1e-12 * np.abs(ref).max())
        assert_matches_nt(got, ref, case.x1, case.x2)


@needs_ref
@pytest.mark.parametrize("name", [n for n in CASES if n.endswith("_sym")])
def test_diag_and_reference_path(name):
    case = load_case(name, NT_ATTENTION)
    kfn = stax.from_spec(case.spec)[2]
    dn, dt = kfn.diag(case.x1, get=("nngp", "ntk"))
    np.testing.assert_allclose(dn, np.diag(case.nngp), rtol=1e-9)
    np.testing.assert_allclose(dt, np.diag(case.ntk), rtol=1e-9)
    slow = kfn(case.x1, None, get="ntk", fast=False)
    np.testing.assert_allclose(slow, case.ntk, rtol=RTOL, atol=1e-12 * np.abs(case.ntk).max())


@needs_ref
@pytest.mark.parametrize("name", ["seq_attn_softmax_sum_cross", "seq_transformer_sym",
                                  "seq_attn_sqrt_identity_concat_cross"])
def test_tiles_do_not_change_the_result(name):
    case = load_case(name, NT_ATTENTION)
    kfn = stax.from_spec(case.spec)[2]
    whole = kfn(case.x1, case.x2, get="ntk")
    tiled = kfn(case.x1, case.x2, get="ntk", memory_budget=1 << 12)
    np.testing.assert_allclose(tiled, whole, rtol=1e-12)


@needs_ref
def test_transformer_preset_is_the_reference_network():
    case = load_case("seq_transformer_sym", NT_ATTENTION)
    net = stax.presets.transformer(2, width=16, n_heads=2, mlp_width=32, W_std=1.0, b_std=0.1,
                                   layernorm_eps=1e-6)
    assert net[2].spec == stax.from_spec(case.spec)[2].spec
    nngp = net[2](case.x1, None, get="nngp")
    np.testing.assert_allclose(nngp, case.nngp, rtol=RTOL)
