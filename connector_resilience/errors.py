"""The exceptions connector-resilience raises.

Every exception derives from :class:`ResilienceError`, so one ``except`` clause
catches them all. When retries run out, the decorated function's own exception
is raised unchanged: these classes describe what the library itself decided.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Final

__all__ = [
    "CircuitOpenError",
    "ConfigurationError",
    "ConfigurationWarning",
    "InvalidGrantError",
    "ResilienceError",
    "RetryBodyNotReplayableError",
    "StoreError",
    "StoreWarning",
    "TokenDecryptionError",
    "TokenEndpointError",
    "TokenError",
    "TokenRequiredError",
    "fast_circuit_open_error",
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

    def __init__(self, connector: str, retry_at: float | None = None, reason: str = "") -> None:
        super().__init__(connector, retry_at, reason)

    # Kept in ``args`` alone, so that the breaker's hot path can build one with
    # BaseException's own (C) initialiser; see ``_FastCircuitOpenError``.
    @property
    def connector(self) -> str:
        """The connector whose circuit is open."""
        value: str = self.args[0]
        return value

    @property
    def retry_at(self) -> float | None:
        """When the circuit may let a probe through, or ``None`` if forced open."""
        value: float | None = self.args[1] if len(self.args) > 1 else None
        return value

    @property
    def reason(self) -> str:
        """Why the circuit opened."""
        value: str = self.args[2] if len(self.args) > 2 else ""
        return value

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


class _FastCircuitOpenError(CircuitOpenError):
    """A CircuitOpenError built at C speed: ``_FastCircuitOpenError(connector, retry_at, reason)``.

    Rejecting a call on an open circuit is the breaker's hot path; this skips
    the Python ``__init__`` (about a third of a rejection's cost). It looks and
    pickles as a CircuitOpenError, and ``except CircuitOpenError`` catches it.
    """

    __init__ = Exception.__init__


_FastCircuitOpenError.__name__ = _FastCircuitOpenError.__qualname__ = "CircuitOpenError"

#: :class:`CircuitOpenError` built positionally at C speed:
#: ``fast_circuit_open_error(connector, retry_at, reason)``. For breakers and
#: the code on their hot path; what it builds is a CircuitOpenError in every
#: way a caller can see.
fast_circuit_open_error: Final[type[CircuitOpenError]] = _FastCircuitOpenError


def _rebuild_circuit_open(connector: str, retry_at: float | None, reason: str) -> CircuitOpenError:
    return CircuitOpenError(connector, retry_at=retry_at, reason=reason)


class TokenError(ResilienceError):
    """An OAuth2 token could not be obtained or refreshed."""


class TokenRequiredError(TokenError):
    """OAUTH2_REQUIRED is on and the connector has no usable token."""


class TokenEndpointError(TokenError):
    """The token endpoint refused a grant (RFC 6749 section 5.2) or could not be reached.

    The message and attributes never hold a secret: a description that echoes
    one of the request's secrets has it replaced by ``***``.

    Attributes:
        connector: the connector whose token was requested.
        error: the endpoint's ``error`` code (``invalid_client``, ``invalid_scope``...),
            or ``http_<status>`` / ``network_error`` when there was no RFC 6749 body.
        description: the endpoint's ``error_description``, shortened, or ``None``.
        status: the HTTP status, or ``None`` for a network fault.
        retryable: a 5xx, 429 or network fault: trying again later may work.
        attempts: requests made before giving up (retries included).
        retry_after: seconds the endpoint asked to wait (``Retry-After``), if any.
    """

    def __init__(
        self,
        connector: str,
        *,
        error: str,
        description: str | None = None,
        status: int | None = None,
        retryable: bool = False,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> None:
        self.connector = connector
        self.error = error
        self.description = description
        self.status = status
        self.retryable = retryable
        self.attempts = attempts
        self.retry_after = retry_after
        super().__init__(str(self))

    def __str__(self) -> str:
        status = f"HTTP {self.status}, " if self.status is not None else ""
        detail = f": {self.description}" if self.description else ""
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return (
            f"token endpoint refused connector {self.connector!r} "
            f"({status}{self.error}){detail}{tries}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        fields = {
            "error": self.error,
            "description": self.description,
            "status": self.status,
            "retryable": self.retryable,
            "attempts": self.attempts,
            "retry_after": self.retry_after,
        }
        return (_rebuild_endpoint_error, (type(self), self.connector, fields))


def _rebuild_endpoint_error(
    cls: type[TokenEndpointError], connector: str, fields: dict[str, Any]
) -> TokenEndpointError:
    return cls(connector, **fields)


class InvalidGrantError(TokenEndpointError):
    """The refresh token (or other grant) is invalid, expired or revoked: re-authenticate.

    Never retried: sending the same grant again cannot succeed, and with
    rotating refresh tokens a replay can make the provider revoke the whole
    token family.
    """


class TokenDecryptionError(TokenError):
    """A stored token is encrypted and OAUTH_TOKEN_ENCRYPTION_KEY cannot decrypt it."""


class RetryBodyNotReplayableError(ResilienceError):
    """A request failed in a retryable way but its body was a stream already consumed."""


class ConfigurationWarning(UserWarning):
    """A setting looks wrong but the library can go on (a misspelt variable name)."""


class StoreWarning(RuntimeWarning):
    """A store cannot be written: calls go on, but state and metrics are not kept."""
