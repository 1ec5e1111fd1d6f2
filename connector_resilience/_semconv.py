"""OpenTelemetry's HTTP client conventions from our call labels: one mapping for metrics and spans.

The HTTP adapters label each attempt with ``method``, ``host``, ``port`` (when
known) and ``status_code``; OpenTelemetry names these ``http.request.method``,
``server.address``, ``server.port`` and ``http.response.status_code``, and wants
``error.type`` to be the status code (as a string) for any status >= 400, else
the exception's type name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = [
    "ERROR_TYPE",
    "HTTP_ATTRIBUTES",
    "METHOD",
    "PORT",
    "SERVER",
    "STATUS_CODE",
    "error_type",
    "http_attributes",
    "status_code",
]

METHOD: Final = "http.request.method"
SERVER: Final = "server.address"
PORT: Final = "server.port"
STATUS_CODE: Final = "http.response.status_code"
ERROR_TYPE: Final = "error.type"

#: The HTTP attributes a call record can carry, in a stable order.
HTTP_ATTRIBUTES: Final = (METHOD, STATUS_CODE, SERVER, PORT)


def status_code(labels: Mapping[str, str] | None) -> int | None:
    """The HTTP status code of a labelled attempt, or ``None``."""
    value = labels.get("status_code") if labels else None
    return int(value) if value is not None and value.isdigit() else None


def http_attributes(labels: Mapping[str, str] | None) -> dict[str, str | int]:
    """The OpenTelemetry HTTP client attributes found in a call's labels (none for a non-HTTP call).

    A record without ``port`` (or a non-numeric one) simply has no ``server.port``.
    """
    if not labels:
        return {}
    out: dict[str, str | int] = {}
    method = labels.get("method")
    if method:
        out[METHOD] = method.upper()
    code = status_code(labels)
    if code is not None:
        out[STATUS_CODE] = code
    host = labels.get("host")
    if host:
        out[SERVER] = host
    port = labels.get("port")
    if port is not None and port.isdigit():
        out[PORT] = int(port)
    return out


def error_type(code: int | None, error: str | None) -> str | None:
    """``error.type``: the status code of an HTTP status >= 400, else the exception's name.

    Args:
        code: the attempt's HTTP status code, if it got a response.
        error: the exception's type name for a failed attempt, else ``None``.
    """
    if code is not None and code >= 400:
        return str(code)
    return error
