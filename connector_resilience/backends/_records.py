"""What stores keep: call records, circuit records and read counters, with their JSON forms."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

CallStatus = Literal["ok", "error", "rejected"]

#: What parsing one stored record can raise. A bad record is skipped and
#: counted, never raised to the reader: a line nested too deep raises
#: RecursionError, a number too big for a float OverflowError.
PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
)


#: ``error`` of a ``rejected`` record that notes what became of a call instead of
#: counting refused calls: a retry the budget refused (the call itself ran), a
#: fallback that answered. Every other ``rejected`` record counts calls refused
#: before they went out (``CircuitOpenError``, ``RateLimitExceededError``,
#: ``BulkheadFullError``).
CALL_NOTES: frozenset[str] = frozenset({"RetryBudgetExhausted", "FallbackUsed"})


class CallRecord(NamedTuple):
    """One attempt of a call to a connector, or one call refused by an open circuit.

    A named tuple: decorated calls buffer plain tuples of these fields, and
    the background writer turns them into records at C speed.

    Attributes:
        ts: wall-clock end of the attempt, seconds since the epoch.
        connector: connector name.
        operation: operation name (the function name by default).
        duration_ms: how long the attempt took.
        status: ``"ok"``, ``"error"`` or ``"rejected"`` (refused by the breaker,
            the rate limiter or the bulkhead, or a note in :data:`CALL_NOTES`).
        error: the exception's type name for an error; for ``rejected``, why.
        attempt: 1 for the first attempt of a call, 2 for its first retry, ...;
            0 for a call the breaker refused (it made no attempt).
        final: True on the last attempt of a logical call, so that summing
            final records counts calls and summing all records counts attempts.
        labels: low-cardinality extras such as HTTP method, host and status code.
        calls: how many calls the record stands for: 1, except for ``rejected``
            records, which count the rejections of one flush interval at once.
    """

    ts: float
    connector: str
    operation: str
    duration_ms: float
    status: CallStatus
    error: str | None = None
    attempt: int = 1
    final: bool = True
    labels: Mapping[str, str] | None = None
    calls: int = 1

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready mapping (the JSONL line format)."""
        out: dict[str, Any] = {
            "ts": self.ts,
            "connector": self.connector,
            "operation": self.operation,
            "duration_ms": self.duration_ms,
            "status": self.status,
            "error": self.error,
            "attempt": self.attempt,
            "final": self.final,
        }
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.calls != 1:
            out["calls"] = self.calls
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CallRecord:
        """Parse one record; raise ``ValueError``/``TypeError``/``KeyError`` on a bad one."""
        status = data["status"]
        if status not in ("ok", "error", "rejected"):
            raise ValueError(f"bad status {status!r}")
        error = data.get("error")
        labels = data.get("labels")
        if labels is not None and not (
            isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
        ):
            raise ValueError("bad labels")
        ts = data["ts"]
        duration = data["duration_ms"]
        attempt = data.get("attempt", 1)
        if not isinstance(ts, int | float) or not isinstance(duration, int | float):
            raise TypeError("ts and duration_ms must be numbers")
        if not (math.isfinite(ts) and math.isfinite(duration)):
            raise ValueError("ts and duration_ms must be finite")
        if not isinstance(attempt, int) or isinstance(attempt, bool):
            raise TypeError("attempt must be an integer")
        connector, operation = data["connector"], data["operation"]
        if not isinstance(connector, str) or not isinstance(operation, str):
            raise TypeError("connector and operation must be strings")
        calls = data.get("calls", 1)
        if not isinstance(calls, int) or isinstance(calls, bool) or calls < 1:
            raise ValueError("calls must be an integer >= 1")
        if calls != 1 and status != "rejected":
            raise ValueError("only rejected records stand for more than one call")
        return cls(
            ts=float(ts),
            connector=connector,
            operation=operation,
            duration_ms=float(duration),
            status=status,
            error=error if isinstance(error, str) else None,
            attempt=attempt,
            final=bool(data.get("final", True)),
            labels=labels,
            calls=calls,
        )


CircuitState = Literal["closed", "open", "half_open"]
CircuitOverride = Literal["forced_open", "disabled"]


@dataclass(frozen=True, slots=True)
class CircuitRecord:
    """The persisted state of one connector's breaker.

    Every change writes a new record with ``version`` one higher, through the
    store's compare-and-set, so two processes can never both move the breaker.

    Attributes:
        version: 0 for a breaker never written; +1 per change.
        state: ``"closed"``, ``"open"`` or ``"half_open"``. An open breaker whose
            cooldown has passed is half-open without a write.
        failures: consecutive failures counted while closed.
        opened_at: when the breaker last opened (store clock), else ``None``.
        reopen_at: when an open breaker starts admitting probes.
        probes: half-open probe slots in use, as ``(probe id, lease end)``.
        override: ``"forced_open"`` or ``"disabled"`` when an operator set one.
        reason: why it last opened.
        changed_at: when this record was written (store clock).
    """

    version: int = 0
    state: CircuitState = "closed"
    failures: int = 0
    opened_at: float | None = None
    reopen_at: float | None = None
    probes: tuple[tuple[str, float], ...] = ()
    override: CircuitOverride | None = None
    reason: str | None = None
    changed_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready mapping."""
        return {
            "version": self.version,
            "state": self.state,
            "failures": self.failures,
            "opened_at": self.opened_at,
            "reopen_at": self.reopen_at,
            "probes": [list(p) for p in self.probes],
            "override": self.override,
            "reason": self.reason,
            "changed_at": self.changed_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CircuitRecord:
        """Parse a record; raise ``ValueError``/``TypeError``/``KeyError`` on a bad one."""
        state = data["state"]
        if state not in ("closed", "open", "half_open"):
            raise ValueError(f"bad circuit state {state!r}")
        override = data.get("override")
        if override not in (None, "forced_open", "disabled"):
            raise ValueError(f"bad override {override!r}")
        version = data["version"]
        failures = data.get("failures", 0)
        if not isinstance(version, int) or not isinstance(failures, int):
            raise TypeError("version and failures must be integers")
        probes = tuple((str(p[0]), float(p[1])) for p in data.get("probes") or ())
        return cls(
            version=version,
            state=state,
            failures=failures,
            opened_at=_opt_float(data.get("opened_at")),
            reopen_at=_opt_float(data.get("reopen_at")),
            probes=probes,
            override=override,
            reason=data.get("reason") if isinstance(data.get("reason"), str) else None,
            changed_at=float(data.get("changed_at") or 0.0),
        )


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError("expected a number")
    return float(value)


@dataclass(slots=True)
class StoreStats:
    """Counters a store keeps about what it could not read."""

    skipped_lines: int = 0
    torn_lines: int = 0
    notes: list[str] = field(default_factory=list)


def filter_window(
    records: Iterable[CallRecord], *, since: float, until: float | None, connector: str | None
) -> list[CallRecord]:
    """Records inside ``[since, until)`` for ``connector`` (all when ``None``)."""
    return [
        r
        for r in records
        if r.ts >= since
        and (until is None or r.ts < until)
        and (connector is None or r.connector == connector)
    ]
