"""Fixtures for end-to-end tests: pod runners that clean up after themselves, a processed log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from queuescaler_testkit.env import TestEnv
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
