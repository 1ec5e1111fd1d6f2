"""Prometheus and OpenTelemetry exporters, fed by real decorated calls.

The Prometheus side reads a real ``prometheus_client`` registry (and its text
format); the OpenTelemetry side a real SDK ``MeterProvider`` with an in-memory reader.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connector_resilience import ConfigurationError
from connector_resilience.backends import CallRecord
from connector_resilience.exporters import (
    OpenTelemetryMetrics,
    PrometheusCollector,
    PrometheusStoreCollector,
)
from tests._ops import Connectors, policy_for


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def prometheus(url: str) -> Iterator[tuple[CollectorRegistry, PrometheusCollector]]:
    registry = CollectorRegistry()
    collector = PrometheusCollector(store=url, policy=policy_for(url))
    registry.register(collector)
    yield registry, collector
    collector.close()


def test_prometheus_counts_calls_retries_rejections_and_durations(
    url: str, prometheus: tuple[CollectorRegistry, PrometheusCollector]
) -> None:
    registry, _ = prometheus
    Connectors(url).run(billing=10, search=4, inventory=5)
    value = registry.get_sample_value

    def labels(connector: str, operation: str, outcome: str) -> dict[str, str]:
        return {
            "connector": connector,
            "operation": operation,
            "outcome": outcome,
            "method": "",
            "status_class": "",
        }

    assert value("connector_resilience_calls_total", labels("billing", "charge", "success")) == 10
    assert value("connector_resilience_calls_total", labels("search", "query", "success")) == 4
    assert value("connector_resilience_calls_total", labels("inventory", "get_item", "error")) == 3
    op = {"connector": "inventory", "operation": "get_item"}
    assert value("connector_resilience_rejected_calls_total", op) == 2
    assert value("connector_resilience_retries_total", op) == 3
    assert (
        value(
            "connector_resilience_retries_total",
            {**op, "connector": "search", "operation": "query"},
        )
        == 4
    )
    # Every attempt is observed, failed ones under outcome="error".
    billing = labels("billing", "charge", "success")
    assert value("connector_resilience_call_duration_seconds_count", billing) == 10
    assert (
        value("connector_resilience_call_duration_seconds_bucket", {**billing, "le": "+Inf"}) == 10
    )
    assert (
        value("connector_resilience_call_duration_seconds_bucket", {**billing, "le": "10.0"}) == 10
    )
    assert (value("connector_resilience_call_duration_seconds_sum", billing) or 0) < 1.0
    assert (
        value(
            "connector_resilience_call_duration_seconds_count", labels("search", "query", "error")
        )
        == 4
    )
    # One circuit series per state, the current one at 1.
    assert (
        value("connector_resilience_circuit_state", {"connector": "inventory", "state": "open"})
        == 1
    )
    assert (
        value("connector_resilience_circuit_state", {"connector": "inventory", "state": "closed"})
        == 0
    )
    assert (
        value("connector_resilience_circuit_state", {"connector": "billing", "state": "closed"})
        == 1
    )


def test_prometheus_text_is_valid_and_low_cardinality(
    url: str, prometheus: tuple[CollectorRegistry, PrometheusCollector]
) -> None:
    registry, _ = prometheus
    Connectors(url).run()
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["connector_resilience_call_duration_seconds"].type == "histogram"
    assert families["connector_resilience_calls"].type == "counter"
    assert families["connector_resilience_rejected_calls"].type == "counter"
    assert families["connector_resilience_retries"].type == "counter"
    assert families["connector_resilience_circuit_state"].type == "gauge"
    allowed = {"connector", "operation", "outcome", "method", "status_class", "state", "le"}
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= allowed
            assert not any("/" in v or ":" in v for v in sample.labels.values())  # no URLs
    assert "sqlite" not in text


def test_prometheus_labels_http_method_and_status_class_from_record_labels(
    prometheus: tuple[CollectorRegistry, PrometheusCollector], url: str
) -> None:
    from connector_resilience import resilient

    registry, _ = prometheus

    class Response:
        status = 503

    @resilient("github", policy=policy_for(url), labels={"method": "get", "host": "api.github.com"})
    def fetch() -> Response:
        return Response()

    fetch()
    from connector_resilience.metrics import flush_metrics

    assert flush_metrics()
    samples = [
        s
        for f in registry.collect()
        if f.name == "connector_resilience_calls"
        for s in f.samples
        if s.labels["connector"] == "github"
    ]
    (sample,) = samples
    assert sample.labels["method"] == "GET"
    assert "host" not in sample.labels  # a host can be unbounded; the connector names it


def test_prometheus_status_class_comes_from_the_status_code_label(
    prometheus: tuple[CollectorRegistry, PrometheusCollector],
) -> None:
    registry, collector = prometheus
    # The HTTP middleware records "status_code"; the exporter keeps only its class.
    for code in ("503", "504", "200"):
        collector.observe(
            [
                CallRecord(
                    ts=1.0,
                    connector="github",
                    operation="GET /repos",
                    duration_ms=5.0,
                    status="error" if code != "200" else "ok",
                    error="HTTPError" if code != "200" else None,
                    labels={"method": "get", "status_code": code, "host": "api.github.com"},
                )
            ]
        )
    base = {"connector": "github", "operation": "GET /repos", "method": "GET"}
    calls = "connector_resilience_calls_total"
    assert (
        registry.get_sample_value(calls, {**base, "outcome": "error", "status_class": "5xx"}) == 2
    )
    assert (
        registry.get_sample_value(calls, {**base, "outcome": "success", "status_class": "2xx"}) == 1
    )


def test_prometheus_close_stops_counting(
    url: str, prometheus: tuple[CollectorRegistry, PrometheusCollector]
) -> None:
    registry, collector = prometheus
    Connectors(url).run(billing=2, search=0, inventory=0)
    collector.close()
    Connectors(url).run(billing=5, search=0, inventory=0)
    labels = {
        "connector": "billing",
        "operation": "charge",
        "outcome": "success",
        "method": "",
        "status_class": "",
    }
    assert registry.get_sample_value("connector_resilience_calls_total", labels) == 2


def test_store_collector_reports_verdicts_breakers_and_window_figures(url: str) -> None:
    Connectors(url).run()
    registry = CollectorRegistry()
    registry.register(PrometheusStoreCollector(store=url, policy=policy_for(url)))
    value = registry.get_sample_value
    assert (
        value("connector_resilience_health_status", {"connector": "search", "status": "degraded"})
        == 1
    )
    assert (
        value("connector_resilience_health_status", {"connector": "search", "status": "healthy"})
        == 0
    )
    assert (
        value("connector_resilience_health_status", {"connector": "inventory", "status": "down"})
        == 1
    )
    assert (
        value("connector_resilience_circuit_state", {"connector": "inventory", "state": "open"})
        == 1
    )
    assert value("connector_resilience_window_calls", {"connector": "billing"}) == 10
    assert value("connector_resilience_window_retries", {"connector": "search"}) == 10
    assert value("connector_resilience_window_rejected_calls", {"connector": "inventory"}) == 2
    assert value("connector_resilience_window_attempt_error_ratio", {"connector": "search"}) == 0.5
    p99 = value(
        "connector_resilience_window_latency_seconds", {"connector": "billing", "quantile": "0.99"}
    )
    assert p99 is not None
    assert 0 <= p99 < 1
    last = value("connector_resilience_last_call_timestamp_seconds", {"connector": "billing"})
    assert last is not None
    assert last > 0


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out[metric.name] = list(metric.data.data_points)
                out[metric.name + ":unit"] = [metric.unit]
    return out


def test_opentelemetry_records_conventional_instruments(url: str) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = OpenTelemetryMetrics(meter_provider=provider, store=url, policy=policy_for(url))
    try:
        Connectors(url).run(billing=10, search=4, inventory=5)
        points = _points(reader)
    finally:
        telemetry.close()
        provider.shutdown()

    def total(name: str, **attributes: Any) -> float:
        matching = [
            p.value
            for p in points[name]
            if all(p.attributes.get(k) == v for k, v in attributes.items())
        ]
        return float(sum(matching))

    assert points["connector_resilience.call.duration:unit"] == ["s"]
    durations = {
        (p.attributes["connector"], p.attributes["outcome"]): p
        for p in points["connector_resilience.call.duration"]
    }
    assert durations["billing", "success"].count == 10
    assert durations["search", "error"].count == 4
    assert durations["search", "error"].attributes["error.type"] == "TimeoutError"
    assert list(durations["billing", "success"].explicit_bounds)[:3] == [0.005, 0.01, 0.025]
    assert total("connector_resilience.calls", connector="billing", outcome="success") == 10
    assert total("connector_resilience.calls", connector="inventory", outcome="error") == 3
    assert total("connector_resilience.rejected_calls", connector="inventory") == 2
    assert total("connector_resilience.retries", connector="search") == 4
    states = {
        (p.attributes["connector"], p.attributes["state"]): p.value
        for p in points["connector_resilience.circuit.state"]
    }
    assert states["inventory", "open"] == 1
    assert states["inventory", "closed"] == 0
    assert states["billing", "closed"] == 1


def test_a_missing_client_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now fails
    with pytest.raises(
        ConfigurationError, match=r"pip install 'connector-resilience\[prometheus\]'"
    ):
        PrometheusCollector(store=url)
    with pytest.raises(ConfigurationError, match=r"\[prometheus\]"):
        PrometheusStoreCollector(store=url)
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'connector-resilience\[otel\]'"):
        OpenTelemetryMetrics(store=url)
