"""The circuit breaker: closed -> open -> half-open, shared through the store.

Decisions are pure functions of (persisted record, store time, local window);
the store is touched only to read a stale record or to write a transition by
compare-and-set. In the closed state a call costs a clock read and an
attribute check: the record is cached and re-read from a shared store at most
every ``CB_SYNC_INTERVAL_S`` (or pushed by stores that can, like Redis).

Trip rules (``CB_MODEL``):

* ``consecutive`` (default, the original framework's): ``CB_FAILURES_TO_OPEN``
  consecutive failed calls, counted in the store across processes. With
  ``CB_SLOW_CALL_MS`` set, a slow call counts as a failure.
* ``count`` / ``time``: failure rate (or slow-call rate) over the last
  ``CB_WINDOW_SIZE`` calls / seconds reaches ``CB_FAILURE_RATE`` (or
  ``CB_SLOW_CALL_RATE``) once ``CB_MIN_CALLS`` calls were seen. The window is
  this process's own; the trip is shared.

After ``CB_COOLDOWN_S`` an open breaker is half-open: each call is admitted as a
probe with probability ``CB_HALF_OPEN_PROB`` while fewer than
``CB_HALF_OPEN_MAX_PROBES`` probes hold a slot (across every process). A slot is
a lease of ``CB_PROBE_LEASE_S`` that is never extended, so a probe that hangs,
is cancelled or dies with its process cannot hold the breaker half-open. A
probe's success closes the breaker; its failure re-opens it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import random
import threading
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Final, Literal

from connector_resilience import _clock
from connector_resilience._faults import FaultLog
from connector_resilience.backends import (
    CircuitRecord,
    CircuitState,
    Store,
    open_store,
    store_for_policy,
)
from connector_resilience.errors import CircuitOpenError, fast_circuit_open_error
from connector_resilience.policy import CircuitPolicy, Policy, current_policy

__all__ = ["CircuitBreaker", "Outcome", "StateChange", "breaker_for"]

logger = logging.getLogger("connector_resilience.circuit")

Outcome = Literal["success", "failure", "ignore"]

_LOAD: Final = "load"
_CAS: Final = "cas"
_STORE_DOWN: Final = object()
_MAX_CAS_TRIES = 8
_INFINITY = float("inf")
#: The window of a breaker that keeps none (the consecutive model): always empty.
_NO_WINDOW: collections.deque[tuple[float, bool, bool]] = collections.deque(maxlen=0)

# One store operation asked of a driver: ("load",) or ("cas", expected_version, record).
_Step = tuple[Any, ...]
_Steps = Generator[_Step, Any, Any]


@dataclass(frozen=True, slots=True)
class StateChange:
    """A breaker moved (or was seen to move, when another process moved it).

    Attributes:
        connector: whose breaker.
        old: previous state (closed, open, half_open).
        new: new state.
        reason: why, when known (for example "5 consecutive failures").
        at: store time of the change.
    """

    connector: str
    old: CircuitState
    new: CircuitState
    reason: str | None
    at: float


def effective_state(record: CircuitRecord, now: float) -> CircuitState:
    """The state a record means at ``now``: open turns half-open once the cooldown ends."""
    if record.override == "forced_open":
        return "open"
    if record.override == "disabled":
        return "closed"
    if record.state == "open" and record.reopen_at is not None and now >= record.reopen_at:
        return "half_open"
    return record.state


def _opened(record: CircuitRecord, now: float, cfg: CircuitPolicy, reason: str) -> CircuitRecord:
    return dataclasses.replace(
        record,
        version=record.version + 1,
        state="open",
        failures=0,
        opened_at=now,
        reopen_at=now + cfg.cooldown_s,
        probes=(),
        reason=reason,
        changed_at=now,
    )


def _closed(record: CircuitRecord, now: float) -> CircuitRecord:
    return dataclasses.replace(
        record,
        version=record.version + 1,
        state="closed",
        failures=0,
        opened_at=None,
        reopen_at=None,
        probes=(),
        reason=None,
        changed_at=now,
    )


class CircuitBreaker:
    """One connector's breaker, shared with every process that shares the store.

    Args:
        connector: the connector's name.
        policy: settings (the environment's policy if ``None``); the
            connector's own overrides apply.
        store: a store or store URL (the policy's store if ``None``).
        rng: random source for half-open admission (the ``random`` module's own by
            default; pass a seeded ``random.Random`` for repeatable tests).

    Fast path: ``@resilient`` and the HTTP adapters read four attributes on
    every call instead of calling :meth:`acquire` and :meth:`report`. The
    breaker recomputes them whenever its cached record changes.

    - ``admit_until``: monotonic time before which a call is admitted without
      a look (closed, or disabled, and the cache is fresh).
    - ``refuse_until``: monotonic time before which a call is refused without
      a look (open with the cooldown running, or forced open).
    - ``rejection_args``: what the :class:`CircuitOpenError` of a refused call
      carries, for ``errors.fast_circuit_open_error(*rejection_args)``, which
      :meth:`rejection` calls for you.
    - ``success_is_trivial``: reporting a plain (non-probe) success would
      change nothing, so it may be skipped.

    Example:
        >>> breaker = CircuitBreaker("billing", store="memory://doc")
        >>> breaker.allow()
        True
        >>> breaker.record_success()
        >>> breaker.state
        'closed'
    """

    def __init__(
        self,
        connector: str,
        *,
        policy: Policy | None = None,
        store: Store | str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not connector or not isinstance(connector, str):
            raise ValueError("a circuit breaker needs a connector name (a non-empty string)")
        self.connector = connector
        self.policy = (policy or current_policy()).for_connector(connector)
        self.config = self.policy.circuit
        if store is None:
            store = store_for_policy(self.policy)
        elif isinstance(store, str):
            store = open_store(store)
        self.store: Store = store
        # The module's shared generator unless one is given (seeded, in tests): a
        # private random.Random is 2.5 KB, a third of what a connector costs.
        self._random = rng.random if rng is not None else random.random
        self._record = CircuitRecord()
        self._seen_state: CircuitState = "closed"
        # The fast path (see the class docstring), recomputed whenever the cached record changes.
        self.admit_until = 0.0
        self.refuse_until = 0.0
        self.rejection_args: tuple[str, float | None, str] = (connector, None, "")
        self.success_is_trivial = False
        # Only the count and time models keep a window; an empty deque is 760 bytes.
        self._window: collections.deque[tuple[float, bool, bool]] = (
            collections.deque(
                maxlen=self.config.window_size if self.config.model == "count" else None
            )
            if self.config.model != "consecutive"
            else _NO_WINDOW
        )
        self._window_lock = threading.Lock()
        # Store operations are numbered as they are issued; a result is adopted
        # only if nothing issued later was adopted first (see _accept_load).
        self._epochs = itertools.count(1)
        self._record_epoch = 0
        self._adopt_lock = threading.Lock()
        # The store's version when this process last went on alone (writes
        # failing), or None while the store holds what this process decided.
        self._ahead_of: int | None = None
        self._listeners: list[Callable[[StateChange], object]] = []
        self._pending_probe: str | None = None
        self._faults = FaultLog("updating circuit state", self.store.url)
        self._pushed = False
        watch = getattr(self.store, "watch_circuits", None)
        if callable(watch):
            watch(self._on_pushed)
            self._pushed = True
        self._drive(self._refresh_steps())

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.connector!r}, state={self.state!r}, store={self.store!r})"

    # Public, synchronous API --------------------------------------------

    @property
    def state(self) -> CircuitState:
        """``"closed"``, ``"open"`` or ``"half_open"``, as of now."""
        self._refresh_if_stale()
        return effective_state(self._record, self.store.now())

    @property
    def record(self) -> CircuitRecord:
        """The persisted record as this process last saw it."""
        self._refresh_if_stale()
        return self._record

    def allow(self) -> bool:
        """Whether a call may go ahead now (a half-open admission takes a probe slot).

        The original framework's interface; report the call's outcome with
        :meth:`record_success` or :meth:`record_failure`.
        """
        try:
            self._pending_probe = self.acquire()
        except CircuitOpenError:
            return False
        return True

    def acquire(self) -> str | None:
        """Admit a call or raise :class:`CircuitOpenError`.

        Returns:
            ``None`` for an ordinary admission, or a probe id (pass it to
            :meth:`report`) when the call is a half-open probe.
        """
        if _clock.monotonic() < self.admit_until:
            return None
        rejection = self.plain_rejection()
        if rejection is not None:
            raise rejection
        self._refresh_if_stale()
        result: str | None = self._drive(self._admit_steps())
        return result

    def plain_rejection(self) -> CircuitOpenError | None:
        """The error for a call while plainly open (cooldown running), else ``None``.

        The common rejection, decided from the cache without the admission
        machinery, and returned rather than raised so the caller raises it once.
        """
        if _clock.monotonic() < self.refuse_until:
            return self.rejection()
        return None

    def rejection(self) -> CircuitOpenError:
        """The error that refuses a call under the cached record."""
        return fast_circuit_open_error(*self.rejection_args)

    def record_success(self, *, duration_ms: float | None = None) -> None:
        """Report that the last allowed call succeeded."""
        probe, self._pending_probe = self._pending_probe, None
        self.report(probe, "success", duration_ms=duration_ms)

    def record_failure(self, *, duration_ms: float | None = None) -> None:
        """Report that the last allowed call failed."""
        probe, self._pending_probe = self._pending_probe, None
        self.report(probe, "failure", duration_ms=duration_ms)

    def report(
        self, probe: str | None, outcome: Outcome, *, duration_ms: float | None = None
    ) -> None:
        """Report a call's outcome: ``"success"``, ``"failure"`` or ``"ignore"`` (neither)."""
        if probe is None and outcome == "success" and self.success_is_trivial:
            return  # nothing to count or write: the common case after a retried call
        self._drive(self._report_steps(probe, outcome, duration_ms))

    def force_open(self, *, reason: str = "forced open by an operator") -> None:
        """Hold the breaker open until :meth:`reset` (every process sharing the store)."""
        self._drive(self._override_steps("forced_open", reason))

    def disable(self) -> None:
        """Let every call through and stop counting, until :meth:`reset`."""
        self._drive(self._override_steps("disabled", "disabled by an operator"))

    def reset(self) -> None:
        """Clear any override and close the breaker."""
        self._drive(self._override_steps(None, "reset by an operator"))

    def add_listener(self, listener: Callable[[StateChange], object]) -> None:
        """Call ``listener`` on every state change this process makes or sees."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    # Async API (for stores with async twins, such as Redis) --------------

    async def aacquire(self) -> str | None:
        """:meth:`acquire` without blocking the event loop on network I/O."""
        if _clock.monotonic() < self.admit_until:
            return None
        if _clock.monotonic() >= self._stale_at:
            await self._adrive(self._refresh_steps())
        rejection = self.plain_rejection()
        if rejection is not None:
            raise rejection
        result: str | None = await self._adrive(self._admit_steps())
        return result

    async def areport(
        self, probe: str | None, outcome: Outcome, *, duration_ms: float | None = None
    ) -> None:
        """:meth:`report` without blocking the event loop on network I/O."""
        if probe is None and outcome == "success" and self.success_is_trivial:
            return
        await self._adrive(self._report_steps(probe, outcome, duration_ms))

    # Decisions: generators that yield store operations -------------------

    def _refresh_steps(self) -> _Steps:
        record = yield (_LOAD,)  # the driver adopts what it read
        if record is _STORE_DOWN:
            self._set_fast_flags()  # try again after the sync interval, not per call

    def _admit_steps(self) -> _Steps:
        record = self._record
        for _ in range(_MAX_CAS_TRIES):
            now = self.store.now()
            if record.override == "forced_open":
                raise CircuitOpenError(self.connector, retry_at=None, reason=record.reason or "")
            state = effective_state(record, now)
            if state == "closed":
                return None
            if state == "open":
                raise CircuitOpenError(
                    self.connector, retry_at=record.reopen_at, reason=record.reason or ""
                )
            live = tuple(p for p in record.probes if p[1] > now)
            if len(live) >= self.config.half_open_max_probes:
                raise CircuitOpenError(
                    self.connector,
                    retry_at=min(p[1] for p in live),
                    reason="half-open: every probe slot is taken",
                )
            if self._random() >= self.config.half_open_prob:
                raise CircuitOpenError(
                    self.connector, retry_at=now, reason="half-open: call not picked as a probe"
                )
            probe = uuid.uuid4().hex[:12]
            new = dataclasses.replace(
                record,
                version=record.version + 1,
                state="half_open",
                probes=(*live, (probe, now + self.config.probe_lease_s)),
                changed_at=now,
            )
            written = yield (_CAS, record.version, new, "cooldown over: probing")
            if written is _STORE_DOWN:
                # With the store down, the probe runs on local state alone.
                self._go_local(new, record.version, "cooldown over: probing")
            if written:  # (the driver adopted it)
                return probe
            record = yield (_LOAD,)
            if record is _STORE_DOWN:
                record = self._record
        raise CircuitOpenError(
            self.connector, retry_at=self.store.now(), reason="half-open: probe slots contended"
        )

    def _report_steps(
        self, probe: str | None, outcome: Outcome, duration_ms: float | None
    ) -> _Steps:
        cfg = self.config
        slow = (
            cfg.slow_call_ms is not None
            and duration_ms is not None
            and duration_ms > cfg.slow_call_ms
        )
        failed = outcome == "failure" or (
            outcome == "success" and slow and cfg.model == "consecutive"
        )
        trip_reason = None
        if cfg.model != "consecutive" and outcome != "ignore" and probe is None:
            trip_reason = self._note_in_window(failed, slow)
        record = self._record
        for _ in range(_MAX_CAS_TRIES):
            now = self.store.now()
            new, reason = self._after_outcome(
                record,
                now=now,
                probe=probe,
                outcome=outcome,
                failed=failed,
                trip_reason=trip_reason,
            )
            if new is None:
                return
            written = yield (_CAS, record.version, new, reason)
            if written is _STORE_DOWN:
                self._go_local(new, record.version, reason)
                return
            if written:  # (the driver adopted it)
                return
            record = yield (_LOAD,)
            if record is _STORE_DOWN:
                return

    def _after_outcome(
        self,
        record: CircuitRecord,
        *,
        now: float,
        probe: str | None,
        outcome: Outcome,
        failed: bool,
        trip_reason: str | None,
    ) -> tuple[CircuitRecord | None, str | None]:
        """The record an outcome leads to, or ``None`` when nothing changes."""
        if record.override is not None:
            return None, None
        cfg = self.config
        if probe is not None:
            if not any(p[0] == probe for p in record.probes):
                return None, None  # the lease ran out, or another probe decided first
            if outcome == "ignore":
                rest = tuple(p for p in record.probes if p[0] != probe)
                return dataclasses.replace(record, version=record.version + 1, probes=rest), None
            if failed:
                return _opened(record, now, cfg, "half-open probe failed"), "half-open probe failed"
            return _closed(record, now), "half-open probe succeeded"
        if record.state != "closed" or outcome == "ignore":
            # A call admitted before the breaker opened: its late outcome decides nothing.
            return None, None
        if trip_reason is not None:
            return _opened(record, now, cfg, trip_reason), trip_reason
        if cfg.model != "consecutive":
            return None, None
        if failed:
            failures = record.failures + 1
            if failures >= cfg.failures_to_open:
                reason = f"{failures} consecutive failure{'' if failures == 1 else 's'}"
                return _opened(record, now, cfg, reason), reason
            return dataclasses.replace(record, version=record.version + 1, failures=failures), None
        if record.failures:
            return dataclasses.replace(record, version=record.version + 1, failures=0), None
        return None, None

    def _note_in_window(self, failed: bool, slow: bool) -> str | None:
        """Add an outcome to this process's window; the trip reason if it now trips."""
        cfg = self.config
        now = self.store.now()
        with self._window_lock:
            window = self._window
            window.append((now, failed, slow))
            if cfg.model == "time":
                horizon = now - cfg.window_size
                while window and window[0][0] < horizon:
                    window.popleft()
            calls = len(window)
            if calls < cfg.min_calls:
                return None
            failures = sum(1 for _, f, _ in window if f)
            slows = sum(1 for _, _, s in window if s)
        unit = "calls" if cfg.model == "count" else "s"
        if failures / calls >= cfg.failure_rate:
            return f"failure rate {failures / calls:.0%} over the last {cfg.window_size} {unit}"
        if cfg.slow_call_ms is not None and slows / calls >= cfg.slow_call_rate:
            return f"slow-call rate {slows / calls:.0%} over the last {cfg.window_size} {unit}"
        return None

    def _override_steps(self, override: Any, reason: str | None) -> _Steps:
        for _ in range(_MAX_CAS_TRIES):
            record = yield (_LOAD,)
            if record is _STORE_DOWN:
                raise self._last_fault or RuntimeError("store unavailable")
            now = self.store.now()
            base = _closed(record, now)
            new = dataclasses.replace(base, override=override, reason=reason)
            written = yield (_CAS, record.version, new, reason)
            if written is _STORE_DOWN:
                raise self._last_fault or RuntimeError("store unavailable")
            if written:  # (the driver adopted it)
                return
        raise RuntimeError(
            f"could not change the breaker of {self.connector!r}: too much contention"
        )

    # Drivers: carry out the store operations ------------------------------

    _last_fault: BaseException | None = None

    def _drive(self, steps: _Steps) -> Any:
        store = self.store
        try:
            step = next(steps)
            while True:
                epoch = next(self._epochs)
                try:
                    if step[0] is _LOAD:
                        result: Any = store.get_circuit(self.connector) or CircuitRecord()
                    else:
                        result = store.compare_and_set_circuit(self.connector, step[1], step[2])
                except Exception as exc:
                    result = self._fault(exc)
                step = steps.send(self._settle(step, result, epoch))
        except StopIteration as stop:
            return stop.value

    async def _adrive(self, steps: _Steps) -> Any:
        store = self.store
        aget = getattr(store, "aget_circuit", None)
        acas = getattr(store, "acompare_and_set_circuit", None)
        try:
            step = next(steps)
            while True:
                epoch = next(self._epochs)
                try:
                    # A store without asyncio twins (files, SQLite) is called in a
                    # worker thread: a lock held elsewhere must not freeze the loop.
                    if step[0] is _LOAD:
                        found = (
                            await aget(self.connector)
                            if aget
                            else await asyncio.to_thread(store.get_circuit, self.connector)
                        )
                        result: Any = found or CircuitRecord()
                    else:
                        result = (
                            await acas(self.connector, step[1], step[2])
                            if acas
                            else await asyncio.to_thread(
                                store.compare_and_set_circuit, self.connector, step[1], step[2]
                            )
                        )
                except Exception as exc:
                    result = self._fault(exc)
                step = steps.send(self._settle(step, result, epoch))
        except StopIteration as stop:
            return stop.value

    def _settle(self, step: _Step, result: Any, epoch: int) -> Any:
        """Take in a store operation's result; what the decision generator is sent."""
        if result is _STORE_DOWN:
            return result
        if step[0] is _LOAD:
            return self._accept_load(result, epoch)
        # Only a write ends a burst of failed updates: a store that reads but
        # cannot write must not log "works again" on every call.
        self._faults.ok()
        if result:
            self._ahead_of = None
            self._adopt(step[2], reason=step[3], epoch=epoch)
        return result

    def _accept_load(self, loaded: CircuitRecord, epoch: int) -> CircuitRecord:
        """Adopt a record read from the store, unless something newer was adopted already.

        Two cases keep this process's record instead:

        * the read was issued before the last record this process adopted (a
          slow read overtaken by a write or a later read): it is older news;
        * this process went on alone while the store refused writes, and the
          store has not moved since: its stale record must not undo what this
          process decided. The local record is rebased on the store's version,
          so the next write carries it to the store.
        """
        with self._adopt_lock:
            if epoch < self._record_epoch:
                return self._record
            ahead = self._ahead_of
            if ahead is not None and loaded.version <= ahead:
                self._record_epoch = epoch
                self._record = dataclasses.replace(self._record, version=loaded.version)
                return self._record
            self._ahead_of = None
        self._adopt(loaded, epoch=epoch)
        return self._record

    def _go_local(self, record: CircuitRecord, store_version: int, reason: str | None) -> None:
        """The store refused a write: go on with ``record`` here alone, for now."""
        with self._adopt_lock:
            if self._ahead_of is None:
                self._ahead_of = store_version
        self._adopt(record, reason=reason, epoch=next(self._epochs))

    def _fault(self, exc: Exception) -> object:
        self._last_fault = exc
        self._faults.fault(exc)
        return _STORE_DOWN

    # Cache ----------------------------------------------------------------

    _stale_at = 0.0

    def _refresh_if_stale(self) -> None:
        if _clock.monotonic() >= self._stale_at:
            self._drive(self._refresh_steps())

    def _on_pushed(self, connector: str) -> None:
        """A store that pushes changes told us a breaker moved ("*": maybe any)."""
        if connector in (self.connector, "*"):
            self._stale_at = 0.0
            self._drive(self._refresh_steps())

    def _adopt(self, record: CircuitRecord, *, epoch: int, reason: str | None = None) -> None:
        """Make ``record`` this process's view, unless a newer one was adopted meanwhile."""
        with self._adopt_lock:
            if epoch < self._record_epoch:
                return
            self._record_epoch = epoch
            previous = self._seen_state
            self._record = record
            now = self.store.now()
            state = effective_state(record, now)
            self._seen_state = state
            self._set_fast_flags()
        if state == previous:
            return
        if state == "closed" or (state == "open" and previous == "closed"):
            with self._window_lock:
                self._window.clear()
        if reason is None and state == "half_open" and record.state == "open":
            reason = "cooldown over: probing"
        change = StateChange(self.connector, previous, state, reason or record.reason, now)
        level = logging.WARNING if state == "open" else logging.INFO
        logger.log(
            level,
            "circuit %r: %s -> %s (%s)",
            self.connector,
            previous,
            state,
            change.reason or "seen in the store",
        )
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                logger.exception("on_state_change listener for %r failed", self.connector)

    def _set_fast_flags(self) -> None:
        record = self._record
        interval = self.config.sync_interval_s
        now = _clock.monotonic()
        # A store that pushes changes keeps the cache fresh; poll it rarely as a safety net.
        self._stale_at = now + (max(interval, 5.0) if self._pushed else interval)
        open_for_calls = record.override == "disabled" or (
            record.override is None and record.state == "closed"
        )
        self.admit_until = self._stale_at if open_for_calls else 0.0
        # Until when a call is refused without a look: the cooldown's end, or
        # the cache going stale, whichever comes first; and what it is told.
        self.rejection_args = (
            self.connector,
            None if record.override == "forced_open" else record.reopen_at,
            record.reason or "",
        )
        self.refuse_until = 0.0
        if record.override == "forced_open":
            self.refuse_until = self._stale_at
        elif record.override is None and record.state == "open" and record.reopen_at is not None:
            remaining = record.reopen_at - self.store.now()
            if remaining > 0:
                self.refuse_until = min(self._stale_at, now + remaining)
        self.success_is_trivial = record.override == "disabled" or (
            open_for_calls
            and record.failures == 0
            and self.config.model == "consecutive"
            and self.config.slow_call_ms is None
        )


_breakers: dict[tuple[int, str, CircuitPolicy], CircuitBreaker] = {}
_breakers_lock = threading.Lock()


def breaker_for(connector: str, *, policy: Policy, store: Store) -> CircuitBreaker:
    """The process-wide breaker for (store, connector, circuit settings)."""
    view = policy.for_connector(connector)
    key = (id(store), connector, view.circuit)
    breaker = _breakers.get(key)
    if breaker is None:
        with _breakers_lock:
            breaker = _breakers.get(key)
            if breaker is None:
                breaker = CircuitBreaker(connector, policy=view, store=store)
                _breakers[key] = breaker
    return breaker


def forget_breakers() -> None:
    """Drop every shared breaker (tests use this between cases)."""
    with _breakers_lock:
        _breakers.clear()
