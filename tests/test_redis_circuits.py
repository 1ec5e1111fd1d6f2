"""Breaker state in Redis: atomic compare-and-set, and Redis's clock instead of the host's."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable

import pytest
import redis

from connector_resilience import _clock
from connector_resilience.backends import CircuitRecord
from connector_resilience.backends.redis import RedisStore
from tests import _redis_workers
from tests.redis_server import RedisServer, open_redis_store


def _server_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1_000_000


# Compare-and-set --------------------------------------------------------------


def test_exactly_one_thread_wins_each_version(redis_url: str) -> None:
    store = open_redis_store(redis_url)
    threads_count, rounds = 8, 30
    barrier = threading.Barrier(threads_count)
    wins: list[list[int]] = [[] for _ in range(threads_count)]

    def contender(index: int) -> None:
        for version in range(rounds):
            barrier.wait(10)
            record = CircuitRecord(version=version + 1, reason=f"thread-{index}")
            if store.compare_and_set_circuit("api", version, record):
                wins[index].append(version)
            # Everyone has tried this version before anyone moves on.
            barrier.wait(10)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    all_wins = sorted(v for per_thread in wins for v in per_thread)
    assert all_wins == list(range(rounds))
    final = store.get_circuit("api")
    assert final is not None
    assert final.version == rounds


def test_half_open_probe_slot_goes_to_one_process_per_round(redis_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    workers, rounds = 4, 25
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    processes = [
        ctx.Process(
            target=_redis_workers.race_for_probe_slot,
            args=(redis_url, rounds, barrier, results, worker),
        )
        for worker in range(workers)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    winners = [sum(r in won for _, won, _ in reports) for r in range(rounds)]
    readers_of_a_free_slot = [sum(r in free for _, _, free in reports) for r in range(rounds)]
    # Several processes read the slot as free in the same round (a plain
    # read-then-write would let them all take it); exactly one of them did.
    assert max(readers_of_a_free_slot) > 1
    assert winners == [1] * rounds
    record = open_redis_store(redis_url).get_circuit("probe-0")
    assert record is not None
    assert len(record.probes) == 1


def test_compare_and_set_is_one_atomic_script(redis_url: str, redis_server: RedisServer) -> None:
    store = open_redis_store(redis_url)
    store.compare_and_set_circuit("api", 0, CircuitRecord(version=1))
    # Another writer (of any kind) bumping the version in between is detected.
    raw = redis.Redis.from_url(f"{redis_server.url}/0", decode_responses=True)
    raw.hset(store.keys.circuit("api"), "version", 2)
    assert not store.compare_and_set_circuit("api", 1, CircuitRecord(version=2, failures=9))
    raw.close()


def test_script_is_reloaded_after_the_server_forgets_it(
    redis_url: str, redis_server: RedisServer
) -> None:
    store = open_redis_store(redis_url)
    assert store.compare_and_set_circuit("api", 0, CircuitRecord(version=1))
    raw = redis.Redis.from_url(f"{redis_server.url}/0")
    raw.script_flush()  # what a restart does to the script cache
    raw.close()
    assert store.compare_and_set_circuit("api", 1, CircuitRecord(version=2))


# The clock --------------------------------------------------------------------


@pytest.mark.parametrize("skew_s", [3600.0, -3600.0, 45.0])
def test_now_is_redis_time_whatever_the_local_clock_says(
    redis_url: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, skew_s: float
) -> None:
    real_wall = _clock.wall
    monkeypatch.setattr(_clock, "wall", lambda: real_wall() + skew_s)
    store = open_redis_store(redis_url)
    raw = redis.Redis.from_url(f"{redis_server.url}/0")
    for _ in range(20):
        before = _server_time(raw)
        reading = store.now()
        after = _server_time(raw)
        # Redis's clock, to within the round trips around the reading ...
        assert before - 0.005 <= reading <= after + 0.005
        # ... and not the host's (faked) clock.
        assert abs(_clock.wall() - reading - skew_s) < 0.05
    raw.close()


def test_a_breaker_deadline_holds_under_local_skew(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host whose clock runs an hour fast still sees a one-minute cooldown as running."""
    store = open_redis_store(redis_url)
    opened = store.now()
    store.compare_and_set_circuit(
        "api", 0, CircuitRecord(version=1, state="open", opened_at=opened, reopen_at=opened + 60)
    )
    real_wall = _clock.wall
    monkeypatch.setattr(_clock, "wall", lambda: real_wall() + 3600)
    fast_host = RedisStore(redis_url)
    record = fast_host.get_circuit("api")
    assert record is not None
    assert record.reopen_at is not None
    assert fast_host.now() < record.reopen_at
    fast_host.close()


def test_now_costs_no_round_trip_after_the_first(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()  # private: nothing else sends TIME to it
    store = open_redis_store(f"{server.url}/0")
    raw = redis.Redis.from_url(server.url)

    def time_calls() -> int:
        stats = raw.info("commandstats")
        return int(stats.get("cmdstat_time", {}).get("calls", 0))

    readings = [store.now() for _ in range(10_000)]
    assert time_calls() == 1
    assert readings == sorted(readings)  # the monotonic clock carries it forward
    raw.close()


def test_now_stands_in_with_the_local_clock_until_redis_answers(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    url = f"{server.url}/0"
    server.stop()
    store = RedisStore(url)
    # Never raises: with Redis down the caller runs on local state anyway.
    assert abs(store.now() - time.time()) < 1
    server.start()
    raw = redis.Redis.from_url(server.url)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not store._clock.synced:
        store.now()  # each call past the retry interval starts a background reading
        time.sleep(0.01)
    assert store._clock.synced
    before = _server_time(raw)
    assert before - 0.005 <= store.now() <= _server_time(raw) + 0.005
    raw.close()
    store.close()
