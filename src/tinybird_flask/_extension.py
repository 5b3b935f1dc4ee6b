"""``TinybirdJWT``: the Flask extension over the shared token core."""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    current_app,
    g,
    has_request_context,
    request,
)
from flask.views import View
from werkzeug.datastructures import Headers

from tinybird_asgi import (
    AnonymousPrincipalError,
    AsyncCallbackError,
    ConfigurationError,
    DeliveryConfig,
    PolicyError,
    Scope,
    TinybirdError,
    TinybirdToken,
    TokenIssuer,
    default_identity,
    is_anonymous,
    is_preflight,
    read_cookie,
)
from tinybird_asgi._delivery import WATCHED_HEADERS, EditCache, ResponseEdit

from ._config import (
    CONFIG_DEFAULTS,
    ISSUER_KEYS,
    build_delivery,
    build_issuer,
    unknown_keys,
)
from ._principal import default_principal

__all__ = ["ENDPOINT_NAME", "EXTENSION_NAME", "TinybirdJWT"]

logger = logging.getLogger("tinybird_flask")

EXTENSION_NAME = "tinybird"
"""Key of the per-app state in ``app.extensions``."""
ENDPOINT_NAME = "tinybird.token"
"""Flask endpoint name of the token endpoint route."""

# The Allow header of Flask's reply to a CORS preflight of the token path.
_PREFLIGHT_ALLOW = "GET, HEAD, OPTIONS"
# g attribute caching (request, principal, token, error), so the Jinja
# global, current_token() and the after_request hook call the scopes policy
# once per request and principal, and a failure is logged once. The request
# is part of the key because g outlives a request when the app context was
# pushed beforehand.
_G_CACHE = "_tinybird_cache"
_G_LOGGED = "_tinybird_logged"

_F = TypeVar("_F", bound=Callable[..., Any])
ScopesPolicy = Callable[[Any], Iterable[Scope]]
IdentityFunc = Callable[[Any], str]
PrincipalLoader = Callable[[], Any]
_Outcome = tuple[Request, Any, TinybirdToken | None, Exception | None]
# A reusable edit: the edit, which decides which lines go, and the lines it
# appends, already checked by Werkzeug.
_PreparedEdit = tuple[ResponseEdit, list[tuple[str, str]]]
# The edit cache's watched values of a response without any watched header.
_NO_WATCHED: tuple[tuple[str, ...], ...] = tuple(() for _ in WATCHED_HEADERS)


@dataclass(frozen=True, slots=True)
class _AppState:
    extension: TinybirdJWT
    issuer: TokenIssuer
    delivery: DeliveryConfig
    edits: EditCache[_PreparedEdit]


class TinybirdJWT:
    """Deliver a per-user Tinybird JWT on the responses of a Flask app.

    Pass ``app`` to set up one app at once, or call :meth:`init_app` from an
    app factory. Options come from ``app.config`` (keys starting with
    ``TINYBIRD_``, see the README); ``issuer`` replaces the issuer keys with a
    :class:`TokenIssuer` built by the caller, shared by every app set up with
    this extension.

    :param scopes_policy: a callable ``principal -> scopes``; the same as
        decorating it with :meth:`scopes_policy`.
    :param clock: Unix-seconds clock of the issuers built from ``app.config``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        issuer: TokenIssuer | None = None,
        *,
        scopes_policy: ScopesPolicy | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if issuer is not None:
            _check_issuer(issuer)
        if issuer is not None and scopes_policy is not None:
            raise _issuer_conflict("scopes_policy")
        if scopes_policy is not None:
            _check_callback("scopes_policy", scopes_policy)
        if clock is not None and not callable(clock):
            raise ConfigurationError(
                "clock must be a callable returning Unix seconds, like time.time.",
                option="clock",
            )
        self._issuer = issuer
        self._scopes_policy = scopes_policy
        self._identity: IdentityFunc | None = None
        self._principal_loader: PrincipalLoader | None = None
        self._clock = clock
        # Setup errors met while serving, counted so that their log is
        # rate-limited; next() on itertools.count is atomic in CPython.
        self._setup_failures = itertools.count(1)

        # Keyed by id() so that unhashable callables work; the values keep
        # each object alive, so its id is never reused.
        self._exempt_views: dict[int, object] = {}
        self._exempt_blueprints: dict[int, Blueprint] = {}
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read and validate ``app.config``, then register the hooks on ``app``.

        :raises ConfigurationError: for an invalid ``TINYBIRD_*`` key, naming it.
        """
        if EXTENSION_NAME in app.extensions:
            raise ConfigurationError(
                f"TinybirdJWT is already set up on app {app.name!r}; "
                "call init_app once per app.",
                option="app",
            )
        # Flask's setup methods raise once the app has handled a request, so
        # this one comes first: a late init_app raises before changing the app.
        app.add_template_global(self.current_token, "tinybird_token")
        # With issuer= the issuer keys are never read, so they are not added:
        # app.config then shows no TINYBIRD_TTL that the issuer does not use.
        skipped = set(ISSUER_KEYS.values()) if self._issuer is not None else set()
        for key, default in CONFIG_DEFAULTS.items():
            if key not in skipped:
                app.config.setdefault(key, default)
        for key in unknown_keys(app.config):
            logger.warning(
                "app.config[%r] is not a TinybirdJWT setting and is ignored; "
                "check its spelling",
                key,
            )

        delivery = build_delivery(app.config)
        if delivery.token_path is not None and ENDPOINT_NAME in app.view_functions:
            key = "TINYBIRD_TOKEN_PATH"
            raise ConfigurationError(
                f"app.config[{key!r}] is set, but the app already has a view "
                f"named {ENDPOINT_NAME!r}; rename that view or blueprint, or set "
                f"{key} = None.",
                option=key,
            )
        issuer = self._issuer
        if issuer is None:
            issuer = build_issuer(
                app.config,
                scopes=self._scopes_for,
                identity=self._identity_for,
                clock=self._clock,
            )
        app.extensions[EXTENSION_NAME] = _AppState(
            self, issuer, delivery, EditCache(delivery)
        )

        if delivery.token_path is not None:
            # A Werkzeug Rule without methods matches every method, so TRACE,
            # PROPFIND and the rest reach the core's JSON 405 too, as they do
            # under the ASGI middleware. add_url_rule() would limit the rule
            # to a list of methods.
            rule = app.url_rule_class(delivery.token_path, endpoint=ENDPOINT_NAME)
            app.url_map.add(rule)
            app.view_functions[ENDPOINT_NAME] = self._token_view
        # Flask runs an app's after_request functions in reverse order of
        # registration, so the first one in the list runs last. The token
        # hook goes there, so it edits the Cache-Control, Vary and
        # Access-Control-Expose-Headers that every other hook left, whenever
        # that hook was registered.
        app.after_request_funcs.setdefault(None, []).insert(0, self._after_request)

    # Registration decorators

    def scopes_policy(self, func: ScopesPolicy) -> ScopesPolicy:
        """Register ``func(principal) -> scopes`` as the scopes policy."""
        if self._issuer is not None:
            raise _issuer_conflict("scopes_policy")
        _check_callback("scopes_policy", func)
        self._scopes_policy = func
        return func

    def identity(self, func: IdentityFunc) -> IdentityFunc:
        """Register ``func(principal) -> str``, the identity tokens are cached by.

        Without one, :func:`tinybird_asgi.default_identity` is used.
        """
        if self._issuer is not None:
            raise _issuer_conflict("identity")
        _check_callback("identity", func)
        self._identity = func
        return func

    def principal_loader(self, func: PrincipalLoader) -> PrincipalLoader:
        """Register ``func() -> principal | None`` to find the request's user.

        It replaces the default lookup (Flask-Login's ``current_user``, then
        ``g.user``) and is called each time the request's token is looked up.
        """
        _check_callback("principal_loader", func)
        self._principal_loader = func
        return func

    @overload
    def exempt(self, view: Blueprint) -> Blueprint: ...

    @overload
    def exempt(self, view: _F) -> _F: ...

    def exempt(self, view: _F | Blueprint) -> _F | Blueprint:
        """Exclude a view or a whole blueprint from token delivery.

        Use it as a decorator on a view function, or call it with a view
        function, a class-based view (the function ``View.as_view`` returns,
        or the ``View`` subclass itself) or a :class:`~flask.Blueprint`.

        Views are matched by identity, through any wrappers made with
        :func:`functools.wraps`; a class-based view matches every
        ``as_view`` registration of its class. A blueprint matches under
        every name it is registered with, and its child blueprints with it.

        :raises ConfigurationError: for anything else, such as a view's name.
        """
        if isinstance(view, Blueprint):
            self._exempt_blueprints[id(view)] = view
            return view
        if isinstance(view, type) and issubclass(view, View):
            self._exempt_views[id(view)] = view
            return view
        if isinstance(view, str) or not callable(view):
            raise ConfigurationError(
                "exempt() takes a view function, a View class or a Blueprint, "
                f"not {type(view).__name__}; for a view registered elsewhere, "
                "pass app.view_functions[endpoint].",
                option="exempt",
            )
        target = getattr(view, "view_class", view)
        self._exempt_views[id(target)] = target
        return view

    # Per-request API

    def current_token(self) -> TinybirdToken | None:
        """Return the current user's token, or ``None`` when there is none.

        Also registered as the Jinja global ``tinybird_token()``. Outside a
        request (a template rendered by a CLI command) there is no user, so it
        returns ``None``. A failing policy or principal loader is logged and
        gives ``None``, so this method never raises.
        """
        if not has_request_context():
            return None
        try:
            req: Request = request._get_current_object()  # type: ignore[attr-defined]
            app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
            state = self._state(app)
            if self._skips(req, app, state.delivery):
                # No token goes on this response, so none may reach its body.
                return None
            return self._request_token(req, app, state)
        except Exception as exc:
            _log_failure(exc, self._setup_failures)
            return None

    def issuer_for(self, app: Flask | None = None) -> TokenIssuer:
        """Return the :class:`TokenIssuer` of ``app`` (default: the current app).

        Use it for ``invalidate``, ``rotate_signing_key`` or ``token_for``
        outside a request.

        :raises KeyError: when ``app`` is not set up with this extension.
        """
        target = current_app if app is None else app
        state: _AppState = target.extensions[EXTENSION_NAME]
        if state.extension is not self:
            raise KeyError(f"app {target.name!r} is set up with another TinybirdJWT")
        return state.issuer

    def _state(self, app: Flask | None = None) -> _AppState:
        target = current_app if app is None else app
        state: _AppState = target.extensions[EXTENSION_NAME]
        if state.extension is not self:
            raise RuntimeError(  # pragma: no cover - init_app rejects a second one
                "The current app is set up with another TinybirdJWT instance."
            )
        return state

    def _request_token(
        self, req: Request, app: Flask, state: _AppState
    ) -> TinybirdToken | None:
        # The current principal's token; app, req and g are resolved once and
        # passed down, because each read through a proxy costs a lookup.
        ctx_g = g._get_current_object()
        return self._token_for(self._principal(app, ctx_g), state, req, ctx_g)

    def _principal(self, app: Flask, ctx_g: Any) -> Any:
        if self._principal_loader is None:
            return default_principal(app, ctx_g)
        principal = self._principal_loader()
        if inspect.isawaitable(principal):
            if inspect.iscoroutine(principal):
                principal.close()
            raise AsyncCallbackError("principal_loader returned an awaitable.")
        return principal

    def _token_for(
        self, principal: Any, state: _AppState, req: Request, ctx_g: Any
    ) -> TinybirdToken | None:
        cached: _Outcome | None = ctx_g.get(_G_CACHE)
        if cached is not None and cached[0] is req and cached[1] is principal:
            if cached[3] is not None:
                raise cached[3]
            return cached[2]

        token: TinybirdToken | None
        if self._issuer is None and self._scopes_policy is None:
            raise ConfigurationError(
                "No scopes policy is registered; decorate a function "
                "principal -> scopes with @tinybird.scopes_policy.",
                option="scopes_policy",
            )
        try:
            # Checked first, so an anonymous request costs no exception.
            if is_anonymous(principal):
                token = None
            else:
                if state is None:
                    state = self._state()
                token = state.issuer.token_for(principal)
        except AnonymousPrincipalError:
            token = None
        except Exception as exc:
            setattr(ctx_g, _G_CACHE, (req, principal, None, exc))
            raise
        setattr(ctx_g, _G_CACHE, (req, principal, token, None))
        return token

    # Callbacks handed to issuers built from app.config

    def _scopes_for(self, principal: Any) -> Iterable[Scope]:
        if self._scopes_policy is None:  # pragma: no cover - checked by _token_for
            raise RuntimeError("no scopes policy is registered")
        return self._scopes_policy(principal)

    def _identity_for(self, principal: Any) -> str:
        if self._identity is None:
            return default_identity(principal)
        return self._identity(principal)

    # Hooks

    def _token_view(self) -> Response:
        # Like the ASGI middleware, a CORS preflight goes to the app (here
        # Flask's own OPTIONS reply, which CORS hooks then complete) and every
        # other method to the core, where only GET and HEAD get more than a
        # 405.
        if _is_preflight():
            response = current_app.make_default_options_response()
            response.headers["Allow"] = _PREFLIGHT_ALLOW
            return response

        req: Request = request._get_current_object()  # type: ignore[attr-defined]
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        state = self._state(app)
        delivery = state.delivery
        method = req.method
        token = None
        failed = False
        if method in ("GET", "HEAD"):
            try:
                token = self._request_token(req, app, state)
            except Exception as exc:
                _log_failure(exc, self._setup_failures)
                failed = True

        endpoint = delivery.endpoint_response(method, token, failed=failed)
        response = Response(endpoint.body, status=endpoint.status)
        # The core's headers replace Flask's, so HEAD keeps GET's Content-Length.
        response.headers = Headers(endpoint.headers)
        if method in ("GET", "HEAD") and not failed:
            self._apply_delivery(response, token, req, state)
        return response

    def _after_request(self, response: Response) -> Response:
        # Flask skips the remaining after_request hooks when one raises, so
        # this one never does: the response then goes out without a token.
        try:
            # The proxies are resolved once; each read through them costs a
            # context lookup.
            req: Request = request._get_current_object()  # type: ignore[attr-defined]
            app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
            state = self._state(app)
            if not self._skips(req, app, state.delivery):
                token = self._request_token(req, app, state)
                self._apply_delivery(response, token, req, state)
        except Exception as exc:
            _log_failure(exc, self._setup_failures)
        return response

    def _apply_delivery(
        self,
        response: Response,
        token: TinybirdToken | None,
        req: Request,
        state: _AppState,
    ) -> None:
        # Put ``token`` on the response, or delete a stale cookie when None.
        delivery = state.delivery
        request_cookie = None
        if delivery.uses_cookie:
            request_cookie = read_cookie(
                req.headers.get("Cookie"), delivery.cookie_name
            )
        headers = response.headers
        if token is None and request_cookie is None:
            return

        # Iterating the Headers object yields its (name, value) lines without
        # the Python generator that items() adds.
        lines = list(headers)
        lowered = [name.lower() for name, _ in lines]
        watched_names = delivery.watched_headers
        watched: dict[str, list[str]] = {}
        for lower, (_, value) in zip(lowered, lines, strict=True):
            if lower in watched_names:
                watched.setdefault(lower, []).append(value)
        if token is None:
            edit = delivery.edit_for_anonymous(
                request_cookie=request_cookie, current=watched
            )
            if edit is not None:
                # Build the new headers completely before swapping them in,
                # so a failure leaves the response as the view made it.
                response.headers = Headers(edit.apply(lines))
            return

        found = _NO_WATCHED
        if watched:
            found = tuple(tuple(watched.get(name, ())) for name in WATCHED_HEADERS)
        cache_key = state.edits.key(token, request_cookie, found)
        prepared = None if cache_key is None else state.edits.get(cache_key)
        if prepared is None:
            edit = delivery.edit_for_token(
                token,
                now=state.issuer.clock(),
                request_cookie=request_cookie,
                current=watched,
            )
            if cache_key is None:
                response.headers = Headers(edit.apply(lines))
                return
            # Werkzeug checks each value once here, as Headers.add() does.
            prepared = (edit, Headers(edit.additions()).to_wsgi_list())
            state.edits.put(cache_key, prepared)
        edit, additions = prepared
        kept = [
            line
            for line, lower in zip(lines, lowered, strict=True)
            if not edit.removes(lower, line[1])
        ]
        kept.extend(additions)
        # A new Headers object, swapped in once every line is built: a failure
        # leaves the response as the view made it, and a Headers object the
        # view shares with other responses is never changed. Every line was
        # already checked by Werkzeug (the view's when they were added, the
        # edit's when it was cached), so the list is handed over as it is
        # instead of checking each value again through the public API.
        response.headers = _headers_from_checked(kept)

    def _skips(self, req: Request, app: Flask, delivery: DeliveryConfig) -> bool:
        if req.endpoint == ENDPOINT_NAME:
            return True
        if req.method == "OPTIONS" and _is_preflight(req):
            return True
        if delivery.exclude_paths and delivery.is_excluded(req.path):
            return True
        if self._exempt_blueprints and self._is_exempt_blueprint(req, app):
            return True
        return bool(self._exempt_views) and self._is_exempt_view(req, app)

    def _is_exempt_blueprint(self, req: Request, app: Flask) -> bool:
        # request.blueprints lists the registered names, dotted for nested
        # ones ("parent.child"), from the request's blueprint up to the
        # outermost; app.blueprints maps each name to its Blueprint.
        blueprints = app.blueprints
        for name in req.blueprints:
            blueprint = blueprints.get(name)
            if blueprint is not None and id(blueprint) in self._exempt_blueprints:
                return True
        return False

    def _is_exempt_view(self, req: Request, app: Flask) -> bool:
        view: object = app.view_functions.get(req.endpoint or "")
        seen: set[int] = set()
        # Walk the __wrapped__ chain that functools.wraps leaves, so that an
        # exempted view still matches under later decorators.
        while view is not None and id(view) not in seen:
            seen.add(id(view))
            if id(view) in self._exempt_views:
                return True
            view_class = getattr(view, "view_class", None)
            if view_class is not None and id(view_class) in self._exempt_views:
                return True
            view = getattr(view, "__wrapped__", None)
        return False


def _is_preflight(req: Request | None = None) -> bool:
    if req is None:
        req = request._get_current_object()  # type: ignore[attr-defined]
    return is_preflight(req.method, "Access-Control-Request-Method" in req.headers)


def _check_issuer(issuer: object) -> None:
    if not isinstance(issuer, TokenIssuer):
        raise ConfigurationError(
            f"issuer must be a TokenIssuer, not {type(issuer).__name__}.",
            option="issuer",
        )
    if issuer.async_callbacks:
        raise ConfigurationError(
            f"issuer has async callbacks ({', '.join(issuer.async_callbacks)}), "
            "but Flask calls them synchronously; pass plain functions to "
            "that TokenIssuer.",
            option="issuer",
        )


def _check_callback(what: str, func: object) -> None:
    if not callable(func):
        raise ConfigurationError(f"{what} must be a callable.", option=what)
    # The second test finds callable objects whose __call__ is async def.
    if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        type(func).__call__
    ):
        raise ConfigurationError(
            f"{what} is async, but Flask's after_request hooks are synchronous; "
            "register a plain function.",
            option=what,
        )


def _issuer_conflict(what: str) -> ConfigurationError:
    return ConfigurationError(
        f"{what} cannot be registered on a TinybirdJWT built with issuer=; "
        f"pass {what} to that TokenIssuer instead.",
        option=what,
    )


def _log_failure(exc: Exception, setup_failures: Iterator[int]) -> None:
    # The core's messages name the identity and never a token or a key; other
    # exceptions come from app callbacks and are logged by type, with their
    # traceback.
    # An AsyncCallbackError is logged once per request even when the
    # principal loader raises a new one on each lookup.
    logged = g.get(_G_LOGGED)
    if logged is exc or (
        isinstance(exc, AsyncCallbackError) and isinstance(logged, AsyncCallbackError)
    ):
        return
    setattr(g, _G_LOGGED, exc)
    if isinstance(exc, AsyncCallbackError):
        # The core's message advises atoken_for(), which no Flask hook can
        # await; the traceback would only show the core's internals.
        logger.error(
            "Tinybird token not issued for %s %r: a TinybirdJWT callback (scopes "
            "policy, identity, name, rate_limit or principal loader) returned an "
            "awaitable, but Flask calls callbacks synchronously; register plain "
            "functions that return their result. This response carries no token.",
            request.method,
            request.path,
        )
        return
    if isinstance(exc, ConfigurationError):
        # The same setup error recurs on every request until the app is fixed.
        # Its message gives the fix, so it is logged without a traceback, on
        # the first request and then on every thousandth.
        count = next(setup_failures)
        if count == 1 or count % 1000 == 0:
            logger.error(
                "Tinybird token not issued for %s %r (%d time(s) so far): %s "
                "Responses carry no token.",
                request.method,
                request.path,
                count,
                exc,
            )
        return
    identity = exc.identity if isinstance(exc, PolicyError) else None
    reason = str(exc) if isinstance(exc, TinybirdError) else type(exc).__name__
    logger.error(
        "Tinybird token not issued for %s %r (identity %r): %s; this response "
        "carries no token.",
        request.method,
        request.path,
        identity,
        reason.rstrip("."),
        exc_info=exc,
    )


def _probe_headers_list() -> bool:
    # Whether this Werkzeug stores a Headers object's lines in ``_list`` (true
    # of Werkzeug 2.x and 3.x); a private attribute, so it is checked once.
    probe = Headers()
    try:
        probe._list = [("X-Probe", "1")]
    except AttributeError:  # pragma: no cover - a Werkzeug without _list
        return False
    return probe.get("X-Probe") == "1" and len(probe) == 1


_HEADERS_LIST_WORKS = _probe_headers_list()


def _headers_from_checked(lines: list[tuple[str, str]]) -> Headers:
    # Build a Headers object from lines Werkzeug has already validated,
    # skipping its per-value check where the private list is known to work.
    if not _HEADERS_LIST_WORKS:  # pragma: no cover - other Werkzeug versions
        return Headers(lines)
    headers = Headers()
    headers._list = lines
    return headers
