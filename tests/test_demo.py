"""The README's demo: real runs of the console command's main(), on the demo's own store.

It shows its settings and the breaker opening and recovering; it can run
again in the same folder (issue 19, item 1); it honours ``--store`` and
``--json``, and lists only the state files that exist (item 2).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any


def _demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connector_resilience.cli", "demo", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_demo_shows_retries_the_breaker_opening_and_recovering(tmp_path: Path) -> None:
    result = _demo(tmp_path, "--seconds", "8")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # The settings it applies, against the library's defaults.
    assert "CB_FAILURES_TO_OPEN=4 (default 5)" in out
    assert "RETRY_BASE_MS=50 (default 400)" in out
    assert "circuit closed -> open" in out
    assert "circuit half_open -> closed" in out
    served = re.search(r"server saw (\d+) requests", out)
    attempts = re.search(r"attempts=(\d+)", out)
    assert served
    assert attempts
    assert served.group(1) == attempts.group(1)  # every request the server saw is in the metrics
    # Two rates, two names; rejected calls are counted apart from the calls that ran.
    assert "calls failed" in out
    assert "attempts failed" in out
    assert "error_rate" not in out
    assert re.search(r"calls: \d+ ran, \d+ failed after retries .*, \d+ rejected", out)
    # Its own store, never the default one of the folder's services; only files that exist.
    folder = tmp_path / "logs" / "connector-demo"
    for name in ("metrics.1s.jsonl", "circuit_state.jsonl"):
        assert (folder / name).is_file()
        assert f"logs/connector-demo/{name}" in out
    assert "tokens" not in out
    assert not (tmp_path / "logs" / "connectors").exists()
    assert "connector-resilience health --store jsonl://logs/connector-demo" in out

    # Again, in the same folder: it starts from a closed breaker and healthy figures.
    again = _demo(tmp_path, "--seconds", "3", "--json")
    assert again.returncode == 0, again.stderr
    data: dict[str, Any] = json.loads(again.stdout)  # --json: one document, nothing else
    assert data["caller"]["ok"] > 0
    assert data["health"]["total_calls"] == data["caller"]["ok"] + data["caller"]["failed"]
    assert data["settings"]["CB_FAILURES_TO_OPEN"] == 4
    assert data["store"] == "jsonl://logs/connector-demo"


def test_demo_honours_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    result = _demo(tmp_path, "--seconds", "1.5", "--json", "--store", url)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["store"] == url
    assert data["state_files"] == {}
    assert (tmp_path / "demo.db").is_file()
    assert not (tmp_path / "logs").exists()
