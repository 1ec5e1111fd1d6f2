"""The ``connector-resilience`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from connector_resilience import __version__

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from connector_resilience.demo import run_demo

    return run_demo(seconds=args.seconds, out=sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="connector-resilience",
        description="Resilience and observability for calls to outside services.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo", help="call a local flaky service through @resilient and watch it live"
    )
    demo.add_argument("--seconds", type=float, default=30.0, help="how long to run (default: 30)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
