"""The tenacity and stamina idioms (issue 19) on the engine of load control and tracing.

A retried block asks the retry budget before each retry, takes one rate-limit
token and one bulkhead slot for the whole loop, and is traced like a call;
``fn.statistics`` follows calls through the admitted path and says when load
control refused one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from connector_resilience import (
    BulkheadFullError,
    RateLimitExceededError,
    Retrying,
    resilient,
    retrying,
    summarize,
    testing,
    tracing,
)
from connector_resilience.policy import Policy


@pytest.fixture
def waits() -> Iterator[list[float]]:
    with testing.no_waits() as asked:
        yield asked


def _policy(**limits: Any) -> Policy:
    """A private memory store, three attempts, no jitter, the breaker out of the way."""
    return testing.memory_policy(
        retry={"max_attempts": 3, "base_ms": 10, "jitter_pct": 0.0},
        circuit={"failures_to_open": 1000},
        limits=limits,
    )


class Flaky:
    """Fails the first ``failures`` calls, counting every call."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"boom {self.calls}")
        return "ok"


def _run(block: Retrying, body: Callable[[], object]) -> None:
    """Run ``body`` in each attempt of ``block``."""
    for attempt in block:
        with attempt:
            body()


async def _arun(block: Retrying, body: Callable[[], object]) -> None:
    async for attempt in block:
        with attempt:
            body()


def test_a_block_asks_the_retry_budget_before_each_retry(waits: list[float]) -> None:
    policy = _policy(budget_ratio=0, budget_min_per_s=0)  # no retry is ever affordable
    flaky = Flaky(5)
    block = retrying("budgeted", policy=policy, breaker=False)
    with pytest.raises(ConnectionError, match="boom 1"):
        _run(block, flaky)
    assert flaky.calls == 1  # the budget refused the retry: the block's own error
    assert waits == []
    assert (block.statistics.attempts, block.statistics.outcome) == (1, "failure")
    summary = summarize("budgeted", policy=policy)
    assert summary.refusals == {"RetryBudgetExhausted": 1}
    assert (summary.total_calls, summary.errors) == (1, 1)


async def test_an_async_block_asks_the_retry_budget_too(waits: list[float]) -> None:
    policy = _policy(budget_ratio=0, budget_min_per_s=0)
    flaky = Flaky(5)
    with pytest.raises(ConnectionError):
        await _arun(retrying("budgeted-async", policy=policy, breaker=False), flaky)
    assert flaky.calls == 1
    assert summarize("budgeted-async", policy=policy).refusals == {"RetryBudgetExhausted": 1}


def test_a_block_takes_one_rate_limit_token_for_all_its_attempts(waits: list[float]) -> None:
    policy = _policy(rate_per_s=0.01, rate_burst=1, rate_max_wait_s=0, budget_ratio=float("inf"))
    flaky = Flaky(0)
    block = retrying("limited", policy=policy, breaker=False)
    _run(block, flaky)
    with pytest.raises(RateLimitExceededError) as caught:
        _run(block, flaky)
    assert flaky.calls == 1  # refused before the body ran
    assert caught.value.connector == "limited"
    assert block.statistics.as_dict() == {
        "attempts": 0,
        "waited_s": 0.0,
        "outcome": "rejected",
        "error": "RateLimitExceededError",
    }
    assert summarize("limited", policy=policy).refusals == {"RateLimitExceededError": 1}


def test_a_block_holds_its_bulkhead_slot_until_the_loop_ends(waits: list[float]) -> None:
    policy = _policy(bulkhead_max_concurrent=1, bulkhead_max_wait_s=0)
    seen: list[str] = []

    @resilient("narrow", policy=policy, breaker=False)
    def fetch() -> str:
        return "fetched"

    for attempt in retrying("narrow", policy=policy, breaker=False):
        with attempt:
            # The block holds the only slot: a call of the same connector is refused.
            with pytest.raises(BulkheadFullError):
                fetch()
            seen.append("inside")
    assert seen == ["inside"]
    assert fetch() == "fetched"  # the loop gave the slot back
    assert fetch.statistics.outcome == "success"  # type: ignore[attr-defined]
    with pytest.raises(ZeroDivisionError):  # and gives it back when the block raises
        _run(retrying("narrow", policy=policy, breaker=False, retry_on=OSError), lambda: 1 / 0)
    assert fetch() == "fetched"
    for attempt in retrying("narrow", policy=policy, breaker=False):
        with attempt:
            break  # or when the loop is left early
    assert fetch() == "fetched"


async def test_an_async_block_gives_its_slot_back(waits: list[float]) -> None:
    policy = _policy(bulkhead_max_concurrent=1, bulkhead_max_wait_s=0)

    @resilient("narrow-async", policy=policy, breaker=False)
    async def fetch() -> str:
        return "fetched"

    async for attempt in retrying("narrow-async", policy=policy, breaker=False):
        with attempt:
            with pytest.raises(BulkheadFullError):
                await fetch()
    assert await fetch() == "fetched"


def test_statistics_follow_an_admitted_call_and_name_the_refusal(waits: list[float]) -> None:
    # Three tokens: the call and its two retries each take one; the next call finds none.
    policy = _policy(rate_per_s=0.01, rate_burst=3, rate_max_wait_s=0, budget_ratio=float("inf"))
    flaky = Flaky(2)

    @resilient("admitted", policy=policy, breaker=False)
    def fetch() -> str:
        return flaky()

    assert fetch() == "ok"  # through the rate limiter, retried twice
    stats = fetch.statistics  # type: ignore[attr-defined]
    assert (stats.attempts, stats.outcome, stats.error) == (3, "success", "ConnectionError")
    with pytest.raises(RateLimitExceededError):
        fetch()
    assert (stats.attempts, stats.outcome, stats.error) == (0, "rejected", "RateLimitExceededError")


async def test_async_statistics_follow_an_attempt_timeout(waits: list[float]) -> None:
    policy = _policy(budget_ratio=float("inf"))
    calls = 0

    @resilient("timed", policy=policy, breaker=False, attempt_timeout_s=0.05)
    async def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()  # hangs: the timeout cuts it short
        return "ok"

    assert await fetch() == "ok"
    stats = fetch.statistics  # type: ignore[attr-defined]
    assert (stats.attempts, stats.outcome, stats.error) == (2, "success", "TimeoutError")


def test_retry_with_keeps_the_fallback_and_can_replace_it(waits: list[float]) -> None:
    policy = _policy(budget_ratio=float("inf"))
    flaky = Flaky(100)

    @resilient("fallback", policy=policy, breaker=False, fallback=lambda exc: "cached")
    def fetch() -> str:
        return flaky()

    assert fetch() == "cached"
    assert fetch.retry_with(max_attempts=1)() == "cached"  # type: ignore[attr-defined]
    assert flaky.calls == 3 + 1
    assert fetch.retry_with(fallback=lambda exc: "other")() == "other"  # type: ignore[attr-defined]
    assert fetch.statistics.outcome == "failure"  # type: ignore[attr-defined]


def test_a_traced_block_is_a_call_span_with_a_span_per_attempt(waits: list[float]) -> None:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.instrument(tracer_provider=provider)
    try:
        inner = provider.get_tracer("the-block-itself")
        flaky = Flaky(1)
        for attempt in retrying("traced", operation="sync_stock", policy=_policy()):
            with attempt, inner.start_as_current_span("sql"):
                flaky()
    finally:
        tracing.reset()
        provider.shutdown()
    spans = list(exporter.get_finished_spans())
    (call,) = [s for s in spans if s.name == "traced.sync_stock"]
    tries = [s for s in spans if s.parent is not None and s.parent.span_id == call.context.span_id]
    assert [s.name for s in tries] == ["traced.sync_stock attempt"] * 2
    assert call.attributes is not None
    assert call.attributes["connector_resilience.attempts"] == 2
    # The block's own spans are children of the attempt they ran in.
    sql = sorted((s for s in spans if s.name == "sql"), key=lambda s: s.start_time or 0)
    assert [s.parent.span_id for s in sql if s.parent] == [
        t.context.span_id for t in sorted(tries, key=lambda s: s.start_time or 0)
    ]
