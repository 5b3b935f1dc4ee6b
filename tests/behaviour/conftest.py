"""The ``serve`` fixture: the test app on a real server, once per adapter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import SIGNING_KEY, WORKSPACE_ID, FakeClock
from tests.servers import serve_asgi, serve_wsgi

from .apps import (
    EXCLUDED,
    TOKEN_PATH,
    USER_HEADER,
    asgi_app,
    flask_app,
    issuer_for,
)

ADAPTERS = ["asgi", "flask"]


@dataclass
class Site:
    """A running test app and a client that sends no stored cookies."""

    adapter: str
    url: str
    clock: FakeClock
    client: httpx.Client

    def request(
        self,
        method: str,
        path: str,
        *,
        user: str | None = None,
        cookie: str | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request as ``user`` (``"identity:org"``) with a raw Cookie."""
        sent = dict(headers or {})
        if user is not None:
            sent[USER_HEADER] = user
        if cookie is not None:
            sent["Cookie"] = cookie
        response = self.client.request(
            method, self.url + path, params=params, headers=sent
        )
        # Each test states the cookies it sends; nothing carries over.
        self.client.cookies.clear()
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)


def decode(token: str) -> dict[str, Any]:
    """Verify and decode a delivered token as Tinybird would."""
    claims: dict[str, Any] = jwt.decode(token, SIGNING_KEY, algorithms=["HS256"])
    return claims


def _build_app(adapter: str, clock: FakeClock, options: dict[str, Any]) -> Any:
    issuer = issuer_for(clock, SIGNING_KEY, WORKSPACE_ID)
    if adapter == "flask":
        return flask_app(issuer, options)
    return asgi_app(issuer, options)


Serve = Callable[..., Site]


@pytest.fixture(params=ADAPTERS)
def serve(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[Serve]:
    """Return ``serve(**delivery_options) -> Site`` for the adapter under test.

    Every site excludes ``/public`` and serves the token endpoint at
    ``/tinybird/token``; options given here are added to those.
    """
    adapter: str = request.param
    with ExitStack() as stack, httpx.Client(timeout=10.0) as client:

        def start(**options: Any) -> Site:
            merged = {"token_path": TOKEN_PATH, "exclude_paths": EXCLUDED, **options}
            app = _build_app(adapter, clock, merged)
            serve_app = serve_wsgi if adapter == "flask" else serve_asgi
            url = stack.enter_context(serve_app(app))
            return Site(adapter, url, clock, client)

        yield start
