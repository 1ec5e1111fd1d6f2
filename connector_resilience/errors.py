"""The exceptions connector-resilience raises.

Every exception derives from :class:`ResilienceError`, so one ``except`` clause
catches them all. When retries run out, the decorated function's own exception
is raised unchanged: these classes describe what the library itself decided.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Final

from connector_resilience import _clock

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "CircuitTransitionError",
    "ConfigurationError",
    "ConfigurationWarning",
    "InvalidGrantError",
    "RateLimitExceededError",
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


#: How the reason of a call refused by a slow start begins (the breaker is
#: closed, admitting a growing share of calls).
SLOW_START_REASON: Final = "slow start after recovery"


class CircuitOpenError(ResilienceError):
    """The circuit of a connector is open, so the call was refused without running.

    Attributes:
        connector: the connector whose circuit is open.
        retry_at: wall-clock time (seconds since the epoch) at which the circuit
            may let a probe through, or ``None`` when an operator forced it open.
        reason: why the circuit refuses calls ("5 consecutive failures",
            "slow start after recovery: admitting 40% of calls", ...).
        failure_type: the exception type of the failure that opened the
            circuit (``"ConnectionError"``, ``"HTTP 503"``), or ``None``.
        failure_message: that failure's message, secrets masked, or ``None``.
    """

    def __init__(
        self,
        connector: str,
        retry_at: float | None = None,
        reason: str = "",
        last_failure: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(connector, retry_at, reason, last_failure)

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

    @property
    def failure_type(self) -> str | None:
        """The exception type of the failure that opened the circuit, if known."""
        failure = self._last_failure()
        return failure[0] if failure else None

    @property
    def failure_message(self) -> str | None:
        """The message of the failure that opened the circuit (secrets masked), if known."""
        failure = self._last_failure()
        return failure[1] if failure else None

    def _last_failure(self) -> tuple[str, str] | None:
        value: tuple[str, str] | None = self.args[3] if len(self.args) > 3 else None
        return value

    def __str__(self) -> str:
        details = [d for d in (self.reason, _failure_text(self._last_failure())) if d]
        detail = f" ({'; '.join(details)})" if details else ""
        if self.reason.startswith(SLOW_START_REASON):
            return f"circuit for connector {self.connector!r} refused the call{detail}"
        return f"circuit for connector {self.connector!r} is open {_until(self.retry_at)}{detail}"

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_circuit_open,
            (self.connector, self.retry_at, self.reason, self._last_failure()),
        )


def _until(retry_at: float | None) -> str:
    """When a circuit may admit calls again, for any time at all (1e12 s from now, inf, nan)."""
    if retry_at is None:
        return "until an operator closes it"
    if not math.isfinite(retry_at):
        return "with no end set"
    try:
        stamp = _dt.datetime.fromtimestamp(retry_at, tz=_dt.UTC)
    except (OverflowError, OSError, ValueError):
        # Past the year 9999: a calendar date cannot be written, a duration can.
        years = (retry_at - _clock.wall()) / (365.25 * 86_400)
        if years < 1:  # before the year 1: a damaged time, shown as it is
            return f"until epoch second {retry_at:.0f}"
        return f"for about {years:,.0f} more years"
    return f"until {stamp.isoformat(timespec='seconds')}"


def _failure_text(failure: tuple[str, str] | None) -> str:
    if not failure:
        return ""
    kind, message = failure
    return f"last failure: {kind}: {message}" if message else f"last failure: {kind}"


class _FastCircuitOpenError(CircuitOpenError):
    """A CircuitOpenError built at C speed: ``_FastCircuitOpenError(connector, retry_at, ...)``.

    Rejecting a call on an open circuit is the breaker's hot path; this skips
    the Python ``__init__`` (about a third of a rejection's cost). It looks and
    pickles as a CircuitOpenError, and ``except CircuitOpenError`` catches it.
    """

    __init__ = Exception.__init__


_FastCircuitOpenError.__name__ = _FastCircuitOpenError.__qualname__ = "CircuitOpenError"

#: :class:`CircuitOpenError` built positionally at C speed:
#: ``fast_circuit_open_error(connector, retry_at, reason, last_failure)``. For breakers and
#: the code on their hot path; what it builds is a CircuitOpenError in every
#: way a caller can see.
fast_circuit_open_error: Final[type[CircuitOpenError]] = _FastCircuitOpenError


def _rebuild_circuit_open(
    connector: str,
    retry_at: float | None,
    reason: str,
    last_failure: tuple[str, str] | None = None,
) -> CircuitOpenError:
    return CircuitOpenError(connector, retry_at=retry_at, reason=reason, last_failure=last_failure)


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


class CircuitTransitionError(ResilienceError):
    """An operator asked a breaker for a move that makes no sense from its state.

    For example ``close()`` on a closed breaker, or ``half_open()`` on one an
    operator disabled. Nothing was changed.

    Attributes:
        connector: whose breaker.
        action: what was asked (``"close"``, ``"half_open"``).
        state: the state it was in (``closed``, ``open``, ``half_open``,
            ``forced_open``, ``disabled``).
    """

    def __init__(self, connector: str, *, action: str, state: str, hint: str) -> None:
        self.connector = connector
        self.action = action
        self.state = state
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"cannot {self.action.replace('_', '-')} the circuit of {self.connector!r}: "
            f"it is {self.state.replace('_', '-')}; {self.hint}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_transition_error,
            (self.connector, self.action, self.state, self.hint),
        )


def _rebuild_transition_error(
    connector: str, action: str, state: str, hint: str
) -> CircuitTransitionError:
    return CircuitTransitionError(connector, action=action, state=state, hint=hint)


class _RefusalError(ResilienceError):
    """A call load control refused before it reached the connector (``connector``, ``retry_at``)."""

    _what = "refused"

    def __init__(self, connector: str, retry_at: float | None = None) -> None:
        super().__init__(connector, retry_at)

    @property
    def connector(self) -> str:
        """The connector the call was for."""
        value: str = self.args[0]
        return value

    @property
    def retry_at(self) -> float | None:
        """Wall-clock time (seconds since the epoch) to try again at, or ``None`` if unknown."""
        value: float | None = self.args[1] if len(self.args) > 1 else None
        return value

    def __str__(self) -> str:
        if self.retry_at is None:
            return f"connector {self.connector!r}: {self._what}"
        stamp = _dt.datetime.fromtimestamp(self.retry_at, tz=_dt.UTC)
        when = stamp.isoformat(timespec="milliseconds")
        return f"connector {self.connector!r}: {self._what} until {when}"

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.connector, self.retry_at))


class RateLimitExceededError(_RefusalError):
    """The connector's rate limiter had no token for this call within its deadline.

    The call was not sent. Raised also while the connector is paused because
    the server answered 429 (or a rate-limit 403) with a time to come back.

    Attributes:
        connector: the connector the call was for.
        retry_at: wall-clock time (seconds since the epoch) when a token is due.
    """

    _what = "rate limit reached, no token"


class BulkheadFullError(_RefusalError):
    """Every slot of the connector's bulkhead was taken for longer than the call may wait.

    The call was not sent.

    Attributes:
        connector: the connector the call was for.
        retry_at: for a bulkhead shared through the store, the time by which a
            slot is sure to be free (the earliest lease end); ``None`` for a
            per-process bulkhead, where it depends on calls in flight.
    """

    _what = "bulkhead full, no free slot"


class ConfigurationWarning(UserWarning):
    """A setting looks wrong but the library can go on (a misspelt variable name)."""


class StoreWarning(RuntimeWarning):
    """A store cannot be written: calls go on, but state and metrics are not kept."""
