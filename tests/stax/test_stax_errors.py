"""Bad input: clear errors that name the problem."""

import numpy as np
import pytest

from ntkscale import InputError, SpecError, UnsupportedOptionError, stax
from tests.support.nets import fc_relu


@pytest.fixture
def kernel_fn():
    return fc_relu(2)[2]


def test_wrong_rank(kernel_fn):
    with pytest.raises(InputError, match=r"must be 2-D .* got shape \(2, 3, 4\).*reshape"):
        kernel_fn(np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match=r"x1 must be 2-D"):
        kernel_fn(np.zeros(3))


def test_feature_mismatch(kernel_fn):
    with pytest.raises(InputError, match=r"x1 has per-sample shape \(3,\), x2 has \(4,\)"):
        kernel_fn(np.zeros((2, 3)), np.zeros((2, 4)))


def test_nan_and_inf_are_counted_and_located(kernel_fn):
    x = np.ones((6, 3))
    x[1, 0] = np.nan
    x[4, 2] = np.nan
    x[5, 1] = np.inf
    with pytest.raises(InputError, match=r"x1 has 2 NaN and 1 infinite values \(rows 1, 4, 5\)"):
        kernel_fn(x)
    with pytest.raises(InputError, match=r"x2 has"):
        kernel_fn(np.ones((2, 3)), x)


def test_non_numeric_dtype(kernel_fn):
    with pytest.raises(InputError, match="non-numeric dtype"):
        kernel_fn(np.array([["a", "b"]]))
    with pytest.raises(InputError, match="complex"):
        kernel_fn(np.ones((2, 2), complex))


def test_empty(kernel_fn):
    with pytest.raises(InputError, match=r"x1 is empty \(shape \(0, 3\)\)"):
        kernel_fn(np.zeros((0, 3)))
    with pytest.raises(InputError, match=r"empty"):
        kernel_fn(np.zeros((2, 0)))


def test_bad_get(kernel_fn):
    with pytest.raises(InputError, match=r"get='ntks' is not available; choose from 'nngp' and 'ntk'"):
        kernel_fn(np.ones((2, 2)), None, "ntks")
    with pytest.raises(InputError, match="empty"):
        kernel_fn(np.ones((2, 2)), None, ())


def test_unknown_layer_and_keyword():
    with pytest.raises(SpecError, match=r"unknown layer 'ReLU' \(did you mean 'Relu'\?\)"):
        stax.from_spec([["ReLU", {}]])
    with pytest.raises(SpecError, match=r"Dense got unknown keyword\(s\) 'w_std'.*W_std"):
        stax.from_spec([["Dense", {"w_std": 1.0}]])
    with pytest.raises(TypeError):
        stax.Dense(w_std=1.0)


def test_unsupported_options_name_the_keyword():
    with pytest.raises(UnsupportedOptionError, match=r"Gelu\(approximate=True\) is not supported"):
        stax.Gelu(approximate=True)
    with pytest.raises(UnsupportedOptionError, match="batch_axis"):
        stax.Dense(batch_axis=1)
    stax.Gelu(approximate=False)


def test_bad_values():
    with pytest.raises(SpecError, match=r"Dense\(W_std=...\) must be a number"):
        stax.Dense(W_std="big")
    with pytest.raises(SpecError, match=r"parameterization='ntk2'.*'ntk', 'standard'"):
        stax.Dense(parameterization="ntk2")
    with pytest.raises(SpecError, match="positive integer"):
        stax.Dense(-3)
    with pytest.raises(SpecError, match="needs the keyword 'alpha'"):
        stax.from_spec([["LeakyRelu", {}]])
    with pytest.raises(SpecError, match="empty"):
        stax.from_spec([])
    with pytest.raises(SpecError, match="not valid JSON"):
        stax.from_spec("[[Dense")


def test_standard_parameterization_needs_widths():
    _, _, kf = stax.serial(stax.Dense(None, parameterization="standard"), stax.Relu(),
                           stax.Dense(1, parameterization="standard"))
    with pytest.raises(SpecError, match=r"needs the input width; give out_dim"):
        kf(np.ones((2, 3)), None, "ntk")
    # The NNGP does not depend on widths.
    kf(np.ones((2, 3)), None, "nngp")


def test_serial_rejects_foreign_objects():
    with pytest.raises(SpecError, match="not an ntkscale layer"):
        stax.serial(stax.Relu(), (lambda: 0, lambda: 0, lambda: 0))
