"""``connector-resilience health [CONNECTOR]``: verdicts, numbers and breakers."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TextIO

from connector_resilience.cli._common import (
    Context,
    exit_code_for,
    format_ms,
    format_rate,
    format_time,
    open_context,
    print_json,
    printable,
    table,
)
from connector_resilience.cli._output import colour_column, colour_for, wants_colour
from connector_resilience.metrics import HealthStatus, Summary
from connector_resilience.metrics.overview import (
    ConnectorView,
    StoreView,
    error_types,
    operation_summaries,
    read_view,
)

__all__ = ["ATTEMPTS_FAILED", "CALLS_FAILED", "run_health"]

#: Column titles shared with the dashboard: calls that failed after their
#: retries (what callers saw), and failed attempts (what the verdict judges).
CALLS_FAILED = "CALLS FAILED"
ATTEMPTS_FAILED = "ATTEMPTS FAILED"
#: What a connector with no attempts in the window shows instead of numbers.
NO_DATA = "no data"


def run_health(args: argparse.Namespace, *, out: TextIO) -> int:
    """Print every connector's health (or one connector's detail); exit code by verdict."""
    ctx = open_context(args, existing=True)
    connector: str | None = args.connector
    if connector is not None:
        ctx.known_connector(connector)
    view = read_view(store=ctx.store, policy=ctx.policy, window_s=ctx.window_s)
    if connector is None:
        _all(view, ctx, out=out)
        return exit_code_for(view.status)
    one = view.get(connector)
    assert one is not None  # the store knows it, so the view has it
    _one(view, one, ctx, out=out)
    return exit_code_for(one.status)


def _all(view: StoreView, ctx: Context, *, out: TextIO) -> None:
    if ctx.json:
        print_json(view.as_dict(), out=out)
        return
    colour = wants_colour(out)
    overall = _painted(view.status.value, colour)
    out.write(f"store: {view.store}   window: {view.window_s:g}s   overall: {overall}\n\n")
    if not view.connectors:
        out.write("no connectors in this store yet\n")
        return
    rows = []
    for c in view.connectors:
        s = c.summary
        rows.append(
            [
                c.connector,
                _verdict(c.status, s),
                str(s.total_calls),
                *_numbers(s),
                _breaker(c),
                format_time(c.circuit_since, now=view.generated_at),
            ]
        )
    text = table(
        [
            "CONNECTOR",
            "VERDICT",
            "CALLS",
            CALLS_FAILED,
            ATTEMPTS_FAILED,
            "P50",
            "P95",
            "P99",
            "BREAKER",
            "SINCE",
        ],
        rows,
        right=("CALLS", CALLS_FAILED, ATTEMPTS_FAILED, "P50", "P95", "P99"),
    )
    if colour:
        # Rightmost first: codes added to a row would shift the columns to their right.
        text = colour_column(colour_column(text, "BREAKER"), "VERDICT")
    out.write(text)
    reasons = [(c.connector, c.report.reasons) for c in view.connectors if c.report.reasons]
    if reasons:
        out.write("\n")
        for name, why in reasons:
            out.write(printable(f"{name}: {'; '.join(why)}") + "\n")


def _verdict(status: HealthStatus, summary: Summary) -> str:
    # "healthy" with no attempts at all says nothing: say there is no data.
    if status is HealthStatus.HEALTHY and summary.attempts == 0:
        return NO_DATA
    return status.value


def _numbers(summary: Summary) -> list[str]:
    """Failure rates and percentiles, or dashes when the window has no attempts."""
    if summary.attempts == 0:
        return ["-"] * 5
    return [
        format_rate(summary.error_rate),
        format_rate(summary.attempt_error_rate),
        format_ms(summary.p50_ms),
        format_ms(summary.p95_ms),
        format_ms(summary.p99_ms),
    ]


def _painted(word: str, colour: bool) -> str:
    code = colour_for(word) if colour else None
    return f"{code}{word}\x1b[0m" if code else word


def _breaker(view: ConnectorView) -> str:
    state = view.report.circuit_state
    # A forced state holds until `circuit reset`; say so, the operator may have forgotten it.
    return f"{state} (forced)" if view.override is not None else state


def _one(view: StoreView, one: ConnectorView, ctx: Context, *, out: TextIO) -> None:
    operations = operation_summaries(
        view.records,
        connector=one.connector,
        window_s=view.window_s,
        aggregates=view.aggregates,
    )
    errors = error_types(view.records, connector=one.connector, aggregates=view.aggregates)
    if ctx.json:
        data = one.as_dict()
        data["store"] = view.store
        data["operations"] = {
            name: {k: v for k, v in s.as_dict().items() if k not in ("connector", "window_s")}
            for name, s in operations.items()
        }
        data["recent_errors"] = [e.as_dict() for e in errors]
        print_json(data, out=out)
        return
    s = one.summary
    now = view.generated_at
    colour = wants_colour(out)
    verdict = _verdict(one.status, s)
    out.write(
        f"connector: {printable(one.connector)}   store: {view.store}   "
        f"window: {view.window_s:g}s\n"
        f"verdict:   {_painted(verdict, colour)}"
        + (f" ({'; '.join(one.report.reasons)})" if one.report.reasons else "")
        + "\n"
        f"breaker:   {_breaker(one)} "
        + (
            f"since {format_time(one.circuit_since, now=now)}"
            if one.circuit_since is not None
            else "(never tripped)"
        )
        + (
            f": {printable(one.circuit.reason)}"
            if one.circuit is not None and one.circuit.reason
            else ""
        )
        + "\n"
        f"calls:     {s.total_calls} ({s.errors} failed, {s.attempts} attempts, "
        f"{s.retries} retries, {s.rejected} refused before sending)\n"
        + _refusals_line(s.refusals)
        + f"last call: {format_time(s.last_call_at, now=now)}\n\n"
    )
    if operations:
        rows = [
            [
                name,
                str(o.total_calls),
                *_numbers(o)[:2],
                str(o.retries),
                str(o.rejected),
                *_numbers(o)[2:],
            ]
            for name, o in operations.items()
        ]
        out.write(
            table(
                [
                    "OPERATION",
                    "CALLS",
                    CALLS_FAILED,
                    ATTEMPTS_FAILED,
                    "RETRIES",
                    "REJECTED",
                    "P50",
                    "P95",
                    "P99",
                ],
                rows,
                right=(
                    "CALLS",
                    CALLS_FAILED,
                    ATTEMPTS_FAILED,
                    "RETRIES",
                    "REJECTED",
                    "P50",
                    "P95",
                    "P99",
                ),
            )
        )
    else:
        out.write("no calls in the window\n")
    out.write("\n")
    if errors:
        out.write("recent errors by type (failed attempts, newest first):\n")
        rows = [
            [e.error, str(e.count), format_time(e.last_seen, now=now), ", ".join(e.operations)]
            for e in errors
        ]
        out.write(table(["ERROR", "COUNT", "LAST SEEN", "OPERATIONS"], rows, right=("COUNT",)))
    else:
        out.write("no errors in the window\n")


def _refusals_line(refusals: Mapping[str, int]) -> str:
    """What load control refused, by kind, when it refused anything."""
    if not refusals:
        return ""
    return "refused:   " + ", ".join(f"{n} {kind}" for kind, n in sorted(refusals.items())) + "\n"
