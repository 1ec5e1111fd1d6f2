"""What a connector costs in memory: at most 4 KB (issue 16), measured as the benchmark does.

tracemalloc over a few hundred connectors, each a decorated function called
once on a memory:// store, metrics flushed: the function, its engine and
breaker, its load control and its share of the open metric rows. Memory, not
time: the figure is the same on a loaded machine. It is taken in a fresh
interpreter, since tracemalloc counts every thread's allocations and earlier
tests leave threads of their own running.
"""

from __future__ import annotations

import subprocess
import sys

LIMIT_BYTES = 4096

_MEASURE = """
import gc, tracemalloc
from connector_resilience import Policy, flush_metrics, resilient

policy = Policy(store={"url": "memory://memory-per-connector", "flush_interval_s": 3600})

def connector(i):
    fn = resilient(f"memory-{i}", policy=policy)(lambda: 1)
    fn()
    return fn

n = 500
keep = [connector(-1)]  # the first one pays for module-level state
gc.collect()
tracemalloc.start()
before = tracemalloc.take_snapshot()
keep.extend(connector(i) for i in range(n))
flush_metrics()
gc.collect()
after = tracemalloc.take_snapshot()
print(sum(d.size_diff for d in after.compare_to(before, "filename")) / n)
"""


def test_a_connector_costs_at_most_4_kb() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE], capture_output=True, text=True, timeout=120, check=True
    )
    assert float(done.stdout) <= LIMIT_BYTES
