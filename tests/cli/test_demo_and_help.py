"""``ntkscale demo --quick`` and the help texts (issue 15, items 1-2 and 9).

The demo writes under ntkscale's cache directory (not the working directory) and says
where; its config.yaml is plain YAML (no anchors) that loads to the demo's config.
Every command and every option has a help text, in one style.
"""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from ntkscale import numba_cache_dir
from ntkscale.cli.main import COMMANDS, build_parser
from ntkscale.config.run import load_config
from ntkscale.stages.demo import QUICK, demo_config, demo_config_text
from tests.support.processes import cli
from tests.support.run import last_json

pytest.importorskip("mlxtend")


def test_demo_quick_writes_into_the_cache_dir_and_says_where(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    # a fresh interpreter, as a user runs it; XDG_CACHE_HOME moves the demo's directory,
    # NUMBA_CACHE_DIR keeps the compiled kernels of this machine (no recompilation)
    out = cli("demo", "--quick", "--json", cwd=work, timeout=300,
              env={"XDG_CACHE_HOME": str(tmp_path / "xdg"), "NUMBA_CACHE_DIR": numba_cache_dir()})
    assert out.returncode == 0, out.stderr[-3000:]
    m = last_json(out.stdout)
    where = tmp_path / "xdg" / "ntkscale" / "demo" / f"{QUICK[0]}-{QUICK[1]}"
    assert (m["n_train"], m["n_test"]) == QUICK and m["test_accuracy"] >= 0.85
    assert m["directory"] == str(where) and f"demo: writing into {where}" in out.stderr
    assert m["directory_bytes"] > 1e6 and (where / "run.zarr").is_dir()
    assert list(work.iterdir()) == []                 # nothing in the working directory
    text = (where / "config.yaml").read_text()
    assert "&" not in text and "*" not in text, text  # no YAML anchors or aliases
    assert "  - [Dense, {out_dim: 512, W_std: 1.4142135623730951, b_std: 0.1}]" in text
    cfg = load_config(where / "config.yaml")
    assert cfg.solver.preconditioner.rank == QUICK[0] // 2 and len(json.loads(cfg.kernel.spec_json)) == 7


def test_demo_config_text_is_the_demo_config():
    assert yaml.safe_load(demo_config_text(3, 100)) == demo_config(3, 100)


def _subparsers(parser: argparse.ArgumentParser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_command_and_option_has_help_in_one_style():
    subs = _subparsers(build_parser())
    assert set(subs) == set(COMMANDS)
    for name, cmd in COMMANDS.items():
        assert cmd.help[0].isupper() and cmd.help.endswith("."), (name, cmd.help)
        for action in subs[name]._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"ntkscale {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{where}: no help text"
            assert action.help[0].islower() or action.help[0] in "$(" or action.help.split()[0].isupper(), \
                f"{where}: help starts with a capital: {action.help!r}"
            assert not action.help.endswith("."), f"{where}: help ends with a period: {action.help!r}"
            has_default = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
            if has_default:
                assert "(default " in action.help, f"{where}: default {action.default!r} not in {action.help!r}"
