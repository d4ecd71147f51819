"""Parity with neural-tangents 0.6.5 for the closed-form activations of issue 12
(Sigmoid_like, Rbf, Gaussian, Exp, ExpNormalized, Cos, Sign, Gabor, Monomial,
RectifiedMonomial, Polynomial, Hermite), ElementwiseNumerical and SumPool/GlobalSumPool:
float64, symmetric and cross kernels, (anti)parallel rows, FC and images, both
parameterizations (tests/reference/nt_activations.npz, generate_nt_activations.py)."""

import json
import warnings

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.errors import NumericalWarning
from tests.support.paths import REFERENCE
from tests.support.reference import assert_matches_nt, case_names, load_case

_PATH = REFERENCE / "nt_activations.npz"
NT_ACTIVATIONS = np.load(_PATH) if _PATH.exists() else None
needs_nt_activations = pytest.mark.skipif(NT_ACTIVATIONS is None, reason="activation reference missing")
CASES = case_names(NT_ACTIVATIONS)


def _params(names):
    return [pytest.param(name, id=name) for name in names]


#: the issue's bar: 1e-6 relative (plus a floor for entries near zero)
RTOL = 1e-6


def _kernels(name):
    case = load_case(name, NT_ACTIVATIONS)
    kfn = stax.from_spec(case.spec)[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)
        out = kfn(case.x1, case.x2, get=("nngp", "ntk"))
    return case, out


@needs_nt_activations
def test_every_new_layer_has_reference_cases():
    used = {layer[0] for n in CASES for layer in load_case(n, NT_ACTIVATIONS).spec}
    new = {"Sigmoid_like", "Rbf", "Gaussian", "Exp", "ExpNormalized", "Cos", "Sign", "Gabor",
           "Monomial", "RectifiedMonomial", "Polynomial", "Hermite", "ElementwiseNumerical",
           "SumPool", "GlobalSumPool"}
    assert new <= used, new - used
    assert any(n.endswith("_cross") for n in CASES) and any(n.startswith("img_") for n in CASES)


def _mirror_upper(a):
    return np.triu(a) + np.triu(a, 1).T


@needs_nt_activations
@pytest.mark.parametrize("name", _params(CASES))
def test_matches_neural_tangents(name):
    case, out = _kernels(name)
    numerical = "ElementwiseNumerical" in json.dumps(case.spec)
    for got, ref in zip(out, (case.nngp, case.ntk)):
        got = np.asarray(got)
        if numerical and case.x2 is None:
            # neural-tangents' quadrature is not symmetric in (x, x'); ntkscale's x2=None
            # Gram is its upper triangle, mirrored (see layers/numerical.py)
            np.testing.assert_array_equal(got, got.T)
            ref = _mirror_upper(ref)
        assert np.all(np.isfinite(got))
        finite = np.isfinite(ref)
        # neural-tangents' RectifiedMonomial differentiates arccos and gives NaN on
        # (anti)parallel pairs; ntkscale's closed form is finite there (checked elsewhere)
        assert finite.mean() > 0.5, "too few finite reference entries"
        g, r = got[finite], ref[finite]
        np.testing.assert_allclose(g, r, rtol=RTOL, atol=1e-12 * np.abs(r).max())
        if finite.all():
            # and the strict policy (1e-10; 1e-7 on parallel pairs)
            assert_matches_nt(got, ref, case.x1, case.x2)


@needs_nt_activations
def test_neural_tangents_quadrature_is_not_symmetric():
    """Why the mirroring above: neural-tangents' own x2=None ElementwiseNumerical Gram
    differs from its transpose by the quadrature error (tanh, deg 25: ~1e-3 relative)."""
    case = load_case("fc_num_tanh_sym", NT_ACTIVATIONS)
    asym = np.abs(case.nngp - case.nngp.T).max() / np.abs(case.nngp).max()
    assert asym > 1e-6


@needs_nt_activations
@pytest.mark.parametrize("name", _params([n for n in CASES if n.endswith("_sym")]))
def test_diag_is_the_diagonal(name):
    case, (nngp, ntk) = _kernels(name)
    kfn = stax.from_spec(case.spec)[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)
        dn, dt = kfn.diag(case.x1, get=("nngp", "ntk"))
    np.testing.assert_allclose(dn, np.diag(nngp), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(dt, np.diag(ntk), rtol=1e-9, atol=1e-14)


@needs_nt_activations
@pytest.mark.parametrize("name", _params([n for n in CASES if n.startswith("img_") and n.endswith("_cross")]))
def test_fast_false_and_tiles_agree(name):
    case = load_case(name, NT_ACTIVATIONS)
    kfn = stax.from_spec(case.spec)[2]
    whole = kfn(case.x1, case.x2, get="ntk")
    tiled = kfn(case.x1, case.x2, get="ntk", memory_budget=1 << 12, fast=False)
    np.testing.assert_allclose(tiled, whole, rtol=1e-12)
