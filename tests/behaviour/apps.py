"""One tiny test app, built on each adapter with the same issuer and options.

The principal comes from the ``X-Test-User: <identity>:<org>`` request header.
Query parameters make the app set its own response headers, so tests can
check how the adapter merges with them:

``cache``, ``vary``, ``expose``
    ``Cache-Control``, ``Vary`` and ``Access-Control-Expose-Headers``.
``cookie``
    one ``Set-Cookie`` line of the app's own.
``forge``
    an ``X-Tinybird-Token`` header of the app's own.
``cdn``
    ``CDN-Cache-Control``, ``Surrogate-Control``,
    ``Cloudflare-CDN-Cache-Control``, ``Vercel-CDN-Cache-Control``,
    ``Edge-Control`` and ``X-Accel-Expires``.

Routes: ``/page``, ``/public/page`` (excluded by the suite's options),
``/publicity`` (not excluded), ``/stream`` (a body sent in ``STREAM_CHUNKS``)
and the token endpoint at ``TOKEN_PATH``.
Identity ``boom`` makes the scopes policy raise; identity ``wide`` gets 80
pipes, a token too large for a cookie.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import flask
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from tinybird_asgi import PipeRead, Scope, TinybirdMiddleware, TokenIssuer
from tinybird_flask import TinybirdJWT

USER_HEADER = "X-Test-User"
TOKEN_PATH = "/tinybird/token"
EXCLUDED = ("/public",)
PAGE_BODY = "ok"
STREAM_CHUNKS = ("first\n", "second\n", "third\n")


class TestUser(BaseUser):
    """A signed-in user of the test app, with a tenant (``org``)."""

    __test__ = False

    def __init__(self, identity: str, org: str) -> None:
        self._identity = identity
        self.org = org

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self._identity

    @property
    def identity(self) -> str:
        return self._identity


def parse_user(header: str | None) -> TestUser | None:
    """Return the user named by an ``X-Test-User`` header, or ``None``."""
    if not header:
        return None
    identity, _, org = header.partition(":")
    return TestUser(identity, org)


def scopes_policy(user: TestUser) -> list[Scope]:
    """Grant one pipe filtered to the user's org; identity ``boom`` fails and
    identity ``wide`` gets 80 pipes."""
    if user.identity == "boom":
        raise ValueError("policy failure for the test")
    if user.identity == "wide":
        return [PipeRead(f"pipe_{i:03d}", {"org_id": user.org}) for i in range(80)]
    return [PipeRead("events", fixed_params={"org_id": user.org})]


def app_headers(query: Mapping[str, str]) -> list[tuple[str, str]]:
    """Return the response headers the app sets for a request's query."""
    headers = []
    for param, name in (
        ("cache", "Cache-Control"),
        ("vary", "Vary"),
        ("expose", "Access-Control-Expose-Headers"),
        ("cookie", "Set-Cookie"),
        ("forge", "X-Tinybird-Token"),
        ("cdn", "CDN-Cache-Control"),
        ("cdn", "Surrogate-Control"),
        ("cdn", "Cloudflare-CDN-Cache-Control"),
        ("cdn", "Vercel-CDN-Cache-Control"),
        ("cdn", "Edge-Control"),
        ("cdn", "X-Accel-Expires"),
    ):
        if param in query:
            headers.append((name, query[param]))
    return headers


def issuer_for(clock: Any, signing_key: str, workspace_id: str) -> TokenIssuer:
    """Build the issuer every adapter in the suite uses."""
    return TokenIssuer(
        signing_key=signing_key,
        workspace_id=workspace_id,
        scopes=scopes_policy,
        clock=clock,
    )


def flask_app(issuer: TokenIssuer, options: Mapping[str, Any]) -> flask.Flask:
    """Build the test app on :class:`TinybirdJWT`, options as ``app.config``."""
    app = flask.Flask("behaviour")
    for option, value in options.items():
        app.config["TINYBIRD_" + option.upper()] = value
    TinybirdJWT(app, issuer=issuer)

    @app.before_request
    def load_user() -> None:
        flask.g.user = parse_user(flask.request.headers.get(USER_HEADER))

    @app.route("/page", methods=["GET", "OPTIONS"])
    @app.route("/public/page", methods=["GET", "OPTIONS"])
    @app.route("/publicity", methods=["GET", "OPTIONS"])
    def page() -> flask.Response:
        response = flask.Response(PAGE_BODY, mimetype="text/plain")
        for name, value in app_headers(flask.request.args):
            response.headers.add(name, value)
        return response

    @app.route("/stream")
    def stream() -> flask.Response:
        return flask.Response(iter(STREAM_CHUNKS), mimetype="text/plain")

    return app


class HeaderBackend(AuthenticationBackend):
    """Starlette authentication from the ``X-Test-User`` header."""

    async def authenticate(
        self, conn: HTTPConnection
    ) -> tuple[AuthCredentials, BaseUser] | None:
        user = parse_user(conn.headers.get(USER_HEADER))
        if user is None:
            return None
        return AuthCredentials(["authenticated"]), user


async def asgi_page(request: Request) -> PlainTextResponse:
    response = PlainTextResponse(PAGE_BODY)
    for name, value in app_headers(request.query_params):
        response.headers.append(name, value)
    return response


async def asgi_stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[str]:
        for chunk in STREAM_CHUNKS:
            yield chunk

    return StreamingResponse(chunks(), media_type="text/plain")


def asgi_app(issuer: TokenIssuer, options: Mapping[str, Any]) -> Starlette:
    """Build the test app on :class:`TinybirdMiddleware` inside Starlette's
    ``AuthenticationMiddleware``, which sets ``scope["user"]``."""
    methods = ["GET", "OPTIONS"]
    return Starlette(
        routes=[
            Route("/page", asgi_page, methods=methods),
            Route("/public/page", asgi_page, methods=methods),
            Route("/publicity", asgi_page, methods=methods),
            Route("/stream", asgi_stream),
        ],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=HeaderBackend()),
            Middleware(TinybirdMiddleware, issuer=issuer, **options),
        ],
    )
