"""connector-resilience: retries, a circuit breaker, call metrics and OAuth2 tokens.

Put ``@resilient`` on a connector's methods, or ``ResilienceMiddleware`` in an
aiohttp ``ClientSession``; configure everything with one :class:`Policy`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from connector_resilience.backends import open_store, register_backend
from connector_resilience.errors import (
    CircuitOpenError,
    ConfigurationError,
    ResilienceError,
    StoreError,
    TokenError,
    TokenRequiredError,
)
from connector_resilience.policy import Policy

try:
    __version__ = version("connector-resilience")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "CircuitOpenError",
    "ConfigurationError",
    "Policy",
    "ResilienceError",
    "StoreError",
    "TokenError",
    "TokenRequiredError",
    "__version__",
    "open_store",
    "register_backend",
]
