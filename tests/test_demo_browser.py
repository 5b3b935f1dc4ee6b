"""The demo apps in headless Chromium: each user reads only their org's rows.

Each demo app and its LocalTinybird endpoint run on real loopback servers
(uvicorn for Starlette, werkzeug for Flask), and one fake clock drives the
issuer and LocalTinybird, so token expiry is reached without sleeping.
Chromium is Debian's ``/usr/bin/chromium`` unless ``TINYBIRD_BROWSER`` names
another build; Playwright never downloads one. Screenshots go to
``TINYBIRD_ARTIFACTS`` when it is set, else to a pytest temporary directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tinybird_asgi import TokenIssuer
from tinybird_asgi.testing import LocalTinybird, ServedRequest

from . import leak_guard
from .conftest import SIGNING_KEY, WORKSPACE_ID, FakeClock
from .servers import serve_asgi, serve_wsgi

pytestmark = pytest.mark.browser

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BROWSER = os.environ.get("TINYBIRD_BROWSER", "/usr/bin/chromium")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Short enough to cross in a test; exp is aligned down to refresh_margin, so a
# token lives between TTL - MARGIN and TTL seconds.
TTL = 120.0
MARGIN = 30.0
WAIT_MS = 10_000
FRAMEWORKS = ["starlette", "flask"]


def _example(name: str) -> ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


@dataclass
class Demo:
    framework: str
    url: str
    tinybird_url: str
    local: LocalTinybird
    issuer: TokenIssuer
    clock: FakeClock


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not Path(BROWSER).exists():
        pytest.fail(
            f"No browser at {BROWSER}; install Debian's chromium package or set "
            "TINYBIRD_BROWSER to a Chromium executable."
        )
    with sync_playwright() as driver:
        yield driver


@pytest.fixture
def context(playwright: Playwright, tmp_path: Path) -> Iterator[BrowserContext]:
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"),
        executable_path=BROWSER,
        headless=True,
        args=BROWSER_ARGS,
        viewport={"width": 1100, "height": 820},
    )
    # The leak guard scans the page's console output too.
    context.on(
        "console",
        lambda message: leak_guard.captured.append(("browser console", message.text)),
    )
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.pages[0] if context.pages else context.new_page()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("TINYBIRD_ARTIFACTS")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(params=FRAMEWORKS)
def demo(request: pytest.FixtureRequest) -> Iterator[Demo]:
    common = _example("demo_common")
    framework: str = request.param
    app_module = _example(f"{framework}_app")
    serve: Callable[[Any], AbstractContextManager[str]]
    serve = serve_asgi if framework == "starlette" else serve_wsgi

    # The browser's own clock is real time, so the fake clock starts there.
    clock = FakeClock(time.time())
    settings = common.DemoSettings(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        api_url="http://127.0.0.1:9",
        pipe="org_events",
        local=True,
    )
    local = common.build_local_tinybird(settings, clock=clock)
    tinybird_app = local if framework == "starlette" else local.wsgi_app
    with serve(tinybird_app) as tinybird_url:
        settings = dataclasses.replace(settings, api_url=tinybird_url)
        issuer = common.build_issuer(
            settings, clock=clock, ttl=TTL, refresh_margin=MARGIN
        )
        app = app_module.create_app(settings, issuer)
        with serve(app) as url:
            yield Demo(framework, url, tinybird_url, local, issuer, clock)


def _wait(page: Page, expression: str) -> None:
    page.wait_for_function(expression, timeout=WAIT_MS, polling=50)


def _sign_in(page: Page, demo: Demo, email: str) -> None:
    page.goto(demo.url)
    page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)
    page.fill("#email", email)
    page.fill("#password", "demo")
    page.click("#login-button")
    _wait(page, "window.demo.loads >= 1")


def _row_orgs(page: Page) -> list[str]:
    orgs: list[str] = page.eval_on_selector_all(
        "#rows tbody tr", "rows => rows.map(row => row.dataset.org)"
    )
    return orgs


def _page_token(page: Page) -> str | None:
    token: str | None = page.evaluate("window.demo.client && window.demo.client.token")
    return token


def _claims(token: str) -> dict[str, Any]:
    # Expiry is checked against the fake clock by the callers, not real time.
    claims: dict[str, Any] = jwt.decode(
        token, SIGNING_KEY.encode(), algorithms=["HS256"], options={"verify_exp": False}
    )
    return claims


def _page_errors(page: Page) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = page.evaluate("window.demo.errors")
    return errors


def _statuses(demo: Demo) -> list[int]:
    return [entry.status for entry in demo.local.log]


def _tinybird_queries(page: Page, demo: Demo) -> list[dict[str, list[str]]]:
    queries: list[dict[str, list[str]]] = []

    def record(request: Any) -> None:
        if request.url.startswith(demo.tinybird_url) and request.method == "GET":
            queries.append(parse_qs(urlsplit(request.url).query))

    page.on("request", record)
    return queries


def test_alice_sees_only_acme_rows(page: Page, demo: Demo, artifacts: Path) -> None:
    queries = _tinybird_queries(page, demo)

    _sign_in(page, demo, "alice@acme")

    assert _row_orgs(page) == ["acme"] * 12
    assert page.text_content("#user-org") == "acme"
    assert "response header" in (page.text_content("#token-source") or "")
    assert _page_errors(page) == []
    assert queries == [{}]
    token = _page_token(page)
    assert token is not None
    claims = _claims(token)
    assert claims["scopes"] == [
        {
            "type": "PIPES:READ",
            "resource": "org_events",
            "fixed_params": {"org_id": "acme"},
        }
    ]
    assert claims["name"] == "alice@acme"
    assert claims["limits"] == {"rps": 5}
    assert _statuses(demo) == [200]

    shot = artifacts / f"demo-{demo.framework}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bob_asking_for_acme_gets_globex(page: Page, demo: Demo) -> None:
    queries = _tinybird_queries(page, demo)
    _sign_in(page, demo, "bob@globex")
    assert _row_orgs(page) == ["globex"] * 12

    page.fill("#org-override", "acme")
    page.click("#query-button")
    _wait(page, "window.demo.loads >= 2")

    assert queries[-1] == {"org_id": ["acme"]}
    assert _row_orgs(page) == ["globex"] * 12
    assert "asked for org_id=acme" in (page.text_content("#status") or "")
    assert _page_errors(page) == []
    assert _statuses(demo) == [200, 200]


def test_users_in_two_contexts_stay_apart(
    page: Page, demo: Demo, playwright: Playwright, tmp_path: Path
) -> None:
    _sign_in(page, demo, "alice@acme")
    other = playwright.chromium.launch_persistent_context(
        str(tmp_path / "other-profile"),
        executable_path=BROWSER,
        headless=True,
        args=BROWSER_ARGS,
    )
    try:
        bob = other.pages[0] if other.pages else other.new_page()
        _sign_in(bob, demo, "bob@globex")

        assert _row_orgs(bob) == ["globex"] * 12
        page.click("#query-button")
        _wait(page, "window.demo.loads >= 2")
        assert _row_orgs(page) == ["acme"] * 12
        assert _page_token(page) != _page_token(bob)
    finally:
        other.close()


def test_logout_removes_token_and_cookie(
    page: Page, context: BrowserContext, demo: Demo
) -> None:
    _sign_in(page, demo, "alice@acme")
    before = {cookie["name"]: cookie["value"] for cookie in context.cookies()}
    assert before["tinybird_token"] == _page_token(page)

    page.click("#logout-button")
    page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)

    names = {cookie["name"] for cookie in context.cookies()}
    assert "tinybird_token" not in names
    assert _page_token(page) is None
    assert "tinybird_token" not in page.evaluate("document.cookie")
    assert page.locator("#rows tbody tr").count() == 0
    endpoint = page.evaluate(
        "fetch('/tinybird/token', {cache: 'no-store'}).then(r => r.status)"
    )
    assert endpoint == 401

    with page.expect_response(f"{demo.url}/api/me") as info:
        page.reload()
    assert info.value.status == 401
    assert info.value.headers.get("x-tinybird-token") is None


def test_token_refreshed_before_expiry(page: Page, demo: Demo) -> None:
    page.clock.install(time=demo.clock.now)
    _sign_in(page, demo, "alice@acme")
    first = _page_token(page)
    assert first is not None
    expires_at = _claims(first)["exp"]

    # Move both clocks past the token's expiry: the page's refresh timer and
    # its 30 s reload fire, and every query must carry a live token.
    step = expires_at - demo.clock.now + 5
    demo.clock.advance(step)
    page.clock.fast_forward(int(step * 1000))
    _wait(page, "window.demo.client.stats.refreshes >= 1")
    page.click("#query-button")
    _wait(page, "window.demo.loads >= 3")

    second = _page_token(page)
    assert second is not None
    assert second != first
    assert _claims(second)["exp"] > demo.clock.now
    assert _row_orgs(page) == ["acme"] * 12
    assert _page_errors(page) == []
    assert 403 not in _statuses(demo)
    assert page.evaluate("window.demo.client.stats.retries") == 0
    assert "token endpoint" in (page.text_content("#token-source") or "")


def test_expired_token_retried_once(page: Page, demo: Demo) -> None:
    _sign_in(page, demo, "bob@globex")
    first = _page_token(page)
    assert first is not None

    # Only the server's clock moves, as with a browser clock that is behind:
    # the page still trusts its token, Tinybird rejects it, the client
    # fetches a fresh one and retries.
    demo.clock.advance(TTL + 1)
    page.click("#query-button")
    _wait(page, "window.demo.loads >= 2")

    assert _statuses(demo) == [200, 403, 200]
    assert demo.local.log[1] == ServedRequest("org_events", 403, None)
    assert _page_errors(page) == []
    assert page.evaluate("window.demo.client.stats.retries") == 1
    assert _row_orgs(page) == ["globex"] * 12
    second = _page_token(page)
    assert second is not None
    assert _claims(second)["exp"] > demo.clock.now


def test_client_reports_rate_limit(page: Page, demo: Demo) -> None:
    _sign_in(page, demo, "alice@acme")

    # Five requests per second per user: with the fake clock standing still,
    # the first query and four of these fit, the fifth gets 429.
    outcomes = page.evaluate(
        """() => Promise.all([1, 2, 3, 4, 5].map(() =>
            window.demo.client.query("org_events").then(
                (result) => result.rows,
                (error) => [error.name, error.status, error.retryAfter],
            )))"""
    )

    assert outcomes.count(12) == 4
    assert ["TinybirdRequestError", 429, 1] in outcomes
    assert _statuses(demo).count(429) == 1


def test_client_shares_concurrent_refreshes(page: Page, demo: Demo) -> None:
    _sign_in(page, demo, "bob@globex")
    token_requests: list[str] = []

    def record(request: Any) -> None:
        if request.url.endswith("/tinybird/token"):
            token_requests.append(request.url)

    page.on("request", record)

    tokens = page.evaluate(
        """() => Promise.all([1, 2, 3].map(() => window.demo.client.refresh()))"""
    )

    assert len(set(tokens)) == 1
    assert token_requests == [f"{demo.url}/tinybird/token"]
    assert _claims(tokens[0])["scopes"][0]["fixed_params"] == {"org_id": "globex"}


def _until(page: Page, ready: Callable[[], bool], what: str) -> None:
    # Playwright delivers route and request events only while the test thread
    # is inside a Playwright call, so this polls through short page waits.
    deadline = time.monotonic() + WAIT_MS / 1000
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out waiting for {what}")
        page.wait_for_timeout(20)


def _bearer_name(request: Any) -> str | None:
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer "):
        return None
    name: str = _claims(header.removeprefix("Bearer "))["name"]
    return name


def test_previous_user_rows_never_shown(page: Page, demo: Demo) -> None:
    held: list[Any] = []

    def hold_alice(route: Any) -> None:
        if _bearer_name(route.request) == "alice@acme":
            held.append(route)
        else:
            route.continue_()

    page.route(f"{demo.tinybird_url}/v0/pipes/**", hold_alice)
    page.goto(demo.url)
    page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)
    page.fill("#email", "alice@acme")
    page.click("#login-button")
    _until(page, lambda: len(held) == 1, "alice's pipe request")

    page.click("#logout-button")
    page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)
    page.fill("#email", "bob@globex")
    page.click("#login-button")
    _wait(page, "window.demo.loads >= 1")
    assert _row_orgs(page) == ["globex"] * 12

    # Alice's response arrives only now, after bob's rows are on the page.
    with contextlib.suppress(PlaywrightError):
        held[0].continue_()
    _wait(page, "window.demo.dropped >= 1")
    page.click("#query-button")
    _wait(page, "window.demo.loads >= 2")

    assert _row_orgs(page) == ["globex"] * 12
    assert page.text_content("#user-org") == "globex"
    assert page.text_content("#user-email") == "bob@globex"
    assert _page_errors(page) == []


def test_ended_session_returns_to_sign_in(
    page: Page, context: BrowserContext, demo: Demo
) -> None:
    _sign_in(page, demo, "alice@acme")
    assert _row_orgs(page) == ["acme"] * 12

    # The session ends on the server's side: without its session cookie the
    # token endpoint returns 401, and the expired token gets a 403 from the
    # pipe, so the page's retry asks the token endpoint.
    context.clear_cookies()
    demo.clock.advance(TTL + 1)
    page.click("#query-button")
    page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)

    assert page.is_hidden("#dashboard")
    assert page.locator("#rows tbody tr").count() == 0
    assert "session has ended" in (page.text_content("#login-error") or "")
    assert _page_token(page) is None
    assert _page_errors(page) == []


def test_double_submit_signs_in_once(page: Page, demo: Demo) -> None:
    logins: list[str] = []
    page.on(
        "request",
        lambda request: (
            logins.append(request.url) if request.url.endswith("/login") else None
        ),
    )
    page.goto(demo.url)
    page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)
    page.fill("#email", "alice@acme")
    page.fill("#password", "demo")

    page.evaluate(
        """() => {
          const form = document.getElementById("login-form");
          form.requestSubmit();
          form.requestSubmit();
        }"""
    )
    _wait(page, "window.demo.loads >= 1")

    assert logins == [f"{demo.url}/login"]
    assert _row_orgs(page) == ["acme"] * 12


def test_slow_logout_keeps_next_session(page: Page, demo: Demo) -> None:
    held_routes: list[Any] = []

    def hold(route: Any) -> None:
        held_routes.append(route)

    page.route(f"{demo.url}/logout", hold)
    _sign_in(page, demo, "alice@acme")
    page.click("#logout-button")
    page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)

    # Bob signs in while alice's /logout is still held back.
    page.fill("#email", "bob@globex")
    page.fill("#password", "demo")
    page.click("#login-button")
    _wait(page, "document.getElementById('login-button').disabled")
    assert len(held_routes) == 1
    held_routes[0].continue_()
    _wait(page, "window.demo.loads >= 1 && window.demo.client !== null")

    endpoint = page.evaluate(
        "fetch('/tinybird/token', {cache: 'no-store'}).then(r => r.status)"
    )
    assert endpoint == 200
    assert _row_orgs(page) == ["globex"] * 12


def test_unexpected_pipe_reply_shown_as_error(page: Page, demo: Demo) -> None:
    page.route(
        f"{demo.tinybird_url}/v0/pipes/**",
        lambda route: route.fulfill(
            json={"rows": 0}, headers={"Access-Control-Allow-Origin": "*"}
        ),
    )

    _sign_in(page, demo, "alice@acme")

    assert "no data list" in (page.text_content("#status") or "")
    assert _page_errors(page) == [
        {"status": 0, "message": "the pipe reply has no data list"}
    ]


CROSS_SITE_LOGIN = """<form id=f method=POST action="{url}/login" enctype="text/plain">
<input name='{{"email":"bob@globex","password":"demo","x":"' value='"}}'></form>
<script>f.submit()</script>"""


def test_cross_site_form_cannot_sign_in(page: Page, demo: Demo) -> None:
    page.route(
        "http://attacker.test/**",
        lambda route: route.fulfill(
            status=200,
            content_type="text/html",
            body=CROSS_SITE_LOGIN.format(url=demo.url),
        ),
    )
    with page.expect_response(f"{demo.url}/login") as info:
        page.goto("http://attacker.test/")
    assert info.value.status == 415

    page.goto(demo.url)
    _wait(page, "window.demo.ready")
    assert page.is_visible("#login")
    assert page.is_hidden("#dashboard")


@pytest.mark.parametrize("path", ["/login", "/logout"])
def test_state_changing_posts_need_json_same_origin(demo: Demo, path: str) -> None:
    body = '{"email": "bob@globex", "password": "demo"}'
    with httpx.Client(base_url=demo.url) as http:
        plain = http.post(path, content=body, headers={"Content-Type": "text/plain"})
        cross = http.post(
            path,
            content=body,
            headers={
                "Content-Type": "application/json",
                "Origin": "http://attacker.test",
            },
        )
        same = http.post(
            path,
            content=body,
            headers={"Content-Type": "application/json", "Origin": demo.url},
        )

    assert plain.status_code == 415
    assert "demo_session" not in plain.cookies
    assert cross.status_code == 403
    assert "demo_session" not in cross.cookies
    assert same.status_code == 200


def test_page_has_inline_favicon(page: Page, demo: Demo) -> None:
    favicons: list[str] = []
    page.on(
        "request",
        lambda request: (
            favicons.append(request.url)
            if request.url.endswith("/favicon.ico")
            else None
        ),
    )
    _sign_in(page, demo, "alice@acme")

    href = page.get_attribute("link[rel=icon]", "href")
    assert href is not None
    assert href.startswith("data:image/svg+xml,")
    assert favicons == []


# tinybird-client.js on its own: the module is loaded into a page and driven
# with a fake fetch, so each case controls every response the client sees.

CLIENT_ORIGIN = "http://client.test"
CLIENT_HARNESS = """
window.harness = async () => {
  const module = await import("/tinybird-client.js");
  const json = (body, status = 200) => new Response(JSON.stringify(body), {
    status, headers: { "Content-Type": "application/json" },
  });
  const html = (status = 200) => new Response("<!doctype html><p>Sign in", {
    status, headers: { "Content-Type": "text/html" },
  });
  return { ...module, json, html };
};
"""


@pytest.fixture
def client_page(page: Page) -> Page:
    source = (EXAMPLES / "tinybird-client.js").read_text()
    page_html = f"<!doctype html><script>{CLIENT_HARNESS}</script>"

    def serve(route: Any) -> None:
        if route.request.url.endswith("/tinybird-client.js"):
            route.fulfill(body=source, content_type="text/javascript")
        else:
            route.fulfill(body=page_html, content_type="text/html")

    page.route(f"{CLIENT_ORIGIN}/**", serve)
    page.goto(f"{CLIENT_ORIGIN}/")
    return page


def test_client_clear_cancels_query_awaiting_token(client_page: Page) -> None:
    result = client_page.evaluate(
        """async () => {
          const { TinybirdClient, json } = await window.harness();
          const calls = [];
          let release;
          const gate = new Promise((resolve) => { release = resolve; });
          const fetch = async (url, init) => {
            calls.push([url, init.headers?.Authorization ?? null]);
            if (url === "/tinybird/token") {
              await gate;
              return json({ token: "OLD-USER", expires_at: Date.now() / 1000 + 600,
                            api_url: "http://tb.test" });
            }
            return json({ data: [], rows: 0 });
          };
          const client = new TinybirdClient({ fetch });
          const query = client.query("org_events");
          await new Promise((resolve) => setTimeout(resolve, 0));
          client.clear();
          release();
          const outcome = await query.then(
            () => "resolved",
            (error) => [error.name, error.status, error.cancelled],
          );
          return { outcome, calls, token: client.token };
        }"""
    )

    assert result["outcome"] == ["TinybirdRequestError", 0, True]
    assert result["calls"] == [["/tinybird/token", None]]
    assert result["token"] is None


def test_client_clear_aborts_query_in_flight(client_page: Page) -> None:
    result = client_page.evaluate(
        """async () => {
          const { TinybirdClient } = await window.harness();
          let aborted = false;
          const fetch = (url, init) => new Promise((resolve, reject) => {
            init.signal.addEventListener("abort", () => {
              aborted = true;
              reject(new DOMException("The operation was aborted.", "AbortError"));
            });
          });
          const client = new TinybirdClient({ fetch, apiUrl: "http://tb.test" });
          client.setToken("OLD-USER", Date.now() / 1000 + 600);
          const query = client.query("org_events");
          await new Promise((resolve) => setTimeout(resolve, 0));
          client.clear();
          const outcome = await query.then(
            () => "resolved",
            (error) => [error.name, error.status, error.cancelled],
          );
          return { outcome, aborted };
        }"""
    )

    assert result["outcome"] == ["TinybirdRequestError", 0, True]
    assert result["aborted"] is True


def test_client_backs_off_with_clock_ahead(client_page: Page) -> None:
    # The page's clock runs 1200 s ahead of the server, whose tokens live
    # 600 s, so every token looks expired on arrival. One simulated hour of
    # getToken() calls, one a second.
    result = client_page.evaluate(
        """async () => {
          const { TinybirdClient, json } = await window.harness();
          let now = 1_800_000_000;
          const fetched = [];
          const fetch = async () => {
            fetched.push(now);
            const serverNow = now - 1200;
            return json({ token: `T${Math.floor(serverNow / 300)}`,
                          expires_at: serverNow + 600, api_url: "http://tb.test" });
          };
          const client = new TinybirdClient({ fetch, now: () => now });
          for (let second = 0; second < 3600; second += 1) {
            await client.getToken();
            now += 1;
          }
          return { fetched, refreshes: client.stats.refreshes };
        }"""
    )

    fetched: list[int] = result["fetched"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(fetched)]
    assert len(fetched) <= 20
    assert result["refreshes"] == len(fetched)
    assert gaps == sorted(gaps)
    assert gaps[0] >= 5
    assert max(gaps) == 300


def test_client_interval_resets_with_good_token(client_page: Page) -> None:
    result = client_page.evaluate(
        """async () => {
          const { TinybirdClient, json } = await window.harness();
          let now = 1_800_000_000;
          let skew = 1200;
          const fetched = [];
          const fetch = async () => {
            fetched.push(now);
            return json({ token: `T${now}`, expires_at: now - skew + 600,
                          api_url: "http://tb.test" });
          };
          const client = new TinybirdClient({ fetch, now: () => now });
          for (let second = 0; second < 600; second += 1) {
            await client.getToken();
            now += 1;
          }
          const skewed = fetched.length;
          skew = 0;
          now += 300;
          await client.refresh();
          // A good token is kept until refreshMargin before its expiry.
          for (let second = 0; second < 480; second += 1) {
            await client.getToken();
            now += 1;
          }
          return { skewed, total: fetched.length };
        }"""
    )

    assert result["skewed"] >= 5
    assert result["total"] == result["skewed"] + 1


def test_client_failures_are_request_errors(client_page: Page) -> None:
    outcomes = client_page.evaluate(
        """async () => {
          const { TinybirdClient, json, html } = await window.harness();
          const later = Date.now() / 1000 + 600;
          const cases = {
            htmlToken: () => html(),
            noToken: () => json({ expires_at: later, api_url: "http://tb.test" }),
            millisecondExpiry: () => json({ token: "T", expires_at: later * 1000,
                                            api_url: "http://tb.test" }),
            textExpiry: () => json({ token: "T", expires_at: "soon",
                                     api_url: "http://tb.test" }),
            networkDown: () => { throw new TypeError("Failed to fetch"); },
          };
          const outcomes = {};
          for (const [name, reply] of Object.entries(cases)) {
            const client = new TinybirdClient({ fetch: async () => reply() });
            outcomes[name] = await client.query("org_events").then(
              () => "resolved",
              (error) => [error.name, error.status, error.message,
                          client.stats.refreshes, client.token],
            );
          }
          const pipeHtml = new TinybirdClient({
            fetch: async () => html(), apiUrl: "http://tb.test",
          });
          pipeHtml.setToken("T", later);
          outcomes.htmlPipe = await pipeHtml.query("org_events").then(
            () => "resolved",
            (error) => [error.name, error.status, error.message, 0, "T"],
          );
          return outcomes;
        }"""
    )

    messages = {
        "htmlToken": "not JSON (text/html)",
        "noToken": "missing token",
        "millisecondExpiry": "Unix seconds",
        "textExpiry": "Unix seconds",
        "networkDown": "failed: Failed to fetch",
        "htmlPipe": "not JSON (text/html)",
    }
    for name, message in messages.items():
        error_name, status, text, refreshes, token = outcomes[name]
        assert error_name == "TinybirdRequestError", name
        assert status == (0 if name == "networkDown" else 200), name
        assert message in text, name
        assert refreshes == 0, name
        assert token in (None, "T"), name


def test_client_adopts_only_valid_expiry(client_page: Page) -> None:
    adopted = client_page.evaluate(
        """async () => {
          const { TinybirdClient } = await window.harness();
          const later = Math.floor(Date.now() / 1000) + 600;
          const outcomes = {};
          for (const expires of ["soon", String(later * 1000), "", String(later)]) {
            const client = new TinybirdClient({ fetch: async () => null });
            const response = new Response("{}", { headers: {
              "X-Tinybird-Token": "T", "X-Tinybird-Token-Expires": expires,
            } });
            let result;
            try {
              result = client.adoptResponse(response);
            } catch (error) {
              result = error.name;
            }
            outcomes[expires || "empty"] = [result, client.token];
          }
          return [outcomes, later];
        }"""
    )

    outcomes, later = adopted
    assert outcomes["soon"] == [False, None]
    assert outcomes[str(later * 1000)] == [False, None]
    assert outcomes["empty"] == [False, None]
    assert outcomes[str(later)] == [True, "T"]


def test_client_api_url_option_wins(client_page: Page) -> None:
    result = client_page.evaluate(
        """async () => {
          const { TinybirdClient, json } = await window.harness();
          const urls = [];
          const fetch = async (url) => {
            urls.push(url);
            if (url === "/tinybird/token") {
              return json({ token: "T", expires_at: Date.now() / 1000 + 600,
                            api_url: "http://endpoint.test" });
            }
            return json({ data: [], rows: 0 });
          };
          const client = new TinybirdClient({ fetch, apiUrl: "http://option.test/" });
          await client.query("org_events", { day: "2026-12-01", region: null,
                                             org: undefined });
          await client.query("org_events", new Map([["day", "2026-12-02"],
                                                    ["region", null]]).entries());
          return { urls, apiUrl: client.apiUrl };
        }"""
    )

    assert result["apiUrl"] == "http://option.test"
    assert result["urls"] == [
        "/tinybird/token",
        "http://option.test/v0/pipes/org_events.json?day=2026-12-01",
        "http://option.test/v0/pipes/org_events.json?day=2026-12-02",
    ]


@pytest.mark.parametrize("reason", ["string", "error"])
def test_client_abort_with_reason_cancelled(client_page: Page, reason: str) -> None:
    result = client_page.evaluate(
        """async (reason) => {
          const { TinybirdClient } = await window.harness();
          // Like the browser's fetch: an abort rejects with the signal's reason.
          const fetch = (url, init) => new Promise((resolve, reject) => {
            init.signal.addEventListener("abort", () => reject(init.signal.reason));
          });
          const client = new TinybirdClient({ fetch, apiUrl: "http://tb.test" });
          client.setToken("T", Date.now() / 1000 + 600);
          const controller = new AbortController();
          const query = client.query("org_events", {}, { signal: controller.signal });
          await new Promise((resolve) => setTimeout(resolve, 0));
          controller.abort(reason === "string" ? "unmount" : new Error("gone"));
          return query.then(
            () => "resolved", (error) => [error.status, error.cancelled],
          );
        }""",
        reason,
    )

    assert result == [0, True]


def test_client_clear_during_retry_no_token_request(client_page: Page) -> None:
    result = client_page.evaluate(
        """async () => {
          const { TinybirdClient, json } = await window.harness();
          const urls = [];
          const fetch = async (url) => {
            urls.push(url);
            if (url === "/tinybird/token") {
              return json({ token: "SERVER", expires_at: Date.now() / 1000 + 600 });
            }
            return json({ error: "expired" }, 403);
          };
          let client;
          const onRetry = () => {
            client.clear();
            client.setToken("NEXT-USER", Date.now() / 1000 + 600);
          };
          client = new TinybirdClient({ fetch, apiUrl: "http://tb.test", onRetry });
          client.setToken("OLD-USER", Date.now() / 1000 + 600);
          const outcome = await client.query("org_events").then(
            () => "resolved", (error) => [error.status, error.cancelled],
          );
          return { outcome, urls, token: client.token };
        }"""
    )

    assert result["outcome"] == [0, True]
    assert result["urls"] == ["http://tb.test/v0/pipes/org_events.json"]
    assert result["token"] == "NEXT-USER"


def test_client_retry_after_http_date(client_page: Page) -> None:
    result = client_page.evaluate(
        """async () => {
          const { TinybirdClient } = await window.harness();
          const now = 1_800_000_000;
          const date = new Date((now + 30) * 1000).toUTCString();
          const replies = [date, "7", "soon"];
          const fetch = async () => new Response("{}", {
            status: 429, headers: { "Retry-After": replies.shift() },
          });
          const client = new TinybirdClient({
            fetch, apiUrl: "http://tb.test", now: () => now,
          });
          client.setToken("T", now + 600);
          const seen = [];
          for (let i = 0; i < 3; i += 1) {
            seen.push(await client.query("p").catch((error) => error.retryAfter));
          }
          return seen;
        }"""
    )

    assert result == [30, 7, None]


def test_client_reports_background_refresh_error(client_page: Page) -> None:
    result = client_page.evaluate(
        """async () => {
          const { TinybirdClient, json } = await window.harness();
          const fetch = async () => json({ error: "Sign in" }, 401);
          let reported;
          const done = new Promise((resolve) => { reported = resolve; });
          const client = new TinybirdClient({
            fetch, apiUrl: "http://tb.test", minRefreshInterval: 0.01,
            onRefreshError: (error) => reported([error.status, error.cancelled]),
          });
          client.setToken("T", Date.now() / 1000 + 1);
          client.startAutoRefresh();
          const outcome = await Promise.race([
            done, new Promise((resolve) => setTimeout(() => resolve("timeout"), 5000)),
          ]);
          return { outcome, token: client.token };
        }"""
    )

    assert result["outcome"] == [401, False]
    assert result["token"] is None


def test_client_callback_error_reported(client_page: Page) -> None:
    result = client_page.evaluate(
        """async () => {
          const { TinybirdClient } = await window.harness();
          const reported = [];
          window.addEventListener("error", (event) => {
            reported.push(event.error?.message);
            event.preventDefault();
          });
          const client = new TinybirdClient({
            apiUrl: "http://tb.test",
            onToken: () => { throw new Error("render failed"); },
          });
          client.setToken("T", Date.now() / 1000 + 600);
          await new Promise((resolve) => setTimeout(resolve, 0));
          return { reported, token: client.token };
        }"""
    )

    assert result["reported"] == ["render failed"]
    assert result["token"] == "T"


def test_client_retry_resends_iterator_params(client_page: Page) -> None:
    result = client_page.evaluate(
        """async () => {
          const { TinybirdClient, json } = await window.harness();
          const urls = [];
          const fetch = async (url) => {
            urls.push(url);
            if (url === "/tinybird/token") {
              return json({ token: "FRESH", expires_at: Date.now() / 1000 + 600 });
            }
            if (urls.length === 1) return json({ error: "expired" }, 403);
            return json({ data: [] });
          };
          const client = new TinybirdClient({ fetch, apiUrl: "http://tb.test" });
          client.setToken("OLD", Date.now() / 1000 + 600);
          const params = new Map([["org_id", "acme"]]).entries();
          await client.query("org_events", params);
          return urls;
        }"""
    )

    assert result == [
        "http://tb.test/v0/pipes/org_events.json?org_id=acme",
        "/tinybird/token",
        "http://tb.test/v0/pipes/org_events.json?org_id=acme",
    ]
