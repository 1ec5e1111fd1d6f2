"""Every examples/*.py runs to completion, as a user would run it.

Each example runs in its own process, in an empty folder, with none of our
settings in the environment, and must exit 0 within the timeout. Files whose
name starts with ``_`` are helpers, not examples.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
TIMEOUT_S = 60
_OWN_PREFIXES = ("CONNECTOR_", "RETRY_", "CB_", "OAUTH", "CIRCUIT_")


def test_examples_are_found() -> None:
    assert len(EXAMPLES) >= 4, EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(example: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_OWN_PREFIXES)}
    # The package of this checkout, whatever an installed copy says.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    try:
        result = subprocess.run(
            [sys.executable, str(example)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        so_far = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout
        pytest.fail(f"{example.name} did not finish in {TIMEOUT_S}s; output so far:\n{so_far}")
    assert result.returncode == 0, (
        f"{example.name} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    assert result.stdout.strip(), f"{example.name} printed nothing"
