"""The OAuth2 token model, its stored mapping, and encryption of its secrets at rest.

A stored token is a plain JSON mapping (the stores know nothing about tokens)::

    {"format": 1, "access_token": "...", "refresh_token": "...", "token_type": "Bearer",
     "expires_at": 1700000000.0, "obtained_at": 1699996400.0, "scope": "read",
     "extra": {"instance_url": "..."}, "encryption": "fernet"}

Only ``access_token`` and ``refresh_token`` are secret; with a key they are
Fernet ciphertexts and ``"encryption": "fernet"`` says so, while the rest stays
readable so that operators can see expiry without the key. Mappings written by
the original framework (``{"access_token": ..., "expires_at": ...}``, no
``format``) are read as well.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from connector_resilience import _clock
from connector_resilience.errors import ConfigurationError, TokenDecryptionError

if TYPE_CHECKING:
    from connector_resilience.policy import Policy

__all__ = [
    "FORMAT_VERSION",
    "OAuth2Token",
    "TokenCipher",
    "cipher_for_policy",
    "is_encrypted",
    "load_stored_token",
    "needs_refresh",
    "store_clock",
    "token_from_mapping",
    "token_to_mapping",
]

logger = logging.getLogger("connector_resilience.oauth2")

FORMAT_VERSION = 1
_FERNET = "fernet"
_SECRET_FIELDS = ("access_token", "refresh_token")

ExtraValue = str | int | float | bool | None


class OAuth2Token(BaseModel):
    """An access token, the refresh token that renews it, and when it expires.

    Secrets are :class:`~pydantic.SecretStr`: ``repr``, ``str`` and logs show
    ``**********``; call ``.get_secret_value()`` where the value is really needed.

    Attributes:
        access_token: the bearer credential sent to the API.
        refresh_token: renews the access token (refresh_token grant), or ``None``.
        token_type: ``"Bearer"`` nearly everywhere.
        expires_at: wall-clock expiry (seconds since the epoch), computed from
            ``expires_in`` when the token was received; ``None`` when unknown.
        obtained_at: when the token was received, if known. It caps the safety
            window at half the token's lifetime, so a short-lived token is not
            refreshed the moment it arrives.
        scope: the granted scope, space-separated, if known.
        extra: non-secret response fields a provider needs kept (Salesforce's
            ``instance_url``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    access_token: SecretStr = Field(min_length=1)
    refresh_token: SecretStr | None = None
    token_type: str = "Bearer"  # noqa: S105 - the scheme name, not a secret
    expires_at: float | None = None
    obtained_at: float | None = None
    scope: str | None = None
    extra: dict[str, ExtraValue] = Field(default_factory=dict)

    @field_validator("expires_at", "obtained_at")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number of seconds since the epoch")
        return value

    @field_validator("refresh_token", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @classmethod
    def from_response(
        cls,
        data: Mapping[str, Any],
        *,
        now: float | None = None,
        previous: OAuth2Token | None = None,
        keep_fields: tuple[str, ...] = (),
        default_expires_in_s: float | None = None,
    ) -> OAuth2Token:
        """Build a token from a token endpoint's successful response (RFC 6749 section 5.1).

        Args:
            data: the decoded response body.
            now: when it was received (``_clock.wall()`` if ``None``).
            previous: the token being refreshed. Its refresh token is kept when
                the response carries none (section 6), and its scope when the
                response omits one (section 5.1: omitted means unchanged).
            keep_fields: non-standard response fields to keep in ``extra``.
            default_expires_in_s: lifetime to assume when the response has no
                ``expires_in`` (``None``: expiry unknown).

        Raises:
            ValueError: the response has no usable ``access_token`` or a bad
                ``expires_in``. The message never contains a token.
        """
        received = _clock.wall() if now is None else now
        access = data.get("access_token")
        if not isinstance(access, str) or not access:
            raise ValueError("the token response has no access_token")
        expires_in = _seconds(data.get("expires_in"))
        if expires_in is None:
            expires_in = default_expires_in_s
        refresh = data.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            refresh = (
                previous.refresh_token.get_secret_value()
                if previous and previous.refresh_token
                else None
            )
        scope = data.get("scope")
        if not isinstance(scope, str):
            scope = previous.scope if previous else None
        token_type = data.get("token_type")
        return cls(
            access_token=SecretStr(access),
            refresh_token=SecretStr(refresh) if refresh else None,
            token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
            expires_at=None if expires_in is None else received + expires_in,
            obtained_at=received,
            scope=scope,
            extra={k: data[k] for k in keep_fields if _is_extra_value(data.get(k))},
        )

    def expired(self, *, now: float | None = None) -> bool:
        """True once ``expires_at`` has passed (no safety window)."""
        if self.expires_at is None:
            return False
        return (_clock.wall() if now is None else now) >= self.expires_at

    def seconds_left(self, *, now: float | None = None) -> float | None:
        """Seconds until expiry (negative once expired), or ``None`` when unknown."""
        if self.expires_at is None:
            return None
        return self.expires_at - (_clock.wall() if now is None else now)


def _seconds(value: Any) -> float | None:
    """``expires_in`` as a number: RFC 6749 says an integer; some providers send a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _is_extra_value(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def store_clock(store: object) -> Callable[[], float]:
    """The clock token expiry is stamped and judged by for tokens kept in ``store``.

    The store's own ``now()`` when it has one: Redis's ``TIME`` for a Redis
    store, so that a host whose clock runs fast neither stamps a token valid
    for too long nor judges another host's token by its own time. File and
    memory stores answer with the local wall clock, as before.
    """
    now = getattr(store, "now", None)
    return now if callable(now) else _clock.wall


def needs_refresh(
    token: OAuth2Token | Mapping[str, Any] | None,
    *,
    safety_window_s: float | None = None,
    now: float | None = None,
    policy: Policy | None = None,
) -> bool:
    """Whether ``token`` should be refreshed now.

    A token is due once it is within ``safety_window_s`` of ``expires_at``. The
    window is capped at half the token's lifetime when the token records when
    it was obtained: with the default 300 s window a one-hour token is refreshed
    5 minutes before it expires, and a 60-second token after 30 seconds instead
    of the moment it arrives. A token without ``expires_at`` is never due (its
    expiry shows up as a 401).

    Args:
        token: the token, a stored mapping, or ``None`` (no token: always due).
        safety_window_s: seconds before expiry; ``None`` takes
            ``OAUTH_REFRESH_SAFETY_WINDOW_S`` from the policy.
        now: wall-clock time to judge at (``_clock.wall()`` if ``None``).
        policy: where the window comes from (the environment's policy if ``None``).

    Returns:
        True when the token is missing, expired, or inside the window.
    """
    if token is None:
        return True
    if safety_window_s is None:
        if policy is None:
            from connector_resilience.policy import current_policy

            policy = current_policy()
        safety_window_s = policy.oauth.refresh_safety_window_s
    if isinstance(token, OAuth2Token):
        expires_at, obtained_at = token.expires_at, token.obtained_at
    else:
        expires_at = _seconds(token.get("expires_at"))
        obtained_at = _seconds(token.get("obtained_at"))
    if expires_at is None:
        return False
    window = max(0.0, safety_window_s)
    if obtained_at is not None and expires_at > obtained_at:
        window = min(window, (expires_at - obtained_at) / 2)
    current = _clock.wall() if now is None else now
    return current >= expires_at - window


class TokenCipher(Protocol):
    """Encrypts and decrypts one secret field (Fernet, in practice)."""

    def encrypt(self, data: bytes) -> bytes:
        """Ciphertext of ``data``."""
        ...

    def decrypt(self, token: bytes) -> bytes:
        """Plaintext of ``token``; raises on a wrong key or tampered data."""
        ...


def cipher_for_policy(policy: Policy) -> TokenCipher | None:
    """The Fernet cipher for ``OAUTH_TOKEN_ENCRYPTION_KEY``, or ``None`` when it is unset.

    Several comma-separated keys rotate keys: the first encrypts, any decrypts.

    Raises:
        ConfigurationError: ``cryptography`` is not installed (the ``crypto``
            extra), or a key is not a Fernet key. The key is never in the message.
    """
    key = policy.oauth.encryption_key
    if key is None or not key.get_secret_value().strip():
        return None
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError:
        raise ConfigurationError(
            "OAUTH_TOKEN_ENCRYPTION_KEY is set but the cryptography package is missing: "
            "pip install 'connector-resilience[crypto]'"
        ) from None
    keys = [part.strip() for part in key.get_secret_value().split(",") if part.strip()]
    try:
        cipher: TokenCipher = MultiFernet([Fernet(k) for k in keys])
    except (ValueError, TypeError):
        raise ConfigurationError(
            "OAUTH_TOKEN_ENCRYPTION_KEY is not a Fernet key (32 url-safe base64-encoded "
            "bytes; make one with cryptography.fernet.Fernet.generate_key())"
        ) from None
    return cipher


def token_to_mapping(token: OAuth2Token, *, cipher: TokenCipher | None = None) -> dict[str, Any]:
    """The mapping a store keeps for ``token``, its secrets encrypted when ``cipher`` is given."""

    def secret(value: SecretStr) -> str:
        plain = value.get_secret_value()
        return cipher.encrypt(plain.encode()).decode("ascii") if cipher else plain

    mapping: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "access_token": secret(token.access_token),
        "token_type": token.token_type,
        "expires_at": token.expires_at,
        "obtained_at": token.obtained_at,
        "scope": token.scope,
    }
    if token.refresh_token is not None:
        mapping["refresh_token"] = secret(token.refresh_token)
    if token.extra:
        mapping["extra"] = dict(token.extra)
    if cipher is not None:
        mapping["encryption"] = _FERNET
    return mapping


def is_encrypted(mapping: Mapping[str, Any]) -> bool:
    """Whether a stored mapping's secrets are encrypted."""
    return mapping.get("encryption") is not None


def token_from_mapping(
    connector: str,
    mapping: Mapping[str, Any],
    *,
    cipher: TokenCipher | None = None,
    received_at: float | None = None,
) -> OAuth2Token:
    """Parse a stored mapping (or one given to ``save_token``) into a token.

    Keys the model does not know (an old framework's ``connector``, a
    provider's extras) are dropped rather than failing the record.

    Args:
        connector: named in errors.
        mapping: the token mapping.
        cipher: decrypts encrypted secrets.
        received_at: when a fresh mapping was received: an ``expires_in``
            without ``expires_at`` counts from it. ``None`` (a stored record,
            received at an unknown time) ignores ``expires_in``: the expiry
            is unknown rather than forever an hour away.

    Raises:
        ValueError: the mapping is not a token; the message names the bad
            fields, never their values.
        TokenDecryptionError: the secrets are encrypted and ``cipher`` is
            missing or holds another key.
    """
    data = dict(mapping)
    data.pop("format", None)
    encryption = data.pop("encryption", None)
    if encryption is not None:
        data = _decrypted(connector, data, encryption, cipher)
    if received_at is not None and "expires_at" not in data and "expires_in" in data:
        lifetime = _seconds(data.get("expires_in"))
        data["expires_at"] = None if lifetime is None else received_at + lifetime
        data.setdefault("obtained_at", received_at)
    known = {k: v for k, v in data.items() if k in OAuth2Token.model_fields}
    try:
        return OAuth2Token.model_validate(known)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"]) or "token" for e in exc.errors()})
        raise ValueError(
            f"token for connector {connector!r} is not valid (bad {', '.join(fields)})"
        ) from None


def load_stored_token(
    connector: str, mapping: Mapping[str, Any] | None, *, cipher: TokenCipher | None
) -> OAuth2Token | None:
    """A stored mapping as a token; ``None``, with a warning, when absent or unreadable."""
    if mapping is None:
        return None
    try:
        return token_from_mapping(connector, mapping, cipher=cipher)
    except ValueError as exc:
        logger.warning("%s; the stored record is treated as absent", exc)
        return None


def _decrypted(
    connector: str, data: dict[str, Any], encryption: Any, cipher: TokenCipher | None
) -> dict[str, Any]:
    if encryption != _FERNET:
        raise TokenDecryptionError(
            f"stored token for connector {connector!r} uses unknown encryption {encryption!r}"
        )
    if cipher is None:
        raise TokenDecryptionError(
            f"stored token for connector {connector!r} is encrypted but "
            "OAUTH_TOKEN_ENCRYPTION_KEY is not set"
        )
    out = dict(data)
    for field in _SECRET_FIELDS:
        value = out.get(field)
        if value is None:
            continue
        try:
            out[field] = cipher.decrypt(str(value).encode("ascii")).decode()
        except Exception:  # cryptography's InvalidToken, or non-ASCII garbage
            raise TokenDecryptionError(
                f"cannot decrypt the stored token of connector {connector!r}: "
                "OAUTH_TOKEN_ENCRYPTION_KEY is not the key it was encrypted with "
                "(or the record was altered)"
            ) from None
    return out
