"""What a successful decorated call costs in clock reads: at most two (issue 16).

The clocks are the real ones, counted: only reads from the calling thread
count (the metrics writer reads them too, on its own thread). The breaker
re-reads its store every ``CB_SYNC_INTERVAL_S`` (and a call that does reads
the clock again): that is set to an hour here, so every call counted is a
plain one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connector_resilience import _clock, flush_metrics, resilient, testing


@pytest.fixture
def clock_reads() -> Iterator[list[str]]:
    reads: list[str] = []
    me = threading.get_ident()
    saved = (_clock.wall, _clock.monotonic, _clock.perf)

    def counted(name: str, clock: Callable[[], float]) -> Callable[[], float]:
        def read() -> float:
            if threading.get_ident() == me:
                reads.append(name)
            return clock()

        return read

    _clock.wall, _clock.monotonic, _clock.perf = (
        counted("wall", saved[0]),
        counted("monotonic", saved[1]),
        counted("perf", saved[2]),
    )
    try:
        yield reads
    finally:
        _clock.wall, _clock.monotonic, _clock.perf = saved


_LOAD = {"rate_per_s": 1e6, "rate_burst": 1e6, "bulkhead_max_concurrent": 1000}


@pytest.mark.parametrize("limits", [{}, _LOAD], ids=["plain", "limiter-and-bulkhead"])
def test_a_success_reads_the_clock_at_most_twice(
    clock_reads: list[str], limits: dict[str, Any]
) -> None:
    policy = testing.memory_policy(limits=limits, circuit={"sync_interval_s": 3600.0})
    call = resilient("clock-reads", policy=policy)(lambda: 1)
    call()  # the first call builds the engine (and reads the store)
    call()
    for _ in range(300):  # past a batch of tokens taken ahead (1% of the burst: 256)
        clock_reads.clear()
        assert call() == 1
        assert len(clock_reads) <= 2, clock_reads
    flush_metrics()


@pytest.mark.parametrize("limits", [{}, _LOAD], ids=["plain", "limiter-and-bulkhead"])
def test_an_async_success_reads_the_clock_at_most_twice(
    clock_reads: list[str], limits: dict[str, Any]
) -> None:
    policy = testing.memory_policy(limits=limits, circuit={"sync_interval_s": 3600.0})

    @resilient("clock-reads-async", policy=policy)
    async def call() -> int:
        return 1

    async def run() -> None:
        await call()
        await call()
        for _ in range(300):
            clock_reads.clear()
            assert await call() == 1
            assert len(clock_reads) <= 2, clock_reads

    asyncio.run(run())
    flush_metrics()
