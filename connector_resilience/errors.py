"""The exceptions connector-resilience raises.

Every exception derives from :class:`ResilienceError`, so one ``except`` clause
catches them all. When retries run out, the decorated function's own exception
is raised unchanged: these classes describe what the library itself decided.
"""

from __future__ import annotations

import datetime as _dt

__all__ = [
    "CircuitOpenError",
    "ConfigurationError",
    "ResilienceError",
    "RetryBodyNotReplayableError",
    "StoreError",
    "TokenError",
    "TokenRequiredError",
]


class ResilienceError(Exception):
    """Base class of every error connector-resilience raises itself."""


class ConfigurationError(ResilienceError, ValueError):
    """A setting, a store URL or an optional dependency is wrong or missing."""


class StoreError(ResilienceError):
    """A store could not be read or written.

    Decorated calls never see this: a store fault is logged and the call goes on.
    It reaches code that talks to a store directly (the CLI, ``open_store``).
    """


class CircuitOpenError(ResilienceError):
    """The circuit of a connector is open, so the call was refused without running.

    Attributes:
        connector: the connector whose circuit is open.
        retry_at: wall-clock time (seconds since the epoch) at which the circuit
            may let a probe through, or ``None`` when an operator forced it open.
    """

    def __init__(self, connector: str, *, retry_at: float | None, reason: str = "") -> None:
        # The message is built only when someone reads it, and BaseException.__new__
        # has already stored args: a rejection is the hot path of an open circuit.
        self.connector = connector
        self.retry_at = retry_at
        self.reason = reason

    def __str__(self) -> str:
        if self.retry_at is None:
            when = "until an operator closes it"
        else:
            stamp = _dt.datetime.fromtimestamp(self.retry_at, tz=_dt.UTC)
            when = f"until {stamp.isoformat(timespec='seconds')}"
        detail = f" ({self.reason})" if self.reason else ""
        return f"circuit for connector {self.connector!r} is open {when}{detail}"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_circuit_open, (self.connector, self.retry_at, self.reason))


def _rebuild_circuit_open(connector: str, retry_at: float | None, reason: str) -> CircuitOpenError:
    return CircuitOpenError(connector, retry_at=retry_at, reason=reason)


class TokenError(ResilienceError):
    """An OAuth2 token could not be obtained or refreshed."""


class TokenRequiredError(TokenError):
    """OAUTH2_REQUIRED is on and the connector has no usable token."""


class RetryBodyNotReplayableError(ResilienceError):
    """A request failed in a retryable way but its body was a stream already consumed."""
