"""TokenManager: valid access tokens for one connector, refreshed single-flight.

One refresh at a time, at two levels:

* in a process, the first caller that finds the token due starts a *flight*
  (a ``concurrent.futures.Future``); threads wait on it, asyncio tasks on any
  loop await it through ``asyncio.wrap_future``;
* across processes, the flight's leader takes the store's token lock, re-reads
  the store and refreshes only if the stored token still needs it; the others
  find the new token when they get the lock.

The lock is leased for half of OAUTH_LOCK_TIMEOUT_S and a refresh is cut off
before its lease ends, while a waiter waits the whole OAUTH_LOCK_TIMEOUT_S: if
the holder dies, its lease ends while the waiters still wait, and exactly one
of them takes over, after re-reading the store (the holder may have saved a
rotated token before it died). Expiry is stamped and judged by the store's
clock (Redis's ``TIME`` on Redis), so hosts whose clocks differ agree on it.

The decision runs once, synchronously, in the leader's thread (a worker thread
for asyncio callers): there is no async copy of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from connector_resilience import _clock
from connector_resilience.backends import redact_url, store_for_policy
from connector_resilience.errors import (
    InvalidGrantError,
    StoreError,
    TokenEndpointError,
    TokenError,
    TokenRequiredError,
)
from connector_resilience.oauth2._endpoint import OAuth2Config, fetch_token, safe_url
from connector_resilience.oauth2._token import (
    OAuth2Token,
    TokenCipher,
    cipher_for_policy,
    load_stored_token,
    needs_refresh,
    store_clock,
    token_to_mapping,
)
from connector_resilience.policy import current_policy

if TYPE_CHECKING:
    from connector_resilience.backends import TokenStore
    from connector_resilience.policy import Policy

__all__ = ["TokenManager", "policy_for"]

logger = logging.getLogger("connector_resilience.oauth2")

#: Share of OAUTH_LOCK_TIMEOUT_S (a waiter's longest wait) a holder's lease
#: lasts: a waiter outlasts the lease of a holder that died, with time left
#: for the survivor's own refresh.
_LEASE_SHARE = 0.5
#: Share of the lease a refresh may take, so that it ends before a lease-based
#: lock (SQLite, Redis) expires.
_REFRESH_BUDGET_SHARE = 0.9
#: After a transient refresh failure, a still-valid token is used without
#: retrying the refresh for at most this long.
_QUIET_AFTER_FAILURE_S = 30.0

_Kind = Literal["ensure", "replace", "force"]


def policy_for(connector: str, policy: Policy | None) -> Policy:
    """``policy`` (the environment's if ``None``) with ``connector``'s overrides applied."""
    return (policy or current_policy()).for_connector(connector)


@dataclass(slots=True)
class _Flight:
    """One refresh in progress; every caller that arrives meanwhile waits on ``result``."""

    kind: _Kind
    rejected: str | None
    result: concurrent.futures.Future[OAuth2Token]
    exchanged: bool = False


class TokenManager:
    """Valid access tokens for one connector, refreshed single-flight.

    Keep one manager per connector and store in a process, and share it: its
    in-process single-flight covers callers of the same manager (other managers
    are still kept correct by the store's lock, at the cost of waiting on it).

    Args:
        connector: the connector's name (its token's key in the store).
        config: the token endpoint and client. ``None``: tokens come only from
            the store (another process or an operator keeps them fresh), and an
            expired one cannot be renewed here.
        store: where tokens live (the policy's store if ``None``). Processes
            that share it share tokens and refresh one at a time.
        policy: settings (the environment's policy if ``None``); the
            connector's overrides apply.

    Raises:
        ConfigurationError: OAUTH_TOKEN_ENCRYPTION_KEY is set but unusable.
    """

    def __init__(
        self,
        connector: str,
        *,
        config: OAuth2Config | None = None,
        store: TokenStore | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.connector = connector
        self.config = config
        self.policy = policy_for(connector, policy)
        self.store: TokenStore = store or store_for_policy(self.policy)
        self._now = store_clock(self.store)
        # Built now so that a missing `cryptography` fails at setup, not mid-call.
        self._cipher: TokenCipher | None = cipher_for_policy(self.policy)
        self._lock = threading.Lock()
        self._flight: _Flight | None = None
        self._cached: OAuth2Token | None = None
        # A token obtained but not saved (the store failed): the only holder of
        # a rotated refresh token, so it is preferred over the store's copy.
        self._unsaved: OAuth2Token | None = None
        self._quiet_until = 0.0

    def __repr__(self) -> str:
        grant = self.config.grant if self.config else None
        url = redact_url(str(getattr(self.store, "url", type(self.store).__name__)))
        return f"TokenManager({self.connector!r}, grant={grant!r}, store={url!r})"

    # Public API: sync ---------------------------------------------------------

    def get_token(self) -> str:
        """A valid access token, refreshed first if it is due.

        Raises:
            TokenRequiredError: OAUTH2_REQUIRED is on and no usable token can be had.
            TokenError: no usable token can be had (OAUTH2_REQUIRED off).
            InvalidGrantError: the refresh token was rejected; re-authenticate.
            TokenEndpointError: the refresh failed and the current token has expired.
        """
        return self.valid_token().access_token.get_secret_value()

    def valid_token(self) -> OAuth2Token:
        """Like :meth:`get_token`, but the whole token (type, scope, expiry, extras)."""
        return self._fresh_cached() or self._obtain("ensure")

    def refresh_after_unauthorized(self, rejected_access_token: str) -> str:
        """A replacement for an access token the API just rejected with 401.

        Refreshes unless the store already holds a different token (another
        caller or process replaced it meanwhile); many callers reporting the
        same rejected token cause one refresh.

        Args:
            rejected_access_token: the token the 401 came back for.

        Returns:
            A different, valid access token.
        """
        cached = self._cached
        if cached is not None and self._usable_instead_of(cached, rejected_access_token):
            return cached.access_token.get_secret_value()
        token = self._obtain("replace", rejected_access_token)
        return token.access_token.get_secret_value()

    def refresh(self) -> OAuth2Token:
        """Get a new token from the endpoint now (under the store's lock) and store it."""
        return self._obtain("force")

    # Public API: async (the same logic; blocking work runs in a worker thread) ---

    async def aget_token(self) -> str:
        """:meth:`get_token` for asyncio: never blocks the event loop."""
        return (await self.avalid_token()).access_token.get_secret_value()

    async def avalid_token(self) -> OAuth2Token:
        """:meth:`valid_token` for asyncio."""
        return self._fresh_cached() or await self._aobtain("ensure")

    async def arefresh_after_unauthorized(self, rejected_access_token: str) -> str:
        """:meth:`refresh_after_unauthorized` for asyncio."""
        cached = self._cached
        if cached is not None and self._usable_instead_of(cached, rejected_access_token):
            return cached.access_token.get_secret_value()
        token = await self._aobtain("replace", rejected_access_token)
        return token.access_token.get_secret_value()

    async def arefresh(self) -> OAuth2Token:
        """:meth:`refresh` for asyncio."""
        return await self._aobtain("force")

    # Drivers: join or lead a flight, then check it gave what this caller needs --

    def _obtain(self, kind: _Kind, rejected: str | None = None) -> OAuth2Token:
        token: OAuth2Token | None = None
        # Two rounds: a caller that joined another caller's flight may need one of its own.
        for _round in range(2):
            flight, leader = self._join(kind, rejected)
            if leader:
                self._lead(flight)
            token = flight.result.result()
            if self._satisfies(flight, token, kind, rejected):
                break
        assert token is not None
        return token

    async def _aobtain(self, kind: _Kind, rejected: str | None = None) -> OAuth2Token:
        token: OAuth2Token | None = None
        for _round in range(2):
            flight, leader = self._join(kind, rejected)
            if leader:
                try:
                    # Once started, the thread completes the flight even if this
                    # task is cancelled, so the callers waiting on it are never stranded.
                    await asyncio.to_thread(self._lead, flight)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # the thread could not even start
                    self._finish(flight, error=exc)
                    raise
            token = await asyncio.wrap_future(flight.result)
            if self._satisfies(flight, token, kind, rejected):
                break
        assert token is not None
        return token

    def _join(self, kind: _Kind, rejected: str | None) -> tuple[_Flight, bool]:
        with self._lock:
            if self._flight is not None:
                return self._flight, False
            result: concurrent.futures.Future[OAuth2Token] = concurrent.futures.Future()
            # Running futures cannot be cancelled: a waiter that is cancelled
            # (asyncio.wrap_future forwards cancellation) cannot cancel the others' result.
            result.set_running_or_notify_cancel()
            self._flight = _Flight(kind, rejected, result)
            return self._flight, True

    def _satisfies(
        self, flight: _Flight, token: OAuth2Token, kind: _Kind, rejected: str | None
    ) -> bool:
        """Whether a flight this caller joined answered its question too."""
        if kind == "replace":
            return token.access_token.get_secret_value() != rejected
        if kind == "force":
            return flight.exchanged
        return True

    def _lead(self, flight: _Flight) -> None:
        """Run ``flight`` and publish its outcome; never raises an ``Exception``."""
        try:
            token = self._resolve(flight)
        except Exception as exc:
            self._finish(flight, error=exc)
        except BaseException as exc:
            self._finish(flight, error=exc)
            raise
        else:
            self._finish(flight, token=token)

    def _finish(
        self,
        flight: _Flight,
        *,
        token: OAuth2Token | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Publish a flight's outcome once; later calls for the same flight do nothing."""
        with self._lock:
            if flight.result.done():
                return
            if self._flight is flight:
                self._flight = None
            if token is not None:
                self._cached = token
                flight.result.set_result(token)
            elif isinstance(error, Exception):
                flight.result.set_exception(error)
            else:  # KeyboardInterrupt and the like belong to the leader alone
                flight.result.set_exception(TokenError("the token refresh was interrupted"))

    # The decision, made once per flight ---------------------------------------

    def _resolve(self, flight: _Flight) -> OAuth2Token:
        # Most callers end at this unlocked read: another process already refreshed.
        current = self._read()
        if self._answers(flight, current):
            assert current is not None
            return current
        self._check_obtainable(current)
        timeout = self.policy.oauth.lock_timeout_s
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(
                    # The refresh is cut off before the lease ends (_REFRESH_BUDGET_SHARE).
                    self.store.token_lock(
                        self.connector, timeout_s=timeout, lease_s=timeout * _LEASE_SHARE
                    )
                )
            except TimeoutError:
                failure = TokenError(
                    f"another refresh of connector {self.connector!r} held the token lock "
                    f"for more than {timeout:g}s (OAUTH_LOCK_TIMEOUT_S)"
                )
                return self._fall_back(flight, current, failure)
            return self._resolve_locked(flight)

    def _resolve_locked(self, flight: _Flight) -> OAuth2Token:
        # Re-read under the lock: the holder before us may have refreshed already.
        current = self._read()
        if self._answers(flight, current):
            logger.debug("token of connector %r was refreshed by another holder", self.connector)
            assert current is not None
            return current
        self._check_obtainable(current)
        assert self.config is not None
        flight.exchanged = True
        try:
            token = fetch_token(
                self.config,
                connector=self.connector,
                previous=current,
                policy=self.policy,
                budget_s=self.policy.oauth.lock_timeout_s * _LEASE_SHARE * _REFRESH_BUDGET_SHARE,
                clock=self._now,
            )
        except InvalidGrantError:
            # Another writer (one whose lock lease ran out, or one not using
            # this store's lock) may have rotated the token meanwhile.
            latest = self._read()
            if (
                latest is not None
                and current is not None
                and _newer(latest, current)
                and not latest.expired(now=self._now())
            ):
                logger.warning(
                    "refresh token of connector %r was already used; "
                    "using the token another process stored",
                    self.connector,
                )
                return latest
            raise
        except TokenEndpointError as exc:
            if not exc.retryable:
                raise
            return self._fall_back(flight, current, exc)
        self._save(token)
        self._quiet_until = 0.0
        left = token.seconds_left(now=self._now())
        logger.info(
            "connector %r got a new token from %s (%s grant%s)",
            self.connector,
            safe_url(self.config.token_url),
            self.config.grant,
            "" if left is None else f", expires in {left:.0f}s",
        )
        return token

    def _answers(self, flight: _Flight, token: OAuth2Token | None) -> bool:
        """Whether ``token``, as found in the store, is what ``flight`` was after."""
        if token is None or flight.kind == "force":
            return False
        if flight.kind == "replace":
            assert flight.rejected is not None
            return self._usable_instead_of(token, flight.rejected)
        return self._fresh(token) or (self.config is None and not token.expired(now=self._now()))

    def _check_obtainable(self, current: OAuth2Token | None) -> None:
        """Fail fast, before any lock or request, when no new token can be had."""
        if self.config is not None and (
            self.config.grant == "client_credentials"
            or (current is not None and current.refresh_token is not None)
        ):
            return
        if current is None:
            why = "none is stored"
        elif self.config is None:
            why = "it is no longer valid and no token endpoint is configured"
        else:
            why = "it is no longer valid and there is no refresh token"
        if self.policy.oauth.required:
            raise TokenRequiredError(
                f"OAUTH2_REQUIRED is on and connector {self.connector!r} has no usable token: {why}"
            )
        raise TokenError(f"connector {self.connector!r} has no usable token: {why}")

    def _fall_back(
        self, flight: _Flight, current: OAuth2Token | None, failure: TokenError
    ) -> OAuth2Token:
        """After a transient failure, keep using a token that has not expired yet."""
        now = self._now()
        if flight.kind != "ensure" or current is None or current.expired(now=now):
            raise failure
        left = current.seconds_left(now=now)
        quiet = _QUIET_AFTER_FAILURE_S if left is None else min(_QUIET_AFTER_FAILURE_S, left / 2)
        self._quiet_until = _clock.monotonic() + quiet
        logger.warning(
            "could not refresh the token of connector %r (%s); using the current one, "
            "valid %s more; next attempt in %.0fs",
            self.connector,
            getattr(failure, "error", "lock timeout"),
            "unknown" if left is None else f"{left:.0f}s",
            quiet,
        )
        return current

    # Small helpers ------------------------------------------------------------

    def _fresh(self, token: OAuth2Token) -> bool:
        """Not due for refresh, or due but inside the pause after a failed refresh."""
        now = self._now()
        if not needs_refresh(token, policy=self.policy, now=now):
            return True
        return _clock.monotonic() < self._quiet_until and not token.expired(now=now)

    def _fresh_cached(self) -> OAuth2Token | None:
        cached = self._cached
        return cached if cached is not None and self._fresh(cached) else None

    def _usable_instead_of(self, token: OAuth2Token, rejected: str) -> bool:
        return token.access_token.get_secret_value() != rejected and not needs_refresh(
            token, policy=self.policy, now=self._now()
        )

    def _read(self) -> OAuth2Token | None:
        stored = load_stored_token(
            self.connector, self.store.load_token(self.connector), cipher=self._cipher
        )
        unsaved = self._unsaved
        if unsaved is None:
            return stored
        # The unsaved token wins unless the store provably holds a later one.
        if (
            stored is not None
            and stored.obtained_at is not None
            and unsaved.obtained_at is not None
            and stored.obtained_at > unsaved.obtained_at
        ):
            self._unsaved = None
            return stored
        return unsaved

    def _save(self, token: OAuth2Token) -> None:
        try:
            self.store.save_token(self.connector, token_to_mapping(token, cipher=self._cipher))
        except (StoreError, OSError) as exc:
            # The new token is good, and with rotation its refresh token is the
            # only valid one: keep it in memory for this process's next refresh.
            self._unsaved = token
            logger.error(  # noqa: TRY400 - the store's traceback could carry the token
                "could not store the new token of connector %r (%s); keeping it in memory",
                self.connector,
                type(exc).__name__,
            )
        else:
            self._unsaved = None


def _newer(candidate: OAuth2Token, than: OAuth2Token) -> bool:
    """Whether ``candidate``, read after ``than``, is another token not known to be older."""
    if candidate.access_token.get_secret_value() == than.access_token.get_secret_value():
        return False
    if candidate.obtained_at is None or than.obtained_at is None:
        return True
    return candidate.obtained_at >= than.obtained_at
