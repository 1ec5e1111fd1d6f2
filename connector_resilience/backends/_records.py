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


class CallRecord(NamedTuple):
    """One attempt of a call to a connector, or one call refused by an open circuit.

    A named tuple: decorated calls buffer plain tuples of these fields, and
    the background writer turns them into records at C speed.

    Attributes:
        ts: wall-clock end of the attempt, seconds since the epoch.
        connector: connector name.
        operation: operation name (the function name by default).
        duration_ms: how long the attempt took.
        status: ``"ok"``, ``"error"`` or ``"rejected"`` (refused by the breaker).
        error: the exception's type name for an error, else ``None``.
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


class CallAggregate(NamedTuple):
    """The calls of one (connector, operation, status, labels) over one interval.

    Aggregated metrics write one of these per key per interval instead of one
    :class:`CallRecord` per attempt. Rows of the same key merge by adding
    their counts and histograms, so a summary costs the number of rows in
    its window, not the number of calls.

    Attributes:
        ts: start of the interval (a multiple of ``resolution`` since the epoch).
        resolution: the interval's length in seconds (1, 60 or 3600 by default).
        connector: connector name.
        operation: operation name.
        status: ``"ok"``, ``"error"`` or ``"rejected"``.
        attempts: attempts in the interval (for ``rejected``: refused calls).
        finals: of those, the last attempts of their calls.
        last_ts: time of the newest attempt counted.
        histogram: attempt durations as runs of log-bucket counts:
            ``((first bucket index, count, count, ...), ...)`` (see
            ``connector_resilience.metrics.histogram``).
        errors: failed attempts per exception type name (``error`` rows).
        labels: low-cardinality extras such as HTTP method, host and status code.
        dropped: attempts this writer measured but could not keep (a full
            buffer, or a store down for too long), counted here instead.
    """

    ts: float
    resolution: float
    connector: str
    operation: str
    status: CallStatus
    attempts: int
    finals: int
    last_ts: float
    histogram: tuple[tuple[int, ...], ...] = ()
    errors: Mapping[str, int] | None = None
    labels: Mapping[str, str] | None = None
    dropped: int = 0

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON-ready mapping (its JSONL line format)."""
        out: dict[str, Any] = {
            "ts": self.ts,
            "res": self.resolution,
            "connector": self.connector,
            "operation": self.operation,
            "status": self.status,
            "attempts": self.attempts,
            "finals": self.finals,
            "last": self.last_ts,
            "h": self.histogram,
        }
        if self.errors:
            out["errors"] = dict(self.errors)
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.dropped:
            out["dropped"] = self.dropped
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CallAggregate:
        """Parse one row; raise ``ValueError``/``TypeError``/``KeyError`` on a bad one."""
        status = data["status"]
        if status not in ("ok", "error", "rejected"):
            raise ValueError(f"bad status {status!r}")
        ts, resolution, last = data["ts"], data["res"], data["last"]
        for number in (ts, resolution, last):
            if not isinstance(number, int | float) or isinstance(number, bool):
                raise TypeError("ts, res and last must be numbers")
            if not math.isfinite(number):
                raise ValueError("ts, res and last must be finite")
        if not resolution > 0:
            raise ValueError("res must be > 0")
        attempts, finals, dropped = data["attempts"], data["finals"], data.get("dropped", 0)
        for count in (attempts, finals, dropped):
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ValueError("attempts, finals and dropped must be integers >= 0")
        connector, operation = data["connector"], data["operation"]
        if not isinstance(connector, str) or not isinstance(operation, str):
            raise TypeError("connector and operation must be strings")
        runs = data.get("h") or ()
        if not isinstance(runs, list | tuple):
            raise TypeError("h must be a list of runs")
        histogram = tuple(_histogram_run(run) for run in runs)
        errors = data.get("errors")
        if errors is not None and not (
            isinstance(errors, dict) and all(type(v) is int and v >= 0 for v in errors.values())
        ):
            raise ValueError("bad errors")
        labels = data.get("labels")
        if labels is not None and not (
            isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
        ):
            raise ValueError("bad labels")
        return cls(
            ts=float(ts),
            resolution=float(resolution),
            connector=connector,
            operation=operation,
            status=status,
            attempts=attempts,
            finals=finals,
            last_ts=float(last),
            histogram=histogram,
            errors=errors or None,
            labels=labels or None,
            dropped=dropped,
        )


def _histogram_run(run: Any) -> tuple[int, ...]:
    """One run of a stored histogram: a bucket index, then counts (all integers)."""
    if not isinstance(run, list | tuple) or len(run) < 2:
        raise ValueError("a histogram run is [index, count, ...]")
    if not all(type(v) is int for v in run) or any(v < 0 for v in run[1:]):
        raise ValueError("histogram runs hold integers, counts >= 0")
    return tuple(run)


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


def aggregate_tier(resolution: float) -> float:
    """The tier a row of ``resolution`` is kept in: 3600, 60, or 1 for anything finer."""
    if resolution >= 3600:
        return 3600.0
    if resolution >= 60:
        return 60.0
    return 1.0


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
