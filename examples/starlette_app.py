"""The Starlette demo: a login, and a page that reads its org's rows from a pipe.

Run it with ``./scripts/demo`` (or ``python examples/starlette_app.py``) and
open http://127.0.0.1:8000. Sessions are signed cookies (Starlette's
``SessionMiddleware``); ``AuthenticationMiddleware`` turns the session into
``request.user``, and ``TinybirdMiddleware`` gives that user a token whose
``fixed_params`` pin ``org_id`` to the user's organisation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import sys
from collections.abc import Generator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    UnauthenticatedUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_common import (
    CLIENT_JS,
    DEMO_JS,
    INDEX_HTML,
    TOKEN_PATH,
    USERS,
    DemoSettings,
    DemoUser,
    authenticate,
    build_issuer,
    build_local_tinybird,
    form_post_rejection,
    load_settings,
    log_start,
    page_config,
    parse_args,
)

from tinybird_asgi import TinybirdMiddleware, TokenIssuer
from tinybird_asgi.testing import LocalTinybird

__all__ = ["SessionUser", "create_app", "main"]

logger = logging.getLogger("tinybird_demo")


class SessionUser(BaseUser):
    """The signed-in demo user, as Starlette's ``request.user``."""

    def __init__(self, user: DemoUser) -> None:
        self.user = user

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.user.name

    @property
    def identity(self) -> str:
        return self.user.email

    @property
    def org(self) -> str:
        return self.user.org


class SessionBackend(AuthenticationBackend):
    """Read the signed-in user's email from the session cookie."""

    async def authenticate(
        self, conn: HTTPConnection
    ) -> tuple[AuthCredentials, BaseUser] | None:
        user = USERS.get(conn.session.get("email", ""))
        if user is None:
            return None
        return AuthCredentials(["authenticated"]), SessionUser(user)


def create_app(
    settings: DemoSettings,
    issuer: TokenIssuer,
    *,
    session_secret: str | None = None,
    https: bool = False,
) -> Starlette:
    """Return the demo app; ``https`` marks its cookies ``Secure``."""

    def me_payload(user: DemoUser) -> dict[str, object]:
        return {"user": user.as_json(), "tinybird": page_config(settings)}

    async def index(request: Request) -> Response:
        return FileResponse(INDEX_HTML, headers={"Cache-Control": "no-cache"})

    async def demo_js(request: Request) -> Response:
        return FileResponse(DEMO_JS, media_type="text/javascript")

    async def client_js(request: Request) -> Response:
        return FileResponse(CLIENT_JS, media_type="text/javascript")

    async def me(request: Request) -> Response:
        if not isinstance(request.user, SessionUser):
            return JSONResponse({"error": "Not signed in."}, status_code=401)
        return JSONResponse(me_payload(request.user.user))

    def rejection(request: Request) -> Response | None:
        own_origin = f"{request.url.scheme}://{request.url.netloc}"
        found = form_post_rejection(
            request.headers.get("content-type"),
            request.headers.get("origin"),
            own_origin,
        )
        if found is None:
            return None
        status, message = found
        return JSONResponse({"error": message}, status_code=status)

    async def login(request: Request) -> Response:
        rejected = rejection(request)
        if rejected is not None:
            return rejected
        try:
            body = await request.json()
        except ValueError:
            body = {}
        credentials = body if isinstance(body, dict) else {}
        user = authenticate(credentials.get("email"), credentials.get("password"))
        if user is None:
            return JSONResponse({"error": "Wrong email or password."}, status_code=401)
        request.session.clear()
        request.session["email"] = user.email
        # This request started signed out; the middleware reads the user when
        # the response starts, so the login response already carries a token.
        request.scope["user"] = SessionUser(user)
        logger.info("Signed in %s (org %s)", user.email, user.org)
        return JSONResponse(me_payload(user))

    async def logout(request: Request) -> Response:
        rejected = rejection(request)
        if rejected is not None:
            return rejected
        request.session.clear()
        # Without this the middleware would still see the user of this request
        # and deliver a fresh token on the logout response.
        request.scope["user"] = UnauthenticatedUser()
        return JSONResponse({"signed_out": True})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/static/demo.js", demo_js),
            Route("/static/tinybird-client.js", client_js),
            Route("/api/me", me),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
        ],
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=session_secret or secrets.token_urlsafe(32),
                session_cookie="demo_session",
                same_site="lax",
                https_only=https,
            ),
            Middleware(AuthenticationMiddleware, backend=SessionBackend()),
            Middleware(
                TinybirdMiddleware,
                issuer=issuer,
                delivery="both",
                token_path=TOKEN_PATH,
                cookie_secure=https,
                exclude_paths=("/static",),
            ),
        ],
    )


class _SidecarServer(uvicorn.Server):
    # The app server owns Ctrl-C; this one stops when the app server does.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def _serve(
    app: Starlette, local: LocalTinybird | None, args: argparse.Namespace
) -> None:
    server = uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=args.port, log_level="info")
    )
    if local is None:
        await server.serve()
        return
    sidecar = _SidecarServer(
        uvicorn.Config(
            local, host="127.0.0.1", port=args.tinybird_port, log_level="warning"
        )
    )
    sidecar_task = asyncio.create_task(sidecar.serve())
    try:
        await server.serve()
    finally:
        sidecar.should_exit = True
        await sidecar_task


def main(argv: list[str] | None = None) -> None:
    """Start the demo app, and the local Tinybird endpoint when no
    Tinybird settings are given."""
    args = parse_args(__doc__.splitlines()[0], argv)

    settings = load_settings(f"http://127.0.0.1:{args.tinybird_port}")
    issuer = build_issuer(settings)
    local = build_local_tinybird(settings) if settings.local else None
    app = create_app(settings, issuer)
    log_start(args)
    # uvicorn re-raises the SIGINT it handled, after shutting down.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(app, local, args))


if __name__ == "__main__":
    main()
