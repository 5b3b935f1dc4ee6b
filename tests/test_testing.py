"""tinybird_asgi.testing: the local pipe endpoint and its request checks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from tinybird_asgi import ConfigurationError, PipeRead, TokenIssuer
from tinybird_asgi.testing import (
    LocalTinybird,
    PipeRequestError,
    ServedRequest,
    authorize_pipe_request,
    check_pipe_request,
)

from .conftest import SIGNING_KEY, WORKSPACE_ID, FakeClock
from .servers import serve_asgi, serve_wsgi

OTHER_KEY = "p.another-signing-key-abcdefghijklmnopqrstuvwxyz0123456789"
OTHER_WORKSPACE = "0f1e2d3c-4b5a-4968-8776-655443322110"
ORGS = {"alice@acme": "acme", "bob@globex": "globex"}
ROWS = [
    {"org_id": "acme", "event": "signup", "value": 1, "paid": True},
    {"org_id": "acme", "event": "login", "value": 2, "paid": False},
    {"org_id": "globex", "event": "signup", "value": 3, "paid": True},
    {"org_id": "initech", "event": "signup", "value": 4, "paid": False},
]


def _issuer(clock: FakeClock, **options: Any) -> TokenIssuer:
    options.setdefault("rate_limit", None)
    return TokenIssuer(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        scopes=lambda user: [
            PipeRead("org_events", fixed_params={"org_id": ORGS[user]})
        ],
        clock=clock,
        ttl=600,
        refresh_margin=60,
        **options,
    )


def _local(clock: FakeClock, **pipes: Any) -> LocalTinybird:
    return LocalTinybird(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        pipes=pipes or {"org_events": ROWS},
        clock=clock,
    )


def _forged(clock: FakeClock, key: str = SIGNING_KEY, **claims: Any) -> str:
    payload: dict[str, Any] = {
        "workspace_id": WORKSPACE_ID,
        "name": "forged",
        "exp": int(clock() + 600),
        "scopes": [{"type": "PIPES:READ", "resource": "org_events"}],
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key.encode(), algorithm="HS256")


def _check(
    token: str | None, clock: FakeClock, params: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return dict(
        check_pipe_request(
            token,
            "org_events",
            params,
            signing_key=SIGNING_KEY,
            workspace_id=WORKSPACE_ID,
            now=clock(),
        )
    )


def _rejection(token: str | None, clock: FakeClock) -> PipeRequestError:
    with pytest.raises(PipeRequestError) as info:
        _check(token, clock)
    return info.value


# check_pipe_request: what a token grants


def test_check_fixed_params_override_url(clock: FakeClock) -> None:
    token = _issuer(clock).token_for("bob@globex").value

    params = _check(token, clock, {"org_id": "acme", "event": "signup"})

    assert params == {"org_id": "globex", "event": "signup"}


def test_check_ignores_token_parameter(clock: FakeClock) -> None:
    token = _issuer(clock).token_for("alice@acme").value

    params = _check(token, clock, {"token": token})

    assert params == {"org_id": "acme"}


def test_check_scope_without_fixed_params(clock: FakeClock) -> None:
    params = _check(_forged(clock), clock, {"org_id": "initech"})

    assert params == {"org_id": "initech"}


def test_authorize_reports_name_rps_and_exp(clock: FakeClock) -> None:
    token = _issuer(clock, rate_limit=5).token_for("alice@acme")

    grant = authorize_pipe_request(
        token.value,
        "org_events",
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        now=clock(),
    )

    assert grant.name == "alice@acme"
    assert grant.rps == 5
    assert grant.expires_at == token.expires_at


def test_authorize_reads_nonpositive_rps_as_unlimited(clock: FakeClock) -> None:
    grant = authorize_pipe_request(
        _forged(clock, limits={"rps": 0}),
        "org_events",
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        now=clock(),
    )

    assert grant.rps is None


# check_pipe_request: every rejection is a 403


def test_check_rejects_missing_token(clock: FakeClock) -> None:
    assert _rejection(None, clock).status == 403
    assert _rejection("", clock).status == 403


def test_check_rejects_garbage_token(clock: FakeClock) -> None:
    error = _rejection("not-a-jwt", clock)

    assert error.status == 403
    assert "not a valid HS256 JWT" in str(error)


def test_check_rejects_other_signing_key(clock: FakeClock) -> None:
    error = _rejection(_forged(clock, key=OTHER_KEY), clock)

    assert error.status == 403
    assert "signature" in str(error)


def test_check_rejects_other_algorithm(clock: FakeClock) -> None:
    # HS512 wants a 64-byte key; the doubled key keeps PyJWT from warning.
    payload = jwt.decode(
        _forged(clock), options={"verify_signature": False}, algorithms=["HS256"]
    )
    token = jwt.encode(payload, SIGNING_KEY.encode() * 2, algorithm="HS512")

    assert _rejection(token, clock).status == 403


def test_check_rejects_unsigned_token(clock: FakeClock) -> None:
    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    body = jwt.utils.base64url_encode(
        b'{"workspace_id":"%s","name":"x","exp":9999999999,"scopes":[]}'
        % WORKSPACE_ID.encode()
    ).decode()

    assert _rejection(f"{header}.{body}.", clock).status == 403


def test_check_rejects_missing_exp(clock: FakeClock) -> None:
    error = _rejection(_forged(clock, exp=None), clock)

    assert error.status == 403
    assert "exp" in str(error)


def test_check_rejects_fractional_exp(clock: FakeClock) -> None:
    assert _rejection(_forged(clock, exp=clock() + 600.5), clock).status == 403


def test_check_rejects_expired_token(clock: FakeClock) -> None:
    token = _issuer(clock).token_for("alice@acme")
    clock.now = token.expires_at

    error = _rejection(token.value, clock)

    assert error.status == 403
    assert "expired" in str(error)


def test_check_accepts_token_until_exp(clock: FakeClock) -> None:
    token = _issuer(clock).token_for("alice@acme")
    clock.now = token.expires_at - 1

    assert _check(token.value, clock) == {"org_id": "acme"}


def test_check_rejects_other_workspace(clock: FakeClock) -> None:
    error = _rejection(_forged(clock, workspace_id=OTHER_WORKSPACE), clock)

    assert error.status == 403
    assert "workspace_id" in str(error)


def test_check_rejects_missing_workspace(clock: FakeClock) -> None:
    assert _rejection(_forged(clock, workspace_id=None), clock).status == 403


def test_check_rejects_missing_name(clock: FakeClock) -> None:
    assert _rejection(_forged(clock, name=None), clock).status == 403


def test_check_rejects_scope_for_other_pipe(clock: FakeClock) -> None:
    token = _forged(clock, scopes=[{"type": "PIPES:READ", "resource": "other"}])

    error = _rejection(token, clock)

    assert error.status == 403
    assert "no PIPES:READ scope for pipe 'org_events'" in str(error)


def test_check_rejects_datasource_scope_for_pipe(clock: FakeClock) -> None:
    scopes = [{"type": "DATASOURCES:READ", "resource": "org_events"}]

    assert _rejection(_forged(clock, scopes=scopes), clock).status == 403


def test_check_rejects_scopes_not_a_list(clock: FakeClock) -> None:
    scopes = {"type": "PIPES:READ", "resource": "org_events"}

    assert _rejection(_forged(clock, scopes=scopes), clock).status == 403


def test_check_rejects_two_scopes_for_one_pipe(clock: FakeClock) -> None:
    scope = {"type": "PIPES:READ", "resource": "org_events"}

    assert _rejection(_forged(clock, scopes=[scope, scope]), clock).status == 403


@pytest.mark.parametrize("value", [None, ["acme"], {"id": "acme"}])
def test_check_rejects_non_scalar_fixed_param(clock: FakeClock, value: Any) -> None:
    scope = {
        "type": "PIPES:READ",
        "resource": "org_events",
        "fixed_params": {"org_id": value},
    }

    assert _rejection(_forged(clock, scopes=[scope]), clock).status == 403


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "finite number"),
        (float("inf"), "finite number"),
        ("", "empty string"),
    ],
)
def test_check_rejects_meaningless_fixed_param(
    clock: FakeClock, value: Any, message: str
) -> None:
    scope = {
        "type": "PIPES:READ",
        "resource": "org_events",
        "fixed_params": {"org_id": value},
    }

    error = _rejection(_forged(clock, scopes=[scope]), clock)

    assert error.status == 403
    assert "fixed_params['org_id']" in str(error)
    assert message in str(error)


def test_check_rejects_exp_in_milliseconds(clock: FakeClock) -> None:
    error = _rejection(_forged(clock, exp=int(clock() * 1000)), clock)

    assert error.status == 403
    assert "milliseconds" in str(error)


def test_check_accepts_exp_within_a_year(clock: FakeClock) -> None:
    token = _forged(clock, exp=int(clock()) + 364 * 24 * 3600)

    assert _check(token, clock) == {}


@pytest.mark.parametrize("limits", [[5], {"rps": "5"}, {"rps": True}])
def test_check_rejects_invalid_limits(clock: FakeClock, limits: Any) -> None:
    assert _rejection(_forged(clock, limits=limits), clock).status == 403


def test_check_message_omits_token(clock: FakeClock) -> None:
    token = _forged(clock, key=OTHER_KEY)

    assert token not in str(_rejection(token, clock))


def test_check_validates_signing_key() -> None:
    with pytest.raises(ConfigurationError):
        check_pipe_request(
            "x", "org_events", signing_key="short", workspace_id=WORKSPACE_ID
        )


# LocalTinybird.read: rows and rate limits


def test_read_returns_only_fixed_org_rows(clock: FakeClock) -> None:
    token = _issuer(clock).token_for("bob@globex").value

    rows = _local(clock).read(token, "org_events", {"org_id": "acme"})

    assert rows == [ROWS[2]]


def test_read_filters_by_url_parameter(clock: FakeClock) -> None:
    token = _issuer(clock).token_for("alice@acme").value

    rows = _local(clock).read(token, "org_events", {"event": "login"})

    assert rows == [ROWS[1]]


def test_read_compares_booleans_as_text(clock: FakeClock) -> None:
    token = _issuer(clock).token_for("alice@acme").value

    rows = _local(clock).read(token, "org_events", {"paid": "true"})

    assert rows == [ROWS[0]]


def test_read_ignores_parameter_naming_no_column(clock: FakeClock) -> None:
    token = _issuer(clock).token_for("alice@acme").value

    rows = _local(clock).read(token, "org_events", {"limit": "1"})

    assert rows == ROWS[:2]


def test_read_passes_effective_params_to_callable(clock: FakeClock) -> None:
    seen: list[Mapping[str, Any]] = []

    def pipe(params: Mapping[str, Any]) -> list[dict[str, Any]]:
        seen.append(params)
        return [{"org_id": params["org_id"], "count": 7}]

    token = _issuer(clock).token_for("alice@acme").value
    rows = _local(clock, org_events=pipe).read(token, "org_events", {"org_id": "x"})

    assert seen == [{"org_id": "acme"}]
    assert rows == [{"org_id": "acme", "count": 7}]


def test_read_unknown_pipe_is_404(clock: FakeClock) -> None:
    token = _forged(clock, scopes=[{"type": "PIPES:READ", "resource": "missing"}])

    with pytest.raises(PipeRequestError) as info:
        _local(clock).read(token, "missing")

    assert info.value.status == 404


def test_read_enforces_rps_per_name(clock: FakeClock) -> None:
    local = _local(clock)
    token = _issuer(clock, rate_limit=2).token_for("alice@acme").value
    local.read(token, "org_events")
    local.read(token, "org_events")

    with pytest.raises(PipeRequestError) as info:
        local.read(token, "org_events")

    assert info.value.status == 429


def test_read_rps_window_slides_with_clock(clock: FakeClock) -> None:
    local = _local(clock)
    token = _issuer(clock, rate_limit=1).token_for("alice@acme").value
    local.read(token, "org_events")
    clock.advance(0.5)
    with pytest.raises(PipeRequestError):
        local.read(token, "org_events")

    clock.advance(0.5)

    assert local.read(token, "org_events") == ROWS[:2]


def test_read_rps_buckets_are_per_name(clock: FakeClock) -> None:
    local = _local(clock)
    issuer = _issuer(clock, rate_limit=1)
    local.read(issuer.token_for("alice@acme").value, "org_events")

    rows = local.read(issuer.token_for("bob@globex").value, "org_events")

    assert rows == [ROWS[2]]


def test_read_shared_name_shares_bucket(clock: FakeClock) -> None:
    local = _local(clock)
    issuer = _issuer(clock, rate_limit=1, name="frontend")
    local.read(issuer.token_for("alice@acme").value, "org_events")

    with pytest.raises(PipeRequestError) as info:
        local.read(issuer.token_for("bob@globex").value, "org_events")

    assert info.value.status == 429


def test_read_without_limit_is_unlimited(clock: FakeClock) -> None:
    local = _local(clock)
    token = _issuer(clock).token_for("alice@acme").value

    results = [local.read(token, "org_events") for _ in range(50)]

    assert results == [ROWS[:2]] * 50


# LocalTinybird construction


@pytest.mark.parametrize(
    "pipes",
    [["org_events"], {"bad-name": []}, {"org_events": "rows"}, {"org_events": 3}],
)
def test_local_rejects_invalid_pipes(pipes: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        LocalTinybird(signing_key=SIGNING_KEY, workspace_id=WORKSPACE_ID, pipes=pipes)

    assert info.value.option == "pipes"


def test_local_rejects_short_key() -> None:
    with pytest.raises(ConfigurationError) as info:
        LocalTinybird(signing_key="short", workspace_id=WORKSPACE_ID, pipes={})

    assert info.value.option == "signing_key"


def test_local_rejects_invalid_workspace() -> None:
    with pytest.raises(ConfigurationError) as info:
        LocalTinybird(signing_key=SIGNING_KEY, workspace_id="acme", pipes={})

    assert info.value.option == "workspace_id"


def test_local_repr_omits_key(clock: FakeClock) -> None:
    text = repr(_local(clock))

    assert SIGNING_KEY not in text
    assert "org_events" in text


# HTTP, through uvicorn (ASGI) and werkzeug (WSGI)


@pytest.fixture(params=["asgi", "wsgi"])
def served(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[Any]:
    local = _local(clock)
    if request.param == "asgi":
        context = serve_asgi(local)
    else:
        context = serve_wsgi(local.wsgi_app)
    with context as url, httpx.Client(base_url=url, timeout=10) as client:
        yield local, client


def test_http_bearer_query_shape(served: Any, clock: FakeClock) -> None:
    local, client = served
    token = _issuer(clock).token_for("alice@acme").value

    response = client.get(
        "/v0/pipes/org_events.json",
        params={"org_id": "globex"},
        headers={"Authorization": f"Bearer {token}"},
    )

    assert response.status_code == 200
    body = response.json()
    assert body["data"] == ROWS[:2]
    assert body["rows"] == 2
    assert body["meta"][0] == {"name": "org_id", "type": "String"}
    assert {"name": "value", "type": "Int64"} in body["meta"]
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["cache-control"] == "no-store"
    assert list(local.log) == [ServedRequest("org_events", 200, "alice@acme")]


def test_http_token_query_parameter(served: Any, clock: FakeClock) -> None:
    _, client = served
    token = _issuer(clock).token_for("bob@globex").value

    response = client.get("/v0/pipes/org_events.json", params={"token": token})

    assert response.status_code == 200
    assert response.json()["data"] == [ROWS[2]]


def test_http_bearer_wins_over_query_token(served: Any, clock: FakeClock) -> None:
    _, client = served
    issuer = _issuer(clock)

    response = client.get(
        "/v0/pipes/org_events.json",
        params={"token": issuer.token_for("alice@acme").value},
        headers={"Authorization": f"Bearer {issuer.token_for('bob@globex').value}"},
    )

    assert response.json()["data"] == [ROWS[2]]


def test_http_expired_token_is_403_with_cors(served: Any, clock: FakeClock) -> None:
    local, client = served
    token = _issuer(clock).token_for("alice@acme")
    clock.now = token.expires_at + 1

    response = client.get(
        "/v0/pipes/org_events.json",
        headers={"Authorization": f"Bearer {token.value}"},
    )

    assert response.status_code == 403
    assert response.json() == {"error": "The token has expired."}
    assert response.headers["access-control-allow-origin"] == "*"
    assert list(local.log) == [ServedRequest("org_events", 403, None)]


def test_http_missing_token_is_403(served: Any) -> None:
    _, client = served

    response = client.get("/v0/pipes/org_events.json")

    assert response.status_code == 403
    assert "error" in response.json()


def test_http_rate_limit_is_429(served: Any, clock: FakeClock) -> None:
    _, client = served
    token = _issuer(clock, rate_limit=1).token_for("alice@acme").value
    headers = {"Authorization": f"Bearer {token}"}
    first = client.get("/v0/pipes/org_events.json", headers=headers)

    second = client.get("/v0/pipes/org_events.json", headers=headers)

    assert first.status_code == 200
    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"


def test_http_preflight_allows_authorization(served: Any) -> None:
    _, client = served

    response = client.options(
        "/v0/pipes/org_events.json",
        headers={
            "Origin": "http://127.0.0.1:9",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )

    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert "Authorization" in response.headers["access-control-allow-headers"]
    assert "GET" in response.headers["access-control-allow-methods"]


def test_http_unknown_path_is_404(served: Any) -> None:
    _, client = served

    response = client.get("/v0/datasources")

    assert response.status_code == 404


def test_http_post_is_405(served: Any) -> None:
    _, client = served

    response = client.post("/v0/pipes/org_events.json")

    assert response.status_code == 405
    assert "GET" in response.headers["allow"]


def test_http_mounted_under_prefix(clock: FakeClock) -> None:
    app = Starlette(routes=[Mount("/tinybird", app=_local(clock))])
    token = _issuer(clock).token_for("alice@acme").value

    with serve_asgi(app) as url:
        response = httpx.get(
            f"{url}/tinybird/v0/pipes/org_events.json",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    assert response.status_code == 200
    assert response.json()["rows"] == 2


def test_check_accepts_longest_issuer_lifetime() -> None:
    clock = FakeClock()
    issuer = TokenIssuer(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        scopes=[PipeRead("org_events")],
        ttl=366 * 86400,
        allow_long_ttl=True,
        clock=clock,
    )
    token = issuer.token_for("alice")

    params = check_pipe_request(
        token.value,
        "org_events",
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        now=clock(),
    )

    assert params == {}
