"""Helpers for the ASGI middleware tests: an issuer on the fake clock, JWT
decoding and raw ASGI calls."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from tests.conftest import SIGNING_KEY, WORKSPACE_ID, FakeClock
from tests.servers import serve_asgi
from tinybird_asgi import PipeRead, Scope, TokenIssuer
from tinybird_asgi._asgi_types import ASGIApp, ASGIScope, Message

API_URL = "https://api.tinybird.co"

# Runs an ASGI app under uvicorn on 127.0.0.1 and yields its base URL.
serve = serve_asgi


@dataclass
class OrgUser:
    """A signed-in user who belongs to one organisation at a time."""

    username: str
    org: str
    is_authenticated: bool = True


def org_scopes(user: OrgUser) -> list[Scope]:
    """Scope each token to the user's current organisation."""
    return [PipeRead("events", fixed_params={"org_id": user.org})]


def make_issuer(clock: FakeClock, **options: Any) -> TokenIssuer:
    """Build an issuer on ``clock`` that scopes tokens by organisation."""
    options.setdefault("scopes", org_scopes)
    return TokenIssuer(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        api_url=API_URL,
        clock=clock,
        **options,
    )


def decode(value: str) -> dict[str, Any]:
    """Verify and decode a token as Tinybird does (HS256, admin token key)."""
    claims: dict[str, Any] = jwt.decode(value, SIGNING_KEY, algorithms=["HS256"])
    return claims


def http_scope(
    path: str = "/",
    *,
    method: str = "GET",
    headers: Sequence[tuple[bytes, bytes]] = (),
    **extra: Any,
) -> ASGIScope:
    """Build an HTTP request scope as a server would."""
    scope: ASGIScope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    scope.update(extra)
    return scope


async def call(
    app: ASGIApp, scope: ASGIScope, incoming: Iterable[Message] = ()
) -> list[Message]:
    """Run ``app`` on ``scope`` and return every message it sends."""
    pending = list(incoming) or [
        {"type": "http.request", "body": b"", "more_body": False}
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def header_values(message: Message, name: str) -> list[str]:
    """Return the values of every ``name`` line of a response start message."""
    lower = name.lower().encode()
    return [
        value.decode("latin-1")
        for key, value in message.get("headers", ())
        if key.lower() == lower
    ]
