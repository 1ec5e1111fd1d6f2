"""Issue 9, point 7: chaos end to end, against a local server failing at random (fixed seed).

One connector goes through ``@resilient`` (a plain asyncio HTTP client, so no
library retries behind our back), one through ``ResilienceMiddleware``. The
server answers 200, 503, 429, drops the connection, or stalls past the read
timeout. Every idempotent request must succeed or fail with a clear error
before its deadline, and the metrics must match the server's own count of
requests exactly.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator

import aiohttp
import pytest

from connector_resilience import CircuitOpenError, Policy, flush_metrics, resilient, summarize
from connector_resilience.aiohttp import ResilienceMiddleware
from tests.http_server import Action, FaultServer
from tests.reliability._support import background_loop

pytestmark = pytest.mark.slow

REQUESTS = 80
PARALLEL = 16
DEADLINE_S = 1.5
READ_TIMEOUT_S = 0.15
#: Scheduling slack on 2 busy cores, on top of the deadline.
SLACK_S = 0.5


def _chaos(rng: random.Random, count: int) -> list[Action]:
    menu = [
        (Action(200), 55),
        (Action(503), 15),
        (Action(429, headers={"Retry-After": "0"}), 5),
        (Action(reset=True), 12),
        (Action(delay_s=READ_TIMEOUT_S * 3), 8),
        (Action(500), 5),
    ]
    actions, weights = zip(*menu, strict=True)
    return rng.choices(actions, weights=weights, k=count)


@pytest.fixture
def chaos_server() -> Iterator[FaultServer]:
    rng = random.Random(1234)
    with background_loop() as loop:
        server = asyncio.run_coroutine_threadsafe(FaultServer().start(), loop).result(10)
        # Enough scripted answers for every attempt of every request, then healthy.
        server.script("/dec", _chaos(rng, REQUESTS * 4), then=Action(200))
        server.script("/mw", _chaos(rng, REQUESTS * 4), then=Action(200))
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)


def _policy() -> Policy:
    return Policy(
        store={"url": "memory://chaos", "flush_interval_s": 3600},
        retry={"max_attempts": 4, "base_ms": 5, "cap_ms": 40, "deadline_s": DEADLINE_S},
        circuit={"failures_to_open": 6, "cooldown_s": 0.05, "half_open_prob": 0.5},
    )


class UnavailableError(Exception):
    """The server answered 5xx or 429."""


async def _get(port: int, path: str) -> int:
    """One HTTP/1.1 GET on a fresh connection; raises on a drop or a stall."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
        if not line:
            raise ConnectionResetError("the server closed the connection")
        status = int(line.split()[1])
        if status >= 500 or status == 429:
            raise UnavailableError(f"HTTP {status}")
        return status
    finally:
        writer.close()


async def _run_all(make: object, count: int) -> list[tuple[object, float]]:
    gate = asyncio.Semaphore(PARALLEL)

    async def one() -> tuple[object, float]:
        async with gate:
            started = time.monotonic()
            try:
                outcome: object = await make()  # type: ignore[operator]
            except Exception as exc:
                outcome = exc
            return outcome, time.monotonic() - started

    return await asyncio.gather(*[one() for _ in range(count)])


async def test_chaos_through_the_decorator(chaos_server: FaultServer) -> None:
    policy = _policy()

    @resilient(
        "chaos-dec",
        policy=policy,
        retry_on=(UnavailableError, ConnectionError, TimeoutError, OSError),
    )
    async def fetch() -> int:
        return await _get(chaos_server.port, "/dec")

    results = await _run_all(fetch, REQUESTS)
    clear = (UnavailableError, ConnectionError, TimeoutError, CircuitOpenError)
    for outcome, took in results:
        assert outcome == 200 or isinstance(outcome, clear), repr(outcome)
        assert took <= DEADLINE_S + SLACK_S, f"{took:.2f}s for {outcome!r}"
    assert any(outcome == 200 for outcome, _ in results)
    assert flush_metrics()
    summary = summarize("chaos-dec", policy=policy)
    assert summary.attempts == chaos_server.hits("/dec")
    assert summary.total_calls + summary.rejected == REQUESTS
    assert summary.errors == sum(
        1 for o, _ in results if o != 200 and not isinstance(o, CircuitOpenError)
    )


async def test_chaos_through_the_middleware(chaos_server: FaultServer) -> None:
    policy = _policy()
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S, sock_read=READ_TIMEOUT_S)
    async with aiohttp.ClientSession(
        chaos_server.url,
        timeout=timeout,
        middlewares=(ResilienceMiddleware("chaos-mw", policy=policy),),
    ) as session:

        async def fetch() -> int:
            async with session.get("/mw") as response:
                await response.read()
                return response.status

        results = await _run_all(fetch, REQUESTS)
    clear = (aiohttp.ClientError, TimeoutError, CircuitOpenError)
    for outcome, took in results:
        # Success, or the last answer once retries ran out, or a clear error.
        assert outcome in (200, 429, 500, 503) or isinstance(outcome, clear), repr(outcome)
        assert took <= DEADLINE_S + SLACK_S, f"{took:.2f}s for {outcome!r}"
    assert any(outcome == 200 for outcome, _ in results)
    assert flush_metrics()
    summary = summarize("chaos-mw", policy=policy)
    assert summary.attempts == chaos_server.hits("/mw")
    # aiohttp itself sends an idempotent request once more after a dropped connection,
    # through the middleware again: a call of its own, so at least one per request.
    assert summary.total_calls + summary.rejected >= REQUESTS
