"""Optional dependencies: import one, or say which pip extra installs it."""

from __future__ import annotations

from connector_resilience.errors import ConfigurationError

__all__ = ["require"]


def require(module: str, extra: str) -> None:
    """Import ``module`` or raise ConfigurationError naming the pip extra that provides it."""
    try:
        __import__(module)
    except ImportError:
        raise ConfigurationError(
            f"this exporter needs {module}: pip install 'connector-resilience[{extra}]'"
        ) from None
