"""``ntkscale predict CONFIG --time ...``: outputs, JSON, errors (exit 2, store untouched)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from ntkscale.cli.main import main
from ntkscale.store.gram_store import GramStore
from tests.support.gram import write_config
from tests.support.run import blobs, last_json, run_config


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-dyn")
    data = blobs(tmp, n=60, m=20)
    cfg = write_config(tmp, run_config(data, solver={"method": "cg", "ridge": 1e-4, "tol": 1e-9,
                                                     "preconditioner": {"kind": "nystrom", "rank": 10}}))
    assert main(["run", str(cfg), "--quiet"]) == 0
    return tmp, cfg


def test_predict_time_writes_predictions_raw_arrays_and_json(solved, tmp_path, capsys):
    tmp, cfg = solved
    capsys.readouterr()
    pred, raw = tmp_path / "pred", tmp_path / "raw.npz"
    assert main(["predict", str(cfg), "--time", "0,1,100,inf", "--learning-rate", "2", "-o", str(pred),
                 "--raw", str(raw), "--json", "--quiet"]) == 0
    doc = last_json(capsys.readouterr().out)
    assert doc["times"] == [0.0, 1.0, 100.0, "inf"] and doc["learning_rate"] == 2.0 and doc["kernel"] == "ntk"
    assert len(doc["test_accuracy"]) == 4 and doc["test_accuracy"][-1] >= 0.9 and len(doc["train_loss"]) == 4
    labels = np.load(tmp_path / "pred.npy")
    assert labels.shape == (4, 20) and labels.dtype.kind in "iu"
    z = np.load(raw)
    assert z["f_test"].shape == (4, 20, 3) and np.isinf(z["times"][-1]) and float(z["learning_rate"]) == 2.0
    store = GramStore.open(tmp / "run.zarr")
    assert float(z["diag_reg"]) == pytest.approx(1e-4 * np.mean(store.diag("train", "ntk")), rel=1e-12)
    y = np.load(tmp / "y.npy")
    assert np.allclose(z["y_train"], np.eye(3)[y] - 1 / 3)
    assert np.array_equal(labels[1:], np.argmax(z["f_test"][1:], axis=-1))    # decoded: argmax of the scores
    # t = inf equals `ntkscale predict` (the solve) to the solve tolerance
    scores = np.asarray(store.group("predict")["scores"][0])
    assert np.linalg.norm(z["f_test"][-1] - scores) <= 1e-7 * np.linalg.norm(scores)
    assert main(["predict", str(cfg), "--time", "1,10"]) == 0          # a table without --json
    out = capsys.readouterr().out
    assert "ntk: learning rate 1" in out and "t = 10.0" in out and "test_accuracy" in out


@pytest.mark.parametrize("argv,words", [
    (["--time", ""], "give comma-separated training times"),
    (["--time=-1,2"], "training times must be >= 0"),
    (["--time", "nan"], "training times must be >= 0"),
    (["--time", "1,ten"], "'ten' is not a number"),
    (["--time", "1", "--learning-rate", "0"], "--learning-rate must be a finite number > 0"),
    (["--time", "1", "--kernel", "nngp"], "cannot run the dynamics of nngp"),
    (["--learning-rate", "1"], "--learning-rate goes with --time"),
])
def test_bad_time_arguments_exit_2_with_one_line_and_leave_the_store_alone(solved, capsys, argv, words):
    tmp, cfg = solved
    before = sorted((p.relative_to(tmp), p.stat().st_mtime_ns) for p in (tmp / "run.zarr").rglob("*"))
    capsys.readouterr()
    assert main(["predict", str(cfg), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
    assert sorted((p.relative_to(tmp), p.stat().st_mtime_ns) for p in (tmp / "run.zarr").rglob("*")) == before


def test_predict_time_on_a_read_only_store_keeps_its_work_in_memory(solved, tmp_path, capsys):
    tmp, cfg = solved
    work = tmp_path / "ro"
    shutil.copytree(tmp, work)
    store, src = work / "run.zarr", work / "run-src.zarr"
    store.rename(src)
    store.mkdir()
    r = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(store)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {r.stderr.strip()}")
    try:
        with pytest.raises(OSError):
            (store / "probe").write_text("x")
        capsys.readouterr()
        assert main(["predict", str(work / cfg.name), "--time", "1,inf", "--json", "-o", str(tmp_path / "p.npy")]) == 0
        captured = capsys.readouterr()
        assert "read-only; the Lanczos basis is kept in memory only" in captured.err
        assert last_json(captured.out)["times"] == [1.0, "inf"] and np.load(tmp_path / "p.npy").shape == (2, 20)
    finally:
        subprocess.run(["umount", str(store)], check=False)
