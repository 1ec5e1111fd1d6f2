"""The token model, its stored form, expiry rules, encryption at rest and operator status."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from connector_resilience import _clock
from connector_resilience.backends import open_store
from connector_resilience.errors import (
    ConfigurationError,
    TokenDecryptionError,
    TokenRequiredError,
)
from connector_resilience.oauth2 import (
    PRESETS,
    OAuth2Config,
    OAuth2Token,
    is_unauthorized,
    load_token,
    needs_refresh,
    save_token,
    token_statuses,
)
from connector_resilience.policy import Policy

NOW = 1_700_000_000.0


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(_clock, "wall", lambda: NOW)
    return NOW


# The model --------------------------------------------------------------------


def test_from_response_computes_expiry_and_keeps_fields() -> None:
    token = OAuth2Token.from_response(
        {
            "access_token": "at-1",
            "token_type": "bearer",
            "expires_in": "3600",  # some providers send a string
            "refresh_token": "rt-1",
            "scope": "read write",
            "instance_url": "https://acme.my.salesforce.com",
            "id_token": "not-kept",
        },
        now=NOW,
        keep_fields=("instance_url",),
    )
    assert token.access_token.get_secret_value() == "at-1"
    assert token.refresh_token is not None
    assert token.refresh_token.get_secret_value() == "rt-1"
    assert (token.token_type, token.scope) == ("bearer", "read write")
    assert (token.expires_at, token.obtained_at) == (NOW + 3600, NOW)
    assert token.extra == {"instance_url": "https://acme.my.salesforce.com"}


def test_from_response_keeps_old_refresh_token_and_scope_when_absent() -> None:
    previous = OAuth2Token(
        access_token=SecretStr("at-0"), refresh_token=SecretStr("rt-0"), scope="read"
    )
    token = OAuth2Token.from_response({"access_token": "at-1"}, now=NOW, previous=previous)
    assert token.refresh_token is not None
    assert token.refresh_token.get_secret_value() == "rt-0"
    assert token.scope == "read"
    assert token.token_type == "Bearer"
    assert token.expires_at is None  # no expires_in and no default: unknown


def test_from_response_replaces_refresh_token_when_a_new_one_comes() -> None:
    previous = OAuth2Token(access_token=SecretStr("at-0"), refresh_token=SecretStr("rt-0"))
    token = OAuth2Token.from_response(
        {"access_token": "at-1", "refresh_token": "rt-1"}, now=NOW, previous=previous
    )
    assert token.refresh_token is not None
    assert token.refresh_token.get_secret_value() == "rt-1"


def test_from_response_default_lifetime_and_bad_bodies() -> None:
    token = OAuth2Token.from_response({"access_token": "a"}, now=NOW, default_expires_in_s=7200)
    assert token.expires_at == NOW + 7200
    with pytest.raises(ValueError, match="no access_token"):
        OAuth2Token.from_response({"token_type": "Bearer"})
    with pytest.raises(ValueError, match="no access_token"):
        OAuth2Token.from_response({"access_token": 42})


def test_repr_and_str_hide_secrets() -> None:
    token = OAuth2Token(access_token=SecretStr("at-visible?"), refresh_token=SecretStr("rt-x1"))
    for text in (repr(token), str(token), str(token.model_dump())):
        assert "at-visible?" not in text
        assert "rt-x1" not in text


# Expiry rules -----------------------------------------------------------------


def test_needs_refresh_window_and_unknown_expiry() -> None:
    hour = OAuth2Token(access_token=SecretStr("a"), expires_at=NOW + 3600, obtained_at=NOW)
    assert not needs_refresh(hour, safety_window_s=300, now=NOW)
    assert not needs_refresh(hour, safety_window_s=300, now=NOW + 3299)
    assert needs_refresh(hour, safety_window_s=300, now=NOW + 3300)
    assert needs_refresh(hour, safety_window_s=300, now=NOW + 4000)
    unknown = OAuth2Token(access_token=SecretStr("a"))
    assert not needs_refresh(unknown, safety_window_s=300, now=NOW + 10**9)
    assert needs_refresh(None)


def test_short_token_is_not_due_the_moment_it_arrives() -> None:
    minute = OAuth2Token(access_token=SecretStr("a"), expires_at=NOW + 60, obtained_at=NOW)
    assert not needs_refresh(minute, safety_window_s=300, now=NOW + 1)
    assert needs_refresh(minute, safety_window_s=300, now=NOW + 30)


def test_needs_refresh_reads_the_policy_and_mappings(
    monkeypatch: pytest.MonkeyPatch, frozen_clock: float
) -> None:
    monkeypatch.setenv("OAUTH_REFRESH_SAFETY_WINDOW_S", "10")
    assert not needs_refresh({"access_token": "a", "expires_at": NOW + 11})
    assert needs_refresh({"access_token": "a", "expires_at": NOW + 9})
    assert needs_refresh(
        {"access_token": "a", "expires_at": NOW + 11},
        policy=Policy(oauth={"refresh_safety_window_s": 60}),
    )


@given(
    lifetime=st.floats(min_value=1, max_value=10**6),
    window=st.floats(min_value=0, max_value=10**6),
    t1=st.floats(min_value=0, max_value=2 * 10**6),
    t2=st.floats(min_value=0, max_value=2 * 10**6),
)
def test_needs_refresh_never_turns_false_again(
    lifetime: float, window: float, t1: float, t2: float
) -> None:
    token = OAuth2Token(access_token=SecretStr("a"), expires_at=NOW + lifetime, obtained_at=NOW)
    early, late = sorted((t1, t2))
    if needs_refresh(token, safety_window_s=window, now=NOW + early):
        assert needs_refresh(token, safety_window_s=window, now=NOW + late)
    assert needs_refresh(token, safety_window_s=window, now=NOW + lifetime)


# Store access -----------------------------------------------------------------


def test_save_and_load_round_trip_last_wins(store_url: str, frozen_clock: float) -> None:
    store = open_store(store_url)
    assert load_token("api", store=store) is None
    save_token("api", {"access_token": "at-1", "expires_in": 60}, store=store)
    save_token(
        "api",
        OAuth2Token(
            access_token=SecretStr("at-2"),
            refresh_token=SecretStr("rt-2"),
            expires_at=NOW + 100,
            scope="read",
            extra={"instance_url": "https://x"},
        ),
        store=store,
    )
    loaded = load_token("api", store=store)
    assert loaded is not None
    assert loaded.access_token.get_secret_value() == "at-2"
    assert loaded.refresh_token is not None
    assert loaded.refresh_token.get_secret_value() == "rt-2"
    assert (loaded.expires_at, loaded.scope, loaded.extra) == (
        NOW + 100,
        "read",
        {"instance_url": "https://x"},
    )


def test_save_mapping_with_expires_in_counts_from_now(frozen_clock: float) -> None:
    store = open_store("memory://expires-in")
    token = save_token("api", {"access_token": "a", "expires_in": 60}, store=store)
    assert (token.expires_at, token.obtained_at) == (NOW + 60, NOW)


def test_save_rejects_a_mapping_that_is_not_a_token() -> None:
    with pytest.raises(ValueError, match="access_token") as info:
        save_token("api", {"refresh_token": "rt-secret-value"}, store=open_store("memory://bad"))
    assert "rt-secret-value" not in str(info.value)


def test_legacy_record_is_read(store_url: str) -> None:
    store = open_store(store_url)
    store.save_token("legacy", {"access_token": "old-at", "expires_at": NOW, "seq": 3})
    token = load_token("legacy", store=store)
    assert token is not None
    assert (token.access_token.get_secret_value(), token.expires_at) == ("old-at", NOW)


def test_stored_expires_in_is_an_unknown_expiry(store_url: str) -> None:
    """A stored relative lifetime has no start: it must not read as "an hour from now" forever."""
    store = open_store(store_url)
    store.save_token("legacy", {"access_token": "old-at", "expires_in": 3600})
    token = load_token("legacy", store=store)
    assert token is not None
    assert token.expires_at is None


def test_unparseable_record_is_absent_with_a_warning(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(store_url)
    store.save_token("api", {"access_token": "at-half", "expires_at": "soon", "refresh_token": 7})
    with caplog.at_level(logging.WARNING):
        assert load_token("api", store=store) is None
    assert "'api'" in caplog.text
    assert "expires_at" in caplog.text
    assert "at-half" not in caplog.text


def test_required_without_token_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAUTH2_REQUIRED", "true")
    with pytest.raises(TokenRequiredError, match="'crm'"):
        load_token("crm", store=open_store("memory://required"))


def test_required_per_connector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR__CRM__OAUTH2_REQUIRED", "true")
    store = open_store("memory://per-connector")
    assert load_token("billing", store=store) is None
    with pytest.raises(TokenRequiredError, match="'crm'"):
        load_token("crm", store=store)


def test_token_file_is_private(tmp_path: Path) -> None:
    store = open_store(f"jsonl://{tmp_path / 'state'}")
    save_token("api", {"access_token": "a"}, store=store)
    mode = stat.S_IMODE(os.stat(tmp_path / "state" / "tokens.jsonl").st_mode)
    assert mode == 0o600


def test_default_store_is_the_token_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OAUTH_TOKEN_PATH", str(tmp_path / "private" / "tokens.jsonl"))
    save_token("api", {"access_token": "at-default"})
    assert load_token("api") is not None
    assert stat.S_IMODE(os.stat(tmp_path / "private" / "tokens.jsonl").st_mode) == 0o600


# Encryption at rest -----------------------------------------------------------


def test_encrypted_round_trip_and_ciphertext_on_disk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", Fernet.generate_key().decode())
    store = open_store(f"jsonl://{tmp_path / 'enc'}")
    save_token("api", {"access_token": "at-plain-1", "refresh_token": "rt-plain-1"}, store=store)
    raw = (tmp_path / "enc" / "tokens.jsonl").read_text()
    assert "at-plain-1" not in raw
    assert "rt-plain-1" not in raw
    assert json.loads(raw)["encryption"] == "fernet"
    token = load_token("api", store=store)
    assert token is not None
    assert token.access_token.get_secret_value() == "at-plain-1"
    assert token.refresh_token is not None
    assert token.refresh_token.get_secret_value() == "rt-plain-1"


def test_wrong_or_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store("memory://wrong-key")
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", Fernet.generate_key().decode())
    save_token("api", {"access_token": "at-sealed"}, store=store)
    other_key = Fernet.generate_key().decode()
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", other_key)
    with pytest.raises(TokenDecryptionError, match="not the key") as info:
        load_token("api", store=store)
    assert "at-sealed" not in str(info.value)
    assert other_key not in str(info.value)
    monkeypatch.delenv("OAUTH_TOKEN_ENCRYPTION_KEY")
    with pytest.raises(TokenDecryptionError, match="not set"):
        load_token("api", store=store)


def test_key_rotation_reads_old_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store("memory://rotate")
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", old)
    save_token("api", {"access_token": "at-r"}, store=store)
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", f"{new},{old}")
    token = load_token("api", store=store)
    assert token is not None
    assert token.access_token.get_secret_value() == "at-r"


def test_plain_records_stay_readable_once_a_key_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store("memory://migrate")
    save_token("api", {"access_token": "at-before"}, store=store)
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", Fernet.generate_key().decode())
    token = load_token("api", store=store)
    assert token is not None
    assert token.access_token.get_secret_value() == "at-before"


def test_bad_key_and_missing_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", "not-a-fernet-key")
    with pytest.raises(ConfigurationError, match="OAUTH_TOKEN_ENCRYPTION_KEY") as info:
        save_token("api", {"access_token": "a"}, store=open_store("memory://bad-key"))
    assert "not-a-fernet-key" not in str(info.value)
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", Fernet.generate_key().decode())
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)  # import fails
    with pytest.raises(ConfigurationError, match=r"connector-resilience\[crypto\]"):
        save_token("api", {"access_token": "a"}, store=open_store("memory://no-crypto"))


# Operator status --------------------------------------------------------------


def test_token_statuses_show_timing_never_secrets(
    monkeypatch: pytest.MonkeyPatch, frozen_clock: float
) -> None:
    store = open_store("memory://status")
    save_token(
        "fresh",
        {"access_token": "at-s1", "refresh_token": "rt-s1", "expires_in": 3600},
        store=store,
    )
    save_token("due", {"access_token": "at-s2", "expires_at": NOW + 10}, store=store)
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", Fernet.generate_key().decode())
    save_token("sealed", {"access_token": "at-s3", "refresh_token": "rt-s3"}, store=store)
    store.save_token("broken", {"expires_at": NOW})
    monkeypatch.delenv("OAUTH_TOKEN_ENCRYPTION_KEY")  # status needs no key
    statuses = {s.connector: s for s in token_statuses(store)}
    assert list(statuses) == ["broken", "due", "fresh", "sealed"]
    fresh = statuses["fresh"]
    assert (fresh.seconds_left, fresh.refresh_due, fresh.has_refresh_token) == (3600, False, True)
    assert (statuses["due"].refresh_due, statuses["due"].has_refresh_token) == (True, False)
    assert statuses["sealed"].encrypted
    assert statuses["sealed"].has_refresh_token
    assert statuses["sealed"].readable
    assert statuses["sealed"].expires_at is None
    assert not statuses["broken"].readable
    text = repr(list(statuses.values()))
    for secret in ("at-s1", "rt-s1", "at-s2", "at-s3", "rt-s3"):
        assert secret not in text


# Odds and ends ----------------------------------------------------------------


def test_is_unauthorized_reads_status_fields() -> None:
    class Response:
        def __init__(self, status: int) -> None:
            self.status_code = status

    class FailureError(Exception):
        def __init__(self, status: int) -> None:
            self.response = Response(status)

    class AiohttpLikeError(Exception):
        status = 401

    assert is_unauthorized(AiohttpLikeError())
    assert is_unauthorized(FailureError(401))
    assert is_unauthorized(Response(401))
    assert not is_unauthorized(FailureError(403))
    assert not is_unauthorized(ValueError("401"))
    assert not is_unauthorized(None)


def test_presets_build_configs() -> None:
    microsoft = PRESETS["microsoft"].config(
        client_id="app",
        client_secret="s",
        tenant="contoso.onmicrosoft.com",
        grant="client_credentials",
        scope="https://graph.microsoft.com/.default",
    )
    assert microsoft.token_url == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    )
    assert (microsoft.auth_method, microsoft.grant) == ("client_secret_post", "client_credentials")
    sandbox = PRESETS["salesforce"].config(client_id="c", client_secret="s", domain="test")
    assert sandbox.token_url == "https://test.salesforce.com/services/oauth2/token"
    assert "instance_url" in sandbox.keep_fields
    github = PRESETS["github_app"].config(client_id="Iv1.abc", client_secret="s")
    assert github.error_aliases["bad_refresh_token"] == "invalid_grant"
    google = PRESETS["google"].config(client_id="c", client_secret="s")
    assert google.token_url == "https://oauth2.googleapis.com/token"
    with pytest.raises(ConfigurationError, match="tenant"):
        PRESETS["microsoft"].config(client_id="c", client_secret="s")
    with pytest.raises(ConfigurationError, match="not a plain host"):
        PRESETS["microsoft"].config(client_id="c", client_secret="s", tenant="evil.com/x?")
    with pytest.raises(ConfigurationError, match="supports"):
        PRESETS["google"].config(client_id="c", client_secret="s", grant="client_credentials")


def test_config_insists_on_https_and_secrets() -> None:
    with pytest.raises(ValueError, match="https"):
        OAuth2Config(token_url="http://auth.example.com/token", client_id="c", client_secret="s")
    OAuth2Config(token_url="http://127.0.0.1:9/token", client_id="c", client_secret="s")
    OAuth2Config(
        token_url="http://auth.internal/token",
        client_id="c",
        client_secret="s",
        allow_insecure_http=True,
    )
    with pytest.raises(ValueError, match="needs a client_secret"):
        OAuth2Config(token_url="https://a.example/token", client_id="c")
    with pytest.raises(ValueError, match="credentials"):
        OAuth2Config(token_url="https://u:p@a.example/token", client_id="c", client_secret="s")
    with pytest.raises(ValueError, match="grant_type"):
        OAuth2Config(
            token_url="https://a.example/token",
            client_id="c",
            client_secret="s",
            extra_params={"grant_type": "password"},
        )
    config = OAuth2Config(
        token_url="https://a.example/t",
        client_id="c",
        client_secret="cs-hidden",
        extra_params={"client_assertion": "jwt-hidden"},
    )
    for text in (repr(config), str(config)):
        assert "cs-hidden" not in text
        assert "jwt-hidden" not in text
