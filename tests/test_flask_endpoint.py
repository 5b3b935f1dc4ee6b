"""TinybirdJWT's token endpoint: CORS preflight, path rules and a mount prefix."""

from __future__ import annotations

import flask
import httpx
import pytest
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from tests.conftest import FakeClock
from tests.servers import serve_wsgi
from tests.test_flask import HEADER, decode, make_app, policy_extension
from tinybird_asgi import ConfigurationError

TOKEN_PATH = "/tinybird/token"
ORIGIN = "https://app.test"


def add_cors_hook(app: flask.Flask) -> None:
    """Add CORS headers for ``ORIGIN`` in an ``after_request`` hook, like
    Flask-CORS."""

    @app.after_request
    def cors(response: flask.Response) -> flask.Response:
        if flask.request.headers.get("Origin") == ORIGIN:
            response.headers["Access-Control-Allow-Origin"] = ORIGIN
            if "Access-Control-Request-Method" in flask.request.headers:
                response.headers["Access-Control-Allow-Methods"] = "GET"
        return response


def test_preflight_allows_only_served_methods(clock: FakeClock) -> None:
    app = make_app(policy_extension(clock), TINYBIRD_TOKEN_PATH=TOKEN_PATH)
    add_cors_hook(app)
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}

    with serve_wsgi(app) as url:
        response = httpx.options(url + TOKEN_PATH, headers=preflight, timeout=10.0)
        post = httpx.post(url + TOKEN_PATH, timeout=10.0)

    assert response.status_code == 200
    assert response.headers["allow"] == "GET, HEAD, OPTIONS"
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-allow-methods"] == "GET"
    assert HEADER not in response.headers
    assert response.content == b""
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"


def test_cors_get_gets_token(clock: FakeClock) -> None:
    app = make_app(policy_extension(clock), TINYBIRD_TOKEN_PATH=TOKEN_PATH)
    add_cors_hook(app)

    with serve_wsgi(app) as url:
        response = httpx.get(url + TOKEN_PATH, headers={"Origin": ORIGIN}, timeout=10.0)

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert decode(response.json()["token"])["name"] == "alice"
    assert response.headers[HEADER] == response.json()["token"]


@pytest.mark.parametrize(
    "path", ["/t/<path:rest>", "/tinybird/<kind>", "/tinybird/token>", "/<int:n>"]
)
def test_token_path_variable_rejected(path: str, clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError) as raised:
        make_app(policy_extension(clock), TINYBIRD_TOKEN_PATH=path)

    assert raised.value.option == "TINYBIRD_TOKEN_PATH"
    assert "TINYBIRD_TOKEN_PATH" in str(raised.value)
    assert "variable" in str(raised.value)


# An app mounted under a prefix (SCRIPT_NAME)


def mounted(app: flask.Flask) -> DispatcherMiddleware:
    """Mount ``app`` at ``/app``; every other path is a 404."""
    return DispatcherMiddleware(NotFound(), {"/app": app})


def test_mounted_token_path_relative_to_mount(clock: FakeClock) -> None:
    app = make_app(policy_extension(clock), TINYBIRD_TOKEN_PATH=TOKEN_PATH)

    with serve_wsgi(mounted(app)) as url:
        endpoint = httpx.get(url + "/app" + TOKEN_PATH, timeout=10.0)
        unmounted = httpx.get(url + TOKEN_PATH, timeout=10.0)

    assert endpoint.status_code == 200
    assert decode(endpoint.json()["token"])["name"] == "alice"
    assert endpoint.headers["cache-control"] == "private, no-store"
    assert unmounted.status_code == 404
    assert HEADER not in unmounted.headers


def test_mounted_exclusions_relative_to_mount(clock: FakeClock) -> None:
    app = make_app(policy_extension(clock), TINYBIRD_EXCLUDE_PATHS=["/public"])

    @app.route("/public/page")
    def public_page() -> str:
        return "public"

    @app.route("/app/public/page")
    def doubled_page() -> str:
        return "doubled"

    with serve_wsgi(mounted(app)) as url:
        page = httpx.get(url + "/app/page", timeout=10.0)
        public = httpx.get(url + "/app/public/page", timeout=10.0)
        doubled = httpx.get(url + "/app/app/public/page", timeout=10.0)

    assert decode(page.headers[HEADER])["name"] == "alice"
    assert public.text == "public"
    assert HEADER not in public.headers
    assert doubled.text == "doubled"
    assert decode(doubled.headers[HEADER])["name"] == "alice"
