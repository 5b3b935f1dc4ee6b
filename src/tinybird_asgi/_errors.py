"""The exception tree shared by the core and both adapters."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "IdentityError",
    "InvalidScopeError",
    "PolicyError",
    "SigningError",
    "TinybirdError",
]


class TinybirdError(Exception):
    """Root of the library's own exceptions.

    Python's own conventions still apply beside it: an unknown keyword
    argument raises ``TypeError``, ``get_token()`` on a request that did not
    pass through the middleware raises ``RuntimeError``, and
    ``TinybirdJWT.issuer_for()`` for an app set up with another extension
    raises ``KeyError``.
    """


class ConfigurationError(TinybirdError, ValueError):
    """Raised when an option is missing or invalid while an object is built.

    ``option`` names the offending option (or environment variable).
    """

    def __init__(self, message: str, *, option: str) -> None:
        super().__init__(message)
        self.option = option


class InvalidScopeError(TinybirdError, ValueError):
    """Raised when a scope is built from an invalid resource, parameter or filter.

    ``field`` names the offending part, for example ``fixed_params['org_id']``.
    """

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class PolicyError(TinybirdError):
    """Raised by ``token_for`` when the policy or another callback fails.

    No token is produced for that call. ``identity`` is the principal's
    identity when it was known before the failure, else ``None``.
    """

    def __init__(self, message: str, *, identity: str | None = None) -> None:
        super().__init__(message)
        self.identity = identity


class IdentityError(PolicyError):
    """Raised when no identity string can be derived from a principal."""


class SigningError(TinybirdError):
    """Raised when PyJWT fails to sign a payload."""
