"""The leak guard plugin detects secrets in captured text."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tinybird_asgi import PipeRead, TokenIssuer

from . import leak_guard
from .conftest import SIGNING_KEY, WORKSPACE_ID


@pytest.fixture
def isolated_capture() -> Iterator[None]:
    # Entries added by these tests are removed again, so the session-wide scan
    # sees only what the rest of the suite logged.
    captured = list(leak_guard.captured)
    yield
    leak_guard.captured[:] = captured


@pytest.mark.usefixtures("isolated_capture")
def test_leak_guard_detects_logged_token() -> None:
    issuer = TokenIssuer(
        signing_key=SIGNING_KEY, workspace_id=WORKSPACE_ID, scopes=[PipeRead("p")]
    )
    token = issuer.token_for("alice")
    before = len(leak_guard.find_leaks())

    logging.getLogger("tests.leak").warning("issued %s", token.value)

    assert token.value in leak_guard.tokens
    assert len(leak_guard.find_leaks()) == before + 1


@pytest.mark.usefixtures("isolated_capture")
def test_leak_guard_detects_signing_key() -> None:
    TokenIssuer(
        signing_key=SIGNING_KEY, workspace_id=WORKSPACE_ID, scopes=[PipeRead("p")]
    )
    before = len(leak_guard.find_leaks())

    logging.getLogger("tests.leak").error("key is %s", SIGNING_KEY)

    assert SIGNING_KEY in leak_guard.signing_keys
    assert len(leak_guard.find_leaks()) == before + 1


def test_leak_guard_captures_project_debug_records() -> None:
    issuer = TokenIssuer(
        signing_key=SIGNING_KEY, workspace_id=WORKSPACE_ID, scopes=[PipeRead("p")]
    )
    before = len(leak_guard.captured)

    issuer.token_for("bob")

    new = leak_guard.captured[before:]
    assert any(source == "log tinybird_asgi:DEBUG" for source, _ in new)


def test_leak_guard_captures_reprs() -> None:
    before = len(leak_guard.captured)

    issuer = TokenIssuer(
        signing_key=SIGNING_KEY, workspace_id=WORKSPACE_ID, scopes=[PipeRead("p")]
    )
    token = issuer.token_for("carol")

    new = dict(leak_guard.captured[before:])
    assert new["repr TokenIssuer"] == repr(issuer)
    assert new["repr TinybirdToken"] == repr(token)
