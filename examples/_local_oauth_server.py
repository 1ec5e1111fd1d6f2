"""A tiny OAuth2 token endpoint for the examples: stdlib only, on 127.0.0.1, in a thread.

It speaks just enough RFC 6749 for the examples: the client_credentials grant
with HTTP Basic client authentication, short-lived bearer tokens, and a
``/resource`` that answers 401 to a token it no longer accepts. It is not a
server to run anything real on.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LocalTokenEndpoint:
    """``with LocalTokenEndpoint(client_id, client_secret) as endpoint: endpoint.token_url``."""

    def __init__(self, client_id: str, client_secret: str, *, expires_in: int = 3600) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.token_requests = 0
        self._valid: dict[str, float] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LocalTokenEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def token_url(self) -> str:
        """Where to POST token requests."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    @property
    def resource_url(self) -> str:
        """A protected resource: 200 for a valid bearer token, else 401."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/resource"

    def revoke_all(self) -> None:
        """Stop accepting every token issued so far (as after a key rotation)."""
        with self._lock:
            self._valid.clear()

    def _issue(self) -> dict[str, Any]:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.token_requests += 1
            self._valid[token] = time.time() + self.expires_in
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}

    def _accepts(self, token: str) -> bool:
        with self._lock:
            return self._valid.get(token, 0.0) > time.time()

    def _authenticated(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        raw_id, _, raw_secret = base64.b64decode(header[6:]).decode().partition(":")
        # RFC 6749 2.3.1: the id and secret were form-urlencoded before base64.
        return (urllib.parse.unquote_plus(raw_id), urllib.parse.unquote_plus(raw_secret)) == (
            self.client_id,
            self.client_secret,
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                if not endpoint._authenticated(self.headers.get("Authorization", "")):
                    self._json(401, {"error": "invalid_client"})
                elif form.get("grant_type") != "client_credentials":
                    self._json(400, {"error": "unsupported_grant_type"})
                else:
                    self._json(200, endpoint._issue())

            def do_GET(self) -> None:
                bearer = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if endpoint._accepts(bearer):
                    self._json(200, {"hello": "world"})
                else:
                    self._json(401, {"error": "invalid_token"})

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the example prints what matters."""

        return Handler
