"""Stores: where breaker state, tokens and call metrics live.

A store is chosen by URL, like ``limits``' ``storage_from_string``::

    memory://                      this process only
    jsonl://logs/connectors        a folder of JSONL files (the default layout)
    sqlite:///relative.db          one SQLite file (four slashes for an absolute path)
    redis://localhost:6379/0       many processes on many hosts

Every store implements three small protocols, :class:`CircuitStore`,
:class:`TokenStore` and :class:`MetricsStore`; :func:`register_backend` adds a
scheme of your own. Opening the same URL twice in one process returns the same
store object, so ``memory://`` is shared process-wide.
"""

from __future__ import annotations

from connector_resilience._store_urls import known_schemes, redact_url, scheme_of
from connector_resilience.backends._limit_state import LeaseGrant, TokenGrant
from connector_resilience.backends._protocols import (
    DEFAULT_LOCK_LEASE_S,
    CircuitStore,
    LimitStore,
    MetricsStore,
    Store,
    StoreFactory,
    TokenStore,
)
from connector_resilience.backends._records import (
    CALL_NOTES,
    PARSE_ERRORS,
    CallRecord,
    CallStatus,
    CircuitOverride,
    CircuitRecord,
    CircuitState,
    StoreStats,
    filter_window,
)
from connector_resilience.backends._registry import (
    close_all_stores,
    open_store,
    register_backend,
    store_for_policy,
)

__all__ = [
    "CALL_NOTES",
    "DEFAULT_LOCK_LEASE_S",
    "PARSE_ERRORS",
    "CallRecord",
    "CallStatus",
    "CircuitOverride",
    "CircuitRecord",
    "CircuitState",
    "CircuitStore",
    "LeaseGrant",
    "LimitStore",
    "MetricsStore",
    "Store",
    "StoreFactory",
    "StoreStats",
    "TokenGrant",
    "TokenStore",
    "close_all_stores",
    "filter_window",
    "known_schemes",
    "open_store",
    "redact_url",
    "register_backend",
    "scheme_of",
    "store_for_policy",
]
