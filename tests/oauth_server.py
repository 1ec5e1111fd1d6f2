"""A real OAuth2 token endpoint on 127.0.0.1 for the tests (aiohttp.web, in a background thread).

It behaves like the providers that hurt: short-lived access tokens, rotating
single-use refresh tokens, and reuse of a spent refresh token answered with
``invalid_grant`` *and* the revocation of the whole token family. It counts
every request server-side, and has switches for 5xx bursts, RFC 6749 errors,
and slowness: ``hold()`` keeps requests waiting until ``release()``, so a test
knows a refresh is in flight (``wait_for_arrivals``) without sleeping.

    with OAuthServer() as server:
        refresh = server.issue_refresh_token()
        ... OAuth2Config(token_url=server.token_url, client_id=CLIENT_ID, ...)
        assert server.count(grant="refresh_token") == 1
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from connector_resilience.oauth2 import OAuth2Config

CLIENT_ID = "test-client"
#: Characters that RFC 6749 section 2.3.1's form-urlencoding must protect in Basic auth.
CLIENT_SECRET = "s3cr:et+/ü %"
PUBLIC_CLIENT_ID = "public-client"


@dataclass(frozen=True)
class TokenRequest:
    """One request to the token endpoint, as the server understood it."""

    grant: str | None
    client_id: str | None
    auth_style: str  # "basic", "body", "none" (public client) or "invalid"
    refresh_token: str | None
    scope: str | None
    outcome: str  # "ok", an RFC 6749 error code, or "http_<status>"
    accept_json: bool


@dataclass
class _Family:
    """A chain of tokens descended from one authorisation; reuse revokes all of it."""

    client_id: str
    scope: str | None
    revoked: bool = False


@dataclass
class _State:
    access: dict[str, tuple[_Family, float]] = field(default_factory=dict)
    refresh: dict[str, _Family] = field(default_factory=dict)
    spent: dict[str, _Family] = field(default_factory=dict)


class OAuthServer:
    """A token endpoint (``/token``) and a protected resource (``/resource``).

    Args:
        access_ttl_s: ``expires_in`` of issued access tokens.
        rotate_refresh_tokens: issue a new, single-use refresh token on every
            refresh (else answer without one and keep the old one valid).
        send_expires_in: include ``expires_in`` in responses.
        github_style: answer like GitHub: errors with HTTP 200 and GitHub's own
            codes, and form encoding unless the client asks for JSON.
        basic_decoder: how the Basic credential's id and secret are decoded:
            ``"form"`` (RFC 6749 Appendix B, ``+`` is a space) or ``"authlib"``
            (Authlib's own server code, which percent-decodes: ``+`` stays ``+``).
    """

    def __init__(
        self,
        *,
        access_ttl_s: int = 3600,
        rotate_refresh_tokens: bool = True,
        send_expires_in: bool = True,
        github_style: bool = False,
        basic_decoder: str = "form",
    ) -> None:
        self.access_ttl_s = access_ttl_s
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.send_expires_in = send_expires_in
        self.github_style = github_style
        self.basic_decoder = basic_decoder
        self._echo = 0
        self.clients: dict[str, str | None] = {CLIENT_ID: CLIENT_SECRET, PUBLIC_CLIENT_ID: None}
        self._state = _State()
        #: Every access and refresh token ever issued, for tests that look for leaks.
        self.issued: list[str] = []
        self._requests: list[TokenRequest] = []
        self._failures: list[tuple[int, str | None]] = []
        self._errors: list[tuple[str, int, str | None]] = []
        self._before_next: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._arrivals = 0
        self._loop = asyncio.new_event_loop()
        self._gate = asyncio.Event()
        self._gate.set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # Lifecycle ----------------------------------------------------------------

    def __enter__(self) -> OAuthServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_get("/resource", self._resource)
        app.router.add_post("/moved", self._moved)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    def stop(self) -> None:
        """Release held requests, close the listener and end the thread."""
        self.release()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        """The token endpoint."""
        return f"{self.base_url}/token"

    @property
    def resource_url(self) -> str:
        """A resource that answers 200 to a valid bearer token and 401 otherwise."""
        return f"{self.base_url}/resource"

    # Test controls ------------------------------------------------------------

    def issue_refresh_token(self, *, client_id: str = CLIENT_ID, scope: str | None = None) -> str:
        """A refresh token as if a user had just authorised ``client_id``."""
        token = _new("rt")
        with self._lock:
            self._state.refresh[token] = _Family(client_id, scope)
            self.issued.append(token)
        return token

    def fail_next(self, count: int, *, status: int = 503, retry_after: str | None = None) -> None:
        """Answer the next ``count`` token requests with ``status`` (no RFC 6749 body)."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    def error_next(self, error: str, *, status: int = 400, description: str | None = None) -> None:
        """Answer the next token request with an RFC 6749 section 5.2 error."""
        with self._lock:
            self._errors.append((error, status, description))

    def echo_next(self, count: int = 1) -> None:
        """Answer the next ``count`` token requests with an error that echoes the request.

        Its description is the Authorization header and the raw form body, as
        some servers' debug modes send them back.
        """
        with self._lock:
            self._echo += count

    def before_next_request(self, action: Callable[[], None]) -> None:
        """Run ``action`` (in the server's thread) when the next token request arrives.

        It runs before the request is judged, so it can play another client
        that got there first.
        """
        with self._lock:
            self._before_next.append(action)

    def spend(self, refresh_token: str) -> None:
        """Mark ``refresh_token`` as used, as if another client had just refreshed with it."""
        with self._lock:
            family = self._state.refresh.pop(refresh_token)
            self._state.spent[refresh_token] = family

    def hold(self) -> None:
        """Make token requests wait (after being counted as arrived) until :meth:`release`."""

        async def close_gate() -> None:
            self._gate.clear()

        # Wait until the gate is closed, so no request can slip past after hold() returns.
        asyncio.run_coroutine_threadsafe(close_gate(), self._loop).result(10)

    def release(self) -> None:
        """Let held and future token requests through."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._gate.set)

    def wait_for_arrivals(self, count: int, *, timeout_s: float = 10.0) -> bool:
        """Block until ``count`` token requests have arrived in total (or the timeout)."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self._arrivals >= count, timeout_s)

    def revoke_access_tokens(self) -> None:
        """Invalidate every issued access token (the provider rotated its signing keys...)."""
        with self._lock:
            self._state.access.clear()

    @property
    def requests(self) -> list[TokenRequest]:
        """Every token request answered so far."""
        with self._lock:
            return list(self._requests)

    def count(self, *, grant: str | None = None, outcome: str | None = None) -> int:
        """Token requests answered, filtered by grant type and outcome."""
        return sum(
            1
            for r in self.requests
            if (grant is None or r.grant == grant) and (outcome is None or r.outcome == outcome)
        )

    def access_token_valid(self, token: str) -> bool:
        """Whether the resource would accept ``token``."""
        with self._lock:
            entry = self._state.access.get(token)
        return entry is not None and not entry[0].revoked and entry[1] > time.time()

    # Handlers -----------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        # Read the whole request first, so a held request is complete even if
        # its client gives up waiting for the answer.
        raw_body = await request.read()
        form = await request.post()
        with self._arrived:
            self._arrivals += 1
            self._arrived.notify_all()
        await self._gate.wait()
        with self._lock:
            actions, self._before_next = self._before_next[:1], self._before_next[1:]
        for action in actions:
            action()
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        accept_json = "application/json" in request.headers.get("Accept", "")
        client_id, auth_style = self._authenticate(request, params)
        grant = params.get("grant_type")

        def answer(outcome: str, status: int, body: dict[str, Any], **headers: str) -> web.Response:
            with self._lock:
                self._requests.append(
                    TokenRequest(
                        grant=grant,
                        client_id=client_id,
                        auth_style=auth_style,
                        refresh_token=params.get("refresh_token"),
                        scope=params.get("scope"),
                        outcome=outcome,
                        accept_json=accept_json,
                    )
                )
            return self._respond(status, body, accept_json=accept_json, headers=headers)

        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
            forced = self._errors.pop(0) if self._errors else None
            echo, self._echo = self._echo > 0, max(0, self._echo - 1)
        if echo:
            said = f"{request.headers.get('Authorization', '')} {raw_body.decode()}"
            return answer("invalid_request", 400, _error_body("invalid_request", said))
        if failure is not None:
            status, retry_after = failure
            extra = {"Retry-After": retry_after} if retry_after else {}
            return answer(f"http_{status}", status, {}, **extra)
        if forced is not None:
            error, status, description = forced
            return answer(error, status, _error_body(error, description))
        if auth_style == "invalid" or client_id is None:
            return answer("invalid_client", 401, _error_body("invalid_client", None))
        if grant == "client_credentials":
            if self.clients.get(client_id) is None:
                return answer("unauthorized_client", 400, _error_body("unauthorized_client", None))
            family = _Family(client_id, params.get("scope"))
            return answer("ok", 200, self._issue(family, with_refresh=False))
        if grant == "refresh_token":
            return answer(*self._refresh(client_id, params))
        return answer("unsupported_grant_type", 400, _error_body("unsupported_grant_type", None))

    def _refresh(self, client_id: str, params: dict[str, str]) -> tuple[str, int, dict[str, Any]]:
        presented = params.get("refresh_token", "")
        with self._lock:
            family = self._state.refresh.get(presented)
            if family is None:
                spent = self._state.spent.get(presented)
                if spent is not None:
                    spent.revoked = True  # reuse detected: the whole family dies
                return "invalid_grant", 400, _error_body("invalid_grant", "refresh token is spent")
            if family.revoked or family.client_id != client_id:
                return "invalid_grant", 400, _error_body("invalid_grant", "refresh token revoked")
            if self.rotate_refresh_tokens:
                del self._state.refresh[presented]
                self._state.spent[presented] = family
        return "ok", 200, self._issue(family, with_refresh=self.rotate_refresh_tokens)

    def _issue(self, family: _Family, *, with_refresh: bool) -> dict[str, Any]:
        access = _new("at")
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer"}
        if self.send_expires_in:
            body["expires_in"] = self.access_ttl_s
        if family.scope:
            body["scope"] = family.scope
        with self._lock:
            self._state.access[access] = (family, time.time() + self.access_ttl_s)
            self.issued.append(access)
            if with_refresh:
                refresh = _new("rt")
                self._state.refresh[refresh] = family
                self.issued.append(refresh)
                body["refresh_token"] = refresh
        return body

    def _authenticate(self, request: web.Request, params: dict[str, str]) -> tuple[str | None, str]:
        header = request.headers.get("Authorization", "")
        in_body = "client_secret" in params
        if header.startswith("Basic ") and self.basic_decoder == "authlib":
            if in_body:
                return None, "invalid"
            from authlib.oauth2.rfc6749.util import extract_basic_authorization

            basic_id, secret = extract_basic_authorization(request.headers)
            ok = basic_id in self.clients and self.clients[basic_id] == secret
            return (basic_id, "basic") if ok else (None, "invalid")
        if header.startswith("Basic "):
            if in_body:
                return None, "invalid"  # RFC 6749 2.3: one method per request
            try:
                pair = base64.b64decode(header[6:], validate=True).decode("ascii")
            except (binascii.Error, UnicodeDecodeError):
                return None, "invalid"
            raw_id, sep, raw_secret = pair.partition(":")
            basic_id = urllib.parse.unquote_plus(raw_id)
            secret = urllib.parse.unquote_plus(raw_secret)
            ok = bool(sep) and basic_id in self.clients and self.clients[basic_id] == secret
            return (basic_id, "basic") if ok else (None, "invalid")
        client_id = params.get("client_id")
        if client_id is None or client_id not in self.clients:
            return None, "invalid"
        expected = self.clients[client_id]
        if expected is None:
            return (client_id, "none") if not in_body else (None, "invalid")
        ok = params.get("client_secret") == expected
        return (client_id, "body") if ok else (None, "invalid")

    def _respond(
        self, status: int, body: dict[str, Any], *, accept_json: bool, headers: dict[str, str]
    ) -> web.Response:
        headers = {**headers, "Cache-Control": "no-store"}
        if self.github_style and "error" in body:
            aliases = {
                "invalid_grant": "bad_refresh_token",
                "invalid_client": "incorrect_client_credentials",
            }
            body = {**body, "error": aliases.get(body["error"], body["error"])}
            status = 200
        if self.github_style and not accept_json:
            text = urllib.parse.urlencode({k: str(v) for k, v in body.items()})
            return web.Response(
                status=status,
                text=text,
                content_type="application/x-www-form-urlencoded",
                headers=headers,
            )
        if not body:
            return web.Response(
                status=status,
                text="<html>unavailable</html>",
                headers=headers,
                content_type="text/html",
            )
        return web.json_response(body, status=status, headers=headers)

    async def _moved(self, request: web.Request) -> web.Response:
        """A token endpoint that moved: a client must not follow with its credentials."""
        raise web.HTTPTemporaryRedirect(location=self.token_url)

    async def _resource(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        if not self.access_token_valid(token):
            return web.json_response(
                {"error": "invalid_token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return web.json_response({"ok": True})


def _new(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(18)}"


def _error_body(error: str, description: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": error}
    if description is not None:
        body["error_description"] = description
    return body


def config_for(server: OAuthServer, **overrides: Any) -> OAuth2Config:
    """An ``OAuth2Config`` for the confidential test client at ``server``."""
    fields: dict[str, Any] = {
        "token_url": server.token_url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "timeout_s": 5.0,
    }
    fields.update(overrides)
    return OAuth2Config(**fields)
