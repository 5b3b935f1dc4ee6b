"""Flask extension that delivers per-user Tinybird JWTs."""

from __future__ import annotations

from tinybird_asgi import __version__

__all__ = ["__version__"]
