"""Framework-neutral rules for putting a token on an HTTP response.

Both adapters build one :class:`DeliveryConfig` and ask it what to change on a
response: which headers to add, which to replace, and what the token endpoint
answers. The adapters only translate between their framework's header types
and these plain ``str`` pairs.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeAlias, TypedDict, TypeVar, get_args

from ._errors import ConfigurationError
from ._issuer import TinybirdToken

__all__ = [
    "CDN_CACHE_HEADERS",
    "MAX_COOKIE_BYTES",
    "WATCHED_HEADERS",
    "DeliveryConfig",
    "DeliveryMode",
    "DeliveryOptions",
    "EditCache",
    "EndpointResponse",
    "ResponseEdit",
    "SameSite",
    "is_preflight",
    "read_cookie",
    "sets_cookie",
]

logger = logging.getLogger("tinybird_asgi")

DeliveryMode: TypeAlias = Literal["header", "cookie", "both"]
SameSite: TypeAlias = Literal["lax", "strict", "none"]

# Browsers keep at least 4096 bytes per cookie (RFC 6265, section 6.1), counted
# over name, value and attributes; a longer Set-Cookie line may be dropped
# without any error the page can see.
MAX_COOKIE_BYTES = 4096

CACHE_CONTROL = "cache-control"
VARY = "vary"
EXPOSE_HEADERS = "access-control-expose-headers"
SET_COOKIE = "set-cookie"
# Lower-case names of the response headers whose values edit_for_token()
# merges, in the order an EditCache key lists their values.
WATCHED_HEADERS = (CACHE_CONTROL, VARY, EXPOSE_HEADERS)
_WATCHED = frozenset(WATCHED_HEADERS)

_TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_PATH = re.compile(r"/[\x21-\x3a\x3c-\x7e]*")
# A request path as servers hand it over: no query, fragment, whitespace or
# control characters, and no '<' or '>', which no client sends unescaped.
_REQUEST_PATH = re.compile(r"/[^\x00-\x20\x7f-\x9f\s?#<>]*")
_DOMAIN = re.compile(r"\.?[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
# Directives a shared cache may act on; a response carrying a token loses them.
_SHARED_CACHE_DIRECTIVES = frozenset({"public", "s-maxage", "private"})
# Headers whose caching rules a CDN or caching proxy follows instead of
# Cache-Control: the targeted CDN-Cache-Control of RFC 9213 and its Cloudflare
# and Vercel forms, Surrogate-Control (Fastly, Varnish), Akamai's Edge-Control
# and nginx's X-Accel-Expires. A response carrying a token loses them, so the
# cache falls back to Cache-Control: private.
CDN_CACHE_HEADERS = frozenset(
    {
        "cdn-cache-control",
        "surrogate-control",
        "cloudflare-cdn-cache-control",
        "vercel-cdn-cache-control",
        "edge-control",
        "x-accel-expires",
    }
)


class DeliveryOptions(TypedDict, total=False):
    """Keyword options of :class:`DeliveryConfig`, for adapters that pass them
    through (``**options: Unpack[DeliveryOptions]``)."""

    delivery: DeliveryMode
    header_name: str
    expires_header_name: str
    cookie_name: str
    cookie_path: str
    cookie_domain: str | None
    cookie_secure: bool
    cookie_samesite: SameSite
    cookie_httponly: bool
    token_path: str | None
    exclude_paths: Sequence[str]
    protect_cache: bool


@dataclass(frozen=True, slots=True)
class ResponseEdit:
    """Changes an adapter applies to one response's headers.

    ``replace`` maps lower-case header names to one merged value; every
    existing line of that name is removed before it is added. ``drop`` lists
    lower-case names whose lines are removed, and ``drop_cookie`` a cookie
    name whose ``Set-Cookie`` lines are removed. ``add`` is appended last.
    ``repr`` gives only the names of the added lines, which carry the token.
    """

    replace: dict[str, str] = field(default_factory=dict)
    drop: frozenset[str] = frozenset()
    drop_cookie: str | None = None
    add: list[tuple[str, str]] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        added = [name for name, _ in self.add]
        return (
            f"ResponseEdit(replace={self.replace!r}, drop={self.drop!r}, "
            f"drop_cookie={self.drop_cookie!r}, add_names={added!r})"
        )

    def removes(self, lower_name: str, value: str) -> bool:
        """Return whether an existing header line is removed by this edit."""
        if lower_name in self.replace or lower_name in self.drop:
            return True
        return (
            self.drop_cookie is not None
            and lower_name == SET_COOKIE
            and sets_cookie(value, self.drop_cookie)
        )

    def additions(self) -> list[tuple[str, str]]:
        """Return the header lines this edit appends: the merged ``replace``
        values under their usual spelling, then ``add``."""
        lines = [(_CANONICAL.get(n, n), v) for n, v in self.replace.items()]
        lines.extend(self.add)
        return lines

    def apply(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Return ``headers`` with this edit applied, keeping every other line."""
        kept = [
            (name, value)
            for name, value in headers
            if not self.removes(name.lower(), value)
        ]
        kept.extend(self.additions())
        return kept


_CANONICAL = {
    CACHE_CONTROL: "Cache-Control",
    VARY: "Vary",
    EXPOSE_HEADERS: "Access-Control-Expose-Headers",
}


@dataclass(frozen=True, slots=True)
class EndpointResponse:
    """Status, headers and body of a token endpoint response.

    ``repr`` leaves out the body, which carries the token.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """How a token reaches the browser; shared by the ASGI and Flask adapters.

    Every option is validated on construction.

    :raises ConfigurationError: for an invalid option, naming it.
    """

    delivery: DeliveryMode = "header"
    """``"header"``, ``"cookie"`` or ``"both"``."""
    header_name: str = "X-Tinybird-Token"
    expires_header_name: str = "X-Tinybird-Token-Expires"
    cookie_name: str = "tinybird_token"
    cookie_path: str = "/"
    cookie_domain: str | None = None
    cookie_secure: bool = True
    cookie_samesite: SameSite = "lax"
    cookie_httponly: bool = False
    """Off by default: page JavaScript must read the token to send it to
    Tinybird, so an HttpOnly cookie is useful only to a server-side reader."""
    token_path: str | None = None
    """Path of the token endpoint, such as ``"/tinybird/token"``; ``None`` for
    no endpoint."""
    exclude_paths: Sequence[str] = ()
    """Path prefixes that get no token; a prefix matches whole segments.
    Stored as a tuple."""
    protect_cache: bool = True
    """Mark token-carrying responses ``private`` and ``Vary: Cookie``, and
    remove the CDN cache headers (``CDN-Cache-Control``, ``Surrogate-Control``
    and their vendor variants) that would override ``Cache-Control``.
    Turning it off lets a shared cache (CDN) serve one user's token to others."""

    def __post_init__(self) -> None:
        if self.delivery not in get_args(DeliveryMode):
            raise ConfigurationError(
                "delivery must be 'header', 'cookie' or 'both', "
                f"not {self.delivery!r}.",
                option="delivery",
            )
        for option in ("header_name", "expires_header_name", "cookie_name"):
            value = getattr(self, option)
            if not isinstance(value, str) or not _TOKEN_CHARS.fullmatch(value):
                raise ConfigurationError(
                    f"{option} {value!r} is not a valid HTTP token; use letters, "
                    "digits and '-' or '_'.",
                    option=option,
                )
        if self.header_name.lower() == self.expires_header_name.lower():
            raise ConfigurationError(
                "header_name and expires_header_name must differ.",
                option="expires_header_name",
            )
        for option in ("header_name", "expires_header_name"):
            if getattr(self, option).lower() in _RESERVED_HEADERS:
                raise ConfigurationError(
                    f"{option} {getattr(self, option)!r} is a standard header name; "
                    "pick a name of your own such as X-Tinybird-Token.",
                    option=option,
                )
        if not isinstance(self.cookie_path, str) or not _COOKIE_PATH.fullmatch(
            self.cookie_path
        ):
            raise ConfigurationError(
                f"cookie_path {self.cookie_path!r} must start with '/' and contain "
                "no ';', spaces or control characters.",
                option="cookie_path",
            )
        if self.cookie_domain is not None and (
            not isinstance(self.cookie_domain, str)
            or not _DOMAIN.fullmatch(self.cookie_domain)
        ):
            raise ConfigurationError(
                f"cookie_domain {self.cookie_domain!r} is not a host name.",
                option="cookie_domain",
            )
        for option in ("cookie_secure", "cookie_httponly", "protect_cache"):
            if not isinstance(getattr(self, option), bool):
                raise ConfigurationError(
                    f"{option} must be True or False.", option=option
                )
        if isinstance(self.cookie_samesite, str):
            # Flask's SESSION_COOKIE_SAMESITE spells it "Lax"; accept any case.
            object.__setattr__(self, "cookie_samesite", self.cookie_samesite.lower())
        if self.cookie_samesite not in get_args(SameSite):
            raise ConfigurationError(
                "cookie_samesite must be 'lax', 'strict' or 'none', "
                f"not {self.cookie_samesite!r}.",
                option="cookie_samesite",
            )
        if self.cookie_samesite == "none" and not self.cookie_secure:
            raise ConfigurationError(
                "cookie_samesite='none' requires cookie_secure=True; "
                "browsers reject the cookie otherwise.",
                option="cookie_samesite",
            )
        if self.token_path is not None and (
            not isinstance(self.token_path, str)
            or not _REQUEST_PATH.fullmatch(self.token_path)
        ):
            raise ConfigurationError(
                f"token_path {self.token_path!r} must be a path starting with '/', "
                "without a query, fragment, '<', '>', whitespace or control "
                "characters, as no request path has them.",
                option="token_path",
            )
        paths = self.exclude_paths
        if isinstance(paths, Iterable) and not isinstance(paths, str):
            paths = tuple(paths)
        if not isinstance(paths, tuple) or not all(
            isinstance(p, str) and p.startswith("/") for p in paths
        ):
            raise ConfigurationError(
                "exclude_paths must be a list of path prefixes starting with '/'.",
                option="exclude_paths",
            )
        for path in paths:
            if not _REQUEST_PATH.fullmatch(path):
                raise ConfigurationError(
                    f"exclude_paths entry {path!r} contains a query, fragment, "
                    "'<', '>', whitespace or control characters, which no request "
                    "path has; give the path prefix alone.",
                    option="exclude_paths",
                )
        object.__setattr__(
            self, "exclude_paths", tuple(p.rstrip("/") or "/" for p in paths)
        )
        if self.token_path is not None and self.is_excluded(self.token_path):
            raise ConfigurationError(
                f"token_path {self.token_path!r} falls under exclude_paths, so the "
                "endpoint could never answer; move it or narrow exclude_paths.",
                option="token_path",
            )

        suffix = [f"Path={self.cookie_path}"]
        if self.cookie_domain:
            suffix.append(f"Domain={self.cookie_domain}")
        if self.cookie_secure:
            suffix.append("Secure")
        if self.cookie_httponly:
            suffix.append("HttpOnly")
        suffix.append(f"SameSite={self.cookie_samesite.capitalize()}")
        object.__setattr__(self, "_cookie_suffix", "; ".join(suffix))
        dropped: frozenset[str] = frozenset()
        if self.uses_header:
            dropped |= {self.header_name.lower(), self.expires_header_name.lower()}
        if self.protect_cache:
            dropped |= CDN_CACHE_HEADERS
        object.__setattr__(self, "_dropped_headers", dropped)

    # The cookie attributes after Max-Age, built once in __post_init__.
    _cookie_suffix: str = field(default="", init=False, repr=False, compare=False)
    # Lower-case names of the header lines a token-carrying response loses:
    # the token's own headers and, with protect_cache, the CDN cache headers.
    # Built once in __post_init__.
    _dropped_headers: frozenset[str] = field(
        default=frozenset(), init=False, repr=False, compare=False
    )
    # Oversized cookies met by this configuration; the error is logged on the
    # first and every thousandth, so a misconfiguration cannot flood the log.
    # next() on itertools.count is atomic in CPython, so threads may share it.
    _oversize_count: Iterator[int] = field(
        default_factory=lambda: itertools.count(1),
        init=False,
        repr=False,
        compare=False,
    )

    @property
    def uses_header(self) -> bool:
        """Whether tokens go out in response headers."""
        return self.delivery != "cookie"

    @property
    def uses_cookie(self) -> bool:
        """Whether tokens go out in a cookie."""
        return self.delivery != "header"

    @property
    def watched_headers(self) -> frozenset[str]:
        """Lower-case names of the response headers whose values
        :meth:`edit_for_token` needs."""
        return _WATCHED

    def is_excluded(self, path: str) -> bool:
        """Return whether ``path`` falls under one of ``exclude_paths``."""
        for prefix in self.exclude_paths:
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return True
        return False

    def is_token_path(self, path: str) -> bool:
        """Return whether ``path`` is the token endpoint."""
        return self.token_path is not None and path == self.token_path

    def edit_for_token(
        self,
        token: TinybirdToken,
        *,
        now: float,
        request_cookie: str | None,
        current: Mapping[str, Sequence[str]],
    ) -> ResponseEdit:
        """Return the edit that delivers ``token`` on a response.

        ``current`` maps the lower-case names in :attr:`watched_headers` to the
        values the response already has (absent or empty when it has none).
        The token's own header lines replace any the app set, and with cookie
        delivery any ``Set-Cookie`` line the app set for ``cookie_name`` is
        removed. When the token is too large for a cookie, a token cookie the
        request still carries is deleted. With :attr:`protect_cache`, the CDN
        cache headers (``CDN_CACHE_HEADERS``) are removed.
        """
        replace: dict[str, str] = {}
        add: list[tuple[str, str]] = []
        drop_cookie = None

        if self.uses_header:
            add.append((self.header_name, token.value))
            add.append((self.expires_header_name, str(token.expires_at)))
            replace[EXPOSE_HEADERS] = _cached_merge_tokens(
                tuple(current.get(EXPOSE_HEADERS, ())),
                (self.header_name, self.expires_header_name),
            )

        if self.uses_cookie:
            # The token cookie belongs to this library: a line the app set for
            # it goes, even when the browser already has the current token
            # and no new line is sent, so the app never overwrites that token.
            drop_cookie = self.cookie_name
            if request_cookie != token.value:
                line = self.set_cookie_line(token, now)
                if line is None and request_cookie is not None:
                    # The browser would keep sending the older token, which may
                    # carry another user's or organisation's scopes.
                    line = self._delete_cookie_line()
                if line is not None:
                    add.append(("Set-Cookie", line))

        if self.protect_cache:
            replace.update(self._protected_headers(current))
        return ResponseEdit(replace, self._dropped_headers, drop_cookie, add)

    def edit_for_anonymous(
        self,
        *,
        request_cookie: str | None,
        current: Mapping[str, Sequence[str]] | None = None,
    ) -> ResponseEdit | None:
        """Return the edit for a response without a principal, if it needs one.

        A request that still carries the token cookie gets it deleted (logout),
        and with :attr:`protect_cache` that response is kept out of shared
        caches as a token-carrying one is, because a cache that stored it would
        replay the deletion to signed-in users. ``current`` is as for
        :meth:`edit_for_token`. Otherwise the response is left alone.
        """
        if not self.uses_cookie or request_cookie is None:
            return None
        add = [("Set-Cookie", self._delete_cookie_line())]
        replace: dict[str, str] = {}
        dropped: frozenset[str] = frozenset()
        if self.protect_cache:
            replace = self._protected_headers(current or {})
            dropped = CDN_CACHE_HEADERS
        return ResponseEdit(replace, dropped, self.cookie_name, add)

    def _protected_headers(
        self, current: Mapping[str, Sequence[str]]
    ) -> dict[str, str]:
        # The Cache-Control and Vary values that keep a response out of
        # shared caches, merged with the response's own.
        replace = {
            CACHE_CONTROL: _cached_protect_cache_control(
                tuple(current.get(CACHE_CONTROL, ()))
            )
        }
        vary = _cached_merge_vary(tuple(current.get(VARY, ())))
        if vary is not None:
            replace[VARY] = vary
        return replace

    def _delete_cookie_line(self) -> str:
        # A Set-Cookie value that deletes the token cookie, with its attributes.
        return f"{self.cookie_name}=; Max-Age=0; {self._cookie_suffix}"

    def set_cookie_line(self, token: TinybirdToken, now: float) -> str | None:
        """Return the ``Set-Cookie`` value for ``token``, or ``None`` if too large.

        ``Max-Age`` is the token's remaining lifetime, so the cookie expires
        with the token.
        """
        line = (
            f"{self.cookie_name}={token.value}; Max-Age={token.max_age(now)}; "
            f"{self._cookie_suffix}"
        )
        size = len(line.encode())
        if size <= MAX_COOKIE_BYTES:
            return line
        count = next(self._oversize_count)
        if count == 1 or count % 1000 == 0:
            logger.error(
                "Tinybird token cookie is %d bytes, over the %d that browsers keep, "
                "so it was not sent (%d time(s) so far); deliver by header or "
                "sign fewer scopes.",
                size,
                MAX_COOKIE_BYTES,
                count,
            )
        return None

    def endpoint_response(
        self, method: str, token: TinybirdToken | None, *, failed: bool = False
    ) -> EndpointResponse:
        """Return the token endpoint's response to ``method``.

        GET and HEAD return ``{"token", "expires_at", "api_url"}``, or 401 for
        an anonymous request, or 500 when ``failed`` is true because issuing
        the token raised (the adapter logs the cause). Other methods get 405.
        HEAD has GET's headers and an empty body. Responses are never
        cacheable.
        """
        if method not in ("GET", "HEAD"):
            status = 405
            payload: dict[str, object] = {"error": "Method not allowed; use GET."}
        elif failed:
            status = 500
            payload = {"error": "The Tinybird token could not be issued."}
        elif token is None:
            status = 401
            payload = {"error": "Sign in to get a Tinybird token."}
        else:
            status = 200
            payload = {
                "token": token.value,
                "expires_at": token.expires_at,
                "api_url": token.api_url,
            }
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
        if status == 405:
            headers.append(("Allow", "GET, HEAD"))
        return EndpointResponse(status, headers, b"" if method == "HEAD" else body)


_RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "cache-control",
        "content-length",
        "content-type",
        "cookie",
        "set-cookie",
        "vary",
        "access-control-expose-headers",
    }
)


def is_preflight(method: str, has_request_method_header: bool) -> bool:
    """Return whether a request is a CORS preflight (``OPTIONS`` with
    ``Access-Control-Request-Method``)."""
    return method == "OPTIONS" and has_request_method_header


def read_cookie(cookie_header: str | None, name: str) -> str | None:
    """Return the value of cookie ``name`` from a ``Cookie`` header, if present.

    Parsing follows browsers rather than :mod:`http.cookies`, which rejects a
    whole header for one malformed pair.
    """
    if not cookie_header:
        return None
    for pair in cookie_header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


def _split_list(values: Iterable[str]) -> list[str]:
    # Split comma-separated header values, keeping commas inside quoted strings
    # (``no-cache="Set-Cookie, Authorization"``) with their directive.
    items: list[str] = []
    for value in values:
        current: list[str] = []
        quoted = False
        escaped = False
        for char in value:
            if escaped:
                escaped = False
            elif char == "\\" and quoted:
                escaped = True
            elif char == '"':
                quoted = not quoted
            elif char == "," and not quoted:
                items.append("".join(current).strip())
                current = []
                continue
            current.append(char)
        items.append("".join(current).strip())
    return [item for item in items if item]


def protect_cache_control(values: Sequence[str]) -> str:
    """Merge ``Cache-Control`` values into one that no shared cache may store.

    ``public``, ``s-maxage`` and any ``private`` are removed, plain
    ``private`` is added first, and every other directive is kept in order.
    """
    kept = [
        directive
        for directive in _split_list(values)
        if directive.partition("=")[0].strip().lower() not in _SHARED_CACHE_DIRECTIVES
    ]
    return ", ".join(["private", *kept])


def merge_vary(values: Sequence[str]) -> str | None:
    """Return the ``Vary`` value with ``Cookie`` added once.

    Returns ``None`` when the response already varies on everything (``*``),
    so there is nothing to change.
    """
    if "*" in _split_list(values):
        return None
    return _merge_tokens(values, ("Cookie",))


def _merge_tokens(values: Iterable[str], extra: Sequence[str]) -> str:
    seen: set[str] = set()
    merged: list[str] = []
    for item in [*_split_list(values), *extra]:
        lower = item.lower()
        if lower not in seen:
            seen.add(lower)
            merged.append(item)
    return ", ".join(merged)


# The merges are pure, and responses repeat a few header values (most often
# none), so edit_for_token() reuses their results instead of parsing each time.
_cached_merge_tokens = functools.lru_cache(maxsize=256)(_merge_tokens)
_cached_protect_cache_control = functools.lru_cache(maxsize=256)(protect_cache_control)
_cached_merge_vary = functools.lru_cache(maxsize=256)(merge_vary)


def sets_cookie(set_cookie_value: str, name: str) -> bool:
    """Return whether a ``Set-Cookie`` header value sets the cookie ``name``."""
    return set_cookie_value.partition("=")[0].strip() == name


EditKey: TypeAlias = tuple[str, int, str | None, tuple[tuple[object, ...], ...]]
_Prepared = TypeVar("_Prepared")


class EditCache(Generic[_Prepared]):
    """Response edits that adapters reuse, each kept in the adapter's own form.

    An edit that sends no new ``Set-Cookie`` line does not depend on the
    time: it follows from the token, the token cookie the request carries and
    the response's values of :data:`WATCHED_HEADERS`. Responses with the same
    inputs can therefore share it, converted once to the adapter's header
    types. At most ``max_size`` edits are kept; the store is emptied when it
    is full. Threads can share one cache without a lock: each read or write
    is one or a few dict operations, and a race at worst stores an edit
    twice or lets the store pass ``max_size`` by the number of writers.
    """

    __slots__ = ("_edits", "_max_size", "_uses_cookie")

    def __init__(self, config: DeliveryConfig, max_size: int = 512) -> None:
        self._uses_cookie = config.uses_cookie
        self._max_size = max_size
        self._edits: dict[EditKey, _Prepared] = {}

    def key(
        self,
        token: TinybirdToken,
        request_cookie: str | None,
        watched: tuple[tuple[object, ...], ...],
    ) -> EditKey | None:
        """Return the key of the edit for these inputs, or ``None`` when the
        edit sends a new cookie line, whose ``Max-Age`` depends on the time.

        ``watched`` contains the response's values of each of
        :data:`WATCHED_HEADERS`, in that order, as ``str`` or ``bytes``.
        """
        if self._uses_cookie and request_cookie != token.value:
            return None
        return (token.value, token.expires_at, request_cookie, watched)

    def get(self, key: EditKey) -> _Prepared | None:
        """Return the edit stored under ``key``, or ``None``."""
        return self._edits.get(key)

    def put(self, key: EditKey, prepared: _Prepared) -> None:
        """Store ``prepared`` under ``key``, emptying the store when it is full."""
        if len(self._edits) >= self._max_size:
            self._edits.clear()
        self._edits[key] = prepared
