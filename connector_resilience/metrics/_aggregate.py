"""In-memory aggregation of call metrics into one row per key per interval, in three tiers.

The writer thread feeds the buffered attempts of decorated calls in here. Per
(connector, operation, status, labels) it counts attempts, final attempts,
errors by type and a latency histogram, and when an interval ends it hands
back one :class:`CallAggregate` per key. Rows are made at three resolutions at
once: the fine interval (``CONNECTOR_METRICS_INTERVAL_S``, 0.5 s by default), the
minute and the hour; a closed fine interval is merged into the minute, a
closed minute into the hour. A summary of a long window then reads hour rows
for the whole hours in it, minute rows and fine rows only at its edges.

Memory is bounded: at most ``max_keys`` keys per tier. A new key past the
bound closes the oldest key of that tier early (its row is written, nothing is
lost), and the evictions are counted.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any, Protocol

from connector_resilience.backends import CallAggregate, CallStatus
from connector_resilience.metrics._histogram import (
    LatencyHistogram,
    count_buckets,
    count_seconds,
)

__all__ = ["HOUR_S", "MINUTE_S", "Aggregator", "Series", "SuccessBatch", "resolutions_for"]

logger = logging.getLogger("connector_resilience.metrics")

MINUTE_S = 60.0
HOUR_S = 3600.0

#: One series' successes taken by the writer: (series key, labels, durations in
#: seconds, wall-clock time stamping them all).
SuccessBatch = tuple["_Key", "Mapping[str, str] | None", "list[float]", float]
_batch_ts = itemgetter(3)
#: At most this many durations wait to be bucketed (32 bytes each: about 3 MB).
_UNBUCKETED_MAX = 100_000

# What a key is: (connector, operation, status, frozen labels or None).
_Key = tuple[str, str, str, "frozenset[tuple[str, str]] | None"]


def resolutions_for(interval_s: float) -> tuple[float, ...]:
    """The tiers for a fine interval: it, the minute and the hour (finest first)."""
    return tuple(sorted({float(interval_s), MINUTE_S, HOUR_S}))


def _frozen(labels: Mapping[str, str] | None) -> frozenset[tuple[str, str]] | None:
    return frozenset(labels.items()) if labels else None


class _Owner(Protocol):
    """What takes a series' successes (the metrics buffer)."""

    def orphaned(self, orphan: tuple[Any, Any, list[float]], /) -> None:
        """Keep the pending successes of a series that is being collected."""


class Series:
    """What one decorated function records successes into: its connector, operation and labels.

    A first-attempt success appends its duration (perf-counter seconds, a
    float: no tuple, nothing for the garbage collector to track) to
    :attr:`pending`; the metrics writer takes the pending durations each tick
    and stamps them with the time it took them (see
    ``docs/metrics-and-health.md`` for the bound on that).

    Attributes:
        pending: durations in seconds not yet taken by the writer.
        owner: the metrics buffer that takes :attr:`pending`, once registered.
        keep_up_at: a success past this perf-counter time tells the owner
            (``MetricsBuffer.look``): now and then while the series is busy,
            at once when the writer stopped looking at it (it then sets
            minus infinity).
        seen: how many durations :attr:`pending` held at the owner's last
            look (the owner's count, see ``MetricsBuffer.look``).
    """

    __slots__ = (
        "__weakref__",
        "connector",
        "keep_up_at",
        "labels",
        "operation",
        "owner",
        "pending",
        "seen",
    )

    def __init__(
        self, connector: str, operation: str, labels: Mapping[str, str] | None = None
    ) -> None:
        self.connector = connector
        self.operation = operation
        self.labels = dict(labels) if labels else None
        self.pending: list[float] = []
        self.owner: _Owner | None = None
        self.keep_up_at = 0.0
        self.seen = 0

    @property
    def key(self) -> _Key:
        """What its successes aggregate under (made when asked: a tuple each costs memory)."""
        return (self.connector, self.operation, "ok", _frozen(self.labels))

    def __repr__(self) -> str:
        return f"Series({self.connector!r}, {self.operation!r})"

    def __del__(self) -> None:
        # Collected (its engine was) with durations the writer has not taken:
        # they go to the owner's orphans, so that nothing recorded is lost.
        owner = self.owner
        if self.pending and owner is not None:
            owner.orphaned((self.key, self.labels, self.pending))


class _Entry:
    """One key's counts in the interval being aggregated."""

    __slots__ = (
        "attempts",
        "connector",
        "counts",
        "dropped",
        "errors",
        "finals",
        "labels",
        "last_ts",
        "operation",
        "retried",
        "status",
    )

    def __init__(
        self,
        connector: str,
        operation: str,
        status: CallStatus,
        labels: Mapping[str, str] | None,
    ) -> None:
        self.connector = connector
        self.operation = operation
        self.status: CallStatus = status
        self.labels = dict(labels) if labels else None
        self.attempts = 0
        self.finals = 0
        self.retried = 0
        self.dropped = 0
        self.last_ts = 0.0
        self.counts: Counter[int] = Counter()
        self.errors: Counter[str] | None = None

    def merge(self, other: _Entry) -> None:
        self.attempts += other.attempts
        self.finals += other.finals
        self.retried += other.retried
        self.dropped += other.dropped
        self.last_ts = max(self.last_ts, other.last_ts)
        self.counts.update(other.counts)
        if other.errors:
            if self.errors is None:
                self.errors = Counter()
            self.errors.update(other.errors)

    def row(self, start: float, resolution: float) -> CallAggregate:
        return CallAggregate(
            ts=start,
            resolution=resolution,
            connector=self.connector,
            operation=self.operation,
            status=self.status,
            attempts=self.attempts,
            finals=self.finals,
            last_ts=self.last_ts,
            histogram=LatencyHistogram(self.counts).to_runs(),
            errors=dict(self.errors) if self.errors else None,
            labels=self.labels,
            dropped=self.dropped,
            retried=self.retried,
        )


class _Tier:
    """The open interval of one resolution and its entries."""

    __slots__ = ("entries", "resolution", "start")

    def __init__(self, resolution: float) -> None:
        self.resolution = resolution
        self.start: float | None = None
        self.entries: dict[_Key, _Entry] = {}

    def end(self) -> float:
        assert self.start is not None
        return self.start + self.resolution


class Aggregator:
    """Attempts in, one row per key per interval out (see the module documentation).

    Not thread-safe: the buffer calls it under its flush lock.

    Args:
        interval_s: the fine interval, a divisor of 60 seconds.
        max_keys: at most this many keys per tier.
    """

    def __init__(self, *, interval_s: float, max_keys: int) -> None:
        self.resolutions = resolutions_for(interval_s)
        self.max_keys = max_keys
        self._tiers = [_Tier(r) for r in self.resolutions]
        #: Rows of closed intervals, waiting to be written.
        self.closed: list[CallAggregate] = []
        #: Keys closed early because a tier had ``max_keys`` keys.
        self.evicted = 0
        self._evicting = False
        # Successes' durations (seconds) per fine-tier key, not bucketed yet:
        # bucketing costs per bucket, so an interval's successes are bucketed
        # once, when it is emitted, not at every tick of the writer.
        self._unbucketed: dict[_Key, list[float]] = {}
        self._unbucketed_n = 0

    def __len__(self) -> int:
        return sum(len(t.entries) for t in self._tiers)

    def open_attempts(self) -> int:
        """Attempts in the open fine interval (not yet in a row)."""
        return sum(e.attempts for e in self._tiers[0].entries.values())

    # Input -------------------------------------------------------------------

    def add_durations(self, batches: Sequence[SuccessBatch]) -> None:
        """First-attempt successes, a batch per series: ``(series key, labels, seconds, ts)``.

        ``seconds`` are durations in seconds; ``ts`` (wall clock) stamps the
        whole batch (its series' latest success). Batches are taken in the
        order of their ``ts``, so that the intervals roll forward once.
        """
        for key, labels, seconds, ts in sorted(batches, key=_batch_ts):
            self._roll_to(ts)
            entry = self._entry(self._tiers[0], key, labels)
            waiting = self._unbucketed.get(key)
            if waiting is None:
                self._unbucketed[key] = seconds  # the caller's own list
            else:
                waiting += seconds
            self._unbucketed_n += len(seconds)
            if self._unbucketed_n > _UNBUCKETED_MAX:  # bounded memory: bucket them now
                fine = self._tiers[0].entries
                for waiting_key, durations in self._unbucketed.items():
                    count_seconds(durations, fine[waiting_key].counts)
                self._unbucketed.clear()
                self._unbucketed_n = 0
            entry.attempts += len(seconds)
            entry.finals += len(seconds)
            if ts > entry.last_ts:  # noqa: PLR1730 - as add_rows does
                entry.last_ts = ts

    def add_rows(self, batch: Sequence[tuple[Any, ...]]) -> None:
        """Full metric rows: ``(ts, connector, operation, duration_ms, status, error,
        attempt, final, labels)`` with a wall-clock ``ts``."""
        if not batch:
            return
        self._roll_to(batch[0][0])
        fine = self._tiers[0]
        # Per (connector, operation, status, labels object): its entry and durations.
        # Rows of one engine share their labels dict, so this is one lookup a row.
        slots: dict[tuple[str, str, str, int], tuple[_Entry, list[float]]] = {}
        get = slots.get
        for ts, connector, operation, duration_ms, status, error, attempt, final, labels in batch:
            local = (connector, operation, status, id(labels))  # alive: the batch holds it
            slot = get(local)
            if slot is None:
                if len(fine.entries) >= self.max_keys:
                    # A key is about to be evicted (written): settle what is pending first.
                    for pending, durations in slots.values():
                        pending.counts.update(count_buckets(durations))
                    slots.clear()
                key = (connector, operation, status, _frozen(labels))
                slot = slots[local] = (self._entry(fine, key, labels), [])
            entry = slot[0]
            slot[1].append(duration_ms)
            entry.attempts += 1
            if final:
                entry.finals += 1
                if attempt > 1:
                    entry.retried += 1
            if status == "error":
                if entry.errors is None:
                    entry.errors = Counter()
                entry.errors[error or "error"] += 1
            if ts > entry.last_ts:  # noqa: PLR1730 - a compare is cheaper than max() per row
                entry.last_ts = ts
        for entry, durations in slots.values():
            entry.counts.update(count_buckets(durations))

    def add_rejections(
        self,
        connector: str,
        operation: str,
        labels: Mapping[str, str] | None,
        *,
        count: int,
        ts: float,
        why: str,
    ) -> None:
        """Refusals of one kind (no attempt, no duration), counted by kind in ``errors``.

        ``why`` is a ``rejected`` record's ``error``: the guard that refused
        the calls, or a note in :data:`~connector_resilience.backends.CALL_NOTES`.
        """
        self._roll_to(ts)
        key = (connector, operation, "rejected", _frozen(labels))
        entry = self._entry(self._tiers[0], key, labels)
        entry.attempts += count
        entry.finals += count
        if entry.errors is None:
            entry.errors = Counter()
        entry.errors[why] += count
        entry.last_ts = max(entry.last_ts, ts)

    def add_dropped(self, connector: str, operation: str, count: int, ts: float) -> None:
        """Attempts that could not be kept: counted on the key's ``ok`` row."""
        self._roll_to(ts)
        key = (connector, operation, "ok", None)
        entry = self._entry(self._tiers[0], key, None)
        entry.dropped += count
        entry.last_ts = max(entry.last_ts, ts)

    # Output ------------------------------------------------------------------

    def roll(self, now: float) -> None:
        """Close every interval that ended by ``now`` (rows go to :attr:`closed`)."""
        self._roll_to(now)

    def close_fine(self) -> None:
        """Close the open fine interval now, early (a flush asked for what is pending)."""
        self._close(0, early=True)

    def close_all(self) -> None:
        """Close every tier's open interval now (the process stops)."""
        for level in range(len(self._tiers)):
            self._close(level, early=True)

    def take(self) -> list[CallAggregate]:
        """The rows of closed intervals (and forget them)."""
        rows, self.closed = self.closed, []
        return rows

    # Internals ---------------------------------------------------------------

    def _entry(self, tier: _Tier, key: _Key, labels: Mapping[str, str] | None) -> _Entry:
        """The entry of ``key`` (connector, operation, status, frozen labels) in ``tier``."""
        entry = tier.entries.get(key)
        if entry is None:
            if len(tier.entries) >= self.max_keys:
                self._evict(tier)
            entry = tier.entries[key] = _Entry(key[0], key[1], key[2], labels)  # type: ignore[arg-type]
        return entry

    def _evict(self, tier: _Tier) -> None:
        """Close the oldest key of ``tier`` early: its row is written, not lost."""
        key = next(iter(tier.entries))
        entry = tier.entries.pop(key)
        level = self._tiers.index(tier)
        self._emit(level, key, entry)
        self.evicted += 1
        if not self._evicting:
            self._evicting = True
            logger.warning(
                "more than %d metric keys (connector, operation, status, labels) in one "
                "%gs interval: the oldest are written early (counted in evicted); "
                "labels with many values make many keys",
                self.max_keys,
                tier.resolution,
            )

    def _emit(self, level: int, key: _Key, entry: _Entry) -> None:
        """Write ``entry`` as a row of tier ``level`` and merge it into the next tier up."""
        tier = self._tiers[level]
        start = tier.start if tier.start is not None else 0.0
        if level == 0:
            waiting = self._unbucketed.pop(key, None)
            if waiting is not None:
                count_seconds(waiting, entry.counts)
        self.closed.append(entry.row(start, tier.resolution))
        if level + 1 < len(self._tiers):
            upper = self._tiers[level + 1]
            if upper.start is None:
                upper.start = _floor(start, upper.resolution)
            into = upper.entries.get(key)
            if into is None:
                if len(upper.entries) >= self.max_keys:
                    self._evict(upper)
                into = upper.entries[key] = _Entry(
                    entry.connector, entry.operation, entry.status, entry.labels
                )
            into.merge(entry)

    def _close(self, level: int, *, early: bool = False) -> None:
        tier = self._tiers[level]
        entries, tier.entries = tier.entries, {}
        for key, entry in entries.items():
            self._emit(level, key, entry)
        if not early:
            tier.start = None
        if level == 0:
            # Every fine entry was bucketed as it was emitted; a new dict, since
            # one emptied by pops keeps its largest size.
            self._unbucketed = {}
            self._unbucketed_n = 0
            if len(entries) < self.max_keys:
                self._evicting = False

    def _roll_to(self, ts: float) -> None:
        fine = self._tiers[0]
        if fine.start is not None and ts < fine.end():
            return
        for level, tier in enumerate(self._tiers):
            if tier.start is not None and ts >= tier.end():
                self._close(level)
            if tier.start is None:
                tier.start = _floor(ts, tier.resolution)


def _floor(ts: float, resolution: float) -> float:
    return math.floor(ts / resolution) * resolution
