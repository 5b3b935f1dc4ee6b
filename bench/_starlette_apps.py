"""The Starlette apps that the ASGI and HTTP benchmarks compare.

Every variant serves the same endpoint; they differ only in what runs around
it. The Tinybird variants and the hand-rolled ones build the user's scopes
with :func:`~bench._fixtures.org_policy` on every request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tinybird_asgi import TinybirdMiddleware, TokenIssuer

from ._fixtures import HEADER_NAME, User, hand_rolled_token, make_issuer, user

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _home(request: Request) -> Response:
    return PlainTextResponse("ok")


class ConstantHeaderMiddleware:
    """A pure ASGI middleware that appends constant response headers.

    It does the least any header-adding middleware must do: wrap ``send`` and
    copy the header list of ``http.response.start``.
    """

    def __init__(
        self,
        app: ASGIApp,
        headers: Sequence[tuple[bytes, bytes]] = ((b"x-bench", b"1"),),
    ) -> None:
        self.app = app
        self.headers = list(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.extend(self.headers)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


class HandRolledTokenMiddleware(BaseHTTPMiddleware):
    """The ``BaseHTTPMiddleware`` that apps write today: mint on every request."""

    async def dispatch(
        self, request: Request, call_next: RequestResponseEndpoint
    ) -> Response:
        response = await call_next(request)
        principal = request.scope.get("user")
        if isinstance(principal, User):
            response.headers[HEADER_NAME] = hand_rolled_token(principal)
        return response


class FixedUserMiddleware:
    """Set ``scope["user"]`` to one signed-in user, as an authentication layer
    would. Every HTTP benchmark server runs it first."""

    principal = user(0)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["user"] = self.principal
        await self.app(scope, receive, send)


def starlette_app(
    variant: str, issuer: TokenIssuer | None = None, *, authenticate: bool = False
) -> Starlette:
    """Return the Starlette app of ``variant``: bare, constant-header,
    tinybird or hand-rolled.

    With ``authenticate``, :class:`FixedUserMiddleware` runs first; otherwise
    the caller's scope carries the user.
    """
    middleware: list[Middleware] = []
    if authenticate:
        middleware.append(Middleware(FixedUserMiddleware))
    if variant == "constant-header":
        middleware.append(Middleware(ConstantHeaderMiddleware))
    elif variant == "tinybird":
        middleware.append(
            Middleware(
                TinybirdMiddleware, issuer=make_issuer() if issuer is None else issuer
            )
        )
    elif variant == "hand-rolled":
        middleware.append(Middleware(HandRolledTokenMiddleware))
    elif variant != "bare":
        raise ValueError(f"unknown Starlette variant {variant!r}")
    return Starlette(routes=[Route("/", _home)], middleware=middleware)


def http_bare() -> Starlette:
    """uvicorn factory of the bare app for the HTTP benchmark."""
    return starlette_app("bare", authenticate=True)


def http_constant_headers() -> Starlette:
    """uvicorn factory of an app that appends, as constants, the five header
    lines TinybirdMiddleware adds for one user, so the HTTP benchmark can tell
    the server's cost of sending them from the middleware's own work."""
    token = make_issuer().token_for(FixedUserMiddleware.principal)
    lines = [
        (
            b"access-control-expose-headers",
            b"X-Tinybird-Token, X-Tinybird-Token-Expires",
        ),
        (b"cache-control", b"private"),
        (b"vary", b"Cookie"),
        (HEADER_NAME.encode(), token.value.encode()),
        (b"x-tinybird-token-expires", str(token.expires_at).encode()),
    ]
    return Starlette(
        routes=[Route("/", _home)],
        middleware=[
            Middleware(FixedUserMiddleware),
            Middleware(ConstantHeaderMiddleware, headers=lines),
        ],
    )


def http_tinybird() -> Starlette:
    """uvicorn factory of the TinybirdMiddleware app for the HTTP benchmark."""
    return starlette_app("tinybird", authenticate=True)
