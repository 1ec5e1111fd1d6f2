"""The change feed under faults: a killed or a silently black-holed subscription is replaced.

Every watcher connects through :class:`BlackHoleProxy`, which can close the
subscriptions or keep them open while dropping everything (a dead NAT entry,
a half-open TCP connection). The promise under test: a forced breaker state
reaches every process within ``CB_SYNC_INTERVAL_S + SILENCE_BOUND_S``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connector_resilience import Policy
from connector_resilience.backends import CircuitRecord
from connector_resilience.backends.redis import ANY_CONNECTOR, SILENCE_BOUND_S, RedisStore
from connector_resilience.circuit import CircuitBreaker
from tests.redis_server import BlackHoleProxy, RedisServer

_ROOT = Path(__file__).parent.parent
#: As many watching processes as the measurement in the issue had.
_PROCESSES = 12
_SYNC_INTERVAL_S = Policy().circuit.sync_interval_s
#: The promise: forced states everywhere within this.
_PROPAGATION_BOUND_S = _SYNC_INTERVAL_S + SILENCE_BOUND_S


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[BlackHoleProxy]:
    forwarder = BlackHoleProxy(redis_server.port)
    yield forwarder
    forwarder.stop()


def _proxied_url(proxy: BlackHoleProxy, tmp_path: Path) -> str:
    return f"redis://127.0.0.1:{proxy.port}/0?prefix={tmp_path.name}"


def test_a_silent_subscription_is_noticed_within_the_bound_and_replaced(
    proxy: BlackHoleProxy,
    redis_server: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    watcher = RedisStore(_proxied_url(proxy, tmp_path))
    writer = RedisStore(f"{redis_server.url}/0?prefix={tmp_path.name}")
    try:
        heard: list[tuple[str, float]] = []
        watcher.watch_circuits(lambda name: heard.append((name, time.monotonic())))
        writer.compare_and_set_circuit("api", 0, CircuitRecord(version=1))
        assert _wait_for(lambda: [n for n, _ in heard] == ["api"], 2)

        with caplog.at_level(logging.WARNING, logger="connector_resilience.store"):
            assert proxy.black_hole_subscriptions() == 1
            silenced, silenced_wall = time.monotonic(), time.time()
            # Published into the black hole: this one is lost...
            writer.compare_and_set_circuit("api", 1, CircuitRecord(version=2))
            # ...so the new subscription says "read everything".
            assert _wait_for(lambda: any(n == ANY_CONNECTOR for n, _ in heard), 5)
        lost = next(r for r in caplog.records if "change feed lost" in r.getMessage())
        assert "no answer to a ping" in lost.getMessage()
        assert lost.created - silenced_wall <= SILENCE_BOUND_S
        replaced = next(t for n, t in heard if n == ANY_CONNECTOR) - silenced
        assert replaced <= _PROPAGATION_BOUND_S
        # And the new subscription delivers again.
        writer.compare_and_set_circuit("api", 2, CircuitRecord(version=3))
        assert _wait_for(lambda: heard[-1][0] == "api", 2)
    finally:
        watcher.close()
        writer.close()


class _Watchers:
    """Processes that each keep a breaker on "api" over the proxy and report what they see."""

    def __init__(self, url: str, count: int) -> None:
        self.lines: list[list[str]] = [[] for _ in range(count)]
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "tests._redis_workers", "watch-breaker", url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=_ROOT,
                text=True,
            )
            for _ in range(count)
        ]
        self._readers = [
            threading.Thread(target=self._read, args=(i,), daemon=True) for i in range(count)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, index: int) -> None:
        stdout = self.processes[index].stdout
        assert stdout is not None
        for line in stdout:
            self.lines[index].append(line.strip())

    def wait_ready(self, timeout_s: float) -> bool:
        return _wait_for(lambda: all("ready" in lines for lines in self.lines), timeout_s)

    def seen_at(self, state: str, after: float) -> list[float | None]:
        """When each process saw ``state`` (monotonic, after ``after``), or None."""
        out: list[float | None] = []
        for lines in self.lines:
            times = [
                float(line.split()[1])
                for line in list(lines)
                if line.startswith(state + " ") and float(line.split()[1]) >= after
            ]
            out.append(times[0] if times else None)
        return out

    def close(self) -> None:
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        for reader in self._readers:
            reader.join(5)


def _faults(proxy: BlackHoleProxy) -> dict[str, Callable[[], int]]:
    return {
        "healthy": lambda: _PROCESSES,
        "killed": proxy.kill_subscriptions,
        "black-holed": proxy.black_hole_subscriptions,
    }


def test_forced_states_reach_every_process_within_the_bound_under_each_fault(
    proxy: BlackHoleProxy,
    redis_server: RedisServer,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    url = _proxied_url(proxy, tmp_path)
    watchers = _Watchers(url, _PROCESSES)
    operator = CircuitBreaker(
        "api", store=RedisStore(f"{redis_server.url}/0?prefix={tmp_path.name}")
    )
    measured: dict[str, float] = {}
    try:
        assert watchers.wait_ready(60), watchers.lines
        for fault, inject in _faults(proxy).items():
            for action, state in ((operator.force_open, "open"), (operator.reset, "closed")):
                # Every process has a live subscription before the fault.
                assert _wait_for(lambda: len(proxy.subscriptions()) >= _PROCESSES, 10)
                assert inject() == _PROCESSES, fault
                started = time.monotonic()
                action()

                def everywhere(state: str = state, started: float = started) -> bool:
                    return None not in watchers.seen_at(state, started)

                assert _wait_for(everywhere, 10), (
                    f"{fault}: {state} not everywhere: {watchers.lines}"
                )
                delays = [at - started for at in watchers.seen_at(state, started) if at]
                measured[f"{fault} {state}"] = max(delays)
                record_property(f"{fault}_{state}_max_ms", round(max(delays) * 1000, 1))
                record_property(f"{fault}_{state}_median_ms", round(sorted(delays)[6] * 1000, 1))
    finally:
        watchers.close()
        operator.store.close()
    print("propagation to", _PROCESSES, "processes, worst (s):", measured)
    for name, worst in measured.items():
        assert worst <= _PROPAGATION_BOUND_S, f"{name}: {worst:.3f}s"
