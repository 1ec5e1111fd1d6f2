"""The breaker through Redis: pushed to every process, and no round trip on the hot path."""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
from collections.abc import Callable

import pytest
import redis

from connector_resilience import CircuitOpenError, Policy, resilient
from connector_resilience.circuit import CircuitBreaker, StateChange
from connector_resilience.metrics import flush_metrics
from tests import _workers
from tests.redis_server import RedisServer


@pytest.fixture
def private_redis_url(redis_server_factory: Callable[..., RedisServer]) -> str:
    """A store URL on a redis-server of this test's own.

    The command counts below are the server's: on the session's shared server,
    a background thread left by an earlier test (a metrics writer, a budget's
    deposit) would add its own commands to them.
    """
    return f"{redis_server_factory().url}/0?prefix=private"


def _commands_processed(url: str) -> int:
    client = redis.Redis.from_url(url.split("?", maxsplit=1)[0])
    try:
        return int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()


def _reading_cost(url: str) -> int:
    """Commands one :func:`_commands_processed` adds itself (its connection's HELLO, its INFO).

    The least of three back-to-back differences, so that a background command
    landing between two readings is not taken for the reading's own.
    """
    readings = [_commands_processed(url) for _ in range(4)]
    return min(b - a for a, b in itertools.pairwise(readings))


#: Commands a process may send in the background during a short loop, each
#: once and not per call: its clock sync's TIME, and the breaker re-reading
#: its record when the change it has just made is pushed back to it.
_BACKGROUND = 2


def test_a_change_made_elsewhere_is_seen_within_100_ms(redis_url: str) -> None:
    policy = Policy(store={"url": redis_url}, circuit={"failures_to_open": 3})
    watcher = CircuitBreaker("pushed", policy=policy)
    seen = threading.Event()
    seen_at: list[float] = []

    def on_change(change: StateChange) -> None:
        if change.new == "open":
            seen_at.append(time.time())
            seen.set()

    watcher.add_listener(on_change)
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Queue()
    opener = ctx.Process(
        target=_workers.open_breaker_and_report, args=(redis_url, "pushed", 3, done)
    )
    opener.start()
    opened_at = done.get(timeout=60)
    opener.join(30)
    assert opener.exitcode == 0
    assert seen.wait(5), "the change never reached this process"
    assert seen_at[0] - opened_at < 0.1
    # Seen without this process making a call or polling the store.
    with pytest.raises(CircuitOpenError):
        watcher.acquire()


def test_steady_state_calls_make_no_round_trip(private_redis_url: str) -> None:
    redis_url = private_redis_url
    # 30 s metric intervals: the warm-up call and the loop fall in one interval,
    # so the flush writes one interval's rows however slow the machine is.
    policy = Policy(store={"url": redis_url, "flush_interval_s": 3600, "metrics_interval_s": 30})

    @resilient("hot", policy=policy)
    def call() -> int:
        return 1

    call()  # warm up: subscribe, read the breaker once
    flush_metrics()
    reading = _reading_cost(redis_url)
    before = _commands_processed(redis_url)
    for _ in range(2000):
        call()
    during = _commands_processed(redis_url) - before - reading
    flush_metrics()
    after = _commands_processed(redis_url) - before - 2 * reading
    # 2,000 calls sent nothing but background one-offs, and the flush is one
    # pipeline of a few commands (add, index, trim) for all 2,000 records, not
    # a command per record.
    assert during <= _BACKGROUND
    assert after - during <= 12


def test_rejections_make_no_round_trip(private_redis_url: str) -> None:
    redis_url = private_redis_url
    policy = Policy(
        # Metrics rows are written when their interval ends: with 30 s intervals
        # no such write (a round trip of its own, not a rejection's) falls inside
        # the loop, however slow a loaded machine makes it.
        store={"url": redis_url, "flush_interval_s": 3600, "metrics_interval_s": 30},
        circuit={"failures_to_open": 1},
        retry={"max_attempts": 1},
    )

    @resilient("down", policy=policy)
    def call() -> int:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        call()
    reading = _reading_cost(redis_url)
    before = _commands_processed(redis_url)
    for _ in range(2000):
        with pytest.raises(CircuitOpenError):
            call()
    assert _commands_processed(redis_url) - before - reading <= _BACKGROUND
