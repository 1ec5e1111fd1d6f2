"""Load-control state and the pure steps that change it, for every store that keeps it in Python.

The retry budget, the token bucket and the bulkhead's leases are each a small
JSON-ready mapping per key. A step takes the mapping, the store's clock and
the rule's settings, and returns the new mapping and its answer; the memory,
JSONL and SQLite stores run it inside their own atomic section, and the
per-process limiters run it under a lock. (Redis runs the same rules as Lua
scripts on its own clock; the conformance suite holds both to one contract.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple, TypeVar

#: The budget's window is kept as this many slots; an old slot drops out whole.
BUDGET_SLOTS: Final = 10

#: A key's load-control state, JSON-ready: a mapping for buckets and leases, a flat
#: sequence of integers for a retry budget (see :func:`spend_budget`).
State = Any


class TokenGrant(NamedTuple):
    """The answer to a token request.

    Attributes:
        granted: a token is reserved for the caller.
        wait_s: granted: seconds to wait before using it (0: now); refused:
            seconds until a token is due.
    """

    granted: bool
    wait_s: float


class LeaseGrant(NamedTuple):
    """The answer to a slot request.

    Attributes:
        granted: the holder has a slot.
        free_in_s: refused: seconds until the earliest lease ends, else ``None``.
    """

    granted: bool
    free_in_s: float | None


def spend_budget(
    state: State | None,
    now: float,
    *,
    calls: int,
    retry: bool,
    ratio: float,
    min_per_s: float,
    window_s: float,
) -> tuple[State, bool]:
    """Count ``calls`` logical calls, and with ``retry`` take one retry if the budget allows.

    A retry is allowed while the window's retries stay within
    ``ratio * calls + min_per_s * window_s`` (Finagle's rule); ``ratio`` 0
    allows none. Returns the new state and whether the retry was granted
    (True when none was asked for).

    The state is a flat sequence ``(slot, calls, retries, slot, calls, retries, ...)``
    (a list once stored as JSON), oldest slot first: a connector's budget costs
    every store a few integers, where a mapping of lists cost it hundreds of bytes.
    The earlier form, ``{"slots": [[slot, calls, retries], ...]}``, is still read.
    """
    slot_s = window_s / BUDGET_SLOTS
    current = math.floor(now / slot_s)
    oldest = current - BUDGET_SLOTS + 1
    slots: dict[int, list[int]] = {}
    for index, seen, spent in _budget_slots(state):
        if index >= oldest:
            slots[index] = [seen, spent]
    mine = slots.setdefault(current, [0, 0])
    mine[0] += calls
    granted = True
    if retry:
        total_calls = sum(seen for seen, _ in slots.values())
        total_retries = sum(spent for _, spent in slots.values())
        allowance = ratio * total_calls + min_per_s * window_s
        granted = ratio > 0 and total_retries + 1 <= allowance
        if granted:
            mine[1] += 1
    flat = tuple(number for index in sorted(slots) for number in (index, *slots[index]))
    return flat, granted


def _budget_slots(state: State | None) -> list[tuple[int, int, int]]:
    """``(slot, calls, retries)`` of a stored budget; none if it is absent or unreadable.

    Unreadable counters (a hand-edited file, say) start afresh: they are
    seconds old, and a budget that forgets them is only stricter for a moment.
    """
    if not state:
        return []
    try:
        if isinstance(state, Mapping):  # the earlier form
            return [(int(e[0]), int(e[1]), int(e[2])) for e in state.get("slots", ())]
        numbers = [int(n) for n in state]
    except (TypeError, ValueError, IndexError, AttributeError):
        return []
    if len(numbers) % 3:
        return []
    it = iter(numbers)
    return list(zip(it, it, it, strict=True))


def bucket_shape(rate_per_s: float, burst: float) -> tuple[float, float]:
    """(interval between tokens, tolerance): the generic cell rate algorithm's two numbers."""
    interval = 1.0 / rate_per_s
    return interval, (max(burst, 1.0) - 1.0) * interval


#: A token for now: the answer of nearly every request, made once.
GRANTED_NOW: Final = TokenGrant(True, 0.0)


def reserve(
    full_at: float, now: float, interval: float, tolerance: float, max_wait_s: float
) -> tuple[float, TokenGrant]:
    """One token request against a bucket that is full again at ``full_at``.

    The bucket is that one number (GCRA's theoretical arrival time): a
    reservation pushes it one interval on, so waiters are served in order,
    each at its own time, with no stampede. Returns the new ``full_at`` and
    the answer; a refusal reserves nothing.
    """
    full_at = max(full_at, now)
    wait = full_at - tolerance - now
    if wait > max_wait_s:
        return full_at, TokenGrant(False, wait)
    return full_at + interval, GRANTED_NOW if wait <= 0 else TokenGrant(True, wait)


def paused(full_at: float, now: float, seconds: float, tolerance: float) -> float:
    """``full_at`` after a pause of ``seconds``: no token until then, then refilling from empty.

    Starting empty, not full, after a server asked us to wait keeps the
    fleet from sending a whole burst the instant the pause ends.
    """
    return max(full_at, now + seconds + tolerance)


def take_token(
    state: Mapping[str, Any] | None,
    now: float,
    *,
    rate_per_s: float,
    burst: float,
    max_wait_s: float,
) -> tuple[State, TokenGrant]:
    """:func:`reserve` on a stored bucket state."""
    interval, tolerance = bucket_shape(rate_per_s, burst)
    full_at, grant = reserve(
        float((state or {}).get("tat", now)), now, interval, tolerance, max_wait_s
    )
    return {"tat": full_at}, grant


def pause_tokens(
    state: Mapping[str, Any] | None,
    now: float,
    *,
    seconds: float,
    rate_per_s: float,
    burst: float,
) -> State:
    """:func:`paused` on a stored bucket state."""
    _, tolerance = bucket_shape(rate_per_s, burst)
    return {"tat": paused(float((state or {}).get("tat", now)), now, seconds, tolerance)}


def acquire_lease(
    state: Mapping[str, Any] | None,
    now: float,
    *,
    limit: int,
    lease_s: float,
    holder: str,
) -> tuple[State, LeaseGrant]:
    """Give ``holder`` a slot for ``lease_s`` if fewer than ``limit`` live leases are held."""
    live = {str(h): float(e) for h, e in (state or {}).get("leases", {}).items() if float(e) > now}
    if holder in live or len(live) < limit:
        live[holder] = now + lease_s
        return {"leases": live}, LeaseGrant(True, None)
    return {"leases": live}, LeaseGrant(False, max(0.0, min(live.values()) - now))


def release_lease(state: Mapping[str, Any] | None, now: float, *, holder: str) -> State:
    """Give ``holder``'s slot back (nothing happens if its lease already ended)."""
    live = {str(h): float(e) for h, e in (state or {}).get("leases", {}).items() if float(e) > now}
    live.pop(holder, None)
    return {"leases": live}


T = TypeVar("T")
Step = Callable[[State | None, float], tuple[State, T]]


class LimitSteps:
    """:class:`~connector_resilience.backends.LimitStore` for a store that keeps the state itself.

    A store mixes this in and implements :meth:`_limit_step`: run ``step`` on
    ``key``'s state atomically (under its lock or in a transaction) with its
    clock's time, store the new state, return the answer.
    """

    def _limit_step(self, key: str, step: Step[T]) -> T:
        raise NotImplementedError

    def spend_retry_budget(
        self,
        key: str,
        *,
        calls: int,
        retry: bool,
        ratio: float,
        min_per_s: float,
        window_s: float,
    ) -> bool:
        """Count ``calls`` logical calls; with ``retry``, take one retry if the budget allows."""

        def step(state: State | None, now: float) -> tuple[State, bool]:
            return spend_budget(
                state,
                now,
                calls=calls,
                retry=retry,
                ratio=ratio,
                min_per_s=min_per_s,
                window_s=window_s,
            )

        return self._limit_step(f"budget:{key}", step)

    def take_token(
        self, key: str, *, rate_per_s: float, burst: float, max_wait_s: float
    ) -> TokenGrant:
        """Reserve the next token of ``key``'s bucket if it is due within ``max_wait_s``."""

        def step(state: State | None, now: float) -> tuple[State, TokenGrant]:
            return take_token(state, now, rate_per_s=rate_per_s, burst=burst, max_wait_s=max_wait_s)

        return self._limit_step(f"bucket:{key}", step)

    def pause_tokens(self, key: str, *, seconds: float, rate_per_s: float, burst: float) -> None:
        """Hand out no token of ``key``'s bucket for ``seconds``."""

        def step(state: State | None, now: float) -> tuple[State, None]:
            paused = pause_tokens(state, now, seconds=seconds, rate_per_s=rate_per_s, burst=burst)
            return paused, None

        self._limit_step(f"bucket:{key}", step)

    def acquire_lease(self, key: str, *, limit: int, lease_s: float, holder: str) -> LeaseGrant:
        """Give ``holder`` one of ``limit`` slots of ``key`` for ``lease_s``, if one is free."""

        def step(state: State | None, now: float) -> tuple[State, LeaseGrant]:
            return acquire_lease(state, now, limit=limit, lease_s=lease_s, holder=holder)

        return self._limit_step(f"leases:{key}", step)

    def release_lease(self, key: str, *, holder: str) -> None:
        """Give ``holder``'s slot of ``key`` back."""

        def step(state: State | None, now: float) -> tuple[State, None]:
            return release_lease(state, now, holder=holder), None

        self._limit_step(f"leases:{key}", step)
