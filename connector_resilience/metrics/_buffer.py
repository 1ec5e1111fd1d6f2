"""The in-memory buffer of call metrics and the background thread that writes it to a store."""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from connector_resilience import _clock
from connector_resilience._faults import FaultLog
from connector_resilience.backends import CallRecord, CallStatus, Store
from connector_resilience.policy import Policy

logger = logging.getLogger("connector_resilience.metrics")


# (ts, connector, operation, duration_ms, status, error, attempt, final, labels):
# the fields of CallRecord, as a tuple because building it is the hot path.
MetricRow = tuple[
    float, str, str, float, CallStatus, "str | None", int, bool, "Mapping[str, str] | None"
]


class MetricsBuffer:
    """Metrics waiting to be written to one store, by a background thread.

    ``rows.append`` is the whole cost a call pays. Faults are logged once per
    burst; while the store is unreachable up to ``max_pending`` rows are kept,
    after which the oldest are dropped and counted in ``dropped``. A record the
    store cannot hold at all is left out of its batch (the rest is written) and
    counted in ``unwritable``.
    """

    def __init__(self, store: Store, *, flush_interval_s: float, max_pending: int) -> None:
        self.store = store
        self.rows: collections.deque[MetricRow] = collections.deque()
        # (connector, operation, labels, why) per refused call; counted at flush.
        self.rejections: collections.deque[tuple[str, str, Mapping[str, str] | None, str]] = (
            collections.deque()
        )
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.dropped = 0
        self.unwritable = 0
        self.written = 0
        self._dropping = False
        self._retry: list[CallRecord] = []
        self._flush_lock = threading.Lock()
        self._faults = FaultLog("writing metrics", store.url)
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def start(self) -> None:
        """Start the background writer (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="connector-resilience-metrics", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> bool:
        """Write everything pending now; True if the store took it all."""
        with self._flush_lock:
            batch = self._retry
            self._retry = []
            rows = self.rows
            pop = rows.popleft
            try:
                while True:
                    batch.append(CallRecord(*pop()))
            except IndexError:
                pass
            batch.extend(self._count_rejections())
            if not batch:
                return True
            try:
                refused = _append_isolating(self.store, batch)  # batch: what is left to write
            except Exception as exc:
                self._faults.fault(exc)
                excess = len(batch) - self.max_pending
                if excess > 0:
                    if not self._dropping:
                        self._dropping = True
                        logger.warning(
                            "store %s unreachable: %d metric(s) buffered, dropping the oldest "
                            "from now on (counted in MetricsBuffer.dropped)",
                            self._faults.url,
                            self.max_pending,
                        )
                    self.dropped += excess
                    del batch[:excess]
                self._retry = batch
                return False
            if self._dropping:
                self._dropping = False
                logger.warning(
                    "store %s: %d metric(s) were dropped while it was unreachable",
                    self._faults.url,
                    self.dropped,
                )
            self._faults.ok()
            if refused:
                self._note_refused(refused)
            self.written += len(batch)
            _notify(batch)
            return True

    def _note_refused(self, refused: list[CallRecord]) -> None:
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

    def stop(self) -> None:
        """Stop the background writer after a last flush."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.flush()


def _append_isolating(store: Store, batch: list[CallRecord]) -> list[CallRecord]:
    """Append ``batch``, leaving out the records the store refuses as records.

    A store refuses a record it cannot encode (a label with a lone surrogate,
    a line too long) with ``ValueError`` or ``TypeError``, and writes nothing
    of that batch. One such record must not fail its batch for ever: the batch
    is halved until each refused record stands alone, and the rest is written.

    Returns:
        The refused records. ``batch`` then holds exactly what was written; if
        a store fault is raised instead, exactly what was not written.
    """
    try:
        store.append_calls(batch)
    except (ValueError, TypeError):
        pass
    else:
        return []
    written: list[CallRecord] = []
    refused: list[CallRecord] = [] if len(batch) > 1 else batch[:]
    parts = _halves(batch)  # a stack of parts, the earliest on top
    while parts:
        part = parts.pop()
        try:
            store.append_calls(part)
        except (ValueError, TypeError):
            parts += _halves(part)
            if len(part) == 1:
                refused.extend(part)
            continue
        except Exception:
            batch[:] = [record for rest in (part, *reversed(parts)) for record in rest]
            raise
        written.extend(part)
    batch[:] = written
    return refused


def _halves(part: list[CallRecord]) -> list[list[CallRecord]]:
    """``part`` split in two, the later half first (for a stack); nothing for one record."""
    if len(part) < 2:
        return []
    middle = len(part) // 2
    return [part[middle:], part[:middle]]


_observers: list[Callable[[Sequence[CallRecord]], object]] = []


def add_observer(observer: Callable[[Sequence[CallRecord]], object]) -> None:
    """Call ``observer`` with every batch of records this process writes to a store.

    Exporters (Prometheus, OpenTelemetry) use it to count what this process
    did. It runs in the background writer thread, after the store took the
    batch; an observer that raises is logged and kept.
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
                buffer = MetricsBuffer(
                    store,
                    flush_interval_s=policy.store.flush_interval_s,
                    max_pending=policy.store.buffer_max,
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
        buffer.rows.clear()
        buffer.rejections.clear()
        buffer._retry = []
        buffer._flush_lock = threading.Lock()
        buffer._wake = threading.Event()
        buffer._thread = None
        buffer._pid = os.getpid()
        buffer.start()


os.register_at_fork(after_in_child=_restart_after_fork)
atexit.register(stop_buffers)
