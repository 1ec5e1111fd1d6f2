"""``connector-resilience circuit half-open|close|disable`` and the recovery columns of circuits.

The command runs as a separate process (``tests/_ops.run_cli``) on a SQLite
store that a breaker in this process opened.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from connector_resilience import Policy
from connector_resilience.backends import close_all_stores, open_store
from connector_resilience.circuit import CircuitBreaker
from tests._ops import run_cli


def _opened(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    policy = Policy(store={"url": url}, circuit={"failures_to_open": 2, "cooldown_s": 3600})
    breaker = CircuitBreaker("billing", policy=policy)
    for _ in range(2):
        breaker.report(breaker.acquire(), "failure", error=TimeoutError("read timed out"))
    close_all_stores()
    return url


def test_half_open_and_close_from_the_shell_with_senseless_moves_refused(
    tmp_path: Path,
) -> None:
    url = _opened(tmp_path)
    table = run_cli("--store", url, "circuits").stdout
    assert re.search(r"billing +open .* 2 consecutive failures +1 +TimeoutError\n", table)

    result = run_cli("--store", url, "circuit", "half-open", "billing")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "circuit 'billing' half-open: probing now\n"

    result = run_cli("--store", url, "circuit", "close", "billing", CB_SLOW_START_S="30")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "circuit 'billing' closed; slow start: the share of calls admitted rises to all "
        "within 30 s\n"
    )
    record = open_store(url).get_circuit("billing")
    assert record is not None
    assert (record.state, record.override) == ("closed", None)
    assert record.ramp_until is not None
    close_all_stores()

    (row,) = json.loads(run_cli("--store", url, "--json", "circuits").stdout)["circuits"]
    assert row["state"] == "closed"
    assert 0.1 <= row["admitted_share"] < 1.0  # ramping
    assert row["ramp_until"] == record.ramp_until
    assert (row["opens"], row["last_failure"]) == (0, None)

    result = run_cli("--store", url, "circuit", "close", "billing")
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr == (
        "connector-resilience: error: cannot close the circuit of 'billing': it is closed; "
        "nothing to close (`circuit disable` lets every call through without counting "
        "failures)\n"
    )
    CircuitBreaker("billing", policy=Policy(store={"url": url})).disable()
    close_all_stores()
    result = run_cli("--store", url, "circuit", "half-open", "billing")
    assert result.returncode == 3
    assert "it is disabled; an operator disabled it; `circuit reset` returns it" in result.stderr
