"""The ``connector-resilience`` command line: argument parsing and dispatch only.

Each command's logic lives in its own module (``_health``, ``_circuits``,
``_tokens``, ``_maintenance``, ``_demo``, and the ``dashboard`` package); this one
maps the command line to them and turns the errors an operator can cause into a
message and an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO, cast

from connector_resilience import __version__
from connector_resilience.cli._basics import (
    EXIT_DEGRADED,
    EXIT_DOWN,
    EXIT_ERROR,
    EXIT_NO_STORE,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    port_number,
    positive_seconds,
    scrub,
)
from connector_resilience.cli._output import PipeSafe
from connector_resilience.errors import ResilienceError

__all__ = ["build_parser", "main"]

_EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}  success; for `health`: every connector (or the one asked for) is healthy
  {EXIT_DEGRADED}  `health`: at least one connector is degraded, none is down
  {EXIT_DOWN}  `health`: at least one connector is down (its circuit is open or
     half-open, or almost every attempt fails)
  {EXIT_ERROR}  the command could not run: store unreachable or unreadable, unknown
     store URL scheme, unknown connector, invalid settings (message on stderr)
  {EXIT_USAGE}  the command line is wrong
  {EXIT_NO_STORE}  `health`: no store where it looked (no JSONL files in this folder and no
     --store or CONNECTOR_STORE_URL): nothing to judge
"""

Handler = Callable[[argparse.Namespace, TextIO], int]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits with EXIT_USAGE, never a health code."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _common_options() -> _Parser:
    # SUPPRESS: the options work before or after the command without one
    # position's default overwriting the other's value.
    common = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument(
        "--store",
        metavar="URL",
        help="store to read: memory://, jsonl://DIR, sqlite:///FILE, redis://HOST:PORT/DB "
        "(default: CONNECTOR_STORE_URL, else the three JSONL files of the policy)",
    )
    common.add_argument(
        "--window",
        metavar="SECONDS",
        type=positive_seconds,
        help="history to look at (default: CONNECTOR_HEALTH_WINDOW_S, 3600)",
    )
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    return common


def _progress_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--progress",
        dest="progress",
        action="store_const",
        const="always",
        default="auto",
        help="show progress on stderr from the start (default: after one second)",
    )
    group.add_argument(
        "--no-progress", dest="progress", action="store_const", const="never", help="no progress"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    common = _common_options()
    parser = _Parser(
        prog="connector-resilience",
        description="Resilience and observability for calls to outside services.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog=_EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    demo = command(
        "demo",
        "call a local flaky service through @resilient and watch it "
        "(its own store: jsonl://logs/connector-demo unless --store says otherwise)",
        _demo,
    )
    demo.add_argument(
        "--seconds", type=positive_seconds, default=30.0, help="how long to run (default: 30)"
    )

    health = command(
        "health",
        "every connector's verdict, calls, error rate, p50/p95/p99 and breaker; "
        "exit code 0 healthy, 1 degraded, 2 down",
        _health,
    )
    health.add_argument(
        "connector",
        nargs="?",
        metavar="CONNECTOR",
        help="one connector in detail: per operation, and recent errors by type",
    )

    command("circuits", "every connector's circuit breaker: state, forced, since when", _circuits)
    circuit = command(
        "circuit",
        "steer a breaker: `open` refuses every call and `disable` lets every call "
        "through without counting failures, both until `reset` returns it to automatic; "
        "`half-open` ends an open breaker's cooldown now, `close` closes it as a "
        "recovery would (slow start included)",
        _circuit,
    )
    circuit.add_argument("action", choices=("open", "disable", "half-open", "close", "reset"))
    circuit.add_argument("connector", metavar="CONNECTOR")
    circuit.add_argument("--reason", help="why (shown by `circuits` and in rejections)")

    command(
        "tokens",
        "every connector's OAuth2 token: expiry, whether a refresh is due; never a secret",
        _tokens,
    )

    compact = command(
        "compact", "drop metrics older than the retention and superseded state", _compact
    )
    compact.add_argument(
        "--retention",
        metavar="SECONDS",
        type=positive_seconds,
        help="metrics to keep (default: CONNECTOR_METRICS_RETENTION_S, 7 days)",
    )
    _progress_options(compact)

    export = command("export", "write the window's call metrics as JSONL or CSV", _export)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", "-o", metavar="FILE", help="file to write (default: stdout)")
    export.add_argument("--connector", metavar="CONNECTOR", help="only this connector")
    _progress_options(export)

    dashboard = command(
        "dashboard",
        "serve a live dashboard, /healthz and /metrics on a local port",
        _dashboard,
    )
    dashboard.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    dashboard.add_argument(
        "--port", type=port_number, default=8765, help="port, 0 for any free one (default: 8765)"
    )
    dashboard.add_argument(
        "--refresh",
        metavar="SECONDS",
        type=positive_seconds,
        default=2.0,
        help="how often the page refreshes (default: 2)",
    )
    dashboard.add_argument(
        "--stale-after",
        metavar="SECONDS",
        type=positive_seconds,
        default=60.0,
        help="mark data older than this as stale (default: 60)",
    )
    return parser


# Handlers: import each command's module when it runs, so `health` never pays
# for aiohttp and `demo` works on a bare install.


def _demo(args: argparse.Namespace, out: TextIO) -> int:
    from connector_resilience.cli._demo import run_demo

    return run_demo(
        seconds=args.seconds,
        out=out,
        store=getattr(args, "store", None),
        as_json=bool(getattr(args, "json", False)),
    )


def _health(args: argparse.Namespace, out: TextIO) -> int:
    from connector_resilience.cli._health import run_health

    return run_health(args, out=out)


def _circuits(args: argparse.Namespace, out: TextIO) -> int:
    from connector_resilience.cli._circuits import run_circuits

    return run_circuits(args, out=out)


def _circuit(args: argparse.Namespace, out: TextIO) -> int:
    from connector_resilience.cli._circuits import run_circuit

    return run_circuit(args, out=out)


def _tokens(args: argparse.Namespace, out: TextIO) -> int:
    from connector_resilience.cli._tokens import run_tokens

    return run_tokens(args, out=out)


def _compact(args: argparse.Namespace, out: TextIO) -> int:
    from connector_resilience.cli._maintenance import run_compact

    return run_compact(args, out=out)


def _export(args: argparse.Namespace, out: TextIO) -> int:
    from connector_resilience.cli._maintenance import run_export

    return run_export(args, out=out)


def _dashboard(args: argparse.Namespace, out: TextIO) -> int:
    from connector_resilience.cli._common import open_context
    from connector_resilience.dashboard import run_dashboard

    ctx = open_context(args)
    return run_dashboard(
        store=ctx.store,
        policy=ctx.policy,
        window_s=ctx.window_s,
        host=args.host,
        port=args.port,
        refresh_s=args.refresh,
        stale_after_s=args.stale_after,
        out=out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see ``--help``)."""
    args = build_parser().parse_args(argv)
    # Messages may quote the store URL: redact whichever one is in use.
    url: str | None = getattr(args, "store", None) or os.environ.get("CONNECTOR_STORE_URL")
    try:
        # `health | head`: a reader that leaves early is not an error of ours.
        code: int = args.handler(args, cast(TextIO, PipeSafe(sys.stdout)))
    except CliError as exc:
        return _fail(str(exc), url, exc.code)
    except (ResilienceError, OSError) as exc:
        # StoreError, ConfigurationError (unknown scheme, missing extra), I/O.
        return _fail(str(exc) or type(exc).__name__, url, EXIT_ERROR)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        problems = _invalid_settings(exc)
        if problems is not None:
            return _fail(f"invalid settings: {problems}", url, EXIT_ERROR)
        # A bug, so the traceback is worth showing; but exit 1 would read as
        # "degraded" to a probe, so the code is the error code.
        _fail("unexpected error (please report it):", url, EXIT_ERROR)
        sys.stderr.write(scrub(traceback.format_exc(), url))
        return EXIT_ERROR
    return code


def _invalid_settings(exc: Exception) -> str | None:
    """What is wrong, if ``exc`` is pydantic's ``ValidationError`` of the settings.

    pydantic is imported with the first Policy: if it is not loaded, no
    settings were read, and ``--help`` need not pay for importing it.
    """
    pydantic = sys.modules.get("pydantic")
    if pydantic is None or not isinstance(exc, pydantic.ValidationError):
        return None
    return "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors())


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "settings"


def _fail(message: str, url: str | None, code: int) -> int:
    sys.stderr.write(f"connector-resilience: error: {scrub(message, url)}\n")
    return code
