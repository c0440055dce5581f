"""Fixtures for the reliability suite: a SEPARATE environment that tests may break.

The shared `testenv` is used by other sessions at the same time and is never stopped here.
`faultenv` brings up the `faults` environment (its own kwok cluster, RabbitMQ node and
Prometheus, ports offset by 100), applies the CRD there, and stops it all when the session
ends. Every operator a test starts watches only that test's namespaces, so operators of
different tests never act on each other's objects.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from queuescaler_testkit.broker import BrokerAdmin
from queuescaler_testkit.env import TestEnv, bring_up
from queuescaler_testkit.envctl import wait_cluster_restarted
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import PodRunnerFactory
from reliability.envctl import FAULTS, faultenv_sh
from reliability.scenario import BrokerUser


@pytest.fixture(scope="session")
def faultenv() -> Iterator[TestEnv]:
    """The `faults` environment with the CRD applied; stopped (all of it) after the session."""
    try:
        env = bring_up(FAULTS)
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    env.apply_crd()
    yield env
    if os.environ.get("QS_KEEP_FAULTENV") != "1":  # kept only when debugging one test
        faultenv_sh("down")


@pytest.fixture(scope="session")
def broker_user(faultenv: TestEnv) -> Iterator[BrokerUser]:
    """A RabbitMQ user of the faults broker with a distinctive password, made for this session.

    The password holds characters that URLs percent-encode, so the scans look for that form
    too. It is the only password the operator sees in these tests.
    """
    name = f"qs-rel-{uuid.uuid4().hex[:6]}"
    password = f"S3cr3t-{uuid.uuid4()}-p@ss:w0rd!"
    admin = BrokerAdmin(faultenv.management_url, timeout=10)
    admin.add_user(name, password, tags="monitoring")
    admin.grant(faultenv.vhost, name)
    parts = urllib.parse.urlsplit(faultenv.amqp_url)
    management = urllib.parse.urlsplit(faultenv.management_url)
    yield BrokerUser(name, password, parts.port or 0, management.port or 0, faultenv.vhost)
    # The broker may be down when a fault test failed; the environment is stopped anyway.
    with contextlib.suppress(OSError):
        admin.delete_user(name)


@pytest.fixture
def make_namespace(faultenv: TestEnv) -> Iterator[Callable[[], str]]:
    """`make_namespace()` -> a fresh namespace in the faults cluster, deleted afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"r-{uuid.uuid4().hex[:8]}"
        faultenv.kubectl("create", "namespace", name)
        made.append(name)
        return name

    yield make
    for name in made:
        faultenv.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def fault_namespace(make_namespace: Callable[[], str]) -> str:
    return make_namespace()


@pytest.fixture
def start_operator(
    faultenv: TestEnv, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """`start_operator(*namespaces, extra args...)` -> a started operator watching only those.

    Secrets are re-read every 3 s. Every operator started is stopped (SIGTERM) at teardown.
    """
    started: list[OperatorProcess] = []

    def start(*namespaces: str, args: tuple[str, ...] = ()) -> OperatorProcess:
        log_path = tmp_path / f"operator-{len(started)}.log"
        watch = [arg for namespace in namespaces for arg in ("-n", namespace)]
        process = OperatorProcess(
            faultenv, log_path, *watch, "--secret-refresh-seconds", "3", *args
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def pod_runners(faultenv: TestEnv, tmp_path: Path) -> Iterator[PodRunnerFactory]:
    """Pod runners on the faults cluster, all stopped at teardown."""
    factory = PodRunnerFactory(faultenv.kubeconfig, tmp_path / "workers")
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def cluster_restarted(faultenv: TestEnv) -> Callable[[], float]:
    """After `kwokctl start cluster`: wait (bounded) until the cluster answers and runs pods
    (the node Leases handed to the new kwok controller); returns when the apiserver answered
    (time.monotonic()). See `queuescaler_testkit.envctl.wait_cluster_restarted`."""

    def wait() -> float:
        return wait_cluster_restarted(faultenv)

    return wait
