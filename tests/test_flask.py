"""TinybirdJWT: extension setup, configuration keys, exemptions and hooks."""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import Any

import flask
import httpx
import jwt
import pytest

import tinybird_flask
from tests.behaviour.apps import TestUser
from tests.conftest import SIGNING_KEY, START, WORKSPACE_ID, FakeClock
from tests.servers import serve_wsgi
from tinybird_asgi import ConfigurationError, DeliveryConfig, PipeRead, TokenIssuer
from tinybird_flask import CONFIG_DEFAULTS, EXTENSION_NAME, TinybirdJWT

HEADER = "X-Tinybird-Token"
OTHER_KEY = "p.another-signing-key-abcdefghijklmnopqrstuvwxyz0123456789"
ALICE = TestUser("alice", "acme")


def org_scopes(user: TestUser) -> list[PipeRead]:
    return [PipeRead("events", fixed_params={"org_id": user.org})]


def base_config(**extra: Any) -> dict[str, Any]:
    return {
        "TINYBIRD_SIGNING_KEY": SIGNING_KEY,
        "TINYBIRD_WORKSPACE_ID": WORKSPACE_ID,
        **extra,
    }


def make_app(
    tinybird: TinybirdJWT,
    *,
    user: TestUser | None = ALICE,
    before_init: Callable[[flask.Flask], None] | None = None,
    **config: Any,
) -> flask.Flask:
    """Build an app whose every request is made by ``user``, set up with tinybird.

    ``before_init`` runs on the app just before ``init_app``.
    """
    app = flask.Flask(__name__)
    app.config.update(base_config(**config))
    if before_init is not None:
        before_init(app)
    tinybird.init_app(app)

    @app.before_request
    def load_user() -> None:
        flask.g.user = user

    @app.route("/page")
    def page() -> str:
        return "ok"

    return app


def policy_extension(clock: FakeClock) -> TinybirdJWT:
    return TinybirdJWT(scopes_policy=org_scopes, clock=clock)


def fetch(app: flask.Flask, path: str = "/page") -> httpx.Response:
    with serve_wsgi(app) as url:
        return httpx.get(url + path, timeout=10.0)


def decode(token: str, key: str = SIGNING_KEY) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["HS256"])
    return claims


# Extension conventions


def test_flask_all_matches_public_names() -> None:
    public = {
        name
        for name, value in vars(tinybird_flask).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }

    assert set(tinybird_flask.__all__) == public | {"__version__"}


def test_factory_pattern_delivers(clock: FakeClock) -> None:
    tinybird = TinybirdJWT(clock=clock)

    @tinybird.scopes_policy
    def policy(user: TestUser) -> list[PipeRead]:
        return org_scopes(user)

    app = make_app(tinybird)
    response = fetch(app)

    assert decode(response.headers[HEADER])["name"] == "alice"
    assert not hasattr(tinybird, "app")


def test_app_argument_calls_init_app(clock: FakeClock) -> None:
    app = flask.Flask(__name__)
    app.config.update(base_config())

    TinybirdJWT(app, scopes_policy=org_scopes, clock=clock)

    assert EXTENSION_NAME in app.extensions
    assert app.extensions[EXTENSION_NAME].issuer.workspace_id == WORKSPACE_ID


def test_two_apps_keep_their_settings(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    first = make_app(tinybird, TINYBIRD_TTL=600, TINYBIRD_REFRESH_MARGIN=60)
    second = make_app(
        tinybird,
        TINYBIRD_SIGNING_KEY=OTHER_KEY,
        TINYBIRD_DELIVERY="cookie",
        TINYBIRD_COOKIE_NAME="tb_second",
    )

    first_response = fetch(first)
    second_response = fetch(second)

    assert decode(first_response.headers[HEADER])["exp"] == START + 600
    assert first_response.headers.get_list("set-cookie") == []
    assert HEADER not in second_response.headers
    cookie = second_response.headers["set-cookie"]
    assert cookie.startswith("tb_second=")
    token = cookie.partition("=")[2].partition(";")[0]
    assert decode(token, OTHER_KEY)["exp"] == START + 3600
    with pytest.raises(jwt.InvalidSignatureError):
        decode(token, SIGNING_KEY)


def test_defaults_come_from_core(clock: FakeClock) -> None:
    app = make_app(policy_extension(clock))
    delivery = DeliveryConfig()

    assert app.config["TINYBIRD_HEADER_NAME"] == delivery.header_name
    assert app.config["TINYBIRD_COOKIE_SECURE"] is delivery.cookie_secure
    assert app.config["TINYBIRD_DELIVERY"] == "header"
    assert app.config["TINYBIRD_TTL"] == 3600
    assert app.config["TINYBIRD_REFRESH_MARGIN"] == 300
    assert set(CONFIG_DEFAULTS) <= set(app.config)


def test_config_value_wins_over_default(clock: FakeClock) -> None:
    app = make_app(policy_extension(clock), TINYBIRD_HEADER_NAME="X-TB")

    assert app.config["TINYBIRD_HEADER_NAME"] == "X-TB"
    assert app.extensions[EXTENSION_NAME].delivery.header_name == "X-TB"


def test_exclude_paths_accepts_list(clock: FakeClock) -> None:
    app = make_app(policy_extension(clock), TINYBIRD_EXCLUDE_PATHS=["/page"])

    assert HEADER not in fetch(app).headers


def test_issuer_for_each_app(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    first = make_app(tinybird)
    second = make_app(tinybird, TINYBIRD_SIGNING_KEY=OTHER_KEY)

    first_token = tinybird.issuer_for(first).token_for(ALICE)
    with second.app_context():
        second_token = tinybird.issuer_for().token_for(ALICE)

    assert decode(first_token.value)["name"] == "alice"
    assert decode(second_token.value, OTHER_KEY)["name"] == "alice"


def test_issuer_for_other_extension_rejected(clock: FakeClock) -> None:
    app = make_app(policy_extension(clock))

    with pytest.raises(KeyError):
        policy_extension(clock).issuer_for(app)


def test_init_app_twice_rejected(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    app = make_app(tinybird)

    with pytest.raises(ConfigurationError, match="already set up"):
        tinybird.init_app(app)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("TINYBIRD_DELIVERY", "pigeon"),
        ("TINYBIRD_HEADER_NAME", "Bad Name"),
        ("TINYBIRD_EXPIRES_HEADER_NAME", "X-Tinybird-Token"),
        ("TINYBIRD_COOKIE_NAME", "a;b"),
        ("TINYBIRD_COOKIE_PATH", "app"),
        ("TINYBIRD_COOKIE_DOMAIN", "bad domain"),
        ("TINYBIRD_COOKIE_SECURE", "yes"),
        ("TINYBIRD_COOKIE_SAMESITE", "sometimes"),
        ("TINYBIRD_TOKEN_PATH", "token"),
        ("TINYBIRD_EXCLUDE_PATHS", "/public"),
        ("TINYBIRD_EXCLUDE_PATHS", 5),
        ("TINYBIRD_PROTECT_CACHE", 1),
        ("TINYBIRD_WORKSPACE_ID", "not-a-uuid"),
        ("TINYBIRD_API_URL", "ftp://api.tinybird.co"),
        ("TINYBIRD_TTL", 0),
        ("TINYBIRD_TTL", 3_600_000),
        ("TINYBIRD_REFRESH_MARGIN", 3600),
        ("TINYBIRD_EXP_STEP", 0.5),
        ("TINYBIRD_RATE_LIMIT", 0),
        ("TINYBIRD_TOKEN_NAME", " "),
        ("TINYBIRD_MAX_CACHED", 0),
    ],
)
def test_invalid_key_named(key: str, value: Any, clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError) as raised:
        make_app(policy_extension(clock), **{key: value})

    assert raised.value.option == key
    assert key in str(raised.value)


def test_samesite_none_needs_secure(clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError) as raised:
        make_app(
            policy_extension(clock),
            TINYBIRD_COOKIE_SAMESITE="none",
            TINYBIRD_COOKIE_SECURE=False,
        )

    assert raised.value.option == "TINYBIRD_COOKIE_SAMESITE"
    assert "TINYBIRD_COOKIE_SECURE = True" in str(raised.value)
    assert "cookie_secure=" not in str(raised.value)


def test_long_ttl_names_config_key(clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError) as raised:
        make_app(policy_extension(clock), TINYBIRD_TTL=200_000)

    assert "TINYBIRD_ALLOW_LONG_TTL = True" in str(raised.value)
    assert "allow_long_ttl=" not in str(raised.value)


def test_missing_signing_key_named(clock: FakeClock) -> None:
    app = flask.Flask(__name__)
    app.config["TINYBIRD_WORKSPACE_ID"] = WORKSPACE_ID

    with pytest.raises(ConfigurationError) as raised:
        policy_extension(clock).init_app(app)

    assert raised.value.option == "TINYBIRD_SIGNING_KEY"
    assert "TINYBIRD_SIGNING_KEY" in str(raised.value)


def test_short_signing_key_not_echoed(clock: FakeClock) -> None:
    short_key = "p.too-short-secret"

    with pytest.raises(ConfigurationError) as raised:
        make_app(policy_extension(clock), TINYBIRD_SIGNING_KEY=short_key)

    assert raised.value.option == "TINYBIRD_SIGNING_KEY"
    assert short_key not in str(raised.value)


def test_unknown_key_logged(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tinybird_flask"):
        make_app(policy_extension(clock), TINYBIRD_COOKIE_SECUR=False)

    assert "TINYBIRD_COOKIE_SECUR" in caplog.text


def test_issuer_argument_ignores_issuer_keys(clock: FakeClock) -> None:
    issuer = TokenIssuer(
        signing_key=OTHER_KEY,
        workspace_id=WORKSPACE_ID,
        scopes=org_scopes,
        clock=clock,
    )
    app = make_app(TinybirdJWT(issuer=issuer), TINYBIRD_SIGNING_KEY="ignored")

    token = fetch(app).headers[HEADER]

    assert decode(token, OTHER_KEY)["name"] == "alice"


def test_issuer_argument_rejects_policy_decorator(clock: FakeClock) -> None:
    issuer = TokenIssuer(
        signing_key=SIGNING_KEY, workspace_id=WORKSPACE_ID, scopes=org_scopes
    )
    tinybird = TinybirdJWT(issuer=issuer)

    with pytest.raises(ConfigurationError) as raised:
        tinybird.scopes_policy(org_scopes)

    assert raised.value.option == "scopes_policy"


def test_issuer_argument_adds_no_issuer_keys(clock: FakeClock) -> None:
    issuer = TokenIssuer(
        signing_key=SIGNING_KEY, workspace_id=WORKSPACE_ID, scopes=org_scopes
    )
    app = flask.Flask(__name__)

    TinybirdJWT(app, issuer=issuer)

    assert "TINYBIRD_TTL" not in app.config
    assert "TINYBIRD_SIGNING_KEY" not in app.config
    assert app.config["TINYBIRD_DELIVERY"] == "header"


def test_non_callable_loader_rejected(clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError) as raised:
        TinybirdJWT(clock=clock).principal_loader("g.user")  # type: ignore[arg-type]

    assert raised.value.option == "principal_loader"


def test_issuer_argument_type_checked() -> None:
    with pytest.raises(ConfigurationError) as raised:
        TinybirdJWT(issuer="p.key")  # type: ignore[arg-type]

    assert raised.value.option == "issuer"


# Decorators


def test_identity_decorator_sets_name(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)

    @tinybird.identity
    def identity(user: TestUser) -> str:
        return f"{user.org}/{user.identity}"

    token = fetch(make_app(tinybird)).headers[HEADER]

    assert decode(token)["name"] == "acme/alice"


def test_principal_loader_replaces_g_user(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)

    @tinybird.principal_loader
    def load() -> TestUser:
        return TestUser("carol", "initech")

    token = fetch(make_app(tinybird, user=ALICE)).headers[HEADER]

    assert decode(token)["name"] == "carol"


def test_principal_loader_none_is_anonymous(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    tinybird.principal_loader(lambda: None)

    assert HEADER not in fetch(make_app(tinybird, user=ALICE)).headers


def test_g_user_none_gets_no_token(clock: FakeClock) -> None:
    response = fetch(make_app(policy_extension(clock), user=None))

    assert HEADER not in response.headers


# Jinja global and current_token()


def test_jinja_global_renders_token(clock: FakeClock) -> None:
    calls: list[str] = []
    tinybird = TinybirdJWT(clock=clock)

    @tinybird.scopes_policy
    def policy(user: TestUser) -> list[PipeRead]:
        calls.append(user.identity)
        return org_scopes(user)

    app = make_app(tinybird)

    @app.route("/rendered")
    def rendered() -> str:
        return flask.render_template_string(
            "{{ tinybird_token().value }} {{ tinybird_token().expires_at }}"
        )

    response = fetch(app, "/rendered")

    value, expires_at = response.text.split()
    assert value == response.headers[HEADER]
    assert decode(value)["exp"] == int(expires_at)
    assert calls == ["alice"]


def test_jinja_global_anonymous_none(clock: FakeClock) -> None:
    app = make_app(policy_extension(clock), user=None)

    @app.route("/rendered")
    def rendered() -> str:
        return flask.render_template_string("{{ tinybird_token() is none }}")

    assert fetch(app, "/rendered").text == "True"


def test_current_token_outside_request_none(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    app = make_app(tinybird)

    with app.app_context():
        rendered = flask.render_template_string("{{ tinybird_token() is none }}")

    assert rendered == "True"
    assert tinybird.current_token() is None


def test_current_token_in_view(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    app = make_app(tinybird)

    @app.route("/json")
    def as_json() -> dict[str, Any]:
        token = tinybird.current_token()
        assert token is not None
        return {"token": token.value, "api_url": token.api_url}

    response = fetch(app, "/json")

    assert response.json()["token"] == response.headers[HEADER]
    assert response.json()["api_url"] == "https://api.tinybird.co"


# The after_request hook never raises


def failing_policy(user: TestUser) -> list[PipeRead]:
    raise RuntimeError("database down")


def test_policy_error_logged_not_raised(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    tinybird = TinybirdJWT(scopes_policy=failing_policy, clock=clock)
    app = make_app(tinybird, TINYBIRD_DELIVERY="both")

    with caplog.at_level(logging.ERROR, logger="tinybird_flask"):
        response = fetch(app)

    assert response.status_code == 200
    assert response.text == "ok"
    assert HEADER not in response.headers
    assert "set-cookie" not in response.headers
    assert "cache-control" not in response.headers
    assert "'alice'" in caplog.text
    assert "GET '/page'" in caplog.text


def test_policy_error_logged_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def counting_failure(user: TestUser) -> list[PipeRead]:
        calls.append(user.identity)
        raise RuntimeError("database down")

    app = make_app(TinybirdJWT(scopes_policy=counting_failure, clock=clock))

    @app.route("/rendered")
    def rendered() -> str:
        return flask.render_template_string("{{ tinybird_token() is none }}")

    with caplog.at_level(logging.ERROR, logger="tinybird_flask"):
        response = fetch(app, "/rendered")

    assert response.text == "True"
    assert HEADER not in response.headers
    assert calls == ["alice"]
    assert len(caplog.records) == 1


def test_loader_error_logged_not_raised(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    tinybird = policy_extension(clock)

    @tinybird.principal_loader
    def broken() -> TestUser:
        raise KeyError("session")

    with caplog.at_level(logging.ERROR, logger="tinybird_flask"):
        response = fetch(make_app(tinybird))

    assert response.status_code == 200
    assert HEADER not in response.headers
    assert "KeyError" in caplog.text


def test_later_hooks_still_run(clock: FakeClock) -> None:
    app = flask.Flask(__name__)
    app.config.update(base_config())

    # Flask runs after_request hooks in reverse order of registration, so
    # this one runs after the extension's.
    @app.after_request
    def mark(response: flask.Response) -> flask.Response:
        response.headers["X-Later-Hook"] = "ran"
        return response

    TinybirdJWT(app, scopes_policy=failing_policy, clock=clock)

    @app.before_request
    def load_user() -> None:
        flask.g.user = ALICE

    @app.route("/page")
    def page() -> str:
        return "ok"

    response = fetch(app)

    assert response.headers["x-later-hook"] == "ran"
    assert HEADER not in response.headers


def test_missing_policy_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(TinybirdJWT(clock=clock))

    with caplog.at_level(logging.ERROR, logger="tinybird_flask"):
        response = fetch(app)
        later = fetch(app)

    assert response.status_code == 200
    assert HEADER not in response.headers
    assert HEADER not in later.headers
    assert len(caplog.records) == 1
    assert "@tinybird.scopes_policy" in caplog.text
    assert caplog.records[0].exc_info is None


def test_token_never_logged(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(policy_extension(clock))

    with caplog.at_level(logging.DEBUG, logger="tinybird_asgi"):
        token = fetch(app).headers[HEADER]

    # httpcore logs raw response headers at DEBUG; only this project's count.
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("tinybird")]
    assert ours
    assert not any(token in message for message in ours)
    assert not any(SIGNING_KEY in message for message in ours)


def test_clock_error_names_argument() -> None:
    app = flask.Flask(__name__)
    app.config.update(base_config())
    tinybird = TinybirdJWT(scopes_policy=org_scopes, clock=lambda: 12.0)

    with pytest.raises(ConfigurationError) as caught:
        tinybird.init_app(app)

    assert caught.value.option == "clock"
    assert "app.config" not in str(caught.value)


# Request scoping and hook order


def test_current_token_none_on_excluded_path(clock: FakeClock) -> None:
    tinybird = policy_extension(clock)
    app = make_app(tinybird, TINYBIRD_EXCLUDE_PATHS=["/public"])

    @app.route("/public/page")
    def public_page() -> str:
        return flask.render_template_string("{{ tinybird_token() is none }}")

    response = fetch(app, "/public/page")

    assert response.text == "True"
    assert HEADER not in response.headers


def test_token_fresh_under_pushed_app_context(clock: FakeClock) -> None:
    # g lives as long as the app context; pushed beforehand, it spans requests.
    user = TestUser("alice", "acme")
    app = make_app(policy_extension(clock), user=user)

    with app.app_context(), app.test_client() as client:
        first = client.get("/page").headers[HEADER]
        clock.advance(7200)
        user.org = "initech"
        second = client.get("/page").headers[HEADER]

    assert decode(second)["scopes"][0]["fixed_params"] == {"org_id": "initech"}
    assert decode(second)["exp"] > decode(first)["exp"]


def test_hook_registered_earlier_cannot_make_public(clock: FakeClock) -> None:
    def mark_public(response: flask.Response) -> flask.Response:
        response.headers["Cache-Control"] = "public, max-age=600"
        return response

    def register_hook(app: flask.Flask) -> None:
        app.after_request(mark_public)

    app = make_app(policy_extension(clock), before_init=register_hook)

    response = fetch(app)

    assert HEADER in response.headers
    assert response.headers["cache-control"] == "private, max-age=600"


def test_token_path_endpoint_conflict_rejected(clock: FakeClock) -> None:
    app = flask.Flask(__name__)
    app.config.update(base_config(TINYBIRD_TOKEN_PATH="/tinybird/token"))
    app.add_url_rule(
        "/other", endpoint=tinybird_flask.ENDPOINT_NAME, view_func=lambda: "other"
    )

    with pytest.raises(ConfigurationError) as raised:
        policy_extension(clock).init_app(app)

    assert raised.value.option == "TINYBIRD_TOKEN_PATH"
    assert EXTENSION_NAME not in app.extensions
