"""OAuth2 tokens per connector: stored, refreshed before they expire, one refresh at a time.

Quick start::

    from connector_resilience.oauth2 import OAuth2Config, TokenManager

    tokens = TokenManager(
        "billing",
        config=OAuth2Config(
            token_url="https://auth.example.com/oauth2/token",
            client_id="billing-sync",
            client_secret=os.environ["BILLING_CLIENT_SECRET"],
            grant="client_credentials",
        ),
    )
    headers = {"Authorization": f"Bearer {tokens.get_token()}"}

:class:`TokenManager` is the heart: ``get_token()`` / ``await aget_token()``
return a valid access token, refreshing first when it is within
``OAUTH_REFRESH_SAFETY_WINDOW_S`` of expiry. A refresh is single-flight: in a
process, one caller refreshes and the others (threads, and asyncio tasks on any
loop) wait for its result; across processes sharing a store, the store's token
lock lets one process refresh while the others wait, re-read the store and use
what it saved. So a rotating, single-use refresh token is spent exactly once.

The module functions ``save_token``, ``load_token``, ``needs_refresh`` and
``refresh_token`` keep the original framework's contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connector_resilience.backends import store_for_policy
from connector_resilience.errors import (
    InvalidGrantError,
    TokenDecryptionError,
    TokenEndpointError,
    TokenRequiredError,
)
from connector_resilience.oauth2._bearer import (
    TokenSource,
    aauthenticated,
    authenticated,
    current_token,
    is_unauthorized,
)
from connector_resilience.oauth2._endpoint import AuthMethod, GrantType, OAuth2Config
from connector_resilience.oauth2._manager import TokenManager, policy_for
from connector_resilience.oauth2._presets import PRESETS, Preset
from connector_resilience.oauth2._token import (
    OAuth2Token,
    cipher_for_policy,
    is_encrypted,
    load_stored_token,
    needs_refresh,
    store_clock,
    token_from_mapping,
    token_to_mapping,
)
from connector_resilience.policy import current_policy

if TYPE_CHECKING:
    from connector_resilience.backends import TokenStore
    from connector_resilience.policy import Policy

__all__ = [
    "PRESETS",
    "AuthMethod",
    "GrantType",
    "InvalidGrantError",
    "OAuth2Config",
    "OAuth2Token",
    "Preset",
    "TokenDecryptionError",
    "TokenEndpointError",
    "TokenManager",
    "TokenSource",
    "TokenStatus",
    "aauthenticated",
    "authenticated",
    "current_token",
    "is_unauthorized",
    "load_token",
    "needs_refresh",
    "refresh_token",
    "save_token",
    "token_statuses",
]

# Module functions: the original framework's contract --------------------------


def save_token(
    connector: str,
    token: OAuth2Token | Mapping[str, Any],
    *,
    store: TokenStore | None = None,
    policy: Policy | None = None,
) -> OAuth2Token:
    """Store ``token`` as the connector's current token (it replaces the previous one).

    Args:
        connector: the connector's name.
        token: an :class:`OAuth2Token`, or a mapping such as
            ``{"access_token": ..., "refresh_token": ..., "expires_in": 3600}``
            (``expires_in`` counts from now) or with ``expires_at``.
        store: where to keep it (the policy's store if ``None``).
        policy: settings (the environment's policy if ``None``); with
            ``OAUTH_TOKEN_ENCRYPTION_KEY`` set, the secrets are encrypted.

    Returns:
        The token as stored.

    Raises:
        ValueError: the mapping is not a token (the message names fields, not values).
        ConfigurationError: encryption is configured but unavailable.
    """
    settings = policy_for(connector, policy)
    cipher = cipher_for_policy(settings)
    target = store or store_for_policy(settings)
    parsed = (
        token
        if isinstance(token, OAuth2Token)
        else token_from_mapping(connector, token, cipher=cipher, received_at=store_clock(target)())
    )
    target.save_token(connector, token_to_mapping(parsed, cipher=cipher))
    return parsed


def load_token(
    connector: str, *, store: TokenStore | None = None, policy: Policy | None = None
) -> OAuth2Token | None:
    """The connector's latest stored token, or ``None``.

    A stored record that does not parse is treated as absent, with a warning.

    Raises:
        TokenRequiredError: OAUTH2_REQUIRED is on and there is no token.
        TokenDecryptionError: the token is encrypted and the key is missing or wrong.
    """
    settings = policy_for(connector, policy)
    mapping = (store or store_for_policy(settings)).load_token(connector)
    token = load_stored_token(connector, mapping, cipher=cipher_for_policy(settings))
    if token is None and settings.oauth.required:
        raise TokenRequiredError(
            f"OAUTH2_REQUIRED is on and connector {connector!r} has no stored token"
        )
    return token


def refresh_token(
    connector: str,
    *,
    config: OAuth2Config,
    store: TokenStore | None = None,
    policy: Policy | None = None,
) -> OAuth2Token:
    """Get a new token from the endpoint now, under the store's lock, and store it.

    A thin shim over ``TokenManager(connector, ...).refresh()``; services that
    ask for tokens often should keep one :class:`TokenManager` instead.

    Raises:
        InvalidGrantError: the refresh token was rejected; re-authenticate.
        TokenEndpointError: the endpoint refused or could not be reached.
        TokenRequiredError: OAUTH2_REQUIRED is on and there is nothing to refresh with.
    """
    return TokenManager(connector, config=config, store=store, policy=policy).refresh()


# Status for operators ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenStatus:
    """What an operator may see about a stored token: timing and shape, never a secret.

    Attributes:
        connector: the connector's name.
        expires_at: wall-clock expiry, or ``None`` when unknown.
        seconds_left: seconds until expiry (negative once expired), or ``None``.
        refresh_due: inside the safety window (or expired).
        has_refresh_token: a refresh token is stored.
        encrypted: the secrets are encrypted at rest.
        readable: the record is a well-formed token (checked without decrypting).
    """

    connector: str
    expires_at: float | None
    seconds_left: float | None
    refresh_due: bool
    has_refresh_token: bool
    encrypted: bool
    readable: bool


def token_statuses(
    store: TokenStore, *, policy: Policy | None = None, now: float | None = None
) -> list[TokenStatus]:
    """The status of every token in ``store``, by connector name. Needs no encryption key."""
    base = policy or current_policy()
    at = store_clock(store)() if now is None else now
    out: list[TokenStatus] = []
    for connector, mapping in sorted(store.list_tokens().items()):
        # Check the shape with the secrets swapped for placeholders: no key needed,
        # and nothing secret is ever parsed into an object that could be printed.
        shape = {k: v for k, v in mapping.items() if k != "encryption"}
        for field in ("access_token", "refresh_token"):
            if isinstance(shape.get(field), str) and shape[field]:
                shape[field] = "redacted"
        try:
            token: OAuth2Token | None = token_from_mapping(connector, shape)
        except ValueError:
            token = None
        expires_at = token.expires_at if token is not None else None
        settings = base.for_connector(connector)
        out.append(
            TokenStatus(
                connector=connector,
                expires_at=expires_at,
                seconds_left=None if expires_at is None else expires_at - at,
                refresh_due=needs_refresh(token, now=at, policy=settings),
                has_refresh_token=token is not None and token.refresh_token is not None,
                encrypted=is_encrypted(mapping),
                readable=token is not None,
            )
        )
    return out
