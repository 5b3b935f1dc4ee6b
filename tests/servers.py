"""Real HTTP servers on 127.0.0.1 for tests: uvicorn for ASGI, werkzeug for WSGI."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from werkzeug.serving import WSGIRequestHandler, make_server

STARTUP_TIMEOUT = 10.0


class _QuietRequestHandler(WSGIRequestHandler):
    # Access lines would carry ?token= query strings into the captured logs.
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


def _wait_until(ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not start within {STARTUP_TIMEOUT:g} s")
        time.sleep(0.01)


@contextmanager
def serve_asgi(app: Any, *, root_path: str = "") -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yield its base URL.

    ``root_path`` is uvicorn's ``--root-path``, which uvicorn also puts at the
    start of each request's ``path``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        root_path=root_path,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True
    )
    thread.start()
    try:
        _wait_until(lambda: server.started or not thread.is_alive(), "uvicorn")
        if not server.started:
            raise RuntimeError("uvicorn exited during start-up")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STARTUP_TIMEOUT)
        sock.close()


@contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    """Serve ``app`` with werkzeug's threaded server on a free loopback port;
    yield its base URL."""
    server = make_server(
        "127.0.0.1", 0, app, threaded=True, request_handler=_QuietRequestHandler
    )
    # serve_forever checks for shutdown() every poll_interval seconds.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(STARTUP_TIMEOUT)
        server.server_close()
