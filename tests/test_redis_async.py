"""The asyncio twins: same data as the sync methods, and the event loop never waits."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from collections.abc import AsyncIterator

import pytest

from connector_resilience.backends import CallRecord, CircuitRecord
from connector_resilience.backends.redis import RedisStore


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    opened = RedisStore(redis_url)
    yield opened
    await opened.aclose()
    opened.close()


async def test_twins_read_what_sync_methods_wrote_and_back(store: RedisStore) -> None:
    assert await store.aget_circuit("api") is None
    assert await store.acompare_and_set_circuit("api", 0, CircuitRecord(version=1, failures=1))
    assert not await store.acompare_and_set_circuit("api", 0, CircuitRecord(version=1))
    assert store.get_circuit("api") == CircuitRecord(version=1, failures=1)
    store.compare_and_set_circuit("api", 1, CircuitRecord(version=2, state="open"))
    assert await store.aget_circuit("api") == CircuitRecord(version=2, state="open")
    with pytest.raises(ValueError, match="expected_version"):
        await store.acompare_and_set_circuit("api", 2, CircuitRecord(version=9))

    await store.asave_token("api", {"access_token": "a1", "expires_at": 10.5})
    assert store.load_token("api") == {"access_token": "a1", "expires_at": 10.5}
    store.save_token("api", {"access_token": "a2"})
    assert await store.aload_token("api") == {"access_token": "a2"}
    assert await store.aload_token("nobody") is None

    now = time.time()
    calls = [
        CallRecord(ts=now + i, connector="api", operation=f"op{i}", duration_ms=i, status="ok")
        for i in range(5)
    ]
    await store.aappend_calls(calls)
    await store.aappend_calls([])
    assert store.read_calls(since=0) == calls


async def test_concurrent_tasks_never_lose_a_compare_and_set(store: RedisStore) -> None:
    async def bump(times: int) -> None:
        done = 0
        while done < times:
            current = await store.aget_circuit("api") or CircuitRecord()
            new = CircuitRecord(version=current.version + 1, failures=current.failures + 1)
            if await store.acompare_and_set_circuit("api", current.version, new):
                done += 1

    await asyncio.gather(*(bump(25) for _ in range(8)))
    final = await store.aget_circuit("api")
    assert final is not None
    assert (final.version, final.failures) == (200, 200)


async def test_token_lock_excludes_tasks_and_threads(store: RedisStore) -> None:
    inside = 0
    most = 0

    async def task_holder() -> None:
        nonlocal inside, most
        for _ in range(5):
            async with store.atoken_lock("api", timeout_s=10):
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.002)  # hold it while the others try
                inside -= 1

    def thread_holder() -> None:
        for _ in range(5):
            with store.token_lock("api", timeout_s=10):
                time.sleep(0.002)

    await asyncio.gather(*(task_holder() for _ in range(4)), asyncio.to_thread(thread_holder))
    assert most == 1


async def test_waiting_for_the_lock_leaves_the_loop_free(store: RedisStore) -> None:
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with store.atoken_lock("api", timeout_s=5):
            held.set()
            await release.wait()

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while not release.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    holding = asyncio.create_task(holder())
    await held.wait()
    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="api"):
        async with store.atoken_lock("api", timeout_s=0.3):
            pass
    waited = time.monotonic() - started
    release.set()
    await asyncio.gather(holding, ticking)
    # redis-py gives up when its next poll (every 10 ms) would pass the timeout.
    assert 0.25 <= waited < 1.0
    # The loop ran the ticker all along (about 60 turns in 0.3 s).
    assert ticks >= 20
    async with store.atoken_lock("api", timeout_s=1):
        pass


def test_each_event_loop_gets_its_own_client(redis_url: str) -> None:
    store = RedisStore(redis_url)

    async def round_trip(version: int) -> CircuitRecord | None:
        await store.acompare_and_set_circuit("api", version - 1, CircuitRecord(version=version))
        return await store.aget_circuit("api")

    with warnings.catch_warnings():
        # A client left to a closed loop would warn "unclosed"; none may be left.
        warnings.simplefilter("error", ResourceWarning)
        for version in (1, 2, 3):
            record = asyncio.run(round_trip(version))
            assert record is not None
            assert record.version == version

        gc.collect()
    store.close()
