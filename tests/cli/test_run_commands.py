"""``solve``/``predict``/``run``/``report``/``export`` flags (issue 15, item 9): the cluster
flags ``gram`` has, ``run --replace-y``/``--recompute-test`` (which ``run``'s own errors
ask for), ``.npy`` added to output names, and a Cholesky report that says why it has
no CG residual plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ntkscale.cli.gram import run_config
from ntkscale.cli.main import build_parser, main
from ntkscale.config.cluster import AddressClusterConfig, LocalClusterConfig
from ntkscale.store.gram_store import GramStore
from ntkscale.store.records import load_labels
from tests.support.gram import write_config
from tests.support.run import blobs, last_json, run_config as make_config


@pytest.mark.parametrize("command", ["solve", "predict", "run", "gram"])
def test_scheduler_and_workers_map_onto_the_config(tmp_path, command):
    path = write_config(tmp_path, make_config(blobs(tmp_path)))
    parser = build_parser()
    cfg = run_config(parser.parse_args([command, str(path), "--workers", "3"]))
    assert isinstance(cfg.cluster, LocalClusterConfig) and cfg.cluster.n_workers == 3
    assert cfg.cluster.processes is False          # the rest of the config's local cluster is kept
    cfg = run_config(parser.parse_args([command, str(path), "--scheduler", "tcp://10.0.0.1:8786"]))
    assert isinstance(cfg.cluster, AddressClusterConfig) and cfg.cluster.address == "tcp://10.0.0.1:8786"


def test_workers_below_one_is_refused(tmp_path, capsys):
    path = write_config(tmp_path, make_config(blobs(tmp_path)))
    assert main(["solve", str(path), "--workers", "0"]) == 2
    assert "--workers 0: give at least 1 worker process" in capsys.readouterr().err


def test_run_replace_y_and_recompute_test_as_its_error_says(tmp_path, capsys):
    data = blobs(tmp_path)
    path = write_config(tmp_path, make_config(data))
    assert main(["run", str(path), "--quiet", "--json"]) == 0
    first = last_json(capsys.readouterr().out)
    y = np.load(data["y"])
    np.save(data["y"], (y + 1) % 3)                                  # relabel the classes
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--replace-y" in err
    assert main(["run", str(path), "--quiet", "--json", "--replace-y"]) == 0
    second = last_json(capsys.readouterr().out)
    assert second["gram"]["blocks_computed"] == 0                    # the Gram was kept
    assert second["test_accuracy"] < first["test_accuracy"] - 0.3    # solved on the new labels
    rng = np.random.default_rng(5)
    np.save(data["xt"], np.load(data["xt"]) + 0.01 * rng.standard_normal(np.load(data["xt"]).shape))
    assert main(["run", str(path), "--quiet"]) == 2
    assert "--recompute-test" in capsys.readouterr().err
    assert main(["run", str(path), "--quiet", "--json", "--recompute-test", "--replace-y"]) == 0
    third = last_json(capsys.readouterr().out)
    assert third["gram"]["blocks_computed"] == 0 and third["n_test"] == second["n_test"]


def test_cholesky_report_says_why_there_are_no_cg_residuals(tmp_path, capsys):
    data = blobs(tmp_path)
    path = write_config(tmp_path, make_config(data, solver={"method": "cholesky", "ridge": [1e-4, 1e-2, 1.0]}))
    assert main(["run", str(path), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "run.zarr"), "-o", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "no cg_residuals.png: the cholesky solver is direct" in out
    summary = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert summary["written"] == ["spectrum.png", "metric_vs_ridge.png"]
    assert summary["skipped"]["cg_residuals.png"].startswith("the cholesky solver is direct")
    assert not (tmp_path / "rep" / "cg_residuals.png").exists()


def test_output_names_get_npy(tmp_path, capsys):
    data = blobs(tmp_path)
    path = write_config(tmp_path, make_config(data))
    assert main(["run", str(path), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run.zarr"), "train", "-o", str(tmp_path / "K")]) == 0
    assert f"-o {tmp_path / 'K'}: writing {tmp_path / 'K'}.npy" in capsys.readouterr().err
    assert not (tmp_path / "K").exists() and np.load(tmp_path / "K.npy").shape == (120, 120)
    assert main(["predict", str(path), "--quiet", "-o", str(tmp_path / "pred")]) == 0
    assert f"writing {tmp_path / 'pred'}.npy" in capsys.readouterr().err
    assert np.load(tmp_path / "pred.npy").shape == (40,)


def test_empty_train_data_is_named_as_empty(tmp_path, capsys):
    data = blobs(tmp_path)
    np.save(data["x"], np.zeros((0, 6)))
    np.save(data["y"], np.zeros((0,), dtype=np.int64))
    assert main(["run", str(write_config(tmp_path, make_config(data))), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "empty" in err and "single class" not in err, err


def test_string_class_labels_are_accepted(tmp_path, capsys):
    data = blobs(tmp_path)
    names = np.array(["cat", "dog", "emu"])
    np.save(data["y"], names[np.load(data["y"])])
    np.save(data["yt"], names[np.load(data["yt"])])
    path = write_config(tmp_path, make_config(data))
    assert main(["run", str(path), "--quiet", "--json"]) == 0, capsys.readouterr().err
    assert last_json(capsys.readouterr().out)["test_accuracy"] >= 0.9
    # the store keeps integer codes with the class names as attributes, and reads strings back
    import zarr
    root = zarr.open_group(str(tmp_path / "run.zarr"), mode="r")
    z = root["inputs/train/y"]
    assert z.dtype.kind == "i" and z.attrs["classes"] == ["cat", "dog", "emu"]
    store = GramStore.open(tmp_path / "run.zarr", "r")
    np.testing.assert_array_equal(np.asarray(store.y("test")[...]), np.load(data["yt"]))
    pred = load_labels(root["predict"])
    assert pred.dtype.kind == "U" and np.mean(pred == np.load(data["yt"])) >= 0.9
    assert main(["verify", str(tmp_path / "run.zarr"), "--json"]) == 0   # y matches its fingerprint
    assert json.loads(capsys.readouterr().out)["inputs"] == {"train": "ok", "test": "ok"}


def test_string_class_predictions_are_written_as_strings(tmp_path, capsys):
    data = blobs(tmp_path)
    names = np.array(["cat", "dog", "emu"])
    np.save(data["y"], names[np.load(data["y"])])
    np.save(data["yt"], names[np.load(data["yt"])])
    path = write_config(tmp_path, make_config(data))
    assert main(["run", str(path), "--quiet"]) == 0
    assert main(["predict", str(path), "--quiet", "-o", str(tmp_path / "pred.npy")]) == 0
    pred = np.load(tmp_path / "pred.npy")
    assert pred.dtype.kind == "U" and set(pred.tolist()) <= set(names.tolist())


def test_plan_says_on_stderr_what_it_times_and_names_its_estimate(tmp_path, capsys):
    path = write_config(tmp_path, make_config(blobs(tmp_path)))
    assert main(["plan", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["estimated_s"] > 0                # stdout stays the JSON plan
    assert "timing one 120x120 block on one core for the estimate (--no-calibrate skips it) ..." in err
    assert main(["plan", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "timing one" in err and "timing one" not in out
    assert "(the plan's estimate; gram's progress line shows the ETA it measures)" in out
    assert main(["plan", str(path), "--no-calibrate"]) == 0
    assert "timing one" not in capsys.readouterr().err
