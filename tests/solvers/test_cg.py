"""Block / multi-ridge preconditioned CG."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse.linalg

from ntkscale.errors import InputError, NotPSDError, NumericalWarning
from ntkscale.solvers import (GramOperator, MemoryCheckpoint, ZarrCheckpoint, cg,
    nystrom_preconditioner)
from tests.support.solvers import CountingOperator, SolverContract, reference, spd


class TestCGContract(SolverContract):
    method = "cg"
    options = {"preconditioner": "nystrom", "rank": 20}


class TestCGPlainContract(SolverContract):
    method = "cg"
    options = {"preconditioner": "none"}


RIDGES = [0.0, 1e-3, 1e-2, 1.0]


@pytest.mark.parametrize("path", ["multishift", "sequential", "batched"])
def test_ridge_paths_agree_with_scipy(path):
    k = spd(200, 40)
    b = np.random.default_rng(0).standard_normal((200, 3))
    M = None if path == "multishift" else nystrom_preconditioner(GramOperator.from_array(k), 30)
    x, info = cg(k, b, rtol=1e-10, ridges=RIDGES, ridge_path=path, M=M)
    assert int(info) == 0 and info.variant == path
    assert x.shape == (4, 200, 3) and info.history.shape[1:] == (4, 3)
    for j, r in enumerate(RIDGES):
        np.testing.assert_allclose(x[j], reference(k, b, r), rtol=1e-6, atol=1e-8)
        assert np.all(info.residual[j] <= 1e-10)


def test_multishift_costs_one_product_per_iteration():
    k = spd(150, 30)
    op = GramOperator.from_array(k)
    b = np.random.default_rng(1).standard_normal((150, 2))
    _, one = cg(op, b, rtol=1e-8, ridges=[1e-3])
    passes_one = op.n_passes
    _, many = cg(op, b, rtol=1e-8, ridges=np.logspace(-3, 0, 8), ridge_path="multishift")
    assert op.n_passes - passes_one == many.iterations <= one.iterations + 1


def test_cg_needs_one_product_per_distinct_eigenvalue():
    """In exact arithmetic CG ends after d iterations when A has d distinct eigenvalues
    (Hestenes & Stiefel 1952, sec. 5); each iteration is one product for all columns, and
    one more product checks the true residual b - A x at the end."""
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((120, 120)))
    a = (q * np.repeat([1.0, 2.0, 3.0, 5.0, 8.0], 24)) @ q.T
    op = CountingOperator((a + a.T) / 2)
    b = rng.standard_normal((120, 3))
    x, info = cg(op, b, rtol=1e-10)
    assert int(info) == 0
    assert op.products == info.iterations + 1 and info.iterations <= 5
    np.testing.assert_allclose(x, reference(op.a, b, 0.0), rtol=1e-8, atol=1e-10)


def test_auto_variant_choice():
    k, b = spd(60, 10), np.ones((60, 1))
    assert cg(k, b, ridges=[0.1, 1.0])[1].variant == "multishift"
    M = nystrom_preconditioner(GramOperator.from_array(k), 10)
    assert cg(k, b, ridges=[0.1, 1.0], M=M)[1].variant == "batched"
    assert cg(k, b)[1].variant == "single"
    with pytest.raises(InputError, match="cannot use a preconditioner"):
        cg(k, b, ridges=[0.1, 1.0], M=M, ridge_path="multishift")


def test_columns_converge_independently_and_freeze():
    k = spd(100, 30)
    b = np.zeros((100, 3))
    b[:, 0] = np.random.default_rng(2).standard_normal(100)
    b[:, 1] = scipy.linalg.eigh(k)[1][:, -1]  # an eigenvector: converges in one step
    x, info = cg(k, b, rtol=1e-10)
    assert info.column_iterations[0, 1] == 1 and info.column_iterations[0, 2] == 0
    assert np.all(x[:, 2] == 0)
    assert np.isnan(info.history[2, 1])  # frozen after converging
    np.testing.assert_allclose(x, reference(k, b, 0.0), atol=1e-8)


def test_matches_scipy_cg_and_is_a_linear_operator():
    k = spd(120, 40)
    op = GramOperator.from_array(k, ridge=0.01)
    b = np.random.default_rng(3).standard_normal(120)
    xs, code = scipy.sparse.linalg.cg(op, b, rtol=1e-10)
    x, info = cg(op, b, rtol=1e-10)
    assert code == 0 and int(info) == 0 and x.shape == (120,)
    np.testing.assert_allclose(x, xs, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("form", ["solve", "matmat", "callable"])
def test_preconditioner_forms(form):
    k = spd(150, 150, floor=1e-4)
    d = np.diag(k)
    jacobi = {"callable": lambda r: r / d[:, None],
              "matmat": scipy.sparse.linalg.LinearOperator((150, 150), matvec=lambda r: r / d,
                                                           matmat=lambda r: r / d[:, None]),
              "solve": type("J", (), {"solve": staticmethod(lambda r: r / d[:, None])})()}[form]
    b = np.ones((150, 2))
    x, info = cg(k, b, rtol=1e-10, M=jacobi)
    assert int(info) == 0
    np.testing.assert_allclose(x, reference(k, b, 0), rtol=1e-6)


def test_nonconvergence_reports_the_residual():
    k = spd(300, 300, floor=1e-6)
    b = np.random.default_rng(4).standard_normal((300, 2))
    with pytest.warns(NumericalWarning, match=r"did not converge in 5 iterations: relative residual"):
        x, info = cg(k, b, rtol=1e-12, maxiter=5)
    assert int(info) == 5 and not info.converged.any()
    assert np.all(info.residual > 1e-12) and info.history.shape == (6, 2)
    assert info.summary()["max_residual"] == pytest.approx(float(info.residual.max()))


def test_indefinite_matrix_breaks_down_with_typed_error():
    a = np.diag([1.0, 2.0, -3.0, 4.0])
    with pytest.raises(NotPSDError, match="not numerically positive definite"):
        cg(a, np.ones(4), rtol=1e-12)


def test_bad_inputs():
    k = spd(20, 5)
    with pytest.raises(InputError, match="ridge must be >= 0"):
        cg(k, np.ones(20), ridges=[-1.0])
    with pytest.raises(InputError, match="expected \\(20,\\)"):
        cg(k, np.ones(21))
    with pytest.raises(InputError, match="NaN"):
        cg(k, np.full(20, np.nan))
    with pytest.raises(InputError, match="ridge_path"):
        cg(k, np.ones(20), ridges=[1, 2], ridge_path="fast")


@pytest.mark.parametrize("path", ["single", "multishift", "sequential", "batched"])
def test_checkpoint_resume_in_process(path, tmp_path):
    k = spd(200, 60, floor=1e-4)
    b = np.random.default_rng(5).standard_normal((200, 2))
    kw = {"rtol": 1e-10}
    if path != "single":
        kw.update(ridges=[1e-3, 1e-1], ridge_path=path)
        if path != "multishift":
            kw["M"] = lambda r: r
    x_ref, info_ref = cg(k, b, **kw)
    ck = ZarrCheckpoint(str(tmp_path / "ck.zarr"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)
        _, partial = cg(k, b, maxiter=9, checkpoint=ck, checkpoint_every=4, **kw)
    assert int(partial) > 0
    x, info = cg(k, b, checkpoint=ZarrCheckpoint(str(tmp_path / "ck.zarr")), checkpoint_every=4, **kw)
    assert info.resumed_from and info.resumed_from >= 8
    assert int(info) == 0
    np.testing.assert_allclose(x, x_ref, rtol=1e-8, atol=1e-10)
    # a finished solve is kept: rerunning it costs no product
    op = GramOperator.from_array(k)
    x2, info2 = cg(op, b, checkpoint=ZarrCheckpoint(str(tmp_path / "ck.zarr")), **kw)
    if path != "sequential":
        assert op.n_passes == 0
    np.testing.assert_allclose(x2, x, rtol=1e-12)


def test_checkpoint_of_another_problem_is_ignored():
    k = spd(50, 10)
    ck = MemoryCheckpoint()
    cg(k, np.ones(50), checkpoint=ck)
    with pytest.warns(NumericalWarning, match="different problem"):
        x, info = cg(k, 2 * np.ones(50), checkpoint=ck)
    assert info.resumed_from is None
    np.testing.assert_allclose(x, reference(k, 2 * np.ones(50), 0), rtol=1e-5)


def test_float32_operator():
    k = spd(100, 30, np.float32)
    b = np.ones((100, 2), np.float32)
    x, info = cg(k, b, rtol=1e-4)
    assert x.dtype == np.float32 and int(info) == 0
    np.testing.assert_allclose(x, reference(k, b, 0), rtol=2e-3, atol=1e-3)


def test_cg_checks_the_true_residual_and_never_claims_an_unreached_tolerance():
    """The recurrence's residual drifts below b - A x in finite precision (Greenbaum 1997,
    ch. 7). A converged CG checks the true residual with one more product, goes on from
    it when it is above tol, and reports it (not converged) once it stagnates."""
    b = np.random.default_rng(12).standard_normal((300, 3))
    k = spd(300, 300, floor=1e-6, seed=11)
    op = CountingOperator(k)
    x, info = cg(op, b, rtol=1e-11)
    true = np.linalg.norm(b - k @ x, axis=0) / np.linalg.norm(b, axis=0)
    assert int(info) == 0 and true.max() <= 1e-11
    assert op.products == info.iterations + 2          # resumed once from the true residual
    np.testing.assert_allclose(info.residual.ravel(), true, rtol=1e-6)
    k = spd(300, 300, floor=1e-5, seed=11)             # 1e-12 is below its attainable accuracy
    with pytest.warns(NumericalWarning, match="did not converge"):
        x, info = cg(k, b, rtol=1e-12)
    true = np.linalg.norm(b - k @ x, axis=0) / np.linalg.norm(b, axis=0)
    assert int(info) > 0 and true.max() > 1e-12
    np.testing.assert_allclose(info.residual.ravel(), true, rtol=1e-6)
