"""DeliveryConfig, the framework-neutral delivery rules, without an adapter."""

from __future__ import annotations

import pytest

from tests.asgi_support import OrgUser, decode, make_issuer
from tests.conftest import FakeClock
from tinybird_asgi import (
    ConfigurationError,
    DeliveryConfig,
    PipeRead,
    Scope,
    TinybirdToken,
)

CDN_HEADERS = [
    ("CDN-Cache-Control", "max-age=600"),
    ("Surrogate-Control", "max-age=600"),
    ("Cloudflare-CDN-Cache-Control", "max-age=600"),
    ("Vercel-CDN-Cache-Control", "max-age=600"),
    ("Edge-Control", "cache-maxage=600s"),
    ("X-Accel-Expires", "600"),
]


def wide_scopes(user: OrgUser) -> list[Scope]:
    return [PipeRead(f"pipe_{i:03d}", {"org_id": user.org}) for i in range(80)]


def small_token(clock: FakeClock) -> TinybirdToken:
    return make_issuer(clock).token_for(OrgUser("alice", "acme"))


def wide_token(clock: FakeClock) -> TinybirdToken:
    return make_issuer(clock, scopes=wide_scopes).token_for(OrgUser("alice", "big"))


def edited(
    config: DeliveryConfig,
    token: TinybirdToken,
    headers: list[tuple[str, str]],
    *,
    now: float,
    request_cookie: str | None = None,
) -> list[tuple[str, str]]:
    current: dict[str, list[str]] = {}
    for name, value in headers:
        if name.lower() in config.watched_headers:
            current.setdefault(name.lower(), []).append(value)
    edit = config.edit_for_token(
        token, now=now, request_cookie=request_cookie, current=current
    )
    return edit.apply(headers)


def names(headers: list[tuple[str, str]]) -> set[str]:
    return {name.lower() for name, _ in headers}


# CDN cache headers


@pytest.mark.parametrize("delivery", ["header", "cookie", "both"])
def test_cdn_cache_headers_removed(clock: FakeClock, delivery: str) -> None:
    config = DeliveryConfig(delivery=delivery)  # type: ignore[arg-type]
    headers = [("Content-Type", "text/plain"), *CDN_HEADERS]

    result = edited(config, small_token(clock), headers, now=clock())

    assert names(result).isdisjoint(
        {
            "cdn-cache-control",
            "surrogate-control",
            "cloudflare-cdn-cache-control",
            "vercel-cdn-cache-control",
            "edge-control",
            "x-accel-expires",
        }
    )
    assert ("Cache-Control", "private") in result
    assert ("Content-Type", "text/plain") in result


def test_cdn_headers_kept_unprotected(
    clock: FakeClock,
) -> None:
    config = DeliveryConfig(protect_cache=False)

    result = edited(config, small_token(clock), list(CDN_HEADERS), now=clock())

    for line in CDN_HEADERS:
        assert line in result


# Oversized cookies


@pytest.mark.parametrize("delivery", ["cookie", "both"])
def test_oversize_cookie_deletes_older(clock: FakeClock, delivery: str) -> None:
    config = DeliveryConfig(delivery=delivery, cookie_domain="example.com")  # type: ignore[arg-type]
    older = small_token(clock).value
    headers = [("Set-Cookie", f"tinybird_token={older}; Path=/")]

    result = edited(
        config, wide_token(clock), headers, now=clock(), request_cookie=older
    )

    cookies = [value for name, value in result if name.lower() == "set-cookie"]
    assert cookies == [
        "tinybird_token=; Max-Age=0; Path=/; Domain=example.com; Secure; SameSite=Lax"
    ]


def test_oversize_cookie_without_older(clock: FakeClock) -> None:
    config = DeliveryConfig(delivery="both")
    token = wide_token(clock)

    result = edited(config, token, [], now=clock())

    assert names(result).isdisjoint({"set-cookie"})
    [value] = [value for name, value in result if name == "X-Tinybird-Token"]
    assert decode(value)["name"] == "alice"


# Path options


@pytest.mark.parametrize(
    "path",
    [
        "/tinybird/token?x=1",
        "/tinybird/token#top",
        "/tinybird/<token>",
        "/tinybird/ token",
        "/tinybird/token\t",
        "/tinybird/token\n",
        "/tinybird/\x00token",
        "/tinybird/\x85token",
        "/tinybird/\u2003token",
    ],
)
def test_token_path_unmatchable_rejected(path: str) -> None:
    with pytest.raises(ConfigurationError, match="token_path") as caught:
        DeliveryConfig(token_path=path)

    assert caught.value.option == "token_path"


@pytest.mark.parametrize(
    "path", ["/static?v=1", "/static#x", "/<static>", "/my static", "/static\r"]
)
def test_exclude_paths_unmatchable_rejected(path: str) -> None:
    with pytest.raises(ConfigurationError, match="exclude_paths") as caught:
        DeliveryConfig(exclude_paths=["/public", path])

    assert caught.value.option == "exclude_paths"


@pytest.mark.parametrize(
    "path", ["/tinybird/token", "/api/v1/token.json", "/caf\u00e9/token", "/a;b"]
)
def test_token_path_plain_accepted(path: str) -> None:
    assert DeliveryConfig(token_path=path).is_token_path(path)


@pytest.mark.parametrize("spelling", ["Lax", "LAX", "lax"])
def test_samesite_any_case_accepted(spelling: str) -> None:
    config = DeliveryConfig(cookie_samesite=spelling)  # type: ignore[arg-type]

    assert config.cookie_samesite == "lax"


def test_edit_and_endpoint_reprs_hide_token(clock: FakeClock) -> None:
    config = DeliveryConfig(delivery="both")
    token = small_token(clock)

    edit = config.edit_for_token(token, now=clock(), request_cookie=None, current={})
    endpoint = config.endpoint_response("GET", token)

    assert token.value in str(edit.add)
    assert token.value in endpoint.body.decode()
    assert token.value not in repr(edit)
    assert "Set-Cookie" in repr(edit)
    assert token.value not in repr(endpoint)
