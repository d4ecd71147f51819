"""CNTK-GAP and Myrtle: ntkscale's compiled slab kernel vs neural-tangents 0.6.5, fair protocol.

Each configuration runs through benchmarks/protocol.py: both libraries in their
own processes on the same pinned CPUs and threads, the same inputs (equal n,
same dtype), outputs checked equal before timing, interleaved repeats, medians
with spread. The cross kernel ``kernel_fn(x1, x2, "ntk")`` (x1 ≠ x2) comes
first; the symmetric call ``kernel_fn(x, None, "ntk")`` is reported separately.
Network (depth 3, NT-CONVENTIONS)::

    [Conv(·, (3, 3), padding="SAME", W_std=√2, b_std=0.1), Relu()] × 3,
    GlobalAvgPool(), Dense(1, W_std=√2, b_std=0.1)     = stax.presets.cntk(3)

    python benchmarks/bench_cntk.py                       # 8x8 and 28x28, f64 and f32
    python benchmarks/bench_cntk.py --configs 8:64:float64 --breakdown
    python benchmarks/bench_cntk.py --net myrtle5         # Myrtle-5 on (n, hw, hw, 3) images

A configuration is ``hw:n:dtype``. Flops per entry: the slab kernel's
arithmetic as the engine reports it (``kernel_fn.explain``); peak: threads ×
clock × SIMD flops per cycle (16 float64 / 32 float32 per core for two 256-bit
FMA pipes; override with --peak-gflops).

Targets (issue 14; asserted, recorded, ``python -m benchmarks --check``): the
CNTK-GAP depth-3 cross kernel in float64 ≥ 15× neural-tangents at 8×8×1 and at
28×28×1 (judged at the default n).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import machine, save_result  # noqa: E402
from protocol import Target, Work, compare, make_inputs, sides_vs_nt  # noqa: E402

from ntkscale import stax  # noqa: E402
from ntkscale.stax.engine import reference_image as conv_eval  # noqa: E402
from ntkscale.stax.engine import cpu_slab as conv_fast  # noqa: E402
from ntkscale.stax.engine import slab_kernels, slab_program  # noqa: E402

DEFAULT_CONFIGS = ["8:64:float64", "8:64:float32", "28:16:float64", "28:16:float32"]
MYRTLE_CONFIGS = ["8:32:float64", "8:32:float32", "16:8:float64", "16:8:float32"]
#: (hw, n) of the configurations the targets are judged at, and the goal.
TARGET_SIZES = {(8, 64), (28, 16)}
CROSS_TARGET = 15.0


def breakdown(kernel_fn, x: np.ndarray, repeats: int) -> dict:
    """Where the time goes: Python-side preparation, the compiled kernel (and
    its time per pixel-pair entry and layer, per thread), the stencil passes
    alone (activations replaced by identities, so unfused), and the ReLU
    dual alone on cache-resident rows."""
    layers = kernel_fn._layers
    plan = conv_eval.plan_image_net(layers, x.shape[1:])
    t0 = time.perf_counter()
    prog = slab_program.Program(layers, plan, x.dtype)
    v = conv_fast._variances(layers, prog, plan, x)
    pi, pj = next(conv_fast._pair_chunks(len(x), len(x), True, 1 << 40))
    prep = time.perf_counter() - t0

    def best():
        conv_fast._run_pairs(prog, x, x, v, v, pi[:64], pj[:64], True)
        b = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            conv_fast._run_pairs(prog, x, x, v, v, pi, pj, True)
            b = min(b, time.perf_counter() - t)
        return b

    full = best()
    ops = prog.ops.copy()
    prog.ops[prog.ops[:, slab_kernels.C_KIND] == slab_kernels.K_ABRELU, slab_kernels.C_KIND] = slab_kernels.K_IDENT
    conv_only = best()   # unfused stencil passes (the fused path needs the activation)
    prog.ops = ops
    # the ReLU dual alone on L1-resident rows (s per entry)
    m = 1 << 12
    rng = np.random.default_rng(0)
    q = rng.uniform(0.5, 1.5, (3, m)).astype(x.dtype)
    consts = prog.consts
    kr, tr = (q[0] * 0.9).copy(), np.ones(m, x.dtype)
    slab_kernels.abrelu_row(kr, tr, q[1], q[2], x.dtype.type(0.5), x.dtype.type(0.159), True, consts)
    reps, t = 200, time.perf_counter()
    for _ in range(reps):
        slab_kernels.abrelu_row(kr, tr, q[1], q[2], x.dtype.type(0.5), x.dtype.type(0.159), True,
                              consts)
    relu_entry = (time.perf_counter() - t) / (reps * m)
    layers_entries = 3 * x.shape[1] ** 2 * x.shape[2] ** 2
    return {"prep_s": prep, "kernel_s": full, "conv_unfused_no_activation_s": conv_only,
            "relu_dual_ns_per_entry": relu_entry * 1e9,
            "kernel_ns_per_entry_layer": full / len(pi) / layers_entries * 1e9 * conv_fast.n_threads(),
            "pairs": int(len(pi)), "lanes": prog.lanes, "threads": conv_fast.n_threads()}


def cpu_info() -> dict:
    info = {"cores": os.cpu_count(), "model": platform.processor() or "?", "mhz": None,
            "avx512": False}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and info["model"] in ("?", "x86_64", ""):
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith("cpu MHz") and info["mhz"] is None:
                info["mhz"] = float(line.split(":", 1)[1])
            if line.startswith("flags"):
                info["avx512"] = " avx512f" in line
    except OSError:
        pass
    return info


def peak_gflops(dtype: str, info: dict, override: float | None) -> float | None:
    if override:
        return override if dtype == "float64" else 2 * override
    if not info["mhz"]:
        return None
    per_cycle = 16 if dtype == "float64" else 32
    return info["cores_used"] * info["mhz"] / 1e3 * per_cycle


def work_of(net: str, hw: int, n: int, dtype: str, cross: bool) -> Work:
    if net == "cntk":
        return Work("cntk", 3, (hw, hw, 1), n, n if cross else None, dtype)
    return Work(net, int(net.removeprefix("myrtle")), (hw, hw, 3), n, n if cross else None, dtype)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="cntk", choices=("cntk", "myrtle5", "myrtle7", "myrtle10"))
    ap.add_argument("--configs", nargs="+", default=None,
                    help=f"hw:n:dtype (default cntk {' '.join(DEFAULT_CONFIGS)}; myrtle {' '.join(MYRTLE_CONFIGS)})")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--no-symmetric", action="store_true", help="cross kernels only")
    ap.add_argument("--no-nt", action="store_true", help="skip neural-tangents (nothing is compared)")
    ap.add_argument("--breakdown", action="store_true", help="time prep / kernel / conv-only (ntkscale)")
    ap.add_argument("--peak-gflops", type=float, default=None, help="float64 peak of this machine")
    ap.add_argument("--out", default=None, help="append JSON results to this file (one line per run)")
    args = ap.parse_args(argv)
    if args.no_nt:
        print("bench_cntk: --no-nt: nothing to compare; build the peer with bash benchmarks/nt_venv.sh",
              file=sys.stderr)
        return 0
    sides = sides_vs_nt("bench_cntk")
    if sides is None:
        return 2
    info = cpu_info()
    info["cores_used"] = args.threads
    configs = args.configs or (DEFAULT_CONFIGS if args.net == "cntk" else MYRTLE_CONFIGS)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    print(f"# {stamp}  {info['model']}  {args.threads} threads  {info['mhz']} MHz  load {os.getloadavg()}")
    results, targets = [], []
    for cross in (True,) if args.no_symmetric else (True, False):
        for cfg in configs:
            hw, n, dtype = cfg.split(":")
            hw, n = int(hw), int(n)
            work = work_of(args.net, hw, n, dtype, cross)
            res = compare(work, sides, repeats=args.repeats, threads=args.threads, extra_ops=["flops"])
            ours, nt = res["times"]["ntkscale"], res["times"]["neural-tangents"]
            flops = res["flops"]["total_flops"]
            gflops = flops / ours["median"] / 1e9
            peak = peak_gflops(dtype, info, args.peak_gflops)
            rec = {"net": args.net, "config": cfg, "call": "cross" if cross else "symmetric", "hw": hw, "n": n,
                   "dtype": dtype, "date": stamp, "cpu": info, "load": os.getloadavg(),
                   "seconds": ours["median"], "seconds_min": ours["min"], "seconds_max": ours["max"],
                   "nt_seconds": nt["median"], "nt_seconds_min": nt["min"], "nt_seconds_max": nt["max"],
                   "entries_per_s": work.entries / ours["median"], "nt_entries_per_s": work.entries / nt["median"],
                   "ratio": res["ratio"], "ratio_iqr": res["ratio_iqr"], "max_rel_err": res["max_rel_diff"],
                   "flops_per_entry": res["flops"]["flops_per_entry"], "path": res["flops"]["path"],
                   "gflops": gflops, "peak_gflops": peak, "fraction_of_peak": None if peak is None else gflops / peak,
                   "peak_rss_mib": res["peak_rss_mib"], "threads": res["threads"], "cpus": res["cpus"],
                   "versions": res["versions"]}
            if args.breakdown:
                kernel_fn = (stax.presets.cntk(3, "gap") if args.net == "cntk" else
                             stax.presets.myrtle(work.depth, b_std=0.0, final_pools=max(int(np.log2(hw)) - 2, 0)))[2]
                rec["breakdown"] = breakdown(kernel_fn, make_inputs(work)[0], args.repeats)
            results.append(rec)
            if cross and args.net == "cntk" and dtype == "float64" and (hw, n) in TARGET_SIZES:
                targets.append(Target(f"CNTK-GAP depth 3 cross kernel {hw}×{hw}×1 n={n} float64: × neural-tangents",
                                      CROSS_TARGET).judge(res["ratio"]))
            pk = f"{100 * rec['fraction_of_peak']:5.1f}% of peak" if peak else ""
            print(f"{work.label()}: ntkscale {ours['median']:.3g} s, neural-tangents {nt['median']:.3g} s, "
                  f"{res['ratio']:.2f}× (IQR {res['ratio_iqr'][0]:.2f}–{res['ratio_iqr'][1]:.2f}), "
                  f"max rel {res['max_rel_diff']:.2g}, {gflops:.2f} GFLOP/s {pk}", flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            for rec in results:
                fh.write(json.dumps(rec) + "\n")
    save_result(f"cntk_{args.net}_targets", {"machine": machine(), "args": vars(args), "targets": targets})
    for t in targets:
        if not t["met"]:
            print(f"target missed: {t['name']} = {t['value']:.3g} (target ≥ {t['goal']:g})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
