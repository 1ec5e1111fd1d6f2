"""``watch_circuits``: a change made anywhere reaches every process within 100 ms."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connector_resilience.backends import CircuitRecord
from connector_resilience.backends.redis import ANY_CONNECTOR, RedisStore
from tests.redis_server import RedisServer, open_redis_store

_ROOT = Path(__file__).parent.parent
_DELIVERY_BOUND_S = 0.100


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def _watcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "connector-resilience-redis-watch"]


class _ChangeMaker:
    """Another process that changes the circuit of "api" each time it is told to."""

    def __init__(self, url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests._redis_workers", "cas-on-command", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=_ROOT,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.strip() == "ready", line

    def change(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def confirm(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def change_maker(redis_url: str) -> Iterator[_ChangeMaker]:
    maker = _ChangeMaker(redis_url)
    yield maker
    maker.close()


def test_a_change_in_another_process_arrives_within_100_ms(
    redis_url: str, change_maker: _ChangeMaker, record_property: Callable[[str, object], None]
) -> None:
    store = open_redis_store(redis_url)
    arrived = threading.Event()

    def on_change(connector: str) -> None:
        if connector == "api":
            arrived.set()

    store.watch_circuits(on_change)
    latencies: list[float] = []
    for version in range(1, 21):
        arrived.clear()
        started = time.perf_counter()
        change_maker.change()
        # Bounded by the promise itself; the other process's own write is inside it.
        assert arrived.wait(_DELIVERY_BOUND_S), f"change {version} not heard in 100 ms"
        latencies.append(time.perf_counter() - started)
        assert change_maker.confirm() == f"done {version}"
    record = store.get_circuit("api")
    assert record is not None
    assert record.version == 20
    latencies.sort()
    record_property("watch_latency_ms_median", round(latencies[10] * 1000, 3))
    record_property("watch_latency_ms_max", round(latencies[-1] * 1000, 3))
    assert latencies[-1] < _DELIVERY_BOUND_S


def test_every_callback_hears_every_change_in_order(redis_url: str) -> None:
    watcher, writer = RedisStore(redis_url), RedisStore(redis_url)
    first: list[str] = []
    second: list[str] = []
    watcher.watch_circuits(first.append)
    watcher.watch_circuits(second.append)
    names = [f"c{i}" for i in range(50)]
    for name in names:
        writer.compare_and_set_circuit(name, 0, CircuitRecord(version=1))
    assert _wait_for(lambda: len(second) == len(names), 2)
    assert first == second == names
    # A losing compare-and-set changes nothing, so announces nothing.
    assert not writer.compare_and_set_circuit("c0", 0, CircuitRecord(version=1))
    writer.compare_and_set_circuit("marker", 0, CircuitRecord(version=1))
    assert _wait_for(lambda: second[-1:] == ["marker"], 2)
    assert second == [*names, "marker"]
    watcher.close()
    writer.close()


def test_unsubscribe_stops_one_callback_and_the_last_stops_the_thread(redis_url: str) -> None:
    store = RedisStore(redis_url)
    removed: list[str] = []
    witness: list[str] = []
    # Registered first, so it would run before the witness for the same message.
    stop_removed = store.watch_circuits(removed.append)
    stop_witness = store.watch_circuits(witness.append)
    assert len(_watcher_threads()) == 1  # one subscriber per store, however many callbacks
    stop_removed()
    stop_removed()  # idempotent
    store.compare_and_set_circuit("api", 0, CircuitRecord(version=1))
    assert _wait_for(lambda: witness == ["api"], 2)
    assert removed == []
    stop_witness()
    assert _wait_for(lambda: not _watcher_threads(), 2)
    store.close()


def test_a_failing_callback_is_logged_and_the_feed_goes_on(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(redis_url)
    heard: list[str] = []

    def broken(connector: str) -> None:
        raise RuntimeError(f"callback bug on {connector}")

    store.watch_circuits(broken)
    store.watch_circuits(heard.append)
    with caplog.at_level(logging.ERROR, logger="connector_resilience.store"):
        store.compare_and_set_circuit("one", 0, CircuitRecord(version=1))
        store.compare_and_set_circuit("two", 0, CircuitRecord(version=1))
        assert _wait_for(lambda: heard == ["one", "two"], 2)
    assert "callback bug on one" in caplog.text
    assert "callback bug on two" in caplog.text
    store.close()


def test_a_callback_may_unsubscribe_itself(redis_url: str) -> None:
    store = RedisStore(redis_url)
    heard: list[str] = []
    stop: list[Callable[[], None]] = []

    def once(connector: str) -> None:
        heard.append(connector)
        stop[0]()  # from inside the subscriber thread: must not deadlock

    stop.append(store.watch_circuits(once))
    store.compare_and_set_circuit("api", 0, CircuitRecord(version=1))
    assert _wait_for(lambda: heard == ["api"] and not _watcher_threads(), 2)
    store.close()


def test_the_feed_resubscribes_after_a_redis_restart(
    redis_server_factory: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory()
    url = f"{server.url}/0?prefix=restart"
    watcher, writer = RedisStore(url), RedisStore(url)
    heard: list[str] = []
    watcher.watch_circuits(heard.append)
    writer.compare_and_set_circuit("api", 0, CircuitRecord(version=1))
    assert _wait_for(lambda: heard == ["api"], 2)

    with caplog.at_level(logging.WARNING, logger="connector_resilience.store"):
        server.stop()
        assert _wait_for(lambda: "change feed lost" in caplog.text, 2)
        server.start()
        # Changes published while it was away are lost, so it says "read everything".
        assert _wait_for(lambda: ANY_CONNECTOR in heard, 5)
    assert "resubscribed" in caplog.text

    # The restarted server is empty (no persistence): version 0 again.
    started = time.perf_counter()
    assert writer.compare_and_set_circuit("api", 0, CircuitRecord(version=1))
    assert _wait_for(lambda: heard[-1] == "api", _DELIVERY_BOUND_S)
    assert time.perf_counter() - started < _DELIVERY_BOUND_S
    assert len(_watcher_threads()) == 1
    watcher.close()
    writer.close()


def test_watching_starts_while_redis_is_down_and_catches_up(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    url = f"{server.url}/0?prefix=late"
    server.stop()
    watcher = RedisStore(url)
    heard: list[str] = []
    started = time.monotonic()
    watcher.watch_circuits(heard.append)
    assert time.monotonic() - started < 1  # the first attempt fails fast; no hang
    server.start()
    writer = RedisStore(url)
    # Subscribed again within the backoff (at most 1 s), then hears changes.
    assert _wait_for(lambda: ANY_CONNECTOR in heard, 5)
    writer.compare_and_set_circuit("api", 0, CircuitRecord(version=1))
    assert _wait_for(lambda: heard[-1:] == ["api"], 2)
    watcher.close()
    writer.close()
