"""Issue 21, items 12 and 13: the token lock after a dead holder, and expiry on the store's clock.

A real process takes the token lock through ``TokenManager``, saves the token
it got (the refresh token rotated) and is SIGKILLed before it can release the
lock. Twenty callers, each with its own manager, were already waiting: they
must all end up with the token the dead holder saved, none giving up, and
none spending the old refresh token (the server revokes the whole family when
a spent one is reused).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from connector_resilience import Policy, TokenManager
from connector_resilience import _clock as clock_module
from connector_resilience.backends import open_store
from connector_resilience.oauth2 import OAuth2Config
from tests.oauth_server import CLIENT_ID, CLIENT_SECRET, OAuthServer, config_for
from tests.redis_server import RedisServer
from tests.reliability._support import child

SURVIVORS = 20
#: OAUTH_LOCK_TIMEOUT_S of every process here: a waiter waits this long, a
#: holder's lease is half of it.
LOCK_TIMEOUT_S = 4.0


class _CountingStore:
    """The real store, counting the callers that went to wait for the token lock."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.url = inner.url
        self.waiting = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def token_lock(self, connector: str, **kwargs: Any) -> Any:
        with self._lock:
            self.waiting += 1
        return self._inner.token_lock(connector, **kwargs)


def _read_fact(holder: subprocess.Popen[bytes], kind: str) -> dict[str, Any]:
    assert holder.stdout is not None
    while True:
        line = holder.stdout.readline()
        assert line, f"the holder ended before saying {kind!r}"
        if line.startswith(b"{"):
            fact: dict[str, Any] = json.loads(line)
            if fact["kind"] == kind:
                return fact


def test_one_survivor_takes_over_from_a_dead_holder_after_reading_the_store(
    shared_store_url: str,
) -> None:
    with OAuthServer() as server:
        store = _CountingStore(open_store(shared_store_url))
        store.save_token(
            "api",
            {
                "access_token": "at-0",
                "refresh_token": server.issue_refresh_token(),
                "expires_at": 0,
            },
        )
        policy = Policy(store={"url": shared_store_url}, oauth={"lock_timeout_s": LOCK_TIMEOUT_S})
        config = config_for(server)
        holder = child(
            "token-holder",
            shared_store_url,
            server.token_url,
            CLIENT_ID,
            CLIENT_SECRET,
            str(LOCK_TIMEOUT_S),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        gate = threading.Event()
        results: list[str] = []
        failures: list[BaseException] = []

        def survive() -> None:
            manager = TokenManager("api", config=config, store=store, policy=policy)
            gate.wait(30)
            try:
                results.append(manager.get_token())
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=survive) for _ in range(SURVIVORS)]
        for thread in threads:
            thread.start()
        try:
            locked = _read_fact(holder, "locked")
            assert locked["lease_s"] == LOCK_TIMEOUT_S / 2
            gate.set()  # the survivors read the expired token and go to wait for the lock
            deadline = time.monotonic() + 10
            while store.waiting < SURVIVORS:
                assert time.monotonic() < deadline, "the survivors never went to the lock"
                time.sleep(0.005)
            assert holder.stdin is not None
            holder.stdin.write(b"go\n")
            holder.stdin.flush()
            saved = _read_fact(holder, "saved")["access_token"]
            holder.send_signal(signal.SIGKILL)  # dies holding the lock
            holder.wait(10)
            for thread in threads:
                thread.join(3 * LOCK_TIMEOUT_S)
        finally:
            gate.set()
            with contextlib.suppress(ProcessLookupError):
                holder.kill()
        assert failures == []
        assert results == [saved] * SURVIVORS
        # Only the holder spent a refresh token: no survivor refreshed with the
        # spent one (that would have revoked the whole family, saved token included).
        assert server.count() == 1
        assert server.access_token_valid(saved)


# 13. Expiry on the store's clock ----------------------------------------------------


@pytest.fixture
def skewed_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Set how far this host's wall clock is off (Redis's TIME is the truth)."""

    def skew(seconds: float) -> None:
        monkeypatch.setattr(clock_module, "wall", lambda: time.time() + seconds)

    return skew


def _client_credentials(server: OAuthServer) -> OAuth2Config:
    return config_for(server, grant="client_credentials")


def _redis_time(url: str) -> float:
    import redis

    seconds, micros = redis.Redis.from_url(url).time()
    return seconds + micros / 1e6


def test_a_fast_host_stamps_expiry_by_the_stores_clock(
    redis_server: RedisServer, skewed_clock: Callable[[float], None]
) -> None:
    url = f"{redis_server.url}/0?prefix=fast-host"
    skewed_clock(120.0)  # this host runs 120 s fast
    with OAuthServer(access_ttl_s=600) as server:
        store = open_store(url)
        TokenManager("api", config=_client_credentials(server), store=store).get_token()
        stored = store.load_token("api")
    assert stored is not None
    expected = _redis_time(redis_server.url) + 600
    assert abs(stored["expires_at"] - expected) < 5, stored["expires_at"] - expected


def test_a_slow_host_judges_expiry_by_the_stores_clock(
    redis_server: RedisServer, skewed_clock: Callable[[float], None]
) -> None:
    url = f"{redis_server.url}/0?prefix=slow-host"
    now = _redis_time(redis_server.url)
    store = open_store(url)
    # Expired 10 s ago by Redis's clock; to a host 400 s slow, it has 390 s left.
    store.save_token(
        "api", {"access_token": "at-expired", "expires_at": now - 10, "obtained_at": now - 3610}
    )
    skewed_clock(-400.0)
    with OAuthServer() as server:
        manager = TokenManager("api", config=_client_credentials(server), store=store)
        token = manager.get_token()
        assert token != "at-expired"
        assert server.count(grant="client_credentials") == 1
