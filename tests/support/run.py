"""Data and configs for the end-to-end run tests (Gram, solve, predict)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import numpy as np

from tests.support.gram import apply_overrides
from tests.support.nets import LAYERS

#: an in-process cluster (threads): starts in a fraction of a second on a loaded machine
CLUSTER = {"kind": "local", "n_workers": 1, "threads_per_worker": 2, "io_threads": 0, "processes": False,
           "dashboard_address": ":0"}


def blobs(tmp: Path, n: int = 120, m: int = 40, d: int = 6, classes: int = 3, seed: int = 0,
          regression: bool = False) -> Dict[str, Path]:
    """Gaussian blobs (or a smooth regression target): x, y, xt, yt as .npy."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d)) * 2.0
    lab = rng.integers(0, classes, n + m)
    x = centres[lab] + 0.7 * rng.standard_normal((n + m, d))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] if regression else lab
    out = {}
    for name, a in {"x": x[:n], "y": y[:n], "xt": x[n:], "yt": y[n:]}.items():
        out[name] = tmp / f"{name}.npy"
        np.save(out[name], a)
    return out


def run_config(data: Dict[str, Path], **over: Any) -> Dict[str, Any]:
    """A run config for ``data``: NTK Gram, CG with a Nyström preconditioner, in-process cluster."""
    cfg: Dict[str, Any] = {
        "data": {"train": {"x": data["x"].name, "y": data["y"].name},
                 "test": {"x": data["xt"].name, "y": data["yt"].name}},
        "kernel": {"layers": LAYERS, "get": "ntk"},
        "store": "run.zarr", "block_size": 32, "dtype": "float64", "cluster": dict(CLUSTER),
        "solver": {"method": "cg", "ridge": 1e-4, "tol": 1e-8, "preconditioner": {"kind": "nystrom", "rank": 20}},
    }
    return apply_overrides(cfg, over)


def last_json(stdout: str) -> Dict[str, Any]:
    """The JSON document on the last line of a command's stdout."""
    return json.loads(stdout.strip().splitlines()[-1])
