"""Load control through ``@resilient``: the retry budget, the rate limiter, the bulkhead,
fallbacks and the async per-attempt timeout, each counted in the metrics.

Every function counts its own calls, so "without calling out" is checked, not assumed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
import random
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connector_resilience import (
    BulkheadFullError,
    Policy,
    RateLimitExceededError,
    _clock,
    resilient,
    summarize,
    testing,
)
from connector_resilience.errors import StoreWarning
from connector_resilience.limits import REFUSAL_MEMORY_S, load_control_for
from tests._threads import fine_thread_switching


@pytest.fixture
def waits() -> Iterator[list[float]]:
    with testing.no_waits() as asked:
        yield asked


def _policy(**limits: Any) -> Policy:
    """A private memory store, no jitter, the breaker out of the way."""
    retry = limits.pop("retry", {"max_attempts": 3, "base_ms": 10, "jitter_pct": 0.0})
    return testing.memory_policy(retry=retry, circuit={"failures_to_open": 1000}, limits=limits)


class Flaky:
    """Fails the first ``failures`` calls (forever if None), counting every call."""

    def __init__(self, failures: int | None = None) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures is None or self.calls <= self.failures:
            raise ConnectionError(f"boom {self.calls}")
        return "ok"


# Settings ---------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["-0.1", "many", "nan"])
def test_a_bad_budget_ratio_names_the_variable(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_BUDGET_RATIO", raw)
    with pytest.raises(ValidationError, match="RETRY_BUDGET_RATIO"):
        Policy()


def test_scopes_accept_process_or_store_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATE_LIMIT_SCOPE", "fleet")
    with pytest.raises(ValidationError, match="RATE_LIMIT_SCOPE"):
        Policy()


def test_the_budget_is_on_by_default_and_the_rest_off() -> None:
    limits = Policy().limits
    assert (limits.budget_ratio, limits.budget_min_per_s, limits.budget_window_s) == (0.2, 10, 10)
    assert limits.budget_scope == "store"  # the fleet's floor is 10/s, not 10/s per process
    assert limits.rate_per_s is None
    assert limits.bulkhead_max_concurrent is None


# Retry budget -----------------------------------------------------------------


def test_ratio_zero_turns_retries_off(waits: list[float]) -> None:
    policy = _policy(budget_ratio=0)
    flaky = Flaky(failures=1)
    call = resilient("budget-off", policy=policy)(flaky)
    with pytest.raises(ConnectionError, match="boom 1"):
        call()
    assert flaky.calls == 1
    summary = summarize("budget-off", policy=policy)
    assert summary.refusals == {"RetryBudgetExhausted": 1}
    assert summary.rejected == 0  # the call ran: a refused retry is not a refused call
    assert (summary.total_calls, summary.errors) == (1, 1)


def test_retries_stay_within_the_share_of_logical_calls(waits: list[float]) -> None:
    # 20% of the calls, no floor: 50 calls that succeed at once earn 10 retries.
    # Per process: every refusal is decided afresh (no refusal remembered).
    policy = _policy(budget_ratio=0.2, budget_min_per_s=0, budget_scope="process")
    ok = resilient("budget", policy=policy)(lambda: "ok")
    for _ in range(50):
        ok()
    flaky = Flaky()
    failing = resilient("budget", operation="failing", policy=policy)(flaky)
    for _ in range(10):
        with pytest.raises(ConnectionError):
            failing()
    # 10 more logical calls (60 in all) earn 2 more: 12 retries across 10 calls.
    assert flaky.calls == 10 + 12
    summary = summarize("budget", policy=policy)
    assert summary.retries == 12
    # Calls 6 to 10 each had a retry refused (call 10's 60th call earned one back
    # first); each ended once, with the function's own error.
    assert summary.refusals == {"RetryBudgetExhausted": 5}


def test_the_floor_lets_a_quiet_connector_retry(waits: list[float]) -> None:
    policy = _policy(budget_ratio=0.2, budget_min_per_s=0.5, budget_window_s=10)
    flaky = Flaky(failures=1)
    assert resilient("quiet", policy=policy)(flaky)() == "ok"
    assert flaky.calls == 2


def test_a_refused_retry_is_logged_once_per_burst(
    waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    policy = _policy(budget_ratio=0)
    call = resilient("noisy", policy=policy)(Flaky())
    with caplog.at_level(logging.WARNING, logger="connector_resilience.limits"):
        for _ in range(20):
            with pytest.raises(ConnectionError):
                call()
    assert caplog.text.count("retry budget exhausted") == 1


def test_inf_turns_the_budget_off(waits: list[float]) -> None:
    policy = _policy(budget_ratio=float("inf"), budget_min_per_s=0)
    flaky = Flaky()
    call = resilient("unbudgeted", policy=policy)(flaky)
    for _ in range(5):
        with pytest.raises(ConnectionError):
            call()
    assert flaky.calls == 15


def test_a_shared_budget_spans_decorators_of_one_connector(waits: list[float]) -> None:
    policy = _policy(budget_ratio=0.5, budget_min_per_s=0, budget_scope="store")
    ok = resilient("shared", operation="a", policy=policy)(lambda: "ok")
    ok()
    ok()
    flaky = Flaky()
    with pytest.raises(ConnectionError):
        resilient("shared", operation="b", policy=policy)(flaky)()
    # a's 2 calls and b's 1 earn 1 retry (0.5 x 3 = 1.5): b makes 2 attempts, not 3.
    assert flaky.calls == 2


def test_a_refused_shared_retry_is_remembered_for_a_moment(waits: list[float]) -> None:
    policy = _policy(budget_ratio=0.5, budget_min_per_s=0, retry={"max_attempts": 2, "base_ms": 0})
    ok = resilient("memo", policy=policy)(lambda: "ok")
    flaky = Flaky()
    failing = resilient("memo", operation="failing", policy=policy)(flaky)
    with testing.FakeClock() as clock:
        with pytest.raises(ConnectionError):
            failing()  # 1 call earns 0.5 retries: refused by the store, and remembered
        for _ in range(10):
            ok()  # 11 calls have earned 5 retries
        with pytest.raises(ConnectionError):
            failing()  # refused at once, without asking the store
        assert flaky.calls == 2
        clock.advance(REFUSAL_MEMORY_S)
        with pytest.raises(ConnectionError):
            failing()  # the memory is over: the store is asked, and grants the retry
        assert flaky.calls == 4


async def test_async_retries_ask_the_budget_too(waits: list[float]) -> None:
    policy = _policy(budget_ratio=0)
    calls = 0

    @resilient("async-budget", policy=policy)
    async def fetch() -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await fetch()
    assert calls == 1


# Rate limiter -----------------------------------------------------------------


def test_no_token_within_the_wait_raises_without_calling_out() -> None:
    policy = _policy(rate_per_s=2, rate_burst=2, rate_max_wait_s=0)
    flaky = Flaky(failures=0)
    call = resilient("limited", policy=policy)(flaky)
    assert call() == "ok"
    assert call() == "ok"
    before = time.time()
    with pytest.raises(RateLimitExceededError) as caught:
        call()
    assert flaky.calls == 2
    error = caught.value
    assert error.connector == "limited"
    assert _shows_only_itself(error)  # not chained to how the wrapper looked for a token
    assert error.retry_at is not None
    assert before < error.retry_at <= time.time() + 0.5  # one token every 0.5 s
    assert "limited" in str(error)
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), again.connector, again.retry_at) == (
        type(error),
        "limited",
        error.retry_at,
    )
    summary = summarize("limited", policy=policy)
    assert summary.refusals == {"RateLimitExceededError": 1}
    assert summary.rejected == 1


def test_a_call_waits_for_its_token_in_order() -> None:
    policy = _policy(rate_per_s=10, rate_burst=1, rate_max_wait_s=5)
    call = resilient("queued", policy=policy)(lambda: "ok")
    with testing.FakeClock() as clock:
        # The bucket runs on the clock that times calls (perf: real time plus
        # the fake clock's jumps), so the real time the calls take counts too.
        started = clock.perf()
        for _ in range(4):
            assert call() == "ok"
        # Three waits of one interval each: 10 per second, never a burst.
        assert 0.3 - 1e-9 <= clock.perf() - started < 0.3 + 0.05


def test_threads_racing_for_tokens_get_exactly_the_burst() -> None:
    # 8 threads x 500 calls against a bucket of 50 that refills once in 1000 s:
    # exactly 50 calls go out, however the threads interleave.
    policy = _policy(rate_per_s=0.001, rate_burst=50, rate_max_wait_s=0)
    went_out: list[int] = []  # list.append is atomic: no count is lost to a race
    call = resilient("raced", policy=policy)(lambda: went_out.append(1))
    refused: list[int] = []
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for _ in range(500):
            try:
                call()
            except RateLimitExceededError:
                refused.append(1)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(went_out) == 50
    assert len(refused) == 8 * 500 - 50


def _limiter(connector: str, *, rate_per_s: float, burst: float) -> Any:
    policy = _policy(rate_per_s=rate_per_s, rate_burst=burst, rate_max_wait_s=0)
    limiter = load_control_for(connector, policy=policy, store=_store(policy)).limiter
    assert limiter is not None
    assert limiter.local
    return limiter


def _most_in_any_span(times: list[float], rate_per_s: float) -> float:
    """The largest ``count - rate x span`` over every span [times[i], times[j]]."""
    # count(i..j) - rate x (t_j - t_i) = (j + 1 - rate t_j) - (i - rate t_i): for each
    # i, the best j >= i is the suffix maximum of the first term.
    worst = -math.inf
    best_end = -math.inf
    for i in range(len(times) - 1, -1, -1):
        best_end = max(best_end, i + 1 - rate_per_s * times[i])
        worst = max(worst, best_end - (i - rate_per_s * times[i]))
    return worst


def test_tokens_taken_ahead_never_exceed_the_rate_over_any_span_plus_the_burst() -> None:
    # A burst of 10,000: the bucket takes 100 tokens at a time ahead. Calls come in
    # floods, steadily faster than the rate, after long idle spells (a batch taken
    # just before one, its tokens used just after: the case that would overspend
    # if they counted from when they were taken), and at random.
    rate, burst = 1000.0, 10_000.0
    limiter = _limiter("ahead-spans", rate_per_s=rate, burst=burst)
    rng = random.Random(7)
    moments: list[float] = [100.0] * 25_000  # a flood: twice the burst at once
    t = 100.0
    for _ in range(10_000):  # twice the rate for 5 s
        t += 0.5 / rate
        moments.append(t)
    floods: list[float] = []
    for _ in range(20):  # one call, idle for 60 s (the bucket refills), then a flood
        t += 60.0
        moments.append(t)
        t += 60.0
        moments.extend([t] * 12_000)
        floods.append(t)
    for _ in range(20_000):
        t += rng.expovariate(rate * 1.5)
        moments.append(t)
    granted: list[float] = []
    took_ahead = 0
    for now in moments:
        if limiter.take_locally(0.0, now).granted:
            granted.append(now)
        took_ahead = max(took_ahead, len(limiter.ahead))
    assert took_ahead == 99  # the batches were taken: this checks them
    assert _most_in_any_span(granted, rate) <= burst + 1e-6
    # Stricter by at most the tokens taken ahead: a flood after an idle spell gets
    # nearly the whole burst.
    assert granted.count(100.0) == burst
    assert all(burst - 100 <= granted.count(flood) <= burst for flood in floods)


def test_threads_racing_for_tokens_taken_ahead_get_exactly_the_burst() -> None:
    # As test_threads_racing_for_tokens_get_exactly_the_burst, with a burst large
    # enough for the bucket to take 50 tokens at a time ahead.
    policy = _policy(rate_per_s=0.001, rate_burst=5000, rate_max_wait_s=0)
    went_out: list[int] = []
    call = resilient("raced-ahead", policy=policy)(lambda: went_out.append(1))
    refused: list[int] = []
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for _ in range(1000):
            try:
                call()
            except RateLimitExceededError:
                refused.append(1)

    with fine_thread_switching():
        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert len(went_out) == 5000
    assert len(refused) == 8 * 1000 - 5000


def test_a_refusal_once_the_tokens_taken_ahead_run_out_shows_only_itself() -> None:
    policy = _policy(rate_per_s=0.001, rate_burst=1000, rate_max_wait_s=0)
    call = resilient("ahead-refused", policy=policy)(lambda: "ok")
    for _ in range(1000):
        call()
    with pytest.raises(RateLimitExceededError) as caught:
        call()
    assert _shows_only_itself(caught.value)


def _shows_only_itself(error: BaseException) -> bool:
    """No other exception is printed with ``error`` (such as the empty pop the wrapper tried)."""
    printed = "".join(traceback.format_exception(error))
    return "During handling" not in printed and "direct cause" not in printed


def test_a_pause_drops_the_tokens_taken_ahead() -> None:
    limiter = _limiter("ahead-paused", rate_per_s=1000.0, burst=10_000.0)
    now = 50.0
    assert limiter.take_locally(0.0, now).granted
    assert limiter.ahead  # taken ahead
    limiter.pause(30.0)
    assert not limiter.ahead
    assert not limiter.take_locally(0.0, _clock.perf()).granted


def test_retries_take_tokens_too(waits: list[float]) -> None:
    policy = _policy(rate_per_s=0.01, rate_burst=2, rate_max_wait_s=0, budget_ratio=float("inf"))
    flaky = Flaky()
    with pytest.raises(ConnectionError):
        resilient("retry-tokens", policy=policy)(flaky)()
    # Two tokens: the first attempt and one retry; the third attempt was refused.
    assert flaky.calls == 2
    assert summarize("retry-tokens", policy=policy).refusals == {"RateLimitExceededError": 1}


def test_the_deadline_bounds_the_wait_for_a_token() -> None:
    policy = _policy(rate_per_s=0.1, rate_burst=1, rate_max_wait_s=60)
    call = resilient("hurried", policy=policy, deadline_s=1.0)(lambda: "ok")
    call()
    with pytest.raises(RateLimitExceededError):
        call()  # the next token is 10 s away: past the 1 s deadline, so no wait


def test_pause_holds_every_call_until_the_server_said() -> None:
    policy = _policy(rate_per_s=100, rate_max_wait_s=0)
    call = resilient("paused", policy=policy)(lambda: "ok")
    call()
    control = load_control_for("paused", policy=policy, store=_store(policy))
    control.pause(until=time.time() + 30)
    with pytest.raises(RateLimitExceededError) as caught:
        call()
    assert caught.value.retry_at is not None
    assert caught.value.retry_at > time.time() + 29


def _store(policy: Policy) -> Any:
    from connector_resilience.backends import store_for_policy

    return store_for_policy(policy)


# Bulkhead ---------------------------------------------------------------------


def test_a_full_bulkhead_refuses_without_calling_out() -> None:
    policy = _policy(bulkhead_max_concurrent=2, bulkhead_max_wait_s=0)
    inside = threading.Semaphore(0)
    release = threading.Event()
    calls = 0

    @resilient("walled", policy=policy)
    def slow() -> str:
        nonlocal calls
        calls += 1
        inside.release()
        release.wait(10)
        return "ok"

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(2):
        assert inside.acquire(timeout=10)
    try:
        with pytest.raises(BulkheadFullError) as caught:
            slow()
        assert caught.value.connector == "walled"
        assert _shows_only_itself(caught.value)
        assert calls == 2
    finally:
        release.set()
        for t in threads:
            t.join()
    assert slow() == "ok"  # the slots came back
    summary = summarize("walled", policy=policy)
    assert summary.refusals == {"BulkheadFullError": 1}


def test_a_full_shared_bulkhead_refuses_and_its_leases_come_back() -> None:
    policy = _policy(bulkhead_max_concurrent=1, bulkhead_max_wait_s=0, bulkhead_scope="store")
    inside = threading.Event()
    release = threading.Event()

    @resilient("walled-shared", policy=policy)
    def slow() -> str:
        inside.set()
        release.wait(10)
        return "ok"

    holder = threading.Thread(target=slow)
    holder.start()
    try:
        assert inside.wait(10)
        with pytest.raises(BulkheadFullError) as caught:
            slow()
        assert _shows_only_itself(caught.value)
    finally:
        release.set()
        holder.join()
    assert slow() == "ok"  # the lease came back
    assert summarize("walled-shared", policy=policy).refusals == {"BulkheadFullError": 1}


def test_a_call_waits_for_a_slot_within_its_wait() -> None:
    policy = _policy(bulkhead_max_concurrent=1, bulkhead_max_wait_s=10)
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    @resilient("one-at-a-time", policy=policy)
    def step(name: str) -> None:
        order.append(f"{name} in")
        if name == "first":
            inside.set()
            release.wait(10)
        order.append(f"{name} out")

    first = threading.Thread(target=step, args=("first",))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=step, args=("second",))
    second.start()
    release.set()
    first.join()
    second.join()
    assert order == ["first in", "first out", "second in", "second out"]


async def test_async_bulkhead_caps_coroutines_in_flight() -> None:
    policy = _policy(bulkhead_max_concurrent=3, bulkhead_max_wait_s=10)
    in_flight = most = 0

    @resilient("async-walled", policy=policy)
    async def fetch() -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1

    await asyncio.gather(*(fetch() for _ in range(12)))
    assert most == 3


async def test_async_full_bulkhead_refuses() -> None:
    policy = _policy(bulkhead_max_concurrent=1, bulkhead_max_wait_s=0)
    gate = asyncio.Event()
    entered = asyncio.Event()

    @resilient("async-full", policy=policy)
    async def fetch() -> str:
        entered.set()  # the body runs once admitted: the slot is taken
        await gate.wait()
        return "ok"

    holder = asyncio.ensure_future(fetch())
    # The first call builds the engine in a worker thread: wait for the slot, not a turn.
    await asyncio.wait_for(entered.wait(), 10)
    with pytest.raises(BulkheadFullError) as caught:
        await asyncio.wait_for(fetch(), 10)  # refused at once, never waiting for the gate
    assert _shows_only_itself(caught.value)
    gate.set()
    assert await holder == "ok"


# Fallback ---------------------------------------------------------------------


def test_fallback_answers_when_retries_run_out(waits: list[float]) -> None:
    policy = _policy()
    seen: list[BaseException] = []

    def cached(exc: BaseException) -> str:
        seen.append(exc)
        return "cached"

    flaky = Flaky()
    call = resilient("fallback", policy=policy, fallback=cached)(flaky)
    assert call() == "cached"
    assert flaky.calls == 3
    assert isinstance(seen[0], ConnectionError)
    assert summarize("fallback", policy=policy).refusals == {"FallbackUsed": 1}


def test_fallback_answers_an_open_circuit() -> None:
    policy = testing.memory_policy(circuit={"failures_to_open": 1}, retry={"max_attempts": 1})
    flaky = Flaky()
    call = resilient("tripped", policy=policy, fallback=lambda exc: type(exc).__name__)(flaky)
    assert call() == "ConnectionError"
    assert call() == "CircuitOpenError"
    assert flaky.calls == 1


def test_fallback_answers_the_rate_limiter_and_the_bulkhead() -> None:
    policy = _policy(rate_per_s=0.01, rate_burst=1, rate_max_wait_s=0)
    call = resilient("fb-limited", policy=policy, fallback=lambda exc: type(exc).__name__)(
        lambda: "ok"
    )
    assert call() == "ok"
    assert call() == "RateLimitExceededError"
    summary = summarize("fb-limited", policy=policy)
    assert summary.refusals == {"RateLimitExceededError": 1, "FallbackUsed": 1}
    assert summary.rejected == 1  # the fallback is not a second refused call


def test_fallback_leaves_errors_that_are_not_retried_alone(waits: list[float]) -> None:
    policy = _policy()

    @resilient("bug", policy=policy, retry_on=ConnectionError, fallback=lambda exc: "hidden")
    def broken() -> str:
        raise TypeError("a bug, not an outage")

    with pytest.raises(TypeError):
        broken()


async def test_async_fallback_for_an_async_function(waits: list[float]) -> None:
    policy = _policy()

    async def stale(exc: BaseException) -> str:
        await asyncio.sleep(0)
        return f"stale after {type(exc).__name__}"

    @resilient("async-fallback", policy=policy, fallback=stale)
    async def fetch() -> str:
        raise ConnectionError("down")

    assert await fetch() == "stale after ConnectionError"


def test_an_async_fallback_on_a_sync_function_is_refused() -> None:
    async def stale(exc: BaseException) -> str:
        return "x"

    with pytest.raises(TypeError, match="must not be async"):
        resilient("sync", fallback=stale)(lambda: "ok")


# Per-attempt timeout -------------------------------------------------------------


async def test_an_attempt_that_runs_too_long_is_cancelled_and_retried(
    waits: list[float],
) -> None:
    policy = _policy()
    attempts = 0
    cancelled = 0

    @resilient("slowpoke", policy=policy, attempt_timeout_s=0.05)
    async def fetch() -> str:
        nonlocal attempts, cancelled
        attempts += 1
        if attempts == 1:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled += 1
                raise
        return "ok"

    assert await fetch() == "ok"
    assert (attempts, cancelled) == (2, 1)
    summary = summarize("slowpoke", policy=policy)
    assert summary.errors_by_type == {"TimeoutError": 1}


async def test_the_attempt_timeout_comes_from_the_policy(waits: list[float]) -> None:
    policy = _policy(retry={"max_attempts": 2, "base_ms": 0, "attempt_timeout_s": 0.05})

    @resilient("policy-timeout", policy=policy)
    async def hang() -> None:
        await asyncio.sleep(30)

    with pytest.raises(TimeoutError):
        await hang()


def test_a_sync_function_cannot_have_an_attempt_timeout() -> None:
    with pytest.raises(TypeError, match="cannot cut a running sync call short"):
        resilient("sync", attempt_timeout_s=1)(lambda: "ok")


# Store faults ---------------------------------------------------------------------


def test_a_shared_budget_fails_open_to_the_process_when_the_store_is_down(
    tmp_path: Path, waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "not-a-folder"
    folder.write_text("a file where the store's folder should be")
    policy = Policy(
        store={"url": f"jsonl://{folder}"},
        retry={"max_attempts": 3, "base_ms": 0},
        circuit={"enabled": False},
        limits={"budget_ratio": 0.2, "budget_min_per_s": 0.2, "budget_scope": "store"},
    )
    flaky = Flaky()
    call = resilient("fail-open", policy=policy, metrics=False)(flaky)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        for _ in range(3):
            with pytest.raises(ConnectionError):
                call()
    # The local budget (0.2/s x 10 s = 2 retries) decided, not the unreachable store.
    assert flaky.calls == 3 + 2
    assert caplog.text.count("sharing the retry budget failed") == 1
    # Told once through warnings too, for an application without logging configured.
    assert [type(w.message) for w in warned] == [StoreWarning]


def test_an_outer_layer_never_retries_a_refusal(waits: list[float]) -> None:
    inner_policy = _policy(rate_per_s=0.01, rate_burst=1, rate_max_wait_s=0)
    inner = resilient("inner", policy=inner_policy)(lambda: "ok")
    inner()
    outer_calls = 0

    @resilient("outer", policy=_policy())
    def outer() -> str:
        nonlocal outer_calls
        outer_calls += 1
        return inner()

    with pytest.raises(RateLimitExceededError):
        outer()
    assert outer_calls == 1  # retrying would only add to the overload
