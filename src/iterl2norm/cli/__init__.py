"""The ``iterl2norm`` command line.

Usage errors and bad values end in one line on stderr and exit status 2;
nothing a user types produces a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import bench, demo, hw, info, models, rtl, study


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, not usage plus message."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# The command table: each module adds its sub-commands and runs them.
_MODULES = (demo, study, models, hw, rtl, bench, info)
COMMANDS = {name: module for module in _MODULES for name in module.COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="iterl2norm", description="Division- and square-root-free iterative L2 normalization."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in _MODULES:
        module.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command].run(args, list(sys.argv[1:] if argv is None else argv))
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"iterl2norm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("iterl2norm: interrupted", file=sys.stderr)
        return 130
