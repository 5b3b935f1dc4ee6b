"""The Flask demo: the same page as the Starlette demo, on Flask and Flask-Login.

Run it with ``./scripts/demo flask`` (or ``python examples/flask_app.py``) and
open http://127.0.0.1:8000. Flask-Login keeps the signed-in user in Flask's
session cookie, and ``TinybirdJWT`` gives that user a token whose
``fixed_params`` pin ``org_id`` to the user's organisation.
"""

from __future__ import annotations

import logging
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request, send_file
from flask_login import LoginManager, current_user, login_user, logout_user
from werkzeug.serving import make_server

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

from tinybird_asgi import TokenIssuer
from tinybird_flask import TinybirdJWT

__all__ = ["create_app", "main"]

logger = logging.getLogger("tinybird_demo")


def create_app(
    settings: DemoSettings,
    issuer: TokenIssuer,
    *,
    session_secret: str | None = None,
    https: bool = False,
) -> Flask:
    """Return the demo app; ``https`` marks its cookies ``Secure``."""
    app = Flask(__name__, static_folder=None)
    app.config.update(
        SECRET_KEY=session_secret or secrets.token_urlsafe(32),
        SESSION_COOKIE_NAME="demo_session",
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=https,
        TINYBIRD_DELIVERY="both",
        TINYBIRD_TOKEN_PATH=TOKEN_PATH,
        TINYBIRD_COOKIE_SECURE=https,
        TINYBIRD_EXCLUDE_PATHS=("/static",),
    )

    login_manager = LoginManager(app)
    login_manager.user_loader(USERS.get)

    TinybirdJWT(app, issuer=issuer)

    def me_payload(user: DemoUser) -> dict[str, Any]:
        return {"user": user.as_json(), "tinybird": page_config(settings)}

    @app.get("/")
    def index() -> Response:
        response = send_file(INDEX_HTML, mimetype="text/html", max_age=0)
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/static/demo.js")
    def demo_js() -> Response:
        return send_file(DEMO_JS, mimetype="text/javascript", max_age=0)

    @app.get("/static/tinybird-client.js")
    def client_js() -> Response:
        return send_file(CLIENT_JS, mimetype="text/javascript", max_age=0)

    @app.get("/api/me")
    def me() -> tuple[Response, int] | Response:
        if not current_user.is_authenticated:
            return jsonify(error="Not signed in."), 401
        return jsonify(me_payload(current_user))

    @app.before_request
    def reject_cross_site_posts() -> tuple[Response, int] | None:
        if request.method != "POST" or request.path not in ("/login", "/logout"):
            return None
        found = form_post_rejection(
            request.headers.get("Content-Type"),
            request.headers.get("Origin"),
            request.host_url,
        )
        if found is None:
            return None
        status, message = found
        return jsonify(error=message), status

    @app.post("/login")
    def login() -> tuple[Response, int] | Response:
        body = request.get_json(silent=True)
        credentials = body if isinstance(body, dict) else {}
        user = authenticate(credentials.get("email"), credentials.get("password"))
        if user is None:
            return jsonify(error="Wrong email or password."), 401
        # TinybirdJWT reads current_user after the view, so the login
        # response already carries the new user's token.
        login_user(user)
        logger.info("Signed in %s (org %s)", user.email, user.org)
        return jsonify(me_payload(user))

    @app.post("/logout")
    def logout() -> Response:
        # After logout_user() the response gets no token and the token cookie
        # is deleted.
        logout_user()
        return jsonify(signed_out=True)

    return app


def main(argv: list[str] | None = None) -> None:
    """Start the demo app, and the local Tinybird endpoint when no
    Tinybird settings are given."""
    args = parse_args(__doc__.splitlines()[0], argv)

    settings = load_settings(f"http://127.0.0.1:{args.tinybird_port}")
    issuer = build_issuer(settings)
    app = create_app(settings, issuer)

    sidecar = None
    if settings.local:
        local = build_local_tinybird(settings)
        sidecar = make_server(
            "127.0.0.1", args.tinybird_port, local.wsgi_app, threaded=True
        )
        threading.Thread(target=sidecar.serve_forever, daemon=True).start()

    server = make_server(args.host, args.port, app, threaded=True)
    log_start(args)

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever() to return, so it cannot run on
        # the thread that is serving.
        threading.Thread(target=server.shutdown).start()

    # Explicit handlers, because a shell starts background jobs with SIGINT
    # ignored.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if sidecar is not None:
            sidecar.shutdown()
            sidecar.server_close()


if __name__ == "__main__":
    main()
