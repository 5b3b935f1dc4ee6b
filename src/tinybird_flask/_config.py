"""The ``TINYBIRD_*`` configuration keys and the core objects built from them.

Every default comes from the core: :class:`~tinybird_asgi.DeliveryConfig`'s
field defaults and :class:`~tinybird_asgi.TokenIssuer`'s keyword defaults, so
the Flask extension and the ASGI middleware cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from tinybird_asgi import ConfigurationError, DeliveryConfig, TokenIssuer

__all__ = [
    "CONFIG_DEFAULTS",
    "DELIVERY_KEYS",
    "ISSUER_KEYS",
    "build_delivery",
    "build_issuer",
]

PREFIX: Final = "TINYBIRD_"

# TokenIssuer options that have a plain value and so can live in app.config.
# The scopes policy, identity and clock are callables, set through the
# extension's decorators and constructor instead.
_ISSUER_OPTIONS = (
    "signing_key",
    "workspace_id",
    "api_url",
    "ttl",
    "allow_long_ttl",
    "refresh_margin",
    "exp_step",
    "rate_limit",
    "name",
    "max_cached",
)
# A bare TINYBIRD_NAME would read as the app's name, not the JWT's name claim.
_KEY_NAMES = {"name": "TOKEN_NAME"}


def _key(option: str) -> str:
    return PREFIX + _KEY_NAMES.get(option, option.upper())


def _issuer_defaults() -> dict[str, Any]:
    parameters = inspect.signature(TokenIssuer.__init__).parameters
    defaults: dict[str, Any] = {}
    for option in _ISSUER_OPTIONS:
        default = parameters[option].default
        defaults[option] = None if default is inspect.Parameter.empty else default
    return defaults


def _delivery_defaults() -> dict[str, Any]:
    return {
        field.name: field.default
        for field in dataclasses.fields(DeliveryConfig)
        if field.init
    }


ISSUER_KEYS: Final[dict[str, str]] = {
    option: _key(option) for option in _ISSUER_OPTIONS
}
"""TokenIssuer option name to configuration key."""

DELIVERY_KEYS: Final[dict[str, str]] = {
    option: _key(option) for option in _delivery_defaults()
}
"""DeliveryConfig option name to configuration key."""

CONFIG_DEFAULTS: Final[dict[str, Any]] = {
    **{ISSUER_KEYS[k]: v for k, v in _issuer_defaults().items()},
    **{DELIVERY_KEYS[k]: v for k, v in _delivery_defaults().items()},
}
"""Every configuration key the extension reads, with its default."""


_KEYWORD = re.compile(r"\b([a-z_]+)=")


def _rename(exc: ConfigurationError, keys: Mapping[str, str]) -> ConfigurationError:
    if exc.option not in keys:
        # An option with no config key, such as TinybirdJWT(clock=...).
        return exc
    key = keys[exc.option]
    # The core's advice names keyword arguments ("pass allow_long_ttl=True");
    # a Flask app sets the matching config keys instead.
    message = _KEYWORD.sub(
        lambda match: f"{keys[match[1]]} = " if match[1] in keys else match[0],
        str(exc),
    )
    return ConfigurationError(f"app.config[{key!r}] is invalid: {message}", option=key)


def build_delivery(config: Mapping[str, Any]) -> DeliveryConfig:
    """Build the delivery rules from ``config``.

    :raises ConfigurationError: naming the ``TINYBIRD_*`` key at fault.
    """
    options = {option: config[key] for option, key in DELIVERY_KEYS.items()}
    token_path = options["token_path"]
    if isinstance(token_path, str) and ("<" in token_path or ">" in token_path):
        key = DELIVERY_KEYS["token_path"]
        raise ConfigurationError(
            f"app.config[{key!r}] is invalid: {token_path!r} contains a URL rule "
            "variable or an angle bracket, but the token endpoint is one fixed "
            "path; set it to a path such as '/tinybird/token'.",
            option=key,
        )
    paths = options["exclude_paths"]
    if isinstance(paths, list):
        options["exclude_paths"] = tuple(paths)
    try:
        return DeliveryConfig(**options)
    except ConfigurationError as exc:
        raise _rename(exc, DELIVERY_KEYS) from None


def build_issuer(
    config: Mapping[str, Any],
    *,
    scopes: Callable[[Any], Any],
    identity: Callable[[Any], str],
    clock: Callable[[], float] | None,
) -> TokenIssuer:
    """Build a :class:`TokenIssuer` from ``config`` and the extension's callbacks.

    :raises ConfigurationError: naming the ``TINYBIRD_*`` key at fault.
    """
    options = {option: config[key] for option, key in ISSUER_KEYS.items()}
    if options["signing_key"] is None:
        key = ISSUER_KEYS["signing_key"]
        raise ConfigurationError(
            f"app.config[{key!r}] is not set; set it to the Tinybird workspace "
            "admin token, or pass issuer=TokenIssuer(...) to TinybirdJWT.",
            option=key,
        )
    if clock is not None:
        options["clock"] = clock
    try:
        return TokenIssuer(scopes=scopes, identity=identity, **options)
    except ConfigurationError as exc:
        raise _rename(exc, ISSUER_KEYS) from None


def unknown_keys(config: Mapping[str, Any]) -> list[str]:
    """Return the ``TINYBIRD_*`` keys in ``config`` that the extension never reads."""
    return sorted(
        key
        for key in config
        if isinstance(key, str)
        and key.startswith(PREFIX)
        and key not in CONFIG_DEFAULTS
    )
