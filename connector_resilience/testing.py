"""What you need to test your own code that uses connector-resilience.

* :func:`no_waits` turns retry sleeps off (and records them), then restores them.
* :func:`set_testing` caps attempts and turns waits off everywhere (stamina's
  ``set_testing``), as a call or a ``with`` block.
* :class:`FakeClock` drives breaker cooldowns, probe leases and deadlines.
* :func:`memory_policy` gives a policy on a fresh, private ``memory://`` store.
* :func:`reset` forgets every cached policy, breaker, buffer and open store.

Example (pytest)::

    from connector_resilience import testing

    def test_gives_up_after_three_attempts():
        policy = testing.memory_policy(retry={"max_attempts": 3})
        with testing.no_waits() as waits:
            with pytest.raises(TimeoutError):
                flaky_call(policy=policy)
        assert len(waits) == 2
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from pydantic import BaseModel

from connector_resilience import _clock, _waits
from connector_resilience.backends import close_all_stores
from connector_resilience.policy import Policy, forget_current_policy

__all__ = ["FakeClock", "TestMode", "memory_policy", "no_waits", "reset", "set_testing"]

_counter = itertools.count()


def reset() -> None:
    """Forget every cached policy, shared breaker, load control, metrics buffer and open store.

    Buffered metrics are written first. Use it between tests that change the
    environment or reuse connector names: decorated functions resolve their
    policy, store and breaker again at their next call.
    """
    from connector_resilience._engines import forget_engines
    from connector_resilience.circuit import forget_breakers
    from connector_resilience.limits import forget_load_controls
    from connector_resilience.metrics import stop_buffers

    stop_buffers()
    forget_engines()
    forget_breakers()
    forget_load_controls()
    close_all_stores()
    forget_current_policy()


@contextlib.contextmanager
def no_waits() -> Iterator[list[float]]:
    """Make retry waits return at once, sync and async; yields the waits asked for (s).

    The previous sleep functions are restored on exit, even after an error.
    """
    asked: list[float] = []
    saved = (_waits.sleep, _waits.asleep)

    def sleep(seconds: float) -> None:
        asked.append(seconds)

    async def _nothing() -> None:
        return None

    def asleep(seconds: float) -> Awaitable[None]:
        asked.append(seconds)
        return _nothing()

    _waits.sleep, _waits.asleep = sleep, asleep
    try:
        yield asked
    finally:
        _waits.sleep, _waits.asleep = saved


async def _no_wait() -> None:
    return None


def _skip_async_sleep(seconds: float) -> Awaitable[None]:
    return _no_wait()


def _skip_sleep(seconds: float) -> None:
    return None


#: The real sleeps, as the library starts with them.
_REAL_SLEEPS = (_waits.sleep, _waits.asleep)


class TestMode:
    """What :func:`set_testing` did, undone by leaving its ``with`` block.

    Attributes:
        active: whether test mode is on.
        attempts: the attempts each call gets while it is on.
        cap: whether ``attempts`` only caps a smaller configured count.
    """

    __test__ = False  # not a pytest test class, whatever its name says

    def __init__(self, active: bool, attempts: int, cap: bool) -> None:
        self.active = active
        self.attempts = attempts
        self.cap = cap
        self._saved = (_waits.sleep, _waits.asleep, _waits.attempts_cap)
        if active:
            _waits.sleep, _waits.asleep = _skip_sleep, _skip_async_sleep
            _waits.attempts_cap = _capped(attempts) if cap else _fixed(attempts)
        else:
            (_waits.sleep, _waits.asleep), _waits.attempts_cap = _REAL_SLEEPS, None

    def __enter__(self) -> TestMode:
        return self

    def __exit__(self, *exc: object) -> None:
        _waits.sleep, _waits.asleep, _waits.attempts_cap = self._saved


def _fixed(attempts: int) -> Callable[[int], int]:
    return lambda configured: attempts


def _capped(attempts: int) -> Callable[[int], int]:
    return lambda configured: min(configured, attempts)


def set_testing(active: bool = True, *, attempts: int = 1, cap: bool = False) -> TestMode:
    """Test mode: every retried call gets ``attempts`` attempts and never waits.

    stamina's ``set_testing``: applies to ``@resilient``, ``retrying`` blocks
    and the HTTP adapters, breaker and metrics included. Call it (``conftest``
    fixture), or use it as ``with set_testing(attempts=2):`` to restore the
    previous mode afterwards. ``set_testing(False)`` turns it off.

    Args:
        active: turn test mode on (``True``) or off.
        attempts: attempts per call in test mode (1: no retries).
        cap: only lower the configured attempts, never raise them
            (``min(configured, attempts)``).

    Returns:
        A :class:`TestMode`; leaving its ``with`` block restores the previous mode.

    Raises:
        ValueError: ``attempts`` is below 1.

    Example:
        >>> from connector_resilience import resilient
        >>> calls = []
        >>> @resilient("doc-testing", store="memory://doc-testing", max_attempts=5)
        ... def flaky() -> None:
        ...     calls.append(1)
        ...     raise ConnectionError("down")
        >>> with set_testing(attempts=2):
        ...     flaky()
        Traceback (most recent call last):
        ConnectionError: down
        >>> len(calls)
        2
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    return TestMode(active, attempts, cap)


class FakeClock:
    """A clock you move by hand, for breaker cooldowns, probe leases and deadlines.

    While installed (``with FakeClock() as clock:``) it replaces the wall clock
    that memory, JSONL and SQLite stores stamp breaker state with, and the
    monotonic clock used for deadlines and cache freshness. Retry sleeps advance
    it instead of waiting. Call durations are still measured for real.

    Args:
        start: the wall-clock time to start at (now by default).
    """

    def __init__(self, *, start: float | None = None) -> None:
        self._wall = time.time() if start is None else start
        self._mono = 1_000_000.0
        # The call timer runs at real speed plus every jump, so durations stay
        # real and it never reads less than the fake monotonic clock.
        self._perf_base = self._mono - time.perf_counter()
        self._saved: tuple[Any, ...] | None = None

    def wall(self) -> float:
        """The fake wall-clock time."""
        return self._wall

    def monotonic(self) -> float:
        """The fake monotonic time."""
        return self._mono

    def perf(self) -> float:
        """The call timer: real time since the clock was made, plus every jump."""
        return time.perf_counter() + self._perf_base

    def advance(self, seconds: float) -> None:
        """Move both clocks forward.

        Calls buffered so far keep the time they were made at: their metrics
        are aggregated first.
        """
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        if self._saved is not None:
            from connector_resilience.metrics import drain_metrics

            drain_metrics()
        self._wall += seconds
        self._mono += seconds
        self._perf_base += seconds

    def __enter__(self) -> FakeClock:
        from connector_resilience.metrics import drain_metrics

        drain_metrics()
        self._saved = (_clock.wall, _clock.monotonic, _clock.perf, _waits.sleep, _waits.asleep)
        _clock.wall = self.wall
        _clock.monotonic = self.monotonic
        _clock.perf = self.perf

        async def _nothing() -> None:
            return None

        def asleep(seconds: float) -> Awaitable[None]:
            self.advance(seconds)
            return _nothing()

        _waits.sleep = self.advance
        _waits.asleep = asleep
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._saved is not None
        from connector_resilience.metrics import drain_metrics

        drain_metrics()
        _clock.wall, _clock.monotonic, _clock.perf, _waits.sleep, _waits.asleep = self._saved
        self._saved = None


def memory_policy(**overrides: Any) -> Policy:
    """A policy on a fresh ``memory://`` store of its own; keyword overrides as for Policy.

    Example:
        >>> policy = memory_policy(retry={"max_attempts": 2})
        >>> policy.store.url.startswith("memory://")
        True
    """
    given = overrides.pop("store", None) or {}
    store = dict(given.model_dump(exclude_unset=True) if isinstance(given, BaseModel) else given)
    store.setdefault("url", f"memory://test-{next(_counter)}")
    return Policy(store=store, **overrides)
