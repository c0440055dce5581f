"""Session-wide fixtures: one real environment shared by every integration and e2e test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from queuescaler_testkit.env import TestEnv, bring_up
from queuescaler_testkit.operator_process import OperatorProcess

# No property test is timed: Hypothesis' default 200 ms deadline failed redaction and
# restart properties as "flaky" on two cores shared with brokers and a control plane.
# Timings belong in bench/, never in a pass/fail test.
settings.register_profile("queuescaler", deadline=None)
settings.load_profile("queuescaler")


@pytest.fixture(scope="session")
def testenv() -> TestEnv:
    """The local cluster, RabbitMQ and Prometheus, brought up once (or reused when running).

    Never skips: when the environment cannot start, every test using it fails with the reason.
    """
    try:
        return bring_up()
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture
def namespace(testenv: TestEnv) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting for finalizers)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    testenv.kubectl("create", "namespace", name)
    yield name
    testenv.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def crd(testenv: TestEnv) -> None:
    """The QueueScaler CRD, applied (server-side, idempotent) and Established."""
    testenv.apply_crd()


@pytest.fixture(scope="session")
def operator(
    testenv: TestEnv, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One real operator process for the session, watching the tests' namespaces (`t-*`).

    Tests that run operators of their own use other namespace prefixes, so that no two
    operators ever act on one QueueScaler.

    Secrets are re-read every 3 s so that tests see a deleted Secret quickly.
    """
    log_path: Path = tmp_path_factory.mktemp("operator") / "operator.log"
    process = OperatorProcess(
        testenv, log_path, "--secret-refresh-seconds", "3", "--namespace", "t-*"
    ).start()
    yield process
    process.stop()


KINDS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test is exactly one of unit, integration or e2e, so `-m` selections are complete."""
    unmarked = [
        item.nodeid
        for item in items
        if sum(1 for kind in KINDS if item.get_closest_marker(kind)) != 1
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests must carry exactly one of the marks unit/integration/e2e: " + ", ".join(unmarked)
        )
