"""Residual CNTK: ntkscale's compiled slab kernel vs neural-tangents 0.6.5, fair protocol.

Network: neural-tangents' README WideResNet, ``stax.presets.wide_resnet(block_size, k, 10,
pool=hw // 4)`` (Conv(16), three groups of FanOut/parallel/FanInSum blocks with strides 1, 2,
2, AvgPool down to one pixel, Flatten, Dense(10)); neural-tangents builds the same layers
from ntkscale's canonical spec (``protocol.build_from_spec``). Inputs: uniform [0, 1)
images ``(n, hw, hw, 3)`` in float64 (``protocol.make_inputs``). Timed: the CROSS kernel
``kernel_fn(x1, x2, "ntk")`` at equal n (and, with ``--symmetric``, the symmetric call too)
through benchmarks/protocol.py: both libraries as processes on the same pinned CPUs and
threads, outputs checked equal before timing, interleaved repeats, medians with spread.

Target (issue 12; asserted, recorded, ``python -m benchmarks --check``): the cross kernel
≥ 10× neural-tangents at 8×8×3.

    python benchmarks/bench_residual.py                       # 8x8x3, n = 64, 5 repeats
    python benchmarks/bench_residual.py --hw 16 --n 32 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, save_result  # noqa: E402
from protocol import Target, Work, compare, sides_vs_nt  # noqa: E402

TARGET = 10.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hw", type=int, default=8)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=1)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--symmetric", action="store_true", help="also time the symmetric call")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    from ntkscale import stax

    sides = sides_vs_nt("bench_residual")
    if sides is None:
        return 2
    spec = stax.presets.wide_resnet(args.block_size, args.k, 10, pool=args.hw // 4)[2].spec_json
    rows, targets = [], []
    for cross in (True, False) if args.symmetric else (True,):
        work = Work("spec", args.block_size, (args.hw, args.hw, 3), args.n, args.n if cross else None,
                    "float64", "ntk", spec=spec)
        res = compare(work, sides, repeats=args.repeats, threads=args.threads, tolerance=1e-9,
                      extra_ops=["flops"])
        ours, nt = res["times"]["ntkscale"], res["times"]["neural-tangents"]
        rows.append({"call": "cross" if cross else "symmetric", "hw": args.hw, "n": args.n,
                     "block_size": args.block_size, "k": args.k, "path": res["flops"]["path"],
                     "ours": ours, "nt": nt, "ratio": res["ratio"], "ratio_iqr": res["ratio_iqr"],
                     "max_rel_diff": res["max_rel_diff"], "threads": res["threads"], "cpus": res["cpus"],
                     "peak_rss_mib": res["peak_rss_mib"], "versions": res["versions"],
                     "load_1min": res["load_1min"]})
        if cross and args.hw == 8:
            targets.append(Target(f"WideResNet({args.block_size}, {args.k}) 8×8×3 f64 cross kernel n={args.n}: "
                                  "× neural-tangents", TARGET).judge(res["ratio"]))
        print(f"WideResNet({args.block_size}, {args.k}) {work.label()}: path {res['flops']['path']}, ntkscale "
              f"{ours['median']:.4g} s ({ours['min']:.4g}–{ours['max']:.4g}), neural-tangents {nt['median']:.4g} s "
              f"({nt['min']:.4g}–{nt['max']:.4g}), {res['ratio']:.1f}× (IQR {res['ratio_iqr'][0]:.1f}–"
              f"{res['ratio_iqr'][1]:.1f}), outputs agree to {res['max_rel_diff']:.2g}", flush=True)
    save_result("residual", {"machine": machine(), "args": vars(args), "rows": rows, "targets": targets})
    for t in targets:
        if not t["met"]:
            print(f"target missed: {t['name']} = {t['value']:.3g} (target ≥ {t['goal']:g})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
