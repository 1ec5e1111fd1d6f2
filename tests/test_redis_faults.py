"""Redis down, frozen or restarted: StoreError fast, then the same store works again.

Also: a password never shows in a repr, an error, a traceback or a log line.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable

import pytest

from connector_resilience.backends import CallRecord, CircuitRecord, redact_url
from connector_resilience.backends.redis import RedisStore
from connector_resilience.errors import StoreError
from tests.redis_server import RedisServer, open_redis_store

#: Connect timeout 0.5 s, socket timeout 1 s, one immediate reconnect.
_FAST_S = 1.5


def _operations(store: RedisStore) -> dict[str, Callable[[], object]]:
    call = CallRecord(ts=time.time(), connector="api", operation="get", duration_ms=1, status="ok")

    def take_lock() -> None:
        with store.token_lock("api", timeout_s=5):
            pass

    return {
        "get_circuit": lambda: store.get_circuit("api"),
        "compare_and_set": lambda: store.compare_and_set_circuit(
            "api", 0, CircuitRecord(version=1)
        ),
        "list_circuits": store.list_circuits,
        "save_token": lambda: store.save_token("api", {"access_token": "t"}),
        "load_token": lambda: store.load_token("api"),
        "list_tokens": store.list_tokens,
        "token_lock": take_lock,
        "append_calls": lambda: store.append_calls([call]),
        "read_calls": lambda: store.read_calls(since=0),
        "connectors": store.connectors,
        "compact": lambda: store.compact(metrics_retention_s=60),
    }


def _assert_every_operation_fails_fast(store: RedisStore, url_shown: str) -> None:
    for name, operation in _operations(store).items():
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            operation()
        elapsed = time.monotonic() - started
        assert elapsed < _FAST_S, f"{name} took {elapsed:.2f}s to fail"
        assert url_shown in str(caught.value), name


def test_redis_down_then_back(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    url = f"{server.url}/0?prefix=down"
    store = open_redis_store(url)
    for operation in _operations(store).values():
        operation()
    clock_before = store.now()

    server.stop()
    _assert_every_operation_fails_fast(store, url)
    # The clock goes on from its last reading: no error, no jump.
    assert 0 <= store.now() - clock_before < 60

    server.start()
    # The same store object, with no reopening: its pooled connections were
    # dead and are replaced on first use.
    assert store.get_circuit("api") is None  # the server kept nothing
    for operation in _operations(store).values():
        operation()
    assert store.get_circuit("api") is not None


def test_a_frozen_redis_times_out_in_about_a_second(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    store = RedisStore(f"{server.url}/0")
    store.save_token("api", {"access_token": "t"})
    server.pause()
    try:
        for operation in (lambda: store.load_token("api"), lambda: store.get_circuit("api")):
            started = time.monotonic()
            with pytest.raises(StoreError, match="TimeoutError"):
                operation()
            assert time.monotonic() - started < _FAST_S
    finally:
        server.resume()
    assert store.load_token("api") == {"access_token": "t"}
    store.close()


async def test_async_twins_fail_fast_and_recover(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    store = RedisStore(f"{server.url}/0")
    await store.asave_token("api", {"access_token": "t"})
    server.stop()
    call = CallRecord(ts=time.time(), connector="api", operation="get", duration_ms=1, status="ok")
    for operation in (
        lambda: store.aget_circuit("api"),
        lambda: store.acompare_and_set_circuit("api", 0, CircuitRecord(version=1)),
        lambda: store.aappend_calls([call]),
        lambda: store.aload_token("api"),
        lambda: store.asave_token("api", {}),
    ):
        started = time.monotonic()
        with pytest.raises(StoreError):
            await operation()
        assert time.monotonic() - started < _FAST_S
    with pytest.raises(StoreError):
        async with store.atoken_lock("api", timeout_s=5):
            pass
    server.start()
    assert await store.aload_token("api") is None
    assert await store.acompare_and_set_circuit("api", 0, CircuitRecord(version=1))
    await store.aclose()
    store.close()


# Secrets ----------------------------------------------------------------------

_PASSWORD = "s3cret-Pa55-w0rd"


def test_password_never_in_repr_errors_tracebacks_or_logs(
    redis_server_factory: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory(password=_PASSWORD)
    url = f"{server.url}/0?prefix=secret"
    assert _PASSWORD in url
    wrong_url = url.replace(_PASSWORD, "wrong-" + _PASSWORD[::-1])
    shown: list[str] = []
    caplog.set_level(logging.DEBUG)  # every logger, redis-py's included

    store = open_redis_store(url)
    shown += [repr(store), str(store), store.url]
    assert store.url == redact_url(url)
    heard: list[str] = []
    store.watch_circuits(heard.append)
    for operation in _operations(store).values():
        operation()
    store.now()

    # Wrong password: refused, and the message says so without either password.
    wrong = RedisStore(wrong_url)
    with pytest.raises(StoreError) as refused:
        wrong.get_circuit("api")
    assert "AuthenticationError" in str(refused.value)
    shown += [repr(wrong), "".join(traceback.format_exception(refused.value))]
    wrong.close()

    # Down: every error, with its chained cause, and every warning logged.
    server.stop()
    for operation in _operations(store).values():
        with pytest.raises(StoreError) as caught:
            operation()
        shown.append("".join(traceback.format_exception(caught.value)))
    server.start()
    assert store.load_token("api") is None  # back, with the password, by itself
    store.close()

    shown.append(caplog.text)
    shown += [r.getMessage() for r in caplog.records]
    assert "change feed lost" in caplog.text  # the logs were captured
    for text in shown:
        assert _PASSWORD not in text
        assert _PASSWORD[::-1] not in text
