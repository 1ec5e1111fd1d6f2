"""What the reliability tests run in child processes: ``python -m tests.reliability._children``.

Everything goes through the public paths a service uses: ``@resilient`` calls
with ``flush_metrics()``, the shared ``CircuitBreaker`` and ``TokenManager``.
Children report to the parent with one JSON line per fact (``_support.emit``),
written unbuffered so that a SIGKILL right after loses nothing that was said.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import resource
import sys
import threading
import time
from typing import Any

from connector_resilience import (
    CircuitOpenError,
    OAuth2Config,
    Policy,
    TokenManager,
    flush_metrics,
    resilient,
)
from connector_resilience.backends import CircuitRecord, open_store
from connector_resilience.circuit import StateChange, breaker_for
from connector_resilience.metrics._buffer import _buffers
from tests.reliability._support import LoggingStore, drop_file_privileges, emit


class BoomError(Exception):
    """The dependency failed."""


class _Counter(logging.Handler):
    """Counts warnings the library logs (a burst of faults must log once, not per call)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def crash(url: str, token_url: str, client_id: str, client_secret: str, run: int) -> None:
    """Calls, breaker transitions and token refreshes forever, acknowledging each one."""
    store = open_store(url)
    policy = Policy(
        store={"url": url, "flush_interval_s": 3600},
        circuit={
            "failures_to_open": 2,
            "cooldown_s": 0.005,
            "half_open_prob": 1.0,
            "sync_interval_s": 0,
        },
        retry={"max_attempts": 1},
    )
    connector = f"crash-{run}"

    @resilient(connector, policy=policy, store=store, retry_on=BoomError)
    def call(fail: bool) -> int:
        if fail:
            raise BoomError
        return 1

    breaker = breaker_for(connector, policy=policy, store=store)
    config = OAuth2Config(
        token_url=token_url,
        client_id=client_id,
        client_secret=client_secret,
        grant="client_credentials",
    )
    manager = TokenManager(f"tok-{run}", config=config, store=store, policy=policy)
    rng = random.Random(run)
    calls = 0
    while True:
        with contextlib.suppress(BoomError, CircuitOpenError):
            call(rng.random() < 0.5)
        calls += 1
        if flush_metrics():
            emit(kind="calls", n=calls)
        emit(kind="version", v=breaker.record.version)
        if calls % 3 == 0:
            token = manager.refresh()
            emit(kind="token", value=token.access_token.get_secret_value())


def store_fault(url: str, mode: str) -> None:
    """Calls before, during and after a store fault the parent (or ``mode``) causes.

    Modes: ``parent`` (the parent breaks and heals the store between the
    phases), ``fsize`` (this process lowers its own RLIMIT_FSIZE below the
    files' sizes: a full disk, then raises it back).
    """
    if mode == "parent":
        drop_file_privileges()  # root would write through a read-only folder
    counter = _Counter()
    logging.getLogger("connector_resilience").addHandler(counter)
    store = open_store(url)
    policy = Policy(
        store={"url": url, "flush_interval_s": 3600, "buffer_max": 1000},
        circuit={"failures_to_open": 3, "cooldown_s": 3600, "sync_interval_s": 0},
        retry={"max_attempts": 1},
    )

    @resilient("faulty", policy=policy, store=store, retry_on=BoomError)
    def call(fail: bool) -> int:
        if fail:
            raise BoomError
        return 1

    breaker = breaker_for("faulty", policy=policy, store=store)
    for _ in range(20):
        call(False)
    assert flush_metrics()
    emit(phase=1)

    assert sys.stdin.readline().strip() == "fault"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if mode == "fsize":
        paths = getattr(store, "paths", None)
        # JSONL: room for a few more lines and a torn one; SQLite: its WAL and
        # database are both past 4096 bytes already.
        limit = os.path.getsize(paths["metrics"]) + 1000 if isinstance(paths, dict) else 4096
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    slowest = 0.0
    outcomes = {"ok": 0, "error": 0, "rejected": 0}
    for fail in [False] * 30 + [True] * 3 + [False] * 5:
        started = time.monotonic()
        try:
            call(fail)
            outcomes["ok"] += 1
        except BoomError:
            outcomes["error"] += 1
        except CircuitOpenError:
            outcomes["rejected"] += 1
        slowest = max(slowest, time.monotonic() - started)
    flushed = flush_metrics()
    (buffer,) = _buffers.values()
    emit(
        phase=2,
        flushed=flushed,
        slowest_call_s=slowest,
        outcomes=outcomes,
        breaker=breaker.state,
        pending=len(buffer.rows) + len(buffer.rejections) + sum(r.calls for r in buffer._retry),
        warnings=list(counter.messages),
    )

    assert sys.stdin.readline().strip() == "heal"
    if mode == "fsize":
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    started = time.monotonic()
    while not flush_metrics():
        assert time.monotonic() - started < 10, "the store did not recover"
        time.sleep(0.01)  # the store is back; the buffer writes on the next flush
    recovery_s = time.monotonic() - started
    records = open_store(url).read_calls(since=0, connector="faulty")
    by_status: dict[str, int] = {}
    for record in records:
        # A rejected record stands for every rejection of its flush interval.
        by_status[record.status] = by_status.get(record.status, 0) + record.calls
    stats = getattr(store, "stats", None)
    emit(
        phase=3,
        recovery_s=recovery_s,
        by_status=by_status,
        total=sum(record.calls for record in records),
        skipped=getattr(stats, "skipped_lines", 0),
        dropped=buffer.dropped,
        warnings=counter.messages,
    )


def hammer(
    url: str,
    worker: int,
    threads: int,
    calls: int,
    seed: int,
    healthy: bool,
    results: Any,
    hold_s: float = 0.0,
) -> None:
    """``threads`` threads calling one breaker; report every write and StateChange seen.

    ``hold_s``: how long each call takes (a slow dependency), so that probes
    overlap and contend for the half-open slots.
    """
    written: list[dict[str, Any]] = []
    lock = threading.Lock()

    def log(connector: str, record: CircuitRecord) -> None:
        with lock:
            written.append(record.to_json())

    store = LoggingStore(open_store(url), log)
    policy = Policy(
        store={"url": url, "flush_interval_s": 3600},
        circuit={
            "failures_to_open": 3,
            "cooldown_s": 0.002,
            "half_open_prob": 0.5,
            "half_open_max_probes": 2,
            "sync_interval_s": 0.002,
        },
        retry={"max_attempts": 2, "base_ms": 0, "cap_ms": 1, "jitter_pct": 0},
    )
    changes: list[tuple[str, str]] = []

    def on_change(change: StateChange) -> None:
        changes.append((change.old, change.new))

    @resilient(
        "hammered",
        policy=policy,
        store=store,
        retry_on=BoomError,
        on_state_change=on_change,
    )
    def call(fail: bool) -> int:
        if hold_s:
            time.sleep(hold_s)  # the dependency's own latency
        if fail:
            raise BoomError
        return 1

    def run(index: int) -> None:
        rng = random.Random(seed * 1000 + worker * 10 + index)
        for _ in range(calls):
            with contextlib.suppress(BoomError, CircuitOpenError):
                call(not healthy and rng.random() < 0.4)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    flushed = flush_metrics()
    results.put({"worker": worker, "written": written, "changes": changes, "flushed": flushed})


class _DyingHolder:
    """A store that lets its TokenManager take the token lock, save, then hang until killed."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.url = inner.url

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @contextlib.contextmanager
    def token_lock(self, connector: str, **kwargs: Any) -> Any:
        with self._inner.token_lock(connector, **kwargs):
            emit(kind="locked", lease_s=kwargs.get("lease_s"))
            assert sys.stdin.readline().strip() == "go"
            yield

    def save_token(self, connector: str, token: Any) -> None:
        self._inner.save_token(connector, token)
        emit(kind="saved", access_token=token["access_token"])
        sys.stdin.readline()  # never answered: the parent kills this process here
        os._exit(3)


def token_holder(
    url: str, token_url: str, client_id: str, client_secret: str, lock_timeout_s: str
) -> None:
    """A refresh that takes the lock, saves the rotated token and dies before releasing it."""
    policy = Policy(store={"url": url}, oauth={"lock_timeout_s": float(lock_timeout_s)})
    config = OAuth2Config(token_url=token_url, client_id=client_id, client_secret=client_secret)
    store = _DyingHolder(open_store(url))
    TokenManager("api", config=config, store=store, policy=policy).refresh()


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "crash":
        crash(rest[0], rest[1], rest[2], rest[3], int(rest[4]))
    elif mode == "store-fault":
        store_fault(rest[0], rest[1])
    elif mode == "token-holder":
        token_holder(*rest)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
