"""Aggregate (graph networks) against neural-tangents 0.6.5 (tests/reference/nt_graph.npz,
generate_nt_attention.py): NWC sequences and NHWC images, patterns passed as
``kernel_fn(x1, x2, get, pattern=(p1, p2))``; plus the sparse edge format, partial node
axes, kernel_fn.diag and the tiling of the image path."""

import json

import numpy as np
import pytest

from ntkscale import stax
from tests.support.paths import REFERENCE
from tests.support.reference import assert_matches_nt, case_names, load_case

NT_GRAPH = np.load(REFERENCE / "nt_graph.npz") if (REFERENCE / "nt_graph.npz").exists() else None
needs_ref = pytest.mark.skipif(NT_GRAPH is None, reason="graph reference file missing")
CASES = case_names(NT_GRAPH)


def _patterns(name):
    p1 = NT_GRAPH[f"{name}__pattern1"]
    return p1, (None if int(NT_GRAPH[f"{name}__x2_is_none"]) else NT_GRAPH[f"{name}__pattern2"])


@needs_ref
@pytest.mark.parametrize("name", CASES)
def test_matches_neural_tangents(name):
    case = load_case(name, NT_GRAPH)
    kfn = stax.from_spec(case.spec)[2]
    nngp, ntk = kfn(case.x1, case.x2, get=("nngp", "ntk"), pattern=_patterns(name))
    for got, ref in ((nngp, case.nngp), (ntk, case.ntk)):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-12 * np.abs(ref).max())
        assert_matches_nt(got, ref, case.x1, case.x2)


@needs_ref
@pytest.mark.parametrize("name", [n for n in CASES if n.endswith("_sym")])
def test_diag_and_tiles(name):
    case = load_case(name, NT_GRAPH)
    kfn = stax.from_spec(case.spec)[2]
    p1, _ = _patterns(name)
    dn, dt = kfn.diag(case.x1, get=("nngp", "ntk"), pattern=p1)
    np.testing.assert_allclose(dn, np.diag(case.nngp), rtol=1e-9)
    np.testing.assert_allclose(dt, np.diag(case.ntk), rtol=1e-9)
    tiled = kfn(case.x1, None, get="ntk", pattern=(p1, None), memory_budget=1 << 11)
    np.testing.assert_allclose(tiled, case.ntk, rtol=1e-9)


def _edges(dense):
    """Dense 0/1 (n, W, W) patterns as padded (n, n_edges, 2) (tail, head) edges."""
    n, w, _ = dense.shape
    out = np.full((n, w * w, 2), -1)
    for b in range(n):
        tails, heads = np.nonzero(dense[b])
        out[b, :len(tails)] = np.stack([tails, heads], axis=1)
    return out


def test_sparse_edges_equal_dense_patterns(rng):
    x1, x2 = rng.standard_normal((4, 6, 3)), rng.standard_normal((3, 6, 3))
    d1 = (rng.random((4, 6, 6)) < 0.4).astype(float)
    d2 = (rng.random((3, 6, 6)) < 0.4).astype(float)
    d1[0, 1, 2] = 2.0                                    # a repeated edge counts twice
    e1, e2 = _edges(np.minimum(d1, 1)), _edges(d2)
    e1[0, -1] = (1, 2)
    body = [stax.Dense(8, b_std=0.1), stax.Relu()]
    dense = stax.serial(*body, stax.Aggregate(), stax.Dense(8), stax.GlobalAvgPool(), stax.Dense(1))
    sparse = stax.serial(*body, stax.Aggregate(implementation="SPARSE"), stax.Dense(8),
                         stax.GlobalAvgPool(), stax.Dense(1))
    want = dense[2](x1, x2, "ntk", pattern=(d1, d2))
    np.testing.assert_allclose(sparse[2](x1, x2, "ntk", pattern=(e1, e2)), want, rtol=1e-12)
    _, params = dense[0](0, x1.shape)
    np.testing.assert_allclose(sparse[1](params, x1, pattern=e1), dense[1](params, x1, pattern=d1),
                               rtol=1e-12)


@pytest.mark.parametrize("axis,formula", [((1,), "ah,bk,abwv->hkwv"), ((2,), "aw,bv,hgab->hgwv")])
def test_one_node_axis_of_an_image(axis, formula, rng):
    """Aggregating rows only (or columns only): K_out = A1ᵀ K A2 on that axis, by hand."""
    x1, x2 = rng.standard_normal((2, 3, 4, 2)), rng.standard_normal((3, 3, 4, 2))
    size = 3 if axis == (1,) else 4
    p1, p2 = rng.random((2, size, size)), rng.random((3, size, size))
    net = stax.serial(stax.Aggregate(aggregate_axis=axis), stax.GlobalAvgPool())
    got = net[2](x1, x2, "nngp", pattern=(p1, p2))
    k0 = np.einsum("nhwc,mgvc->nmhgwv", x1, x2) / 2          # (n1, n2, H, H', W, W')
    want = np.array([[np.einsum(formula, p1[i], p2[j], k0[i, j]).mean() for j in range(3)]
                     for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    _, params = net[0](0, x1.shape)
    manual = (np.einsum("nij,niwc->njwc", p1, x1) if axis == (1,)
              else np.einsum("nij,nhic->nhjc", p1, x1)).mean(axis=(1, 2))
    np.testing.assert_allclose(net[1](params, x1, pattern=p1), manual, rtol=1e-12)


def test_no_pattern_is_the_identity(rng):
    x = rng.standard_normal((3, 5, 2))
    net = stax.serial(stax.Dense(4), stax.Aggregate(), stax.GlobalAvgPool(), stax.Dense(1))
    ref = stax.serial(stax.Dense(4), stax.GlobalAvgPool(), stax.Dense(1))
    np.testing.assert_allclose(net[2](x, None, "ntk"), ref[2](x, None, "ntk"), rtol=1e-12)
    assert json.loads(net[2].spec_json)[1][1] == {"aggregate_axis": None, "batch_axis": 0,
                                                  "channel_axis": -1, "implementation": "DENSE",
                                                  "to_dense": None}


def test_enum_names_of_neural_tangents(rng):
    x = rng.standard_normal((2, 4, 3))
    a = stax.Aggregate(implementation=stax.AggregateImplementation.SPARSE)
    assert a.spec == stax.Aggregate(implementation="SPARSE").spec
    att = stax.GlobalSelfAttention(4, 4, 4, 1, attention_mechanism=stax.AttentionMechanism.RELU,
                                   pos_emb_type=stax.PositionalEmbedding.CONCAT)
    assert att.spec[0][1]["attention_mechanism"] == "RELU" and att.spec[0][1]["pos_emb_type"] == "CONCAT"
    assert stax.serial(att, stax.GlobalAvgPool())[2](x, None, "nngp").shape == (2, 2)
