"""CLI: ``ntkscale demo`` -- MNIST 4000/1000 (``--quick``: 1000/300), FC depth 3 NTK, CG + Nystrom.

Examples::

    ntkscale demo                   # about a minute; writes under ~/.cache/ntkscale/demo/
    ntkscale demo --quick --json    # about half a minute on 2 cores
    ntkscale demo --dir my-demo     # data, config.yaml and run.zarr in ./my-demo
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..stages.demo import FULL, QUICK, default_dir, run_demo
from .output import human_bytes, say
from .run import emit


def demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help=f"a small run of about half a minute on 2 cores ({QUICK[0]} train, {QUICK[1]} test digits)")
    p.add_argument("--n-train", type=int, metavar="N",
                   help=f"training digits, the first N of the shuffled 5000 (default {FULL[0]}, with --quick "
                        f"{QUICK[0]})")
    p.add_argument("--n-test", type=int, metavar="N",
                   help=f"test digits, the last N of the shuffled 5000 (default {FULL[1]}, with --quick {QUICK[1]})")
    p.add_argument("--dir", metavar="DIR",
                   help="where to write the data, config.yaml and the store (default "
                        "$XDG_CACHE_HOME/ntkscale/demo/N_TRAIN-N_TEST, ~/.cache without XDG_CACHE_HOME)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="local Dask worker processes (default 2)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on the last line")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def demo_cmd(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    n_train = args.n_train if args.n_train is not None else sizes[0]
    n_test = args.n_test if args.n_test is not None else sizes[1]
    directory = Path(args.dir).resolve() if args.dir else default_dir(n_train, n_test)
    if not args.quiet:
        say(f"demo: writing into {directory}" + ("" if args.dir else " (ntkscale's cache; --dir DIR to choose)"))
    m = run_demo(directory, n_train, n_test, progress=not args.quiet, n_workers=args.workers)
    if args.json:
        emit(m, True)
    else:
        print(f"test accuracy {m['test_accuracy']:.4f} ({m['n_train']} train, {m['n_test']} test, FC depth 3 NTK, "
              f"ridge {m['ridge']:g} relative) in {m['demo_seconds']:.1f} s")
        print(f"plots in {directory / 'report'} (training dynamics: dynamics.png; {len(m.get('report', []))} "
              "files)")
        print(f"demo files in {directory} ({human_bytes(m['directory_bytes'])}: data, config.yaml, run.zarr, "
              f"report); remove them with: rm -r {directory}")
    return 0
