"""Held-out check of the projection: predict a real ``ntkscale gram`` run, then make it.

    python benchmarks/heldout.py [--n 500] [--net myrtle5] [--hw 32] [--workers 2] [--block-size 128]
                                 [--budget-min 12] [--dir /var/tmp/heldout] [--estimate-only]

The cost model is calibrated on small calls (``benchmarks/scaling.py``: one
thread, at most a few hundred pairs per call, a few images at 32×32).
This script asks the projection (``ntkscale.costs.projection.project``, the
code behind ``ntkscale project``) for the wall time of a run none of those
measurements saw — the n × n NNGP+NTK Gram of ``--n`` random
``--hw``×``--hw``×3 images, float64, through the real CLI (``ntkscale gram``,
a local Dask cluster of ``--workers`` single-thread workers, the store on
disk with its chunk files fsync'd) — records the prediction, then runs it and
compares. Reported beside it: the same prediction from a calibration fitted
without any image of that size (the projection's own extrapolation over image
size), and a rate check (one small call on one thread now, against what the
calibration predicts for it), which says how far this machine has drifted from
the calibration's day.

``n`` is the largest at most ``--n`` whose run the projection, scaled by the rate
check, puts within ``--budget-min`` minutes (a timed run here must stay under
15 min). The timed output is checked afterwards against ``kernel_fn`` in memory
(a corner, a mirrored entry, the diagonal) and nothing is recorded if it differs.

Result: ``results/heldout.json`` with the prediction, the measurement, the load and
the target ``|projected / measured − 1| ≤`` the projection's stated uncertainty (the
calibration fit's largest relative error), read by ``python -m benchmarks --check``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from common import machine, save_result  # noqa: E402
from scale import run_cli  # noqa: E402

GET = ("nngp", "ntk")
DTYPE = "float64"
TOL = 1e-9


def small_image_calibration(measurements: Path, hw: int) -> Optional[Dict[str, Any]]:
    """A calibration fitted on the scaling measurements with no image of ``hw`` pixels or more."""
    from ntkscale.costs import model

    if not measurements.exists():
        return None
    meas = json.loads(measurements.read_text())
    keep = [m for m in meas["kernel"] if not (len(m["input_shape"]) == 3 and m["input_shape"][0] >= hw)]
    return model.fit(keep, machine=meas.get("machine"), storage=meas.get("storage"),
                     label=f"CPU calibration fitted on images smaller than {hw}x{hw} only")


def rate_check(kernel_fn: Any, shape: tuple, cal: Dict[str, Any], n1: int = 8, n2: int = 4) -> Dict[str, Any]:
    """CPU seconds of one n1 × n2 call on one thread now, against the calibration's prediction."""
    import numba
    from threadpoolctl import threadpool_limits

    from ntkscale.costs import model

    rng = np.random.default_rng(1)
    a, b = rng.uniform(size=(n1,) + shape), rng.uniform(size=(n2,) + shape)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(1):
            kernel_fn(a[:2], b[:1], get=GET)
            best = float("inf")
            for _ in range(2):
                c = time.process_time()
                kernel_fn(a, b, get=GET)
                best = min(best, time.process_time() - c)
    finally:
        numba.set_num_threads(threads)
    pred = model.predict_call(cal, kernel_fn, shape, n1, n2, DTYPE)
    return {"n1": n1, "n2": n2, "cpu_s": best, "predicted_s": pred, "measured_over_predicted": best / pred,
            "load_1min": round(os.getloadavg()[0], 2)}


def _timed_call(args) -> Dict[str, float]:
    """One process: a warm 8 × 4 call of ``net`` on one thread, timed after ``barrier``."""
    net, hw, barrier = args
    import numba

    from ntkscale.costs.projection import resolve_net

    numba.set_num_threads(1)
    shape = (hw, hw, 3)
    kfn = resolve_net(net, shape)
    rng = np.random.default_rng(1)
    a, b = rng.uniform(size=(8,) + shape), rng.uniform(size=(4,) + shape)
    kfn(a[:2], b[:1], get=GET)
    if barrier is not None:
        barrier.wait()
    c, t = time.process_time(), time.perf_counter()
    kfn(a, b, get=GET)
    return {"cpu_s": time.process_time() - c, "wall_s": time.perf_counter() - t}


def concurrency_check(net: str, hw: int, procs: int) -> Dict[str, Any]:
    """The same one-thread call timed in one process alone, then in ``procs`` processes at
    once (as the Gram engine's workers run): how much a core slows when its neighbours
    compute too, which a one-core calibration cannot see."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        alone = pool.map(_timed_call, [(net, hw, None)])[0]
    with ctx.Manager() as manager:
        barrier = manager.Barrier(procs)
        with ctx.Pool(procs) as pool:
            together = pool.map(_timed_call, [(net, hw, barrier)] * procs)
    worst = max(r["cpu_s"] for r in together)
    return {"net": net, "hw": hw, "procs": procs, "alone": alone, "together": together,
            "slowdown_cpu": worst / alone["cpu_s"], "load_1min": round(os.getloadavg()[0], 2),
            "date": machine()["date"]}


def choose_n(project_n, n_max: int, budget_s: float, drift: float) -> int:
    """Largest n ≤ n_max (a multiple of 10) whose projected wall × drift fits the budget."""
    n = n_max
    while n > 10 and project_n(n)["wall_seconds"] * max(1.0, drift) > budget_s:
        n -= 10
    return n


def scale_points(scale_json: Path, calibration: Any = None, write_bandwidth: Optional[float] = None) -> list:
    """Re-predict the recorded ``benchmarks/scale.py`` Gram runs (FC3 NTK, MNIST 784, float64)
    with the projection's compute and write terms, next to what they measured: the engine's
    block phase (first to last progress line) and the whole ``ntkscale gram`` (with the
    cluster's start). ``write_bandwidth``: bytes/s instead of the calibration's."""
    from ntkscale.costs.projection import project

    res = json.loads(scale_json.read_text())
    st = res["settings"]
    rows = []
    for size in res["sizes"]:
        runs = [r for r in size["runs"].values() if r.get("gram_only") or r.get("metrics", {}).get("gram")]
        g = next((r["gram_only"] for r in runs if r.get("gram_only")), None)
        if g is None:
            continue
        p = project(size["n"], (784,), "fc3", "cpu", int(st["workers"]), "float64", calibration,
                    n_test=size["n_test"], get=("ntk",), block_size=int(st["block_size"]),
                    write_bandwidth=write_bandwidth)
        blocks = g.get("gram_compute_s") or g["metrics"].get("blocks_seconds")
        rows.append({"n": size["n"], "n_test": size["n_test"], "compute_s": p["compute_wall_seconds"],
                     "write_s": p["write_seconds"], "predicted_s": p["wall_seconds"], "binds": p["binds"],
                     "write_gb": p["storage_bytes"] / 1e9, "write_bytes_per_s": p["write_bytes_per_s"],
                     "measured_blocks_s": blocks, "measured_stage_s": g["wall_s"],
                     "rel_err_blocks": p["wall_seconds"] / blocks - 1 if blocks else None,
                     "rel_err_compute_only": p["compute_wall_seconds"] / blocks - 1 if blocks else None,
                     "load_1min": round(size.get("load_1min_start", float("nan")), 2)})
    return rows


def write_config(d: Path, n: int, hw: int, net_spec: Any, workers: int, block: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).uniform(size=(n, hw, hw, 3))
    np.save(d / "x.npy", x)
    raw = {"data": {"train": {"x": "x.npy"}}, "kernel": {"layers": net_spec, "get": list(GET)},
           "store": "store.zarr", "block_size": block, "dtype": DTYPE,
           "cluster": {"kind": "local", "n_workers": workers, "threads_per_worker": 1}}
    cfg = d / "config.json"
    cfg.write_text(json.dumps(raw, indent=1) + "\n")
    return cfg


def check_output(d: Path, kernel_fn: Any, block: int) -> float:
    """Max relative difference of stored entries against ``kernel_fn`` in memory: a 2 × 3
    corner, a mirrored entry across blocks (both halves) and three diagonal entries."""
    from ntkscale.store.gram_store import GramStore

    x = np.load(d / "x.npy")
    s = GramStore.open(str(d / "store.zarr"), "r")
    n = len(x)
    i, j = min(n - 1, block + 1), 1
    err = 0.0
    ref = kernel_fn(x[:2], x[:3], get=GET)
    pair = kernel_fn(x[i:i + 1], x[j:j + 1], get=GET)
    diag = [kernel_fn(x[k:k + 1], x[k:k + 1], get=GET) for k in (0, n // 2, n - 1)]
    for kind, r, p, dg in zip(GET, ref, pair, zip(*diag)):
        arr = s.train_array(kind)
        got = [(np.asarray(arr[:2, :3]), np.asarray(r)), (np.asarray(arr[i, j]), np.asarray(p)[0, 0]),
               (np.asarray(arr[j, i]), np.asarray(p)[0, 0])]
        dstored = np.asarray(s.diag("train", kind)[...])
        got += [(dstored[k], np.asarray(v)[0, 0]) for k, v in zip((0, n // 2, n - 1), dg)]
        for a, b in got:
            err = max(err, float(np.max(np.abs(a - b) / np.abs(b))))
    if not err <= TOL:
        raise SystemExit(f"heldout: the stored Gram differs from kernel_fn in memory by {err:.3g} (> {TOL}); "
                         "nothing recorded")
    return err


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500, help="largest n to run (default 500)")
    ap.add_argument("--net", default="myrtle5", help="a projection net name (default myrtle5)")
    ap.add_argument("--hw", type=int, default=32, help="image height = width, 3 channels (default 32)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--budget-min", type=float, default=12.0, help="wall budget of the timed run, minutes")
    ap.add_argument("--calibration", default=None, help="calibration JSON (default: the shipped CPU one)")
    ap.add_argument("--measurements", default=str(HERE / "results" / "suite-raw" / "full" / "scaling.json"),
                    help="scaling measurements for the fit without images of this size")
    ap.add_argument("--dir", default="/var/tmp/ntkscale-heldout", help="data, config and store (removed after)")
    ap.add_argument("--estimate-only", action="store_true", help="print the prediction and the chosen n; no run")
    ap.add_argument("--name", default="heldout", help="result file name (results/<name>.json)")
    ap.add_argument("--concurrency", action="store_true",
                    help="only time one call alone and on every worker at once (results/<name>_concurrency.json)")
    args = ap.parse_args(argv)

    from ntkscale.costs.projection import load_calibration, project, resolve_net
    from ntkscale.errors import NtkscaleError

    if args.concurrency:
        res = concurrency_check(args.net, args.hw, args.workers)
        path = save_result(f"{args.name}_concurrency", res)
        together = ", ".join(f"{r['cpu_s']:.3f}" for r in res["together"])
        print(f"heldout: one {args.net} 8x4 call on one thread: {res['alone']['cpu_s']:.3f} CPU s alone, "
              f"{together} with {args.workers} at once "
              f"({res['slowdown_cpu']:.2f}x); load {res['load_1min']}; saved {path}")
        return 0
    shape = (args.hw, args.hw, 3)
    kernel_fn = resolve_net(args.net, shape)
    cal = load_calibration(args.calibration, "cpu")
    info = machine()
    rate = rate_check(kernel_fn, shape, cal)
    drift = rate["measured_over_predicted"]

    def proj(n: int, c: Any = cal) -> Dict[str, Any]:
        return project(n, shape, args.net, "cpu", args.workers, DTYPE, c, get=GET, block_size=args.block_size)

    budget = 60.0 * args.budget_min
    n = choose_n(proj, args.n, budget, drift)
    pred = proj(n)
    small = small_image_calibration(Path(args.measurements), args.hw)
    try:
        pred_small = proj(n, small) if small is not None else None
    except NtkscaleError as exc:   # no smaller image of this net's path was measured
        print(f"  no fit without {args.hw}x{args.hw} images: {exc}", flush=True)
        pred_small = None
    why = (f"n = {n}: the largest n <= {args.n} whose projected wall time ({pred['wall_seconds']:.0f} s) times the "
           f"rate check's drift ({drift:.2f}x, if above 1) fits the {args.budget_min:g} min budget")
    print(f"heldout: {args.net} {args.hw}x{args.hw}x3 {DTYPE}, {args.workers} workers, block {args.block_size}; "
          f"rate check {rate['cpu_s']:.3f} CPU s vs {rate['predicted_s']:.3f} predicted ({drift:.2f}x); {why}",
          flush=True)
    print(f"  projected wall {pred['wall_seconds']:.1f} s ({pred['binds']} binds; compute "
          f"{pred['compute_wall_seconds']:.1f} s, writes {pred['write_seconds'] or 0:.2f} s), stated uncertainty "
          f"±{100 * pred['stated_uncertainty']:.0f} %", flush=True)
    if pred_small is not None:
        print(f"  fit without {args.hw}x{args.hw} images: {pred_small['wall_seconds']:.1f} s", flush=True)
    result: Dict[str, Any] = {"machine": info, "net": args.net, "input_shape": list(shape), "dtype": DTYPE,
                              "get": list(GET), "workers": args.workers, "block_size": args.block_size,
                              "n_requested": args.n, "n": n, "why_n": why, "budget_s": budget,
                              "rate_check": rate, "prediction": pred, "prediction_small_images_fit": pred_small}
    if args.estimate_only:
        print(json.dumps({k: result[k] for k in ("n", "why_n")}))
        return 0

    d = Path(args.dir)
    shutil.rmtree(d, ignore_errors=True)
    cfg = write_config(d, n, args.hw, kernel_fn.spec, args.workers, args.block_size)
    try:
        run = run_cli(["gram", str(cfg)], d, d / "gram.log")
        err = check_output(d, kernel_fn, args.block_size)
    finally:
        log = (d / "gram.log").read_text() if (d / "gram.log").exists() else ""
        shutil.rmtree(d, ignore_errors=True)
    m = run["metrics"]
    measured = run["wall_s"]
    rel = pred["wall_seconds"] / measured - 1
    result.update({
        "measured": {"command": run["command"], "wall_s": measured, "gram_seconds": m.get("seconds"),
                     "blocks_seconds": m.get("blocks_seconds"), "compute_seconds": m.get("compute_seconds"),
                     "task_seconds": m.get("task_seconds"), "slots": m.get("slots"),
                     "entries_computed": m.get("entries_computed"), "stored_bytes": m.get("stored_bytes"),
                     "engine_s": run.get("gram_compute_s"), "write_bytes": run.get("write_bytes"),
                     "system_write_bytes": run.get("system_write_bytes"),
                     "driver_peak_rss_gib": run.get("driver_peak_rss_gib"),
                     "worker_peak_rss_gib": run.get("worker_peak_rss_gib")},
        "check_max_rel": err, "log_tail": log.splitlines()[-5:],
        "rel_error": rel,
        "rel_error_blocks": pred["compute_wall_seconds"] / m["blocks_seconds"] - 1 if m.get("blocks_seconds") else None,
        "rel_error_small_images_fit": (pred_small["wall_seconds"] / measured - 1) if pred_small else None,
        "rel_error_drift_corrected": pred["wall_seconds"] * drift / measured - 1,
        "load_1min_end": round(os.getloadavg()[0], 2),
    })
    tol = pred["stated_uncertainty"]
    result["targets"] = [{
        "name": (f"held-out {args.net} {args.hw}x{args.hw}x3 Gram, n={n}, {args.workers} workers: "
                 "|projected / measured wall - 1| within the projection's stated uncertainty"),
        "value": abs(rel), "op": "<=", "goal": tol, "met": bool(abs(rel) <= tol)}]
    path = save_result(args.name, result)
    print(f"heldout: measured {measured:.1f} s wall (blocks {m.get('blocks_seconds')}), projected "
          f"{pred['wall_seconds']:.1f} s: error {100 * rel:+.1f} % (target |error| <= {100 * tol:.0f} %: "
          f"{'met' if abs(rel) <= tol else 'MISSED'}); load {info['load_1min']} -> {result['load_1min_end']}; "
          f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
