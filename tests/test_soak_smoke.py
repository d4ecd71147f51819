"""The fault soak cannot rot: ``python -m benchmarks.soak`` runs fuzzed configs and
damaged-chunk trials end to end in about 20 s, prints its table and writes its JSON;
one trial reruns alone from its seed."""

import json
import re
import subprocess
import sys

import pytest

from tests.support.paths import ROOT

pytestmark = pytest.mark.timeout(180)


def _soak(*args: str, tmp_path, name: str = "soak.json") -> tuple:
    out = tmp_path / name
    r = subprocess.run([sys.executable, "-m", "benchmarks.soak", *args, "--json", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=150)
    return r, (json.loads(out.read_text()) if out.exists() else None)


def _rows(stdout: str) -> dict:
    """kind -> (trials, passed, failed) from the printed Markdown table."""
    rows = {}
    for m in re.finditer(r"^\| (\w+)[^|]* \| (\d+) \| (\d+) \| (\d+) \|", stdout, re.M):
        rows[m.group(1)] = tuple(int(m.group(i)) for i in (2, 3, 4))
    return rows


def test_fuzz_and_corrupt_trials_all_pass(tmp_path):
    # The fuzz draws of a seed depend on the installed Hypothesis version; the soak's
    # findings (a list as cluster.kind, a checksums entry of the wrong type) are fixed and
    # pinned by the two tests below, whatever a seed draws.
    r, report = _soak("--seed", "0", "--budget", "15", "--only", "fuzz", tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert _rows(r.stdout)["fuzz"] == (200, 200, 0)          # >= 200 fuzzed configs, no traceback
    assert report["failures"] == [] and "FAILED" not in r.stdout
    r, report = _soak("--seed", "2", "--budget", "30", "--only", "corrupt", tmp_path=tmp_path, name="c.json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    corrupt = _rows(r.stdout)["corrupt"]
    assert corrupt[0] >= 2 and corrupt[1] == corrupt[0] and corrupt[2] == 0, r.stdout
    # the JSON says the same, and each corruption was named by verify and repaired bit-identically
    table = {row["kind"]: (row["trials"], row["passed"], row["failed"]) for row in report["table"]}
    assert table == {"corrupt": corrupt} and report["failures"] == []
    details = [t["detail"] for t in report["trials"] if t["kind"] == "corrupt"]
    assert all("verify named ['" in d and "repaired bit-identical" in d for d in details), details


def test_one_trial_reruns_alone_from_its_seed(tmp_path):
    r, report = _soak("--seed", "2", "--budget", "30", "--only", "fuzz", "--trial", "17", tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert [t["trial"] for t in report["trials"]] == [17]
    again = _soak("--seed", "2", "--budget", "30", "--only", "fuzz", "--trial", "17", tmp_path=tmp_path,
                  name="again.json")[1]
    assert again["trials"][0]["detail"] == report["trials"][0]["detail"]     # the same config both times


def test_verify_survives_a_manifest_entry_of_the_wrong_type(tmp_path):
    r, report = _soak("--seed", "0", "--budget", "60", "--only", "corrupt", "--trial", "3", tmp_path=tmp_path)
    assert "retype" in json.dumps(report["trials"]) or "AttributeError" in json.dumps(report["trials"])
    assert report["failures"] == [], report["failures"]


def test_plan_refuses_a_cluster_kind_that_is_a_list(tmp_path):
    from tests.support.fuzz_configs import plan_one

    from tests.support.gram import config_dict, make_data

    import yaml

    data = make_data(tmp_path, n=40, m=12, d=4)
    cfg = config_dict(data)
    cfg["cluster"]["kind"] = [{"a": True}]
    text = yaml.safe_dump(cfg)
    assert plan_one(tmp_path, {"name": "c.yaml", "text": text, "what": "cluster.kind list"}) is None
