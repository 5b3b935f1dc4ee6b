"""The Flask apps that the WSGI benchmark compares.

Every variant serves the same view and sets ``g.user`` from the WSGI environ
in a ``before_request`` hook, as a login layer would. The variants differ only
in what runs after the view.
"""

from __future__ import annotations

from flask import Flask, Response, g, request

from tinybird_asgi import TokenIssuer
from tinybird_flask import TinybirdJWT

from ._fixtures import HEADER_NAME, User, hand_rolled_token, make_issuer

# The WSGI environ key under which the benchmark hands each request its user.
USER_KEY = "bench.user"


def _load_user() -> None:
    g.user = request.environ[USER_KEY]


def _home() -> str:
    return "ok"


def _add_hand_rolled_token(response: Response) -> Response:
    principal = g.get("user")
    if isinstance(principal, User):
        response.headers[HEADER_NAME] = hand_rolled_token(principal)
    return response


def flask_app(variant: str, issuer: TokenIssuer | None = None) -> Flask:
    """Return the Flask app of ``variant``: bare, tinybird or hand-rolled."""
    app = Flask(__name__)
    app.before_request(_load_user)
    app.add_url_rule("/", view_func=_home)
    if variant == "tinybird":
        TinybirdJWT(app, make_issuer() if issuer is None else issuer)
    elif variant == "hand-rolled":
        app.after_request(_add_hand_rolled_token)
    elif variant != "bare":
        raise ValueError(f"unknown Flask variant {variant!r}")
    return app
