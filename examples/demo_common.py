"""Users, sample rows and settings shared by the Starlette and Flask demos.

Without Tinybird settings the demos sign with a development key generated at
start-up and serve :class:`tinybird_asgi.testing.LocalTinybird` with the
sample rows below on a second loopback port. With ``TINYBIRD_SIGNING_KEY``,
``TINYBIRD_WORKSPACE_ID`` and ``TINYBIRD_API_URL`` set, tokens are signed for
that workspace and the page queries real Tinybird, whose ``TINYBIRD_PIPE``
pipe (default ``org_events``) must take an ``org_id`` parameter.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinybird_asgi import PipeRead, Scope, TokenIssuer
from tinybird_asgi.testing import LocalTinybird

__all__ = [
    "CLIENT_JS",
    "DEMO_JS",
    "INDEX_HTML",
    "PASSWORD",
    "TOKEN_PATH",
    "USERS",
    "DemoSettings",
    "DemoUser",
    "authenticate",
    "build_issuer",
    "build_local_tinybird",
    "form_post_rejection",
    "load_settings",
    "log_start",
    "page_config",
    "parse_args",
    "sample_rows",
    "scopes_for",
]

logger = logging.getLogger("tinybird_demo")

HERE = Path(__file__).resolve().parent
INDEX_HTML = HERE / "static" / "index.html"
CLIENT_JS = HERE / "tinybird-client.js"
DEMO_JS = HERE / "static" / "demo.js"

TOKEN_PATH = "/tinybird/token"
"""Path of the token endpoint the page refreshes its token from."""

PASSWORD = "demo"
"""The password of every demo user."""

# Short enough that the page visibly refreshes its token while it is open.
TOKEN_TTL = 600.0
REFRESH_MARGIN = 60.0
RATE_LIMIT_RPS = 5
"""Requests per second each user's token may make (Tinybird ``limits.rps``)."""

_ENV_KEYS = ("TINYBIRD_SIGNING_KEY", "TINYBIRD_WORKSPACE_ID", "TINYBIRD_API_URL")


@dataclass(frozen=True, slots=True)
class DemoUser:
    """A signed-in demo user; Flask-Login and the issuer read these fields."""

    email: str
    name: str
    org: str

    is_authenticated = True
    is_active = True
    is_anonymous = False

    @property
    def identity(self) -> str:
        return self.email

    def get_id(self) -> str:
        return self.email

    def as_json(self) -> dict[str, str]:
        return {"email": self.email, "name": self.name, "org": self.org}


USERS: dict[str, DemoUser] = {
    user.email: user
    for user in (
        DemoUser("alice@acme", "Alice", "acme"),
        DemoUser("bob@globex", "Bob", "globex"),
    )
}


def authenticate(email: object, password: object) -> DemoUser | None:
    """Return the user for a correct email and password, else ``None``."""
    if not isinstance(email, str) or not isinstance(password, str):
        return None
    user = USERS.get(email.strip().lower())
    if user is None or not hmac.compare_digest(password.encode(), PASSWORD.encode()):
        return None
    return user


def form_post_rejection(
    content_type: str | None, origin: str | None, own_origin: str
) -> tuple[int, str] | None:
    """Return the status and error for a sign-in or sign-out POST to reject.

    Only ``application/json`` bodies are accepted (415 otherwise), because a
    cross-site HTML form can send ``text/plain`` that still parses as JSON but
    cannot send ``application/json`` without a CORS preflight. An ``Origin``
    header, when present, must be ``own_origin`` (403 otherwise).
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        return 415, "Send the body as Content-Type: application/json."
    if origin is not None and origin.rstrip("/") != own_origin.rstrip("/"):
        return 403, "Cross-origin request rejected."
    return None


def sample_rows() -> list[dict[str, Any]]:
    """Return the ``org_events`` rows of three organisations.

    ``initech`` has no demo user, so its rows must never reach the page.
    """
    events = ("page_view", "signup", "purchase")
    rows = []
    for org_number, org in enumerate(("acme", "globex", "initech")):
        for day in range(1, 5):
            for event_number, event in enumerate(events):
                count = (org_number + 1) * 100 + day * 10 + event_number * 3
                rows.append(
                    {
                        "org_id": org,
                        "day": f"2026-12-0{day}",
                        "event": event,
                        "count": count,
                    }
                )
    return rows


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """Tinybird settings of a demo run: signing key, workspace, API URL, pipe."""

    signing_key: str
    workspace_id: str
    api_url: str
    pipe: str
    local: bool
    """Whether the demo serves its own LocalTinybird endpoint."""

    def __repr__(self) -> str:
        return (
            f"DemoSettings(workspace_id={self.workspace_id!r}, "
            f"api_url={self.api_url!r}, pipe={self.pipe!r}, local={self.local})"
        )


def load_settings(
    local_api_url: str, environ: Mapping[str, str] | None = None
) -> DemoSettings:
    """Read the Tinybird settings, or make development ones for a local endpoint.

    :raises SystemExit: when only some of the three variables are set.
    """
    env = os.environ if environ is None else environ
    pipe = env.get("TINYBIRD_PIPE", "org_events")
    present = [key for key in _ENV_KEYS if env.get(key)]
    if len(present) == len(_ENV_KEYS):
        logger.info(
            "Using Tinybird at %s (workspace %s, pipe %s)",
            env["TINYBIRD_API_URL"],
            env["TINYBIRD_WORKSPACE_ID"],
            pipe,
        )
        return DemoSettings(
            env["TINYBIRD_SIGNING_KEY"],
            env["TINYBIRD_WORKSPACE_ID"],
            env["TINYBIRD_API_URL"],
            pipe,
            local=False,
        )
    if present:
        missing = ", ".join(key for key in _ENV_KEYS if key not in present)
        raise SystemExit(
            f"Tinybird settings are incomplete: {missing} is not set; set all of "
            f"{', '.join(_ENV_KEYS)} to use Tinybird, or none for the local demo."
        )

    logger.warning(
        "No Tinybird settings: signing tokens with a development key generated "
        "for this run and serving sample data at %s",
        local_api_url,
    )
    return DemoSettings(
        signing_key="p.dev-" + secrets.token_urlsafe(48),
        workspace_id=str(uuid.uuid4()),
        api_url=local_api_url,
        pipe=pipe,
        local=True,
    )


def scopes_for(pipe: str) -> Callable[[Any], list[Scope]]:
    """Return the scopes policy: read ``pipe`` for the user's own org only."""

    def policy(user: Any) -> list[Scope]:
        return [PipeRead(pipe, fixed_params={"org_id": user.org})]

    return policy


def build_issuer(
    settings: DemoSettings,
    *,
    clock: Callable[[], float] = time.time,
    ttl: float = TOKEN_TTL,
    refresh_margin: float = REFRESH_MARGIN,
) -> TokenIssuer:
    """Return the issuer of the demo: one token per user, rate-limited per user."""
    return TokenIssuer(
        signing_key=settings.signing_key,
        workspace_id=settings.workspace_id,
        api_url=settings.api_url,
        scopes=scopes_for(settings.pipe),
        ttl=ttl,
        refresh_margin=refresh_margin,
        rate_limit=RATE_LIMIT_RPS,
        clock=clock,
    )


def build_local_tinybird(
    settings: DemoSettings, *, clock: Callable[[], float] = time.time
) -> LocalTinybird:
    """Return the local pipe endpoint that replaces Tinybird in the demo."""
    return LocalTinybird(
        signing_key=settings.signing_key,
        workspace_id=settings.workspace_id,
        pipes={settings.pipe: sample_rows()},
        clock=clock,
    )


def page_config(settings: DemoSettings) -> dict[str, Any]:
    """Return what the page needs to know besides the user."""
    return {
        "api_url": settings.api_url,
        "pipe": settings.pipe,
        "mode": "local" if settings.local else "tinybird",
        "token_path": TOKEN_PATH,
    }


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the demo's command line and set up logging to stderr."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1", help="app address")
    parser.add_argument("--port", type=int, default=8000, help="app port")
    parser.add_argument(
        "--tinybird-port",
        type=int,
        default=8001,
        help="port of the local Tinybird endpoint on 127.0.0.1",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    return args


def log_start(args: argparse.Namespace) -> None:
    """Log where to open the demo and whom to sign in as."""
    logger.info(
        "Open http://%s:%d and sign in as %s (password: %s)",
        args.host,
        args.port,
        " or ".join(USERS),
        PASSWORD,
    )
