"""Calibrated cost model: seconds per kernel entry from flops and bytes per entry.

``kernel_fn.cost(input_shape)`` declares a network's flops and bytes per kernel
entry (one pair of inputs). Timing says how many seconds a flop and a byte
cost on a machine. Per code path (the layer types that run in one compiled
loop cannot be timed apart, so the "layer types" of the model are the paths
that run them)::

    seconds(call of n1 × n2 entries) = n1 n2 · Σ_k a_k · feature_k + overhead

    path        runs                                      features (per entry)
    flat        Dense + activations on n1 × n2            input_flops (the X Xᵀ GEMM, 2d),
                (numba fast path)                         layer_flops, bytes
    slab        Conv / activations / Dense on images,     flops, lane_flops
                ending in GlobalAvgPool or Flatten
                (compiled slab kernel, e.g. CNTK)
    pooled      the same with AvgPool stages (Myrtle):    flops, lane_flops
                slab stages joined by pooling scatters
                (compiled slab kernel, NumPy only)
    reference   other image nets, e.g. circular pooling   flops, bytes, spill_bytes
                or AvgPool on CuPy (array-API path)

``bytes`` are ``cost()["bytes"]`` (temporaries, in itemsizes) × itemsize;
``overhead`` is seconds per call, i.e. per Gram block. The compiled slab
kernel vectorises over ``lanes`` pairs at a time; part of its work (index
arithmetic, loop control, slab bounds) is paid once per lane group, so its
rows carry ``lane_flops`` = flops / lanes besides ``flops``, with the lanes a
call of that many pairs actually runs (a small call narrows them, as the
kernel does to keep every thread busy). A pooled call also
evaluates every input's self pair once (activation variances after a pool
need the image's own pooled covariance): an n1 × n2 call runs n1·n2 + n1 + n2
pairs, which the pooled path's rows count (the per-entry rate it reports is
the large-block limit). The array-API path
streams whole ``(H, H, W, W)`` covariances through every layer: while one
pair's covariance fits the L2 cache that traffic is cheap, beyond it each
byte costs a memory access, so ``spill_bytes`` = ``bytes`` when a pair's
covariance (``pair_entries`` × itemsize) exceeds the calibrated machine's L2
(``cache_bytes`` in the calibration), else 0. The compiled paths keep their
working set in cache by design and need no such term. The coefficients are
fitted per dtype and path by non-negative least squares on the *relative*
error, from single-threaded measurements of CPU seconds (``time.process_time``
with numba and BLAS on one thread), which a shared machine's load disturbs far
less than wall time; a calibration therefore means "seconds on one core".

    python -m ntkscale.costs.model MEASUREMENTS.json --out ntkscale/costs/data/cpu.json --plot fit.png

``MEASUREMENTS.json`` (written by ``benchmarks/scaling.py``) holds
``{"machine": {...}, "kernel": [{"spec", "input_shape", "dtype", "n1", "n2",
"cpu_s", ...}, ...], "storage": {...}}`` (the store's write bandwidth,
``measure.storage_calibration``: the projection's write term). It is plain JSON; :func:`predict_call`
and :func:`seconds_per_entry` apply it (``ntkscale.costs.projection`` uses them).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from scipy.optimize import nnls

from .. import stax
from ..stax.engine.slab_program import LANES_MIN
from ..stax.network import KernelFn, Layer, from_spec
from .measure import storage_calibration

PATHS = ("flat", "slab", "pooled", "reference")
#: Feature names of each path, in design-matrix order (``overhead`` is per call).
TERMS = {
    "flat": ("input_flops", "layer_flops", "bytes", "overhead"),
    "slab": ("flops", "lane_flops", "overhead"),
    "pooled": ("flops", "lane_flops", "overhead"),
    "reference": ("flops", "bytes", "spill_bytes", "overhead"),
}
DEFAULT_CACHE_BYTES = 1 << 20


def cache_bytes() -> int:
    """L2 cache of this machine's first CPU (sysfs), 1 MiB if unknown."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for idx in sorted(base.glob("index*")):
            if (idx / "level").read_text().strip() == "2":
                size = (idx / "size").read_text().strip().upper()
                mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
                return int(size.rstrip("KMG")) * mult
    except (OSError, ValueError):
        pass
    return DEFAULT_CACHE_BYTES
SCHEMA = 1


def _kernel_fn(net: Any) -> Any:
    """A KernelFn from a kernel_fn, a ``(init, apply, kernel)`` triple or a spec list."""
    if isinstance(net, KernelFn):
        return net
    if isinstance(net, Layer):
        return net[2]
    return from_spec(net)[2]


#: The cost model's path of each engine path (``engine.select_path``). Flat
#: networks have one model ("flat") whichever flat path runs them.
MODEL_PATH = {"cpu_flat": "flat", "cuda_flat": "flat", "cpu_slab": "slab", "cuda_slab": "slab",
              "cpu_slab_pooled": "pooled", "reference": "reference"}


def code_path(kernel_fn: Any, input_shape: Sequence[int], kind: str = "cpu") -> str:
    """The cost model's path (``PATHS``) of ``kernel_fn`` on inputs of per-example
    ``input_shape``: NumPy (``kind="cpu"``) or CuPy (``"gpu"``; the CUDA slab kernel
    with AvgPool stages is the "pooled" path there too)."""
    return _path_and_lanes(_kernel_fn(kernel_fn), input_shape, kind)[0]


def _path_and_lanes(kernel_fn: Any, input_shape: Sequence[int], kind: str = "cpu",
                    dtype: str = "float64") -> Tuple[str, int]:
    """The cost model's path (from ``engine.explain``), and the pairs the
    compiled slab kernel runs together on a large call (1 off the slab paths)."""
    if not kernel_fn.is_image_net:
        return "flat", 1
    shape = (1,) + tuple(int(s) for s in input_shape)
    info = kernel_fn.explain(shape, device=kind, dtype=dtype)
    path = MODEL_PATH[info.path]
    if info.path == "cuda_slab" and any(layer.layer_name in ("AvgPool", "SumPool") for layer in kernel_fn.layers):
        path = "pooled"
    return path, int(info.lanes or 1)


def effective_lanes(lanes: int, pairs: float, threads: int = 1) -> int:
    """Lanes the slab kernel runs for a call of ``pairs`` pairs on ``threads``
    threads: it halves them (down to its minimum) until every thread gets four
    lane groups (``cpu_slab._run_pairs``)."""
    lanes = int(lanes)
    while lanes > LANES_MIN and pairs < 4 * threads * lanes:
        lanes //= 2
    return lanes


def pairs_per_entry(path: str, n1: int, n2: int) -> float:
    """Image pairs a ``n1 × n2`` call evaluates per entry: the pooled path adds
    every input's self pair (n1 + n2 of them) to the n1·n2 cross pairs."""
    if path != "pooled":
        return 1.0
    return 1.0 + (n1 + n2) / (float(n1) * float(n2))


def features(kernel_fn: Any, input_shape: Sequence[int], dtype: str = "float64",
             cache: int = DEFAULT_CACHE_BYTES, kind: str = "cpu") -> Dict[str, Any]:
    """Per-entry features of the model (from ``kernel_fn.cost``) and the code path
    on device ``kind``; ``cache``: L2 bytes of the calibrated machine (for ``spill_bytes``)."""
    kernel_fn = _kernel_fn(kernel_fn)
    shape = tuple(int(s) for s in input_shape)
    cost = kernel_fn.cost(shape)
    itemsize = np.dtype(dtype).itemsize
    path, lanes = _path_and_lanes(kernel_fn, shape, kind, dtype)
    out: Dict[str, Any] = {"path": path, "flops": float(cost["flops"]), "bytes": float(cost["bytes"]) * itemsize,
                           "pair_entries": float(cost.get("pair_entries", 1.0))}
    pair_bytes = out["pair_entries"] * itemsize
    out["spill_bytes"] = out["bytes"] if pair_bytes > cache else 0.0
    if path in ("slab", "pooled"):
        out["lanes"] = lanes
        out["lane_flops"] = out["flops"] / lanes
    if path == "flat":
        d = float(np.prod(shape))
        out["input_flops"] = 2.0 * d
        out["layer_flops"] = out["flops"] - 2.0 * d
    return out


def cost_fingerprint() -> Dict[str, float]:
    """``kernel_fn.cost`` flops of a few reference nets: a calibration is only valid
    with the cost() it was fitted against (the projection says when it changed)."""
    nets = {"fc3 784": (stax.presets.fc(3), (784,)), "cntk3 8x8x3": (stax.presets.cntk(3), (8, 8, 3)),
            "myrtle5 8x8x3": (stax.presets.myrtle(5, final_pools=1), (8, 8, 3))}
    return {k: float(net[2].cost(shape)["flops"]) for k, (net, shape) in nets.items()}


def _call_features(feat: Dict[str, Any], n1: int, n2: int) -> Dict[str, Any]:
    """Per-entry features of one n1 × n2 call: a small call narrows the slab
    kernel's lane groups, and a pooled call adds its self pairs."""
    out = dict(feat)
    if "lanes" in out:
        out["lane_flops"] = out["flops"] / effective_lanes(out["lanes"], float(n1) * float(n2))
    pairs = pairs_per_entry(out["path"], n1, n2)
    for t in TERMS[out["path"]]:
        if t != "overhead":
            out[t] = out[t] * pairs
    return out


def _row(feat: Dict[str, Any], n1: int, n2: int) -> np.ndarray:
    """Design-matrix row for one n1 × n2 call, in seconds per entry."""
    call = _call_features(feat, n1, n2)
    return np.array([1.0 / (float(n1) * float(n2)) if t == "overhead" else call[t] for t in TERMS[feat["path"]]])


# ----------------------------------------------------------------------------- fit


def _points(measurements: Iterable[Dict[str, Any]], cache: int, kind: str = "cpu") -> List[Dict[str, Any]]:
    pts = []
    for m in measurements:
        feat = features(m["spec"], m["input_shape"], m["dtype"], cache, kind)
        entries = float(m["n1"]) * float(m["n2"])
        pts.append(dict(m, path=feat["path"], entries=entries, feat=feat,
                        s_per_entry=float(m["cpu_s"]) / entries))
    return pts


def fit(measurements: Sequence[Dict[str, Any]], *, machine: Optional[Dict[str, Any]] = None,
        kind: str = "cpu", label: Optional[str] = None, cache: Optional[int] = None,
        storage: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Fit the coefficients per (dtype, path); returns the calibration dict.
    ``cache``: L2 bytes of the measured machine (default: this machine's); ``storage``:
    the store's write bandwidth (``measure.storage_calibration``), kept as is."""
    cache = int(cache or cache_bytes())
    pts = _points(measurements, cache, kind)
    coef: Dict[str, Dict[str, Any]] = {}
    for dtype in sorted({p["dtype"] for p in pts}):
        for path in PATHS:
            group = [p for p in pts if p["dtype"] == dtype and p["path"] == path]
            if not group:
                continue
            a = np.array([_row(p["feat"], p["n1"], p["n2"]) for p in group])
            y = np.array([p["s_per_entry"] for p in group])
            # Relative error: divide each row by its measurement. Columns are scaled to
            # unit norm first (flops ~1e8 next to an overhead column ~1e-6).
            w = a / y[:, None]
            scale = np.linalg.norm(w, axis=0)
            scale[scale == 0] = 1.0
            c, _ = nnls(w / scale, np.ones(len(group)))
            c = c / scale
            pred = a @ c
            for p, q in zip(group, pred):
                p["pred_s_per_entry"] = float(q)
            rel = pred / y - 1
            terms = dict(zip(TERMS[path], (float(v) for v in c)))
            coef.setdefault(dtype, {})[path] = {
                "coefficients": {("overhead_s_per_call" if k == "overhead" else f"s_per_{k[:-1]}"
                                  if k.endswith("s") else k): v for k, v in terms.items()},
                "n_points": len(group),
                "median_abs_rel_err": float(np.median(np.abs(rel))),
                "max_abs_rel_err": float(np.max(np.abs(rel))),
                "rank": int(np.linalg.matrix_rank(w / scale)),
            }
    rel_all = np.array([p["pred_s_per_entry"] / p["s_per_entry"] - 1 for p in pts])
    logm = np.log([p["s_per_entry"] for p in pts])
    logp = np.log([max(p["pred_s_per_entry"], 1e-300) for p in pts])
    r2 = 1 - float(np.sum((logm - logp) ** 2) / max(np.sum((logm - logm.mean()) ** 2), 1e-300))
    machine = dict(machine or {})
    cpu = machine.get("cpu", "this machine")
    out = {
        "schema": SCHEMA,
        "kind": kind,
        "label": label or (f"CPU calibration ({cpu}): seconds on one core (numba and BLAS on 1 thread, "
                           "CPU time)" if kind == "cpu" else f"{kind.upper()} calibration ({cpu})"),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "cache_bytes": cache,
        "cost_fingerprint": cost_fingerprint(),
        "model": "seconds(call) = n1*n2 * sum_k a_k * feature_k + overhead_s_per_call; features from "
                 "kernel_fn.cost(input_shape) (bytes x itemsize); per dtype and code path",
        "paths": {p: list(TERMS[p]) for p in PATHS},
        "coefficients": coef,
        "fit": {"n_points": len(pts), "median_abs_rel_err": float(np.median(np.abs(rel_all))),
                "max_abs_rel_err": float(np.max(np.abs(rel_all))), "r2_log": r2},
        "points": [{"label": p.get("label", ""), "group": p.get("group", ""), "path": p["path"],
                    "dtype": p["dtype"], "input_shape": list(p["input_shape"]), "n1": p["n1"], "n2": p["n2"],
                    "flops_per_entry": p["feat"]["flops"], "bytes_per_entry": p["feat"]["bytes"],
                    "measured_s": float(p["cpu_s"]), "predicted_s": p["pred_s_per_entry"] * p["entries"],
                    "rel_err": p["pred_s_per_entry"] / p["s_per_entry"] - 1} for p in pts],
    }
    if storage:
        out["storage"] = dict(storage)
    return out


# ----------------------------------------------------------------------------- apply


def _terms_for(calibration: Dict[str, Any], path: str, dtype: str) -> Tuple[Dict[str, float], str, List[str]]:
    """Coefficients for (path, dtype); falls back to the other dtype (said in the notes)."""
    coef = calibration.get("coefficients", {})
    notes: List[str] = []
    if path in coef.get(dtype, {}):
        return coef[dtype][path]["coefficients"], dtype, notes
    for other in ("float64", "float32"):
        if path in coef.get(other, {}):
            notes.append(f"no {dtype} calibration for the {path} path; used the {other} one")
            return coef[other][path]["coefficients"], other, notes
    have = sorted(f"{d}/{p}" for d, paths in coef.items() for p in paths)
    raise ValueError(f"the calibration has no coefficients for the {path} code path (it has: "
                     f"{', '.join(have) or 'none'}); rerun python -m benchmarks --only scaling,costmodel")


def _apply(coefs: Dict[str, float], path: str, feat: Dict[str, Any]) -> Tuple[float, float]:
    """(seconds per entry, overhead seconds per call)."""
    per_entry = 0.0
    for t in TERMS[path]:
        if t == "overhead":
            continue
        per_entry += coefs.get(f"s_per_{t[:-1]}", 0.0) * feat[t]
    return per_entry, coefs["overhead_s_per_call"]


def seconds_per_entry(calibration: Dict[str, Any], kernel_fn: Any, input_shape: Sequence[int],
                      dtype: str = "float64") -> Dict[str, Any]:
    """Predicted seconds per entry and per-call overhead, with the features used."""
    feat = features(kernel_fn, input_shape, dtype, int(calibration.get("cache_bytes", DEFAULT_CACHE_BYTES)),
                    calibration.get("kind", "cpu"))
    coefs, used, notes = _terms_for(calibration, feat["path"], dtype)
    per_entry, overhead = _apply(coefs, feat["path"], feat)
    if calibration.get("paths", {}).get(feat["path"], list(TERMS[feat["path"]])) != list(TERMS[feat["path"]]):
        notes.append(f"this calibration fitted the {feat['path']} path with other terms "
                     f"({', '.join(calibration['paths'][feat['path']])}); refit it with "
                     "python -m benchmarks --only scaling,costmodel")
    if "cost_fingerprint" in calibration and calibration["cost_fingerprint"] != cost_fingerprint():
        notes.append("kernel_fn.cost() has changed since this calibration was fitted; refit it with "
                     "python -m benchmarks --only scaling,costmodel")
    return {"s_per_entry": per_entry, "overhead_s_per_call": overhead, "path": feat["path"],
            "calibration_dtype": used, "features": feat, "coefficients": coefs, "notes": notes}


def predict_call(calibration: Dict[str, Any], kernel_fn: Any, input_shape: Sequence[int], n1: int, n2: int,
                 dtype: str = "float64") -> float:
    """Predicted seconds of one ``kernel_fn(x1, x2)`` call with n1 × n2 entries."""
    p = seconds_per_entry(calibration, kernel_fn, input_shape, dtype)
    per_entry, overhead = _apply(p["coefficients"], p["path"], _call_features(p["features"], n1, n2))
    return n1 * n2 * per_entry + overhead


def save(calibration: Dict[str, Any], path: "str | Path") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration, indent=2) + "\n")
    return path


def load(path: "str | Path") -> Dict[str, Any]:
    cal = json.loads(Path(path).read_text())
    if not isinstance(cal, dict) or "coefficients" not in cal:
        raise ValueError(f"{path} is not a cost-model calibration (no 'coefficients'); make one with "
                         "python -m benchmarks --only scaling,costmodel")
    cal.setdefault("source", str(path))
    return cal


# ----------------------------------------------------------------------------- plot


def plot_fit(calibration: Dict[str, Any], path: "str | Path") -> Path:
    """Predicted vs measured seconds per call (log-log), one colour per code path."""
    import matplotlib  # noqa: PLC0415 (optional dependency: plots only)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (optional dependency)

    pts = calibration["points"]
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    colours = {"flat": "tab:blue", "slab": "tab:orange", "pooled": "tab:red", "reference": "tab:green"}
    markers = {"float64": "o", "float32": "^"}
    for path_name in PATHS:
        for dtype in ("float64", "float32"):
            sel = [p for p in pts if p["path"] == path_name and p["dtype"] == dtype]
            if sel:
                ax.scatter([p["measured_s"] for p in sel], [p["predicted_s"] for p in sel], s=22,
                           c=colours[path_name], marker=markers[dtype], alpha=0.8, label=f"{path_name}, {dtype}")
    lo = min(min(p["measured_s"], p["predicted_s"]) for p in pts) / 1.5
    hi = max(max(p["measured_s"], p["predicted_s"]) for p in pts) * 1.5
    xs = np.array([lo, hi])
    ax.plot(xs, xs, "k-", lw=1)
    ax.fill_between(xs, xs / 1.25, xs * 1.25, color="0.85", zorder=0, label="±25 %")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured CPU seconds per call (1 thread)")
    ax.set_ylabel("cost model prediction, seconds")
    f = calibration["fit"]
    ax.set_title(f"Cost model fit: median |err| {100 * f['median_abs_rel_err']:.0f} %, "
                 f"max {100 * f['max_abs_rel_err']:.0f} %, R² (log) {f['r2_log']:.3f}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- CLI


def summary_rows(calibration: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per (dtype, path): effective rates and fit quality."""
    rows = []
    for dtype, paths in sorted(calibration["coefficients"].items()):
        for path_name, c in paths.items():
            co = c["coefficients"]
            flop_keys = [k for k in co if k.startswith("s_per_") and "flop" in k]
            rates = ", ".join(f"{k[6:]} {1e-9 / co[k]:.3g} GFLOP/s" if co[k] > 0 else f"{k[6:]} free"
                              for k in flop_keys)
            byte_keys = [k for k in co if k.startswith("s_per_") and "byte" in k]
            brates = ", ".join(f"{k[6:]} {1e-9 / co[k]:.3g} GB/s" for k in byte_keys if co[k] > 0) or "-"
            rows.append({"dtype": dtype, "path": path_name, "points": c["n_points"], "flop rates": rates,
                         "byte rates": brates,
                         "overhead ms/call": 1e3 * co["overhead_s_per_call"],
                         "median |err|": f"{100 * c['median_abs_rel_err']:.0f} %",
                         "max |err|": f"{100 * c['max_abs_rel_err']:.0f} %"})
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ntkscale.costs.model", description=__doc__.split("\n")[0])
    ap.add_argument("measurements", help="scaling measurements JSON (benchmarks/scaling.py)")
    ap.add_argument("--out", required=True, help="calibration JSON to write")
    ap.add_argument("--plot", default=None, help="PNG of prediction vs measurement")
    ap.add_argument("--kind", default="cpu", choices=("cpu", "gpu"))
    ap.add_argument("--write-dir", default=None, help="measure the store's write bandwidth here when the "
                    "measurements carry none (benchmarks/scaling.py records one)")
    args = ap.parse_args(argv)
    meas = json.loads(Path(args.measurements).read_text())
    storage = meas.get("storage")
    if args.write_dir and not storage:
        storage = storage_calibration(args.write_dir)
    cal = fit(meas["kernel"], machine=meas.get("machine"), kind=args.kind, storage=storage)
    cal["measurements"] = str(args.measurements)
    save(cal, args.out)
    if args.plot:
        plot_fit(cal, args.plot)
    f = cal["fit"]
    print(f"cost model: {f['n_points']} points, median |rel err| {100 * f['median_abs_rel_err']:.1f} %, "
          f"max {100 * f['max_abs_rel_err']:.1f} %, R2 (log) {f['r2_log']:.4f}")
    for r in summary_rows(cal):
        print("  " + "; ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    if storage:
        print(f"  store writes: {storage['write_bytes_per_s'] / 1e9:.3g} GB/s fsync'd at {storage['path']} "
              f"({storage.get('method', 'one file')})")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
