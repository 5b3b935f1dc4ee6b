"""Flask extension that delivers per-user Tinybird JWTs.

:class:`TinybirdJWT` reads its options from ``app.config`` keys starting with
``TINYBIRD_`` and delivers tokens with the same rules as the ASGI middleware,
because both call the core in :mod:`tinybird_asgi`.
"""

from tinybird_asgi import __version__

from ._config import CONFIG_DEFAULTS
from ._extension import ENDPOINT_NAME, EXTENSION_NAME, TinybirdJWT

__all__ = [
    "CONFIG_DEFAULTS",
    "ENDPOINT_NAME",
    "EXTENSION_NAME",
    "TinybirdJWT",
    "__version__",
]
