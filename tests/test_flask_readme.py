"""The README's Flask-Login example runs as printed, on a real server."""

from __future__ import annotations

import base64
import json
import re
import sys
import types
from typing import Any

import flask
import httpx
import jwt
import pytest

from tests.conftest import WORKSPACE_ID
from tests.servers import serve_wsgi
from tests.test_middleware_readme import example

# Shaped like a workspace admin token, p.<base64url JSON>.<signature>, whose
# JSON carries the workspace id that the example leaves out of its config.
_PAYLOAD = json.dumps({"u": WORKSPACE_ID, "host": "gcp-europe-west3"}).encode()
WORKSPACE_KEY = (
    "p." + base64.urlsafe_b64encode(_PAYLOAD).decode().rstrip("=") + ".signature"
)


def flask_example(monkeypatch: pytest.MonkeyPatch) -> flask.Flask:
    monkeypatch.setenv("FLASK_SECRET_KEY", "readme-session-secret")
    monkeypatch.setenv("TINYBIRD_SIGNING_KEY", WORKSPACE_KEY)
    module = types.ModuleType("readme_flask_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    code = compile(example("Flask-Login"), "README.md", "exec", dont_inherit=True)
    exec(code, module.__dict__)  # noqa: S102
    app: flask.Flask = module.app
    return app


def decode(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, WORKSPACE_KEY, algorithms=["HS256"])
    return claims


def test_readme_flask_example(monkeypatch: pytest.MonkeyPatch) -> None:
    app = flask_example(monkeypatch)

    with (
        serve_wsgi(app) as url,
        httpx.Client(base_url=url, timeout=10.0) as client,
    ):
        anonymous = client.get("/tinybird/token")
        client.get("/login/alice")
        page = client.get("/")
        endpoint = client.get("/tinybird/token")
        logged_out = client.get("/logout")

    assert anonymous.status_code == 401
    meta = re.search(r'content="([^"]+)"', page.text)
    assert meta is not None
    assert meta.group(1) == page.headers["x-tinybird-token"]
    assert decode(meta.group(1))["scopes"] == [
        {
            "type": "PIPES:READ",
            "resource": "events_by_org",
            "fixed_params": {"org_id": "acme"},
        }
    ]
    assert decode(meta.group(1))["workspace_id"] == WORKSPACE_ID
    assert endpoint.json()["token"] == meta.group(1)
    assert logged_out.text == "signed out"
    assert "x-tinybird-token" not in logged_out.headers
