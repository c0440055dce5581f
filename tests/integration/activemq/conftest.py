"""The private ActiveMQ brokers, each started the first time a test under this folder asks for
it, once per session (and shared with the end-to-end tests' when one run holds both)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from queuescaler_testkit.activemq_server import (
    ActiveMQServer,
    ActiveMQServerError,
    ArtemisServer,
    ClassicServer,
    artemis_session,
    classic_session,
)


@pytest.fixture(scope="session")
def activemq_classic() -> Iterator[ClassicServer]:
    """Debian's ActiveMQ Classic 5.17 with Jolokia 1.x at /api/jolokia/ (port 24161), STOMP on
    24613, OpenWire on 24616; stopped by its PID at the end of the session. Never skips: a
    broker that cannot start fails the tests that need it, with its log."""
    try:
        with classic_session() as server:
            yield server
    except ActiveMQServerError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def activemq_artemis() -> Iterator[ArtemisServer]:
    """ActiveMQ Artemis 2.40 with its console's Jolokia 2.x at /console/jolokia/ (port 25161),
    STOMP on 25613, every protocol on 25616; stopped by its PID at the end of the session."""
    try:
        with artemis_session() as server:
            yield server
    except ActiveMQServerError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(params=["classic", "artemis"])
def activemq(request: pytest.FixtureRequest) -> ActiveMQServer:
    """Each broker in turn, for what both must answer alike; only the one a selected test
    names is started (`-k classic` starts no Artemis)."""
    server: ActiveMQServer = request.getfixturevalue(f"activemq_{request.param}")
    return server
