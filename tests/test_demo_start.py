"""The demo command line: settings from the environment and a real start-up."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from . import leak_guard
from .conftest import SIGNING_KEY, WORKSPACE_ID

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
START_TIMEOUT = 20.0
ENV = {
    "TINYBIRD_SIGNING_KEY": SIGNING_KEY,
    "TINYBIRD_WORKSPACE_ID": WORKSPACE_ID,
    "TINYBIRD_API_URL": "https://api.us-east.tinybird.co",
}


@pytest.fixture(scope="module")
def common() -> ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module("demo_common")


def test_settings_from_environment(common: ModuleType) -> None:
    settings = common.load_settings("http://127.0.0.1:8001", ENV)

    assert settings.local is False
    assert settings.signing_key == SIGNING_KEY
    assert settings.api_url == "https://api.us-east.tinybird.co"
    assert settings.pipe == "org_events"
    assert SIGNING_KEY not in repr(settings)


def test_settings_partial_environment_exits(common: ModuleType) -> None:
    partial = {"TINYBIRD_SIGNING_KEY": SIGNING_KEY}

    with pytest.raises(SystemExit) as info:
        common.load_settings("http://127.0.0.1:8001", partial)

    assert "TINYBIRD_WORKSPACE_ID, TINYBIRD_API_URL is not set" in str(info.value)
    assert SIGNING_KEY not in str(info.value)


def test_settings_generated_key_is_announced_not_logged(
    common: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tinybird_demo"):
        first = common.load_settings("http://127.0.0.1:8001", {})
        second = common.load_settings("http://127.0.0.1:8001", {})

    assert first.local is True
    assert first.api_url == "http://127.0.0.1:8001"
    assert first.signing_key != second.signing_key
    assert len(first.signing_key.encode()) >= 32
    assert "development key" in caplog.text
    assert first.signing_key not in caplog.text


def test_users_sign_in_with_demo_password(common: ModuleType) -> None:
    assert common.authenticate("alice@acme", "demo").org == "acme"
    assert common.authenticate("bob@globex", "demo").org == "globex"
    assert common.authenticate("bob@globex", "wrong") is None
    assert common.authenticate("mallory@acme", "demo") is None
    assert common.authenticate(None, "demo") is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Started:
    app_url: str
    tinybird_url: str
    lines: list[str]
    process: subprocess.Popen[str]


@pytest.fixture(params=["starlette", "flask"])
def started(request: pytest.FixtureRequest) -> Iterator[Started]:
    app_port, tinybird_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBIRD_")}
    process = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / f"{request.param}_app.py"),
            f"--port={app_port}",
            f"--tinybird-port={tinybird_port}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT
        assert process.stdout is not None
        while not any(line.startswith("INFO: Open http") for line in lines):
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"demo did not start: {lines}")
            lines.append(process.stdout.readline())
        yield Started(
            f"http://127.0.0.1:{app_port}",
            f"http://127.0.0.1:{tinybird_port}",
            lines,
            process,
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(START_TIMEOUT)
        if process.stdout is not None:
            lines.extend(process.stdout.read().splitlines())
            process.stdout.close()
        # The leak guard scans what the demo printed, as it scans in-process logs.
        leak_guard.captured.extend(("demo output", line) for line in lines)


def _get(url: str) -> httpx.Response:
    # The servers print the start-up line before they accept connections.
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            return httpx.get(url, timeout=5)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_demo_starts_both_servers(started: Started) -> None:
    page = _get(f"{started.app_url}/")
    tinybird = _get(f"{started.tinybird_url}/v0/pipes/org_events.json")

    assert page.status_code == 200
    assert "<title>" in page.text
    assert tinybird.status_code == 403
    assert any("development key generated" in line for line in started.lines)
    assert not any("p.dev-" in line for line in started.lines)


def test_demo_stops_on_sigint(started: Started) -> None:
    _get(f"{started.app_url}/")

    started.process.send_signal(signal.SIGINT)
    code = started.process.wait(START_TIMEOUT)

    assert code == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{started.tinybird_url}/", timeout=5)
