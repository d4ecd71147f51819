"""benchmarks/gpu_check.py: its parts import and run here; without a GPU it stops at once."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="checks a machine without CuPy")
def test_without_a_gpu_it_says_so_and_exits_2(capsys, tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 2
    line = capsys.readouterr().out.strip()
    assert line.startswith("gpu_check: no GPU: CuPy is not installed") and "\n" not in line
    assert not out.exists()


def test_it_measures_the_nets_the_issue_names():
    nets = {(label, dtype) for label, _, _, dtype in gpu_check.throughput_nets(simulate=False)}
    for label in ("cntk-gap3", "cntk-gap21", "fc3"):
        assert {(label, "float32"), (label, "float64")} <= nets
    assert {("myrtle5", "float32"), ("myrtle10", "float32")} <= nets
    assert sum(gpu_check.BUDGET.values()) <= 8 * 60 - 30   # leaves time for start-up and the fit


@pytest.mark.slow
def test_simulate_runs_the_whole_flow_on_a_cpu(tmp_path):
    """The script end to end under numba's CUDA simulator (about 2 minutes)."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--simulate", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["machine"]["simulated"] and res["parity"]["ok"] and res["pipeline"]["ok"]
    assert {r["label"] for r in res["throughput"]} == {"cntk-gap3 4x4x3", "myrtle-style 4x4x3", "fc3 16"}
    assert (tmp_path / "costmodel_gpu_simulated.json").exists()
