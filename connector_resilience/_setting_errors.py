"""Settings errors a person can act on: the variable, its value (unless secret), what is accepted.

``policy`` hands pydantic's :class:`~pydantic.ValidationError` to
:func:`settings_error`, which returns a :class:`~connector_resilience.errors.ConfigurationError`
that still is that ``ValidationError`` (code that caught pydantic's keeps working),
and :func:`closest_name` names the known variable a misspelt one was meant to be.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo

from connector_resilience._store_urls import redact_url
from connector_resilience.errors import ConfigurationError

__all__ = ["SettingsError", "accepted_values", "closest_name", "describe", "settings_error"]

#: Settings whose values are never shown, even when wrong.
SECRET_SETTINGS = frozenset({"OAUTH_TOKEN_ENCRYPTION_KEY"})


class SettingsError(ConfigurationError, ValidationError):
    """Invalid settings; also the pydantic ``ValidationError`` it replaces."""

    _message = "invalid settings"

    def __str__(self) -> str:
        return self._message


def settings_error(exc: ValidationError, field_of: Callable[[str], FieldInfo | None]) -> Exception:
    """One message for every problem in ``exc``, as a :class:`SettingsError`.

    Args:
        exc: pydantic's error about a Policy (variables are the keys, see ``policy``).
        field_of: the field behind an environment variable name, or ``None``.
    """
    problems = [describe(error, field_of) for error in exc.errors()]
    details = []
    for line in exc.errors():
        detail = dict(line)
        if _variable(line, field_of) in SECRET_SETTINGS:
            detail["input"] = "***"
        details.append(detail)
    message = "invalid settings: " + "; ".join(problems)
    try:
        rebuilt = SettingsError.from_exception_data(exc.title, details, hide_input=True)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # an error type pydantic cannot rebuild: keep the message
        return ConfigurationError(message)
    rebuilt._message = message
    return rebuilt


def _variable(error: Any, field_of: Callable[[str], FieldInfo | None]) -> str | None:
    loc = error.get("loc") or ()
    last = loc[-1] if loc else None
    return last if isinstance(last, str) and field_of(last) is not None else None


def describe(
    error: Any, field_of: Callable[[str], FieldInfo | None], *, shown_as: str | None = None
) -> str:
    """One pydantic error about a setting, in words (``shown_as`` renames the variable)."""
    variable = _variable(error, field_of)
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    where = ".".join(str(part) for part in error.get("loc") or ())
    if error.get("type") == "extra_forbidden":
        return f"unknown setting {where!r}"
    if variable is None:
        return f"{where}: {message}" if where and where not in message else message
    name = shown_as or variable
    if error.get("type") == "value_error":  # our own validators name the rule already
        return message if name in message else f"{name}: {message}"
    info = field_of(variable)
    assert info is not None
    value = "" if variable in SECRET_SETTINGS else f"={_shown(variable, error.get('input'))}"
    return f"{name}{value} is not accepted: expected {accepted_values(info)}"


def _shown(variable: str, value: Any) -> str:
    if isinstance(value, str) and variable == "CONNECTOR_STORE_URL":
        return repr(redact_url(value))
    return repr(value)


def accepted_values(info: FieldInfo) -> str:
    """What a setting accepts, in words: ``an integer from 1 to 1000``, ``true or false``."""
    annotation = info.annotation
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        annotation = members[0] if len(members) == 1 else annotation
    if typing.get_origin(annotation) is typing.Literal:
        text = "one of " + ", ".join(str(v) for v in typing.get_args(annotation))
    elif annotation is bool:
        text = "true or false"
    elif annotation is int:
        text = "an integer" + _bounds(info.metadata)
    elif annotation is float:
        finite = any(getattr(item, "allow_inf_nan", True) is False for item in info.metadata)
        text = ("a finite number" if finite else "a number") + _bounds(info.metadata)
    elif annotation is Path:
        text = "a file path"
    elif annotation is SecretStr:
        text = "a secret string"
    else:
        text = "text"
    return text + (", or unset" if optional else "")


def _bounds(metadata: Iterable[Any]) -> str:
    low = high = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low = f">= {item.ge:g}"
        elif isinstance(item, annotated_types.Gt):
            low = f"> {item.gt:g}"
        elif isinstance(item, annotated_types.Le):
            high = f"<= {item.le:g}"
        elif isinstance(item, annotated_types.Lt):
            high = f"< {item.lt:g}"
    if low and high and low.startswith(">=") and high.startswith("<="):
        return f" from {low[3:]} to {high[3:]}"
    return " " + " and ".join(b for b in (low, high) if b) if (low or high) else ""


def closest_name(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` most likely misspells, or ``None`` if none is close."""
    match = difflib.get_close_matches(name.upper(), list(known), n=1, cutoff=0.85)
    return match[0] if match else None
