"""The ``connector-resilience`` command, run as a separate process against real stores.

Every store here is filled by real ``@resilient`` calls; the command is the
real ``main()`` (see ``tests/_ops.run_cli``) reading the store from disk.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from connector_resilience import CircuitOpenError, Policy, resilient, summarize, testing
from connector_resilience.backends import close_all_stores, open_store
from connector_resilience.metrics import flush_metrics
from tests._ops import Connectors, run_cli


@pytest.fixture
def filled(shared_store_url: str) -> str:
    """A JSONL or SQLite store with a healthy, a degraded and a down connector."""
    Connectors(shared_store_url).run()
    return shared_store_url


@pytest.fixture
def filled_raw(shared_store_url: str) -> str:
    """Like ``filled``, with one record per attempt (``export`` writes records)."""
    Connectors(shared_store_url, metrics_mode="raw").run()
    return shared_store_url


def _rows(table: str) -> dict[str, list[str]]:
    """Table lines by their first cell."""
    return {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}


def test_health_lists_every_connector_with_verdict_numbers_and_breaker(filled: str) -> None:
    result = run_cli("--store", filled, "health")
    assert result.returncode == 2, result.stderr  # inventory is down
    assert result.stderr == ""
    rows = _rows(result.stdout)
    assert rows["CONNECTOR"][:3] == ["CONNECTOR", "VERDICT", "CALLS"]
    assert rows["billing"][1:4] == ["healthy", "10", "0.0%"]
    assert rows["search"][1:5] == ["degraded", "10", "0.0%", "50.0%"]  # retries hid the errors
    assert rows["inventory"][1] == "down"
    assert rows["inventory"][8] == "open"  # breaker
    assert re.search(r"\(\d+s ago\)", " ".join(rows["inventory"]))  # since when
    assert "inventory: circuit open" in result.stdout
    assert "search: error rate 50.0% > 10.0%" in result.stdout


def test_health_json_matches_the_library(filled: str) -> None:
    result = run_cli("--store", filled, "health", "--json")
    assert result.returncode == 2
    data = json.loads(result.stdout)
    assert data["status"] == "down"
    by_name = {c["connector"]: c for c in data["connectors"]}
    assert {n: c["status"] for n, c in by_name.items()} == {
        "billing": "healthy",
        "inventory": "down",
        "search": "degraded",
    }
    mine = summarize("search", store=filled)
    search = by_name["search"]
    assert (search["total_calls"], search["attempts"], search["retries"]) == (
        mine.total_calls,
        mine.attempts,
        mine.retries,
    )
    assert search["p95_ms"] == pytest.approx(mine.p95_ms)
    inventory = by_name["inventory"]
    assert inventory["circuit_state"] == "open"
    assert inventory["circuit_reason"] == "3 consecutive failures"
    assert inventory["circuit_since"] == pytest.approx(time.time(), abs=60)
    assert inventory["rejected"] == 2


@pytest.mark.parametrize(
    ("connector", "code", "verdict"),
    [("billing", 0, "healthy"), ("search", 1, "degraded"), ("inventory", 2, "down")],
)
def test_exit_code_follows_the_verdict(
    filled: str, connector: str, code: int, verdict: str
) -> None:
    result = run_cli("--store", filled, "health", connector)
    assert result.returncode == code, result.stderr
    assert f"verdict:   {verdict}" in result.stdout


def test_exit_code_is_zero_when_everything_is_healthy(shared_store_url: str) -> None:
    Connectors(shared_store_url).run(search=0, inventory=0)
    result = run_cli("--store", shared_store_url, "health")
    assert result.returncode == 0, result.stderr
    assert "overall: healthy" in result.stdout


def test_health_of_one_connector_per_operation_and_errors_by_type(filled: str) -> None:
    result = run_cli("--store", filled, "health", "inventory")
    assert result.returncode == 2
    out = result.stdout
    assert "breaker:   open since" in out
    assert "3 consecutive failures" in out
    assert "calls:     3 (3 failed, 6 attempts, 3 retries, 2 refused before sending)" in out
    assert _rows(out)["get_item"][1:5] == ["3", "100.0%", "100.0%", "3"]
    assert "recent errors by type" in out
    assert _rows(out)["ConnectionError"][1] == "6"

    data = json.loads(run_cli("--store", filled, "--json", "health", "inventory").stdout)
    assert data["operations"]["get_item"]["attempt_errors"] == 6
    assert data["recent_errors"][0]["error"] == "ConnectionError"
    assert data["recent_errors"][0]["operations"] == ["get_item"]


def test_window_limits_what_health_sees(shared_store_url: str) -> None:
    with testing.FakeClock(start=time.time() - 7200):
        Connectors(shared_store_url).run(search=0, inventory=0)
    # Write the minute and hour rows of two hours ago now, not at the writer's next
    # tick, which may come after the CLI has read (the 24 h summary reads hour rows).
    flush_metrics()
    close_all_stores()
    result = run_cli("--store", shared_store_url, "--json", "--window", "600", "health")
    billing = {c["connector"]: c for c in json.loads(result.stdout)["connectors"]}["billing"]
    assert billing["total_calls"] == 0
    result = run_cli("--store", shared_store_url, "--json", "--window", "86400", "health")
    billing = {c["connector"]: c for c in json.loads(result.stdout)["connectors"]}["billing"]
    assert billing["total_calls"] == 10


def test_circuits_lists_states_and_forced_overrides(filled: str) -> None:
    assert (
        run_cli("--store", filled, "circuit", "open", "billing", "--reason", "deploy").returncode
        == 0
    )
    result = run_cli("--store", filled, "circuits")
    assert result.returncode == 0
    rows = _rows(result.stdout)
    assert rows["billing"][1:3] == ["open", "forced_open"]
    assert rows["billing"][-3:] == ["deploy", "-", "-"]  # REASON, OPENS, LAST FAILURE
    assert rows["inventory"][-2:] == ["1", "ConnectionError"]
    assert rows["inventory"][1:3] == ["open", "-"]
    assert rows["search"][1:3] == ["closed", "-"]
    data = json.loads(run_cli("--store", filled, "circuits", "--json").stdout)
    states = {c["connector"]: (c["state"], c["override"]) for c in data["circuits"]}
    assert states == {
        "billing": ("open", "forced_open"),
        "inventory": ("open", None),
        "search": ("closed", None),
    }


def test_forced_states_are_obeyed_by_the_next_decorated_call(filled: str) -> None:
    result = run_cli("--store", filled, "circuit", "open", "billing")
    assert result.returncode == 0
    assert "forced open" in result.stdout
    testing.reset()  # a new process's view: no breaker cached from before
    connectors = Connectors(filled)
    with pytest.raises(CircuitOpenError) as refused:
        connectors.charge(1)
    assert refused.value.retry_at is None  # held until an operator resets it

    # `disable` forces it closed: calls go through and failures are not counted.
    assert run_cli("--store", filled, "circuit", "disable", "inventory").returncode == 0
    testing.reset()
    connectors = Connectors(filled)
    seen = connectors.run(billing=0, search=0, inventory=6)
    assert seen == {"inventory_errors": 6, "inventory_rejected": 0}
    assert _rows(run_cli("--store", filled, "circuits").stdout)["inventory"][1:3] == [
        "closed",
        "disabled",
    ]

    # `reset` returns both to automatic.
    for name in ("billing", "inventory"):
        result = run_cli("--store", filled, "circuit", "reset", name)
        assert result.returncode == 0
        assert "reset" in result.stdout
    testing.reset()
    connectors = Connectors(filled)
    assert connectors.charge(7) == 7
    seen = connectors.run(billing=0, search=0, inventory=5)
    assert seen == {"inventory_errors": 3, "inventory_rejected": 2}  # counting again


def test_circuit_json_reports_the_new_record(filled: str) -> None:
    result = run_cli("--store", filled, "--json", "circuit", "disable", "search")
    data = json.loads(result.stdout)
    assert (data["connector"], data["action"], data["state"]) == ("search", "disable", "closed")
    assert (data["override"], data["reason"]) == ("disabled", "disabled by an operator")
    assert open_store(filled).get_circuit("search") is not None


def test_export_jsonl_and_csv_hold_every_record_in_the_window(
    filled_raw: str, tmp_path: Path
) -> None:
    filled = filled_raw
    records = open_store(filled).read_calls(since=0)
    out = tmp_path / "metrics.jsonl"
    result = run_cli("--store", filled, "export", "--format", "jsonl", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert f"exported {len(records)} records (jsonl)" in result.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(records)
    assert {line["connector"] for line in lines} == {"billing", "search", "inventory"}
    assert [line["ts"] for line in lines] == sorted(line["ts"] for line in lines)

    result = run_cli("--store", filled, "export", "--format", "csv", "--connector", "inventory")
    assert result.returncode == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))  # to stdout, nothing else on it
    assert len(rows) == sum(r.connector == "inventory" for r in records)
    assert {r["status"] for r in rows} == {"error", "rejected"}
    assert rows[0]["error"] == "ConnectionError"
    assert rows[0]["time"].endswith("Z")


def test_export_shows_progress_on_stderr_when_asked(filled: str, tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    result = run_cli("--store", filled, "export", "--format", "csv", "-o", str(out), "--progress")
    assert result.returncode == 0
    assert "exporting: reading 3600s of metrics" in result.stderr
    assert re.search(r"exporting: \d+ records, done", result.stderr)
    quiet = run_cli("--store", filled, "export", "-o", str(out), "--no-progress")
    assert quiet.stderr == ""


def test_compact_drops_metrics_past_the_retention(shared_store_url: str) -> None:
    # Raw records, so that the counts are calls (aggregated rows are counted as rows).
    with testing.FakeClock(start=time.time() - 3 * 86400):
        Connectors(shared_store_url, metrics_mode="raw").run(search=0, inventory=0)  # 10, 3 d ago
    Connectors(shared_store_url, metrics_mode="raw").run(billing=4, search=0, inventory=0)
    close_all_stores()
    result = run_cli(
        "--store", shared_store_url, "--json", "compact", "--retention", "86400", "--progress"
    )
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert (counts["metrics_kept"], counts["metrics_dropped"]) == (4, 10)
    assert "compacting:" in result.stderr
    assert "4 metrics kept, done" in result.stderr
    assert len(open_store(shared_store_url).read_calls(since=0)) == 4


def test_help_documents_the_exit_codes() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for line in ("0  success", "1  `health`: at least one connector is degraded", "2  `health`"):
        assert line in result.stdout
    assert "3  the command could not run" in result.stdout
    assert "health" in run_cli("health", "--help").stdout


# Errors: a message on stderr, no traceback, an exit code no verdict uses.


def _error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 3, result
    assert result.stderr.startswith("connector-resilience: error: ")
    assert "Traceback" not in result.stderr
    return result.stderr


def test_unknown_connector_is_an_error_naming_the_known_ones(filled: str) -> None:
    stderr = _error(run_cli("--store", filled, "health", "billling"))
    assert "unknown connector 'billling'" in stderr
    assert "billing, inventory, search" in stderr
    _error(run_cli("--store", filled, "circuit", "open", "nope"))
    _error(run_cli("--store", filled, "export", "--connector", "nope"))


def test_unknown_scheme_is_an_error(tmp_path: Path) -> None:
    stderr = _error(run_cli("--store", "postgres://db/x", "health"))
    assert "unknown store URL scheme 'postgres'" in stderr
    stderr = _error(run_cli("health", CONNECTOR_STORE_URL="nope://x"))
    assert "CONNECTOR_STORE_URL has unknown scheme 'nope'" in stderr


def test_missing_store_is_an_error_not_an_empty_report(tmp_path: Path) -> None:
    stderr = _error(run_cli("--store", f"sqlite:///{tmp_path / 'typo.db'}", "health"))
    assert "no SQLite store at" in stderr
    assert not (tmp_path / "typo.db").exists()  # reading did not create it
    stderr = _error(run_cli("--store", f"jsonl://{tmp_path / 'typo'}", "circuits"))
    assert "no JSONL store at" in stderr


def test_unreadable_stores_are_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    stderr = _error(run_cli("--store", f"sqlite:///{garbage}", "health"))
    assert "garbage.db" in stderr

    folder = tmp_path / "broken"
    (folder / "metrics.jsonl").mkdir(parents=True)  # a folder where the file should be
    stderr = _error(run_cli("--store", f"jsonl://{folder}", "health"))
    assert "cannot read" in stderr


def test_a_password_in_the_store_url_is_never_printed(filled: str) -> None:
    url = "redis://operator:s3cr3t-pw@127.0.0.1:1/0"  # nothing listens on port 1
    for args in (("health",), ("--json", "circuits"), ("dashboard", "--port", "0")):
        result = run_cli("--store", url, *args)
        assert result.returncode == 3
        assert "s3cr3t-pw" not in result.stdout + result.stderr


def test_usage_errors_have_their_own_exit_code() -> None:
    result = run_cli("health", "--window", "-5")
    assert result.returncode == 4
    assert "must be a finite number of seconds > 0" in result.stderr
    assert run_cli("circuit", "toggle", "x").returncode == 4


def test_default_store_is_the_policy_jsonl_files(tmp_path: Path) -> None:
    # No --store and no CONNECTOR_STORE_URL: the three JSONL paths, from the environment.
    folder = tmp_path / "custom"
    paths = {
        "CONNECTOR_METRICS_PATH": folder / "m.jsonl",
        "CIRCUIT_STATE_PATH": folder / "c.jsonl",
        "OAUTH_TOKEN_PATH": folder / "t.jsonl",
    }
    env = {name: str(path) for name, path in paths.items()}
    empty = run_cli("health", **env)
    assert empty.returncode == 5  # no files there yet: no store to judge
    assert "no store here: no m.jsonl, c.jsonl in" in empty.stderr

    policy = Policy(
        store={
            "metrics_path": paths["CONNECTOR_METRICS_PATH"],
            "circuit_state_path": paths["CIRCUIT_STATE_PATH"],
            "token_path": paths["OAUTH_TOKEN_PATH"],
        }
    )

    @resilient("billing", policy=policy)
    def charge() -> str:
        return "ok"

    charge()
    assert flush_metrics()
    result = run_cli("health", **env)
    assert result.returncode == 0
    assert f"JSONL files in {folder}" in result.stdout
    assert _rows(result.stdout)["billing"][1:3] == ["healthy", "1"]
