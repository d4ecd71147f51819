"""Branched (FanOut/parallel/FanInSum/FanInProd/FanInConcat), LayerNorm and Dropout networks on the compiled CPU
paths (cpu_flat, cpu_slab, cpu_slab_pooled): parity with the reference path (float64, 1e-12
of the kernel's scale) and with neural-tangents 0.6.5 (tests/reference/nt_branching.npz,
symmetric and cross kernels, (anti)parallel rows), diagonals, float32, and the structures
that fall back with a reason."""

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.errors import SpecError
from ntkscale.stax.engine import select_path
from tests.support.reference import (NT_BRANCHING, assert_matches_nt, case_names, load_case,
                                     needs_nt_branching)

#: every reference case a compiled path runs, and that path
COMPILED = {
    "fc_res_identity": "cpu_flat", "fc_res_dense": "cpu_flat", "fc_res_standard": "cpu_flat",
    "fc_fanout3": "cpu_flat", "fc_nested": "cpu_flat", "fc_layernorm": "cpu_flat",
    "fc_dropout_train": "cpu_flat", "fc_dropout_test": "cpu_flat", "fc_dropout_standard": "cpu_flat",
    "img_res_gap": "cpu_slab", "img_res_standard": "cpu_slab", "img_res_flatten": "cpu_slab",
    "img_layernorm_channel": "cpu_slab", "img_layernorm_all": "cpu_slab",
    "img_layernorm_gap": "cpu_slab", "img_wide_resnet_8x8": "cpu_slab_pooled",
    "img_dropout_gap": "cpu_slab", "img_dropout_flatten": "cpu_slab",
    "fc_concat_equal": "cpu_flat", "fc_concat_widths": "cpu_flat", "fc_prod": "cpu_flat",
    "img_concat": "cpu_slab",
}
#: the reference cases that stay on the reference path, and the layer the reason names
FALLBACK = {"img_res_pool_flatten": "AvgPool"}
CASES = [n for n in case_names(NT_BRANCHING) if n.rsplit("_", 1)[0] in COMPILED]


def _scale_close(got, want, rtol=1e-12):
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * np.abs(want).max())


@needs_nt_branching
def test_every_reference_case_is_routed():
    bases = {n.rsplit("_", 1)[0] for n in case_names(NT_BRANCHING)}
    assert bases == set(COMPILED) | set(FALLBACK)
    for base, layer in FALLBACK.items():
        case = load_case(base + "_sym", NT_BRANCHING)
        path = select_path(stax.from_spec(case.spec)[2], case.x1.shape[1:])
        assert path.name == "reference" and layer in path.reason, path.reason


@needs_nt_branching
@pytest.mark.parametrize("name", CASES)
def test_fast_path_matches_reference_and_neural_tangents(name):
    case = load_case(name, NT_BRANCHING)
    kfn = stax.from_spec(case.spec)[2]
    path = select_path(kfn, case.x1.shape[1:])
    assert path.name == COMPILED[name.rsplit("_", 1)[0]], path.reason
    fast = kfn(case.x1, case.x2, get=("nngp", "ntk"))
    ref = kfn(case.x1, case.x2, get=("nngp", "ntk"), fast=False)
    for got, want, nt in zip(fast, ref, (case.nngp, case.ntk)):
        _scale_close(got, want)
        np.testing.assert_allclose(got, nt, rtol=1e-6, atol=1e-12 * np.abs(nt).max())
        assert_matches_nt(got, nt, case.x1, case.x2)


@needs_nt_branching
@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("img_") and n.endswith("_sym")])
def test_slab_diagonal_is_the_diagonal(name):
    case = load_case(name, NT_BRANCHING)
    kfn = stax.from_spec(case.spec)[2]
    dn, dt = kfn.diag(case.x1, get=("nngp", "ntk"))
    full = kfn(case.x1, None, get=("nngp", "ntk"), fast=False)
    for got, want, nt in zip((dn, dt), full, (case.nngp, case.ntk)):
        _scale_close(got, np.diag(want))
        np.testing.assert_allclose(got, np.diag(nt), rtol=1e-7)   # NT's (anti)parallel rounding


def _conv(c, strides=(1, 1), padding="SAME", filt=(3, 3)):
    return stax.Conv(c, filt, strides, padding=padding, W_std=1.3, b_std=0.2)


def _block(main, short):
    return stax.serial(stax.FanOut(2), stax.parallel(main, short), stax.FanInSum())


NETS = {
    # strided main and shortcut, nested blocks, FanOut(3) with an identity, LayerNorm in a branch
    "strided_nested": (stax.serial(
        _conv(4), _block(stax.serial(stax.Relu(), _conv(4, (2, 2)), stax.Erf(), _conv(4)),
                         _conv(4, (2, 2), filt=(1, 1))),
        _block(_block(stax.serial(stax.Relu(), _conv(4)), stax.Identity()), stax.Identity()),
        stax.FanOut(3),
        stax.parallel(stax.serial(stax.Relu(), _conv(4), stax.LayerNorm(axis=(1, 2, 3))),
                      stax.serial(stax.LeakyRelu(0.1), stax.Dense(4)), stax.Identity()),
        stax.FanInSum(), stax.Relu(), stax.Dropout(0.6, "test"), stax.GlobalAvgPool(),
        stax.Dense(1)), (7, 7, 2), "cpu_slab"),
    "circular": (stax.serial(
        _conv(3, padding="CIRCULAR"),
        _block(stax.serial(stax.Relu(), _conv(3, (2, 2), "CIRCULAR")), _conv(3, (2, 2), "CIRCULAR")),
        stax.LayerNorm(axis=(2, 3)), stax.Relu(), stax.Dropout(0.5), stax.Flatten(), stax.Relu(),
        stax.Dense(1)), (6, 4, 2),
        "cpu_slab"),
    "pooled": (stax.serial(
        _conv(3), _block(stax.serial(stax.Relu(), _conv(3)), stax.Identity()),
        stax.AvgPool((2, 2)), stax.LayerNorm(), stax.Relu(), stax.Dropout(0.8),
        _block(stax.serial(stax.Relu(), _conv(3)), _conv(3, filt=(1, 1))),
        stax.AvgPool((2, 2), (1, 1)), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1)),
        (8, 6, 2), "cpu_slab_pooled"),
    "flat": (stax.serial(
        stax.Dense(16, 1.4, 0.1), _block(stax.serial(stax.Gelu(), stax.Dense(16)),
                                         _block(stax.serial(stax.Sin(), stax.Dense(16)),
                                                stax.Identity())),
        stax.LayerNorm(), stax.Dropout(0.7), stax.Relu(), stax.Dense(12, parameterization="standard"),
        stax.FanOut(3), stax.parallel(stax.Dense(4, parameterization="standard"),
                                      stax.serial(stax.Erf(), stax.Dense(8)), stax.Dense(4)),
        stax.FanInConcat(), stax.Relu(), stax.FanOut(2),
        stax.parallel(stax.Dense(6), stax.serial(stax.Relu(), stax.Dense(6))), stax.FanInProd(),
        stax.Dense(1, parameterization="standard")), (5,), "cpu_flat"),
    # two parallels after one FanOut, a FanOut straight into its FanIn, a one-branch FanOut
    "two_parallels": (stax.serial(
        _conv(3), stax.FanOut(2), stax.parallel(_conv(3), stax.serial(stax.Relu(), _conv(3))),
        stax.parallel(stax.serial(stax.Relu(), _conv(3, (2, 2))), _conv(3, (2, 2))),
        stax.FanInSum(), stax.Relu(), _conv(3), stax.FanOut(3), stax.FanInSum(),
        stax.FanOut(1), stax.parallel(stax.serial(stax.Relu(), _conv(2))), stax.FanInProd(),
        stax.Relu(), stax.Flatten()), (6, 6, 2), "cpu_slab"),
    "image_prod_concat": (stax.serial(
        _conv(3), stax.FanOut(2), stax.parallel(_conv(3, (2, 2)), stax.serial(
            stax.Relu(), _conv(5, (2, 2)))), stax.FanInConcat(), stax.Relu(),
        stax.FanOut(3), stax.parallel(_conv(4), stax.serial(stax.Erf(), _conv(4)), stax.Dense(4)),
        stax.FanInProd(), stax.GlobalAvgPool(), stax.Dense(1)), (6, 6, 2), "cpu_slab"),
}


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_more_structures_match_the_reference_path(name, dtype, rng):
    net, shape, want = NETS[name]
    kfn = net[2]
    assert select_path(kfn, shape, dtype=dtype).name == want
    x1 = rng.standard_normal((5,) + shape).astype(dtype)
    x2 = rng.standard_normal((4,) + shape).astype(dtype)
    x1[1] = -0.5 * x1[0]        # an anti-parallel row
    tol = 1e-12 if dtype == "float64" else 2e-5
    for a, b in ((x1, None), (x1, x2)):
        fast = kfn(a, b, get=("nngp", "ntk"))
        ref = kfn(a, b, get=("nngp", "ntk"), fast=False)
        for got, ref_ in zip(fast, ref):
            assert got.dtype == np.dtype(dtype)
            _scale_close(got, ref_, tol)
    dn = kfn.diag(x1, get="ntk")
    _scale_close(dn, np.diag(kfn(x1, None, get="ntk", fast=False)), tol)


def test_branches_with_different_strides_fall_back():
    net = stax.serial(_conv(3), _block(_conv(3, (2, 2)), _conv(3, (2, 2))),
                      stax.Relu(), stax.GlobalAvgPool())
    assert select_path(net, (6, 6, 2)).name == "cpu_slab"
    # equal output shapes from different strides: a stride-3 VALID Conv vs two VALID 4x4 Convs
    odd = stax.serial(_conv(3), _block(_conv(3, (3, 3), "VALID", (3, 3)),
                                       stax.serial(_conv(3, (1, 1), "VALID", (4, 4)),
                                                   _conv(3, (1, 1), "VALID", (4, 4)))),
                      stax.Relu(), stax.GlobalAvgPool())
    path = select_path(odd, (9, 9, 2))
    assert path.name == "reference" and "different strides" in path.reason
    x = np.random.default_rng(0).standard_normal((3, 9, 9, 2))
    out = odd[2](x, None, get="ntk")
    assert np.all(np.isfinite(out))


def test_compiled_paths_raise_the_reference_errors(rng):
    """FanInSum of a non-Gaussian branch (a bare Relu) and LayerNorm after an activation are the
    same one-line errors on the compiled paths as on the reference path."""
    bad_sum = stax.serial(stax.Dense(8), stax.FanOut(2), stax.parallel(stax.Relu(), stax.Dense(8)),
                          stax.FanInSum(), stax.Dense(1))
    bad_ln = stax.serial(_conv(3), stax.Relu(), stax.LayerNorm(), stax.GlobalAvgPool())
    for net, x in ((bad_sum, rng.standard_normal((3, 5))),
                   (bad_ln, rng.standard_normal((3, 5, 5, 2)))):
        for fast in (True, False):
            with pytest.raises(SpecError, match="Gaussian"):
                net[2](x, None, get="ntk", fast=fast)
