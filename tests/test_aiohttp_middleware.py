"""ResilienceMiddleware against a real aiohttp server with programmable faults.

Every check counts requests on the server side.
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

from connector_resilience import CircuitBreaker, CircuitOpenError, summarize, testing
from connector_resilience.aiohttp import ResilienceMiddleware
from connector_resilience.backends import store_for_policy
from connector_resilience.policy import Policy
from tests.http_server import Action, FaultServer, fault_server


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async for started in fault_server():
        yield started


@pytest.fixture
async def other_server() -> AsyncIterator[FaultServer]:
    async for started in fault_server():
        yield started


@pytest.fixture
def waits() -> Iterator[list[float]]:
    with testing.no_waits() as asked:
        yield asked


def _policy(**groups: Any) -> Policy:
    retry = {"max_attempts": 3, "base_ms": 100, "cap_ms": 5000, "jitter_pct": 0.0}
    retry.update(groups.pop("retry", {}))
    circuit = {"failures_to_open": 3, "cooldown_s": 30, "half_open_prob": 1.0}
    circuit.update(groups.pop("circuit", {}))
    return testing.memory_policy(retry=retry, circuit=circuit, **groups)


def _session(
    server: FaultServer, middleware: ResilienceMiddleware, **kw: Any
) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url=server.url, middlewares=(middleware,), **kw)


async def test_retries_503_until_success(server: FaultServer, waits: list[float]) -> None:
    policy = _policy()
    server.script("/items", [Action(503), Action(503)])
    async with _session(server, ResilienceMiddleware("shop", policy=policy)) as session:
        async with session.get("/items") as response:
            assert response.status == 200
            assert await response.text() == "ok"
    assert server.hits("/items") == 3
    assert waits == [0.1, 0.2]
    summary = summarize("shop", policy=policy)
    assert (summary.total_calls, summary.attempts, summary.errors) == (1, 3, 0)
    assert summary.errors_by_type == {"HTTP 503": 2}


async def test_metrics_carry_method_host_and_status_not_the_url(
    server: FaultServer, waits: list[float]
) -> None:
    policy = _policy(store={"metrics_mode": "raw"})  # one record per attempt, to read back
    server.script("/users/42/secret-path", [Action(502)])
    async with _session(server, ResilienceMiddleware("api", policy=policy)) as session:
        async with session.get("/users/42/secret-path?token=abc") as response:
            assert response.status == 200
    summarize(policy=policy)
    records = store_for_policy(policy).read_calls(since=0)
    port = str(server.port)
    assert [(r.operation, r.labels) for r in records] == [
        ("GET", {"method": "GET", "host": "127.0.0.1", "port": port, "status_code": "502"}),
        ("GET", {"method": "GET", "host": "127.0.0.1", "port": port, "status_code": "200"}),
    ]
    assert all("secret" not in str(r.to_json()) for r in records)


async def test_retry_after_seconds_is_honoured(server: FaultServer, waits: list[float]) -> None:
    server.script("/", [Action(503, headers={"Retry-After": "3"}), Action(429)])
    async with _session(server, ResilienceMiddleware("api", policy=_policy())) as session:
        async with session.get("/") as response:
            assert response.status == 200
    assert server.hits() == 3
    assert waits == [3.0, 0.2]  # the server's delay, then the policy's backoff


async def test_retry_after_http_date_is_honoured_and_beyond_the_cap_returned(
    server: FaultServer,
) -> None:
    with testing.FakeClock(start=1_800_000_000.0) as clock:
        soon = email.utils.formatdate(clock.wall() + 4, usegmt=True)
        later = email.utils.formatdate(clock.wall() + 4 + 3600, usegmt=True)
        server.script(
            "/",
            [
                Action(503, headers={"Retry-After": soon}),
                Action(503, headers={"Retry-After": later}),
            ],
        )
        began = clock.monotonic()
        policy = _policy(retry={"cap_ms": 10_000})
        async with _session(server, ResilienceMiddleware("api", policy=policy)) as session:
            async with session.get("/") as response:
                # An hour is past RETRY_CAP_MS: the 503 comes back at once, never
                # a retry earlier than the server asked.
                assert response.status == 503
        assert clock.monotonic() - began == pytest.approx(4.0)
    assert server.hits() == 2


async def test_post_is_not_retried(server: FaultServer, waits: list[float]) -> None:
    policy = _policy()
    server.script("/orders", [Action(503)])
    async with _session(server, ResilienceMiddleware("shop", policy=policy)) as session:
        async with session.post("/orders", json={"sku": 1}) as response:
            assert response.status == 503
    assert server.hits("/orders") == 1
    assert waits == []
    assert summarize("shop", policy=policy).errors == 1


async def test_post_with_idempotency_key_is_retried_with_the_same_key(
    server: FaultServer, waits: list[float]
) -> None:
    server.script("/orders", [Action(503), Action(503)])
    middleware = ResilienceMiddleware("shop", policy=_policy(), add_idempotency_key=True)
    async with _session(server, middleware) as session:
        async with session.post("/orders", data=b"payload") as response:
            assert response.status == 200
    keys = {s.headers["Idempotency-Key"] for s in server.seen}
    assert server.hits("/orders") == 3
    assert len(keys) == 1
    assert {s.body for s in server.seen} == {b"payload"}


async def test_connection_reset_is_retried(server: FaultServer, waits: list[float]) -> None:
    server.script("/", [Action(reset=True)])
    async with _session(server, ResilienceMiddleware("api", policy=_policy())) as session:
        async with session.get("/") as response:
            assert response.status == 200
    assert server.hits() == 2


async def test_socket_read_timeout_is_retried(server: FaultServer, waits: list[float]) -> None:
    policy = _policy()
    server.script("/", [Action(delay_s=2.0)])
    timeout = aiohttp.ClientTimeout(sock_read=0.2)
    async with _session(server, ResilienceMiddleware("api", policy=policy), timeout=timeout) as s:
        async with s.get("/") as response:
            assert response.status == 200
    assert server.hits() == 2
    summary = summarize("api", policy=policy)
    assert summary.errors_by_type == {"SocketTimeoutError": 1}


async def test_no_retry_wait_passes_the_session_total_timeout(
    server: FaultServer, waits: list[float]
) -> None:
    server.script("/", [Action(503, headers={"Retry-After": "5"})])
    timeout = aiohttp.ClientTimeout(total=2)
    async with _session(
        server, ResilienceMiddleware("api", policy=_policy()), timeout=timeout
    ) as s:
        async with s.get("/") as response:
            assert response.status == 503  # waiting 5 s would pass the 2 s total
    assert server.hits() == 1
    assert waits == []


async def test_discarded_responses_go_back_to_the_pool(
    server: FaultServer, waits: list[float]
) -> None:
    # One connection in the pool: a retry could not even connect if the 503 held it.
    server.script("/", [Action(503), Action(503)])
    connector = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=5)
    middleware = ResilienceMiddleware("api", policy=_policy())
    async with _session(server, middleware, connector=connector, timeout=timeout) as session:
        async with session.get("/") as response:
            assert response.status == 200
    assert server.hits() == 3


async def test_a_consumed_stream_body_is_not_resent(
    server: FaultServer, waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield b"chunk-1"
        yield b"chunk-2"

    server.script("/upload", [Action(503)])
    middleware = ResilienceMiddleware("api", policy=_policy(), add_idempotency_key=True)
    caplog.set_level(logging.WARNING)
    async with _session(server, middleware) as session:
        async with session.put("/upload", data=stream()) as response:
            assert response.status == 503
    assert server.hits("/upload") == 1
    assert "one-shot stream" in caplog.text


async def test_breaker_opens_then_rejects_without_server_hits(
    server: FaultServer, waits: list[float]
) -> None:
    policy = _policy(retry={"max_attempts": 2}, circuit={"failures_to_open": 2})
    server.down = True
    rejected: list[CircuitOpenError] = []
    middleware = ResilienceMiddleware("api", policy=policy, on_reject=rejected.append)
    async with _session(server, middleware) as session:
        for _ in range(2):
            async with session.get("/") as response:
                assert response.status == 503
        assert server.hits() == 4
        for _ in range(5):
            with pytest.raises(CircuitOpenError):
                await session.get("/")
    assert server.hits() == 4
    assert len(rejected) == 5
    summary = summarize("api", policy=policy)
    assert (summary.total_calls, summary.attempts, summary.rejected) == (2, 4, 5)


async def test_half_open_probe_recovers_the_circuit(server: FaultServer) -> None:
    policy = _policy(retry={"max_attempts": 1}, circuit={"failures_to_open": 1, "cooldown_s": 30})
    middleware = ResilienceMiddleware("api", policy=policy)
    with testing.FakeClock() as clock:
        async with _session(server, middleware) as session:
            server.down = True
            async with session.get("/") as response:
                assert response.status == 503
            with pytest.raises(CircuitOpenError):
                await session.get("/")
            server.down = False
            clock.advance(30)
            async with session.get("/") as response:
                assert response.status == 200
            assert CircuitBreaker("api", policy=policy).state == "closed"
            async with session.get("/") as response:
                assert response.status == 200
    assert server.hits() == 3


async def test_breaker_per_host(server: FaultServer, other_server: FaultServer) -> None:
    policy = _policy(retry={"max_attempts": 1}, circuit={"failures_to_open": 1})
    middleware = ResilienceMiddleware("api", policy=policy, breaker_per_host=True)
    server.down = True
    async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
        async with session.get(server.url) as response:
            assert response.status == 503
        with pytest.raises(CircuitOpenError):
            await session.get(server.url)
        # Same host name (127.0.0.1), so use "localhost" for the other host.
        async with session.get(other_server.url.replace("127.0.0.1", "localhost")) as response:
            assert response.status == 200


class CountingTokens:
    """A token source that hands out numbered tokens; counts refreshes."""

    def __init__(self) -> None:
        self.current = "token-1"
        self.refreshes = 0

    async def aget_token(self) -> str:
        return self.current

    async def arefresh_after_unauthorized(self, rejected_access_token: str) -> str:
        if rejected_access_token == self.current:
            self.refreshes += 1
            self.current = f"token-{self.refreshes + 1}"
        return self.current


async def test_bearer_token_and_one_refresh_on_401(server: FaultServer, waits: list[float]) -> None:
    tokens = CountingTokens()
    server.script("/me", [Action(401)])
    middleware = ResilienceMiddleware("api", policy=_policy(), tokens=tokens)
    async with _session(server, middleware) as session:
        async with session.get("/me") as response:
            assert response.status == 200
        async with session.get("/me") as response:
            assert response.status == 200
    assert tokens.refreshes == 1
    assert [s.headers["Authorization"] for s in server.seen] == [
        "Bearer token-1",
        "Bearer token-2",
        "Bearer token-2",
    ]


async def test_a_second_401_is_returned_not_looped(server: FaultServer, waits: list[float]) -> None:
    tokens = CountingTokens()
    server.script("/me", [], then=Action(401))
    middleware = ResilienceMiddleware("api", policy=_policy(), tokens=tokens)
    async with _session(server, middleware) as session:
        async with session.get("/me") as response:
            assert response.status == 401
    assert server.hits("/me") == 2
    assert tokens.refreshes == 1


async def test_token_never_follows_a_redirect_to_another_origin(
    server: FaultServer, other_server: FaultServer, waits: list[float]
) -> None:
    elsewhere = other_server.url.replace("127.0.0.1", "localhost") + "/landing"
    server.script("/go", [Action(302, headers={"Location": elsewhere})])
    middleware = ResilienceMiddleware("api", policy=_policy(), tokens=CountingTokens())
    async with _session(server, middleware) as session:
        async with session.get("/go") as response:
            assert response.status == 200
    assert server.seen[0].headers["Authorization"] == "Bearer token-1"
    (landing,) = other_server.seen
    assert "Authorization" not in landing.headers


async def test_tls_errors_and_bad_urls_are_not_retried(
    server: FaultServer, waits: list[float]
) -> None:
    policy = _policy()
    async with aiohttp.ClientSession(
        middlewares=(ResilienceMiddleware("api", policy=policy),)
    ) as s:
        with pytest.raises(aiohttp.ClientSSLError):
            await s.get(server.url.replace("http://", "https://"))
    assert waits == []
    summary = summarize("api", policy=policy)
    assert summary.attempts == 1


async def test_chained_and_per_request_middlewares(server: FaultServer, waits: list[float]) -> None:
    policy = _policy()
    outer_calls: list[str] = []

    async def logging_middleware(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        outer_calls.append(req.method)
        return await handler(req)

    server.script("/", [Action(503), Action(503)])
    resilient_mw = ResilienceMiddleware("api", policy=policy)
    async with aiohttp.ClientSession(base_url=server.url) as session:
        async with session.get("/", middlewares=(logging_middleware, resilient_mw)) as response:
            assert response.status == 200
    assert outer_calls == ["GET"]  # one logical request outside, three attempts inside
    assert server.hits() == 3
