"""``connector-resilience circuits`` and ``circuit ACTION CONNECTOR``.

The actions and the breaker methods they call:

* ``open``      -> :meth:`CircuitBreaker.force_open`: every call is refused;
* ``disable``   -> :meth:`CircuitBreaker.disable`: every call goes through and
  failures are not counted, so it cannot trip;
* ``reset``     -> :meth:`CircuitBreaker.reset`: back to automatic, closed,
  counts, open-time growth and slow start cleared;
* ``half-open`` -> :meth:`CircuitBreaker.half_open`: an open (or forced-open)
  breaker starts probing now instead of at the end of its cooldown;
* ``close``     -> :meth:`CircuitBreaker.close`: an open, half-open or
  forced-open breaker closes as a recovery would, slow start included.

The two forced states hold, for every process sharing the store, until
``reset``. ``half-open`` and ``close`` refuse moves that make no sense (closing
a closed breaker, probing a disabled one) with an error saying what to do.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from connector_resilience.backends import CircuitRecord
from connector_resilience.circuit import CircuitBreaker, admitted_share, effective_state
from connector_resilience.cli._common import (
    CliError,
    Context,
    format_time,
    open_context,
    print_json,
    table,
)
from connector_resilience.errors import CircuitTransitionError
from connector_resilience.metrics.overview import circuit_since

__all__ = ["run_circuit", "run_circuits"]

_DONE = {
    "open": "forced open: every call is refused until `circuit reset`",
    "disable": "disabled: every call goes through, failures are not counted, until `circuit reset`",
    "half-open": "half-open: probing now",
    "close": "closed",
    "reset": "reset: closed, counts cleared, opening and closing automatically again",
}
#: Breaker method names in refusal hints, as the commands that do the same.
_COMMANDS = {
    "reset()": "`circuit reset`",
    "disable()": "`circuit disable`",
    "force_open()": "`circuit open`",
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
            _state_text(r),
            r["override"] or "-",
            format_time(r["since"], now=now),
            str(r["failures"]),
            format_time(r["reopen_at"], now=now) if r["state"] == "open" else "-",
            r["reason"] or "-",
            str(r["opens"]) if r["opens"] and r["state"] != "closed" else "-",
            r["last_failure"]["type"] if r["last_failure"] else "-",
        ]
        for r in rows
    ]
    out.write(
        table(
            [
                "CONNECTOR",
                "STATE",
                "FORCED",
                "SINCE",
                "FAILURES",
                "PROBES FROM",
                "REASON",
                "OPENS",
                "LAST FAILURE",
            ],
            lines,
            right=("FAILURES", "OPENS"),
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
                **_recovery_columns(record, now),
            }
        )
    return rows


def _recovery_columns(record: CircuitRecord | None, now: float) -> dict[str, Any]:
    """Open-time growth, slow start, quorum votes and the failure that opened it."""
    record = record or CircuitRecord()
    failure = record.last_failure
    return {
        "opens": record.opens,
        "admitted_share": admitted_share(record, now),
        "ramp_until": record.ramp_until,
        "probe_successes": record.probe_successes,
        "probe_failures": record.probe_failures,
        "reporters": [{"id": r[0], "at": r[1]} for r in record.reporters],
        "last_failure": {"type": failure[0], "message": failure[1]} if failure else None,
    }


def _state_text(row: dict[str, Any]) -> str:
    share: float = row["admitted_share"]
    if row["state"] == "closed" and share < 1.0:
        return f"closed (slow start {share:.0%})"
    return str(row["state"])


def run_circuit(args: argparse.Namespace, *, out: TextIO) -> int:
    """Force a breaker open or closed, or reset it to automatic."""
    ctx = open_context(args)
    connector: str = args.connector
    ctx.known_connector(connector)
    breaker = CircuitBreaker(connector, policy=ctx.policy, store=ctx.store)
    action: str = args.action
    try:
        if action == "open":
            breaker.force_open(reason=args.reason or "forced open by an operator")
        elif action == "disable":
            breaker.disable()
        elif action == "half-open":
            breaker.half_open()
        elif action == "close":
            breaker.close()
        else:
            breaker.reset()
    except CircuitTransitionError as exc:
        message = str(exc)
        for method, command in _COMMANDS.items():
            message = message.replace(method, command)
        raise CliError(message) from None
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
        done = _DONE[action]
        if action == "close" and record.ramp_until is not None:
            seconds = record.ramp_until - (record.ramp_from or record.ramp_until)
            done += f"; slow start: the share of calls admitted rises to all within {seconds:g} s"
        out.write(f"circuit {connector!r} {done}\n")
    return 0
