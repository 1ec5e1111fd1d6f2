"""The reliability suite checks per-attempt records: it runs with raw metrics.

Crash safety, store faults and hostile files are asserted record by record
(every acknowledged call is there exactly once); raw mode writes those
records. Aggregated rows' behaviour under store faults is in
tests/test_aggregated_metrics.py.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _raw_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Children inherit the environment, so they write raw records too."""
    monkeypatch.setenv("CONNECTOR_METRICS_MODE", "raw")
