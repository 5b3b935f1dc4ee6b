"""Memory: bytes per cached user, and a flat footprint once the cache is full."""

from __future__ import annotations

import gc
import tracemalloc

from ._fixtures import make_issuer, user
from ._harness import Table, check

TARGET_BYTES = 1536


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _fill(users: int, *, max_cached: int, first: int = 0) -> tuple[int, int]:
    """Cache ``users`` new users; return the issuer's bytes and one token's length.

    Each principal is built inside the loop and dropped after its call, so only
    what the cache keeps (identity, claims, scopes, token) stays traced.
    """
    issuer = make_issuer(max_cached=max_cached)
    before = _traced()
    for index in range(first, first + users):
        issuer.token_for(user(index))
    after = _traced()
    check(len(issuer) == min(users, max_cached), "the cache holds the wrong count")
    token_length = len(issuer.token_for(user(first)).value)
    return after - before, token_length


def _plateau(limit: int, *, rounds: int) -> list[int]:
    """Return the traced bytes of one issuer after each batch of ``limit`` new users."""
    issuer = make_issuer(max_cached=limit)
    before = _traced()
    sizes = []
    for batch in range(rounds):
        for index in range(batch * limit, (batch + 1) * limit):
            issuer.token_for(user(index))
        sizes.append(_traced() - before)
    check(len(issuer) == limit, "the cache grew past max_cached")
    return sizes


def run(*, quick: bool) -> Table:
    sizes = (1_000, 5_000) if quick else (10_000, 100_000)
    table = Table(
        "Memory per cached user: tracemalloc, one PIPES:READ scope, one fixed param",
        ["users cached", "max_cached", "traced bytes", "bytes/user", "target"],
    )
    tracemalloc.start()
    try:
        for users in sizes:
            total, token_length = _fill(users, max_cached=users)
            per_user = total / users
            verdict = "met" if per_user <= TARGET_BYTES else "missed"
            table.add(
                f"{users:,}",
                f"{users:,}",
                f"{total:,}",
                f"{per_user:,.0f}",
                f"<= {TARGET_BYTES:,} ({TARGET_BYTES // 1024}.5 KiB): {verdict}",
            )

        limit = sizes[0]
        plateau = _plateau(limit, rounds=5)
    finally:
        tracemalloc.stop()

    full = plateau[0]
    low, high = min(plateau[1:]), max(plateau[1:])
    table.add(
        f"{limit:,}, then {limit * 4:,} more distinct",
        f"{limit:,}",
        f"{low:,}-{high:,}",
        f"{high / limit:,.0f}",
        f"flat: batches 2-5 within {high / low - 1:.2%} of each other, "
        f"{high / full - 1:+.1%} over the first full cache",
    )
    table.notes.append(
        f"A one-scope token is {token_length} characters. Bytes/user is the traced "
        "growth of the process after gc.collect(), divided by the users cached; the "
        "last row fills a cache of max_cached users, then caches four more batches "
        "of as many new users and gives the range after batches 2 to 5, and its "
        "change over the first full cache."
    )
    return table
