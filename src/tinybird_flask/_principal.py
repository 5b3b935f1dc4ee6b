"""Finding the signed-in user of the current Flask request."""

from __future__ import annotations

from typing import Any

from flask import Flask, g

try:
    import flask_login
except ImportError:  # pragma: no cover - Flask-Login is an optional dependency
    flask_login = None

__all__ = ["default_principal"]

_LOGGED_OUT = "_tinybird_logged_out"


def _mark_logout(sender: Flask, **extra: Any) -> None:
    setattr(g, _LOGGED_OUT, True)


if flask_login is not None:
    # blinker keeps a weak reference; a module-level function lives as long
    # as the module.
    flask_login.user_logged_out.connect(_mark_logout)


def default_principal(app: Flask, ctx_g: Any) -> Any:
    """Return the principal of the current request, or ``None``.

    Flask-Login's ``current_user`` comes first when the app has a
    ``LoginManager`` and the user is authenticated; otherwise ``g.user``. A
    request that called ``logout_user()`` has no principal, even if the app
    copied the user to ``g.user`` before logging out.

    ``app`` and ``ctx_g`` are the objects behind ``current_app`` and ``g``,
    resolved by the caller, because each read through a proxy costs a context
    lookup (and a missing attribute, an exception raised through the proxy).
    """
    if flask_login is not None and hasattr(app, "login_manager"):
        user = flask_login.current_user._get_current_object()
        if user is not None and user.is_authenticated:
            return user
        if ctx_g.get(_LOGGED_OUT, False):
            return None
    return ctx_g.get("user")
