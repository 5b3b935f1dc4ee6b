"""TinybirdJWT with Flask-Login: login delivers, logout deletes the cookie."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flask
import httpx
import jwt
import pytest
from flask_login import (
    LoginManager,
    UserMixin,
    current_user,
    login_user,
    logout_user,
)

from tests.conftest import SIGNING_KEY, WORKSPACE_ID, FakeClock
from tests.servers import serve_wsgi
from tinybird_asgi import PipeRead
from tinybird_flask import TinybirdJWT

COOKIE = "tinybird_token"


class User(UserMixin):  # type: ignore[misc]
    def __init__(self, user_id: str, org: str) -> None:
        self.id = user_id
        self.org = org


class NamedUser(User):
    def __init__(self, user_id: str, username: str, org: str) -> None:
        super().__init__(user_id, org)
        self.username = username


USERS = {
    "alice": User("alice", "acme"),
    "bob": User("bob", "globex"),
    # Two accounts that share a display name, in different organisations.
    "sam-1": NamedUser("sam-1", "sam", "acme"),
    "sam-2": NamedUser("sam-2", "sam", "globex"),
}


def make_app(clock: FakeClock, *, copy_to_g: bool = False) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config.update(
        SECRET_KEY="test-session-secret",
        TINYBIRD_SIGNING_KEY=SIGNING_KEY,
        TINYBIRD_WORKSPACE_ID=WORKSPACE_ID,
        TINYBIRD_DELIVERY="both",
        # The test client talks plain HTTP, and its cookie jar, like a
        # browser, keeps Secure cookies off such requests.
        TINYBIRD_COOKIE_SECURE=False,
    )
    login_manager = LoginManager(app)
    login_manager.user_loader(USERS.get)
    tinybird = TinybirdJWT(app, clock=clock)

    @tinybird.scopes_policy
    def policy(user: User) -> list[PipeRead]:
        return [PipeRead("events", fixed_params={"org_id": user.org})]

    if copy_to_g:

        @app.before_request
        def copy_user() -> None:
            flask.g.user = current_user._get_current_object()

    @app.route("/login/<user_id>")
    def login(user_id: str) -> str:
        login_user(USERS[user_id])
        return "in"

    @app.route("/logout")
    def logout() -> str:
        logout_user()
        return "out"

    @app.route("/page")
    def page() -> str:
        return "page"

    return app


@pytest.fixture
def browser(clock: FakeClock) -> Iterator[httpx.Client]:
    with (
        serve_wsgi(make_app(clock)) as url,
        httpx.Client(base_url=url, timeout=10.0) as client,
    ):
        yield client


def cookie_lines(response: httpx.Response) -> list[str]:
    return [
        line
        for line in response.headers.get_list("set-cookie")
        if line.startswith(COOKIE + "=")
    ]


def decode(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, SIGNING_KEY, algorithms=["HS256"])
    return claims


def test_login_sets_token_cookie(browser: httpx.Client) -> None:
    response = browser.get("/login/alice")

    assert decode(browser.cookies[COOKIE])["name"] == "alice"
    assert decode(response.headers["x-tinybird-token"])["name"] == "alice"


def test_signed_in_page_keeps_cookie(browser: httpx.Client) -> None:
    browser.get("/login/alice")

    response = browser.get("/page")

    assert cookie_lines(response) == []
    assert decode(response.headers["x-tinybird-token"])["name"] == "alice"


def test_session_vary_cookie_once(browser: httpx.Client) -> None:
    browser.get("/login/alice")

    response = browser.get("/page")

    # Flask adds Vary: Cookie for the session after the hook added its own.
    assert response.headers.get_list("vary") == ["Cookie"]
    assert response.headers["cache-control"] == "private"


def test_logout_deletes_cookie(browser: httpx.Client) -> None:
    browser.get("/login/alice")

    response = browser.get("/logout")

    (line,) = cookie_lines(response)
    assert line.startswith(f"{COOKIE}=; Max-Age=0;")
    assert "x-tinybird-token" not in response.headers
    assert COOKIE not in browser.cookies


def test_after_logout_no_token(browser: httpx.Client) -> None:
    browser.get("/login/alice")
    browser.get("/logout")

    response = browser.get("/page")

    assert cookie_lines(response) == []
    assert "x-tinybird-token" not in response.headers


def test_anonymous_visitor_no_token(browser: httpx.Client) -> None:
    response = browser.get("/page")

    assert cookie_lines(response) == []
    assert "x-tinybird-token" not in response.headers


def test_switching_user_replaces_cookie(browser: httpx.Client) -> None:
    browser.get("/login/alice")

    browser.get("/login/bob")

    assert decode(browser.cookies[COOKIE])["name"] == "bob"


def test_logout_wins_over_g_user(clock: FakeClock) -> None:
    app = make_app(clock, copy_to_g=True)

    with (
        serve_wsgi(app) as url,
        httpx.Client(base_url=url, timeout=10.0) as client,
    ):
        client.get("/login/alice")
        response = client.get("/logout")

    assert "x-tinybird-token" not in response.headers
    assert cookie_lines(response)[0].startswith(f"{COOKIE}=;")


def test_g_user_used_when_not_logged_in(clock: FakeClock) -> None:
    app = make_app(clock)

    @app.before_request
    def api_key_user() -> None:
        if flask.request.headers.get("X-Api-Key") == "bob-key":
            flask.g.user = USERS["bob"]

    with serve_wsgi(app) as url:
        response = httpx.get(
            url + "/page", headers={"X-Api-Key": "bob-key"}, timeout=10.0
        )

    assert decode(response.headers["x-tinybird-token"])["name"] == "bob"


def test_identity_is_get_id_not_username(clock: FakeClock) -> None:
    claims: dict[str, dict[str, Any]] = {}
    with serve_wsgi(make_app(clock)) as url:
        for user_id in ("sam-1", "sam-2"):
            with httpx.Client(base_url=url, timeout=10.0) as client:
                client.get(f"/login/{user_id}")
                response = client.get("/page")
            claims[user_id] = decode(response.headers["x-tinybird-token"])

    assert claims["sam-1"]["name"] == "sam-1"
    assert claims["sam-2"]["name"] == "sam-2"
    assert claims["sam-1"]["scopes"][0]["fixed_params"] == {"org_id": "acme"}
    assert claims["sam-2"]["scopes"][0]["fixed_params"] == {"org_id": "globex"}
