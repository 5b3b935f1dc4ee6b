"""Fixtures shared by every test module."""

from __future__ import annotations

import pytest

# A signing key shaped like a Tinybird workspace admin token is not needed by
# most tests; any string of 32 bytes or more is a valid HS256 key.
SIGNING_KEY = "p.test-signing-key-0123456789abcdefghijklmnopqrstuvwxyz"
WORKSPACE_ID = "6a5b2c1d-0e9f-4a8b-9c7d-1e2f3a4b5c6d"
START = 1_800_000_000.0


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
