"""Provider presets: each one is only data (endpoint, auth style, quirks) over the generic flow.

Example:
    >>> from connector_resilience.oauth2 import PRESETS
    >>> config = PRESETS["microsoft"].config(
    ...     client_id="app-id", client_secret="s3cret", tenant="contoso.onmicrosoft.com",
    ...     grant="client_credentials", scope="https://graph.microsoft.com/.default",
    ... )
    >>> config.token_url
    'https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token'
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pydantic import SecretStr

from connector_resilience.errors import ConfigurationError
from connector_resilience.oauth2._endpoint import AuthMethod, GrantType, OAuth2Config

__all__ = ["PRESETS", "Preset"]

# A URL part a user fills in (tenant, domain, host): no '/', '@', '?', '#' or spaces,
# so a value can never point the client secret at another server or path.
_URL_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Preset:
    """A provider's token endpoint and habits, to build an :class:`OAuth2Config` from.

    Attributes:
        name: the key in :data:`PRESETS`.
        token_url: the endpoint, with ``{placeholders}`` the caller fills in.
        auth_method: how the provider expects client credentials.
        grants: the grants of this library's flow the provider supports.
        url_defaults: values for placeholders the caller may leave out.
        keep_fields: non-standard response fields worth keeping with the token.
        error_aliases: provider error codes that mean an RFC 6749 code.
        rotates_refresh_tokens: whether a refresh returns a new refresh token
            (single-flight refresh matters most then).
        notes: what is and is not standard about this provider.
    """

    name: str
    token_url: str
    auth_method: AuthMethod
    grants: tuple[GrantType, ...]
    url_defaults: Mapping[str, str] = field(default_factory=dict)
    keep_fields: tuple[str, ...] = ()
    error_aliases: Mapping[str, str] = field(default_factory=dict)
    rotates_refresh_tokens: bool = False
    notes: str = ""

    @property
    def placeholders(self) -> tuple[str, ...]:
        """Names in ``token_url`` to fill in, such as ``("tenant",)``."""
        return tuple(
            name for _, name, _, _ in string.Formatter().parse(self.token_url) if name is not None
        )

    def config(
        self,
        *,
        client_id: str,
        client_secret: str | None = None,
        grant: GrantType | None = None,
        scope: str | None = None,
        extra_params: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        default_expires_in_s: float | None = None,
        **url_parts: str,
    ) -> OAuth2Config:
        """An :class:`OAuth2Config` for this provider.

        Args:
            client_id: the application's client id.
            client_secret: its secret.
            grant: ``"refresh_token"`` or ``"client_credentials"``; the
                provider's first supported grant if ``None``.
            scope: scope to request.
            extra_params: further form parameters.
            timeout_s: socket timeout of one request.
            default_expires_in_s: lifetime to assume when responses omit it.
            **url_parts: values for the URL's placeholders (``tenant=...``).

        Raises:
            ConfigurationError: a grant the provider does not support, a
                missing or unknown placeholder, or a value that is not a plain
                host or path segment.
        """
        chosen = grant or self.grants[0]
        if chosen not in self.grants:
            raise ConfigurationError(
                f"the {self.name} preset supports {', '.join(self.grants)}, not {chosen!r}"
            )
        values = {**self.url_defaults, **url_parts}
        unknown = sorted(set(url_parts) - set(self.placeholders))
        missing = sorted(set(self.placeholders) - set(values))
        if unknown:
            raise ConfigurationError(f"the {self.name} preset has no {', '.join(unknown)}")
        if missing:
            raise ConfigurationError(
                f"the {self.name} preset needs {', '.join(f'{m}=...' for m in missing)}"
            )
        for name, value in values.items():
            if not _URL_PART.match(value):
                raise ConfigurationError(f"{name}={value!r} is not a plain host or path segment")
        return OAuth2Config(
            token_url=self.token_url.format(**values),
            client_id=client_id,
            client_secret=None if client_secret is None else SecretStr(client_secret),
            grant=chosen,
            auth_method=self.auth_method,
            scope=scope,
            extra_params=dict(extra_params or {}),
            timeout_s=timeout_s,
            keep_fields=self.keep_fields,
            error_aliases=dict(self.error_aliases),
            default_expires_in_s=default_expires_in_s,
        )


_PRESETS = (
    Preset(
        name="google",
        token_url="https://oauth2.googleapis.com/token",  # noqa: S106 - a URL, not a password
        auth_method="client_secret_post",
        grants=("refresh_token",),
        notes=(
            "Standard refresh_token grant for tokens a user authorised (installed or web "
            "apps). Refresh tokens are not rotated. Google has no client_credentials "
            "grant: service accounts use the JWT bearer grant (RFC 7523), which this "
            "flow does not implement."
        ),
    ),
    Preset(
        name="microsoft",
        token_url="https://{host}/{tenant}/oauth2/v2.0/token",  # noqa: S106 - a URL, not a password
        auth_method="client_secret_post",
        grants=("client_credentials", "refresh_token"),
        url_defaults={"host": "login.microsoftonline.com"},
        rotates_refresh_tokens=True,
        notes=(
            "Microsoft identity platform v2.0. tenant is a tenant id or domain, or "
            "'organizations'/'common' for the refresh_token grant; client_credentials "
            "needs a real tenant and a scope ending in '/.default'. host changes the "
            "cloud (login.microsoftonline.us, login.chinacloudapi.cn). A refresh returns "
            "a new refresh token; the old one stays valid for a while."
        ),
    ),
    Preset(
        name="github_app",
        token_url="https://{host}/login/oauth/access_token",  # noqa: S106 - a URL, not a password
        auth_method="client_secret_post",
        grants=("refresh_token",),
        url_defaults={"host": "github.com"},
        keep_fields=("refresh_token_expires_in",),
        error_aliases={
            "bad_refresh_token": "invalid_grant",
            "incorrect_client_credentials": "invalid_client",
        },
        rotates_refresh_tokens=True,
        notes=(
            "User access tokens of a GitHub App with expiring tokens (8 hours; refresh "
            "tokens last 6 months and are single-use). Not standard: GitHub answers "
            "errors with HTTP 200 and its own codes (bad_refresh_token), and in form "
            "encoding unless asked for JSON; the flow handles both. Installation "
            "access tokens are not OAuth2 at all (a JWT signed with the app's private "
            "key, POSTed to /app/installations/{id}/access_tokens) and are not covered."
        ),
    ),
    Preset(
        name="salesforce",
        token_url="https://{domain}.salesforce.com/services/oauth2/token",  # noqa: S106 - a URL, not a password
        auth_method="client_secret_post",
        grants=("refresh_token", "client_credentials"),
        url_defaults={"domain": "login"},
        keep_fields=("instance_url", "id", "issued_at"),
        notes=(
            "domain is 'login' (production), 'test' (sandbox) or 'MyDomain.my' (needed "
            "for client_credentials). Responses carry no expires_in: the session "
            "timeout is an org setting, so pass default_expires_in_s or rely on a 401 "
            "to trigger a refresh. instance_url (the API base URL) is kept in "
            "token.extra. Refresh tokens are not rotated unless the org enables it."
        ),
    ),
)

#: Presets by name: ``google``, ``microsoft``, ``github_app``, ``salesforce``.
PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in _PRESETS})
