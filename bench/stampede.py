"""Stampede: many distinct users asking for a token at the same instant."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import jwt

from tinybird_asgi import PipeRead, Scope, TinybirdToken, TokenIssuer

from ._fixtures import SIGNING_KEY, WORKSPACE_ID, User, make_issuer, user
from ._harness import Table, check, percentile

# Per request: (call start, call end) in perf_counter nanoseconds.
Span = tuple[int, int]


async def _async_org_policy(principal: User) -> list[Scope]:
    # Simulates a database lookup that yields to the loop once, so every task
    # reaches the issuer before any of them finishes.
    await asyncio.sleep(0)
    return [PipeRead("org_events", fixed_params={"org_id": principal.org_id})]


def _async_issuer() -> TokenIssuer:
    return TokenIssuer(
        signing_key=SIGNING_KEY,
        workspace_id=WORKSPACE_ID,
        scopes=_async_org_policy,
        ttl=3600,
    )


async def _tasks(
    issuer: TokenIssuer, principals: Sequence[User]
) -> tuple[list[Span], list[TinybirdToken]]:
    go = asyncio.Event()

    async def one(principal: User) -> tuple[Span, TinybirdToken]:
        await go.wait()
        start = time.perf_counter_ns()
        token = await issuer.atoken_for(principal)
        return (start, time.perf_counter_ns()), token

    tasks = [asyncio.create_task(one(principal)) for principal in principals]
    await asyncio.sleep(0)
    go.set()
    results = await asyncio.gather(*tasks)
    return [span for span, _ in results], [token for _, token in results]


def _threads(
    issuer: TokenIssuer, principals: Sequence[User]
) -> tuple[list[Span], list[TinybirdToken]]:
    barrier = threading.Barrier(len(principals))
    spans: list[Span | None] = [None] * len(principals)
    tokens: list[TinybirdToken | None] = [None] * len(principals)

    def one(index: int) -> None:
        barrier.wait()
        start = time.perf_counter_ns()
        tokens[index] = issuer.token_for(principals[index])
        spans[index] = (start, time.perf_counter_ns())

    previous = threading.stack_size(256 * 1024)
    try:
        threads = [
            threading.Thread(target=one, args=(i,)) for i in range(len(principals))
        ]
        for thread in threads:
            thread.start()
    finally:
        threading.stack_size(previous)
    for thread in threads:
        thread.join(timeout=60)
    check(all(s is not None for s in spans), "a stampede thread did not finish in 60 s")
    return [s for s in spans if s is not None], [t for t in tokens if t is not None]


def _check_tokens(tokens: Sequence[TinybirdToken], principals: Sequence[User]) -> None:
    for token, principal in zip(tokens, principals, strict=True):
        claims = jwt.decode(token.value, SIGNING_KEY, algorithms=["HS256"])
        check(claims["name"] == principal.username, "a user got another user's token")
        params = claims["scopes"][0]["fixed_params"]
        check(params == {"org_id": principal.org_id}, "a token has the wrong org_id")


def _row(
    table: Table,
    label: str,
    users: int,
    requests: int,
    mints: int,
    spans: Sequence[Span],
) -> None:
    arrival = min(start for start, _ in spans)
    calls = [(end - start) / 1e6 for start, end in spans]
    waits = [(end - arrival) / 1e6 for _, end in spans]
    table.add(
        label,
        f"{requests:,}",
        f"{users:,}",
        f"{mints:,}",
        "yes" if mints == users else "NO",
        f"{percentile(calls, 0.5):.3f}",
        f"{percentile(calls, 0.99):.3f}",
        f"{percentile(waits, 0.99):.1f}",
        f"{max(waits):.1f}",
    )


def run(*, quick: bool) -> Table:
    users = 200 if quick else 1_000
    table = Table(
        f"Stampede: {users:,} distinct users at once",
        [
            "variant",
            "requests",
            "users",
            "mints",
            "mints == users",
            "added p50 ms",
            "added p99 ms",
            "done p99 ms",
            "done max ms",
        ],
    )
    principals = [user(i) for i in range(users)]

    cases = [
        ("asyncio tasks, sync policy", make_issuer, "tasks"),
        ("asyncio tasks, async policy", _async_issuer, "tasks"),
        ("threads", make_issuer, "threads"),
    ]
    for label, build, mode in cases:
        issuer = build()
        if mode == "tasks":
            spans, tokens = asyncio.run(_tasks(issuer, principals))
        else:
            spans, tokens = _threads(issuer, principals)
        check(
            issuer.mint_count == users,
            f"{label}: {issuer.mint_count} mints for {users} users",
        )
        _check_tokens(tokens, principals)
        _row(table, label, users, users, issuer.mint_count, spans)

    # Ten requests per user at once: the lock must still mint once per user.
    repeated = [principals[i % (users // 10)] for i in range(users)]
    issuer = make_issuer()
    spans, tokens = _threads(issuer, repeated)
    check(
        issuer.mint_count == users // 10,
        f"threads, repeated users: {issuer.mint_count} mints",
    )
    _check_tokens(tokens, repeated)
    _row(
        table,
        "threads, 10 requests per user",
        users // 10,
        users,
        issuer.mint_count,
        spans,
    )

    table.notes.append(
        "Added latency is each call's own time, from its start to its token. Done "
        "is the time from the first call's start to this call's token, so it also "
        "counts the wait for the other mints (the issuer signs under one lock, and "
        "the GIL runs one thread at a time) and, for threads, the barrier wake-ups. "
        "Every token is decoded with jwt.decode and checked against its user."
    )
    return table
