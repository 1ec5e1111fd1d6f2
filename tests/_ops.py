"""Helpers for the operations tests: run the real command, fill stores with real calls."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connector_resilience import CircuitOpenError, Policy, resilient, testing
from connector_resilience.metrics import flush_metrics

#: The source tree under test (the worktree, not whatever the venv installed).
ROOT = Path(__file__).resolve().parent.parent


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for the command: ours (already cleaned by conftest) plus the tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``connector-resilience ARGS`` as a separate process and capture its output.

    ``python -m connector_resilience.cli`` runs the same ``main()`` the installed
    console script calls, but from this source tree: the console script on PATH
    may belong to another checkout's editable install.
    """
    return subprocess.run(
        [sys.executable, "-m", "connector_resilience.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(**env),
        check=False,
    )


def policy_for(url: str, *, metrics_mode: str = "aggregated") -> Policy:
    """Fast retries, a breaker that opens after 3 failed calls and probes every call."""
    return Policy(
        store={"url": url, "metrics_mode": metrics_mode},
        retry={"max_attempts": 2, "base_ms": 1, "cap_ms": 2, "jitter_pct": 0.0},
        circuit={"failures_to_open": 3, "cooldown_s": 30, "half_open_prob": 1.0},
    )


class Connectors:
    """Three decorated connectors on one store: healthy, degraded and down.

    * ``billing.charge`` always succeeds (healthy);
    * ``search.query`` fails every other attempt; the retry hides it from the
      caller, but half the attempts failing is degraded;
    * ``inventory.get_item`` always raises ConnectionError; after 3 failed
      calls its breaker opens (down).
    """

    def __init__(
        self,
        url: str,
        *,
        latency_s: Callable[[], float] = lambda: 0.0,
        metrics_mode: str = "aggregated",
    ) -> None:
        policy = policy_for(url, metrics_mode=metrics_mode)
        self.attempts = 0
        self._latency_s = latency_s

        @resilient("billing", policy=policy)
        def charge(cents: int) -> int:
            self._pause()
            return cents

        @resilient("search", policy=policy)
        def query(text: str) -> str:
            self._pause()
            self.attempts += 1
            if self.attempts % 2:
                raise TimeoutError("search timed out")
            return text

        @resilient("inventory", policy=policy)
        def get_item(item: int) -> int:
            self._pause()
            raise ConnectionError(f"inventory unreachable for item {item}")

        self.charge, self.query, self.get_item = charge, query, get_item

    def _pause(self) -> None:
        seconds = self._latency_s()
        if seconds > 0:
            time.sleep(seconds)

    def run(self, *, billing: int = 10, search: int = 10, inventory: int = 5) -> dict[str, Any]:
        """Make calls; returns what the callers saw."""
        seen: dict[str, Any] = {"inventory_errors": 0, "inventory_rejected": 0}
        with testing.no_waits():
            for i in range(billing):
                self.charge(i)
            for i in range(search):
                self.query(f"q{i}")
            for i in range(inventory):
                try:
                    self.get_item(i)
                except ConnectionError:
                    seen["inventory_errors"] += 1
                except CircuitOpenError:
                    seen["inventory_rejected"] += 1
        assert flush_metrics()
        return seen
