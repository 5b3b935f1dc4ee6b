"""The README's Starlette and FastAPI examples run as printed."""

from __future__ import annotations

import json
import re
import sys
import types
from base64 import b64encode
from pathlib import Path
from typing import Any

import httpx
import itsdangerous
import pytest

from tests.asgi_support import decode
from tests.conftest import SIGNING_KEY, WORKSPACE_ID

README = Path(__file__).resolve().parent.parent / "README.md"


def example(heading: str) -> str:
    """Return the first Python block after ``### heading`` in the README."""
    text = README.read_text()
    start = text.index(f"\n### {heading}\n")
    match = re.compile(r"```python\n(.*?)```", re.DOTALL).search(text, start)
    assert match is not None
    return match.group(1)


def run_example(heading: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TINYBIRD_SIGNING_KEY", SIGNING_KEY)
    monkeypatch.setenv("TINYBIRD_WORKSPACE_ID", WORKSPACE_ID)
    # A registered module, as dataclasses and FastAPI look names up there.
    module = types.ModuleType("readme_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    code = compile(example(heading), "README.md", "exec", dont_inherit=True)
    exec(code, module.__dict__)  # noqa: S102
    return module.app


async def test_readme_starlette_example(monkeypatch: pytest.MonkeyPatch) -> None:
    app = run_example("Starlette", monkeypatch)
    signer = itsdangerous.TimestampSigner("change-me")
    session = signer.sign(b64encode(json.dumps({"username": "alice"}).encode()))
    transport = httpx.ASGITransport(app)

    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        anonymous = await client.get("/")
        client.cookies.set("session", session.decode())
        signed_in = await client.get("/")

    assert anonymous.json() == {"signed_in": False}
    assert "x-tinybird-token" not in anonymous.headers
    assert signed_in.json() == {"signed_in": True}
    claims = decode(signed_in.headers["x-tinybird-token"])
    assert claims["scopes"] == [
        {
            "type": "PIPES:READ",
            "resource": "user_events",
            "fixed_params": {"username": "alice"},
        }
    ]
    assert signed_in.headers["x-tinybird-token-expires"] == str(claims["exp"])


async def test_readme_fastapi_example(monkeypatch: pytest.MonkeyPatch) -> None:
    app = run_example("FastAPI", monkeypatch)
    transport = httpx.ASGITransport(app)

    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        rejected = await client.get("/api/me", headers={"X-API-Key": "wrong"})
        accepted = await client.get("/api/me", headers={"X-API-Key": "key-for-alice"})

    assert rejected.status_code == 401
    assert "x-tinybird-token" not in rejected.headers
    assert accepted.json() == {"id": "alice"}
    claims = decode(accepted.headers["x-tinybird-token"])
    assert claims["name"] == "alice"
    assert claims["scopes"][0]["fixed_params"] == {"org_id": "acme"}
