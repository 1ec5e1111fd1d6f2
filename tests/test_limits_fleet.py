"""Load control shared by real processes through every shared store, against a real server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from connector_resilience import BulkheadFullError, resilient
from connector_resilience.aiohttp import ResilienceMiddleware
from tests._limit_workers import shared_policy
from tests.http_server import Action, FaultServer, fault_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async for started in fault_server():
        yield started


async def test_a_429_pauses_the_connector_on_every_process_sharing_the_store(
    server: FaultServer, shared_store_url: str
) -> None:
    server.script("/data", [Action(429, headers={"Retry-After": "30"})], then=Action(200))
    middleware = ResilienceMiddleware("fleet-api", policy=shared_policy(shared_store_url))
    async with aiohttp.ClientSession(base_url=server.url, middlewares=(middleware,)) as session:
        async with session.get("/data") as response:
            assert response.status == 429
    # Another process, its own middleware, the same store: it does not spend a request.
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests._limit_workers",
        "request",
        shared_store_url,
        server.url,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0
    answer = out.decode().strip()
    assert answer.startswith("paused "), answer
    assert 25 <= int(answer.split()[1]) <= 30
    assert server.hits("/data") == 1


def test_the_default_budget_is_shared_by_processes_on_the_default_jsonl_store(
    tmp_path: Path,
) -> None:
    # No store and no scope set: the defaults (JSONL files under the folder, scope store).
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RETRY_BUDGET_RATIO": "0.5",
        "RETRY_BUDGET_MIN_PER_S": "0",
        "RETRY_MAX_ATTEMPTS": "2",
        "RETRY_BASE_MS": "0",
    }

    def attempts(successes: int, **more: str) -> int:
        done = subprocess.run(
            [sys.executable, "-m", "tests._limit_workers", "budget", str(successes)],
            cwd=tmp_path,
            env={**env, **more},
            capture_output=True,
            check=True,
            timeout=60,
        )
        return int(done.stdout)

    # 10 calls that succeed and 1 that fails: 11 calls earn 5 retries; 1 is spent.
    assert attempts(10) == 2
    # Another process's one failing call retries on what the first one earned...
    assert attempts(0) == 2
    # ... which a budget of its own (1 call: half a retry) would refuse.
    assert attempts(0, RETRY_BUDGET_SCOPE="process") == 1
    assert (tmp_path / "logs" / "connectors").is_dir()


def test_a_dead_holder_frees_its_shared_bulkhead_slot(shared_store_url: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests._limit_workers", "hold", shared_store_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"holding"
        call = resilient("fleet-api", policy=shared_policy(shared_store_url))(lambda: "ok")
        with pytest.raises(BulkheadFullError) as caught:
            call()
        assert caught.value.retry_at is not None  # the holder's lease end
        holder.kill()
        holder.wait(10)
        deadline = time.monotonic() + 10
        while True:  # the lease (0.5 s) ends by the store's clock; no one gives it back
            try:
                assert call() == "ok"
                break
            except BulkheadFullError:
                assert time.monotonic() < deadline, "the dead holder's slot never came free"
                time.sleep(0.05)
    finally:
        holder.kill()
        holder.wait(10)


async def test_the_middleware_fallback_answers_when_retries_run_out(server: FaultServer) -> None:
    from connector_resilience import testing

    fallback_hits: list[BaseException] = []

    async def from_cache(exc: BaseException) -> aiohttp.ClientResponse:
        fallback_hits.append(exc)
        async with aiohttp.ClientSession() as session:
            return await session.get(f"{server.url}/cache")

    middleware = ResilienceMiddleware(
        "fb-api",
        policy=testing.memory_policy(retry={"max_attempts": 2, "base_ms": 0}),
        retry_statuses=(),
        fallback=from_cache,
    )
    server.script("/data", [Action(reset=True), Action(reset=True)], then=Action(200))
    async with aiohttp.ClientSession(base_url=server.url, middlewares=(middleware,)) as session:
        with testing.no_waits():
            response = await session.get("/data")
            response.release()
    assert len(fallback_hits) == 1
    assert isinstance(fallback_hits[0], aiohttp.ClientError)
    assert server.hits("/cache") == 1
