"""TinybirdJWT with async callbacks, which Flask cannot await."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import flask
import pytest

from tests.behaviour.apps import TestUser
from tests.conftest import SIGNING_KEY, WORKSPACE_ID, FakeClock
from tests.test_flask import ALICE, HEADER, fetch, make_app, org_scopes
from tinybird_asgi import ConfigurationError, PipeRead, TokenIssuer
from tinybird_flask import TinybirdJWT


async def async_scopes(user: TestUser) -> list[PipeRead]:
    return org_scopes(user)


async def async_identity(user: TestUser) -> str:
    return user.identity


async def async_rate_limit(user: TestUser) -> int:
    return 10


class AsyncPolicy:
    """A callable object whose ``__call__`` is a coroutine function."""

    async def __call__(self, user: TestUser) -> list[PipeRead]:
        return org_scopes(user)


def issuer_with(clock: FakeClock, **callbacks: Any) -> TokenIssuer:
    options: dict[str, Any] = {"scopes": org_scopes, **callbacks}
    return TokenIssuer(
        signing_key=SIGNING_KEY, workspace_id=WORKSPACE_ID, clock=clock, **options
    )


def only_record(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    records = [r for r in caplog.records if r.name == "tinybird_flask"]
    assert len(records) == 1
    return records[0]


def add_rendered_route(app: flask.Flask) -> None:
    """Add ``/rendered``, a template that calls ``tinybird_token()``."""

    @app.route("/rendered")
    def rendered() -> str:
        return flask.render_template_string("{{ tinybird_token() is none }}")


def assert_sync_advice(record: logging.LogRecord) -> None:
    message = record.getMessage()
    assert record.levelno == logging.ERROR
    assert "returned an awaitable" in message
    assert "synchronous" in message
    assert "atoken_for" not in message
    assert record.exc_info is None


# Rejected at set-up


@pytest.mark.parametrize(
    ("option", "callback"),
    [
        ("scopes", async_scopes),
        ("identity", async_identity),
        ("name", async_identity),
        ("rate_limit", async_rate_limit),
    ],
)
def test_issuer_async_callback_rejected(
    option: str, callback: Callable[[TestUser], Awaitable[Any]], clock: FakeClock
) -> None:
    issuer = issuer_with(clock, **{option: callback})

    with pytest.raises(ConfigurationError) as raised:
        TinybirdJWT(issuer=issuer)

    assert raised.value.option == "issuer"
    assert f"async callbacks ({option})" in str(raised.value)
    assert issuer.async_callbacks == (option,)


def test_issuer_sync_callbacks_accepted(clock: FakeClock) -> None:
    issuer = issuer_with(clock, identity=lambda user: user.identity, rate_limit=5)

    TinybirdJWT(flask.Flask(__name__), issuer=issuer)

    assert issuer.async_callbacks == ()


def test_async_callback_rejected(clock: FakeClock) -> None:
    tinybird = TinybirdJWT(clock=clock)

    async def policy(user: TestUser) -> list[PipeRead]:
        return org_scopes(user)

    with pytest.raises(ConfigurationError) as raised:
        tinybird.scopes_policy(policy)  # type: ignore[arg-type]

    assert raised.value.option == "scopes_policy"
    assert "async" in str(raised.value)


def test_async_callable_object_rejected(clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError) as raised:
        TinybirdJWT(scopes_policy=AsyncPolicy(), clock=clock)  # type: ignore[arg-type]

    assert raised.value.option == "scopes_policy"


# Callbacks that return an awaitable while serving


def test_policy_returning_coroutine_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    tinybird = TinybirdJWT(clock=clock)
    tinybird.scopes_policy(lambda user: async_scopes(user))  # type: ignore[arg-type,return-value]
    app = make_app(tinybird)

    with caplog.at_level(logging.ERROR, logger="tinybird_flask"):
        response = fetch(app)

    assert response.status_code == 200
    assert response.text == "ok"
    assert HEADER not in response.headers
    assert_sync_advice(only_record(caplog))


def test_issuer_policy_returning_coroutine_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    issuer = issuer_with(clock, scopes=lambda user: async_scopes(user))
    app = make_app(TinybirdJWT(issuer=issuer))
    add_rendered_route(app)

    with caplog.at_level(logging.ERROR, logger="tinybird_flask"):
        response = fetch(app, "/rendered")

    assert response.text == "True"
    assert HEADER not in response.headers
    assert_sync_advice(only_record(caplog))


def test_loader_returning_coroutine_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def load() -> TestUser:
        return ALICE

    tinybird = TinybirdJWT(scopes_policy=org_scopes, clock=clock)
    tinybird.principal_loader(lambda: load())
    app = make_app(tinybird)
    add_rendered_route(app)

    with caplog.at_level(logging.ERROR, logger="tinybird_flask"):
        response = fetch(app, "/rendered")

    assert response.text == "True"
    assert HEADER not in response.headers
    assert_sync_advice(only_record(caplog))
