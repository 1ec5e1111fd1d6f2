"""Tokens through @resilient and the middleware, against a real local OAuth2 server.

The server's ``/resource`` answers 401 to any token it did not issue or has
revoked, so a revoked token forces the one-refresh-then-retry path.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import aiohttp
import pytest

from connector_resilience import (
    TokenError,
    TokenRequiredError,
    current_token,
    resilient,
    summarize,
    testing,
)
from connector_resilience.aiohttp import ResilienceMiddleware
from connector_resilience.oauth2 import TokenManager, save_token
from connector_resilience.policy import Policy
from tests.oauth_server import OAuthServer, config_for


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer() as running:
        yield running


def _manager(server: OAuthServer, policy: Policy) -> TokenManager:
    return TokenManager("crm", config=config_for(server, grant="client_credentials"), policy=policy)


def _get_json(url: str) -> dict[str, object]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {current_token()}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        data: dict[str, object] = json.load(response)
        return data


def test_decorated_call_gets_a_token_and_refreshes_once_on_401(server: OAuthServer) -> None:
    policy = testing.memory_policy()
    tokens = _manager(server, policy)

    @resilient("crm", policy=policy, tokens=tokens, retry_on=())
    def resource() -> dict[str, object]:
        return _get_json(server.resource_url)

    assert resource() == {"ok": True}
    assert server.count(grant="client_credentials") == 1
    server.revoke_access_tokens()
    assert resource() == {"ok": True}  # 401, one refresh, sent once more
    assert server.count(grant="client_credentials") == 2
    summary = summarize("crm", policy=policy)
    # The 401 was absorbed inside its attempt: no retry, no error.
    assert (summary.total_calls, summary.attempts, summary.errors) == (2, 2, 0)


def test_a_second_401_is_raised_not_looped(server: OAuthServer) -> None:
    policy = testing.memory_policy()
    tokens = _manager(server, policy)
    calls = 0

    @resilient("crm", policy=policy, tokens=tokens, retry_on=())
    def resource() -> dict[str, object]:
        nonlocal calls
        calls += 1
        server.revoke_access_tokens()  # whatever token it holds is refused
        return _get_json(server.resource_url)

    with pytest.raises(urllib.error.HTTPError) as caught:
        resource()
    assert caught.value.code == 401
    assert calls == 2


async def test_async_call_refreshes_once_on_401(server: OAuthServer) -> None:
    policy = testing.memory_policy()
    tokens = _manager(server, policy)

    @resilient("crm", policy=policy, tokens=tokens, retry_on=())
    async def resource(session: aiohttp.ClientSession) -> int:
        headers = {"Authorization": f"Bearer {current_token()}"}
        async with session.get(server.resource_url, headers=headers) as response:
            if response.status == 401:
                response.raise_for_status()
            return response.status

    async with aiohttp.ClientSession() as session:
        assert await resource(session) == 200
        server.revoke_access_tokens()
        assert await resource(session) == 200
    assert server.count(grant="client_credentials") == 2


async def test_middleware_with_a_real_token_manager(server: OAuthServer) -> None:
    policy = testing.memory_policy()
    tokens = _manager(server, policy)
    middleware = ResilienceMiddleware("crm", policy=policy, tokens=tokens)
    async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
        async with session.get(server.resource_url) as response:
            assert response.status == 200
        server.revoke_access_tokens()
        async with session.get(server.resource_url) as response:
            assert response.status == 200
    assert server.count(grant="client_credentials") == 2
    # The token endpoint was called directly, never through the middleware.
    assert summarize("crm", policy=policy).attempts == 2


def test_current_token_outside_a_call_is_a_clear_error() -> None:
    with pytest.raises(TokenError, match="only available inside"):
        current_token()


def test_oauth2_required_refuses_to_call_without_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OAUTH2_REQUIRED", "true")
    policy = testing.memory_policy()
    calls = 0

    @resilient("crm", policy=policy)
    def call_out() -> str:
        nonlocal calls
        calls += 1
        return "sent"

    with pytest.raises(TokenRequiredError, match="crm"):
        call_out()
    assert calls == 0
    save_token("crm", {"access_token": "stored", "expires_in": 3600}, policy=policy)
    assert call_out() == "sent"
    assert calls == 1
