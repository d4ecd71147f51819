"""YAML without surprises (issue 15, item 8): ``1e-3`` is a number, duplicate keys are
errors naming the key and its lines, and every configuration shipped in the repository
(README, docs, deploy recipes, the fixture store, the demo) still loads."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import List

import pytest
import yaml

from ntkscale.config.loader import load_json, load_yaml
from ntkscale.config.run import load_config
from ntkscale.errors import ConfigError
from ntkscale.stages.demo import demo_config_text
from tests.support.paths import FIXTURES, ROOT

LAYERS = "[[Dense, {W_std: 1e-3, b_std: 0.1}], [Relu, {}], [Dense, {W_std: 1.5}]]"


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"data:\n  train: {{x: x.npy, y: y.npy}}\nkernel:\n  layers: {LAYERS}\n{body}")
    return path


@pytest.mark.parametrize("text, value", [
    ("1e-3", 1e-3), ("-2E+5", -2e5), ("+1e3", 1e3), ("1.5e-3", 1.5e-3), ("1.0", 1.0), (".5", 0.5), ("-.5e2", -50.0),
    ("1_000.5", 1000.5), (".inf", math.inf), ("-.Inf", -math.inf)])
def test_floats_with_or_without_a_dot_are_numbers(text, value):
    got = load_yaml(f"a: {text}")["a"]
    assert isinstance(got, float) and got == value
    if text in ("1e-3", "-2E+5", "+1e3", "-.5e2"):      # YAML 1.1 (PyYAML's safe_load) read these as strings
        assert yaml.safe_load(f"a: {text}")["a"] == text


@pytest.mark.parametrize("text, value", [
    ("10", 10), ("0x1f", 31), ("'1e-3'", "1e-3"), ("1e", "1e"), ("e5", "e5"), ("1.2.3", "1.2.3"), ("true", True),
    ("1:00:00", 3600), ("01:00:00", "01:00:00"), ("2GiB", "2GiB"), ("null", None)])
def test_everything_else_reads_as_before(text, value):
    assert load_yaml(f"a: {text}")["a"] == value == yaml.safe_load(f"a: {text}")["a"]
    assert type(load_yaml(f"a: {text}")["a"]) is type(value)


def test_w_std_1e_minus_3_is_accepted_in_a_run_config(tmp_path):
    cfg = load_config(_config(tmp_path, "store: run.zarr\nsolver: {ridge: 1e-6}\n"), check_files=False)
    spec = json.loads(cfg.kernel.spec_json)
    assert spec[0][1]["W_std"] == 1e-3 and cfg.solver.ridge == (1e-6,)
    nan = load_yaml("a: .nan")["a"]
    assert isinstance(nan, float) and math.isnan(nan)


def test_duplicate_keys_are_errors_naming_key_and_lines(tmp_path):
    path = _config(tmp_path, "store: run.zarr\nsolver:\n  ridge: 1e-6\n  tol: 1e-8\n  ridge: 1e-3\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: duplicate key 'ridge' on line 9 (first on line 7)")):
        load_config(path, check_files=False)
    path = _config(tmp_path, "store: a.zarr\nstore: b.zarr\n")
    with pytest.raises(ConfigError, match="duplicate key 'store' on line 6 \\(first on line 5\\)"):
        load_config(path, check_files=False)
    with pytest.raises(ConfigError, match="duplicate key 'W_std' on line 1"):
        load_yaml("layers: [[Dense, {W_std: 1.0, W_std: 2.0}]]")
    (tmp_path / "c.json").write_text('{"store": "a.zarr", "store": "b.zarr"}')
    with pytest.raises(ConfigError, match="c.json: duplicate key 'store'"):
        load_config(tmp_path / "c.json", check_files=False)


def test_merge_keys_may_still_be_overridden():
    out = load_yaml("base: &b {tol: 1e-6, ridge: 1e-3}\nsolver:\n  <<: *b\n  ridge: 1e-2\n")
    assert out["solver"] == {"tol": 1e-6, "ridge": 1e-2}
    assert load_json('{"a": {"b": 1}, "c": [1e-3]}') == {"a": {"b": 1}, "c": [1e-3]}


def _yaml_blocks(path: Path) -> List[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S)


def _top_level_entries(block: str) -> List[str]:
    """A block that lists alternatives (``cluster: ...`` several times) split into entries."""
    entries: List[str] = []
    for line in block.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            entries.append(line)
        elif entries:
            entries[-1] += "\n" + line
    return entries


def _run_configs() -> List[tuple]:
    out = [("tests/fixtures/store-0.1.0/config.yaml", (FIXTURES / "store-0.1.0" / "config.yaml").read_text()),
           ("demo", demo_config_text())]
    configmap = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "20-run-config.yaml").read_text())
    out.append(("deploy/kubernetes/20-run-config.yaml", configmap["data"]["config.yaml"]))
    for doc in ("README.md", "docs/store.md"):
        out += [(f"{doc} block {i}", b) for i, b in enumerate(_yaml_blocks(ROOT / doc)) if b.startswith(("data:", "#"))]
    return out


@pytest.mark.parametrize("name, text", _run_configs(), ids=[n for n, _ in _run_configs()])
def test_every_shipped_run_config_still_loads(tmp_path, name, text):
    (tmp_path / "config.yaml").write_text(text)
    cfg = load_config(tmp_path / "config.yaml", check_files=False)
    assert json.loads(cfg.kernel.spec_json)[0][0] in ("Dense", "Conv")
    old = yaml.safe_load(text)
    assert load_yaml(text) == json.loads(json.dumps(old), parse_float=float) or _numbers_now(old, load_yaml(text))


def _numbers_now(old, new) -> bool:
    """``new`` equals ``old`` except that exponent strings (``"1e-6"``) became floats."""
    if isinstance(old, dict):
        return old.keys() == new.keys() and all(_numbers_now(old[k], new[k]) for k in old)
    if isinstance(old, list):
        return len(old) == len(new) and all(_numbers_now(a, b) for a, b in zip(old, new))
    if isinstance(old, str) and isinstance(new, float):
        return float(old) == new
    return old == new and type(old) is type(new)


def test_every_yaml_snippet_in_the_docs_parses_as_before():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "deploy").glob("*/README.md"))]
    checked = 0
    for doc in docs:
        for block in _yaml_blocks(doc):
            for entry in _top_level_entries(block):
                assert _numbers_now(yaml.safe_load(entry), load_yaml(entry)), (doc, entry)
                checked += 1
    assert checked >= 20
