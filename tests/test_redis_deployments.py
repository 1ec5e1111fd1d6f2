"""Deployment shapes: Sentinel, Cluster (named or detected), refused shapes, failover, slot move."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from connector_resilience.backends import CallRecord, CircuitRecord
from connector_resilience.backends.redis import ANY_CONNECTOR, RedisStore
from connector_resilience.backends.redis._keys import KeyLayout
from connector_resilience.errors import ConfigurationError, StoreError
from tests.redis_server import ClusterServers, RedisServer, SentinelServers


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


# URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h:26379", "names no master"),
        ("redis+sentinel://h:26379/m/x", "must be a number"),
        ("redis+sentinel://h:99999/m", "bad host:port"),
        ("redis+sentinel:///m", "names no host"),
        ("redis+cluster://h:7000/1", "database 0 only"),
        ("redis+cluster://h:7000?prefix=a{b}", "braces"),
        ("redis+cluster://h:7000?no_such_option=1", "bad option"),
        ("redis+cluster://h:7000?decode_responses=0", "set by connector-resilience"),
    ],
)
def test_bad_sentinel_and_cluster_urls_name_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        RedisStore(url)


def test_every_key_of_a_connector_is_in_one_slot(redis_cluster: ClusterServers) -> None:
    layout = KeyLayout("app", 0)
    client = redis_cluster.nodes[0].client()
    for connector in ["api", "", "a}b", "{x}", "%7B", "}", "naïve"]:
        keys = [
            layout.circuit(connector),
            layout.token(connector),
            layout.calls(connector),
            layout.batches(connector, "w"),
            layout.token_lock(connector),
        ]
        slots = {client.execute_command("CLUSTER KEYSLOT", key) for key in keys}
        assert len(slots) == 1, (connector, keys)
    # Two names never share keys, even ones the escaping touches.
    assert layout.circuit("a}b") != layout.circuit("a%7Db")
    client.close()


# Shapes ---------------------------------------------------------------------------


def test_a_cluster_node_behind_redis_url_is_detected(redis_cluster: ClusterServers) -> None:
    node = redis_cluster.nodes[2]
    store = RedisStore(f"redis://127.0.0.1:{node.port}/0?prefix=detected")
    assert store.shape == "cluster"
    # Connectors whose slots live on different nodes all work.
    names = [f"c{i}" for i in range(12)]
    for name in names:
        assert store.compare_and_set_circuit(name, 0, CircuitRecord(version=1))
    store.append_calls([CallRecord(time.time(), name, "get", 1.0, "ok") for name in names])
    assert sorted(store.list_circuits()) == sorted(names)
    assert store.connectors() == sorted(names)
    store.close()


def test_a_sentinel_behind_redis_url_is_refused(redis_sentinel: SentinelServers) -> None:
    with pytest.raises(ConfigurationError, match=r"points at a Sentinel.*redis\+sentinel://"):
        RedisStore(f"redis://127.0.0.1:{redis_sentinel.sentinel_port}/0")


def test_a_replica_is_refused(redis_sentinel: SentinelServers) -> None:
    with pytest.raises(ConfigurationError, match="read-only replica"):
        RedisStore(f"{redis_sentinel.replica.url}/0")


def test_an_unknown_master_name_is_refused(redis_sentinel: SentinelServers) -> None:
    url = redis_sentinel.url.replace("/mymaster", "/nosuchmaster")
    with pytest.raises(ConfigurationError, match=r"no master named 'nosuchmaster'.*mymaster"):
        RedisStore(f"{url}/0")


def test_redis_cluster_at_a_plain_server_is_refused(redis_server: RedisServer) -> None:
    with pytest.raises(ConfigurationError, match="not a Cluster"):
        RedisStore(f"redis+cluster://127.0.0.1:{redis_server.port}")


def test_opening_while_redis_is_down_checks_when_it_answers(
    redis_server_factory: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory(extra_args=("--replicaof", "127.0.0.1", "1"))
    url = f"{server.url}/0"
    server.stop()
    store = RedisStore(url)  # no error: calls must go on while Redis is away
    assert "checked when it answers" in caplog.text
    server.start()
    # The clock's background reading runs the check; the replica is refused then.
    assert _wait_for(lambda: (store.now(), store._misconfigured)[1] is not None, 10)
    with pytest.raises(StoreError, match="read-only replica"):
        store.get_circuit("api")
    store.close()


# Failover -------------------------------------------------------------------------


def test_calls_go_on_through_a_sentinel_failover_and_state_resumes(
    sentinel_factory: Callable[[], SentinelServers],
    record_property: Callable[[str, object], None],
) -> None:
    servers = sentinel_factory()
    url = f"{servers.url}/0?prefix=failover"
    writer, watcher = RedisStore(url), RedisStore(url)
    try:
        _fail_over_while_writing(servers, writer, watcher, record_property)
    finally:
        writer.close()
        watcher.close()


def _fail_over_while_writing(
    servers: SentinelServers,
    writer: RedisStore,
    watcher: RedisStore,
    record_property: Callable[[str, object], None],
) -> None:
    heard: list[str] = []
    watcher.watch_circuits(heard.append)
    assert writer.compare_and_set_circuit("api", 0, CircuitRecord(version=1))
    assert _wait_for(lambda: heard == ["api"], 2)

    # Writes go on while the sentinel fails the master over. Redis may lose
    # writes that reach the old master before it is demoted (Sentinel's own
    # trade-off); what must hold is that the same store object soon writes
    # to the new master, with no restart.
    failover = threading.Thread(target=servers.failover)
    started = time.monotonic()
    failover.start()
    errors = 0
    landed_at: float | None = None
    while landed_at is None:
        assert time.monotonic() - started < 40, "no write reached the new master"
        try:
            current = writer.get_circuit("api") or CircuitRecord()
            wrote = writer.compare_and_set_circuit(
                "api", current.version, CircuitRecord(version=current.version + 1)
            )
        except StoreError:
            errors += 1
            time.sleep(0.01)  # the old master is gone: retry, as the engine does
            continue
        if wrote and not failover.is_alive():
            new_master = redis.Redis(port=servers.current_master_port(), decode_responses=True)
            on_new = new_master.hget(writer.keys.circuit("api"), "version")
            new_master.close()
            if on_new == str(current.version + 1):
                landed_at = time.monotonic()
    failover.join(40)
    # ...and the watcher learns of changes again: the change itself, or "*"
    # ("read everything") once its own subscription has moved to the new master.
    heard.clear()
    current = writer.get_circuit("api") or CircuitRecord()
    assert writer.compare_and_set_circuit(
        "api", current.version, CircuitRecord(version=current.version + 1)
    )
    assert _wait_for(lambda: "api" in heard or ANY_CONNECTOR in heard, 10)
    pushes_back = time.monotonic() - started
    writes_back = landed_at - started
    record_property("failover_to_write_on_new_master_s", round(writes_back, 3))
    record_property("failover_to_push_s", round(pushes_back, 3))
    record_property("failed_operations_during_failover", errors)
    assert writes_back < 10
    assert pushes_back < 10


def test_calls_go_on_while_a_connectors_slot_moves(
    redis_cluster: ClusterServers,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    url = f"{redis_cluster.url}?prefix={tmp_path.name}"
    store = RedisStore(url)
    assert store.compare_and_set_circuit("moving", 0, CircuitRecord(version=1))
    client = redis_cluster.nodes[0].client()
    slot = int(client.execute_command("CLUSTER KEYSLOT", store.keys.circuit("moving")))
    client.close()
    owner = redis_cluster.owner(slot)
    target = next(node for node in redis_cluster.nodes if node is not owner)

    errors: list[str] = []
    written = 0
    stop = threading.Event()

    def work() -> None:
        nonlocal written
        while not stop.is_set():
            try:
                current = store.get_circuit("moving") or CircuitRecord()
                store.compare_and_set_circuit(
                    "moving", current.version, CircuitRecord(version=current.version + 1)
                )
                store.append_calls([CallRecord(time.time(), "moving", "get", 1.0, "ok")])
                written += 1
            except StoreError as exc:
                errors.append(str(exc))

    worker = threading.Thread(target=work)
    worker.start()
    time.sleep(0.2)
    started = time.monotonic()
    moved = redis_cluster.move_slot(slot, target)
    moved_in = time.monotonic() - started
    before = written
    assert _wait_for(lambda: written > before + 5, 5)
    stop.set()
    worker.join(10)
    record_property("keys_moved", moved)
    record_property("slot_move_s", round(moved_in, 3))
    record_property("errors_during_move", len(errors))
    assert redis_cluster.owner(slot) is target
    assert moved >= 3  # the circuit, the calls and the batch numbers moved
    assert errors == []
    assert len(store.read_calls(since=0, connector="moving")) == written
    store.close()
