"""The private Kafka broker, started once for the tests under this folder that ask for it (and
shared with the end-to-end tests' when one run holds both)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from queuescaler_testkit.kafka_server import KafkaServer, KafkaServerError, session_server


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaServer]:
    """One KRaft node with plain, SASL (PLAIN, SCRAM-SHA-256/512) and SSL listeners; stopped by
    its PID at the end of the session (shared with the end-to-end tests' fixture when both run).
    Never skips: a broker that cannot start fails the tests that need it, with its log."""
    try:
        with session_server() as server:
            yield server
    except KafkaServerError as error:
        pytest.fail(str(error), pytrace=False)
