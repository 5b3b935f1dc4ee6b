/**
 * tinybird-client.js: query Tinybird pipes from the browser with the
 * per-user JWT that a tinybird-asgi or tinybird_flask backend hands out.
 *
 * An ES module with no dependencies, for plain pages
 * (<script type="module">) and bundlers (React, Vue, Svelte) alike.
 *
 *   import { TinybirdClient } from "./tinybird-client.js";
 *
 *   const tinybird = new TinybirdClient({
 *     tokenUrl: "/tinybird/token",
 *     apiUrl: "https://api.tinybird.co",         // else refresh() learns it
 *   });
 *   const response = await fetch("/api/me");     // any app route
 *   tinybird.adoptResponse(response);            // token from its headers
 *   const { data } = await tinybird.query("org_events", { day: "2026-12-01" });
 *   tinybird.startAutoRefresh();                 // optional background refresh
 *   // on sign-out:
 *   tinybird.clear();
 *
 * What it does:
 *
 * - Takes a token from the X-Tinybird-Token and X-Tinybird-Token-Expires
 *   headers of any app response (adoptResponse), from values you already
 *   have (setToken), or from the backend's token endpoint (refresh), which
 *   returns {"token", "expires_at", "api_url"}, or 401 when signed out.
 * - Tracks the expiry (Unix seconds): getToken() returns the current token
 *   while more than refreshMargin seconds are left, and fetches a new one
 *   otherwise. Concurrent callers share one token request.
 * - query(pipe, params) calls GET {apiUrl}/v0/pipes/{pipe}.json with
 *   Authorization: Bearer, never with ?token= (URLs end up in logs). On a
 *   403 it fetches a fresh token and retries once, which also covers a
 *   browser clock that is off and a signing key rotated on the server.
 * - startAutoRefresh() refreshes refreshMargin seconds before expiry, so a
 *   page that sits open keeps a valid token.
 * - clear() aborts every token request and query in flight: a query started
 *   before clear() rejects and sends no request with the old token.
 *
 * Options (all optional): tokenUrl ("/tinybird/token"), apiUrl (default:
 * the api_url of the token endpoint; when given, it wins over that) and
 * refreshMargin (60 s). Keep refreshMargin at most the server's refresh
 * margin, or the server returns the same token again. Also headerName and
 * expiresHeaderName (the backend's header names), minRefreshInterval (5 s),
 * maxRefreshInterval (300 s), fetch (default: globalThis.fetch), now (Unix
 * seconds, default Date.now), and the callbacks onToken(token),
 * onRetry(error) and onRefreshError(error). onRefreshError reports failures
 * of the background refresh.
 * An exception thrown by a callback is reported (reportError) and does not
 * change what the client does.
 *
 * Clock skew: a token younger than the current refresh interval is used even
 * if the local clock says it is about to expire. That interval starts at
 * minRefreshInterval and doubles, up to maxRefreshInterval, each time the
 * token endpoint returns a token that is already expiring by the local clock
 * (a clock running ahead), and goes back to minRefreshInterval once a token
 * is not. A clock far ahead therefore costs one token request per
 * maxRefreshInterval, not one per minRefreshInterval.
 *
 * Errors: query() and refresh() reject with a TinybirdRequestError. Its
 * status is the HTTP status (401 when signed out, 403 when Tinybird still
 * rejects a fresh token, 429 over the rate limit, or the status of a reply
 * whose body is not the expected JSON), or 0 for a network failure, an
 * unknown apiUrl or a request cancelled by clear() or by the caller's signal,
 * whatever its abort reason (then cancelled is true). Its message is the
 * server's error text or describes what was wrong. retryAfter is the
 * Retry-After header in seconds (given as a number or an HTTP date), or null.
 *
 * React: create one client per signed-in session (useMemo or a module
 * singleton), call clear() on sign-out, and run query() in an effect.
 */

const DEFAULTS = {
  tokenUrl: "/tinybird/token",
  apiUrl: null,
  refreshMargin: 60,
  minRefreshInterval: 5,
  maxRefreshInterval: 300,
  headerName: "X-Tinybird-Token",
  expiresHeaderName: "X-Tinybird-Token-Expires",
};

// setTimeout takes at most 2^31 - 1 ms (about 24.8 days).
const MAX_TIMER_MS = 2 ** 31 - 1;
// 3000-01-01T00:00:00Z in Unix seconds: a larger expiry is in milliseconds.
const MAX_EXPIRES_AT = 32503680000;

export class TinybirdRequestError extends Error {
  constructor(message, { status, url, retryAfter = null, cancelled = false }) {
    super(message);
    this.name = "TinybirdRequestError";
    this.status = status;
    this.url = url;
    this.retryAfter = retryAfter;
    this.cancelled = cancelled;
  }
}

export class TinybirdClient {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    this._fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this._now = options.now ?? (() => Date.now() / 1000);
    this._token = null;
    this._expiresAt = 0;
    this._receivedAt = 0;
    this._apiUrl = this.options.apiUrl ? trimSlash(this.options.apiUrl) : null;
    this._pending = null;
    this._timer = null;
    this._autoRefresh = false;
    this._generation = 0;
    this._controller = new AbortController();
    this._interval = this.options.minRefreshInterval;
    this.stats = { queries: 0, refreshes: 0, retries: 0 };
  }

  /** The current JWT, or null. */
  get token() {
    return this._token;
  }

  /** The current token's expiry in Unix seconds, or 0 without a token. */
  get expiresAt() {
    return this._expiresAt;
  }

  /** The Tinybird API base URL queries go to, once known. */
  get apiUrl() {
    return this._apiUrl;
  }

  /** Store a token received some other way (a template, a cookie). */
  setToken(token, expiresAt, apiUrl = null) {
    const expires = parseExpiry(expiresAt);
    if (typeof token !== "string" || !token || expires === null) {
      throw new TypeError("setToken needs a token and its expiry in Unix seconds");
    }
    this._token = token;
    this._expiresAt = expires;
    this._receivedAt = this._now();
    if (apiUrl) this._apiUrl = trimSlash(apiUrl);
    if (this._autoRefresh) this._schedule();
    this._callback("onToken", token);
  }

  /**
   * Store the token carried by an app response's headers.
   * Returns whether the response had one with a valid expiry.
   */
  adoptResponse(response) {
    const token = response.headers.get(this.options.headerName);
    const expires = response.headers.get(this.options.expiresHeaderName);
    if (!token || parseExpiry(expires) === null) return false;
    this.setToken(token, expires);
    return true;
  }

  /**
   * Forget the token, stop refreshing and abort every token request and query
   * in flight (call on sign-out).
   */
  clear() {
    this._generation += 1;
    this._controller.abort();
    this._controller = new AbortController();
    this._interval = this.options.minRefreshInterval;
    this._token = null;
    this._expiresAt = 0;
    this._receivedAt = 0;
    this._pending = null;
    this.stopAutoRefresh();
  }

  /** Return a token with more than refreshMargin seconds left. */
  async getToken() {
    if (this._token && !this._expiring()) return this._token;
    return this.refresh();
  }

  /** Fetch a new token from the token endpoint; concurrent calls share one. */
  refresh() {
    if (this._pending === null) {
      const generation = this._generation;
      this._pending = this._fetchToken(generation).finally(() => {
        if (generation === this._generation) this._pending = null;
      });
    }
    return this._pending;
  }

  /**
   * Query a pipe endpoint and return its JSON ({data, rows, meta, ...}).
   * params gives the pipe parameters: an object, a query string, or any
   * iterable of [name, value] pairs (URLSearchParams, Map, FormData, an
   * array). Parameters whose value is null or undefined are left out.
   */
  async query(pipe, params = {}, { signal } = {}) {
    this.stats.queries += 1;
    const generation = this._generation;
    // Built once: an iterator passed as params can be read only once, and
    // the retry on 403 sends the same parameters.
    const search = queryString(params);
    const token = await this.getToken();
    const first = await this._get(pipe, search, token, signal, generation);
    if (first.status !== 403) return this._read(first);

    // A 403 usually means the token expired early by the browser's clock or
    // the key was rotated: one retry with a fresh token, then give up.
    const error = await this._error(first);
    this.stats.retries += 1;
    this._callback("onRetry", error);
    // clear() may have run meanwhile: the retry must not fetch a token for
    // the session that follows.
    this._checkGeneration(generation, error.url);
    const fresh = await this.refresh();
    return this._read(await this._get(pipe, search, fresh, signal, generation));
  }

  /**
   * Refresh refreshMargin seconds before each expiry until stopAutoRefresh()
   * or clear(); a 401 from the token endpoint also stops it.
   */
  startAutoRefresh() {
    this._autoRefresh = true;
    this._schedule();
  }

  stopAutoRefresh() {
    this._autoRefresh = false;
    if (this._timer !== null) clearTimeout(this._timer);
    this._timer = null;
  }

  _expiring() {
    const now = this._now();
    if (now - this._receivedAt < this._interval) return false;
    return this._expiresAt - now <= this.options.refreshMargin;
  }

  _schedule() {
    if (this._timer !== null) clearTimeout(this._timer);
    const due = this._expiresAt - this.options.refreshMargin - this._now();
    const delay = Math.max(this._interval, due) * 1000;
    const generation = this._generation;
    this._timer = setTimeout(() => {
      this._timer = null;
      // A failed refresh is retried after the current refresh interval.
      this.refresh()
        .catch((error) => {
          if (generation === this._generation && !error?.cancelled) {
            this._callback("onRefreshError", error);
          }
        })
        .finally(() => {
          if (this._autoRefresh && this._timer === null) this._schedule();
        });
    }, Math.min(delay, MAX_TIMER_MS));
  }

  async _fetchToken(generation) {
    const url = this.options.tokenUrl;
    const response = await this._send(url, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
    }, null, generation);
    if (!response.ok) {
      if (response.status === 401 && generation === this._generation) {
        this._token = null;
        this._expiresAt = 0;
        this.stopAutoRefresh();
      }
      throw await this._error(response);
    }
    const body = await this._json(response, "token endpoint");
    this._checkGeneration(generation, url);
    const expires = parseExpiry(body?.expires_at);
    if (typeof body?.token !== "string" || !body.token || expires === null) {
      throw new TinybirdRequestError(
        "The token endpoint's reply is missing token, or its expires_at is not Unix seconds.",
        { status: response.status, url },
      );
    }
    this.stats.refreshes += 1;
    this._adjustInterval(expires);
    // An apiUrl given as an option wins over the endpoint's.
    this.setToken(body.token, expires, this.options.apiUrl ? null : body.api_url);
    return body.token;
  }

  // Doubles the refresh interval while the endpoint keeps returning tokens
  // that are already expiring by the local clock (a clock running ahead),
  // and resets it once a token is not.
  _adjustInterval(expires) {
    const { minRefreshInterval, maxRefreshInterval, refreshMargin } = this.options;
    const expiring = expires - this._now() <= refreshMargin;
    this._interval = expiring
      ? Math.min(maxRefreshInterval, Math.max(minRefreshInterval, this._interval * 2))
      : minRefreshInterval;
  }

  _get(pipe, search, token, signal, generation) {
    if (!this._apiUrl) {
      throw new TinybirdRequestError(
        "apiUrl is unknown: pass it or refresh() first", { status: 0, url: null },
      );
    }
    const url = `${this._apiUrl}/v0/pipes/${encodeURIComponent(pipe)}.json` +
      (search ? `?${search}` : "");
    return this._send(url, {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
    }, signal, generation);
  }

  // Calls fetch with a signal that clear() and the caller's signal both abort,
  // and turns network failures and aborts into TinybirdRequestError.
  async _send(url, init, signal, generation) {
    const bare = url.split("?")[0];
    this._checkGeneration(generation, bare);
    const signals = [this._controller.signal, ...(signal ? [signal] : [])];
    try {
      return await this._fetch(url, { ...init, signal: anySignal(signals) });
    } catch (error) {
      this._checkGeneration(generation, bare);
      // An abort rejects with the signal's reason, which is an AbortError
      // only when abort() was called without one.
      const cancelled = error?.name === "AbortError" || signals.some((s) => s.aborted);
      const reason = cancelled ? "cancelled" : `failed: ${error?.message ?? error}`;
      throw new TinybirdRequestError(`Request to ${bare} ${reason}`, {
        status: 0,
        url: bare,
        cancelled,
      });
    }
  }

  _checkGeneration(generation, url) {
    if (generation !== this._generation) {
      throw new TinybirdRequestError("Request cancelled by clear()", {
        status: 0,
        url,
        cancelled: true,
      });
    }
  }

  async _json(response, source) {
    try {
      return await response.json();
    } catch {
      const type = response.headers.get("Content-Type") || "no Content-Type";
      throw new TinybirdRequestError(
        `The ${source} returned ${response.status} with a body that is not JSON (${type}).`,
        { status: response.status, url: response.url.split("?")[0] },
      );
    }
  }

  async _read(response) {
    if (!response.ok) throw await this._error(response);
    return this._json(response, "pipe endpoint");
  }

  async _error(response) {
    let message = `${response.status} ${response.statusText}`.trim();
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") message = body.error;
    } catch {
      // Not JSON: keep the status line.
    }
    return new TinybirdRequestError(message, {
      status: response.status,
      url: response.url.split("?")[0],
      retryAfter: parseRetryAfter(response.headers.get("Retry-After"), this._now()),
    });
  }

  // Runs an app callback; an exception it throws is reported, not raised, so
  // it never turns a token or a query into a failure.
  _callback(name, argument) {
    const callback = this.options[name];
    if (!callback) return;
    try {
      callback(argument);
    } catch (error) {
      if (typeof globalThis.reportError === "function") {
        globalThis.reportError(error);
      } else {
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}

// Returns Retry-After in seconds: the header is either delay-seconds or an
// HTTP date (RFC 9110, section 10.2.3). null when absent or unreadable.
function parseRetryAfter(value, now) {
  if (value === null) return null;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return null;
  return Math.max(0, Math.ceil(date / 1000 - now));
}

// Returns the query string for pipe parameters: a string as it is, else the
// [name, value] pairs of an iterable or the entries of a plain object,
// leaving out those whose value is null or undefined.
function queryString(params) {
  if (typeof params === "string") return new URLSearchParams(params).toString();
  const pairs = typeof params?.[Symbol.iterator] === "function"
    ? params
    : Object.entries(params ?? {});
  const search = new URLSearchParams();
  for (const [key, value] of pairs) {
    if (value !== null && value !== undefined) search.append(key, String(value));
  }
  return search.toString();
}

// Returns the expiry as a number of Unix seconds, or null when it is not one
// (missing, not a number, not positive, or beyond year 3000: milliseconds).
function parseExpiry(value) {
  if (value === null || value === undefined || value === "") return null;
  const expires = Number(value);
  if (!Number.isFinite(expires) || expires <= 0 || expires > MAX_EXPIRES_AT) {
    return null;
  }
  return expires;
}

function anySignal(signals) {
  if (signals.length === 1) return signals[0];
  if (typeof AbortSignal.any === "function") return AbortSignal.any(signals);
  const controller = new AbortController();
  for (const signal of signals) {
    if (signal.aborted) controller.abort(signal.reason);
    signal.addEventListener("abort", () => controller.abort(signal.reason), {
      once: true,
    });
  }
  return controller.signal;
}

function trimSlash(url) {
  return String(url).replace(/\/+$/, "");
}
