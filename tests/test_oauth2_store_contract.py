"""What the OAuth2 token lifecycle needs from every TokenStore, beyond the conformance suite.

Two backends fall short today; their cases are strict xfails that name the
bug, so they turn into failures (to be unmarked) the day the store is fixed.
"""

from __future__ import annotations

import threading

import pytest

from connector_resilience.backends import open_store


def test_token_lock_excludes_a_holder_that_outlives_its_own_timeout(
    store_url: str, request: pytest.FixtureRequest
) -> None:
    """``timeout_s`` bounds the wait for the lock, not how long it may be held."""
    store = open_store(store_url)
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with store.token_lock("api", timeout_s=0.05):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        # The holder is still inside its lock, so this must time out.
        with pytest.raises(TimeoutError), store.token_lock("api", timeout_s=0.5):
            pass
    finally:
        release.set()
        thread.join(10)


def test_loaded_token_is_a_deep_copy(store_url: str, request: pytest.FixtureRequest) -> None:
    """A caller changing a nested value of a loaded token must not change the store."""
    store = open_store(store_url)
    store.save_token("api", {"access_token": "a", "extra": {"instance_url": "https://x"}})
    loaded = store.load_token("api")
    assert loaded is not None
    loaded["extra"]["instance_url"] = "https://changed"
    listed = store.list_tokens()["api"]
    listed["extra"]["instance_url"] = "https://changed-too"
    again = store.load_token("api")
    assert again is not None
    assert again["extra"] == {"instance_url": "https://x"}
