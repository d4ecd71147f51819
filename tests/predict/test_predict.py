"""Prediction, posterior variances (Lee et al. 2019), targets, metrics, ridge selection."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import zarr

from ntkscale import stax
from ntkscale.errors import InputError
from ntkscale.predict.blocked import nngp_posterior_variance, ntk_posterior_variance, predict
from ntkscale.solvers import GramOperator, relative_ridges, select_ridge, solve, validation_split
from ntkscale.targets import encode_targets, r2
from tests.support.solvers import spd


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    kfn = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.1), stax.Relu(), stax.Dense(64, W_std=1.5, b_std=0.1),
                      stax.Relu(), stax.Dense(1, W_std=1.5, b_std=0.1))[2]
    xtr, xte = rng.standard_normal((120, 6)), rng.standard_normal((40, 6))
    ktr, kx = kfn(xtr, None), kfn(xte, xtr)
    return kfn, xtr, xte, ktr, kx


def test_predict_from_array_zarr_and_on_the_fly(problem, tmp_path):
    kfn, xtr, xte, ktr, kx = problem
    alpha = np.random.default_rng(1).standard_normal((3, 120, 2))  # 3 ridges
    ref = np.einsum("mn,snk->smk", kx.ntk, alpha)
    z = zarr.create_array(str(tmp_path / "t.zarr"), shape=kx.ntk.shape, chunks=(16, 64), dtype="f8")
    z[:] = kx.ntk
    for out in (predict(kx.ntk, alpha), predict(z, alpha, block_rows=16),
                predict(None, alpha, kernel_fn=kfn, x_test=xte, x_train=xtr, get="ntk", block_rows=7)):
        np.testing.assert_allclose(out, ref, rtol=1e-10)
    np.testing.assert_allclose(predict(kx.ntk, alpha[0]), ref[0], rtol=1e-12)
    np.testing.assert_allclose(predict(kx.ntk, alpha[0, :, 0]), ref[0, :, 0], rtol=1e-12)
    with pytest.raises(InputError, match="share n"):
        predict(kx.ntk, np.ones(119))


def test_nngp_posterior_variance_matches_the_dense_formula(problem):
    kfn, xtr, xte, ktr, kx = problem
    lam = 1e-3
    a = ktr.nngp + lam * np.eye(120)
    d = kfn.diag(xte, get="nngp")
    ref = d - np.einsum("mn,nm->m", kx.nngp, np.linalg.solve(a, kx.nngp.T))
    got = nngp_posterior_variance(d, kx.nngp, lambda b: scipy.linalg.solve(a, b), block=16)
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-12)
    assert np.all(got > 0)
    # at the training inputs the variance is ~ the ridge
    at_train = nngp_posterior_variance(kfn.diag(xtr, get="nngp"), ktr.nngp, lambda b: scipy.linalg.solve(a, b))
    assert np.all(at_train < 1e-2)


def test_ntk_gp_variance_matches_lee_et_al_eq16(problem):
    kfn, xtr, xte, ktr, kx = problem
    lam = 1e-6
    th = ktr.ntk + lam * np.eye(120)
    d = kfn.diag(xte, get="nngp")
    tinv_tx = np.linalg.solve(th, kx.ntk.T)  # Theta^{-1} Theta(X, x)
    cov = (np.diag(d) + tinv_tx.T @ ktr.nngp @ tinv_tx - (kx.nngp @ tinv_tx + (kx.nngp @ tinv_tx).T))
    got = ntk_posterior_variance(d, kx.nngp, kx.ntk, ktr.nngp, lambda b: scipy.linalg.solve(th, b), block=9)
    np.testing.assert_allclose(got, np.diag(cov), rtol=1e-6, atol=1e-10)
    # a trained infinite network interpolates: zero variance on the training inputs
    at_train = ntk_posterior_variance(kfn.diag(xtr, get="nngp"), ktr.nngp, ktr.ntk, ktr.nngp,
                                      lambda b: scipy.linalg.solve(th, b))
    assert np.max(np.abs(at_train)) < 1e-5 * np.max(d)


def test_variance_with_a_tiled_cholesky_or_cg_solve(problem):
    kfn, xtr, xte, ktr, kx = problem
    d = kfn.diag(xte, get="nngp")
    ref = nngp_posterior_variance(d, kx.nngp, lambda b: scipy.linalg.solve(ktr.nngp + 1e-2 * np.eye(120), b))
    for method in ("cholesky", "cg"):
        got = nngp_posterior_variance(
            d, kx.nngp, lambda b, m=method: solve(ktr.nngp, b, ridges=1e-2, method=m, rtol=1e-12).alpha[0])
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------- targets
def test_classification_targets_are_centred_one_hot():
    enc = encode_targets(np.array([3, 1, 3, 7]))
    assert enc.task == "classification" and enc.classes_.tolist() == [1, 3, 7]
    y = enc.transform([3, 1, 3, 7])
    np.testing.assert_allclose(y.sum(axis=1), 0.0, atol=1e-15)
    np.testing.assert_allclose(y[1], [2 / 3, -1 / 3, -1 / 3])
    assert enc.decode(y).tolist() == [3, 1, 3, 7]
    assert enc.metrics(y, [3, 1, 1, 7], prefix="test_") == {"test_accuracy": 0.75}


def test_string_labels_and_explicit_tasks():
    enc = encode_targets(np.array(["cat", "dog", "cat"]))
    assert enc.task == "classification" and enc.decode(enc.transform(["dog"])).tolist() == ["dog"]
    assert encode_targets(np.array([0.5, 1.5])).task == "regression"
    assert encode_targets(np.array([0.0, 1.0, 2.0]), task="classification").classes_.tolist() == [0, 1, 2]
    reg = encode_targets(np.array([1, 2, 3]), task="regression")
    assert reg.transform([1, 2]).shape == (2, 1)


def test_missing_classes_and_bad_labels_are_clear_errors():
    enc = encode_targets(np.array([0, 1, 2, 1]))
    with pytest.raises(InputError, match=r"classes \[5, 9\] that do not appear in the training labels"):
        enc.transform(np.array([0, 5, 9, 1]), "y_test")
    with pytest.raises(InputError, match=r"y_train has 1 NaN .*row 2"):
        encode_targets(np.array([0.1, 0.2, np.nan]))
    with pytest.raises(InputError, match="single class"):
        encode_targets(np.array([4, 4, 4]))
    with pytest.raises(InputError, match="task must be one of"):
        encode_targets(np.array([1, 2]), task="ranking")
    with pytest.raises(InputError, match="non-integer floats"):
        encode_targets(np.array([0.5, 1.0]), task="classification")


def test_regression_metrics_match_scikit_learn():
    from sklearn.metrics import mean_squared_error, r2_score

    rng = np.random.default_rng(3)
    y, p = rng.standard_normal((50, 2)), rng.standard_normal((50, 2))
    enc = encode_targets(y)
    m = enc.metrics(p, y, prefix="test_")
    assert m["test_mse"] == pytest.approx(mean_squared_error(y, p))
    assert m["test_r2"] == pytest.approx(r2_score(y, p))
    assert r2(y[:, 0], y[:, 0]) == 1.0


# ------------------------------------------------------------------------------- ridge selection
def test_validation_split_is_seeded_and_disjoint():
    fit, val = validation_split(100, 0.2, seed=3)
    assert len(val) == 20 and len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == 100
    assert np.array_equal(val, validation_split(100, 0.2, seed=3)[1])
    assert not np.array_equal(val, validation_split(100, 0.2, seed=4)[1])
    with pytest.raises(InputError, match="between 0 and 1"):
        validation_split(100, 1.0)


@pytest.mark.parametrize("method", ["cg", "cholesky"])
def test_select_ridge_scores_held_out_training_rows(method):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((150, 3))
    y = np.sin(2 * x[:, 0]) + 0.3 * rng.standard_normal(150)
    k = np.exp(-0.5 * np.sum((x[:, None] - x[None]) ** 2, axis=-1))
    enc = encode_targets(y)
    ridges = relative_ridges([1e-8, 1e-1, 1e3], 1.0)
    sel = select_ridge(k, y, ridges, encoder=enc, validation_fraction=0.2, seed=0, method=method, rtol=1e-10)
    assert [set(m) for m in sel.metrics] == [{"val_mse", "val_r2"}] * 3
    assert sel.best_index == 1  # interpolating noise and over-smoothing both lose
    # the metric is that of a model fitted on the fit rows only
    fit, val = sel.fit_idx, sel.val_idx
    a = np.linalg.solve(k[np.ix_(fit, fit)] + 1e-1 * np.eye(len(fit)), y[fit])
    assert sel.metrics[1]["val_mse"] == pytest.approx(np.mean((k[np.ix_(val, fit)] @ a - y[val]) ** 2), rel=1e-6)


def test_select_ridge_classification_on_a_zarr_gram(tmp_path):
    k = spd(120, 30)
    z = zarr.create_array(str(tmp_path / "k.zarr"), shape=k.shape, chunks=(50, 50), dtype="f8")
    z[:] = k
    labels = np.arange(120) % 3
    sel = select_ridge(GramOperator.from_zarr(z), labels, [1e-3, 1.0], encoder=encode_targets(labels),
                       validation_fraction=0.25, method="cholesky", group=zarr.open_group(str(tmp_path / "s.zarr")))
    assert sel.metric == "val_accuracy" and len(sel.metrics) == 2 and 0 <= sel.best_index < 2
