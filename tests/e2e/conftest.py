"""Fixtures for end-to-end tests: pod runners that clean up after themselves, a processed log,
the session's Kafka broker and ActiveMQ brokers (Classic and Artemis)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from queuescaler_testkit.activemq_server import (
    ActiveMQServerError,
    ArtemisServer,
    ClassicServer,
    artemis_session,
    classic_session,
)
from queuescaler_testkit.env import TestEnv
from queuescaler_testkit.kafka_server import KafkaServer, KafkaServerError, session_server
from queuescaler_testkit.podrunner import PodRunnerFactory


@pytest.fixture
def pod_runner_factory(testenv: TestEnv, tmp_path: Path) -> Iterator[PodRunnerFactory]:
    """`factory(namespace, label_selector, worker_command, env)` -> a started PodRunner.

    Every runner it made is stopped at teardown (its processes SIGTERMed, then SIGKILLed after
    their grace period), whether the test passed or not. Worker logs go under tmp_path/workers.
    """
    factory = PodRunnerFactory(testenv.kubeconfig, tmp_path / "workers")
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def processed_log(tmp_path: Path) -> Path:
    """A fresh file for the workers' `<id> <pod>` lines (created by the first write)."""
    return tmp_path / "processed.log"


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaServer]:
    """The session's Kafka broker (started by the first test that asks for it, shared with the
    kafka integration tests' fixture, stopped by its PID at the end). Never skips: a broker
    that cannot start fails the tests that need it, with its log."""
    try:
        with session_server() as server:
            yield server
    except KafkaServerError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def activemq_classic() -> Iterator[ClassicServer]:
    """The session's ActiveMQ Classic (started by the first test that asks for it, shared with
    the activemq integration tests' fixture, stopped by its PID at the end). Never skips."""
    try:
        with classic_session() as server:
            yield server
    except ActiveMQServerError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def activemq_artemis() -> Iterator[ArtemisServer]:
    """The session's ActiveMQ Artemis, shared the same way. Never skips."""
    try:
        with artemis_session() as server:
            yield server
    except ActiveMQServerError as error:
        pytest.fail(str(error), pytrace=False)
