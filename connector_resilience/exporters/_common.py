"""What both exporters share: metric names, buckets, and labels from a record."""

from __future__ import annotations

from typing import Final

from connector_resilience.backends import CallRecord, Store, open_store, store_for_policy
from connector_resilience.policy import Policy, current_policy

__all__ = [
    "DURATION_BUCKETS_S",
    "PREFIX",
    "http_method",
    "outcome",
    "resolve_store",
    "status_class",
    "status_code",
]

#: Every metric name starts with this.
PREFIX: Final = "connector_resilience"

#: Histogram buckets in seconds: OpenTelemetry's advice for http.client.request.duration.
DURATION_BUCKETS_S: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)


def outcome(record: CallRecord) -> str:
    """``success`` or ``error`` for an attempt that ran, ``rejected`` for a refused call."""
    if record.status == "ok":
        return "success"
    return "error" if record.status == "error" else "rejected"


def http_method(record: CallRecord) -> str:
    """The HTTP method label, upper-case, or ``""`` for a non-HTTP call."""
    labels = record.labels
    return str(labels.get("method", "")).upper() if labels else ""


def status_code(record: CallRecord) -> str:
    """The HTTP status code label, or ``""``."""
    labels = record.labels
    return str(labels.get("status_code", "")) if labels else ""


def status_class(record: CallRecord) -> str:
    """``2xx`` ... ``5xx`` from the HTTP status code, or ``""`` (bounded, unlike codes)."""
    code = status_code(record)
    return f"{code[0]}xx" if len(code) == 3 and code.isdigit() else ""


def resolve_store(store: Store | str | None, policy: Policy | None) -> Store:
    """A store object from a store, a URL, or the policy's store."""
    if isinstance(store, str):
        return open_store(store)
    if store is None:
        return store_for_policy(policy or current_policy())
    return store
