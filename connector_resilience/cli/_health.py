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
from connector_resilience.metrics.overview import (
    ConnectorView,
    StoreView,
    error_types,
    operation_summaries,
    read_view,
)

__all__ = ["run_health"]


def run_health(args: argparse.Namespace, *, out: TextIO) -> int:
    """Print every connector's health (or one connector's detail); exit code by verdict."""
    ctx = open_context(args)
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
    out.write(
        f"store: {view.store}   window: {view.window_s:g}s   overall: {view.status.value}\n\n"
    )
    if not view.connectors:
        out.write("no connectors in this store yet\n")
        return
    # FAILED: calls that failed after retries (what callers saw); ATTEMPTS FAILED:
    # failed attempts, retries included (what the verdict judges).
    rows = []
    for c in view.connectors:
        s = c.summary
        rows.append(
            [
                c.connector,
                c.status.value,
                str(s.total_calls),
                format_rate(s.error_rate),
                format_rate(s.attempt_error_rate),
                format_ms(s.p50_ms),
                format_ms(s.p95_ms),
                format_ms(s.p99_ms),
                _breaker(c),
                format_time(c.circuit_since, now=view.generated_at),
            ]
        )
    out.write(
        table(
            [
                "CONNECTOR",
                "VERDICT",
                "CALLS",
                "FAILED",
                "ATTEMPTS FAILED",
                "P50",
                "P95",
                "P99",
                "BREAKER",
                "SINCE",
            ],
            rows,
            right=("CALLS", "FAILED", "ATTEMPTS FAILED", "P50", "P95", "P99"),
        )
    )
    reasons = [(c.connector, c.report.reasons) for c in view.connectors if c.report.reasons]
    if reasons:
        out.write("\n")
        for name, why in reasons:
            out.write(printable(f"{name}: {'; '.join(why)}") + "\n")


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
    out.write(
        f"connector: {printable(one.connector)}   store: {view.store}   "
        f"window: {view.window_s:g}s\n"
        f"verdict:   {one.status.value}"
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
                format_rate(o.error_rate),
                format_rate(o.attempt_error_rate),
                str(o.retries),
                str(o.rejected),
                format_ms(o.p50_ms),
                format_ms(o.p95_ms),
                format_ms(o.p99_ms),
            ]
            for name, o in operations.items()
        ]
        out.write(
            table(
                [
                    "OPERATION",
                    "CALLS",
                    "FAILED",
                    "ATTEMPTS FAILED",
                    "RETRIES",
                    "REJECTED",
                    "P50",
                    "P95",
                    "P99",
                ],
                rows,
                right=(
                    "CALLS",
                    "FAILED",
                    "ATTEMPTS FAILED",
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
