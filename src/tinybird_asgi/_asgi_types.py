"""The ASGI types the middleware needs, defined here so that the package
imports no framework at runtime.

They are structurally the same as ``starlette.types``, so a Starlette or
FastAPI app is accepted where :data:`ASGIApp` is expected.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

__all__ = ["ASGIApp", "ASGIScope", "Message", "Receive", "Send"]

ASGIScope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[ASGIScope, Receive, Send], Awaitable[None]]
