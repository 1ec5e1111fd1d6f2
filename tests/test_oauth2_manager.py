"""TokenManager: single-flight refresh across threads, tasks, loops and processes; 401 handling."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import connector_resilience
from connector_resilience.backends import TokenStore, open_store
from connector_resilience.errors import (
    InvalidGrantError,
    StoreError,
    TokenEndpointError,
    TokenError,
)
from connector_resilience.oauth2 import (
    OAuth2Token,
    TokenManager,
    is_unauthorized,
    load_token,
    save_token,
)
from connector_resilience.policy import Policy
from tests import _oauth_workers
from tests.oauth_server import CLIENT_ID, CLIENT_SECRET, OAuthServer, config_for

FAST_RETRIES = Policy(retry={"base_ms": 1, "cap_ms": 5, "max_attempts": 3})


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer() as running:
        yield running


class SpyStore:
    """A real store that counts token-lock acquisitions and can be told to fail saves."""

    def __init__(self, inner: TokenStore) -> None:
        self.inner = inner
        self.url = "spy"
        self.locks = 0
        self.fail_saves = False
        self._count = threading.Lock()

    def load_token(self, connector: str) -> dict[str, Any] | None:
        return self.inner.load_token(connector)

    def save_token(self, connector: str, token: Mapping[str, Any]) -> None:
        if self.fail_saves:
            raise StoreError("disk full")
        self.inner.save_token(connector, token)

    def list_tokens(self) -> dict[str, dict[str, Any]]:
        return self.inner.list_tokens()

    @contextlib.contextmanager
    def token_lock(
        self, connector: str, *, timeout_s: float, lease_s: float | None = None
    ) -> Iterator[None]:
        with self._count:
            self.locks += 1
        with self.inner.token_lock(connector, timeout_s=timeout_s, lease_s=lease_s):
            yield


def _seed_expired(server: OAuthServer, store: TokenStore, connector: str = "api") -> str:
    refresh = server.issue_refresh_token()
    save_token(
        connector,
        {"access_token": "at-expired", "refresh_token": refresh, "expires_at": time.time() - 10},
        store=store,
    )
    return refresh


def _call_resource(server: OAuthServer, access_token: str) -> bool:
    """Whether the resource accepts ``access_token``; a 401 must read as unauthorized."""
    request = urllib.request.Request(
        server.resource_url, headers={"Authorization": f"Bearer {access_token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as exc:
        if not is_unauthorized(exc):
            raise
        return False


# In one process ---------------------------------------------------------------


def test_threads_share_one_refresh(server: OAuthServer) -> None:
    spy = SpyStore(open_store("memory://"))
    _seed_expired(server, spy)
    manager = TokenManager("api", config=config_for(server), store=spy)
    start = threading.Barrier(16)
    results: list[str] = []

    def call() -> None:
        start.wait(10)
        results.append(manager.get_token())

    server.hold()
    threads = [threading.Thread(target=call) for _ in range(16)]
    for thread in threads:
        thread.start()
    assert server.wait_for_arrivals(1)
    server.release()
    for thread in threads:
        thread.join(10)
    assert len(results) == 16
    assert len(set(results)) == 1
    assert server.access_token_valid(results[0])
    assert server.count(grant="refresh_token") == 1
    assert spy.locks == 1  # the others waited in-process, not on the store's lock


async def test_fifty_tasks_share_one_refresh(server: OAuthServer) -> None:
    spy = SpyStore(open_store("memory://"))
    _seed_expired(server, spy)
    manager = TokenManager("api", config=config_for(server), store=spy)
    server.hold()
    together = asyncio.gather(*(manager.aget_token() for _ in range(50)))
    # All 50 tasks take their first step (join or lead the refresh) in the loop's
    # next turn, before this await can return; the refresh is still held then.
    assert await asyncio.to_thread(server.wait_for_arrivals, 1)
    server.release()
    tokens = await together
    assert len(set(tokens)) == 1
    assert server.access_token_valid(tokens[0])
    assert server.count(grant="refresh_token") == 1
    assert spy.locks == 1


async def test_refresh_does_not_block_the_event_loop(server: OAuthServer) -> None:
    store = open_store("memory://")
    _seed_expired(server, store)
    manager = TokenManager("api", config=config_for(server), store=store)
    server.hold()
    pending = asyncio.create_task(manager.aget_token())
    # This needs the loop to keep running while the refresh waits on the server.
    assert await asyncio.wait_for(asyncio.to_thread(server.wait_for_arrivals, 1), 10)
    server.release()
    assert server.access_token_valid(await pending)


def test_tasks_on_several_loops_and_threads_share_one_refresh(server: OAuthServer) -> None:
    spy = SpyStore(open_store("memory://"))
    _seed_expired(server, spy)
    manager = TokenManager("api", config=config_for(server), store=spy)
    start = threading.Barrier(6)
    results: list[str] = []
    guard = threading.Lock()

    def on_own_loop() -> None:
        async def many() -> list[str]:
            return list(await asyncio.gather(*(manager.aget_token() for _ in range(10))))

        start.wait(10)
        tokens = asyncio.run(many())
        with guard:
            results.extend(tokens)

    def in_thread() -> None:
        start.wait(10)
        token = manager.get_token()
        with guard:
            results.append(token)

    server.hold()
    threads = [threading.Thread(target=on_own_loop) for _ in range(3)]
    threads += [threading.Thread(target=in_thread) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert server.wait_for_arrivals(1)
    server.release()
    for thread in threads:
        thread.join(10)
    assert len(results) == 33
    assert len(set(results)) == 1
    assert server.count(grant="refresh_token") == 1
    assert spy.locks == 1


async def test_cancelled_leader_does_not_strand_the_others(server: OAuthServer) -> None:
    store = open_store("memory://")
    _seed_expired(server, store)
    manager = TokenManager("api", config=config_for(server), store=store)
    server.hold()
    leader = asyncio.create_task(manager.aget_token())
    assert await asyncio.to_thread(server.wait_for_arrivals, 1)
    follower = asyncio.create_task(manager.aget_token())
    await asyncio.sleep(0)  # one loop turn: the follower joins the refresh in flight
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    server.release()
    assert server.access_token_valid(await follower)
    assert server.count(grant="refresh_token") == 1


def test_a_failed_refresh_reaches_every_waiter_and_the_next_call_retries(
    server: OAuthServer,
) -> None:
    store = open_store("memory://")
    _seed_expired(server, store)
    manager = TokenManager("api", config=config_for(server), store=store, policy=FAST_RETRIES)
    server.fail_next(3)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def call() -> None:
        start.wait(10)
        try:
            manager.get_token()
        except TokenEndpointError as exc:
            errors.append(exc)

    server.hold()
    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert server.wait_for_arrivals(1)
    server.release()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 4
    assert all(isinstance(e, TokenEndpointError) and e.retryable for e in errors)
    assert server.count() == 3  # one flight's three attempts, shared by all four callers
    assert server.access_token_valid(manager.get_token())


# After a 401 ------------------------------------------------------------------


def test_refresh_after_unauthorized_replaces_the_token_once(server: OAuthServer) -> None:
    store = open_store("memory://")
    config = config_for(server, grant="client_credentials")
    manager = TokenManager("svc", config=config, store=store)
    old = manager.get_token()
    assert _call_resource(server, old)
    server.revoke_access_tokens()
    assert not _call_resource(server, old)
    start = threading.Barrier(8)
    results: list[str] = []

    def after_401() -> None:
        start.wait(10)
        results.append(manager.refresh_after_unauthorized(old))

    threads = [threading.Thread(target=after_401) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(set(results)) == 1
    new = results[0]
    assert new != old
    assert _call_resource(server, new)
    assert server.count(grant="client_credentials") == 2
    # Another process's manager that saw the same 401 finds the new token in the store.
    other = TokenManager("svc", config=config, store=store)
    assert other.refresh_after_unauthorized(old) == new
    assert server.count(grant="client_credentials") == 2


async def test_async_refresh_after_unauthorized(server: OAuthServer) -> None:
    store = open_store("memory://")
    manager = TokenManager("api", config=config_for(server), store=store)
    _seed_expired(server, store)
    old = await manager.aget_token()
    results = await asyncio.gather(*(manager.arefresh_after_unauthorized(old) for _ in range(10)))
    assert len(set(results)) == 1
    assert results[0] != old
    assert server.count(grant="refresh_token") == 2


# Resilience of the refresh itself ---------------------------------------------


def test_transient_failure_keeps_using_a_token_that_has_not_expired(server: OAuthServer) -> None:
    store = open_store("memory://")
    refresh = server.issue_refresh_token()
    save_token(
        "api",
        {
            "access_token": "at-still-valid",
            "refresh_token": refresh,
            "expires_at": time.time() + 100,
        },
        store=store,
    )  # inside the 300 s window: due, but valid for 100 s more
    manager = TokenManager("api", config=config_for(server), store=store, policy=FAST_RETRIES)
    server.fail_next(3)
    assert manager.get_token() == "at-still-valid"
    assert manager.get_token() == "at-still-valid"  # no new attempt during the pause
    assert server.count() == 3


def test_transient_failure_with_an_expired_token_raises(server: OAuthServer) -> None:
    store = open_store("memory://")
    _seed_expired(server, store)
    server.fail_next(3)
    manager = TokenManager("api", config=config_for(server), store=store, policy=FAST_RETRIES)
    with pytest.raises(TokenEndpointError, match="http_503"):
        manager.get_token()


def test_invalid_grant_after_a_rotation_elsewhere_uses_the_stored_token(
    server: OAuthServer,
) -> None:
    store = open_store("memory://")
    refresh = _seed_expired(server, store)

    def another_client_got_there_first() -> None:
        server.spend(refresh)
        save_token("api", {"access_token": "at-from-elsewhere", "expires_in": 3600}, store=store)

    server.before_next_request(another_client_got_there_first)
    manager = TokenManager("api", config=config_for(server), store=store)
    assert manager.get_token() == "at-from-elsewhere"
    assert server.count(outcome="invalid_grant") == 1


def test_invalid_grant_with_nothing_newer_is_raised(server: OAuthServer) -> None:
    store = open_store("memory://")
    refresh = _seed_expired(server, store)
    server.spend(refresh)
    manager = TokenManager("api", config=config_for(server), store=store, policy=FAST_RETRIES)
    with pytest.raises(InvalidGrantError, match="invalid_grant"):
        manager.get_token()
    assert server.count() == 1


def test_a_token_the_store_could_not_save_is_kept_and_used(server: OAuthServer) -> None:
    spy = SpyStore(open_store("memory://"))
    _seed_expired(server, spy)
    manager = TokenManager("api", config=config_for(server), store=spy)
    spy.fail_saves = True
    first = manager.refresh()
    assert first.refresh_token is not None
    # The next refresh spends the rotated refresh token held in memory, not the stale one.
    second = manager.refresh()
    assert [r.outcome for r in server.requests] == ["ok", "ok"]
    assert server.requests[1].refresh_token == first.refresh_token.get_secret_value()
    spy.fail_saves = False
    third = manager.refresh()
    stored = load_token("api", store=spy)
    assert stored is not None
    assert stored.access_token == third.access_token
    assert second.access_token != third.access_token


def test_lock_timeout_is_a_token_error_naming_the_setting(server: OAuthServer) -> None:
    store = open_store("memory://")
    _seed_expired(server, store)
    manager = TokenManager(
        "api",
        config=config_for(server),
        store=store,
        policy=Policy(oauth={"lock_timeout_s": 0.05}),
    )
    with (
        store.token_lock("api", timeout_s=1),
        pytest.raises(TokenError, match="OAUTH_LOCK_TIMEOUT_S"),
    ):
        manager.get_token()
    assert server.count() == 0


def test_repr_names_the_connector_not_secrets(server: OAuthServer) -> None:
    manager = TokenManager("api", config=config_for(server), store=open_store("memory://x"))
    assert repr(manager) == "TokenManager('api', grant='refresh_token', store='memory://x')"


# Across processes: the issue's acceptance test --------------------------------


@pytest.mark.slow
def test_four_processes_of_eight_threads_refresh_exactly_once(
    server: OAuthServer, shared_store_url: str
) -> None:
    store = open_store(shared_store_url)
    _seed_expired(server, store, connector="acme")
    config = {
        "token_url": server.token_url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "timeout_s": 30.0,
    }
    ctx = multiprocessing.get_context("spawn")
    processes, threads = 4, 8
    start = ctx.Barrier(processes * threads)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=_oauth_workers.ask_for_tokens,
            args=(shared_store_url, config, start, results),
            kwargs={"worker": w, "threads": threads},
        )
        for w in range(processes)
    ]
    # The endpoint holds the refresh until every process has asked for the
    # store's lock: the processes really contend, whatever the timing.
    server.hold()
    for worker in workers:
        worker.start()
    lock_requests: Counter[int] = Counter()
    answers: list[tuple[int, int, str, str]] = []
    # Read every result before joining: a child cannot exit with its queue unflushed.
    while len(answers) < processes * (threads + 1):
        item = results.get(timeout=90)
        if item[2] == "lock":
            lock_requests[item[0]] += 1
            if len(lock_requests) == processes:
                server.release()
        else:
            answers.append(item)
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    modules = {a[3] for a in answers if a[2] == "module"}
    assert modules == {connector_resilience.__file__}, "children imported another checkout"
    errors = [a for a in answers if a[2] == "error"]
    tokens = {a[3] for a in answers if a[2] == "ok"}
    assert not errors
    assert len(tokens) == 1
    (token,) = tokens
    assert server.access_token_valid(token)
    assert server.count(grant="refresh_token") == 1
    assert server.count(outcome="invalid_grant") == 0
    # One lock request per process: its eight threads shared one in-process flight.
    assert lock_requests == dict.fromkeys(range(processes), 1)
    stored = load_token("acme", store=store)
    assert stored is not None
    assert stored.access_token.get_secret_value() == token


def test_stored_token_after_refresh_is_a_complete_record(
    server: OAuthServer, shared_store_url: str, tmp_path: Path
) -> None:
    store = open_store(shared_store_url)
    _seed_expired(server, store)
    TokenManager("api", config=config_for(server), store=store).get_token()
    raw = store.load_token("api")
    assert raw is not None
    assert raw["format"] == 1
    assert (
        OAuth2Token.model_validate(
            {k: v for k, v in raw.items() if k in OAuth2Token.model_fields}
        ).refresh_token
        is not None
    )
