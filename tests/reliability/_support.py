"""Helpers shared by the reliability tests (imported by tests and by child processes)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from connector_resilience.backends import CircuitRecord, Store

#: The repository root: child processes run from it so ``tests`` is importable.
ROOT = Path(__file__).resolve().parents[2]

#: Record-level breaker edges the consecutive-failure model may write.
LEGAL_EDGES = frozenset(
    {
        ("closed", "closed"),
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "half_open"),
        ("half_open", "closed"),
        ("half_open", "open"),
    }
)


def drop_file_privileges() -> None:
    """As root, give up the capabilities that bypass file modes (DAC override, read search).

    Root stays root (its files stay its own, Python stays readable), but a folder
    of mode 0500 is then read-only to it, as it is to any other user.
    """
    if os.geteuid() != 0:
        return
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    libc = ctypes.CDLL(None, use_errno=True)
    header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    dac = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    data[0].effective &= ~dac
    data[0].permitted &= ~dac
    data[0].inheritable &= ~dac
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def child(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    """``python -m tests.reliability._children ARGS`` from the repository root."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability._children", *args],
        cwd=ROOT,
        **kwargs,
    )


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout_s`` (a deadline, not a guess)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.002)


class LoggingStore:
    """A real store that records every successful breaker write (version -> record).

    Everything else is passed through, so the breaker sees the real backend
    (change feed, async twins and all).
    """

    def __init__(self, inner: Store, log: Callable[[str, CircuitRecord], object]) -> None:
        self._inner = inner
        self._log = log
        self.url = inner.url

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)  # AttributeError if the backend lacks it
        if name != "acompare_and_set_circuit":
            return attribute

        async def acompare_and_set_circuit(
            connector: str, expected_version: int, record: CircuitRecord
        ) -> bool:
            written = bool(await attribute(connector, expected_version, record))
            if written:
                self._log(connector, record)
            return written

        return acompare_and_set_circuit

    def compare_and_set_circuit(
        self, connector: str, expected_version: int, record: CircuitRecord
    ) -> bool:
        written = self._inner.compare_and_set_circuit(connector, expected_version, record)
        if written:
            self._log(connector, record)
        return written


def check_history(records: Sequence[CircuitRecord], *, max_probes: int, threshold: int) -> int:
    """Assert a breaker's write history is a legal walk; return its last version.

    Every version from 1 to the last was written exactly once, each write moved
    the state along a legal edge, and no half-open record ever held more live
    probes than the cap.
    """
    by_version: dict[int, CircuitRecord] = {}
    for record in records:
        assert record.version not in by_version, f"version {record.version} written twice"
        by_version[record.version] = record
    last = max(by_version, default=0)
    assert sorted(by_version) == list(range(1, last + 1)), "versions must go up by exactly 1"
    previous = CircuitRecord()
    for version in range(1, last + 1):
        record = by_version[version]
        edge = (previous.state, record.state)
        assert edge in LEGAL_EDGES, f"v{version}: impossible transition {edge}"
        if edge == ("closed", "closed"):
            assert record.failures in (0, previous.failures + 1), f"v{version}: failure count"
        if edge == ("closed", "open"):
            assert previous.failures + 1 >= threshold, f"v{version}: opened too early"
        if edge == ("open", "half_open"):
            assert previous.reopen_at is not None
            assert record.changed_at >= previous.reopen_at - 1e-6, f"v{version}: probed early"
        live = [p for p in record.probes if p[1] > record.changed_at]
        assert len(live) <= max_probes, f"v{version}: {len(live)} probes > cap {max_probes}"
        previous = record
    return last


def check_changes(changes: Sequence[tuple[str, str]]) -> None:
    """StateChanges one process saw: a chain (each starts where the last ended), no self-loops.

    The first one may start anywhere: the breaker may have read a state before
    its listener was added.
    """
    state = changes[0][0] if changes else "closed"
    for index, (old, new) in enumerate(changes):
        assert old != new, f"change {index}: {old} -> {new} is not a change"
        assert old == state, f"change {index}: {old} -> {new}, but the breaker was {state}"
        state = new


@contextmanager
def background_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in its own thread (servers the code under test must not share)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def json_lines(raw: bytes) -> list[dict[str, Any]]:
    """The JSON objects a child printed, one per line (other lines ignored)."""
    return [json.loads(line) for line in raw.splitlines() if line.startswith(b"{")]


def emit(**fields: Any) -> None:
    """Print one JSON line to the parent, unbuffered (it may be SIGKILLed right after)."""
    os.write(1, json.dumps(fields).encode() + b"\n")
