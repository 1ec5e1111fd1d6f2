"""What a connector or operation name may be, checked where names enter the library.

A name is stored (JSON lines, SQLite text, Redis keys) and printed, so it must
be a non-empty string that encodes as UTF-8. The one way a ``str`` fails that
is a lone surrogate, which is what ``os.environ``, ``sys.argv`` and file names
hold for bytes that are not UTF-8 (PEP 383): such a name is refused when it is
given, with the position of the bad character, rather than failing every
metrics write of the process later.
"""

from __future__ import annotations

from connector_resilience.errors import ConfigurationError

__all__ = ["check_name"]


def check_name(value: object, *, what: str) -> str:
    """``value`` if it can name a connector or operation.

    Args:
        value: the name.
        what: what it names, for the message ("connector name").

    Raises:
        ConfigurationError: not a string, empty, or not encodable as UTF-8.
    """
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, not {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"{what} {value!r} holds a lone surrogate ({value[exc.start]!r} at index "
            f"{exc.start}), which cannot be stored: it comes from bytes that are not "
            "UTF-8 (os.environ, sys.argv, file names); decode them with "
            "errors='replace', or choose another name"
        ) from None
    return value
