"""TinybirdMiddleware under concurrency, slow policies and faults.

In every case the app's response is what it would be without the middleware,
plus the token where one is due, and no response carries another user's
token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.responses import PlainTextResponse, StreamingResponse

from tests.asgi_support import (
    OrgUser,
    call,
    decode,
    header_values,
    http_scope,
    make_issuer,
    serve,
)
from tests.conftest import FakeClock
from tinybird_asgi import PipeRead, Scope, TinybirdMiddleware
from tinybird_asgi._asgi_types import ASGIApp, ASGIScope, Message, Receive, Send

USERS = 2000


def _user_from_headers(scope: ASGIScope) -> OrgUser | None:
    for key, value in scope["headers"]:
        if key == b"x-user":
            name, _, org = value.decode().partition("@")
            return OrgUser(name, org)
    return None


def _app(
    body: bytes = b"ok", extra: list[tuple[bytes, bytes]] | None = None
) -> ASGIApp:
    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        user = _user_from_headers(scope)
        if user is not None:
            scope["state"]["user"] = user
        headers = [(b"content-type", b"text/plain"), *(extra or [])]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def _user_scope(name: str, org: str) -> ASGIScope:
    return http_scope(headers=[(b"x-user", f"{name}@{org}".encode())])


async def _yielding_policy(user: OrgUser) -> list[Scope]:
    # Give every other task a chance to run between principal and signing.
    await asyncio.sleep(0)
    return [PipeRead("events", fixed_params={"org_id": user.org})]


def _check_token(message: Message, name: str, org: str) -> None:
    values = header_values(message, "x-tinybird-token")
    assert len(values) == 1
    claims = decode(values[0])
    assert claims["name"] == name
    assert claims["scopes"][0]["fixed_params"] == {"org_id": org}


async def test_thousands_of_tasks_get_own_tokens(clock: FakeClock) -> None:
    issuer = make_issuer(clock, scopes=_yielding_policy)
    middleware = TinybirdMiddleware(_app(), issuer=issuer)
    users = [(f"user{i}", f"org{i % 97}") for i in range(USERS)]

    async def request(name: str, org: str) -> None:
        messages = await call(middleware, _user_scope(name, org))
        _check_token(messages[0], name, org)

    for window in (1, 2):
        # Each user asks three times at once; one mint per user per window.
        await asyncio.gather(*(request(n, o) for n, o in users for _ in range(3)))
        assert issuer.mint_count == USERS * window
        clock.advance(issuer.ttl)


async def test_concurrent_users_over_http(clock: FakeClock) -> None:
    issuer = make_issuer(clock, scopes=_yielding_policy)
    middleware = TinybirdMiddleware(_app(), issuer=issuer)
    users = [(f"user{i}", f"org{i % 7}") for i in range(200)]
    limits = httpx.Limits(max_connections=32)
    # Generous, because the pool queues requests on a loaded 2-core machine.
    timeout = httpx.Timeout(60)

    with serve(middleware) as base_url:
        async with httpx.AsyncClient(
            base_url=base_url, limits=limits, timeout=timeout
        ) as client:

            async def request(name: str, org: str) -> None:
                response = await client.get("/", headers={"x-user": f"{name}@{org}"})
                assert response.status_code == 200
                claims = decode(response.headers["x-tinybird-token"])
                assert claims["name"] == name
                assert claims["scopes"][0]["fixed_params"] == {"org_id": org}

            await asyncio.gather(*(request(n, o) for n, o in users for _ in range(2)))

    assert issuer.mint_count == len(users)


async def test_slow_async_policy_blocks_no_one(clock: FakeClock) -> None:
    release = asyncio.Event()

    async def policy(user: OrgUser) -> list[Scope]:
        if user.username == "slow":
            await release.wait()
        return [PipeRead("events", fixed_params={"org_id": user.org})]

    issuer = make_issuer(clock, scopes=policy)
    middleware = TinybirdMiddleware(_app(), issuer=issuer)

    slow = asyncio.ensure_future(call(middleware, _user_scope("slow", "s")))
    fast = await call(middleware, _user_scope("fast", "f"))

    _check_token(fast[0], "fast", "f")
    assert not slow.done()
    release.set()
    _check_token((await slow)[0], "slow", "s")


async def test_full_cache_serves_correct_tokens(clock: FakeClock) -> None:
    issuer = make_issuer(clock, max_cached=10)
    middleware = TinybirdMiddleware(_app(), issuer=issuer)

    for round_ in range(3):
        for i in range(50):
            messages = await call(middleware, _user_scope(f"u{i}", f"o{i}"))
            _check_token(messages[0], f"u{i}", f"o{i}")
        assert len(issuer) == 10
        assert issuer.mint_count == 50 * (round_ + 1)


async def test_app_cookie_of_our_name_replaced(clock: FakeClock) -> None:
    forged = (b"set-cookie", b"tinybird_token=forged; Path=/")
    session = (b"set-cookie", b"session=abc; Path=/; HttpOnly")
    issuer = make_issuer(clock)
    middleware = TinybirdMiddleware(
        _app(extra=[forged, session]), issuer=issuer, delivery="both"
    )

    start = (await call(middleware, _user_scope("alice", "acme")))[0]

    cookies = header_values(start, "set-cookie")
    ours = [line for line in cookies if line.startswith("tinybird_token=")]
    assert len(ours) == 1
    assert ours[0].split(";")[0] == "tinybird_token=" + _token_value(start)
    assert "session=abc; Path=/; HttpOnly" in cookies


def _token_value(start: Message) -> str:
    value = header_values(start, "x-tinybird-token")[0]
    decode(value)
    return value


async def test_app_header_of_our_name_replaced(clock: FakeClock) -> None:
    forged = (b"x-tinybird-token", b"forged")
    issuer = make_issuer(clock)
    middleware = TinybirdMiddleware(_app(extra=[forged]), issuer=issuer)

    start = (await call(middleware, _user_scope("alice", "acme")))[0]

    _check_token(start, "alice", "acme")


async def test_app_header_kept_for_anonymous(clock: FakeClock) -> None:
    own = (b"x-tinybird-token", b"set-by-app")
    issuer = make_issuer(clock)
    middleware = TinybirdMiddleware(_app(extra=[own]), issuer=issuer)

    start = (await call(middleware, http_scope()))[0]
    bare = (await call(_app(extra=[own]), http_scope()))[0]

    assert start["headers"] == bare["headers"]
    assert issuer.mint_count == 0


def _streaming_app(closed: threading.Event, chunks: int) -> ASGIApp:
    # Starlette's StreamingResponse watches receive() for http.disconnect and
    # cancels the body iterator, so the iterator's finally block runs.
    async def body() -> AsyncIterator[bytes]:
        try:
            for index in range(chunks):
                yield f"chunk {index}\n".encode() * 100
                await asyncio.sleep(0)
        finally:
            closed.set()

    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        scope["state"]["user"] = OrgUser("alice", "acme")
        if scope["path"] == "/stream":
            await StreamingResponse(body())(scope, receive, send)
        else:
            await PlainTextResponse("ok")(scope, receive, send)

    return app


async def test_client_disconnect_mid_stream(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    closed = threading.Event()
    issuer = make_issuer(clock)
    middleware = TinybirdMiddleware(_streaming_app(closed, 100_000), issuer=issuer)

    with serve(middleware) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            async with client.stream("GET", "/stream") as response:
                claims = decode(response.headers["x-tinybird-token"])
                async for _ in response.aiter_bytes():
                    break
            # The server notices the closed connection and stops the app.
            assert await asyncio.to_thread(closed.wait, 10)
            after = await client.get("/")

    assert claims["name"] == "alice"
    assert after.status_code == 200
    errors = [r for r in caplog.records if r.name.startswith("tinybird_asgi")]
    assert [r for r in errors if r.levelno >= logging.ERROR] == []


def _failing_app(after_start: bool) -> ASGIApp:
    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        scope["state"]["user"] = OrgUser("alice", "acme")
        if after_start:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send(
                {"type": "http.response.body", "body": b"partial", "more_body": True}
            )
        raise RuntimeError("app failed")

    return app


@pytest.mark.parametrize("after_start", [False, True])
async def test_app_raising_same_as_without_middleware(
    clock: FakeClock, after_start: bool
) -> None:
    issuer = make_issuer(clock)
    plain = _failing_app(after_start)
    wrapped = TinybirdMiddleware(_failing_app(after_start), issuer=issuer)

    outcomes = [await _outcome(app) for app in (plain, wrapped)]

    assert outcomes[0] == outcomes[1]


async def _outcome(app: ASGIApp) -> Any:
    # Return what a client receives: the status and body, or the error type.
    with serve(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            try:
                response = await client.get("/")
            except httpx.HTTPError as exc:
                return type(exc)
            return response.status_code, response.content
