"""CLI: ``solve``, ``predict``, ``run`` and ``report`` (thin wrappers over :mod:`ntkscale.stages`).

Examples::

    ntkscale run config.yaml --json           # gram -> solve -> predict; metrics JSON on the last line
    ntkscale solve config.yaml                # the Gram must be in the store
    ntkscale predict config.yaml --x new.npy -o pred.npy
    ntkscale predict config.yaml --time 1,10,100,1000,inf -o pred_t.npy --raw raw.npz --json
    ntkscale report run.zarr -o report/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ..data import open_array
from ..errors import InputError
from ..predict.krylov import parse_times
from ..stages.dynamics import TimePredictions, times_json
from ..stages.gram import GramPipeline
from ..stages.report import store_report
from ..stages.run import RunPipeline
from ..stages.solve import check_targets
from ..store.records import load_labels
from .gram import cluster_args, run_config, store_change_args
from .output import npy_path, print_json, say


def pipeline(args: argparse.Namespace) -> RunPipeline:
    """The run of ``args.config`` (``--scheduler``/``--workers`` applied), with progress on
    stderr unless ``--quiet``."""
    return RunPipeline(run_config(args), progress=not getattr(args, "quiet", False))


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


def emit(metrics: Dict[str, Any], as_json: bool) -> None:
    """Metrics as one JSON line, or a summary line and one line per ridge."""
    if as_json:
        print_json(metrics, indent=None)
    else:
        print(_summary(metrics))
        _print_ridges(metrics)


def config_args(p: argparse.ArgumentParser, json_help: str = "metrics as JSON on the last line") -> None:
    """The arguments every run command takes: CONFIG, --scheduler, --workers, --json, --quiet."""
    p.add_argument("config", help="run configuration (YAML or JSON)")
    cluster_args(p)
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


# ----------------------------------------------------------------------------- solve


def solve_args(p: argparse.ArgumentParser) -> None:
    config_args(p, "print the solve record as JSON")


def solve_cmd(args: argparse.Namespace) -> int:
    rec = pipeline(args).solve()
    if args.json:
        print_json(rec, indent=None)
    else:
        it = f", {rec['cg_iterations']} CG iterations" if "cg_iterations" in rec else ""
        print(f"solved with {rec['method']} ({rec['task']}, n = {rec['n_train']}){it}; ridge(s) "
              f"{', '.join(f'{r:.3g}' for r in rec['ridges_relative'])} relative")
    return 0


# ----------------------------------------------------------------------------- predict


def predict_args(p: argparse.ArgumentParser) -> None:
    config_args(p)
    p.add_argument("--x", metavar="NEW.npy", help="new inputs to predict (default: the config's test set)")
    p.add_argument("-o", "--output", metavar="PRED.npy", help="write the predicted labels/values here")
    p.add_argument("--variance", metavar="VAR.npy",
                   help="also write the posterior variance of every test point here (NNGP posterior, or "
                        "NTK-GP at t=inf, which needs kernel.get: [nngp, ntk])")
    p.add_argument("--time", metavar="T1,T2,...",
                   help="predict after training for these times (comma-separated, >= 0, 'inf' allowed: kernel "
                        "regression), from one Lanczos run on the stored Gram; -o then writes (T, m) predictions. "
                        "Time is in gradient steps of size --learning-rate: the flow is exp(-lr t K / N), "
                        "N = y_train.size (neural-tangents' convention)")
    p.add_argument("--learning-rate", type=float, metavar="LR",
                   help="learning rate of the training dynamics (default: solver.learning_rate, else 1.0)")
    p.add_argument("--kernel", metavar="KIND",
                   help="with --time: nngp (only the readout trained), ntk, or all (default: the solver's kernel)")
    p.add_argument("--raw", metavar="RAW.npz",
                   help="with --time: write times, f_test (T, m, k) in the encoded target space, y_train as "
                        "encoded, learning_rate and the absolute diag_reg here")


def predict_cmd(args: argparse.Namespace) -> int:
    if args.time is not None:
        return _predict_times_cmd(args)
    for flag in ("learning_rate", "kernel", "raw"):
        if getattr(args, flag) is not None:
            raise InputError(f"--{flag.replace('_', '-')} goes with --time T1,T2,... (training times)")
    if args.output:
        args.output = npy_path(args.output, "-o")
    if args.variance:
        args.variance = npy_path(args.variance, "--variance")
    pipe = pipeline(args)
    if args.x:
        if not args.output:
            raise InputError("--x needs -o PRED.npy (where to write the predictions)")
        x = np.asarray(open_array(str(Path(args.x).resolve()), "--x"))
        t = time.perf_counter()
        pred = pipe.predict_new(x)
        np.save(args.output, np.asarray(pred), allow_pickle=False)
        say(f"predicted {len(pred)} inputs in {time.perf_counter() - t:.1f} s (new cross-kernel blocks only)")
        print(f"wrote {args.output} ({len(pred)} predictions)")
        if args.variance:
            _write_variance(pipe, args.variance, x)
        return 0
    m = pipe.predict()
    if args.output:
        store = pipe.open_store("r")
        np.save(args.output, load_labels(store.group("predict")), allow_pickle=False)
    if args.variance:
        m["variance"] = _write_variance(pipe, args.variance, None)
    emit(m, args.json)
    return 0


def _predict_times_cmd(args: argparse.Namespace) -> int:
    times = parse_times(args.time)              # bad times: exit 2 before the store is opened
    if args.x or args.variance:
        raise InputError("--time predicts the config's test set; it does not take --x or --variance")
    if args.learning_rate is not None and not (np.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise InputError(f"--learning-rate must be a finite number > 0; got {args.learning_rate!r}")
    if args.output:
        args.output = npy_path(args.output, "-o")
    if args.raw and not args.raw.endswith(".npz"):
        say(f"--raw {args.raw}: writing {args.raw}.npz (.npz files carry the suffix)")
        args.raw += ".npz"
    kinds = None if args.kernel is None else ("all" if args.kernel == "all" else args.kernel.split(","))
    results = pipeline(args).predict_times(times, learning_rate=args.learning_rate, kinds=kinds)
    first = next(iter(results.values()))
    if args.output:
        np.save(args.output, np.asarray(first.labels), allow_pickle=False)
    if args.raw:
        np.savez(args.raw, times=first.times, f_test=first.f_test, y_train=first.y_train,
                 learning_rate=first.learning_rate, diag_reg=first.diag_reg, kernel=first.kind)
    if args.json:
        doc = _times_doc(first)
        if len(results) > 1:
            doc["kernels"] = {k: _times_doc(r) for k, r in results.items()}
        print_json(doc, indent=None)
    else:
        for r in results.values():
            _print_times(r)
    return 0


def _times_doc(r: TimePredictions) -> Dict[str, Any]:
    keep = ("kernel", "times", "learning_rate", "diag_reg", "N", "n_train", "n_test", "test_accuracy", "test_mse",
            "test_r2", "train_loss", "error_estimate", "lanczos_steps", "lanczos_resumed_from", "converged", "seconds")
    return {k: r.metrics[k] for k in keep if k in r.metrics}


def _print_times(r: TimePredictions) -> None:
    m = r.metrics
    metric = next((k for k in ("test_accuracy", "test_mse") if k in m), None)
    print(f"{r.kind}: learning rate {r.learning_rate:g}, diag_reg {r.diag_reg:.3g}, {m['lanczos_steps']} Lanczos "
          f"steps")
    for i, t in enumerate(times_json(r.times)):
        val = f"  {metric} {m[metric][i]:.4f}" if metric else ""
        print(f"  t = {t!s:<10}{val}  train_loss {m['train_loss'][i]:.4g}  error estimate "
              f"{m['error_estimate'][i]:.2g}")


def _write_variance(pipe: RunPipeline, path: str, x: Optional[np.ndarray]) -> Dict[str, Any]:
    t = time.perf_counter()
    var = np.asarray(pipe.variance(x))
    np.save(path, var, allow_pickle=False)
    summary = {"file": path, "mean": float(np.mean(var)), "min": float(np.min(var)), "max": float(np.max(var))}
    say(f"posterior variance of {len(var)} points in {time.perf_counter() - t:.1f} s: mean {summary['mean']:.4g}, "
        f"min {summary['min']:.4g}, max {summary['max']:.4g} -> {path}")
    return summary


# ----------------------------------------------------------------------------- run


def run_args(p: argparse.ArgumentParser) -> None:
    config_args(p, "print the metrics as one JSON object on the last line of stdout")
    store_change_args(p)


def run_cmd(args: argparse.Namespace) -> int:
    pipe = pipeline(args)
    if args.recompute_test or args.replace_y:
        # the store's test part or labels change first (targets checked before any work),
        # then the run finds the Gram complete and solves and predicts on it
        check_targets(pipe.context)
        GramPipeline(pipe.config, recompute_test=args.recompute_test, replace_y=args.replace_y,
                     progress=pipe.context.progress).run()
    emit(pipe.run(), args.json)
    return 0


# ----------------------------------------------------------------------------- report


def report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="a Gram store that has been solved")
    p.add_argument("-o", "--output", metavar="DIR", help="where to write the PNGs (default STORE-report/)")
    p.add_argument("--rank", type=int, default=256, help="rank of the spectrum estimate (default 256)")


def report_cmd(args: argparse.Namespace) -> int:
    report = store_report(args.store, args.output, rank=args.rank)
    for path in report:
        print(path)
    for name, why in report.skipped.items():
        print(f"no {name}: {why}")
    return 0
