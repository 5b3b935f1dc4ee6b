"""Flask in-process: the WSGI app called directly with a prepared environ."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.test import EnvironBuilder

from ._fixtures import User, make_issuer, user
from ._flask_apps import USER_KEY, flask_app
from ._harness import SyncBatch, Table, add_timing_rows, check, interleave, micros
from .asgi import check_token

HIT_TARGET = 1.10

_BASE_ENVIRON: dict[str, Any] = EnvironBuilder(
    path="/", headers=[("Host", "bench.local"), ("Accept", "*/*")]
).get_environ()


def request_environ(principal: User) -> dict[str, Any]:
    """Return a fresh WSGI environ for ``GET /`` whose user is ``principal``."""
    environ = dict(_BASE_ENVIRON)
    environ[USER_KEY] = principal
    return environ


def _ignore_write(data: bytes) -> None:
    return None


def _call(app: Flask, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    # Call the WSGI app as a server does: start_response, read and close the body.
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        started.append((status, headers))
        return _ignore_write

    body: Iterable[bytes] = app(environ, start_response)
    try:
        for _ in body:
            pass
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return started[0]


def _batch(app: Flask, principals: Callable[[int], list[User]]) -> SyncBatch:
    def run(n: int) -> int:
        environs = [request_environ(principal) for principal in principals(n)]
        start = time.perf_counter_ns()
        for environ in environs:
            _call(app, environ)
        return time.perf_counter_ns() - start

    return run


def run(*, quick: bool) -> Table:
    rounds, inner = (5, 100) if quick else (40, 300)
    issuer = make_issuer()
    apps = {
        "bare": flask_app("bare"),
        "tinybird": flask_app("tinybird", issuer),
        "hand-rolled": flask_app("hand-rolled"),
    }
    regular = user(0)
    for name, app in apps.items():
        status, headers = _call(app, request_environ(regular))
        check(status.startswith("200"), f"the Flask {name} app answered {status}")
        lowered = {key.lower(): value for key, value in headers}
        check_token(lowered, regular, expected=name != "bare")

    fresh = iter(range(1, 10**9))

    def same_user(n: int) -> list[User]:
        return [regular] * n

    def new_users(n: int) -> list[User]:
        return [user(next(fresh)) for _ in range(n)]

    hit = "TinybirdJWT, cache hit"
    hand = "hand-rolled after_request + jwt.encode"
    timings = interleave(
        {
            "bare Flask": _batch(apps["bare"], same_user),
            hit: _batch(apps["tinybird"], same_user),
            "TinybirdJWT, cache miss (new user)": _batch(apps["tinybird"], new_users),
            hand: _batch(apps["hand-rolled"], same_user),
        },
        rounds=rounds,
        inner=inner,
    )
    misses = (rounds + 1) * inner
    check(
        issuer.mint_count == misses + 1,
        f"{issuer.mint_count} mints for {misses + 1} users",
    )

    table = Table(
        "Flask in-process: Flask 3.x, one GET, scopes built per request",
        ["variant", "median µs/request", "ratio to bare", "ratio IQR", "target"],
    )
    add_timing_rows(table, timings, {hit: HIT_TARGET})
    bare = timings.median(timings.baseline)
    table.notes.append(
        f"Overhead over bare: cache hit {micros(timings.median(hit) - bare)} µs, "
        f"hand-rolled {micros(timings.median(hand) - bare)} µs."
    )
    table.notes.append(
        f"{rounds} interleaved rounds of {inner} requests per variant; the WSGI app "
        "is called with a prepared environ, its body read and closed. Each "
        "variant's response is checked once (status, and the token decoded for "
        "its user)."
    )
    return table
