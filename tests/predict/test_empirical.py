"""Empirical (finite-width) kernels, ``ntkscale.stax.empirical``: the same numbers as
neural-tangents' ``empirical_*_fn`` on the same parameters
(tests/reference/nt_predict.npz), and convergence to the exact infinite-width
kernels as the width grows, with the error falling like 1/sqrt(width)
(Jacot et al. 2018; Lee et al. 2019, Fig. 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.errors import InputError, UnsupportedOptionError
from ntkscale.stax.empirical import empirical_kernel_fn, empirical_nngp_fn, empirical_ntk_fn

REF = np.load(Path(__file__).resolve().parents[1] / "reference" / "nt_predict.npz")
META = json.loads(str(REF["__meta__"]))


def nt_case(name):
    p = f"emp__{name}__"
    init_fn, apply_fn, _ = stax.from_spec(json.loads(str(REF[p + "spec"])))
    x1, x2 = REF[p + "x1"], REF[p + "x2"]
    _, fresh = init_fn(0, x1.shape)
    params = []
    for i, layer in enumerate(fresh):
        if f"{p}p{i}_W" not in REF.files:
            params.append(layer)
            continue
        W = REF[f"{p}p{i}_W"]
        b = REF[f"{p}p{i}_b"] if f"{p}p{i}_b" in REF.files else np.zeros(W.shape[-1])  # unused: b_std=None
        params.append((W, b))
    return apply_fn, params, x1, x2, {k[len(p):]: REF[k] for k in REF.files if k.startswith(p)}


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name", META["empirical_cases"])
def test_empirical_kernels_match_neural_tangents(name):
    apply_fn, params, x1, x2, ref = nt_case(name)
    got = {
        "nngp": empirical_nngp_fn(apply_fn)(x1, x2, params),
        "ntk": empirical_ntk_fn(apply_fn)(x1, x2, params),
        "ntk_full": empirical_ntk_fn(apply_fn, trace_axes=())(x1, x2, params),
        "ntk_diag": empirical_ntk_fn(apply_fn, trace_axes=(), diagonal_axes=(-1,))(x1, x2, params),
        "nngp_self": empirical_nngp_fn(apply_fn)(x1, None, params),
        "ntk_self": empirical_ntk_fn(apply_fn)(x1, None, params),
    }
    for key, value in got.items():
        assert value.shape == ref[key].shape, key
        assert rel(value, ref[key]) < 1e-10, f"{name} {key}: {rel(value, ref[key]):.2e}"
    both = empirical_kernel_fn(apply_fn)(x1, x2, None, params)
    assert type(both).__name__ == "EmpiricalKernel" and both._fields == ("nngp", "ntk")
    np.testing.assert_array_equal(both.ntk, got["ntk"])
    np.testing.assert_array_equal(empirical_kernel_fn(apply_fn)(x1, x2, "nngp", params), got["nngp"])


FD_NETS = {
    "conv_gelu_avgpool": lambda: stax.serial(
        stax.Conv(3, (2, 2), padding="SAME", W_std=1.3, b_std=0.2), stax.Gelu(),
        stax.AvgPool((2, 2), padding="SAME", normalize_edges=True), stax.Flatten(), stax.Dense(2, W_std=1.1, b_std=0.3)),
    "conv_cos_sumpool": lambda: stax.serial(
        stax.Conv(3, (2, 2), padding="SAME", W_std=1.3, b_std=0.2), stax.Cos(a=1.2, b=0.8, c=0.3),
        stax.SumPool((2, 2), padding="SAME"), stax.Flatten(), stax.Dense(2, W_std=1.1, b_std=0.3)),
    "conv_numerical_globalsumpool": lambda: stax.serial(
        stax.Conv(3, (2, 2), padding="VALID", W_std=1.3, b_std=0.2), stax.ElementwiseNumerical("softplus", 12),
        stax.GlobalSumPool(), stax.Dense(2, W_std=1.1, b_std=0.3)),
    "dense_gaussian_hermite_rbf": lambda: stax.serial(
        stax.Flatten(), stax.Dense(4, W_std=1.2, b_std=0.1), stax.Gaussian(a=1.5, b=-0.5),
        stax.Dense(4, W_std=1.1), stax.Hermite(3), stax.Dense(3), stax.Rbf(0.7), stax.Dense(2)),
    "dense_sigmoid_like_gabor_monomial": lambda: stax.serial(
        stax.Flatten(), stax.Dense(4, W_std=1.2, b_std=0.1), stax.Sigmoid_like(), stax.Dense(4), stax.Gabor(),
        stax.Dense(3), stax.Monomial(2), stax.Dense(2)),
}


@pytest.mark.parametrize("name", sorted(FD_NETS))
def test_ntk_is_the_gradient_inner_product_by_finite_differences(name):
    """Independent of the backprop: J by central differences over every parameter
    (activations' own derivatives, average and sum pooling)."""
    rng = np.random.default_rng(3)
    init_fn, apply_fn, _ = FD_NETS[name]()
    x = rng.standard_normal((3, 3, 3, 2))
    _, params = init_fn(1, x.shape)
    flat = [a for layer in params for a in layer]
    cols = []
    for a in flat:
        for idx in np.ndindex(a.shape):
            old, h = a[idx], 1e-6
            a[idx] = old + h
            up = apply_fn(params, x)
            a[idx] = old - h
            down = apply_fn(params, x)
            a[idx] = old
            cols.append((up - down) / (2 * h))
    jac = np.stack(cols, axis=-1)                              # (n, k, P)
    expected = np.einsum("icp,jdp->ijcd", jac, jac)
    got = empirical_ntk_fn(apply_fn, trace_axes=())(x, None, params)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7 * np.abs(expected).max())


def _slope(widths, errors):
    return float(np.polyfit(np.log(widths), np.log(errors), 1)[0])


def _fc(width, out_dim):
    return stax.serial(stax.Dense(width, 1.5, 0.1), stax.Relu(), stax.Dense(width, 1.5, 0.1), stax.Erf(),
                       stax.Dense(out_dim, 1.5, 0.1))


def _relative_errors(net, x, widths, seeds, get, out_dim):
    exact = getattr(net(8, 1)[2](x, None), get)
    errors = []
    for w in widths:
        init_fn, apply_fn, _ = net(w, out_dim(w))
        kernel = empirical_kernel_fn(apply_fn)
        errs = [np.linalg.norm(kernel(x, None, get, init_fn(seed, x.shape)[1]) - exact) / np.linalg.norm(exact)
                for seed in seeds]
        errors.append(float(np.mean(errs)))
    return errors


def test_fc_empirical_kernels_converge_like_inverse_sqrt_width():
    """NTK: one output, the gradients of every layer average out with width.
    NNGP: a single output is one draw of the GP and does not concentrate, so the
    readout is as wide as the net and the sample is averaged over its outputs
    (trace_axes=(-1,)), as the NNGP is defined (Lee et al. 2018)."""
    x = np.random.default_rng(0).standard_normal((6, 5))
    widths = [64, 256, 1024, 4096]
    ntk_err = _relative_errors(_fc, x, widths, range(4), "ntk", lambda w: 1)
    nngp_err = _relative_errors(_fc, x, widths, range(4), "nngp", lambda w: w)
    for what, errs in (("ntk", ntk_err), ("nngp", nngp_err)):
        slope = _slope(widths, errs)
        assert -0.8 <= slope <= -0.3, f"{what}: errors {errs}, log-log slope {slope:.2f}"
        assert errs[-1] < 0.1, f"{what}: width 4096 still {errs[-1]:.3f} off"


@pytest.mark.slow
def test_conv_empirical_ntk_converges_like_inverse_sqrt_width():
    def net(width, out_dim):
        return stax.serial(stax.Conv(width, (3, 3), padding="SAME", W_std=1.5, b_std=0.1), stax.Relu(),
                           stax.Conv(width, (3, 3), padding="SAME", W_std=1.5, b_std=0.1), stax.Relu(),
                           stax.GlobalAvgPool(), stax.Dense(out_dim, 1.5, 0.1))

    x = np.random.default_rng(1).standard_normal((4, 4, 4, 2))
    widths = [32, 128, 512]
    errs = _relative_errors(net, x, widths, range(12), "ntk", lambda w: 1)
    slope = _slope(widths, errs)
    assert -0.8 <= slope <= -0.3, f"errors {errs}, log-log slope {slope:.2f}"


def test_bad_input_is_a_clear_error():
    init_fn, apply_fn, kernel_fn = _fc(16, 2)
    x = np.ones((2, 5))
    _, params = init_fn(0, x.shape)
    with pytest.raises(InputError, match="apply_fn"):
        empirical_ntk_fn(kernel_fn)
    with pytest.raises(UnsupportedOptionError, match="batch axis"):
        empirical_ntk_fn(apply_fn, trace_axes=(0,))
    with pytest.raises(InputError, match="params has"):
        empirical_ntk_fn(apply_fn)(x, None, params[:-1])
    conv_init, conv_apply, _ = stax.serial(stax.Conv(3, (2, 2)), stax.Relu())
    with pytest.raises(UnsupportedOptionError, match="Flatten"):
        empirical_ntk_fn(conv_apply)(np.ones((1, 3, 3, 1)), None, conv_init(0, (1, 3, 3, 1))[1])
