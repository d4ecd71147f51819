"""A store written by ntkscale 0.1.0 before the redesign still opens, verifies,
exports, resumes and repairs with the current code (tests/fixtures/store-0.1.0)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import yaml

from ntkscale import stax
from ntkscale.cli.main import main
from ntkscale.store.gram_store import GramStore
from ntkscale.store.manifest import Manifest
from tests.support.paths import FIXTURES
from tests.support.run import last_json

FIXTURE = FIXTURES / "store-0.1.0"
KINDS = ("nngp", "ntk")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A private copy of the fixture (the original is never written)."""
    dst = tmp_path / "store-0.1.0"
    shutil.copytree(FIXTURE, dst)
    return dst


def _records(store: Path) -> Dict[str, dict]:
    return Manifest(store).records()


def _json_out(capsys: pytest.CaptureFixture) -> dict:
    """The JSON document a maintenance command printed (indented, whole stdout)."""
    return json.loads(capsys.readouterr().out)


def test_status_says_complete_and_verify_passes(run_dir, capsys):
    store = run_dir / "store"
    assert main(["status", str(store), "--json"]) == 0
    info = _json_out(capsys)
    assert info["complete"] and info["blocks_done"] == info["blocks_total"] == 24 and not info["running"]
    assert (info["n_train"], info["n_test"], info["block_size"], info["get"]) == (30, 10, 8, ["nngp", "ntk"])
    assert main(["verify", str(store), "--json"]) == 0
    rep = _json_out(capsys)
    assert rep["clean"] and rep["ok"] == 24 and rep["inputs"] == {"train": "ok", "test": "ok"}


def test_export_equals_the_store_and_a_fresh_kernel_fn(run_dir, tmp_path, capsys):
    store = GramStore.open(run_dir / "store")
    layers = yaml.safe_load((run_dir / "config.yaml").read_text())["kernel"]["layers"]
    kernel_fn = stax.from_spec(layers)[2]
    assert kernel_fn.spec_hash == store.spec_hash
    x = np.load(run_dir / "train_x.npy")
    xt = np.load(run_dir / "test_x.npy")
    fresh = {"train": dict(zip(KINDS, kernel_fn(x, None, get=KINDS), strict=True)),
             "test": dict(zip(KINDS, kernel_fn(xt, x, get=KINDS), strict=True))}
    for which in ("train", "test"):
        for kind in KINDS:
            out = tmp_path / f"{which}-{kind}.npy"
            assert main(["export", str(store.path), which, "-o", str(out), "--get", kind]) == 0
            got = np.load(out)
            np.testing.assert_array_equal(got, store.array(which, kind)[...])
            np.testing.assert_allclose(got, fresh[which][kind], rtol=1e-12, atol=0)
    capsys.readouterr()


def test_run_resumes_without_recomputing_any_block(run_dir, capsys):
    store = run_dir / "store"
    before = _records(store)
    assert main(["run", str(run_dir / "config.yaml"), "--json"]) == 0
    m = last_json(capsys.readouterr().out)      # `run --json`: one line, the last
    assert m["gram"]["blocks_computed"] == 0
    assert m["test_accuracy"] == pytest.approx(0.7)
    assert _records(store) == before


def test_gram_recomputes_exactly_one_lost_block_with_the_current_kernel(run_dir, capsys):
    """The lost block is recomputed by today's kernel code: equal to 0.1.0's to
    rounding (the fused FC pass now multiplies by precomputed 1/√q, so the last
    bits may differ), bit-identical to a fresh ``kernel_fn`` of the same rows,
    and recorded with the new bytes' checksums; no other block is touched."""
    store = run_dir / "store"
    key = "train-1-2"                                  # an off-diagonal block: it has a mirror
    chunks = {kind: store / "gram" / "train" / kind / "c" / "1" / "2" for kind in KINDS}
    old = {kind: GramStore.open(store).array("train", kind)[8:16, 16:24] for kind in KINDS}
    before = _records(store)
    shutil.rmtree(store / "manifest" / key)
    for p in chunks.values():
        p.unlink()
    assert main(["gram", str(run_dir / "config.yaml"), "--json"]) == 0
    report = _json_out(capsys)
    assert report["blocks_computed"] == 1 and report["blocks_done_before"] == 23
    gram = GramStore.open(store)
    layers = yaml.safe_load((run_dir / "config.yaml").read_text())["kernel"]["layers"]
    x = np.load(run_dir / "train_x.npy")
    fresh = dict(zip(KINDS, stax.from_spec(layers)[2](x[8:16], x[16:24], get=KINDS), strict=True))
    for kind in KINDS:
        new = gram.array("train", kind)[8:16, 16:24]
        np.testing.assert_allclose(new, old[kind], rtol=1e-14, atol=0)
        np.testing.assert_array_equal(new, fresh[kind])
        np.testing.assert_array_equal(gram.array("train", kind)[16:24, 8:16], new.T)
    after = _records(store)
    assert after[key]["token"] == before[key]["token"]
    assert {k: v for k, v in after.items() if k != key} == {k: v for k, v in before.items() if k != key}
    assert main(["verify", str(store), "--json"]) == 0
    assert _json_out(capsys)["clean"]


def test_fixture_is_untouched():
    """The copy-only tests above never write the fixture itself."""
    doc = json.loads((FIXTURE / "store" / "zarr.json").read_text())
    assert doc["attributes"]["ntkscale"]["ntkscale_version"] == "0.1.0"
