"""Call metrics: record, summarise over a window, and judge health.

Decorated calls record one entry per attempt (with its attempt number, and
``final`` on the last attempt of a call) into an in-memory buffer that a
background thread writes to the store every ``CONNECTOR_METRICS_FLUSH_S``; a
summary flushes this process's buffer first, so what you just called is in it.

Health rule, for a connector over the window (``CONNECTOR_HEALTH_WINDOW_S``):

* **down** if its circuit is open (or half-open, or forced open), or if at least
  ``CONNECTOR_HEALTH_MIN_CALLS`` attempts were made and the attempt error rate
  is at or above ``CONNECTOR_HEALTH_DOWN_ERROR_RATE`` (0.9: almost all fail);
* **degraded** if p95 latency is above ``CONNECTOR_HEALTH_P95_MS`` or the
  attempt error rate is above ``CONNECTOR_HEALTH_ERROR_RATE``;
* **healthy** otherwise, including when there were no calls.

Health judges the dependency, so it counts every attempt, including failures
that a retry then hid from the caller.
"""

from __future__ import annotations

import atexit
import collections
import enum
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connector_resilience import _clock
from connector_resilience._faults import FaultLog
from connector_resilience.backends import (
    CallRecord,
    CallStatus,
    Store,
    open_store,
    store_for_policy,
)
from connector_resilience.circuit import effective_state
from connector_resilience.policy import Policy, current_policy

__all__ = [
    "HealthReport",
    "HealthStatus",
    "MetricsBuffer",
    "Summary",
    "add_observer",
    "flush_metrics",
    "health_report",
    "health_status",
    "percentile",
    "record_call",
    "remove_observer",
    "summarize",
    "summarize_records",
]

logger = logging.getLogger("connector_resilience.metrics")


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
        rejected: calls an open circuit refused (not in the counts above).
        p50_ms: median attempt latency.
        p95_ms: 95th percentile attempt latency.
        p99_ms: 99th percentile attempt latency.
        errors_by_type: failed attempts per exception type name.
        last_call_at: time of the newest record, or ``None``.
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
    last: float | None = None
    for r in records:
        if last is None or r.ts > last:
            last = r.ts
        if r.status == "rejected":
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
    )


# Buffered writing ----------------------------------------------------------

# (ts, connector, operation, duration_ms, status, error, attempt, final, labels):
# the fields of CallRecord, as a tuple because building it is the hot path.
MetricRow = tuple[
    float, str, str, float, CallStatus, "str | None", int, bool, "Mapping[str, str] | None"
]


class MetricsBuffer:
    """Metrics waiting to be written to one store, by a background thread.

    ``rows.append`` is the whole cost a call pays. Faults are logged once per
    burst; while the store is unreachable up to ``max_pending`` rows are kept,
    after which the oldest are dropped and counted in ``dropped``.
    """

    def __init__(self, store: Store, *, flush_interval_s: float, max_pending: int) -> None:
        self.store = store
        self.rows: collections.deque[MetricRow] = collections.deque()
        # (connector, operation, labels) per refused call; counted at flush.
        self.rejections: collections.deque[tuple[str, str, Mapping[str, str] | None]] = (
            collections.deque()
        )
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.dropped = 0
        self.written = 0
        self._dropping = False
        self._retry: list[CallRecord] = []
        self._flush_lock = threading.Lock()
        self._faults = FaultLog("writing metrics", store.url)
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def start(self) -> None:
        """Start the background writer (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="connector-resilience-metrics", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> bool:
        """Write everything pending now; True if the store took it all."""
        with self._flush_lock:
            batch = self._retry
            self._retry = []
            rows = self.rows
            pop = rows.popleft
            try:
                while True:
                    batch.append(CallRecord(*pop()))
            except IndexError:
                pass
            batch.extend(self._count_rejections())
            if not batch:
                return True
            try:
                self.store.append_calls(batch)
            except Exception as exc:
                self._faults.fault(exc)
                excess = len(batch) - self.max_pending
                if excess > 0:
                    if not self._dropping:
                        self._dropping = True
                        logger.warning(
                            "store %s unreachable: %d metric(s) buffered, dropping the oldest "
                            "from now on (counted in MetricsBuffer.dropped)",
                            self._faults.url,
                            self.max_pending,
                        )
                    self.dropped += excess
                    del batch[:excess]
                self._retry = batch
                return False
            if self._dropping:
                self._dropping = False
                logger.warning(
                    "store %s: %d metric(s) were dropped while it was unreachable",
                    self._faults.url,
                    self.dropped,
                )
            self._faults.ok()
            self.written += len(batch)
            _notify(batch)
            return True

    def _count_rejections(self) -> list[CallRecord]:
        """One ``rejected`` record per (connector, operation, labels), with its count."""
        counts: dict[tuple[str, str, int], list[Any]] = {}
        pop = self.rejections.popleft
        try:
            while True:
                connector, operation, labels = pop()
                key = (connector, operation, id(labels))
                entry = counts.get(key)
                if entry is None:
                    counts[key] = [connector, operation, labels, 1]
                else:
                    entry[3] += 1
        except IndexError:
            pass
        if not counts:
            return []
        now = _clock.wall()
        return [
            CallRecord(now, c, o, 0.0, "rejected", "CircuitOpenError", 0, True, labels, n)
            for c, o, labels, n in counts.values()
        ]

    def stop(self) -> None:
        """Stop the background writer after a last flush."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.flush()


_observers: list[Callable[[Sequence[CallRecord]], object]] = []


def add_observer(observer: Callable[[Sequence[CallRecord]], object]) -> None:
    """Call ``observer`` with every batch of records this process writes to a store.

    Exporters (Prometheus, OpenTelemetry) use it to count what this process
    did. It runs in the background writer thread, after the store took the
    batch; an observer that raises is logged and kept.
    """
    if observer not in _observers:
        _observers.append(observer)


def remove_observer(observer: Callable[[Sequence[CallRecord]], object]) -> None:
    """Stop calling ``observer``."""
    if observer in _observers:
        _observers.remove(observer)


def _notify(batch: Sequence[CallRecord]) -> None:
    for observer in _observers.copy():  # an observer may remove itself
        try:
            observer(batch)
        except Exception:
            logger.exception("metrics observer %r failed; it stays registered", observer)


_buffers: dict[int, MetricsBuffer] = {}
_buffers_lock = threading.Lock()


def buffer_for(store: Store, policy: Policy) -> MetricsBuffer:
    """The process's buffer in front of ``store`` (started on first use)."""
    buffer = _buffers.get(id(store))
    if buffer is None or buffer.store is not store:
        with _buffers_lock:
            buffer = _buffers.get(id(store))
            if buffer is None or buffer.store is not store:
                buffer = MetricsBuffer(
                    store,
                    flush_interval_s=policy.store.flush_interval_s,
                    max_pending=policy.store.buffer_max,
                )
                buffer.start()
                _buffers[id(store)] = buffer
    return buffer


def flush_metrics() -> bool:
    """Write every buffered metric now; True if every store took them."""
    took_all = True
    for buffer in list(_buffers.values()):
        took_all = buffer.flush() and took_all  # flush every buffer, even after a failure
    return took_all


def stop_buffers() -> None:
    """Flush and stop every buffer (at exit, and between tests)."""
    with _buffers_lock:
        buffers = list(_buffers.values())
        _buffers.clear()
    for buffer in buffers:
        buffer.stop()


def _restart_after_fork() -> None:
    # The writer threads did not survive the fork. Engines keep their buffers'
    # deques, so each buffer restarts in place; what was pending belongs to the
    # parent, which still writes it, so the child drops its copy.
    for buffer in _buffers.values():
        buffer.rows.clear()
        buffer.rejections.clear()
        buffer._retry = []
        buffer._flush_lock = threading.Lock()
        buffer._wake = threading.Event()
        buffer._thread = None
        buffer._pid = os.getpid()
        buffer.start()


os.register_at_fork(after_in_child=_restart_after_fork)
atexit.register(stop_buffers)


# Public functions ------------------------------------------------------------


def _resolve(
    store: Store | str | None, policy: Policy | None, connector: str | None = None
) -> tuple[Store, Policy]:
    """The store to use: given, or the connector's own (it may override the store)."""
    policy = policy or current_policy()
    if store is None:
        view = policy.for_connector(connector) if connector is not None else policy
        return store_for_policy(view), policy
    if isinstance(store, str):
        return open_store(store), policy
    return store, policy


def record_call(
    connector: str,
    operation: str,
    duration_ms: float,
    status: str,
    error: str | BaseException | None = None,
    *,
    attempt: int = 1,
    final: bool = True,
    labels: Mapping[str, str] | None = None,
    store: Store | str | None = None,
    policy: Policy | None = None,
) -> None:
    """Record one call (or one attempt) of ``operation`` on ``connector``.

    Written to the store before returning; if the store cannot take it, the
    record waits in the background buffer and the fault is logged, never raised.

    Args:
        connector: connector name.
        operation: operation name.
        duration_ms: how long it took, >= 0.
        status: ``"ok"`` or ``"error"``.
        error: the exception or its type name, for an error.
        attempt: attempt number, from 1.
        final: whether this was the call's last attempt.
        labels: low-cardinality extras (HTTP method, host, status code).
        store: a store or URL (the policy's store if ``None``).
        policy: settings (the environment's policy if ``None``).

    Raises:
        ValueError: an empty name, a negative duration, or an unknown status.
    """
    if not connector or not operation:
        raise ValueError("connector and operation must be non-empty strings")
    if status not in ("ok", "error"):
        raise ValueError(f"status must be 'ok' or 'error', not {status!r}")
    if not (duration_ms >= 0 and math.isfinite(duration_ms)):
        raise ValueError(f"duration_ms must be a finite number >= 0, not {duration_ms!r}")
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, not {attempt!r}")
    if isinstance(error, BaseException):
        error = type(error).__name__
    resolved, policy = _resolve(store, policy, connector)
    buffer = buffer_for(resolved, policy)
    # Through the buffer, so that a store fault keeps the record for a later write.
    buffer.rows.append(
        (
            _clock.wall(),
            connector,
            operation,
            float(duration_ms),
            "ok" if status == "ok" else "error",
            error,
            attempt,
            final,
            dict(labels) if labels else None,
        )
    )
    buffer.flush()


def summarize(
    connector: str | None = None,
    *,
    window_s: float = 3600,
    store: Store | str | None = None,
    policy: Policy | None = None,
    now: float | None = None,
) -> Summary:
    """Aggregate the last ``window_s`` seconds of metrics.

    Args:
        connector: one connector, or ``None`` for all.
        window_s: window length in seconds.
        store: a store or URL (the policy's store if ``None``).
        policy: settings (the environment's policy if ``None``).
        now: end of the window (now if ``None``).

    Returns:
        A :class:`Summary` with total_calls, errors, error_rate, p50_ms,
        p95_ms, p99_ms and more.
    """
    if not window_s > 0:
        raise ValueError(f"window_s must be > 0, not {window_s!r}")
    resolved, policy = _resolve(store, policy, connector)
    flush_metrics()
    end = _clock.wall() if now is None else now
    records = resolved.read_calls(since=end - window_s, until=end + 1e-6, connector=connector)
    return summarize_records(records, connector=connector, window_s=window_s)


def health_report(
    connector: str,
    *,
    window_s: float | None = None,
    store: Store | str | None = None,
    policy: Policy | None = None,
    now: float | None = None,
) -> HealthReport:
    """The health verdict for ``connector`` with the reasons behind it (rule in the module doc)."""
    resolved, policy = _resolve(store, policy, connector)
    view = policy.for_connector(connector)
    health = view.health
    window = health.window_s if window_s is None else window_s
    summary = summarize(connector, window_s=window, store=resolved, policy=policy, now=now)
    try:
        record = resolved.get_circuit(connector)
    except Exception:
        logger.warning("cannot read the circuit of %r; judging on metrics alone", connector)
        record = None
    circuit = effective_state(record, resolved.now()) if record is not None else "closed"
    reasons: list[str] = []
    status = HealthStatus.HEALTHY
    rate = summary.attempt_error_rate
    if circuit != "closed":
        status = HealthStatus.DOWN
        reasons.append(f"circuit {circuit}")
    if summary.attempts >= health.min_calls and rate >= health.down_error_rate:
        status = HealthStatus.DOWN
        reasons.append(f"error rate {rate:.0%} >= {health.down_error_rate:.0%}")
    if status is not HealthStatus.DOWN:
        if summary.p95_ms > health.p95_ms:
            status = HealthStatus.DEGRADED
            reasons.append(f"p95 {summary.p95_ms:.0f} ms > {health.p95_ms:.0f} ms")
        if rate > health.error_rate:
            status = HealthStatus.DEGRADED
            reasons.append(f"error rate {rate:.1%} > {health.error_rate:.1%}")
    return HealthReport(connector, status, tuple(reasons), summary, circuit)


def health_status(
    connector: str,
    *,
    window_s: float | None = None,
    store: Store | str | None = None,
    policy: Policy | None = None,
    now: float | None = None,
) -> HealthStatus:
    """``healthy``, ``degraded`` or ``down`` for ``connector`` (rule in the module doc).

    ``window_s`` defaults to ``CONNECTOR_HEALTH_WINDOW_S`` (3600).
    """
    return health_report(connector, window_s=window_s, store=store, policy=policy, now=now).status
