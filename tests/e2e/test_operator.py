"""End to end: the real operator, the real cluster, the real broker and real consumers.

Each scenario is named after what a user would see, and runs in its own namespace with its
own queue. Bounded polls only; scale windows are shortened (`FAST_BEHAVIOR`) so that whole
cycles fit in a test, the defaults are tested in the unit tests of the decision engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from queuescaler_testkit.env import CACHE, TestEnv, wait_until
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import (
    PodRunnerFactory,
    celery_worker_command,
    celery_worker_env,
    pika_worker_command,
    pika_worker_env,
)
from queuescaler_testkit.pool import Pool, Timeline, scaler_gauges
from queuescaler_testkit.publisher import publish_is_prime_tasks, publish_messages, read_processed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def pool(testenv: TestEnv, namespace: str, operator: OperatorProcess) -> Iterator[Pool]:
    created = Pool(testenv, namespace).create()
    yield created
    created.delete_queue()


def _all_processed(log: Path, ids: list[str]) -> bool:
    counts = read_processed(log)
    return all(counts.get(i, 0) >= 1 for i in ids)


def test_burst_wakes_an_idle_pool_scales_it_up_and_back_to_zero_losing_nothing(
    pool: Pool, pod_runner_factory: PodRunnerFactory, processed_log: Path, tmp_path: Path,
    operator: OperatorProcess,
) -> None:
    pod_runner_factory(
        pool.namespace,
        f"app={pool.name}",
        pika_worker_command,
        pika_worker_env(pool.testenv.amqp_url, pool.queue, processed_log),
    )
    pool.apply_scaler(minReplicas=0, maxReplicas=5, target={"messagesPerReplica": 100})
    pool.wait_condition("Ready", "True")
    pool.wait_condition("Active", "False", reason="Idle")
    assert pool.replicas() == 0

    with Timeline(pool, operator.metrics) as timeline:
        ids = publish_messages(pool.testenv.amqp_url, pool.queue, 500)
        wait_until(lambda: pool.replicas() > 0, timeout=30, what="the pool to wake")
        wait_until(lambda: pool.replicas() >= 3, timeout=60, what="the pool to scale up")
        wait_until(
            lambda: _all_processed(processed_log, ids),
            timeout=120,
            what="every message to be processed",
        )
        wait_until(lambda: pool.replicas() == 0, timeout=120, what="the pool to return to zero")
        wait_until(
            lambda: pool.condition("Active")["status"] == "False",  # type: ignore[index]
            timeout=30,
            what="Active=False once idle",
        )

    table = timeline.table()
    (tmp_path / "timeline.md").write_text(table + "\n")
    out = CACHE / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "e2e-burst-timeline.md").write_text(table + "\n")
    print(table)
    counts = read_processed(processed_log)
    assert all(counts[i] >= 1 for i in ids), "a message was lost"
    reasons = pool.event_reasons()
    assert {"ScaledUp", "ScaledDown"} <= reasons
    assert {"ScaledUp", "ScaledDown"} <= pool.event_reasons("Deployment")
    status = pool.status()
    assert status["lastDecision"]["reason"] in {"idle", "backlog", "min-bound"}
    assert status["lastScaleTime"]


def test_celery_is_prime_workers_scale_up_with_prefetch_counted_as_backlog(
    pool: Pool, pod_runner_factory: PodRunnerFactory, processed_log: Path,
    operator: OperatorProcess,
) -> None:
    pod_runner_factory(
        pool.namespace,
        f"app={pool.name}",
        celery_worker_command(pool.queue),
        celery_worker_env(
            pool.testenv.amqp_url, processed_log, prefetch_multiplier=4, work_seconds=0.2
        ),
    )
    pool.apply_scaler(minReplicas=1, maxReplicas=4, target={"messagesPerReplica": 20})
    wait_until(lambda: pool.replicas() == 1, timeout=30, what="the pool at its minimum")
    saw_unacked: list[int] = []

    def unacked_seen() -> bool:
        # The operator's live view (status carries backlog numbers only every 30 s).
        gauges = scaler_gauges(operator.metrics(), pool.namespace, pool.name)
        unacked = gauges.get("queuescaler_backlog_messages:unacked") or 0
        if unacked:
            saw_unacked.append(unacked)
        # A prefetching worker holds several messages: more than one shows they all count.
        return max(saw_unacked, default=0) >= 2

    ids = publish_is_prime_tasks(pool.testenv.amqp_url, pool.queue, range(10_000, 10_300))
    wait_until(unacked_seen, timeout=60, what="prefetched tasks counted as unacked backlog")
    # Scaled up past its minimum, as the Events tell (a fast pool may be back down already).
    wait_until(lambda: pool.largest_scale() >= 2, timeout=60, what="the Celery pool to scale up")
    wait_until(
        lambda: _all_processed(processed_log, ids),
        timeout=180,
        what="every is_prime task to be processed",
    )


def test_paused_scaler_reports_but_never_scales(pool: Pool) -> None:
    pool.apply_scaler(minReplicas=0, paused=True, target={"messagesPerReplica": 10})
    publish_messages(pool.testenv.amqp_url, pool.queue, 50)
    pool.wait_condition("Paused", "True")
    wait_until(
        lambda: (pool.status().get("backlog") or {}).get("ready") == 50,
        timeout=30,
        what="the backlog reported while paused",
    )
    decision = wait_until(lambda: pool.status().get("lastDecision"), timeout=10, what="a decision")
    assert decision["reason"] == "paused"
    assert "would scale" in decision["message"]
    assert pool.replicas() == 0

    pool.apply_scaler(minReplicas=0, paused=False, target={"messagesPerReplica": 10})
    wait_until(lambda: pool.replicas() > 0, timeout=30, what="scaling once unpaused")
    pool.wait_condition("Paused", "False")


def test_dry_run_decides_and_reports_but_never_scales(pool: Pool) -> None:
    pool.apply_scaler(minReplicas=0, dryRun=True, target={"messagesPerReplica": 10})
    publish_messages(pool.testenv.amqp_url, pool.queue, 30)
    wait_until(
        lambda: (pool.status().get("desiredReplicas") or 0) >= 3,
        timeout=30,
        what="a desired count above zero",
    )
    wait_until(lambda: "WouldScale" in pool.event_reasons(), timeout=30, what="a WouldScale event")
    assert pool.replicas() == 0
    assert pool.status()["currentReplicas"] == 0


def test_deleted_target_gives_a_condition_and_an_event_and_no_crash(
    pool: Pool, operator: OperatorProcess
) -> None:
    pool.apply_scaler(minReplicas=1)
    wait_until(lambda: pool.replicas() == 1, timeout=30, what="the pool at its minimum")
    pool.testenv.kubectl("delete", "deployment", pool.name, "-n", pool.namespace)
    pool.wait_condition("TargetFound", "False", reason="TargetNotFound")
    pool.wait_condition("Ready", "False", reason="TargetNotFound")
    wait_until(
        lambda: "TargetNotFound" in pool.event_reasons(), timeout=30, what="a TargetNotFound event"
    )
    assert operator.process is not None and operator.process.poll() is None

    pool.create()  # the target comes back: so does the scaler
    pool.wait_condition("TargetFound", "True")
    wait_until(lambda: pool.replicas() == 1, timeout=30, what="the pool back at its minimum")


def test_deleted_secret_gives_a_condition_and_no_scale(pool: Pool) -> None:
    pool.apply_scaler(minReplicas=0, target={"messagesPerReplica": 10})
    pool.wait_condition("Ready", "True")
    pool.testenv.kubectl("delete", "secret", "rabbitmq", "-n", pool.namespace)
    pool.wait_condition("Ready", "False", reason="SecretNotFound")
    pool.wait_condition("BrokerReachable", "False", reason="SecretNotFound")
    publish_messages(pool.testenv.amqp_url, pool.queue, 40)
    wait_until(
        lambda: "SecretNotFound" in pool.event_reasons(), timeout=30, what="a SecretNotFound event"
    )
    assert pool.replicas() == 0

    pool.apply_secret()
    pool.wait_condition("Ready", "True")
    wait_until(lambda: pool.replicas() >= 1, timeout=30, what="scaling once the Secret is back")


def test_unreachable_broker_holds_then_applies_the_fallback(pool: Pool) -> None:
    dead = "127.0.0.1:1"  # nothing listens on port 1 of loopback: connections are refused
    user = pool.testenv.amqp_url.split("//", 1)[1].split("@", 1)[0]
    pool.apply_secret(amqp_url=f"amqp://{user}@{dead}/x", management_url=f"http://{user}@{dead}")
    pool.apply_scaler(minReplicas=1, maxReplicas=5, fallback={"afterFailures": 3, "replicas": 3})
    pool.wait_condition("BrokerReachable", "False", reason="Unreachable")
    wait_until(lambda: pool.replicas() == 3, timeout=60, what="the fallback count")
    assert pool.status()["lastDecision"]["reason"] == "fallback"
    assert pool.status()["consecutiveFailures"] >= 3
    password = user.split(":", 1)[1]
    for event in pool.events():
        assert password not in event.get("message", "")
    assert password not in str(pool.status())
