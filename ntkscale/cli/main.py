"""Command-line interface: thin, maps commands and flags onto the stages.

``COMMANDS`` is the explicit table of subcommands, in the order ``--help`` lists them:
name -> :class:`Command` (help text, ``arguments(parser)`` adding its flags,
``run(args) -> exit code``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, NamedTuple, Optional

from .. import __version__
from ..errors import NtkscaleError
from ..gram.faults import persistent_fault
from . import demo, gram, project, run


class Command(NamedTuple):
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: Dict[str, Command] = {
    "plan": Command("Show the block plan of a run: blocks, storage, flops and an estimated time.",
                    gram.plan_args, gram.plan_cmd),
    "gram": Command("Compute (or finish) the Gram store of a run on a Dask cluster.", gram.gram_args, gram.gram_cmd),
    "status": Command("Show the progress of a Gram store (read-only; safe while a run is going).",
                      gram.status_args, gram.status_cmd),
    "verify": Command("Check every block of a store against its checksum; --repair recomputes bad ones.",
                      gram.verify_args, gram.verify_cmd),
    "export": Command("Write the dense train or test Gram of a complete store to a .npy file.",
                      gram.export_args, gram.export_cmd),
    "project": Command("Project the time of a Gram run from shapes alone (n, input shape, net, devices).",
                       project.project_args, project.project_cmd),
    "solve": Command("Solve kernel regression on the stored train Gram (CG or tiled Cholesky; resumable).",
                     run.solve_args, run.solve_cmd),
    "predict": Command("Predict the test set (or new inputs with --x) from a solved store.",
                       run.predict_args, run.predict_cmd),
    "run": Command("Plan, gram, solve and predict, resuming whatever is already done.", run.run_args, run.run_cmd),
    "demo": Command("Run end to end on bundled MNIST digits (FC depth 3 NTK, CG + Nystrom): about a minute, "
                    "--quick about ten seconds.",
                    demo.demo_args, demo.demo_cmd),
    "report": Command("Write PNG plots of a solve: CG residuals, spectrum estimate, test metrics vs ridge.",
                      run.report_args, run.report_cmd),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntkscale",
        description="Exact infinite-width NNGP/NTK kernels at scale, and kernel regression.",
    )
    parser.add_argument("--version", action="version", version=f"ntkscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        cmd.arguments(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return int(COMMANDS[args.command].run(args) or 0)
    except NtkscaleError as exc:
        print(f"ntkscale {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # the driver's own writes: a full or read-only disk is no bug
        fault = persistent_fault(exc)
        if fault is None:
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"ntkscale {args.command}: error: {fault.message}{where}; finished work is kept: {fault.fix}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ntkscale {args.command}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
