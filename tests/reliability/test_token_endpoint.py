"""Issue 21, items 9 to 11: what the token endpoint gets, what comes back, and how long it may take.

Against real servers on 127.0.0.1: the test OAuth server (echoing requests on
demand, decoding Basic credentials as RFC 6749 Appendix B says or as Authlib's
server code does), and a raw socket server that drips its answer a byte at a
time, head or body.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
import traceback
import urllib.parse
from collections.abc import Iterator
from types import TracebackType

import pytest

from connector_resilience import Policy, TokenManager
from connector_resilience.backends import open_store
from connector_resilience.errors import TokenEndpointError
from connector_resilience.oauth2 import OAuth2Config, save_token
from tests.oauth_server import CLIENT_ID, CLIENT_SECRET, OAuthServer, config_for

#: Scheduling slack on a loaded 2-core machine, on top of a deadline.
SLACK_S = 0.5
#: A refresh token with every character that the form and percent encodings treat differently.
ODD_REFRESH = "rt/with+odd chars=ü&%"


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer() as running:
        yield running


def _every_form(secret: str) -> list[str]:
    return [secret, urllib.parse.quote_plus(secret), urllib.parse.quote(secret, safe="")]


# 9. Secrets in every encoding the library sends ------------------------------------


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_an_echoing_endpoint_never_puts_a_secret_in_an_error(
    server: OAuthServer, auth_method: str
) -> None:
    store = open_store("memory://echo")
    save_token(
        "api",
        {"access_token": "at-old-value", "refresh_token": ODD_REFRESH, "expires_at": 0},
        store=store,
    )
    config = config_for(server, auth_method=auth_method, extra_params={"audience": "aud/x y+z"})
    server.echo_next()
    manager = TokenManager("api", config=config, store=store, policy=Policy())
    with pytest.raises(TokenEndpointError) as info:
        manager.get_token()
    shown = str(info.value) + "".join(traceback.format_exception(info.value))
    assert "grant_type=refresh_token" in shown  # the echo did come back
    secrets = [*_every_form(CLIENT_SECRET), *_every_form(ODD_REFRESH), *_every_form("aud/x y+z")]
    if auth_method == "client_secret_basic":  # the credential, however it was encoded
        for encode in (urllib.parse.quote_plus, lambda text: urllib.parse.quote(text, safe="")):
            pair = f"{encode(CLIENT_ID)}:{encode(CLIENT_SECRET)}"
            secrets.append(base64.b64encode(pair.encode()).decode())
    leaked = [secret for secret in secrets if secret in shown]
    assert leaked == [], f"{leaked} in {shown!r}"


# 10. client_secret_basic that every decoder reads alike -------------------------


@pytest.mark.parametrize("decoder", ["form", "authlib"])
def test_basic_credentials_read_the_same_by_form_and_percent_decoders(decoder: str) -> None:
    """A space and a '+' in the secret: Appendix B decoders and Authlib's agree on it."""
    with OAuthServer(basic_decoder=decoder) as server:
        config = config_for(server, grant="client_credentials")
        assert " " in CLIENT_SECRET
        assert "+" in CLIENT_SECRET
        TokenManager("svc", config=config, store=open_store("memory://basic")).get_token()
        (request,) = server.requests
        assert (request.auth_style, request.outcome) == ("basic", "ok")


# 11. A whole-request deadline ------------------------------------------------------


class Dripper:
    """An HTTP endpoint on 127.0.0.1 that sends its answer one byte at a time.

    Args:
        part: ``"head"`` drips the status line and headers too; ``"body"``
            sends the head at once and drips the body.
        every_s: seconds between two bytes (well under any socket timeout).
        for_s: how long the whole answer takes to drip.
    """

    def __init__(self, *, part: str, every_s: float = 0.05, for_s: float = 5.0) -> None:
        self.part = part
        self.every_s = every_s
        body = b'{"access_token":"at-dripped","token_type":"Bearer","expires_in":3600}'
        self.body = body.ljust(int(for_s / every_s), b" ")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.started: list[float] = []
        self.finished: list[float] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Dripper:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            self.started.append(time.monotonic())
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(self.body)
            )
            dripped = head + self.body if self.part == "head" else self.body
            try:
                if self.part == "body":
                    conn.sendall(head)
                for index in range(len(dripped)):
                    conn.sendall(dripped[index : index + 1])
                    time.sleep(self.every_s)  # the drip itself, what the test is about
            except OSError:
                pass  # the client hung up: what it should do
            self.finished.append(time.monotonic())


def _dripping_config(dripper: Dripper, *, timeout_s: float) -> OAuth2Config:
    return OAuth2Config(
        token_url=dripper.url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        grant="client_credentials",
        timeout_s=timeout_s,
    )


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_dripping_endpoint_is_cut_off_at_timeout_s(part: str) -> None:
    """timeout_s=0.5 bounds the request, though no single read ever waits 0.5 s."""
    policy = Policy(retry={"max_attempts": 1})
    with Dripper(part=part) as dripper:
        manager = TokenManager(
            "drip",
            config=_dripping_config(dripper, timeout_s=0.5),
            store=open_store("memory://drip"),
            policy=policy,
        )
        started = time.monotonic()
        with pytest.raises(TokenEndpointError) as info:
            manager.get_token()
        took = time.monotonic() - started
    assert took < 0.5 + SLACK_S, f"the request ran {took:.1f}s"
    assert (info.value.error, info.value.retryable) == ("network_error", True)
    assert "no complete answer within 0.5s" in str(info.value)


def test_a_refresh_ends_before_the_token_lock_lease(tmp_path: object) -> None:
    """With retries and a generous timeout_s, the refresh still ends inside the lock's lease."""
    lock_timeout_s = 6.0
    lease_s = lock_timeout_s / 2  # the lease is half the wait (docs/oauth2.md)
    policy = Policy(
        oauth={"lock_timeout_s": lock_timeout_s},
        retry={"max_attempts": 5, "base_ms": 10, "cap_ms": 20},
    )
    with Dripper(part="body", for_s=20) as dripper:
        manager = TokenManager(
            "drip",
            config=_dripping_config(dripper, timeout_s=30),
            store=open_store("sqlite:///lease.db"),
            policy=policy,
        )
        started = time.monotonic()
        with pytest.raises(TokenEndpointError):
            manager.get_token()
        took = time.monotonic() - started
    assert took < lease_s, f"the refresh held the lock {took:.1f}s, its lease is {lease_s:g}s"
