"""The flapping-dependency simulation (benchmarks/flapping.py): its claim and its quoted figures."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.flapping import BASE_CIRCUIT, CONFIGS, Schedule, simulate, table, tallies_from_json

ROOT = Path(__file__).resolve().parents[1]


def test_growing_open_time_and_slow_start_let_fewer_calls_reach_a_failing_dependency() -> None:
    # A shorter schedule than the documented run, same shape: down with
    # flickers, flaky, recovering slowly. Simulated time: deterministic.
    schedule = Schedule(load=40, healthy_until=10, down_s=60, flaky_s=50, recovery_s=60)
    options = dict(CONFIGS)
    runs = {
        name: simulate(name, options[name], seconds=200, processes=4, rate=10, schedule=schedule)
        for name in (
            "today (1 probe closes, fixed open time)",
            "CB_COOLDOWN_MULTIPLIER=2, MAX 60 s",
            "CB_SLOW_START_S=30",
            "all three",
        )
    }
    today, growth, slow, both = runs.values()
    assert today.offered == growth.offered == slow.offered == both.offered == 200 * 40
    assert growth.failed < today.failed
    assert slow.failed < today.failed
    assert both.failed < min(growth.failed, slow.failed)
    assert growth.opens < today.opens  # fewer flaps
    assert both.served > 0.7 * today.served  # still serving once it has recovered


def test_the_breaker_page_quotes_the_committed_results() -> None:
    data = json.loads((ROOT / "docs" / "benchmarks" / "flapping.json").read_text(encoding="utf-8"))
    tallies = tallies_from_json(data)
    assert [t.name for t in tallies] == [name for name, _ in CONFIGS]
    page = (ROOT / "docs" / "breaker.md").read_text(encoding="utf-8")
    assert table(tallies) in page, "run `python -m benchmarks.flapping` and update the table"
    for name, value in BASE_CIRCUIT.items():
        assert f"{name}={value}" in page
