"""Property-based tests of the core: every result is the exact claims or an error."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinybird_asgi import (
    DatasourceAppend,
    DatasourceRead,
    InvalidScopeError,
    PipeRead,
    PolicyError,
    Scope,
    TokenIssuer,
    quote_literal,
    sql_filter,
)

from .conftest import SIGNING_KEY, WORKSPACE_ID, FakeClock

identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
identities = st.text(min_size=1, max_size=2000)
param_values = st.one_of(
    st.text(max_size=300),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=3),
)


@dataclass(frozen=True)
class User:
    id: str
    org: object


def _valid_param(value: object) -> bool:
    if isinstance(value, str):
        return value != ""
    if isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return False


def _issuer(clock: FakeClock | None = None) -> TokenIssuer:
    return TokenIssuer(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        scopes=lambda user: [PipeRead("org_events", fixed_params={"org_id": user.org})],
        clock=clock or FakeClock(),
    )


def _decode(value: str) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(value, SIGNING_KEY, algorithms=["HS256"])
    return claims


@settings(max_examples=300, deadline=None)
@given(identity=identities, org=param_values)
def test_token_for_exact_claims_or_error(identity: str, org: object) -> None:
    issuer = _issuer()
    user = User(identity, org)

    if not _valid_param(org):
        with pytest.raises(PolicyError) as excinfo:
            issuer.token_for(user)
        assert isinstance(excinfo.value.__cause__, InvalidScopeError)
        assert "org_id" in str(excinfo.value)
        assert issuer.mint_count == 0
        assert len(issuer) == 0
        return

    token = issuer.token_for(user)
    claims = _decode(token.value)
    assert claims == {
        "workspace_id": WORKSPACE_ID,
        "name": identity,
        "exp": token.expires_at,
        "scopes": [
            {
                "type": "PIPES:READ",
                "resource": "org_events",
                "fixed_params": {"org_id": org},
            }
        ],
    }
    # JSON keeps the value's type: 1, 1.0 and true stay distinct.
    scopes = claims["scopes"]
    assert isinstance(scopes, list)
    assert type(scopes[0]["fixed_params"]["org_id"]) is type(org)


@settings(max_examples=100, deadline=None)
@given(
    users=st.lists(
        st.tuples(
            st.text(min_size=1, max_size=40),
            st.one_of(st.text(min_size=1, max_size=20), st.integers(), st.booleans()),
        ),
        min_size=2,
        max_size=12,
    ),
    order=st.lists(st.integers(min_value=0, max_value=11), min_size=1, max_size=60),
)
def test_interleaved_users_never_share_tokens(
    users: list[tuple[str, object]], order: list[int]
) -> None:
    issuer = _issuer()
    # The last org seen for an identity is the one its next token must carry.
    for index in order:
        identity, org = users[index % len(users)]
        token = issuer.token_for(User(identity, org))
        claims = _decode(token.value)
        assert claims["name"] == identity
        scopes = claims["scopes"]
        assert isinstance(scopes, list)
        value = scopes[0]["fixed_params"]["org_id"]
        assert value == org
        assert type(value) is type(org)


scope_strategy: st.SearchStrategy[Scope] = st.one_of(
    st.builds(
        PipeRead,
        identifiers,
        st.one_of(
            st.none(),
            st.dictionaries(
                identifiers,
                st.one_of(
                    st.text(min_size=1, max_size=30),
                    st.integers(),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.booleans(),
                ),
                max_size=4,
            ),
        ),
    ),
    st.builds(
        DatasourceRead,
        identifiers,
        st.one_of(
            st.none(),
            st.builds(
                lambda value: sql_filter(org_id=value), st.text(min_size=1, max_size=40)
            ),
        ),
    ),
    st.builds(DatasourceAppend, identifiers),
)


@settings(max_examples=200, deadline=None)
@given(scopes=st.lists(scope_strategy, min_size=1, max_size=8))
def test_scope_lists_sign_as_given(scopes: list[Scope]) -> None:
    issuer = TokenIssuer(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        scopes=lambda user: scopes,
        clock=FakeClock(),
    )

    claims = _decode(issuer.token_for("user").value)

    assert claims["scopes"] == [scope.to_claim() for scope in scopes]


@settings(max_examples=300, deadline=None)
@given(a=scope_strategy, b=scope_strategy)
def test_scope_equality_matches_claim_json(a: Scope, b: Scope) -> None:
    same_json = json.dumps(a.to_claim(), sort_keys=True) == json.dumps(
        b.to_claim(), sort_keys=True
    )

    assert (a == b) is same_json
    if a == b:
        assert hash(a) == hash(b)


def _parse_clickhouse_string(literal: str) -> str:
    """Parse one ClickHouse single-quoted string literal, rejecting any tail."""
    assert literal[0] == "'"
    escapes = {"\\": "\\", "'": "'", "0": "\0", "b": "\b", "f": "\f"}
    escapes |= {"n": "\n", "r": "\r", "t": "\t"}
    out = []
    index = 1
    while True:
        char = literal[index]
        if char == "\\":
            out.append(escapes[literal[index + 1]])
            index += 2
        elif char == "'":
            assert index == len(literal) - 1, "literal ends before its last quote"
            return "".join(out)
        else:
            out.append(char)
            index += 1


@settings(max_examples=500, deadline=None)
@given(value=st.text())
def test_quote_literal_round_trips(value: str) -> None:
    assert _parse_clickhouse_string(quote_literal(value)) == value


@settings(max_examples=200, deadline=None)
@given(value=st.text(min_size=1), column=identifiers)
def test_sql_filter_is_one_comparison(value: str, column: str) -> None:
    condition = sql_filter(**{column: value})

    prefix = f"{column} = "
    assert condition.startswith(prefix)
    assert _parse_clickhouse_string(condition[len(prefix) :]) == value


@settings(max_examples=200, deadline=None)
@given(key=st.text(max_size=30), value=param_values)
def test_fixed_params_validated(key: str, value: object) -> None:
    valid = _valid_param(value) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key)
    if not valid:
        with pytest.raises(InvalidScopeError) as excinfo:
            PipeRead("pipe", fixed_params={key: value})  # type: ignore[dict-item]
        assert excinfo.value.field.startswith("fixed_params")
        return
    scope = PipeRead("pipe", fixed_params={key: value})  # type: ignore[dict-item]
    assert scope.fixed_params == {key: value}


@dataclass(frozen=True)
class NamedUser:
    id: str
    name: str
    rps: int | None
    scopes: tuple[Scope, ...]


@settings(max_examples=200, deadline=None)
@given(
    identity=st.text(min_size=1, max_size=200),
    name=st.text(max_size=200).filter(lambda text: text.strip() != ""),
    rps=st.one_of(st.none(), st.integers(min_value=1, max_value=2**31)),
    scopes=st.lists(scope_strategy, min_size=1, max_size=8),
)
def test_signature_equals_jwt_encode(
    identity: str, name: str, rps: int | None, scopes: list[Scope]
) -> None:
    issuer = TokenIssuer(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        scopes=lambda user: user.scopes,
        name=lambda user: user.name,
        rate_limit=lambda user: user.rps,
        clock=FakeClock(),
    )

    token = issuer.token_for(NamedUser(identity, name, rps, tuple(scopes)))

    claims = _decode(token.value)
    assert claims["name"] == name
    assert claims.get("limits") == (None if rps is None else {"rps": rps})
    assert token.value == jwt.encode(claims, SIGNING_KEY, algorithm="HS256")
