"""The asyncio twins on a Cluster and through a Sentinel, as on one server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from connector_resilience.backends import CallRecord, CircuitRecord
from connector_resilience.backends.redis import RedisStore
from tests.conftest import REDIS_DEPLOYMENTS, backend_url


@pytest.mark.parametrize("deployment", REDIS_DEPLOYMENTS)
async def test_async_twins_on_each_deployment(
    request: pytest.FixtureRequest, tmp_path: Path, deployment: str
) -> None:
    # Opened in a thread, as the engine does: the open-time check is sync I/O.
    store = RedisStore(backend_url(request, deployment, tmp_path))
    assert await store.aget_circuit("api") is None
    assert await store.acompare_and_set_circuit("api", 0, CircuitRecord(version=1))
    assert await store.acompare_and_set_circuit("api", 1, CircuitRecord(version=2, state="open"))
    assert not await store.acompare_and_set_circuit("api", 1, CircuitRecord(version=2))
    assert store.get_circuit("api") == CircuitRecord(version=2, state="open")
    await store.asave_token("api", {"access_token": "a"})
    assert await store.aload_token("api") == {"access_token": "a"}
    calls = [CallRecord(time.time(), name, "get", 1.0, "ok") for name in ("api", "b", "c")]
    await store.aappend_calls(calls)
    assert store.read_calls(since=0) == calls
    async with store.atoken_lock("api", timeout_s=5):
        pass
    await store.aclose()
    store.close()
