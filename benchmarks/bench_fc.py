"""FC ReLU depth-3 NTK: ntkscale vs neural-tangents 0.6.5 under the fair protocol.

    python benchmarks/bench_fc.py [--n 4096] [--d 784] [--depth 3] [--repeats 5] [--threads 2]

For float32 and float64, the cross kernel ``kernel_fn(x1, x2, "ntk")`` (x1 ≠ x2,
n × n entries) and the symmetric call ``kernel_fn(x, None, "ntk")`` are run
by both libraries as separate processes with the same pinned threads and CPUs
(benchmarks/protocol.py): outputs checked equal first, then interleaved
repeats, medians with spread, baseline-subtracted peak RSS. Next to each ratio:
the floor, the input GEMM ``x1 @ x2ᵀ`` alone (no closed form can beat it),
and ntkscale's time over it; the ceiling, neural-tangents' time over the GEMM, is
the ratio no implementation that computes the GEMM can exceed.

Targets (asserted, listed in the result file, ``python -m benchmarks --check``):
the cross kernel ≥ 4× neural-tangents at n = 4096, d = 784 in float32 and in
float64 (issue 14).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, save_result  # noqa: E402
from protocol import Target, Work, compare, sides_vs_nt  # noqa: E402

CROSS_TARGET = 4.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=784)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=len(__import__("os").sched_getaffinity(0)))
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--no-nt", action="store_true", help="skip neural-tangents (nothing is compared)")
    args = ap.parse_args(argv)
    if args.no_nt:
        print("bench_fc: --no-nt: nothing to compare; build the peer with bash benchmarks/nt_venv.sh",
              file=sys.stderr)
        save_result("fc", {"machine": machine(), "args": vars(args), "rows": [], "targets": [],
                           "skipped": "neural-tangents venv not built"})
        return 0
    sides = sides_vs_nt("bench_fc")
    if sides is None:
        return 2
    rows, targets = [], []
    for cross in (True, False):
        for dtype in args.dtypes.split(","):
            work = Work("fc", args.depth, (args.d,), args.n, args.n if cross else None, dtype, "ntk")
            res = compare(work, sides, repeats=args.repeats, threads=args.threads, extra_ops=["floor"])
            ours, nt = res["times"]["ntkscale"], res["times"]["neural-tangents"]
            row = {"call": "cross" if cross else "symmetric", "dtype": dtype, "n": args.n,
                   "ours_s": ours["median"], "ours_min_s": ours["min"], "ours_max_s": ours["max"],
                   "nt_s": nt["median"], "nt_min_s": nt["min"], "nt_max_s": nt["max"],
                   "speedup_vs_nt": res["ratio"], "speedup_iqr": res["ratio_iqr"],
                   "gemm_s": res["floor"]["gemm_s"], "ours_over_gemm": ours["median"] / res["floor"]["gemm_s"],
                   # the ratio an implementation whose closed forms cost nothing would reach
                   "ceiling_vs_nt": nt["median"] / res["floor"]["gemm_s"],
                   "ours_peak_mib": res["peak_rss_mib"]["ntkscale"],
                   "nt_peak_mib": res["peak_rss_mib"]["neural-tangents"],
                   "max_rel_diff_vs_nt": res["max_rel_diff"], "threads": res["threads"], "cpus": res["cpus"],
                   "load_1min": res["load_1min"], "versions": res["versions"], "env": res["env"]}
            rows.append(row)
            if cross and (args.n, args.d, args.depth) == (4096, 784, 3):  # the sizes issue 14 sets
                targets.append(Target(f"FC{args.depth} cross kernel n={args.n} d={args.d} {dtype}: "
                                      f"× neural-tangents", CROSS_TARGET).judge(res["ratio"]))
            print(f"{work.label()}: ntkscale {ours['median']:.3g} s, neural-tangents {nt['median']:.3g} s, "
                  f"{res['ratio']:.2f}× (GEMM floor {row['gemm_s']:.3g} s: at most "
                  f"{row['ceiling_vs_nt']:.2f}×)", flush=True)
    info = machine()
    print(f"FC ReLU depth {args.depth} NTK, n={args.n}, d={args.d}; {info['cpu']}, {args.threads} threads, "
          f"{info['date']}, load {info['load_1min']}")
    print_table(rows, ["call", "dtype", "ours_s", "nt_s", "speedup_vs_nt", "gemm_s", "ceiling_vs_nt", "ours_over_gemm",
                       "ours_peak_mib", "nt_peak_mib", "max_rel_diff_vs_nt"])
    save_result("fc", {"machine": info, "args": vars(args), "rows": rows, "targets": targets})
    for t in targets:
        if not t["met"]:
            print(f"target missed: {t['name']} = {t['value']:.3g} (target ≥ {t['goal']:g})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
