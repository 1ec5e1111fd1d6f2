"""An open circuit's refusal is freed as soon as the caller drops it.

A refused call is the hot path of an outage. If the code that raises the
refusal keeps it in a local name, the exception, its traceback and that frame
form a reference cycle that only the garbage collector frees: a collection's
worth of work on every refused call. These tests turn the collector off,
refuse a call, drop the exception and check by weak reference that it is gone.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
import pytest
import requests

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


def _refusal_left_alive(call: Callable[[], Any]) -> bool:
    """Refuse ``call`` with the collector off; whether its exception outlives the caller."""
    with _collector_off():
        try:
            call()
        except CircuitOpenError as exc:
            refusal = weakref.ref(exc)
        return refusal() is not None


async def _refusal_left_alive_async(call: Callable[[], Awaitable[Any]]) -> bool:
    """:func:`_refusal_left_alive` for a coroutine, awaited in the running task."""
    with _collector_off():
        try:
            await call()
        except CircuitOpenError as exc:
            refusal = weakref.ref(exc)
        return refusal() is not None


def test_the_decorator_s_refusal_makes_no_garbage(policy: Policy, open_circuit: None) -> None:
    @resilient("api", policy=policy)
    def fetch() -> str:
        return "unreachable"

    for _ in range(2):  # the first refusal reads the store; the second is the cached path
        assert not _refusal_left_alive(fetch)


async def test_the_async_decorator_s_refusal_makes_no_garbage(
    policy: Policy, open_circuit: None
) -> None:
    @resilient("api", policy=policy)
    async def fetch() -> str:
        return "unreachable"

    for _ in range(2):
        assert not await _refusal_left_alive_async(fetch)


def test_the_breaker_s_refusal_makes_no_garbage(policy: Policy, open_circuit: None) -> None:
    breaker = CircuitBreaker("api", policy=policy)
    assert not _refusal_left_alive(breaker.acquire)
    assert not asyncio.run(_refusal_left_alive_async(breaker.aacquire))


def test_requests_adapter_s_refusal_makes_no_garbage(policy: Policy, open_circuit: None) -> None:
    with requests.Session() as session:
        session.mount("http://", ResilientAdapter("api", policy=policy))
        for _ in range(2):
            assert not _refusal_left_alive(lambda: session.get(URL))


def test_httpx_transport_s_refusal_makes_no_garbage(policy: Policy, open_circuit: None) -> None:
    with httpx.Client(transport=ResilientTransport("api", policy=policy)) as client:
        for _ in range(2):
            assert not _refusal_left_alive(lambda: client.get(URL))


async def test_httpx_async_transport_s_refusal_makes_no_garbage(
    policy: Policy, open_circuit: None
) -> None:
    transport = ResilientTransport("api", policy=policy)
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(2):
            assert not await _refusal_left_alive_async(lambda: client.get(URL))


async def test_aiohttp_middleware_s_refusal_makes_no_garbage(
    policy: Policy, open_circuit: None
) -> None:
    middleware = ResilienceMiddleware("api", policy=policy)
    async with aiohttp.ClientSession(middlewares=(middleware,)) as session:

        async def get() -> None:
            async with session.get(URL):
                pass

        for _ in range(2):
            assert not await _refusal_left_alive_async(get)
