"""OpenTelemetry traces of resilient calls, read from the SDK's in-memory span exporter.

The HTTP test sends real requests to a real aiohttp server on 127.0.0.1 that
records each request's ``traceparent``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from connector_resilience import CircuitOpenError, ConfigurationError, resilient, testing, tracing
from connector_resilience.aiohttp import ResilienceMiddleware
from tests.http_server import Action, FaultServer, fault_server


@pytest.fixture
def waits() -> Iterator[list[float]]:
    with testing.no_waits() as asked:
        yield asked


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async for started in fault_server():
        yield started


def _policy(**circuit: Any) -> Any:
    return testing.memory_policy(
        retry={"max_attempts": 3, "base_ms": 100, "cap_ms": 5000, "jitter_pct": 0.0},
        circuit={"failures_to_open": 5, "cooldown_s": 30, "half_open_prob": 1.0, **circuit},
    )


def _by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


def _children(parent: ReadableSpan, spans: list[ReadableSpan]) -> list[ReadableSpan]:
    assert parent.context is not None
    found = [
        s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]
    return sorted(found, key=lambda s: s.start_time or 0)


def test_a_retried_call_is_a_call_span_with_one_child_span_per_attempt(
    spans: InMemorySpanExporter, waits: list[float], provider: TracerProvider
) -> None:
    inner = provider.get_tracer("the-function-itself")
    attempts = 0

    @resilient("billing", policy=_policy())
    def charge(cents: int) -> int:
        nonlocal attempts
        attempts += 1
        with inner.start_as_current_span("sql"):  # the function's own span
            if attempts < 3:
                raise ConnectionError("refused")
        return cents

    assert charge(5) == 5
    named = _by_name(spans)
    (call,) = named["billing.charge"]
    every = list(spans.get_finished_spans())
    tries = _children(call, every)
    assert [s.name for s in tries] == ["billing.charge attempt"] * 3
    assert all(s.kind is SpanKind.INTERNAL for s in tries)
    assert call.attributes is not None
    assert call.attributes["connector_resilience.connector"] == "billing"
    assert call.attributes["connector_resilience.operation"] == "charge"
    assert call.attributes["connector_resilience.attempts"] == 3
    assert call.status.status_code is StatusCode.UNSET  # the caller got its answer
    first, second, third = (dict(s.attributes or {}) for s in tries)
    assert first["error.type"] == "ConnectionError"
    assert [a.get("connector_resilience.attempt") for a in (first, second, third)] == [1, 2, 3]
    assert "connector_resilience.retry.wait_s" not in first
    assert (
        second["connector_resilience.retry.wait_s"],
        third["connector_resilience.retry.wait_s"],
    ) == (0.1, 0.2)
    assert not any("http.request.resend_count" in a for a in (first, second, third))  # not HTTP
    assert "error.type" not in third
    assert [s.status.status_code for s in tries] == [StatusCode.ERROR] * 2 + [StatusCode.UNSET]
    assert "refused" not in str([s.status.description for s in tries])  # no messages
    # The retry events, with the wait before each retry, on the call span.
    retries = [e for e in call.events if e.name == "retry"]
    assert [dict(e.attributes or {}) for e in retries] == [
        {
            "connector_resilience.attempt": 1,
            "connector_resilience.retry.wait_s": 0.1,
            "error.type": "ConnectionError",
        },
        {
            "connector_resilience.attempt": 2,
            "connector_resilience.retry.wait_s": 0.2,
            "error.type": "ConnectionError",
        },
    ]
    assert waits == [0.1, 0.2]
    # The function's own spans are children of the attempt they ran in.
    sql = sorted(named["sql"], key=lambda s: s.start_time or 0)
    assert [s.parent.span_id for s in sql if s.parent] == [
        t.context.span_id for t in tries if t.context
    ]


async def test_an_async_call_that_opens_the_breaker_and_a_rejected_call(
    spans: InMemorySpanExporter, waits: list[float]
) -> None:
    @resilient("inventory", policy=_policy(failures_to_open=1), max_attempts=2)
    async def get_item(item: int) -> int:
        raise TimeoutError(f"no answer for {item}")

    with pytest.raises(TimeoutError):
        await get_item(1)
    with pytest.raises(CircuitOpenError):
        await get_item(2)
    failed, rejected = sorted(
        _by_name(spans)["inventory.get_item"], key=lambda s: s.start_time or 0
    )
    every = list(spans.get_finished_spans())
    assert len(_children(failed, every)) == 2
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "TimeoutError"
    assert failed.attributes["connector_resilience.circuit.outcome"] == "failure"
    (change,) = [e for e in failed.events if e.name.endswith("state_change")]
    assert change.attributes is not None
    assert (
        change.attributes["connector_resilience.circuit.from"],
        change.attributes["connector_resilience.circuit.to"],
    ) == (
        "closed",
        "open",
    )
    # Refused by the breaker: a call span without attempts.
    assert _children(rejected, every) == []
    assert rejected.attributes is not None
    assert rejected.attributes["error.type"] == "CircuitOpenError"
    assert rejected.attributes["connector_resilience.attempts"] == 0
    assert [e.name for e in rejected.events] == ["connector_resilience.circuit.rejected"]


async def test_http_attempts_are_client_spans_each_sending_its_own_traceparent(
    spans: InMemorySpanExporter, waits: list[float], server: FaultServer
) -> None:
    server.script("/items", [Action(503), Action(503)])
    server.script("/missing", [Action(404)])
    middleware = ResilienceMiddleware("shop", policy=_policy())
    async with aiohttp.ClientSession(base_url=server.url, middlewares=(middleware,)) as session:
        async with session.get("/items") as response:
            assert response.status == 200
        async with session.get("/missing") as response:
            assert response.status == 404
    call, missing = sorted(_by_name(spans)["shop.GET"], key=lambda s: s.start_time or 0)
    tries = _children(call, list(spans.get_finished_spans()))
    assert [(s.name, s.kind) for s in tries] == [("GET", SpanKind.CLIENT)] * 3
    attributes = [dict(s.attributes or {}) for s in tries]
    assert [a["http.response.status_code"] for a in attributes] == [503, 503, 200]
    assert [a.get("error.type") for a in attributes] == ["503", "503", None]
    assert [a.get("http.request.resend_count") for a in attributes] == [None, 1, 2]
    assert {(a["http.request.method"], a["server.address"]) for a in attributes} == {
        ("GET", "127.0.0.1")
    }
    # Each attempt carried its own span's context to the server.
    sent = [s.headers["traceparent"] for s in server.seen if s.path == "/items"]
    expected = [f"{s.context.trace_id:032x}-{s.context.span_id:016x}" for s in tries if s.context]
    assert [header[3:52] for header in sent] == expected  # version-trace-span-flags
    assert len(set(sent)) == 3
    # A 404 is an HTTP error to OpenTelemetry (error.type "404"), though not a retry.
    (only,) = _children(missing, list(spans.get_finished_spans()))
    assert only.attributes is not None
    assert only.attributes["error.type"] == "404"
    assert missing.attributes is not None
    assert missing.attributes["error.type"] == "404"


def test_nothing_is_traced_without_an_sdk_provider_and_nothing_needs_the_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No global SDK provider in this process: the engine gets no tracer at all.
    @resilient("billing", policy=_policy())
    def charge(cents: int) -> int:
        return cents

    assert charge(1) == 1
    assert tracing.call_tracer("billing", "charge") is None
    # Without opentelemetry-api installed: still nothing, and asking for it names the extra.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    assert tracing.call_tracer("billing", "charge") is None
    with pytest.raises(ConfigurationError, match=r"pip install 'connector-resilience\[otel\]'"):
        tracing.instrument()


def test_uninstrument_stops_tracing(spans: InMemorySpanExporter) -> None:
    @resilient("billing", policy=_policy())
    def charge(cents: int) -> int:
        return cents

    charge(1)
    tracing.uninstrument()
    charge(2)
    assert len(spans.get_finished_spans()) == 2  # the first call and its attempt only
