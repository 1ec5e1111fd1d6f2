"""Store faults are logged once per burst, never per call, and never raised to the caller.

The first fault of each kind against a store is also a :class:`StoreWarning`
through :mod:`warnings`, so that it shows on stderr even when the application
configured no logging (where the log line goes nowhere).
"""

from __future__ import annotations

import logging
import threading
import warnings

from connector_resilience._store_urls import redact_url
from connector_resilience.errors import StoreWarning

logger = logging.getLogger("connector_resilience.store")

# One lock for every FaultLog: faults are rare and the steps under it tiny, and a
# lock per log would cost every breaker and budget its memory.
_lock = threading.Lock()


class FaultLog:
    """Counts faults of one kind against one store; logs the first and the recovery.

    Args:
        what: what failed, such as "writing metrics" (for the message).
        url: the store URL; its password is redacted in messages.
    """

    def __init__(self, what: str, url: str) -> None:
        self.what = what
        self.url = redact_url(url)
        self.failures = 0
        self.total_failures = 0
        self._warned = False

    def fault(self, exc: BaseException) -> None:
        """Record a fault; log it if it starts a burst."""
        with _lock:
            first = self.failures == 0
            self.failures += 1
            self.total_failures += 1
            warn, self._warned = not self._warned, True
        if first:
            logger.warning(
                "store %s: %s failed (%s: %s); calls go on, retrying in the background",
                self.url,
                self.what,
                type(exc).__name__,
                exc,
            )
        if warn:
            warnings.warn(
                f"connector-resilience store {self.url}: {self.what} failed "
                f"({type(exc).__name__}: {exc}); calls go on without it. "
                "Later failures go to the 'connector_resilience.store' logger only.",
                StoreWarning,
                stacklevel=3,
            )

    def ok(self) -> None:
        """Record a success; log a recovery if a burst just ended."""
        if not self.failures:
            return
        with _lock:
            count, self.failures = self.failures, 0
        if count:
            logger.warning(
                "store %s: %s works again after %d failed attempt(s)", self.url, self.what, count
            )


#: The log of each (what, store URL): every breaker or limiter on one store shares it.
_shared: dict[tuple[str, str], FaultLog] = {}


def shared_fault_log(what: str, url: str) -> FaultLog:
    """The one :class:`FaultLog` of ``what`` against ``url`` in this process.

    A store outage is one burst for the store, logged once, however many
    connectors it holds; and a connector costs nothing for it.
    """
    key = (what, url)
    found = _shared.get(key)
    if found is None:
        found = _shared.setdefault(key, FaultLog(what, url))
    return found
