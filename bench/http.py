"""Over real HTTP: uvicorn on 127.0.0.1 in a subprocess, wrk in another."""

from __future__ import annotations

import http.client
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import jwt

from ._fixtures import HEADER_NAME, SIGNING_KEY
from ._harness import Table, check, verdict
from ._starlette_apps import FixedUserMiddleware

TARGET = 0.95
ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 16
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors:.*")


@dataclass(frozen=True, slots=True)
class Server:
    name: str
    url: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def uvicorn_server(factory: str) -> Iterator[Server]:
    """Run uvicorn with ``bench._starlette_apps:<factory>`` on a free loopback port.

    NOTE: the port is probed free and then handed to uvicorn, so another process
    could take it in between. uvicorn then exits, and the readiness check reports
    it. Passing a bound socket with ``--fd`` would avoid the race, but uvicorn
    0.55 wraps that socket as ``AF_UNIX``, so asyncio never sets TCP_NODELAY on
    its connections and each response waits for a delayed ACK (a few hundred
    requests per second).
    """
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        f"bench._starlette_apps:{factory}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        _wait_ready(port, process)
        yield Server(factory, f"http://127.0.0.1:{port}/")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        check(process.poll() is None, f"uvicorn exited with {process.returncode}")
        try:
            _get(port)
        except OSError:
            time.sleep(0.05)
            continue
        return
    raise TimeoutError(f"uvicorn on port {port} did not respond within 30 s")


def _get(port: int) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        return response
    finally:
        connection.close()


def _check_server(server: Server, *, token: bool) -> None:
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    response = _get(port)
    check(response.status == 200, f"{server.name} answered {response.status}")
    value = response.getheader(HEADER_NAME)
    if not token:
        check(value is None, f"{server.name} sent a token")
        return
    check(value is not None, f"{server.name} sent no token")
    claims = jwt.decode(value or "", SIGNING_KEY, algorithms=["HS256"])
    check(
        claims["name"] == FixedUserMiddleware.principal.username,
        f"{server.name} sent a token for another user",
    )


def wrk(url: str, seconds: int) -> float:
    """Run wrk against ``url`` for ``seconds`` and return its requests/s."""
    result = subprocess.run(
        [
            "wrk",
            "--threads",
            "1",
            "--connections",
            str(CONNECTIONS),
            "--duration",
            f"{seconds}s",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    non_2xx = _NON_2XX.search(result.stdout)
    check(non_2xx is None, f"wrk got non-2xx responses: {non_2xx and non_2xx[1]}")
    errors = _SOCKET_ERRORS.search(result.stdout)
    check(errors is None, f"wrk reported {errors and errors[0]}")
    match = _RPS.search(result.stdout)
    check(match is not None, f"no Requests/sec in wrk's output: {result.stdout!r}")
    return float(match[1]) if match else 0.0


def run(*, quick: bool) -> Table:
    rounds, seconds = (1, 1) if quick else (12, 2)
    table = Table(
        "Over HTTP: uvicorn (h11, one worker) and wrk on 127.0.0.1",
        ["variant", "median requests/s", "ratio to bare", "ratio IQR", "target"],
    )
    if shutil.which("wrk") is None:
        table.notes.append("Skipped: wrk is not installed (apt-get install wrk).")
        return table

    names = {
        "http_bare": "bare Starlette",
        "http_constant_headers": "pure ASGI middleware, the same 5 header lines",
        "http_tinybird": "TinybirdMiddleware, cache hit",
    }
    with (
        uvicorn_server("http_bare") as bare,
        uvicorn_server("http_constant_headers") as constant,
        uvicorn_server("http_tinybird") as tinybird,
    ):
        servers = [bare, constant, tinybird]
        _check_server(bare, token=False)
        _check_server(constant, token=True)
        _check_server(tinybird, token=True)
        for server in servers:
            wrk(server.url, 1)

        results: dict[str, list[float]] = {server.name: [] for server in servers}
        for round_index in range(rounds):
            shift = round_index % len(servers)
            for server in [*servers[shift:], *servers[:shift]]:
                results[server.name].append(wrk(server.url, seconds))

    for server in servers:
        ratios = [
            value / ref
            for value, ref in zip(results[server.name], results[bare.name], strict=True)
        ]
        ratio = statistics.median(ratios)
        low, high = (ratios[0], ratios[0])
        if len(ratios) > 1:
            quartiles = statistics.quantiles(ratios, n=4)
            low, high = quartiles[0], quartiles[2]
        target = ""
        if server is tinybird:
            target = f">= {TARGET}: {verdict(ratio, TARGET, at_most=False)}"
        table.add(
            names[server.name],
            f"{statistics.median(results[server.name]):,.0f}",
            f"{ratio:.3f}",
            f"{low:.3f}-{high:.3f}",
            target,
        )
    table.notes.append(
        f"{rounds} rounds; each runs wrk (1 thread, {CONNECTIONS} connections, "
        f"{seconds} s) against each server in turn, in an order rotated from round "
        "to round, while all three servers run. The ratio is the median of the "
        "per-round ratios to bare, the IQR their first and third quartiles. One "
        "signed-in user makes every request, so the middleware serves cache hits; "
        "the constant-header server sends the same header lines without computing "
        "them."
    )
    return table
