"""Metrics at fleet volume: many calls, few rows, percentiles within 1%.

Run it: ``python examples/fleet_metrics.py``. It makes 20,000 decorated calls
on a JSONL store in a temporary folder, then shows what was written (a handful
of aggregated rows, not 20,000 records) and the summary read back from them.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from connector_resilience import Policy, flush_metrics, resilient, summarize


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="fleet-metrics-"))
    policy = Policy(store={"url": f"jsonl://{folder}"})  # aggregated: the default mode
    rng = random.Random(1)

    @resilient("inventory", policy=policy)
    def get_item(i: int) -> int:
        if rng.random() < 0.001:  # a slow call now and then
            time.sleep(0.002)
        return i

    for i in range(20_000):
        get_item(i)
    flush_metrics()
    for path in sorted(folder.glob("metrics*.jsonl")):
        lines = path.read_text().splitlines()
        print(f"{path.name}: {len(lines)} line(s), {path.stat().st_size:,} bytes")
    summary = summarize("inventory", policy=policy)
    print(f"calls {summary.total_calls}, p50 {summary.p50_ms:.4f} ms, p99 {summary.p99_ms:.4f} ms")
    print(f"dropped {summary.dropped}")


if __name__ == "__main__":
    main()
