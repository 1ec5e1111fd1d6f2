"""@resilient: retries inside the breaker, every attempt measured, sync and async."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import tenacity

from connector_resilience import (
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    RetryEvent,
    StateChange,
    resilient,
    summarize,
    testing,
)
from connector_resilience.backends import CallRecord, Store
from connector_resilience.backends.memory import MemoryStore
from connector_resilience.errors import StoreError
from connector_resilience.policy import Policy


class Flaky:
    """Fails ``failures`` times with ``error``, then returns ``value``; counts calls."""

    def __init__(self, failures: int, error: type[BaseException] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self, value: Any = "ok") -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return value


def _policy(**groups: Any) -> Policy:
    retry = {"max_attempts": 3, "base_ms": 100, "cap_ms": 1000, "jitter_pct": 0.0}
    retry.update(groups.pop("retry", {}))
    circuit = {"failures_to_open": 3, "cooldown_s": 30, "half_open_prob": 1.0}
    circuit.update(groups.pop("circuit", {}))
    return testing.memory_policy(retry=retry, circuit=circuit, **groups)


@pytest.fixture
def waits() -> Iterator[list[float]]:
    with testing.no_waits() as asked:
        yield asked


#: Per-attempt records in the store: the tests that read them back use raw metrics.
RAW = {"metrics_mode": "raw"}


def _records(policy: Policy) -> list[CallRecord]:
    summarize(policy=policy)  # flushes the buffer
    from connector_resilience.backends import store_for_policy

    return store_for_policy(policy).read_calls(since=0)


def test_success_returns_and_records_one_attempt() -> None:
    policy = _policy(store=RAW)

    @resilient("api", policy=policy)
    def fetch(x: int) -> int:
        return x * 2

    assert fetch(21) == 42
    (record,) = _records(policy)
    assert (record.connector, record.operation, record.status) == ("api", "fetch", "ok")
    assert (record.attempt, record.final) == (1, True)


def test_retries_until_success_with_the_policy_schedule(waits: list[float]) -> None:
    policy = _policy(store=RAW)
    flaky = Flaky(2)
    fetch = resilient("api", policy=policy)(flaky)
    assert fetch("done") == "done"
    assert flaky.calls == 3
    assert waits == [0.1, 0.2]  # base 100 ms, doubling, no jitter
    summary = summarize("api", policy=policy)
    assert (summary.total_calls, summary.errors, summary.attempts, summary.retries) == (1, 0, 3, 2)
    records = _records(policy)
    assert [(r.attempt, r.status, r.final) for r in records] == [
        (1, "error", False),
        (2, "error", False),
        (3, "ok", True),
    ]
    assert records[0].error == "ConnectionError"


def test_when_retries_run_out_the_original_exception_is_raised(waits: list[float]) -> None:
    policy = _policy()
    raised: list[BaseException] = []

    @resilient("api", policy=policy)
    def always_fails() -> None:
        exc = TimeoutError("slow upstream")
        raised.append(exc)
        raise exc

    with pytest.raises(TimeoutError) as caught:
        always_fails()
    assert caught.value is raised[-1]
    assert len(raised) == 3
    summary = summarize("api", policy=policy)
    assert (summary.total_calls, summary.errors, summary.attempts) == (1, 1, 3)


def test_exceptions_outside_retry_on_are_raised_at_once(waits: list[float]) -> None:
    flaky = Flaky(5, error=KeyError)
    fetch = resilient("api", policy=_policy(), retry_on=(ConnectionError,))(flaky)
    with pytest.raises(KeyError):
        fetch()
    assert flaky.calls == 1
    assert waits == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit, CircuitOpenError])
def test_never_retried_even_if_retry_on_says_so(error: type[BaseException]) -> None:
    calls = 0

    @resilient("api", policy=_policy(), retry_on=BaseException)
    def interrupted() -> None:
        nonlocal calls
        calls += 1
        if error is CircuitOpenError:
            raise CircuitOpenError("downstream", retry_at=None)
        raise error()

    with pytest.raises(error):
        interrupted()
    assert calls == 1


async def test_cancellation_is_not_retried_and_not_recorded() -> None:
    policy = _policy()
    started = asyncio.Event()
    calls = 0

    @resilient("api", policy=policy, retry_on=BaseException)
    async def slow() -> None:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 1
    assert _records(policy) == []


def test_open_circuit_rejects_without_calling(waits: list[float]) -> None:
    policy = _policy(retry={"max_attempts": 1}, circuit={"failures_to_open": 2})
    flaky = Flaky(100)
    rejected: list[CircuitOpenError] = []
    fetch = resilient("api", policy=policy, on_reject=rejected.append)(flaky)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            fetch()
    with pytest.raises(CircuitOpenError) as caught:
        fetch()
    assert flaky.calls == 2
    assert caught.value.connector == "api"
    assert rejected == [caught.value]
    summary = summarize("api", policy=policy)
    assert (summary.total_calls, summary.rejected) == (2, 1)


def test_the_breaker_counts_logical_calls_not_attempts(waits: list[float]) -> None:
    policy = _policy(retry={"max_attempts": 3}, circuit={"failures_to_open": 2})
    flaky = Flaky(100)
    fetch = resilient("api", policy=policy)(flaky)
    with pytest.raises(ConnectionError):
        fetch()
    assert flaky.calls == 3
    assert CircuitBreaker("api", policy=policy).state == "closed"  # 3 attempts, 1 failed call
    with pytest.raises(ConnectionError):
        fetch()
    assert CircuitBreaker("api", policy=policy).state == "open"


def test_retry_on_result_returns_the_last_result_when_retries_run_out(
    waits: list[float],
) -> None:
    results = iter([None, None, "late", "never"])

    @resilient("api", policy=_policy(), retry_on_result=lambda r: r is None)
    def poll() -> str | None:
        return next(results)

    assert poll() == "late"

    exhausted = iter([None, None, None, "never"])

    @resilient("api2", policy=_policy(), retry_on_result=lambda r: r is None)
    def poll_empty() -> str | None:
        return next(exhausted)

    assert poll_empty() is None
    assert len(waits) == 4


def test_zero_delay_retries_never_sleep(waits: list[float]) -> None:
    flaky = Flaky(2)
    fetch = resilient("api", policy=_policy(retry={"base_ms": 0}))(flaky)
    assert fetch() == "ok"
    assert flaky.calls == 3
    assert waits == []  # not even sleep(0)


def test_deadline_stops_before_a_sleep_would_pass_it(waits: list[float]) -> None:
    flaky = Flaky(5)
    fetch = resilient("api", policy=_policy(retry={"base_ms": 500}), deadline_s=0.3)(flaky)
    with pytest.raises(ConnectionError):
        fetch()
    assert flaky.calls == 1
    assert waits == []


def test_deadline_from_the_policy() -> None:
    policy = _policy(retry={"base_ms": 100, "deadline_s": 0.25, "max_attempts": 10})
    flaky = Flaky(10)
    with testing.FakeClock() as clock:
        began = clock.monotonic()
        with pytest.raises(ConnectionError):
            resilient("api", policy=policy)(flaky)()
        # One wait of 0.1 s; a second of 0.2 s would have ended past 0.25 s.
        assert clock.monotonic() - began == pytest.approx(0.1)
    assert flaky.calls == 2


class RateLimitedError(Exception):
    def __init__(self, retry_after: str) -> None:
        super().__init__("429")
        self.retry_after = retry_after


def test_server_retry_after_overrides_the_backoff_capped(waits: list[float]) -> None:
    answers: list[BaseException] = [RateLimitedError("0.05"), RateLimitedError("120")]

    @resilient("api", policy=_policy(retry={"cap_ms": 2000}))
    def fetch() -> str:
        if answers:
            raise answers.pop(0)
        return "ok"

    assert fetch() == "ok"
    assert waits == [0.05, 2.0]


def test_hooks_see_retries_and_state_changes(waits: list[float]) -> None:
    policy = _policy(retry={"max_attempts": 2}, circuit={"failures_to_open": 1})
    retries: list[RetryEvent] = []
    changes: list[StateChange] = []
    flaky = Flaky(100)
    fetch = resilient(
        "api", policy=policy, on_retry=retries.append, on_state_change=changes.append
    )(flaky)
    with pytest.raises(ConnectionError):
        fetch()
    (event,) = retries
    assert (event.connector, event.operation, event.attempt, event.delay_s) == (
        "api",
        "Flaky",
        1,
        0.1,
    )
    assert isinstance(event.error, ConnectionError)
    assert [(c.old, c.new) for c in changes] == [("closed", "open")]


def test_a_failing_hook_is_logged_not_raised(
    waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: RetryEvent) -> None:
        raise RuntimeError("hook bug")

    flaky = Flaky(1)
    assert resilient("api", policy=_policy(), on_retry=broken)(flaky)() == "ok"
    assert "on_retry hook raised" in caplog.text


class GitHub:
    def __init__(self, name: str) -> None:
        self.connector_name = name
        self.calls = 0

    @resilient(policy=None)
    def repos(self) -> int:
        self.calls += 1
        return self.calls

    @resilient()
    async def arepos(self) -> str:
        await asyncio.sleep(0)
        return self.connector_name


def test_methods_take_the_connector_from_the_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_STORE_URL", "memory://methods")
    assert GitHub("github").repos() == 1
    assert GitHub("gitlab").repos() == 1
    assert summarize("github").total_calls == 1
    assert summarize("gitlab").total_calls == 1
    assert summarize("gitlab").last_call_at is not None


async def test_async_methods_take_the_connector_from_the_instance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONNECTOR_STORE_URL", "memory://amethods")
    assert await GitHub("github").arepos() == "github"
    assert summarize("github").total_calls == 1


def test_missing_connector_name_is_a_clear_error() -> None:
    @resilient()
    def orphan() -> None:
        return None

    with pytest.raises(ConfigurationError, match="no connector name"):
        orphan()


def test_wrapped_function_keeps_its_identity() -> None:
    def fetch(user: str, *, page: int = 1) -> str:
        """Fetch a user."""
        return f"{user}:{page}"

    wrapped = resilient("api", policy=_policy())(fetch)
    assert wrapped.__name__ == "fetch"
    assert wrapped.__doc__ == "Fetch a user."
    assert inspect.signature(wrapped) == inspect.signature(fetch)
    assert wrapped.__wrapped__ is fetch  # type: ignore[attr-defined]
    assert wrapped("ada", page=2) == "ada:2"


def test_bare_decorator_uses_the_default_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_STORE_URL", "memory://bare")

    class Api:
        connector_name = "bare"

        @resilient
        def ping(self) -> str:
            return "pong"

    assert Api().ping() == "pong"
    assert summarize("bare").total_calls == 1


def test_tenacity_wait_and_stop_strategies_are_accepted(waits: list[float]) -> None:
    flaky = Flaky(10)
    fetch = resilient(
        "api",
        policy=_policy(retry={"max_attempts": 10}),
        wait=tenacity.wait_fixed(0.5),
        stop=tenacity.stop_after_attempt(4),
    )(flaky)
    with pytest.raises(ConnectionError):
        fetch()
    assert flaky.calls == 4
    assert waits == [0.5, 0.5, 0.5]


def test_tenacity_retry_predicates_are_accepted(waits: list[float]) -> None:
    flaky = Flaky(1, error=ValueError)
    fetch = resilient(
        "api", policy=_policy(), retry_on=tenacity.retry_if_exception_type(ValueError)
    )(flaky)
    assert fetch() == "ok"
    assert flaky.calls == 2


def test_failure_on_and_ignore_decide_what_the_breaker_counts(waits: list[float]) -> None:
    class NotFoundError(Exception):
        pass

    class QuotaError(Exception):
        pass

    policy = _policy(retry={"max_attempts": 1}, circuit={"failures_to_open": 1})

    @resilient("api", policy=policy, failure_on=(ConnectionError,), ignore=(QuotaError,))
    def fetch(error: type[Exception]) -> None:
        raise error()

    for error in (NotFoundError, QuotaError, NotFoundError):
        with pytest.raises(error):
            fetch(error)
    assert CircuitBreaker("api", policy=policy).state == "closed"
    with pytest.raises(ConnectionError):
        fetch(ConnectionError)
    assert CircuitBreaker("api", policy=policy).state == "open"


def test_half_open_probe_through_the_decorator(waits: list[float]) -> None:
    policy = _policy(retry={"max_attempts": 1}, circuit={"failures_to_open": 1, "cooldown_s": 5})
    outcomes: list[BaseException | str] = [ConnectionError("down"), "back"]

    @resilient("api", policy=policy)
    def fetch() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    with testing.FakeClock() as clock:
        with pytest.raises(ConnectionError):
            fetch()
        with pytest.raises(CircuitOpenError):
            fetch()
        clock.advance(5)
        assert fetch() == "back"
        assert CircuitBreaker("api", policy=policy).state == "closed"


class BrokenMetricsStore(MemoryStore):
    def append_calls(self, records: Any) -> None:
        raise StoreError("disk full")

    def append_aggregates(self, rows: Any) -> None:
        raise StoreError("disk full")


def test_a_store_fault_never_fails_the_call(caplog: pytest.LogCaptureFixture) -> None:
    store: Store = BrokenMetricsStore("memory://broken")
    calls = 0

    @resilient("api", policy=_policy(), store=store)
    def fetch() -> int:
        nonlocal calls
        calls += 1
        return calls

    caplog.set_level(logging.WARNING)
    assert [fetch() for _ in range(50)] == list(range(1, 51))
    from connector_resilience.metrics import flush_metrics

    assert not flush_metrics()
    assert not flush_metrics()
    assert sum("writing metrics failed" in r.getMessage() for r in caplog.records) == 1


async def test_async_retries_and_metrics(waits: list[float]) -> None:
    policy = _policy()
    calls = 0

    @resilient("api", policy=policy)
    async def fetch(x: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls == 1:
            raise ConnectionError("first")
        return x

    assert await fetch(7) == 7
    assert waits == [0.1]
    summary = summarize("api", policy=policy)
    assert (summary.total_calls, summary.attempts) == (1, 2)


async def test_many_concurrent_tasks_are_all_counted_exactly() -> None:
    policy = _policy()

    @resilient("api", policy=policy)
    async def fetch(i: int) -> int:
        await asyncio.sleep(0)
        return i

    results = await asyncio.gather(*(fetch(i) for i in range(1000)))
    assert results == list(range(1000))
    summary = summarize("api", policy=policy)
    assert (summary.total_calls, summary.attempts, summary.errors) == (1000, 1000, 0)


def test_generators_are_refused() -> None:
    def numbers() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        resilient("api")(numbers)


def test_bad_options_are_refused_at_decoration() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        resilient("api", max_attempts=0)
    with pytest.raises(ValueError, match="deadline_s"):
        resilient("api", deadline_s=0)
    with pytest.raises(TypeError, match="retry_on"):
        resilient("api", retry_on=(ValueError, "oops"))  # type: ignore[arg-type]


def test_reset_makes_decorated_functions_read_the_environment_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @resilient("moving")
    def call() -> str:
        return "ok"

    monkeypatch.setenv("CONNECTOR_STORE_URL", "memory://first")
    call()
    testing.reset()
    monkeypatch.setenv("CONNECTOR_STORE_URL", "memory://second")
    call()
    assert summarize("moving", store="memory://second").total_calls == 1


def test_rejections_are_counted_exactly_in_few_records(waits: list[float]) -> None:
    policy = _policy(retry={"max_attempts": 1}, circuit={"failures_to_open": 1}, store=RAW)
    flaky = Flaky(100)
    fetch = resilient("api", policy=policy)(flaky)
    with pytest.raises(ConnectionError):
        fetch()
    for _ in range(500):
        with pytest.raises(CircuitOpenError):
            fetch()
    assert summarize("api", policy=policy).rejected == 500
    rejected = [r for r in _records(policy) if r.status == "rejected"]
    assert sum(r.calls for r in rejected) == 500
    assert len(rejected) <= 2  # one per flush, not one per call


def test_first_calls_racing_in_threads_share_one_breaker_and_count_once() -> None:
    # The first call builds the function's engine; threads making it at once
    # must end up on one breaker, each call counted once.
    threads = 8
    policy = _policy(circuit={"failures_to_open": threads, "cooldown_s": 60})
    start = threading.Barrier(threads)
    calls = Flaky(failures=threads)

    @resilient("racing-first-calls", policy=policy, max_attempts=1)
    def call() -> str:
        return str(calls())

    failed: list[BaseException] = []

    def first_call() -> None:
        start.wait(timeout=10)
        try:
            call()
        except ConnectionError as exc:
            failed.append(exc)

    workers = [threading.Thread(target=first_call) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert len(failed) == threads
    # One breaker heard all eight failures: it is open now, for every thread.
    with pytest.raises(CircuitOpenError):
        call()
    assert calls.calls == threads
    totals = summarize("racing-first-calls", policy=policy)
    assert (totals.total_calls, totals.errors, totals.rejected) == (threads, threads, 1)
