"""Code the OAuth2 tests run in spawned child processes (so it must be importable)."""

from __future__ import annotations

import threading
from typing import Any

import connector_resilience
from connector_resilience.backends import open_store
from connector_resilience.oauth2 import OAuth2Config, TokenManager


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

    Each thread puts ``(worker, thread, "ok", token)`` or ``(worker, thread,
    "error", "Type: message")`` on ``results``.
    """
    manager = TokenManager("acme", config=OAuth2Config(**config), store=open_store(store_url))

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
