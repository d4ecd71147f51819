"""Fuzzed run configs (Hypothesis) for the soak (benchmarks/soak.py, kind ``fuzz``).

Each example is a config file ``ntkscale plan`` reads in-process: a valid base
config with keys removed, added or set to values of any type (huge numbers, NaN,
nested lists, wrong paths), raw or templated YAML text (duplicate keys, YAML 1.1
number spellings, anchors, tabs), or JSON. ``plan`` must answer 0 or 2 and never
raise. The examples come from one Hypothesis run seeded with the soak seed and
never fail inside Hypothesis (failures are recorded, not raised), so example N
is the same on every rerun: ``--trial N`` replays it alone.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.support.gram import config_dict, make_data

PATHS = [("block_size",), ("dtype",), ("store",), ("backend",), ("device",), ("kernel",), ("kernel", "layers"),
         ("kernel", "get"), ("kernel", "layers", 0), ("kernel", "layers", 0, 1, "W_std"), ("cluster",),
         ("cluster", "kind"), ("cluster", "n_workers"), ("cluster", "memory_limit"), ("cluster", "threads_per_worker"),
         ("cluster", "scheduler_file"), ("cluster", "address"), ("data",), ("data", "train"), ("data", "train", "x"),
         ("data", "train", "y"), ("data", "test"), ("data", "test", "x"), ("solver",), ("solver", "method"),
         ("solver", "ridge"), ("solver", "tol"), ("solver", "tile"), ("solver", "preconditioner"), ("bogus",)]

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, 1, 7, 10**9, 2**63, -1, 2_000_000]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["1e-3", "nan", "inf", "1GiB", "1000TiB", "-5MB",
                                                                       "cupy", "cpu", "float16", "local", "slurm",
                                                                       "address", "/nonexistent/x.npy", "/proc/x.zarr",
                                                                       "x.npy", "../../etc/passwd", ""]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20))
VALUES = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                      max_leaves=8)

TEMPLATES = [
    "data:\n  train: {{x: x.npy, y: y.npy}}\nkernel: {{layers: [[Dense, {{W_std: {v}}}], [Relu, {{}}]]}}\n"
    "block_size: 16\nblock_size: {v}\n",
    "data:\n  train: {{x: x.npy, y: y.npy}}\ndata: {v}\nkernel: {{layers: [[Dense, {{}}]]}}\n",
    "base: &b {{x: x.npy, y: y.npy}}\ndata: {{train: *b}}\nkernel: {{layers: [[Dense, {{b_std: {v}}}]]}}\n"
    "cluster: {{kind: local, n_workers: {v}}}\n",
    "data:\n\ttrain: {v}\n", "{v}", "- {v}\n- [1, 2\n", "data: {{train: {{x: x.npy, y: y.npy}}}}\n"
    "kernel: {{layers: [[Dense, {{}}]], get: {v}}}\nstore: {v}\nsolver: {{ridge: {v}, method: cg}}\n",
]
TEXT_VALUES = st.one_of(st.sampled_from(["1e-3", "1E5", ".inf", "-.Inf", ".NaN", "0x1F", "0o17", "1_000", "yes", "No",
                                         "~", "null", "'2'", "[]", "{}", "*undefined", "&a 3", "!!python/object:os.system",
                                         "2001-12-14", "1:20", "10**9", "1e400", "- 1"]),
                        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12))


@st.composite
def configs(draw) -> Dict[str, Any]:
    """One fuzzed config: {"name": file name, "text": its contents, "what": a summary}."""
    base = draw(st.sampled_from(["mutate", "mutate", "mutate", "template", "rawtext", "json"]))
    if base == "template":
        tpl = draw(st.sampled_from(TEMPLATES))
        text = tpl.format(v=draw(TEXT_VALUES))
        return {"name": "c.yaml", "text": text, "what": f"template {TEMPLATES.index(tpl)}"}
    if base == "rawtext":
        text = draw(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
        return {"name": draw(st.sampled_from(["c.yaml", "c.json", "c.yml"])), "text": text, "what": "raw text"}
    cfg = _base()
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(PATHS))
        op = draw(st.sampled_from(["set", "set", "delete"]))
        value = draw(VALUES) if op == "set" else None
        _apply(cfg, path, op, value)
        edits.append(f"{op} {'.'.join(map(str, path))}" + (f"={value!r}"[:60] if op == "set" else ""))
    as_json = base == "json"
    try:
        text = json.dumps(cfg, allow_nan=True) if as_json else yaml.safe_dump(cfg, allow_unicode=True)
    except (ValueError, TypeError, yaml.YAMLError):
        text = json.dumps(cfg, default=str)
        as_json = True
    return {"name": "c.json" if as_json else "c.yaml", "text": text, "what": "; ".join(edits)}


def _base() -> Dict[str, Any]:
    cfg = config_dict({"x": Path("x.npy"), "y": Path("y.npy"), "xt": Path("xt.npy"), "yt": Path("yt.npy")},
                      store="run.zarr")
    cfg["solver"] = {"method": "cg", "ridge": 1e-4}
    return copy.deepcopy(cfg)


def _apply(cfg: Any, path: tuple, op: str, value: Any) -> None:
    node = cfg
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return
    last = path[-1]
    try:
        if op == "delete":
            del node[last]
        else:
            node[last] = value
    except (KeyError, IndexError, TypeError):
        pass


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def plan_one(where: Path, example: Dict[str, Any], timeout: int = 30) -> Optional[str]:
    """Run ``ntkscale plan`` in-process on one example; None if it answered 0 or 2 without a traceback."""
    from ntkscale.cli.main import main

    path = where / example["name"]
    path.write_text(example["text"])
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    cwd = os.getcwd()
    os.chdir(where)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["plan", str(path), "--no-calibrate"])
    except _Hang:
        return f"plan did not answer within {timeout} s"
    except SystemExit as exc:
        rc = exc.code
        if rc not in (0, 2):
            return f"SystemExit({rc!r}): {err.getvalue()[-800:]}"
    except BaseException as exc:  # noqa: BLE001 - any uncaught exception is the finding
        if isinstance(exc, KeyboardInterrupt):
            raise
        return f"uncaught {type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        os.chdir(cwd)
    if rc not in (0, 2):
        return f"exit code {rc!r}: {err.getvalue()[-800:]}"
    if "Traceback" in err.getvalue() + out.getvalue():
        return f"traceback printed (exit {rc}): {err.getvalue()[-1500:]}"
    return None


def run_fuzz(soak_seed: int, count: int, where: Path, only_trial: Optional[int] = None) -> List[Dict[str, Any]]:
    """``count`` fuzzed configs through ``plan`` (or only example ``only_trial``): soak trial records."""
    where.mkdir(parents=True, exist_ok=True)
    make_data(where, n=40, m=12, d=4)                  # x.npy, y.npy, xt.npy, yt.npy the base config names
    results: List[Dict[str, Any]] = []
    index = [0]

    @seed(soak_seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(configs())
    def one(example):
        n = index[0]
        index[0] += 1
        if only_trial is not None and n != only_trial:
            return
        t = time.monotonic()
        problem = plan_one(where, example)
        results.append({"kind": "fuzz", "trial": n, "ok": problem is None, "seconds": round(time.monotonic() - t, 3),
                        "detail": example["what"] if problem is None else
                        f"{problem}\n  config ({example['name']}):\n{example['text'][:1500]}"})

    one()
    return results
