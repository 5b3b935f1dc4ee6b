"""Test suite of tinybird-asgi."""
