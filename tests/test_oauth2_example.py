"""The OAuth2 example runs as documented and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_client_credentials_example_runs(tmp_path: Path) -> None:
    # This checkout first, so the child imports the code under test.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "oauth2_client_credentials.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refreshed once, retried once: HTTP 200" in result.stdout
    assert "token endpoint was called 2 times" in result.stdout
