"""Fixtures shared by every test module."""

from __future__ import annotations

import time

import pytest

# A signing key shaped like a Tinybird workspace admin token is not needed by
# most tests; any string of 32 bytes or more is a valid HS256 key.
SIGNING_KEY = "p.test-signing-key-0123456789abcdefghijklmnopqrstuvwxyz"
WORKSPACE_ID = "6a5b2c1d-0e9f-4a8b-9c7d-1e2f3a4b5c6d"
# The fake clock starts at a UTC midnight one to two days ahead, so it is a
# multiple of every exp step the tests use, and PyJWT (which checks exp
# against the real time) accepts the tokens it signs, on any date.
START = float((int(time.time()) // 86400 + 2) * 86400)


class FakeClock:
    """A settable clock in Unix seconds, for ``TokenIssuer(clock=...)``."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


pytest_plugins = ["tests.leak_guard"]
