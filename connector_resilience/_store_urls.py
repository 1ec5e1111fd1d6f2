"""Store URLs without opening a store: their scheme, the schemes known, and redaction.

Kept apart from ``backends`` so that ``policy`` can validate and print a store
URL without importing any backend, and ``backends`` can read a policy without
an import circle.
"""

from __future__ import annotations

__all__ = [
    "BUILTIN_SCHEMES",
    "known_schemes",
    "note_scheme",
    "redact_url",
    "scheme_of",
    "scheme_problem",
]

#: The schemes connector-resilience serves itself.
BUILTIN_SCHEMES = frozenset(
    {"memory", "jsonl", "sqlite", "redis", "rediss", "redis+sentinel", "redis+cluster"}
)

_registered: set[str] = set()


def note_scheme(scheme: str) -> None:
    """Remember a scheme added with ``backends.register_backend``."""
    _registered.add(scheme)


def known_schemes() -> frozenset[str]:
    """Schemes ``open_store`` accepts: the built-in ones and every registered one."""
    return BUILTIN_SCHEMES | _registered


def scheme_of(url: str) -> str:
    """The scheme of a store URL, lower-cased (``""`` when it has none)."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep else ""


def scheme_problem(url: str, *, variable: str = "CONNECTOR_STORE_URL") -> str | None:
    """Why ``url`` names no known store, with the fix; ``None`` when its scheme is known.

    ``sqlite:x.db`` (no ``//``) gets the form it needs rather than "unknown scheme ''".
    """
    known = ", ".join(f"{s}://" for s in sorted(known_schemes()))
    scheme = scheme_of(url)
    if scheme in known_schemes():
        return None
    if scheme:
        return f"{variable} has unknown scheme {scheme!r} in {redact_url(url)!r}; known: {known}"
    head, colon, rest = url.partition(":")
    if colon and head.lower() in known_schemes():
        if head.lower() == "sqlite":
            path = rest.lstrip("/") or "state.db"
            fix = f"sqlite:///{path} (relative to the working folder), sqlite:////{path} (absolute)"
        else:
            fix = f"{head.lower()}://{rest.lstrip('/')}"
        return f"{variable} {redact_url(url)!r} lacks '//' after '{head}:': write {fix}"
    return f"{variable} {redact_url(url)!r} is not a store URL (scheme://...); known: {known}"


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe for logs and errors.

    Both places a URL can carry one are covered: the userinfo
    (``redis://:secret@host``) and query options (``?password=secret``,
    ``?ssl_password=secret``), which redis-py reads as connection settings.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, question, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    if "@" not in netloc and not question:
        return url  # nothing to hide: the same string, not a copy per breaker
    if "@" in netloc:
        creds, _, host = netloc.rpartition("@")
        user, colon, _password = creds.partition(":")
        # redis://secret@host: a lone userinfo is the password in redis URLs.
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    redacted = f"{scheme}{sep}{netloc}{slash}{path}"
    if question:
        redacted += "?" + "&".join(_redact_option(option) for option in query.split("&"))
    return redacted


def _redact_option(option: str) -> str:
    name, equals, _value = option.partition("=")
    if equals and "password" in name.lower():
        return f"{name}=***"
    return option
