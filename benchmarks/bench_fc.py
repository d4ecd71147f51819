"""FC ReLU depth-3 NTK Gram throughput: ntkscale vs neural-tangents 0.6.5, side by side.

    python benchmarks/bench_fc.py [--n 4096] [--d 784] [--depth 3] [--repeats 3]

For float32 and float64: times ``kernel_fn(x, None, "ntk")`` (all n² entries
delivered) in this process and neural-tangents (jax.jit, CPU) in its venv
(bash benchmarks/nt_venv.sh), checks that both agree, and prints entries/s,
the ratio, the ratio to the ``X Xᵀ`` GEMM alone (the floor), peak memory, and
whether a row-blocked computation equals the one-shot Gram.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, nt_python, print_table, run_nt, save_result  # noqa: E402

from ntkscale import stax  # noqa: E402


def fc_kernel(depth: int):
    s2 = math.sqrt(2.0)
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(512, W_std=s2, b_std=0.1), stax.Relu()]
    return stax.serial(*layers, stax.Dense(1, W_std=s2, b_std=0.1))[2]


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=784)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block", type=int, default=1024, help="row block for the blocked-equality check")
    ap.add_argument("--no-nt", action="store_true", help="skip neural-tangents")
    args = ap.parse_args(argv)

    kernel_fn = fc_kernel(args.depth)
    x64 = np.random.default_rng(0).standard_normal((args.n, args.d))
    rows = []
    for dtype in ("float32", "float64"):
        x = x64.astype(dtype)
        kernel_fn(x[:64], None, "ntk")  # compile (cached on disk after the first run)
        ours = best_time(lambda: kernel_fn(x, None, "ntk"), args.repeats)
        gemm = best_time(lambda: x @ x.T, args.repeats)
        tracemalloc.start()
        k = kernel_fn(x, None, "ntk")
        peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
        blocked = np.concatenate([kernel_fn(x[r:r + args.block], x, "ntk") for r in range(0, args.n, args.block)])
        block_diff = float(np.abs(blocked - k).max() / np.abs(k).max())
        row = {"dtype": dtype, "n": args.n, "ours_s": ours, "ours_entries_per_s": args.n ** 2 / ours,
               "gemm_s": gemm, "ours_over_gemm": ours / gemm, "ours_peak_mib": peak,
               "blocked_vs_once_max_rel": block_diff}
        if not args.no_nt and nt_python() is not None:
            with tempfile.TemporaryDirectory() as tmp:
                save = str(Path(tmp) / "nt.npy")
                nt = run_nt(["--net", "fc", "--n", str(args.n), "--d", str(args.d), "--depth", str(args.depth),
                             "--dtype", dtype, "--repeats", str(args.repeats), "--save", save])
                ref = np.load(save, allow_pickle=False)
            # Same data on both sides (default_rng(0) normal): the kernels must agree.
            rel = float(np.abs(ref - k).max() / np.abs(ref).max())
            # neural-tangents' own diagonal (parallel pairs) is ~3e-8 off in float64
            # and ~1e-3 in float32 (NT-CONVENTIONS); ntkscale's is exact there.
            tol = 2e-3 if dtype == "float32" else 1e-7
            if not rel < tol:
                raise SystemExit(f"{dtype}: ntkscale and neural-tangents disagree (max rel {rel:.3g} > {tol})")
            row.update(nt_s=nt["seconds_best"], nt_entries_per_s=nt["entries_per_s"],
                       speedup_vs_nt=nt["seconds_best"] / ours, nt_over_gemm=nt["seconds_best"] / gemm,
                       nt_peak_rss_mib=nt["peak_rss_mb"], max_rel_diff_vs_nt=rel)
        elif not args.no_nt:
            print("neural-tangents venv not built (bash benchmarks/nt_venv.sh); reporting ntkscale only",
                  file=sys.stderr)
        rows.append(row)
    info = machine()
    print(f"FC ReLU depth {args.depth} NTK Gram, n={args.n}, d={args.d}; {info['cpu']}, {info['cores']} cores, "
          f"{info['date']}, load {info['load_1min']}")
    print_table(rows, ["dtype", "ours_s", "nt_s", "speedup_vs_nt", "gemm_s", "ours_over_gemm", "nt_over_gemm",
                       "ours_peak_mib", "nt_peak_rss_mib", "max_rel_diff_vs_nt", "blocked_vs_once_max_rel"])
    save_result("fc", {"machine": info, "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
