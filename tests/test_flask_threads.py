"""TinybirdJWT under a threaded WSGI server: every user gets only their token."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flask
import httpx
import jwt

from tests.behaviour.apps import USER_HEADER, parse_user
from tests.conftest import SIGNING_KEY, WORKSPACE_ID, FakeClock
from tests.servers import serve_wsgi
from tinybird_asgi import PipeRead
from tinybird_flask import TinybirdJWT

CLIENTS = 32
USERS = 64
REQUESTS_PER_CLIENT = 24
TIMEOUT = 30.0


def make_app(clock: FakeClock) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config.update(
        TINYBIRD_SIGNING_KEY=SIGNING_KEY,
        TINYBIRD_WORKSPACE_ID=WORKSPACE_ID,
        TINYBIRD_DELIVERY="both",
        TINYBIRD_TOKEN_PATH="/tinybird/token",
    )
    tinybird = TinybirdJWT(app, clock=clock)

    @tinybird.principal_loader
    def load() -> Any:
        return parse_user(flask.request.headers.get(USER_HEADER))

    @tinybird.scopes_policy
    def policy(user: Any) -> list[PipeRead]:
        return [PipeRead("events", fixed_params={"org_id": user.org})]

    @app.route("/page")
    def page() -> str:
        # The body names the user, so a reply cannot be matched to the wrong
        # request without the test noticing.
        return parse_user(flask.request.headers.get(USER_HEADER)).identity  # type: ignore[union-attr]

    return app


def user_for(client: int, request: int) -> tuple[str, str]:
    index = (client * 7 + request * 5) % USERS
    return f"user{index}", f"org{index % 8}"


def test_threaded_server_no_cross_user_tokens(clock: FakeClock) -> None:
    barrier = threading.Barrier(CLIENTS, timeout=TIMEOUT)
    tokens: dict[str, set[str]] = {}
    lock = threading.Lock()
    errors: list[str] = []

    def run_client(url: str, client: int) -> int:
        checked = 0
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            barrier.wait()
            for request in range(REQUESTS_PER_CLIENT):
                identity, org = user_for(client, request)
                path = "/tinybird/token" if request % 4 == 3 else "/page"
                response = http.get(path, headers={USER_HEADER: f"{identity}:{org}"})
                http.cookies.clear()
                if path == "/page":
                    token = response.headers["x-tinybird-token"]
                    if response.text != identity:
                        errors.append(f"{identity} got the body of {response.text}")
                else:
                    token = response.json()["token"]
                claims = jwt.decode(token, SIGNING_KEY, algorithms=["HS256"])
                if claims["name"] != identity:
                    errors.append(f"{identity} got the token of {claims['name']}")
                if claims["scopes"][0]["fixed_params"] != {"org_id": org}:
                    errors.append(f"{identity} got a token for another org")
                with lock:
                    tokens.setdefault(identity, set()).add(token)
                checked += 1
        return checked

    with serve_wsgi(make_app(clock)) as url, ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(run_client, url, client) for client in range(CLIENTS)]
        checked = sum(future.result(timeout=TIMEOUT * 4) for future in futures)

    assert errors == []
    assert checked == CLIENTS * REQUESTS_PER_CLIENT
    assert len(tokens) == USERS
    # The fake clock never advances, so the cache gives each user one token.
    assert Counter(len(values) for values in tokens.values()) == {1: USERS}
    every_token = [token for values in tokens.values() for token in values]
    assert len(set(every_token)) == USERS
