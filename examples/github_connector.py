"""A GitHub-style REST connector on ResilienceMiddleware, against a local fake API.

A local aiohttp.web server plays the API and misbehaves the way real ones do:
the repository endpoint answers 503 to every third request, the second page
of issues is rate-limited once with ``Retry-After: 1``, and creating an issue
fails once with 502. The connector is a small class around one
``aiohttp.ClientSession`` whose last middleware is ``ResilienceMiddleware``:
it retries what is safe to retry, honours Retry-After, makes the POST
retryable with an Idempotency-Key (which the server uses to create the issue
only once), adds the bearer token, and measures every attempt.

Run: python examples/github_connector.py   (about 2 seconds)
"""

from __future__ import annotations

import asyncio
import itertools
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from connector_resilience import Policy, health_status, summarize
from connector_resilience.aiohttp import ResilienceMiddleware

TOKEN = "ghp_example_token"


# The fake API --------------------------------------------------------------


class FakeGitHub:
    """A few GitHub REST endpoints, with faults on a fixed schedule."""

    def __init__(self) -> None:
        self.requests = 0
        self._repo_hits = itertools.count(1)
        self._page2_limited = False
        self._post_failed = False
        self._issues: list[dict[str, Any]] = [
            {"number": n, "title": f"Issue {n}", "state": "open"} for n in range(1, 6)
        ]
        self._by_key: dict[str, dict[str, Any]] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests += 1
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"message": "Bad credentials"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def repo(self, request: web.Request) -> web.Response:
        if next(self._repo_hits) % 3 == 0:
            return web.json_response({"message": "Service Unavailable"}, status=503)
        owner, name = request.match_info["owner"], request.match_info["repo"]
        return web.json_response(
            {"full_name": f"{owner}/{name}", "stargazers_count": 1234, "open_issues_count": 5}
        )

    async def list_issues(self, request: web.Request) -> web.Response:
        page = int(request.query.get("page", "1"))
        if page == 2 and not self._page2_limited:
            self._page2_limited = True
            return web.json_response(
                {"message": "API rate limit exceeded"}, status=429, headers={"Retry-After": "1"}
            )
        per_page = 3
        items = self._issues[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(self._issues):
            headers["Link"] = f'<{request.url.with_query(page=page + 1)}>; rel="next"'
        return web.json_response(items, headers=headers)

    async def create_issue(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        if key in self._by_key:  # a retry of a request already done: same answer
            return web.json_response(self._by_key[key], status=201)
        body = await request.json()
        issue = {"number": len(self._issues) + 1, "title": body["title"], "state": "open"}
        self._issues.append(issue)
        self._by_key[key] = issue
        if not self._post_failed:  # the issue exists, but the answer is lost
            self._post_failed = True
            return web.json_response({"message": "Bad Gateway"}, status=502)
        return web.json_response(issue, status=201)

    async def start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/repos/{owner}/{repo}", self.repo)
        app.router.add_get("/repos/{owner}/{repo}/issues", self.list_issues)
        app.router.add_post("/repos/{owner}/{repo}/issues", self.create_issue)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# The connector --------------------------------------------------------------


class StaticToken:
    """A personal access token: the same every time (an OAuth2 manager refreshes)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def aget_token(self) -> str:
        return self._token

    async def arefresh_after_unauthorized(self, rejected_access_token: str) -> str:
        return self._token


class GitHubClient:
    """The calls this service makes to GitHub, each one resilient and measured."""

    connector_name = "github"

    def __init__(self, base_url: str, token: str, *, policy: Policy | None = None) -> None:
        self._session = aiohttp.ClientSession(
            base_url,
            headers={"Accept": "application/vnd.github+json"},
            # total bounds every request, retries and their waits included.
            timeout=aiohttp.ClientTimeout(total=15, sock_read=5),
            middlewares=(
                ResilienceMiddleware(
                    self.connector_name,
                    policy=policy,
                    tokens=StaticToken(token),
                    add_idempotency_key=True,  # our fake API honours Idempotency-Key
                ),
            ),
        )

    async def __aenter__(self) -> GitHubClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._session.close()

    async def get_repo(self, owner: str, repo: str) -> dict[str, Any]:
        async with self._session.get(f"/repos/{owner}/{repo}") as response:
            response.raise_for_status()
            data: dict[str, Any] = await response.json()
            return data

    async def list_issues(self, owner: str, repo: str) -> list[dict[str, Any]]:
        """Every open issue, following the Link header page by page."""
        issues: list[dict[str, Any]] = []
        url: str | None = f"/repos/{owner}/{repo}/issues"
        while url is not None:
            async with self._session.get(url) as response:
                response.raise_for_status()
                issues += await response.json()
                following = response.links.get("next")
                url = str(following["url"]) if following else None
        return issues

    async def create_issue(self, owner: str, repo: str, title: str) -> dict[str, Any]:
        async with self._session.post(
            f"/repos/{owner}/{repo}/issues", json={"title": title}
        ) as response:
            response.raise_for_status()
            data: dict[str, Any] = await response.json()
            return data


async def main() -> None:
    api = FakeGitHub()
    await api.start()
    # Short waits for a demo; production keeps the defaults (or sets RETRY_* variables).
    # memory:// keeps this run's numbers to itself; a service would use the
    # default JSONL files, SQLite or Redis, so that every process shares the breaker.
    policy = Policy(
        retry={"base_ms": 100, "cap_ms": 2000}, store={"url": "memory://github-example"}
    )
    try:
        async with GitHubClient(api.url, TOKEN, policy=policy) as github:
            for _ in range(3):
                repo = await github.get_repo("acme", "widgets")
            print(f"{repo['full_name']}: {repo['stargazers_count']} stars")
            issues = await github.list_issues("acme", "widgets")
            print(f"{len(issues)} open issues: {[i['number'] for i in issues]}")
            created = await github.create_issue("acme", "widgets", "Retries work")
            print(f"created issue #{created['number']}: {created['title']}")
            after = await github.list_issues("acme", "widgets")
            print(f"now {len(after)} issues (the retried POST created one, not two)")
    finally:
        await api.stop()

    s = summarize("github", policy=policy)
    print(
        f"\n{s.total_calls} calls, {s.attempts} attempts ({s.retries} retries), "
        f"{s.errors} errors seen by callers; the server saw {api.requests} requests"
    )
    print(f"failed attempts by cause: {dict(s.errors_by_type)}")
    print(f"p50 {s.p50_ms:.1f} ms, p95 {s.p95_ms:.1f} ms")
    print(f"health of 'github': {health_status('github', policy=policy)}")


if __name__ == "__main__":
    asyncio.run(main())
