"""Many responses from one running app: each carries its own request's edit.

The adapters keep the header edits that do not depend on the time, so these
tests send the same and different inputs in turn and check every response.
"""

from __future__ import annotations

from .conftest import Serve, decode

HEADER = "x-tinybird-token"


def test_repeated_requests_follow_each_response(serve: Serve) -> None:
    site = serve()
    sequence = [
        ("alice:acme", {}),
        ("alice:acme", {"cache": "public, max-age=60"}),
        ("bob:globex", {"cache": "public, max-age=60"}),
        ("alice:acme", {}),
        ("bob:globex", {"vary": "Accept"}),
        ("alice:acme", {"cache": "public, max-age=60"}),
    ]
    expected_cache = {"": "private", "public, max-age=60": "private, max-age=60"}

    for user, params in sequence:
        response = site.get("/page", user=user, params=params)

        claims = decode(response.headers[HEADER])
        identity, _, org = user.partition(":")
        assert claims["name"] == identity
        assert claims["scopes"][0]["fixed_params"] == {"org_id": org}
        assert response.headers.get_list("cache-control") == [
            expected_cache[params.get("cache", "")]
        ]
        vary = "Accept, Cookie" if "vary" in params else "Cookie"
        assert response.headers.get_list("vary") == [vary]
        assert len(response.headers.get_list(HEADER)) == 1


def test_cookie_mode_repeats_follow_the_request_cookie(serve: Serve) -> None:
    site = serve(delivery="both")

    first = site.get("/page", user="alice:acme")
    token = first.headers[HEADER]
    matching = site.get("/page", user="alice:acme", cookie=f"tinybird_token={token}")
    again = site.get("/page", user="alice:acme", cookie=f"tinybird_token={token}")
    other = site.get("/page", user="bob:globex", cookie=f"tinybird_token={token}")

    assert any(
        line.startswith("tinybird_token=")
        for line in first.headers.get_list("set-cookie")
    )
    for response in (matching, again):
        assert response.headers[HEADER] == token
        assert response.headers.get_list("set-cookie") == []
    bob_token = other.headers[HEADER]
    assert decode(bob_token)["name"] == "bob"
    assert [
        line.partition(";")[0] for line in other.headers.get_list("set-cookie")
    ] == [f"tinybird_token={bob_token}"]
