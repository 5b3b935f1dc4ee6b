// The demo page: sign in, read the token from a response header, query the
// pipe straight from the browser, keep the token fresh, sign out.
import { TinybirdClient } from "/static/tinybird-client.js";

const $ = (id) => document.getElementById(id);
// Polled by the browser tests; nothing here is needed by the page itself.
// dropped counts query results discarded because their session had ended.
const demo = { client: null, errors: [], ready: false, loads: 0, dropped: 0 };
window.demo = demo;

let config = null;
let refreshesSeen = 0;
let ticker = null;
let reloader = null;
// Each sign-in gets a new session number and AbortController, so a query
// started by an earlier session is aborted and never rendered.
let session = 0;
let sessionAbort = null;
// The last /logout request: a sign-in waits for it, so a slow logout reply
// cannot end the session of the user who signs in next.
let pendingLogout = Promise.resolve();
// Rows rendered at most; a longer reply is cut, and the status line reports it.
const MAX_RENDERED_ROWS = 1000;

async function post(path, body) {
  return fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

function show(section) {
  $("login").hidden = section !== "login";
  $("dashboard").hidden = section !== "dashboard";
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function renderToken() {
  const client = demo.client;
  if (!client || !client.token) return;
  const left = Math.max(0, Math.round(client.expiresAt - Date.now() / 1000));
  $("token-expires").textContent = new Date(client.expiresAt * 1000).toLocaleTimeString();
  $("token-left").textContent = `${Math.floor(left / 60)} min ${left % 60} s`;
  $("stats-queries").textContent = client.stats.queries;
  $("stats-refreshes").textContent = client.stats.refreshes;
  $("stats-retries").textContent = client.stats.retries;
}

function onToken() {
  const refreshes = demo.client.stats.refreshes;
  $("token-source").textContent = refreshes > refreshesSeen
    ? "token endpoint (GET /tinybird/token)"
    : "X-Tinybird-Token response header";
  refreshesSeen = refreshes;
  renderToken();
}

function renderRows(allRows) {
  const body = $("rows").tBodies[0];
  body.replaceChildren();
  const rows = allRows.slice(0, MAX_RENDERED_ROWS);
  const max = rows.reduce((top, row) => Math.max(top, Number(row.count) || 0), 1);
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.dataset.org = row.org_id;
    for (const key of ["org_id", "day", "event", "count"]) {
      const td = document.createElement("td");
      td.textContent = row[key];
      tr.append(td);
    }
    const bar = document.createElement("td");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * (Number(row.count) || 0)) / max}%`;
    bar.append(fill);
    tr.append(bar);
    body.append(tr);
  }
  $("row-count").textContent = rows.length;
}

async function loadRows() {
  const client = demo.client;
  if (!client) return;
  const mine = session;
  const override = $("org-override").value.trim();
  const params = override ? { org_id: override } : {};
  let result = null;
  let failure = null;
  try {
    result = await client.query(config.pipe, params, { signal: sessionAbort.signal });
  } catch (error) {
    failure = error;
  }
  if (mine !== session) {
    demo.dropped += 1;
    return;
  }
  if (failure === null && !Array.isArray(result?.data)) {
    failure = { status: 0, message: "the pipe reply has no data list" };
  }
  if (failure === null) {
    renderRows(result.data);
    const asked = override ? `; asked for org_id=${override}` : "";
    const cut = result.data.length > MAX_RENDERED_ROWS
      ? `, first ${MAX_RENDERED_ROWS} shown`
      : "";
    setStatus(`${result.data.length} rows${cut} at ${new Date().toLocaleTimeString()}${asked}`);
  } else if (failure.status === 401) {
    // The token endpoint no longer knows this session (signed out elsewhere,
    // or the session cookie expired): back to the sign-in form.
    endSession("Your session has ended; sign in again.");
  } else {
    demo.errors.push({ status: failure.status ?? null, message: String(failure.message) });
    setStatus(`Query failed (${failure.status || "network"}): ${failure.message}`, true);
  }
  demo.loads += 1;
  renderToken();
}

function onRefreshError(error) {
  // The background refresh met a 401: the session ended elsewhere.
  if (error.status === 401) endSession("Your session has ended; sign in again.");
}

function startSession(me, response) {
  // A second sign-in (a double submit) replaces the first session entirely.
  if (demo.client) endSession();
  session += 1;
  sessionAbort = new AbortController();
  config = me.tinybird;
  refreshesSeen = 0;
  const client = new TinybirdClient({
    tokenUrl: config.token_path,
    apiUrl: config.api_url,
    onToken,
    onRefreshError,
  });
  demo.client = client;
  $("user-email").textContent = me.user.email;
  $("user-org").textContent = me.user.org;
  $("pipe-name").textContent = config.pipe;
  $("mode").textContent = config.mode === "local"
    ? `local Tinybird endpoint at ${config.api_url}`
    : `Tinybird at ${config.api_url}`;
  client.adoptResponse(response);
  client.startAutoRefresh();
  show("dashboard");
  ticker = setInterval(renderToken, 1000);
  reloader = setInterval(loadRows, 30000);
  return loadRows();
}

function endSession(message = "") {
  session += 1;
  sessionAbort?.abort();
  sessionAbort = null;
  clearInterval(ticker);
  clearInterval(reloader);
  demo.client?.clear();
  demo.client = null;
  config = null;
  $("rows").tBodies[0].replaceChildren();
  $("row-count").textContent = "0";
  $("org-override").value = "";
  setStatus("");
  $("login-error").textContent = message;
  show("login");
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("login-button");
  if (button.disabled) return;
  button.disabled = true;
  $("login-error").textContent = "";
  try {
    await pendingLogout;
    const response = await post("/login", {
      email: $("email").value,
      password: $("password").value,
    });
    if (!response.ok) {
      $("login-error").textContent = "Unknown email or wrong password.";
      return;
    }
    await startSession(await response.json(), response);
  } finally {
    button.disabled = false;
  }
});

$("query-form").addEventListener("submit", (event) => {
  event.preventDefault();
  loadRows();
});

$("refresh-button").addEventListener("click", async () => {
  const mine = session;
  try {
    await demo.client.refresh();
  } catch (error) {
    if (mine !== session) return;
    if (error.status === 401) {
      endSession("Your session has ended; sign in again.");
    } else {
      setStatus(`Token refresh failed (${error.status || "network"}): ${error.message}`, true);
    }
  }
});

$("logout-button").addEventListener("click", async () => {
  // End the page's session first, so nothing renders while /logout runs.
  endSession();
  pendingLogout = post("/logout", {}).catch(() => {});
  await pendingLogout;
});

async function boot() {
  const response = await fetch("/api/me", { credentials: "same-origin", cache: "no-store" });
  if (response.ok) {
    await startSession(await response.json(), response);
  } else {
    show("login");
  }
  demo.ready = true;
}

boot();
