"""TinybirdJWT.exempt: views, class-based views and blueprints without a token."""

from __future__ import annotations

import functools
from collections.abc import Callable

import flask
import httpx
import pytest
from flask.views import MethodView

from tests.conftest import FakeClock
from tests.servers import serve_wsgi
from tests.test_flask import HEADER, decode, fetch, make_app, policy_extension
from tinybird_asgi import ConfigurationError


def get_all(app: flask.Flask, *paths: str) -> dict[str, httpx.Response]:
    """GET each of ``paths`` from ``app`` on one real server."""
    with serve_wsgi(app) as url:
        return {path: httpx.get(url + path, timeout=10.0) for path in paths}


def assert_token(response: httpx.Response) -> None:
    assert response.status_code == 200
    assert decode(response.headers[HEADER])["name"] == "alice"


def assert_no_token(response: httpx.Response) -> None:
    assert response.status_code == 200
    assert HEADER not in response.headers


def test_exempt_view_gets_no_token(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    app = make_app(tinybird)

    @app.route("/health")
    @tinybird.exempt
    def health() -> str:
        return "up"

    with serve_wsgi(app) as url:
        exempt = httpx.get(url + "/health", timeout=10.0)
        other = httpx.get(url + "/page", timeout=10.0)

    assert exempt.text == "up"
    assert HEADER not in exempt.headers
    assert HEADER in other.headers


def exempt_wrapper(view: Callable[[], str]) -> Callable[[], str]:
    @functools.wraps(view)
    def wrapper() -> str:
        return view()

    return wrapper


def test_exempt_under_wrapping_decorator(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    app = make_app(tinybird)

    @app.route("/wrapped")
    @exempt_wrapper
    @tinybird.exempt
    def wrapped() -> str:
        return "wrapped"

    assert HEADER not in fetch(app, "/wrapped").headers


def make_view(body: str) -> Callable[[], str]:
    # Every view built here has the qualified name make_view.<locals>.view.
    def view() -> str:
        return body

    return view


def test_exempt_matches_function_not_name(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    app = make_app(tinybird)
    public = make_view("public")
    private = make_view("private")
    app.add_url_rule("/public", view_func=tinybird.exempt(public))
    app.add_url_rule("/private", "private", view_func=private)

    responses = get_all(app, "/public", "/private")

    assert responses["/public"].text == "public"
    assert_no_token(responses["/public"])
    assert responses["/private"].text == "private"
    assert_token(responses["/private"])


def test_exempt_registered_view_function(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    app = make_app(tinybird)

    @app.route("/named")
    def named() -> str:
        return "named"

    tinybird.exempt(app.view_functions["named"])
    responses = get_all(app, "/named", "/page")

    assert_no_token(responses["/named"])
    assert_token(responses["/page"])


@pytest.mark.parametrize("view", ["module.view", 42])
def test_exempt_rejects_other_values(view: object, clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError) as raised:
        policy_extension(clock).exempt(view)  # type: ignore[call-overload]

    assert raised.value.option == "exempt"
    assert "view_functions" in str(raised.value)


# Class-based views


class PublicView(MethodView):
    def get(self) -> str:
        return "public"


class PrivateView(MethodView):
    def get(self) -> str:
        return "private"


def test_exempt_class_view_leaves_others(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    app = make_app(tinybird)
    app.add_url_rule("/public", view_func=tinybird.exempt(PublicView.as_view("pub")))
    app.add_url_rule("/private", view_func=PrivateView.as_view("priv"))

    responses = get_all(app, "/public", "/private")

    assert responses["/public"].text == "public"
    assert_no_token(responses["/public"])
    assert responses["/private"].text == "private"
    assert_token(responses["/private"])


def test_exempt_view_class_every_registration(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    app = make_app(tinybird)
    tinybird.exempt(PublicView)
    app.add_url_rule("/first", view_func=PublicView.as_view("first"))
    app.add_url_rule("/second", view_func=PublicView.as_view("second"))
    app.add_url_rule("/private", view_func=PrivateView.as_view("priv"))

    responses = get_all(app, "/first", "/second", "/private")

    assert_no_token(responses["/first"])
    assert_no_token(responses["/second"])
    assert_token(responses["/private"])


# Blueprints


def test_exempt_blueprint_and_children(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    api = flask.Blueprint("api", __name__, url_prefix="/api")
    child = flask.Blueprint("child", __name__, url_prefix="/child")
    other = flask.Blueprint("other", __name__, url_prefix="/other")

    @api.route("/ping")
    def api_ping() -> str:
        return "api"

    @child.route("/ping")
    def child_ping() -> str:
        return "child"

    @other.route("/ping")
    def other_ping() -> str:
        return "other"

    api.register_blueprint(child)
    tinybird.exempt(api)
    app = make_app(tinybird)
    app.register_blueprint(api)
    app.register_blueprint(other)

    with serve_wsgi(app) as url:
        api_response = httpx.get(url + "/api/ping", timeout=10.0)
        child_response = httpx.get(url + "/api/child/ping", timeout=10.0)
        other_response = httpx.get(url + "/other/ping", timeout=10.0)

    assert child_response.text == "child"
    assert HEADER not in api_response.headers
    assert HEADER not in child_response.headers
    assert HEADER in other_response.headers


def test_exempt_child_blueprint_only(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    parent = flask.Blueprint("parent", __name__, url_prefix="/parent")
    child = flask.Blueprint("child", __name__, url_prefix="/child")

    @parent.route("/ping")
    def parent_ping() -> str:
        return "parent"

    @child.route("/ping")
    def child_ping() -> str:
        return "child"

    parent.register_blueprint(child)
    tinybird.exempt(child)
    app = make_app(tinybird)
    app.register_blueprint(parent)

    responses = get_all(app, "/parent/child/ping", "/parent/ping")

    assert responses["/parent/child/ping"].text == "child"
    assert_no_token(responses["/parent/child/ping"])
    assert responses["/parent/ping"].text == "parent"
    assert_token(responses["/parent/ping"])


def test_exempt_blueprint_every_registration(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    public = flask.Blueprint("public", __name__)
    parent = flask.Blueprint("parent", __name__, url_prefix="/parent")

    @public.route("/ping")
    def ping() -> str:
        return "public"

    tinybird.exempt(public)
    parent.register_blueprint(public, url_prefix="/nested", name="inner")
    app = make_app(tinybird)
    app.register_blueprint(public, url_prefix="/a")
    app.register_blueprint(public, url_prefix="/b", name="public_b")
    app.register_blueprint(parent)

    responses = get_all(app, "/a/ping", "/b/ping", "/parent/nested/ping", "/page")

    for path in ("/a/ping", "/b/ping", "/parent/nested/ping"):
        assert responses[path].text == "public"
        assert_no_token(responses[path])
    assert_token(responses["/page"])


def test_exempt_blueprint_other_with_same_name(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    exempted = flask.Blueprint("shared", __name__, url_prefix="/exempted")
    tinybird.exempt(exempted)
    other = flask.Blueprint("shared", __name__, url_prefix="/other")

    @other.route("/ping")
    def ping() -> str:
        return "other"

    app = make_app(tinybird)
    app.register_blueprint(other)

    assert_token(get_all(app, "/other/ping")["/other/ping"])
