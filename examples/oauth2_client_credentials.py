"""OAuth2 client credentials: get a token, share it, and replace it after a 401.

Runs against a tiny token endpoint it starts on 127.0.0.1 (``_local_oauth_server.py``)::

    python examples/oauth2_client_credentials.py

Point ``OAuth2Config`` at your provider's token endpoint (or use a preset from
``connector_resilience.oauth2.PRESETS``) and the rest stays the same.
"""

from __future__ import annotations

import asyncio
import tempfile
import urllib.error
import urllib.request

from _local_oauth_server import LocalTokenEndpoint

from connector_resilience.backends import open_store
from connector_resilience.oauth2 import (
    OAuth2Config,
    TokenManager,
    is_unauthorized,
    token_statuses,
)

CLIENT_ID = "example-client"
CLIENT_SECRET = "example-secret"  # made up: the local endpoint accepts it


def call_api(url: str, access_token: str) -> int:
    """GET ``url`` with the bearer token; return the HTTP status."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {access_token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        if is_unauthorized(exc):
            return 401
        raise


def main() -> int:
    """Run the example; 0 when everything behaved as described."""
    with (
        tempfile.TemporaryDirectory() as folder,
        LocalTokenEndpoint(CLIENT_ID, CLIENT_SECRET) as endpoint,
    ):
        tokens = TokenManager(
            "example-api",
            config=OAuth2Config(
                token_url=endpoint.token_url,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                grant="client_credentials",
            ),
            # Processes that share this folder share the token and refresh it one at a time.
            store=open_store(f"jsonl://{folder}"),
        )

        token = tokens.get_token()
        print(f"first call: HTTP {call_api(endpoint.resource_url, token)}")

        async def twenty_tasks() -> set[str]:
            return set(await asyncio.gather(*(tokens.aget_token() for _ in range(20))))

        shared = asyncio.run(twenty_tasks())
        print(f"20 concurrent tasks got {len(shared)} distinct token(s)")

        # The provider stops accepting the token before it expires: on a 401,
        # refresh once and retry once.
        endpoint.revoke_all()
        status = call_api(endpoint.resource_url, token)
        print(f"after the provider revoked it: HTTP {status}")
        if status == 401:
            token = tokens.refresh_after_unauthorized(token)
            status = call_api(endpoint.resource_url, token)
            print(f"refreshed once, retried once: HTTP {status}")

        for row in token_statuses(tokens.store):
            left = "unknown" if row.seconds_left is None else f"{row.seconds_left:.0f}s"
            print(f"{row.connector}: expires in {left}, refresh due: {row.refresh_due}")
        print(f"token endpoint was called {endpoint.token_requests} times")
        ok = status == 200 and len(shared) == 1 and endpoint.token_requests == 2
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
