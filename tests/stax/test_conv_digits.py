"""Accuracy: CNTK-GAP depth 3 NTK regression on sklearn's digits (8×8×1)
reaches ≥ 0.99 test accuracy (neural-tangents 0.6.5: 0.998)."""

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.solvers.dense import solve_psd


def digits_split():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1)
    perm = np.random.default_rng(0).permutation(len(x))
    tr, te = perm[:1200], perm[1200:]
    return x[tr], y[tr], x[te], y[te]


def ntk_regression_accuracy(kernel_fn, x_tr, y_tr, x_te, y_te):
    k_tr = kernel_fn(x_tr, None, "ntk")
    k_te = kernel_fn(x_te, x_tr, "ntk")
    targets = np.eye(10)[y_tr] - 0.1               # one-hot, centred
    ridge = 1e-6 * float(np.mean(np.diag(k_tr)))
    alpha = solve_psd(k_tr, targets, ridge)
    return float(np.mean(np.argmax(k_te @ alpha, axis=1) == y_te))


@pytest.mark.slow
def test_cntk_gap_depth3_on_digits():
    x_tr, y_tr, x_te, y_te = digits_split()
    acc = ntk_regression_accuracy(stax.presets.cntk(3, "gap")[2], x_tr, y_tr, x_te, y_te)
    assert acc >= 0.99, acc


def test_cntk_on_a_digits_subset():
    """Fast stand-in for the slow test: 200 train / 100 test images."""
    x_tr, y_tr, x_te, y_te = digits_split()
    acc = ntk_regression_accuracy(stax.presets.cntk(3, "gap")[2], x_tr[:200], y_tr[:200],
                                  x_te[:100], y_te[:100])
    assert acc >= 0.93, acc
