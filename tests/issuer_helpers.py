"""A principal, a policy and issuer helpers shared by the issuer tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt

from tests.conftest import SIGNING_KEY, WORKSPACE_ID, FakeClock
from tinybird_asgi import PipeRead, Scope, TinybirdToken, TokenIssuer


@dataclass
class User:
    """A signed-in user whose identity is ``username`` and tenant ``org_id``."""

    username: str
    org_id: str | None = "acme"
    is_authenticated: bool = True


def org_policy(user: User) -> list[Scope]:
    """Grant the ``sales`` pipe, fixed to the user's organisation."""
    return [PipeRead("sales", fixed_params={"org_id": user.org_id})]  # type: ignore[dict-item]


def make_issuer(clock: FakeClock, **options: Any) -> TokenIssuer:
    """Build an issuer with the test key, workspace and ``org_policy``."""
    options.setdefault("signing_key", SIGNING_KEY)
    options.setdefault("workspace_id", WORKSPACE_ID)
    options.setdefault("scopes", org_policy)
    return TokenIssuer(clock=clock, **options)


def decode(token: TinybirdToken, key: str = SIGNING_KEY) -> dict[str, Any]:
    """Verify and decode a token as Tinybird does: HS256 with the key."""
    claims: dict[str, Any] = jwt.decode(token.value, key, algorithms=["HS256"])
    return claims
