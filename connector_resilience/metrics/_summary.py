"""Summaries of call records over a window: counts, error rates, percentiles, verdicts."""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from connector_resilience.backends import CALL_NOTES, CallRecord


class HealthStatus(enum.StrEnum):
    """A connector's health verdict."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Summary:
    """Aggregates over a window of call metrics.

    Attributes:
        connector: the connector, or ``None`` for all of them.
        window_s: the window's length.
        total_calls: logical calls (a call and its retries count once).
        errors: logical calls that ended in an error.
        error_rate: ``errors / total_calls`` (0 with no calls).
        attempts: attempts, retries included.
        attempt_errors: attempts that failed.
        attempt_error_rate: ``attempt_errors / attempts``.
        retries: ``attempts - total_calls``.
        rejected: calls refused before they went out (not in the counts above):
            by an open circuit, the rate limiter or the bulkhead.
        p50_ms: median attempt latency.
        p95_ms: 95th percentile attempt latency.
        p99_ms: 99th percentile attempt latency.
        errors_by_type: failed attempts per exception type name.
        last_call_at: time of the newest record, or ``None``.
        refusals: load control's refusals by kind: ``CircuitOpenError``,
            ``RateLimitExceededError``, ``BulkheadFullError`` (the ``rejected``
            calls), ``RetryBudgetExhausted`` (retries refused) and
            ``FallbackUsed`` (calls a fallback answered).
    """

    connector: str | None
    window_s: float
    total_calls: int = 0
    errors: int = 0
    error_rate: float = 0.0
    attempts: int = 0
    attempt_errors: int = 0
    attempt_error_rate: float = 0.0
    retries: int = 0
    rejected: int = 0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    errors_by_type: Mapping[str, int] = field(default_factory=dict)
    last_call_at: float | None = None
    refusals: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready mapping."""
        return {
            "connector": self.connector,
            "window_s": self.window_s,
            "total_calls": self.total_calls,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "attempts": self.attempts,
            "attempt_errors": self.attempt_errors,
            "attempt_error_rate": self.attempt_error_rate,
            "retries": self.retries,
            "rejected": self.rejected,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "errors_by_type": dict(self.errors_by_type),
            "last_call_at": self.last_call_at,
            "refusals": dict(self.refusals),
        }


@dataclass(frozen=True, slots=True)
class HealthReport:
    """A verdict with its reasons, the summary it came from, and the breaker state."""

    connector: str
    status: HealthStatus
    reasons: tuple[str, ...]
    summary: Summary
    circuit_state: str

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready mapping."""
        return {
            "connector": self.connector,
            "status": self.status.value,
            "reasons": list(self.reasons),
            "circuit_state": self.circuit_state,
            **{k: v for k, v in self.summary.as_dict().items() if k != "connector"},
        }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of sorted values, linearly interpolated; 0 if empty."""
    if not sorted_values:
        return 0.0
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = rank - low
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction)


def summarize_records(
    records: Iterable[CallRecord], *, connector: str | None, window_s: float
) -> Summary:
    """Aggregate already-read records (the pure half of :func:`summarize`)."""
    total = errors = attempts = attempt_errors = rejected = 0
    durations: list[float] = []
    by_type: collections.Counter[str] = collections.Counter()
    refusals: collections.Counter[str] = collections.Counter()
    last: float | None = None
    for r in records:
        if last is None or r.ts > last:
            last = r.ts
        if r.status == "rejected":
            refusals[r.error or "CircuitOpenError"] += r.calls
            if r.error not in CALL_NOTES:
                rejected += r.calls
            continue
        attempts += 1
        durations.append(r.duration_ms)
        failed = r.status == "error"
        if failed:
            attempt_errors += 1
            by_type[r.error or "error"] += 1
        if r.final:
            total += 1
            errors += failed
    durations.sort()
    return Summary(
        connector=connector,
        window_s=window_s,
        total_calls=total,
        errors=errors,
        error_rate=errors / total if total else 0.0,
        attempts=attempts,
        attempt_errors=attempt_errors,
        attempt_error_rate=attempt_errors / attempts if attempts else 0.0,
        retries=attempts - total,
        rejected=rejected,
        p50_ms=percentile(durations, 50),
        p95_ms=percentile(durations, 95),
        p99_ms=percentile(durations, 99),
        errors_by_type=dict(by_type),
        last_call_at=last,
        refusals=dict(refusals),
    )
