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
is cancelled or dies with its process cannot hold the breaker half-open.

Recovery (each off by default, so a breaker behaves as it always did):

* ``CB_HALF_OPEN_SUCCESSES`` probe successes close it; a probe failure reopens
  it (with a rate model, the failure rate over that many probes decides).
* ``CB_COOLDOWN_MULTIPLIER``: each reopen without a close in between lasts
  longer, up to ``CB_COOLDOWN_MAX_S``.
* ``CB_SLOW_START_S``: after a close, admission ramps from 10% of calls to all
  of them, by the store's clock, so every process ramps together.
* ``CB_QUORUM``: on a shared store it takes failures from that many breakers
  (one per process) within a cooldown to open the breaker for everyone; below
  it, ``CB_LOCAL_OPEN`` opens this process's own view only.

The rules themselves are pure functions in ``_circuit_rules``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Final, Literal

from connector_resilience import _clock
from connector_resilience._circuit_rules import (
    admitted_share,
    closed,
    effective_state,
    holding_probe,
    opened,
    probe_outcome,
    probe_refusal,
    transition,
    with_vote,
)
from connector_resilience._failures import describe_failure
from connector_resilience._faults import shared_fault_log
from connector_resilience.backends import (
    CircuitRecord,
    CircuitState,
    Store,
    open_store,
    store_for_policy,
)
from connector_resilience.errors import (
    SLOW_START_REASON,
    CircuitOpenError,
    fast_circuit_open_error,
)
from connector_resilience.policy import CircuitPolicy, Policy, current_policy

__all__ = [
    "CircuitBreaker",
    "Outcome",
    "StateChange",
    "admitted_share",
    "breaker_for",
    "effective_state",
]

logger = logging.getLogger("connector_resilience.circuit")

Outcome = Literal["success", "failure", "ignore"]

_LOAD: Final = "load"
_CAS: Final = "cas"
_STORE_DOWN: Final = object()
_MAX_CAS_TRIES = 8
_INFINITY = float("inf")
#: The window of a breaker that keeps none (the consecutive model): always empty.
_NO_WINDOW: collections.deque[tuple[float, bool, bool]] = collections.deque(maxlen=0)
#: Numbers for store operations (see ``CircuitBreaker._accept_load``), every breaker's.
_epochs = itertools.count(1)
#: What every breaker adopts records under. One lock for all: what it guards is a
#: few microseconds of arithmetic and a store clock reading (local: Redis's is an
#: estimate, read over the network once per store), never a listener; a lock each
#: would cost every connector its memory.
_adopt_lock = threading.Lock()


def _new_locks_after_fork() -> None:
    # A lock another thread held at the fork is never released in the child.
    global _adopt_lock  # noqa: PLW0603
    _adopt_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_after_fork)
#: The record of a breaker never written (records are frozen: one serves all).
_NEVER_WRITTEN: Final = CircuitRecord()
#: Probe ids of this process's own view (opened below quorum) start with this.
_LOCAL_PROBE = "local:"

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
        local: True when only this process's own view moved (opened below
            ``CB_QUORUM``, and its own probing and closing); the shared
            breaker did not.
    """

    connector: str
    old: CircuitState
    new: CircuitState
    reason: str | None
    at: float
    local: bool = False


_reporter_ids = itertools.count(1)


def _new_reporter_id() -> str:
    """Who reports failures, for a quorum: host, process and breaker, readable by operators."""
    host = socket.gethostname()[:60] or "host"
    return f"{host}:{os.getpid()}:{next(_reporter_ids)}:{uuid.uuid4().hex[:6]}"


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

    During a slow start admission is a random draw per call, so
    ``admit_until`` stays 0 until the ramp ends.

    Example:
        >>> breaker = CircuitBreaker("billing", store="memory://doc")
        >>> breaker.allow()
        True
        >>> breaker.record_success()
        >>> breaker.state
        'closed'
    """

    # Slots: every call reads the fast-path attributes, and each connector keeps one.
    __slots__ = (
        "_ahead_of",
        "_alooking",
        "_announce_lock",
        "_changes",
        "_epochs",
        "_faults",
        "_last_fault",
        "_listeners",
        "_local",
        "_looking",
        "_pending_probe",
        "_pushed",
        "_random",
        "_record",
        "_record_epoch",
        "_reporter",
        "_seen_state",
        "_stale_at",
        "_window",
        "_window_lock",
        "admit_until",
        "config",
        "connector",
        "policy",
        "refuse_until",
        "rejection_args",
        "store",
        "success_is_trivial",
    )

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
        self._record = _NEVER_WRITTEN
        self._seen_state: CircuitState = "closed"
        # When the cached record goes stale (0: at once), and what a stale look
        # waits on, made at the first one (most breakers of a quiet process never
        # need one), with the process it was made in: a lock held at a fork stays held.
        self._stale_at = 0.0
        self._looking: tuple[int, threading.RLock] | None = None
        self._alooking: dict[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._last_fault: BaseException | None = None
        # The fast path (see the class docstring), recomputed whenever the cached record changes.
        self.admit_until = 0.0
        self.refuse_until = 0.0
        self.rejection_args: tuple[str, float | None, str, tuple[str, str] | None] = (
            connector,
            None,
            "",
            None,
        )
        self.success_is_trivial = False
        # Only the count and time models keep a window; an empty deque is 760 bytes.
        self._window: collections.deque[tuple[float, bool, bool]] = (
            collections.deque(
                maxlen=self.config.window_size if self.config.model == "count" else None
            )
            if self.config.model != "consecutive"
            else _NO_WINDOW
        )
        # A breaker without a window has nothing for a lock to guard.
        self._window_lock = threading.Lock() if self._window is not _NO_WINDOW else None
        # Store operations are numbered as they are issued; a result is adopted
        # only if nothing issued later was adopted first (see _accept_load). The
        # numbers come from one process-wide counter: increasing is all it takes.
        self._epochs = _epochs
        self._record_epoch = 0
        # The store's version when this process last went on alone (writes
        # failing), or None while the store holds what this process decided.
        self._ahead_of: int | None = None
        # A tuple, replaced whole when one is added: most breakers never get one.
        self._listeners: tuple[Callable[[StateChange], object], ...] = ()
        # State changes waiting to be told to listeners, in the order they happened
        # (a list, made at the first change: most breakers never change state).
        self._changes: list[StateChange] | None = None
        # Made with the first change to tell (under the adoption lock): most never have one.
        self._announce_lock: threading.RLock | None = None
        self._pending_probe: str | None = None
        # This process's own view while its failures tripped the breaker below
        # quorum (CB_LOCAL_OPEN); None otherwise. Never written to the store.
        self._local: CircuitRecord | None = None
        # (pid, id), made when a quorum first needs it: most breakers never do.
        self._reporter: tuple[int, str] = (0, "")
        self._faults = shared_fault_log("updating circuit state", self.store.url)
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
        """``"closed"``, ``"open"`` or ``"half_open"``, as of now, for this process.

        That is the shared state, unless this process opened its own view
        below quorum (see :attr:`local_record`).
        """
        self._refresh_if_stale()
        return effective_state(self._view()[0], self.store.now())

    @property
    def record(self) -> CircuitRecord:
        """The persisted record as this process last saw it."""
        self._refresh_if_stale()
        return self._record

    @property
    def local_record(self) -> CircuitRecord | None:
        """This process's own view, when its failures opened it below ``CB_QUORUM``.

        ``None`` while this process follows the shared record. It is never
        written to the store: other processes go on calling.
        """
        self._refresh_if_stale()
        return self._view()[1]

    @property
    def admitted_share(self) -> float:
        """The share of calls admitted now: below 1.0 only during a slow start."""
        self._refresh_if_stale()
        record, local = self._view()
        return 1.0 if local is not None else admitted_share(record, self.store.now())

    @property
    def reporter_id(self) -> str:
        """Who this breaker is when it reports failures for a quorum: ``host:pid:n:random``."""
        pid = os.getpid()
        if self._reporter[0] != pid:  # a forked child is a process of its own
            self._reporter = (pid, _new_reporter_id())
        return self._reporter[1]

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
        if _clock.monotonic() < self.refuse_until:  # plainly open: the common refusal
            raise self.rejection()  # no local: it would tie this frame to the traceback
        self._refresh_if_stale()
        if _clock.monotonic() < self.admit_until:  # fresh again, and closed
            return None
        result: str | None = self._drive(self._admit_steps())
        return result

    def rejection(self) -> CircuitOpenError:
        """The error that refuses a call under the cached record."""
        return fast_circuit_open_error(*self.rejection_args)

    def record_success(self, *, duration_ms: float | None = None) -> None:
        """Report that the last allowed call succeeded."""
        probe, self._pending_probe = self._pending_probe, None
        self.report(probe, "success", duration_ms=duration_ms)

    def record_failure(
        self, *, duration_ms: float | None = None, error: BaseException | str | None = None
    ) -> None:
        """Report that the last allowed call failed (``error``: what it raised, if known)."""
        probe, self._pending_probe = self._pending_probe, None
        self.report(probe, "failure", duration_ms=duration_ms, error=error)

    def report(
        self,
        probe: str | None,
        outcome: Outcome,
        *,
        duration_ms: float | None = None,
        error: BaseException | str | None = None,
    ) -> None:
        """Report a call's outcome: ``"success"``, ``"failure"`` or ``"ignore"`` (neither).

        Args:
            probe: what :meth:`acquire` returned for the call.
            outcome: what the call's result means to the breaker.
            duration_ms: how long the call took (for ``CB_SLOW_CALL_MS``).
            error: for a failure, the exception it raised, or a name for a
                failed result (``"HTTP 503"``). When it opens the breaker, its
                type and masked message are kept: rejections carry them.
        """
        if probe is None and outcome == "success" and self.success_is_trivial:
            return  # nothing to count or write: the common case after a retried call
        self._drive(self._report_steps(probe, outcome, duration_ms, error))

    def force_open(self, *, reason: str = "forced open by an operator") -> None:
        """Hold the breaker open until :meth:`reset` (every process sharing the store)."""
        self._drive(self._override_steps("forced_open", reason))

    def disable(self) -> None:
        """Let every call through and stop counting, until :meth:`reset`."""
        self._drive(self._override_steps("disabled", "disabled by an operator"))

    def reset(self) -> None:
        """Clear any override and close the breaker: counts, open-time growth and ramp cleared."""
        self._drive(self._override_steps(None, "reset by an operator"))

    def close(self) -> None:
        """Close an open, half-open or forced-open breaker, as a recovery would.

        A slow start (``CB_SLOW_START_S``) follows, as after probes succeed.
        When this process's own view is open below quorum, that view closes.

        Raises:
            CircuitTransitionError: the breaker is closed already, or disabled.
        """
        self._drive(self._transition_steps("close"))

    def half_open(self) -> None:
        """End the cooldown of an open (or forced-open) breaker now: probing starts.

        Raises:
            CircuitTransitionError: the breaker is closed, half-open already, or disabled.
        """
        self._drive(self._transition_steps("half_open"))

    def add_listener(self, listener: Callable[[StateChange], object]) -> None:
        """Call ``listener`` on every state change this process makes or sees.

        Changes are told one at a time, in the order they happened, from the
        thread that made or saw them: keep a listener quick.
        """
        with _adopt_lock:
            if listener not in self._listeners:
                self._listeners = (*self._listeners, listener)

    # Async API (for stores with async twins, such as Redis) --------------

    async def aacquire(self) -> str | None:
        """:meth:`acquire` without blocking the event loop on network I/O."""
        if _clock.monotonic() < self.admit_until:
            return None
        if _clock.monotonic() >= self._stale_at:
            await self._arefresh()
            if _clock.monotonic() < self.admit_until:  # fresh again, and closed
                return None
        if _clock.monotonic() < self.refuse_until:  # plainly open: the common refusal
            raise self.rejection()  # no local: it would tie this frame to the traceback
        result: str | None = await self._adrive(self._admit_steps())
        return result

    async def areport(
        self,
        probe: str | None,
        outcome: Outcome,
        *,
        duration_ms: float | None = None,
        error: BaseException | str | None = None,
    ) -> None:
        """:meth:`report` without blocking the event loop on network I/O."""
        if probe is None and outcome == "success" and self.success_is_trivial:
            return
        await self._adrive(self._report_steps(probe, outcome, duration_ms, error))

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
                raise self._refusal(record, None, record.reason or "")
            state = effective_state(record, now)
            if state == "closed":
                if record.override is None:
                    if self._local is not None:
                        return self._admit_locally(now)
                    share = admitted_share(record, now)
                    if share < 1.0 and self._random() >= share:
                        raise self._refusal(
                            record,
                            now,
                            f"{SLOW_START_REASON}: admitting {share:.0%} of calls",
                        )
                return None
            if state == "open":
                raise self._refusal(record, record.reopen_at, record.reason or "")
            refusal = probe_refusal(record, now, self.config, draw=self._random())
            if refusal is not None:
                raise self._refusal(record, *refusal)
            probe = uuid.uuid4().hex[:12]
            new = holding_probe(record, now, self.config, probe=probe)
            written = yield (_CAS, record.version, new, "cooldown over: probing")
            if written is _STORE_DOWN:
                # With the store down, the probe runs on local state alone.
                self._go_local(new, record.version, "cooldown over: probing")
            if written:  # (the driver adopted it)
                return probe
            record = yield (_LOAD,)
            if record is _STORE_DOWN:
                record = self._record
        raise self._refusal(record, self.store.now(), "half-open: probe slots contended")

    def _refusal(
        self, record: CircuitRecord, retry_at: float | None, reason: str
    ) -> CircuitOpenError:
        return fast_circuit_open_error(self.connector, retry_at, reason, record.last_failure)

    def _report_steps(
        self,
        probe: str | None,
        outcome: Outcome,
        duration_ms: float | None,
        error: BaseException | str | None,
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
        failure = describe_failure(error) if failed else None
        if failure is None and failed:
            failure = ("slow call", f"{duration_ms:.0f} ms") if slow else None
        if probe is not None and probe.startswith(_LOCAL_PROBE):
            self._local_probe_outcome(probe, None if outcome == "ignore" else failed, failure)
            probe = None  # the shared breaker hears of it as of any other call
        trip_reason = None
        if cfg.model != "consecutive" and outcome != "ignore" and probe is None:
            trip_reason = self._note_in_window(failed, slow)
        record = self._record
        for _ in range(_MAX_CAS_TRIES):
            now = self.store.now()
            new, reason, alone = self._after_outcome(
                record,
                now=now,
                probe=probe,
                outcome=outcome,
                failed=failed,
                trip_reason=trip_reason,
                failure=failure,
            )
            if new is None:
                return
            written = yield (_CAS, record.version, new, reason)
            if written is _STORE_DOWN:
                self._go_local(new, record.version, reason)
            if written and alone is not None:
                self._open_locally(now, alone, failure)
            if written:  # (the driver adopted it, or this process goes on alone)
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
        failure: tuple[str, str] | None,
    ) -> tuple[CircuitRecord | None, str | None, str | None]:
        """What an outcome leads to: (new record or ``None``, why, why to open alone or ``None``).

        The third item is set when this process's failures trip the breaker
        but fewer than ``CB_QUORUM`` processes reported: with
        ``CB_LOCAL_OPEN`` this process then opens its own view only.
        """
        if record.override is not None:
            return None, None, None
        cfg = self.config
        if probe is not None:
            new, reason = probe_outcome(
                record,
                now,
                cfg,
                probe=probe,
                failed=None if outcome == "ignore" else failed,
                failure=failure,
            )
            return new, reason, None
        if record.state != "closed" or outcome == "ignore":
            # A call admitted before the breaker opened: its late outcome decides nothing.
            return None, None, None
        if cfg.model != "consecutive":
            if trip_reason is None:
                return None, None, None
            return self._trip(record, now, trip_reason, failure, record.failures)
        if failed:
            failures = record.failures + 1
            if failures >= cfg.failures_to_open:
                reason = f"{failures} consecutive failure{'' if failures == 1 else 's'}"
                return self._trip(record, now, reason, failure, failures)
            return (
                dataclasses.replace(
                    record,
                    version=record.version + 1,
                    failures=failures,
                    reporters=self._votes(record, now),
                ),
                None,
                None,
            )
        if record.failures or record.reporters:
            return (
                dataclasses.replace(record, version=record.version + 1, failures=0, reporters=()),
                None,
                None,
            )
        return None, None, None

    def _trip(
        self,
        record: CircuitRecord,
        now: float,
        reason: str,
        failure: tuple[str, str] | None,
        failures: int,
    ) -> tuple[CircuitRecord | None, str | None, str | None]:
        """The trip rule is met: open for everyone, or, below quorum, record the vote."""
        cfg = self.config
        reporters = self._votes(record, now)
        if cfg.quorum <= 1 or len(reporters) >= cfg.quorum:
            return opened(record, now, cfg, reason, failure), reason, None
        alone = None
        if cfg.local_open:
            alone = (
                f"{reason}; reported by {len(reporters)} of the {cfg.quorum} processes "
                "a quorum needs: open for this process only"
            )
        new = dataclasses.replace(
            record, version=record.version + 1, failures=failures, reporters=reporters
        )
        return new, None, alone

    def _votes(self, record: CircuitRecord, now: float) -> tuple[tuple[str, float], ...]:
        """The record's reporters with this breaker's failure counted (none without a quorum)."""
        if self.config.quorum <= 1:
            return ()
        return with_vote(record, self.reporter_id, now, self.config)

    # This process's own view (below quorum) -------------------------------

    def _view(self) -> tuple[CircuitRecord, CircuitRecord | None]:
        """(the record that decides for this process, its own view or ``None``)."""
        record, local = self._record, self._local
        if local is not None and record.override is None and record.state == "closed":
            return local, local
        return record, None

    def _admit_locally(self, now: float) -> str | None:
        with _adopt_lock:
            local = self._local
            if local is None:
                return None
            state = effective_state(local, now)
            if state == "open":
                raise self._refusal(local, local.reopen_at, local.reason or "")
            refusal = probe_refusal(local, now, self.config, draw=self._random())
            if refusal is not None:
                raise self._refusal(local, *refusal)
            probe = _LOCAL_PROBE + uuid.uuid4().hex[:12]
            self._local = holding_probe(local, now, self.config, probe=probe)
        self._local_moved("cooldown over: probing (this process only)", now)
        return probe

    def _open_locally(self, now: float, reason: str, failure: tuple[str, str] | None) -> None:
        with _adopt_lock:
            previous = self._local
            if previous is not None and previous.state != "closed":
                return  # open on its own already (its probe just failed)
            base = previous or _NEVER_WRITTEN
            new = opened(base, now, self.config, reason, failure)
            self._local = new
        self._local_moved(reason, now)

    def _local_probe_outcome(
        self, probe: str, failed: bool | None, failure: tuple[str, str] | None
    ) -> None:
        now = self.store.now()
        with _adopt_lock:
            local = self._local
            if local is None:
                return
            new, reason = probe_outcome(
                local, now, self.config, probe=probe, failed=failed, failure=failure
            )
            if new is None:
                return
            # A close of this process's own view needs no slow start: the
            # other processes never stopped calling.
            self._local = None if new.state == "closed" else new
        self._local_moved(reason, now)

    def _local_moved(self, reason: str | None, now: float) -> None:
        """This process's own view changed: recompute the fast path, tell listeners."""
        with _adopt_lock:
            self._set_fast_flags()
            previous = self._seen_state
            state = self._seen_state = effective_state(self._view()[0], now)
            if state != previous:
                self._queue_change(StateChange(self.connector, previous, state, reason, now, True))
        self._announce()

    def _override_steps(self, override: Any, reason: str | None) -> _Steps:
        for _ in range(_MAX_CAS_TRIES):
            record = yield (_LOAD,)
            if record is _STORE_DOWN:
                raise self._last_fault or RuntimeError("store unavailable")
            now = self.store.now()
            base = closed(record, now, self.config, slow_start=False)
            new = dataclasses.replace(base, override=override, reason=reason)
            written = yield (_CAS, record.version, new, reason)
            if written is _STORE_DOWN:
                raise self._last_fault or RuntimeError("store unavailable")
            if written:  # (the driver adopted it)
                self._drop_local(now)
                return
        raise RuntimeError(
            f"could not change the breaker of {self.connector!r}: too much contention"
        )

    def _transition_steps(self, action: Literal["close", "half_open"]) -> _Steps:
        reason = "closed by an operator" if action == "close" else "half-open by an operator"
        for _ in range(_MAX_CAS_TRIES):
            record = yield (_LOAD,)
            if record is _STORE_DOWN:
                raise self._last_fault or RuntimeError("store unavailable")
            now = self.store.now()
            local = self._view()[1]
            if local is not None:
                self._transition_locally(local, now, action, reason)
                return
            new = transition(record, now, self.config, action=action, connector=self.connector)
            written = yield (_CAS, record.version, new, reason)
            if written is _STORE_DOWN:
                raise self._last_fault or RuntimeError("store unavailable")
            if written:  # (the driver adopted it)
                return
        raise RuntimeError(
            f"could not change the breaker of {self.connector!r}: too much contention"
        )

    def _transition_locally(
        self, local: CircuitRecord, now: float, action: Literal["close", "half_open"], reason: str
    ) -> None:
        new = transition(local, now, self.config, action=action, connector=self.connector)
        with _adopt_lock:
            self._local = None if new.state == "closed" else new
        self._local_moved(f"{reason} (this process only)", now)

    def _drop_local(self, now: float) -> None:
        with _adopt_lock:
            local, self._local = self._local, None
        if local is not None:
            self._local_moved(None, now)

    def _note_in_window(self, failed: bool, slow: bool) -> str | None:
        """Add an outcome to this process's window; the trip reason if it now trips."""
        cfg = self.config
        now = self.store.now()
        lock = self._window_lock
        assert lock is not None  # only the count and time models keep a window
        with lock:
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

    # Drivers: carry out the store operations ------------------------------

    def _drive(self, steps: _Steps) -> Any:
        store = self.store
        try:
            step = next(steps)
            while True:
                epoch = next(self._epochs)
                try:
                    if step[0] is _LOAD:
                        result: Any = store.get_circuit(self.connector) or _NEVER_WRITTEN
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
                        result: Any = found or _NEVER_WRITTEN
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
        if loaded is self._record and self._unchanged_if_readopted(loaded):
            # The very record this process holds (a memory:// store hands out its
            # own): nothing to adopt, only the cache to call fresh again.
            self._set_fast_flags()
            return loaded
        with _adopt_lock:
            if self._overtaken(loaded, epoch):
                return self._record
            ahead = self._ahead_of
            if ahead is not None and loaded.version <= ahead:
                self._record_epoch = next(self._epochs)
                self._record = dataclasses.replace(self._record, version=loaded.version)
                return self._record
            self._ahead_of = None
        self._adopt(loaded, epoch=epoch)
        return self._record

    def _unchanged_if_readopted(self, record: CircuitRecord) -> bool:
        """Whether adopting ``record`` again would change nothing but the cache's freshness.

        A closed record with no override and no slow start stays closed
        whatever the time; anything else may move with the clock (a cooldown
        ends, a ramp goes on) and is adopted again.
        """
        return (
            self._ahead_of is None
            and self._seen_state == "closed"
            and record.state == "closed"
            and record.override is None
            and record.ramp_until is None
        )

    def _go_local(self, record: CircuitRecord, store_version: int, reason: str | None) -> None:
        """The store refused a write: go on with ``record`` here alone, for now."""
        with _adopt_lock:
            if self._ahead_of is None:
                self._ahead_of = store_version
        self._adopt(record, reason=reason, epoch=next(self._epochs))

    def _fault(self, exc: Exception) -> object:
        self._last_fault = exc
        self._faults.fault(exc)
        return _STORE_DOWN

    # Cache ----------------------------------------------------------------

    def _refresh_if_stale(self) -> None:
        """Read the store if the cache went stale: one thread looks, the others wait.

        Without it, every thread calling while the store is read (a file read
        and parse, a round trip) would read it too. Re-entrant: a listener
        told of a change from the looking thread may use the breaker. A
        look that left the cache stale (it raised) is made again by a waiter.
        """
        while _clock.monotonic() >= self._stale_at:
            looking = self._looking_lock()
            if looking.acquire(blocking=False):
                try:
                    self._drive(self._refresh_steps())
                finally:
                    looking.release()
                return
            with looking:  # a look is under way: its answer is ours too
                pass

    def _looking_lock(self) -> threading.RLock:
        pid = os.getpid()
        with _adopt_lock:
            made = self._looking
            if made is None or made[0] != pid:
                made = self._looking = (pid, threading.RLock())
        return made[1]

    async def _arefresh(self) -> None:
        """:meth:`_refresh_if_stale` for coroutines: one look per event loop, the others wait."""
        looks = self._alooking
        if looks is None:
            looks = self._alooking = {}
        loop = asyncio.get_running_loop()
        while _clock.monotonic() >= self._stale_at:
            looking = looks.get(loop)
            if looking is not None:
                await looking.wait()
                continue
            looking = looks[loop] = asyncio.Event()
            try:
                await self._adrive(self._refresh_steps())
            finally:
                del looks[loop]
                looking.set()
            return

    def _on_pushed(self, connector: str) -> None:
        """A store that pushes changes told us a breaker moved ("*": maybe any)."""
        if connector in (self.connector, "*"):
            self._stale_at = 0.0
            self._drive(self._refresh_steps())

    def _overtaken(self, record: CircuitRecord, epoch: int) -> bool:
        """Whether ``record``, from an operation issued at ``epoch``, is older news.

        An operation issued after the adopted record's operation completed saw
        the store at least as new (even one that was emptied and restarted its
        versions). One issued before may have run at the store either side of
        it (another thread's connection, another order), so its record is
        news only if its version is higher.
        """
        return epoch < self._record_epoch and record.version <= self._record.version

    def _adopt(self, record: CircuitRecord, *, epoch: int, reason: str | None = None) -> None:
        """Make ``record`` this process's view, unless a newer one was adopted meanwhile."""
        with _adopt_lock:
            if self._overtaken(record, epoch):
                return
            # Numbered on completion: an operation issued from now on sees at least this.
            self._record_epoch = next(self._epochs)
            previous = self._seen_state
            self._record = record
            if record.override is not None or record.state != "closed":
                self._local = None  # the shared breaker decides for every process now
            now = self.store.now()
            view, local = self._view()
            state = effective_state(view, now)
            self._seen_state = state
            self._set_fast_flags()
            if state != previous:
                if reason is None and state == "half_open" and view.state == "open":
                    reason = "cooldown over: probing"
                change = StateChange(
                    self.connector, previous, state, reason or view.reason, now, local is not None
                )
                self._queue_change(change)
        self._announce()

    def _queue_change(self, change: StateChange) -> None:
        """Queue ``change`` for :meth:`_announce` (the adoption lock is held)."""
        if self._changes is None:
            self._changes = []
            self._announce_lock = threading.RLock()
        self._changes.append(change)

    def _announce(self) -> None:
        """Tell listeners of the changes made so far, in the order they were made.

        Changes are queued under the adoption lock and told outside it (a
        listener may call the breaker), one thread at a time, so that every
        listener sees a chain even when threads adopt records at once.
        """
        lock = self._announce_lock
        if lock is None:  # never a change to tell
            return
        with lock:
            while self._changes:
                change = self._changes.pop(0)
                self._tell(change)

    def _tell(self, change: StateChange) -> None:
        previous, state = change.old, change.new
        lock = self._window_lock
        if lock is not None and (state == "closed" or (state == "open" and previous == "closed")):
            with lock:
                self._window.clear()
        level = logging.WARNING if state == "open" else logging.INFO
        logger.log(
            level,
            "circuit %r: %s -> %s (%s)",
            self.connector,
            previous,
            state,
            change.reason or "seen in the store",
        )
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:
                logger.exception("on_state_change listener for %r failed", self.connector)

    def _set_fast_flags(self) -> None:
        record, local = self._view()
        interval = self.config.sync_interval_s
        now = _clock.monotonic()
        # A store that pushes changes keeps the cache fresh; poll it rarely as a safety net.
        self._stale_at = now + (max(interval, 5.0) if self._pushed else interval)
        open_for_calls = record.override == "disabled" or (
            record.override is None and record.state == "closed"
        )
        if open_for_calls and record.ramp_until is not None and record.override is None:
            ramp_left = record.ramp_until - self.store.now()
            if ramp_left > 0:
                # Admission is a draw per call until the ramp ends; look again then.
                open_for_calls = False
                self._stale_at = min(self._stale_at, now + ramp_left)
        self.admit_until = self._stale_at if open_for_calls else 0.0
        # Until when a call is refused without a look: the cooldown's end, or
        # the cache going stale, whichever comes first; and what it is told.
        self.rejection_args = (
            self.connector,
            None if record.override == "forced_open" else record.reopen_at,
            record.reason or "",
            record.last_failure,
        )
        self.refuse_until = 0.0
        if record.override == "forced_open":
            self.refuse_until = self._stale_at
        elif record.override is None and record.state == "open" and record.reopen_at is not None:
            remaining = record.reopen_at - self.store.now()
            if remaining > 0:
                self.refuse_until = min(self._stale_at, now + remaining)
        shared = self._record
        self.success_is_trivial = local is None and (
            shared.override == "disabled"
            or (
                open_for_calls
                and shared.failures == 0
                and self.config.model == "consecutive"
                and self.config.slow_call_ms is None
            )
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
