"""Load control: the retry budget, the rate limiter and the bulkhead, per process or fleet-wide.

Retries protect one caller and hurt the dependency; these three keep a fleet
of callers from overwhelming it:

* **Retry budget** (on by default): retries per connector may not exceed
  ``RETRY_BUDGET_RATIO`` of the recent logical calls plus
  ``RETRY_BUDGET_MIN_PER_S`` per second, over ``RETRY_BUDGET_WINDOW_S``
  (Finagle's rule). A refused retry ends the call with its own exception.
* **Rate limiter** (``RATE_LIMIT_PER_S``): a token bucket per connector; every
  attempt takes a token, waiting for it within its deadline, else the call
  raises :class:`~connector_resilience.RateLimitExceededError` without going
  out. A server's 429 with a time to come back pauses the bucket.
* **Bulkhead** (``BULKHEAD_MAX_CONCURRENT``): a cap on calls in flight; a call
  that finds no slot within ``BULKHEAD_MAX_WAIT_S`` raises
  :class:`~connector_resilience.BulkheadFullError` without going out.

Each is per process, or shared by every process on the store
(``*_SCOPE=store``) through the store's :class:`~connector_resilience.backends.LimitStore`
steps. When the store cannot be reached a shared limiter fails open to this
process's own (logged once per burst), so a store fault never fails a call.

``@resilient`` and the HTTP adapters use these through :func:`load_control_for`;
:meth:`LoadControl.pause` is the interface for teaching a connector's limiter
that the server asked for a pause.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, ParamSpec, TypeVar

from connector_resilience import _clock, _waits
from connector_resilience._faults import FaultLog
from connector_resilience.backends import LeaseGrant, LimitStore, Store, TokenGrant
from connector_resilience.backends import _limit_state as limit_state
from connector_resilience.backends._limit_state import GRANTED_NOW
from connector_resilience.errors import BulkheadFullError, RateLimitExceededError
from connector_resilience.policy import LimitsPolicy, Policy

__all__ = [
    "GRANTED_NOW",
    "REFUSAL_KINDS",
    "Admission",
    "Bulkhead",
    "LoadControl",
    "RateLimiter",
    "Refusal",
    "RetryBudget",
    "forget_load_controls",
    "load_control_for",
]

logger = logging.getLogger("connector_resilience.limits")

P = ParamSpec("P")
R = TypeVar("R")

Refusal = Literal[
    "RetryBudgetExhausted", "RateLimitExceededError", "BulkheadFullError", "FallbackUsed"
]
#: What a refusal record's ``error`` says (beside the breaker's ``CircuitOpenError``).
REFUSAL_KINDS: Final[tuple[Refusal, ...]] = (
    "RetryBudgetExhausted",
    "RateLimitExceededError",
    "BulkheadFullError",
    "FallbackUsed",
)

#: A shared budget sends the calls it counted to the store this often (at most).
_DEPOSIT_INTERVAL_S: Final = 1.0
#: After the store refuses a retry, this process refuses its retries without asking
#: for this long: during an outage, at most 10 asks a second per connector and process.
REFUSAL_MEMORY_S: Final = 0.1
#: How often a call waiting for a shared bulkhead slot asks again, at most.
_SLOT_POLL_MAX_S: Final = 0.05
#: A local rate limiter takes this share of its burst ahead at a time (see RateLimiter)...
AHEAD_SHARE: Final = 0.01
#: ... and at most this many tokens.
AHEAD_MAX: Final = 256
_NONES: Final[list[None]] = [None] * AHEAD_MAX


class _Burst:
    """Logs the first refusal of a burst and, when one is next granted, how many there were."""

    def __init__(self, connector: str, what: str) -> None:
        self.connector = connector
        self.what = what
        self.refused = 0

    def refusal(self, detail: str = "") -> None:
        self.refused += 1
        if self.refused == 1:
            logger.warning("%s: %s%s", self.connector, self.what, detail)

    def granted(self) -> None:
        if self.refused:
            count, self.refused = self.refused, 0
            logger.warning("%s: %s: over after %d refusal(s)", self.connector, self.what, count)


class _Shared:
    """A store's load-control steps with a per-process stand-in while it cannot be reached."""

    def __init__(self, store: Store, what: str) -> None:
        self._holds = store  # so that the id keying it in _shared stays this store's
        self.store: LimitStore | None = store if isinstance(store, LimitStore) else None
        self.url = store.url
        self.faults = FaultLog(what, store.url)
        if self.store is None:
            logger.warning(
                "store %s cannot share load-control state (no LimitStore steps); %s is per process",
                self.faults.url,
                what,
            )

    def run(self, name: str, **kwargs: Any) -> Any:
        """The store's answer, or ``None`` if it failed (logged once per burst)."""
        if self.store is None:
            return None
        try:
            answer = getattr(self.store, name)(**kwargs)
        except Exception as exc:
            self.faults.fault(exc)
            return None
        self.faults.ok()
        return answer if answer is not None else True

    async def arun(self, name: str, **kwargs: Any) -> Any:
        """:meth:`run` without blocking the loop (the store's twin, else a worker thread)."""
        if self.store is None:
            return None
        twin = getattr(self.store, f"a{name}", None)
        try:
            if twin is not None:
                answer = await twin(**kwargs)
            else:
                answer = await asyncio.to_thread(getattr(self.store, name), **kwargs)
        except Exception as exc:
            self.faults.fault(exc)
            return None
        self.faults.ok()
        return answer if answer is not None else True


#: One lock for every per-process state: a step is a few arithmetic operations, run
#: when a retry asks and once a second, and a lock each would cost every connector.
_local_lock = threading.Lock()


#: The :class:`_Shared` of each (store, what): connectors on one store share it, so a
#: store outage is logged once per burst for the store, and a connector pays nothing.
_shared: dict[tuple[int, str], _Shared] = {}


def _shared_for(store: Store, what: str) -> _Shared:
    key = (id(store), what)  # the _Shared holds the store: its id stays its own
    found = _shared.get(key)
    if found is None:
        found = _shared.setdefault(key, _Shared(store, what))
    return found


# Retry budget ------------------------------------------------------------------


class RetryBudget:
    """One connector's retry budget.

    ``calls`` is the hot path: each logical call adds one (a plain integer, so
    a call pays an attribute increment; under threads an increment may rarely
    be lost, which only makes the budget a little stricter). The count is
    folded into the windowed state when a retry asks, and for a shared budget
    sent to the store about once a second as well.

    Args:
        connector: the connector's name.
        settings: the connector's load-control settings.
        store: the store a shared budget lives in.
    """

    __slots__ = (
        "_burst",
        "_folded_at",
        "_local_state",
        "_refused_until",
        "_shared",
        "_unsent",
        "calls",
        "connector",
        "enabled",
        "min_per_s",
        "ratio",
        "window_s",
    )

    def __init__(self, connector: str, settings: LimitsPolicy, store: Store) -> None:
        self.connector = connector
        self.calls = 0
        self.ratio = settings.budget_ratio
        self.min_per_s = settings.budget_min_per_s
        self.window_s = settings.budget_window_s
        self.enabled = not math.isinf(self.ratio)
        self._local_state: limit_state.State | None = None  # this process's own window
        self._folded_at = _clock.monotonic()
        self._shared = (
            _shared_for(store, "sharing the retry budget")
            if settings.budget_scope == "store"
            else None
        )
        self._unsent = 0
        self._refused_until = 0.0  # a shared refusal remembered (REFUSAL_MEMORY_S)
        self._burst: _Burst | None = None  # made at the first refusal: most budgets never refuse
        if self._shared is not None and self.enabled:
            _depositor.add(self)

    def _fold(self) -> int:
        """Move the counted calls into the local window; return them, scaled to the window.

        Calls counted over a span longer than the window are assumed evenly
        spread, so only the window's share of them is counted.
        """
        calls, self.calls = self.calls, 0
        now = _clock.monotonic()
        span, self._folded_at = now - self._folded_at, now
        if span > self.window_s:
            calls = round(calls * self.window_s / span)
        if calls:
            self._local_step(self._spend(calls, retry=False))
        return calls

    def _local_step(self, step: limit_state.Step[bool]) -> bool:
        with _local_lock:
            self._local_state, answer = step(self._local_state, _clock.monotonic())
        return answer

    def _spend(self, calls: int, *, retry: bool) -> limit_state.Step[bool]:
        def step(state: limit_state.State | None, now: float) -> tuple[limit_state.State, bool]:
            return limit_state.spend_budget(
                state,
                now,
                calls=calls,
                retry=retry,
                ratio=self.ratio,
                min_per_s=self.min_per_s,
                window_s=self.window_s,
            )

        return step

    def _store_args(self, calls: int, *, retry: bool) -> dict[str, Any]:
        return {
            "key": self.connector,
            "calls": calls,
            "retry": retry,
            "ratio": self.ratio,
            "min_per_s": self.min_per_s,
            "window_s": self.window_s,
        }

    def _settle(self, granted: bool) -> bool:
        if granted:
            if self._burst is not None:
                self._burst.granted()
        else:
            if self._burst is None:
                self._burst = _Burst(self.connector, "retry budget exhausted, retries refused")
            self._burst.refusal(
                f" (more than {self.ratio:g} x calls + {self.min_per_s:g}/s "
                f"over {self.window_s:g}s); calls end with their own error"
            )
        return granted

    def try_retry(self) -> bool:
        """Take one retry from the budget; False if it is spent.

        A shared budget's refusal is remembered for :data:`REFUSAL_MEMORY_S`:
        retries asked meanwhile are refused without asking the store again
        (the budget can only be stricter for it, never looser).
        """
        if self._shared is None:
            self._fold()
            return self._settle(self._local_step(self._spend(0, retry=True)))
        if _clock.monotonic() < self._refused_until:
            return self._settle(False)
        calls = self._fold() + self._take_unsent()
        answer = self._shared.run("spend_retry_budget", **self._store_args(calls, retry=True))
        return self._shared_answer(answer, calls)

    async def atry_retry(self) -> bool:
        """:meth:`try_retry` for coroutines: a shared budget never blocks the loop."""
        if self._shared is None or _clock.monotonic() < self._refused_until:
            return self.try_retry()
        calls = self._fold() + self._take_unsent()
        answer = await self._shared.arun(
            "spend_retry_budget", **self._store_args(calls, retry=True)
        )
        return self._shared_answer(answer, calls)

    def _shared_answer(self, answer: object, calls: int) -> bool:
        if answer is None:  # the store failed: this process's own budget decides
            self._unsent += calls  # the store missed them: send them with the next deposit
            answer = self._local_step(self._spend(0, retry=True))
        elif not answer:
            self._refused_until = _clock.monotonic() + REFUSAL_MEMORY_S
        return self._settle(bool(answer))

    def _take_unsent(self) -> int:
        unsent, self._unsent = self._unsent, 0
        return unsent

    def deposit(self) -> None:
        """Send the calls counted since the last deposit to the store (a shared budget)."""
        calls = self._fold() + self._take_unsent()
        if calls and self._shared is not None:
            if self._shared.run("spend_retry_budget", **self._store_args(calls, retry=False)):
                return
            self._unsent += calls

    def after_fork(self) -> None:
        """Forget what the parent counted: the parent reports it."""
        self.calls = 0
        self._unsent = 0
        self._refused_until = 0.0
        self._local_state = None
        self._folded_at = _clock.monotonic()


class _Depositor:
    """One background thread that sends shared budgets' call counts to their stores."""

    def __init__(self) -> None:
        # A list, not a WeakSet: the registry keeps every budget alive until
        # forget(), and a weak reference each would cost every connector 300 bytes.
        self._budgets: list[RetryBudget] = []
        self._lock = threading.Lock()
        self._round = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def add(self, budget: RetryBudget) -> None:
        """Send ``budget``'s counts from now on (until :meth:`forget`)."""
        with self._lock:
            self._budgets.append(budget)
            self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="connector-resilience-budget", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(_DEPOSIT_INTERVAL_S)
            with self._round:  # forget() waits for a round under way
                for budget in list(self._budgets):
                    try:
                        budget.deposit()
                    except Exception:  # a deposit must never end the thread
                        logger.exception("depositing retry-budget calls failed")

    def forget(self) -> None:
        """Send no more counts for the budgets known so far."""
        with self._round:
            self._budgets = []

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._round = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        for budget in self._budgets:
            budget.after_fork()
        if self._budgets:
            self._start()


_depositor = _Depositor()


# Rate limiter -------------------------------------------------------------------


class RateLimiter:
    """One connector's token bucket: ``RATE_LIMIT_PER_S`` tokens a second, up to a burst.

    Args:
        connector: the connector's name.
        settings: the connector's load-control settings (``rate_per_s`` set).
        store: the store a shared bucket lives in.

    A local bucket with a large burst takes a few tokens ahead
    (:data:`AHEAD_SHARE` of its burst, at most :data:`AHEAD_MAX`): the calls
    that follow pop one of them from :attr:`ahead`, without the baton or any
    arithmetic. This is only ever stricter than the plain bucket: when the
    tokens taken ahead are all used, the bucket counts them as taken at that
    moment (the latest they can have been used), so at any instant it hands
    out at most ``rate x seconds + burst`` tokens over any span of time, and
    at worst the tokens taken ahead fewer.

    Attributes:
        local: the bucket is this process's own (``RATE_LIMIT_SCOPE=process``).
        ahead: tokens taken ahead (one ``None`` each): pop one to use it. Empty
            for a shared bucket, and for a burst too small to take any ahead.
    """

    def __init__(self, connector: str, settings: LimitsPolicy, store: Store) -> None:
        assert settings.rate_per_s is not None
        self.connector = connector
        self.rate_per_s = settings.rate_per_s
        self.burst = (
            settings.rate_burst
            if settings.rate_burst is not None
            else max(1.0, math.floor(self.rate_per_s))
        )
        self.max_wait_s = settings.rate_max_wait_s
        self._interval, self._tolerance = limit_state.bucket_shape(self.rate_per_s, self.burst)
        # This process's bucket: the whole limiter per process, the stand-in when shared.
        # It is stepped by the thread holding the baton, a one-item list (list.pop
        # and list.append are atomic): two C calls, a third of what a
        # threading.Lock's acquire and release cost on this, every call's, path.
        self._full_at = 0.0
        self._baton: list[None] = [None]
        self._shared = (
            _shared_for(store, "sharing the rate limit") if settings.rate_scope == "store" else None
        )
        self.local = self._shared is None
        self._burst = _Burst(connector, "rate limited, calls refused")
        self.ahead: list[None] = []
        # Tokens a reservation takes ahead beside the caller's own (0: none), and
        # while some are out, how many the batch held and the bucket before it.
        extra = min(AHEAD_MAX, math.floor(self.burst * AHEAD_SHARE)) - 1
        self._ahead_extra = extra if self.local and extra > 0 else 0
        self._ahead_taken = 0
        self._ahead_from = 0.0

    def _take_args(self, max_wait_s: float) -> dict[str, Any]:
        return {
            "key": self.connector,
            "rate_per_s": self.rate_per_s,
            "burst": self.burst,
            "max_wait_s": max_wait_s,
        }

    def take_locally(self, max_wait_s: float, now: float) -> TokenGrant:
        """Reserve a token of this process's own bucket (the hot path of a local limiter).

        ``now`` is a ``_clock.perf()`` reading: the bucket runs on the clock
        that times calls, so that a call's one reading serves both. A token
        taken ahead (:attr:`ahead`) is used first.
        """
        ahead = self.ahead
        if ahead:
            try:
                ahead.pop()
            except IndexError:  # another thread took the last one
                pass
            else:
                return GRANTED_NOW
        baton = self._baton
        try:
            baton.pop()
        except IndexError:
            self._wait_for_baton()
        try:
            full_at = self._full_at
            while ahead:  # refilled while this thread waited for the baton
                try:
                    ahead.pop()
                except IndexError:  # another thread took the last one
                    break
                return GRANTED_NOW
            if self._ahead_taken:
                # The last batch is used up, each token at the latest by now: count
                # the batch as taken now (stricter than when its tokens went).
                taken_at = max(self._ahead_from, now)
                full_at = max(full_at, taken_at + self._ahead_taken * self._interval)
                self._ahead_taken = 0
            # limit_state.reserve's rule, inlined: this runs on every call.
            if full_at < now:  # noqa: PLR1730 - a compare is cheaper than max() here
                full_at = now
            if full_at - self._tolerance <= now:
                extra = self._ahead_extra
                if extra and full_at + extra * self._interval - self._tolerance <= now:
                    # The whole batch is due now: take it, hand the extra tokens out.
                    self._ahead_from = full_at
                    self._ahead_taken = extra + 1
                    self._full_at = full_at + (extra + 1) * self._interval
                    ahead.extend(_NONES[:extra])
                else:
                    self._full_at = full_at + self._interval
                grant = GRANTED_NOW
            else:
                self._full_at, grant = limit_state.reserve(
                    full_at, now, self._interval, self._tolerance, max_wait_s
                )
        finally:
            baton.append(None)
        if grant is GRANTED_NOW and not self._burst.refused:
            return grant
        return self._settle(grant)

    def take(self, max_wait_s: float | None = None) -> TokenGrant:
        """Reserve a token due within ``max_wait_s`` (``RATE_LIMIT_MAX_WAIT_S`` if ``None``).

        Returns:
            The grant: granted, with the seconds to wait before using the
            token; or refused, with the seconds until a token is due.
        """
        wait = self.max_wait_s if max_wait_s is None else max_wait_s
        if self._shared is None:
            return self.take_locally(wait, _clock.perf())
        grant = self._shared.run("take_token", **self._take_args(wait))
        return self._settle(grant) if grant is not None else self.take_locally(wait, _clock.perf())

    async def atake(self, max_wait_s: float | None = None) -> TokenGrant:
        """:meth:`take` for coroutines: a shared bucket never blocks the loop."""
        wait = self.max_wait_s if max_wait_s is None else max_wait_s
        if self._shared is None:
            return self.take_locally(wait, _clock.perf())
        grant = await self._shared.arun("take_token", **self._take_args(wait))
        return self._settle(grant) if grant is not None else self.take_locally(wait, _clock.perf())

    def _settle(self, grant: TokenGrant) -> TokenGrant:
        if grant.granted:
            self._burst.granted()
        else:
            self._burst.refusal(f" (next token in {grant.wait_s:.3f}s)")
        return grant

    def refusal(self, grant: TokenGrant) -> RateLimitExceededError:
        """The error for a refused grant, carrying when the token is due."""
        return RateLimitExceededError(self.connector, retry_at=_clock.wall() + grant.wait_s)

    def _wait_for_baton(self) -> None:
        """Take the baton from the thread stepping the bucket: it holds it for a few bytecodes."""
        while True:
            time.sleep(0)  # let the holder run (a real sleep: tests' no_waits must not spin this)
            try:
                self._baton.pop()
            except IndexError:
                continue
            return

    def _pause_locally(self, seconds: float) -> None:
        now = _clock.perf()
        try:
            self._baton.pop()
        except IndexError:
            self._wait_for_baton()
        try:
            self.ahead.clear()  # no token taken ahead may go out during the pause
            self._full_at = limit_state.paused(self._full_at, now, seconds, self._tolerance)
        finally:
            self._baton.append(None)

    def _pause_args(self, seconds: float) -> dict[str, Any]:
        return {
            "key": self.connector,
            "seconds": seconds,
            "rate_per_s": self.rate_per_s,
            "burst": self.burst,
        }

    def pause(self, seconds: float) -> None:
        """Hand out no token for ``seconds`` (every process sharing the bucket)."""
        self._pause_locally(seconds)
        if self._shared is not None:
            self._shared.run("pause_tokens", **self._pause_args(seconds))

    async def apause(self, seconds: float) -> None:
        """:meth:`pause` for coroutines."""
        self._pause_locally(seconds)
        if self._shared is not None:
            await self._shared.arun("pause_tokens", **self._pause_args(seconds))


# Bulkhead -----------------------------------------------------------------------


class Bulkhead:
    """A cap on one connector's calls in flight: per process, or leased through the store.

    A slot is a holder id: a lease in the store, or ``""`` for a slot of this
    process's own cap (the whole bulkhead per process, the stand-in while a
    shared one's store is down). This process's free slots are a deque of
    tokens: ``pop`` and ``append`` are atomic, so taking and giving back a
    slot needs no lock; only a call that waits for one uses a condition. A
    deque, not a list: a list emptied by a pop and refilled by an append is
    reallocated both times (one slot in use, the common case), a deque keeps
    its block. A slot is made the first time no free one is left (under a
    lock, up to the cap), so the deque grows only as long as the most calls
    ever in flight, not as long as the cap (a container the garbage
    collector would walk).

    Args:
        connector: the connector's name.
        settings: the connector's load-control settings (``bulkhead_max_concurrent`` set).
        store: the store shared slots are leased in.

    Attributes:
        local: the cap is this process's own (``BULKHEAD_SCOPE=process``).
        free: this process's free slots (one token each); pop one to take it.
    """

    def __init__(self, connector: str, settings: LimitsPolicy, store: Store) -> None:
        assert settings.bulkhead_max_concurrent is not None
        self.connector = connector
        self.limit = settings.bulkhead_max_concurrent
        self.max_wait_s = settings.bulkhead_max_wait_s
        self.lease_s = settings.bulkhead_lease_s
        self.free: collections.deque[None] = collections.deque()
        self._new_slots()
        self._shared = (
            _shared_for(store, "sharing the bulkhead")
            if settings.bulkhead_scope == "store"
            else None
        )
        self.local = self._shared is None
        self._burst = _Burst(connector, "bulkhead full, calls refused")

    def _new_slots(self) -> None:
        self.free.clear()  # the same deque: Admission.free keeps it
        self._made = 0
        self._making = threading.Lock()
        self._freed = threading.Condition()
        self.waiting = 0

    @property
    def in_flight(self) -> int:
        """Calls holding one of this process's own slots."""
        return self._made - len(self.free)

    def try_local(self) -> bool:
        """Take one of this process's own slots if one is free, without waiting."""
        try:
            self.free.pop()
        except IndexError:
            return self._make_slot()
        return True

    def _make_slot(self) -> bool:
        """A slot no call has used yet, if fewer than the cap are made."""
        with self._making:
            if self._made < self.limit:
                self._made += 1
                return True
        return False

    def _wait_locally(self, deadline: float) -> bool:
        with self._freed:
            self.waiting += 1
            try:
                while not self.try_local():
                    left = deadline - _clock.monotonic()
                    if left <= 0:
                        return False
                    # Bounded: a give-back that raced past the count still wakes us.
                    self._freed.wait(min(left, _SLOT_POLL_MAX_S))
                return True
            finally:
                self.waiting -= 1

    def give_back_local(self) -> None:
        """Return one of this process's own slots, waking a waiter if there is one."""
        self.free.append(None)
        if self.waiting:
            self.wake()

    def wake(self) -> None:
        """Wake one call waiting for a slot of this process's own."""
        with self._freed:
            self._freed.notify()

    def _lease_args(self, holder: str) -> dict[str, Any]:
        return {
            "key": self.connector,
            "limit": self.limit,
            "lease_s": self.lease_s,
            "holder": holder,
        }

    def acquire(self, max_wait_s: float | None = None) -> str:
        """A slot, waiting up to ``max_wait_s`` (``BULKHEAD_MAX_WAIT_S`` if ``None``).

        Raises:
            BulkheadFullError: no slot came free in time.
        """
        deadline = _clock.monotonic() + (self.max_wait_s if max_wait_s is None else max_wait_s)
        if self._shared is None:
            if not (self.try_local() or self._wait_locally(deadline)):
                raise self._refuse(None) from None
            if self._burst.refused:
                self._burst.granted()
            return ""
        holder, delay = uuid.uuid4().hex, 0.002
        while True:
            grant = self._shared.run("acquire_lease", **self._lease_args(holder))
            slot = self._granted(grant, holder)
            if slot is not None:
                return slot
            left = deadline - _clock.monotonic()
            if left <= 0:
                raise self._refuse(grant.free_in_s if grant is not None else None) from None
            _waits.sleep(min(delay, left))
            delay = min(delay * 2, _SLOT_POLL_MAX_S)

    async def aacquire(self, max_wait_s: float | None = None) -> str:
        """:meth:`acquire` for coroutines: waiting for a slot never blocks the loop."""
        deadline = _clock.monotonic() + (self.max_wait_s if max_wait_s is None else max_wait_s)
        holder, delay = uuid.uuid4().hex, 0.001
        while True:
            grant = None
            if self._shared is not None:
                grant = await self._shared.arun("acquire_lease", **self._lease_args(holder))
            slot = self._granted(grant, holder)
            if slot is not None:
                return slot
            left = deadline - _clock.monotonic()
            if left <= 0:
                raise self._refuse(grant.free_in_s if grant is not None else None) from None
            await _waits.asleep(min(delay, left))
            delay = min(delay * 2, _SLOT_POLL_MAX_S)

    def _granted(self, grant: LeaseGrant | None, holder: str) -> str | None:
        """The slot a lease request got: the lease, a local slot (no store), or ``None``."""
        if grant is None:
            # Per process, or the store is down: this process's own cap stands in.
            if not self.try_local():
                return None
            holder = ""
        elif not grant.granted:
            return None
        self._burst.granted()
        return holder

    def _refuse(self, free_in_s: float | None) -> BulkheadFullError:
        self._burst.refusal(f" ({self.limit} in flight)")
        retry_at = None if free_in_s is None else _clock.wall() + free_in_s
        return BulkheadFullError(self.connector, retry_at=retry_at)

    def release(self, holder: str) -> None:
        """Give a slot back (a lease the store cannot take back ends by itself)."""
        if not holder:
            self.give_back_local()
        elif self._shared is not None:
            self._shared.run("release_lease", key=self.connector, holder=holder)

    async def arelease(self, holder: str) -> None:
        """:meth:`release` for coroutines."""
        if not holder or self._shared is None:
            self.release(holder)
        else:
            await self._shared.arun("release_lease", key=self.connector, holder=holder)

    def after_fork(self) -> None:
        """A child starts with no calls in flight (the parent's are the parent's)."""
        self._new_slots()


# One connector's controls, and the admission step ---------------------------------


class LoadControl:
    """The budget, rate limiter and bulkhead of one connector on one store.

    Attributes:
        connector: the connector's name.
        budget: the retry budget (``budget.enabled`` False with ``RETRY_BUDGET_RATIO=inf``).
        limiter: the rate limiter, or ``None`` when ``RATE_LIMIT_PER_S`` is unset.
        bulkhead: the bulkhead, or ``None`` when ``BULKHEAD_MAX_CONCURRENT`` is unset.
    """

    __slots__ = ("budget", "bulkhead", "connector", "gates_retries", "limiter")

    def __init__(self, connector: str, settings: LimitsPolicy, store: Store) -> None:
        self.connector = connector
        self.budget = RetryBudget(connector, settings, store)
        self.limiter = (
            RateLimiter(connector, settings, store) if settings.rate_per_s is not None else None
        )
        self.bulkhead = (
            Bulkhead(connector, settings, store)
            if settings.bulkhead_max_concurrent is not None
            else None
        )
        #: Whether a retry must ask first (the budget or a rate limiter is on).
        self.gates_retries = self.budget.enabled or self.limiter is not None

    @property
    def admits(self) -> bool:
        """Whether a call must be admitted (a rate limiter or a bulkhead is on)."""
        return self.limiter is not None or self.bulkhead is not None

    def pause(self, *, until: float) -> None:
        """Pause the connector's rate limiter until wall-clock ``until`` (a server asked).

        Every process sharing the bucket (``RATE_LIMIT_SCOPE=store``) pauses with
        it. Nothing happens without a rate limiter, or for a time in the past.
        """
        seconds = until - _clock.wall()
        if self.limiter is not None and seconds > 0:
            logger.warning("%s: the server asked for a pause of %.3fs", self.connector, seconds)
            self.limiter.pause(seconds)

    async def apause(self, *, until: float) -> None:
        """:meth:`pause` for coroutines."""
        seconds = until - _clock.wall()
        if self.limiter is not None and seconds > 0:
            logger.warning("%s: the server asked for a pause of %.3fs", self.connector, seconds)
            await self.limiter.apause(seconds)

    def retry_verdict(self, delay_s: float, remaining_s: float | None) -> float | Refusal:
        """May a retry go after ``delay_s``? Its (maybe longer) delay, or why not.

        Args:
            delay_s: the backoff before the retry.
            remaining_s: time left before the call's deadline, or ``None``.
        """
        if self.budget.enabled and not self.budget.try_retry():
            return "RetryBudgetExhausted"
        if self.limiter is None:
            return delay_s
        grant = self.limiter.take(self._token_wait(delay_s, remaining_s))
        return max(delay_s, grant.wait_s) if grant.granted else "RateLimitExceededError"

    async def aretry_verdict(self, delay_s: float, remaining_s: float | None) -> float | Refusal:
        """:meth:`retry_verdict` for coroutines."""
        if self.budget.enabled and not await self.budget.atry_retry():
            return "RetryBudgetExhausted"
        if self.limiter is None:
            return delay_s
        grant = await self.limiter.atake(self._token_wait(delay_s, remaining_s))
        return max(delay_s, grant.wait_s) if grant.granted else "RateLimitExceededError"

    def _token_wait(self, delay_s: float, remaining_s: float | None) -> float:
        assert self.limiter is not None
        wait = max(delay_s, self.limiter.max_wait_s)
        return wait if remaining_s is None else min(wait, max(delay_s, remaining_s))


class Admission:
    """The step before the breaker: a rate-limit token, then a bulkhead slot.

    :meth:`enter` admits a call (or a block of code) and returns its slot,
    :meth:`leave` gives the slot back; :meth:`call` and :meth:`acall` run a
    function between the two. A slot is ``None`` without a bulkhead, ``""``
    for one of this process's own slots (``bulkhead.free``: giving it back
    never blocks), else a lease in the store.

    ``@resilient``'s wrappers admit a call in their own frame, an admitted
    call's hot path being a token and a slot: they pop a token taken ahead
    from :attr:`ahead` and else call :meth:`token` (or :meth:`atoken`)
    with the clock reading they start with, pop a free slot from
    :attr:`free` and else call :meth:`slot`; the rules themselves stay in
    :class:`RateLimiter` and :class:`Bulkhead`. Those calls are made from the
    wrapper's ``IndexError`` handler (the empty pop): their refusals are
    raised ``from None``, so that a traceback shows the refusal alone.

    Args:
        control: the connector's load control (``control.admits`` true).
        deadline_s: the call's deadline; no wait for a token or slot outlasts it.
        refused: told the kind of each refusal (for metrics).

    Attributes:
        limiter: the connector's rate limiter, or ``None``.
        bulkhead: the connector's bulkhead, or ``None``.
        ahead: the rate limiter's tokens taken ahead (``limiter.ahead``),
            ``None`` without a rate limiter.
        free: the bulkhead's free slots: a local bulkhead's own
            (``bulkhead.free``: pop one to take a slot, append ``None`` to
            give it back, then :meth:`Bulkhead.wake` a waiter if
            ``bulkhead.waiting``); for a shared bulkhead, one that stays
            empty (every slot is leased through :meth:`slot`).
        token_wait: the longest a call may wait for its token.
    """

    def __init__(
        self,
        control: LoadControl,
        *,
        deadline_s: float | None,
        refused: Callable[[Refusal], object],
    ) -> None:
        self.control = control
        self.limiter = control.limiter
        self.bulkhead = control.bulkhead
        self.ahead = self.limiter.ahead if self.limiter else None
        # A shared bulkhead's calls all ask the store: no slot is ever free at once.
        self.free: collections.deque[None] = (
            self.bulkhead.free if self.bulkhead and self.bulkhead.local else collections.deque()
        )
        self._refused = refused

        def bound(wait_s: float) -> float:
            return wait_s if deadline_s is None else min(wait_s, deadline_s)

        self.token_wait = bound(self.limiter.max_wait_s) if self.limiter else 0.0
        self._slot_wait = bound(self.bulkhead.max_wait_s) if self.bulkhead else 0.0

    def enter(self) -> str | None:
        """Admit a call: a token (waiting for it if it is due soon), then a slot.

        Returns:
            The slot taken: give it to :meth:`leave`.

        Raises:
            RateLimitExceededError: no token within the wait allowed.
            BulkheadFullError: no slot within the wait allowed.
        """
        limiter = self.limiter
        if limiter is not None:
            grant = limiter.take(self.token_wait)
            if grant is not GRANTED_NOW:  # a refusal, or a token for later
                self.not_now(grant)
        bulkhead = self.bulkhead
        if bulkhead is None:
            return None
        return "" if bulkhead.local and bulkhead.try_local() else self.slot()

    async def aenter(self) -> str | None:
        """:meth:`enter` for coroutines: no wait blocks the event loop."""
        limiter = self.limiter
        if limiter is not None:
            grant = (
                limiter.take_locally(self.token_wait, _clock.perf())
                if limiter.local
                else await limiter.atake(self.token_wait)
            )
            if grant is not GRANTED_NOW:
                await self.anot_now(grant)
        bulkhead = self.bulkhead
        if bulkhead is None:
            return None
        return "" if bulkhead.local and bulkhead.try_local() else await self.aslot()

    def token(self, now: float) -> float:
        """A call's token when none taken ahead was left; returns the call's start time.

        ``now`` is the call's ``_clock.perf()`` reading, returned as it is
        unless the token was waited for or asked of the store (then the
        clock is read again: that time is not the call's).

        Raises:
            RateLimitExceededError: no token within the wait allowed (counted).
        """
        limiter = self.limiter
        assert limiter is not None
        if limiter.local:
            grant = limiter.take_locally(self.token_wait, now)
        else:
            grant = limiter.take(self.token_wait)
            now = _clock.perf()
        if grant is not GRANTED_NOW:  # a refusal, or a token for later
            self.not_now(grant)
            now = _clock.perf()
        return now

    async def atoken(self, now: float) -> float:
        """:meth:`token` for coroutines: neither a wait nor the store blocks the loop."""
        limiter = self.limiter
        assert limiter is not None
        if limiter.local:
            grant = limiter.take_locally(self.token_wait, now)
        else:
            grant = await limiter.atake(self.token_wait)
            now = _clock.perf()
        if grant is not GRANTED_NOW:
            await self.anot_now(grant)
            now = _clock.perf()
        return now

    def not_now(self, grant: TokenGrant) -> None:
        """A grant that is no token for now: refuse, or wait until the token is due.

        Raises:
            RateLimitExceededError: the grant is a refusal (counted).
        """
        if not grant.granted:
            raise self._refuse_token(grant) from None
        _waits.sleep(grant.wait_s)

    async def anot_now(self, grant: TokenGrant) -> None:
        """:meth:`not_now` for coroutines: the wait never blocks the event loop."""
        if not grant.granted:
            raise self._refuse_token(grant) from None
        await _waits.asleep(grant.wait_s)

    def slot(self) -> str:
        """A slot when none was free at once: waiting for one, or leasing one in the store.

        Raises:
            BulkheadFullError: no slot within the wait allowed (counted).
        """
        assert self.bulkhead is not None
        try:
            return self.bulkhead.acquire(self._slot_wait)
        except BulkheadFullError:
            self._refused("BulkheadFullError")
            raise

    async def aslot(self) -> str:
        """:meth:`slot` for coroutines: no wait, and no store call, blocks the event loop."""
        assert self.bulkhead is not None
        try:
            return await self.bulkhead.aacquire(self._slot_wait)
        except BulkheadFullError:
            self._refused("BulkheadFullError")
            raise

    def leave(self, slot: str | None) -> None:
        """Give back the slot :meth:`enter` took (a lease: a store write, see :meth:`aleave`)."""
        if slot is not None and self.bulkhead is not None:
            self.bulkhead.release(slot)

    async def aleave(self, slot: str | None) -> None:
        """:meth:`leave` for coroutines: a lease is given back without blocking the loop."""
        if slot is not None and self.bulkhead is not None:
            await self.bulkhead.arelease(slot)

    def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn`` once admitted; refusals raise before it runs.

        Raises:
            RateLimitExceededError: no token within the wait allowed.
            BulkheadFullError: no slot within the wait allowed.
        """
        slot = self.enter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.leave(slot)

    async def acall(self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs) -> R:
        """:meth:`call` for coroutines: no wait blocks the event loop."""
        slot = await self.aenter()
        try:
            return await fn(*args, **kwargs)
        finally:
            await self.aleave(slot)

    def _refuse_token(self, grant: TokenGrant) -> RateLimitExceededError:
        assert self.limiter is not None
        self._refused("RateLimitExceededError")
        return self.limiter.refusal(grant)


# The registry -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    url: str
    connector: str
    settings: LimitsPolicy


_controls: dict[_Key, LoadControl] = {}
_controls_lock = threading.Lock()


def load_control_for(connector: str, *, policy: Policy, store: Store) -> LoadControl:
    """The process-wide load control of (store, connector, load-control settings)."""
    settings = policy.for_connector(connector).limits
    key = _Key(store.url, connector, settings)
    control = _controls.get(key)
    if control is None:
        with _controls_lock:
            control = _controls.get(key)
            if control is None:
                control = _controls[key] = LoadControl(connector, settings, store)
    return control


def forget_load_controls() -> None:
    """Drop every budget, bucket and bulkhead of this process (tests use it between cases).

    Shared budgets stop sending their counts: their stores may be closed next.
    """
    with _controls_lock:
        _controls.clear()
        _shared.clear()
    _depositor.forget()


def _after_fork() -> None:
    # A lock held at the fork is never released in the child.
    global _controls_lock, _local_lock  # noqa: PLW0603
    _controls_lock = threading.Lock()
    _local_lock = threading.Lock()
    for control in list(_controls.values()):
        if control.bulkhead is not None:
            control.bulkhead.after_fork()
    _depositor.after_fork()


os.register_at_fork(after_in_child=_after_fork)
