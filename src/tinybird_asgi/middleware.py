"""``TinybirdMiddleware``: a pure ASGI middleware that delivers each signed-in
user's Tinybird token on the responses of an ASGI app.

It wraps ``send`` and changes only the ``http.response.start`` message; the
one path it answers itself is the optional token endpoint. What
goes on the response (header values, cookie attributes, ``Cache-Control``,
``Vary``, ``Access-Control-Expose-Headers``, the token endpoint's payload)
comes from :class:`~tinybird_asgi.DeliveryConfig`, which the Flask extension
shares.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Protocol, TypeAlias, Unpack

from ._asgi_headers import (
    RawHeader,
    current_values,
    edited_headers,
    encode_headers,
    request_header,
)
from ._asgi_types import ASGIApp, ASGIScope, Message, Receive, Send
from ._delivery import (
    WATCHED_HEADERS,
    DeliveryConfig,
    DeliveryOptions,
    EditCache,
    ResponseEdit,
    is_preflight,
    read_cookie,
    sets_cookie,
)
from ._errors import ConfigurationError, PolicyError
from ._issuer import TinybirdToken, TokenIssuer, is_anonymous

__all__ = ["PrincipalFunc", "SkipFunc", "TinybirdMiddleware", "get_token"]

logger = logging.getLogger("tinybird_asgi")

PrincipalFunc: TypeAlias = Callable[[ASGIScope], Any | Awaitable[Any]]
SkipFunc: TypeAlias = Callable[[ASGIScope], bool]

# The scope key under which a request finds its middleware; ``None`` marks a
# request that the middleware passes through without a token.
SCOPE_KEY = "tinybird_asgi.middleware"
# Set on the scope once a request's issuing failure is logged, so get_token()
# and the response start, which both issue, log it once between them.
FAILURE_LOGGED_KEY = "tinybird_asgi.failure_logged"

# The place of each watched response header in an edit's key.
_WATCHED_SLOTS = {name.encode(): slot for slot, name in enumerate(WATCHED_HEADERS)}
_NO_VALUES: tuple[tuple[bytes, ...], ...] = tuple(() for _ in WATCHED_HEADERS)
# A reusable edit: the lower-case names whose lines go, the cookie whose
# Set-Cookie lines go (or None), and the lines appended.
_PreparedEdit: TypeAlias = tuple[frozenset[bytes], str | None, list[RawHeader]]

_OPTION_NAMES = DeliveryOptions.__required_keys__ | DeliveryOptions.__optional_keys__


class HasScope(Protocol):
    """Anything with an ASGI ``scope``, such as a Starlette ``Request``."""

    @property
    def scope(self) -> ASGIScope: ...


class TinybirdMiddleware:
    """Deliver the signed-in user's Tinybird token on each HTTP response.

    :param app: the ASGI app to wrap.
    :param issuer: the :class:`~tinybird_asgi.TokenIssuer` that signs and
        caches tokens.
    :param principal: ``principal(scope)`` returns the signed-in user, or
        ``None``; it may be ``async``. By default the principal is
        ``scope["user"]`` when it is authenticated (Starlette's
        ``AuthenticationMiddleware``), else ``scope["state"][state_attribute]``
        (``request.state.user``).
    :param state_attribute: the ``request.state`` attribute read by default.
    :param skip_if: ``skip_if(scope)``, a synchronous callable, returns
        ``True`` for a request that gets no token.
    :param options: the delivery options of
        :class:`~tinybird_asgi.DeliveryConfig`.
    :raises ConfigurationError: for an invalid option, naming it.
    :raises TypeError: for an unknown keyword option.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        issuer: TokenIssuer,
        principal: PrincipalFunc | None = None,
        state_attribute: str = "user",
        skip_if: SkipFunc | None = None,
        **options: Unpack[DeliveryOptions],
    ) -> None:
        unknown = sorted(set(options) - _OPTION_NAMES)
        if unknown:
            raise TypeError(
                f"TinybirdMiddleware got unknown option(s) {', '.join(unknown)}; "
                "its options are issuer, principal, state_attribute, skip_if "
                f"and the delivery options {', '.join(sorted(_OPTION_NAMES))}."
            )
        if not isinstance(issuer, TokenIssuer):
            raise ConfigurationError(
                f"issuer must be a TokenIssuer, not {type(issuer).__name__}.",
                option="issuer",
            )
        if principal is not None and not callable(principal):
            raise ConfigurationError(
                "principal must be a callable scope -> user (or None for the "
                "default lookup).",
                option="principal",
            )
        if not isinstance(state_attribute, str) or not state_attribute.isidentifier():
            raise ConfigurationError(
                f"state_attribute {state_attribute!r} must be an attribute name "
                "such as 'user'.",
                option="state_attribute",
            )
        if skip_if is not None and not callable(skip_if):
            raise ConfigurationError(
                "skip_if must be a callable scope -> bool.", option="skip_if"
            )
        if skip_if is not None and _is_async_callable(skip_if):
            raise ConfigurationError(
                "skip_if must be a synchronous callable scope -> bool; an async "
                "function returns a coroutine, which is always true. Decide from "
                "the scope without awaiting.",
                option="skip_if",
            )

        self.app = app
        self.issuer = issuer
        self.config = DeliveryConfig(**options)
        self._principal = principal
        self._state_attribute = state_attribute
        self._skip_if = skip_if
        self._uses_cookie = self.config.uses_cookie
        self._edits: EditCache[_PreparedEdit] = EditCache(self.config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(issuer={self.issuer!r}, config={self.config!r})"

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        if not self._applies(scope):
            scope[SCOPE_KEY] = None
            await self.app(scope, receive, send)
            return

        # The app must share this dict, so that request.state set while the
        # endpoint runs is visible when the response starts.
        scope.setdefault("state", {})
        scope[SCOPE_KEY] = self

        config = self.config
        if config.token_path is not None and config.is_token_path(route_path(scope)):
            await self._serve_token_endpoint(scope, send)
            return

        async def send_with_token(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = await self._deliver(scope, message)
            await send(message)

        await self.app(scope, receive, send_with_token)

    def _applies(self, scope: ASGIScope) -> bool:
        # Whether this HTTP request may get a token at all. Only an OPTIONS
        # request can be a preflight, so other methods skip the header scan.
        method = scope["method"]
        if method == "OPTIONS" and is_preflight(
            method, request_header(scope, b"access-control-request-method") is not None
        ):
            return False
        config = self.config
        if config.exclude_paths and config.is_excluded(route_path(scope)):
            return False
        if self._skip_if is None:
            return True
        try:
            skip = self._skip_if(scope)
        except Exception:
            logger.error(
                "skip_if raised for %s %r, so the response goes out without a "
                "Tinybird token.",
                scope["method"],
                scope["path"],
                exc_info=True,
            )
            return False
        if inspect.isawaitable(skip):
            if inspect.iscoroutine(skip):
                skip.close()
            logger.error(
                "skip_if returned an awaitable for %s %r instead of a bool, so "
                "the response goes out without a Tinybird token; make skip_if "
                "synchronous.",
                scope["method"],
                scope["path"],
            )
            return False
        return not skip

    async def _deliver(self, scope: ASGIScope, message: Message) -> Message:
        # Return the response start message with the token added, or the
        # message itself when nothing changes or issuing failed.
        original = message.get("headers")
        if original is None or isinstance(original, (list, tuple)):
            headers = original or []
        else:
            # Any other iterable can be read only once.
            headers = list(original)
            message = {**message, "headers": headers}

        try:
            if self._principal is None:
                principal = self._default_principal(scope)
            else:
                principal = await self._resolve_principal(scope)
            token = None
            if not is_anonymous(principal):
                token = await self.issuer.atoken_for(principal)
            new_headers = self._edited(scope, token, headers)
            if new_headers is None:
                return message
        except Exception as exc:
            self._log_failure(scope, exc)
            return message

        # A copy, so a message or header list that the app reuses for later
        # responses never keeps this user's token; every other key is kept.
        return {**message, "headers": new_headers}

    def _edited(
        self,
        scope: ASGIScope,
        token: TinybirdToken | None,
        headers: list[RawHeader] | tuple[RawHeader, ...],
    ) -> list[RawHeader] | None:
        # Return a new header list carrying ``token``, or None for no change.
        config = self.config
        uses_cookie = self._uses_cookie
        request_cookie = None
        if uses_cookie:
            request_cookie = read_cookie(
                request_header(scope, b"cookie"), config.cookie_name
            )
        if token is None:
            if request_cookie is None:
                return None
            edit = config.edit_for_anonymous(
                request_cookie=request_cookie,
                current=current_values(headers, config.watched_headers),
            )
            return None if edit is None else edited_headers(headers, edit)

        # The watched response values, as byte strings in WATCHED_HEADERS order.
        watched: list[list[bytes]] | None = None
        for key, value in headers:
            slot = _WATCHED_SLOTS.get(key.lower())
            if slot is not None:
                if watched is None:
                    watched = [[], [], []]
                watched[slot].append(value)
        found = _NO_VALUES if watched is None else tuple(map(tuple, watched))

        cache_key = self._edits.key(token, request_cookie, found)
        if cache_key is not None:
            prepared = self._edits.get(cache_key)
            if prepared is not None:
                return _apply_prepared(headers, prepared)

        current = {
            name: [value.decode("latin-1") for value in values]
            for name, values in zip(WATCHED_HEADERS, found, strict=True)
            if values
        }
        edit = config.edit_for_token(
            token,
            now=self.issuer.clock(),
            request_cookie=request_cookie,
            current=current,
        )
        if cache_key is None:
            return edited_headers(headers, edit)
        removed = frozenset(
            name.encode("latin-1") for name in (*edit.replace, *edit.drop)
        )
        prepared = (removed, edit.drop_cookie, encode_headers(edit.additions()))
        self._edits.put(cache_key, prepared)
        return _apply_prepared(headers, prepared)

    async def _serve_token_endpoint(self, scope: ASGIScope, send: Send) -> None:
        method = scope["method"]
        token = None
        failed = False
        if method in ("GET", "HEAD"):
            try:
                token = await self._current_token(scope)
            except Exception as exc:
                self._log_failure(scope, exc)
                failed = True

        response = self.config.endpoint_response(method, token, failed=failed)
        headers = encode_headers(response.headers)
        if method in ("GET", "HEAD") and not failed:
            watched = current_values(headers, self.config.watched_headers)
            edit = self._edit(scope, token, watched)
            if edit is not None:
                headers = edited_headers(headers, edit)

        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _current_token(self, scope: ASGIScope) -> TinybirdToken | None:
        # The token for the request's principal now, or None when anonymous.
        principal = await self._resolve_principal(scope)
        if is_anonymous(principal):
            return None
        return await self.issuer.atoken_for(principal)

    async def _resolve_principal(self, scope: ASGIScope) -> Any:
        if self._principal is None:
            return self._default_principal(scope)
        principal = self._principal(scope)
        if inspect.isawaitable(principal):
            principal = await principal
        return principal

    def _default_principal(self, scope: ASGIScope) -> Any:
        user = scope.get("user")
        if not is_anonymous(user):
            return user
        state = scope.get("state")
        if isinstance(state, Mapping):
            return state.get(self._state_attribute)
        return None

    def _edit(
        self,
        scope: ASGIScope,
        token: TinybirdToken | None,
        current: Mapping[str, list[str]],
    ) -> ResponseEdit | None:
        config = self.config
        request_cookie = None
        if config.uses_cookie:
            request_cookie = read_cookie(
                request_header(scope, b"cookie"), config.cookie_name
            )
        if token is None:
            return config.edit_for_anonymous(
                request_cookie=request_cookie, current=current
            )
        return config.edit_for_token(
            token,
            now=self.issuer.clock(),
            request_cookie=request_cookie,
            current=current,
        )

    async def _token_for_scope(self, scope: ASGIScope) -> TinybirdToken | None:
        """Return the token the response to ``scope`` carries, or ``None``.

        A failure is logged, as on the response, and gives ``None``.
        """
        try:
            return await self._current_token(scope)
        except Exception as exc:
            self._log_failure(scope, exc)
            return None

    @staticmethod
    def _log_failure(scope: ASGIScope, exc: Exception) -> None:
        if scope.get(FAILURE_LOGGED_KEY):
            return
        scope[FAILURE_LOGGED_KEY] = True
        identity = exc.identity if isinstance(exc, PolicyError) else None
        logger.error(
            "Tinybird token not issued for %s %r (identity %r), so this response "
            "carries no token. Cause: %s: %s",
            scope["method"],
            scope["path"],
            identity,
            type(exc).__name__,
            exc,
            exc_info=True,
        )


def route_path(scope: ASGIScope) -> str:
    """Return the request path relative to ``root_path``, as the app routes it.

    Servers (``uvicorn --root-path``) and Starlette's ``Mount`` put
    ``root_path`` at the start of ``path``; the prefix is removed when it
    covers whole segments, as Starlette's router does.
    """
    path: str = scope["path"]
    root_path: str = scope.get("root_path") or ""
    if not root_path or not path.startswith(root_path):
        return path
    rest = path[len(root_path) :]
    if not rest:
        return "/"
    if rest[0] == "/":
        return rest
    return path


def _is_async_callable(func: object) -> bool:
    # An async function (inspect unwraps functools.partial), or an object whose
    # class defines an async __call__.
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        type(func).__call__
    )


async def get_token(request_or_scope: HasScope | ASGIScope) -> TinybirdToken | None:
    """Return the token that the current response carries for its user.

    Accepts a Starlette or FastAPI ``Request`` or an ASGI scope. Returns
    ``None`` for an anonymous request, for a request that gets no token
    (preflight, excluded path, ``skip_if``), for a non-HTTP scope, and when
    issuing fails (the failure is logged). The token comes from the issuer's
    cache, so it is the one the response carries unless the principal
    changes after this call.

    :raises RuntimeError: when the request did not pass through
        :class:`TinybirdMiddleware`.
    """
    # A Starlette Request is a read-only Mapping over its scope, so test for
    # the mutable scope dict itself.
    if isinstance(request_or_scope, MutableMapping):
        scope = request_or_scope
    else:
        scope = request_or_scope.scope
    if scope.get("type") != "http":
        return None
    try:
        middleware = scope[SCOPE_KEY]
    except KeyError:
        raise RuntimeError(
            "get_token() found no TinybirdMiddleware on this request; add "
            "TinybirdMiddleware around the app or router that serves it."
        ) from None
    if middleware is None:
        return None
    token: TinybirdToken | None = await middleware._token_for_scope(scope)
    return token


def _apply_prepared(
    headers: list[RawHeader] | tuple[RawHeader, ...], prepared: _PreparedEdit
) -> list[RawHeader]:
    # Return a new header list with a reusable edit applied.
    removed, drop_cookie, additions = prepared
    if drop_cookie is None:
        kept = [line for line in headers if line[0].lower() not in removed]
    else:
        kept = [
            line
            for line in headers
            if line[0].lower() not in removed
            and not (
                line[0].lower() == b"set-cookie"
                and sets_cookie(line[1].decode("latin-1"), drop_cookie)
            )
        ]
    kept.extend(additions)
    return kept
