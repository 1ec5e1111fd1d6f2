"""No secret in logs (any level), reprs, exception messages or operator status.

Every flow that logs or raises is driven against the real local endpoint, and
the captured text is searched for every token the server ever issued and for
the client secret.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet

from connector_resilience.backends import open_store
from connector_resilience.errors import TokenDecryptionError, TokenError
from connector_resilience.oauth2 import (
    TokenManager,
    load_token,
    refresh_token,
    save_token,
    token_statuses,
)
from connector_resilience.policy import Policy
from tests.oauth_server import CLIENT_SECRET, OAuthServer, config_for

FAST_RETRIES = Policy(retry={"base_ms": 1, "cap_ms": 5, "max_attempts": 2})


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer() as running:
        yield running


def _describe(exc: BaseException) -> str:
    return "\n".join([str(exc), repr(exc), *traceback.format_exception_only(exc)])


def test_secrets_never_reach_logs_reprs_or_errors(
    server: OAuthServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    store = open_store("memory://")
    config = config_for(server)
    seen += [repr(config), str(config)]

    # A refresh, rotating the refresh token, then a 5xx burst that is retried.
    refresh = server.issue_refresh_token()
    save_token(
        "api", {"access_token": "at-seed-0", "refresh_token": refresh, "expires_at": 0}, store=store
    )
    manager = TokenManager("api", config=config, store=store, policy=FAST_RETRIES)
    seen += [repr(manager), repr(manager.valid_token()), str(manager.valid_token())]
    server.fail_next(1)
    seen.append(repr(manager.refresh()))

    # A transient failure while the token is still valid (warning, fall back).
    save_token(
        "api",
        {
            "access_token": "at-seed-1",
            "refresh_token": server.issue_refresh_token(),
            "expires_at": time.time() + 100,
        },
        store=store,
    )
    server.fail_next(2)
    TokenManager("api", config=config, store=store, policy=FAST_RETRIES).get_token()

    # invalid_grant whose description echoes the refresh token and the client secret.
    spent = server.issue_refresh_token()
    server.spend(spent)
    save_token(
        "gone", {"access_token": "at-seed-2", "refresh_token": spent, "expires_at": 0}, store=store
    )
    server.error_next("invalid_grant", description=f"{spent} / {CLIENT_SECRET} rejected")
    with pytest.raises(TokenError) as failure:
        refresh_token("gone", config=config, store=store)
    seen.append(_describe(failure.value))

    # Wrong client secret, and a network fault.
    bad = config_for(server, grant="client_credentials", client_secret="cs-wrong-1234")
    with pytest.raises(TokenError) as failure:
        TokenManager("svc", config=bad, store=store).get_token()
    seen.append(_describe(failure.value))
    server.hold()
    with pytest.raises(TokenError) as failure:
        TokenManager(
            "slow",
            config=config_for(server, grant="client_credentials", timeout_s=0.1),
            store=store,
            policy=FAST_RETRIES,
        ).get_token()
    server.release()
    seen.append(_describe(failure.value))

    # A record that does not parse, and an encrypted one read with the wrong key.
    store.save_token("half", {"access_token": "at-half-parsed", "expires_at": "never"})
    assert load_token("half", store=store) is None
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", Fernet.generate_key().decode())
    save_token(
        "sealed", {"access_token": "at-sealed-9", "refresh_token": "rt-sealed-9"}, store=store
    )
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", Fernet.generate_key().decode())
    with pytest.raises(TokenDecryptionError) as failure:
        load_token("sealed", store=store)
    seen.append(_describe(failure.value))
    seen.append(repr(token_statuses(store)))

    secrets = [
        *server.issued,
        CLIENT_SECRET,
        "cs-wrong-1234",
        "at-seed-0",
        "at-seed-1",
        "at-seed-2",
        "at-half-parsed",
        "at-sealed-9",
        "rt-sealed-9",
    ]
    assert len(server.issued) >= 6
    captured = "\n".join([caplog.text, *seen])
    assert "connector_resilience.oauth2" in caplog.text or "WARNING" in caplog.text
    leaks = [s for s in secrets if s in captured]
    assert not leaks, f"secrets leaked: {leaks}"
