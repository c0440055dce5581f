"""The pod runner plays the kubelet for kwok's pods: real workers appear and drain with the pool."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from queuescaler_testkit.broker import BrokerAdmin
from queuescaler_testkit.env import TestEnv, wait_until
from queuescaler_testkit.podrunner import (
    PodRunner,
    PodRunnerFactory,
    WorkerRecord,
    celery_worker_command,
    celery_worker_env,
    pika_worker_command,
    pika_worker_env,
)
from queuescaler_testkit.publisher import (
    delete_queue,
    missing,
    publish_is_prime_tasks,
    publish_messages,
    read_processed,
)

pytestmark = pytest.mark.integration

GRACE_SECONDS = 5


@pytest.fixture(scope="module")
def apps(testenv: TestEnv) -> client.AppsV1Api:
    return client.AppsV1Api(config.new_client_from_config(config_file=str(testenv.kubeconfig)))


@pytest.fixture(scope="module")
def core(testenv: TestEnv) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(testenv.kubeconfig)))


@pytest.fixture
def runners(testenv: TestEnv, tmp_path: Path) -> Iterator[PodRunnerFactory]:
    factory = PodRunnerFactory(testenv.kubeconfig, tmp_path / "workers")
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def queue(testenv: TestEnv) -> Iterator[str]:
    name = f"podrunner-{uuid.uuid4().hex[:8]}"
    yield name
    delete_queue(testenv.amqp_url, name)


def _create_worker_deployment(
    apps: client.AppsV1Api, namespace: str, name: str, grace: int = GRACE_SECONDS
) -> str:
    """A Deployment of fake pods at 0 replicas; returns its label selector."""
    labels = {"app": name}
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": grace,
                        "containers": [{"name": "worker", "image": "worker:fake"}],
                    },
                },
            },
        },
    )
    return f"app={name}"


def _scale(apps: client.AppsV1Api, namespace: str, name: str, replicas: int) -> None:
    apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})


def _running_pod_names(core: client.CoreV1Api, namespace: str, selector: str) -> set[str]:
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    return {
        p.metadata.name
        for p in pods
        if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
    }


def _wait_for_pool(
    runner: PodRunner, core: client.CoreV1Api, namespace: str, selector: str, size: int
) -> dict[str, int]:
    """Wait until exactly `size` processes serve, one for each Running pod; return them."""

    def settled() -> dict[str, int] | None:
        serving = runner.serving()
        if len(serving) != size or len(runner.running()) != size:
            return None
        return serving if set(serving) == _running_pod_names(core, namespace, selector) else None

    return wait_until(settled, timeout=90, what=f"{size} worker processes, one per Running pod")


def _connection_names(testenv: TestEnv) -> set[str]:
    """client_properties.connection_name of every connection in the test vhost."""
    connections = BrokerAdmin(testenv.management_url, timeout=10).connections(testenv.vhost)
    return {
        str(c.get("client_properties", {}).get("connection_name"))
        for c in connections
        if c.get("client_properties", {}).get("connection_name")
    }


def _once_exited(runner: PodRunner, pods: set[str]) -> dict[str, WorkerRecord] | None:
    """The runner's records once every one of `pods` has exited, else None."""
    records = runner.records()
    return records if all(not records[p].alive for p in pods) else None


def _describe(runner: PodRunner) -> str:
    return "\n".join(f"{e.pod} {e.kind} {e.detail}" for e in runner.events())


def test_pika_workers_follow_the_deployment_and_lose_nothing_when_it_scales_in(
    testenv: TestEnv,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
    runners: PodRunnerFactory,
    queue: str,
    tmp_path: Path,
) -> None:
    processed = tmp_path / "processed.log"
    selector = _create_worker_deployment(apps, namespace, "pika-worker")
    env = pika_worker_env(testenv.amqp_url, queue, processed, prefetch=5, work_seconds=0.05)
    runner = runners(namespace, selector, pika_worker_command, env)

    _scale(apps, namespace, "pika-worker", 3)
    first = _wait_for_pool(runner, core, namespace, selector, 3)
    wait_until(
        lambda: set(first) <= _connection_names(testenv),
        timeout=30,
        what="an AMQP connection named after each pod",
    )

    ids = publish_messages(testenv.amqp_url, queue, 200)
    wait_until(lambda: read_processed(processed), timeout=30, what="the first message processed")
    _scale(apps, namespace, "pika-worker", 1)
    survivor = _wait_for_pool(runner, core, namespace, selector, 1)
    leaving = set(first) - set(survivor)
    assert len(leaving) == 2, _describe(runner)
    records = wait_until(
        lambda: _once_exited(runner, leaving),
        timeout=GRACE_SECONDS + 30,
        what="the two removed workers to exit",
    )
    for pod in leaving:
        assert records[pod].sigterm_at is not None, _describe(runner)
        assert records[pod].graceful, f"{pod}: {records[pod]}\n{_describe(runner)}"

    wait_until(
        lambda: not missing(ids, processed),
        timeout=120,
        what="every published message processed at least once",
    )

    _scale(apps, namespace, "pika-worker", 0)
    wait_until(lambda: not runner.running(), timeout=90, what="no worker process left")
    records = runner.records()
    assert set(records) == set(first), _describe(runner)
    assert all(r.graceful for r in records.values()), _describe(runner)
    assert all(r.pod_ip for r in records.values()), "every worker was told its pod's IP"


def test_celery_workers_follow_the_deployment_and_finish_every_task(
    testenv: TestEnv,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
    runners: PodRunnerFactory,
    queue: str,
    tmp_path: Path,
) -> None:
    processed = tmp_path / "processed.log"
    selector = _create_worker_deployment(apps, namespace, "celery-worker")
    env = celery_worker_env(testenv.amqp_url, processed, prefetch_multiplier=4, work_seconds=0.05)
    runner = runners(namespace, selector, celery_worker_command(queue), env)

    _scale(apps, namespace, "celery-worker", 2)
    first = _wait_for_pool(runner, core, namespace, selector, 2)
    wait_until(
        lambda: set(first) <= _connection_names(testenv),
        timeout=60,
        what="the Celery workers' AMQP connections named after their pods",
    )

    ids = publish_is_prime_tasks(testenv.amqp_url, queue, range(10**9, 10**9 + 60))
    wait_until(lambda: read_processed(processed), timeout=30, what="the first task processed")
    _scale(apps, namespace, "celery-worker", 1)
    survivor = _wait_for_pool(runner, core, namespace, selector, 1)
    (leaving,) = set(first) - set(survivor)
    wait_until(
        lambda: not runner.records()[leaving].alive,
        timeout=GRACE_SECONDS + 30,
        what="the removed Celery worker to exit",
    )
    record = runner.records()[leaving]
    assert record.graceful, f"{record}\n{_describe(runner)}"

    wait_until(
        lambda: not missing(ids, processed), timeout=120, what="every task processed at least once"
    )
    _scale(apps, namespace, "celery-worker", 0)
    wait_until(lambda: not runner.running(), timeout=90, what="no worker process left")
    assert all(r.graceful for r in runner.records().values()), _describe(runner)


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(
    testenv: TestEnv,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
    runners: PodRunnerFactory,
) -> None:
    selector = _create_worker_deployment(apps, namespace, "stubborn", grace=1)
    stubborn = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "while True: time.sleep(1)\n"
    )
    runner = runners(namespace, selector, lambda pod: [sys.executable, "-c", stubborn], {})

    _scale(apps, namespace, "stubborn", 1)
    (pod,) = _wait_for_pool(runner, core, namespace, selector, 1)
    _scale(apps, namespace, "stubborn", 0)
    wait_until(lambda: not runner.running(), timeout=60, what="the stubborn worker gone")

    record = runner.records()[pod]
    assert record.sigterm_at is not None
    assert record.killed, _describe(runner)
    assert record.exit_code == -9
    kinds = [e.kind for e in runner.events() if e.pod == pod]
    assert kinds == ["started", "sigterm", "sigkill", "exited"]


def test_stopping_the_runner_stops_its_workers(
    testenv: TestEnv,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    namespace: str,
    runners: PodRunnerFactory,
    queue: str,
    tmp_path: Path,
) -> None:
    selector = _create_worker_deployment(apps, namespace, "kept")
    env = pika_worker_env(testenv.amqp_url, queue, tmp_path / "processed.log")
    runner = runners(namespace, selector, pika_worker_command, env)
    _scale(apps, namespace, "kept", 2)
    pods = _wait_for_pool(runner, core, namespace, selector, 2)
    # Consuming, so past installing their SIGTERM handler: a process told to stop while
    # still importing pika dies of the signal itself (on a loaded machine, seconds in).
    wait_until(lambda: set(pods) <= _connection_names(testenv), timeout=60,
               what="both workers connected to the broker")

    runner.stop()
    runner.stop()  # idempotent

    assert not runner.running()
    records = runner.records()
    assert set(records) == set(pods)
    assert all(r.stop_reason == "runner-stopped" and r.graceful for r in records.values()), (
        records)
