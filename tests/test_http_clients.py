"""What is particular to the httpx transport and the requests adapter, against a real server.

The behaviour every adapter shares is in test_http_adapters.py; here: closing
retried responses, forwarding close, the client-auth hooks (``httpx.Auth``,
``requests.auth.AuthBase``), urllib3's retries turned off, a file body
rewound, and one adapter shared by many threads.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import httpx2
import pytest
import requests

from connector_resilience import summarize, testing
from connector_resilience.httpx import BearerAuth as HttpxBearerAuth
from connector_resilience.httpx import ResilientTransport
from connector_resilience.requests import BearerAuth as RequestsBearerAuth
from connector_resilience.requests import ResilientAdapter
from tests.http_server import Action, FaultServer, fault_server
from tests.test_http_adapters import CountingTokens


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async for started in fault_server():
        yield started


@pytest.fixture
async def other_server() -> AsyncIterator[FaultServer]:
    async for started in fault_server():
        yield started


@pytest.fixture
def waits() -> Iterator[list[float]]:
    with testing.no_waits() as asked:
        yield asked


def _policy() -> Any:
    return testing.memory_policy(retry={"max_attempts": 3, "base_ms": 100, "jitter_pct": 0.0})


# httpx -------------------------------------------------------------------------------


class RecordingTransport(httpx.HTTPTransport):
    """The real HTTP transport, keeping every response it returned."""

    def __init__(self) -> None:
        super().__init__()
        self.responses: list[httpx.Response] = []
        self.closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.responses.append(response)
        return response

    def close(self) -> None:
        self.closed = True
        super().close()


class AsyncRecordingTransport(httpx.AsyncHTTPTransport):
    """The real async HTTP transport, keeping every response it returned."""

    def __init__(self) -> None:
        super().__init__()
        self.responses: list[httpx.Response] = []
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.responses.append(response)
        return response

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


async def test_httpx_closes_every_retried_response_and_forwards_close(
    server: FaultServer, waits: list[float]
) -> None:
    server.script("/", [Action(503), Action(503)])
    inner = RecordingTransport()

    def run() -> int:
        with httpx.Client(
            transport=ResilientTransport("api", transport=inner, policy=_policy())
        ) as c:
            return c.get(server.url + "/").status_code

    assert await asyncio.to_thread(run) == 200
    assert [r.status_code for r in inner.responses] == [503, 503, 200]
    assert [r.is_closed for r in inner.responses] == [True, True, True]
    assert inner.closed


async def test_httpx_async_closes_every_retried_response_and_forwards_aclose(
    server: FaultServer, waits: list[float]
) -> None:
    server.script("/", [Action(503), Action(401)])
    inner = AsyncRecordingTransport()
    transport = ResilientTransport(
        "api", transport=inner, policy=_policy(), tokens=CountingTokens()
    )
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(server.url + "/")
        assert response.status_code == 200
        # The 503 (retried) and the 401 (refreshed) were closed before the next send.
        assert [(r.status_code, r.is_closed) for r in inner.responses[:2]] == [
            (503, True),
            (401, True),
        ]
    assert inner.closed


async def test_httpx_a_sync_inner_transport_in_an_async_client_is_a_clear_error(
    server: FaultServer,
) -> None:
    transport = ResilientTransport("api", transport=httpx.HTTPTransport(), policy=_policy())
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(TypeError, match="sync transport"):
            await client.get(server.url + "/")


@pytest.mark.parametrize("library", [httpx, httpx2], ids=["httpx", "httpx2"])
async def test_httpx_bearer_auth_refreshes_once_on_401_sync_and_async(
    library: Any, server: FaultServer, other_server: FaultServer, waits: list[float]
) -> None:
    tokens = CountingTokens()
    auth = HttpxBearerAuth(tokens)
    server.script("/me", [Action(401)])
    elsewhere = other_server.url.replace("127.0.0.1", "localhost")

    def run() -> list[int]:
        with library.Client(auth=auth) as client:
            return [client.get(server.url + "/me").status_code, client.get(elsewhere).status_code]

    assert await asyncio.to_thread(run) == [200, 200]
    server.script("/me", [Action(401)])
    async with library.AsyncClient(auth=auth) as client:
        assert (await client.get(server.url + "/me")).status_code == 200
    assert tokens.refreshes == 2
    assert [s.headers["Authorization"] for s in server.seen] == [
        "Bearer token-1",
        "Bearer token-2",
        "Bearer token-2",
        "Bearer token-3",
    ]
    assert "Authorization" not in other_server.seen[0].headers


# requests ------------------------------------------------------------------------------


def test_requests_adapter_turns_urllib3_retries_off() -> None:
    adapter = ResilientAdapter("api", policy=_policy())
    assert adapter.max_retries.total == 0
    assert adapter.max_retries.read is False
    assert not adapter.max_retries.redirect


class RecordingAdapter(ResilientAdapter):
    """Keeps every response the adapter built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.responses: list[requests.Response] = []

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        response = super().build_response(req, resp)
        self.responses.append(response)
        return response


async def test_requests_closes_retried_responses_and_rewinds_a_file_body(
    server: FaultServer, waits: list[float]
) -> None:
    server.script("/upload", [Action(503), Action(503)])
    adapter = RecordingAdapter("api", policy=_policy())

    def run() -> int:
        with requests.Session() as session:
            session.mount("http://", adapter)
            body = io.BytesIO(b"x" * 2000)
            return session.put(server.url + "/upload", data=body, timeout=10).status_code

    assert await asyncio.to_thread(run) == 200
    assert [len(s.body) for s in server.seen] == [2000, 2000, 2000]
    assert [r.raw.closed for r in adapter.responses[:2]] == [True, True]


async def test_requests_bearer_auth_refreshes_once_and_keeps_to_its_origin(
    server: FaultServer, other_server: FaultServer, waits: list[float]
) -> None:
    tokens = CountingTokens()
    server.script("/me", [Action(401)])
    elsewhere = other_server.url.replace("127.0.0.1", "localhost")

    def run() -> list[int]:
        with requests.Session() as session:
            session.auth = RequestsBearerAuth(tokens)
            first = session.get(server.url + "/me", timeout=10)
            assert [r.status_code for r in first.history] == [401]
            return [first.status_code, session.get(elsewhere, timeout=10).status_code]

    assert await asyncio.to_thread(run) == [200, 200]
    assert tokens.refreshes == 1
    assert [s.headers["Authorization"] for s in server.seen] == ["Bearer token-1", "Bearer token-2"]
    assert "Authorization" not in other_server.seen[0].headers


async def test_requests_one_adapter_serves_many_threads(
    server: FaultServer, waits: list[float]
) -> None:
    policy = _policy()
    server.script("/", [Action(503)] * 5)
    # More attempts than scripted 503s: however the threads interleave, no call
    # can run out of attempts, so every failure costs exactly one more attempt.
    adapter = ResilientAdapter("api", policy=policy, pool_maxsize=8, max_attempts=6)
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(session: requests.Session) -> None:
        for _ in range(5):
            status = session.get(server.url + "/", timeout=10).status_code
            with lock:
                statuses.append(status)

    def run() -> None:
        with requests.Session() as session:
            session.mount("http://", adapter)
            threads = [threading.Thread(target=worker, args=(session,)) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)

    await asyncio.to_thread(run)
    assert statuses == [200] * 40
    assert server.hits() == 45  # 40 calls and one retry per 503
    summary = summarize("api", policy=policy)
    assert (summary.total_calls, summary.attempts, summary.errors) == (40, 45, 0)


# requests: the pools the adapter keeps per origin -------------------------------------


def _pool_of(adapter: ResilientAdapter, url: str, **send: Any) -> Any:
    """The pool ``adapter`` sends a GET of ``url`` through, with a send's TLS and proxy settings."""
    prepared = requests.Request("GET", url).prepare()
    options = {"verify": True, "proxies": {}, "cert": None, **send}
    return adapter.get_connection_with_tls_context(prepared, **options)


def _held(adapter: ResilientAdapter, url: str) -> Any:
    """The pool the pool manager holds for ``url`` (verified TLS), made if it holds none."""
    return adapter.poolmanager.connection_from_url(url, pool_kwargs={"cert_reqs": "CERT_REQUIRED"})


def test_requests_each_origin_and_tls_setting_gets_the_pool_the_manager_hands_out() -> None:
    adapter = ResilientAdapter("api", policy=_policy())
    verified = _pool_of(adapter, "https://api.example.com/a")
    assert _pool_of(adapter, "https://api.example.com/b?q=1") is verified
    assert verified is _held(adapter, "https://api.example.com/")
    unverified = _pool_of(adapter, "https://api.example.com/a", verify=False)
    assert unverified is not verified
    assert (verified.cert_reqs, unverified.cert_reqs) == ("CERT_REQUIRED", "CERT_NONE")
    with_cert = _pool_of(adapter, "https://api.example.com/a", cert="/tmp/client.pem")
    assert with_cert not in (verified, unverified)
    assert with_cert.cert_file == "/tmp/client.pem"
    assert _pool_of(adapter, "https://api.example.com:8443/a") is not verified
    assert _pool_of(adapter, "https://user:secret@api.example.com/a") is verified
    assert _pool_of(adapter, "https://api.example.com/a", verify=False) is unverified


def test_requests_a_pool_the_manager_dropped_or_closed_is_never_handed_out() -> None:
    adapter = ResilientAdapter("api", policy=_policy(), pool_connections=2)
    first = _pool_of(adapter, "https://a.example.com/")
    adapter.close()  # the manager lets go of every pool
    again = _pool_of(adapter, "https://a.example.com/")
    assert again is not first
    assert again is _held(adapter, "https://a.example.com/")
    # Past two origins the manager drops its least recently used pool: every
    # request is then the manager's to answer, as without the adapter.
    for url in ("https://b.example.com/", "https://c.example.com/", "https://a.example.com/"):
        assert _pool_of(adapter, url) is _held(adapter, url)
    assert len(adapter.poolmanager.pools) == 2
    # A new pool manager (init_poolmanager) starts afresh.
    adapter.init_poolmanager(4, 4)
    assert _pool_of(adapter, "https://a.example.com/") is _held(adapter, "https://a.example.com/")


@pytest.mark.parametrize(
    "url", ["http://h.example.com/a/b?c=1&d=2", "http://h.example.com", "http://h.example.com//x"]
)
def test_requests_the_url_form_without_a_proxy_is_httpadapters(url: str) -> None:
    prepared = requests.Request("GET", url).prepare()
    ours = ResilientAdapter("api", policy=_policy())
    assert ours.request_url(prepared, {}) == requests.adapters.HTTPAdapter().request_url(
        prepared, {}
    )


async def test_requests_a_proxy_setting_is_never_served_a_direct_pool(
    server: FaultServer, other_server: FaultServer, waits: list[float]
) -> None:
    adapter = ResilientAdapter("api", policy=_policy())
    proxy = {"http": other_server.url}

    def run() -> list[int]:
        with requests.Session() as session:
            session.trust_env = False
            session.mount("http://", adapter)
            direct = session.get(server.url + "/x", timeout=10).status_code
            proxied = session.get(server.url + "/x", timeout=10, proxies=proxy).status_code
            again = session.get(server.url + "/x", timeout=10).status_code
            return [direct, proxied, again]

    assert await asyncio.to_thread(run) == [200, 200, 200]
    assert server.hits() == 2
    # The proxy was asked for the whole URL, as HTTPAdapter asks a proxy.
    assert other_server.hits() == 1
    assert other_server.seen[0].headers["Host"] == server.url.removeprefix("http://")


async def test_requests_go_on_after_the_adapter_closed_its_pools(
    server: FaultServer, other_server: FaultServer, waits: list[float]
) -> None:
    adapter = ResilientAdapter("api", policy=_policy(), pool_connections=1)

    def run() -> list[int]:
        with requests.Session() as session:
            session.mount("http://", adapter)
            urls = (server.url, other_server.url, server.url, other_server.url)
            statuses = [session.get(url + "/", timeout=10).status_code for url in urls]
            adapter.close()
            statuses.append(session.get(server.url + "/", timeout=10).status_code)
            return statuses

    assert await asyncio.to_thread(run) == [200] * 5
    assert (server.hits(), other_server.hits()) == (3, 2)


def test_requests_a_subclass_that_builds_its_own_pool_keys_is_asked_every_time() -> None:
    class OwnKeys(ResilientAdapter):
        asked = 0

        def build_connection_pool_key_attributes(
            self, request: requests.PreparedRequest, verify: Any, cert: Any = None
        ) -> tuple[dict[str, Any], dict[str, Any]]:
            OwnKeys.asked += 1
            return super().build_connection_pool_key_attributes(request, verify, cert)

    adapter = OwnKeys("api", policy=_policy())
    first = _pool_of(adapter, "https://api.example.com/a")
    assert _pool_of(adapter, "https://api.example.com/a") is first
    assert OwnKeys.asked == 2
