"""A failure as the breaker keeps it: its type and its message with secrets masked.

The failure that opens a circuit is stored (every process sharing the store
reads it), shown by the CLI and carried by every ``CircuitOpenError``. An
exception's message can hold a secret (a URL with a password or an API key in
its query, an ``Authorization`` header echoed back, a token in a path), so the
message is masked before it leaves the failing call:

* a URL keeps its scheme, host and path; its user info and query are masked;
* ``name=value``, ``name: value`` and ``"name": "value"`` are masked when the
  name looks like a credential (token, secret, password, key, auth, ...);
* ``Bearer ...`` / ``Basic ...`` credentials are masked;
* a long run of letters and digits (24 or more, digits among them) is masked:
  API keys, JWTs and session ids look like that, words and host names do not;
* the result is cut to :data:`MAX_MESSAGE` characters.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_MESSAGE", "describe_failure", "mask_secrets"]

MAX_MESSAGE: Final = 300
_MAX_TYPE: Final = 200
_MASK: Final = "***"

_URL = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s?#]*@)?(?P<rest>[^\s'\"<>]*)"
)
_CREDENTIAL_NAME = (
    r"[\w.-]*(?:pass(?:word|wd)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|"
    r"private[_-]?key|auth\w*|credential\w*|signature|sig|session\w*|cookie|key)"
)
_NAMED_VALUE = re.compile(
    rf"""(?P<name>["']?{_CREDENTIAL_NAME}["']?\s*[:=]\s*)(?P<quote>["']?)(?P<value>[^\s"',;&}}]+)""",
    re.IGNORECASE,
)
_SCHEME_CREDENTIAL = re.compile(r"\b(?P<scheme>Bearer|Basic|Token|Digest)\s+[^\s\"',;]+", re.I)
_LONG_RUN = re.compile(r"[A-Za-z0-9_+/=-]{24,}")


def mask_secrets(text: str) -> str:
    """``text`` with what could be a credential replaced by ``***``, cut to MAX_MESSAGE.

    Example:
        >>> mask_secrets("GET https://bob:hunter2@api.example.com/v1?api_key=abc failed")
        'GET https://***@api.example.com/v1?*** failed'
    """
    text = _URL.sub(_mask_url, text)
    text = _SCHEME_CREDENTIAL.sub(lambda m: f"{m.group('scheme')} {_MASK}", text)
    text = _NAMED_VALUE.sub(
        lambda m: (
            m.group("value")
            if m.group("value") == _MASK
            else f"{m.group('name')}{m.group('quote')}{_MASK}"
        ),
        text,
    )
    text = _LONG_RUN.sub(_mask_long_run, text)
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    return text


def describe_failure(failure: BaseException | str | None) -> tuple[str, str] | None:
    """``(type, masked message)`` of an exception, or ``(name, "")`` of a failed result's name.

    Never raises: an exception whose ``str()`` fails is described by its type alone.
    """
    if failure is None:
        return None
    if isinstance(failure, str):
        return (failure[:_MAX_TYPE] or "failure", "")
    kind = type(failure)
    module = kind.__module__
    name = (
        kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"
    )
    try:
        message = str(failure)
    except Exception:
        message = ""
    return (name[:_MAX_TYPE], mask_secrets(message))


def _mask_url(match: re.Match[str]) -> str:
    rest = match.group("rest")
    path, query_mark, _ = rest.partition("?")
    if query_mark:
        path += f"?{_MASK}"
    elif "#" in path:
        path = path.partition("#")[0]
    userinfo = f"{_MASK}@" if match.group("userinfo") else ""
    return f"{match.group('scheme')}{userinfo}{path}"


def _mask_long_run(match: re.Match[str]) -> str:
    run = match.group(0)
    if any(c.isdigit() for c in run) and any(c.isalpha() for c in run):
        return _MASK
    return run
