"""The token refresh lock across processes: exclusive, leased, released only by its owner."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from connector_resilience.backends.redis import RedisStore
from tests import _redis_workers
from tests.redis_server import RedisServer, open_redis_store

_ROOT = Path(__file__).parent.parent


def test_lock_excludes_other_processes(redis_url: str, redis_server: RedisServer) -> None:
    # Each process increments a plain key by GET then SET inside the lock:
    # the total is exact only if no two processes were ever inside together.
    counter = f"{open_redis_store(redis_url).prefix}:test-counter"
    ctx = multiprocessing.get_context("spawn")
    processes = [
        ctx.Process(target=_redis_workers.count_under_token_lock, args=(redis_url, counter, 25))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    raw = redis.Redis.from_url(f"{redis_server.url}/0", decode_responses=True)
    assert raw.get(counter) == "100"
    raw.close()


def test_a_dead_holders_lock_frees_when_its_lease_ends(redis_url: str) -> None:
    lease_s = 1.0
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests._redis_workers", "hold-token-lock", redis_url, str(lease_s)],
        stdout=subprocess.PIPE,
        cwd=_ROOT,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    holder.stdout.close()
    killed = time.monotonic()
    store = open_redis_store(redis_url)
    with store.token_lock("api", timeout_s=5):
        waited = time.monotonic() - killed
    # Held until the lease ran out, not a moment longer.
    assert 0.5 <= waited <= lease_s + 0.2


def test_only_the_owner_releases(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = RedisStore(redis_url)
    first_in = threading.Event()
    second_in = threading.Event()
    first_may_leave = threading.Event()
    second_may_leave = threading.Event()

    def first() -> None:
        # A refresh that outlives its 0.2 s lease.
        with store.token_lock("api", timeout_s=0.2, lease_s=0.2):
            first_in.set()
            first_may_leave.wait(10)

    def second() -> None:
        with store.token_lock("api", timeout_s=5):
            second_in.set()
            second_may_leave.wait(10)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    with caplog.at_level(logging.WARNING, logger="connector_resilience.store"):
        threads[0].start()
        assert first_in.wait(5)
        threads[1].start()
        assert second_in.wait(5)  # after the first lease ended
        first_may_leave.set()
        threads[0].join(5)
        # The first holder's exit must not have released the second's lock.
        with pytest.raises(TimeoutError):
            with store.token_lock("api", timeout_s=0.05):
                pass
        second_may_leave.set()
        threads[1].join(5)
    assert "expired before release" in caplog.text
    with store.token_lock("api", timeout_s=1):
        pass
    store.close()
