"""The private redis-server, started once for the tests under this folder (and shared with the
end-to-end tests' when one run holds both)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from queuescaler_testkit.redis_server import RedisServer, session_server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Plain and TLS listeners with a password; stopped by its PID at the end of the session
    (shared with the end-to-end tests' fixture when both run)."""
    with session_server() as server:
        yield server
