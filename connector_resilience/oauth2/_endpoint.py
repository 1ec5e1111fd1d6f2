"""Talking to an OAuth2 token endpoint: the client settings and one RFC 6749 exchange.

The exchange is synchronous, on the standard library's ``urllib.request`` (the
runtime dependencies stay pydantic-settings, tenacity and filelock); the async
API runs it in a worker thread, so there is one implementation. Transient
failures (5xx, 429, network faults) are retried by tenacity with the policy's
backoff; RFC 6749 section 5.2 errors are not, ``invalid_grant`` least of all.

One request, connect to last byte, ends by its deadline (``timeout_s``, and
never past the refresh's budget): a timer shuts its socket down, so an endpoint
that drips its answer a byte at a time cannot hold a refresh (and the token
lock) for longer. Whatever the endpoint echoes back is masked in every encoding
the request carried the secrets in (raw, form-encoded, percent-encoded, the
base64 Basic credential).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import logging
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from email.message import Message
from typing import TYPE_CHECKING, Any, Literal, Self

import tenacity
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connector_resilience import _clock, _waits
from connector_resilience.errors import InvalidGrantError, TokenEndpointError, TokenError
from connector_resilience.oauth2._token import OAuth2Token
from connector_resilience.retry import parse_retry_after, wait_backoff

if TYPE_CHECKING:
    from connector_resilience.policy import Policy

__all__ = ["AuthMethod", "GrantType", "OAuth2Config", "fetch_token", "safe_url"]

logger = logging.getLogger("connector_resilience.oauth2")

GrantType = Literal["refresh_token", "client_credentials"]
#: Client authentication, named as in RFC 7591 (``token_endpoint_auth_method``).
AuthMethod = Literal["client_secret_basic", "client_secret_post", "none"]

#: Parameters the flow itself sets; ``extra_params`` may not replace them.
_RESERVED = frozenset({"grant_type", "refresh_token", "client_id", "client_secret"})
#: Error codes some servers send with a 400 that mean "try again later".
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_MAX_BODY = 64 * 1024
_MAX_TEXT = 300
_LOOPBACK_NAMES = frozenset({"localhost"})
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]+")


class OAuth2Config(BaseModel):
    """How to get tokens for one connector from its provider's token endpoint.

    Example:
        >>> config = OAuth2Config(
        ...     token_url="https://auth.example.com/oauth2/token",
        ...     client_id="my-app",
        ...     client_secret="s3cret",
        ...     grant="client_credentials",
        ...     scope="read write",
        ... )

    Attributes:
        token_url: the token endpoint; ``https://`` (plain ``http://`` only to a
            loopback address, or with ``allow_insecure_http``), as RFC 6749
            section 3.2 requires.
        client_id: the client identifier.
        client_secret: the client secret (not needed with ``auth_method="none"``).
        grant: ``"refresh_token"`` (section 6: renew a token a user authorised)
            or ``"client_credentials"`` (section 4.4: the client acts for itself).
        auth_method: ``"client_secret_basic"`` (HTTP Basic, the default),
            ``"client_secret_post"`` (credentials in the form body) or ``"none"``
            (a public client: ``client_id`` in the body, no secret).
        scope: scope to request (client_credentials) or to narrow to (refresh).
        extra_params: further form parameters (``audience``, ``resource``...);
            kept out of ``repr`` and masked in error descriptions.
        timeout_s: the longest one request may take, from connecting to the
            last byte of the answer (not per socket read: an endpoint that
            drips its answer is cut off too).
        keep_fields: non-standard response fields to keep with the token.
        error_aliases: provider error codes to read as RFC 6749 ones
            (GitHub's ``bad_refresh_token`` is ``invalid_grant``).
        default_expires_in_s: lifetime to assume when a response has no
            ``expires_in`` (Salesforce); ``None`` leaves the expiry unknown.
        allow_insecure_http: permit ``http://`` to a non-loopback host.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    token_url: str
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    grant: GrantType = "refresh_token"
    auth_method: AuthMethod = "client_secret_basic"
    scope: str | None = None
    # Hidden from repr: a provider may want a credential here (a client assertion).
    extra_params: dict[str, str] = Field(default_factory=dict, repr=False)
    timeout_s: float = Field(10.0, gt=0)
    keep_fields: tuple[str, ...] = ()
    error_aliases: dict[str, str] = Field(default_factory=dict)
    default_expires_in_s: float | None = Field(None, gt=0)
    allow_insecure_http: bool = False

    @field_validator("extra_params")
    @classmethod
    def _no_reserved_params(cls, value: dict[str, str]) -> dict[str, str]:
        clash = sorted(_RESERVED.intersection(value))
        if clash:
            raise ValueError(f"extra_params may not set {', '.join(clash)}: the flow sets them")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        parts = urllib.parse.urlsplit(self.token_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("token_url must be an absolute https:// URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("token_url must not carry credentials; use client_id/client_secret")
        if parts.scheme == "http" and not (self.allow_insecure_http or _loopback(parts.hostname)):
            raise ValueError(
                "token_url must use https:// (RFC 6749 section 3.2); plain http:// is "
                "allowed to a loopback address, or with allow_insecure_http=True"
            )
        has_secret = self.client_secret is not None and bool(self.client_secret.get_secret_value())
        if self.auth_method != "none" and not has_secret:
            raise ValueError(f"auth_method={self.auth_method!r} needs a client_secret")
        if self.grant == "client_credentials" and self.auth_method == "none":
            raise ValueError("the client_credentials grant needs a confidential client (a secret)")
        return self


def _loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def safe_url(url: str) -> str:
    """``url`` without query or fragment, for logs and messages."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def fetch_token(
    config: OAuth2Config,
    *,
    connector: str,
    previous: OAuth2Token | None,
    policy: Policy,
    budget_s: float | None = None,
    clock: Callable[[], float] | None = None,
) -> OAuth2Token:
    """Run the configured grant once (retrying transient failures) and return the new token.

    Args:
        config: endpoint and client.
        connector: named in errors and logs.
        previous: the token being replaced; its refresh token is the grant for
            ``grant="refresh_token"`` and is kept if the response has none.
        policy: retry settings (attempts, backoff, deadline).
        budget_s: longest time for every attempt and wait together (the
            refresh lock's lease), on top of the policy's deadline.
        clock: the clock the token's ``obtained_at`` and ``expires_at`` are
            stamped with (the store's, so every host judges expiry alike);
            the local wall clock if ``None``.

    Raises:
        InvalidGrantError: the endpoint rejected the grant; re-authenticate.
        TokenEndpointError: any other refusal, or transient failures that
            outlasted the retries (``retryable`` is then true).
        TokenError: a refresh_token grant without a refresh token.
    """
    params: dict[str, str] = {"grant_type": config.grant}
    secrets = [config.client_secret.get_secret_value()] if config.client_secret else []
    if config.client_secret is not None and config.auth_method == "client_secret_basic":
        credential = basic_auth(config.client_id, config.client_secret.get_secret_value())
        secrets.append(credential.removeprefix("Basic "))
    if config.grant == "refresh_token":
        if previous is None or previous.refresh_token is None:
            raise TokenError(f"connector {connector!r} has no refresh token to refresh with")
        params["refresh_token"] = previous.refresh_token.get_secret_value()
        secrets.append(params["refresh_token"])
    if previous is not None:
        secrets.append(previous.access_token.get_secret_value())
    if config.scope:
        params["scope"] = config.scope
    params.update(config.extra_params)
    secrets.extend(config.extra_params.values())
    secrets = _sent_forms(secrets)
    data = _post_with_retries(
        config, params, connector=connector, secrets=secrets, policy=policy, budget_s=budget_s
    )
    try:
        token = OAuth2Token.from_response(
            data,
            now=clock() if clock is not None else None,
            previous=previous if config.grant == "refresh_token" else None,
            keep_fields=config.keep_fields,
            default_expires_in_s=config.default_expires_in_s,
        )
    except ValueError as exc:
        raise TokenEndpointError(
            connector, error="invalid_response", description=_clean(str(exc), secrets)
        ) from None
    if token.scope is None and config.scope:
        token = token.model_copy(update={"scope": config.scope})
    return token


def _post_with_retries(
    config: OAuth2Config,
    params: Mapping[str, str],
    *,
    connector: str,
    secrets: list[str],
    policy: Policy,
    budget_s: float | None,
) -> dict[str, Any]:
    limits = [b for b in (budget_s, policy.retry.deadline_s) if b is not None]
    budget = min(limits) if limits else None
    deadline = None if budget is None else _clock.monotonic() + budget
    backoff = wait_backoff(policy=policy)
    attempts = 0

    def remaining() -> float | None:
        return None if deadline is None else max(0.0, deadline - _clock.monotonic())

    def wait(state: tenacity.RetryCallState) -> float:
        # Never sleep past the budget: the caller holds a lock whose lease ends there.
        left = remaining()
        delay = backoff(state)
        return delay if left is None else min(delay, left)

    def stop(state: tenacity.RetryCallState) -> bool:
        left = remaining()
        return state.attempt_number >= policy.retry.max_attempts or (left is not None and left <= 0)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome is not None else None
        logger.warning(
            "token endpoint %s failed for connector %r (%s); retry %d in %.2fs",
            safe_url(config.token_url),
            connector,
            getattr(failure, "error", type(failure).__name__),
            state.attempt_number,
            state.upcoming_sleep,
        )

    def attempt() -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        left = remaining()
        timeout = config.timeout_s if left is None else max(0.05, min(config.timeout_s, left))
        return _post_once(config, params, connector=connector, secrets=secrets, timeout=timeout)

    retrying = tenacity.Retrying(
        stop=stop,
        wait=wait,
        retry=tenacity.retry_if_exception(
            lambda exc: isinstance(exc, TokenEndpointError) and exc.retryable
        ),
        before_sleep=before_sleep,
        # Through _waits, so testing.no_waits() and FakeClock cover token refreshes too.
        sleep=lambda seconds: _waits.sleep(seconds),  # noqa: PLW0108 - read at call time
        reraise=True,
    )
    try:
        return retrying(attempt)
    except TokenEndpointError as exc:
        exc.attempts = attempts
        raise


def _sent_forms(secrets: list[str]) -> list[str]:
    """Each secret as the request carries it (raw, form-encoded, percent-encoded), longest first.

    An endpoint that echoes the request back in its error puts these forms,
    not only the raw value, into the text this library shows.
    """
    forms = {
        form
        for secret in secrets
        for form in (secret, urllib.parse.quote_plus(secret), urllib.parse.quote(secret, safe=""))
    }
    return sorted(forms, key=len, reverse=True)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A token endpoint that redirects is misconfigured; following could leak credentials."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Deadline:
    """Cuts one request off at its deadline by shutting its sockets down from a timer.

    A socket timeout bounds each read, not the request: an endpoint sending a
    byte per read keeps it alive for ever. The connections are registered as
    they connect; at the deadline their sockets are shut down, which wakes the
    blocked read with an end of stream.
    """

    def __init__(self, seconds: float) -> None:
        self.passed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        """The request is over: no shutdown."""
        self._timer.cancel()

    def connection_class(self, base: type[http.client.HTTPConnection]) -> Any:
        """``base``, with each connection's socket watched once connected."""
        deadline = self

        class Watched(base):  # type: ignore[valid-type, misc]
            def connect(self) -> None:
                super().connect()
                deadline._watch(self.sock)

        return Watched

    def _watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            passed = self.passed
        if passed:
            _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.passed = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown, on an SSL socket too: it acts on the file
    # descriptor and leaves the TLS state (another thread is reading it) alone.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _HTTP(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._deadline.connection_class(http.client.HTTPConnection), req)


class _HTTPS(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            self._deadline.connection_class(http.client.HTTPSConnection),
            req,
            context=self._context,  # type: ignore[attr-defined]
        )


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """An opener whose connections end by ``deadline`` and that never follows a redirect."""
    return urllib.request.build_opener(_NoRedirects, _HTTP(deadline), _HTTPS(deadline))


def _post_once(
    config: OAuth2Config,
    params: Mapping[str, str],
    *,
    connector: str,
    secrets: list[str],
    timeout: float,
) -> dict[str, Any]:
    body = dict(params)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        # GitHub answers in form encoding unless asked for JSON; everyone else ignores it.
        "Accept": "application/json",
    }
    secret = config.client_secret.get_secret_value() if config.client_secret else ""
    if config.auth_method == "client_secret_basic":
        headers["Authorization"] = basic_auth(config.client_id, secret)
    else:
        body["client_id"] = config.client_id
        if config.auth_method == "client_secret_post":
            body["client_secret"] = secret
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked by OAuth2Config
        config.token_url,
        data=urllib.parse.urlencode(body).encode("ascii"),
        headers=headers,
        method="POST",
    )
    logger.debug(
        "POST %s grant_type=%s auth=%s for connector %r",
        safe_url(config.token_url),
        params.get("grant_type"),
        config.auth_method,
        connector,
    )
    deadline = _Deadline(timeout)
    try:
        status, response_headers, raw = _exchange(request, deadline, timeout=timeout)
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
        reason = getattr(exc, "reason", None) or exc
        what = (
            f"no complete answer within {timeout:g}s (timeout_s, or the refresh's budget)"
            if deadline.passed
            else f"{type(exc).__name__}: {reason}"
        )
        raise TokenEndpointError(
            connector,
            error="network_error",
            description=_clean(what, secrets),
            retryable=True,
        ) from exc
    finally:
        deadline.cancel()
    data = _decode(raw, response_headers.get_content_type())
    error = data.get("error") if data is not None else None
    if 200 <= status < 300 and data is not None and error is None:
        return data
    code = _clean(error, secrets, limit=100) if isinstance(error, str) and error else None
    code = config.error_aliases.get(code, code) if code else f"http_{status}"
    description = data.get("error_description") if data is not None else None
    if 200 <= status < 300 and code.startswith("http_"):
        code, description = "invalid_response", "the token endpoint answered without a token"
    retryable = status >= 500 or status == 429 or code in _TRANSIENT_ERRORS
    error_class = InvalidGrantError if code == "invalid_grant" else TokenEndpointError
    raise error_class(
        connector,
        error=code,
        description=_clean(description, secrets) if isinstance(description, str) else None,
        status=status,
        retryable=retryable and error_class is TokenEndpointError,
        retry_after=parse_retry_after(response_headers.get("Retry-After")),
    )


def _exchange(
    request: urllib.request.Request, deadline: _Deadline, *, timeout: float
) -> tuple[int, Message, bytes]:
    """Send ``request``; its status, headers and body (at most ``_MAX_BODY`` bytes).

    Raises:
        OSError, http.client.HTTPException: no whole answer, the deadline included.
    """
    try:
        with _opener(deadline).open(request, timeout=timeout) as response:
            status: int = response.status
            headers: Message = response.headers
            raw = response.read(_MAX_BODY)
    except urllib.error.HTTPError as exc:
        status, headers = exc.code, exc.headers
        try:
            raw = exc.read(_MAX_BODY)
        except (OSError, http.client.HTTPException):
            raw = b""
        finally:
            exc.close()
    if deadline.passed:  # the shutdown may have cut the body short: it is not whole
        raise http.client.IncompleteRead(raw)
    return status, headers, raw


def basic_auth(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` value of RFC 6749 section 2.3.1.

    The id and secret are encoded before they are joined and base64'd, so a
    ``:`` or non-ASCII character in either survives the round trip. The
    encoding is percent-encoding of everything but unreserved characters
    (a space is ``%20``, never ``+``), which RFC 6749 Appendix B's form
    decoding and plain percent-decoding (Authlib's server, and others) both
    read back as the same credential.
    """
    pair = f"{urllib.parse.quote(client_id, safe='')}:{urllib.parse.quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")


def _decode(raw: bytes, content_type: str) -> dict[str, Any] | None:
    """The body as a mapping: JSON, or form encoding (GitHub's default), else ``None``."""
    text = raw.decode("utf-8", errors="replace")
    if content_type == "application/x-www-form-urlencoded":
        return dict(urllib.parse.parse_qsl(text))
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _clean(text: str | None, secrets: list[str], *, limit: int = _MAX_TEXT) -> str | None:
    """Server-supplied text made safe to show: secrets it echoes masked, one line, bounded."""
    if text is None:
        return None
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
