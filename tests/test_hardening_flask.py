"""TinybirdJWT under a threaded server, key rotation and a failing stream."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flask
import httpx
import jwt

from tests.behaviour.apps import USER_HEADER, parse_user, scopes_policy
from tests.conftest import SIGNING_KEY, WORKSPACE_ID, FakeClock
from tests.servers import serve_wsgi
from tinybird_asgi import TokenIssuer
from tinybird_flask import TinybirdJWT

THREADS = 40
USERS = 200
TIMEOUT = 60.0
NEW_KEY = "p.rotated-signing-key-abcdefghijklmnopqrstuvwxyz0123456789"


def _app(issuer: TokenIssuer) -> flask.Flask:
    app = flask.Flask(__name__)
    tinybird = TinybirdJWT(app, issuer=issuer)

    @tinybird.principal_loader
    def load() -> Any:
        return parse_user(flask.request.headers.get(USER_HEADER))

    @app.route("/page")
    def page() -> str:
        return "ok"

    _add_failing_stream(app)
    return app


def _add_failing_stream(app: flask.Flask) -> None:
    # /stream sends one chunk, then its generator raises.
    @app.route("/stream")
    def stream() -> flask.Response:
        def chunks() -> Iterator[str]:
            yield "first chunk\n"
            raise RuntimeError("stream failed")

        return flask.Response(chunks(), mimetype="text/plain")


def _issuer(clock: FakeClock) -> TokenIssuer:
    return TokenIssuer(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        scopes=scopes_policy,
        clock=clock,
    )


def test_threads_mint_once_per_user_per_window(clock: FakeClock) -> None:
    issuer = _issuer(clock)
    errors: list[str] = []

    def run(url: str, thread: int, barrier: threading.Barrier) -> None:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            barrier.wait()
            # Every user is asked for by several threads at about the same time.
            for step in range(USERS // 4):
                index = (thread + step * THREADS) % USERS
                identity, org = f"user{index}", f"org{index % 9}"
                response = client.get(
                    "/page", headers={USER_HEADER: f"{identity}:{org}"}
                )
                claims = jwt.decode(
                    response.headers["x-tinybird-token"],
                    SIGNING_KEY,
                    algorithms=["HS256"],
                )
                if claims["name"] != identity:
                    errors.append(f"{identity} got the token of {claims['name']}")
                if claims["scopes"][0]["fixed_params"] != {"org_id": org}:
                    errors.append(f"{identity} got a token for another org")

    with serve_wsgi(_app(issuer)) as url:
        for window in (1, 2):
            barrier = threading.Barrier(THREADS, timeout=TIMEOUT)
            with ThreadPoolExecutor(THREADS) as pool:
                futures = [pool.submit(run, url, t, barrier) for t in range(THREADS)]
                for future in futures:
                    future.result(timeout=TIMEOUT * 2)
            assert errors == []
            assert issuer.mint_count == USERS * window
            clock.advance(issuer.ttl)


def test_rotated_key_reaches_next_response(clock: FakeClock) -> None:
    issuer = _issuer(clock)

    with serve_wsgi(_app(issuer)) as url, httpx.Client(base_url=url) as client:
        before = client.get("/page", headers={USER_HEADER: "alice:acme"})
        issuer.rotate_signing_key(NEW_KEY)
        after = client.get("/page", headers={USER_HEADER: "alice:acme"})

    old_token = before.headers["x-tinybird-token"]
    new_token = after.headers["x-tinybird-token"]
    assert new_token != old_token
    assert jwt.decode(new_token, NEW_KEY, algorithms=["HS256"])["name"] == "alice"


def test_stream_failing_same_as_without_extension(clock: FakeClock) -> None:
    outcomes = []
    for app in (_app(_issuer(clock)), _bare_stream_app()):
        with serve_wsgi(app) as url, httpx.Client(base_url=url) as client:
            try:
                response = client.get("/stream", headers={USER_HEADER: "alice:acme"})
            except httpx.HTTPError as exc:
                outcomes.append(type(exc).__name__)
            else:
                outcomes.append(f"{response.status_code} {response.text!r}")

    assert outcomes[0] == outcomes[1]


def _bare_stream_app() -> flask.Flask:
    app = flask.Flask(__name__)
    _add_failing_stream(app)
    return app
