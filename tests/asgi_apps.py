"""Starlette, FastAPI and bare ASGI apps wrapped in TinybirdMiddleware, shared
by the in-process and uvicorn tests."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Header, Request
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
    UnauthenticatedUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection
from starlette.requests import Request as StarletteRequest
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from tests.asgi_support import OrgUser
from tinybird_asgi import TinybirdMiddleware, TokenIssuer, get_token
from tinybird_asgi._asgi_types import ASGIScope, Receive, Send

SESSION_SECRET = "session-secret-for-tests-only"
ORIGIN = "https://app.example"
STREAM_CHUNKS = (b"first chunk\n", b"second chunk\n")
STREAM_WAIT_SECONDS = 10.0


class OrgSimpleUser(SimpleUser):
    """Starlette's ``SimpleUser`` (whose ``identity`` raises) plus an org."""

    def __init__(self, username: str, org: str) -> None:
        super().__init__(username)
        self.org = org


class SessionBackend(AuthenticationBackend):
    """Authenticate from ``session["user"]`` and ``session["org"]``."""

    async def authenticate(
        self, conn: HTTPConnection
    ) -> tuple[AuthCredentials, BaseUser] | None:
        username = conn.session.get("user")
        if username is None:
            return None
        return AuthCredentials(["authenticated"]), OrgSimpleUser(
            username, conn.session["org"]
        )


async def _token_json(request: StarletteRequest) -> dict[str, Any]:
    token = await get_token(request)
    return {"token": None if token is None else token.value}


def starlette_app(
    issuer: TokenIssuer,
    *,
    file_path: Path | None = None,
    stream_gate: threading.Event | None = None,
    cors: str | None = None,
    tinybird_outermost: bool = False,
    **options: Any,
) -> Starlette:
    """A Starlette app with sessions and authentication.

    ``/login?user=&org=`` signs in, ``/logout`` signs out, ``/page`` returns
    the accessor's token, ``/stream`` streams two chunks (the second after
    ``stream_gate`` is set), ``/file`` serves ``file_path``. ``cors`` puts
    ``CORSMiddleware`` "outside" or "inside" TinybirdMiddleware, and
    ``tinybird_outermost`` puts TinybirdMiddleware outside the session and
    authentication middleware.
    """

    async def login(request: StarletteRequest) -> Response:
        # AuthenticationMiddleware set scope["user"] before the session
        # changed; replacing it gives this very response the new user's token,
        # even when another user was signed in.
        username = request.query_params["user"]
        org = request.query_params.get("org", "acme")
        request.session["user"] = username
        request.session["org"] = org
        request.scope["user"] = OrgSimpleUser(username, org)
        return PlainTextResponse("signed in")

    async def logout(request: StarletteRequest) -> Response:
        # scope["user"] was set before the session was cleared; resetting it
        # lets this very response delete the token cookie.
        request.session.clear()
        request.scope["user"] = UnauthenticatedUser()
        return PlainTextResponse("signed out")

    async def page(request: StarletteRequest) -> Response:
        return JSONResponse(await _token_json(request))

    async def chunks() -> AsyncIterator[bytes]:
        yield STREAM_CHUNKS[0]
        if stream_gate is not None:
            released = await anyio.to_thread.run_sync(
                stream_gate.wait, STREAM_WAIT_SECONDS
            )
            if not released:
                yield b"timed out waiting for the client\n"
                return
        yield STREAM_CHUNKS[1]

    async def stream(request: StarletteRequest) -> Response:
        return StreamingResponse(chunks(), media_type="text/plain")

    async def file(request: StarletteRequest) -> Response:
        assert file_path is not None
        return FileResponse(file_path, media_type="text/csv")

    cors_middleware = Middleware(
        CORSMiddleware,
        allow_origins=[ORIGIN],
        allow_credentials=True,
        allow_headers=["Authorization"],
        expose_headers=["X-Tinybird-Token", "X-Tinybird-Token-Expires"]
        if cors == "outside"
        else ["X-Request-Id"],
    )
    middleware = [
        Middleware(SessionMiddleware, secret_key=SESSION_SECRET),
        Middleware(AuthenticationMiddleware, backend=SessionBackend()),
    ]
    tinybird = Middleware(TinybirdMiddleware, issuer=issuer, **options)
    if tinybird_outermost:
        middleware.insert(0, tinybird)
    else:
        middleware.append(tinybird)
    if cors == "outside":
        middleware.insert(0, cors_middleware)
    elif cors == "inside":
        middleware.append(cors_middleware)

    return Starlette(
        routes=[
            Route("/login", login),
            Route("/logout", logout),
            Route("/page", page),
            Route("/stream", stream),
            Route("/file", file),
        ],
        middleware=middleware,
    )


def current_user(
    request: Request, x_user: Annotated[str | None, Header()] = None
) -> OrgUser | None:
    """A FastAPI dependency: the user named by ``X-User: name@org``, stored
    in ``request.state.user`` while the endpoint runs."""
    user = None
    if x_user:
        name, _, org = x_user.partition("@")
        user = OrgUser(name, org)
    request.state.user = user
    return user


def fastapi_app(issuer: TokenIssuer, **options: Any) -> FastAPI:
    """A FastAPI app whose dependency sets ``request.state.user`` from an
    ``X-User: name@org`` header while the endpoint runs."""
    app = FastAPI()

    @app.get("/me")
    async def me(
        request: Request,
        user: Annotated[OrgUser | None, Depends(current_user)],
    ) -> dict[str, Any]:
        return {
            "user": None if user is None else user.username,
            **await _token_json(request),
        }

    app.add_middleware(TinybirdMiddleware, issuer=issuer, **options)
    return app


def bare_app(issuer: TokenIssuer, **options: Any) -> TinybirdMiddleware:
    """A bare ASGI app: ``X-User: name@org`` sets ``scope["state"]["user"]``."""

    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        for key, value in scope["headers"]:
            if key == b"x-user":
                name, _, org = value.decode().partition("@")
                scope.setdefault("state", {})["user"] = OrgUser(name, org)
        token = await get_token(scope)
        body = json.dumps({"token": None if token is None else token.value}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return TinybirdMiddleware(app, issuer=issuer, **options)
