"""CLI: ``ntkscale demo`` -- MNIST 4000/1000, FC depth 3 NTK, CG + Nystrom, under a minute.

Example::

    ntkscale demo --dir ntkscale-demo --json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..stages.demo import run_demo
from .run import emit


def demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="ntkscale-demo", help="where to write the data, config and store "
                   "(default ./ntkscale-demo)")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="metrics as JSON on the last line")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def demo_cmd(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    m = run_demo(directory, args.n_train, args.n_test, progress=not args.quiet)
    if args.json:
        emit(m, True)
    else:
        print(f"test accuracy {m['test_accuracy']:.4f} ({m['n_train']} train, {m['n_test']} test, FC depth 3 NTK, "
              f"ridge {m['ridge']:g} relative) in {m['demo_seconds']:.1f} s; store {directory / 'run.zarr'}")
    return 0
