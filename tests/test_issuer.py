"""TokenIssuer claims, identity, policies, logging and reprs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from flask_login import AnonymousUserMixin, UserMixin
from starlette.authentication import SimpleUser, UnauthenticatedUser

from tests.conftest import SIGNING_KEY, START, WORKSPACE_ID, FakeClock
from tests.issuer_helpers import User, decode, make_issuer, org_policy
from tinybird_asgi import (
    AnonymousPrincipalError,
    ConfigurationError,
    DatasourceAppend,
    DatasourceRead,
    IdentityError,
    InvalidScopeError,
    PipeRead,
    PolicyError,
    Scope,
    default_identity,
    is_anonymous,
    sql_filter,
)

# Claims for every scope kind


@pytest.mark.parametrize(
    ("scope", "claim"),
    [
        (PipeRead("sales"), {"type": "PIPES:READ", "resource": "sales"}),
        (
            PipeRead("sales", fixed_params={"org_id": "acme", "year": 2026}),
            {
                "type": "PIPES:READ",
                "resource": "sales",
                "fixed_params": {"org_id": "acme", "year": 2026},
            },
        ),
        (DatasourceRead("events"), {"type": "DATASOURCES:READ", "resource": "events"}),
        (
            DatasourceRead("events", filter=sql_filter(org_id="o'brien\\")),
            {
                "type": "DATASOURCES:READ",
                "resource": "events",
                "filter": "org_id = 'o\\'brien\\\\'",
            },
        ),
        (
            DatasourceAppend("events"),
            {"type": "DATASOURCES:APPEND", "resource": "events"},
        ),
    ],
    ids=["pipe", "pipe-params", "read", "read-filter", "append"],
)
def test_claims_for_scope_kind(
    clock: FakeClock, scope: Scope, claim: dict[str, Any]
) -> None:
    issuer = make_issuer(clock, scopes=[scope])

    token = issuer.token_for(User("alice"))

    assert decode(token) == {
        "workspace_id": WORKSPACE_ID,
        "name": "alice",
        "exp": int(START) + 3600,
        "scopes": [claim],
    }


def test_claims_all_scopes_in_order(clock: FakeClock) -> None:
    scopes = [
        DatasourceAppend("events"),
        PipeRead("sales", fixed_params={"org_id": "acme"}),
        DatasourceRead("events", filter="org_id = 'acme'"),
    ]
    issuer = make_issuer(clock, scopes=scopes)

    token = issuer.token_for(User("alice"))

    assert decode(token)["scopes"] == [scope.to_claim() for scope in scopes]


def test_claims_limits_when_rate_limit(clock: FakeClock) -> None:
    issuer = make_issuer(clock, rate_limit=20)

    token = issuer.token_for(User("alice"))

    assert decode(token) == {
        "workspace_id": WORKSPACE_ID,
        "name": "alice",
        "exp": int(START) + 3600,
        "scopes": [
            {
                "type": "PIPES:READ",
                "resource": "sales",
                "fixed_params": {"org_id": "acme"},
            }
        ],
        "limits": {"rps": 20},
    }


def test_claims_no_limits_by_default(clock: FakeClock) -> None:
    token = make_issuer(clock).token_for(User("alice"))

    assert "limits" not in decode(token)


def test_claims_rate_limit_callable(clock: FakeClock) -> None:
    issuer = make_issuer(
        clock, rate_limit=lambda user: 50 if user.username == "admin" else None
    )

    assert decode(issuer.token_for(User("admin")))["limits"] == {"rps": 50}
    assert "limits" not in decode(issuer.token_for(User("alice")))


def test_claims_header_is_hs256(clock: FakeClock) -> None:
    token = make_issuer(clock).token_for(User("alice"))

    assert jwt.get_unverified_header(token.value) == {"alg": "HS256", "typ": "JWT"}


def test_claims_exp_is_int(clock: FakeClock) -> None:
    clock.now = START + 0.75
    token = make_issuer(clock).token_for(User("alice"))

    assert type(decode(token)["exp"]) is int
    assert type(token.expires_at) is int
    assert token.expires_at == decode(token)["exp"]


def test_claims_exp_aligned_to_step(clock: FakeClock) -> None:
    clock.now = START + 299.9
    issuer = make_issuer(clock, ttl=3600, refresh_margin=300)

    token = issuer.token_for(User("alice"))

    assert token.expires_at == int(START) + 3600


def test_claims_exp_custom_step(clock: FakeClock) -> None:
    clock.now = START + 70
    issuer = make_issuer(clock, ttl=3600, refresh_margin=300, exp_step=60)

    token = issuer.token_for(User("alice"))

    assert token.expires_at == int(START) + 3660


def test_claims_verify_with_padded_key(clock: FakeClock) -> None:
    issuer = make_issuer(clock, signing_key=f"  {SIGNING_KEY}\n")

    token = issuer.token_for(User("alice"))

    assert decode(token, SIGNING_KEY)["name"] == "alice"


def test_token_api_url(clock: FakeClock) -> None:
    issuer = make_issuer(clock, api_url="https://api.us-east.tinybird.co/")

    token = issuer.token_for(User("alice"))

    assert token.api_url == "https://api.us-east.tinybird.co"


def test_token_max_age(clock: FakeClock) -> None:
    token = make_issuer(clock).token_for(User("alice"))

    assert token.max_age(START + 100.5) == 3499
    assert token.max_age(START + 7200) == 0


# name


def test_name_defaults_to_identity(clock: FakeClock) -> None:
    issuer = make_issuer(clock)

    assert decode(issuer.token_for(User("alice")))["name"] == "alice"
    assert decode(issuer.token_for(User("bob")))["name"] == "bob"


def test_name_fixed_string(clock: FakeClock) -> None:
    issuer = make_issuer(clock, name="dashboard")

    assert decode(issuer.token_for(User("alice")))["name"] == "dashboard"


def test_name_callable(clock: FakeClock) -> None:
    issuer = make_issuer(clock, name=lambda user: f"{user.org_id}:{user.username}")

    assert decode(issuer.token_for(User("alice")))["name"] == "acme:alice"


@pytest.mark.parametrize("bad", ["", None, 5], ids=repr)
def test_name_callable_bad_result(clock: FakeClock, bad: object) -> None:
    issuer = make_issuer(clock, name=lambda user: bad)

    with pytest.raises(PolicyError, match="name callback returned"):
        issuer.token_for(User("alice"))


# identity


def test_identity_starlette_simple_user() -> None:
    assert default_identity(SimpleUser("alice")) == "alice"


def test_identity_starlette_identity_property() -> None:
    class Member(SimpleUser):
        @property
        def identity(self) -> str:
            return "member-7"

    assert default_identity(Member("alice")) == "member-7"


def test_identity_username() -> None:
    assert default_identity(User("alice")) == "alice"


def test_identity_flask_login_get_id() -> None:
    class Account(UserMixin):  # type: ignore[misc]
        def __init__(self, id: int) -> None:
            self.id = id

    assert default_identity(Account(42)) == "42"


def test_identity_flask_login_custom_get_id() -> None:
    class Account(UserMixin):  # type: ignore[misc]
        def get_id(self) -> str:
            return "acct-9"

    assert default_identity(Account()) == "acct-9"


def test_identity_get_id_before_username() -> None:
    class Account(UserMixin):  # type: ignore[misc]
        def __init__(self, id: int, username: str) -> None:
            self.id = id
            self.username = username

    assert default_identity(Account(42, "alice")) == "42"
    assert default_identity(Account(43, "alice")) == "43"


def test_identity_shared_username_separate_tokens(clock: FakeClock) -> None:
    class Account(UserMixin):  # type: ignore[misc]
        def __init__(self, id: int, username: str) -> None:
            self.id = id
            self.username = username

    issuer = make_issuer(clock, scopes=[PipeRead("events")], rate_limit=5)

    first = issuer.token_for(Account(1, "alice"))
    second = issuer.token_for(Account(2, "alice"))

    assert first.value != second.value
    assert decode(first)["name"] == "1"
    assert decode(second)["name"] == "2"
    assert len(issuer) == 2


def test_identity_username_before_id() -> None:
    @dataclass
    class Row:
        id: int
        username: str

    assert default_identity(Row(7, "alice")) == "alice"


def test_identity_starlette_before_get_id() -> None:
    class Member(SimpleUser):
        @property
        def identity(self) -> str:
            return "member-7"

        def get_id(self) -> str:
            return "acct-9"

    assert default_identity(Member("alice")) == "member-7"


def test_identity_id_attribute() -> None:
    @dataclass
    class Row:
        id: int

    assert default_identity(Row(7)) == "7"


def test_identity_string_principal() -> None:
    assert default_identity("alice") == "alice"


def test_identity_missing_raises() -> None:
    with pytest.raises(IdentityError, match="pass identity=") as caught:
        default_identity(object())

    assert "object" in str(caught.value)


def test_identity_flask_login_without_id() -> None:
    class Account(UserMixin):  # type: ignore[misc]
        pass

    with pytest.raises(IdentityError, match="Cannot derive an identity"):
        default_identity(Account())


@pytest.mark.parametrize("value", ["", b"alice", 1.5, True], ids=repr)
def test_identity_rejects_value(value: object) -> None:
    @dataclass
    class Row:
        id: object

    with pytest.raises(IdentityError):
        default_identity(Row(value))


def test_identity_custom_callable(clock: FakeClock) -> None:
    issuer = make_issuer(clock, identity=lambda user: f"user:{user.username}")

    assert decode(issuer.token_for(User("alice")))["name"] == "user:alice"


def test_identity_error_from_token_for(clock: FakeClock) -> None:
    issuer = make_issuer(clock, scopes=[PipeRead("sales")])

    with pytest.raises(IdentityError, match="pass identity="):
        issuer.token_for(object())

    assert issuer.mint_count == 0


@pytest.mark.parametrize("bad", ["", None, 7], ids=repr)
def test_identity_callable_bad_result(clock: FakeClock, bad: object) -> None:
    issuer = make_issuer(clock, identity=lambda user: bad)

    with pytest.raises(IdentityError, match="identity callback returned"):
        issuer.token_for(User("alice"))


def test_identity_callable_raises(clock: FakeClock) -> None:
    def identity(user: User) -> str:
        raise LookupError("no such row")

    issuer = make_issuer(clock, identity=identity)

    with pytest.raises(PolicyError, match="identity raised LookupError") as caught:
        issuer.token_for(User("alice"))

    assert isinstance(caught.value.__cause__, LookupError)


# Anonymous principals


@pytest.mark.parametrize(
    "principal",
    [
        None,
        UnauthenticatedUser(),
        AnonymousUserMixin(),
        User("alice", is_authenticated=False),
    ],
    ids=["none", "starlette", "flask-login", "attribute"],
)
def test_anonymous_principal_rejected(clock: FakeClock, principal: object) -> None:
    issuer = make_issuer(clock, scopes=[PipeRead("sales")])

    with pytest.raises(AnonymousPrincipalError):
        issuer.token_for(principal)

    assert issuer.mint_count == 0


def test_anonymous_method_style() -> None:
    class LegacyUser:
        def is_authenticated(self) -> bool:
            return False

    assert is_anonymous(LegacyUser())


def test_anonymous_false_for_plain_object() -> None:
    assert not is_anonymous(User("alice"))


def test_anonymous_is_policy_error() -> None:
    assert issubclass(AnonymousPrincipalError, PolicyError)


# Policies


def test_policy_none_tenant_rejected(clock: FakeClock) -> None:
    issuer = make_issuer(clock)

    with pytest.raises(PolicyError, match="org_id") as caught:
        issuer.token_for(User("alice", org_id=None))

    assert isinstance(caught.value.__cause__, InvalidScopeError)
    assert caught.value.identity == "alice"
    assert issuer.mint_count == 0
    assert len(issuer) == 0


def test_policy_empty_tenant_rejected(clock: FakeClock) -> None:
    issuer = make_issuer(clock)

    with pytest.raises(PolicyError, match="empty string"):
        issuer.token_for(User("alice", org_id=""))

    assert issuer.mint_count == 0


def test_policy_raising_wrapped(clock: FakeClock) -> None:
    def policy(user: User) -> list[Scope]:
        raise KeyError("org")

    issuer = make_issuer(clock, scopes=policy)

    with pytest.raises(PolicyError, match="scopes policy raised KeyError") as caught:
        issuer.token_for(User("alice"))

    assert isinstance(caught.value.__cause__, KeyError)


def test_policy_error_propagates(clock: FakeClock) -> None:
    def policy(user: User) -> list[Scope]:
        raise AnonymousPrincipalError("user is suspended")

    issuer = make_issuer(clock, scopes=policy)

    with pytest.raises(AnonymousPrincipalError, match="user is suspended"):
        issuer.token_for(User("alice"))


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ([], "scope list is empty"),
        (None, "returned NoneType"),
        ("sales", "returned str"),
        ({"sales": 1}, "returned dict"),
        (["sales"], "str is not a scope"),
    ],
    ids=["empty", "none", "str", "dict", "str-item"],
)
def test_policy_bad_result(clock: FakeClock, result: object, message: str) -> None:
    issuer = make_issuer(clock, scopes=lambda user: result)

    with pytest.raises(PolicyError, match=message):
        issuer.token_for(User("alice"))

    assert issuer.mint_count == 0


def test_policy_single_scope_accepted(clock: FakeClock) -> None:
    issuer = make_issuer(clock, scopes=lambda user: DatasourceAppend("events"))

    token = issuer.token_for(User("alice"))

    assert decode(token)["scopes"] == [
        {"type": "DATASOURCES:APPEND", "resource": "events"}
    ]


def test_policy_generator_accepted(clock: FakeClock) -> None:
    issuer = make_issuer(
        clock, scopes=lambda user: (PipeRead(name) for name in ("a", "b"))
    )

    token = issuer.token_for(User("alice"))

    assert [scope["resource"] for scope in decode(token)["scopes"]] == ["a", "b"]


def test_policy_bad_rate_limit(clock: FakeClock) -> None:
    issuer = make_issuer(clock, rate_limit=lambda user: 0)

    with pytest.raises(PolicyError, match="not positive"):
        issuer.token_for(User("alice"))


# Async callbacks


async def test_async_callbacks(clock: FakeClock) -> None:
    async def policy(user: User) -> list[Scope]:
        return org_policy(user)

    async def identity(user: User) -> str:
        return f"id-{user.username}"

    async def name(user: User) -> str:
        return f"name-{user.username}"

    async def rate_limit(user: User) -> int:
        return 5

    issuer = make_issuer(
        clock, scopes=policy, identity=identity, name=name, rate_limit=rate_limit
    )

    token = await issuer.atoken_for(User("alice"))

    assert decode(token) == {
        "workspace_id": WORKSPACE_ID,
        "name": "name-alice",
        "exp": int(START) + 3600,
        "scopes": [
            {
                "type": "PIPES:READ",
                "resource": "sales",
                "fixed_params": {"org_id": "acme"},
            }
        ],
        "limits": {"rps": 5},
    }


async def test_async_sync_callbacks(clock: FakeClock) -> None:
    issuer = make_issuer(clock)

    token = await issuer.atoken_for(User("alice"))

    assert decode(token)["name"] == "alice"


async def test_async_policy_raising(clock: FakeClock) -> None:
    async def policy(user: User) -> list[Scope]:
        raise ConnectionError("database down")

    issuer = make_issuer(clock, scopes=policy)

    with pytest.raises(PolicyError, match="raised ConnectionError") as caught:
        await issuer.atoken_for(User("alice"))

    assert isinstance(caught.value.__cause__, ConnectionError)
    assert issuer.mint_count == 0


async def test_async_policy_none_tenant(clock: FakeClock) -> None:
    async def policy(user: User) -> list[Scope]:
        return org_policy(user)

    issuer = make_issuer(clock, scopes=policy)

    with pytest.raises(PolicyError, match="org_id"):
        await issuer.atoken_for(User("alice", org_id=None))

    assert issuer.mint_count == 0


async def test_async_anonymous(clock: FakeClock) -> None:
    issuer = make_issuer(clock)

    with pytest.raises(AnonymousPrincipalError):
        await issuer.atoken_for(None)


def test_sync_rejects_awaitable(clock: FakeClock) -> None:
    async def policy(user: User) -> list[Scope]:
        return org_policy(user)

    issuer = make_issuer(clock, scopes=policy)

    with pytest.raises(PolicyError, match="atoken_for"):
        issuer.token_for(User("alice"))

    assert issuer.mint_count == 0


def test_sync_rejects_async_identity(clock: FakeClock) -> None:
    async def identity(user: User) -> str:
        return user.username

    issuer = make_issuer(clock, identity=identity)

    with pytest.raises(PolicyError, match="atoken_for"):
        issuer.token_for(User("alice"))


# Logging, reprs and messages


def test_log_debug_on_mint(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    issuer = make_issuer(clock)
    caplog.set_level(logging.DEBUG, logger="tinybird_asgi")

    issuer.token_for(User("alice"))

    records = [r for r in caplog.records if r.name == "tinybird_asgi"]
    assert [r.levelno for r in records] == [logging.DEBUG]
    assert "Minted" in records[0].getMessage()
    assert "'alice'" in records[0].getMessage()


def test_log_never_secret(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    issuer = make_issuer(clock)
    caplog.set_level(logging.DEBUG, logger="tinybird_asgi")

    tokens = [issuer.token_for(User(name)) for name in ("alice", "bob")]
    issuer.rotate_signing_key(SIGNING_KEY + "-rotated")
    tokens.append(issuer.token_for(User("alice")))

    assert len(caplog.records) == 4
    for record in caplog.records:
        text = record.getMessage()
        assert SIGNING_KEY not in text
        for token in tokens:
            assert token.value not in text
            assert token.value.split(".")[2] not in text


def test_repr_hides_secrets(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    token = issuer.token_for(User("alice"))

    for text in (repr(issuer), str(issuer), repr(token), str(token)):
        assert SIGNING_KEY not in text
        assert token.value not in text


def test_repr_names_workspace(clock: FakeClock) -> None:
    assert WORKSPACE_ID in repr(make_issuer(clock))


def test_repr_token_fields(clock: FakeClock) -> None:
    token = make_issuer(clock).token_for(User("alice"))

    assert repr(token) == (
        f"TinybirdToken(expires_at={int(START) + 3600}, "
        "api_url='https://api.tinybird.co')"
    )


def test_errors_never_contain_key(clock: FakeClock) -> None:
    key = SIGNING_KEY
    attempts: list[dict[str, Any]] = [
        {"workspace_id": None},
        {"workspace_id": "not-a-uuid"},
        {"ttl": 10**9},
        {"refresh_margin": 10**5},
        {"scopes": []},
        {"rate_limit": -1},
        {"max_cached": 0},
        {"api_url": "ftp://example"},
    ]
    for options in attempts:
        with pytest.raises(ConfigurationError) as caught:
            make_issuer(clock, signing_key=key, **options)
        assert key not in str(caught.value)
        assert key not in repr(caught.value)


def test_errors_policy_never_contain_key(clock: FakeClock) -> None:
    issuer = make_issuer(clock)

    with pytest.raises(PolicyError) as caught:
        issuer.token_for(User("alice", org_id=None))

    assert SIGNING_KEY not in str(caught.value)
