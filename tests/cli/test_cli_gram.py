"""CLI: plan, gram, status (read-only), verify, export; errors exit 2 naming the key."""

import json
import os

import numpy as np
import pytest

from ntkscale.cli.main import main
from tests.support.gram import config_dict, make_data, snapshot, write_config
from tests.support.reference import assert_matches_in_memory, in_memory_kernels


def _cfg(tmp_path, data, **over):
    over.setdefault("cluster", {"kind": "local", "n_workers": 2, "processes": False, "dashboard_address": ":0"})
    return write_config(tmp_path, config_dict(data, **over))


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished store (in-thread local cluster: fast)."""
    tmp = tmp_path_factory.mktemp("cli")
    data = make_data(tmp, n=40, m=12, d=4)
    cfg = _cfg(tmp, data)
    assert main(["gram", str(cfg), "--quiet"]) == 0
    return tmp, data, cfg, tmp / "run.zarr"


def test_plan_prints_blocks_storage_flops_and_estimate(tmp_path, capsys):
    data = make_data(tmp_path, n=40, m=12, d=4)
    cfg = _cfg(tmp_path, data)
    assert main(["plan", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "block size 16: train 6 (upper triangle), test 3, diagonal 4 -> 13 tasks, 0 already done" in out
    assert "storage" in out and "flops" in out and "estimate" in out and "per entry on one core" in out
    assert "(timed here)" in out
    assert main(["plan", str(cfg), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["blocks_total"] == 13 and info["storage_bytes"] == (40 * 40 + 12 * 40 + 52) * 8 * 2
    assert info["estimated_s"] > 0 and info["write_bytes_per_s"] > 0 and not info["store_exists"]
    assert not (tmp_path / "run.zarr").exists()         # planning touches nothing


def test_plan_without_block_size_uses_memory_and_slots(tmp_path, capsys):
    data = make_data(tmp_path, n=3000, m=0, d=2)
    cfg = _cfg(tmp_path, data, block_size=None,
               cluster={"kind": "local", "n_workers": 2, "memory_limit": "1GiB"})
    assert main(["plan", str(cfg), "--json", "--no-calibrate"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["block_size"] % 128 == 0 and info["parts"]["train"]["blocks"] >= 8
    assert info["block_size"] ** 2 * 8 * 3 <= 1 << 30
    assert not [f for f in info["preflight"] if f["level"] == "error"]


def test_gram_status_verify_export(done, capsys, tmp_path):
    tmp, data, cfg, store = done
    assert main(["status", str(store), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["blocks_done"] == st["blocks_total"] == 13 and st["complete"] and not st["running"]
    assert main(["status", str(store)]) == 0
    assert "13/13 (100%)" in capsys.readouterr().out
    assert main(["verify", str(store)]) == 0
    assert "13 of 13 blocks intact, 0 missing, 0 bad" in capsys.readouterr().out
    out = tmp_path / "K.npy"
    assert main(["export", str(store), "train", "-o", str(out)]) == 2
    assert "pick one with --get nngp|ntk" in capsys.readouterr().err
    assert main(["export", str(store), "train", "-o", str(out), "--get", "ntk"]) == 0
    assert_matches_in_memory(np.load(out, allow_pickle=False), in_memory_kernels(data)["ntk"])
    assert main(["export", str(store), "test", "-o", str(out), "--get", "nngp"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["export", str(store), "test", "-o", str(out), "--get", "nngp", "--force"]) == 0
    assert_matches_in_memory(np.load(out, allow_pickle=False), in_memory_kernels(data, "test")["nngp"])
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_status_and_verify_are_read_only(done, capsys):
    _, _, _, store = done
    before = snapshot(store)
    main(["status", str(store), "--json"])
    main(["verify", str(store), "--json"])
    capsys.readouterr()
    assert snapshot(store) == before


def test_rerun_computes_nothing(done, capsys):
    _, _, cfg, _ = done
    assert main(["gram", str(cfg), "--json"]) == 0
    out = capsys.readouterr()
    rep = json.loads(out.out)
    assert rep["blocks_computed"] == 0 and rep["blocks_done_before"] == 13
    assert "all 13 blocks are already finished" in out.err


def test_incomplete_store_export_lists_missing_blocks(tmp_path, capsys):
    import shutil

    from ntkscale.store.gram_store import Manifest

    data = make_data(tmp_path, n=40, m=0, d=4)
    cfg = _cfg(tmp_path, data, kernel={"layers": config_dict(data)["kernel"]["layers"], "get": "ntk"})
    assert main(["gram", str(cfg), "--quiet"]) == 0
    Manifest(tmp_path / "run.zarr").delete(["train-0-1", "train-2-2"])
    assert main(["export", str(tmp_path / "run.zarr"), "train", "-o", str(tmp_path / "K.npy")]) == 2
    err = capsys.readouterr().err
    assert "incomplete: 2 of 6 blocks are missing (train-0-1, train-2-2)" in err
    assert not (tmp_path / "K.npy").exists()
    assert main(["verify", str(tmp_path / "run.zarr")]) == 1
    assert "missing  train-0-1, train-2-2" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "run.zarr")


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["cluster"].update(n_worker=2), "cluster.n_worker: unknown key; did you mean 'n_workers'?"),
    (lambda c: c["data"]["train"].update(x="missing.npy"), "data.train.x: file not found"),
])
def test_bad_config_exits_2_naming_the_key(tmp_path, capsys, mutate, needle):
    data = make_data(tmp_path, n=10, m=0, d=3)
    raw = config_dict(data)
    mutate(raw)
    cfg = write_config(tmp_path, raw)
    for cmd in ("plan", "gram"):
        assert main([cmd, str(cfg)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"ntkscale {cmd}: error: {cfg}: ") and needle in err
    assert not (tmp_path / "run.zarr").exists()


def test_status_of_a_non_store(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "is not a Gram store" in capsys.readouterr().err
