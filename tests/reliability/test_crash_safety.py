"""Issue 9, point 1: writers killed with SIGKILL lose nothing they acknowledged.

A child process makes ``@resilient`` calls (flushing metrics after each),
moves a shared breaker through every state, and refreshes an OAuth2 token
through ``TokenManager``; it acknowledges each step on stdout. The parent kills
it at a random moment (fixed seed), three times per store, then opens the store
afresh, as a restarted service would.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connector_resilience import Policy, flush_metrics, resilient
from connector_resilience.backends import close_all_stores, open_store
from connector_resilience.backends.jsonl import JsonlStore
from connector_resilience.circuit import breaker_for
from connector_resilience.oauth2 import load_token, save_token
from tests.oauth_server import CLIENT_ID, CLIENT_SECRET, OAuthServer
from tests.reliability._support import child, json_lines

pytestmark = pytest.mark.slow

RUNS = 3
#: Breaker writes a child acknowledges before the kill may come.
_MIN_TRANSITIONS = 5


@pytest.fixture(scope="module")
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer() as server:
        yield server


def _run_and_kill(url: str, server: OAuthServer, run: int, rng: random.Random) -> bytes:
    process = child("crash", url, server.token_url, CLIENT_ID, CLIENT_SECRET, str(run), stdout=-1)
    assert process.stdout is not None
    out = bytearray()
    # Kill at a random point once the child is under way: it has made calls
    # and moved the breaker a few times (counted, not timed, so that a loaded
    # machine cannot kill it before it has done enough to check).
    started: float | None = None
    lifetime = rng.uniform(0.1, 0.4)
    deadline = time.monotonic() + 30
    calls = versions = 0
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        out += line
        calls += b'"calls"' in line
        versions += b'"version"' in line
        if started is None and calls and versions > _MIN_TRANSITIONS:
            started = time.monotonic()
        if started is not None and time.monotonic() - started >= lifetime:
            break
    process.send_signal(signal.SIGKILL)
    out += process.stdout.read()
    process.wait(10)
    assert process.returncode == -signal.SIGKILL, "the child died before it was killed"
    return bytes(out)


def test_sigkill_loses_no_acknowledged_call_transition_or_token(
    shared_store_url: str, oauth: OAuthServer
) -> None:
    rng = random.Random(9)
    outputs = [_run_and_kill(shared_store_url, oauth, run, rng) for run in range(RUNS)]
    close_all_stores()  # a restarted process opens the store afresh
    store = open_store(shared_store_url)
    for run, raw in enumerate(outputs):
        facts = json_lines(raw)
        calls = [f["n"] for f in facts if f.get("kind") == "calls"]
        versions = [f["v"] for f in facts if f.get("kind") == "version"]
        tokens = [f["value"] for f in facts if f.get("kind") == "token"]
        assert calls, f"run {run} never got going"
        assert versions
        assert tokens

        # Metrics: every acknowledged call is there, and none twice (one may be in flight).
        written = store.read_calls(since=0, connector=f"crash-{run}")
        assert calls[-1] <= len(written) <= calls[-1] + 1, (run, calls[-1], len(written))

        # Breaker: a complete record, the last acknowledged write or one in flight after it.
        circuit = store.get_circuit(f"crash-{run}")
        assert circuit is not None
        assert versions[-1] <= circuit.version <= versions[-1] + 2
        assert sum(f.get("kind") == "version" for f in facts) > _MIN_TRANSITIONS

        # Token: whole, issued by the server, and not older than the last acknowledged one.
        token = load_token(f"tok-{run}", store=store)
        assert token is not None
        value = token.access_token.get_secret_value()
        assert value in oauth.issued
        assert oauth.issued.index(value) >= oauth.issued.index(tokens[-1])
    stats = getattr(store, "stats", None)
    if stats is not None:
        # A kill can tear at most the line being written, once per file per kill.
        assert stats.skipped_lines <= 3 * RUNS


def _tear(path: Path) -> None:
    """Append half a line, as a writer killed in the middle of a write leaves it."""
    with path.open("ab") as handle:
        handle.write(b'{"connector":"api","torn":tr')


def test_a_torn_final_jsonl_line_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"jsonl://{tmp_path / 'state'}"
    policy = Policy(
        store={"url": url, "flush_interval_s": 3600, "metrics_mode": "raw"},
        circuit={"failures_to_open": 1},
    )

    def connector() -> Callable[[bool], int]:
        @resilient("api", policy=policy, retry_on=())
        def call(fail: bool) -> int:
            if fail:
                raise RuntimeError("down")
            return 1

        return call

    call = connector()
    for _ in range(3):
        call(False)
    with pytest.raises(RuntimeError):
        call(True)  # opens the breaker: one circuit line
    save_token("api", {"access_token": "at-complete", "expires_in": 60}, policy=policy)
    assert flush_metrics()
    store = open_store(url)
    assert isinstance(store, JsonlStore)
    for path in store.paths.values():
        _tear(path)

    close_all_stores()
    caplog.set_level(logging.WARNING, logger="connector_resilience")
    store = open_store(url)
    assert isinstance(store, JsonlStore)
    # Readers stop at the last complete line: the torn one is not read (nor guessed at).
    assert len(store.read_calls(since=0, connector="api")) == 4
    circuit = store.get_circuit("api")
    assert circuit is not None
    assert circuit.state == "open"
    token = load_token("api", store=store)
    assert token is not None
    assert token.access_token.get_secret_value() == "at-complete"
    assert store.stats.skipped_lines == 0

    # The next writer closes the torn line off, warns once per file, and its own
    # record is never swallowed by the torn one.
    breaker = breaker_for("api", policy=policy, store=store)
    breaker.reset()
    save_token("api", {"access_token": "at-after", "expires_in": 60}, store=store, policy=policy)
    connector()(False)  # a restarted service's first call
    assert flush_metrics()
    torn_warnings = [r for r in caplog.records if "incomplete line" in r.getMessage()]
    assert len(torn_warnings) == 3, [r.getMessage() for r in caplog.records]
    assert store.stats.torn_lines == 3
    assert len(store.read_calls(since=0, connector="api")) == 5
    assert store.get_circuit("api") is not None
    assert breaker.state == "closed"
    token = load_token("api", store=store)
    assert token is not None
    assert token.access_token.get_secret_value() == "at-after"
    # Each torn line is now a complete bad line: skipped, counted, warned about.
    assert store.stats.skipped_lines == 3
    assert any("skipped 1 unreadable line" in r.getMessage() for r in caplog.records)
