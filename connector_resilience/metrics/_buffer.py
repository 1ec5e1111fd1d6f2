"""The in-memory buffer of call metrics and the background thread that writes it to a store."""

from __future__ import annotations

import atexit
import collections
import logging
import math
import operator
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from typing import Any, Literal, TypeVar

from connector_resilience import _clock
from connector_resilience._faults import FaultLog
from connector_resilience.backends import (
    AggregateStore,
    CallAggregate,
    CallRecord,
    CallStatus,
    Store,
)
from connector_resilience.metrics._aggregate import Aggregator, Series, SuccessBatch
from connector_resilience.policy import Policy

logger = logging.getLogger("connector_resilience.metrics")

MetricsMode = Literal["aggregated", "raw"]

# (ts, connector, operation, duration_ms, status, error, attempt, final, labels):
# the fields of CallRecord, as a tuple because building it is the hot path.
MetricRow = tuple[
    float, str, str, float, CallStatus, "str | None", int, bool, "Mapping[str, str] | None"
]
#: A series' successes whose owner was collected before the writer took them:
#: (key, labels, durations in seconds).
Orphan = tuple[Any, "Mapping[str, str] | None", "list[float]"]

#: While calls keep coming, the writer aggregates what they buffered this often,
#: so pending rows stay few whatever the call rate.
_BUSY_TICK_S = 0.05
#: The writer looks at least this often, even when the flush interval is longer.
_IDLE_TICK_S = 0.5
#: A series' keep_up_at while ticks leave it out: any success passes it.
_RESTING = -math.inf
#: How often the writer forgets series that were collected (their weak references).
_PRUNE_EVERY_S = 30.0


class MetricsBuffer:
    """Metrics waiting to be written to one store, by a background thread.

    Appending a float to its :class:`Series`' ``pending`` list (a first-attempt
    success, see :meth:`series`), a tuple to ``rows`` (any other attempt) or
    to ``rejections`` is the whole cost a call pays. In the default aggregated
    mode the writer thread folds them into one row per key per interval
    (:mod:`._aggregate`); in raw mode it writes one :class:`CallRecord` per
    attempt.

    Memory is bounded: calls fold what is buffered themselves when the
    writer falls behind (:meth:`keep_up`); past ``pending_max`` buffered
    attempts the writer still finds, the oldest are dropped; past ``max_pending`` rows
    waiting for an unreachable store, the oldest are dropped. Both are counted
    in ``dropped``, logged once per burst, and written on the next rows of
    their connector so that :func:`summarize` reports them. A record or row
    the store cannot hold at all is left out of its batch (the rest is
    written) and counted in ``unwritable``.
    """

    def __init__(
        self,
        store: Store,
        *,
        flush_interval_s: float,
        max_pending: int,
        mode: MetricsMode = "aggregated",
        interval_s: float = 0.5,
        max_keys: int = 1000,
        pending_max: int = 100_000,
    ) -> None:
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.pending_max = pending_max
        # A hard cap, far past the soft bound the writer enforces each tick:
        # reached only if the writer cannot run at all.
        hard = 2 * pending_max
        self.rows: collections.deque[MetricRow] = collections.deque(maxlen=hard)
        # The series whose successes this buffer takes: weak references (a series
        # lives as long as its engine), walked in full only to flush. A series
        # collected with durations still pending hands them to _orphans first.
        self._series: list[weakref.ref[Series]] = []
        self._pruned_at = time.monotonic()  # when collected series were last forgotten
        # The series calls appended to lately: what a tick walks, so that idle
        # connectors cost nothing. A tick rests those it found empty (their
        # keep_up_at set to _RESTING); their next success puts them back (see look).
        self._active: list[Series] = []
        self._activity_lock = threading.Lock()
        # The successes series held when last looked at (see look): what calls
        # count to know whether the writer fell behind, without walking them all.
        self._seen_pending = 0
        self._orphans: collections.deque[Orphan] = collections.deque()
        # (connector, operation, labels, why) per refused call; counted at flush.
        self.rejections: collections.deque[tuple[str, str, Mapping[str, str] | None, str]] = (
            collections.deque(maxlen=hard)
        )
        aggregates = mode == "aggregated" and isinstance(store, AggregateStore)
        if mode == "aggregated" and not aggregates:
            logger.info(
                "store %s cannot keep aggregated metrics (no append_aggregates): "
                "writing raw records",
                store.url,
            )
        self.mode: MetricsMode = "aggregated" if aggregates else "raw"
        self.aggregator = (
            Aggregator(interval_s=interval_s, max_keys=max_keys) if aggregates else None
        )
        self._fine_s = interval_s
        #: Attempts measured but not kept (full buffer, store down too long).
        self.dropped = 0
        #: Records or rows the store cannot hold at all (left out of their batch).
        self.unwritable = 0
        #: Attempts (or raw records) the store took.
        self.written = 0
        self._dropping = False
        self._retry: list[CallRecord] = []
        self._waiting: list[CallAggregate] = []
        # The in-memory state (deques taken from, aggregator, batches) is under
        # _flush_lock, held only for CPU work; store I/O is under _write_lock, so
        # a store that blocks never stops calls from folding what they buffer.
        # Order: _write_lock before _flush_lock.
        self._flush_lock = threading.Lock()
        self._write_lock = threading.Lock()
        #: Buffered attempts past which a call folds them itself (see keep_up).
        self.fold_at = max(1, pending_max // 2)
        #: How often (seconds of successes) calls look: at most every 5 ms, and often
        #: enough that, at 4M calls/s, a quarter of fold_at is buffered between looks.
        #: The quarter is for threads: while one folds, each other thread appends for
        #: up to one more look before it waits for the fold, so a handful of threads
        #: calling flat out stay within pending_max (many more may drop, counted).
        self.keep_up_every_s = min(0.005, self.fold_at / 16e6)
        self._faults = FaultLog("writing metrics", store.url)
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._last_write = time.monotonic()

    def series(self, connector: str, operation: str, labels: Mapping[str, str] | None) -> Series:
        """A :class:`Series` for a decorated function to append its successes to.

        Series of the same (connector, operation, labels) aggregate together.
        """
        series = Series(connector, operation, labels)
        self.adopt(series)
        return series

    def adopt(self, series: Series) -> bool:
        """Take ``series``' successes from now on; False if another buffer takes them.

        A success is then ``series.pending.append(seconds)``: each tick the
        writer takes the pending durations and stamps them all with the time
        it took them, so a success may be counted in a later fine interval
        than its own, by at most the time between two ticks (see
        ``docs/metrics-and-health.md``).
        """
        owner = series.owner
        if owner is None:
            with self._flush_lock:
                if series.owner is None:
                    series.owner = self
                    self._series.append(weakref.ref(series))
                    with self._activity_lock:
                        self._active.append(series)
            owner = series.owner
        return owner is self

    def look(self, series: Series, now: float) -> None:
        """A success of ``series`` at ``now`` (perf counter) passed ``series.keep_up_at``.

        The series is walked by the writer's ticks again (a tick leaves out a
        series it found empty), and if the series hold :attr:`fold_at`
        successes the writer has not taken (the writer fell behind), the call
        folds them (:meth:`keep_up`). What the series hold is known without
        walking them: each look counts its own series' new successes, and
        each tick starts the count again. Successes since a series' last look
        are not counted yet: at most :attr:`keep_up_every_s` of each series'
        calls, so at most that long of all calls.
        """
        # Under the lock a tick rests idle series with: an append it did not see
        # is then either seen by its recheck, or followed by this look.
        with self._activity_lock:
            if series.keep_up_at == _RESTING:
                self._active.append(series)
            series.keep_up_at = now + self.keep_up_every_s
            held = len(series.pending)
            self._seen_pending += held - series.seen
            series.seen = held
        if self._seen_pending >= self.fold_at:
            self.keep_up()

    def record_success(self, series: Series, seconds: float, end: float) -> None:
        """Record one success of ``seconds`` ending at ``end`` (perf counter) in ``series``.

        What an engine does inline; for callers without one. With raw metrics,
        or for a series another buffer takes, a full row is recorded instead.
        """
        if self.mode == "aggregated" and self.adopt(series):
            series.pending.append(seconds)
            if end >= series.keep_up_at:
                self.look(series, end)
        else:  # raw metrics keep each call's own time; or another buffer takes the series
            wall = end + _clock.wall() - _clock.perf()
            labels = series.labels
            row = (wall, series.connector, series.operation, seconds * 1000.0, "ok")
            self.rows.append((*row, None, 1, True, labels))  # type: ignore[arg-type]

    def orphaned(self, orphan: Orphan) -> None:
        """Keep the pending successes of a series collected before the writer took them."""
        self._orphans.append(orphan)

    def start(self) -> None:
        """Start the background writer (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="connector-resilience-metrics", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        # Successes are stamped with their series' latest end when a tick takes
        # them: ticking at least once per fine interval keeps that within one.
        idle = min(self.flush_interval_s, _IDLE_TICK_S, self._fine_s)
        timeout = idle
        while not self._stopped:
            self._wake.wait(timeout)
            self._wake.clear()
            try:
                busy = self.tick()
            except Exception:  # never let the writer die: it is every call's only outlet
                logger.exception("metrics writer failed; it carries on")
                busy = False
            timeout = min(_BUSY_TICK_S, idle) if busy else idle

    def tick(self) -> bool:
        """Aggregate what is buffered; write when the flush interval says so.

        Returns:
            Whether calls were buffered since the last tick (the writer then
            comes back sooner).
        """
        with self._flush_lock:
            busy = self._drain(everyone=False)
            if time.monotonic() - self._pruned_at >= _PRUNE_EVERY_S:
                self._prune_series()
            closed = False
            if self.aggregator is not None:
                self.aggregator.roll(_clock.wall())
                closed = bool(self.aggregator.closed)
        # A closed interval is written at once (waiting for the flush timer
        # could hold it back nearly a whole flush interval more).
        if closed or time.monotonic() - self._last_write >= self.flush_interval_s:
            self._write()
        return busy

    def flush(self) -> bool:
        """Write everything pending now, the open interval included; True if the store took it."""
        with self._flush_lock:
            self._drain()
            if self.aggregator is not None:
                self.aggregator.roll(_clock.wall())
                self.aggregator.close_fine()
        return self._write()

    def keep_up(self) -> None:
        """Fold what calls buffered in the calling thread, if the writer fell behind.

        Calls look in now and then (at most every few milliseconds of calls,
        often enough that no call rate buffers :attr:`fold_at` more between
        two looks). Past :attr:`fold_at` buffered attempts that the writer
        thread did not get to (it waits for the GIL, or a slow store holds it
        up), the call folds them itself, first waiting for any thread folding
        right now. Folding never waits for the store (writes happen outside
        the flush lock), so that wait is CPU work only. Memory stays under
        ``pending_max`` and nothing is dropped whatever the call rate: the
        calls that make the work pay for it, and only when the writer cannot.
        """
        if self._buffered() < self.fold_at:
            return
        with self._flush_lock:
            self._drain(everyone=False)

    def _buffered(self, *, everyone: bool = False) -> int:
        """Attempts calls buffered that the writer has not taken yet (by default, lately)."""
        pending = len(self.rows) + len(self.rejections)
        # Copies, made in one step each: another thread may register a series.
        for series in self._everyone() if everyone else list(self._active):
            pending += len(series.pending)
        return pending + sum(len(orphan[2]) for orphan in self._orphans.copy())

    def _everyone(self) -> list[Series]:
        """Every live series this buffer takes, idle ones too."""
        return [series for series in map(operator.call, self._series.copy()) if series is not None]

    def _prune_series(self) -> None:
        """Forget the collected series (under the flush lock, as registering is)."""
        self._pruned_at = time.monotonic()
        self._series = [ref for ref in self._series if ref() is not None]

    def pending(self) -> int:
        """Attempts (or raw records) measured but not yet taken by the store."""
        aggregated = sum(row.attempts for row in self._waiting)
        if self.aggregator is not None:
            aggregated += sum(row.attempts for row in self.aggregator.closed)
            aggregated += self.aggregator.open_attempts()
        return self._buffered(everyone=True) + sum(r.calls for r in self._retry) + aggregated

    def drain(self) -> None:
        """Aggregate what calls buffered so far, without writing."""
        with self._flush_lock:
            self._drain()

    def write_record(self, record: CallRecord) -> bool:
        """Write one raw record now (``record_call``); True if the store took it."""
        with self._flush_lock:
            self._retry.append(record)
        return self._write(raw_only=True)

    # Draining -----------------------------------------------------------

    def _drain(self, *, everyone: bool = True) -> bool:
        """Move what calls buffered into the aggregator (or into raw records).

        A writer's tick, and a call folding, take the series calls appended
        to lately (``everyone=False``); a flush takes every series.
        """
        successes = self._take_successes(everyone=everyone)
        rows = self._take(self.rows, _row_key)
        rejected = self._count_rejections()
        if not (successes or rows or rejected):
            return False
        aggregator = self.aggregator
        if aggregator is None:
            # Raw: observers hear of these once the store took them (_write_raw).
            self._retry.extend(_success_records(successes))
            self._retry.extend(CallRecord(*row) for row in rows)
            self._retry.extend(rejected)
            return True
        if _observers:
            # Aggregated: observers (the exporters) count every attempt exactly,
            # from the records as they are folded into rows.
            _notify(_success_records(successes) + [CallRecord(*row) for row in rows] + rejected)
        aggregator.add_durations(successes)
        aggregator.add_rows(rows)
        for r in rejected:
            aggregator.add_rejections(
                r.connector,
                r.operation,
                r.labels,
                count=r.calls,
                ts=r.ts,
                why=r.error or "CircuitOpenError",
            )
        return True

    def _take_successes(self, *, everyone: bool) -> list[SuccessBatch]:
        """The series' pending durations, stamped (wall clock) with the time they were taken.

        Calls append on the right meanwhile: the durations are copied, then
        deleted, each in one step, so an append in between stays for the next
        tick. Past ``pending_max`` in all, the oldest of the largest batches
        are dropped and counted. Unless ``everyone``, only the series calls
        appended to lately are walked, and those found empty are left out of
        the next walks until their next success.
        """
        now = _clock.wall()
        batches: list[SuccessBatch] = []
        idle: list[Series] = []
        walked = self._everyone() if everyone else list(self._active)
        for series in walked:
            pending = series.pending
            n = len(pending)
            if n:
                seconds = pending[:n]
                del pending[:n]
                batches.append((series.key, series.labels, seconds, now))
            elif not everyone:
                idle.append(series)
        self._rest(walked, idle)
        orphans = self._orphans
        while orphans:
            key, labels, seconds = orphans.popleft()
            if seconds:  # a tick may have taken them while the series was collected
                batches.append((key, labels, seconds, now))
        excess = sum(len(batch[2]) for batch in batches) - self.pending_max
        if excess > 0:
            counts: collections.Counter[tuple[str, str]] = collections.Counter()
            for key, _, seconds, _ in sorted(batches, key=_batch_size, reverse=True):
                cut = min(excess, len(seconds))
                del seconds[:cut]
                counts[(key[0], key[1])] += cut
                excess -= cut
                if not excess:
                    break
            self._count_dropped(counts, "calls came faster than the writer could aggregate")
            batches = [batch for batch in batches if batch[2]]
        return batches

    def _rest(self, walked: list[Series], idle: list[Series]) -> None:
        """Start the looks' count again; leave series found empty out of the next walks."""
        with self._activity_lock:
            # Taken: what the looks counted is gone (a look since the walk counted
            # successes that are still there; they count again at the next look).
            self._seen_pending = 0
            for series in walked:
                series.seen = 0
            if not idle:
                return
            for series in idle:
                # Resting first, then the recheck: a success appended after the
                # recheck reads _RESTING (or a later look's time) and looks itself.
                series.keep_up_at = _RESTING
                if series.pending:  # appended since the walk: it stays, and looks
                    series.keep_up_at = 0.0
            self._active = [series for series in self._active if series.keep_up_at != _RESTING]

    def _take(self, pending: collections.deque[Any], key: Callable[[Any], tuple[str, str]]) -> Any:
        """Everything in ``pending``, oldest first, past the bound dropped and counted."""
        if len(pending) >= (pending.maxlen or 0) and not self._dropping:
            self._dropping = True
            logger.warning(
                "metrics buffer of %s full (%d calls in one writer tick): calls past it "
                "were dropped before they could be counted",
                self._faults.url,
                len(pending),
            )
        # Only this thread takes from the left; calls append on the right meanwhile,
        # so nothing here may iterate the deque itself (that raises once it changes).
        excess = len(pending) - self.pending_max
        if excess > 0:
            oldest = list(map(operator.call, repeat(pending.popleft, excess)))
            counts = collections.Counter(map(key, oldest))
            self._count_dropped(counts, "calls came faster than the writer could aggregate")
        return list(map(operator.call, repeat(pending.popleft, len(pending))))

    def _count_dropped(self, counts: collections.Counter[tuple[str, str]], why: str) -> None:
        total = sum(counts.values())
        self.dropped += total
        if not self._dropping:
            self._dropping = True
            logger.warning(
                "store %s: dropping metrics (%s); %d so far, counted in summarize().dropped",
                self._faults.url,
                why,
                self.dropped,
            )
        if self.aggregator is not None:
            now = _clock.wall()
            for (connector, operation), n in counts.items():
                self.aggregator.add_dropped(connector, operation, n, now)

    def _note_refused(self, refused: Sequence[CallRecord | CallAggregate]) -> None:
        if not self.unwritable:
            logger.warning(
                "store %s cannot hold %d metric record(s) (the first: connector %a, "
                "operation %a); the rest of the batch was written. Such records are "
                "counted in MetricsBuffer.unwritable and not logged again",
                self._faults.url,
                len(refused),
                refused[0].connector,
                refused[0].operation,
            )
        self.unwritable += len(refused)

    def _count_rejections(self) -> list[CallRecord]:
        """One ``rejected`` record per (connector, operation, labels, why), with its count."""
        counts: dict[tuple[str, str, int, str], list[Any]] = {}
        pop = self.rejections.popleft
        try:
            while True:
                connector, operation, labels, why = pop()
                key = (connector, operation, id(labels), why)
                entry = counts.get(key)
                if entry is None:
                    counts[key] = [connector, operation, labels, why, 1]
                else:
                    entry[4] += 1
        except IndexError:
            pass
        if not counts:
            return []
        now = _clock.wall()
        return [
            CallRecord(now, c, o, 0.0, "rejected", why, 0, True, labels, n)
            for c, o, labels, why, n in counts.values()
        ]

    # Writing ------------------------------------------------------------

    def _write(self, *, raw_only: bool = False) -> bool:
        """Write pending raw records and closed aggregate rows; True if the store took them.

        The batches are taken under the flush lock, written outside it (calls
        go on folding meanwhile), and what the store did not take is put back.
        """
        with self._write_lock:
            with self._flush_lock:
                self._last_write = time.monotonic()
                raw, self._retry = self._retry, []
                rows: list[CallAggregate] = []
                if not raw_only and self.aggregator is not None:
                    rows = self._waiting + self.aggregator.take()
                    self._waiting = []
            took = self._write_raw(raw)
            if rows:
                took = self._write_aggregates(rows) and took
            if took and self._dropping:
                with self._flush_lock:
                    self._dropping = False
                logger.warning(
                    "store %s: %d metric(s) were dropped in all (counted in summarize().dropped)",
                    self._faults.url,
                    self.dropped,
                )
            return took

    def _write_raw(self, batch: list[CallRecord]) -> bool:
        if not batch:
            return True
        try:
            refused = _append_isolating(self.store.append_calls, batch)  # batch: what is left
        except Exception as exc:
            self._faults.fault(exc)
            with self._flush_lock:
                excess = len(batch) - self.max_pending
                if excess > 0:
                    counts = collections.Counter((r.connector, r.operation) for r in batch[:excess])
                    del batch[:excess]
                    self._count_dropped(counts, "the store is unreachable")
                self._retry = batch + self._retry
            return False
        self._faults.ok()
        if refused:
            self._note_refused(refused)
        self.written += len(batch)
        # Raw records, and in aggregated mode record_call's: observed once written.
        _notify(batch)
        return True

    def _write_aggregates(self, batch: list[CallAggregate]) -> bool:
        try:
            store: Any = self.store
            refused = _append_isolating(store.append_aggregates, batch)  # batch: what is left
        except Exception as exc:
            self._faults.fault(exc)
            with self._flush_lock:
                excess = len(batch) - self.max_pending
                if excess > 0:
                    counts: collections.Counter[tuple[str, str]] = collections.Counter()
                    for row in batch[:excess]:
                        counts[(row.connector, row.operation)] += row.attempts + row.dropped
                    del batch[:excess]
                    self._count_dropped(counts, "the store is unreachable")
                self._waiting = batch + self._waiting
            return False
        self._faults.ok()
        if refused:
            self._note_refused(refused)
        self.written += sum(row.attempts for row in batch)
        return True

    def stop(self) -> None:
        """Stop the background writer after a last flush (every open interval is written)."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._flush_lock:
            self._drain()
            if self.aggregator is not None:
                self.aggregator.close_all()
        self._write()

    def reset_after_fork(self) -> None:
        """Forget what the parent buffered (the parent writes it) and restart the writer."""
        self.rows.clear()
        for series in self._everyone():
            series.pending.clear()
        self._orphans.clear()
        self.rejections.clear()
        self._retry = []
        self._waiting = []
        if self.aggregator is not None:
            self.aggregator = Aggregator(
                interval_s=self.aggregator.resolutions[0], max_keys=self.aggregator.max_keys
            )
        self._flush_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._activity_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._pid = os.getpid()
        self.start()


def _batch_size(batch: SuccessBatch) -> int:
    return len(batch[2])


def _row_key(row: MetricRow) -> tuple[str, str]:
    return (row[1], row[2])


def _success_records(batches: Sequence[SuccessBatch]) -> list[CallRecord]:
    """One record per success (raw mode, observers), at its batch's time."""
    return [
        CallRecord(ts, key[0], key[1], seconds * 1000.0, "ok", None, 1, True, labels)
        for key, labels, durations, ts in batches
        for seconds in durations
    ]


_Row = TypeVar("_Row", CallRecord, CallAggregate)


def _append_isolating(append: Callable[[list[_Row]], object], batch: list[_Row]) -> list[_Row]:
    """Append ``batch`` (records or aggregated rows), leaving out those the store refuses.

    A store refuses a record it cannot encode (a label with a lone surrogate,
    a line too long) with ``ValueError`` or ``TypeError``, and writes nothing
    of that batch. One such record must not fail its batch for ever: the batch
    is halved until each refused record stands alone, and the rest is written.

    Returns:
        The refused records. ``batch`` then holds exactly what was written; if
        a store fault is raised instead, exactly what was not written.
    """
    try:
        append(batch)
    except (ValueError, TypeError):
        pass
    else:
        return []
    written: list[_Row] = []
    refused: list[_Row] = [] if len(batch) > 1 else batch[:]
    parts: list[list[_Row]] = _halves(batch)  # a stack of parts, the earliest on top
    while parts:
        part = parts.pop()
        try:
            append(part)
        except (ValueError, TypeError):
            parts += _halves(part)
            if len(part) == 1:
                refused.extend(part)
            continue
        except Exception:
            unsent = [part]
            unsent.extend(reversed(parts))
            batch[:] = [record for rest in unsent for record in rest]
            raise
        written.extend(part)
    batch[:] = written
    return refused


def _halves(part: list[_Row]) -> list[list[_Row]]:
    """``part`` split in two, the later half first (for a stack); nothing for one record."""
    if len(part) < 2:
        return []
    middle = len(part) // 2
    return [part[middle:], part[:middle]]


_observers: list[Callable[[Sequence[CallRecord]], object]] = []


def add_observer(observer: Callable[[Sequence[CallRecord]], object]) -> None:
    """Call ``observer`` with every batch of per-attempt records this process makes.

    Exporters (Prometheus, OpenTelemetry) use it to count what this process
    did. It runs in the background writer thread: with aggregated metrics
    (the default) as the writer takes the buffered attempts, before it folds
    them into rows; with raw metrics and for ``record_call``, after the store
    took the batch. An observer that raises is logged and kept.
    """
    if observer not in _observers:
        _observers.append(observer)


def remove_observer(observer: Callable[[Sequence[CallRecord]], object]) -> None:
    """Stop calling ``observer``."""
    if observer in _observers:
        _observers.remove(observer)


def _notify(batch: Sequence[CallRecord]) -> None:
    for observer in _observers.copy():  # an observer may remove itself
        try:
            observer(batch)
        except Exception:
            logger.exception("metrics observer %r failed; it stays registered", observer)


_buffers: dict[int, MetricsBuffer] = {}
_buffers_lock = threading.Lock()


def buffer_for(store: Store, policy: Policy) -> MetricsBuffer:
    """The process's buffer in front of ``store`` (started on first use)."""
    buffer = _buffers.get(id(store))
    if buffer is None or buffer.store is not store:
        with _buffers_lock:
            buffer = _buffers.get(id(store))
            if buffer is None or buffer.store is not store:
                settings = policy.store
                buffer = MetricsBuffer(
                    store,
                    flush_interval_s=settings.flush_interval_s,
                    max_pending=settings.buffer_max,
                    mode=settings.metrics_mode,
                    interval_s=settings.metrics_interval_s,
                    max_keys=settings.metrics_max_keys,
                    pending_max=settings.metrics_pending_max,
                )
                buffer.start()
                _buffers[id(store)] = buffer
    return buffer


def flush_metrics() -> bool:
    """Write every buffered metric now; True if every store took them."""
    took_all = True
    for buffer in list(_buffers.values()):
        took_all = buffer.flush() and took_all  # flush every buffer, even after a failure
    return took_all


def drain_metrics() -> None:
    """Aggregate what calls buffered so far, stamping it with the clock as it is now.

    :class:`~connector_resilience.testing.FakeClock` calls it before the clock
    jumps, so that calls made before a jump keep the time they were made at.
    """
    for buffer in list(_buffers.values()):
        buffer.drain()


def stop_buffers() -> None:
    """Flush and stop every buffer (at exit, and between tests)."""
    with _buffers_lock:
        buffers = list(_buffers.values())
        _buffers.clear()
    for buffer in buffers:
        buffer.stop()


def _restart_after_fork() -> None:
    # The writer threads did not survive the fork. Engines keep their buffers'
    # deques, so each buffer restarts in place; what was pending belongs to the
    # parent, which still writes it, so the child drops its copy.
    for buffer in _buffers.values():
        buffer.reset_after_fork()


os.register_at_fork(after_in_child=_restart_after_fork)
atexit.register(stop_buffers)
