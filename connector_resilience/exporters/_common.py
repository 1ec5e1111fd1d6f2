"""What both exporters share: names, buckets, the attributes of a record, and breaker states.

Both exporters derive their labels from the same functions here, so the
Prometheus collector and OpenTelemetry (through its Prometheus exporter) give
the same series: an attribute ``error.type`` is the label ``error_type``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

from connector_resilience import _semconv
from connector_resilience.backends import (
    CallRecord,
    CircuitRecord,
    Store,
    open_store,
    store_for_policy,
)
from connector_resilience.circuit import effective_state
from connector_resilience.policy import Policy, current_policy

__all__ = [
    "ATTEMPT_ATTRIBUTES",
    "CALL_ATTRIBUTES",
    "CIRCUIT_STATES",
    "DURATION_BUCKETS_S",
    "OPERATION_ATTRIBUTES",
    "PREFIX",
    "REJECTED_ATTRIBUTES",
    "attempt_attributes",
    "call_attributes",
    "circuit_state",
    "label_name",
    "read_circuit_states",
    "refusal_counter",
    "resolve_store",
]

logger = logging.getLogger("connector_resilience.exporters")

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

#: One ``circuit_state`` series per state, the current one 1. An operator's
#: override is a state of its own: a forced-open breaker is not "open".
CIRCUIT_STATES: Final = ("closed", "open", "half_open", "forced_open", "disabled")

#: Attributes of each attempt (the duration histogram), in label order.
ATTEMPT_ATTRIBUTES: Final = (
    "connector",
    "operation",
    "outcome",
    _semconv.ERROR_TYPE,
    *_semconv.HTTP_ATTRIBUTES,
)
#: Attributes of each logical call (the calls counter), in label order.
CALL_ATTRIBUTES: Final = ("connector", "operation", "outcome", "retried", _semconv.ERROR_TYPE)
#: Attributes of retries and rejections.
OPERATION_ATTRIBUTES: Final = ("connector", "operation")
#: Attributes of a refused call: which guard refused it.
REJECTED_ATTRIBUTES: Final = ("connector", "operation", "reason")

#: Refusals that are notes on calls which ran, each with a counter of its own
#: (suffix of the metric name): the ``rejected_calls`` counter is calls that never went out.
_NOTE_COUNTERS: Final = {
    "RetryBudgetExhausted": "retry_budget_refusals",
    "FallbackUsed": "fallbacks",
}


def refusal_counter(record: CallRecord) -> tuple[str, str]:
    """Where a ``rejected`` record is counted: (metric suffix, reason).

    Calls refused before they went out are ``rejected_calls`` with the
    refusing guard as ``reason`` (records from before load control name none:
    the breaker refused them). A retry the budget refused and a fallback used
    are counted apart, so that neither poses as a refused call.
    """
    reason = record.error or "CircuitOpenError"
    return _NOTE_COUNTERS.get(reason, "rejected_calls"), reason


def label_name(attribute: str) -> str:
    """The Prometheus label of an attribute, as OpenTelemetry's Prometheus exporter writes it."""
    return attribute.replace(".", "_")


def _outcome(record: CallRecord) -> str:
    return "success" if record.status == "ok" else "error"


def attempt_attributes(record: CallRecord) -> dict[str, str | int]:
    """One attempt's attributes: who, its outcome, ``error.type`` and the HTTP conventions.

    ``outcome`` is the library's verdict (``success`` or ``error``: a 404 is a
    success, the service answered); ``error.type`` follows OpenTelemetry (the
    status code for any HTTP status >= 400, else the exception's type name).
    """
    http = _semconv.http_attributes(record.labels)
    out: dict[str, str | int] = {
        "connector": record.connector,
        "operation": record.operation,
        "outcome": _outcome(record),
    }
    code = http.get(_semconv.STATUS_CODE)
    error = _semconv.error_type(
        code if isinstance(code, int) else None,
        (record.error or "_OTHER") if record.status == "error" else None,
    )
    if error is not None:
        out[_semconv.ERROR_TYPE] = error
    out.update(http)
    return out


def call_attributes(record: CallRecord) -> dict[str, str | int]:
    """A logical call's attributes, from its final attempt: outcome, ``retried``, ``error.type``.

    ``retried`` (``"true"``/``"false"``) splits calls as resilience4j's ``kind``
    does: a success with ``retried="true"`` is a call a retry saved.
    """
    attempt = attempt_attributes(record)
    out: dict[str, str | int] = {
        "connector": record.connector,
        "operation": record.operation,
        "outcome": attempt["outcome"],
        "retried": "true" if record.attempt > 1 else "false",
    }
    if _semconv.ERROR_TYPE in attempt:
        out[_semconv.ERROR_TYPE] = attempt[_semconv.ERROR_TYPE]
    return out


def circuit_state(record: CircuitRecord | None, now: float) -> str:
    """The state a breaker record shows: an override's name, else the effective state."""
    if record is None:
        return "closed"
    if record.override is not None:
        return record.override
    return effective_state(record, now)


def read_circuit_states(
    store: Store | str | None, policy: Policy | None, connectors: Iterable[str]
) -> dict[str, str]:
    """The shown state of each connector's breaker, read from the store now (``{}`` on a fault)."""
    names = sorted(set(connectors))
    if not names:
        return {}
    try:
        resolved = resolve_store(store, policy)
        records = resolved.list_circuits()
        now = resolved.now()
    except Exception as exc:  # an export must answer even when the store does not
        logger.warning("cannot read circuit states to export them: %s", exc)
        return {}
    return {name: circuit_state(records.get(name), now) for name in names}


def resolve_store(store: Store | str | None, policy: Policy | None) -> Store:
    """A store object from a store, a URL, or the policy's store."""
    if isinstance(store, str):
        return open_store(store)
    if store is None:
        return store_for_policy(policy or current_policy())
    return store
