"""Prometheus collectors (prometheus_client's custom collector API).

Two views, for two jobs, with no series name in common:

* :class:`PrometheusCollector` counts what **this process** does, fed by every
  batch of call records it writes (``metrics.add_observer``): true counters and
  a duration histogram, for ``rate()`` and ``histogram_quantile()``. Register
  it in the registry your service already exposes. Its labels are the ones
  OpenTelemetry's Prometheus exporter writes for :class:`OpenTelemetryMetrics`,
  so one set of queries and dashboards serves both.
* :class:`PrometheusStoreCollector` reports what **the store** says over the
  health window, for every process sharing it: verdicts, breaker states,
  windowed counts and percentiles, all gauges named ``connector_resilience_store_*``
  (a window's count goes down as calls leave it, so it must not pose as a
  counter). The dashboard's ``/metrics`` serves it.

Metric names (labels in braces; every series is in docs/operations.md)::

    connector_resilience_call_duration_seconds  histogram {connector, operation, outcome,
        error_type, http_request_method, http_response_status_code, server_address, server_port}
    connector_resilience_calls_total            counter   {connector, operation, outcome,
                                                            retried, error_type}
    connector_resilience_rejected_calls_total   counter   {connector, operation, reason}
    connector_resilience_retry_budget_refusals_total  counter  {connector, operation}
    connector_resilience_fallbacks_total        counter   {connector, operation}
    connector_resilience_retries_total          counter   {connector, operation}
    connector_resilience_circuit_state          gauge     {connector, state}
    connector_resilience_store_*                gauges    (store view)
"""

from __future__ import annotations

import bisect
import collections
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from connector_resilience._extras import require
from connector_resilience.backends import CallRecord, Store
from connector_resilience.exporters._common import (
    ATTEMPT_ATTRIBUTES,
    CALL_ATTRIBUTES,
    CIRCUIT_STATES,
    DURATION_BUCKETS_S,
    OPERATION_ATTRIBUTES,
    PREFIX,
    REJECTED_ATTRIBUTES,
    attempt_attributes,
    call_attributes,
    label_name,
    read_circuit_states,
    refusal_counter,
    resolve_store,
)
from connector_resilience.metrics import HealthStatus, add_observer, remove_observer
from connector_resilience.metrics.overview import StoreView, read_view
from connector_resilience.policy import Policy, current_policy

__all__ = [
    "CIRCUIT_STATES",
    "PrometheusCollector",
    "PrometheusStoreCollector",
    "store_view_families",
]

_ATTEMPT_LABELS = [label_name(a) for a in ATTEMPT_ATTRIBUTES]
_CALL_LABELS = [label_name(a) for a in CALL_ATTRIBUTES]
_OPERATION_LABELS = list(OPERATION_ATTRIBUTES)


def _key(attributes: dict[str, str | int], names: Sequence[str]) -> tuple[str, ...]:
    """Label values in ``names`` order; an absent attribute is ``""`` (Prometheus: no label)."""
    return tuple(str(attributes.get(name, "")) for name in names)


class _Histogram:
    """Per-bucket counts (the last is +Inf) and the sum, for one label set."""

    __slots__ = ("buckets", "total")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.total = 0.0


class PrometheusCollector:
    """Counters and a duration histogram of this process's calls.

    Args:
        store: where circuit states are read at scrape time (the policy's store
            if ``None``).
        policy: settings (the environment's policy if ``None``).
        buckets: histogram upper bounds in seconds.

    Raises:
        ConfigurationError: prometheus_client is not installed (the message
            names the ``prometheus`` extra).

    Example::

        from prometheus_client import REGISTRY, start_http_server

        REGISTRY.register(PrometheusCollector())
        start_http_server(9100)  # or your framework's /metrics
    """

    def __init__(
        self,
        *,
        store: Store | str | None = None,
        policy: Policy | None = None,
        buckets: Sequence[float] = DURATION_BUCKETS_S,
    ) -> None:
        require("prometheus_client", "prometheus")
        self._store_arg = store
        self._policy = policy
        self._bounds = tuple(sorted(buckets))
        self._lock = threading.Lock()
        self._calls: collections.Counter[tuple[str, ...]] = collections.Counter()
        # Refused calls by (connector, operation, reason); notes by metric suffix.
        self._rejected: collections.Counter[tuple[str, ...]] = collections.Counter()
        self._notes: dict[str, collections.Counter[tuple[str, ...]]] = {
            "retry_budget_refusals": collections.Counter(),
            "fallbacks": collections.Counter(),
        }
        self._retries: collections.Counter[tuple[str, ...]] = collections.Counter()
        self._durations: dict[tuple[str, ...], _Histogram] = {}
        self._connectors: set[str] = set()
        add_observer(self.observe)

    def close(self) -> None:
        """Stop counting (the counts so far stay readable)."""
        remove_observer(self.observe)

    def observe(self, batch: Sequence[CallRecord]) -> None:
        """Count a batch of records (the metrics observer; called by the writer thread)."""
        with self._lock:
            for record in batch:
                self._connectors.add(record.connector)
                operation_key = (record.connector, record.operation)
                if record.status == "rejected":
                    counter, reason = refusal_counter(record)
                    if counter == "rejected_calls":
                        self._rejected[(*operation_key, reason)] += record.calls
                    else:
                        self._notes[counter][operation_key] += record.calls
                    continue
                if record.attempt > 1:
                    self._retries[operation_key] += 1
                if record.final:
                    self._calls[_key(call_attributes(record), CALL_ATTRIBUTES)] += 1
                key = _key(attempt_attributes(record), ATTEMPT_ATTRIBUTES)
                histogram = self._durations.get(key)
                if histogram is None:
                    histogram = self._durations[key] = _Histogram(len(self._bounds) + 1)
                seconds = record.duration_ms / 1000.0
                histogram.buckets[bisect.bisect_left(self._bounds, seconds)] += 1
                histogram.total += seconds

    def describe(self) -> list[Any]:
        """The families, without samples (so registering reads no store)."""
        return list(self._families(with_samples=False))

    def collect(self) -> list[Any]:
        """The families with their current samples."""
        return list(self._families(with_samples=True))

    def _families(self, *, with_samples: bool) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        duration = HistogramMetricFamily(
            f"{PREFIX}_call_duration_seconds",
            "Duration of each attempt of a call to a connector (retries are attempts too).",
            labels=_ATTEMPT_LABELS,
            unit="seconds",
        )
        calls = CounterMetricFamily(
            f"{PREFIX}_calls",
            "Calls to a connector that ran, by final outcome (a call and its retries count once).",
            labels=_CALL_LABELS,
        )
        rejected = CounterMetricFamily(
            f"{PREFIX}_rejected_calls",
            "Calls refused without running them (reason: breaker, rate limiter or bulkhead).",
            labels=list(REJECTED_ATTRIBUTES),
        )
        notes = {
            "retry_budget_refusals": CounterMetricFamily(
                f"{PREFIX}_retry_budget_refusals",
                "Retries the retry budget refused (the call ended with its last outcome).",
                labels=_OPERATION_LABELS,
            ),
            "fallbacks": CounterMetricFamily(
                f"{PREFIX}_fallbacks",
                "Calls answered by their fallback.",
                labels=_OPERATION_LABELS,
            ),
        }
        retries = CounterMetricFamily(
            f"{PREFIX}_retries",
            "Attempts after the first (each retry of a call).",
            labels=_OPERATION_LABELS,
        )
        state = GaugeMetricFamily(
            f"{PREFIX}_circuit_state",
            "Circuit breaker state (read from the store): 1 for the current state, else 0.",
            labels=["connector", "state"],
        )
        if with_samples:
            with self._lock:
                histograms = {k: (list(h.buckets), h.total) for k, h in self._durations.items()}
                call_counts = dict(self._calls)
                rejected_counts = dict(self._rejected)
                note_counts = {name: dict(counts) for name, counts in self._notes.items()}
                retry_counts = dict(self._retries)
                connectors = sorted(self._connectors)
            for key, (buckets, total) in sorted(histograms.items()):
                cumulative, running = [], 0
                for bound, n in zip((*self._bounds, float("inf")), buckets, strict=True):
                    running += n
                    cumulative.append((_bound(bound), running))
                duration.add_metric(list(key), cumulative, total)
            for key, n in sorted(call_counts.items()):
                calls.add_metric(list(key), n)
            for key, n in sorted(rejected_counts.items()):
                rejected.add_metric(list(key), n)
            for name, counts in note_counts.items():
                for key, n in sorted(counts.items()):
                    notes[name].add_metric(list(key), n)
            for key, n in sorted(retry_counts.items()):
                retries.add_metric(list(key), n)
            _add_circuit_states(
                state, read_circuit_states(self._store_arg, self._policy, connectors)
            )
        yield from (duration, calls, rejected, *notes.values(), retries, state)


class PrometheusStoreCollector:
    """Every connector of a store over the health window, as gauges.

    Args:
        store: the store to read (the policy's store if ``None``).
        policy: settings (the environment's policy if ``None``).
        window_s: the window (``CONNECTOR_HEALTH_WINDOW_S`` if ``None``).
        source: where each scrape's view comes from instead of reading the store
            (the dashboard passes its cached view).

    Raises:
        ConfigurationError: prometheus_client is not installed.
    """

    def __init__(
        self,
        *,
        store: Store | str | None = None,
        policy: Policy | None = None,
        window_s: float | None = None,
        source: Callable[[], StoreView] | None = None,
    ) -> None:
        require("prometheus_client", "prometheus")
        if source is None:
            resolved_policy = policy or current_policy()
            resolved_store = resolve_store(store, resolved_policy)
            window = window_s if window_s is not None else resolved_policy.health.window_s

            def source() -> StoreView:
                return read_view(store=resolved_store, policy=resolved_policy, window_s=window)

        self._source = source

    def describe(self) -> list[Any]:
        """The families, without samples."""
        return store_view_families(None)

    def collect(self) -> list[Any]:
        """The families for the store as it is now."""
        return store_view_families(self._source())


def store_view_families(view: StoreView | None) -> list[Any]:
    """Prometheus metric families for a store view (empty families for ``None``)."""
    from prometheus_client.core import GaugeMetricFamily

    window = f" over the last {view.window_s:g}s" if view is not None else " over the window"

    def gauge(name: str, text: str, labels: list[str]) -> Any:
        return GaugeMetricFamily(f"{PREFIX}_store_{name}", text, labels=labels)

    health = gauge(
        "health_status",
        "Health verdict: 1 for the current one (healthy, degraded, down), 0 for the others.",
        ["connector", "status"],
    )
    state = gauge(
        "circuit_state",
        "Circuit breaker state in the store: 1 for the current state, 0 for the others.",
        ["connector", "state"],
    )
    calls = gauge("window_calls", f"Calls that ran{window}.", ["connector"])
    failed = gauge(
        "window_failed_calls", f"Calls that failed after retries{window}.", ["connector"]
    )
    attempts = gauge("window_attempts", f"Attempts, retries included{window}.", ["connector"])
    retries = gauge("window_retries", f"Retries{window}.", ["connector"])
    rejected = gauge(
        "window_rejected_calls", f"Calls refused before they went out{window}.", ["connector"]
    )
    error_ratio = gauge(
        "window_attempt_error_ratio",
        f"Failed attempts / attempts{window} (what the verdict judges).",
        ["connector"],
    )
    latency = gauge(
        "window_latency_seconds",
        f"Attempt latency percentiles{window} (percentile = 50, 95, 99).",
        ["connector", "percentile"],
    )
    last_call = gauge(
        "last_call_timestamp_seconds",
        "Unix time of the newest call record in the window (data freshness).",
        ["connector"],
    )
    families = [
        health,
        state,
        calls,
        failed,
        attempts,
        retries,
        rejected,
        error_ratio,
        latency,
        last_call,
    ]
    if view is None:
        return families
    for c in view.connectors:
        name, s = c.connector, c.summary
        for status in HealthStatus:
            health.add_metric([name, status.value], float(c.status is status))
        _add_circuit_states(state, {name: c.override or c.report.circuit_state})
        calls.add_metric([name], s.total_calls)
        failed.add_metric([name], s.errors)
        attempts.add_metric([name], s.attempts)
        retries.add_metric([name], s.retries)
        rejected.add_metric([name], s.rejected)
        error_ratio.add_metric([name], s.attempt_error_rate)
        for percentile, ms in (("50", s.p50_ms), ("95", s.p95_ms), ("99", s.p99_ms)):
            latency.add_metric([name, percentile], ms / 1000.0)
        if s.last_call_at is not None:
            last_call.add_metric([name], s.last_call_at)
    return families


def _add_circuit_states(family: Any, states: dict[str, str]) -> None:
    for connector, current in sorted(states.items()):
        for state in CIRCUIT_STATES:
            family.add_metric([connector, state], float(state == current))


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))
