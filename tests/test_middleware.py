"""TinybirdMiddleware at the ASGI message level, around bare ASGI apps."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from tests.asgi_support import (
    API_URL,
    OrgUser,
    call,
    decode,
    header_values,
    http_scope,
    make_issuer,
    org_scopes,
)
from tests.conftest import FakeClock
from tinybird_asgi import (
    ConfigurationError,
    DatasourceRead,
    PipeRead,
    Scope,
    TinybirdMiddleware,
    TinybirdToken,
    TokenIssuer,
    get_token,
)
from tinybird_asgi._asgi_types import ASGIScope, Message, Receive, Send

ALICE = OrgUser("alice", "acme")
Headers = Sequence[tuple[bytes, bytes]]


class App:
    """A bare ASGI app that sets ``scope["state"]["user"]`` while it runs
    (as a FastAPI dependency does) and answers with fixed headers."""

    def __init__(
        self,
        *,
        user: object = None,
        headers: Headers = ((b"content-type", b"text/plain"),),
        body: bytes = b"hello",
    ) -> None:
        self.user = user
        self.headers = headers
        self.body = body
        self.calls = 0
        self.tokens: list[TinybirdToken | None] = []

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        self.calls += 1
        if self.user is not None:
            scope.setdefault("state", {})["user"] = self.user
        self.tokens.append(await get_token(scope))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": list(self.headers),
            }
        )
        await send({"type": "http.response.body", "body": self.body})


def cookie_header(name: str, value: str) -> tuple[bytes, bytes]:
    return (b"cookie", f"other=1; {name}={value}".encode())


async def start_of(
    middleware: TinybirdMiddleware, scope: ASGIScope | None = None
) -> Message:
    messages = await call(middleware, scope or http_scope())
    return messages[0]


@pytest.fixture
def issuer(clock: FakeClock) -> TokenIssuer:
    return make_issuer(clock)


# Construction


def test_options_unknown_keyword_rejected(issuer: TokenIssuer) -> None:
    with pytest.raises(TypeError, match="cookie_nam") as info:
        TinybirdMiddleware(App(), issuer=issuer, cookie_nam="x")  # type: ignore[call-arg]

    message = str(info.value)
    for option in ("principal", "state_attribute", "skip_if", "cookie_name"):
        assert option in message


def test_options_invalid_delivery_names_option(issuer: TokenIssuer) -> None:
    with pytest.raises(ConfigurationError) as info:
        TinybirdMiddleware(App(), issuer=issuer, delivery="body")  # type: ignore[arg-type]
    assert info.value.option == "delivery"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("issuer", "p.not-an-issuer"),
        ("principal", "user"),
        ("state_attribute", "request.user"),
        ("skip_if", True),
    ],
)
def test_options_invalid_adapter_option(
    issuer: TokenIssuer, option: str, value: object
) -> None:
    options: dict[str, Any] = {"issuer": issuer, option: value}
    with pytest.raises(ConfigurationError) as info:
        TinybirdMiddleware(App(), **options)
    assert info.value.option == option


def test_options_token_path_under_exclude_rejected(issuer: TokenIssuer) -> None:
    with pytest.raises(ConfigurationError) as info:
        TinybirdMiddleware(
            App(),
            issuer=issuer,
            token_path="/tinybird/token",
            exclude_paths=["/tinybird"],
        )
    assert info.value.option == "token_path"


def test_repr_hides_signing_key(issuer: TokenIssuer) -> None:
    text = repr(TinybirdMiddleware(App(), issuer=issuer))
    assert "TinybirdMiddleware" in text
    assert "test-signing-key" not in text


# Principal


async def test_principal_from_state_set_during_request(issuer: TokenIssuer) -> None:
    start = await start_of(TinybirdMiddleware(App(user=ALICE), issuer=issuer))

    [value] = header_values(start, "x-tinybird-token")
    claims = decode(value)
    assert claims["name"] == "alice"
    assert claims["scopes"] == [
        {"type": "PIPES:READ", "resource": "events", "fixed_params": {"org_id": "acme"}}
    ]


async def test_principal_state_shared_with_scope_copies(
    issuer: TokenIssuer,
) -> None:
    # Routers and middleware may hand the endpoint a copy of the scope; the
    # state dict must still be the one the middleware reads.
    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        child = {**scope, "path_params": {}}
        child.setdefault("state", {})["user"] = ALICE
        await send({"type": "http.response.start", "status": 200, "headers": []})

    scope = http_scope()
    assert "state" not in scope

    [start] = await call(TinybirdMiddleware(app, issuer=issuer), scope)

    assert scope["state"] == {"user": ALICE}
    assert header_values(start, "x-tinybird-token")


async def test_principal_scope_user_wins_when_authenticated(
    issuer: TokenIssuer,
) -> None:
    scope = http_scope(user=OrgUser("bob", "globex"))

    start = await start_of(TinybirdMiddleware(App(user=ALICE), issuer=issuer), scope)

    [value] = header_values(start, "x-tinybird-token")
    assert decode(value)["name"] == "bob"


async def test_principal_unauthenticated_scope_user_falls_back(
    issuer: TokenIssuer,
) -> None:
    scope = http_scope(user=OrgUser("nobody", "none", is_authenticated=False))

    start = await start_of(TinybirdMiddleware(App(user=ALICE), issuer=issuer), scope)

    [value] = header_values(start, "x-tinybird-token")
    assert decode(value)["name"] == "alice"


async def test_principal_custom_state_attribute(issuer: TokenIssuer) -> None:
    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        scope["state"]["account"] = ALICE
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = TinybirdMiddleware(app, issuer=issuer, state_attribute="account")
    start = await start_of(middleware)

    [value] = header_values(start, "x-tinybird-token")
    assert decode(value)["name"] == "alice"


async def test_principal_callable_sync(issuer: TokenIssuer) -> None:
    seen: list[ASGIScope] = []

    def principal(scope: ASGIScope) -> OrgUser:
        seen.append(scope)
        return OrgUser("carol", "initech")

    scope = http_scope()
    middleware = TinybirdMiddleware(App(user=ALICE), issuer=issuer, principal=principal)
    start = await start_of(middleware, scope)

    [value] = header_values(start, "x-tinybird-token")
    assert decode(value)["name"] == "carol"
    assert seen[0] is scope


async def test_principal_callable_async(issuer: TokenIssuer) -> None:
    async def principal(scope: ASGIScope) -> OrgUser:
        return OrgUser("dave", "hooli")

    middleware = TinybirdMiddleware(App(), issuer=issuer, principal=principal)
    start = await start_of(middleware)

    [value] = header_values(start, "x-tinybird-token")
    assert decode(value)["name"] == "dave"


@pytest.mark.parametrize(
    "user", [None, OrgUser("ghost", "none", is_authenticated=False)]
)
async def test_anonymous_response_passes_unchanged(
    issuer: TokenIssuer, user: object
) -> None:
    sent: list[Message] = []
    original: Message = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"cache-control", b"public, max-age=60")],
    }

    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        scope["state"]["user"] = user
        await send(original)

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    await TinybirdMiddleware(app, issuer=issuer, delivery="both")(
        http_scope(), receive, send
    )

    assert sent[0] is original
    assert original["headers"] == [(b"cache-control", b"public, max-age=60")]
    assert issuer.mint_count == 0


async def test_async_policy_awaited(clock: FakeClock) -> None:
    async def scopes(user: OrgUser) -> list[Scope]:
        return [DatasourceRead("events", filter=f"org_id = '{user.org}'")]

    issuer = make_issuer(clock, scopes=scopes)
    start = await start_of(TinybirdMiddleware(App(user=ALICE), issuer=issuer))

    [value] = header_values(start, "x-tinybird-token")
    assert decode(value)["scopes"] == [
        {"type": "DATASOURCES:READ", "resource": "events", "filter": "org_id = 'acme'"}
    ]


async def test_org_switch_new_token_next_response(issuer: TokenIssuer) -> None:
    user = OrgUser("alice", "acme")
    middleware = TinybirdMiddleware(App(user=user), issuer=issuer)

    [first] = header_values(await start_of(middleware), "x-tinybird-token")
    user.org = "globex"
    [second] = header_values(await start_of(middleware), "x-tinybird-token")

    assert first != second
    assert decode(first)["scopes"][0]["fixed_params"] == {"org_id": "acme"}
    assert decode(second)["scopes"][0]["fixed_params"] == {"org_id": "globex"}


async def test_same_user_same_token_from_cache(issuer: TokenIssuer) -> None:
    middleware = TinybirdMiddleware(App(user=ALICE), issuer=issuer)

    [first] = header_values(await start_of(middleware), "x-tinybird-token")
    [second] = header_values(await start_of(middleware), "x-tinybird-token")

    assert first == second
    assert issuer.mint_count == 1


async def test_users_get_distinct_tokens(issuer: TokenIssuer) -> None:
    alice = TinybirdMiddleware(App(user=ALICE), issuer=issuer)
    bob = TinybirdMiddleware(App(user=OrgUser("bob", "acme")), issuer=issuer)

    [alice_token] = header_values(await start_of(alice), "x-tinybird-token")
    [bob_token] = header_values(await start_of(bob), "x-tinybird-token")

    assert decode(alice_token)["name"] == "alice"
    assert decode(bob_token)["name"] == "bob"


# Header delivery


async def test_header_carries_token_and_expiry(
    issuer: TokenIssuer, clock: FakeClock
) -> None:
    start = await start_of(TinybirdMiddleware(App(user=ALICE), issuer=issuer))

    [value] = header_values(start, "x-tinybird-token")
    [expires] = header_values(start, "x-tinybird-token-expires")
    claims = decode(value)
    assert int(expires) == claims["exp"]
    assert clock.now < claims["exp"] <= clock.now + issuer.ttl
    assert header_values(start, "set-cookie") == []


async def test_header_expose_headers_merged_once(issuer: TokenIssuer) -> None:
    app = App(
        user=ALICE,
        headers=[
            (b"access-control-expose-headers", b"X-Request-Id, x-tinybird-token"),
            (b"access-control-expose-headers", b"ETag"),
        ],
    )
    start = await start_of(TinybirdMiddleware(app, issuer=issuer))

    assert header_values(start, "access-control-expose-headers") == [
        "X-Request-Id, x-tinybird-token, ETag, X-Tinybird-Token-Expires"
    ]


async def test_header_custom_names(issuer: TokenIssuer) -> None:
    middleware = TinybirdMiddleware(
        App(user=ALICE),
        issuer=issuer,
        header_name="X-Analytics-Token",
        expires_header_name="X-Analytics-Expires",
    )
    start = await start_of(middleware)

    [value] = header_values(start, "x-analytics-token")
    assert decode(value)["name"] == "alice"
    assert header_values(start, "x-analytics-expires")
    assert header_values(start, "x-tinybird-token") == []
    assert header_values(start, "access-control-expose-headers") == [
        "X-Analytics-Token, X-Analytics-Expires"
    ]


async def test_header_set_by_app_replaced(issuer: TokenIssuer) -> None:
    app = App(user=ALICE, headers=[(b"x-tinybird-token", b"stale")])
    start = await start_of(TinybirdMiddleware(app, issuer=issuer))

    [value] = header_values(start, "x-tinybird-token")
    assert value != "stale"
    assert decode(value)["name"] == "alice"


async def test_headers_other_lines_kept_in_order(issuer: TokenIssuer) -> None:
    app = App(
        user=ALICE,
        headers=[
            (b"content-type", b"text/plain"),
            (b"set-cookie", b"a=1"),
            (b"x-custom", b"one"),
            (b"set-cookie", b"b=2"),
        ],
    )
    start = await start_of(TinybirdMiddleware(app, issuer=issuer))

    kept = [
        line for line in start["headers"] if line[0] in (b"set-cookie", b"x-custom")
    ]
    assert kept == [
        (b"set-cookie", b"a=1"),
        (b"x-custom", b"one"),
        (b"set-cookie", b"b=2"),
    ]
    assert start["headers"][0] == (b"content-type", b"text/plain")


# Shared caches


@pytest.mark.parametrize(
    ("cache_control", "expected"),
    [
        ([], "private"),
        (["public, max-age=60, s-maxage=600"], "private, max-age=60"),
        (["no-cache", "must-revalidate"], "private, no-cache, must-revalidate"),
        (['private="Set-Cookie", no-store'], "private, no-store"),
    ],
)
async def test_cache_control_made_private(
    issuer: TokenIssuer, cache_control: list[str], expected: str
) -> None:
    app = App(
        user=ALICE,
        headers=[(b"cache-control", value.encode()) for value in cache_control],
    )
    start = await start_of(TinybirdMiddleware(app, issuer=issuer))

    assert header_values(start, "cache-control") == [expected]


@pytest.mark.parametrize(
    ("vary", "expected"),
    [
        ([], ["Cookie"]),
        (["Accept-Encoding"], ["Accept-Encoding, Cookie"]),
        (["accept-encoding, cookie", "Origin"], ["accept-encoding, cookie, Origin"]),
        (["*"], ["*"]),
    ],
)
async def test_vary_cookie_added_once(
    issuer: TokenIssuer, vary: list[str], expected: list[str]
) -> None:
    app = App(user=ALICE, headers=[(b"vary", value.encode()) for value in vary])
    start = await start_of(TinybirdMiddleware(app, issuer=issuer))

    assert header_values(start, "vary") == expected


async def test_protect_cache_off_leaves_caching(issuer: TokenIssuer) -> None:
    app = App(user=ALICE, headers=[(b"cache-control", b"public, max-age=60")])
    middleware = TinybirdMiddleware(app, issuer=issuer, protect_cache=False)
    start = await start_of(middleware)

    assert header_values(start, "cache-control") == ["public, max-age=60"]
    assert header_values(start, "vary") == []
    assert header_values(start, "x-tinybird-token")


async def test_anonymous_cache_control_untouched(issuer: TokenIssuer) -> None:
    app = App(headers=[(b"cache-control", b"public, max-age=60")])
    start = await start_of(TinybirdMiddleware(app, issuer=issuer))

    assert header_values(start, "cache-control") == ["public, max-age=60"]
    assert header_values(start, "vary") == []


# Cookie delivery


async def test_cookie_line_beside_app_cookie(
    issuer: TokenIssuer, clock: FakeClock
) -> None:
    app = App(user=ALICE, headers=[(b"set-cookie", b"session=abc; Path=/; HttpOnly")])
    start = await start_of(TinybirdMiddleware(app, issuer=issuer, delivery="cookie"))

    session, token_cookie = header_values(start, "set-cookie")
    assert session == "session=abc; Path=/; HttpOnly"
    value = token_cookie.split(";")[0].removeprefix("tinybird_token=")
    claims = decode(value)
    attributes = token_cookie.split("; ")[1:]
    assert attributes == [
        f"Max-Age={int(claims['exp'] - clock.now)}",
        "Path=/",
        "Secure",
        "SameSite=Lax",
    ]
    assert header_values(start, "x-tinybird-token") == []


async def test_cookie_max_age_follows_remaining_life(
    issuer: TokenIssuer, clock: FakeClock
) -> None:
    middleware = TinybirdMiddleware(App(user=ALICE), issuer=issuer, delivery="cookie")
    await start_of(middleware)
    clock.advance(1000)

    [line] = header_values(await start_of(middleware), "set-cookie")
    value = line.split(";")[0].removeprefix("tinybird_token=")
    assert issuer.mint_count == 1
    assert f"Max-Age={int(decode(value)['exp'] - clock.now)}" in line.split("; ")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"cookie_name": "tb"}, "tb="),
        ({"cookie_path": "/app"}, "Path=/app"),
        ({"cookie_domain": "example.com"}, "Domain=example.com"),
        ({"cookie_httponly": True}, "HttpOnly"),
        ({"cookie_samesite": "strict"}, "SameSite=Strict"),
        ({"cookie_samesite": "none"}, "SameSite=None"),
    ],
)
async def test_cookie_attribute_options(
    issuer: TokenIssuer, options: dict[str, Any], expected: str
) -> None:
    middleware = TinybirdMiddleware(
        App(user=ALICE), issuer=issuer, delivery="cookie", **options
    )
    [line] = header_values(await start_of(middleware), "set-cookie")

    assert expected in line


async def test_cookie_insecure_option(issuer: TokenIssuer) -> None:
    middleware = TinybirdMiddleware(
        App(user=ALICE), issuer=issuer, delivery="cookie", cookie_secure=False
    )
    [line] = header_values(await start_of(middleware), "set-cookie")

    assert "Secure" not in line.split("; ")


async def test_cookie_not_resent_when_current(issuer: TokenIssuer) -> None:
    middleware = TinybirdMiddleware(App(user=ALICE), issuer=issuer, delivery="both")
    [header] = header_values(await start_of(middleware), "x-tinybird-token")

    scope = http_scope(headers=[cookie_header("tinybird_token", header)])
    start = await start_of(middleware, scope)

    assert header_values(start, "set-cookie") == []
    assert header_values(start, "x-tinybird-token") == [header]
    assert header_values(start, "cache-control") == ["private"]


async def test_cookie_resent_when_stale(issuer: TokenIssuer) -> None:
    middleware = TinybirdMiddleware(App(user=ALICE), issuer=issuer, delivery="cookie")

    scope = http_scope(headers=[cookie_header("tinybird_token", "old.jwt.value")])
    [line] = header_values(await start_of(middleware, scope), "set-cookie")

    value = line.split(";")[0].removeprefix("tinybird_token=")
    assert decode(value)["name"] == "alice"


async def test_cookie_deleted_on_logout(issuer: TokenIssuer) -> None:
    middleware = TinybirdMiddleware(App(), issuer=issuer, delivery="cookie")

    scope = http_scope(headers=[cookie_header("tinybird_token", "old.jwt.value")])
    start = await start_of(middleware, scope)

    assert header_values(start, "set-cookie") == [
        "tinybird_token=; Max-Age=0; Path=/; Secure; SameSite=Lax"
    ]
    assert issuer.mint_count == 0


async def test_cookie_absent_anonymous_untouched(issuer: TokenIssuer) -> None:
    middleware = TinybirdMiddleware(App(), issuer=issuer, delivery="cookie")
    start = await start_of(middleware)

    assert header_values(start, "set-cookie") == []


async def test_cookie_oversize_not_sent_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def many_scopes(user: OrgUser) -> list[Scope]:
        return [PipeRead(f"pipe_{i:03d}", {"org_id": user.org}) for i in range(80)]

    issuer = make_issuer(clock, scopes=many_scopes)
    middleware = TinybirdMiddleware(App(user=ALICE), issuer=issuer, delivery="both")
    with caplog.at_level(logging.ERROR, logger="tinybird_asgi"):
        start = await start_of(middleware)

    [value] = header_values(start, "x-tinybird-token")
    assert len(value) > 4096
    assert decode(value)["name"] == "alice"
    assert header_values(start, "set-cookie") == []
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "bytes" in record.getMessage()
    assert value not in caplog.text


async def test_cookie_oversize_error_not_repeated(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def many_scopes(user: OrgUser) -> list[Scope]:
        return [PipeRead(f"pipe_{i:03d}", {"org_id": user.org}) for i in range(80)]

    issuer = make_issuer(clock, scopes=many_scopes)
    middleware = TinybirdMiddleware(App(user=ALICE), issuer=issuer, delivery="cookie")
    with caplog.at_level(logging.ERROR, logger="tinybird_asgi"):
        starts = [await start_of(middleware) for _ in range(3)]

    for start in starts:
        assert header_values(start, "set-cookie") == []
    assert len(caplog.records) == 1


# Token endpoint


async def test_endpoint_get_returns_token(issuer: TokenIssuer) -> None:
    app = App()
    middleware = TinybirdMiddleware(app, issuer=issuer, token_path="/tinybird/token")
    start, body = await call(middleware, http_scope("/tinybird/token", user=ALICE))

    payload = json.loads(body["body"])
    assert start["status"] == 200
    assert set(payload) == {"token", "expires_at", "api_url"}
    assert decode(payload["token"])["exp"] == payload["expires_at"]
    assert payload["api_url"] == API_URL
    assert header_values(start, "content-type") == ["application/json"]
    assert header_values(start, "cache-control") == ["private, no-store"]
    assert header_values(start, "vary") == ["Cookie"]
    assert header_values(start, "x-tinybird-token") == [payload["token"]]
    assert app.calls == 0


async def test_endpoint_head_has_no_body(issuer: TokenIssuer) -> None:
    middleware = TinybirdMiddleware(App(), issuer=issuer, token_path="/tinybird/token")
    start, body = await call(
        middleware, http_scope("/tinybird/token", method="HEAD", user=ALICE)
    )

    assert start["status"] == 200
    assert body["body"] == b""
    assert int(header_values(start, "content-length")[0]) > 0
    assert header_values(start, "cache-control") == ["private, no-store"]


async def test_endpoint_sets_cookie(issuer: TokenIssuer) -> None:
    middleware = TinybirdMiddleware(
        App(), issuer=issuer, token_path="/tinybird/token", delivery="cookie"
    )
    start, body = await call(middleware, http_scope("/tinybird/token", user=ALICE))

    [line] = header_values(start, "set-cookie")
    assert line.startswith(f"tinybird_token={json.loads(body['body'])['token']};")


async def test_endpoint_anonymous_401(issuer: TokenIssuer) -> None:
    middleware = TinybirdMiddleware(
        App(), issuer=issuer, token_path="/tinybird/token", delivery="cookie"
    )
    scope = http_scope(
        "/tinybird/token", headers=[cookie_header("tinybird_token", "old.jwt.value")]
    )
    start, body = await call(middleware, scope)

    assert start["status"] == 401
    assert "error" in json.loads(body["body"])
    # The cookie deletion makes the reply private, like a token reply.
    assert header_values(start, "cache-control") == ["private, no-store"]
    assert header_values(start, "vary") == ["Cookie"]
    assert header_values(start, "set-cookie") == [
        "tinybird_token=; Max-Age=0; Path=/; Secure; SameSite=Lax"
    ]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
async def test_endpoint_other_methods_405(issuer: TokenIssuer, method: str) -> None:
    middleware = TinybirdMiddleware(App(), issuer=issuer, token_path="/tinybird/token")
    start, body = await call(
        middleware, http_scope("/tinybird/token", method=method, user=ALICE)
    )

    assert start["status"] == 405
    assert header_values(start, "allow") == ["GET, HEAD"]
    assert "error" in json.loads(body["body"])
    assert header_values(start, "x-tinybird-token") == []
    assert issuer.mint_count == 0


async def test_endpoint_policy_error_500_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(user: OrgUser) -> list[Scope]:
        raise LookupError("org table unavailable")

    issuer = make_issuer(clock, scopes=broken)
    middleware = TinybirdMiddleware(App(), issuer=issuer, token_path="/tinybird/token")
    with caplog.at_level(logging.ERROR, logger="tinybird_asgi"):
        start, body = await call(middleware, http_scope("/tinybird/token", user=ALICE))

    assert start["status"] == 500
    assert "error" in json.loads(body["body"])
    assert header_values(start, "x-tinybird-token") == []
    assert "'alice'" in caplog.records[0].getMessage()


async def test_endpoint_other_paths_reach_app(issuer: TokenIssuer) -> None:
    app = App(user=ALICE)
    middleware = TinybirdMiddleware(app, issuer=issuer, token_path="/tinybird/token")
    start = await start_of(middleware, http_scope("/tinybird/token/more"))

    assert app.calls == 1
    assert header_values(start, "x-tinybird-token")


async def test_endpoint_preflight_reaches_app(issuer: TokenIssuer) -> None:
    app = App()
    middleware = TinybirdMiddleware(app, issuer=issuer, token_path="/tinybird/token")
    scope = http_scope(
        "/tinybird/token",
        method="OPTIONS",
        headers=[(b"access-control-request-method", b"GET")],
    )
    start = await start_of(middleware, scope)

    assert app.calls == 1
    assert header_values(start, "x-tinybird-token") == []


# Requests that get nothing


async def test_preflight_gets_nothing(issuer: TokenIssuer) -> None:
    app = App(user=ALICE)
    scope = http_scope(
        method="OPTIONS",
        headers=[
            (b"origin", b"https://app.example"),
            (b"access-control-request-method", b"GET"),
        ],
    )
    start = await start_of(TinybirdMiddleware(app, issuer=issuer), scope)

    assert header_values(start, "x-tinybird-token") == []
    assert header_values(start, "vary") == []
    assert app.tokens == [None]


async def test_options_without_cors_gets_token(issuer: TokenIssuer) -> None:
    scope = http_scope(method="OPTIONS")
    start = await start_of(TinybirdMiddleware(App(user=ALICE), issuer=issuer), scope)

    assert header_values(start, "x-tinybird-token")


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("/health", True),
        ("/health/live", True),
        ("/static/app.js", True),
        ("/healthy", False),
        ("/", False),
    ],
)
async def test_exclude_paths_prefix_segments(
    issuer: TokenIssuer, path: str, excluded: bool
) -> None:
    app = App(user=ALICE, headers=[(b"cache-control", b"public")])
    middleware = TinybirdMiddleware(
        app, issuer=issuer, exclude_paths=["/health", "/static/"]
    )
    start = await start_of(middleware, http_scope(path))

    assert bool(header_values(start, "x-tinybird-token")) is not excluded
    assert (header_values(start, "cache-control") == ["public"]) is excluded


async def test_skip_if_opts_out(issuer: TokenIssuer) -> None:
    app = App(user=ALICE)
    middleware = TinybirdMiddleware(
        app, issuer=issuer, skip_if=lambda scope: scope["path"].startswith("/embed")
    )

    skipped = await start_of(middleware, http_scope("/embed/chart"))
    served = await start_of(middleware, http_scope("/dashboard"))

    assert header_values(skipped, "x-tinybird-token") == []
    assert header_values(served, "x-tinybird-token")
    assert app.tokens[0] is None
    assert app.tokens[1] is not None


async def test_skip_if_error_logged_no_token(
    issuer: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    def skip_if(scope: ASGIScope) -> bool:
        raise KeyError("tenant")

    middleware = TinybirdMiddleware(App(user=ALICE), issuer=issuer, skip_if=skip_if)
    with caplog.at_level(logging.ERROR, logger="tinybird_asgi"):
        start = await start_of(middleware)

    assert header_values(start, "x-tinybird-token") == []
    assert "skip_if" in caplog.records[0].getMessage()


# Faithful pass-through


async def test_start_without_headers_key(issuer: TokenIssuer) -> None:
    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        scope["state"]["user"] = ALICE
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    start, body = await call(TinybirdMiddleware(app, issuer=issuer), http_scope())

    assert start["status"] == 204
    assert header_values(start, "x-tinybird-token")
    assert body == {"type": "http.response.body"}


async def test_headers_as_tuple_of_lists(issuer: TokenIssuer) -> None:
    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        scope["state"]["user"] = ALICE
        headers = ([b"content-type", b"text/plain"], [b"x-custom", b"1"])
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    [start] = await call(TinybirdMiddleware(app, issuer=issuer), http_scope())

    assert header_values(start, "content-type") == ["text/plain"]
    assert header_values(start, "x-custom") == ["1"]
    assert header_values(start, "x-tinybird-token")


async def test_reused_start_message_not_leaked(issuer: TokenIssuer) -> None:
    shared_headers = [(b"content-type", b"text/plain")]
    shared_start = {
        "type": "http.response.start",
        "status": 200,
        "headers": shared_headers,
    }

    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/me":
            scope["state"]["user"] = ALICE
        await send(shared_start)

    middleware = TinybirdMiddleware(app, issuer=issuer)
    [signed_in] = await call(middleware, http_scope("/me"))
    [anonymous] = await call(middleware, http_scope("/public"))

    assert header_values(signed_in, "x-tinybird-token")
    assert header_values(anonymous, "x-tinybird-token") == []
    assert shared_start["headers"] is shared_headers
    assert shared_headers == [(b"content-type", b"text/plain")]


async def test_start_message_other_keys_kept(issuer: TokenIssuer) -> None:
    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        scope["state"]["user"] = ALICE
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [],
                "trailers": True,
            }
        )

    [start] = await call(TinybirdMiddleware(app, issuer=issuer), http_scope())

    assert start["trailers"] is True
    assert start["status"] == 200


async def test_other_messages_pass_through(issuer: TokenIssuer) -> None:
    later: list[Message] = [
        {"type": "http.response.body", "body": b"part 1", "more_body": True},
        {"type": "http.response.body", "body": b"part 2", "more_body": True},
        {"type": "http.response.trailers", "headers": [(b"x-checksum", b"1")]},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]
    received: list[Message] = []

    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        scope["state"]["user"] = ALICE
        received.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for message in later:
            await send(message)

    request = {"type": "http.request", "body": b"payload", "more_body": False}
    sent = await call(TinybirdMiddleware(app, issuer=issuer), http_scope(), [request])

    assert received == [request]
    assert len(sent) == 5
    for forwarded, original in zip(sent[1:], later, strict=True):
        assert forwarded is original


async def test_pathsend_passes_through(issuer: TokenIssuer) -> None:
    pathsend = {"type": "http.response.pathsend", "path": "/srv/report.csv"}

    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        scope["state"]["user"] = ALICE
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send(pathsend)

    start, forwarded = await call(TinybirdMiddleware(app, issuer=issuer), http_scope())

    assert header_values(start, "x-tinybird-token")
    assert forwarded is pathsend


@pytest.mark.parametrize(
    "scope",
    [
        {"type": "lifespan", "asgi": {"version": "3.0"}},
        {"type": "websocket", "path": "/ws", "headers": [], "user": ALICE},
    ],
)
async def test_non_http_scopes_untouched(
    issuer: TokenIssuer, scope: dict[str, Any]
) -> None:
    before = dict(scope)
    seen: list[tuple[ASGIScope, Receive, Send]] = []

    async def app(inner: ASGIScope, receive: Receive, send: Send) -> None:
        seen.append((inner, receive, send))
        await send({"type": "probe"})

    async def receive() -> Message:
        return {"type": "probe"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await TinybirdMiddleware(app, issuer=issuer, delivery="both")(scope, receive, send)

    [(inner, inner_receive, inner_send)] = seen
    assert inner is scope
    assert inner_receive is receive
    assert inner_send is send
    assert scope == before
    assert sent == [{"type": "probe"}]


async def test_get_token_websocket_scope_none(issuer: TokenIssuer) -> None:
    assert await get_token({"type": "websocket", "user": ALICE}) is None


class AppFailure(Exception):
    pass


@pytest.mark.parametrize("after_start", [False, True])
async def test_app_exception_propagates(issuer: TokenIssuer, after_start: bool) -> None:
    failure = AppFailure("boom")

    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        scope["state"]["user"] = ALICE
        if after_start:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise failure

    with pytest.raises(AppFailure) as info:
        await call(TinybirdMiddleware(app, issuer=issuer), http_scope())
    assert info.value is failure


async def test_server_send_exception_propagates(issuer: TokenIssuer) -> None:
    failure = OSError("client went away")

    async def send(message: Message) -> None:
        raise failure

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    with pytest.raises(OSError, match="client went away") as info:
        await TinybirdMiddleware(App(user=ALICE), issuer=issuer)(
            http_scope(), receive, send
        )
    assert info.value is failure


async def test_policy_error_response_unchanged_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def scopes(user: OrgUser) -> list[Scope]:
        if user.org == "broken":
            raise LookupError("no such org")
        return org_scopes(user)

    issuer = make_issuer(clock, scopes=scopes)
    sent: list[Message] = []
    original: Message = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"cache-control", b"public")],
    }

    async def app(scope: ASGIScope, receive: Receive, send: Send) -> None:
        scope["state"]["user"] = OrgUser("mallory", "broken")
        await send(original)
        await send({"type": "http.response.body", "body": b"page"})

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    middleware = TinybirdMiddleware(app, issuer=issuer, delivery="both")
    with caplog.at_level(logging.ERROR, logger="tinybird_asgi"):
        await middleware(http_scope("/reports"), receive, send)

    assert sent[0] is original
    assert original["headers"] == [(b"cache-control", b"public")]
    assert sent[1]["body"] == b"page"
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "'mallory'" in record.getMessage()
    assert "/reports" in record.getMessage()


async def test_principal_error_logged_no_token(
    issuer: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    def principal(scope: ASGIScope) -> object:
        raise RuntimeError("session store down")

    middleware = TinybirdMiddleware(App(), issuer=issuer, principal=principal)
    with caplog.at_level(logging.ERROR, logger="tinybird_asgi"):
        start = await start_of(middleware)

    assert header_values(start, "x-tinybird-token") == []
    assert "session store down" in caplog.text


async def test_log_never_contains_token(
    issuer: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = TinybirdMiddleware(App(user=ALICE), issuer=issuer, delivery="both")
    with caplog.at_level(logging.DEBUG, logger="tinybird_asgi"):
        start = await start_of(middleware)

    [value] = header_values(start, "x-tinybird-token")
    assert caplog.records
    assert value not in caplog.text
    assert value.split(".")[2] not in caplog.text


# Accessor


async def test_get_token_matches_response(issuer: TokenIssuer) -> None:
    app = App(user=ALICE)
    start = await start_of(TinybirdMiddleware(app, issuer=issuer))

    [value] = header_values(start, "x-tinybird-token")
    [token] = app.tokens
    assert token is not None
    assert token.value == value
    assert issuer.mint_count == 1


async def test_get_token_anonymous_none(issuer: TokenIssuer) -> None:
    app = App()
    await start_of(TinybirdMiddleware(app, issuer=issuer))

    assert app.tokens == [None]


async def test_get_token_without_middleware_raises() -> None:
    with pytest.raises(RuntimeError, match="TinybirdMiddleware"):
        await get_token(http_scope())


# Paths under root_path


@pytest.mark.parametrize(
    ("path", "root_path", "excluded"),
    [
        ("/app/static/x.css", "/app", True),
        ("/app/page", "/app", False),
        ("/static/x.css", "", True),
        ("/application/static/x.css", "/app", False),
        ("/app/app/static/x.css", "/app", False),
    ],
)
async def test_exclude_paths_relative_to_root_path(
    issuer: TokenIssuer, path: str, root_path: str, excluded: bool
) -> None:
    middleware = TinybirdMiddleware(
        App(user=ALICE), issuer=issuer, exclude_paths=["/static"]
    )
    start = await start_of(middleware, http_scope(path, root_path=root_path))

    assert bool(header_values(start, "x-tinybird-token")) is not excluded


async def test_token_path_relative_to_root_path(issuer: TokenIssuer) -> None:
    app = App()
    middleware = TinybirdMiddleware(app, issuer=issuer, token_path="/tinybird/token")
    scope = http_scope("/app/tinybird/token", root_path="/app", user=ALICE)

    start, body = await call(middleware, scope)

    assert start["status"] == 200
    assert app.calls == 0
    assert decode(json.loads(body["body"])["token"])["name"] == "alice"


async def test_token_path_full_path_not_matched(issuer: TokenIssuer) -> None:
    app = App(user=ALICE)
    middleware = TinybirdMiddleware(
        app, issuer=issuer, token_path="/app/tinybird/token"
    )

    await start_of(middleware, http_scope("/app/tinybird/token", root_path="/app"))

    assert app.calls == 1


# skip_if must be synchronous


async def test_skip_if_async_function_rejected(issuer: TokenIssuer) -> None:
    async def skip_if(scope: ASGIScope) -> bool:
        return False

    with pytest.raises(ConfigurationError, match="skip_if") as caught:
        TinybirdMiddleware(App(), issuer=issuer, skip_if=skip_if)  # type: ignore[arg-type]

    assert caught.value.option == "skip_if"


async def test_skip_if_async_callable_rejected(issuer: TokenIssuer) -> None:
    class Skip:
        async def __call__(self, scope: ASGIScope) -> bool:
            return False

    with pytest.raises(ConfigurationError, match="skip_if") as caught:
        TinybirdMiddleware(App(), issuer=issuer, skip_if=Skip())  # type: ignore[arg-type]

    assert caught.value.option == "skip_if"


async def test_skip_if_awaitable_result_no_token(
    issuer: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    async def decide(scope: ASGIScope) -> bool:
        return False

    def skip_if(scope: ASGIScope) -> bool:
        result: bool = decide(scope)  # type: ignore[assignment]
        return result

    app = App(user=ALICE)
    middleware = TinybirdMiddleware(app, issuer=issuer, skip_if=skip_if)
    with caplog.at_level(logging.ERROR, logger="tinybird_asgi"):
        start = await start_of(middleware)

    assert header_values(start, "x-tinybird-token") == []
    assert app.tokens == [None]
    [record] = caplog.records
    assert "skip_if returned an awaitable" in record.getMessage()


# Failure logging


async def test_policy_failure_logged_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(user: OrgUser) -> list[Scope]:
        raise LookupError("org table unavailable")

    app = App(user=ALICE)
    middleware = TinybirdMiddleware(app, issuer=make_issuer(clock, scopes=broken))
    with caplog.at_level(logging.ERROR, logger="tinybird_asgi"):
        first = await start_of(middleware)
        second = await start_of(middleware)

    assert app.tokens == [None, None]
    assert header_values(first, "x-tinybird-token") == []
    assert header_values(second, "x-tinybird-token") == []
    assert len(caplog.records) == 2


async def test_policy_failure_message_sentences(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(user: OrgUser) -> list[Scope]:
        raise LookupError("org table unavailable")

    middleware = TinybirdMiddleware(App(), issuer=make_issuer(clock, scopes=broken))
    with caplog.at_level(logging.ERROR, logger="tinybird_asgi"):
        await start_of(middleware, http_scope("/page", user=ALICE))

    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith(
        "Tinybird token not issued for GET '/page' (identity 'alice'), so this "
        "response carries no token. Cause: PolicyError: "
    )
    assert ".;" not in message
