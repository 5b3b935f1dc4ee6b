"""Per-user Tinybird JWTs for ASGI and Flask backends.

The core (:class:`TokenIssuer`, the scopes and :class:`DeliveryConfig`) has no
framework imports and does no I/O; :class:`TinybirdMiddleware` (pure ASGI, in
``tinybird_asgi.middleware``) and ``tinybird_flask`` adapt it to their
frameworks.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._delivery import (
    DeliveryConfig,
    DeliveryMode,
    DeliveryOptions,
    EndpointResponse,
    ResponseEdit,
    SameSite,
    is_preflight,
    read_cookie,
)
from ._errors import (
    ConfigurationError,
    IdentityError,
    InvalidScopeError,
    PolicyError,
    SigningError,
    TinybirdError,
)
from ._issuer import (
    AnonymousPrincipalError,
    AsyncCallbackError,
    TinybirdToken,
    TokenIssuer,
    default_identity,
    is_anonymous,
)
from ._scopes import (
    DatasourceAppend,
    DatasourceRead,
    ParamValue,
    PipeRead,
    Scope,
    quote_literal,
    sql_filter,
)
from .middleware import TinybirdMiddleware, get_token

try:
    __version__ = _version("tinybird-asgi")
except _PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AnonymousPrincipalError",
    "AsyncCallbackError",
    "ConfigurationError",
    "DatasourceAppend",
    "DatasourceRead",
    "DeliveryConfig",
    "DeliveryMode",
    "DeliveryOptions",
    "EndpointResponse",
    "IdentityError",
    "InvalidScopeError",
    "ParamValue",
    "PipeRead",
    "PolicyError",
    "ResponseEdit",
    "SameSite",
    "Scope",
    "SigningError",
    "TinybirdError",
    "TinybirdMiddleware",
    "TinybirdToken",
    "TokenIssuer",
    "__version__",
    "default_identity",
    "get_token",
    "is_anonymous",
    "is_preflight",
    "quote_literal",
    "read_cookie",
    "sql_filter",
]
