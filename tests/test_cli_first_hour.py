"""The command line as a newcomer meets it (issue 19, items 3 and 8), run as real processes.

``health`` with no store where it looks says so with its own exit code; a
reader that closes the pipe early does not turn the verdict into an error;
a bad port is a usage error; store URLs that miss their slashes get the
form they need; colour on a terminal unless NO_COLOR; connectors with no
calls in the window show that there is no data.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connector_resilience.backends import CallRecord, close_all_stores, open_store
from tests._ops import Connectors, cli_env, run_cli

EXIT_NO_STORE = 5


@pytest.fixture
def filled(tmp_path: Path) -> str:
    """A SQLite store with a healthy, a degraded and a down connector (exit code 2)."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    Connectors(url).run()
    close_all_stores()
    return url


def test_health_with_no_store_here_says_so_with_its_own_exit_code(tmp_path: Path) -> None:
    result = run_cli("health")
    assert result.returncode == EXIT_NO_STORE
    assert result.stdout == ""
    assert result.stderr.startswith("connector-resilience: error: no store here: ")
    assert str(tmp_path / "logs" / "connectors") in result.stderr
    assert not (tmp_path / "logs").exists()  # looking did not create it
    assert f"{EXIT_NO_STORE}  `health`: no store" in run_cli("--help").stdout


def test_a_reader_closing_the_pipe_keeps_the_verdict_exit_code(filled: str) -> None:
    read, write = os.pipe()
    os.close(read)  # `health | head` after head has gone: every write hits a closed pipe
    try:
        result = subprocess.run(
            [sys.executable, "-m", "connector_resilience.cli", "--store", filled, "health"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert result.returncode == 2  # inventory is down: the verdict, not an error
    assert result.stderr == ""


def test_a_port_out_of_range_is_a_usage_error() -> None:
    result = run_cli("dashboard", "--port", "99999")
    assert result.returncode == 4
    assert "a port is 0 (any free one) to 65535, not 99999" in result.stderr
    assert "unexpected error" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_store_url_without_slashes_gets_the_form_it_needs() -> None:
    result = run_cli("--store", "sqlite:x.db", "health")
    assert result.returncode == 3
    assert "--store 'sqlite:x.db' lacks '//' after 'sqlite:'" in result.stderr
    assert "sqlite:///x.db (relative to the working folder)" in result.stderr
    assert "unknown scheme ''" not in result.stderr
    result = run_cli("health", CONNECTOR_STORE_URL="sqlite:x.db")
    assert result.returncode == 3
    assert "CONNECTOR_STORE_URL 'sqlite:x.db' lacks '//'" in result.stderr


def test_three_slashes_are_a_relative_path_and_the_error_says_how_to_go_absolute(
    tmp_path: Path,
) -> None:
    absolute = tmp_path / "state.db"
    result = run_cli("--store", f"sqlite://{absolute}", "health")  # sqlite:// + /tmp/...: 3
    assert result.returncode == 3
    assert f"no SQLite store at {str(absolute).lstrip('/')}" in result.stderr
    assert f"for {absolute} write sqlite:///{absolute}" in result.stderr


def _on_a_terminal(*args: str, **env: str) -> tuple[int, str]:
    """Run the command with a pseudo-terminal as stdout; its exit code and output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "connector_resilience.cli", *args],
        stdout=slave,
        stderr=subprocess.PIPE,
        env=cli_env(**env),
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode()


def test_colour_on_a_terminal_unless_no_color(filled: str) -> None:
    code, coloured = _on_a_terminal("--store", filled, "health", TERM="xterm")
    assert code == 2
    assert "\x1b[32mhealthy\x1b[0m" in coloured
    assert "\x1b[31;1mopen\x1b[0m" in coloured
    assert "\x1b[33mdegraded\x1b[0m" in coloured
    code, plain = _on_a_terminal("--store", filled, "health", TERM="xterm", NO_COLOR="1")
    assert code == 2
    assert "\x1b[" not in plain

    # Colour never shifts the columns: without the codes (and the clock), the same text.
    def bare(text: str) -> str:
        return re.sub(r"\x1b\[[0-9;]*m|\(\d+s ago\)", "", text)

    assert bare(coloured) == bare(plain)
    piped = run_cli("--store", filled, "health")
    assert "\x1b[" not in piped.stdout  # never into a pipe or a file


def test_no_calls_in_the_window_show_no_data_not_healthy_zeros(filled: str) -> None:
    old = time.time() - 7200
    open_store(filled).append_calls(
        [CallRecord(old, "idle", "ping", 5.0, "ok", None, 1, True, None)]
    )
    close_all_stores()
    result = run_cli("--store", filled, "health")
    header, *rows = [line for line in result.stdout.splitlines()[2:] if line.strip()]
    assert "CALLS FAILED" in header
    assert "ATTEMPTS FAILED" in header
    idle = next(row.split() for row in rows if row.startswith("idle"))
    assert idle[:3] == ["idle", "no", "data"]
    assert idle[3:9] == ["0", "-", "-", "-", "-", "-"]
    detail = run_cli("--store", filled, "health", "idle")
    assert "verdict:   no data" in detail.stdout
