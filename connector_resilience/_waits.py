"""How retry waits are slept and attempts capped, swappable by ``connector_resilience.testing``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

sleep: Callable[[float], None] = time.sleep


def _asyncio_sleep(seconds: float) -> Awaitable[None]:
    return asyncio.sleep(seconds)


asleep: Callable[[float], Awaitable[None]] = _asyncio_sleep

#: Maps the attempts a call would get to the attempts it gets (``testing.set_testing``).
attempts_cap: Callable[[int], int] | None = None
