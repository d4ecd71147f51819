"""A killed ``ntkscale predict --time`` resumes from the Lanczos basis in the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ntkscale.cli.main import main
from ntkscale.config.run import load_config
from ntkscale.predict import gradient_descent_mse
from ntkscale.stages.run import RunPipeline
from ntkscale.store.gram_store import GramStore
from tests.support.gram import write_config
from tests.support.run import blobs, last_json, run_config

# The real CLI in a subprocess, each Gram sweep slowed down so the kill lands mid-run.
SLOW_PREDICT = """
import sys, time
from ntkscale.solvers import operator as o
orig = o.GramOperator._matmat
def slow(self, x):
    time.sleep(0.05)
    return orig(self, x)
o.GramOperator._matmat = slow
from ntkscale.cli.main import main
sys.exit(main(["predict", sys.argv[1], "--time", "1,100,inf", "--json"]))
"""


def _steps(store) -> int:
    try:
        with open(store / "solver" / "lanczos_ntk" / "zarr.json") as fh:
            return int(json.load(fh).get("attributes", {}).get("steps", -1))
    except (OSError, ValueError):
        return -1


@pytest.mark.slow
def test_killed_predict_time_resumes_from_the_stored_basis(tmp_path, capsys):
    data = blobs(tmp_path, n=200, m=30, d=8, classes=4, seed=5)
    solver = {"method": "cg", "ridge": 1e-7, "tol": 1e-11, "preconditioner": {"kind": "nystrom", "rank": 50}}
    cfg = write_config(tmp_path, run_config(data, solver=solver))
    RunPipeline(load_config(cfg), progress=False).run()
    store = tmp_path / "run.zarr"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PREDICT, str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while _steps(store) < 15 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before the kill: " + proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = _steps(store)
    assert done >= 15
    capsys.readouterr()
    assert main(["predict", str(cfg), "--time", "1,100,inf", "--json"]) == 0
    captured = capsys.readouterr()
    doc = last_json(captured.out)
    assert doc["lanczos_resumed_from"] >= done and f"resumed from step {doc['lanczos_resumed_from']}" in captured.err
    # the resumed run gives the dense answer
    s = GramStore.open(store)
    K, Kx = np.asarray(s.train_array("ntk")[...]), np.asarray(s.test_array("ntk")[...])
    y = np.eye(4)[np.load(data["y"])] - 0.25
    fn = gradient_descent_mse(K, y, learning_rate=1.0, diag_reg=doc["diag_reg"], diag_reg_absolute_scale=True)
    f = np.asarray(s.group("predict")["dynamics_ntk"]["f_test"][...])
    want = [fn(1.0, fx_train_0=None, fx_test_0=0.0, k_test_train=Kx),
            fn(100.0, fx_train_0=None, fx_test_0=0.0, k_test_train=Kx),
            fn(None, fx_train_0=None, fx_test_0=0.0, k_test_train=Kx)]
    for i, w in enumerate(want):
        assert np.linalg.norm(f[i] - w) <= 1e-8 * np.linalg.norm(w), i
