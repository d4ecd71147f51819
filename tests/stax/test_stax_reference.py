"""Agreement with neural-tangents 0.6.5 on the flat (fully connected) cases
(reference values and tolerances: tests/support/reference.py)."""

import numpy as np
import pytest

from ntkscale import stax
from tests.support.reference import assert_case_matches_nt, assert_matches_nt, case_names, load_case, needs_nt

FC_CASES = case_names(prefixes=("fc_",))


@needs_nt
@pytest.mark.parametrize("name", FC_CASES)
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_fc_against_neural_tangents(name, fast):
    assert_case_matches_nt(name, fast)


@needs_nt
@pytest.mark.parametrize("name", FC_CASES[:6])
def test_fc_array_api_strict_against_neural_tangents(name):
    xs = pytest.importorskip("array_api_strict")
    spec, x1, x2, nngp, ntk = load_case(name)
    kernel_fn = stax.from_spec(spec)[2]
    out = kernel_fn(xs.asarray(x1), None if x2 is None else xs.asarray(x2), "ntk")
    assert type(out).__module__.startswith("array_api_strict")
    assert_matches_nt(np.from_dlpack(out), ntk, x1, x2)
