"""The light part of what CLI commands share: exit codes, errors, URL scrubbing.

``connector-resilience --help`` imports only this (and argparse), so that it
answers without loading settings, stores or metrics.
"""

from __future__ import annotations

import argparse

from connector_resilience._store_urls import redact_url

__all__ = [
    "EXIT_DEGRADED",
    "EXIT_DOWN",
    "EXIT_ERROR",
    "EXIT_NO_STORE",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "port_number",
    "positive_seconds",
    "scrub",
]

EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_DOWN = 2
#: The command could not do its job: unreadable or unreachable store, unknown
#: scheme or connector, invalid settings. Distinct from every verdict.
EXIT_ERROR = 3
#: The command line itself was wrong (argparse's own errors).
EXIT_USAGE = 4
#: ``health`` found no store where it looked: nothing to judge, so no verdict
#: (a probe run from the wrong folder must not look green).
EXIT_NO_STORE = 5


class CliError(Exception):
    """A failure to report on stderr, without a traceback, with an exit code."""

    def __init__(self, message: str, *, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def scrub(message: str, url: str | None) -> str:
    """``message`` with ``url`` (and its password, if any) redacted."""
    if not url:
        return message
    redacted = redact_url(url)
    message = message.replace(url, redacted)
    netloc = url.partition("://")[2].partition("/")[0]
    if "@" in netloc:
        credentials = netloc.rpartition("@")[0]
        secret = credentials.partition(":")[2] or credentials
        if secret:
            message = message.replace(secret, "***")
    return message


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 (any free one) to 65535, not {value}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0: {text!r}")
    return value
