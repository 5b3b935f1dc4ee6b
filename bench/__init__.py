"""Benchmarks for tinybird-asgi; run them with ``./scripts/bench``."""
