"""Fault tests with real processes: ``ntkscale gram`` in a subprocess with a
LocalCluster of worker processes, SIGKILLed in part or whole; chunks damaged
on disk; incompatible configs against a finished store."""

import json
import os
import shutil
import signal

import numpy as np
import pytest

from ntkscale.cli.main import main
from ntkscale.store.maintenance import verify
from ntkscale.gram.schedule import FAULT_DELAY_ENV
from ntkscale.store.gram_store import GramStore
from tests.support.gram import config_dict, make_data, snapshot, status_json, write_config
from tests.support.nets import LAYERS
from tests.support.processes import cli, kill_group, start_cli, wait_for, worker_processes
from tests.support.reference import assert_matches_in_memory, in_memory_kernels

pytestmark = pytest.mark.timeout(240)

#: Slows each block task so the tests can act mid-run (read by the workers).
SLOW = {FAULT_DELAY_ENV: "0.5"}
SLOWER = {FAULT_DELAY_ENV: "1.5"}


def _arrays(store):
    s = GramStore.open(store)
    out = {f"{p}/{k}": s.array(p, k)[...] for p in ("train", "test") for k in s.kinds}
    out.update({f"diag/{w}/{k}": s.diag(w, k) for w in ("train", "test") for k in s.kinds})
    return out


def _assert_same(store, ref):
    got = _arrays(store)
    assert sorted(got) == sorted(ref)
    for name, a in ref.items():
        np.testing.assert_array_equal(got[name], a, err_msg=name)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data, a config and an uninterrupted reference store (computed once, in-process).

    BLAS is limited to one thread, as on the workers (Dask sets OMP_NUM_THREADS=1),
    so the reference and the subprocess runs must agree bit for bit."""
    from threadpoolctl import threadpool_limits

    from ntkscale.config.run import RunConfig
    from ntkscale.stages.gram import GramPipeline

    tmp = tmp_path_factory.mktemp("faults")
    data = make_data(tmp, n=72, m=20, d=8)
    raw = config_dict(data, store="ref.zarr", block_size=24)
    local = dict(raw, cluster={"kind": "local", "n_workers": 2, "processes": False, "dashboard_address": ":0"})
    with threadpool_limits(1):
        GramPipeline(RunConfig.from_mapping(local, tmp), progress=False).run()
    ref = _arrays(tmp / "ref.zarr")
    assert_matches_in_memory(ref["train/ntk"], in_memory_kernels(data)["ntk"])
    return tmp, data, raw, ref


def _config(world, name, **over):
    tmp, data, raw, _ = world
    cfg = dict(raw, store=f"{name}.zarr", **over)
    return write_config(tmp, cfg, f"{name}.yaml"), tmp / f"{name}.zarr"


def test_sigkill_a_worker_mid_run_completes_with_the_same_gram(world):
    tmp = world[0]
    cfg, store = _config(world, "killworker")
    proc = start_cli("gram", str(cfg), cwd=tmp, env=SLOW, log=tmp / "killworker.log")
    try:
        wait_for(lambda: (status_json(store) or {}).get("blocks_done", 0) >= 4, timeout=60,
                 what="first blocks")
        workers = wait_for(lambda: worker_processes(parent=proc.pid, contains=("spawn_main",),
                                                  excludes=("resource_tracker",)),
                           timeout=60, what="worker processes")
        assert len(workers) == 2
        os.kill(workers[0].pid, signal.SIGKILL)
        st = status_json(store)
        assert st["running"] and st["blocks_done"] < st["blocks_total"]      # killed mid-run
        assert proc.wait(timeout=180) == 0, (tmp / "killworker.log").read_text()
    finally:
        kill_group(proc)
    st = status_json(store)
    assert st["complete"] and not st["running"]
    assert "Restarting worker" in (tmp / "killworker.log").read_text()   # the nanny replaced it
    assert verify(store)["clean"]
    _assert_same(store, world[3])


def test_sigkill_the_whole_run_then_resume_computes_only_missing_blocks(world, capsys):
    tmp = world[0]
    cfg, store = _config(world, "killrun")
    proc = start_cli("gram", str(cfg), cwd=tmp, env=SLOWER, log=tmp / "killrun.log")
    try:
        wait_for(lambda: (status_json(store) or {}).get("blocks_done", 0) >= 3, timeout=60,
                 what="first blocks")
        # status is read-only and works while the run holds the store
        assert main(["status", str(store), "--json"]) == 0
        live = json.loads(capsys.readouterr().out)
        assert live["running"] and live["holder"]["pid"] == proc.pid
        assert 0 < live["blocks_done"] < live["blocks_total"]
        # a second run on the same store is refused, naming the holder
        assert main(["gram", str(cfg)]) == 2
        assert f"is in use by pid {proc.pid}" in capsys.readouterr().err
        assert proc.poll() is None
    finally:
        kill_group(proc)                               # SIGKILL the run and its workers
    assert main(["status", str(store), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert not st["running"]
    done_before, total = st["blocks_done"], st["blocks_total"]
    assert 0 < done_before < total
    # an interrupted write never passes as finished: only missing blocks, none bad
    assert main(["verify", str(store), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["bad"] == {} and len(rep["missing"]) == total - done_before
    # the lock of the killed run does not block the rerun
    r = cli("gram", str(cfg), "--json", cwd=tmp)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["blocks_done_before"] == done_before
    assert report["blocks_computed"] == total - done_before
    entries = GramStore.open(store).manifest.records()
    assert sum(e.get("run_id") == report["run_id"] for e in entries.values()) == total - done_before
    assert not list(store.rglob("*.partial"))          # cut-short chunk writes were cleaned up
    _assert_same(store, world[3])


def test_corrupt_chunks_are_found_by_verify_and_fixed_by_repair(world, capsys):
    tmp = world[0]
    store = tmp / "corrupt.zarr"
    shutil.copytree(tmp / "ref.zarr", store)
    with open(store / "gram/train/ntk/c/0/1", "r+b") as f:          # truncated: train-0-1
        f.truncate(300)
    with open(store / "gram/test/nngp/c/0/2", "r+b") as f:          # altered: test-0-2
        f.seek(16)                                                  # (rows past 20 are padding)
        f.write(b"\x00\xff\x00\xff")
    with open(store / "gram/train/nngp/c/2/1", "r+b") as f:         # altered mirror of train-1-2
        f.seek(8)
        f.write(b"\x13\x37")
    os.remove(store / "diag/train/ntk/c/2")                         # lost: diag-train-2
    assert main(["verify", str(store), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert set(rep["bad"]) == {"train-0-1", "test-0-2", "train-1-2", "diag-train-2"}
    assert rep["missing"] == [] and rep["inputs"] == {"train": "ok", "test": "ok"}
    r = cli("verify", str(store), "--repair", "--workers", "1", cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "repaired 4 blocks (4 computed)" in r.stdout
    assert main(["verify", str(store)]) == 0
    _assert_same(store, world[3])


@pytest.mark.parametrize("change, needle", [
    ("spec", "kernel.layers): layer 1 is [\"Erf\""),
    ("dtype", "holds dtype float64 but the config asks for float32 (dtype)"),
    ("train", "different train inputs (data.train.x)"),
    ("test", "rerun with --recompute-test"),
])
def test_mismatched_config_is_refused_and_the_store_is_unchanged(world, capsys, change, needle):
    tmp, data, raw, _ = world
    store = tmp / f"mismatch-{change}.zarr"
    shutil.copytree(tmp / "ref.zarr", store)
    cfg = dict(raw, store=store.name)
    if change == "spec":
        cfg["kernel"] = {"layers": LAYERS[:1] + [["Erf", {}]] + LAYERS[2:], "get": ["nngp", "ntk"]}
    elif change == "dtype":
        cfg["dtype"] = "float32"
    else:
        other = make_data(tmp, n=72, m=20, d=8, seed=99, prefix=f"{change}_")
        key = "x" if change == "train" else "xt"
        cfg["data"] = json.loads(json.dumps(cfg["data"]))
        cfg["data"][change]["x"] = other[key].name
    path = write_config(tmp, cfg, f"mismatch-{change}.yaml")
    before = snapshot(store)
    assert main(["gram", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ntkscale gram: error: store ") and needle in err, err
    assert "the store was not changed" in err
    assert snapshot(store) == before
