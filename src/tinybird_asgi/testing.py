"""A local stand-in for Tinybird's pipe endpoints, for tests and demos.

:class:`LocalTinybird` serves ``GET /v0/pipes/<pipe>.json`` as an ASGI app
(and through :attr:`LocalTinybird.wsgi_app` as a WSGI app) from sample rows,
and checks every request the way Tinybird documents for JWTs:

* the token comes from ``Authorization: Bearer <jwt>`` or the ``token`` query
  parameter;
* it is verified with HS256 and the workspace admin token as the key;
* ``exp`` must be present, an integer, and in the future;
* ``workspace_id`` must be the workspace's;
* a ``PIPES:READ`` scope must name the requested pipe;
* that scope's ``fixed_params`` override URL parameters of the same name;
* ``limits.rps`` caps the requests per second of each token ``name``
  (answered with 429).

A token that fails a check gets a 403 with a JSON ``{"error": ...}`` body;
an unknown path or pipe gets 404 and a method other than GET 405. The error
texts are this module's own, not Tinybird's.

The checks are deliberately stricter than Tinybird where its documentation is
silent and a token is certainly a bug: an ``exp`` more than a year ahead
(usually milliseconds), and ``fixed_params`` values that are null, lists,
objects, NaN or infinite numbers, or empty strings, are all rejected with 403.

:func:`check_pipe_request` applies the same checks without a server, so a test
can assert what a token lets a browser read::

    params = check_pipe_request(
        token.value, "org_events", {"org_id": "globex"},
        signing_key=KEY, workspace_id=WORKSPACE_ID,
    )
    assert params["org_id"] == "acme"

Only PyJWT is needed; no web framework is imported.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import (
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qsl

import jwt

from . import _issuer
from ._errors import ConfigurationError, TinybirdError
from ._scopes import ParamValue

__all__ = [
    "LocalTinybird",
    "PipeGrant",
    "PipeRequestError",
    "PipeSource",
    "ServedRequest",
    "authorize_pipe_request",
    "check_pipe_request",
]

logger = logging.getLogger("tinybird_asgi")

Row: TypeAlias = Mapping[str, Any]
PipeSource: TypeAlias = (
    Sequence[Row] | Callable[[Mapping[str, ParamValue]], Iterable[Row]]
)
"""Rows of a pipe: a list of row mappings, filtered by the effective
parameters, or a callable that receives the effective parameters and returns
the rows itself."""

# ASGI types, spelled out so that no framework is imported.
Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]

_PIPE_PATH = re.compile(r"/v0/pipes/([A-Za-z_][A-Za-z0-9_]*)\.json")
_PIPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_PARAMS = frozenset({"token"})
# The same bound as TokenIssuer with allow_long_ttl, so every token the issuer
# can sign passes.
_MAX_LIFETIME = int(_issuer.HARD_MAX_TTL)
"""Seconds ahead of now past which ``exp`` is rejected as a likely mistake."""

_CORS_HEADERS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Expose-Headers", "Retry-After"),
]
_PREFLIGHT_HEADERS = [
    ("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type"),
    ("Access-Control-Max-Age", "600"),
]
_REASONS = {
    200: "OK",
    204: "No Content",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
}


class PipeRequestError(TinybirdError):
    """Raised when a pipe request is rejected; ``status`` is the HTTP status
    Tinybird answers with (403, 404 or 429).

    The message never contains the token.
    """

    def __init__(self, message: str, *, status: Literal[403, 404, 429]) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class PipeGrant:
    """What a verified token allows for one pipe request."""

    params: dict[str, ParamValue]
    """The effective parameters: URL parameters with ``fixed_params`` applied."""
    name: str
    """The token's ``name`` claim, the bucket ``limits.rps`` counts against."""
    rps: int | None
    """The token's ``limits.rps``, or ``None`` when it has no positive limit."""
    expires_at: int
    """The token's ``exp`` claim, in Unix seconds."""


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """One request answered by :class:`LocalTinybird`, as kept in its log."""

    pipe: str | None
    status: int
    name: str | None
    """The token's ``name`` claim when the token was valid, else ``None``."""


def authorize_pipe_request(
    token: str | None,
    pipe: str,
    params: Mapping[str, str] | None = None,
    *,
    signing_key: str,
    workspace_id: str,
    now: float | None = None,
) -> PipeGrant:
    """Verify ``token`` for a read of ``pipe`` and return what it grants.

    ``params`` are the request's URL parameters; a ``token`` entry is ignored.
    ``now`` is the Unix time ``exp`` is compared with (default: ``time.time()``).

    :raises PipeRequestError: with status 403 when Tinybird would reject the
        token for this pipe.
    """
    key = _issuer._check_signing_key(signing_key)
    workspace = _issuer._check_workspace_id(workspace_id, "workspace_id")
    current = time.time() if now is None else now

    if not token:
        raise PipeRequestError(
            "No token; send Authorization: Bearer <jwt>.", status=403
        )
    claims = _decode(token, key)

    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int):
        raise PipeRequestError(
            "The token's exp claim must be an integer of Unix seconds.", status=403
        )
    if exp <= current:
        raise PipeRequestError("The token has expired.", status=403)
    # Stricter than Tinybird, which documents no upper bound: a lifetime over
    # a year is almost always an exp written in milliseconds.
    if exp > current + _MAX_LIFETIME:
        raise PipeRequestError(
            f"The token's exp is more than a year ahead ({exp}); exp must be "
            "Unix seconds, not milliseconds.",
            status=403,
        )

    if claims.get("workspace_id") != workspace:
        raise PipeRequestError(
            "The token's workspace_id is not this workspace's.", status=403
        )

    name = claims.get("name")
    if not isinstance(name, str) or not name:
        raise PipeRequestError("The token has no name claim.", status=403)

    scope = _pipe_scope(claims.get("scopes"), pipe)
    effective: dict[str, ParamValue] = {
        key: value
        for key, value in (params or {}).items()
        if key not in _RESERVED_PARAMS
    }
    effective.update(_fixed_params(scope, pipe))
    return PipeGrant(effective, name, _rps(claims.get("limits")), exp)


def check_pipe_request(
    token: str | None,
    pipe: str,
    params: Mapping[str, str] | None = None,
    *,
    signing_key: str,
    workspace_id: str,
    now: float | None = None,
) -> dict[str, ParamValue]:
    """Return the parameters Tinybird would hand to ``pipe`` for this request.

    Takes the same arguments as :func:`authorize_pipe_request`; the result is
    ``params`` with the token's ``fixed_params`` applied. Rate limits need
    state, so only :class:`LocalTinybird` enforces them.

    :raises PipeRequestError: with status 403 when Tinybird would reject the
        token for this pipe.
    """
    grant = authorize_pipe_request(
        token,
        pipe,
        params,
        signing_key=signing_key,
        workspace_id=workspace_id,
        now=now,
    )
    return grant.params


def _decode(token: str, key: str) -> dict[str, Any]:
    # Tinybird documents nothing about aud, iss, iat or nbf, so PyJWT is told
    # not to check them; exp is checked by the caller against its own clock.
    try:
        claims = jwt.decode(
            token,
            key.encode(),
            algorithms=["HS256"],
            options={
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise PipeRequestError(
            "The token's signature does not match the signing key.", status=403
        ) from None
    except jwt.InvalidTokenError as exc:
        raise PipeRequestError(
            f"The token is not a valid HS256 JWT ({type(exc).__name__}).", status=403
        ) from None
    if not isinstance(claims, dict):  # pragma: no cover - PyJWT returns a dict
        raise PipeRequestError("The token's payload is not an object.", status=403)
    return claims


def _pipe_scope(scopes: object, pipe: str) -> Mapping[str, Any]:
    if not isinstance(scopes, list):
        raise PipeRequestError("The token's scopes claim is not a list.", status=403)
    matches = [
        scope
        for scope in scopes
        if isinstance(scope, dict)
        and scope.get("type") == "PIPES:READ"
        and scope.get("resource") == pipe
    ]
    if not matches:
        raise PipeRequestError(
            f"The token has no PIPES:READ scope for pipe {pipe!r}.", status=403
        )
    # NOTE: Tinybird does not document which scope wins when several name one
    # pipe; rejecting the token keeps a test from relying on either choice.
    if len(matches) > 1:
        raise PipeRequestError(
            f"The token has {len(matches)} PIPES:READ scopes for pipe {pipe!r}; "
            "sign one scope per pipe.",
            status=403,
        )
    return matches[0]


def _fixed_params(scope: Mapping[str, Any], pipe: str) -> dict[str, ParamValue]:
    fixed = scope.get("fixed_params")
    if fixed is None:
        return {}
    if not isinstance(fixed, dict):
        raise PipeRequestError(
            f"The fixed_params of the scope for pipe {pipe!r} are not an object.",
            status=403,
        )
    for key, value in fixed.items():
        # A null or nested value has no documented meaning; a pipe could read
        # it as "no filter", so it is rejected rather than guessed at.
        if value is None or isinstance(value, (dict, list)):
            raise PipeRequestError(
                f"fixed_params[{key!r}] of the scope for pipe {pipe!r} must be a "
                "string, number or boolean.",
                status=403,
            )
        # Stricter than Tinybird: NaN, an infinity or an empty string is never
        # a real filter value, and a pipe may read "" as "no filter".
        if isinstance(value, float) and not math.isfinite(value):
            raise PipeRequestError(
                f"fixed_params[{key!r}] of the scope for pipe {pipe!r} is "
                f"{value!r}; it must be a finite number.",
                status=403,
            )
        if value == "":
            raise PipeRequestError(
                f"fixed_params[{key!r}] of the scope for pipe {pipe!r} is an "
                "empty string; give the value the pipe filters on.",
                status=403,
            )
    return dict(fixed)


def _rps(limits: object) -> int | None:
    if limits is None:
        return None
    if not isinstance(limits, dict):
        raise PipeRequestError("The token's limits claim is not an object.", status=403)
    rps = limits.get("rps")
    if rps is None:
        return None
    if isinstance(rps, bool) or not isinstance(rps, int):
        raise PipeRequestError("The token's limits.rps is not an integer.", status=403)
    # Tinybird reads rps <= 0 as "no limit".
    return rps if rps > 0 else None


def _param_text(value: object) -> str:
    # URL parameters arrive as text and fixed_params as JSON values; both are
    # compared with row values through one text form.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        return str(int(value))
    return str(value)


def _column_type(value: object) -> str:
    if isinstance(value, bool):
        return "UInt8"
    if isinstance(value, int):
        return "Int64"
    if isinstance(value, float):
        return "Float64"
    if value is None:
        return "Nullable(String)"
    return "String"


class LocalTinybird:
    """A Tinybird-compatible pipe endpoint that serves sample rows.

    ``pipes`` maps pipe names to a :data:`PipeSource`. With a list of rows,
    each effective parameter whose name is a column keeps only the rows whose
    value in that column equals it (compared as text); a parameter that names
    no column filters nothing, as in a pipe whose SQL ignores it. ``clock``
    returns Unix seconds and is read for ``exp`` and for rate limits, so a test
    can share one fake clock with its :class:`~tinybird_asgi.TokenIssuer`.

    The instance is an ASGI app; :attr:`wsgi_app` serves the same endpoint to
    WSGI servers. Every answered request is appended to :attr:`log`. Instances
    are safe to share between threads.

    :raises ConfigurationError: for an invalid signing key, workspace id,
        ``pipes`` mapping or clock, naming the option.
    """

    def __init__(
        self,
        *,
        signing_key: str,
        workspace_id: str,
        pipes: Mapping[str, PipeSource],
        clock: Callable[[], float] = time.time,
        log_size: int = 1000,
    ) -> None:
        self._key = _issuer._check_signing_key(signing_key)
        self._workspace_id = _issuer._check_workspace_id(workspace_id, "workspace_id")
        if not isinstance(pipes, Mapping):
            raise ConfigurationError(
                "pipes must be a mapping of pipe names to rows.", option="pipes"
            )
        for name, source in pipes.items():
            if not isinstance(name, str) or not _PIPE_NAME.fullmatch(name):
                raise ConfigurationError(
                    f"pipes key {name!r} is not a valid Tinybird pipe name; "
                    "use letters, digits and underscores.",
                    option="pipes",
                )
            if not callable(source) and (
                isinstance(source, (str, bytes)) or not isinstance(source, Sequence)
            ):
                raise ConfigurationError(
                    f"pipes[{name!r}] must be a list of row mappings or a callable "
                    "params -> rows.",
                    option="pipes",
                )
        if not callable(clock):
            raise ConfigurationError(
                "clock must be a callable returning Unix seconds.", option="clock"
            )
        self._pipes = dict(pipes)
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, deque[float]] = {}
        self.log: deque[ServedRequest] = deque(maxlen=log_size)
        """The most recent answered requests, oldest first."""

    @property
    def workspace_id(self) -> str:
        """The workspace UUID every token must carry."""
        return self._workspace_id

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(workspace_id={self._workspace_id!r}, "
            f"pipes={sorted(self._pipes)!r})"
        )

    # Querying without HTTP

    def read(
        self, token: str | None, pipe: str, params: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Return the rows a request for ``pipe`` with ``token`` receives.

        Counts against the token's rate limit like an HTTP request.

        :raises PipeRequestError: with the status the endpoint would answer.
        """
        return self._query(token, pipe, params or {})[0]

    def _query(
        self, token: str | None, pipe: str, params: Mapping[str, str]
    ) -> tuple[list[dict[str, Any]], list[dict[str, str]], PipeGrant]:
        grant = authorize_pipe_request(
            token,
            pipe,
            params,
            signing_key=self._key,
            workspace_id=self._workspace_id,
            now=self._clock(),
        )
        source = self._pipes.get(pipe)
        if source is None:
            raise PipeRequestError(f"Pipe {pipe!r} not found.", status=404)
        self._count_request(grant)

        if callable(source):
            rows = [dict(row) for row in source(dict(grant.params))]
            sample = rows
        else:
            rows = [dict(row) for row in source if _matches(row, grant.params)]
            sample = [dict(row) for row in source[:1]]
        meta = [
            {"name": column, "type": _column_type(value)}
            for column, value in (sample[0].items() if sample else ())
        ]
        return rows, meta, grant

    def _count_request(self, grant: PipeGrant) -> None:
        if grant.rps is None:
            return
        now = self._clock()
        with self._lock:
            window = self._windows.setdefault(grant.name, deque())
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) >= grant.rps:
                raise PipeRequestError(
                    f"Rate limit of {grant.rps} requests per second exceeded for "
                    f"token name {grant.name!r}.",
                    status=429,
                )
            window.append(now)

    # HTTP

    def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Answer one HTTP request; the ASGI and WSGI entry points call this.

        ``headers`` maps lower-case header names to values. Returns the
        status, the response headers and the body.
        """
        if method == "OPTIONS" and "access-control-request-method" in headers:
            return 204, [*_CORS_HEADERS, *_PREFLIGHT_HEADERS], b""

        match = _PIPE_PATH.fullmatch(path)
        pipe = match.group(1) if match else None
        if pipe is None:
            return self._error(None, 404, "Not found; use /v0/pipes/<pipe>.json.")
        if method not in ("GET", "HEAD"):
            status, extra, body = self._error(pipe, 405, "Use GET.")
            return status, [*extra, ("Allow", "GET, HEAD, OPTIONS")], body

        params = dict(parse_qsl(query, keep_blank_values=True))
        token = _bearer(headers.get("authorization")) or params.get("token")
        started = time.perf_counter()
        try:
            rows, meta, grant = self._query(token, pipe, params)
        except PipeRequestError as exc:
            logger.debug("Local Tinybird rejected %s: %d %s", pipe, exc.status, exc)
            status, extra, body = self._error(pipe, exc.status, str(exc))
            if exc.status == 429:
                extra.append(("Retry-After", "1"))
            return status, extra, body

        payload = {
            "meta": meta,
            "data": rows,
            "rows": len(rows),
            "statistics": {
                "elapsed": time.perf_counter() - started,
                "rows_read": len(rows),
                "bytes_read": 0,
            },
        }
        self.log.append(ServedRequest(pipe, 200, grant.name))
        return 200, _json_headers(), json.dumps(payload, default=str).encode()

    def _error(
        self, pipe: str | None, status: int, message: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        self.log.append(ServedRequest(pipe, status, None))
        return status, _json_headers(), json.dumps({"error": message}).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the endpoint as an ASGI app (mounted or on its own)."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"LocalTinybird serves HTTP, not {scope['type']!r}.")

        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", [])
        }
        query = scope.get("query_string", b"").decode("latin-1")
        status, response_headers, body = self.handle(
            scope["method"], path, query, headers
        )
        response_headers = _with_length(status, response_headers, body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in response_headers
                ],
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": b"" if scope["method"] == "HEAD" else body,
            }
        )

    def wsgi_app(
        self,
        environ: dict[str, Any],
        start_response: Callable[[str, list[tuple[str, str]]], Any],
    ) -> list[bytes]:
        """Serve the endpoint as a WSGI app, for example beside a Flask app."""
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        method = environ["REQUEST_METHOD"]
        status, response_headers, body = self.handle(
            method,
            environ.get("PATH_INFO", ""),
            environ.get("QUERY_STRING", ""),
            headers,
        )
        response_headers = _with_length(status, response_headers, body)
        start_response(f"{status} {_REASONS.get(status, '')}".strip(), response_headers)
        return [b"" if method == "HEAD" else body]


def _matches(row: Row, params: Mapping[str, ParamValue]) -> bool:
    for key, value in params.items():
        if key in row and _param_text(row[key]) != _param_text(value):
            return False
    return True


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _with_length(
    status: int, headers: list[tuple[str, str]], body: bytes
) -> list[tuple[str, str]]:
    # A 204 must not carry Content-Length (RFC 9110, section 8.6).
    if status == 204:
        return headers
    return [*headers, ("Content-Length", str(len(body)))]


def _json_headers() -> list[tuple[str, str]]:
    return [
        ("Content-Type", "application/json"),
        ("Cache-Control", "no-store"),
        *_CORS_HEADERS,
    ]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
