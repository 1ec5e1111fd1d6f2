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

from connector_resilience import CircuitBreaker, ConfigurationError
from connector_resilience.backends import CallRecord
from connector_resilience.exporters import (
    CIRCUIT_STATES,
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


def _calls(connector: str, operation: str, outcome: str, **extra: str) -> dict[str, str]:
    """The labels of a calls_total series (absent attributes are empty labels)."""
    labels = {"connector": connector, "operation": operation, "outcome": outcome}
    return {"retried": "false", "error_type": "", **labels, **extra}


def _attempts(connector: str, operation: str, outcome: str, **extra: str) -> dict[str, str]:
    """The labels of a call_duration_seconds series."""
    labels = {"connector": connector, "operation": operation, "outcome": outcome}
    http = dict.fromkeys(
        (
            "error_type",
            "http_request_method",
            "http_response_status_code",
            "server_address",
            "server_port",
        ),
        "",
    )
    return {**http, **labels, **extra}


def test_prometheus_counts_calls_retries_rejections_and_durations(
    url: str, prometheus: tuple[CollectorRegistry, PrometheusCollector]
) -> None:
    registry, _ = prometheus
    Connectors(url).run(billing=10, search=4, inventory=5)
    value = registry.get_sample_value
    calls = "connector_resilience_calls_total"
    assert value(calls, _calls("billing", "charge", "success")) == 10
    # search fails every other attempt: each call's retry saves it.
    assert value(calls, _calls("search", "query", "success", retried="true")) == 4
    assert value(calls, _calls("search", "query", "success")) is None
    inventory = _calls(
        "inventory", "get_item", "error", retried="true", error_type="ConnectionError"
    )
    assert value(calls, inventory) == 3
    op = {"connector": "inventory", "operation": "get_item"}
    rejected = {**op, "reason": "CircuitOpenError"}
    assert value("connector_resilience_rejected_calls_total", rejected) == 2
    assert value("connector_resilience_retries_total", op) == 3
    search_op = {"connector": "search", "operation": "query"}
    assert value("connector_resilience_retries_total", search_op) == 4
    # Every attempt is observed, failed ones under outcome="error" with their error type.
    duration = "connector_resilience_call_duration_seconds"
    billing = _attempts("billing", "charge", "success")
    assert value(f"{duration}_count", billing) == 10
    assert value(f"{duration}_bucket", {**billing, "le": "+Inf"}) == 10
    assert value(f"{duration}_bucket", {**billing, "le": "10.0"}) == 10
    assert (value(f"{duration}_sum", billing) or 0) < 1.0
    failed = _attempts("search", "query", "error", error_type="TimeoutError")
    assert value(f"{duration}_count", failed) == 4
    # One circuit series per state, the current one at 1.
    state = "connector_resilience_circuit_state"
    assert value(state, {"connector": "inventory", "state": "open"}) == 1
    assert value(state, {"connector": "inventory", "state": "closed"}) == 0
    assert value(state, {"connector": "billing", "state": "closed"}) == 1


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
    allowed = {
        "connector",
        "operation",
        "outcome",
        "retried",
        "error_type",
        "http_request_method",
        "http_response_status_code",
        "server_address",
        "server_port",
        "state",
        "reason",
        "le",
    }
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= allowed
            assert not any("/" in v or ":" in v for v in sample.labels.values())  # no URLs
    assert "sqlite" not in text


def _http_records() -> list[CallRecord]:
    """Attempts as the HTTP adapters label them: 503, 503, 200, then a 404, one without port."""
    labels = {"method": "get", "host": "api.github.com", "port": "443"}
    out = [
        CallRecord(
            ts=1.0,
            connector="github",
            operation="GET",
            duration_ms=5.0,
            status="error" if code == "503" else "ok",
            error="HTTP 503" if code == "503" else None,
            attempt=attempt,
            final=attempt == 3,
            labels={**labels, "status_code": code, "path": "/never/a/label"},
        )
        for attempt, code in ((1, "503"), (2, "503"), (3, "200"))
    ]
    out.append(
        CallRecord(
            ts=1.0,
            connector="github",
            operation="GET",
            duration_ms=5.0,
            status="ok",
            labels={"method": "GET", "host": "api.github.com", "status_code": "404"},
        )
    )
    return out


def _refusal_records() -> list[CallRecord]:
    """Load control's records: refused calls by guard, then the two notes on calls that ran."""

    def refused(kind: str | None, calls: int) -> CallRecord:
        return CallRecord(
            ts=1.0,
            connector="prices",
            operation="quote",
            duration_ms=0.0,
            status="rejected",
            error=kind,
            calls=calls,
        )

    return [
        refused("RateLimitExceededError", 3),
        refused("BulkheadFullError", 2),
        refused(None, 1),  # written before load control: the breaker refused it
        refused("RetryBudgetExhausted", 4),
        refused("FallbackUsed", 5),
    ]


def test_refused_calls_are_counted_by_guard_and_notes_apart(
    url: str, prometheus: tuple[CollectorRegistry, PrometheusCollector]
) -> None:
    registry, collector = prometheus
    collector.observe(_refusal_records())
    value = registry.get_sample_value
    op = {"connector": "prices", "operation": "quote"}
    rejected = "connector_resilience_rejected_calls_total"
    assert value(rejected, {**op, "reason": "RateLimitExceededError"}) == 3
    assert value(rejected, {**op, "reason": "BulkheadFullError"}) == 2
    assert value(rejected, {**op, "reason": "CircuitOpenError"}) == 1
    assert value(rejected, {**op, "reason": "RetryBudgetExhausted"}) is None
    assert value(rejected, {**op, "reason": "FallbackUsed"}) is None
    assert value("connector_resilience_retry_budget_refusals_total", op) == 4
    assert value("connector_resilience_fallbacks_total", op) == 5


def test_prometheus_labels_follow_the_http_client_conventions(
    prometheus: tuple[CollectorRegistry, PrometheusCollector],
) -> None:
    registry, collector = prometheus
    collector.observe(_http_records())
    value = registry.get_sample_value
    duration = "connector_resilience_call_duration_seconds_count"
    http = {
        "http_request_method": "GET",
        "server_address": "api.github.com",
        "server_port": "443",
    }
    retried = {**http, "http_response_status_code": "503", "error_type": "503"}
    assert value(duration, _attempts("github", "GET", "error", **retried)) == 2
    ok = {**http, "http_response_status_code": "200"}
    assert value(duration, _attempts("github", "GET", "success", **ok)) == 1
    # A 404 is a success to the breaker but an HTTP error to OpenTelemetry; no port known.
    not_found = {**http, "server_port": "", "http_response_status_code": "404"}
    assert (
        value(duration, _attempts("github", "GET", "success", **not_found, error_type="404")) == 1
    )
    calls = "connector_resilience_calls_total"
    assert value(calls, _calls("github", "GET", "success", retried="true")) == 1
    assert value(calls, _calls("github", "GET", "success", error_type="404")) == 1


def test_breaker_overrides_are_states_of_their_own(
    url: str, prometheus: tuple[CollectorRegistry, PrometheusCollector]
) -> None:
    registry, _ = prometheus
    Connectors(url).run(billing=1, search=1, inventory=0)
    policy = policy_for(url)
    CircuitBreaker("billing", policy=policy).force_open(reason="maintenance")
    CircuitBreaker("search", policy=policy).disable()
    store_registry = CollectorRegistry()
    store_registry.register(PrometheusStoreCollector(store=url, policy=policy))
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = OpenTelemetryMetrics(meter_provider=provider, store=url, policy=policy)
    try:
        Connectors(url).run(billing=0, search=1, inventory=0)  # OTel learns the names
        otel = {
            (p.attributes["connector"], p.attributes["state"]): p.value
            for p in _points(reader)["connector_resilience.circuit.state"]
        }
    finally:
        telemetry.close()
        provider.shutdown()
    expected = {"billing": "forced_open", "search": "disabled"}
    for connector, shown in expected.items():
        for state in CIRCUIT_STATES:
            one = float(state == shown)
            labels = {"connector": connector, "state": state}
            assert registry.get_sample_value("connector_resilience_circuit_state", labels) == one
            assert (
                store_registry.get_sample_value("connector_resilience_store_circuit_state", labels)
                == one
            )
    assert otel["search", "disabled"] == 1
    assert otel["search", "closed"] == 0


def test_prometheus_close_stops_counting(
    url: str, prometheus: tuple[CollectorRegistry, PrometheusCollector]
) -> None:
    registry, collector = prometheus
    Connectors(url).run(billing=2, search=0, inventory=0)
    collector.close()
    Connectors(url).run(billing=5, search=0, inventory=0)
    labels = _calls("billing", "charge", "success")
    assert registry.get_sample_value("connector_resilience_calls_total", labels) == 2


def test_store_collector_reports_verdicts_breakers_and_window_figures(url: str) -> None:
    Connectors(url).run()
    registry = CollectorRegistry()
    registry.register(PrometheusStoreCollector(store=url, policy=policy_for(url)))

    def value(name: str, connector: str, **labels: str) -> float | None:
        return registry.get_sample_value(
            f"connector_resilience_store_{name}", {"connector": connector, **labels}
        )

    assert value("health_status", "search", status="degraded") == 1
    assert value("health_status", "search", status="healthy") == 0
    assert value("health_status", "inventory", status="down") == 1
    assert value("circuit_state", "inventory", state="open") == 1
    assert value("window_calls", "billing") == 10
    assert value("window_failed_calls", "inventory") == 3
    assert value("window_attempts", "search") == 20
    assert value("window_retries", "search") == 10
    assert value("window_rejected_calls", "inventory") == 2
    assert value("window_attempt_error_ratio", "search") == 0.5
    p99 = value("window_latency_seconds", "billing", percentile="99")
    assert p99 is not None
    assert 0 <= p99 < 1
    last = value("last_call_timestamp_seconds", "billing")
    assert last is not None
    assert last > 0


def test_the_two_prometheus_views_share_no_series_name(
    url: str, prometheus: tuple[CollectorRegistry, PrometheusCollector]
) -> None:
    # Scraping a service and the dashboard must not add up two meanings under one name.
    _, collector = prometheus
    Connectors(url).run()
    service = {f.name for f in collector.collect()}
    store = {f.name for f in PrometheusStoreCollector(store=url, policy=policy_for(url)).collect()}
    assert service
    assert store
    assert not service & store
    assert all(name.startswith("connector_resilience_store_") for name in store)


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
    assert total("connector_resilience.calls", connector="search", retried="true") == 4
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


def test_opentelemetry_attributes_follow_the_http_client_conventions(url: str) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = OpenTelemetryMetrics(meter_provider=provider, store=url, policy=policy_for(url))
    try:
        telemetry.observe(_http_records())
        points = _points(reader)
    finally:
        telemetry.close()
        provider.shutdown()
    by_status = {
        p.attributes["http.response.status_code"]: dict(p.attributes)
        for p in points["connector_resilience.call.duration"]
    }
    assert by_status[503] == {
        "connector": "github",
        "operation": "GET",
        "outcome": "error",
        "error.type": "503",  # the status code, not "HTTP 503"
        "http.request.method": "GET",
        "http.response.status_code": 503,
        "server.address": "api.github.com",
        "server.port": 443,
    }
    assert "error.type" not in by_status[200]
    assert by_status[404]["error.type"] == "404"  # any status >= 400
    assert "server.port" not in by_status[404]  # a record without a port


def test_opentelemetry_through_its_prometheus_exporter_gives_the_collector_s_series(
    url: str, prometheus: tuple[CollectorRegistry, PrometheusCollector]
) -> None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    registry, collector = prometheus
    otel_registry = CollectorRegistry()
    reader = PrometheusMetricReader(disable_target_info=True, registry=otel_registry)
    provider = MeterProvider(metric_readers=[reader])
    telemetry = OpenTelemetryMetrics(meter_provider=provider, store=url, policy=policy_for(url))
    try:
        Connectors(url).run()
        collector.observe(_http_records() + _refusal_records())
        telemetry.observe(_http_records() + _refusal_records())
        ours = _samples(generate_latest(registry).decode())
        theirs = _samples(generate_latest(otel_registry).decode())
    finally:
        telemetry.close()
        provider.shutdown()
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert theirs[key] == pytest.approx(value, rel=1e-9), key


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples by name and labels, as Prometheus stores them (an empty label is no label)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset(
                (k, v) for k, v in sample.labels.items() if v and not k.startswith("otel_scope")
            )
            out[sample.name, labels] = sample.value
    return out


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
