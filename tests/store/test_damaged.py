"""Damaged and read-only stores: every command that reads checks what it reads and
names the bad blocks and the repair; a read-only store serves every read-only command."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from ntkscale.cli.main import main
from ntkscale.config.run import load_config
from ntkscale.errors import StoreDamagedError, StoreError, StoreReadOnlyError
from ntkscale.stages.run import RunPipeline
from ntkscale.store.gram_store import GramStore
from ntkscale.store.lock import StoreLock
from ntkscale.store.maintenance import export, status, verify
from tests.support.gram import write_config
from tests.support.run import blobs, run_config

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    """A solved and predicted store (NTK, CG), made once; tests work on copies."""
    tmp = tmp_path_factory.mktemp("damaged")
    data = blobs(tmp, n=80, m=30)
    cfg = write_config(tmp, run_config(data))
    metrics = RunPipeline(load_config(cfg), progress=False).run()
    labels = np.asarray(GramStore.open(tmp / "run.zarr").group("predict")["labels"][...])
    return tmp, data, metrics, labels


def _copy(solved, name):
    tmp, data = solved[0], solved[1]
    store = tmp / f"{name}.zarr"
    shutil.copytree(tmp / "run.zarr", store)
    return write_config(tmp, run_config(data, store=store.name), f"{name}.yaml"), store


def test_export_test_with_an_altered_chunk_fails_naming_the_block(solved, tmp_path, capsys):
    _, store = _copy(solved, "alter")
    with open(store / "gram/test/ntk/c/0/1", "r+b") as f:     # test-0-1: bytes changed in place
        f.seek(8)
        f.write(b"\x13\x37\x13\x37")
    out = tmp_path / "Kt.npy"
    assert main(["export", str(store), "test", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 test blocks of" in err and "test-0-1: ntk chunk does not match its checksum" in err, err
    assert f"ntkscale verify --repair {store}" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())              # nothing written, no partial file
    assert main(["export", str(store), "train", "-o", str(tmp_path / "K.npy")]) == 0   # the train part is fine


def test_export_train_with_a_truncated_chunk_fails_naming_the_block(solved, tmp_path, capsys):
    _, store = _copy(solved, "trunc")
    with open(store / "gram/train/ntk/c/2/0", "r+b") as f:    # the mirror chunk of train-0-2
        f.truncate(100)
    with pytest.raises(StoreDamagedError, match=r"train-0-2: ntk mirror chunk unreadable"):
        export(store, "train", tmp_path / "K.npy")
    assert not (tmp_path / "K.npy").exists()


def test_status_on_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "run.zarr").write_text("not a store")
    with pytest.raises(StoreError, match="is a file, not a Gram store"):
        status(tmp_path / "run.zarr")
    assert main(["status", str(tmp_path / "run.zarr")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_deleted_diagonal_chunk_is_named_by_status_solve_and_run(solved, capsys):
    cfg, store = _copy(solved, "nodiag")
    before = status(store)
    assert before["complete"] and before["damaged"] == {}
    os.remove(store / "diag/train/ntk/c/1")                  # diag-train-1
    shutil.rmtree(store / "solver")                          # so that solve has to read the Gram
    st = status(store)
    assert not st["complete"] and st["damaged"] == {"diag-train-1": "ntk chunk file is missing"}
    assert "checksums" in st["checked"]
    assert main(["status", str(store)]) == 0
    assert ", complete" not in capsys.readouterr().out
    for command in ("solve", "run"):
        assert main([command, str(cfg)]) == 2
        err = capsys.readouterr().err
        assert "diag-train-1: ntk chunk file is missing" in err and f"ntkscale verify --repair {store}" in err, err
        assert "non-finite" not in err


def test_altered_diagonal_chunk_is_found_by_its_checksum_before_solving(solved):
    cfg, store = _copy(solved, "altdiag")
    with open(store / "diag/train/ntk/c/0", "r+b") as f:
        f.seek(0)
        f.write(b"\x00\x00\x00\x00")
    with pytest.raises(StoreDamagedError, match="diag-train-0: ntk chunk does not match its checksum"):
        RunPipeline(load_config(cfg), progress=False).solve()


def test_store_opened_read_only_serves_every_reading_command(solved, tmp_path):
    """The code path (mode "r"), whatever the filesystem allows."""
    _, store = _copy(solved, "moder")
    s = GramStore.open(store, "r")
    assert s.read_only
    assert verify(s)["clean"] and status(store)["complete"]
    out = export(s, "train", tmp_path / "K.npy")
    np.testing.assert_array_equal(np.load(out), GramStore.open(store).train_array("ntk")[...])


@pytest.fixture
def read_only(solved, tmp_path):
    """A copy of the solved store behind a read-only bind mount (skipped where not permitted)."""
    cfg, store = _copy(solved, "readonly")
    src = store.with_name("readonly-src.zarr")
    store.rename(src)
    store.mkdir()
    r = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(store)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {r.stderr.strip()}")
    try:
        yield cfg, store
    finally:
        subprocess.run(["umount", str(store)], check=False)


def test_read_only_store_status_verify_export_predict(read_only, solved, tmp_path, capsys):
    cfg, store = read_only
    with pytest.raises(OSError):                              # really read-only, even for root
        (store / "probe").write_text("x")
    assert main(["status", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["complete"]
    assert main(["verify", str(store)]) == 0
    out = tmp_path / "K.npy"
    assert main(["export", str(store), "test", "-o", str(out)]) == 0
    assert np.load(out).shape == (30, 80)
    pred = tmp_path / "pred.npy"
    assert main(["predict", str(cfg), "-o", str(pred), "--json"]) == 0
    captured = capsys.readouterr()
    assert "is read-only; the predictions are not saved in the store" in captured.err
    np.testing.assert_array_equal(np.load(pred), solved[3])
    assert json.loads(captured.out.strip().splitlines()[-1])["test_accuracy"] == solved[2]["test_accuracy"]
    # commands that must write say so in one line
    for argv in (["gram", str(cfg)], ["verify", str(store), "--repair"], ["solve", str(cfg)]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "read-only" in err and "Traceback" not in err and "Errno" not in err, (argv, err)
    with pytest.raises(StoreReadOnlyError, match="make it writable, or use the commands that only read"):
        StoreLock(store, command="x").acquire()
