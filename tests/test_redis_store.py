"""The Redis store beyond the shared contract: URLs, namespaces, retention, windows, cost."""

from __future__ import annotations

import datetime
import ipaddress
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from connector_resilience.backends import CallRecord, CircuitRecord, open_store
from connector_resilience.backends.redis import DEFAULT_PREFIX, DEFAULT_RETENTION_S, RedisStore
from connector_resilience.errors import ConfigurationError, StoreError
from tests.redis_server import RedisServer, open_redis_store


def _call(ts: float, connector: str = "api", operation: str = "get") -> CallRecord:
    return CallRecord(ts=ts, connector=connector, operation=operation, duration_ms=1.0, status="ok")


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client on the session server, to look at what the store wrote."""
    client = redis.Redis.from_url(f"{redis_server.url}/0", decode_responses=True)
    yield client
    client.close()


# URLs -------------------------------------------------------------------


def test_url_options_and_defaults() -> None:
    store = RedisStore("redis://localhost:6390/3")
    assert (store.prefix, store.retention_s) == (DEFAULT_PREFIX, DEFAULT_RETENTION_S)
    tuned = RedisStore("rediss://h:6390/2?prefix=billing&retention_s=3600&socket_timeout=2.5")
    assert (tuned.prefix, tuned.retention_s) == ("billing", 3600.0)
    # Options that are not ours reach redis-py; ours do not.
    pool = cast(redis.Redis, tuned._client).connection_pool
    assert "prefix" not in repr(pool.connection_kwargs)
    assert pool.connection_kwargs["socket_timeout"] == 2.5
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_class is redis.SSLConnection


@pytest.mark.parametrize(
    "url",
    [
        "redis://h/notanumber",
        "redis://h:99999/0",
        "redis://h/0?prefix=",
        "redis://h/0?prefix=two%20words",
        "redis://h/0?retention_s=0",
        "redis://h/0?retention_s=soon",
        "redis://h/0?decode_responses=false",
        "redis://h/0?no_such_option=1",
        "redis://h/0?socket_timeout=abc",
    ],
)
def test_bad_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_store(url)


def test_open_store_knows_both_schemes(redis_url: str) -> None:
    assert isinstance(open_store(redis_url), RedisStore)
    assert isinstance(open_store("rediss://h:1/0"), RedisStore)  # no connection until used


# Namespaces -------------------------------------------------------------


def test_two_prefixes_never_see_each_other(redis_server: RedisServer) -> None:
    one = open_redis_store(f"{redis_server.url}/0?prefix=app-one")
    two = open_redis_store(f"{redis_server.url}/0?prefix=app-two")
    now = time.time()
    one.compare_and_set_circuit("api", 0, CircuitRecord(version=1, state="open"))
    one.save_token("api", {"access_token": "one"})
    one.append_calls([_call(now)])
    assert two.get_circuit("api") is None
    assert two.load_token("api") is None
    assert two.read_calls(since=0) == []
    assert two.connectors() == []
    # The same connector name is independent state in the other namespace.
    assert two.compare_and_set_circuit("api", 0, CircuitRecord(version=1, failures=3))
    current = one.get_circuit("api")
    assert current is not None
    assert (current.state, current.failures) == ("open", 0)


def test_change_feeds_are_per_prefix_and_per_database(redis_server: RedisServer) -> None:
    stores = {
        name: open_redis_store(f"{redis_server.url}/{db}?prefix={prefix}")
        for name, db, prefix in [("a", 0, "feed-a"), ("b", 0, "feed-b"), ("a-db1", 1, "feed-a")]
    }
    heard: dict[str, list[str]] = {name: [] for name in stores}
    for name, store in stores.items():
        store.watch_circuits(heard[name].append)
    stores["a"].compare_and_set_circuit("api", 0, CircuitRecord(version=1))
    # Redis delivers in publish order: once each feed has heard its own marker,
    # published after the change above, it would have heard that change too.
    for name, store in stores.items():
        store.compare_and_set_circuit(f"marker-{name}", 0, CircuitRecord(version=1))
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and not all(
        f"marker-{name}" in heard[name] for name in stores
    ):
        time.sleep(0.005)
    assert heard == {
        "a": ["api", "marker-a"],
        "b": ["marker-b"],
        "a-db1": ["marker-a-db1"],
    }


# Metrics ------------------------------------------------------------------


def test_window_reads_are_exact_at_both_ends(redis_url: str) -> None:
    store = open_redis_store(redis_url)
    base = time.time() - 100
    store.append_calls([_call(base + i / 10, operation=f"op{i}") for i in range(20)])
    store.append_calls([_call(base + 0.55, connector="other", operation="x")])
    window = store.read_calls(since=base + 0.5, until=base + 1.0)
    # since is inclusive, until exclusive, records from every connector in time order.
    assert [r.operation for r in window] == ["op5", "x", "op6", "op7", "op8", "op9"]
    only_api = store.read_calls(since=base + 0.5, until=base + 1.0, connector="api")
    assert [r.operation for r in only_api] == ["op5", "op6", "op7", "op8", "op9"]
    (last,) = store.read_calls(since=base + 19 / 10)
    assert last.operation == "op19"


def test_identical_records_are_all_kept(redis_url: str) -> None:
    store = open_redis_store(redis_url)
    same = _call(time.time())
    store.append_calls([same, same])
    store.append_calls([same])
    assert store.read_calls(since=0) == [same, same, same]


def test_appends_trim_calls_past_the_retention(redis_server: RedisServer, raw: redis.Redis) -> None:
    store = open_redis_store(f"{redis_server.url}/0?prefix=retention&retention_s=60")
    key = store.keys.calls("api")
    now = time.time()
    store.append_calls([_call(now - 120, operation="old")])
    # One member per batch; a batch is not trimmed by its own write...
    assert raw.zcard(key) == 1
    store.append_calls([_call(now - 10, operation="recent")])
    # ...the next append drops every batch wholly past the retention.
    assert raw.zcard(key) == 1
    store.append_calls([_call(now, operation="new")])
    assert raw.zcard(key) == 2
    assert [r.operation for r in store.read_calls(since=0)] == ["recent", "new"]
    # A connector no longer called disappears after the retention by itself.
    ttl = raw.ttl(key)
    assert isinstance(ttl, int)
    assert 0 < ttl <= 61


def test_a_batch_partly_past_the_retention_is_filtered_then_compacted(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    store = open_redis_store(f"{redis_server.url}/0?prefix=partly&retention_s=60")
    now = time.time()
    store.append_calls([_call(now - 120, operation="old"), _call(now - 10, operation="recent")])
    # Stored together (one batch): appends trim whole batches only...
    store.append_calls([_call(now, operation="new")])
    assert [r.operation for r in store.read_calls(since=0)] == ["old", "recent", "new"]
    # ...a window read never reaches it...
    assert [r.operation for r in store.read_calls(since=now - 60)] == ["recent", "new"]
    # ...and compact() rewrites the batch without its expired call.
    counts = store.compact(metrics_retention_s=60)
    assert (counts["metrics_dropped"], counts["metrics_kept"]) == (1, 2)
    assert raw.zcard(store.keys.calls("api")) == 2
    assert [r.operation for r in store.read_calls(since=0)] == ["recent", "new"]


def test_compact_trims_by_age_and_forgets_emptied_connectors(
    redis_url: str, raw: redis.Redis
) -> None:
    store = open_redis_store(redis_url)
    now = time.time()
    store.append_calls([_call(now - 500, connector="gone"), _call(now - 500), _call(now - 1)])
    assert store.connectors() == ["api", "gone"]
    counts = store.compact(metrics_retention_s=100)
    assert (counts["metrics_dropped"], counts["metrics_kept"]) == (2, 1)
    assert store.connectors() == ["api"]
    assert raw.exists(store.keys.calls("gone")) == 0
    assert [r.ts for r in store.read_calls(since=0)] == [now - 1]


# Cost -----------------------------------------------------------------------


class _CountingConnection(redis.Connection):
    """A real connection that counts requests sent (a pipeline is sent as one)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def test_round_trips_per_operation(redis_url: str) -> None:
    store = RedisStore(redis_url)
    pool = cast(redis.Redis, store._client).connection_pool
    pool.connection_class = _CountingConnection
    pool.reset()  # the check at open made a connection of the plain class

    def round_trips(operation: Callable[[], object]) -> int:
        before = _CountingConnection.sent
        operation()
        return _CountingConnection.sent - before

    # Warm up: connect, read the clock once, load the script.
    store.now()
    store.compare_and_set_circuit("warm", 0, CircuitRecord(version=1))
    batch = [_call(time.time(), connector=f"c{i % 3}") for i in range(100)]
    assert round_trips(lambda: [store.now() for _ in range(1000)]) == 0
    assert round_trips(lambda: store.get_circuit("api")) == 1
    assert (
        round_trips(lambda: store.compare_and_set_circuit("api", 0, CircuitRecord(version=1))) == 1
    )
    assert round_trips(lambda: store.append_calls(batch)) == 1
    assert round_trips(lambda: store.read_calls(since=0, connector="c1")) == 1
    assert round_trips(lambda: store.read_calls(since=0)) == 2
    assert round_trips(lambda: store.save_token("api", {"access_token": "x"})) == 1
    assert round_trips(lambda: store.load_token("api")) == 1
    assert round_trips(store.connectors) == 1
    store.close()


# TLS ------------------------------------------------------------------------------


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "server.crt", directory / "server.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_rediss_verifies_the_server_and_works(
    redis_server_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    cert_file, key_file = _self_signed_certificate(tmp_path)
    server = redis_server_factory(tls=(cert_file, key_file))
    assert server.url.startswith("rediss://")
    store = open_redis_store(f"{server.url}/0?prefix=tls&ssl_ca_certs={cert_file}")
    assert store.compare_and_set_circuit("api", 0, CircuitRecord(version=1))
    assert store.get_circuit("api") == CircuitRecord(version=1)
    # Without the CA the certificate is refused: verification is on by default.
    unverified = RedisStore(f"{server.url}/0?prefix=tls")
    with pytest.raises(StoreError, match="certificate"):
        unverified.get_circuit("api")
    # Plain text to a TLS port fails fast too.
    plain = RedisStore(f"{server.url.replace('rediss://', 'redis://')}/0")
    with pytest.raises(StoreError):
        plain.get_circuit("api")
    unverified.close()
    plain.close()
