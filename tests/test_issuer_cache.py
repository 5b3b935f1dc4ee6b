"""The per-user token cache: refresh, claims and key changes, LRU, threads."""

from __future__ import annotations

import base64
import json
import random
import sys
import threading
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
from flask_login import AnonymousUserMixin
from starlette.authentication import UnauthenticatedUser

import tinybird_asgi._issuer
from tests.conftest import SIGNING_KEY, START, WORKSPACE_ID, FakeClock
from tests.issuer_helpers import User, decode, make_issuer, org_policy
from tinybird_asgi import (
    ConfigurationError,
    PolicyError,
    TinybirdToken,
    TokenIssuer,
)

NEW_KEY = "p.rotated-signing-key-9876543210zyxwvutsrqponmlkjihgfedcba"


# Reuse and refresh


def test_cache_reuses_token(clock: FakeClock) -> None:
    issuer = make_issuer(clock)

    first = issuer.token_for(User("alice"))
    clock.advance(60)
    second = issuer.token_for(User("alice"))

    assert second is first
    assert issuer.mint_count == 1


def test_cache_refresh_before_margin(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    first = issuer.token_for(User("alice"))

    clock.now = first.expires_at - issuer.refresh_margin - 1

    assert issuer.token_for(User("alice")) is first
    assert issuer.mint_count == 1


def test_cache_refresh_at_margin(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    first = issuer.token_for(User("alice"))

    clock.now = first.expires_at - issuer.refresh_margin
    second = issuer.token_for(User("alice"))

    assert second.value != first.value
    assert second.expires_at > first.expires_at
    assert issuer.mint_count == 2


def test_cache_refresh_just_before_margin(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    first = issuer.token_for(User("alice"))

    clock.now = first.expires_at - issuer.refresh_margin - 0.001

    assert issuer.token_for(User("alice")) is first


@pytest.mark.parametrize(
    ("ttl", "margin", "step"),
    [(3600, 300, None), (3600, 300, 60), (900, 120, 7), (61, 0, 1), (600, 299.5, None)],
)
def test_cache_served_validity_at_least_margin(
    clock: FakeClock, ttl: float, margin: float, step: int | None
) -> None:
    clock.now = START + 13.25
    issuer = make_issuer(clock, ttl=ttl, refresh_margin=margin, exp_step=step)
    previous_exp = 0

    # Walk through three lifetimes in steps that land on many phases of the
    # exp step.
    for _ in range(int(3 * ttl / 11.3)):
        token = issuer.token_for(User("alice"))
        assert token.expires_at - clock.now >= margin
        assert token.expires_at <= clock.now + ttl
        assert token.expires_at >= previous_exp
        previous_exp = token.expires_at
        clock.advance(11.3)

    assert issuer.mint_count >= 3


def test_cache_drops_entry_after_refresh_time(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    token = issuer.token_for(User("alice"))

    clock.now = token.expires_at - issuer.refresh_margin

    assert len(issuer) == 0


# Claims changes


def test_cache_new_token_on_org_switch(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    user = User("alice", org_id="acme")
    first = issuer.token_for(user)

    user.org_id = "globex"
    second = issuer.token_for(user)

    assert decode(first)["scopes"][0]["fixed_params"] == {"org_id": "acme"}
    assert decode(second)["scopes"][0]["fixed_params"] == {"org_id": "globex"}
    assert issuer.mint_count == 2
    assert len(issuer) == 1


def test_cache_switch_back_gets_own_org(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    user = User("alice", org_id="acme")
    issuer.token_for(user)
    user.org_id = "globex"
    issuer.token_for(user)

    user.org_id = "acme"
    third = issuer.token_for(user)

    assert decode(third)["scopes"][0]["fixed_params"] == {"org_id": "acme"}
    assert issuer.mint_count == 3


def test_cache_new_token_on_name_change(clock: FakeClock) -> None:
    names = {"alice": "first"}
    issuer = make_issuer(clock, name=lambda user: names[user.username])
    issuer.token_for(User("alice"))

    names["alice"] = "second"
    token = issuer.token_for(User("alice"))

    assert decode(token)["name"] == "second"


def test_cache_new_token_on_limit_change(clock: FakeClock) -> None:
    limits = {"alice": 10}
    issuer = make_issuer(clock, rate_limit=lambda user: limits[user.username])
    issuer.token_for(User("alice"))

    limits["alice"] = 3
    token = issuer.token_for(User("alice"))

    assert decode(token)["limits"] == {"rps": 3}


def test_cache_failed_policy_keeps_nothing(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    user = User("alice")
    issuer.token_for(user)

    user.org_id = ""
    with pytest.raises(PolicyError):
        issuer.token_for(user)

    assert issuer.mint_count == 1


# Key rotation


def test_rotate_key_new_token(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    first = issuer.token_for(User("alice"))

    issuer.rotate_signing_key(NEW_KEY)
    second = issuer.token_for(User("alice"))

    assert second.value != first.value
    assert decode(second, NEW_KEY)["name"] == "alice"
    assert issuer.mint_count == 2


def test_rotate_key_old_key_fails(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    issuer.token_for(User("alice"))

    issuer.rotate_signing_key(NEW_KEY)
    token = issuer.token_for(User("alice"))

    with pytest.raises(jwt.InvalidSignatureError):
        decode(token, SIGNING_KEY)


def test_rotate_key_clears_cache(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    issuer.token_for(User("alice"))
    issuer.token_for(User("bob"))

    issuer.rotate_signing_key(NEW_KEY)

    assert len(issuer) == 0


def test_rotate_key_rejects_short() -> None:
    issuer = make_issuer(FakeClock())

    with pytest.raises(ConfigurationError) as caught:
        issuer.rotate_signing_key("p.short")

    assert caught.value.option == "signing_key"


def test_rotate_key_rejects_other_workspace() -> None:
    payload = json.dumps({"u": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"}).encode()
    key = f"p.{base64.urlsafe_b64encode(payload).decode()}.signature-part-abcdef"
    issuer = make_issuer(FakeClock())

    with pytest.raises(ConfigurationError, match="another workspace") as caught:
        issuer.rotate_signing_key(key)

    assert caught.value.option == "signing_key"


def test_rotate_key_failure_keeps_old_key(clock: FakeClock) -> None:
    issuer = make_issuer(clock)

    with pytest.raises(ConfigurationError):
        issuer.rotate_signing_key("")
    token = issuer.token_for(User("alice"))

    assert decode(token, SIGNING_KEY)["name"] == "alice"


# Bounds, invalidate and clear


def test_cache_lru_bound(clock: FakeClock) -> None:
    issuer = make_issuer(clock, max_cached=2)
    issuer.token_for(User("alice"))
    issuer.token_for(User("bob"))
    issuer.token_for(User("alice"))

    issuer.token_for(User("carol"))

    assert len(issuer) == 2
    assert issuer.mint_count == 3


def test_cache_lru_keeps_recent(clock: FakeClock) -> None:
    issuer = make_issuer(clock, max_cached=2)
    alice = issuer.token_for(User("alice"))
    issuer.token_for(User("bob"))
    issuer.token_for(User("alice"))
    issuer.token_for(User("carol"))

    assert issuer.token_for(User("alice")) is alice
    assert issuer.mint_count == 3


def test_cache_lru_evicts_oldest(clock: FakeClock) -> None:
    issuer = make_issuer(clock, max_cached=2)
    issuer.token_for(User("alice"))
    issuer.token_for(User("bob"))
    issuer.token_for(User("alice"))
    issuer.token_for(User("carol"))

    issuer.token_for(User("bob"))

    assert issuer.mint_count == 4


def test_cache_bound_many_users(clock: FakeClock) -> None:
    issuer = make_issuer(clock, max_cached=50)

    for index in range(500):
        issuer.token_for(User(f"user{index}"))

    assert len(issuer) == 50


def test_invalidate_principal(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    issuer.token_for(User("alice"))
    bob = issuer.token_for(User("bob"))

    issuer.invalidate(User("alice"))
    issuer.token_for(User("alice"))

    assert issuer.mint_count == 3
    assert issuer.token_for(User("bob")) is bob


def test_invalidate_identity_string(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    issuer.token_for(User("alice"))

    issuer.invalidate("alice")

    assert len(issuer) == 0


def test_invalidate_unknown_is_noop(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    issuer.token_for(User("alice"))

    issuer.invalidate("nobody")

    assert len(issuer) == 1


@pytest.mark.parametrize(
    "principal",
    [None, AnonymousUserMixin(), UnauthenticatedUser()],
    ids=["none", "flask-login", "starlette"],
)
def test_invalidate_anonymous_is_noop(clock: FakeClock, principal: object) -> None:
    issuer = make_issuer(clock)
    issuer.token_for(User("alice"))

    issuer.invalidate(principal)

    assert len(issuer) == 1


def test_invalidate_async_identity_rejected(clock: FakeClock) -> None:
    async def identity(user: User) -> str:
        return user.username

    issuer = make_issuer(clock, identity=identity)

    with pytest.raises(PolicyError, match="identity string"):
        issuer.invalidate(User("alice"))


def test_clear_drops_all(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    for name in ("alice", "bob", "carol"):
        issuer.token_for(User(name))

    issuer.clear()
    issuer.token_for(User("alice"))

    assert len(issuer) == 1
    assert issuer.mint_count == 4


# Threads


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    # Switching threads every microsecond instead of every 5 ms makes a
    # missing lock show up as wrong tokens or extra mints.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("frequent_thread_switches")
def test_threads_get_own_tokens(clock: FakeClock) -> None:
    users = [User(f"user{index}", org_id=f"org{index % 17}") for index in range(300)]
    issuer = make_issuer(clock)
    barrier = threading.Barrier(32)

    def ask(seed: int) -> list[tuple[User, TinybirdToken]]:
        order = list(users)
        random.Random(seed).shuffle(order)
        barrier.wait(timeout=30)
        return [(user, issuer.token_for(user)) for user in order]

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(ask, range(32)))

    served = [pair for result in results for pair in result]
    assert len(served) == 32 * len(users)
    # Each distinct JWT is verified once; every served pair is checked.
    verified: dict[str, dict[str, Any]] = {}
    for user, token in served:
        if token.value not in verified:
            verified[token.value] = decode(token)
        claims = verified[token.value]
        assert claims["name"] == user.username
        assert claims["scopes"][0]["fixed_params"] == {"org_id": user.org_id}
    assert issuer.mint_count == len(users)


def test_callbacks_run_outside_lock(clock: FakeClock) -> None:
    # Each callback calls len(issuer), which takes the cache lock; were the
    # lock held while a callback runs, the call would never return.
    calls: list[str] = []

    def probe(what: str, result: Any) -> Any:
        len(issuer)
        calls.append(what)
        return result

    issuer = make_issuer(
        clock,
        identity=lambda user: probe("identity", user.username),
        scopes=lambda user: probe("scopes", org_policy(user)),
        name=lambda user: probe("name", user.username),
        rate_limit=lambda user: probe("rate_limit", 5),
    )
    worker = threading.Thread(target=issuer.token_for, args=(User("alice"),))

    worker.start()
    worker.join(timeout=10)

    assert not worker.is_alive()
    assert calls == ["identity", "scopes", "name", "rate_limit"]
    assert issuer.mint_count == 1


def test_clock_read_outside_lock(clock: FakeClock) -> None:
    # The clock takes the cache lock through invalidate(); were the lock held
    # while the clock runs, token_for would never return.
    reads: list[float] = []

    def locking_clock() -> float:
        if reads:
            issuer.invalidate("nobody")
        reads.append(clock())
        return clock()

    issuer = TokenIssuer(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        scopes=org_policy,
        clock=locking_clock,
    )
    # A daemon thread, so a deadlock fails this test without hanging the run.
    worker = threading.Thread(
        target=issuer.token_for, args=(User("alice"),), daemon=True
    )

    worker.start()
    worker.join(timeout=10)

    assert not worker.is_alive()
    assert len(reads) >= 2
    assert issuer.mint_count == 1


@pytest.mark.parametrize(("gap", "wait"), [(0.2, 0.0), (3.0, 4.0)])
def test_stale_clock_read_adopts_later_one(
    monkeypatch: pytest.MonkeyPatch, gap: float, wait: float
) -> None:
    # Call A reads the clock just before an exp_step boundary, then call B
    # reads it `gap` seconds later, past the boundary, and mints before A
    # takes the lock after waiting `wait` seconds (by a fake monotonic
    # clock). A must serve B's token rather than mint one with the earlier
    # exp, also when the gap exceeds MAX_LOCK_WAIT but not the wait.
    monotonic = FakeClock(1000.0)
    monkeypatch.setattr(
        tinybird_asgi._issuer, "time", types.SimpleNamespace(monotonic=monotonic)
    )
    step_boundary = 1_800_000_000.0
    # Empty while the issuer is built, whose constructor checks one reading.
    readings: Iterator[float] = iter([])
    results: dict[str, TinybirdToken] = {}

    def clock() -> float:
        reading = next(readings, None)
        if reading is None:
            return step_boundary
        if reading < step_boundary:
            # A's reading: B runs to completion before A continues.
            other = threading.Thread(
                target=lambda: results.update(b=issuer.token_for(User("alice")))
            )
            other.start()
            other.join(timeout=10)
            monotonic.advance(wait)
        return reading

    issuer = TokenIssuer(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        scopes=org_policy,
        clock=clock,
        exp_step=300,
    )
    readings = iter([step_boundary - gap / 2, step_boundary + gap / 2])

    results["a"] = issuer.token_for(User("alice"))

    assert results["a"] == results["b"]
    assert results["a"].expires_at == step_boundary + 3600
    assert issuer.mint_count == 1


@pytest.mark.usefixtures("frequent_thread_switches")
def test_threads_same_user_one_mint(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    barrier = threading.Barrier(32)

    def ask(_: int) -> str:
        barrier.wait(timeout=30)
        return issuer.token_for(User("alice")).value

    with ThreadPoolExecutor(max_workers=32) as pool:
        values = set(pool.map(ask, range(32)))

    assert len(values) == 1
    assert issuer.mint_count == 1


@pytest.mark.usefixtures("frequent_thread_switches")
def test_threads_rotation_serves_new_key(clock: FakeClock) -> None:
    users = [User(f"user{index}") for index in range(20)]
    issuer = make_issuer(clock)
    rotated = threading.Event()
    started = threading.Barrier(9)

    def ask(_: int) -> list[TinybirdToken]:
        # Tokens requested after the rotation returned, in this thread.
        after: list[TinybirdToken] = []
        started.wait(timeout=30)
        for round_number in range(100_000):
            was_rotated = rotated.is_set()
            token = issuer.token_for(users[round_number % len(users)])
            if was_rotated:
                after.append(token)
            if len(after) == 50:
                break
        return after

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(ask, index) for index in range(8)]
        started.wait(timeout=30)
        issuer.rotate_signing_key(NEW_KEY)
        rotated.set()
        served_after = [token for future in futures for token in future.result()]

    assert len(served_after) == 8 * 50
    for token in {token.value: token for token in served_after}.values():
        assert decode(token, NEW_KEY)["exp"] == token.expires_at
