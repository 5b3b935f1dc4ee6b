"""TokenIssuer under clock jumps, key rotation, a full cache and async callbacks."""

from __future__ import annotations

from collections.abc import Iterator

import jwt
import pytest

from tinybird_asgi import AsyncCallbackError, PipeRead, PolicyError, TokenIssuer

from .conftest import SIGNING_KEY, WORKSPACE_ID, FakeClock

OTHER_KEY = "p.another-signing-key-abcdefghijklmnopqrstuvwxyz0123456789"


def _issuer(clock: FakeClock, **options: object) -> TokenIssuer:
    options.setdefault(
        "scopes", lambda user: [PipeRead("events", fixed_params={"user": user})]
    )
    return TokenIssuer(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        clock=clock,
        **options,  # type: ignore[arg-type]
    )


def test_clock_backwards_replaces_token_beyond_ttl(clock: FakeClock) -> None:
    issuer = _issuer(clock)
    first = issuer.token_for("alice")

    clock.advance(-7200)
    second = issuer.token_for("alice")

    assert second.value != first.value
    assert second.expires_at <= clock() + issuer.ttl
    assert second.expires_at - clock() >= issuer.refresh_margin


def test_clock_one_second_back_stays_within_ttl(clock: FakeClock) -> None:
    issuer = _issuer(clock)
    issuer.token_for("alice")

    for _ in range(5):
        clock.advance(-1)
        token = issuer.token_for("alice")
        assert token.expires_at <= clock() + issuer.ttl
        assert token.expires_at - clock() >= issuer.refresh_margin


def test_clock_forwards_past_expiry_mints_new(clock: FakeClock) -> None:
    issuer = _issuer(clock)
    first = issuer.token_for("alice")

    clock.advance(2 * 3600)
    second = issuer.token_for("alice")

    assert second.expires_at > first.expires_at
    assert second.expires_at - clock() >= issuer.refresh_margin
    claims = jwt.decode(second.value, SIGNING_KEY, algorithms=["HS256"])
    assert claims["exp"] == second.expires_at


def test_rotated_key_never_serves_old_token(clock: FakeClock) -> None:
    issuer = _issuer(clock)
    old = issuer.token_for("alice")

    issuer.rotate_signing_key(OTHER_KEY)
    new = issuer.token_for("alice")

    assert new.value != old.value
    assert jwt.decode(new.value, OTHER_KEY, algorithms=["HS256"])["name"] == "alice"
    assert issuer.mint_count == 2


def test_full_cache_evicts_and_remints(clock: FakeClock) -> None:
    issuer = _issuer(clock, max_cached=3)
    for user in ("a", "b", "c", "d"):
        issuer.token_for(user)

    token = issuer.token_for("a")

    assert len(issuer) == 3
    assert issuer.mint_count == 5
    claims = jwt.decode(token.value, SIGNING_KEY, algorithms=["HS256"])
    assert claims["scopes"][0]["fixed_params"] == {"user": "a"}


async def _async_scopes(user: str) -> list[PipeRead]:
    return [PipeRead("events", fixed_params={"user": user})]


async def _async_name(user: str) -> str:
    return f"name-{user}"


def test_async_callbacks_lists_async_options(clock: FakeClock) -> None:
    issuer = _issuer(clock, name=_async_name)
    plain = _issuer(clock)

    assert issuer.async_callbacks == ("name",)
    assert plain.async_callbacks == ()


def test_token_for_async_policy_raises_typed(clock: FakeClock) -> None:
    issuer = _issuer(clock, scopes=_async_scopes)

    with pytest.raises(AsyncCallbackError) as caught:
        issuer.token_for("alice")

    assert isinstance(caught.value, PolicyError)
    assert "atoken_for" in str(caught.value)
    assert issuer.mint_count == 0


def test_generator_policy_raising_is_policy_error(clock: FakeClock) -> None:
    def scopes(user: str) -> Iterator[PipeRead]:
        yield PipeRead("events", fixed_params={"org_id": "acme"})
        raise RuntimeError("tenant lookup failed")

    issuer = _issuer(clock, scopes=scopes)

    with pytest.raises(PolicyError) as info:
        issuer.token_for("alice")

    assert info.value.identity == "alice"
    assert isinstance(info.value.__cause__, RuntimeError)
    assert issuer.mint_count == 0
