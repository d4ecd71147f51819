"""Bad input to the new activations and pooling layers: one clear error that names the
layer, the value and the fix (SpecError/InputError/UnsupportedOptionError)."""

import warnings

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.errors import InputError, NumericalWarning, SpecError, UnsupportedOptionError
from ntkscale.stax.layers.numerical import FUNCTION_NAMES



def test_unknown_function_names_the_layer_and_lists_the_registry():
    with pytest.raises(SpecError) as err:
        stax.ElementwiseNumerical("tanhh", 25)
    msg = str(err.value)
    assert "ElementwiseNumerical(fn='tanhh')" in msg
    assert all(repr(name) in msg for name in FUNCTION_NAMES)
    with pytest.raises(SpecError, match="ElementwiseNumerical.df='sigmod'"):
        stax.ElementwiseNumerical("softplus", 25, "sigmod")
    # the same check on a spec given as data (config files, from_spec)
    with pytest.raises(SpecError, match="ElementwiseNumerical.fn='swish2'"):
        stax.from_spec([["ElementwiseNumerical", {"fn": "swish2", "deg": 9}]])


def test_a_callable_is_refused_with_the_names():
    with pytest.raises(SpecError) as err:
        stax.ElementwiseNumerical(np.tanh, 25)
    msg = str(err.value)
    assert "spec is data" in msg and "'tanh'" in msg and "tanh, " in msg
    with pytest.raises(SpecError, match="df="):
        stax.ElementwiseNumerical("tanh", 25, df=lambda x: 1 - np.tanh(x) ** 2)


@pytest.mark.parametrize("deg", [0, -3, 2.5, "25", True])
def test_quadrature_degree_must_be_a_positive_integer(deg):
    with pytest.raises(SpecError, match=r"ElementwiseNumerical\(deg=.*positive integer"):
        stax.ElementwiseNumerical("tanh", deg)
    with pytest.raises(SpecError, match="needs the keyword 'deg'"):
        stax.from_spec([["ElementwiseNumerical", {"fn": "tanh"}]])


@pytest.mark.parametrize("layer", [stax.Monomial, stax.RectifiedMonomial, stax.Hermite])
@pytest.mark.parametrize("degree", [-1, 1.5, "2", None, True])
def test_degrees_must_be_non_negative_integers(layer, degree):
    with pytest.raises(SpecError, match=r"\(degree=.*non-negative integer"):
        layer(degree)


@pytest.mark.parametrize("coef", ["1, 2", [1.0, float("nan")], [1.0, "x"], 3.0, [[1.0]], None])
def test_polynomial_coefficients(coef):
    with pytest.raises(SpecError, match=r"Polynomial\(coef=.*list of finite numbers"):
        stax.Polynomial(coef)


def test_unknown_keyword_lists_the_accepted_ones():
    with pytest.raises(SpecError, match="Rbf accepts: gamma"):
        stax.from_spec([["Rbf", {"sigma": 1.0}]])
    with pytest.raises(SpecError, match="must be a number"):
        stax.Gaussian(b="wide")


def test_gaussian_with_positive_b_refuses_divergent_inputs():
    x = np.random.default_rng(0).standard_normal((3, 4))
    kfn = stax.serial(stax.Dense(4, W_std=2.0), stax.Gaussian(1.0, 0.5), stax.Dense(1))[2]
    with pytest.raises(InputError, match=r"Gaussian\(a=1.0, b=0.5\).*diverges.*q >= 1/\(4b\) = 0.5"):
        kfn(x)
    small = stax.serial(stax.Dense(4, W_std=0.2, b_std=0.0), stax.Gaussian(1.0, 0.5), stax.Dense(1))[2]
    assert np.all(np.isfinite(small(0.5 * x).nngp))


def test_expnormalized_has_no_finite_width_network():
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(4), stax.ExpNormalized(), stax.Dense(1))
    x = np.ones((2, 3))
    _, params = init_fn(0, x.shape)
    with pytest.raises(UnsupportedOptionError, match="ExpNormalized has no finite-width network"):
        apply_fn(params, x)
    assert np.all(np.isfinite(kernel_fn(x).nngp))


def test_hermite_warns_on_non_unit_variance():
    x = np.random.default_rng(1).standard_normal((3, 5))
    unit = x / np.sqrt(np.mean(x ** 2, axis=1, keepdims=True))
    kfn = stax.serial(stax.Dense(4, W_std=1.0, b_std=None), stax.Hermite(2), stax.Dense(1))[2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericalWarning)
        kfn(unit)          # unit variance: silent
    with pytest.warns(NumericalWarning, match=r"Hermite\(degree=2\) assumes inputs of unit variance"):
        kfn(3.0 * x)


def test_sum_pooling_keywords_and_flat_inputs():
    x = np.ones((2, 5))
    for net in (stax.serial(stax.Dense(3), stax.SumPool((2, 2)), stax.Dense(1)),
                stax.serial(stax.Dense(3), stax.GlobalSumPool(), stax.Dense(1))):
        with pytest.raises(InputError, match="4-D NHWC image batch"):
            net[2](x)
    with pytest.raises(SpecError, match=r"SumPool\(padding='FULL'\) is not valid"):
        stax.SumPool((2, 2), padding="FULL")
    with pytest.raises(SpecError, match="SumPool accepts"):
        stax.from_spec([["SumPool", {"window_shape": [2, 2], "normalize_edges": True}]])
    with pytest.raises(SpecError, match="window_shape"):
        stax.SumPool((0, 2))


def test_sum_pooling_shapes_name_the_layer():
    img = np.ones((2, 4, 4, 1))
    with pytest.raises(InputError, match=r"SumPool\(window_shape=\(5, 5\).*at least 5x5"):
        stax.serial(stax.Conv(2, (3, 3), padding="SAME"), stax.SumPool((5, 5)), stax.GlobalSumPool(),
                    stax.Dense(1))[2](img)
    with pytest.raises(SpecError, match="GlobalSumPool.*already flat"):
        stax.serial(stax.Conv(2, (3, 3)), stax.GlobalSumPool(), stax.GlobalSumPool(), stax.Dense(1))[2](img)
