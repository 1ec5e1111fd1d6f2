"""OpenTelemetry metrics of this process's calls.

Instruments (on the meter ``connector_resilience``), named after OpenTelemetry's
``http.client.request.duration`` conventions; a Prometheus exporter renders them
as the same names :class:`~connector_resilience.exporters.PrometheusCollector`
uses (``connector_resilience_call_duration_seconds``, ``..._calls_total`` ...)::

    connector_resilience.call.duration   histogram, s        every attempt
    connector_resilience.calls           counter, {call}     calls that ran, final outcome
    connector_resilience.rejected_calls  counter, {call}     refused by an open circuit
    connector_resilience.retries         counter, {retry}    attempts after the first
    connector_resilience.circuit.state   gauge, 1            1 for the current state

Attributes: ``connector``, ``operation``, ``outcome`` (success / error), and when
known ``error.type``, ``http.request.method`` and ``http.response.status_code``;
the circuit gauge has ``connector`` and ``state``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from connector_resilience._extras import require
from connector_resilience.backends import CallRecord, Store
from connector_resilience.circuit import effective_state
from connector_resilience.exporters._common import (
    DURATION_BUCKETS_S,
    PREFIX,
    http_method,
    outcome,
    resolve_store,
    status_code,
)
from connector_resilience.exporters.prometheus import CIRCUIT_STATES
from connector_resilience.metrics import add_observer, remove_observer
from connector_resilience.policy import Policy

__all__ = ["OpenTelemetryMetrics"]

logger = logging.getLogger("connector_resilience.exporters")


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
            description="Calls an open circuit refused without running them.",
        )
        self._retries = meter.create_counter(
            f"{PREFIX}.retries", unit="{retry}", description="Attempts after the first."
        )
        meter.create_observable_gauge(
            f"{PREFIX}.circuit.state",
            callbacks=[self._observe_circuits],
            unit="1",
            description="Circuit breaker state: 1 for the current state, 0 for the others.",
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
                self._rejected.add(record.calls, base)
                continue
            attributes: dict[str, str | int] = {**base, "outcome": outcome(record)}
            if record.status == "error":
                attributes["error.type"] = record.error or "error"
            method = http_method(record)
            if method:
                attributes["http.request.method"] = method
            code = status_code(record)
            if code.isdigit():
                attributes["http.response.status_code"] = int(code)
            self._duration.record(record.duration_ms / 1000.0, attributes)
            if record.final:
                self._calls.add(1, attributes)
            if record.attempt > 1:
                self._retries.add(1, base)

    def _observe_circuits(self, options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        with self._lock:
            connectors = sorted(self._connectors)
        if not connectors:
            return []
        try:
            store = resolve_store(self._store_arg, self._policy)
            records = store.list_circuits()
            now = store.now()
        except Exception as exc:  # an export must go on when the store does not answer
            logger.warning("cannot read circuit states for OpenTelemetry: %s", exc)
            return []
        current = {
            name: effective_state(records[name], now) if name in records else "closed"
            for name in connectors
        }
        return [
            Observation(float(state == current[name]), {"connector": name, "state": state})
            for name in connectors
            for state in CIRCUIT_STATES
        ]
