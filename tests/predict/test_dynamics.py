"""``ntkscale.predict``'s dense training dynamics against neural-tangents 0.6.5
(tests/reference/nt_predict.npz, tests/reference/generate_nt_predict.py) and
against closed forms: t = 0 gives the initial outputs, t = ∞ is kernel ridge
regression, max_learning_rate is 2N / λ_max."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from ntkscale import predict, stax
from ntkscale.errors import InputError, NotPSDError

REF = np.load(Path(__file__).resolve().parents[1] / "reference" / "nt_predict.npz")
META = json.loads(str(REF["__meta__"]))
TIMES = np.array(META["times"])
RTOL = 1e-6


def assert_close(actual, expected, what=""):
    """Relative to the array's scale (entries near 0 — t = 0 differences,
    covariances at late times — carry no relative meaning on their own)."""
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(float(np.max(np.abs(expected))), 1e-300)
    err = float(np.max(np.abs(actual - expected))) / scale
    assert err <= RTOL, f"{what}: max relative difference {err:.2e} > {RTOL}"
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=1e-12 * scale, err_msg=what)


def case(name):
    p = f"{name}__"
    return {k[len(p):]: REF[k] for k in REF.files if k.startswith(p)}


GRID = [(g, i, j) for g in ("nngp", "ntk") for i in range(len(META["learning_rates"]))
        for j in range(len(META["diag_regs"]))]


@pytest.mark.parametrize("name", META["kernel_cases"])
@pytest.mark.parametrize("g,i,j", GRID)
def test_gradient_descent_mse_matches_neural_tangents(name, g, i, j):
    c = case(name)
    reg, absolute = META["diag_regs"][j]
    fn = predict.gradient_descent_mse(c[f"{g}_dd"], c["y_train"], META["learning_rates"][i], reg, absolute)
    q = f"gd__{g}__lr{i}__reg{j}__"
    train, test = fn(TIMES, c["fx_train_0"], c["fx_test_0"], c[f"{g}_td"])
    train_inf, test_inf = fn(None, c["fx_train_0"], c["fx_test_0"], c[f"{g}_td"])
    for what, got in (("train", train), ("test", test), ("train_inf", train_inf), ("test_inf", test_inf)):
        assert_close(got, c[q + what], f"{name} {q}{what}")


@pytest.mark.parametrize("name", META["kernel_cases"])
@pytest.mark.parametrize("j", range(len(META["diag_regs"])))
def test_gp_inference_matches_neural_tangents(name, j):
    c = case(name)
    reg, absolute = META["diag_regs"][j]
    k_dd = stax.Kernel(c["nngp_dd"], c["ntk_dd"])
    k_td = stax.Kernel(c["nngp_td"], c["ntk_td"])
    k_tt = stax.Kernel(c["nngp_tt"], c["ntk_tt"])
    out = predict.gp_inference(k_dd, c["y_train"], reg, absolute)(("nngp", "ntk", "ntkgp"), k_td, k_tt)
    assert type(out).__name__ == "Gaussians" and out._fields == ("nngp", "ntk", "ntkgp")
    for g in out._fields:
        assert_close(getattr(out, g).mean, c[f"gp__reg{j}__{g}__mean"], f"{name} gp {g} mean")
        assert_close(getattr(out, g).covariance, c[f"gp__reg{j}__{g}__cov"], f"{name} gp {g} cov")


@pytest.mark.parametrize("name", META["kernel_cases"])
@pytest.mark.parametrize("i,j", [(i, j) for i in range(len(META["learning_rates"]))
                                 for j in range(len(META["diag_regs"]))])
def test_ensemble_matches_neural_tangents(name, i, j):
    """ntkscale's own kernel_fn on the same inputs (it equals neural-tangents' to
    ~1e-15 here), then the ensemble at every time and at ∞, test and train."""
    c = case(name)
    kernel_fn = stax.from_spec(json.loads(str(c["spec"])))[2]
    reg, absolute = META["diag_regs"][j]
    ens = predict.gradient_descent_mse_ensemble(kernel_fn, c["x_train"], c["y_train"], META["learning_rates"][i],
                                                reg, absolute)
    q = f"ens__lr{i}__reg{j}__"
    for where, x_test in (("test", c["x_test"]), ("train", None)):
        for tag, t in (("", TIMES), ("_inf", None)):
            out = ens(t, x_test, None, compute_cov=True)
            for g in ("nngp", "ntk"):
                assert_close(getattr(out, g).mean, c[f"{q}{where}__{g}__mean{tag}"], f"{q}{where} {g} mean{tag}")
                assert_close(getattr(out, g).covariance, c[f"{q}{where}__{g}__cov{tag}"],
                             f"{q}{where} {g} cov{tag}")


@pytest.mark.parametrize("name", META["kernel_cases"])
def test_max_learning_rate_matches_neural_tangents_and_closed_form(name):
    c = case(name)
    ntk, y = c["ntk_dd"], c["y_train"]
    for m, momentum in enumerate(META["momenta"]):
        assert predict.max_learning_rate(ntk, y.size, momentum) == pytest.approx(float(c[f"maxlr__m{m}"]), rel=RTOL)
    assert predict.max_learning_rate(ntk) == pytest.approx(float(c["maxlr_none"]), rel=RTOL)
    lam_max = np.linalg.eigvalsh(ntk)[-1]
    assert predict.max_learning_rate(ntk, y.size) == pytest.approx(2 * y.size / lam_max, rel=1e-10)


def test_trace_axes_empty_matches_neural_tangents():
    """A (n, n, k, k) kernel (trace_axes=()): the flattened (nk, nk) dynamics."""
    c = case("traced")
    fn = predict.gradient_descent_mse(c["k_dd"], c["y_train"], 0.5, 1e-3, trace_axes=())
    train, test = fn(TIMES, c["fx_train_0"], c["fx_test_0"], c["k_td"])
    train_inf, test_inf = fn(None, c["fx_train_0"], c["fx_test_0"], c["k_td"])
    for what, got in (("train", train), ("test", test), ("train_inf", train_inf), ("test_inf", test_inf)):
        assert_close(got, c[what], f"traced {what}")
    gp = predict.gp_inference(c["k_dd"], c["y_train"], 1e-3, trace_axes=())
    assert_close(gp("ntk", c["k_td"]), c["gp_mean"], "traced gp mean")


# ------------------------------------------------------------ closed forms
@pytest.fixture(scope="module")
def fc():
    return case("fc")


def test_time_zero_returns_initial_outputs(fc):
    fn = predict.gradient_descent_mse(fc["ntk_dd"], fc["y_train"], learning_rate=0.7)
    train, test = fn(0.0, fc["fx_train_0"], fc["fx_test_0"], fc["ntk_td"])
    np.testing.assert_allclose(train, fc["fx_train_0"], rtol=0, atol=1e-14)
    np.testing.assert_allclose(test, fc["fx_test_0"], rtol=0, atol=1e-14)


@pytest.mark.parametrize("diag_reg,absolute", [(0.0, False), (1e-2, False), (0.05, True)])
def test_infinite_time_is_kernel_ridge_regression(fc, diag_reg, absolute):
    k, kx, y = fc["ntk_dd"], fc["ntk_td"], fc["y_train"]
    f0, ft0 = fc["fx_train_0"], fc["fx_test_0"]
    n = k.shape[0]
    reg = diag_reg if absolute else diag_reg * np.trace(k) / n
    expected = ft0 + kx @ scipy.linalg.solve(k + reg * np.eye(n), y - f0, assume_a="pos")
    fn = predict.gradient_descent_mse(k, y, 1.0, diag_reg, absolute)
    train_none, test_none = fn(None, f0, ft0, kx)
    train_inf, test_inf = fn(np.inf, f0, ft0, kx)
    np.testing.assert_allclose(test_none, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(test_inf, expected, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(train_none, y)
    if diag_reg == 0:   # the unregularised flow interpolates the training targets
        np.testing.assert_allclose(train_inf, y, rtol=1e-8, atol=1e-10)


def test_learning_rate_and_time_are_interchangeable(fc):
    k, y, kx = fc["ntk_dd"], fc["y_train"], fc["ntk_td"]
    a = predict.gradient_descent_mse(k, y, learning_rate=2.0)(5.0, 0.0, 0.0, kx)
    b = predict.gradient_descent_mse(k, y, learning_rate=1.0)(10.0, 0.0, 0.0, kx)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12)


def test_flow_solves_the_ode(fc):
    """d f_train / dt = -(η/N) K (f_train - y), by a central difference."""
    k, y, f0 = fc["ntk_dd"], fc["y_train"], fc["fx_train_0"]
    eta, t, h = 0.3, 4.0, 1e-4
    fn = predict.gradient_descent_mse(k, y, eta)
    f_minus, f_t, f_plus = fn(np.array([t - h, t, t + h]), f0)
    np.testing.assert_allclose((f_plus - f_minus) / (2 * h), -(eta / y.size) * k @ (f_t - y), rtol=1e-6)


def test_output_shapes_and_selection(fc):
    k, y, kx = fc["ntk_dd"], fc["y_train"], fc["ntk_td"]
    fn = predict.gradient_descent_mse(k, y)
    n, m, out = k.shape[0], kx.shape[0], y.shape[1]
    assert fn(1.0).shape == (n, out)                          # train only, fx_train_0=0.
    assert fn(np.ones((2, 3))).shape == (2, 3, n, out)        # a time array adds leading axes
    assert fn(1.0, None, 0.0, kx).shape == (m, out)           # test only
    train, test = fn([1.0, 2.0], 0.0, 0.0, kx)
    assert train.shape == (2, n, out) and test.shape == (2, m, out)
    ens = predict.gradient_descent_mse_ensemble(stax.from_spec(json.loads(str(fc["spec"])))[2],
                                                fc["x_train"], y)
    assert ens(1.0, fc["x_test"], "ntk").shape == (m, out)
    g = ens([1.0, 2.0], fc["x_test"], ("ntk",), compute_cov=True)
    assert g._fields == ("ntk",) and g.ntk.mean.shape == (2, m, out) and g.ntk.covariance.shape == (2, m, m)


def test_bad_input_is_a_clear_error(fc):
    k, y, kx = fc["ntk_dd"], fc["y_train"], fc["ntk_td"]
    fn = predict.gradient_descent_mse(k, y)
    with pytest.raises(InputError, match="times must be >= 0"):
        fn(-1.0)
    with pytest.raises(InputError, match="times must be >= 0"):
        fn([1.0, np.nan])
    with pytest.raises(InputError, match="nothing would be predicted"):
        fn(1.0, None, None)
    with pytest.raises(InputError, match="need k_test_train"):
        fn(1.0, 0.0, 0.0)
    with pytest.raises(InputError, match="kernel axes"):
        predict.gradient_descent_mse(k[None], y)
    singular = np.ones((4, 4))
    with pytest.raises(NotPSDError, match="diag_reg"):
        predict.gradient_descent_mse(singular, np.ones((4, 1)))(None, 0.0, 0.0, np.ones((2, 4)))
    with pytest.raises(InputError, match="get="):
        predict.gp_inference(k, y)("nttk", kx)
    with pytest.raises(InputError, match="NNGP and NTK"):
        predict.gp_inference(k, y)("ntk", kx, np.eye(kx.shape[0]))
