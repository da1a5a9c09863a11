"""The ``latentseg`` command line.

Sub-commands are a contract users script against: options are added, never renamed. Each
command is one module holding its options next to what it does (``fit``, ``reconstruct``,
``cluster``, ``segment``, ``demo``, ``batch``, ``info``); the work itself is the pipeline's
(:mod:`napari_latentseg.pipeline`). Errors in the user's input end with exit status 2 and one
line on stderr, failures with 1 (``--debug`` shows the traceback); progress bars go to stderr,
results are named on stdout.
"""

from __future__ import annotations

import argparse
import sys

from . import batch, cluster, demo, fit, info, reconstruct, segment
from ._common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, CLIError

__all__ = ["main", "build_parser", "CLIError", "EXIT_USAGE", "EXIT_FAILURE",
           "EXIT_INTERRUPTED"]

_COMMANDS = (fit, reconstruct, cluster, segment, demo, batch, info)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    from .. import __version__

    p = argparse.ArgumentParser(
        prog="latentseg",
        description="Variational autoencoders for medical volumes: fit, reconstruct, segment.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``latentseg`` command."""
    from ..runtime.errors import CLI_HINTS, explain

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        if getattr(args, "finish", None) is not None:
            args.finish(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("latentseg: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        report = explain(exc, CLI_HINTS)
        if report.kind == "cancelled":
            print(f"latentseg: {report.message}; nothing was written", file=sys.stderr)
            return EXIT_INTERRUPTED
        if args.debug:
            raise
        hint = "" if report.expected else " (--debug shows the traceback)"
        print(f"latentseg {args.command}: error: {report.message}{hint}", file=sys.stderr)
        return EXIT_USAGE if report.kind == "input" else EXIT_FAILURE
