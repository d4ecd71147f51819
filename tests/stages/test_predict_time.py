"""``RunPipeline.predict_times``: the training dynamics on the stored Gram against the dense API."""

from __future__ import annotations

import numpy as np
import pytest

from ntkscale.config.run import RunConfig, load_config
from ntkscale.errors import ConfigError, InputError
from ntkscale.predict import gradient_descent_mse
from ntkscale.stages.dynamics import stored_dynamics
from ntkscale.stages.report import store_report
from ntkscale.stages.run import RunPipeline
from ntkscale.store.gram_store import GramStore
from tests.support.gram import write_config
from tests.support.nets import LAYERS
from tests.support.run import blobs, run_config

TIMES = [0.0, 1.0, 10.0, 100.0, 1e3, 1e4, float("inf")]


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    """A store with the NNGP and the NTK, solved (CG) and predicted."""
    tmp = tmp_path_factory.mktemp("dyn")
    data = blobs(tmp, n=90, m=30)
    cfg = write_config(tmp, run_config(data, kernel={"layers": LAYERS, "get": ["nngp", "ntk"]},
                                       solver={"method": "cg", "ridge": 1e-4, "tol": 1e-9, "learning_rate": 0.5,
                                               "preconditioner": {"kind": "nystrom", "rank": 20}}))
    pipe = RunPipeline(load_config(cfg), progress=False)
    pipe.run()
    return tmp, cfg, pipe


def dense(store: GramStore, kind: str, y_train: np.ndarray, lr: float, diag_reg: float) -> np.ndarray:
    K, Kx = np.asarray(store.train_array(kind)[...]), np.asarray(store.test_array(kind)[...])
    fn = gradient_descent_mse(K, y_train, learning_rate=lr, diag_reg=diag_reg, diag_reg_absolute_scale=True)
    fin = fn(np.asarray(TIMES[:-1]), fx_train_0=None, fx_test_0=np.zeros((len(Kx), y_train.shape[1])),
             k_test_train=Kx)
    return np.concatenate([fin, fn(None, fx_train_0=None, fx_test_0=0.0, k_test_train=Kx)[None]])


def test_store_path_equals_the_dense_api_at_every_time_for_both_kernels(solved):
    tmp, cfg, pipe = solved
    res = pipe.predict_times(TIMES, kinds="all")
    store = GramStore.open(tmp / "run.zarr")
    assert sorted(res) == ["nngp", "ntk"]
    for kind, r in res.items():
        mean_diag = float(np.mean(store.diag("train", kind)))
        assert r.learning_rate == 0.5 and r.diag_reg == pytest.approx(1e-4 * mean_diag, rel=1e-12)
        want = dense(store, kind, r.y_train, 0.5, r.diag_reg)
        assert r.f_test.shape == (len(TIMES), 30, 3) and r.labels.shape == (len(TIMES), 30)
        for i, t in enumerate(TIMES):
            err = np.linalg.norm(r.f_test[i] - want[i]) / max(np.linalg.norm(want[i]), 1e-300)
            assert err <= 1e-6, (kind, t, err)
        m = r.metrics
        assert m["times"][-1] == "inf" and len(m["test_accuracy"]) == len(TIMES) and m["converged"]
        assert m["test_accuracy"][-1] >= 0.9 and m["train_loss"][0] == pytest.approx(np.sum(r.y_train ** 2) /
                                                                                       (2 * r.y_train.size))
        assert m["train_loss"][-1] == 0.0 and np.all(np.diff(m["train_loss"]) <= 1e-15)
        assert max(m["error_estimate"]) <= 1e-6 and np.all(r.f_test[0] == 0)
    # t = inf is the solve's kernel regression (to the solve tolerance)
    scores = np.asarray(store.group("predict")["scores"][0])
    assert np.linalg.norm(res["ntk"].f_test[-1] - scores) <= 1e-7 * np.linalg.norm(scores)
    assert sorted(stored_dynamics(store)) == ["nngp", "ntk"]


def test_rerun_reuses_the_results_and_other_times_reuse_the_basis(solved):
    tmp, cfg, pipe = solved
    first = pipe.predict_times(TIMES)["ntk"]
    again = pipe.predict_times(TIMES)["ntk"]           # same request: the stored predictions
    assert np.array_equal(first.f_test, again.f_test) and again.metrics == first.metrics
    other = pipe.predict_times([3.0, 30.0], learning_rate=2.0)["ntk"]
    assert other.metrics["lanczos_resumed_from"] == first.metrics["lanczos_steps"]
    assert other.metrics["gram_passes"] <= 5 and other.learning_rate == 2.0
    # the dynamics only depend on lr * t
    store = GramStore.open(tmp / "run.zarr")
    fn = gradient_descent_mse(np.asarray(store.train_array("ntk")[...]), other.y_train, learning_rate=2.0,
                              diag_reg=other.diag_reg, diag_reg_absolute_scale=True)
    want = fn(np.array([3.0, 30.0]), fx_train_0=None, fx_test_0=0.0,
              k_test_train=np.asarray(store.test_array("ntk")[...]))
    assert np.allclose(other.f_test, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())


def test_report_plots_the_dynamics(solved, tmp_path):
    tmp, cfg, pipe = solved
    pipe.predict_times(TIMES, kinds="all")
    report = store_report(tmp / "run.zarr", str(tmp_path / "rep"))
    assert str(tmp_path / "rep" / "dynamics.png") in report
    assert (tmp_path / "rep" / "dynamics.png").stat().st_size > 10_000


def test_bad_times_and_learning_rates_are_errors_that_leave_the_store_alone(solved):
    tmp, cfg, pipe = solved
    before = sorted(p.relative_to(tmp) for p in (tmp / "run.zarr").rglob("*"))
    for times, words in [("-1", "must be >= 0"), ("nan", "must be >= 0"), ("", "comma-separated"),
                         ("1,x", "'x' is not a number"), ([], "no training times")]:
        with pytest.raises(InputError, match=words):
            pipe.predict_times(times)
    with pytest.raises(InputError, match="learning rate must be a finite number > 0"):
        pipe.predict_times("1", learning_rate=-1.0)
    with pytest.raises(InputError, match="cannot run the dynamics of rbf"):
        pipe.predict_times("1", kinds="rbf")
    assert sorted(p.relative_to(tmp) for p in (tmp / "run.zarr").rglob("*")) == before
    with pytest.raises(ConfigError, match="solver.learning_rate: must be > 0"):
        RunConfig.from_mapping({**run_config(blobs(tmp)), "solver": {"learning_rate": 0}}, tmp)


def test_dynamics_plot_takes_regression_metrics_and_refuses_nothing_to_plot(tmp_path):
    from ntkscale.report import dynamics_figure, write_report

    dyn = {"ntk": {"times": [0.0, 1.0, 10.0, "inf"], "test_mse": [1.0, 0.5, 0.2, 0.1],
                   "train_loss": [0.5, 0.2, 0.01, 0.0], "learning_rate": 1.0}}
    rep = write_report(str(tmp_path), dynamics=dyn)
    assert str(tmp_path / "dynamics.png") in rep and "dynamics.png" not in rep.skipped
    assert "ntkscale predict CONFIG --time" in write_report(str(tmp_path / "none")).skipped["dynamics.png"]
    with pytest.raises(ValueError, match="no positive finite time"):
        dynamics_figure({"ntk": {"times": [0.0, "inf"], "test_mse": [1, 0], "train_loss": [1, 0]}})
