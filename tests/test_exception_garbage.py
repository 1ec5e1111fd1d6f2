"""A refused or failed call's exception is freed as soon as the caller drops it.

A refused call is the hot path of an outage, and a failed one comes just
before it. If code that raises an exception keeps it in a local name (or in a
generator's, or as an argument), the exception, its traceback and that frame
form a reference cycle that only the garbage collector frees: a collection's
worth of work on every such call. These tests turn the collector off, make a
call fail, drop the exception and check by weak reference that it is gone.

The failure tests use httpx over a refused connection: httpx makes no cycle
of its own there, so any cycle would be ours. (requests and aiohttp do make
their own on a refused connection; our frames only ride along with them.)
"""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
import pytest
import requests
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from connector_resilience import CircuitBreaker, CircuitOpenError, resilient, testing
from connector_resilience.aiohttp import ResilienceMiddleware
from connector_resilience.httpx import ResilientTransport
from connector_resilience.policy import Policy
from connector_resilience.requests import ResilientAdapter

#: Nothing listens here, and nothing should try: the open circuit refuses first.
URL = "http://127.0.0.1:9/"


@pytest.fixture
def policy() -> Policy:
    return testing.memory_policy(
        retry={"max_attempts": 1}, circuit={"failures_to_open": 1, "cooldown_s": 60}
    )


@pytest.fixture
def open_circuit(policy: Policy) -> None:
    CircuitBreaker("api", policy=policy).force_open()


@contextmanager
def _collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _left_alive(call: Callable[[], Any], error: type[Exception] = CircuitOpenError) -> bool:
    """Make ``call`` raise ``error`` with the collector off; whether the error outlives it."""
    with _collector_off():
        try:
            call()
        except error as exc:
            raised = weakref.ref(exc)
        return raised() is not None


async def _left_alive_async(
    call: Callable[[], Awaitable[Any]], error: type[Exception] = CircuitOpenError
) -> bool:
    """:func:`_left_alive` for a coroutine, awaited in the running task."""
    with _collector_off():
        try:
            await call()
        except error as exc:
            raised = weakref.ref(exc)
        return raised() is not None


def test_the_decorator_s_refusal_makes_no_garbage(policy: Policy, open_circuit: None) -> None:
    @resilient("api", policy=policy)
    def fetch() -> str:
        return "unreachable"

    for _ in range(2):  # the first refusal reads the store; the second is the cached path
        assert not _left_alive(fetch)


async def test_the_async_decorator_s_refusal_makes_no_garbage(
    policy: Policy, open_circuit: None
) -> None:
    @resilient("api", policy=policy)
    async def fetch() -> str:
        return "unreachable"

    for _ in range(2):
        assert not await _left_alive_async(fetch)


def test_the_breaker_s_refusal_makes_no_garbage(policy: Policy, open_circuit: None) -> None:
    breaker = CircuitBreaker("api", policy=policy)
    assert not _left_alive(breaker.acquire)
    assert not asyncio.run(_left_alive_async(breaker.aacquire))


def test_requests_adapter_s_refusal_makes_no_garbage(policy: Policy, open_circuit: None) -> None:
    with requests.Session() as session:
        session.mount("http://", ResilientAdapter("api", policy=policy))
        for _ in range(2):
            assert not _left_alive(lambda: session.get(URL))


def test_httpx_transport_s_refusal_makes_no_garbage(policy: Policy, open_circuit: None) -> None:
    with httpx.Client(transport=ResilientTransport("api", policy=policy)) as client:
        for _ in range(2):
            assert not _left_alive(lambda: client.get(URL))


async def test_httpx_async_transport_s_refusal_makes_no_garbage(
    policy: Policy, open_circuit: None
) -> None:
    transport = ResilientTransport("api", policy=policy)
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(2):
            assert not await _left_alive_async(lambda: client.get(URL))


async def test_aiohttp_middleware_s_refusal_makes_no_garbage(
    policy: Policy, open_circuit: None
) -> None:
    middleware = ResilienceMiddleware("api", policy=policy)
    async with aiohttp.ClientSession(middlewares=(middleware,)) as session:

        async def get() -> None:
            async with session.get(URL):
                pass

        for _ in range(2):
            assert not await _left_alive_async(get)


# A failed call -----------------------------------------------------------------------


class DependencyDownError(ConnectionError):
    """A retryable failure of the caller's own code."""


def _failing_policy(attempts: int) -> Policy:
    return testing.memory_policy(
        retry={"max_attempts": attempts, "base_ms": 1, "cap_ms": 1, "jitter_pct": 0.0},
        circuit={"failures_to_open": 1_000},
        limits={"budget_ratio": float("inf")},  # every retry allowed: the path under test
    )


@pytest.fixture
def refused_url() -> str:
    """A 127.0.0.1 address where nothing listens: a real connection refusal."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize("attempts", [1, 2])
def test_the_decorator_s_failure_makes_no_garbage(attempts: int) -> None:
    @resilient("api", policy=_failing_policy(attempts))
    def fetch() -> str:
        raise DependencyDownError("the dependency is down")

    with testing.no_waits():
        for _ in range(2):
            assert not _left_alive(fetch, DependencyDownError)


@pytest.mark.parametrize("attempts", [1, 2])
async def test_the_async_decorator_s_failure_makes_no_garbage(attempts: int) -> None:
    @resilient("api", policy=_failing_policy(attempts))
    async def fetch() -> str:
        raise DependencyDownError("the dependency is down")

    with testing.no_waits():
        for _ in range(2):
            assert not await _left_alive_async(fetch, DependencyDownError)


@pytest.mark.parametrize("attempts", [1, 2])
def test_httpx_transport_s_failure_makes_no_garbage(attempts: int, refused_url: str) -> None:
    transport = ResilientTransport("api", policy=_failing_policy(attempts))
    with testing.no_waits(), httpx.Client(transport=transport) as client:
        for _ in range(2):
            assert not _left_alive(lambda: client.get(refused_url), httpx.ConnectError)


@pytest.mark.parametrize("attempts", [1, 2])
async def test_httpx_async_transport_s_failure_makes_no_garbage(
    attempts: int, refused_url: str
) -> None:
    transport = ResilientTransport("api", policy=_failing_policy(attempts))
    async with httpx.AsyncClient(transport=transport) as client:
        with testing.no_waits():
            for _ in range(2):
                assert not await _left_alive_async(
                    lambda: client.get(refused_url), httpx.ConnectError
                )


@pytest.mark.parametrize("attempts", [1, 2])
def test_a_traced_failure_makes_no_garbage(attempts: int, spans: InMemorySpanExporter) -> None:
    @resilient("api", policy=_failing_policy(attempts))
    def fetch() -> str:
        raise DependencyDownError("the dependency is down")

    with testing.no_waits():
        for _ in range(2):
            spans.clear()
            assert not _left_alive(fetch, DependencyDownError)
    assert spans.get_finished_spans()  # the call was traced
