"""Shared fixtures: store URLs for every backend, and an isolated environment per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector_resilience.backends import close_all_stores

#: Environment variables a test must not inherit from the developer's shell.
_OWN_PREFIXES = ("CONNECTOR_", "RETRY_", "CB_", "OAUTH", "CIRCUIT_", "RATE_LIMIT_", "BULKHEAD_")
#: ... except the CI flag, which turns a missing redis-server or browser into a failure.
_KEEP = frozenset({"CONNECTOR_RESILIENCE_CI"})

LOCAL_BACKENDS = ("memory", "jsonl", "sqlite", "redis")
#: Backends that several processes can share.
SHARED_BACKENDS = ("jsonl", "sqlite", "redis")
#: Redis as deployed in production: the conformance suite runs on these too.
REDIS_DEPLOYMENTS = ("redis-cluster", "redis-sentinel")

#: The ``redis_server`` and ``redis_server_factory`` fixtures; ``provider`` and ``spans``.
pytest_plugins = ["tests.redis_server", "tests.tracing_fixtures"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test runs in its own folder, with none of our settings from the outer env."""
    for name in list(os.environ):
        if name.startswith(_OWN_PREFIXES) and name not in _KEEP:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    from connector_resilience import testing

    testing.reset()
    close_all_stores()


def url_for(backend: str, tmp_path: Path) -> str:
    """A fresh store URL of ``backend`` under ``tmp_path`` (absolute paths)."""
    if backend == "memory":
        return f"memory://{tmp_path.name}"
    if backend == "jsonl":
        return f"jsonl://{tmp_path / 'state'}"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    raise ValueError(backend)


#: The Redis deployments the suite runs on, by the fixture of tests/redis_server.py.
_REDIS_FIXTURES = {
    "redis": "redis_server",
    "redis-cluster": "redis_cluster",
    "redis-sentinel": "redis_sentinel",
}


def backend_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    """A fresh store URL of ``backend``, starting the Redis deployment it needs."""
    fixture = _REDIS_FIXTURES.get(backend)
    if fixture is None:
        return url_for(backend, tmp_path)
    deployment = request.getfixturevalue(fixture)
    # A Cluster has database 0 only, and names none in its URL.
    db = "" if backend == "redis-cluster" else "/0"
    return f"{deployment.url}{db}?prefix={tmp_path.name}"


@pytest.fixture(params=LOCAL_BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL per backend; Redis (a server, a Cluster, a Sentinel) from tests/redis_server.py."""
    return backend_url(request, request.param, tmp_path)


@pytest.fixture(params=SHARED_BACKENDS)
def shared_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL per backend that several processes can share."""
    return backend_url(request, request.param, tmp_path)


@pytest.fixture(params=[b for b in LOCAL_BACKENDS if b != "redis"])
def fake_clock_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store whose breaker clock ``testing.FakeClock`` moves (Redis keeps its own time)."""
    return url_for(request.param, tmp_path)
