"""The retry budget's stored state: compact, and the earlier form still read.

A budget is stored as a flat list of integers, ``[slot, calls, retries, ...]``;
files written before that hold ``{"slots": [[slot, calls, retries], ...]}``.
Both are read by the JSONL and SQLite stores, on real files.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path

import pytest

from connector_resilience.backends import LimitStore, open_store
from connector_resilience.backends._limit_state import BUDGET_SLOTS, spend_budget

RULE = {"ratio": 0.2, "min_per_s": 0.0, "window_s": 600.0}


def _current_slot() -> int:
    return math.floor(time.time() / (RULE["window_s"] / BUDGET_SLOTS))


def _write_old_form(url: str, folder: Path, state: object) -> None:
    if url.startswith("jsonl://"):
        (folder / "load_control.json").write_text(json.dumps({"budget:api": state}))
    else:
        store = open_store(url)
        assert isinstance(store, LimitStore)
        store.spend_retry_budget("other", calls=0, retry=False, **RULE)  # makes the table
        with sqlite3.connect(folder / "state.db") as conn:
            conn.execute(
                "INSERT INTO load_control (key, data) VALUES (?, ?)",
                ("budget:api", json.dumps(state)),
            )


@pytest.fixture(params=["jsonl", "sqlite"])
def url_and_folder(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    if request.param == "jsonl":
        return f"jsonl:///{tmp_path}", tmp_path
    return f"sqlite:///{tmp_path / 'state.db'}", tmp_path


def test_a_budget_stored_in_the_earlier_form_keeps_its_calls(
    url_and_folder: tuple[str, Path],
) -> None:
    url, folder = url_and_folder
    _write_old_form(url, folder, {"slots": [[_current_slot(), 100, 0]]})
    store = open_store(url)
    assert isinstance(store, LimitStore)
    # The 100 calls written before earn 0.2 x 100 = 20 retries, and no more.
    granted = [store.spend_retry_budget("api", calls=0, retry=True, **RULE) for _ in range(21)]
    assert granted == [True] * 20 + [False]


def test_an_unreadable_budget_starts_afresh(url_and_folder: tuple[str, Path]) -> None:
    url, folder = url_and_folder
    _write_old_form(url, folder, ["not", "numbers"])
    store = open_store(url)
    assert isinstance(store, LimitStore)
    assert not store.spend_retry_budget("api", calls=0, retry=True, **RULE)  # no calls yet
    assert store.spend_retry_budget("api", calls=5, retry=True, **RULE)  # counting again


def test_the_state_is_a_few_integers_oldest_slot_first() -> None:
    state, _ = spend_budget(None, 0.5, calls=3, retry=False, **RULE)
    state, granted = spend_budget(state, 120.5, calls=5, retry=True, **RULE)
    assert granted
    assert list(state) == [0, 3, 0, 2, 5, 1]
    # A slot past the window drops out whole.
    state, _ = spend_budget(state, 600.5, calls=1, retry=False, **RULE)
    assert list(state) == [2, 5, 1, 10, 1, 0]
