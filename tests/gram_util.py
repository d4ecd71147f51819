"""Helpers shared by the Gram engine tests (data, configs, CLI subprocesses)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import yaml

from ntkscale import stax
from ntkscale.store.gram_store import GramStore
from ntkscale.store.maintenance import status
from ntkscale.store.manifest import Manifest

LAYERS = [["Dense", {"W_std": 1.414, "b_std": 0.1}], ["Relu", {}],
          ["Dense", {"W_std": 1.414, "b_std": 0.1}], ["Relu", {}],
          ["Dense", {"W_std": 1.414, "b_std": 0.1}]]


def make_data(tmp: Path, n: int = 70, m: int = 23, d: int = 5, seed: int = 0, *,
              prefix: str = "") -> Dict[str, Path]:
    rng = np.random.default_rng(seed)
    paths = {}
    arrays = {"x": rng.standard_normal((n, d)), "y": rng.standard_normal((n, 2))}
    if m:
        arrays.update(xt=rng.standard_normal((m, d)), yt=rng.standard_normal((m, 2)))
    for name, a in arrays.items():
        paths[name] = tmp / f"{prefix}{name}.npy"
        np.save(paths[name], a)
    return paths


def config_dict(data: Dict[str, Path], store: str = "run.zarr", **over: Any) -> Dict[str, Any]:
    cfg: Dict[str, Any] = {
        "data": {"train": {"x": data["x"].name, "y": data["y"].name}},
        "kernel": {"layers": LAYERS, "get": ["nngp", "ntk"]},
        "store": store, "block_size": 16, "dtype": "float64",
        "cluster": {"kind": "local", "n_workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB",
                    "dashboard_address": ":0"},
    }
    if "xt" in data:
        cfg["data"]["test"] = {"x": data["xt"].name, "y": data["yt"].name}
    return apply_overrides(cfg, over)


def apply_overrides(cfg: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """Set top-level keys of a config dict; a value of None removes the key."""
    for key, value in over.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


def write_config(tmp: Path, cfg: Dict[str, Any], name: str = "config.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg) if name.endswith((".yaml", ".yml")) else json.dumps(cfg))
    return path


def reference(data: Dict[str, Path], which: str = "train", layers=LAYERS) -> Dict[str, np.ndarray]:
    """In-memory kernel_fn result for comparison."""
    kfn = stax.from_spec(layers)[2]
    x = np.load(data["x"], allow_pickle=False)
    x1 = np.load(data["xt"], allow_pickle=False) if which == "test" else x
    nngp, ntk = kfn(x1, None if which == "train" else x, get=("nngp", "ntk"))
    dn, dt = kfn.diag(x1, get=("nngp", "ntk"))
    return {"nngp": nngp, "ntk": ntk, "diag_nngp": dn, "diag_ntk": dt}


def snapshot(root: Path) -> Dict[str, str]:
    """Path -> sha256 of every file under ``root`` (to prove nothing changed)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


#: ``python -m ntkscale.cli.main`` would load cli.py twice (as __main__ and as ntkscale.cli.main).
CLI = [sys.executable, "-c", "import sys; from ntkscale.cli.main import main; sys.exit(main())"]


def cli(*args: str, cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``ntkscale ARGS`` in a fresh interpreter."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([*CLI, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str, cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
              log: Optional[Path] = None) -> subprocess.Popen:
    """Start ``ntkscale ARGS`` in its own process group (so the test can kill the whole run)."""
    full_env = dict(os.environ, **(env or {}))
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([*CLI, *args], cwd=cwd, env=full_env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started by :func:`start_cli` and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def wait_for(pred: Callable[[], Any], timeout: float = 60, every: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def status_json(store: Path) -> Optional[Dict[str, Any]]:
    if not GramStore.is_store(store):
        return None
    return status(store)


def manifest_keys(store: Path) -> List[str]:
    return sorted(Manifest(store).keys())
