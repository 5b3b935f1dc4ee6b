"""TinybirdMiddleware in Starlette, FastAPI and bare ASGI apps, driven by httpx
both in-process (``httpx.ASGITransport``) and through uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from tests.asgi_apps import (
    ORIGIN,
    STREAM_CHUNKS,
    bare_app,
    fastapi_app,
    starlette_app,
)
from tests.asgi_support import API_URL, OrgUser, decode, make_issuer
from tests.conftest import FakeClock
from tests.servers import serve_asgi
from tinybird_asgi import TinybirdMiddleware, TokenIssuer
from tinybird_asgi._asgi_types import ASGIApp, ASGIScope, Receive, Send

Connect = Callable[[ASGIApp], httpx.AsyncClient]


@pytest.fixture(params=["in-process", "uvicorn"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """Open an httpx client on an app, in-process or through uvicorn."""
    async with contextlib.AsyncExitStack() as stack:

        def open_client(app: ASGIApp) -> httpx.AsyncClient:
            if request.param == "uvicorn":
                base_url = stack.enter_context(serve_asgi(app))
                client = httpx.AsyncClient(base_url=base_url)
            else:
                client = httpx.AsyncClient(
                    base_url="http://testserver", transport=httpx.ASGITransport(app)
                )
            stack.push_async_callback(client.aclose)
            return client

        yield open_client


@pytest.fixture
def issuer(clock: FakeClock) -> TokenIssuer:
    return make_issuer(clock)


def cookie_value(response: httpx.Response, name: str) -> str | None:
    for line in response.headers.get_list("set-cookie"):
        key, _, rest = line.partition("=")
        if key == name:
            return rest.split(";")[0]
    return None


# Starlette with SessionMiddleware and AuthenticationMiddleware


async def test_starlette_login_sets_both_cookies(
    connect: Connect, issuer: TokenIssuer
) -> None:
    app = starlette_app(issuer, delivery="both", cookie_secure=False)
    client = connect(app)

    response = await client.get("/login", params={"user": "alice", "org": "acme"})

    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 2
    session = cookie_value(response, "session")
    assert session
    token = cookie_value(response, "tinybird_token")
    assert token is not None
    assert response.headers["x-tinybird-token"] == token
    claims = decode(token)
    assert claims["name"] == "alice"
    assert claims["scopes"][0]["fixed_params"] == {"org_id": "acme"}


async def test_starlette_cookie_not_resent_then_deleted(
    connect: Connect, issuer: TokenIssuer
) -> None:
    client = connect(starlette_app(issuer, delivery="cookie", cookie_secure=False))
    login = await client.get("/login", params={"user": "alice"})
    token = cookie_value(login, "tinybird_token")

    page = await client.get("/page")
    logout = await client.get("/logout")
    after = await client.get("/page")

    assert page.json() == {"token": token}
    assert cookie_value(page, "tinybird_token") is None
    assert page.headers["cache-control"] == "private"
    deleted = [
        line
        for line in logout.headers.get_list("set-cookie")
        if line.startswith("tinybird_token=")
    ]
    assert deleted == ["tinybird_token=; Max-Age=0; Path=/; SameSite=Lax"]
    assert cookie_value(logout, "session") == "null"
    assert after.json() == {"token": None}
    assert "tinybird_token" not in client.cookies


async def test_starlette_org_switch_new_token(
    connect: Connect, issuer: TokenIssuer
) -> None:
    client = connect(starlette_app(issuer, delivery="both", cookie_secure=False))
    first = await client.get("/login", params={"user": "alice", "org": "acme"})
    old = first.headers["x-tinybird-token"]

    switch = await client.get("/login", params={"user": "alice", "org": "globex"})
    page = await client.get("/page")

    new = switch.headers["x-tinybird-token"]
    assert old != new
    assert decode(old)["scopes"][0]["fixed_params"] == {"org_id": "acme"}
    assert decode(new)["scopes"][0]["fixed_params"] == {"org_id": "globex"}
    assert cookie_value(switch, "tinybird_token") == new
    assert page.headers["x-tinybird-token"] == new
    assert page.json() == {"token": new}


async def test_starlette_anonymous_gets_nothing(
    connect: Connect, issuer: TokenIssuer
) -> None:
    client = connect(starlette_app(issuer, delivery="both"))

    response = await client.get("/page")

    assert response.json() == {"token": None}
    assert "x-tinybird-token" not in response.headers
    assert "set-cookie" not in response.headers
    assert "cache-control" not in response.headers


async def test_starlette_outermost_still_sees_user(
    connect: Connect, issuer: TokenIssuer
) -> None:
    app = starlette_app(
        issuer,
        tinybird_outermost=True,
        delivery="both",
        cookie_secure=False,
        token_path="/tinybird/token",
    )
    client = connect(app)
    await client.get("/login", params={"user": "alice"})

    page = await client.get("/page")
    endpoint = await client.get("/tinybird/token")

    assert decode(page.headers["x-tinybird-token"])["name"] == "alice"
    assert page.json() == {"token": page.headers["x-tinybird-token"]}
    assert endpoint.status_code == 401


async def test_concurrent_users_never_share_tokens(
    connect: Connect, issuer: TokenIssuer
) -> None:
    client = connect(fastapi_app(issuer))
    users = [f"user{i}@org{i % 3}" for i in range(8)]

    responses = await asyncio.gather(
        *(client.get("/me", headers={"X-User": user}) for user in users * 3)
    )

    for user, response in zip(users * 3, responses, strict=True):
        name, _, org = user.partition("@")
        claims = decode(response.headers["x-tinybird-token"])
        assert claims["name"] == name
        assert claims["scopes"][0]["fixed_params"] == {"org_id": org}
        assert response.json()["token"] == response.headers["x-tinybird-token"]
    assert issuer.mint_count == len(users)


async def test_starlette_stream_unchanged(
    connect: Connect, issuer: TokenIssuer
) -> None:
    client = connect(starlette_app(issuer))
    await client.get("/login", params={"user": "alice"})

    response = await client.get("/stream")

    assert response.content == b"".join(STREAM_CHUNKS)
    assert response.headers["content-type"].startswith("text/plain")
    assert decode(response.headers["x-tinybird-token"])["name"] == "alice"


async def test_starlette_file_unchanged(
    connect: Connect, issuer: TokenIssuer, tmp_path: Path
) -> None:
    path = tmp_path / "report.csv"
    content = b"org,events\n" + b"acme,1\n" * 20_000
    path.write_bytes(content)
    client = connect(starlette_app(issuer, file_path=path))
    await client.get("/login", params={"user": "alice"})

    response = await client.get("/file")

    assert response.content == content
    assert response.headers["content-length"] == str(len(content))
    assert response.headers["etag"]
    assert decode(response.headers["x-tinybird-token"])["name"] == "alice"
    assert response.headers["cache-control"] == "private"


async def test_starlette_token_endpoint(connect: Connect, issuer: TokenIssuer) -> None:
    client = connect(starlette_app(issuer, token_path="/tinybird/token"))

    anonymous = await client.get("/tinybird/token")
    await client.get("/login", params={"user": "alice"})
    signed_in = await client.get("/tinybird/token")
    head = await client.head("/tinybird/token")
    post = await client.post("/tinybird/token")

    assert anonymous.status_code == 401
    assert signed_in.status_code == 200
    payload = signed_in.json()
    assert decode(payload["token"])["name"] == "alice"
    assert payload["api_url"] == API_URL
    assert signed_in.headers["cache-control"] == "private, no-store"
    assert head.status_code == 200
    assert head.content == b""
    assert post.status_code == 405


async def test_cors_outside_exposes_listed_headers(
    connect: Connect, issuer: TokenIssuer
) -> None:
    client = connect(starlette_app(issuer, cors="outside"))
    await client.get("/login", params={"user": "alice"})

    response = await client.get("/page", headers={"Origin": ORIGIN})

    exposed = response.headers["access-control-expose-headers"].lower()
    assert "x-tinybird-token" in exposed
    assert "x-tinybird-token-expires" in exposed
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["x-tinybird-token"] == response.json()["token"]


async def test_cors_inside_merges_expose_headers(
    connect: Connect, issuer: TokenIssuer
) -> None:
    client = connect(starlette_app(issuer, cors="inside"))
    await client.get("/login", params={"user": "alice"})

    response = await client.get("/page", headers={"Origin": ORIGIN})

    assert response.headers.get_list("access-control-expose-headers") == [
        "X-Request-Id, X-Tinybird-Token, X-Tinybird-Token-Expires"
    ]


@pytest.mark.parametrize("cors", ["outside", "inside"])
async def test_cors_preflight_gets_no_token(
    connect: Connect, issuer: TokenIssuer, cors: str
) -> None:
    client = connect(starlette_app(issuer, cors=cors, delivery="both"))
    await client.get("/login", params={"user": "alice"})

    response = await client.options(
        "/page",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Authorization",
        },
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "x-tinybird-token" not in response.headers
    assert "tinybird_token" not in response.headers.get("set-cookie", "")


# FastAPI with a dependency that sets request.state.user


async def test_fastapi_dependency_user_gets_token(
    connect: Connect, issuer: TokenIssuer
) -> None:
    client = connect(fastapi_app(issuer))

    response = await client.get("/me", headers={"X-User": "alice@acme"})

    assert response.status_code == 200
    token = response.headers["x-tinybird-token"]
    assert response.json() == {"user": "alice", "token": token}
    claims = decode(token)
    assert claims["name"] == "alice"
    assert claims["scopes"][0]["fixed_params"] == {"org_id": "acme"}
    assert response.headers["x-tinybird-token-expires"] == str(claims["exp"])
    assert response.headers["vary"] == "Cookie"


async def test_fastapi_anonymous_gets_nothing(
    connect: Connect, issuer: TokenIssuer
) -> None:
    client = connect(fastapi_app(issuer))

    response = await client.get("/me")

    assert response.json() == {"user": None, "token": None}
    assert "x-tinybird-token" not in response.headers


async def test_fastapi_org_switch_new_token(
    connect: Connect, issuer: TokenIssuer
) -> None:
    client = connect(fastapi_app(issuer))

    acme = await client.get("/me", headers={"X-User": "alice@acme"})
    globex = await client.get("/me", headers={"X-User": "alice@globex"})

    assert acme.headers["x-tinybird-token"] != globex.headers["x-tinybird-token"]
    assert decode(globex.headers["x-tinybird-token"])["scopes"][0]["fixed_params"] == {
        "org_id": "globex"
    }


async def test_fastapi_excluded_path(connect: Connect, issuer: TokenIssuer) -> None:
    client = connect(fastapi_app(issuer, exclude_paths=["/me"]))

    response = await client.get("/me", headers={"X-User": "alice@acme"})

    assert response.json() == {"user": "alice", "token": None}
    assert "x-tinybird-token" not in response.headers


# A bare ASGI app


async def test_bare_app_token_and_accessor(
    connect: Connect, issuer: TokenIssuer
) -> None:
    client = connect(bare_app(issuer, delivery="both"))

    response = await client.get("/", headers={"X-User": "bob@initech"})

    token = response.headers["x-tinybird-token"]
    assert response.json() == {"token": token}
    assert cookie_value(response, "tinybird_token") == token
    assert decode(token)["name"] == "bob"
    assert response.headers["content-length"] == str(len(response.content))


async def test_bare_app_skip_if(connect: Connect, issuer: TokenIssuer) -> None:
    app = bare_app(issuer, skip_if=lambda scope: scope["path"] == "/embed")
    client = connect(app)

    skipped = await client.get("/embed", headers={"X-User": "bob@initech"})
    served = await client.get("/other", headers={"X-User": "bob@initech"})

    assert "x-tinybird-token" not in skipped.headers
    assert skipped.json() == {"token": None}
    assert "x-tinybird-token" in served.headers


# Streaming through a real server


def test_stream_first_chunk_arrives_before_second(issuer: TokenIssuer) -> None:
    gate = threading.Event()
    app = starlette_app(issuer, stream_gate=gate)

    with serve_asgi(app) as base_url, httpx.Client(base_url=base_url) as client:
        client.get("/login", params={"user": "alice"})
        with client.stream("GET", "/stream") as response:
            token = response.headers["x-tinybird-token"]
            chunks = response.iter_raw()
            received = b""
            while len(received) < len(STREAM_CHUNKS[0]):
                received += next(chunks)
            gate.set()
            received += b"".join(chunks)

    assert received == b"".join(STREAM_CHUNKS)
    assert decode(token)["name"] == "alice"


# Account switch on the sign-in response


async def test_starlette_signin_switch_carries_new_user(
    connect: Connect, issuer: TokenIssuer
) -> None:
    client = connect(starlette_app(issuer, delivery="both", cookie_secure=False))

    alice = await client.get("/login", params={"user": "alice", "org": "acme"})
    bob = await client.get("/login", params={"user": "bob", "org": "globex"})
    page = await client.get("/page")

    assert decode(alice.headers["x-tinybird-token"])["name"] == "alice"
    claims = decode(bob.headers["x-tinybird-token"])
    assert claims["name"] == "bob"
    assert claims["scopes"][0]["fixed_params"] == {"org_id": "globex"}
    assert cookie_value(bob, "tinybird_token") == bob.headers["x-tinybird-token"]
    assert page.json() == {"token": bob.headers["x-tinybird-token"]}


# Starlette Mount: paths relative to root_path


def mounted_app(issuer: TokenIssuer) -> Starlette:
    """Mount at ``/app`` a Starlette app whose user comes from ``X-User``."""

    def principal(scope: ASGIScope) -> OrgUser | None:
        for key, value in scope["headers"]:
            if key == b"x-user":
                return OrgUser(value.decode(), "acme")
        return None

    async def page(request: Request) -> Response:
        return JSONResponse({"path": request.url.path})

    inner = Starlette(
        routes=[Route("/{rest:path}", page)],
        middleware=[
            Middleware(
                TinybirdMiddleware,
                issuer=issuer,
                principal=principal,
                exclude_paths=["/static"],
                token_path="/tinybird/token",
            )
        ],
    )
    return Starlette(routes=[Mount("/app", app=inner)])


async def test_mount_exclude_paths_relative(
    connect: Connect, issuer: TokenIssuer
) -> None:
    client = connect(mounted_app(issuer))

    static = await client.get("/app/static/site.css", headers={"x-user": "alice"})
    page = await client.get("/app/dashboard", headers={"x-user": "alice"})

    assert static.status_code == 200
    assert "x-tinybird-token" not in static.headers
    assert decode(page.headers["x-tinybird-token"])["name"] == "alice"


async def test_mount_token_path_relative(connect: Connect, issuer: TokenIssuer) -> None:
    client = connect(mounted_app(issuer))

    response = await client.get("/app/tinybird/token", headers={"x-user": "alice"})

    assert response.status_code == 200
    assert response.headers["cache-control"] == "private, no-store"
    assert decode(response.json()["token"])["name"] == "alice"


def test_uvicorn_root_path_relative(issuer: TokenIssuer) -> None:
    def principal(scope: ASGIScope) -> OrgUser:
        return OrgUser("alice", "acme")

    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    middleware = TinybirdMiddleware(
        app,
        issuer=issuer,
        principal=principal,
        exclude_paths=["/static"],
        token_path="/tinybird/token",
    )
    with serve_asgi(middleware, root_path="/app") as url, httpx.Client() as client:
        static = client.get(url + "/static/site.css")
        page = client.get(url + "/dashboard")
        endpoint = client.get(url + "/tinybird/token")

    assert static.text == "/app/static/site.css"
    assert "x-tinybird-token" not in static.headers
    assert decode(page.headers["x-tinybird-token"])["name"] == "alice"
    assert endpoint.status_code == 200
    assert decode(endpoint.json()["token"])["name"] == "alice"
