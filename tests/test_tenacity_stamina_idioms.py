"""What tenacity and stamina users rely on, on our engine (issue 19, items 7 and 10-13).

Decorating static and class methods in either order; retrying a block
(``for attempt in retrying(...)``, sync and async); per-function statistics;
``retry_with``, a per-function retries-off switch and a test mode; tenacity
strategies and hooks that see the call's function and arguments.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import tenacity

from connector_resilience import (
    CircuitOpenError,
    Retrying,
    resilient,
    retrying,
    summarize,
    testing,
)
from connector_resilience.policy import Policy


def _policy(**retry: Any) -> Policy:
    return testing.memory_policy(
        retry={"max_attempts": 3, "base_ms": 100, "cap_ms": 1000, "jitter_pct": 0.0, **retry},
        circuit={"failures_to_open": 2, "cooldown_s": 60},
    )


@pytest.fixture
def waits() -> Iterator[list[float]]:
    with testing.no_waits() as asked:
        yield asked


class Flaky:
    """Raises ``error`` for the first ``failures`` calls, then returns the call count."""

    def __init__(self, failures: int, error: type[BaseException] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return self.calls


# 7. Static and class methods, in both orders; bad targets refused up front -----


def test_static_and_class_methods_work_in_either_order(waits: list[float]) -> None:
    policy = _policy()
    flaky = Flaky(1)

    class Client:
        connector_name = "methods"

        @resilient("methods", policy=policy)
        @staticmethod
        def static_outer(x: int) -> int:
            return x + flaky()

        @staticmethod
        @resilient("methods", policy=policy)
        def static_inner(x: int) -> int:
            return x * 2

        @resilient(policy=policy)
        @classmethod
        def class_outer(cls, x: int) -> str:
            return f"{cls.__name__}:{x}"

        @classmethod
        @resilient(policy=policy)
        def class_inner(cls, x: int) -> str:
            return f"{cls.connector_name}:{x}"

        @resilient
        @classmethod
        def class_bare(cls) -> str:
            return cls.__name__

    client = Client()
    assert client.static_outer(1) == 3  # retried once, called on an instance
    assert Client.static_outer(1) == 4
    assert (client.static_inner(2), Client.static_inner(3)) == (4, 6)
    assert (client.class_outer(1), Client.class_outer(2)) == ("Client:1", "Client:2")
    assert (client.class_inner(1), Client.class_inner(2)) == ("methods:1", "methods:2")
    assert (Client.class_bare(), client.class_bare()) == ("Client", "Client")
    operations = {r.operation for r in _rows(policy)}
    assert {"static_outer", "static_inner", "class_outer", "class_inner"} <= operations


def _run(block: Retrying, body: Callable[[], object]) -> None:
    """Run ``body`` in each attempt of ``block``."""
    for attempt in block:
        with attempt:
            body()


def _rows(policy: Policy) -> list[Any]:
    from connector_resilience.backends import store_for_policy

    summarize(policy=policy)  # flushes the buffer
    store: Any = store_for_policy(policy)
    # Aggregated rows (the default) and raw records both name their operation.
    return [*store.read_calls(since=0), *store.read_aggregates(resolution=1, since=0)]


@pytest.mark.parametrize(
    ("apply", "message"),
    [
        (lambda: resilient(3), "connector's name"),  # type: ignore[call-overload]
        (lambda: resilient(b"api"), "connector's name"),  # type: ignore[call-overload]
        (lambda: resilient(type("Service", (), {})), "not the class Service"),
        (lambda: resilient("api")(type("Service", (), {})), "not the class Service"),
        (lambda: resilient("api")(42), "not 42"),  # type: ignore[call-overload]
        (lambda: resilient("api")(property(lambda self: 1)), "not <property"),  # type: ignore[call-overload]
        (lambda: resilient("api", before=5), "before= must be callable"),  # type: ignore[call-overload]
    ],
    ids=["int", "bytes", "bare-class", "class", "number", "property", "hook"],
)
def test_bad_targets_are_refused_at_decoration_time(apply: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        apply()


def test_the_wrapper_keeps_defaults_and_signature() -> None:
    def fetch(item: int, page: int = 1, *, size: int = 50) -> list[int]:
        return [item, page, size]

    wrapped = resilient("api", policy=_policy())(fetch)
    assert wrapped.__defaults__ == (1,)
    assert wrapped.__kwdefaults__ == {"size": 50}
    assert inspect.signature(wrapped) == inspect.signature(fetch)
    assert wrapped(7) == [7, 1, 50]
    assert wrapped(7, 2, size=10) == [7, 2, 10]


# 10. Retrying a block --------------------------------------------------------------


def test_a_block_is_retried_with_the_same_metrics_and_breaker(waits: list[float]) -> None:
    policy = _policy()
    flaky = Flaky(2)
    seen = []
    for attempt in retrying("blocks", policy=policy, operation="sync"):
        with attempt:
            seen.append(attempt.number)
            flaky()
    assert seen == [1, 2, 3]
    assert waits == [0.1, 0.2]  # the policy's backoff
    summary = summarize("blocks", policy=policy)
    assert (summary.total_calls, summary.attempts, summary.errors) == (1, 3, 0)

    # Two blocks that fail after their retries open the breaker (failures_to_open=2) ...
    always = Flaky(100)
    for _ in range(2):
        with pytest.raises(ConnectionError, match="failure"):  # the block's own exception
            _run(retrying("blocks", policy=policy, operation="sync"), always)
    calls = always.calls
    # ... and a third block, or a decorated function of the connector, is refused unrun.
    with pytest.raises(CircuitOpenError):
        _run(retrying("blocks", policy=policy), always)

    @resilient("blocks", policy=policy)
    def decorated() -> int:
        return always()

    with pytest.raises(CircuitOpenError):
        decorated()
    assert always.calls == calls == 6
    assert summarize("blocks", policy=policy).rejected == 2


def test_an_async_block_is_retried_on_the_same_engine(waits: list[float]) -> None:
    policy = _policy()
    flaky = Flaky(1)
    block = retrying("ablocks", policy=policy, operation="async")

    async def main() -> list[int]:
        seen = []
        async for attempt in block:
            with attempt:
                seen.append(attempt.number)
                await asyncio.sleep(0)
                flaky()
        return seen

    assert asyncio.run(main()) == [1, 2]
    assert block.statistics.as_dict() == {
        "attempts": 2,
        "waited_s": 0.1,
        "outcome": "success",
        "error": "ConnectionError",
    }
    summary = summarize("ablocks", policy=policy)
    assert (summary.total_calls, summary.attempts) == (1, 2)


def test_leaving_a_block_loop_early_records_the_attempt(waits: list[float]) -> None:
    policy = _policy()
    for attempt in retrying("early", policy=policy):
        with attempt:
            pass
        break
    summary = summarize("early", policy=policy)
    assert (summary.total_calls, summary.errors) == (1, 0)


def test_an_attempt_not_run_in_a_with_block_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="with attempt:"):
        for _attempt in retrying("unused", policy=_policy()):
            pass


def test_an_interruption_in_a_block_is_not_retried(waits: list[float]) -> None:
    interrupted = Flaky(100, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(retrying("interrupted", policy=_policy()), interrupted)
    assert interrupted.calls == 1


# 11. Statistics ----------------------------------------------------------------


def test_statistics_after_a_call_and_the_attempt_number_during_it(waits: list[float]) -> None:
    during: list[int] = []
    flaky = Flaky(2)

    @resilient("stats", policy=_policy())
    def fetch() -> int:
        during.append(fetch.statistics.attempts)  # type: ignore[attr-defined]
        return flaky()

    stats = fetch.statistics  # type: ignore[attr-defined]
    assert (stats.attempts, stats.outcome) == (0, None)
    assert fetch() == 3
    assert during == [1, 2, 3]
    assert (stats.attempts, stats.waited_s, stats.outcome) == (3, pytest.approx(0.3), "success")
    assert stats.error == "ConnectionError"
    assert fetch() == 4  # a first-attempt success resets them
    assert stats.as_dict() == {"attempts": 1, "waited_s": 0.0, "outcome": "success", "error": None}
    assert during[-1] == 1

    flaky.failures = 100
    with pytest.raises(ConnectionError):
        fetch()
    assert (stats.attempts, stats.outcome, stats.error) == (3, "failure", "ConnectionError")
    with pytest.raises(ConnectionError):
        fetch()  # the breaker opens (failures_to_open=2)
    with pytest.raises(CircuitOpenError):
        fetch()
    assert (stats.attempts, stats.outcome) == (0, "rejected")
    assert "outcome='rejected'" in repr(stats)


# 12. retry_with, the retries-off switch, test mode ----------------------------------


def test_retry_with_overrides_options_and_shares_the_breaker(waits: list[float]) -> None:
    policy = _policy()
    flaky = Flaky(4)

    @resilient("override", policy=policy)
    def fetch() -> int:
        return flaky()

    with pytest.raises(ConnectionError):
        fetch()  # 3 attempts
    assert flaky.calls == 3
    patient = fetch.retry_with(max_attempts=5)  # type: ignore[attr-defined]
    assert patient() == 5  # two more failures, then the fifth call succeeds
    assert patient.statistics.attempts == 2
    assert fetch.statistics.attempts == 3  # type: ignore[attr-defined]  # its own statistics
    with pytest.raises(TypeError):
        fetch.retry_with(max_attempt=5)  # type: ignore[attr-defined]
    summary = summarize("override", policy=policy)
    assert (summary.total_calls, summary.attempts) == (2, 5)  # one connector's metrics


def test_retries_can_be_turned_off_per_function(waits: list[float]) -> None:
    policy = _policy()
    flaky, other = Flaky(100), Flaky(100)

    @resilient("switch", policy=policy, breaker=False)
    def fetch() -> int:
        return flaky()

    @resilient("switch", policy=policy, breaker=False)
    def neighbour() -> int:
        return other()

    fetch.disable_retries()  # type: ignore[attr-defined]
    with pytest.raises(ConnectionError):
        fetch()
    with pytest.raises(ConnectionError):
        neighbour()
    assert (flaky.calls, other.calls) == (1, 3)  # only that function stopped retrying
    fetch.enable_retries()  # type: ignore[attr-defined]
    with pytest.raises(ConnectionError):
        fetch()
    assert flaky.calls == 4


@pytest.mark.timeout(30)  # a real wait (an hour of backoff) would fail here
def test_test_mode_caps_attempts_and_never_waits() -> None:
    policy = _policy(max_attempts=5, base_ms=3_600_000, cap_ms=3_600_000)
    flaky = Flaky(100)

    @resilient("testmode", policy=policy, breaker=False)
    def fetch() -> int:
        return flaky()

    with testing.set_testing(attempts=2) as mode:
        assert mode.active
        with pytest.raises(ConnectionError):
            fetch()
        assert flaky.calls == 2
        with testing.set_testing(attempts=9, cap=True):
            with pytest.raises(ConnectionError):
                fetch()
            assert flaky.calls == 2 + 5  # capped at the configured 5
        with pytest.raises(ConnectionError):  # a block is in test mode too
            _run(retrying("testmode", policy=policy, breaker=False), flaky)
        assert flaky.calls == 7 + 2
    assert (mode.attempts, mode.cap) == (2, False)
    # The waits were planned (4 of an hour in the capped call), none was slept.
    assert fetch.statistics.waited_s == 4 * 3600.0  # type: ignore[attr-defined]
    from connector_resilience import _waits

    assert _waits.attempts_cap is None  # leaving the block restored the normal mode


# 13. tenacity strategies and hooks -----------------------------------------------


def test_tenacity_wait_and_stop_see_the_function_and_its_arguments(waits: list[float]) -> None:
    seen: list[tuple[Any, ...]] = []

    def wait(state: tenacity.RetryCallState) -> float:
        seen.append(("wait", state.fn, state.args, state.kwargs, state.attempt_number))
        return 0.05

    def stop(state: tenacity.RetryCallState) -> bool:
        seen.append(("stop", state.fn, state.args, state.kwargs, state.idle_for))
        return False

    flaky = Flaky(1)

    def fetch(item: int, *, page: int = 1) -> int:
        return flaky()

    wrapped = resilient("tenacity", policy=_policy(), wait=wait, stop=stop)(fetch)
    assert wrapped(7, page=2) == 2
    assert seen == [
        ("wait", fetch, (7,), {"page": 2}, 1),
        ("stop", fetch, (7,), {"page": 2}, 0.0),
    ]
    assert waits == [0.05]


class TransientError(Exception):
    pass


class PermanentError(Exception):
    pass


@pytest.mark.parametrize(
    ("strategy", "retried", "not_retried"),
    [
        (
            tenacity.retry_if_exception_type(TransientError)
            | tenacity.retry_if_exception_type(OSError),
            [TransientError, ConnectionError],
            [PermanentError],
        ),
        (
            tenacity.retry_any(
                tenacity.retry_if_exception_type(TransientError),
                tenacity.retry_if_exception_message(match="again"),
            ),
            [TransientError],
            [PermanentError],
        ),
        (
            tenacity.retry_if_exception_type(OSError)
            & tenacity.retry_if_not_exception_type(FileNotFoundError),
            [ConnectionError],
            [FileNotFoundError, PermanentError],
        ),
        (tenacity.retry_if_exception_cause_type(TransientError), ["caused"], [PermanentError]),
    ],
    ids=["or", "retry_any", "and", "cause_type"],
)
def test_tenacity_retry_combinators_are_accepted_as_retry_on(
    waits: list[float], strategy: tenacity.retry_base, retried: list[Any], not_retried: list[Any]
) -> None:
    policy = _policy()

    def raising(kind: Any) -> Any:
        calls = 0

        @resilient("combinators", policy=policy, retry_on=strategy, breaker=False)
        def fetch() -> None:
            nonlocal calls
            calls += 1
            if kind == "caused":
                try:
                    raise TransientError("root")
                except TransientError as exc:
                    raise PermanentError("wrapped") from exc
            raise kind("failed")

        with pytest.raises(Exception):
            fetch()
        return calls

    assert [raising(kind) for kind in retried] == [3] * len(retried)
    assert [raising(kind) for kind in not_retried] == [1] * len(not_retried)


def test_before_and_after_hooks_take_tenacity_helpers(
    waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    events: list[tuple[str, int, bool]] = []
    log = logging.getLogger("test.hooks")

    def before(state: tenacity.RetryCallState) -> None:
        events.append(("before", state.attempt_number, state.outcome is None))
        tenacity.before_log(log, logging.INFO)(state)

    def after(state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None
        assert state.fn is not None
        events.append(("after", state.attempt_number, state.outcome.failed))

    flaky = Flaky(2)

    def fetch() -> int:
        return flaky()

    wrapped = resilient(
        "hooks",
        policy=_policy(),
        before=before,
        after=tenacity.after_log(log, logging.INFO),
    )(fetch)
    with caplog.at_level(logging.INFO, logger="test.hooks"):
        assert wrapped() == 3
    assert [e[:2] for e in events] == [("before", 1), ("before", 2), ("before", 3)]
    assert all(fresh for _, _, fresh in events)
    text = caplog.text
    assert "Starting call to 'tests.test_tenacity_stamina_idioms." in text  # it saw state.fn
    assert "this was the 2nd time calling it" in text  # after_log, after each failed attempt
    assert "was the 3rd time" not in text  # the third attempt succeeded

    after_events: list[tuple[str, int, bool]] = []

    def record_after(state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None
        after_events.append(("after", state.attempt_number, state.outcome.failed))

    async def afetch() -> int:
        return flaky()

    flaky.calls, flaky.failures = 0, 1
    awrapped = resilient("hooks", policy=_policy(), after=record_after)(afetch)
    assert asyncio.run(awrapped()) == 2
    assert after_events == [("after", 1, True)]
