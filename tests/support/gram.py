"""Data and configs for the Gram-stage tests, and read-only views of a store on disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import yaml

from ntkscale.store.gram_store import GramStore
from ntkscale.store.maintenance import status
from tests.support.nets import LAYERS


def make_data(tmp: Path, n: int = 70, m: int = 23, d: int = 5, seed: int = 0, *,
              prefix: str = "") -> Dict[str, Path]:
    """Gaussian train inputs/targets (and test ones unless ``m`` is 0) saved as .npy under ``tmp``."""
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
    """A Gram config for ``data`` (file names relative to the config) on a 2-process LocalCluster."""
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
    """Write ``cfg`` as YAML (or JSON, by the name's suffix) and return its path."""
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg) if name.endswith((".yaml", ".yml")) else json.dumps(cfg))
    return path


def snapshot(root: Path) -> Dict[str, str]:
    """Path -> sha256 of every file under ``root`` (to prove nothing changed)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def status_json(store: Path) -> Optional[Dict[str, Any]]:
    """``ntkscale status --json`` of ``store``, or None while it is not yet a store."""
    if not GramStore.is_store(store):
        return None
    return status(store)
