"""How retry waits are slept, swappable by ``connector_resilience.testing.no_waits``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

sleep: Callable[[float], None] = time.sleep


def _asyncio_sleep(seconds: float) -> Awaitable[None]:
    return asyncio.sleep(seconds)


asleep: Callable[[float], Awaitable[None]] = _asyncio_sleep
