"""OpenTelemetry metrics of this process's calls.

Instruments (on the meter ``connector_resilience``); OpenTelemetry's Prometheus
exporter renders them as exactly the series
:class:`~connector_resilience.exporters.PrometheusCollector` exports
(``connector_resilience_call_duration_seconds``, ``..._calls_total`` ...), so the
same queries and dashboards work on both pipelines::

    connector_resilience.call.duration   histogram, s        every attempt
    connector_resilience.calls           counter, {call}     calls that ran, final outcome
    connector_resilience.rejected_calls  counter, {call}     refused before they went out
    connector_resilience.retry_budget_refusals  counter, {retry}  retries the budget refused
    connector_resilience.fallbacks       counter, {call}     calls answered by their fallback
    connector_resilience.retries         counter, {retry}    attempts after the first
    connector_resilience.circuit.state   gauge, {state}      1 for the current state

Attributes of the duration: ``connector``, ``operation``, ``outcome`` (success /
error) and, following the HTTP client conventions, ``error.type`` (the status
code for an HTTP status >= 400, else the exception's type name),
``http.request.method``, ``http.response.status_code``, ``server.address`` and
``server.port`` when known. The calls counter has ``connector``, ``operation``,
``outcome``, ``retried`` and ``error.type``; the rejected counter ``connector``,
``operation`` and ``reason`` (``CircuitOpenError``, ``RateLimitExceededError``,
``BulkheadFullError``); the circuit gauge ``connector`` and ``state`` (closed,
open, half_open, forced_open, disabled).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from connector_resilience._extras import require
from connector_resilience.backends import CallRecord, Store
from connector_resilience.exporters._common import (
    CIRCUIT_STATES,
    DURATION_BUCKETS_S,
    PREFIX,
    attempt_attributes,
    call_attributes,
    read_circuit_states,
    refusal_counter,
)
from connector_resilience.metrics import add_observer, remove_observer
from connector_resilience.policy import Policy

__all__ = ["OpenTelemetryMetrics"]


class OpenTelemetryMetrics:
    """Record this process's calls as OpenTelemetry metrics.

    Args:
        meter_provider: the provider to get the meter from (the global one if ``None``).
        store: where circuit states are read when the gauge is observed (the
            policy's store if ``None``).
        policy: settings (the environment's policy if ``None``).

    Raises:
        ConfigurationError: opentelemetry-api is not installed (the message
            names the ``otel`` extra).

    Example::

        from opentelemetry.sdk.metrics import MeterProvider
        provider = MeterProvider(metric_readers=[...])
        telemetry = OpenTelemetryMetrics(meter_provider=provider)
        ...
        telemetry.close()
    """

    def __init__(
        self,
        *,
        meter_provider: Any = None,
        store: Store | str | None = None,
        policy: Policy | None = None,
    ) -> None:
        require("opentelemetry.metrics", "otel")
        from opentelemetry import metrics

        from connector_resilience import __version__

        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        meter = provider.get_meter("connector_resilience", __version__)
        self._store_arg = store
        self._policy = policy
        self._connectors: set[str] = set()
        self._lock = threading.Lock()  # the writer thread adds names while an export reads them
        self._duration = meter.create_histogram(
            f"{PREFIX}.call.duration",
            unit="s",
            description="Duration of each attempt of a call to a connector.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._calls = meter.create_counter(
            f"{PREFIX}.calls", unit="{call}", description="Calls that ran, by final outcome."
        )
        self._rejected = meter.create_counter(
            f"{PREFIX}.rejected_calls",
            unit="{call}",
            description="Calls refused without running them, by the guard that refused.",
        )
        self._notes = {
            "retry_budget_refusals": meter.create_counter(
                f"{PREFIX}.retry_budget_refusals",
                unit="{retry}",
                description="Retries the retry budget refused.",
            ),
            "fallbacks": meter.create_counter(
                f"{PREFIX}.fallbacks",
                unit="{call}",
                description="Calls answered by their fallback.",
            ),
        }
        self._retries = meter.create_counter(
            f"{PREFIX}.retries", unit="{retry}", description="Attempts after the first."
        )
        meter.create_observable_gauge(
            f"{PREFIX}.circuit.state",
            callbacks=[self._observe_circuits],
            unit="{state}",
            description="Circuit breaker state (from the store): 1 for the current state, else 0.",
        )
        add_observer(self.observe)

    def close(self) -> None:
        """Stop recording."""
        remove_observer(self.observe)

    def observe(self, batch: Sequence[CallRecord]) -> None:
        """Record a batch of call records (the metrics observer)."""
        with self._lock:
            self._connectors.update(r.connector for r in batch)
        for record in batch:
            base = {"connector": record.connector, "operation": record.operation}
            if record.status == "rejected":
                counter, reason = refusal_counter(record)
                if counter == "rejected_calls":
                    self._rejected.add(record.calls, {**base, "reason": reason})
                else:
                    self._notes[counter].add(record.calls, base)
                continue
            self._duration.record(record.duration_ms / 1000.0, attempt_attributes(record))
            if record.final:
                self._calls.add(1, call_attributes(record))
            if record.attempt > 1:
                self._retries.add(1, base)

    def _observe_circuits(self, options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        with self._lock:
            connectors = list(self._connectors)
        current = read_circuit_states(self._store_arg, self._policy, connectors)
        return [
            Observation(float(state == shown), {"connector": name, "state": state})
            for name, shown in sorted(current.items())
            for state in CIRCUIT_STATES
        ]
