"""connector-resilience: retries, a circuit breaker, call metrics and OAuth2 tokens.

Put ``@resilient`` on a connector's methods, or ``ResilienceMiddleware`` in an
aiohttp ``ClientSession``; configure everything with one :class:`Policy`.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from connector_resilience._blocks import Attempt, Retrying, retrying
from connector_resilience.backends import open_store, register_backend
from connector_resilience.circuit import CircuitBreaker, StateChange
from connector_resilience.errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    InvalidGrantError,
    RateLimitExceededError,
    ResilienceError,
    StoreError,
    TokenDecryptionError,
    TokenEndpointError,
    TokenError,
    TokenRequiredError,
)
from connector_resilience.metrics import (
    HealthStatus,
    Summary,
    flush_metrics,
    health_status,
    record_call,
    summarize,
)
from connector_resilience.oauth2 import OAuth2Config, OAuth2Token, TokenManager, current_token
from connector_resilience.policy import Policy
from connector_resilience.resilient import RetryEvent, RetryStatistics, resilient
from connector_resilience.retry import compute_backoff_ms, wait_backoff

try:
    __version__ = version("connector-resilience")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

# A library logs; the application decides where it goes.
logging.getLogger("connector_resilience").addHandler(logging.NullHandler())

__all__ = [
    "Attempt",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigurationError",
    "HealthStatus",
    "InvalidGrantError",
    "OAuth2Config",
    "OAuth2Token",
    "Policy",
    "RateLimitExceededError",
    "ResilienceError",
    "RetryEvent",
    "RetryStatistics",
    "Retrying",
    "StateChange",
    "StoreError",
    "Summary",
    "TokenDecryptionError",
    "TokenEndpointError",
    "TokenError",
    "TokenManager",
    "TokenRequiredError",
    "__version__",
    "compute_backoff_ms",
    "current_token",
    "flush_metrics",
    "health_status",
    "open_store",
    "record_call",
    "register_backend",
    "resilient",
    "retrying",
    "summarize",
    "wait_backoff",
]
