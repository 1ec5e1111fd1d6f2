"""Redis's clock without a round trip per reading.

Every host that shares a breaker must time it with the same clock, or a host
whose clock runs ahead opens and closes breakers early. Redis's ``TIME`` is
that clock; reading it on every call would cost a round trip, so the offset to
it is measured now and then and carried forward by the local monotonic clock,
which does not jump when the host's wall clock is set.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from connector_resilience import _clock

__all__ = ["ServerClock"]

logger = logging.getLogger("connector_resilience.store")

#: Between two readings the local monotonic clock drifts by a few ppm at most:
#: well under a millisecond over this interval.
RESYNC_INTERVAL_S = 15.0
#: How soon to try again after a failed reading.
RETRY_INTERVAL_S = 1.0


class ServerClock:
    """Seconds since the epoch by the server's clock, read at most once per interval.

    The first reading happens in the caller's thread (one round trip); later
    ones run in a short-lived background thread, so ``now()`` never waits on
    the network again. Until the server has been read once (it was down when first
    asked), the local wall clock stands in: the caller is then running on
    local state anyway.

    Args:
        read_server_time: returns the server's ``TIME`` as (seconds, microseconds);
            raises when the server cannot be reached.
        describe: the (redacted) store URL, for log messages.
        resync_s: how often to measure the offset again.
        retry_s: how soon to try again after a failure.
        before_reading: run before each reading, outside the timed round
            trip (the store checks its deployment there when it could not at open).
    """

    def __init__(
        self,
        read_server_time: Callable[[], tuple[int, int]],
        *,
        describe: str,
        resync_s: float = RESYNC_INTERVAL_S,
        retry_s: float = RETRY_INTERVAL_S,
        before_reading: Callable[[], None] | None = None,
    ) -> None:
        self._read_server_time = read_server_time
        self._before_reading = before_reading
        self._describe = describe
        self._resync_s = resync_s
        self._retry_s = retry_s
        # (server seconds, local monotonic seconds) taken at the same instant.
        self._anchor: tuple[float, float] | None = None
        self._next_sync = 0.0
        self._syncing_pid: int | None = None
        self._failures = 0
        self._closed = False
        self._attempted = False
        self._lock = threading.Lock()
        self._first_lock = threading.Lock()

    @property
    def synced(self) -> bool:
        """Whether the server's clock has been read at least once."""
        return self._anchor is not None

    def now(self) -> float:
        """The server's time now, estimated locally."""
        if self._anchor is None and not self._attempted:
            self._first_reading()
        mono = time.monotonic()
        if mono >= self._next_sync:
            self._start_background_sync(mono)
        anchor = self._anchor
        if anchor is None:
            return _clock.wall()
        return anchor[0] + (mono - anchor[1])

    def sync(self) -> None:
        """Read the server's clock now (one round trip) and re-anchor to it.

        Raises:
            Exception: whatever ``read_server_time`` raises.
        """
        if self._before_reading is not None:
            self._before_reading()
        before = time.monotonic()
        seconds, micros = self._read_server_time()
        after = time.monotonic()
        # The reply was produced somewhere inside the round trip: take the middle.
        self._anchor = (seconds + micros / 1_000_000, (before + after) / 2)

    def close(self) -> None:
        """Start no more readings."""
        self._closed = True

    def _first_reading(self) -> None:
        # Concurrent first callers wait for the one reading instead of each
        # falling back to the local clock.
        with self._first_lock:
            if self._attempted:
                return
            self._next_sync = time.monotonic() + self._retry_s
            self._sync_once()
            self._attempted = True

    def _start_background_sync(self, mono: float) -> None:
        pid = os.getpid()
        with self._lock:
            # One reading at a time per process; a fork does not inherit the flag.
            if self._closed or self._syncing_pid == pid or mono < self._next_sync:
                return
            self._syncing_pid = pid
            self._next_sync = mono + self._retry_s
        threading.Thread(
            target=self._sync_in_background, name="connector-resilience-redis-clock", daemon=True
        ).start()

    def _sync_in_background(self) -> None:
        try:
            self._sync_once()
        finally:
            self._syncing_pid = None

    def _sync_once(self) -> None:
        try:
            self.sync()
        except Exception as exc:
            self._failures += 1
            if self._failures == 1:
                logger.warning(
                    "store %s: cannot read the Redis clock (%s: %s); %s",
                    self._describe,
                    type(exc).__name__,
                    exc,
                    "keeping the last offset" if self.synced else "using the local clock",
                )
        else:
            if self._failures:
                logger.warning("store %s: Redis clock readable again", self._describe)
            self._failures = 0
            self._next_sync = time.monotonic() + self._resync_s
