"""Helpers for testing code that uses connector-resilience."""

from __future__ import annotations

from connector_resilience.backends import close_all_stores

__all__ = ["reset"]


def reset() -> None:
    """Forget every open store and cached policy."""
    close_all_stores()
