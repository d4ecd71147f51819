"""Command-line interface: thin, maps commands and flags onto the library.

Each subcommand lives in a ``_cmd_*`` function registered in ``COMMANDS``;
later modules add theirs with :func:`command`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional

from .. import __version__
from ..errors import NtkscaleError

#: name -> (help text, add_arguments(parser), run(args) -> exit code)
COMMANDS: Dict[str, tuple] = {}


def command(name: str, help_text: str):
    """Register a subcommand: decorate ``run(args) -> int`` taking an
    ``arguments(parser)`` attribute to add its flags."""

    def wrap(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help_text, getattr(fn, "arguments", None), fn)
        return fn

    return wrap


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntkscale",
        description="Exact infinite-width NNGP/NTK kernels at scale, and kernel regression.",
    )
    parser.add_argument("--version", action="version", version=f"ntkscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _load_commands()
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if add_arguments is not None:
            add_arguments(p)
    return parser


def _load_commands() -> None:
    """Import the modules that register subcommands (kept lazy for a fast --help)."""
    import importlib

    for module in ("ntkscale.cli", "ntkscale.cli.gram", "ntkscale.cli.project",
                   "ntkscale.cli.run"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    _, _, run = COMMANDS[args.command]
    try:
        return int(run(args) or 0)
    except NtkscaleError as exc:
        print(f"ntkscale {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ntkscale {args.command}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
