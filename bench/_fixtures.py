"""The principal, policy and issuer that every benchmark section shares."""

from __future__ import annotations

import time
from typing import Any

import jwt

from tinybird_asgi import PipeRead, Scope, TokenIssuer

# Any string of at least 32 bytes is a valid HS256 key; no Tinybird call is made.
SIGNING_KEY = "p.bench-signing-key-0123456789abcdefghijklmnopqrstuvwxyz"
WORKSPACE_ID = "6a5b2c1d-0e9f-4a8b-9c7d-1e2f3a4b5c6d"
PIPE = "org_events"
TTL = 3600
HEADER_NAME = "X-Tinybird-Token"


class User:
    """A signed-in user as an authentication layer would put it on the scope."""

    __slots__ = ("org_id", "username")
    is_authenticated = True

    def __init__(self, username: str, org_id: str) -> None:
        self.username = username
        self.org_id = org_id


def user(index: int) -> User:
    """Return the ``index``-th user; users share one organisation per 100."""
    return User(f"user-{index}", f"org-{index // 100}")


def org_policy(principal: User) -> list[Scope]:
    """Build the user's scopes from their organisation, as apps do per request."""
    return [PipeRead(PIPE, fixed_params={"org_id": principal.org_id})]


def make_issuer(*, max_cached: int = 10_000) -> TokenIssuer:
    """Return an issuer with the policy above and the library defaults."""
    return TokenIssuer(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        scopes=org_policy,
        ttl=TTL,
        max_cached=max_cached,
    )


def raw_payload(principal: User, exp: int) -> dict[str, Any]:
    """Return the claims a hand-rolled integration signs for ``principal``."""
    return {
        "workspace_id": WORKSPACE_ID,
        "name": principal.username,
        "exp": exp,
        "scopes": [
            {
                "type": "PIPES:READ",
                "resource": PIPE,
                "fixed_params": {"org_id": principal.org_id},
            }
        ],
    }


def hand_rolled_token(principal: User) -> str:
    """Sign a token the way integrations without this library do: every call."""
    payload = raw_payload(principal, int(time.time()) + TTL)
    payload["scopes"] = [scope.to_claim() for scope in org_policy(principal)]
    return jwt.encode(payload, SIGNING_KEY, algorithm="HS256")
