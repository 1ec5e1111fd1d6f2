"""One behavioural suite for the three HTTP adapters, parametrised by client.

aiohttp's middleware, httpx's transport (sync, async, and under the httpx2
fork) and requests' adapter against a real local server with programmable
faults. Every count is taken on the server side.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from connector_resilience import (
    CircuitBreaker,
    CircuitOpenError,
    RateLimitExceededError,
    summarize,
    testing,
)
from connector_resilience.backends import AggregateStore, CircuitRecord, store_for_policy
from connector_resilience.backends.memory import MemoryStore
from connector_resilience.errors import TokenRequiredError
from connector_resilience.oauth2 import save_token
from connector_resilience.policy import Policy
from tests.http_clients import KINDS, Driver
from tests.http_server import Action, FaultServer, fault_server

Make = Callable[..., Driver]


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


@pytest.fixture(params=KINDS)
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """Build a client of this kind with our adapter; all are closed afterwards."""
    made: list[Driver] = []

    def build(connector: str = "api", **options: Any) -> Driver:
        driver = Driver(request.param, connector, **options)
        made.append(driver)
        return driver

    yield build
    for driver in made:
        await driver.close()


def _policy(**groups: Any) -> Policy:
    retry = {"max_attempts": 3, "base_ms": 100, "cap_ms": 120_000, "jitter_pct": 0.0}
    retry.update(groups.pop("retry", {}))
    circuit = {"failures_to_open": 3, "cooldown_s": 30, "half_open_prob": 1.0}
    circuit.update(groups.pop("circuit", {}))
    return testing.memory_policy(retry=retry, circuit=circuit, **groups)


# Load control through every adapter ------------------------------------------------


async def test_a_fallback_answers_when_retries_run_out(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    server.script("/data", [Action(reset=True), Action(reset=True)])
    server.script("/cache", [], then=Action(200, body="cached"))
    policy = _policy(retry={"max_attempts": 2})
    client = make("fb", policy=policy, fallback_url=server.url + "/cache")
    answer = await client.request("GET", server.url + "/data")
    assert (answer.status, answer.text) == (200, "cached")
    assert server.hits("/data") == 2
    assert len(client.fallback_seen) == 1
    assert summarize("fb", policy=policy, store=store_for_policy(policy)).refusals == {
        "FallbackUsed": 1
    }


async def test_a_fallback_answers_an_open_circuit_without_a_server_hit(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    server.script("/data", [Action(503)])
    server.script("/cache", [], then=Action(200, body="cached"))
    policy = _policy(retry={"max_attempts": 1}, circuit={"failures_to_open": 1})
    client = make("fb-open", policy=policy, fallback_url=server.url + "/cache")
    assert (await client.request("GET", server.url + "/data")).status == 503  # opens it
    answer = await client.request("GET", server.url + "/data")
    assert (answer.status, answer.text) == (200, "cached")
    assert server.hits("/data") == 1
    assert len(client.fallback_seen) == 1
    assert isinstance(client.fallback_seen[0], CircuitOpenError)


async def test_a_429_pauses_the_rate_limiter_for_the_next_request(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    server.script("/items", [Action(429, headers={"Retry-After": "30"})], then=Action(200))
    policy = _policy(retry={"max_attempts": 1}, limits={"rate_per_s": 100, "rate_max_wait_s": 0})
    client = make("paused", policy=policy)
    assert (await client.request("GET", server.url + "/items")).status == 429
    with pytest.raises(RateLimitExceededError):
        await client.request("GET", server.url + "/items")
    assert server.hits("/items") == 1  # the second request never left


# Which requests are retried -------------------------------------------------------


async def test_get_is_retried_until_success(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    policy = _policy()
    server.script("/items", [Action(503), Action(502)])
    client = make("shop", policy=policy)
    answer = await client.request("GET", server.url + "/items")
    assert (answer.status, answer.text) == (200, "ok")
    assert server.hits("/items") == 3
    assert waits == [0.1, 0.2]
    summary = summarize("shop", policy=policy)
    assert (summary.total_calls, summary.attempts, summary.errors) == (1, 3, 0)
    assert summary.errors_by_type == {"HTTP 503": 1, "HTTP 502": 1}


async def test_post_is_not_retried(make: Make, server: FaultServer, waits: list[float]) -> None:
    policy = _policy()
    server.script("/orders", [Action(503)])
    answer = await make("shop", policy=policy).request("POST", server.url + "/orders", body=b"{}")
    assert answer.status == 503
    assert server.hits("/orders") == 1
    assert waits == []
    assert summarize("shop", policy=policy).errors == 1


async def test_post_with_idempotency_key_is_retried_with_the_same_key(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    server.script("/orders", [Action(503), Action(503)])
    client = make("shop", policy=_policy(), add_idempotency_key=True)
    answer = await client.request("POST", server.url + "/orders", body=b"payload")
    assert answer.status == 200
    assert server.hits("/orders") == 3
    assert len({s.headers["Idempotency-Key"] for s in server.seen}) == 1
    assert [s.body for s in server.seen] == [b"payload"] * 3


async def test_a_key_the_caller_set_makes_a_post_retryable(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    server.script("/charges", [Action(503)])
    answer = await make(policy=_policy()).request(
        "POST", server.url + "/charges", body=b"x", headers={"Idempotency-Key": "k-1"}
    )
    assert answer.status == 200
    assert [s.headers["Idempotency-Key"] for s in server.seen] == ["k-1", "k-1"]


async def test_connection_reset_is_retried_and_attempts_never_multiply(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    server.script("/", [Action(reset=True), Action(reset=True)])
    answer = await make(policy=_policy()).request("GET", server.url + "/")
    assert answer.status == 200
    # Three attempts are ours; a client retrying underneath would add more.
    assert server.hits() == 3


async def test_a_404_is_an_answer_not_a_failure(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    policy = _policy()
    server.script("/missing", [Action(404)])
    answer = await make(policy=policy).request("GET", server.url + "/missing")
    assert answer.status == 404
    assert server.hits() == 1
    summary = summarize("api", policy=policy)
    assert (summary.total_calls, summary.errors) == (1, 0)


# What the server says about waiting ------------------------------------------------


async def test_retry_after_seconds_is_honoured(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    server.script("/", [Action(503, headers={"Retry-After": "3"}), Action(429)])
    answer = await make(policy=_policy()).request("GET", server.url + "/")
    assert answer.status == 200
    assert server.hits() == 3
    assert waits == [3.0, 0.2]  # the server's delay, then the policy's backoff


async def test_retry_after_http_date_is_honoured(make: Make, server: FaultServer) -> None:
    with testing.FakeClock(start=1_800_000_000.0) as clock:
        soon = email.utils.formatdate(clock.wall() + 4, usegmt=True)
        server.script("/", [Action(503, headers={"Retry-After": soon})])
        began = clock.monotonic()
        answer = await make(policy=_policy()).request("GET", server.url + "/")
        assert answer.status == 200
        assert clock.monotonic() - began == pytest.approx(4.0)
    assert server.hits() == 2


async def test_retry_after_beyond_the_deadline_fails_fast_with_the_response(
    make: Make, server: FaultServer, waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    server.script("/", [Action(503, headers={"Retry-After": "5"})])
    caplog.set_level(logging.WARNING)
    answer = await make(policy=_policy(), deadline_s=2).request("GET", server.url + "/")
    assert answer.status == 503
    assert answer.headers["retry-after"] == "5"
    assert server.hits() == 1
    assert waits == []
    assert "remaining deadline" in caplog.text


async def test_retry_after_beyond_the_cap_is_never_shortened(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    server.script("/", [Action(429, headers={"Retry-After": "3600"})])
    answer = await make(policy=_policy(retry={"cap_ms": 10_000})).request("GET", server.url + "/")
    assert answer.status == 429
    assert server.hits() == 1
    assert waits == []


async def test_a_small_positive_jitter_is_added_to_a_server_wait(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    server.script("/", [Action(503, headers={"Retry-After": "2"}) for _ in range(2)])
    policy = _policy(retry={"jitter_pct": 0.2})
    answer = await make(policy=policy).request("GET", server.url + "/")
    assert answer.status == 200
    assert len(waits) == 2
    assert all(2.0 <= w <= 2.0 + 0.2 * 2.0 for w in waits)  # never earlier than asked


async def test_github_primary_rate_limit_waits_for_the_reset(
    make: Make, server: FaultServer
) -> None:
    with testing.FakeClock(start=1_800_000_000.0) as clock:
        reset = str(int(clock.wall()) + 42)
        limited = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}
        server.script("/user", [Action(403, headers=limited)])
        began = clock.monotonic()
        answer = await make(policy=_policy()).request("GET", server.url + "/user")
        assert answer.status == 200
        assert clock.monotonic() - began == pytest.approx(42.0)
    assert server.hits() == 2


async def test_github_secondary_rate_limit_honours_retry_after(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    server.script("/search", [Action(403, headers={"Retry-After": "60"})])
    answer = await make(policy=_policy()).request("GET", server.url + "/search")
    assert answer.status == 200
    assert waits == [60.0]


async def test_a_plain_403_is_not_retried(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    policy = _policy()
    server.script("/private", [Action(403, headers={"x-ratelimit-remaining": "4999"})])
    answer = await make(policy=policy).request("GET", server.url + "/private")
    assert answer.status == 403
    assert server.hits() == 1
    assert summarize("api", policy=policy).errors == 0  # the service said no; it is healthy


async def test_ietf_ratelimit_fields_say_when_to_come_back(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    exhausted = {"RateLimit": '"default";r=0;t=7', "RateLimit-Policy": '"default";q=100;w=60'}
    server.script("/", [Action(429, headers=exhausted)])
    answer = await make(policy=_policy()).request("GET", server.url + "/")
    assert answer.status == 200
    assert waits == [7.0]


async def test_stripe_should_retry_is_honoured_both_ways(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    server.script("/no", [Action(503, headers={"Stripe-Should-Retry": "false"})])
    server.script("/yes", [Action(409, headers={"Stripe-Should-Retry": "true"})])
    client = make(policy=_policy())
    assert (await client.request("GET", server.url + "/no")).status == 503
    assert (await client.request("GET", server.url + "/yes")).status == 200
    assert (server.hits("/no"), server.hits("/yes")) == (1, 2)


# Bodies ------------------------------------------------------------------------------


async def test_a_streamed_body_is_sent_once_and_never_resent(
    make: Make, server: FaultServer, waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    server.script("/upload", [Action(503)])
    caplog.set_level(logging.WARNING)
    answer = await make(policy=_policy()).request(
        "PUT", server.url + "/upload", stream=[b"chunk-1", b"chunk-2"]
    )
    assert answer.status == 503
    assert server.hits("/upload") == 1
    assert server.seen[0].body == b"chunk-1chunk-2"
    assert "not retried" in caplog.text


async def test_a_bytes_body_is_resent_whole(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    server.script("/upload", [Action(503)])
    answer = await make(policy=_policy()).request("PUT", server.url + "/upload", body=b"a" * 5000)
    assert answer.status == 200
    assert [len(s.body) for s in server.seen] == [5000, 5000]


# Timeouts ------------------------------------------------------------------------------


async def test_a_slow_attempt_is_cut_by_the_attempt_timeout_and_retried(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    policy = _policy(retry={"attempt_timeout_s": 0.3})  # RETRY_ATTEMPT_TIMEOUT_S
    server.script("/slow", [Action(delay_s=5.0)])
    client = make(policy=policy)
    began = time.monotonic()
    answer = await client.request("GET", server.url + "/slow")
    assert answer.status == 200
    assert time.monotonic() - began < 4.0  # the 5 s answer was never waited for
    assert server.hits("/slow") == 2
    summary = summarize("api", policy=policy)
    assert (summary.attempts, summary.attempt_errors, summary.errors) == (2, 1, 0)


async def test_the_remaining_deadline_caps_the_attempt_timeout(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    server.script("/slow", [Action(delay_s=5.0)])
    client = make(policy=_policy(), deadline_s=0.4, attempt_timeout_s=30)
    began = time.monotonic()
    with pytest.raises(client.timeout_errors):
        await client.request("GET", server.url + "/slow")
    assert time.monotonic() - began < 4.0
    assert server.hits("/slow") == 1  # no time was left for a second attempt


# The breaker -----------------------------------------------------------------------


async def test_breaker_opens_then_rejects_without_server_hits(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    policy = _policy(retry={"max_attempts": 2}, circuit={"failures_to_open": 2})
    server.down = True
    rejected: list[CircuitOpenError] = []
    client = make(policy=policy, on_reject=rejected.append)
    for _ in range(2):
        assert (await client.request("GET", server.url + "/")).status == 503
    assert server.hits() == 4
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            await client.request("GET", server.url + "/")
    assert server.hits() == 4
    assert len(rejected) == 3
    summary = summarize("api", policy=policy)
    assert (summary.total_calls, summary.attempts, summary.rejected) == (2, 4, 3)


async def test_breaker_per_host(
    make: Make, server: FaultServer, other_server: FaultServer, waits: list[float]
) -> None:
    policy = _policy(retry={"max_attempts": 1}, circuit={"failures_to_open": 1})
    client = make(policy=policy, breaker_per_host=True)
    server.down = True
    assert (await client.request("GET", server.url + "/")).status == 503
    with pytest.raises(CircuitOpenError):
        await client.request("GET", server.url + "/")
    elsewhere = other_server.url.replace("127.0.0.1", "localhost")
    assert (await client.request("GET", elsewhere + "/")).status == 200


class HeldReadStore(MemoryStore):
    """A memory store that counts its breaker reads and can hold the first one.

    Once :meth:`hold` is called, the first read waits until ``others`` more
    reads have begun or ``at_most_s`` has passed: requests that each read the
    store pile up in it, requests that wait for one read do not (and cost
    the test ``at_most_s``).
    """

    def __init__(self) -> None:
        super().__init__("memory://held-reads")
        self.reads = 0
        self._state = threading.Condition()
        self._hold: tuple[int, float] | None = None

    def hold(self, *, others: int, at_most_s: float) -> None:
        with self._state:
            self.reads = 0
            self._hold = (others, at_most_s)

    def get_circuit(self, connector: str) -> CircuitRecord | None:
        with self._state:
            self.reads += 1
            self._state.notify_all()
            if self._hold is not None and self.reads == 1:
                others, at_most_s = self._hold
                self._state.wait_for(lambda: self.reads > others, timeout=at_most_s)
        return super().get_circuit(connector)


async def test_a_stale_breaker_is_read_once_for_concurrent_requests(
    make: Make, server: FaultServer
) -> None:
    store = HeldReadStore()
    client = make(policy=_policy(circuit={"sync_interval_s": 30}), store=store)
    with testing.FakeClock() as clock:
        assert (await client.request("GET", server.url + "/")).status == 200  # cached
        clock.advance(31)  # and now stale: the next request reads the store
        store.hold(others=3, at_most_s=0.5)
        answers = await asyncio.gather(*(client.request("GET", server.url + "/") for _ in range(4)))
    assert [a.status for a in answers] == [200] * 4
    assert store.reads == 1
    assert server.hits() == 5


async def test_requests_waiting_on_a_breaker_read_obey_what_it_found(
    make: Make, server: FaultServer
) -> None:
    store = HeldReadStore()
    policy = _policy(circuit={"sync_interval_s": 30, "failures_to_open": 1, "cooldown_s": 3600})
    client = make(policy=policy, store=store)
    with testing.FakeClock() as clock:
        assert (await client.request("GET", server.url + "/")).status == 200  # "closed", cached
        # Another process opens the circuit; this one sees it once its cache is stale.
        CircuitBreaker("api", policy=policy, store=store).record_failure()
        clock.advance(31)
        store.hold(others=3, at_most_s=0.5)
        outcomes = await asyncio.gather(
            *(client.request("GET", server.url + "/") for _ in range(4)), return_exceptions=True
        )
    assert all(isinstance(o, CircuitOpenError) for o in outcomes), outcomes
    assert store.reads == 1
    assert server.hits() == 1


# Metrics ---------------------------------------------------------------------------


async def test_every_adapter_records_the_same_rows(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    policy = _policy()
    server.script("/users/42/secret-path", [Action(502)])
    client = make("api", policy=policy)
    answer = await client.request("GET", server.url + "/users/42/secret-path?token=abc")
    assert answer.status == 200
    summarize(policy=policy)  # writes what is buffered
    store = store_for_policy(policy)
    assert isinstance(store, AggregateStore)
    rows = sorted(store.read_aggregates(resolution=1, since=0), key=lambda r: r.status)
    port = str(server.port)
    # Aggregated (the default): one row per (operation, status, labels), errors by
    # type, and the retry that saved the call counted in ``retried``.
    assert [
        (r.operation, r.status, r.errors, r.labels, r.attempts, r.finals, r.retried) for r in rows
    ] == [
        (
            "GET",
            "error",
            {"HTTP 502": 1},
            {"method": "GET", "host": "127.0.0.1", "port": port, "status_code": "502"},
            1,
            0,
            0,
        ),
        (
            "GET",
            "ok",
            None,
            {"method": "GET", "host": "127.0.0.1", "port": port, "status_code": "200"},
            1,
            1,
            1,
        ),
    ]
    assert all("secret" not in str(r.to_json()) and "abc" not in str(r.to_json()) for r in rows)


async def test_each_status_of_one_route_is_counted_under_its_own_status(
    make: Make, server: FaultServer
) -> None:
    # Successes of a route are kept per status: a 204 after two 200s, and a 404
    # (an answer, judged with its headers each time), each keep their own count.
    policy = _policy()
    server.script("/items", [Action(200), Action(204, body=""), Action(404), Action(200)])
    client = make("api", policy=policy)
    statuses = [(await client.request("GET", server.url + "/items")).status for _ in range(4)]
    assert statuses == [200, 204, 404, 200]
    summarize(policy=policy)  # writes what is buffered
    store = store_for_policy(policy)
    assert isinstance(store, AggregateStore)
    counted = {
        r.labels["status_code"]: (r.status, r.attempts)
        for r in store.read_aggregates(resolution=1, since=0)
        if r.labels
    }
    assert counted == {"200": ("ok", 2), "204": ("ok", 1), "404": ("ok", 1)}


async def test_a_status_whose_headers_matter_is_judged_on_every_request(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    # A plain 403 settles the call; the next 403 on the same route is a rate
    # limit (it says when to come back) and is retried: nothing was cached.
    server.script(
        "/repos",
        [
            Action(403, headers={"x-ratelimit-remaining": "4999"}),
            Action(403, headers={"Retry-After": "2"}),
        ],
    )
    client = make(policy=_policy())
    assert (await client.request("GET", server.url + "/repos")).status == 403
    assert (await client.request("GET", server.url + "/repos")).status == 200
    assert server.hits("/repos") == 3
    assert waits == [2.0]


async def test_without_metrics_nothing_is_recorded_and_the_breaker_still_counts(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    policy = _policy(retry={"max_attempts": 1})
    client = make(policy=policy, metrics=False)
    assert (await client.request("GET", server.url + "/")).status == 200
    server.down = True
    for _ in range(3):  # failures_to_open
        assert (await client.request("GET", server.url + "/")).status == 503
    hits = server.hits()
    with pytest.raises(CircuitOpenError):
        await client.request("GET", server.url + "/")
    assert server.hits() == hits
    assert summarize("api", policy=policy).total_calls == 0


# Tokens ----------------------------------------------------------------------------


class CountingTokens:
    """A token source, sync and async, that hands out numbered tokens; counts refreshes."""

    def __init__(self) -> None:
        self.current = "token-1"
        self.refreshes = 0

    def get_token(self) -> str:
        return self.current

    def refresh_after_unauthorized(self, rejected_access_token: str) -> str:
        if rejected_access_token == self.current:
            self.refreshes += 1
            self.current = f"token-{self.refreshes + 1}"
        return self.current

    async def aget_token(self) -> str:
        return self.get_token()

    async def arefresh_after_unauthorized(self, rejected_access_token: str) -> str:
        return self.refresh_after_unauthorized(rejected_access_token)


async def test_oauth2_required_without_tokens_sends_nothing_until_a_token_is_stored(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    # OAUTH2_REQUIRED with no tokens= on the adapter: as @resilient does, no
    # request leaves without a usable token in the store.
    policy = _policy(oauth={"required": True})
    client = make("crm", policy=policy)
    with pytest.raises(TokenRequiredError, match="crm"):
        await client.request("GET", server.url + "/me")
    assert server.hits("/me") == 0
    save_token("crm", {"access_token": "stored", "expires_in": 3600}, policy=policy)
    assert (await client.request("GET", server.url + "/me")).status == 200
    assert server.hits("/me") == 1


async def test_a_401_refreshes_once_and_repeats_the_attempt(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    tokens = CountingTokens()
    server.script("/me", [Action(401)])
    client = make(policy=_policy(), tokens=tokens)
    assert (await client.request("GET", server.url + "/me")).status == 200
    assert (await client.request("GET", server.url + "/me")).status == 200
    assert tokens.refreshes == 1
    assert [s.headers["Authorization"] for s in server.seen] == [
        "Bearer token-1",
        "Bearer token-2",
        "Bearer token-2",
    ]
    assert waits == []  # a rotated token costs no retry


async def test_a_second_401_is_returned_not_looped(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    tokens = CountingTokens()
    server.script("/me", [], then=Action(401))
    client = make(policy=_policy(), tokens=tokens)
    assert (await client.request("GET", server.url + "/me")).status == 401
    assert server.hits("/me") == 2
    assert tokens.refreshes == 1


async def test_tokens_never_go_to_another_origin(
    make: Make, server: FaultServer, other_server: FaultServer, waits: list[float]
) -> None:
    elsewhere = other_server.url.replace("127.0.0.1", "localhost")
    server.script("/go", [Action(302, headers={"Location": elsewhere + "/landing"})])
    client = make(policy=_policy(), tokens=CountingTokens())
    assert (await client.request("GET", server.url + "/go")).status == 200
    assert (await client.request("GET", elsewhere + "/direct")).status == 200
    assert server.seen[0].headers["Authorization"] == "Bearer token-1"
    assert [s.path for s in other_server.seen] == ["/landing", "/direct"]
    assert all("Authorization" not in s.headers for s in other_server.seen)


async def test_configured_auth_origins_are_the_only_ones(
    make: Make, server: FaultServer, waits: list[float]
) -> None:
    client = make(policy=_policy(), tokens=CountingTokens(), auth_origins=["https://api.test"])
    assert (await client.request("GET", server.url + "/me")).status == 200
    assert "Authorization" not in server.seen[0].headers
