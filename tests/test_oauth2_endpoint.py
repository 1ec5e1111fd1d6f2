"""RFC 6749 exchanges against a real local token endpoint: grants, client auth, errors, retries."""

from __future__ import annotations

import pickle
import socket
import time
from collections.abc import Iterator

import pytest

from connector_resilience.backends import open_store
from connector_resilience.errors import (
    InvalidGrantError,
    TokenEndpointError,
    TokenError,
    TokenRequiredError,
)
from connector_resilience.oauth2 import (
    PRESETS,
    OAuth2Config,
    OAuth2Token,
    TokenManager,
    load_token,
    refresh_token,
    save_token,
)
from connector_resilience.policy import Policy
from tests.oauth_server import PUBLIC_CLIENT_ID, OAuthServer, config_for

FAST_RETRIES = Policy(retry={"base_ms": 1, "cap_ms": 5, "max_attempts": 3})


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer() as running:
        yield running


def _seed(
    connector: str, server: OAuthServer, *, expired: bool = True, url: str = "memory://"
) -> str:
    """Store a token as if the user had just authorised; return its refresh token."""
    refresh = server.issue_refresh_token()
    save_token(
        connector,
        {
            "access_token": "at-seeded",
            "refresh_token": refresh,
            "expires_at": time.time() + (-10 if expired else 3600),
        },
        store=open_store(url),
    )
    return refresh


# Grants -----------------------------------------------------------------------


def test_refresh_rotates_the_refresh_token(server: OAuthServer) -> None:
    first = _seed("api", server)
    token = refresh_token("api", config=config_for(server), store=open_store("memory://"))
    assert token.refresh_token is not None
    second = token.refresh_token.get_secret_value()
    assert second != first
    assert server.access_token_valid(token.access_token.get_secret_value())
    # The rotated token was stored; the next refresh spends it, not the first.
    refresh_token("api", config=config_for(server), store=open_store("memory://"))
    assert [r.refresh_token for r in server.requests] == [first, second]
    assert server.count(outcome="ok") == 2


def test_refresh_keeps_the_refresh_token_when_none_comes_back() -> None:
    with OAuthServer(rotate_refresh_tokens=False) as server:
        first = _seed("api", server)
        store = open_store("memory://")
        for _ in range(2):
            token = refresh_token("api", config=config_for(server), store=store)
            assert token.refresh_token is not None
            assert token.refresh_token.get_secret_value() == first
        stored = load_token("api", store=store)
        assert stored is not None
        assert stored.refresh_token is not None
        assert stored.refresh_token.get_secret_value() == first
        assert server.count(grant="refresh_token", outcome="ok") == 2


def test_client_credentials_fetches_a_token_without_refresh_token(server: OAuthServer) -> None:
    manager = TokenManager(
        "svc",
        config=config_for(server, grant="client_credentials", scope="read"),
        store=open_store("memory://"),
    )
    access = manager.get_token()
    assert server.access_token_valid(access)
    token = manager.valid_token()
    assert (token.refresh_token, token.scope) == (None, "read")
    assert manager.get_token() == access  # cached, still fresh
    (request,) = server.requests
    assert (request.grant, request.scope, request.refresh_token) == (
        "client_credentials",
        "read",
        None,
    )


@pytest.mark.parametrize(
    ("auth_method", "client_id", "seen_as"),
    [
        ("client_secret_basic", None, "basic"),
        ("client_secret_post", None, "body"),
        ("none", PUBLIC_CLIENT_ID, "none"),
    ],
)
def test_client_authentication_styles_as_the_server_sees_them(
    server: OAuthServer, auth_method: str, client_id: str | None, seen_as: str
) -> None:
    overrides: dict[str, object] = {"auth_method": auth_method}
    if client_id is not None:
        overrides.update(client_id=client_id, client_secret=None)
    refresh = server.issue_refresh_token(client_id=client_id or "test-client")
    store = open_store("memory://")
    save_token("api", {"access_token": "x", "refresh_token": refresh, "expires_at": 0}, store=store)
    refresh_token("api", config=config_for(server, **overrides), store=store)
    (request,) = server.requests
    assert (request.auth_style, request.outcome) == (seen_as, "ok")


def test_basic_auth_form_encodes_id_and_secret(server: OAuthServer) -> None:
    """RFC 6749 2.3.1: a ':' or '+' or non-ASCII character in the secret must survive."""
    server.clients["id:with+odd chars"] = "pässword:+%"
    config = config_for(
        server,
        grant="client_credentials",
        client_id="id:with+odd chars",
        client_secret="pässword:+%",
    )
    TokenManager("svc", config=config, store=open_store("memory://")).get_token()
    (request,) = server.requests
    assert (request.auth_style, request.client_id, request.outcome) == (
        "basic",
        "id:with+odd chars",
        "ok",
    )


def test_wrong_secret_is_invalid_client_and_not_retried(server: OAuthServer) -> None:
    config = config_for(server, grant="client_credentials", client_secret="wrong-secret-value")
    manager = TokenManager("svc", config=config, store=open_store("memory://"), policy=FAST_RETRIES)
    with pytest.raises(TokenEndpointError) as info:
        manager.get_token()
    error = info.value
    assert (error.error, error.status, error.retryable, error.attempts) == (
        "invalid_client",
        401,
        False,
        1,
    )
    assert "wrong-secret-value" not in str(error)
    assert server.count() == 1


# Failures and retries ---------------------------------------------------------


def test_5xx_is_retried_with_backoff_then_succeeds(server: OAuthServer) -> None:
    _seed("api", server)
    server.fail_next(2, status=503)
    token = refresh_token(
        "api", config=config_for(server), store=open_store("memory://"), policy=FAST_RETRIES
    )
    assert server.access_token_valid(token.access_token.get_secret_value())
    assert [r.outcome for r in server.requests] == ["http_503", "http_503", "ok"]


def test_5xx_burst_longer_than_the_retries_raises_a_retryable_error(server: OAuthServer) -> None:
    _seed("api", server)
    server.fail_next(5, status=502, retry_after="0")
    with pytest.raises(TokenEndpointError) as info:
        refresh_token(
            "api", config=config_for(server), store=open_store("memory://"), policy=FAST_RETRIES
        )
    assert (info.value.error, info.value.status, info.value.retryable) == ("http_502", 502, True)
    assert info.value.attempts == 3
    assert server.count() == 3


def test_invalid_grant_is_never_retried(server: OAuthServer) -> None:
    _seed("api", server)
    server.error_next("invalid_grant", description="refresh token expired")
    with pytest.raises(InvalidGrantError) as info:
        refresh_token(
            "api", config=config_for(server), store=open_store("memory://"), policy=FAST_RETRIES
        )
    assert (info.value.error, info.value.retryable) == ("invalid_grant", False)
    assert info.value.description == "refresh token expired"
    assert server.count() == 1


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ("invalid_request", 400),
        ("unauthorized_client", 400),
        ("unsupported_grant_type", 400),
        ("invalid_scope", 400),
    ],
)
def test_rfc6749_errors_map_to_token_endpoint_error(
    server: OAuthServer, error: str, status: int
) -> None:
    _seed("api", server)
    server.error_next(error, status=status, description=f"about {error}")
    with pytest.raises(TokenEndpointError) as info:
        refresh_token(
            "api", config=config_for(server), store=open_store("memory://"), policy=FAST_RETRIES
        )
    assert type(info.value) is TokenEndpointError
    assert (info.value.error, info.value.status, info.value.retryable) == (error, status, False)
    assert error in str(info.value)
    assert "'api'" in str(info.value)
    assert server.count() == 1


def test_temporarily_unavailable_error_code_is_retried(server: OAuthServer) -> None:
    _seed("api", server)
    server.error_next("temporarily_unavailable", status=400)
    refresh_token(
        "api", config=config_for(server), store=open_store("memory://"), policy=FAST_RETRIES
    )
    assert [r.outcome for r in server.requests] == ["temporarily_unavailable", "ok"]


def test_network_fault_is_retried_then_reported() -> None:
    with socket.socket() as sock:  # a port that is certainly closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = open_store("memory://")
    save_token(
        "api", {"access_token": "x", "refresh_token": "rt-net", "expires_at": 0}, store=store
    )
    config = OAuth2Config(
        token_url=f"http://127.0.0.1:{port}/token", client_id="c", client_secret="s"
    )
    with pytest.raises(TokenEndpointError) as info:
        refresh_token("api", config=config, store=store, policy=FAST_RETRIES)
    assert (info.value.error, info.value.retryable, info.value.attempts) == (
        "network_error",
        True,
        3,
    )
    assert "rt-net" not in str(info.value)


def test_slow_endpoint_times_out_and_is_retried(server: OAuthServer) -> None:
    _seed("api", server)
    server.hold()
    with pytest.raises(TokenEndpointError) as info:
        refresh_token(
            "api",
            config=config_for(server, timeout_s=0.2),
            store=open_store("memory://"),
            policy=Policy(retry={"base_ms": 1, "cap_ms": 5, "max_attempts": 2}),
        )
    assert (info.value.error, info.value.retryable, info.value.attempts) == (
        "network_error",
        True,
        2,
    )
    assert server.wait_for_arrivals(2, timeout_s=5)


def test_success_without_a_token_is_an_invalid_response(server: OAuthServer) -> None:
    _seed("api", server)
    server.fail_next(1, status=200)  # an HTML page with 200, as a captive proxy would send
    with pytest.raises(TokenEndpointError) as info:
        refresh_token("api", config=config_for(server), store=open_store("memory://"))
    assert (info.value.error, info.value.retryable) == ("invalid_response", False)


def test_descriptions_that_echo_secrets_are_masked(server: OAuthServer) -> None:
    refresh = _seed("api", server)
    server.error_next("invalid_grant", description=f"token {refresh} is unknown")
    with pytest.raises(InvalidGrantError) as info:
        refresh_token("api", config=config_for(server), store=open_store("memory://"))
    assert refresh not in str(info.value)
    assert info.value.description == "token *** is unknown"


def test_redirects_are_not_followed(server: OAuthServer) -> None:
    config = config_for(server, grant="client_credentials", token_url=f"{server.base_url}/moved")
    with pytest.raises(TokenEndpointError) as info:
        TokenManager("svc", config=config, store=open_store("memory://")).get_token()
    assert (info.value.error, info.value.status, info.value.retryable) == ("http_307", 307, False)
    assert server.count() == 0  # the credentials never reached the redirect's target


def test_endpoint_errors_survive_pickling() -> None:
    error = InvalidGrantError("api", error="invalid_grant", status=400, attempts=1)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is InvalidGrantError
    assert (copy.connector, copy.error, copy.status, str(copy)) == (
        "api",
        "invalid_grant",
        400,
        str(error),
    )


# Provider quirks --------------------------------------------------------------


def test_github_style_errors_with_200_are_mapped_by_the_preset() -> None:
    with OAuthServer(github_style=True) as server:
        _seed("gh", server)
        preset = PRESETS["github_app"].config(client_id="test-client", client_secret="unused")
        config = config_for(
            server,
            auth_method=preset.auth_method,
            error_aliases=preset.error_aliases,
            keep_fields=preset.keep_fields,
        )
        store = open_store("memory://")
        token = refresh_token("gh", config=config, store=store)
        assert token.access_token.get_secret_value().startswith("at-")
        # Replaying the spent refresh token: GitHub says 200 + bad_refresh_token.
        (spent,) = [r.refresh_token for r in server.requests]
        assert spent is not None
        save_token(
            "gh", {"access_token": "x", "refresh_token": spent, "expires_at": 0}, store=store
        )
        with pytest.raises(InvalidGrantError):
            refresh_token("gh", config=config, store=store)


def test_missing_expires_in_uses_the_configured_default() -> None:
    with OAuthServer(send_expires_in=False) as server:
        manager = TokenManager(
            "sf",
            config=config_for(server, grant="client_credentials", default_expires_in_s=7200),
            store=open_store("memory://"),
        )
        token = manager.valid_token()
        assert token.expires_at is not None
        assert token.obtained_at is not None
        assert token.expires_at - token.obtained_at == 7200


# Without a way to get a token -------------------------------------------------


def test_no_refresh_token_fails_fast_without_calling_out(
    server: OAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store("memory://")
    save_token("api", {"access_token": "x", "expires_at": 0}, store=store)
    manager = TokenManager("api", config=config_for(server), store=store)
    with pytest.raises(TokenError, match="no refresh token") as info:
        manager.get_token()
    assert not isinstance(info.value, TokenRequiredError)
    monkeypatch.setenv("OAUTH2_REQUIRED", "true")
    with pytest.raises(TokenRequiredError, match="'api'"):
        TokenManager("api", config=config_for(server), store=store).get_token()
    with pytest.raises(TokenRequiredError, match=r"'never-stored'.*none is stored"):
        TokenManager("never-stored", config=config_for(server), store=store).get_token()
    assert server.count() == 0


def test_manager_without_config_serves_stored_tokens_until_expiry() -> None:
    store = open_store("memory://")
    save_token("api", {"access_token": "at-static", "expires_in": 100}, store=store)
    manager = TokenManager("api", store=store)
    assert manager.get_token() == "at-static"  # due (100 s < 300 s window) but still valid
    save_token(
        "api", OAuth2Token.model_validate({"access_token": "at-gone", "expires_at": 1}), store=store
    )
    with pytest.raises(TokenError, match="no token endpoint"):
        TokenManager("api", store=store).get_token()
