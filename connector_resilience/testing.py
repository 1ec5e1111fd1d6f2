"""What you need to test your own code that uses connector-resilience.

* :func:`no_waits` turns retry sleeps off (and records them), then restores them.
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
from collections.abc import Awaitable, Iterator
from typing import Any

from pydantic import BaseModel

from connector_resilience import _clock, _waits
from connector_resilience.backends import close_all_stores
from connector_resilience.policy import Policy, forget_current_policy

__all__ = ["FakeClock", "memory_policy", "no_waits", "reset"]

_counter = itertools.count()


def reset() -> None:
    """Forget every cached policy, shared breaker, metrics buffer and open store.

    Buffered metrics are written first. Use it between tests that change the
    environment or reuse connector names: decorated functions resolve their
    policy, store and breaker again at their next call.
    """
    from connector_resilience._engines import forget_engines
    from connector_resilience.circuit import forget_breakers
    from connector_resilience.metrics import stop_buffers

    stop_buffers()
    forget_engines()
    forget_breakers()
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
        self._saved: tuple[Any, ...] | None = None

    def wall(self) -> float:
        """The fake wall-clock time."""
        return self._wall

    def monotonic(self) -> float:
        """The fake monotonic time."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        self._wall += seconds
        self._mono += seconds

    def __enter__(self) -> FakeClock:
        self._saved = (_clock.wall, _clock.monotonic, _waits.sleep, _waits.asleep)
        _clock.wall = self.wall
        _clock.monotonic = self.monotonic

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
        _clock.wall, _clock.monotonic, _waits.sleep, _waits.asleep = self._saved
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
