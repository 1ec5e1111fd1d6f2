"""Issue 9, point 5: our code never holds the event loop, and does no blocking I/O on it.

Hundreds of concurrent calls through the async decorator and the aiohttp
middleware, against tests/http_server.py running in another thread (so its
work is not counted), with JSONL, SQLite and Redis stores. Measured three ways:

* asyncio debug mode with ``slow_callback_duration`` = 250 ms: no single step
  of the loop may take that long. A blocking store call under a fault takes
  1 s to 30 s (Redis timeouts, SQLite's busy timeout, the file lock's
  timeout), so this catches every one of them, while it stays above what
  debug mode itself costs a step with 300 connections on 2 busy cores
  (about 100 ms measured; a healthy step of ours is microseconds);
* a heartbeat task: the largest lag between two of its wake-ups is reported;
* the store is wrapped so that any synchronous store call made from a thread
  that is running an event loop fails the test, and every blocking socket
  operation (a socket with a timeout other than 0, as redis-py's sync client
  uses) made from such a thread is recorded: the async path must use
  redis.asyncio and worker threads only.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connector_resilience import Policy, resilient
from connector_resilience.aiohttp import ResilienceMiddleware
from connector_resilience.backends import Store, open_store
from tests.http_server import Action, FaultServer
from tests.reliability._support import background_loop

pytestmark = pytest.mark.slow

#: No loop step may take this long (justified in the module docstring).
SLOW_STEP_S = 0.25
#: A heartbeat every 5 ms may be late by this much at most under load.
HEARTBEAT_LAG_S = 0.25
CONCURRENCY = 300

_SYNC_STORE_METHODS = (
    "get_circuit",
    "compare_and_set_circuit",
    "list_circuits",
    "load_token",
    "save_token",
    "list_tokens",
    "append_calls",
    "read_calls",
    "connectors",
    "token_lock",
)


def _in_loop_thread() -> bool:
    return asyncio._get_running_loop() is not None


class LoopGuardStore:
    """A real store that records every synchronous call made from an event loop's thread."""

    def __init__(self, inner: Store, offences: list[str]) -> None:
        self._inner = inner
        self._offences = offences
        self.url = inner.url

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name not in _SYNC_STORE_METHODS:
            return attribute

        @functools.wraps(attribute)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if _in_loop_thread():
                self._offences.append(f"store.{name} on the loop thread")
            return attribute(*args, **kwargs)

        return guarded


@pytest.fixture
def blocking_sockets() -> Iterator[list[str]]:
    """Record blocking socket operations made from a thread that runs an event loop."""
    seen: list[str] = []
    originals: dict[str, Callable[..., Any]] = {}
    for name in ("connect", "send", "sendall", "recv", "recv_into"):
        original = getattr(socket.socket, name)
        originals[name] = original

        def spy(self: socket.socket, *args: Any, _name: str = name, _orig: Any = original) -> Any:
            if _in_loop_thread() and self.gettimeout() != 0.0:
                import traceback

                where = "".join(traceback.format_stack(limit=12)[:-1])
                seen.append(f"blocking socket.{_name} on the loop thread:\n{where}")
            return _orig(self, *args)

        setattr(socket.socket, name, spy)
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(socket.socket, name, original)


@pytest.fixture
def http_server() -> Iterator[FaultServer]:
    with background_loop() as loop:
        server = asyncio.run_coroutine_threadsafe(FaultServer().start(), loop).result(10)
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)


class Heartbeat:
    """A task that wakes every ``interval_s`` and keeps the worst lateness."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.worst_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            self.worst_s = max(self.worst_s, time.perf_counter() - before - self.interval_s)

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.create_task(self._beat())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
async def debug_loop(caplog: pytest.LogCaptureFixture) -> AsyncIterator[list[str]]:
    """asyncio debug mode; yields the 'Executing ... took' reports of slow steps."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_STEP_S
    caplog.set_level(logging.WARNING, logger="asyncio")
    slow: list[str] = []
    try:
        yield slow
    finally:
        loop.set_debug(False)


def _store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        return f"{server.url}/0?prefix={tmp_path.name}"
    if backend == "jsonl":
        return f"jsonl://{tmp_path / 'state'}"
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture(params=["jsonl", "sqlite", "redis"])
def loop_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Resolved before the socket spy starts (starting redis-server pings it)."""
    return _store_url(request.param, tmp_path, request)


async def test_load_never_holds_the_loop_nor_blocks_on_io(
    loop_store_url: str,
    http_server: FaultServer,
    blocking_sockets: list[str],
    debug_loop: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    offences: list[str] = []
    backend = loop_store_url.partition(":")[0]
    store = LoopGuardStore(open_store(loop_store_url), offences)
    policy = Policy(
        store={"url": "memory://unused", "flush_interval_s": 0.05},
        retry={"max_attempts": 3, "base_ms": 1, "cap_ms": 5},
        circuit={"failures_to_open": 10_000, "sync_interval_s": 0},
    )
    # Some failures on each path, so breaker writes happen during the load.
    http_server.script("/dec", [Action(503)] * 40)
    http_server.script("/mw", [Action(503)] * 40)

    class UnavailableError(Exception):
        pass

    async with (
        aiohttp.ClientSession(
            http_server.url,
            middlewares=(ResilienceMiddleware("loop-mw", policy=policy, store=store),),
        ) as with_middleware,
        aiohttp.ClientSession(http_server.url) as plain,
    ):

        @resilient("loop-dec", policy=policy, store=store, retry_on=UnavailableError)
        async def decorated() -> int:
            async with plain.get("/dec") as response:
                if response.status == 503:
                    raise UnavailableError
                return response.status

        async def through_middleware() -> int:
            async with with_middleware.get("/mw") as response:
                return response.status

        # What earlier tests left on the heap is frozen first, so a garbage
        # collection inside a step walks this test's objects only: a collection over
        # a whole suite's leftovers is no code of ours holding the loop. (In full
        # runs one asyncio socket step here took 0.29-0.35 s, never when run alone;
        # that this pause is the cause is not proven.)
        gc.collect()
        gc.freeze()
        try:
            async with Heartbeat() as heartbeat:
                started = time.perf_counter()
                results = await asyncio.gather(
                    *[decorated() for _ in range(CONCURRENCY // 2)],
                    *[through_middleware() for _ in range(CONCURRENCY // 2)],
                    return_exceptions=True,
                )
                elapsed = time.perf_counter() - started
        finally:
            gc.unfreeze()
    failures = [r for r in results if r != 200]
    assert len(failures) <= 40, failures[:3]
    print(
        f"\n{backend}: {CONCURRENCY} calls in {elapsed * 1000:.0f} ms, "
        f"worst heartbeat lag {heartbeat.worst_s * 1000:.1f} ms"
    )
    assert offences == []
    assert blocking_sockets == []
    # The heartbeat measures the whole loop (aiohttp's 300 connections included): reported,
    # while the bound applies to each step, our code's included.
    debug_loop.extend(r.getMessage() for r in caplog.records if " took " in r.getMessage())
    ours = [m for m in debug_loop if "coro=<test_" not in m]  # not the test's own body
    assert ours == [], ours


async def test_a_locked_sqlite_store_never_freezes_the_loop(tmp_path: Path) -> None:
    """A failing call's breaker write waits for the lock in a worker thread, not on the loop."""
    path = tmp_path / "state.db"
    policy = Policy(
        store={"url": f"sqlite:///{path}", "flush_interval_s": 3600},
        circuit={"failures_to_open": 100, "sync_interval_s": 0},
        retry={"max_attempts": 1},
    )

    @resilient("locked", policy=policy, retry_on=())
    async def call(fail: bool) -> int:
        if fail:
            raise RuntimeError("down")
        return 1

    await call(False)  # the engine and the schema exist
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    released_at: list[float] = []

    def release() -> None:
        holder.execute("ROLLBACK")
        released_at.append(time.monotonic())

    # Released from another thread after a while, whatever the loop is doing.
    timer = threading.Timer(0.5, release)
    timer.start()
    finished_at: list[float] = []

    async def failing_call() -> BaseException | int:
        try:
            return await call(True)
        except RuntimeError as exc:
            return exc
        finally:
            finished_at.append(time.monotonic())

    try:
        async with Heartbeat() as heartbeat:
            failing = [asyncio.create_task(failing_call()) for _ in range(5)]
            await asyncio.sleep(0.3)
            lag_while_locked = heartbeat.worst_s
            results = await asyncio.gather(*failing)
    finally:
        timer.join()
        holder.close()
    assert all(isinstance(r, RuntimeError) for r in results)
    # The calls did wait on the lock (their breaker writes), off the loop...
    assert min(finished_at) >= released_at[0], "a call finished before the lock was released"
    # ...and their failures reached the store once it was free.
    stored = open_store(f"sqlite:///{path}").get_circuit("locked")
    assert stored is not None
    assert stored.failures == 5
    print(f"\nlocked SQLite: worst loop lag {lag_while_locked * 1000:.1f} ms")
    assert lag_while_locked < HEARTBEAT_LAG_S


async def test_first_call_on_redis_builds_its_engine_off_the_loop(
    redis_server: Any, tmp_path: Path, blocking_sockets: list[str]
) -> None:
    """The first call opens the store, subscribes and reads the breaker: all off the loop."""
    url = f"{redis_server.url}/0?prefix={tmp_path.name}"
    policy = Policy(store={"url": url, "flush_interval_s": 3600})

    @resilient("first", policy=policy)
    async def call() -> int:
        return 1

    async with Heartbeat() as heartbeat:
        assert await call() == 1
    assert blocking_sockets == []
    assert heartbeat.worst_s < HEARTBEAT_LAG_S
