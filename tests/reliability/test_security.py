"""Issue 9, point 6: secrets never show, files are private, bad settings are named.

The secrets: every token the OAuth2 server issued, the client secret, the
Redis password and OAUTH_TOKEN_ENCRYPTION_KEY. They are searched for in all
logs (DEBUG and up), reprs, exception messages, metric records and labels,
and the output of every ``connector-resilience`` subcommand.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from connector_resilience import (
    Policy,
    TokenManager,
    current_token,
    flush_metrics,
    resilient,
)
from connector_resilience.aiohttp import ResilienceMiddleware
from connector_resilience.backends import close_all_stores, open_store, redact_url
from connector_resilience.circuit import breaker_for
from connector_resilience.errors import ConfigurationError, StoreError
from connector_resilience.oauth2 import save_token
from connector_resilience.oauth2._token import cipher_for_policy
from tests.oauth_server import CLIENT_SECRET, OAuthServer, config_for
from tests.redis_server import RedisServer
from tests.reliability._support import ROOT

pytestmark = pytest.mark.slow

REDIS_PASSWORD = "rp-Hunter2-secret"


def _describe(exc: BaseException) -> str:
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer() as server:
        yield server


def test_secrets_never_reach_logs_reprs_errors_metrics_or_cli(
    oauth: OAuthServer,
    redis_server_factory: Callable[..., RedisServer],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    redis = redis_server_factory(password=REDIS_PASSWORD)
    url = f"{redis.url}/0?prefix=secrets"
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("CONNECTOR_STORE_URL", url)
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", key)
    policy = Policy(retry={"base_ms": 1, "cap_ms": 5})
    seen: list[str] = [repr(policy), str(policy), repr(list(policy.iter_settings()))]
    store = open_store(url)
    seen += [repr(store), str(store), store.url]

    # Tokens: a refresh grant with rotation, through the manager, a decorator and middleware.
    save_token(
        "api",
        {"access_token": "at-seed-0000", "refresh_token": oauth.issue_refresh_token()},
        policy=policy,
    )
    manager = TokenManager("api", config=config_for(oauth), policy=policy)
    seen += [repr(manager), repr(manager.refresh()), repr(config_for(oauth))]

    @resilient("api", policy=policy, tokens=manager)
    def fetch() -> int:
        request = urllib.request.Request(
            oauth.resource_url, headers={"Authorization": f"Bearer {current_token()}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)

    assert fetch() == 200
    seen.append(repr(breaker_for("api", policy=policy, store=store)))

    async def through_middleware() -> int:
        middleware = ResilienceMiddleware("api-mw", policy=policy, tokens=manager)
        seen.append(repr(middleware))
        async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
            async with session.get(oauth.resource_url) as response:
                return response.status

    import asyncio

    assert asyncio.run(through_middleware()) == 200
    assert flush_metrics()
    records = store.read_calls(since=0)
    assert records
    seen += [json.dumps([r.to_json() for r in records])]

    # Faults: Redis refuses a wrong password, then is stopped altogether.
    wrong = open_store(url.replace(REDIS_PASSWORD, "wrong-pass-x"))
    with pytest.raises(StoreError) as failure:
        wrong.get_circuit("api")
    seen.append(_describe(failure.value))
    redis.stop()
    with pytest.raises(StoreError) as failure:
        store.get_circuit("api")
    seen.append(_describe(failure.value))
    assert fetch() == 200  # the call goes on; the fault is logged
    flush_metrics()

    # The command line, with the same environment.
    env = {**os.environ, "CONNECTOR_STORE_URL": url, "OAUTH_TOKEN_ENCRYPTION_KEY": key}
    for args in (["--version"], ["--help"], ["demo", "--seconds", "1"]):
        result = subprocess.run(
            [sys.executable, "-m", "connector_resilience.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        seen += [result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")]

    secrets = [*oauth.issued, "at-seed-0000", CLIENT_SECRET, REDIS_PASSWORD, key]
    captured = "\n".join([caplog.text, *seen])
    leaks = sorted({s[:6] + "..." for s in secrets if s in captured})
    assert not leaks, f"secrets leaked (shown by their first characters): {leaks}"


def test_a_password_in_the_query_string_is_redacted_too() -> None:
    for url in (
        "redis://127.0.0.1:6379/0?password=hunter2secret",
        "rediss://127.0.0.1:6379/0?ssl_password=hunter2secret&prefix=x",
        "redis://user:hunter2secret@127.0.0.1:6379/0",
    ):
        assert "hunter2secret" not in redact_url(url)


def test_redis_store_with_query_password_never_shows_it(
    redis_server_factory: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory(password=REDIS_PASSWORD)
    url = f"redis://127.0.0.1:{server.port}/0?password={REDIS_PASSWORD}&prefix=q"
    store = open_store(url)
    store.save_token("api", {"access_token": "x"})
    server.stop()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError) as failure:
        store.load_token("api")
    shown = "\n".join([repr(store), store.url, _describe(failure.value), caplog.text])
    assert REDIS_PASSWORD not in shown


# Files ------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_jsonl_files_are_0600_and_folders_0700_under_umask_0(
    tmp_path: Path, open_umask: None
) -> None:
    base = tmp_path / "a" / "b" / "state"
    policy = Policy(
        store={"url": f"jsonl://{base}", "flush_interval_s": 3600, "metrics_mode": "raw"}
    )

    @resilient("api", policy=policy, retry_on=())
    def call(fail: bool) -> int:
        if fail:
            raise RuntimeError("down")
        return 1

    call(False)
    with pytest.raises(RuntimeError):
        call(True)
    save_token("api", {"access_token": "at-x", "refresh_token": "rt-x"}, policy=policy)
    with open_store(f"jsonl://{base}").token_lock("api", timeout_s=1):
        pass
    assert flush_metrics()
    open_store(f"jsonl://{base}").compact(metrics_retention_s=3600)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", base):
        assert _mode(folder) == 0o700, folder
    files = sorted(base.iterdir())
    assert {p.name for p in files} >= {"metrics.jsonl", "circuit_state.jsonl", "tokens.jsonl"}
    for path in files:
        assert _mode(path) == 0o600, path


def test_sqlite_files_are_0600_under_umask_0(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "deep" / "state.db"
    store = open_store(f"sqlite:///{path}")
    store.save_token("api", {"access_token": "at-x"})
    assert _mode(path.parent) == 0o700
    files = sorted(path.parent.iterdir())
    assert {p.name for p in files} >= {"state.db", "state.db-wal", "state.db-shm"}
    for file in files:
        assert _mode(file) == 0o600, file
    close_all_stores()


def test_default_store_files_are_private_under_umask_0(tmp_path: Path, open_umask: None) -> None:
    save_token("api", {"access_token": "at-default"})  # the default JSONL paths, in cwd
    folder = Path("logs/connectors")
    assert _mode(Path("logs")) == 0o700
    assert _mode(folder) == 0o700
    assert _mode(folder / "tokens.jsonl") == 0o600


# Settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RETRY_MAX_ATTEMPTS", "zero"),
        ("RETRY_MAX_ATTEMPTS", "0"),
        ("RETRY_BASE_MS", "-5"),
        ("RETRY_JITTER_PCT", "2"),
        ("CB_FAILURES_TO_OPEN", "0"),
        ("CB_COOLDOWN_S", "soon"),
        ("CB_HALF_OPEN_PROB", "1.5"),
        ("CONNECTOR_HEALTH_ERROR_RATE", "-0.1"),
        ("CONNECTOR_HEALTH_P95_MS", "0"),
        ("OAUTH2_REQUIRED", "perhaps"),
        ("OAUTH_REFRESH_SAFETY_WINDOW_S", "-1"),
        ("CONNECTOR_STORE_URL", "bogus://user:pw-Secret9@host/db"),
        ("CONNECTOR_METRICS_FLUSH_S", "0"),
    ],
)
def test_bad_settings_are_rejected_naming_the_variable(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as failure:
        Policy()
    message = str(failure.value)
    assert variable in message
    assert "pw-Secret9" not in message


def test_a_bad_encryption_key_is_named_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "not-a-fernet-key-but-secret-7781"
    monkeypatch.setenv("OAUTH_TOKEN_ENCRYPTION_KEY", key)
    policy = Policy()
    assert key not in repr(policy)
    with pytest.raises(ConfigurationError) as failure:
        cipher_for_policy(policy)
    assert "OAUTH_TOKEN_ENCRYPTION_KEY" in str(failure.value)
    assert key not in _describe(failure.value)


def test_token_files_stay_private_after_a_rewrite(tmp_path: Path, open_umask: None) -> None:
    url = f"jsonl://{tmp_path / 'state'}"
    store = open_store(url)
    for i in range(3):
        store.save_token("api", {"access_token": f"at-{i}", "obtained_at": time.time()})
    store.compact(metrics_retention_s=60)
    assert _mode(tmp_path / "state" / "tokens.jsonl") == 0o600
