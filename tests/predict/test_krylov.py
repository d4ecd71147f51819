"""The Krylov training dynamics (ntkscale.predict.krylov) against the dense closed form."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from ntkscale.errors import InputError, NotPSDError
from ntkscale.predict import gradient_descent_mse
from ntkscale.predict.krylov import ZarrLanczos, error_estimate, flow_scales, lanczos_dynamics, parse_times, problem_identity

TIMES = np.array([0.0, 0.3, 1.0, 10.0, 100.0, 1e3, 1e4, np.inf])


def spd(n: int, seed: int = 0, decay: float = 1.0) -> np.ndarray:
    """A kernel-like SPD matrix: a random orthogonal basis, eigenvalues decaying like 1/i^decay."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = 50.0 / np.arange(1, n + 1) ** decay
    return (q * lam) @ q.T


def dense_truth(K: np.ndarray, Kx: np.ndarray, Y: np.ndarray, lr: float, reg: float) -> np.ndarray:
    fn = gradient_descent_mse(K, Y, learning_rate=lr, diag_reg=reg, diag_reg_absolute_scale=True)
    fin = fn(TIMES[:-1], fx_train_0=None, fx_test_0=np.zeros((Kx.shape[0], Y.shape[1])), k_test_train=Kx)
    inf = fn(None, fx_train_0=None, fx_test_0=0.0, k_test_train=Kx)
    return np.concatenate([fin, inf[None]])


def test_parse_times_accepts_inf_and_refuses_bad_times():
    assert parse_times("1, 10,inf,0").tolist() == [1.0, 10.0, np.inf, 0.0]
    assert parse_times([2, 3.5]).tolist() == [2.0, 3.5]
    for bad, words in [("", "give comma-separated"), ("1,,2", "give comma-separated"), ("1,abc", "'abc' is not a number"),
                       ("-1", "must be >= 0"), ("nan", "must be >= 0"), ("3,-inf", "must be >= 0"), ([], "no training")]:
        with pytest.raises(InputError, match=words):
            parse_times(bad)


@pytest.mark.parametrize("lr,reg", [(1.0, 1e-3), (0.1, 0.0), (7.0, 1e-1)])
def test_lanczos_matches_the_dense_dynamics_at_every_time(lr, reg):
    rng = np.random.default_rng(1)
    n, m, k = 300, 40, 3
    K = spd(n, decay=1.5) + 1e-3 * np.eye(n)
    Kx = rng.standard_normal((m, n)) @ K / n
    Y = rng.standard_normal((n, k))
    truth = dense_truth(K, Kx, Y, lr, reg)
    res = lanczos_dynamics(lambda x: K @ x + reg * x, Y, flow_scales(TIMES, lr, Y.size), rtol=1e-9)
    assert res.converged and res.u.shape == (len(TIMES), n, k)
    f, f1, f2 = (np.einsum("ij,tjk->tik", Kx, u) for u in (res.u, res.u_prev, res.u_prev2))
    est = error_estimate(f, f1, f2)
    for i in range(len(TIMES)):
        scale = np.linalg.norm(truth[i])
        err = np.linalg.norm(f[i] - truth[i]) / max(scale, 1e-300)
        assert err <= 1e-8, (TIMES[i], err)
        if err > 1e-12:      # above round-off the a-posteriori estimate is within 10x of the true error
            assert err / 10 <= est[i] <= 10 * err, (TIMES[i], err, est[i])
    # the training residual ||exp(-a A) y|| from the tridiagonal alone
    lam, V = np.linalg.eigh(K + reg * np.eye(n))
    for i, a in enumerate(flow_scales(TIMES, lr, Y.size)):
        want = np.linalg.norm(V @ (np.exp(-a * lam)[:, None] * (V.T @ Y)), axis=0) if np.isfinite(a) else 0 * Y[0]
        assert np.allclose(res.train_residual[i], want, rtol=1e-7, atol=1e-10 * np.linalg.norm(Y))


def test_exhausted_krylov_space_is_exact_and_a_zero_column_stays_zero():
    K = spd(6, seed=2)
    Y = np.random.default_rng(3).standard_normal((6, 2))
    Y[:, 1] = 0.0
    res = lanczos_dynamics(lambda x: K @ x, Y, flow_scales(TIMES, 1.0, Y.size), rtol=1e-12, check_every=2)
    truth = dense_truth(K, K, Y, 1.0, 0.0)
    f = np.einsum("ij,tjk->tik", K, res.u)
    assert res.converged and res.steps <= 7
    assert np.allclose(f, truth, rtol=1e-9, atol=1e-10) and np.all(res.u[:, :, 1] == 0)


def test_infinite_time_without_a_ridge_on_a_singular_gram_is_an_error():
    x = np.random.default_rng(0).standard_normal((20, 3))
    K = x @ x.T                                           # rank 3
    with pytest.raises(NotPSDError, match="set a ridge"):
        lanczos_dynamics(lambda v: K @ v, np.ones((20, 1)), [np.inf], rtol=1e-8, check_every=1)


class Killed(RuntimeError):
    pass


def test_a_killed_run_resumes_from_its_stored_basis():
    K = spd(200, seed=4, decay=1.2) + 1e-2 * np.eye(200)
    Y = np.random.default_rng(5).standard_normal((200, 2))
    a = flow_scales(TIMES, 1.0, Y.size)
    full = lanczos_dynamics(lambda x: K @ x, Y, a, rtol=1e-10)
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    ident = problem_identity("test", K[0], Y)
    calls = []

    def dying(x):
        calls.append(1)
        if len(calls) > 17:
            raise Killed()
        return K @ x

    with pytest.raises(Killed):
        lanczos_dynamics(dying, Y, a, rtol=1e-10, record=ZarrLanczos(group, ident, Y.shape))
    assert dict(group.attrs)["steps"] == 17
    again = lanczos_dynamics(lambda x: K @ x, Y, a, rtol=1e-10, record=ZarrLanczos(group, ident, Y.shape))
    assert again.resumed_from == 17 and again.products == full.steps - 17 and again.steps == full.steps
    assert np.allclose(again.u, full.u, rtol=1e-10, atol=1e-12 * np.abs(full.u).max())
    # other times reuse the finished basis without a product; another problem starts afresh
    more = lanczos_dynamics(lambda x: K @ x, Y, a[:3], rtol=1e-10, record=ZarrLanczos(group, ident, Y.shape))
    assert more.products == 0 and more.resumed_from == full.steps
    fresh = lanczos_dynamics(lambda x: K @ x, 2 * Y, a, rtol=1e-10,
                             record=ZarrLanczos(group, problem_identity("other"), Y.shape))
    assert fresh.resumed_from == 0 and np.allclose(fresh.u, 2 * full.u, rtol=1e-8, atol=1e-10)
