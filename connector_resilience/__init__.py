"""connector-resilience: retries, a circuit breaker, call metrics and OAuth2 tokens.

Put ``@resilient`` on a connector's methods, or ``ResilienceMiddleware`` in an
aiohttp ``ClientSession``; configure everything with one :class:`Policy`.

Importing the package imports nothing heavy: each public name below is
imported on first use (pydantic-settings with the first :class:`Policy`, the
OAuth2 package only if you use it), so a service pays start-up time only for
what it uses.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from typing import TYPE_CHECKING, Any

from connector_resilience._version import __version__

if TYPE_CHECKING:
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

# A library logs; the application decides where it goes.
logging.getLogger("connector_resilience").addHandler(logging.NullHandler())

#: Where each public name lives; imported when first asked for.
_LAZY: dict[str, str] = {
    "Attempt": "_blocks",
    "BulkheadFullError": "errors",
    "CircuitBreaker": "circuit",
    "CircuitOpenError": "errors",
    "ConfigurationError": "errors",
    "HealthStatus": "metrics",
    "InvalidGrantError": "errors",
    "OAuth2Config": "oauth2",
    "OAuth2Token": "oauth2",
    "Policy": "policy",
    "RateLimitExceededError": "errors",
    "ResilienceError": "errors",
    "RetryEvent": "resilient",
    "RetryStatistics": "resilient",
    "Retrying": "_blocks",
    "StateChange": "circuit",
    "StoreError": "errors",
    "Summary": "metrics",
    "TokenDecryptionError": "errors",
    "TokenEndpointError": "errors",
    "TokenError": "errors",
    "TokenManager": "oauth2",
    "TokenRequiredError": "errors",
    "compute_backoff_ms": "retry",
    "current_token": "oauth2",
    "flush_metrics": "metrics",
    "health_status": "metrics",
    "open_store": "backends",
    "record_call": "metrics",
    "register_backend": "backends",
    "resilient": "resilient",
    "retrying": "_blocks",
    "summarize": "metrics",
    "wait_backoff": "retry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'connector_resilience' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"connector_resilience.{module}"), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """The package module: ``resilient`` stays the decorator, not its submodule.

    Importing a submodule binds it as an attribute of its package; the
    ``resilient`` submodule would then hide the ``resilient`` decorator.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "resilient" and isinstance(value, types.ModuleType):
            value = value.resilient
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
