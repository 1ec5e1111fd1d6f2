"""Least privilege: a user with exactly the documented rights can do everything, one without
any of them is refused at open by name, and no script writes before a command that may be refused.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from connector_resilience.backends import CallRecord, CircuitRecord
from connector_resilience.backends.redis import RedisStore, acl_rules
from connector_resilience.errors import ConfigurationError, StoreError
from tests.redis_server import ClusterServers, RedisServer, acl_user, with_user

_DOCS = Path(__file__).parent.parent / "docs" / "redis.md"


def _everything(store: RedisStore) -> None:
    """Every operation of the store, the change feed and the lock included."""
    heard: list[str] = []
    store.watch_circuits(heard.append)
    assert store.compare_and_set_circuit("api", 0, CircuitRecord(version=1, state="open"))
    assert store.compare_and_set_circuit("api", 1, CircuitRecord(version=2))
    assert store.get_circuit("api") == CircuitRecord(version=2)
    assert set(store.list_circuits()) == {"api"}
    store.save_token("api", {"access_token": "t"})
    assert store.load_token("api") == {"access_token": "t"}
    assert set(store.list_tokens()) == {"api"}
    with store.token_lock("api", timeout_s=5):
        pass
    now = time.time()
    store.append_calls([CallRecord(now - 120, "api", "get", 1.0, "ok")])
    store.append_calls([CallRecord(now, "api", "get", 1.0, "ok")])
    assert len(store.read_calls(since=0)) == 2
    assert store.connectors() == ["api"]
    assert store.compact(metrics_retention_s=60)["metrics_dropped"] == 1
    store.now()
    # Load control: the retry budget, the token bucket and its pause, bulkhead leases.
    assert store.spend_retry_budget(
        "api", calls=10, retry=True, ratio=0.5, min_per_s=0, window_s=10
    )
    assert store.take_token("api", rate_per_s=10, burst=1, max_wait_s=0).granted
    store.pause_tokens("api", seconds=1, rate_per_s=10, burst=1)
    assert not store.take_token("api", rate_per_s=10, burst=1, max_wait_s=0).granted
    assert store.acquire_lease("api", limit=1, lease_s=5, holder="h1").granted
    assert not store.acquire_lease("api", limit=1, lease_s=5, holder="h2").granted
    store.release_lease("api", holder="h1")
    assert store.acquire_lease("api", limit=1, lease_s=5, holder="h2").granted
    deadline = time.monotonic() + 2
    while heard.count("api") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert heard == ["api", "api"]


def test_the_documented_rules_are_the_ones_the_store_checks() -> None:
    text = _DOCS.read_text()
    shown = re.search(r"ACL SETUSER connector-resilience on >PASSWORD (.+)", text)
    assert shown is not None, "docs/redis.md shows the ACL SETUSER line"
    assert shown.group(1).strip() == acl_rules("redis://host/0")
    cluster = re.search(r"Cluster adds: `(.+?)`", text)
    assert cluster is not None
    extra = acl_rules("redis+cluster://host").removeprefix(acl_rules("redis://host/0")).strip()
    assert cluster.group(1) == extra


def test_a_user_with_exactly_the_documented_rights_does_everything(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = f"{redis_server.url}/0?prefix={tmp_path.name}"
    name, password = acl_user([redis_server], url)
    store = RedisStore(with_user(url, name, password))
    try:
        _everything(store)
    finally:
        store.close()


def test_on_a_cluster_too(redis_cluster: ClusterServers, tmp_path: Path) -> None:
    url = f"{redis_cluster.url}?prefix={tmp_path.name}"
    name, password = acl_user(redis_cluster.nodes, url)
    store = RedisStore(with_user(url, name, password))
    try:
        assert store.shape == "cluster"
        _everything(store)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("take_away", "named"),
    [
        ("-zadd", "+zadd"),
        ("-publish", "+publish"),
        ("-evalsha", "+evalsha"),
        ("resetchannels", "&{prefix}:circuit-changed:0"),
        ("resetkeys ~other:*", "~{prefix}:*"),
    ],
)
def test_a_missing_right_is_refused_at_open_by_name(
    redis_server: RedisServer, tmp_path: Path, take_away: str, named: str
) -> None:
    url = f"{redis_server.url}/0?prefix={tmp_path.name}"
    name, password = acl_user([redis_server], url)
    admin = redis_server.client()
    admin.execute_command("ACL SETUSER", name, *take_away.split())
    admin.close()
    with pytest.raises(ConfigurationError) as refused:
        RedisStore(with_user(url, name, password))
    message = str(refused.value)
    assert f"lacks rights the store needs: {named.format(prefix=tmp_path.name)}." in message
    assert f"ACL SETUSER {name} {acl_rules(url)}" in message
    assert password not in message


def test_a_new_users_default_no_channels_is_refused_at_open(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis 7 gives a new user no channel; that used to fail every breaker change late."""
    url = f"{redis_server.url}/0?prefix={tmp_path.name}"
    name, password = f"new-{tmp_path.name[-8:]}", "pw-new-user"
    admin = redis_server.client()
    # What the user guide of a managed Redis typically says: keys and commands.
    admin.execute_command("ACL SETUSER", name, "on", f">{password}", f"~{tmp_path.name}:*", "+@all")
    admin.close()
    with pytest.raises(ConfigurationError, match=r"&\S+:circuit-changed:0"):
        RedisStore(with_user(url, name, password))


def test_a_publish_refused_after_open_writes_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The script publishes before it writes: a refusal leaves the record as it was."""
    url = f"{redis_server.url}/0?prefix={tmp_path.name}"
    name, password = acl_user([redis_server], url)
    store = RedisStore(with_user(url, name, password))
    assert store.compare_and_set_circuit("api", 0, CircuitRecord(version=1))
    admin = redis_server.client()
    admin.execute_command("ACL SETUSER", name, "resetchannels")  # revoked while running
    with pytest.raises(StoreError, match="publish"):
        store.compare_and_set_circuit("api", 1, CircuitRecord(version=2, state="open"))
    # Not half-done: the version and the record are still the old ones, so
    # the caller's retry (or another process) decides from the truth.
    assert store.get_circuit("api") == CircuitRecord(version=1)
    assert admin.hget(store.keys.circuit("api"), "version") == "1"
    admin.close()
    store.close()
