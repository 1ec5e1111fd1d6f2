"""Issue 9, point 3: a store that refuses writes never fails or stalls a decorated call.

Faults: a read-only folder, a full disk (RLIMIT_FSIZE, in a child process), a
SQLite database locked by another connection (BEGIN EXCLUSIVE), and a Redis
server stopped mid-run and started again. In each, calls keep working, metrics
wait in the buffer (one warning per burst, not per call), the breaker runs on
local state, and once the store is back the buffered metrics arrive exactly
once, without restarting the process.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connector_resilience import CircuitOpenError, Policy, flush_metrics, resilient
from connector_resilience.backends import open_store
from connector_resilience.circuit import breaker_for
from connector_resilience.metrics._buffer import _buffers
from tests.redis_server import RedisServer
from tests.reliability._support import ROOT, child, wait_until

pytestmark = pytest.mark.slow

#: Phase 1 writes 20 calls; phase 2 (store broken) makes 30 ok, 3 failing, 5 more.
PHASE_1 = 20
PHASE_2 = 38


class BoomError(Exception):
    """The dependency failed."""


def _set_modes(folder: Path, *, writable: bool) -> None:
    for path in folder.iterdir():
        path.chmod(0o600 if writable else 0o400)
    folder.chmod(0o700 if writable else 0o500)


@pytest.fixture(
    scope="module",
    params=[
        ("jsonl", "readonly"),
        ("jsonl", "fsize"),
        ("sqlite", "fsize"),
    ],
    ids="-".join,
)
def fault_run(request: pytest.FixtureRequest) -> Iterator[dict[Any, Any]]:
    """Run tests/reliability/_children.py store-fault once per (backend, fault); its report."""
    backend, mode = request.param
    base = Path(tempfile.mkdtemp(prefix="cr-fault-"))
    folder = base / "state"
    url = f"jsonl://{folder}" if backend == "jsonl" else f"sqlite:///{folder}/state.db"
    process = child(
        "store-fault", url, "fsize" if mode == "fsize" else "parent", stdin=-1, stdout=-1
    )
    assert process.stdin is not None
    assert process.stdout is not None
    report: dict[Any, Any] = {"backend": backend, "mode": mode}
    try:
        report[1] = json.loads(process.stdout.readline())
        if mode == "readonly":
            _set_modes(folder, writable=False)
        process.stdin.write(b"fault\n")
        process.stdin.flush()
        report[2] = json.loads(process.stdout.readline())
        if mode == "readonly":
            _set_modes(folder, writable=True)
        process.stdin.write(b"heal\n")
        process.stdin.flush()
        report[3] = json.loads(process.stdout.readline())
        assert process.wait(30) == 0
        yield report
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_calls_go_on_and_buffered_metrics_arrive_exactly_once(fault_run: dict[Any, Any]) -> None:
    during, after = fault_run[2], fault_run[3]
    # Calls were neither failed nor stalled by the store.
    assert sum(during["outcomes"].values()) == PHASE_2
    assert during["outcomes"]["error"] == 3
    assert during["slowest_call_s"] < 1.0
    # Metrics waited in the buffer; the burst was logged a few times, not once per call.
    assert during["flushed"] is False
    assert during["pending"] == PHASE_2
    assert 1 <= len(during["warnings"]) <= 4, during["warnings"]
    # Back: the same process writes what it kept, once, and nothing was dropped.
    assert after["dropped"] == 0
    assert after["total"] == PHASE_1 + PHASE_2, after
    assert after["skipped"] == 0
    expected = dict(during["outcomes"])
    expected["ok"] += PHASE_1
    assert after["by_status"] == {k: v for k, v in expected.items() if v}
    assert any("works again" in m for m in after["warnings"])
    assert after["recovery_s"] < 2.0


def test_breaker_runs_on_local_state_while_the_store_refuses_writes(
    fault_run: dict[Any, Any],
) -> None:
    during = fault_run[2]
    # Three failures open the breaker even though the store took none of the writes,
    # and it stays open: the store's stale "closed" record must not win it back.
    assert during["outcomes"]["rejected"] == 5, during
    assert during["breaker"] == "open"


# A locked SQLite database ------------------------------------------------------


def _run_bounded(fn: Callable[[], object], timeout_s: float) -> tuple[bool, float]:
    """Run ``fn`` in a thread; (finished within ``timeout_s``, seconds it took so far)."""
    done = threading.Event()

    def target() -> None:
        try:
            fn()
        except (BoomError, CircuitOpenError):
            pass
        finally:
            done.set()

    started = time.monotonic()
    threading.Thread(target=target, daemon=True).start()
    finished = done.wait(timeout_s)
    return finished, time.monotonic() - started


def _locked_sqlite(tmp_path: Path) -> tuple[Policy, Path]:
    path = tmp_path / "state.db"
    policy = Policy(
        store={"url": f"sqlite:///{path}", "flush_interval_s": 3600},
        circuit={"failures_to_open": 3, "sync_interval_s": 0},
        retry={"max_attempts": 1},
    )
    return policy, path


def test_locked_sqlite_successful_calls_go_on_and_metrics_arrive_once(tmp_path: Path) -> None:
    policy, path = _locked_sqlite(tmp_path)

    @resilient("locked", policy=policy, retry_on=BoomError)
    def call() -> int:
        return 1

    for _ in range(PHASE_1):
        call()
    assert flush_metrics()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        finished, took = _run_bounded(lambda: [call() for _ in range(PHASE_2)], 2.0)
        assert finished, f"successful calls stalled {took:.1f}s behind the lock"
        (buffer,) = _buffers.values()
        assert len(buffer.rows) == PHASE_2  # waiting, not lost, not written
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert flush_metrics()
    summary = open_store(f"sqlite:///{path}").read_calls(since=0, connector="locked")
    assert len(summary) == PHASE_1 + PHASE_2


#: What docs/reliability.md promises: a breaker read or write waits at most 1 s
#: for a locked SQLite database. Slack: scheduling on a loaded machine.
BREAKER_WAIT_S = 1.0
SLACK_S = 0.3


def test_locked_sqlite_a_failing_call_is_not_stalled_by_the_lock(tmp_path: Path) -> None:
    policy, path = _locked_sqlite(tmp_path)

    @resilient("locked", policy=policy, retry_on=BoomError)
    def call(fail: bool) -> int:
        if fail:
            raise BoomError
        return 1

    call(False)
    breaker = breaker_for("locked", policy=policy, store=open_store(f"sqlite:///{path}"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        finished, took = _run_bounded(lambda: call(True), BREAKER_WAIT_S + 2)
        # The failure was counted, on local state: the store could not take it.
        assert breaker.record.failures == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert finished, f"a failing call took {took:.1f}s behind the SQLite lock"
    assert took < BREAKER_WAIT_S + SLACK_S, f"the breaker waited {took:.2f}s for the lock"
    # Once the lock is gone, the failure reaches the store: the metrics and the breaker.
    assert flush_metrics()
    statuses = [r.status for r in open_store(f"sqlite:///{path}").read_calls(since=0)]
    assert statuses == ["ok", "error"]
    with pytest.raises(BoomError):
        call(True)  # the next write that works carries the first failure with it
    stored = open_store(f"sqlite:///{path}").get_circuit("locked")
    assert stored is not None
    assert stored.failures == 2


# Redis stopped mid-run and started again ---------------------------------------


def test_redis_stopped_mid_run_then_restarted(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    url = f"{server.url}/0?prefix=faults"
    policy = Policy(
        store={"url": url, "flush_interval_s": 3600},
        circuit={"failures_to_open": 3, "sync_interval_s": 0, "cooldown_s": 3600},
        retry={"max_attempts": 1},
    )

    @resilient("faulty", policy=policy, retry_on=BoomError)
    def call(fail: bool) -> int:
        if fail:
            raise BoomError
        return 1

    for _ in range(PHASE_1):
        call(False)
    assert flush_metrics()
    store = open_store(url)
    assert len(store.read_calls(since=0, connector="faulty")) == PHASE_1

    server.stop()
    outcomes = {"ok": 0, "error": 0, "rejected": 0}
    slowest = 0.0
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
    assert outcomes == {"ok": 30, "error": 3, "rejected": 5}  # the breaker opened locally
    assert breaker_for("faulty", policy=policy, store=store).state == "open"
    assert slowest < 1.5
    assert flush_metrics() is False

    server.start()  # same port, empty (no persistence)
    restarted = time.monotonic()
    wait_until(flush_metrics, timeout_s=10, what="the buffer to reach the restarted Redis")
    recovery_s = time.monotonic() - restarted
    records = store.read_calls(since=0, connector="faulty")
    # The buffered ones, once (the server lost the rest); a rejected record counts
    # every rejection of its flush interval.
    assert sum(r.calls for r in records) == PHASE_2
    by_status = {s: sum(r.calls for r in records if r.status == s) for s in outcomes}
    assert by_status == outcomes
    assert recovery_s < 2.0
    print(f"\nredis restart: buffered metrics written {recovery_s * 1000:.0f} ms after restart")


def test_a_read_only_folder_stops_the_child_even_as_root(tmp_path: Path) -> None:
    """Guard for the faults above: after drop_file_privileges, mode 0500 means read-only."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    script = (
        "from tests.reliability._support import drop_file_privileges; drop_file_privileges(); "
        f"open({str(folder / 'x')!r}, 'w')"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, capture_output=True, check=False
        )
    finally:
        folder.chmod(0o700)
    assert result.returncode != 0
    assert b"PermissionError" in result.stderr
