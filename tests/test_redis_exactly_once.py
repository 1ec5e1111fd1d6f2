"""Exactly-once metrics: a batch that timed out, but that Redis applied later, is not doubled."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from connector_resilience.backends import CallRecord
from connector_resilience.backends.redis import RedisStore
from connector_resilience.backends.redis._once import BatchLedger
from connector_resilience.errors import StoreError
from connector_resilience.metrics import flush_metrics, record_call
from tests.redis_server import RedisServer

_BASE = time.time()


def _call(n: int, connector: str = "api") -> CallRecord:
    return CallRecord(_BASE + n, connector, "get", 1.0, "ok", labels={"n": str(n)})


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


# The ledger alone (no I/O) -----------------------------------------------------


def test_a_resend_keeps_its_numbers_and_new_records_get_a_new_one() -> None:
    ledger = BatchLedger()
    first = ledger.plan("api", [_call(1), _call(2)])
    ledger.in_doubt("api", first)
    again = ledger.plan("api", [_call(1), _call(2), _call(3)])
    assert [(b.seq, len(b.records)) for b in again] == [(first[0].seq, 2), (first[0].seq + 1, 1)]
    assert ledger.low_water("api", again) == first[0].seq
    ledger.applied("api", again)
    assert ledger.low_water("api", ledger.plan("api", [_call(4)])) == first[0].seq + 2


def test_a_resend_cut_by_the_buffer_bound_keeps_the_number_of_what_is_left() -> None:
    ledger = BatchLedger()
    first = ledger.plan("api", [_call(1), _call(2), _call(3)])
    ledger.in_doubt("api", first)
    # The buffer dropped the oldest call to stay within its bound.
    again = ledger.plan("api", [_call(2), _call(3), _call(4)])
    assert [(b.seq, [r.labels for r in b.records]) for b in again] == [
        (first[0].seq, [{"n": "2"}, {"n": "3"}]),
        (first[0].seq + 1, [{"n": "4"}]),
    ]


def test_unrelated_records_are_new_batches_and_doubt_is_kept_for_its_resend() -> None:
    ledger = BatchLedger()
    first = ledger.plan("api", [_call(1)])
    ledger.in_doubt("api", first)
    other = ledger.plan("api", [_call(9)])
    assert [b.seq for b in other] == [first[0].seq + 1]
    # The batch in doubt still holds the low-water mark down, and is still recognised.
    assert ledger.low_water("api", other) == first[0].seq
    ledger.applied("api", other)
    assert [b.seq for b in ledger.plan("api", [_call(1)])] == [first[0].seq]


# Against a real Redis that stalls ------------------------------------------------


def test_a_write_applied_after_its_timeout_is_not_applied_again(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    store = RedisStore(f"{server.url}/0?prefix=once")
    raw = server.client()
    store.append_calls([_call(0)])
    server.pause()
    try:
        with pytest.raises(StoreError, match="Timeout"):
            store.append_calls([_call(1), _call(2)])
    finally:
        server.resume()
    # Redis read the request before it froze, and runs it now: applied after
    # the client gave up on it, as in the stall the issue measured.
    assert _wait_for(lambda: len(store.read_calls(since=0)) == 3, 5)
    store.append_calls([_call(1), _call(2), _call(3)])  # the buffer's resend, and a new call
    assert store.read_calls(since=0) == [_call(0), _call(1), _call(2), _call(3)]
    # The record of applied numbers stays a handful of entries.
    assert raw.zcard(store.keys.batches("api", store._ledger.writer)) <= 2
    raw.close()
    store.close()


def test_calls_recorded_through_a_2_s_stall_are_stored_exactly_once(
    redis_server_factory: Callable[..., RedisServer],
    record_property: Callable[[str, object], None],
) -> None:
    """The issue's measurement: record_call in a loop while Redis stalls for 2 s."""
    server = redis_server_factory()
    url = f"{server.url}/0?prefix=stall"
    recorded: list[int] = []
    stop = threading.Event()

    def caller() -> None:
        n = 0
        while not stop.is_set() and n < 20_000:
            record_call("api", "get", 1.0, "ok", labels={"n": str(n)}, store=url)
            recorded.append(n)
            n += 1
            time.sleep(0.0005)

    thread = threading.Thread(target=caller)
    thread.start()
    time.sleep(0.5)
    server.pause()
    time.sleep(2.0)  # the stall itself, as in the issue
    server.resume()
    time.sleep(0.5)
    stop.set()
    thread.join(30)
    assert _wait_for(flush_metrics, 10)
    store = RedisStore(url)
    stored = Counter(r.labels["n"] for r in store.read_calls(since=0) if r.labels)
    duplicates = sum(count - 1 for count in stored.values() if count > 1)
    record_property("calls_recorded", len(recorded))
    record_property("duplicate_rows", duplicates)
    assert duplicates == 0
    assert sorted(map(int, stored)) == recorded
    store.close()
