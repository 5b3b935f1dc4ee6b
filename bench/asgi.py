"""ASGI in-process: a Starlette app called directly with a prepared scope."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import jwt

from ._fixtures import HEADER_NAME, SIGNING_KEY, User, make_issuer, user
from ._harness import (
    AsyncBatch,
    Table,
    Timings,
    add_timing_rows,
    ainterleave,
    check,
    micros,
    verdict,
)
from ._starlette_apps import ASGIApp, Message, Scope, starlette_app

HIT_TARGET = 1.3
OVERHEAD_SHARE_TARGET = 0.1

_BASE_SCOPE: Scope = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/",
    "raw_path": b"/",
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"bench.local"), (b"accept", b"*/*")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


def request_scope(principal: User) -> Scope:
    """Return a fresh HTTP scope whose ``user`` is ``principal``, as
    ``AuthenticationMiddleware`` leaves it."""
    scope = dict(_BASE_SCOPE)
    scope["user"] = principal
    return scope


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Message) -> None:
    return None


async def response_headers(app: ASGIApp, principal: User) -> dict[str, str]:
    """Call ``app`` once and return its response headers, checking the status."""
    messages: list[Message] = []

    async def send(message: Message) -> None:
        messages.append(message)

    await app(request_scope(principal), _receive, send)
    start = messages[0]
    check(start["status"] == 200, f"the app answered {start['status']}")
    return {name.decode().lower(): value.decode() for name, value in start["headers"]}


def check_token(headers: dict[str, str], principal: User, *, expected: bool) -> None:
    """Check that a response carries ``principal``'s token, or none."""
    value = headers.get(HEADER_NAME.lower())
    if not expected:
        check(value is None, "a variant without Tinybird sent a token")
        return
    check(value is not None, "the response has no token header")
    claims = jwt.decode(value or "", SIGNING_KEY, algorithms=["HS256"])
    check(claims["name"] == principal.username, "the token is for another user")


def _batch(app: ASGIApp, principals: Callable[[int], list[User]]) -> AsyncBatch:
    async def run(n: int) -> int:
        scopes = [request_scope(principal) for principal in principals(n)]
        start = time.perf_counter_ns()
        for scope in scopes:
            await app(scope, _receive, _discard)
        return time.perf_counter_ns() - start

    return run


async def measure(*, rounds: int, inner: int) -> tuple[Timings, dict[str, Any]]:
    issuer = make_issuer()
    apps = {
        "bare": starlette_app("bare"),
        "constant-header": starlette_app("constant-header"),
        "tinybird": starlette_app("tinybird", issuer),
        "hand-rolled": starlette_app("hand-rolled"),
    }
    regular = user(0)
    for name, app in apps.items():
        headers = await response_headers(app, regular)
        check_token(headers, regular, expected=name in ("tinybird", "hand-rolled"))

    fresh = iter(range(1, 10**9))

    def same_user(n: int) -> list[User]:
        return [regular] * n

    def new_users(n: int) -> list[User]:
        return [user(next(fresh)) for _ in range(n)]

    mints_before = issuer.mint_count
    timings = await ainterleave(
        {
            "bare Starlette": _batch(apps["bare"], same_user),
            "pure ASGI middleware, one constant header": _batch(
                apps["constant-header"], same_user
            ),
            "TinybirdMiddleware, cache hit": _batch(apps["tinybird"], same_user),
            "TinybirdMiddleware, cache miss (new user)": _batch(
                apps["tinybird"], new_users
            ),
            "hand-rolled BaseHTTPMiddleware + jwt.encode": _batch(
                apps["hand-rolled"], same_user
            ),
        },
        rounds=rounds,
        inner=inner,
    )
    misses = (rounds + 1) * inner
    check(
        issuer.mint_count - mints_before == misses,
        f"{issuer.mint_count - mints_before} mints for {misses} new users",
    )
    return timings, {"rounds": rounds, "inner": inner}


def overhead_share(timings: Timings, name: str, reference: str) -> float:
    """Return the median per-round overhead of ``name`` over the baseline,
    as a share of ``reference``'s overhead."""
    shares = []
    for index, base in enumerate(timings.per_op[timings.baseline]):
        own = timings.per_op[name][index] - base
        other = timings.per_op[reference][index] - base
        shares.append(own / other)
    shares.sort()
    return shares[len(shares) // 2]


def run(*, quick: bool) -> Table:
    rounds, inner = (5, 100) if quick else (40, 300)
    timings, _ = asyncio.run(measure(rounds=rounds, inner=inner))

    hit = "TinybirdMiddleware, cache hit"
    hand = "hand-rolled BaseHTTPMiddleware + jwt.encode"
    table = Table(
        "ASGI in-process: Starlette 1.x, one GET, scopes built per request",
        ["variant", "median µs/request", "ratio to bare", "ratio IQR", "target"],
    )
    bare = timings.median(timings.baseline)
    add_timing_rows(table, timings, {hit: HIT_TARGET})

    share = overhead_share(timings, hit, hand)
    table.notes.append(
        f"Overhead over bare: cache hit {micros(timings.median(hit) - bare)} µs, "
        f"hand-rolled {micros(timings.median(hand) - bare)} µs; the cache hit's "
        f"overhead is {share:.3f} of the hand-rolled one's "
        f"(target <= {OVERHEAD_SHARE_TARGET}: {verdict(share, OVERHEAD_SHARE_TARGET)})."
    )
    table.notes.append(
        f"{rounds} interleaved rounds of {inner} requests per variant; the app is "
        "called with a prepared scope whose user is set, receive returns an empty "
        "body and send discards the messages. Each variant's response is checked "
        "once (status, and the token decoded for its user)."
    )
    return table
