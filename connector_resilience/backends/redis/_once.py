"""Exactly-once metric appends: batch numbers that survive a resend, and what Redis may forget.

A write that times out may still have been applied by Redis, and the metrics
buffer then sends the same calls again, with newer ones after them. Each
batch therefore carries a number, ``(writer, seq)``, that stays the same
across resends, and the append script applies a batch only if that writer's
``seq`` is not yet recorded, in the same atomic step as the write.

The ledger recognises a resend by its content: an append whose records
*begin with* the records of a batch whose outcome is unknown is that batch
again (the buffer may have cut the oldest calls of it when its bound was
reached: then the rest of it is recognised, under the same number). Redis
keeps a writer's numbers only down to its *low-water mark*, the smallest
number still in doubt or in flight, so the record of applied numbers stays a
handful of entries per live writer and connector.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from connector_resilience.backends import CallRecord

__all__ = ["Batch", "BatchLedger"]

#: Batches in doubt kept per connector; older ones are forgotten (a caller
#: that has not resent them by then has given them up).
_MAX_IN_DOUBT = 16


@dataclass(frozen=True, slots=True)
class Batch:
    """Records sent under one number."""

    seq: int
    records: tuple[CallRecord, ...]


class BatchLedger:
    """Numbers batches, and remembers which may have been applied without our knowing.

    Thread-safe; no I/O. One per store.
    """

    def __init__(self) -> None:
        self._in_doubt: dict[str, list[Batch]] = {}
        self._in_flight: dict[str, set[int]] = {}
        self._reset()
        _ledgers.add(self)

    def _reset(self) -> None:
        # A forked child is another writer: it must never reuse its parent's
        # numbers, nor wait on a lock a parent's thread held at the fork.
        self._lock = threading.Lock()
        self.writer = secrets.token_hex(8)
        self._seq = itertools.count(1)
        self._in_doubt = {}
        self._in_flight = {}

    def plan(self, connector: str, records: Sequence[CallRecord]) -> list[Batch]:
        """The batches to send for ``records``: resent ones under their old numbers, then new."""
        rest = tuple(records)
        with self._lock:
            out: list[Batch] = []
            doubt = self._in_doubt.get(connector, [])
            start = _first_resent(doubt, rest)
            if start is not None:
                index, cut = start
                kept = doubt[:index]  # older than the resent ones: another caller's
                for position, batch in enumerate(doubt[index:]):
                    sent = batch.records[cut if position == 0 else 0 :]
                    if rest[: len(sent)] != sent:
                        kept.extend(doubt[index + position :])
                        break
                    out.append(Batch(batch.seq, sent))
                    rest = rest[len(sent) :]
                self._in_doubt[connector] = kept
            if rest:
                out.append(Batch(next(self._seq), rest))
            self._in_flight.setdefault(connector, set()).update(b.seq for b in out)
            return out

    def low_water(self, connector: str, batches: Sequence[Batch]) -> int:
        """The smallest number of ``connector`` that may still be sent again or is in flight."""
        with self._lock:
            seqs = [b.seq for b in batches]
            seqs += [b.seq for b in self._in_doubt.get(connector, [])]
            seqs += self._in_flight.get(connector, ())
        return min(seqs)

    def applied(self, connector: str, batches: Sequence[Batch]) -> None:
        """Redis answered: these batches are in (now or earlier), never to be resent."""
        with self._lock:
            self._settle(connector, batches)

    def in_doubt(self, connector: str, batches: Sequence[Batch]) -> None:
        """No answer: Redis may or may not have applied them; a resend reuses their numbers."""
        with self._lock:
            self._settle(connector, batches)
            doubt = self._in_doubt.setdefault(connector, [])
            doubt.extend(batches)
            doubt.sort(key=lambda b: b.seq)
            del doubt[:-_MAX_IN_DOUBT]

    def _settle(self, connector: str, batches: Sequence[Batch]) -> None:
        flying = self._in_flight.get(connector)
        if flying is not None:
            flying.difference_update(b.seq for b in batches)
            if not flying:
                del self._in_flight[connector]


_ledgers: weakref.WeakSet[BatchLedger] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for ledger in list(_ledgers):
        ledger._reset()


os.register_at_fork(after_in_child=_reset_after_fork)


def _first_resent(doubt: list[Batch], records: tuple[CallRecord, ...]) -> tuple[int, int] | None:
    """``(index, cut)``: the batch in doubt ``records`` starts with, minus its first ``cut``."""
    if not records:
        return None
    head = records[0]
    for index, batch in enumerate(doubt):
        for cut, record in enumerate(batch.records):
            if record == head and records[: len(batch.records) - cut] == batch.records[cut:]:
                return index, cut
    return None
