"""A killed ``ntkscale run`` resumes: Gram blocks and the CG checkpoint are reused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ntkscale.config.run import load_config
from ntkscale.stages.run import RunPipeline
from ntkscale.store.gram_store import GramStore
from tests.support.gram import write_config
from tests.support.run import blobs, run_config

# The real CLI in a subprocess, with each Gram sweep slowed down so the kill lands mid-solve.
SLOW_RUN = """
import sys, time
from ntkscale.solvers import operator as o
orig = o.GramOperator._matmat
def slow(self, x):
    time.sleep(0.03)
    return orig(self, x)
o.GramOperator._matmat = slow
from ntkscale.cli.main import main
sys.exit(main(["run", sys.argv[1], "--json"]))
"""


def _checkpoint_seq(store) -> int:
    best = -1
    for slot in "ab":
        try:
            with open(store / "solver" / "cg_checkpoint" / slot / "zarr.json") as fh:
                attrs = json.load(fh).get("attributes", {})
        except (OSError, ValueError):
            continue
        if attrs.get("complete"):
            best = max(best, int(attrs.get("seq", -1)))
    return best


def test_killed_run_resumes_from_gram_and_cg_checkpoint(tmp_path):
    data = blobs(tmp_path, n=256, m=32, d=8, classes=4, seed=5)
    solver = {"method": "cg", "ridge": 1e-7, "tol": 1e-10, "preconditioner": "none", "checkpoint_every": 5,
              "maxiter": 3000}
    cfg = write_config(tmp_path, run_config(data, solver=solver))
    store = tmp_path / "run.zarr"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while _checkpoint_seq(store) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before the kill: {proc.communicate()[1].decode()[-2000:]}"
        assert _checkpoint_seq(store) >= 3, "no CG checkpoint within 60 s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = GramStore.open(store).manifest.records()
    assert not (store / "solver" / "alpha").exists()

    # a clean reference run on a copy: the full solve from scratch
    ref_dir = tmp_path / "ref"
    shutil.copytree(store, ref_dir / "run.zarr")
    shutil.rmtree(ref_dir / "run.zarr" / "solver")
    for name in ("x", "y", "xt", "yt"):
        shutil.copy(data[name], ref_dir)
    fresh = RunPipeline(load_config(write_config(ref_dir, run_config(data, solver=solver))), progress=False).run()

    resumed = RunPipeline(load_config(cfg), progress=False).run()
    print(f"\nresumed {resumed['solve']}, fresh {fresh['solve']}")
    assert resumed["gram"]["blocks_computed"] == 0 and fresh["gram"]["blocks_computed"] == 0
    after = GramStore.open(store).manifest.records()
    assert {k: r.get("run_id") for k, r in after.items()} == {k: r.get("run_id") for k, r in before.items()}
    assert resumed["solve"]["cg_resumed_from"] >= 15 and fresh["solve"]["cg_resumed_from"] is None
    assert resumed["solve"]["gram_passes"] < fresh["solve"]["gram_passes"]
    assert resumed["solve"]["converged"] and resumed["test_accuracy"] == pytest.approx(fresh["test_accuracy"])
