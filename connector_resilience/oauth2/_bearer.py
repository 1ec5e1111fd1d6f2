"""Bearer tokens for ``@resilient(tokens=...)``: the token of the running call, and 401s.

The decorated function reads its token with :func:`current_token`; an attempt
that ends in HTTP 401 (an exception or a result, see :func:`is_unauthorized`)
makes the manager refresh once and the function run once more, inside the same
attempt, so a rotated token never costs a retry or a breaker failure.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from connector_resilience.errors import TokenError

__all__ = [
    "TokenSource",
    "aauthenticated",
    "authenticated",
    "current_token",
    "is_unauthorized",
]

_token: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "connector_resilience_token", default=None
)


class TokenSource(Protocol):
    """What ``@resilient(tokens=...)`` needs of a token manager."""

    def get_token(self) -> str:
        """A valid access token."""
        ...

    def refresh_after_unauthorized(self, rejected_access_token: str) -> str:
        """A new token after a 401 with ``rejected_access_token``."""
        ...

    async def aget_token(self) -> str:
        """:meth:`get_token` for coroutines."""
        ...

    async def arefresh_after_unauthorized(self, rejected_access_token: str) -> str:
        """:meth:`refresh_after_unauthorized` for coroutines."""
        ...


def current_token() -> str:
    """The access token of the ``@resilient(tokens=...)`` call running now.

    Example:
        >>> @resilient("crm", tokens=manager)  # doctest: +SKIP
        ... def contact(id: str) -> dict:
        ...     headers = {"Authorization": f"Bearer {current_token()}"}
        ...     return http.get(f"/contacts/{id}", headers=headers).json()

    Raises:
        TokenError: called outside such a call.
    """
    token = _token.get()
    if token is None:
        raise TokenError("current_token() is only available inside a @resilient(tokens=...) call")
    return token


def is_unauthorized(obj: object) -> bool:
    """Whether an exception or response says HTTP 401.

    Looks at ``status`` and ``status_code`` on the object and on its
    ``response`` (aiohttp's ``ClientResponseError``, urllib's ``HTTPError``,
    requests' and httpx's errors and responses).
    """
    for holder in (obj, getattr(obj, "response", None)):
        if holder is None:
            continue
        for name in ("status", "status_code"):
            value = getattr(holder, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value == 401:
                return True
    return False


def authenticated(fn: Callable[..., Any], tokens: TokenSource) -> Callable[..., Any]:
    """``fn`` run with a token in :func:`current_token`, once more after a 401."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        token = tokens.get_token()
        for last in (False, True):
            reset = _token.set(token)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                if last or not is_unauthorized(exc):
                    raise
            else:
                if last or not is_unauthorized(result):
                    return result
            finally:
                _token.reset(reset)
            token = tokens.refresh_after_unauthorized(token)
        raise AssertionError("unreachable")  # pragma: no cover

    return call


def aauthenticated(
    fn: Callable[..., Awaitable[Any]], tokens: TokenSource
) -> Callable[..., Awaitable[Any]]:
    """:func:`authenticated` for coroutine functions."""

    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        token = await tokens.aget_token()
        for last in (False, True):
            reset = _token.set(token)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                if last or not is_unauthorized(exc):
                    raise
            else:
                if last or not is_unauthorized(result):
                    return result
            finally:
                _token.reset(reset)
            token = await tokens.arefresh_after_unauthorized(token)
        raise AssertionError("unreachable")  # pragma: no cover

    return call
