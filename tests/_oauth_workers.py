"""Code the OAuth2 tests run in spawned child processes (so it must be importable)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import connector_resilience
from connector_resilience.backends import TokenStore, open_store
from connector_resilience.oauth2 import OAuth2Config, TokenManager


class _ReportingStore:
    """A real store that reports on ``results`` each time this process asks for the token lock."""

    def __init__(self, inner: TokenStore, results: Any, worker: int) -> None:
        self.inner = inner
        self.url = getattr(inner, "url", "")
        self._results = results
        self._worker = worker

    def load_token(self, connector: str) -> dict[str, Any] | None:
        return self.inner.load_token(connector)

    def save_token(self, connector: str, token: Mapping[str, Any]) -> None:
        self.inner.save_token(connector, token)

    def list_tokens(self) -> dict[str, dict[str, Any]]:
        return self.inner.list_tokens()

    @contextlib.contextmanager
    def token_lock(
        self, connector: str, *, timeout_s: float, lease_s: float | None = None
    ) -> Iterator[None]:
        self._results.put((self._worker, -1, "lock", connector))
        with self.inner.token_lock(connector, timeout_s=timeout_s, lease_s=lease_s):
            yield


def ask_for_tokens(
    store_url: str,
    config: dict[str, Any],
    start: Any,
    results: Any,
    *,
    worker: int,
    threads: int,
) -> None:
    """Start ``threads`` threads that wait on ``start`` (a shared barrier), then get a token.

    Puts on ``results``: ``(worker, -1, "lock", connector)`` whenever this
    process asks for the store's token lock; per thread ``(worker, thread,
    "ok", token)`` or ``(worker, thread, "error", "Type: message")``; and last
    ``(worker, -1, "module", path)``, the connector_resilience it imported.
    """
    store = _ReportingStore(open_store(store_url), results, worker)
    manager = TokenManager("acme", config=OAuth2Config(**config), store=store)

    def run(index: int) -> None:
        try:
            start.wait(60)
            results.put((worker, index, "ok", manager.get_token()))
        except Exception as exc:
            results.put((worker, index, "error", f"{type(exc).__name__}: {exc}"))

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put((worker, -1, "module", connector_resilience.__file__))
