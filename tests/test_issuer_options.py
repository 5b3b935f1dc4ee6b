"""TokenIssuer option validation, key payload reading and from_env."""

from __future__ import annotations

import base64
import json
import logging
import math
from datetime import timedelta
from typing import Any

import jwt
import pytest

from tests.conftest import SIGNING_KEY, WORKSPACE_ID, FakeClock
from tinybird_asgi import (
    ConfigurationError,
    PipeRead,
    TokenIssuer,
)

SCOPES = [PipeRead("sales")]
OTHER_WORKSPACE = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"


def admin_token(payload: dict[str, Any]) -> str:
    """Build a key shaped like a Tinybird workspace admin token."""
    encoded = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
    return f"p.{encoded.rstrip('=')}.3kq1sYJY0ZB8pS6wLVmX2tNCa7DfHgR4uEoWn9cTbIz"


def build(**options: Any) -> TokenIssuer:
    options.setdefault("signing_key", SIGNING_KEY)
    options.setdefault("workspace_id", WORKSPACE_ID)
    options.setdefault("scopes", SCOPES)
    return TokenIssuer(**options)


def option_error(**options: Any) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        build(**options)
    return caught.value


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        TokenIssuer(SIGNING_KEY, SCOPES)  # type: ignore[call-arg]


def test_defaults() -> None:
    issuer = build()

    assert issuer.ttl == 3600
    assert issuer.refresh_margin == 300
    assert issuer.exp_step == 300
    assert issuer.api_url == "https://api.tinybird.co"
    assert issuer.workspace_id == WORKSPACE_ID
    assert issuer.mint_count == 0


def test_issuer_truthy_when_empty() -> None:
    issuer = build()

    assert len(issuer) == 0
    assert bool(issuer)


def test_configuration_error_is_value_error() -> None:
    assert isinstance(option_error(signing_key=""), ValueError)


# signing_key


@pytest.mark.parametrize("key", ["", "   ", "\n\t"], ids=repr)
def test_signing_key_empty(key: str) -> None:
    error = option_error(signing_key=key)

    assert error.option == "signing_key"
    assert "empty" in str(error)


def test_signing_key_short() -> None:
    error = option_error(signing_key="p.short-key")

    assert error.option == "signing_key"
    assert "shorter than 32 bytes" in str(error)
    assert "p.short-key" not in str(error)


def test_signing_key_short_after_strip() -> None:
    error = option_error(signing_key=" " * 20 + "x" * 31 + " " * 20)

    assert error.option == "signing_key"


def test_signing_key_32_bytes_accepted() -> None:
    assert build(signing_key="k" * 32).mint_count == 0


@pytest.mark.parametrize("key", [None, b"p." + b"x" * 40, 12345], ids=repr)
def test_signing_key_not_str(key: object) -> None:
    error = option_error(signing_key=key)

    assert error.option == "signing_key"
    assert "must be the workspace admin token as a str" in str(error)


# workspace_id


def test_workspace_id_from_key() -> None:
    key = admin_token({"u": WORKSPACE_ID, "id": "t1", "host": "gcp-europe-west3"})

    issuer = TokenIssuer(signing_key=key, scopes=SCOPES)

    assert issuer.workspace_id == WORKSPACE_ID


def test_workspace_id_explicit_wins() -> None:
    key = admin_token({"u": OTHER_WORKSPACE})

    issuer = TokenIssuer(signing_key=key, workspace_id=WORKSPACE_ID, scopes=SCOPES)

    assert issuer.workspace_id == WORKSPACE_ID


def test_workspace_id_in_token_claims(clock: FakeClock) -> None:
    key = admin_token({"u": WORKSPACE_ID})
    issuer = TokenIssuer(signing_key=key, scopes=SCOPES, clock=clock)

    token = issuer.token_for("alice")

    claims = jwt.decode(token.value, key, algorithms=["HS256"])
    assert claims["workspace_id"] == WORKSPACE_ID


def test_workspace_id_normalised() -> None:
    assert build(workspace_id=f" {WORKSPACE_ID.upper()} ").workspace_id == WORKSPACE_ID


def test_workspace_id_missing() -> None:
    error = option_error(workspace_id=None)

    assert error.option == "workspace_id"
    assert "TINYBIRD_WORKSPACE_ID" in str(error)


def test_workspace_id_missing_from_key_payload() -> None:
    key = admin_token({"id": "t1", "host": "gcp-europe-west3"})

    with pytest.raises(ConfigurationError) as caught:
        TokenIssuer(signing_key=key, scopes=SCOPES)

    assert caught.value.option == "workspace_id"


@pytest.mark.parametrize("value", ["acme", "", "6a5b2c1d-0e9f"], ids=repr)
def test_workspace_id_not_uuid(value: str) -> None:
    error = option_error(workspace_id=value)

    assert error.option == "workspace_id"
    assert "is not a UUID" in str(error)


def test_workspace_id_not_str() -> None:
    assert option_error(workspace_id=42).option == "workspace_id"


@pytest.mark.parametrize("value", ["acme", 42], ids=repr)
def test_workspace_id_bad_in_key(value: object) -> None:
    key = admin_token({"u": value})

    with pytest.raises(
        ConfigurationError, match="signing key's workspace id"
    ) as caught:
        TokenIssuer(signing_key=key, scopes=SCOPES)

    assert caught.value.option == "workspace_id"


def test_workspace_id_swapped_key_not_echoed() -> None:
    # A UUID of its own: the leak guard records every signing key, and the
    # suite's WORKSPACE_ID legitimately appears in other messages.
    swapped_workspace = "0f0e0d0c-0b0a-4908-8706-050403020100"
    with pytest.raises(ConfigurationError) as caught:
        TokenIssuer(
            signing_key=swapped_workspace, workspace_id=SIGNING_KEY, scopes=SCOPES
        )

    message = str(caught.value)
    assert caught.value.option == "workspace_id"
    assert SIGNING_KEY[:8] not in message
    assert f"a str of {len(SIGNING_KEY)} characters" in message


@pytest.mark.parametrize("option", ["workspace_id", "api_url"])
def test_invalid_option_value_not_echoed(option: str) -> None:
    error = option_error(**{option: SIGNING_KEY})

    assert error.option == option
    assert SIGNING_KEY[:8] not in str(error)
    assert SIGNING_KEY[-8:] not in str(error)


# api_url


@pytest.mark.parametrize(
    ("slug", "url"),
    [
        ("gcp-europe-west3", "https://api.tinybird.co"),
        ("gcp-europe-west2", "https://api.europe-west2.gcp.tinybird.co"),
        ("gcp-us-east4", "https://api.us-east.tinybird.co"),
        (
            "gcp-northamerica-northeast2",
            "https://api.northamerica-northeast2.gcp.tinybird.co",
        ),
        ("aws-eu-central-1", "https://api.eu-central-1.aws.tinybird.co"),
        ("aws-eu-west-1", "https://api.eu-west-1.aws.tinybird.co"),
        ("aws-us-east-1", "https://api.us-east.aws.tinybird.co"),
        ("aws-us-west-2", "https://api.us-west-2.aws.tinybird.co"),
        ("local", "http://localhost:7181"),
    ],
)
def test_api_url_from_key_slug(slug: str, url: str) -> None:
    key = admin_token({"u": WORKSPACE_ID, "host": slug})

    assert TokenIssuer(signing_key=key, scopes=SCOPES).api_url == url


def test_api_url_unknown_slug() -> None:
    key = admin_token({"u": WORKSPACE_ID, "host": "gcp-mars-north1"})

    with pytest.raises(ConfigurationError, match="gcp-mars-north1") as caught:
        TokenIssuer(signing_key=key, scopes=SCOPES)

    assert caught.value.option == "api_url"


def test_api_url_explicit_beats_unknown_slug() -> None:
    key = admin_token({"u": WORKSPACE_ID, "host": "gcp-mars-north1"})

    issuer = TokenIssuer(
        signing_key=key, scopes=SCOPES, api_url="https://tb.example.com"
    )

    assert issuer.api_url == "https://tb.example.com"


def test_api_url_explicit_beats_slug() -> None:
    key = admin_token({"u": WORKSPACE_ID, "host": "aws-us-west-2"})

    issuer = TokenIssuer(
        signing_key=key, scopes=SCOPES, api_url="http://localhost:7181"
    )

    assert issuer.api_url == "http://localhost:7181"


def test_api_url_default_without_host() -> None:
    key = admin_token({"u": WORKSPACE_ID})

    assert (
        TokenIssuer(signing_key=key, scopes=SCOPES).api_url == "https://api.tinybird.co"
    )


def test_api_url_trailing_slash_stripped() -> None:
    assert (
        build(api_url=" https://api.tinybird.co/ ").api_url == "https://api.tinybird.co"
    )


@pytest.mark.parametrize(
    "url",
    [
        "api.tinybird.co",
        "ftp://api.tinybird.co",
        "https://",
        "https://user:secret@api.tinybird.co",
        "https://api.tinybird.co/?token=x",
        "https://api.tinybird.co/#top",
        b"https://api.tinybird.co",
    ],
    ids=repr,
)
def test_api_url_rejected(url: object) -> None:
    assert option_error(api_url=url).option == "api_url"


def test_api_url_credentials_not_echoed() -> None:
    assert "secret" not in str(option_error(api_url="https://u:secret@tb.example"))


# ttl, refresh_margin, exp_step


def test_ttl_timedelta() -> None:
    issuer = build(ttl=timedelta(hours=2), refresh_margin=timedelta(minutes=10))

    assert issuer.ttl == 7200
    assert issuer.refresh_margin == 600
    assert issuer.exp_step == 600


def test_ttl_24_hours_accepted() -> None:
    assert build(ttl=86400).ttl == 86400


def test_ttl_over_24_hours_rejected() -> None:
    error = option_error(ttl=86401)

    assert error.option == "ttl"
    assert "allow_long_ttl=True" in str(error)


def test_ttl_over_24_hours_allowed() -> None:
    assert build(ttl=timedelta(days=7), allow_long_ttl=True).ttl == 7 * 86400


def test_ttl_milliseconds_rejected_even_allowed() -> None:
    error = option_error(ttl=3_600_000 * 24, allow_long_ttl=True)

    assert error.option == "ttl"
    assert "milliseconds" in str(error)


@pytest.mark.parametrize(
    "ttl", [0, 0.5, -60, math.nan, math.inf, "3600", None, True], ids=repr
)
def test_ttl_rejected(ttl: object) -> None:
    assert option_error(ttl=ttl).option == "ttl"


def test_allow_long_ttl_not_bool() -> None:
    assert option_error(allow_long_ttl="yes").option == "allow_long_ttl"


@pytest.mark.parametrize("margin", [3600, 4000, -1, "300", math.nan], ids=repr)
def test_refresh_margin_rejected(margin: object) -> None:
    assert option_error(ttl=3600, refresh_margin=margin).option == "refresh_margin"


def test_refresh_margin_zero_accepted() -> None:
    issuer = build(refresh_margin=0)

    assert issuer.refresh_margin == 0
    assert issuer.exp_step == 1


def test_refresh_margin_fractional_default_step() -> None:
    issuer = build(refresh_margin=90.5)

    assert issuer.exp_step == 90


@pytest.mark.parametrize("step", [0, 1.5, -300, "60", math.inf], ids=repr)
def test_exp_step_rejected(step: object) -> None:
    assert option_error(exp_step=step).option == "exp_step"


def test_exp_step_plus_margin_over_ttl() -> None:
    error = option_error(ttl=600, refresh_margin=300, exp_step=301)

    assert error.option == "exp_step"
    assert "exceeds" in str(error)


def test_refresh_margin_near_ttl() -> None:
    assert option_error(ttl=600, refresh_margin=301).option == "refresh_margin"


def test_exp_step_explicit() -> None:
    assert build(exp_step=timedelta(minutes=1)).exp_step == 60


# rate_limit, name, identity, max_cached, clock, scopes


@pytest.mark.parametrize("rate_limit", [0, -5, 1.5, True, "10"], ids=repr)
def test_rate_limit_rejected(rate_limit: object) -> None:
    assert option_error(rate_limit=rate_limit).option == "rate_limit"


@pytest.mark.parametrize("name", ["", "   ", 5, b"app"], ids=repr)
def test_name_rejected(name: object) -> None:
    assert option_error(name=name).option == "name"


def test_identity_not_callable() -> None:
    assert option_error(identity="username").option == "identity"


@pytest.mark.parametrize("max_cached", [0, -1, 1.5, True, "100"], ids=repr)
def test_max_cached_rejected(max_cached: object) -> None:
    assert option_error(max_cached=max_cached).option == "max_cached"


def test_clock_not_callable() -> None:
    assert option_error(clock=1_800_000_000).option == "clock"


@pytest.mark.parametrize(
    "reading",
    [12_345.6, 1_800_000_000_000, -1, math.nan, "1800000000", None, True],
    ids=["monotonic", "milliseconds", "negative", "nan", "str", "none", "bool"],
)
def test_clock_not_unix_seconds(reading: object) -> None:
    error = option_error(clock=lambda: reading)

    assert error.option == "clock"
    assert "not Unix time in seconds" in str(error)


def test_clock_time_time_accepted() -> None:
    assert build().clock() > 1_000_000_000


@pytest.mark.parametrize(
    "scopes",
    [[], "sales", b"sales", {"sales": 1}, PipeRead("sales"), [PipeRead("a"), "b"], 3],
    ids=["empty", "str", "bytes", "dict", "bare-scope", "str-item", "int"],
)
def test_scopes_rejected(scopes: object) -> None:
    assert option_error(scopes=scopes).option == "scopes"


def test_scopes_tuple_accepted() -> None:
    assert build(scopes=(PipeRead("a"), PipeRead("b"))).mint_count == 0


# from_env


def test_from_env_reads_variables() -> None:
    issuer = TokenIssuer.from_env(
        environ={
            "TINYBIRD_SIGNING_KEY": SIGNING_KEY,
            "TINYBIRD_WORKSPACE_ID": WORKSPACE_ID,
            "TINYBIRD_API_URL": "https://api.eu-west-1.aws.tinybird.co",
        },
        scopes=SCOPES,
    )

    assert issuer.workspace_id == WORKSPACE_ID
    assert issuer.api_url == "https://api.eu-west-1.aws.tinybird.co"


def test_from_env_signs_with_env_key(clock: FakeClock) -> None:
    issuer = TokenIssuer.from_env(
        environ={
            "TINYBIRD_SIGNING_KEY": SIGNING_KEY,
            "TINYBIRD_WORKSPACE_ID": WORKSPACE_ID,
        },
        scopes=SCOPES,
        clock=clock,
    )

    token = issuer.token_for("alice")

    assert jwt.decode(token.value, SIGNING_KEY, algorithms=["HS256"])["name"] == "alice"


def test_from_env_admin_token_fallback(clock: FakeClock) -> None:
    key = admin_token({"u": WORKSPACE_ID, "host": "aws-eu-central-1"})

    issuer = TokenIssuer.from_env(
        environ={"TINYBIRD_ADMIN_TOKEN": key}, scopes=SCOPES, clock=clock
    )

    assert issuer.workspace_id == WORKSPACE_ID
    assert issuer.api_url == "https://api.eu-central-1.aws.tinybird.co"


def test_from_env_key_precedence(clock: FakeClock) -> None:
    issuer = TokenIssuer.from_env(
        environ={
            "TINYBIRD_SIGNING_KEY": SIGNING_KEY,
            "TINYBIRD_ADMIN_TOKEN": "p." + "other" * 10,
            "TINYBIRD_WORKSPACE_ID": WORKSPACE_ID,
        },
        scopes=SCOPES,
        clock=clock,
    )

    token = issuer.token_for("alice")

    assert jwt.decode(token.value, SIGNING_KEY, algorithms=["HS256"])["name"] == "alice"


def test_from_env_missing_key() -> None:
    with pytest.raises(ConfigurationError) as caught:
        TokenIssuer.from_env(
            environ={"TINYBIRD_WORKSPACE_ID": WORKSPACE_ID}, scopes=SCOPES
        )

    assert caught.value.option == "TINYBIRD_SIGNING_KEY"
    assert "TINYBIRD_ADMIN_TOKEN" in str(caught.value)


def test_from_env_empty_key() -> None:
    with pytest.raises(ConfigurationError) as caught:
        TokenIssuer.from_env(environ={"TINYBIRD_SIGNING_KEY": ""}, scopes=SCOPES)

    assert caught.value.option == "TINYBIRD_SIGNING_KEY"


def test_from_env_options_win() -> None:
    issuer = TokenIssuer.from_env(
        environ={
            "TINYBIRD_SIGNING_KEY": "p." + "x" * 8,
            "TINYBIRD_WORKSPACE_ID": OTHER_WORKSPACE,
            "TINYBIRD_API_URL": "https://api.tinybird.co",
        },
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        api_url="http://localhost:7181",
        scopes=SCOPES,
    )

    assert issuer.workspace_id == WORKSPACE_ID
    assert issuer.api_url == "http://localhost:7181"


def test_from_env_empty_variables_ignored() -> None:
    key = admin_token({"u": WORKSPACE_ID})

    issuer = TokenIssuer.from_env(
        environ={
            "TINYBIRD_SIGNING_KEY": key,
            "TINYBIRD_WORKSPACE_ID": "",
            "TINYBIRD_API_URL": "",
        },
        scopes=SCOPES,
    )

    assert issuer.workspace_id == WORKSPACE_ID
    assert issuer.api_url == "https://api.tinybird.co"


def test_from_env_bad_workspace_variable() -> None:
    with pytest.raises(ConfigurationError) as caught:
        TokenIssuer.from_env(
            environ={"TINYBIRD_SIGNING_KEY": SIGNING_KEY, "TINYBIRD_WORKSPACE_ID": "x"},
            scopes=SCOPES,
        )

    assert caught.value.option == "workspace_id"


def test_from_env_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINYBIRD_SIGNING_KEY", SIGNING_KEY)
    monkeypatch.setenv("TINYBIRD_WORKSPACE_ID", WORKSPACE_ID)
    monkeypatch.delenv("TINYBIRD_API_URL", raising=False)

    assert TokenIssuer.from_env(scopes=SCOPES).workspace_id == WORKSPACE_ID


def test_workspace_id_other_than_key_warned(caplog: pytest.LogCaptureFixture) -> None:
    key = admin_token({"u": "0f0e0d0c-0b0a-4908-8706-050403020100"})

    with caplog.at_level(logging.WARNING, logger="tinybird_asgi"):
        issuer = build(signing_key=key, workspace_id=WORKSPACE_ID)

    assert issuer.workspace_id == WORKSPACE_ID
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "differs from the signing key" in warnings[0].getMessage()


def test_workspace_id_same_as_key_not_warned(caplog: pytest.LogCaptureFixture) -> None:
    key = admin_token({"u": WORKSPACE_ID})

    with caplog.at_level(logging.WARNING, logger="tinybird_asgi"):
        build(signing_key=key, workspace_id=WORKSPACE_ID)

    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
