"""Issue 21, items 6 and 8: names that cannot be stored, and names a terminal must not see raw.

A lone surrogate (``os.fsdecode`` of bytes that are not UTF-8) is refused where
a name enters, with a clear error; a record that still cannot be stored (a
label holding one) is left out of its batch, never poisoning the rest. Names
holding ESC or BEL are stored as given, and the CLI prints them escaped.
"""

from __future__ import annotations

import os

import pytest

from connector_resilience import Policy, flush_metrics, resilient
from connector_resilience.backends import CircuitRecord, open_store
from connector_resilience.errors import ConfigurationError
from connector_resilience.metrics import record_call
from connector_resilience.metrics._buffer import _buffers
from connector_resilience.oauth2 import save_token
from tests._ops import run_cli

#: What os.environ or a file name holds for the Latin-1 bytes of "café".
UNDECODABLE = os.fsdecode(b"caf\xe9")


def test_a_name_with_a_lone_surrogate_is_refused_where_it_enters() -> None:
    assert UNDECODABLE == "caf\udce9"
    with pytest.raises(ConfigurationError, match=r"lone surrogate \('\\udce9' at index 3\)"):
        resilient(UNDECODABLE)
    with pytest.raises(ConfigurationError, match="operation name"):
        resilient("api", operation=UNDECODABLE)
    with pytest.raises(ConfigurationError, match="lone surrogate"):
        record_call(UNDECODABLE, "op", 1.0, "ok", store="memory://names")

    class Client:
        connector_name = UNDECODABLE

        @resilient(store="memory://names")
        def get(self) -> int:
            return 1

    with pytest.raises(ConfigurationError, match="lone surrogate"):
        Client().get()


def test_one_unstorable_record_never_poisons_a_metrics_batch(shared_store_url: str) -> None:
    """Records no store can encode are left out; the batch and later ones are written."""
    policy = Policy(store={"url": shared_store_url, "flush_interval_s": 3600})

    @resilient("good", policy=policy)
    def good() -> int:
        return 1

    # A label value from os.environ: JSONL and Redis cannot encode it, SQLite escapes it.
    @resilient("labelled", policy=policy, labels={"host": UNDECODABLE})
    def labelled() -> int:
        return 1

    for _ in range(5):
        good()
    labelled()
    (buffer,) = _buffers.values()
    # A row named before names were checked (or by code that skips the check):
    # no store can encode it.
    buffer.rows.append((1e9, UNDECODABLE, "op", 1.0, "ok", None, 1, True, None))
    for _ in range(5):
        good()
    assert flush_metrics()  # the store took the batch, less what it cannot hold
    assert buffer.dropped == 0
    assert len(buffer.rows) + len(buffer._retry) == 0
    store = open_store(shared_store_url)
    assert len(store.read_calls(since=0, connector="good")) == 10
    stored_labelled = len(store.read_calls(since=0, connector="labelled"))
    assert buffer.unwritable == 1 + (1 - stored_labelled)
    good()
    assert flush_metrics()  # and the next batch too
    assert len(store.read_calls(since=0, connector="good")) == 11


def test_cli_tables_escape_control_characters(tmp_path: os.PathLike[str]) -> None:
    """ESC and BEL in names and reasons reach the terminal as text, never as control codes."""
    url = f"jsonl://{tmp_path}/state"
    evil = "evil\x1b]0;owned\x07\x1b[31m"
    policy = Policy(store={"url": url})
    record_call(evil, "op\x1b[2J", 1.0, "error", "Boom", policy=policy)
    store = open_store(url)
    assert store.compare_and_set_circuit(
        evil, 0, CircuitRecord(version=1, state="open", reopen_at=4e9, reason="why\x07\x1b[5m")
    )
    save_token(evil, {"access_token": "at-1"}, store=store, policy=policy)
    for command in (["health"], ["health", evil], ["circuits"], ["tokens"]):
        result = run_cli("--store", url, *command)
        assert result.returncode in (0, 1, 2), result.stderr
        for control in ("\x1b", "\x07"):
            assert control not in result.stdout, (command, result.stdout)
        assert r"evil\x1b]0;owned\x07\x1b[31m" in result.stdout, (command, result.stdout)
