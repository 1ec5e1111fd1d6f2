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

import logging
import math
from collections.abc import Mapping

from connector_resilience import _clock
from connector_resilience._names import check_name
from connector_resilience.backends import (
    Store,
    open_store,
    store_for_policy,
)
from connector_resilience.circuit import effective_state
from connector_resilience.metrics._buffer import (
    MetricsBuffer,
    add_observer,
    buffer_for,
    flush_metrics,
    remove_observer,
    stop_buffers,
)
from connector_resilience.metrics._summary import (
    HealthReport,
    HealthStatus,
    Summary,
    percentile,
    summarize_records,
)
from connector_resilience.policy import Policy, current_policy

__all__ = [
    "HealthReport",
    "HealthStatus",
    "MetricsBuffer",
    "Summary",
    "add_observer",
    "buffer_for",
    "flush_metrics",
    "health_report",
    "health_status",
    "percentile",
    "record_call",
    "remove_observer",
    "stop_buffers",
    "summarize",
    "summarize_records",
]

logger = logging.getLogger("connector_resilience.metrics")


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
        ValueError: an empty name or one that cannot be stored (a lone
            surrogate), a negative duration, or an unknown status.
    """
    check_name(connector, what="connector name")
    check_name(operation, what="operation name")
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
