"""The README's demo: a real run of the console command's main() on the default store."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_shows_retries_the_breaker_opening_and_recovering(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "connector_resilience.cli", "demo", "--seconds", "8"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "circuit closed -> open" in out
    assert "circuit half_open -> closed" in out
    served = re.search(r"server saw (\d+) requests", out)
    attempts = re.search(r"attempts=(\d+)", out)
    assert served
    assert attempts
    assert served.group(1) == attempts.group(1)  # every request the server saw is in the metrics
    # The default store: the three JSONL files, in the working directory.
    for name in ("metrics.1s.jsonl", "circuit_state.jsonl"):
        assert (tmp_path / "logs" / "connectors" / name).is_file()
