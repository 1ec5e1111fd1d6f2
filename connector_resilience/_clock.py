"""The clocks the library reads, in one place so tests can replace them.

``wall()`` stamps persisted state (shared between processes on a host);
``monotonic()`` measures deadlines and cache freshness. Durations of calls use
``time.perf_counter`` directly and are never faked.
"""

from __future__ import annotations

import time

wall = time.time
monotonic = time.monotonic
