"""TokenIssuer signing: the same bytes as jwt.encode, and key checks."""

from __future__ import annotations

import jwt
import pytest

from tests.conftest import SIGNING_KEY, WORKSPACE_ID, FakeClock
from tests.issuer_helpers import User, decode, make_issuer
from tinybird_asgi import (
    ConfigurationError,
    DatasourceRead,
    PipeRead,
    Scope,
    TokenIssuer,
    sql_filter,
)


def _expected_payload(
    name: str, exp: int, scopes: list[Scope], rps: int | None = None
) -> dict[str, object]:
    payload: dict[str, object] = {
        "workspace_id": WORKSPACE_ID,
        "name": name,
        "exp": exp,
        "scopes": [scope.to_claim() for scope in scopes],
    }
    if rps is not None:
        payload["limits"] = {"rps": rps}
    return payload


@pytest.mark.parametrize(
    ("username", "scopes", "rps"),
    [
        ("ana", [PipeRead("sales", fixed_params={"org_id": "acme"})], None),
        ("ana", [PipeRead("sales")], 10),
        (
            "josé ünïcode",
            [
                PipeRead("sales", fixed_params={"org_id": "o'brien", "n": 2.5}),
                DatasourceRead("events", filter=sql_filter(org_id="acme")),
            ],
            5,
        ),
    ],
)
def test_token_matches_jwt_encode_bytes(
    clock: FakeClock, username: str, scopes: list[Scope], rps: int | None
) -> None:
    issuer = make_issuer(clock, scopes=lambda user: scopes, rate_limit=rps)

    token = issuer.token_for(User(username))

    payload = _expected_payload(username, token.expires_at, scopes, rps)
    assert token.value == jwt.encode(payload, SIGNING_KEY, algorithm="HS256")
    assert decode(token)["name"] == username


def test_rotated_key_signs_with_new_key(clock: FakeClock) -> None:
    issuer = make_issuer(clock)
    new_key = SIGNING_KEY + "-rotated"

    issuer.rotate_signing_key(new_key)
    token = issuer.token_for(User("ana"))

    assert decode(token, new_key)["name"] == "ana"
    with pytest.raises(jwt.InvalidSignatureError):
        decode(token, SIGNING_KEY)


@pytest.mark.parametrize(
    "key",
    [
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0B\n-----END PUBLIC KEY-----\n",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC0123456789 user@host",
    ],
)
def test_asymmetric_key_rejected_at_start(clock: FakeClock, key: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        TokenIssuer(
            signing_key=key,
            workspace_id=WORKSPACE_ID,
            scopes=[PipeRead("sales")],
            clock=clock,
        )

    assert raised.value.option == "signing_key"
    assert key not in str(raised.value)
