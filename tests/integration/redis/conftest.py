"""The private redis-server, started once for the tests under this folder and only for them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from queuescaler_testkit.redis_server import PORT, TLS_PORT, RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Plain and TLS listeners with a password; stopped by its PID at the end of the session."""
    server = RedisServer(port=PORT, tls_port=TLS_PORT).start()
    try:
        yield server
    finally:
        server.stop()
