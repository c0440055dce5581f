"""End to end on Redis: the classic Celery example (an app `tasks` with `is_prime`, Redis as
broker and as result backend, the default queue `celery`), its workers started by the pod
runner as the Deployment's pods, sized by a QueueScaler with `source.redis`.

A burst scales the pool up; at its tail a few long tasks keep some workers busy while the
backlog is gone. Celery's default acks a task when it starts, so Redis no longer holds those
tasks anywhere: only the workers' own answer (inspect) tells the busy pods, and a scale-down
that stopped one would lose its task (the grace period is shorter than the task, and the
message was acked). The pool must shrink around them, and every result must be in the backend.

Then the other classic layout, RabbitMQ as broker and Redis as result backend, through the
rabbitmq source; last, plain Redis-stream consumers of a consumer group (not Celery): the
group's lag scales the pool, pending entries per consumer name the busy pods.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from queuescaler_testkit.env import CACHE, TestEnv, wait_until
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import PodRunner, PodRunnerFactory
from queuescaler_testkit.pool import (
    FAST_BEHAVIOR,
    Pool,
    Timeline,
    deep_merge,
    worker_deployment,
)
from queuescaler_testkit.publisher import FirstSeen, read_processed
from queuescaler_testkit.redis_server import RedisServer, session_server
from queuescaler_testkit.workers.redis_tasks import (
    QUEUE,
    TASK_NAME,
    make_app,
    redis_worker_command,
    redis_worker_env,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

BROKER_DB, BACKEND_DB, STREAM_DB, RABBITMQ_BACKEND_DB = 20, 21, 22, 23
"""The e2e tests' databases on the session redis-server (the integration tests use 1 to 19)."""
SHORT_TASKS = 120
SHORT_SECONDS = 0.3
LONG_TASKS = 3
LONG_SECONDS = 25.0
"""Longer than the pod's grace period: a busy worker told to stop would be killed mid-task."""
GRACE_SECONDS = 10
MAX_REPLICAS = 4


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's redis-server, shared with the redis integration tests' fixture."""
    with session_server() as server:
        yield server


@dataclass
class RedisPool(Pool):
    """A Pool whose queue is Celery's `celery` list on the session Redis, with a redis Secret."""

    redis: RedisServer | None = None

    def url(self, database: int) -> str:
        assert self.redis is not None
        return f"redis://:{self.redis.password}@127.0.0.1:{self.redis.port}/{database}"

    def create(self, *, amqp_url: str | None = None, management_url: str | None = None) -> Pool:
        assert self.redis is not None
        self.queue = QUEUE
        for database in (BROKER_DB, BACKEND_DB):
            with redis.Redis(port=self.redis.port, password=self.redis.password,
                             db=database) as admin:
                admin.flushdb()
        self.apply({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis"},
            "stringData": {"redisUrl": f"redis://127.0.0.1:{self.redis.port}/{BROKER_DB}",
                           "password": self.redis.password},
        })
        self.apply(worker_deployment(self.name, self.grace_seconds))
        return self

    def apply_scaler(self, **spec: Any) -> None:
        base: dict[str, Any] = {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.name},
            "maxReplicas": MAX_REPLICAS,
            "source": {"redis": {"queue": QUEUE, "connectionSecretRef": {"name": "redis"}}},
        }
        self.apply({
            "apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler",
            "metadata": {"name": self.name},
            "spec": deep_merge(deep_merge(base, FAST_BEHAVIOR), spec),
        })

    def delete_queue(self) -> None:
        pass  # the databases are flushed by the next run


@pytest.fixture
def pool(
    testenv: TestEnv, namespace: str, operator: OperatorProcess, redis_server: RedisServer
) -> RedisPool:
    created = RedisPool(testenv, namespace, grace_seconds=GRACE_SECONDS, redis=redis_server)
    created.create()
    return created


@pytest.fixture
def runner(
    pool: RedisPool, pod_runner_factory: PodRunnerFactory, processed_log: Path, tmp_path: Path
) -> PodRunner:
    env = redis_worker_env(
        pool.url(BROKER_DB), pool.url(BACKEND_DB), processed_log=processed_log,
        started_log=tmp_path / "started.log", work_seconds=SHORT_SECONDS,
    )
    return pod_runner_factory(pool.namespace, f"app={pool.name}", redis_worker_command(), env)


@dataclass
class Outcome:
    tasks: dict[str, int]
    """Task id -> its number."""
    results: dict[str, bool | None]
    """Task id -> the result in the backend (None: none there)."""
    busy_stopped: list[str]
    """Pods told to stop (or killed) while a task they had started was unfinished."""
    decisions: list[tuple[str, str]]
    """The QueueScaler's lastDecision (reason, message) as it changed."""
    replicas_seen: list[tuple[float, int]]
    summary: str


def burst(
    pool: RedisPool, runner: PodRunner, processed_log: Path, started_log: Path,
    operator: OperatorProcess, *, protect: bool,
) -> Outcome:
    """A burst of short tasks with LONG_TASKS long ones at its tail; back at one replica."""
    behavior = {"scaleDown": {"protectBusyWorkers": protect}}
    pool.apply_scaler(minReplicas=1, target={"messagesPerReplica": 10}, behavior=behavior)
    wait_until(lambda: len(runner.serving()) == 1, timeout=60, what="the first worker running")
    pool.wait_condition("Ready", "True")

    app = make_app(pool.url(BROKER_DB), pool.url(BACKEND_DB))
    decisions: list[tuple[str, str]] = []
    with (
        Timeline(pool, operator.metrics) as timeline,
        FirstSeen(processed_log) as processed,
        FirstSeen(started_log) as began,
    ):
        numbers = range(1_000_003, 1_000_003 + SHORT_TASKS)
        tasks = {app.send_task(TASK_NAME, args=(n,)).id: n for n in numbers}
        long_tasks = {
            app.send_task(TASK_NAME, args=(n,), kwargs={"work_seconds": LONG_SECONDS}).id: n
            for n in range(7919, 7919 + LONG_TASKS)
        }
        tasks |= long_tasks
        wait_until(lambda: pool.replicas() >= 3, timeout=60, what="the pool to scale up")

        def settled() -> bool:
            """Every task done, or (a long one) its worker gone for good."""
            decision = pool.status().get("lastDecision") or {}
            seen = (str(decision.get("reason")), str(decision.get("message")))
            if decision and seen not in decisions:
                decisions.append(seen)
            done = {task for task, _ in processed.at}
            gone = {pod for pod, r in runner.records().items() if not r.alive}
            return all(
                task in done or any(t == task and pod in gone for t, pod in began.at)
                for task in tasks
            )

        wait_until(settled, timeout=240, what="every task done (or its worker gone)")
        wait_until(lambda: pool.replicas() == 1 and len(runner.running()) == 1, timeout=120,
                   what="the pool back at its minimum")

    results: dict[str, bool | None] = {}
    for task_id in tasks:
        result = app.AsyncResult(task_id)
        results[task_id] = result.result if result.state == "SUCCESS" else None
    records = runner.records()
    busy_stopped = []
    for pod, record in records.items():
        if record.sigterm_at is None:
            continue
        unfinished = [
            task for task, on in began.at
            if on == pod and processed.at.get((task, pod), float("inf")) > record.sigterm_at
        ]
        if unfinished or record.killed:
            busy_stopped.append(pod)

    downs = [e.get("message") for e in pool.events() if e.get("reason") == "ScaledDown"]
    replicas_seen: list[tuple[float, int]] = []
    for t, _, _, current in timeline.rows:
        if not replicas_seen or replicas_seen[-1][1] != current:
            replicas_seen.append((t, current))
    start = min(began.at.values(), default=0.0)
    long_runs = [
        (round(at - start, 1), round(processed.at[(task, pod)] - start, 1)
         if (task, pod) in processed.at else "never", pod)
        for (task, pod), at in began.at.items() if task in long_tasks
    ]
    summary = (
        f"protectBusyWorkers={str(protect).lower()}\n"
        f"replicas over time (s since the burst, current): {replicas_seen}\n"
        f"long tasks (started, done, pod), s since the first task: {long_runs}\n"
        f"tasks: {len(tasks)} ({LONG_TASKS} of {LONG_SECONDS:.0f} s), results found:"
        f" {sum(1 for value in results.values() if value is not None)},"
        f" workers stopped: {sum(1 for r in records.values() if r.sigterm_at)},"
        f" busy workers stopped: {len(busy_stopped)}"
        f" (killed: {sum(1 for r in records.values() if r.killed)})\n"
        f"scale-downs: {downs}\n"
        f"busy-worker decisions: {[d for d in decisions if d[0] == 'busy-workers']}\n"
        f"{timeline.table()}\n"
    )
    print(summary)
    out = CACHE / "out"
    out.mkdir(parents=True, exist_ok=True)
    name = "protected" if protect else "unprotected"
    (out / f"e2e-redis-celery-{name}.md").write_text(summary)
    return Outcome(tasks, results, busy_stopped, decisions, replicas_seen, summary)


def test_celery_on_redis_burst_scales_up_and_down_around_busy_workers_losing_no_result(
    pool: RedisPool, runner: PodRunner, processed_log: Path, tmp_path: Path,
    operator: OperatorProcess,
) -> None:
    outcome = burst(pool, runner, processed_log, tmp_path / "started.log", operator,
                    protect=True)
    expected = {task_id: _prime(n) for task_id, n in outcome.tasks.items()}
    assert outcome.results == expected, f"a result is missing\n{outcome.summary}"
    assert outcome.busy_stopped == [], f"a busy worker was told to stop\n{outcome.summary}"
    assert max(count for _, count in outcome.replicas_seen) >= 3
    # Redis alone saw an idle queue (the long tasks were acked when they began): the workers'
    # answer held the pool at the busy count until they were done.
    assert any(reason == "busy-workers" for reason, _ in outcome.decisions), outcome.summary
    condition = pool.condition("WorkersMatched")
    assert condition is not None and condition["status"] == "True", condition
    assert {"ScaledUp", "ScaledDown"} <= pool.event_reasons()


def test_celery_on_redis_without_protection_stops_busy_workers_and_loses_their_tasks(
    pool: RedisPool, runner: PodRunner, processed_log: Path, tmp_path: Path,
    operator: OperatorProcess,
) -> None:
    """The same burst with protectBusyWorkers off: what Redis alone allows. The pool shrinks
    on an idle queue while the long tasks run; their workers outlive the grace period and are
    killed, and the tasks, acked when they began, are gone."""
    outcome = burst(pool, runner, processed_log, tmp_path / "started.log", operator,
                    protect=False)
    assert outcome.busy_stopped, outcome.summary
    lost = [task for task, result in outcome.results.items() if result is None]
    assert lost, outcome.summary
    condition = pool.condition("WorkersMatched")
    assert condition is not None and condition["reason"] == "ProtectionDisabled", condition


def _prime(n: int) -> bool:
    return n >= 2 and all(n % f for f in range(2, int(n**0.5) + 1))


def test_redis_restarted_mid_run_holds_the_pool_and_recovers_at_the_next_ticks(
    pool: RedisPool, runner: PodRunner, processed_log: Path, redis_server: RedisServer,
) -> None:
    """Redis goes away under a running pool: BrokerReachable turns False with a Warning Event,
    the pool is neither shrunk nor grown on missing data, and once Redis is back the operator
    reads it again within a couple of polls and the workers serve a new burst."""
    pool.apply_scaler(minReplicas=2, target={"messagesPerReplica": 10})
    wait_until(lambda: len(runner.serving()) == 2, timeout=60, what="two workers running")
    pool.wait_condition("BrokerReachable", "True")

    redis_server.stop()
    try:
        pool.wait_condition("BrokerReachable", "False", timeout=30)
        held: list[int] = []

        def looked() -> bool:
            held.append(pool.replicas())
            return len(held) >= 5

        wait_until(looked, timeout=30, what="five looks at the pool while Redis is away",
                   every=1.0)
    finally:
        redis_server.start()  # same port and password: clients reconnect by themselves
    back = time.monotonic()
    pool.wait_condition("BrokerReachable", "True", timeout=30)
    recovered = time.monotonic() - back
    assert set(held) == {2}, f"the pool moved on missing data: {held}"
    warnings = [e for e in pool.events() if e.get("type") == "Warning"]
    assert warnings, pool.events()
    assert redis_server.password not in str(pool.events()) + str(pool.status())

    app = make_app(pool.url(BROKER_DB), pool.url(BACKEND_DB))
    tasks = {app.send_task(TASK_NAME, args=(n,)).id: n for n in range(3_000_003, 3_000_063)}
    wait_until(lambda: all(read_processed(processed_log).get(i) for i in tasks), timeout=120,
               what="the burst after the restart processed")
    results = {task_id: app.AsyncResult(task_id).get(timeout=10) for task_id in tasks}
    assert results == {task_id: _prime(n) for task_id, n in tasks.items()}
    print(f"redis restart: replicas while away {held}, BrokerReachable back"
          f" {recovered:.1f} s after the restart (polling every 2 s), warnings:"
          f" {[(e.get('reason'), e.get('message')) for e in warnings]}")

def test_celery_on_rabbitmq_with_redis_results_scales_and_every_result_is_in_redis(
    testenv: TestEnv, namespace: str, operator: OperatorProcess, redis_server: RedisServer,
    pod_runner_factory: PodRunnerFactory, processed_log: Path,
) -> None:
    """The same app with RabbitMQ as broker (the rabbitmq source sizes it) and Redis as
    result backend: results are where users look for them."""
    pool = Pool(testenv, namespace, grace_seconds=GRACE_SECONDS).create()
    backend = (f"redis://:{redis_server.password}@127.0.0.1:{redis_server.port}/"
               f"{RABBITMQ_BACKEND_DB}")
    with redis.Redis(port=redis_server.port, password=redis_server.password,
                     db=RABBITMQ_BACKEND_DB) as admin:
        admin.flushdb()
    try:
        runner = pod_runner_factory(
            namespace, f"app={pool.name}", redis_worker_command(pool.queue),
            redis_worker_env(testenv.amqp_url, backend, processed_log=processed_log,
                             work_seconds=SHORT_SECONDS, acks_late=True, prefetch_multiplier=1),
        )
        pool.apply_scaler(minReplicas=1, maxReplicas=MAX_REPLICAS,
                          target={"messagesPerReplica": 10})
        wait_until(lambda: len(runner.serving()) == 1, timeout=60, what="the first worker")
        app = make_app(testenv.amqp_url, backend)
        numbers = range(2_000_003, 2_000_003 + SHORT_TASKS)
        tasks = {app.send_task(TASK_NAME, args=(n,), queue=pool.queue).id: n for n in numbers}
        wait_until(lambda: pool.largest_scale() >= 3, timeout=60, what="the pool to scale up")
        wait_until(lambda: len(read_processed(processed_log)) >= len(tasks), timeout=180,
                   what="every task done")
        wait_until(lambda: pool.replicas() == 1, timeout=120, what="the pool back at 1")
        results = {task_id: app.AsyncResult(task_id).get(timeout=10) for task_id in tasks}
        assert results == {task_id: _prime(n) for task_id, n in tasks.items()}
        killed = [pod for pod, record in runner.records().items() if record.killed]
        assert killed == []
        print(f"rabbitmq broker, redis results: {len(tasks)} tasks, {len(results)} results,"
              f" largest scale {pool.largest_scale()}")
    finally:
        pool.delete_queue()

STREAM, GROUP = "jobs", "workers"
ENTRIES = 150
STREAM_WORK_SECONDS = 0.3


@dataclass
class StreamPool(RedisPool):
    """The same Deployment and Secret; the QueueScaler reads a stream's consumer group."""

    def create(self, *, amqp_url: str | None = None, management_url: str | None = None) -> Pool:
        super().create()
        assert self.redis is not None
        with redis.Redis(port=self.redis.port, password=self.redis.password,
                         db=STREAM_DB) as admin:
            admin.flushdb()
            admin.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        self.apply({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis"},
            "stringData": {"redisUrl": f"redis://127.0.0.1:{self.redis.port}/{STREAM_DB}",
                           "password": self.redis.password},
        })
        return self

    def apply_scaler(self, **spec: Any) -> None:
        block = {"stream": STREAM, "group": GROUP, "connectionSecretRef": {"name": "redis"}}
        base: dict[str, Any] = {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.name},
            "maxReplicas": MAX_REPLICAS,
            "source": {"redis": block},
        }
        self.apply({
            "apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler",
            "metadata": {"name": self.name},
            "spec": deep_merge(deep_merge(base, FAST_BEHAVIOR), spec),
        })


def stream_worker_command(pod_name: str) -> list[str]:
    return [sys.executable, "-m", "queuescaler_testkit.workers.stream_worker"]


def test_redis_stream_consumers_scale_with_the_groups_lag_and_lose_nothing(
    testenv: TestEnv, namespace: str, operator: OperatorProcess, redis_server: RedisServer,
    pod_runner_factory: PodRunnerFactory, processed_log: Path, tmp_path: Path,
) -> None:
    pool = StreamPool(testenv, namespace, grace_seconds=GRACE_SECONDS, redis=redis_server)
    pool.create()
    started_log = tmp_path / "started.log"
    runner = pod_runner_factory(namespace, f"app={pool.name}", stream_worker_command, {
        "REDIS_URL": pool.url(STREAM_DB), "STREAM": STREAM, "GROUP": GROUP,
        "WORK_SECONDS": str(STREAM_WORK_SECONDS), "PROCESSED_LOG": str(processed_log),
        "STARTED_LOG": str(started_log),
    })
    pool.apply_scaler(minReplicas=1, target={"messagesPerReplica": 10})
    wait_until(lambda: len(runner.serving()) == 1, timeout=60, what="the first consumer running")
    pool.wait_condition("Ready", "True")

    with (
        Timeline(pool, operator.metrics) as timeline,
        FirstSeen(processed_log) as processed,
        FirstSeen(started_log) as began,
        redis.Redis(port=redis_server.port, password=redis_server.password,
                    db=STREAM_DB) as producer,
    ):
        ids = [producer.xadd(STREAM, {"n": n}).decode() for n in range(ENTRIES)]
        wait_until(lambda: pool.replicas() >= 3, timeout=60, what="the pool to scale up")
        wait_until(lambda: all(read_processed(processed_log).get(i) for i in ids),
                   timeout=180, what="every entry processed")
        wait_until(lambda: pool.replicas() == 1 and len(runner.running()) == 1, timeout=120,
                   what="the pool back at its minimum")
        pending = producer.xpending(STREAM, GROUP)["pending"]

    records = runner.records()
    busy_stopped = [
        pod for pod, record in records.items() if record.sigterm_at is not None and (
            record.killed or any(
                on == pod and processed.at.get((entry, pod), float("inf")) > record.sigterm_at
                for entry, on in began.at
            )
        )
    ]
    replicas_seen: list[tuple[float, int]] = []
    for t, _, _, current in timeline.rows:
        if not replicas_seen or replicas_seen[-1][1] != current:
            replicas_seen.append((t, current))
    summary = (
        f"stream consumers: replicas over time (s, current): {replicas_seen}\n"
        f"entries: {ENTRIES}, processed: {len(read_processed(processed_log))}, pending left:"
        f" {pending}, consumers stopped: {sum(1 for r in records.values() if r.sigterm_at)},"
        f" busy consumers stopped: {len(busy_stopped)}\n{timeline.table()}\n"
    )
    print(summary)
    out = CACHE / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "e2e-redis-stream.md").write_text(summary)
    assert all(read_processed(processed_log).get(i) for i in ids), summary
    assert pending == 0 and busy_stopped == [], summary
    assert max(count for _, count in replicas_seen) >= 3, summary
    condition = pool.condition("WorkersMatched")
    assert condition is not None and condition["status"] == "True", condition
