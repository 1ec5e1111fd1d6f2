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
        error = _opt_str(data.get("error"), "error")
        labels = data.get("labels")
        if labels is not None and not (
            isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
        ):
            raise ValueError("bad labels")
        ts = _finite(data["ts"], "ts")
        duration = _finite(data["duration_ms"], "duration_ms")
        if duration < 0:
            raise ValueError("duration_ms must be >= 0")
        attempt = _count(data.get("attempt", 1), "attempt")
        final = data.get("final", True)
        if not isinstance(final, bool):
            raise TypeError("final must be true or false")
        connector, operation = data["connector"], data["operation"]
        if not isinstance(connector, str) or not isinstance(operation, str):
            raise TypeError("connector and operation must be strings")
        calls = data.get("calls", 1)
        if not isinstance(calls, int) or isinstance(calls, bool) or calls < 1:
            raise ValueError("calls must be an integer >= 1")
        if calls != 1 and status != "rejected":
            raise ValueError("only rejected records stand for more than one call")
        return cls(
            ts=ts,
            connector=connector,
            operation=operation,
            duration_ms=duration,
            status=status,
            error=error,
            attempt=attempt,
            final=final,
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
        opens: times opened since the breaker last closed; the open
            time grows with it (``CB_COOLDOWN_MULTIPLIER``). 0 when never opened.
        probe_successes: half-open probes that succeeded since it last opened.
        probe_failures: half-open probes that failed since it last opened
            (failure-rate models; the consecutive model reopens at the first).
        ramp_from: when the slow start after the last close began (store
            clock), or ``None`` when no slow start was asked for.
        ramp_until: when that slow start ends: from then on every call is admitted.
        reporters: for a quorum (``CB_QUORUM``), the breakers (one per process)
            that reported failures recently, as ``(reporter id, store time)``,
            newest last, at most ``CB_QUORUM`` of them.
        last_failure: ``(exception type, message)`` of the failure that opened
            the breaker, the message with secrets masked, or ``None``.

    A record written before a field existed reads with that field's default,
    which means the behaviour of that time.
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
    opens: int = 0
    probe_successes: int = 0
    probe_failures: int = 0
    ramp_from: float | None = None
    ramp_until: float | None = None
    reporters: tuple[tuple[str, float], ...] = ()
    last_failure: tuple[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready mapping.

        Recovery fields are written only when they differ from their
        defaults, so a record of a breaker that uses none of them is the one
        earlier versions wrote.
        """
        out: dict[str, Any] = {
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
        if self.opens:
            out["opens"] = self.opens
        if self.probe_successes:
            out["probe_successes"] = self.probe_successes
        if self.probe_failures:
            out["probe_failures"] = self.probe_failures
        if self.ramp_from is not None:
            out["ramp_from"] = self.ramp_from
            out["ramp_until"] = self.ramp_until
        if self.reporters:
            out["reporters"] = [list(r) for r in self.reporters]
        if self.last_failure is not None:
            out["last_failure"] = {"type": self.last_failure[0], "message": self.last_failure[1]}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CircuitRecord:
        """Parse a record; raise ``ValueError``/``TypeError``/``KeyError`` on a bad one."""
        state = data["state"]
        if state not in ("closed", "open", "half_open"):
            raise ValueError(f"bad circuit state {state!r}")
        override = data.get("override")
        if override not in (None, "forced_open", "disabled"):
            raise ValueError(f"bad override {override!r}")
        version = _count(data["version"], "version")
        failures = _count(data.get("failures", 0), "failures")
        return cls(
            version=version,
            state=state,
            failures=failures,
            opened_at=_opt_float(data.get("opened_at")),
            reopen_at=_opt_float(data.get("reopen_at")),
            probes=_probes(data.get("probes")),
            override=override,
            reason=_opt_str(data.get("reason"), "reason"),
            changed_at=_opt_float(data.get("changed_at")) or 0.0,
            **_recovery_fields(data),
        )


#: Bounds on what a circuit record may hold, so a damaged or hostile record
#: cannot make every process carry megabytes around.
MAX_REPORTERS = 64
MAX_REPORTER_ID = 200
MAX_FAILURE_TYPE = 200
MAX_FAILURE_MESSAGE = 500


def _recovery_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The recovery fields of a circuit record (absent: their defaults), strictly checked."""
    out: dict[str, Any] = {}
    for name in ("opens", "probe_successes", "probe_failures"):
        if name in data:
            out[name] = _count(data[name], name)
    ramp_from, ramp_until = data.get("ramp_from"), data.get("ramp_until")
    if ramp_from is not None or ramp_until is not None:
        start, end = _finite(ramp_from, "ramp_from"), _finite(ramp_until, "ramp_until")
        if end < start:
            raise ValueError("ramp_until must not be before ramp_from")
        out["ramp_from"], out["ramp_until"] = start, end
    reporters = data.get("reporters")
    if reporters is not None:
        if not isinstance(reporters, list) or len(reporters) > MAX_REPORTERS:
            raise ValueError(f"reporters must be a list of at most {MAX_REPORTERS} entries")
        out["reporters"] = tuple(_reporter(entry) for entry in reporters)
    failure = data.get("last_failure")
    if failure is not None:
        if not isinstance(failure, dict):
            raise TypeError("last_failure must be an object")
        kind, message = failure.get("type"), failure.get("message")
        if not isinstance(kind, str) or not isinstance(message, str):
            raise TypeError("last_failure needs a string type and message")
        if not kind or len(kind) > MAX_FAILURE_TYPE or len(message) > MAX_FAILURE_MESSAGE:
            raise ValueError("last_failure type or message empty or too long")
        out["last_failure"] = (kind, message)
    return out


def _reporter(entry: Any) -> tuple[str, float]:
    if not isinstance(entry, list) or len(entry) != 2:
        raise ValueError("a reporter is [id, time]")
    reporter, at = entry
    if not isinstance(reporter, str) or not reporter or len(reporter) > MAX_REPORTER_ID:
        raise ValueError("a reporter id is a non-empty string")
    return reporter, _finite(at, "reporter time")


# Strict field readers: a stored value no writer produces is refused, never
# coerced (a NaN reopen time would keep a breaker open for ever, "no" read as
# true, ``true`` as the integer 1).


def _finite(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite")
    return number


def _opt_float(value: Any) -> float | None:
    return None if value is None else _finite(value, "a time")


def _count(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer")
    if value < 0:
        raise ValueError(f"{name} must be >= 0")
    return value


def _opt_str(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    return value


def _probes(value: Any) -> tuple[tuple[str, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise TypeError("probes must be a list")
    out: list[tuple[str, float]] = []
    for probe in value:
        if not isinstance(probe, list | tuple) or len(probe) != 2 or not isinstance(probe[0], str):
            raise TypeError("a probe is [id, lease end]")
        out.append((probe[0], _finite(probe[1], "a probe's lease end")))
    return tuple(out)


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
