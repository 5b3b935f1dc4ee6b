"""Translation between ASGI's byte-string header pairs and the core's ``str``
pairs.

ASGI header names and values are byte strings; HTTP allows only Latin-1 in
them, so decoding and encoding with ``latin-1`` is lossless. Header lines the
core does not change keep their original objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ._asgi_types import ASGIScope
from ._delivery import ResponseEdit

__all__ = [
    "current_values",
    "edited_headers",
    "encode_headers",
    "request_header",
]

RawHeader = Sequence[bytes]


def request_header(scope: ASGIScope, name: bytes) -> str | None:
    """Return the request header ``name`` (lower case), its lines joined, or
    ``None`` when the request has none.

    ``Cookie`` lines are joined with ``"; "`` (HTTP/2 may split cookies over
    several lines); other lines with ``", "``.
    """
    values = [
        value.decode("latin-1")
        for key, value in scope.get("headers") or ()
        if key.lower() == name
    ]
    if not values:
        return None
    separator = "; " if name == b"cookie" else ", "
    return separator.join(values)


def current_values(
    headers: Iterable[RawHeader], names: frozenset[str]
) -> dict[str, list[str]]:
    """Return the values of the response headers in ``names`` (lower case)."""
    values: dict[str, list[str]] = {}
    for key, value in headers:
        lower = key.decode("latin-1").lower()
        if lower in names:
            values.setdefault(lower, []).append(value.decode("latin-1"))
    return values


def edited_headers(headers: Iterable[RawHeader], edit: ResponseEdit) -> list[RawHeader]:
    """Return a new header list with ``edit`` applied; ``headers`` is not changed."""
    kept = [
        line
        for line in headers
        if not edit.removes(
            line[0].decode("latin-1").lower(), line[1].decode("latin-1")
        )
    ]
    kept.extend(encode_headers(edit.additions()))
    return kept


def encode_headers(lines: Iterable[tuple[str, str]]) -> list[RawHeader]:
    """Return ``lines`` as ASGI byte-string pairs with lower-case names."""
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in lines
    ]
