"""``TokenIssuer``: per-user Tinybird JWTs, signed with PyJWT and cached."""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Self, TypeAlias, TypeGuard, TypeVar
from urllib.parse import urlsplit

import jwt
from cachetools import LRUCache
from jwt.algorithms import HMACAlgorithm
from jwt.utils import base64url_encode

from ._errors import (
    ConfigurationError,
    IdentityError,
    InvalidScopeError,
    PolicyError,
    SigningError,
)
from ._scopes import Scope
from ._signing_key import DEFAULT_API_URL, REGION_API_URLS, read_token_payload

__all__ = [
    "AnonymousPrincipalError",
    "AsyncCallbackError",
    "TinybirdToken",
    "TokenIssuer",
    "default_identity",
    "is_anonymous",
]

logger = logging.getLogger("tinybird_asgi")

_T = TypeVar("_T")
MaybeAwaitable: TypeAlias = _T | Awaitable[_T]
Principal: TypeAlias = Any
ScopesPolicy: TypeAlias = Callable[[Any], MaybeAwaitable[Iterable[Scope]]]
IdentityFunc: TypeAlias = Callable[[Any], MaybeAwaitable[str]]
NameFunc: TypeAlias = Callable[[Any], MaybeAwaitable[str]]
RateLimitFunc: TypeAlias = Callable[[Any], MaybeAwaitable[int | None]]
Seconds: TypeAlias = timedelta | float

DEFAULT_TTL = 3600.0
MAX_TTL = 86400.0
# Even with allow_long_ttl, a lifetime beyond a year is a unit mistake
# (milliseconds given as seconds), not a choice.
HARD_MAX_TTL = 366 * 86400.0
DEFAULT_REFRESH_MARGIN = 300.0
DEFAULT_MAX_CACHED = 10_000
MIN_KEY_BYTES = 32
# Seconds by which a clock reading may trail the latest one used under the
# cache lock and still count as stale, taken before the call waited for the
# lock. A longer wait widens the window to that wait. A reading older still
# is a backwards clock jump.
MAX_LOCK_WAIT = 0.5
# The clock must read Unix seconds between 2001-09-09 and 2286-11-20.
MIN_CLOCK = 1_000_000_000
MAX_CLOCK = 9_999_999_999


class AnonymousPrincipalError(PolicyError):
    """Raised by ``token_for`` for ``None`` or an unauthenticated principal."""


class AsyncCallbackError(PolicyError):
    """Raised by ``token_for`` when a callback returns an awaitable, which only
    ``atoken_for`` can await."""


@dataclass(frozen=True, slots=True)
class TinybirdToken:
    """A signed Tinybird JWT and what a browser needs to use it.

    ``repr`` leaves out the JWT itself, so a token can be logged safely.
    """

    value: str = field(repr=False)
    """The JWT, sent as ``Authorization: Bearer <value>``."""
    expires_at: int
    """The JWT's ``exp`` claim, in Unix seconds."""
    api_url: str
    """The Tinybird API base URL the browser must call, without trailing slash."""

    def max_age(self, now: float) -> int:
        """Return the whole seconds of validity left at ``now`` (never negative)."""
        return max(0, int(self.expires_at - now))


@dataclass(frozen=True, slots=True)
class _Entry:
    claims: tuple[object, ...]
    key_id: object
    refresh_at: float
    token: TinybirdToken


def is_anonymous(principal: object) -> bool:
    """Return whether ``principal`` is no signed-in user.

    ``None`` and objects whose ``is_authenticated`` is false (Starlette's
    ``UnauthenticatedUser``, Flask-Login's ``AnonymousUserMixin``) are
    anonymous.
    """
    if principal is None:
        return True
    try:
        authenticated = principal.is_authenticated  # type: ignore[attr-defined]
    except AttributeError:
        return False
    if callable(authenticated):
        # Some older user classes define is_authenticated as a method.
        authenticated = authenticated()
    return not authenticated


def default_identity(principal: object) -> str:
    """Derive a stable identity string from a principal.

    Tried in order: a ``str`` principal itself; Starlette's
    ``BaseUser.identity`` (skipped when it raises ``NotImplementedError``, as
    ``SimpleUser``'s does); Flask-Login's ``get_id()``; a ``username``
    attribute; an ``id`` attribute. ``get_id()`` comes before ``username``
    because Flask-Login requires it to be unique, while usernames may repeat.

    :raises IdentityError: when none of them gives a non-empty value.
    """
    if isinstance(principal, str):
        return _check_identity(principal, "the principal string")

    try:
        identity = getattr(principal, "identity", None)
    except NotImplementedError:
        identity = None
    if identity is not None and not callable(identity):
        return _check_identity(identity, "principal.identity")

    get_id = getattr(principal, "get_id", None)
    if callable(get_id):
        try:
            value = get_id()
        except NotImplementedError:
            # Flask-Login's UserMixin.get_id() raises it when there is no id.
            value = None
        if value is not None:
            return _check_identity(value, "principal.get_id()")

    username = getattr(principal, "username", None)
    if username is not None and not callable(username):
        return _check_identity(username, "principal.username")

    value = getattr(principal, "id", None)
    if value is not None and not callable(value):
        return _check_identity(value, "principal.id")

    raise IdentityError(
        f"Cannot derive an identity from a principal of type "
        f"{type(principal).__name__}: it has no identity, get_id(), username "
        "or id; pass identity=<callable returning a str> to TokenIssuer "
        "(in Flask, decorate one with @tinybird.identity)."
    )


def _check_identity(value: object, source: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, uuid.UUID)):
        raise IdentityError(
            f"{source} has type {type(value).__name__}; an identity must be a str "
            "int or UUID, so pass identity=<callable returning a str> to TokenIssuer "
            "(in Flask, decorate one with @tinybird.identity)."
        )
    text = str(value)
    if not text:
        raise IdentityError(f"{source} is empty; an identity must be non-empty.")
    return text


def _seconds(option: str, value: object) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"{option} must be a number of seconds or a timedelta, "
            f"not {type(value).__name__}.",
            option=option,
        )
    if not math.isfinite(value):
        raise ConfigurationError(
            f"{option} must be a finite number of seconds.", option=option
        )
    return float(value)


def _check_clock_reading(now: object) -> None:
    # A monotonic clock (seconds since boot) or one in milliseconds would sign
    # tokens that Tinybird rejects at once or that live for millennia.
    if (
        isinstance(now, bool)
        or not isinstance(now, (int, float))
        or not MIN_CLOCK <= now <= MAX_CLOCK
    ):
        raise ConfigurationError(
            f"clock returned {now!r}, which is not Unix time in seconds; pass a "
            "clock like time.time, not time.monotonic or a clock in milliseconds.",
            option="clock",
        )


def _check_signing_key(signing_key: object) -> str:
    if not isinstance(signing_key, str):
        raise ConfigurationError(
            "signing_key must be the workspace admin token as a str, "
            f"not {type(signing_key).__name__}.",
            option="signing_key",
        )
    key = signing_key.strip()
    if not key:
        raise ConfigurationError(
            "signing_key is empty; pass the workspace admin token "
            "(TokenIssuer.from_env() and the Flask extension read it from "
            "TINYBIRD_SIGNING_KEY).",
            option="signing_key",
        )
    if len(key.encode()) < MIN_KEY_BYTES:
        raise ConfigurationError(
            f"signing_key is shorter than {MIN_KEY_BYTES} bytes, so it cannot be a "
            "Tinybird workspace admin token and is too weak for HS256; "
            "pass the workspace admin token.",
            option="signing_key",
        )
    return key


def _check_workspace_id(value: object, option: str, label: str | None = None) -> str:
    label = label or option
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{label} must be the workspace UUID as a str, "
            f"not {type(value).__name__}; pass workspace_id.",
            option=option,
        )
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise ConfigurationError(
            f"{label} ({_describe(value)}) is not a UUID; pass workspace_id, "
            "copied from the Tinybird UI or GET /v1/workspace. Check that it was "
            "not swapped with signing_key.",
            option=option,
        ) from None


def _describe(value: str) -> str:
    # An invalid option may be a secret given to the wrong option (the signing
    # key as workspace_id), so messages give its length, never its text.
    return f"a str of {len(value)} characters"


def _check_api_url(value: object, option: str) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{option} must be a URL str, not {type(value).__name__}.",
            option=option,
        )
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{option} ({_describe(value)}) is not an http(s) URL; pass the "
            "Tinybird API host, for example https://api.tinybird.co.",
            option=option,
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(
            f"{option} must not contain credentials, a query or a fragment.",
            option=option,
        )
    return url


def _api_url_from_host(host: object) -> str:
    if not isinstance(host, str) or not host:
        return DEFAULT_API_URL
    if host.startswith(("http://", "https://")):
        return _check_api_url(host, "api_url")
    try:
        return REGION_API_URLS[host]
    except KeyError:
        raise ConfigurationError(
            f"The signing key names region {host[:60]!r}, which this version does "
            "not know; pass api_url with your region's Tinybird API host.",
            option="api_url",
        ) from None


# Result types that are never awaitable; checking them first keeps the slower
# inspect.isawaitable() off the common synchronous path.
_PLAIN_RESULTS = frozenset({str, list, tuple, int, type(None)})


def _call(
    what: str, func: Callable[[Any], Any], principal: object, identity: str | None
) -> Any:
    # Call a user callback and return its result, which may be an awaitable
    # (see _is_awaitable). A plain function rather than a generator, because a
    # generator costs more to create and drive than the call itself, and most
    # callbacks are synchronous.
    try:
        return func(principal)
    except PolicyError:
        raise
    except Exception as exc:
        raise _callback_error(what, exc, identity) from exc


def _awaited(
    what: str, awaitable: Awaitable[Any], identity: str | None
) -> Generator[Awaitable[Any], Any, Any]:
    # Yield a callback's awaitable to the driver, which awaits it (atoken_for)
    # or rejects it (token_for), and wrap its failure as _call does.
    try:
        return (yield awaitable)
    except PolicyError:
        raise
    except Exception as exc:
        raise _callback_error(what, exc, identity) from exc


def _is_awaitable(result: object) -> TypeGuard[Awaitable[Any]]:
    return type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result)


def _callback_error(what: str, exc: Exception, identity: str | None) -> PolicyError:
    if isinstance(exc, InvalidScopeError):
        return PolicyError(
            f"{what} failed for identity {identity!r}: {exc}", identity=identity
        )
    return PolicyError(
        f"{what} raised {type(exc).__name__} for identity {identity!r}.",
        identity=identity,
    )


# The per-call claims (identity, name, rps, scopes): a plain tuple, because
# one is built on every call and a NamedTuple takes several times as long.
_Claims: TypeAlias = tuple[str, str, int | None, tuple[Scope, ...]]


class TokenIssuer:
    """Build, sign and cache per-user Tinybird JWTs.

    One issuer serves every request of an app and is safe to share between
    threads. All options are validated here, so a misconfiguration fails at
    start-up; see the README for each option.

    :raises ConfigurationError: for any missing or invalid option.
    """

    def __init__(
        self,
        *,
        signing_key: str,
        scopes: Iterable[Scope] | ScopesPolicy,
        workspace_id: str | None = None,
        api_url: str | None = None,
        ttl: Seconds = DEFAULT_TTL,
        allow_long_ttl: bool = False,
        refresh_margin: Seconds = DEFAULT_REFRESH_MARGIN,
        exp_step: Seconds | None = None,
        rate_limit: int | RateLimitFunc | None = None,
        name: str | NameFunc | None = None,
        identity: IdentityFunc | None = None,
        max_cached: int = DEFAULT_MAX_CACHED,
        clock: Callable[[], float] = time.time,
    ) -> None:
        key = _check_signing_key(signing_key)
        key_payload = read_token_payload(key)

        if workspace_id is not None:
            self._workspace_id = _check_workspace_id(workspace_id, "workspace_id")
            key_workspace = key_payload.get("u")
            if key_workspace is not None and not _same_uuid(
                key_workspace, self._workspace_id
            ):
                # The explicit setting wins, but Tinybird answers 403 to tokens
                # whose workspace_id is not the signing key's workspace.
                logger.warning(
                    "workspace_id %s differs from the signing key's own workspace; "
                    "Tinybird rejects such tokens unless the key belongs to %s.",
                    self._workspace_id,
                    self._workspace_id,
                )
        elif "u" in key_payload:
            self._workspace_id = _check_workspace_id(
                key_payload["u"], "workspace_id", "the signing key's workspace id"
            )
        else:
            raise ConfigurationError(
                "workspace_id is missing and the signing key does not carry one; "
                "pass workspace_id (or set TINYBIRD_WORKSPACE_ID).",
                option="workspace_id",
            )

        if api_url is not None:
            self._api_url = _check_api_url(api_url, "api_url")
        else:
            self._api_url = _api_url_from_host(key_payload.get("host"))

        self._scopes_policy = self._check_scopes_option(scopes)
        self._check_timing(ttl, allow_long_ttl, refresh_margin, exp_step)
        self._rate_limit = self._check_rate_limit_option(rate_limit)

        if (
            name is not None
            and not callable(name)
            and (not isinstance(name, str) or not name.strip())
        ):
            raise ConfigurationError(
                "name must be a non-empty str or a callable principal -> str.",
                option="name",
            )
        self._name = name

        if identity is not None and not callable(identity):
            raise ConfigurationError(
                "identity must be a callable principal -> str.", option="identity"
            )
        self._identity: IdentityFunc = identity or default_identity

        if isinstance(max_cached, bool) or not isinstance(max_cached, int):
            raise ConfigurationError(
                f"max_cached must be an int, not {type(max_cached).__name__}.",
                option="max_cached",
            )
        if max_cached < 1:
            raise ConfigurationError(
                "max_cached must be at least 1.", option="max_cached"
            )
        if not callable(clock):
            raise ConfigurationError(
                "clock must be a callable returning Unix seconds, like time.time.",
                option="clock",
            )
        _check_clock_reading(clock())
        self._clock = clock
        self._max_cached = max_cached

        self._key = key
        self._hmac_key = _prepare_hmac_key(key)
        self._key_id = object()
        self._lock = threading.Lock()
        self._cache: LRUCache[str, _Entry] = LRUCache(maxsize=max_cached)
        self._mint_count = 0
        # The latest clock reading a call used under the lock.
        self._last_now = 0.0

    @classmethod
    def from_env(
        cls, *, environ: Mapping[str, str] | None = None, **options: Any
    ) -> Self:
        """Build an issuer from environment variables plus ``options``.

        Reads ``TINYBIRD_SIGNING_KEY`` (or ``TINYBIRD_ADMIN_TOKEN``),
        ``TINYBIRD_WORKSPACE_ID`` and ``TINYBIRD_API_URL``. An option passed
        here wins over its variable.

        :raises ConfigurationError: when no signing key is set, or as the
            constructor does.
        """
        env = os.environ if environ is None else environ
        if "signing_key" not in options:
            key = env.get("TINYBIRD_SIGNING_KEY") or env.get("TINYBIRD_ADMIN_TOKEN")
            if not key:
                raise ConfigurationError(
                    "TINYBIRD_SIGNING_KEY is not set; set it (or "
                    "TINYBIRD_ADMIN_TOKEN) to the workspace admin token.",
                    option="TINYBIRD_SIGNING_KEY",
                )
            options["signing_key"] = key
        for option, variable in (
            ("workspace_id", "TINYBIRD_WORKSPACE_ID"),
            ("api_url", "TINYBIRD_API_URL"),
        ):
            value = env.get(variable)
            if option not in options and value:
                options[option] = value
        return cls(**options)

    # Option checks

    @staticmethod
    def _check_scopes_option(scopes: object) -> ScopesPolicy:
        if callable(scopes):
            return scopes
        if isinstance(scopes, (str, bytes, Mapping)) or not isinstance(
            scopes, Iterable
        ):
            raise ConfigurationError(
                "scopes must be a list of scopes (PipeRead, DatasourceRead, "
                "DatasourceAppend) or a callable principal -> scopes.",
                option="scopes",
            )
        fixed = tuple(scopes)
        try:
            _check_scopes(fixed)
        except InvalidScopeError as exc:
            raise ConfigurationError(f"scopes: {exc}", option="scopes") from exc
        return lambda principal: fixed

    def _check_timing(
        self,
        ttl: Seconds,
        allow_long_ttl: bool,
        refresh_margin: Seconds,
        exp_step: Seconds | None,
    ) -> None:
        if not isinstance(allow_long_ttl, bool):
            raise ConfigurationError(
                "allow_long_ttl must be True or False, "
                f"not {type(allow_long_ttl).__name__}.",
                option="allow_long_ttl",
            )
        ttl_s = _seconds("ttl", ttl)
        if ttl_s < 1:
            raise ConfigurationError("ttl must be at least 1 second.", option="ttl")
        if ttl_s > MAX_TTL and not allow_long_ttl:
            raise ConfigurationError(
                f"ttl is {ttl_s:g} s, over Tinybird's recommended 24 hours; lower "
                "it, or pass allow_long_ttl=True if you accept longer-lived tokens.",
                option="ttl",
            )
        if ttl_s > HARD_MAX_TTL:
            raise ConfigurationError(
                f"ttl is {ttl_s:g} s, over a year: is it in milliseconds? "
                "Pass seconds or a timedelta.",
                option="ttl",
            )

        margin = _seconds("refresh_margin", refresh_margin)
        if not 0 <= margin < ttl_s:
            raise ConfigurationError(
                f"refresh_margin ({margin:g} s) must be at least 0 and less than "
                f"ttl ({ttl_s:g} s).",
                option="refresh_margin",
            )

        if exp_step is None:
            step = float(max(math.floor(margin), 1))
        else:
            step = _seconds("exp_step", exp_step)
        if step < 1 or step != int(step):
            raise ConfigurationError(
                "exp_step must be a whole number of seconds, at least 1.",
                option="exp_step",
            )
        if ttl_s - step < margin:
            # exp_step defaults to refresh_margin, so without an explicit step
            # the margin is the option to change.
            raise ConfigurationError(
                f"exp_step ({step:g} s) plus refresh_margin ({margin:g} s) exceeds "
                f"ttl ({ttl_s:g} s), so a token could be served with less than "
                "refresh_margin left; lower exp_step or refresh_margin, or raise ttl.",
                option="refresh_margin" if exp_step is None else "exp_step",
            )
        self._ttl = ttl_s
        self._refresh_margin = margin
        self._exp_step = int(step)

    @staticmethod
    def _check_rate_limit_option(
        rate_limit: int | RateLimitFunc | None,
    ) -> RateLimitFunc | None:
        if rate_limit is None or callable(rate_limit):
            return rate_limit
        try:
            rps = _check_rps(rate_limit)
        except InvalidScopeError as exc:
            raise ConfigurationError(str(exc), option="rate_limit") from None
        return lambda principal: rps

    # Public read-only properties

    @property
    def workspace_id(self) -> str:
        """The workspace UUID written into every token."""
        return self._workspace_id

    @property
    def api_url(self) -> str:
        """The Tinybird API base URL handed to the browser."""
        return self._api_url

    @property
    def ttl(self) -> float:
        """Upper bound of a token's lifetime, in seconds.

        A clock that steps back by up to ``MAX_LOCK_WAIT`` is read as a call
        that waited for the lock, so a token signed just after such a step may
        outlive ``ttl`` by that step.
        """
        return self._ttl

    @property
    def refresh_margin(self) -> float:
        """Seconds before ``exp`` at which a cached token is replaced."""
        return self._refresh_margin

    @property
    def exp_step(self) -> int:
        """Seconds that every ``exp`` is a multiple of."""
        return self._exp_step

    @property
    def mint_count(self) -> int:
        """Number of tokens this issuer has signed."""
        return self._mint_count

    @property
    def clock(self) -> Callable[[], float]:
        """The clock that ``exp`` and cache expiry are read from."""
        return self._clock

    @property
    def async_callbacks(self) -> tuple[str, ...]:
        """Names of the options (``scopes``, ``identity``, ``name``,
        ``rate_limit``) given as ``async def`` functions, which only
        :meth:`atoken_for` can call."""
        callbacks = {
            "scopes": self._scopes_policy,
            "identity": self._identity,
            "name": self._name,
            "rate_limit": self._rate_limit,
        }
        return tuple(
            option
            for option, callback in callbacks.items()
            if inspect.iscoroutinefunction(callback)
        )

    def __len__(self) -> int:
        """Return the number of users whose cached token is still served.

        Entries past their refresh time are not counted here. They stay in the
        cache, and count towards ``max_cached``, until the user's next call
        replaces them or the least recently used entry is evicted.
        """
        now = self._clock()
        with self._lock:
            return sum(1 for entry in self._cache.values() if now < entry.refresh_at)

    def __bool__(self) -> bool:
        # An issuer with an empty cache is still an issuer: ``if issuer:`` must
        # not depend on __len__.
        return True

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(workspace_id={self._workspace_id!r}, "
            f"api_url={self._api_url!r}, ttl={self._ttl:g}, "
            f"refresh_margin={self._refresh_margin:g})"
        )

    # Issuing

    def token_for(self, principal: Principal) -> TinybirdToken:
        """Return the principal's current token, minting one when needed.

        :raises AnonymousPrincipalError: for ``None`` or an unauthenticated
            principal.
        :raises PolicyError: when the identity, scopes, name or rate-limit
            callback fails or returns an invalid value, or returns an
            awaitable (use :meth:`atoken_for` with async callbacks).
        """
        steps = self._claims_for(principal)
        try:
            awaitable = steps.send(None)
        except StopIteration as done:
            return self._issue(done.value)
        steps.close()
        _discard(awaitable)
        raise AsyncCallbackError(
            "A callback returned an awaitable; call atoken_for() for async "
            "policies, identity, name or rate_limit callbacks."
        )

    async def atoken_for(self, principal: Principal) -> TinybirdToken:
        """Return the principal's current token, awaiting async callbacks.

        Raises as :meth:`token_for` does.
        """
        steps = self._claims_for(principal)
        result: Any = None
        while True:
            try:
                awaitable = steps.send(result)
            except StopIteration as done:
                return self._issue(done.value)
            try:
                result = await awaitable
            except Exception as exc:
                # Hand the failure to the generator so it is wrapped in the
                # same PolicyError as a synchronous failure.
                try:
                    steps.throw(exc)
                except StopIteration as done:
                    return self._issue(done.value)
                raise AssertionError("unreachable") from None  # pragma: no cover

    def invalidate(self, principal: Principal) -> None:
        """Drop the cached token of one principal, so the next call mints anew.

        A ``str`` is taken as the identity itself. An anonymous principal has
        no cached token, so nothing happens for it.
        """
        if isinstance(principal, str):
            identity: object = principal
        elif is_anonymous(principal):
            return
        else:
            identity = _call("identity", self._identity, principal, None)
            if _is_awaitable(identity):
                _discard(identity)
                raise PolicyError(
                    "invalidate() needs a synchronous identity callback; pass the "
                    "identity string instead."
                )
        if not isinstance(identity, str):
            raise IdentityError(
                f"identity callback returned {type(identity).__name__} "
                "instead of a non-empty str."
            )
        with self._lock:
            self._cache.pop(identity, None)

    def clear(self) -> None:
        """Drop every cached token."""
        with self._lock:
            self._cache.clear()

    def rotate_signing_key(self, signing_key: str) -> None:
        """Sign with a new workspace admin token from now on.

        Every cached token is dropped, and an entry signed with the old key is
        never served, even by a call already in progress.

        :raises ConfigurationError: for an invalid key, as the constructor.
        """
        key = _check_signing_key(signing_key)
        key_workspace = read_token_payload(key).get("u")
        if key_workspace is not None and not _same_uuid(
            key_workspace, self._workspace_id
        ):
            raise ConfigurationError(
                "The new signing key belongs to another workspace than "
                f"{self._workspace_id}; pass this workspace's admin token.",
                option="signing_key",
            )
        hmac_key = _prepare_hmac_key(key)
        with self._lock:
            self._key = key
            self._hmac_key = hmac_key
            self._key_id = object()
            self._cache.clear()
        logger.info("Tinybird signing key rotated; cached tokens dropped")

    def _claims_for(
        self, principal: Principal
    ) -> Generator[Awaitable[Any], Any, _Claims]:
        if is_anonymous(principal):
            raise AnonymousPrincipalError(
                "No token is issued for an anonymous principal."
            )

        identity = _call("identity", self._identity, principal, None)
        if _is_awaitable(identity):
            identity = yield from _awaited("identity", identity, None)
        if not isinstance(identity, str) or not identity:
            raise IdentityError(
                f"identity callback returned {type(identity).__name__} "
                "instead of a non-empty str."
            )

        scopes = _call("scopes policy", self._scopes_policy, principal, identity)
        if _is_awaitable(scopes):
            scopes = yield from _awaited("scopes policy", scopes, identity)
        scopes = _policy_scopes(scopes, identity)

        if self._name is None:
            name = identity
        elif isinstance(self._name, str):
            name = self._name
        else:
            name = _call("name callback", self._name, principal, identity)
            if _is_awaitable(name):
                name = yield from _awaited("name callback", name, identity)
            if not isinstance(name, str) or not name.strip():
                raise PolicyError(
                    f"name callback returned {name!r} for identity {identity!r}; "
                    "it must return a non-empty str.",
                    identity=identity,
                )

        rps = None
        if self._rate_limit is not None:
            value = _call("rate_limit callback", self._rate_limit, principal, identity)
            if _is_awaitable(value):
                value = yield from _awaited("rate_limit callback", value, identity)
            try:
                rps = _check_rps(value)
            except InvalidScopeError as exc:
                raise PolicyError(
                    f"rate_limit callback for identity {identity!r}: {exc}",
                    identity=identity,
                ) from None
        return identity, name, rps, scopes

    def _issue(self, claims: _Claims) -> TinybirdToken:
        # The entry keeps the scopes' comparison keys, not the scope objects,
        # which cuts the memory per cached user; equal keys mean equal claims.
        identity, name, rps, scopes = claims
        key_claims = (name, rps, tuple([scope._key for scope in scopes]))

        # The clock is read before the lock, so no option supplied by the app
        # runs while the lock is held. The monotonic clock measures the wait.
        started = time.monotonic()
        now = self._clock()
        # The lock covers lookup, signing and insertion, so concurrent calls
        # for one user mint once.
        with self._lock:
            # A call that read the clock before another call took the lock
            # adopts that later reading, so the two never disagree on which
            # exp_step they are in.
            # NOTE: without a later reading, a call judges the entry by the
            # time it read the clock, so a token served after a long wait for
            # the lock has refresh_margin left minus that wait.
            last = self._last_now
            window = max(MAX_LOCK_WAIT, time.monotonic() - started)
            if last - window <= now < last:
                now = last
            self._last_now = now
            # Indexing reads the cache once; get() would also test membership.
            try:
                entry: _Entry | None = self._cache[identity]
            except KeyError:
                entry = None
            # An entry whose exp lies more than ttl ahead was minted before the
            # clock jumped backwards; it would outlive ttl, so it is replaced.
            if (
                entry is not None
                and entry.key_id is self._key_id
                and now < entry.refresh_at
                and entry.token.expires_at <= now + self._ttl
                and entry.claims == key_claims
            ):
                return entry.token

            token = self._sign(name, rps, scopes, now)
            # An entry past its refresh time stays in the cache until this
            # user's next call replaces it or the LRU bound evicts it, so the
            # cache never contains more than max_cached entries.
            self._cache[identity] = _Entry(
                key_claims,
                self._key_id,
                token.expires_at - self._refresh_margin,
                token,
            )
            self._mint_count += 1

        logger.debug(
            "Minted Tinybird token for identity %r: %d scope(s), expires_at=%d",
            identity,
            len(scopes),
            token.expires_at,
        )
        return token

    def _sign(
        self, name: str, rps: int | None, scopes: tuple[Scope, ...], now: float
    ) -> TinybirdToken:
        # exp is aligned down to a multiple of exp_step, so every process with
        # the same configuration signs byte-identical tokens within one step;
        # the constructor guarantees ttl - exp_step >= refresh_margin.
        step = self._exp_step
        expires_at = int((now + self._ttl) // step) * step
        payload: dict[str, Any] = {
            "workspace_id": self._workspace_id,
            "name": name,
            "exp": expires_at,
            "scopes": [scope._claim for scope in scopes],
        }
        if rps is not None:
            payload["limits"] = {"rps": rps}
        try:
            value = _encode_hs256(payload, self._hmac_key)
        except Exception as exc:
            raise SigningError(
                f"PyJWT failed to sign the token: {type(exc).__name__}."
            ) from exc
        return TinybirdToken(value, expires_at, self._api_url)


_HS256 = HMACAlgorithm(HMACAlgorithm.SHA256)
# The JOSE header that jwt.encode() writes for HS256 (sorted keys, no spaces).
_HS256_HEADER = base64url_encode(b'{"alg":"HS256","typ":"JWT"}')


def _prepare_hmac_key(key: str) -> bytes:
    # jwt.encode() checks the HMAC key on every call, rejecting PEM, SSH and
    # DER keys. Preparing the key once keeps that check off each mint.
    try:
        return _HS256.prepare_key(key.encode())
    except jwt.InvalidKeyError:
        raise ConfigurationError(
            "signing_key looks like an asymmetric key or certificate, which PyJWT "
            "rejects as an HMAC secret; pass the Tinybird workspace admin token.",
            option="signing_key",
        ) from None


def _encode_hs256(payload: dict[str, Any], hmac_key: bytes) -> str:
    # The JWS compact serialisation that jwt.encode(payload, key, "HS256")
    # produces, byte for byte, with PyJWT's own HMAC and base64url helpers.
    body = json.dumps(payload, separators=(",", ":")).encode()
    signing_input = _HS256_HEADER + b"." + base64url_encode(body)
    signature = base64url_encode(_HS256.sign(signing_input, hmac_key))
    return (signing_input + b"." + signature).decode()


def _same_uuid(value: object, workspace_id: str) -> bool:
    try:
        return str(uuid.UUID(str(value).strip())) == workspace_id
    except ValueError:
        return False


def _discard(awaitable: Awaitable[Any]) -> None:
    # Closing an unawaited coroutine stops Python warning that it never ran.
    if inspect.iscoroutine(awaitable):
        awaitable.close()


def _check_scopes(scopes: tuple[object, ...]) -> tuple[Scope, ...]:
    if not scopes:
        raise InvalidScopeError(
            "the scope list is empty; a token needs at least one scope.",
            field="scopes",
        )
    for scope in scopes:
        if not isinstance(scope, Scope):
            raise InvalidScopeError(
                f"{type(scope).__name__} is not a scope; use PipeRead, "
                "DatasourceRead or DatasourceAppend.",
                field="scopes",
            )
    return scopes  # type: ignore[return-value]


def _policy_scopes(scopes: object, identity: str) -> tuple[Scope, ...]:
    if isinstance(scopes, Scope):
        scopes = (scopes,)
    elif isinstance(scopes, (list, tuple)):
        pass  # the usual results, checked first to skip the slower ABC checks
    elif isinstance(scopes, (str, bytes, Mapping)) or not isinstance(scopes, Iterable):
        raise PolicyError(
            f"scopes policy returned {type(scopes).__name__} for identity "
            f"{identity!r}; it must return a list of scopes.",
            identity=identity,
        )
    try:
        # A generator runs the app's code here, so it can raise anything.
        items = tuple(scopes)
    except Exception as exc:
        raise _callback_error("scopes policy", exc, identity) from exc
    try:
        return _check_scopes(items)
    except InvalidScopeError as exc:
        raise PolicyError(
            f"scopes policy for identity {identity!r}: {exc}", identity=identity
        ) from None


def _check_rps(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidScopeError(
            f"rate limit must be an int of requests per second or None, "
            f"not {type(value).__name__}.",
            field="rate_limit",
        )
    if value < 1:
        raise InvalidScopeError(
            f"rate limit {value} is not positive; pass None for no limit.",
            field="rate_limit",
        )
    return value
