"""``connector-resilience circuits`` and ``circuit open|close|reset CONNECTOR``.

The mapping to the breaker, chosen so that the two forced states mirror each other:

* ``open``  -> :meth:`CircuitBreaker.force_open`: every call is refused;
* ``close`` -> :meth:`CircuitBreaker.disable`: every call goes through and
  failures are not counted, so it cannot trip;
* ``reset`` -> :meth:`CircuitBreaker.reset`: back to automatic, closed, counts cleared.

A forced state holds, for every process sharing the store, until ``reset``.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from connector_resilience.circuit import CircuitBreaker, effective_state
from connector_resilience.cli._common import Context, format_time, open_context, print_json, table
from connector_resilience.metrics.overview import circuit_since

__all__ = ["run_circuit", "run_circuits"]

_DONE = {
    "open": "forced open: every call is refused until `circuit reset`",
    "close": "forced closed: every call goes through, failures are not counted, until "
    "`circuit reset`",
    "reset": "reset: closed, counts cleared, opening and closing automatically again",
}


def run_circuits(args: argparse.Namespace, *, out: TextIO) -> int:
    """List every connector's breaker."""
    ctx = open_context(args)
    rows = _circuit_rows(ctx)
    if ctx.json:
        print_json({"store": ctx.store_name, "circuits": rows}, out=out)
        return 0
    out.write(f"store: {ctx.store_name}\n\n")
    if not rows:
        out.write("no connectors in this store yet\n")
        return 0
    now = ctx.store.now()
    lines = [
        [
            r["connector"],
            r["state"],
            r["override"] or "-",
            format_time(r["since"], now=now),
            str(r["failures"]),
            format_time(r["reopen_at"], now=now) if r["state"] == "open" else "-",
            r["reason"] or "-",
        ]
        for r in rows
    ]
    out.write(
        table(
            ["CONNECTOR", "STATE", "FORCED", "SINCE", "FAILURES", "PROBES FROM", "REASON"],
            lines,
            right=("FAILURES",),
        )
    )
    return 0


def _circuit_rows(ctx: Context) -> list[dict[str, Any]]:
    circuits = ctx.store.list_circuits()
    now = ctx.store.now()
    rows = []
    for name in sorted(set(ctx.store.connectors()) | set(circuits)):
        record = circuits.get(name)
        forced = record is not None and record.override == "forced_open"
        rows.append(
            {
                "connector": name,
                "state": effective_state(record, now) if record is not None else "closed",
                "override": record.override if record is not None else None,
                "since": circuit_since(record, now),
                "failures": record.failures if record is not None else 0,
                "reopen_at": None if record is None or forced else record.reopen_at,
                "reason": record.reason if record is not None else None,
                "version": record.version if record is not None else 0,
            }
        )
    return rows


def run_circuit(args: argparse.Namespace, *, out: TextIO) -> int:
    """Force a breaker open or closed, or reset it to automatic."""
    ctx = open_context(args)
    connector: str = args.connector
    ctx.known_connector(connector)
    breaker = CircuitBreaker(connector, policy=ctx.policy, store=ctx.store)
    action: str = args.action
    if action == "open":
        breaker.force_open(reason=args.reason or "forced open by an operator")
    elif action == "close":
        breaker.disable()
    else:
        breaker.reset()
    record = breaker.record
    if ctx.json:
        print_json(
            {
                "connector": connector,
                "action": action,
                "state": breaker.state,
                "override": record.override,
                "reason": record.reason,
                "version": record.version,
            },
            out=out,
        )
    else:
        out.write(f"circuit {connector!r} {_DONE[action]}\n")
    return 0
