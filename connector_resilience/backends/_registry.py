"""Which backend serves a URL: the built-in schemes, register_backend and the open-store cache."""

from __future__ import annotations

import importlib
import importlib.util
import threading
from typing import TYPE_CHECKING, Any

from connector_resilience._store_urls import note_scheme, redact_url, scheme_of
from connector_resilience.errors import ConfigurationError

if TYPE_CHECKING:
    from connector_resilience.backends._protocols import Store, StoreFactory
    from connector_resilience.policy import Policy


_factories: dict[str, StoreFactory] = {}
_open: dict[str, Store] = {}
_lock = threading.Lock()


def register_backend(scheme: str, factory: StoreFactory, *, replace: bool = False) -> None:
    """Make ``open_store`` understand URLs that start with ``scheme://``.

    Args:
        scheme: the URL scheme, such as ``"postgres"``.
        factory: called with the full URL; returns an object implementing :class:`Store`.
        replace: allow replacing an existing scheme (built-in ones included).

    Raises:
        ConfigurationError: the scheme is taken and ``replace`` is false.
    """
    scheme = scheme.lower()
    if not scheme.isidentifier() and not scheme.replace("+", "").isalnum():
        raise ConfigurationError(f"backend scheme {scheme!r} is not a valid URL scheme")
    with _lock:
        if scheme in _factories and not replace:
            raise ConfigurationError(f"a backend for {scheme}:// is already registered")
        _factories[scheme] = factory
    note_scheme(scheme)


def open_store(url: str) -> Store:
    """Open (or return the already open) store for ``url``.

    Raises:
        ConfigurationError: unknown scheme, malformed URL, or a missing optional
            dependency (the message names the pip extra to install).
    """
    _register_builtins()
    key = url.strip()
    store = _open.get(key)
    if store is not None:
        return store
    scheme = scheme_of(key)
    factory = _factories.get(scheme)
    if factory is None:
        raise ConfigurationError(
            f"unknown store URL scheme {scheme!r} in {redact_url(key)!r}; "
            f"known: {', '.join(sorted(_factories))}"
        )
    with _lock:
        store = _open.get(key)
        if store is None:
            store = factory(key)
            _open[key] = store
    return store


def store_for_policy(policy: Policy) -> Store:
    """The store a policy names: ``store.url``, or the three JSONL paths when unset."""
    url = policy.store.url
    if url:
        return open_store(url)
    jsonl_store = _builtin("jsonl", "JsonlStore")
    key = jsonl_store.key_for_paths(
        metrics=policy.store.metrics_path,
        circuits=policy.store.circuit_state_path,
        tokens=policy.store.token_path,
    )
    store = _open.get(key)
    if store is not None:
        return store
    with _lock:
        store = _open.get(key)
        if store is None:
            store = jsonl_store(
                metrics_path=policy.store.metrics_path,
                circuit_path=policy.store.circuit_state_path,
                token_path=policy.store.token_path,
            )
            _open[key] = store
    return store


def close_all_stores() -> None:
    """Close and forget every open store (tests use this between cases)."""
    with _lock:
        stores = list(_open.values())
        _open.clear()
    for store in stores:
        store.close()


# Built-in backends by module and opener, imported on first use: a bare
# install never loads sqlite3 or redis-py, and this module imports no backend.
_BUILTINS: dict[str, tuple[str, str]] = {
    "memory": ("memory", "MemoryStore"),
    "jsonl": ("jsonl", "JsonlStore.from_url"),
    "sqlite": ("sqlite", "SqliteStore.from_url"),
    "redis": ("redis", "RedisStore.from_url"),
    "rediss": ("redis", "RedisStore.from_url"),
    "redis+sentinel": ("redis", "RedisStore.from_url"),
    "redis+cluster": ("redis", "RedisStore.from_url"),
}
#: Optional client libraries a built-in backend needs, and what to say when one is missing.
_REDIS_MISSING = "the redis:// store needs redis-py: pip install 'connector-resilience[redis]'"
_NEEDS: dict[str, tuple[str, str]] = {
    "redis": ("redis", _REDIS_MISSING),
    "rediss": ("redis", _REDIS_MISSING),
    "redis+sentinel": ("redis", _REDIS_MISSING),
    "redis+cluster": ("redis", _REDIS_MISSING),
}

_builtins_done = False


def _register_builtins() -> None:
    global _builtins_done  # noqa: PLW0603 - one-time lazy registration
    if _builtins_done:
        return
    with _lock:
        if _builtins_done:
            return
        for scheme in _BUILTINS:
            _factories.setdefault(scheme, _builtin_factory(scheme))
        _builtins_done = True


def _builtin(module: str, attribute: str) -> Any:
    target: Any = importlib.import_module(f"connector_resilience.backends.{module}")
    for name in attribute.split("."):
        target = getattr(target, name)
    return target


def _builtin_factory(scheme: str) -> StoreFactory:
    module, opener = _BUILTINS[scheme]

    def open_builtin(url: str) -> Store:
        need = _NEEDS.get(scheme)
        if need is not None and importlib.util.find_spec(need[0]) is None:
            raise ConfigurationError(need[1])
        store: Store = _builtin(module, opener)(url)
        return store

    return open_builtin
