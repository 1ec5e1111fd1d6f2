"""The clocks the library reads, in one place so tests can replace them.

``wall()`` stamps persisted state (shared between processes on a host);
``monotonic()`` measures deadlines and cache freshness; ``perf()`` times calls.
``monotonic`` and ``perf`` read one clock (``time.perf_counter``, monotonic
and system-wide), so a decorated call reads it once to both admit itself
through the breaker and start its timing. Under ``testing.FakeClock``,
``perf`` runs at real speed plus the fake clock's jumps, so durations stay
real and ``perf() >= monotonic()`` holds.
"""

from __future__ import annotations

import time

wall = time.time
monotonic = time.perf_counter
perf = time.perf_counter
