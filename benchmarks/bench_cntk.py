"""CNTK-GAP and Myrtle throughput: ntkscale's compiled slab kernel vs neural-tangents 0.6.5.

Side by side in one run: for each configuration, neural-tangents runs in its
own venv (``benchmarks/nt_worker.py --net cntk``, subprocess, timed after a
jit warm-up, its Gram saved), then ntkscale computes the same Gram on the same
data (``default_rng(0).uniform((n, hw, hw, 1))``). The two Grams must agree
before any speed is reported. Network (depth 3, NT-CONVENTIONS)::

    [Conv(·, (3, 3), padding="SAME", W_std=√2, b_std=0.1), Relu()] × 3,
    GlobalAvgPool(), Dense(1, W_std=√2, b_std=0.1)     = stax.presets.cntk(3)

    python benchmarks/bench_cntk.py                    # 8x8 and 28x28, f64 and f32
    python benchmarks/bench_cntk.py --configs 8:64:64:float64 --breakdown
    python benchmarks/bench_cntk.py --single-core      # both on one pinned core
    python benchmarks/bench_cntk.py --net myrtle5      # Myrtle-5 on (n, hw, hw, 3) images

``--net myrtle5|myrtle7|myrtle10``: ``stax.presets.myrtle(depth, b_std=0,
final_pools=log2(hw) - 2)`` (its AvgPool stages on the compiled path too),
on ``default_rng(0).uniform((n, hw, hw, 3))``; neural-tangents runs the same
layers (``nt_worker.py --net myrtle``).

A configuration is ``hw:n_ours:n_nt:dtype``; entries/s counts all n² entries
of the symmetric Gram ``kernel_fn(x, None, "ntk")`` (both libraries). Flops
per entry: the slab kernel's arithmetic (``slab_program.flops_per_pair``, sqrt
and divide counted as 1) over the entries; peak: cores × clock × SIMD flops
per cycle (16 float64 / 32 float32 per core for two 256-bit FMA pipes;
override with --peak-gflops).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ntkscale import stax  # noqa: E402
from ntkscale.stax.engine import reference_image as conv_eval
from ntkscale.stax.engine import cpu_slab as conv_fast  # noqa: E402
from ntkscale.stax.engine import slab_kernels, slab_program  # noqa: E402

DEFAULT_CONFIGS = ["8:64:64:float64", "8:64:64:float32", "28:32:16:float64", "28:32:16:float32"]
MYRTLE_CONFIGS = ["8:64:32:float64", "8:64:32:float32", "16:16:8:float64", "16:16:8:float32"]
TOLERANCE = {"float64": 1e-7, "float32": 2e-3}


def nt_python() -> str | None:
    venv = os.environ.get("NT_VENV", str(Path.home() / ".cache/ntkscale/nt-venv"))
    py = Path(venv) / "bin" / "python"
    return str(py) if py.exists() else None


def images(n: int, hw: int, dtype: str, channels: int = 1) -> np.ndarray:
    return np.random.default_rng(0).uniform(size=(n, hw, hw, channels)).astype(dtype)


def net_setup(net: str, hw: int) -> tuple:
    """(ntkscale kernel_fn, image channels, nt_worker.py arguments) of a benchmark net."""
    if net == "cntk":
        return stax.presets.cntk(3, "gap")[2], 1, ["--net", "cntk", "--depth", "3"]
    depth = int(net.removeprefix("myrtle"))
    pools = int(round(np.log2(hw))) - 2          # 8 -> 1, 16 -> 2, 32 -> 3 (down to 1 pixel)
    return (stax.presets.myrtle(depth, b_std=0.0, final_pools=pools)[2], 3,
            ["--net", "myrtle", "--depth", str(depth), "--final-pools", str(pools)])


def run_nt(py: str, hw: int, n: int, dtype: str, repeats: int, single_core: bool = False,
           net_args: tuple = ("--net", "cntk", "--depth", "3")) -> tuple[dict, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "gram.npy")
        cmd = [py, str(HERE / "nt_worker.py"), *net_args, "--n", str(n), "--hw", str(hw),
               "--dtype", dtype, "--repeats", str(repeats), "--save", out]
        env = dict(os.environ)
        if single_core:  # one core for XLA too: pinned, no Eigen thread pool
            cmd = ["taskset", "-c", "0"] + cmd
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"nt_worker failed:\n{proc.stderr[-2000:]}")
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
        return json.loads(line), np.load(out)


def time_ours(kernel_fn, x: np.ndarray, repeats: int) -> float:
    kernel_fn(x[: min(len(x), 8)], None, "ntk")  # compile / load the cached kernel
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        kernel_fn(x, None, "ntk")
        best = min(best, time.perf_counter() - t0)
    return best


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="cntk", choices=("cntk", "myrtle5", "myrtle7", "myrtle10"))
    ap.add_argument("--configs", nargs="+", default=None,
                    help=f"hw:n_ours:n_nt:dtype (default cntk {' '.join(DEFAULT_CONFIGS)}; "
                         f"myrtle {' '.join(MYRTLE_CONFIGS)})")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-nt", action="store_true", help="skip neural-tangents (speed only)")
    ap.add_argument("--breakdown", action="store_true", help="time prep / kernel / conv-only")
    ap.add_argument("--peak-gflops", type=float, default=None, help="float64 peak of this machine")
    ap.add_argument("--out", default=None, help="append JSON results to this file")
    ap.add_argument("--single-core", action="store_true",
                    help="both libraries on core 0 with one thread (less disturbed by a busy machine)")
    args = ap.parse_args(argv)
    if args.single_core:
        os.sched_setaffinity(0, {0})
        import numba  # noqa: PLC0415

        numba.set_num_threads(1)

    info = cpu_info()
    info["cores_used"] = 1 if args.single_core else info["cores"]
    py = None if args.no_nt else nt_python()
    if not args.no_nt and py is None:
        print("neural-tangents venv not found (run benchmarks/nt_venv.sh or pass --no-nt)")
        return 2
    configs = args.configs or (DEFAULT_CONFIGS if args.net == "cntk" else MYRTLE_CONFIGS)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    print(f"# {stamp}  {info['model']}  {info['cores']} cores  {info['mhz']} MHz  "
          f"numba threads {conv_fast.n_threads()}  load {os.getloadavg()}")
    header = (f"{'config':>18} {'ours e/s':>11} {'NT e/s':>9} {'ratio':>7} {'max rel err':>11} "
              f"{'flops/entry':>11} {'GFLOP/s':>8} {'% peak':>7}")
    print(header)
    results = []
    for cfg in configs:
        hw, n, n_nt, dtype = cfg.split(":")
        hw, n, n_nt = int(hw), int(n), int(n_nt)
        kernel_fn, channels, net_args = net_setup(args.net, hw)
        x = images(n, hw, dtype, channels)
        rec = {"net": args.net, "config": cfg, "hw": hw, "n": n, "n_nt": n_nt, "dtype": dtype, "date": stamp,
               "cpu": info, "load": os.getloadavg()}
        if py is not None:
            nt, gram = run_nt(py, hw, n_nt, dtype, args.repeats, args.single_core, tuple(net_args))
            ours_small = kernel_fn(images(n_nt, hw, dtype, channels), None, "ntk")
            err = float(np.max(np.abs(ours_small - gram) / np.abs(gram)))
            rec.update(nt_entries_per_s=nt["entries_per_s"], nt_seconds=nt["seconds_best"],
                       max_rel_err=err)
            assert err <= TOLERANCE[dtype], f"{cfg}: ntkscale and neural-tangents differ ({err:.3g})"
        secs = time_ours(kernel_fn, x, args.repeats)
        plan = conv_eval.plan_image_net(kernel_fn._layers, x.shape[1:])
        pairs = n * (n + 1) // 2
        flops = slab_program.flops_per_pair(kernel_fn._layers, plan) * pairs
        gflops = flops / secs / 1e9
        peak = peak_gflops(dtype, info, args.peak_gflops)
        rec.update(seconds=secs, entries_per_s=n * n / secs, flops_per_entry=flops / (n * n),
                   gflops=gflops, peak_gflops=peak,
                   fraction_of_peak=None if peak is None else gflops / peak)
        if "nt_entries_per_s" in rec:
            rec["ratio"] = rec["entries_per_s"] / rec["nt_entries_per_s"]
        if args.breakdown:
            rec["breakdown"] = breakdown(kernel_fn, x, args.repeats)
        results.append(rec)
        ratio = f"{rec['ratio']:7.1f}" if "ratio" in rec else "      -"
        nt_eps = f"{rec['nt_entries_per_s']:9.3g}" if "nt_entries_per_s" in rec else "        -"
        err = f"{rec['max_rel_err']:11.2e}" if "max_rel_err" in rec else "          -"
        pk = f"{100 * rec['fraction_of_peak']:6.1f}%" if peak else "      -"
        print(f"{cfg:>18} {rec['entries_per_s']:11.4g} {nt_eps} {ratio} {err} "
              f"{rec['flops_per_entry']:11.4g} {gflops:8.2f} {pk}")
        if args.breakdown:
            print("    breakdown:", json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                                for k, v in rec["breakdown"].items()}))
        sys.stdout.flush()
    if args.out:
        with open(args.out, "a") as fh:
            for rec in results:
                fh.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
