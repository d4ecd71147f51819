"""End to end: ``ntkscale run/solve/predict/report`` and ``RunPipeline`` on small data."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from ntkscale.cli.main import main
from ntkscale.config.run import RunConfig, load_config
from ntkscale.errors import ConfigError, InputError
from ntkscale.stages.run import RunPipeline
from ntkscale.store.gram_store import GramStore, StoreError
from tests.support.gram import write_config
from tests.support.run import blobs, last_json, run_config


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    """One Gram store (cg solve done) shared by the tests that only read it."""
    tmp = tmp_path_factory.mktemp("run")
    data = blobs(tmp)
    cfg = write_config(tmp, run_config(data))
    metrics = RunPipeline(load_config(cfg), progress=False).run()
    return tmp, data, cfg, metrics


def test_solver_section_is_typed_and_checked(tmp_path):
    data = blobs(tmp_path, n=10, m=3)
    cfg = RunConfig.from_mapping(run_config(data, solver={"method": "cholesky", "ridge": [1e-6, 1e-3], "tile": 64,
                                                          "preconditioner": "none"}, task="classification"),
                                 tmp_path)
    s = cfg.solver
    assert (s.method, s.ridge, s.ridge_list, s.tile, s.preconditioner.kind) == ("cholesky", (1e-6, 1e-3), True,
                                                                               64, "none")
    assert cfg.task == "classification" and RunConfig.from_mapping(run_config(data, solver=None), tmp_path).solver is None
    for solver, words in [({"ridge": -1e-3}, "solver.ridge: must be >= 0"),
                          ({"ridge": [1e-3, -2]}, "solver.ridge: must be >= 0"),
                          ({"ridg": 1e-3}, "solver.ridg: unknown key; did you mean 'ridge'"),
                          ({"preconditioner": {"kind": "nystrom", "rnk": 3}}, "solver.preconditioner.rnk"),
                          ({"preconditioner": {"kind": "jacobi"}}, "solver.preconditioner.kind"),
                          ({"method": "lu"}, "solver.method: must be one of auto, cg, cholesky"),
                          ({"validation_fraction": 1.5}, "solver.validation_fraction"),
                          ({"mode": "disk"}, "solver.mode")]:
        with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
            RunConfig.from_mapping(run_config(data, solver=solver), tmp_path)
    with pytest.raises(ConfigError, match="task: must be one of auto, classification, regression"):
        RunConfig.from_mapping(run_config(data, task="clustering"), tmp_path)


def test_run_cg_matches_a_dense_solve(solved):
    tmp, data, cfg, m = solved
    assert m["task"] == "classification" and m["test_accuracy"] >= 0.9
    assert m["gram"]["blocks_computed"] > 0 and m["solve"]["converged"]
    store = GramStore.open(tmp / "run.zarr")
    K, Kx = np.asarray(store.train_array()[...]), np.asarray(store.test_array()[...])
    y = np.load(data["y"])
    Y = np.eye(3)[y] - 1 / 3
    lam = 1e-4 * np.mean(np.diag(K))
    alpha = np.linalg.solve(K + lam * np.eye(len(K)), Y)
    scores = np.asarray(store.group("predict")["scores"][0])
    np.testing.assert_allclose(scores, Kx @ alpha, rtol=1e-5, atol=1e-6)
    assert np.asarray(store.group("predict")["labels"][...]).tolist() == np.argmax(Kx @ alpha, 1).tolist()
    # a rerun computes no block and reuses the solve
    again = RunPipeline(load_config(cfg), progress=False).run()
    assert again["gram"]["blocks_computed"] == 0 and again["test_accuracy"] == m["test_accuracy"]


def test_cholesky_agrees_with_cg_and_reuses_tiles(solved, tmp_path):
    tmp, data, _, m = solved
    for name in ("x", "y", "xt", "yt"):
        shutil.copy(data[name], tmp_path)
    shutil.copytree(tmp / "run.zarr", tmp_path / "run.zarr")
    path = write_config(tmp_path, run_config(data, solver={"method": "cholesky", "ridge": 1e-4, "tile": 48}))
    pipe = RunPipeline(load_config(path), progress=False)
    out = pipe.run()
    assert out["gram"]["blocks_computed"] == 0 and out["solve"]["cholesky_tiles_computed"] > 0
    chol = np.asarray(GramStore.open(tmp_path / "run.zarr").group("predict")["scores"][0])
    cg = np.asarray(GramStore.open(tmp / "run.zarr").group("predict")["scores"][0])
    np.testing.assert_allclose(chol, cg, rtol=1e-5, atol=1e-6)
    assert out["test_accuracy"] == m["test_accuracy"]
    # forget the finished solve: the factor tiles in solver/cholesky are reused, none recomputed
    GramStore.open(tmp_path / "run.zarr", "r+").group("solver").attrs.update({"run": {}})
    rec = pipe.solve()
    assert rec["cholesky_tiles_computed"] == 0


def test_run_json_regression_last_line(tmp_path, capsys):
    data = blobs(tmp_path, n=90, m=30, regression=True)
    cfg = write_config(tmp_path, run_config(data, solver={"method": "cg", "ridge": 1e-3, "tol": 1e-8, "mode": "streamed",
                                                   "preconditioner": {"kind": "pivoted_cholesky", "rank": 16}}))
    assert main(["run", str(cfg), "--json"]) == 0
    out = capsys.readouterr()
    m = last_json(out.out)
    assert m["task"] == "regression" and 0 <= m["test_mse"] < 0.2 and m["test_r2"] > 0.5
    assert "computing" in out.err and "(streamed;" in out.err   # progress on stderr
    assert "ridges" not in m


def test_solver_mode_auto_measures_the_store_and_the_kernel(tmp_path, capsys):
    """``mode: auto`` decides from this store's read bandwidth and this machine's flop
    rate, both measured when the solve starts, and says which it chose and why."""
    data = blobs(tmp_path, n=90, m=30, regression=True)
    cfg = write_config(tmp_path, run_config(data, solver={"method": "cg", "ridge": 1e-3, "tol": 1e-8,
                                                          "mode": "auto"}))
    assert main(["run", str(cfg), "--json"]) == 0
    out = capsys.readouterr()
    line = next(l for l in out.err.splitlines() if "Gram products" in l)
    assert re.search(r"solve: Gram products (stored|streamed): .* beats .* \(read \d+ MB/s measured on "
                     r"\S+, kernel [\d.]+ GFLOP/s measured here\)", line), line
    assert last_json(out.out)["test_r2"] > 0.5


def test_ridge_list_selected_on_validation(tmp_path, capsys):
    data = blobs(tmp_path, n=150, m=40, seed=3)
    ridges = [1e-8, 1e-3, 10.0, 1e3]
    cfg = write_config(tmp_path, run_config(data, solver={"method": "cg", "ridge": ridges, "tol": 1e-8,
                                                   "validation_fraction": 0.2, "seed": 1,
                                                   "preconditioner": {"kind": "nystrom", "rank": 30}}))
    assert main(["run", str(cfg), "--json"]) == 0
    m = last_json(capsys.readouterr().out)
    rows = m["ridges"]
    assert [r["ridge"] for r in rows] == ridges
    assert all({"val_accuracy", "test_accuracy", "ridge_absolute"} <= set(r) for r in rows)
    best = int(np.argmax([r["val_accuracy"] for r in rows]))
    assert m["chosen_index"] == best and m["ridge"] == ridges[best]
    assert m["test_accuracy"] == rows[best]["test_accuracy"] and m["val_accuracy"] == rows[best]["val_accuracy"]
    assert rows[-1]["val_accuracy"] <= rows[best]["val_accuracy"]
    # the human-readable form lists every ridge and marks the chosen one
    assert main(["predict", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert text.count("ridge ") >= 5 and "chosen on validation" in text


def test_predict_new_inputs_and_report(solved, tmp_path, capsys):
    tmp, data, cfg, _ = solved
    xt = np.load(data["xt"])
    np.save(tmp_path / "new.npy", xt[:7])
    out = tmp_path / "pred.npy"
    assert main(["predict", str(cfg), "--x", str(tmp_path / "new.npy"), "-o", str(out)]) == 0
    labels = np.asarray(GramStore.open(tmp / "run.zarr").group("predict")["labels"][...])
    assert np.load(out).tolist() == labels[:7].tolist()
    np.save(tmp_path / "bad.npy", xt[:3, :4])
    assert main(["predict", str(cfg), "--x", str(tmp_path / "bad.npy"), "-o", str(out)]) == 2
    assert "training shape" in capsys.readouterr().err
    assert main(["report", str(tmp / "run.zarr"), "-o", str(tmp_path / "rep")]) == 0
    names = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert names == ["cg_residuals.png", "spectrum.png"]          # one ridge: no metric-vs-ridge plot
    assert all((tmp_path / "rep" / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == sorted(names + ["report.json"])
    assert "metric_vs_ridge.png" in (tmp_path / "rep" / "report.json").read_text()   # says why it is absent


# ----------------------------------------------------------------------------- bad input


def test_negative_ridge_rejected_before_work(tmp_path, capsys):
    data = blobs(tmp_path, n=20, m=5)
    cfg = write_config(tmp_path, run_config(data, solver={"ridge": -1e-6}))
    assert main(["run", str(cfg)]) == 2
    assert "solver.ridge: must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "run.zarr").exists()


def test_nan_targets_and_unknown_test_classes_rejected_before_work(tmp_path):
    data = blobs(tmp_path, n=30, m=10, regression=True)
    y = np.load(data["y"])
    y[[3, 17]] = np.nan
    np.save(data["y"], y)
    with pytest.raises(InputError, match=r"NaN.*rows 3, 17"):
        RunPipeline(load_config(write_config(tmp_path, run_config(data))), progress=False).run()
    assert not (tmp_path / "run.zarr").exists()
    data = blobs(tmp_path, n=30, m=10, classes=3)
    np.save(data["y"], np.load(data["y"]) % 2)            # train has classes 0, 1 only
    np.save(data["yt"], np.arange(10) % 3)                # test has class 2
    with pytest.raises(InputError, match=r"classes \[2\] that do not appear in the training labels"):
        RunPipeline(load_config(write_config(tmp_path, run_config(data))), progress=False).run()
    assert not (tmp_path / "run.zarr").exists()


def test_store_without_the_gram_blocks(solved, tmp_path):
    tmp, data, _, _ = solved
    for name in ("x", "y", "xt", "yt"):
        shutil.copy(data[name], tmp_path)
    path = write_config(tmp_path, run_config(data))
    with pytest.raises(StoreError, match="no Gram store .*ntkscale gram CONFIG"):
        RunPipeline(load_config(path), progress=False).solve()
    shutil.copytree(tmp / "run.zarr", tmp_path / "run.zarr")
    shutil.rmtree(tmp_path / "run.zarr" / "manifest" / "train-0-1")
    with pytest.raises(InputError, match=r"lacks 1 of the \d+ train Gram blocks the solver needs \(train-0-1\)"):
        RunPipeline(load_config(path), progress=False).solve()


def test_demo_smoke(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path / "demo"), "--n-train", "400", "--n-test", "100", "--json"]) == 0
    m = last_json(capsys.readouterr().out)
    assert m["n_train"] == 400 and m["n_test"] == 100 and m["test_accuracy"] >= 0.8
    assert (tmp_path / "demo" / "config.yaml").is_file() and (tmp_path / "demo" / "train_x.npy").is_file()
    cfg = load_config(tmp_path / "demo" / "config.yaml")
    assert cfg.solver.ridge == (1e-6,) and cfg.solver.preconditioner.kind == "nystrom"
    assert json.loads(cfg.kernel.spec_json)[0][1]["W_std"] == pytest.approx(2 ** 0.5)


def test_solver_products_on_the_cluster_equal_the_driver_ones(solved, tmp_path):
    """solver.products: cluster runs the CG products (and Cholesky tiles) as tasks
    that read the Zarr panels on the workers; the solution is the driver's."""
    tmp, data, _, m = solved
    for name in ("x", "y", "xt", "yt"):
        shutil.copy(data[name], tmp_path)
    shutil.copytree(tmp / "run.zarr", tmp_path / "run.zarr")
    GramStore.open(tmp_path / "run.zarr", "r+").group("solver").attrs.update({"run": {}})  # solve again
    solver = {"method": "cg", "ridge": 1e-4, "tol": 1e-8, "preconditioner": {"kind": "nystrom", "rank": 20},
              "products": "cluster"}
    cfg = RunConfig.from_mapping(run_config(data, solver=solver), tmp_path)
    pipe = RunPipeline(cfg, progress=False)
    assert pipe.products_on_cluster and pipe.client is None
    out = pipe.run()
    assert pipe.client is None                        # the run's own cluster is closed again
    rec = dict(GramStore.open(tmp_path / "run.zarr").group("solver").attrs)["run"]
    assert rec["products"] == "cluster" and rec["gram_passes"] > 0 and out["gram"]["blocks_computed"] == 0
    # the same solve identity as the driver's (products say how, not what)
    assert rec["identity"] == RunPipeline(cfg.replace(solver=cfg.solver.__class__(
        **{**cfg.solver.__dict__, "products": "driver"})), progress=False).identity(GramStore.open(tmp_path / "run.zarr"))
    ours = np.asarray(GramStore.open(tmp_path / "run.zarr").group("predict")["scores"][0])
    driver = np.asarray(GramStore.open(tmp / "run.zarr").group("predict")["scores"][0])
    np.testing.assert_allclose(ours, driver, rtol=1e-6, atol=1e-8)
    assert out["test_accuracy"] == m["test_accuracy"]
    # products: auto keeps a local cluster's products in the driver; other kinds use the cluster
    assert not cfg.solver.__class__().on_cluster("local") and cfg.solver.__class__().on_cluster("slurm")


def _dense_variances(store, ridge):
    """NNGP and NTK-GP (t = inf) posterior variances from the dense stored arrays."""
    K, Kx = np.asarray(store.train_array("nngp")[...]), np.asarray(store.test_array("nngp")[...])
    T, Tx = np.asarray(store.train_array("ntk")[...]), np.asarray(store.test_array("ntk")[...])
    d = store.diag("test", "nngp")
    eye = np.eye(len(K))
    nngp = d - np.einsum("ij,ji->i", Kx, np.linalg.solve(K + ridge * eye, Kx.T))
    a = np.linalg.solve(T + ridge * eye, Tx.T)
    ntk = d + np.einsum("ij,ij->j", a, K @ a) - 2 * np.einsum("ij,ji->i", Kx, a)
    return nngp, ntk


@pytest.mark.parametrize("method", ["cholesky", "cg"])
def test_posterior_variance_from_the_cli_matches_the_dense_formula(tmp_path, capsys, method):
    data = blobs(tmp_path, n=80, m=25, regression=True)
    solver = {"method": method, "ridge": 1e-2, "tol": 1e-10, "preconditioner": {"kind": "nystrom", "rank": 20}}
    cfg = write_config(tmp_path, run_config(data, solver=solver, kernel={"layers": run_config(data)["kernel"]["layers"],
                                                                  "get": ["nngp", "ntk"]}))
    assert main(["run", str(cfg), "--quiet"]) == 0
    store = GramStore.open(tmp_path / "run.zarr")
    rec = dict(store.group("solver").attrs)["run"]
    _, want = _dense_variances(store, rec["ridges_absolute"][0])
    capsys.readouterr()
    assert main(["predict", str(cfg), "--variance", str(tmp_path / "var.npy"), "--json", "--quiet"]) == 0
    m = last_json(capsys.readouterr().out)
    got = np.load(tmp_path / "var.npy")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    assert m["variance"]["file"] == str(tmp_path / "var.npy") and m["variance"]["min"] >= -1e-8
    # new inputs: only K(x, train) is computed; the test set as --x gives the same variances
    assert main(["predict", str(cfg), "--x", str(data["xt"]), "-o", str(tmp_path / "p.npy"),
                 "--variance", str(tmp_path / "var_new.npy"), "--quiet"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "var_new.npy"), want, rtol=1e-6, atol=1e-8)


def test_nngp_posterior_variance_and_ntk_only_store(solved, tmp_path):
    tmp, data, cfg, _ = solved
    with pytest.raises(InputError, match=r"the NTK-GP variance needs the NNGP too: set kernel.get: \[nngp, ntk\]"):
        RunPipeline(load_config(cfg), progress=False).variance()
    data = blobs(tmp_path, n=60, m=20)
    path = write_config(tmp_path, run_config(data, kernel={"layers": run_config(data)["kernel"]["layers"], "get": "nngp"},
                                      solver={"method": "cholesky", "ridge": 1e-3}))
    pipe = RunPipeline(load_config(path), progress=False)
    pipe.run()
    store = GramStore.open(tmp_path / "run.zarr")
    K, Kx = np.asarray(store.train_array("nngp")[...]), np.asarray(store.test_array("nngp")[...])
    ridge = dict(store.group("solver").attrs)["run"]["ridges_absolute"][0]
    want = store.diag("test", "nngp") - np.einsum("ij,ji->i", Kx, np.linalg.solve(K + ridge * np.eye(len(K)), Kx.T))
    np.testing.assert_allclose(pipe.variance(block=7), want, rtol=1e-6, atol=1e-9)
