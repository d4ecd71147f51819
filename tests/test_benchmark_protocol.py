"""The fair-comparison protocol (benchmarks/protocol.py) refuses unfair or wrong
comparisons before timing anything, times interleaved runs of real side
processes, and ``python -m benchmarks --check`` fails on a missed target.
No neural-tangents here: both sides are ntkscale processes (or a deliberately
wrong peer), which exercises the same protocol."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.support.paths import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import protocol  # noqa: E402
from protocol import ProtocolError, Target, Work  # noqa: E402

OURS = protocol.side_command("ours")
SMALL = Work("fc", 2, (12,), 9, 7, "float64")


def test_same_work_is_timed_interleaved_with_spread():
    res = protocol.compare(SMALL, {"a": OURS, "b": OURS}, repeats=4, threads=1, extra_ops=["floor", "flops"])
    assert res["max_rel_diff"] == 0.0
    assert res["setup"]["a"]["x1_shape"] == [9, 12] and res["setup"]["a"]["x2_shape"] == [7, 12]
    assert res["setup"]["a"]["out_shape"] == [9, 7] and res["setup"]["a"]["threads"] == 1
    for side in ("a", "b"):
        t = res["times"][side]
        assert t["runs"] == 4 and t["min"] <= t["q1"] <= t["median"] <= t["q3"] <= t["max"]
        assert len(res["raw_times"][side]) == 4 and res["peak_rss_mib"][side] >= 0
    lo, hi = res["ratio_iqr"]
    assert lo <= res["ratio"] <= hi
    assert res["env"]["NUMBA_NUM_THREADS"] == "1" and "intra_op_parallelism_threads=1" in res["env"]["XLA_FLAGS"]
    assert res["floor"]["gemm_s"] > 0 and res["flops"]["path"] == "cpu_flat"


def test_a_peer_given_other_work_is_refused():
    other = Work("fc", 2, (12,), 9, 8, "float64")   # one more column in x2: not the same work
    with pytest.raises(ProtocolError, match=r"do different work \(x2_shape: \[7, 12\] vs \[8, 12\]"):
        protocol.compare(SMALL, {"ours": OURS, "peer": OURS}, repeats=1, threads=1, peer_work=other)
    symmetric = Work("fc", 2, (12,), 9, None, "float64")
    with pytest.raises(ProtocolError, match="different work"):
        protocol.compare(SMALL, {"ours": OURS, "peer": OURS}, repeats=1, threads=1, peer_work=symmetric)


def test_different_outputs_refuse_to_time():
    wrong = [sys.executable, str(ROOT / "tests" / "support" / "wrong_peer.py")]
    with pytest.raises(ProtocolError, match=r"outputs differ: max rel 0\.0099.* > tolerance 1e-07 \(float64\); not timing"):
        protocol.compare(SMALL, {"ours": OURS, "peer": wrong}, repeats=3, threads=1)


def test_check_equal_is_a_real_check():
    a = np.ones((3, 3))
    assert protocol.check_equal(a, a, "float64") == 0.0
    with pytest.raises(ProtocolError, match="different shapes"):
        protocol.check_equal(a, np.ones((3, 2)), "float64")
    with pytest.raises(ProtocolError, match="non-finite"):
        protocol.check_equal(a, np.full((3, 3), np.nan), "float64")
    assert protocol.check_equal(a, a * (1 + 1e-3), "float32") < 2e-3


def test_inputs_are_the_same_formula_on_both_sides_and_cross_sets_differ():
    x1, x2 = protocol.make_inputs(SMALL)
    y1, y2 = protocol.make_inputs(SMALL)
    assert np.array_equal(x1, y1) and np.array_equal(x2, y2) and not np.allclose(x1[:7], x2)
    img = protocol.make_inputs(Work("cntk", 3, (4, 4, 1), 3, None, "float32"))[0]
    assert img.dtype == np.float32 and img.min() >= 0 and img.max() < 1 and img.shape == (3, 4, 4, 1)


def test_pinned_env_sets_every_thread_pool():
    env = protocol.pinned_env(3, [0], base={"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false --other=1"})
    assert all(env[v] == "3" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                        "NUMBA_NUM_THREADS"))
    assert env["XLA_FLAGS"] == "--other=1 --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=3"
    assert env["NTKSCALE_BENCH_CPUS"] == "0"


def _check(results_dir):
    return subprocess.run([sys.executable, "-m", "benchmarks", "--check", "--results-dir", str(results_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_check_fails_naming_every_missed_target(tmp_path):
    met = Target("FC cross f64 × NT", 4.0).judge(4.5)
    missed = Target("CNTK cross 8×8 f64 × NT", 15.0).judge(6.9)
    ratio = Target("ridge path / one solve", 2.0, "<=").judge(3.67)
    (tmp_path / "suite-raw" / "full").mkdir(parents=True)
    (tmp_path / "suite-raw" / "full" / "fake.json").write_text(json.dumps({"targets": [met, missed, ratio]}))
    out = _check(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "MISSED CNTK cross 8×8 f64 × NT: 6.9 (target >= 15)" in out.stdout
    assert "MISSED ridge path / one solve: 3.67 (target <= 2)" in out.stdout
    assert "met    FC cross f64 × NT: 4.5 (target >= 4)" in out.stdout
    assert "2 of 3 targets missed: CNTK cross 8×8 f64 × NT; ridge path / one solve" in out.stderr


def test_check_passes_when_all_met_and_says_when_nothing_was_recorded(tmp_path):
    assert _check(tmp_path).returncode == 2
    (tmp_path / "a.json").write_text(json.dumps({"targets": [Target("x", 1.0).judge(1.0)]}))
    out = _check(tmp_path)
    assert out.returncode == 0 and "all 1 targets met" in out.stdout
    assert Target("unmeasured", 1.0).judge(None)["met"] is False


def test_check_ignores_quick_runs(tmp_path):
    quick = tmp_path / "suite-raw" / "quick"
    quick.mkdir(parents=True)
    (quick / "fc.json").write_text(json.dumps({"targets": [Target("small sizes", 4.0).judge(1.0)]}))
    assert _check(tmp_path).returncode == 2
