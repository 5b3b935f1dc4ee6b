"""Delivery behaviour, written once and run against every adapter."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from tests.conftest import START, WORKSPACE_ID

from .apps import PAGE_BODY, STREAM_CHUNKS, TOKEN_PATH
from .conftest import Serve, decode

ALICE = "alice:acme"
HEADER = "x-tinybird-token"
EXPIRES = "x-tinybird-token-expires"
COOKIE = "tinybird_token"
TTL = 3600


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def token_cookie(response: httpx.Response, name: str = COOKIE) -> dict[str, str]:
    """Parse our Set-Cookie line into {"value": ..., attribute: value}."""
    lines = [line for line in set_cookies(response) if line.startswith(name + "=")]
    assert len(lines) == 1, lines
    first, *attributes = (part.strip() for part in lines[0].split(";"))
    parsed = {"value": first.partition("=")[2]}
    for attribute in attributes:
        key, _, value = attribute.partition("=")
        parsed[key.lower()] = value
    return parsed


def assert_no_token(response: httpx.Response) -> None:
    assert HEADER not in response.headers
    assert EXPIRES not in response.headers
    assert not any(line.startswith(COOKIE + "=") for line in set_cookies(response))


# Header delivery


def test_header_carries_valid_token(serve: Serve) -> None:
    response = serve().get("/page", user=ALICE)

    claims = decode(response.headers[HEADER])
    assert response.status_code == 200
    assert response.text == PAGE_BODY
    assert claims["workspace_id"] == WORKSPACE_ID
    assert claims["name"] == "alice"
    assert claims["exp"] == START + TTL
    assert claims["scopes"] == [
        {"type": "PIPES:READ", "resource": "events", "fixed_params": {"org_id": "acme"}}
    ]


def test_expires_header_matches_exp(serve: Serve) -> None:
    response = serve().get("/page", user=ALICE)

    claims = decode(response.headers[HEADER])
    assert response.headers[EXPIRES] == str(claims["exp"])


def test_header_mode_sets_no_cookie(serve: Serve) -> None:
    response = serve().get("/page", user=ALICE)

    assert set_cookies(response) == []


def test_anonymous_gets_no_token(serve: Serve) -> None:
    response = serve(delivery="both").get("/page")

    assert response.status_code == 200
    assert_no_token(response)
    assert "cache-control" not in response.headers
    assert "vary" not in response.headers


def test_app_header_with_token_name_replaced(serve: Serve) -> None:
    response = serve().get("/page", user=ALICE, params={"forge": "forged"})

    values = response.headers.get_list(HEADER)
    assert len(values) == 1
    assert decode(values[0])["name"] == "alice"


def test_custom_header_names(serve: Serve) -> None:
    site = serve(header_name="X-TB", expires_header_name="X-TB-Expires")

    response = site.get("/page", user=ALICE)

    assert decode(response.headers["x-tb"])["name"] == "alice"
    assert response.headers["x-tb-expires"] == str(int(START) + TTL)
    assert HEADER not in response.headers
    assert response.headers["access-control-expose-headers"] == "X-TB, X-TB-Expires"


def test_same_user_gets_same_token(serve: Serve) -> None:
    site = serve()

    first = site.get("/page", user=ALICE).headers[HEADER]
    second = site.get("/page", user=ALICE).headers[HEADER]

    assert first == second


def test_org_switch_gets_new_token(serve: Serve) -> None:
    site = serve()

    before = site.get("/page", user="alice:acme").headers[HEADER]
    after = site.get("/page", user="alice:globex").headers[HEADER]

    assert after != before
    assert decode(after)["scopes"][0]["fixed_params"] == {"org_id": "globex"}


def test_users_get_their_own_tokens(serve: Serve) -> None:
    site = serve()

    alice = decode(site.get("/page", user="alice:acme").headers[HEADER])
    bob = decode(site.get("/page", user="bob:globex").headers[HEADER])

    assert alice["name"] == "alice"
    assert bob["name"] == "bob"
    assert bob["scopes"][0]["fixed_params"] == {"org_id": "globex"}


def test_streamed_body_gets_token(serve: Serve) -> None:
    response = serve(delivery="both").get("/stream", user=ALICE)

    assert response.text == "".join(STREAM_CHUNKS)
    assert decode(response.headers[HEADER])["name"] == "alice"
    assert token_cookie(response)["value"] == response.headers[HEADER]


# Cookie delivery


def test_cookie_attributes_default(serve: Serve) -> None:
    response = serve(delivery="cookie").get("/page", user=ALICE)

    cookie = token_cookie(response)
    assert decode(cookie["value"])["name"] == "alice"
    assert cookie["max-age"] == str(TTL)
    assert cookie["path"] == "/"
    assert cookie["samesite"] == "Lax"
    assert "secure" in cookie
    assert "httponly" not in cookie
    assert "domain" not in cookie
    assert HEADER not in response.headers


def test_cookie_attributes_configured(serve: Serve) -> None:
    site = serve(
        delivery="cookie",
        cookie_name="tb",
        cookie_path="/app",
        cookie_domain="example.test",
        cookie_samesite="strict",
        cookie_httponly=True,
    )

    cookie = token_cookie(site.get("/page", user=ALICE), name="tb")

    assert cookie["path"] == "/app"
    assert cookie["domain"] == "example.test"
    assert cookie["samesite"] == "Strict"
    assert "httponly" in cookie
    assert "secure" in cookie


def test_cookie_max_age_follows_token_lifetime(serve: Serve) -> None:
    site = serve(delivery="cookie")
    site.get("/page", user=ALICE)
    site.clock.advance(1000)

    cookie = token_cookie(site.get("/page", user="alice:globex"))

    assert decode(cookie["value"])["exp"] == START + TTL + 900
    assert cookie["max-age"] == str(TTL - 100)


def test_cookie_not_resent_when_unchanged(serve: Serve) -> None:
    site = serve(delivery="cookie")
    token = token_cookie(site.get("/page", user=ALICE))["value"]

    response = site.get("/page", user=ALICE, cookie=f"{COOKIE}={token}")

    assert set_cookies(response) == []


def test_cookie_resent_when_stale(serve: Serve) -> None:
    site = serve(delivery="cookie")

    response = site.get("/page", user=ALICE, cookie=f"{COOKIE}=stale")

    assert decode(token_cookie(response)["value"])["name"] == "alice"


def test_cookie_resent_after_refresh(serve: Serve) -> None:
    site = serve(delivery="cookie")
    old = token_cookie(site.get("/page", user=ALICE))["value"]
    site.clock.advance(TTL - 299)

    response = site.get("/page", user=ALICE, cookie=f"{COOKIE}={old}")

    new = token_cookie(response)["value"]
    assert new != old
    assert decode(new)["exp"] > decode(old)["exp"]


def test_cookie_deleted_without_principal(serve: Serve) -> None:
    site = serve(delivery="cookie")

    response = site.get("/page", cookie=f"{COOKIE}=old-token")

    cookie = token_cookie(response)
    assert cookie["value"] == ""
    assert cookie["max-age"] == "0"
    assert cookie["path"] == "/"


def test_no_cookie_no_principal_untouched(serve: Serve) -> None:
    response = serve(delivery="cookie").get("/page", cookie="session=abc")

    assert set_cookies(response) == []


def test_cookie_oversize_deletes_older_cookie(serve: Serve) -> None:
    site = serve(delivery="both")
    old = site.get("/page", user=ALICE).headers[HEADER]

    response = site.get("/page", user="wide:acme", cookie=f"{COOKIE}={old}")

    cookie = token_cookie(response)
    assert cookie["value"] == ""
    assert cookie["max-age"] == "0"
    assert cookie["path"] == "/"
    assert decode(response.headers[HEADER])["name"] == "wide"


def test_app_cookie_kept(serve: Serve) -> None:
    site = serve(delivery="cookie")

    response = site.get("/page", user=ALICE, params={"cookie": "session=abc; Path=/"})

    lines = set_cookies(response)
    assert "session=abc; Path=/" in lines
    assert len(lines) == 2


def test_app_token_cookie_replaced(serve: Serve) -> None:
    site = serve(delivery="cookie")

    response = site.get("/page", user=ALICE, params={"cookie": f"{COOKIE}=forged"})

    assert decode(token_cookie(response)["value"])["name"] == "alice"


@pytest.mark.parametrize("delivery", ["cookie", "both"])
def test_app_token_cookie_dropped_when_current(serve: Serve, delivery: str) -> None:
    site = serve(delivery=delivery)
    token = token_cookie(site.get("/page", user=ALICE))["value"]

    # The second response reuses the edit that the first one prepared.
    for _ in range(2):
        response = site.get(
            "/page",
            user=ALICE,
            cookie=f"{COOKIE}={token}",
            params={"cookie": f"{COOKIE}=forged; Path=/"},
        )

        assert set_cookies(response) == []


def test_both_mode_sends_header_and_cookie(serve: Serve) -> None:
    response = serve(delivery="both").get("/page", user=ALICE)

    assert token_cookie(response)["value"] == response.headers[HEADER]


# Cache protection and header merging


def test_cache_control_private_added(serve: Serve) -> None:
    response = serve().get("/page", user=ALICE)

    assert response.headers["cache-control"] == "private"


def test_cache_control_public_rewritten(serve: Serve) -> None:
    response = serve().get(
        "/page", user=ALICE, params={"cache": "public, max-age=60, s-maxage=300"}
    )

    assert response.headers["cache-control"] == "private, max-age=60"


def test_cache_control_private_kept_once(serve: Serve) -> None:
    response = serve().get("/page", user=ALICE, params={"cache": "private, no-cache"})

    assert response.headers.get_list("cache-control") == ["private, no-cache"]


def test_cache_control_no_store_kept(serve: Serve) -> None:
    response = serve().get("/page", user=ALICE, params={"cache": "no-store"})

    assert response.headers["cache-control"] == "private, no-store"


def test_cache_protection_can_be_disabled(serve: Serve) -> None:
    site = serve(protect_cache=False)

    response = site.get("/page", user=ALICE, params={"cache": "public"})

    assert response.headers["cache-control"] == "public"
    assert "vary" not in response.headers


def test_cdn_cache_headers_removed(serve: Serve) -> None:
    response = serve().get("/page", user=ALICE, params={"cdn": "max-age=600"})

    assert response.headers["cache-control"] == "private"
    for name in (
        "cdn-cache-control",
        "surrogate-control",
        "cloudflare-cdn-cache-control",
        "vercel-cdn-cache-control",
        "edge-control",
        "x-accel-expires",
    ):
        assert name not in response.headers


def test_cdn_cache_headers_kept_without_token(serve: Serve) -> None:
    response = serve().get("/page", params={"cdn": "max-age=600"})

    assert response.headers["cdn-cache-control"] == "max-age=600"
    assert response.headers["surrogate-control"] == "max-age=600"


def test_cookie_deletion_not_cacheable(serve: Serve) -> None:
    site = serve(delivery="cookie")

    response = site.get(
        "/page",
        cookie=f"{COOKIE}=old-token",
        params={"cache": "public, max-age=600", "vary": "Accept", "cdn": "max-age=600"},
    )

    assert token_cookie(response)["max-age"] == "0"
    assert response.headers["cache-control"] == "private, max-age=600"
    assert response.headers.get_list("vary") == ["Accept, Cookie"]
    assert "cdn-cache-control" not in response.headers
    assert "surrogate-control" not in response.headers


def test_cookie_deletion_unprotected_when_disabled(serve: Serve) -> None:
    site = serve(delivery="cookie", protect_cache=False)

    response = site.get(
        "/page", cookie=f"{COOKIE}=old-token", params={"cache": "public"}
    )

    assert token_cookie(response)["max-age"] == "0"
    assert response.headers["cache-control"] == "public"


def test_cdn_cache_headers_kept_without_protection(serve: Serve) -> None:
    site = serve(protect_cache=False)

    response = site.get("/page", user=ALICE, params={"cdn": "max-age=600"})

    assert response.headers["cdn-cache-control"] == "max-age=600"


def test_vary_cookie_added(serve: Serve) -> None:
    response = serve().get("/page", user=ALICE, params={"vary": "Accept"})

    assert response.headers.get_list("vary") == ["Accept, Cookie"]


def test_vary_cookie_not_duplicated(serve: Serve) -> None:
    response = serve().get("/page", user=ALICE, params={"vary": "cookie, Accept"})

    assert response.headers.get_list("vary") == ["cookie, Accept"]


def test_expose_headers_merged(serve: Serve) -> None:
    response = serve().get("/page", user=ALICE, params={"expose": "X-Request-Id"})

    assert response.headers.get_list("access-control-expose-headers") == [
        "X-Request-Id, X-Tinybird-Token, X-Tinybird-Token-Expires"
    ]


def test_expose_headers_not_duplicated(serve: Serve) -> None:
    response = serve().get("/page", user=ALICE, params={"expose": "x-tinybird-token"})

    assert response.headers.get_list("access-control-expose-headers") == [
        "x-tinybird-token, X-Tinybird-Token-Expires"
    ]


def test_cookie_mode_exposes_nothing(serve: Serve) -> None:
    response = serve(delivery="cookie").get("/page", user=ALICE)

    assert "access-control-expose-headers" not in response.headers
    assert response.headers["cache-control"] == "private"


# Token endpoint


def test_endpoint_returns_token(serve: Serve) -> None:
    response = serve().get(TOKEN_PATH, user=ALICE)

    payload = response.json()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "private, no-store"
    assert set(payload) == {"token", "expires_at", "api_url"}
    assert decode(payload["token"])["name"] == "alice"
    assert payload["expires_at"] == START + TTL
    assert payload["api_url"] == "https://api.tinybird.co"


def test_endpoint_token_matches_page_token(serve: Serve) -> None:
    site = serve()

    page = site.get("/page", user=ALICE).headers[HEADER]
    endpoint = site.get(TOKEN_PATH, user=ALICE).json()["token"]

    assert endpoint == page


def test_endpoint_anonymous_is_401(serve: Serve) -> None:
    response = serve().get(TOKEN_PATH)

    assert response.status_code == 401
    assert response.headers["cache-control"] == "no-store"
    assert "token" not in response.json()


@pytest.mark.parametrize("method", ["POST", "DELETE", "TRACE", "PROPFIND"])
def test_endpoint_other_methods_405(serve: Serve, method: str) -> None:
    response = serve().request(method, TOKEN_PATH, user=ALICE)

    assert response.status_code == 405
    assert response.headers["content-type"] == "application/json"
    assert response.headers["allow"] == "GET, HEAD"
    assert "token" not in response.json()


def test_endpoint_head_has_no_body(serve: Serve) -> None:
    site = serve()
    length = len(site.get(TOKEN_PATH, user=ALICE).content)

    response = site.request("HEAD", TOKEN_PATH, user=ALICE)

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(length)
    assert response.headers["cache-control"] == "private, no-store"


def test_endpoint_delivers_like_pages(serve: Serve) -> None:
    response = serve(delivery="both").get(TOKEN_PATH, user=ALICE)

    token = json.loads(response.content)["token"]
    assert token_cookie(response)["value"] == token
    assert response.headers[HEADER] == token
    assert response.headers["cache-control"] == "private, no-store"


def test_endpoint_anonymous_deletes_cookie(serve: Serve) -> None:
    site = serve(delivery="cookie")

    response = site.get(TOKEN_PATH, cookie=f"{COOKIE}=old-token")

    assert response.status_code == 401
    assert token_cookie(response)["max-age"] == "0"


def test_endpoint_plain_options_is_405(serve: Serve) -> None:
    response = serve().request("OPTIONS", TOKEN_PATH, user=ALICE)

    assert response.status_code == 405
    assert "token" not in response.json()


def test_endpoint_absent_without_token_path(serve: Serve) -> None:
    response = serve(token_path=None).get(TOKEN_PATH, user=ALICE)

    assert response.status_code == 404


# Requests that get no token


def test_excluded_prefix_gets_no_token(serve: Serve) -> None:
    response = serve(delivery="both").get(
        "/public/page", user=ALICE, params={"cache": "public"}
    )

    assert response.status_code == 200
    assert_no_token(response)
    assert response.headers["cache-control"] == "public"


def test_excluded_prefix_matches_whole_segments(serve: Serve) -> None:
    response = serve().get("/publicity", user=ALICE)

    assert decode(response.headers[HEADER])["name"] == "alice"


def test_preflight_gets_no_token(serve: Serve) -> None:
    response = serve(delivery="both").request(
        "OPTIONS",
        "/page",
        user=ALICE,
        headers={"Origin": "https://app.test", "Access-Control-Request-Method": "GET"},
    )

    assert_no_token(response)
    assert "cache-control" not in response.headers


def test_policy_error_leaves_response_unchanged(serve: Serve) -> None:
    site = serve(delivery="both")

    response = site.get(
        "/page",
        user="boom:acme",
        cookie=f"{COOKIE}=old-token",
        params={"cache": "public, max-age=60"},
    )

    assert response.status_code == 200
    assert response.text == PAGE_BODY
    assert_no_token(response)
    assert set_cookies(response) == []
    assert response.headers["cache-control"] == "public, max-age=60"


def test_policy_error_logged_with_identity(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    site = serve()

    with caplog.at_level(logging.ERROR):
        site.get("/page", user="boom:acme")

    ours = [r for r in caplog.records if r.name.startswith("tinybird")]
    assert len(ours) == 1
    assert ours[0].levelno == logging.ERROR
    assert "'boom'" in ours[0].getMessage()


def test_policy_error_endpoint_is_500(serve: Serve) -> None:
    response = serve(delivery="both").get(
        TOKEN_PATH, user="boom:acme", cookie=f"{COOKIE}=old-token"
    )

    assert response.status_code == 500
    assert response.headers["cache-control"] == "no-store"
    assert "token" not in response.json()
    assert_no_token(response)
