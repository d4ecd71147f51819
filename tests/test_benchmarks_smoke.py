"""The benchmark suite cannot rot: ``python -m benchmarks --quick --only tiny`` runs
end to end (subprocess, result parsing, suite.json, the README section) into a
temporary results directory, in a few seconds."""

import json
import subprocess
import sys

from tests.support.paths import ROOT


def test_suite_runs_the_tiny_benchmark(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "tiny", "--quiet",
                          "--results-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    suite = json.loads((tmp_path / "suite.json").read_text())
    entry = suite["benchmarks"]["tiny"]
    assert entry["status"] == "ok", entry.get("reason")
    assert {"date", "machine", "versions"} <= set(suite["last_run"]) and suite["last_run"]["mode"] == "quick"
    assert suite["last_run"]["machine"]["load_1min"] >= 0
    timing, acc = entry["tables"][0]["rows"], entry["tables"][1]["rows"]
    # the three fits give the same predictions: the check the script makes before timing
    assert len(timing) == 3 and all(r["max rel diff vs sklearn"] <= 1e-6 for r in timing), timing
    assert sorted(r["kernel"] for r in acc) == ["FC ReLU depth 3 NNGP", "FC ReLU depth 3 NTK"]
    assert all(r["ntkscale"] >= 0.9 for r in acc), acc
    raw = json.loads((tmp_path / "suite-raw" / "quick" / "estimator_tiny.json").read_text())
    assert [r["ntkscale"] for r in acc] == [r["ntkscale"] for r in raw["accuracy"]["rows"]]
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("<!-- suite:begin -->") and readme.rstrip().endswith("<!-- suite:end -->")
    assert "### tiny" in readme
    status_row = next(line for line in readme.splitlines() if line.startswith("| [tiny](#suite-tiny) |"))
    assert "| ok | quick |" in status_row
    for r in acc:  # the README table is rendered from suite.json
        assert f"| {r['kernel']} | {r['ntkscale']:.3g} |" in readme


def test_suite_rejects_unknown_names(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nope", "--results-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown benchmark" in out.stderr


def test_readme_section_is_replaced_between_markers_only(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.suite import BEGIN, END, write_readme

    path = tmp_path / "README.md"
    path.write_text("# Title\n\ntext above\n")
    write_readme(path, f"{BEGIN}\none\n{END}\n")
    assert path.read_text() == f"# Title\n\ntext above\n\n{BEGIN}\none\n{END}\n"
    path.write_text(path.read_text() + "text below\n")
    write_readme(path, f"{BEGIN}\ntwo\n{END}\n")
    assert path.read_text() == f"# Title\n\ntext above\n\n{BEGIN}\ntwo\n{END}\ntext below\n"
