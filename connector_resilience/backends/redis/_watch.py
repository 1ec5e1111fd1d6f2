"""Push breaker changes to every process: one pub/sub subscription per store.

The compare-and-set script publishes the connector's name on the store's
channel in the same atomic step as the write. Each process keeps one
subscriber thread per store and fans each message out to every callback.
When the subscription drops (Redis restarted, network cut), or could not be
made at first, the thread keeps trying; since messages published meanwhile are
lost, once subscribed it tells every callback ``"*"``: "anything may have
changed, read again".

A connection can also go silent without closing (a dead NAT entry, a
half-open TCP connection): nothing arrives, and nothing fails. So the thread
sends a ``PING`` through the subscription whenever it has heard nothing for
``HEARTBEAT_S``, and treats a subscription that has not answered within
``PONG_DEADLINE_S`` as dropped. A silent feed is therefore noticed within
``SILENCE_BOUND_S`` of the last thing it delivered, then replaced.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["ANY_CONNECTOR", "FOLLOW_S", "SILENCE_BOUND_S", "CircuitWatcher"]

logger = logging.getLogger("connector_resilience.store")

#: Passed to callbacks after a resubscription: changes may have been missed.
ANY_CONNECTOR = "*"

#: How long ``get_message`` waits before checking whether to stop. Delivery
#: does not wait for it: a message wakes the thread as soon as it arrives.
_POLL_S = 0.2
#: Ping the subscription after this long without hearing from it...
HEARTBEAT_S: Final = 0.4
#: ...and give up on it if the ping has no answer this long after.
PONG_DEADLINE_S: Final = 0.5
#: Headroom for the thread to be scheduled once its timer is due: the bound
#: below is a promise, so the timers alone must end a little before it.
_SCHEDULING_MARGIN_S: Final = 0.1
#: How soon after its last delivery a silent subscription is given up at most.
SILENCE_BOUND_S: Final = HEARTBEAT_S + PONG_DEADLINE_S + _SCHEDULING_MARGIN_S
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 1.0
#: How long ``add`` waits for the first subscription, so that a caller who
#: reads state right after subscribing cannot miss a change in between.
_FIRST_SUBSCRIBE_WAIT_S = 1.0


class _Subscription:
    """One callback; identity (not equality) tells two registrations apart."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[str], None]) -> None:
        self.callback = callback


#: How often a Sentinel store asks whether the master moved.
FOLLOW_S: Final = 1.0


class _SilentError(Exception):
    """The subscription answered nothing within the deadline (or its server is no master)."""


class CircuitWatcher:
    """A background subscriber that runs callbacks with the name of each changed circuit.

    Args:
        pubsub: makes a redis-py ``PubSub`` (of a plain, Sentinel-managed or
            Cluster client); called again after each fault.
        channel: the channel the compare-and-set script publishes on.
        describe: the (redacted) store URL, for log messages.
    """

    def __init__(self, pubsub: Callable[[], Any], channel: str, *, describe: str) -> None:
        self._pubsub = pubsub
        self._move = threading.Event()
        self._channel = channel
        self._describe = describe
        self._lock = threading.Lock()
        self._subscriptions: list[_Subscription] = []
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._first_attempt: threading.Event | None = None
        self._failures = 0

    def add(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Run ``callback(connector)`` in the subscriber thread after each change.

        Returns:
            A function that removes this callback (idempotent); the thread stops
            when the last callback is removed.
        """
        subscription = _Subscription(callback)
        with self._lock:
            self._subscriptions.append(subscription)
            first_attempt = self._ensure_thread()
        # Bounded: if Redis is down the first attempt fails fast and we go on.
        first_attempt.wait(_FIRST_SUBSCRIBE_WAIT_S)

        def unsubscribe() -> None:
            with self._lock:
                if subscription in self._subscriptions:
                    self._subscriptions.remove(subscription)
                if self._subscriptions:
                    return
                thread, stop = self._thread, self._stop
                self._thread = self._stop = self._first_attempt = None
            if stop is not None:
                stop.set()
            if thread is not None and thread is not threading.current_thread():
                thread.join(_POLL_S * 5)

        return unsubscribe

    def resubscribe(self) -> None:
        """Move the subscription to a new connection soon (the master moved), then say ``"*"``."""
        self._move.set()

    def stop(self) -> None:
        """Drop every callback and stop the thread."""
        with self._lock:
            self._subscriptions.clear()
            thread, stop = self._thread, self._stop
            self._thread = self._stop = self._first_attempt = None
        if stop is not None:
            stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(_POLL_S * 5)

    def _ensure_thread(self) -> threading.Event:
        """Start the subscriber unless it runs; the caller holds ``_lock``."""
        thread, first_attempt = self._thread, self._first_attempt
        if thread is not None and thread.is_alive() and first_attempt is not None:
            return first_attempt
        # A fresh event per thread: a stopping thread only ever sees its own.
        stop, first_attempt = threading.Event(), threading.Event()
        thread = threading.Thread(
            target=self._run,
            args=(stop, first_attempt),
            name="connector-resilience-redis-watch",
            daemon=True,
        )
        self._thread, self._stop, self._first_attempt = thread, stop, first_attempt
        thread.start()
        return first_attempt

    def _run(self, stop: threading.Event, first_attempt: threading.Event) -> None:
        pubsub: Any = None
        backoff = _BACKOFF_FIRST_S
        # Anything published while not subscribed is lost to us.
        may_have_missed = False
        # When we last heard from the subscription, and when a ping (or the
        # subscribe request) went out unanswered, by the monotonic clock.
        heard = asked = 0.0
        try:
            while not stop.is_set():
                try:
                    now = time.monotonic()
                    if pubsub is None:
                        pubsub = self._pubsub()
                        pubsub.subscribe(self._channel)
                        heard, asked = now, now
                    elif self._move.is_set():
                        self._move.clear()
                        raise _SilentError("the master moved (failover)")
                    elif asked and now - asked >= PONG_DEADLINE_S:
                        raise _SilentError(f"no answer to a ping in {PONG_DEADLINE_S:g}s")
                    elif not asked and now - heard >= HEARTBEAT_S:
                        pubsub.ping()
                        asked = now
                    # Wake for the next message, the next ping or the deadline,
                    # whichever is first (and now and then, to see ``stop``).
                    due = asked + PONG_DEADLINE_S if asked else heard + HEARTBEAT_S
                    wait = min(_POLL_S, due - time.monotonic())
                    message = pubsub.get_message(timeout=max(0.001, wait))
                except Exception as exc:
                    first_attempt.set()
                    may_have_missed = True
                    self._fault(exc)
                    # Drop the connection; the next turn subscribes on a new one.
                    if pubsub is not None:
                        _close_quietly(pubsub)
                        pubsub = None
                    if isinstance(exc, _SilentError):
                        # Redis answered before: try a new connection at once
                        # (a silent one again takes a deadline to notice).
                        continue
                    stop.wait(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX_S)
                    continue
                if message is None:
                    continue
                # Anything arriving proves the subscription alive.
                heard, asked = time.monotonic(), 0.0
                backoff = _BACKOFF_FIRST_S
                kind = message.get("type")
                if kind == "subscribe":
                    first_attempt.set()
                    self._subscribed(may_have_missed=may_have_missed)
                    # Any later subscribe message means redis-py reconnected by itself.
                    may_have_missed = True
                elif kind == "message":
                    data = message.get("data")
                    if isinstance(data, str) and data:
                        self._deliver(data)
        finally:
            if pubsub is not None:
                _close_quietly(pubsub)

    def _subscribed(self, *, may_have_missed: bool) -> None:
        if self._failures:
            logger.warning(
                "store %s: circuit change feed resubscribed after %d failure(s)",
                self._describe,
                self._failures,
            )
            self._failures = 0
        if may_have_missed:
            # Whatever was published while we were not subscribed is lost, so
            # every circuit may be stale.
            self._deliver(ANY_CONNECTOR)

    def _deliver(self, connector: str) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            try:
                subscription.callback(connector)
            except Exception:
                logger.exception(
                    "store %s: a circuit change callback failed for %r", self._describe, connector
                )

    def _fault(self, exc: BaseException) -> None:
        self._failures += 1
        if self._failures == 1:
            logger.warning(
                "store %s: circuit change feed lost (%s: %s); resubscribing in the background",
                self._describe,
                type(exc).__name__,
                exc,
            )


def _close_quietly(pubsub: Any) -> None:
    """Close a subscription whose connection may be dead or silent; never raises."""
    # A dead connection has nothing left to close properly.
    with contextlib.suppress(Exception):
        pubsub.close()
