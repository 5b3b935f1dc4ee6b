"""A pytest plugin that fails the run if a secret reaches a log or an error.

Over the whole session it records every signing key a ``TokenIssuer`` is
built with and counts the JWTs the issuer signs, and captures every log
record (the project's loggers at DEBUG), every project exception message,
every non-200 token endpoint body, and the ``repr`` of every issuer (after
construction and after each key rotation), middleware, delivery
configuration, Flask extension state and signed token. When the session
ends, any captured text that contains a recorded signing key, or anything
shaped like a JWT (every signed token is), fails the run.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

import tinybird_flask._extension
from tinybird_asgi import _delivery, _errors, _issuer, middleware

_JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_PROJECT_LOGGERS = ("tinybird_asgi", "tinybird_flask")

signing_keys: set[str] = set()
tokens: set[str] = set()
captured: list[tuple[str, str]] = []
counts = {"records": 0, "mints": 0, "errors": 0, "reprs": 0}


class _CaptureHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        counts["records"] += 1
        try:
            text = record.getMessage()
        except Exception:  # a broken record is the logging call's own problem
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text += " | " + repr(record.exc_info[1])
        captured.append((f"log {record.name}:{record.levelname}", text))


def _install_recorders() -> None:
    check_key = _issuer._check_signing_key
    sign = _issuer.TokenIssuer._sign
    error_init = _errors.TinybirdError.__init__
    endpoint_response = _delivery.DeliveryConfig.endpoint_response

    def recording_check_key(signing_key: object) -> str:
        key = check_key(signing_key)
        signing_keys.add(key)
        return key

    def recording_sign(self: _issuer.TokenIssuer, *args: Any) -> Any:
        token = sign(self, *args)
        counts["mints"] += 1
        tokens.add(token.value)
        _capture_repr(token)
        return token

    def recording_error_init(self: Exception, *args: Any, **kwargs: Any) -> None:
        error_init(self, *args, **kwargs)
        counts["errors"] += 1
        captured.append((f"exception {type(self).__name__}", str(self)))

    def recording_endpoint_response(
        self: _delivery.DeliveryConfig, *args: Any, **kwargs: Any
    ) -> Any:
        response = endpoint_response(self, *args, **kwargs)
        if response.status != 200:
            captured.append(("endpoint body", response.body.decode()))
        return response

    _record_reprs()

    # setattr keeps mypy from checking each wrapper against the exact signature.
    setattr(_issuer, "_check_signing_key", recording_check_key)  # noqa: B010
    setattr(_issuer.TokenIssuer, "_sign", recording_sign)  # noqa: B010
    setattr(_errors.TinybirdError, "__init__", recording_error_init)  # noqa: B010
    setattr(  # noqa: B010
        _delivery.DeliveryConfig, "endpoint_response", recording_endpoint_response
    )


def _capture_repr(obj: object) -> None:
    counts["reprs"] += 1
    captured.append((f"repr {type(obj).__name__}", repr(obj)))


def _record_reprs() -> None:
    # Wrap each method after which an object's repr is complete: the
    # constructors, the key rotation and the Flask extension's init_app.
    extension = tinybird_flask._extension
    targets: list[tuple[type, str]] = [
        (_issuer.TokenIssuer, "__init__"),
        (_issuer.TokenIssuer, "rotate_signing_key"),
        (middleware.TinybirdMiddleware, "__init__"),
        (_delivery.DeliveryConfig, "__post_init__"),
        (extension.TinybirdJWT, "init_app"),
    ]
    for cls, name in targets:
        original = getattr(cls, name)

        def recording(
            self: Any, *args: Any, __original: Any = original, **kwargs: Any
        ) -> Any:
            result = __original(self, *args, **kwargs)
            _capture_repr(self)
            if isinstance(self, extension.TinybirdJWT):
                app = args[0] if args else kwargs["app"]
                _capture_repr(app.extensions[extension.EXTENSION_NAME])
            return result

        setattr(cls, name, recording)


def pytest_configure(config: pytest.Config) -> None:
    handler = _CaptureHandler(level=logging.DEBUG)
    logging.getLogger().addHandler(handler)
    for name in _PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    _install_recorders()


def find_leaks() -> list[str]:
    """Return a description of every captured text that contains a secret."""
    leaks = []
    for source, text in captured:
        if _JWT_SHAPE.search(text):
            leaks.append(f"{source}: a JWT-shaped string")
        elif any(key in text for key in signing_keys):
            leaks.append(f"{source}: a signing key")
    return leaks


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = find_leaks()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    summary = (
        f"leak guard: scanned {len(captured)} texts ({counts['records']} log "
        f"records, {counts['errors']} exceptions, {counts['reprs']} reprs) for "
        f"{len(signing_keys)} signing keys and JWTs from {counts['mints']} mints"
    )
    if reporter is not None:
        reporter.write_line(summary)
    if leaks:
        if reporter is not None:
            for leak in sorted(set(leaks)):
                reporter.write_line(f"leak guard: LEAK in {leak}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
