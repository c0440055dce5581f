"""End to end: a scale-down spares the workers busy with a message (issue 08).

A pool of pika workers (long tasks, prefetch 1, a grace period longer than a task) is
held at 8 replicas while fewer messages than workers are in hand, so some workers are busy
and the others idle; then the pool may shrink to 1. With `protectBusyWorkers` the operator
keeps the busy count, marks the idle pods cheap (pod-deletion-cost) and lets the
ReplicaSet controller remove them first: no busy worker gets SIGTERM. Without it, the
ReplicaSet's own order removes busy workers too. Both runs count the busy workers
terminated and the messages processed more than once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest
from kubernetes import client, config, watch

from queuescaler.core.workers import DELETION_COST, MARKED_BY
from queuescaler.kube.client import GROUP, PLURAL, VERSION
from queuescaler_testkit.broker import BrokerAdmin
from queuescaler_testkit.env import CACHE, TestEnv, wait_until
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import (
    PodRunner,
    PodRunnerFactory,
    pika_worker_command,
    pika_worker_env,
)
from queuescaler_testkit.pool import Pool, deep_merge, worker_deployment
from queuescaler_testkit.publisher import (
    FirstSeen,
    missing,
    publish_messages,
    read_processed,
    read_records,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

WORKERS = 8
MESSAGES = 3
"""Fewer messages than workers: three busy, five idle."""
WORK_SECONDS = 15.0
"""Longer than the broker's statistics interval (5 s), so the busy channels show up there."""
GRACE_SECONDS = 25
"""Longer than a task: a busy worker told to stop still finishes (and acks) its message."""


class _Watched:
    """Every version of some objects of the pool's namespace, from a watch on a thread
    (polling would miss what lasts a moment: the marks of pods deleted right after they were
    set, a status the next tick rewrites within a second). Each 2 s watch resumes from the
    last version seen, so nothing written between two of them is lost; `error` keeps the
    last failure, for a test that saw nothing to say why."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.error: Exception | None = None
        self._version: str | None = None
        self._started = threading.Event()
        self._stop = threading.Event()
        self._api = config.new_client_from_config(config_file=str(pool.testenv.kubeconfig))
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _stream(self, since: str | None) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def _see(self, obj: Any) -> None:
        raise NotImplementedError

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self._stream(self._version):
                    obj = event["object"]
                    self._see(obj)
                    self._version = _version_of(obj) or self._version
                    self._started.set()
            except Exception as error:  # a dropped watch: the next one resumes
                self.error = error
                if isinstance(error, client.ApiException) and error.status == 410:
                    self._version = None  # too old to resume from: list again
                self._stop.wait(0.2)

    def __enter__(self) -> Self:
        self._thread.start()
        # the objects exist: their first versions arrive at once, before the test acts
        if not self._started.wait(timeout=10):
            raise AssertionError(f"the watch saw nothing in 10 s: {self.error!r}")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._api.close()


def _version_of(obj: Any) -> str | None:
    """An object's resourceVersion, from a typed model (pods) or a plain dict (custom)."""
    metadata = obj.get("metadata", {}) if isinstance(obj, dict) else obj.metadata
    return metadata.get("resourceVersion") if isinstance(metadata, dict) else (
        metadata.resource_version)


class PodMarks(_Watched):
    """Every pod-deletion-cost each pod carried, in order."""

    def __init__(self, pool: Pool) -> None:
        super().__init__(pool)
        self.costs: dict[str, list[str]] = {}
        """Pod -> the costs it carried, in order (repeats collapsed)."""
        self.cost_when_deleted: dict[str, str | None] = {}

    def _stream(self, since: str | None) -> Iterator[dict[str, Any]]:
        core = client.CoreV1Api(self._api)
        return watch.Watch().stream(  # type: ignore[no-any-return]
            core.list_namespaced_pod, self.pool.namespace, resource_version=since,
            label_selector=f"app={self.pool.name}", timeout_seconds=2,
        )

    def _see(self, pod: Any) -> None:
        name = pod.metadata.name
        cost = (pod.metadata.annotations or {}).get(DELETION_COST)
        seen = self.costs.setdefault(name, [])
        if cost is not None and (not seen or seen[-1] != cost):
            seen.append(cost)
        if pod.metadata.deletion_timestamp is not None:
            self.cost_when_deleted.setdefault(name, cost)


class _ScalerWatched(_Watched):
    """Every version of the pool's QueueScaler."""

    def _stream(self, since: str | None) -> Iterator[dict[str, Any]]:
        custom = client.CustomObjectsApi(self._api)
        return watch.Watch().stream(  # type: ignore[no-any-return]
            custom.list_namespaced_custom_object, GROUP, VERSION, self.pool.namespace, PLURAL,
            resource_version=since, field_selector=f"metadata.name={self.pool.name}",
            timeout_seconds=2,
        )


class WorkersSeen(_ScalerWatched):
    """Every `status.workers` the QueueScaler carried, in order (repeats collapsed)."""

    def __init__(self, pool: Pool) -> None:
        super().__init__(pool)
        self.seen: list[dict[str, Any]] = []

    def _see(self, scaler: Any) -> None:
        workers = (scaler.get("status") or {}).get("workers")
        if workers and (not self.seen or self.seen[-1] != workers):
            self.seen.append(workers)


class DecisionsSeen(_ScalerWatched):
    """Every `status.lastDecision` message the QueueScaler carried, in order."""

    def __init__(self, pool: Pool) -> None:
        super().__init__(pool)
        self.messages: list[str] = []

    def _see(self, scaler: Any) -> None:
        message = ((scaler.get("status") or {}).get("lastDecision") or {}).get("message")
        if message and (not self.messages or self.messages[-1] != message):
            self.messages.append(message)


@dataclass
class Outcome:
    busy_terminated: list[str]
    """Pods that got SIGTERM while holding a message they had not finished."""
    terminated: list[str]
    redeliveries: int
    """Messages processed more than once."""
    reasons: list[str] = field(default_factory=list)
    """The operator's ScaledDown event messages."""
    busy: set[str] = field(default_factory=set)
    """Pods holding a message when the pool could shrink."""
    workers_seen: list[dict[str, Any]] = field(default_factory=list)
    watch_error: Exception | None = None
    """The status watch's last failure, if any (a reconnect, or why nothing was seen)."""
    costs: dict[str, list[str]] = field(default_factory=dict)
    """Pod -> the pod-deletion-cost values it carried, in order."""
    cost_when_deleted: dict[str, str | None] = field(default_factory=dict)


def _management(testenv: TestEnv) -> BrokerAdmin:
    return BrokerAdmin(testenv.management_url, timeout=5)


def busy_pods_seen_by_broker(testenv: TestEnv, pods: set[str]) -> set[str]:
    """Our pods whose channels hold messages, as the management statistics say now."""
    return _management(testenv).busy_clients(testenv.vhost, pods)


def queue_consumers(testenv: TestEnv, queue: str) -> int:
    body = _management(testenv).queue(testenv.vhost, queue, ["consumers"])
    return int(body.get("consumers") or 0)


def busy_terminated(runner: PodRunner, started_log: Path, processed: FirstSeen) -> list[str]:
    """Pods told to stop while a message they had started was not done."""
    found = []
    for pod, record in runner.records().items():
        held = [r for r in read_records(started_log) if r[1] == pod]
        if record.sigterm_at is not None and any(
                processed.at.get(r, float("inf")) > record.sigterm_at for r in held):
            found.append(pod)
    return found


def terminated(runner: PodRunner) -> list[str]:
    """Pods told to stop."""
    return [pod for pod, record in runner.records().items() if record.sigterm_at is not None]


def scale_down_with_busy_workers(
    pool: Pool, runner: PodRunner, processed_log: Path, started_log: Path, *, protect: bool
) -> Outcome:
    behavior = {"scaleDown": {"protectBusyWorkers": protect}}
    target = {"messagesPerReplica": 100}
    pool.apply_scaler(minReplicas=WORKERS, maxReplicas=WORKERS, target=target, behavior=behavior)
    wait_until(lambda: len(runner.serving()) == WORKERS, timeout=60, what="8 running workers")
    wait_until(lambda: queue_consumers(pool.testenv, pool.queue) == WORKERS, timeout=60,
               what="8 consumers on the queue")
    ids = publish_messages(pool.testenv.amqp_url, pool.queue, MESSAGES)
    wait_until(lambda: len(read_records(started_log)) == MESSAGES, timeout=30,
               what="every message in a worker's hands")
    busy = {pod for _, pod in read_records(started_log)}
    assert len(busy) == MESSAGES, "prefetch 1: one message per worker"
    # The operator reads who is busy from the broker's statistics: wait until they show it.
    wait_until(lambda: busy_pods_seen_by_broker(pool.testenv, set(runner.serving())) == busy,
               timeout=30, what="the busy workers in the broker's channel statistics")

    outcome = Outcome([], [], 0, busy=busy)
    with (FirstSeen(processed_log) as processed, PodMarks(pool) as marks,
          WorkersSeen(pool) as workers_seen):
        pool.apply_scaler(minReplicas=1, maxReplicas=WORKERS, target=target, behavior=behavior)

        def settled() -> bool:
            return (
                pool.replicas() == 1
                and len(runner.serving()) == 1
                and len(runner.running()) == 1
                and all(read_processed(processed_log).get(i) for i in ids)
            )

        wait_until(settled, timeout=120, what="the pool at 1 worker with every message done")
        outcome.terminated = terminated(runner)
        outcome.busy_terminated = busy_terminated(runner, started_log, processed)
    outcome.workers_seen = workers_seen.seen
    outcome.watch_error = workers_seen.error
    outcome.costs = marks.costs
    outcome.cost_when_deleted = marks.cost_when_deleted
    outcome.redeliveries = sum(1 for count in read_processed(processed_log).values() if count > 1)
    outcome.reasons = [
        e.get("message", "") for e in pool.events() if e.get("reason") == "ScaledDown"
    ]
    return outcome


def report(name: str, outcome: Outcome) -> None:
    line = (
        f"{name}: {len(outcome.busy_terminated)} busy workers terminated"
        f" (of {len(outcome.terminated)} terminated), {outcome.redeliveries} redeliveries"
    )
    print(line, *outcome.reasons, sep="\n  ")
    out = CACHE / "out"
    out.mkdir(parents=True, exist_ok=True)
    with (out / "e2e-safe-scale-down.txt").open("a") as summary:
        summary.write(line + "\n")


@pytest.fixture
def pool(testenv: TestEnv, namespace: str, operator: OperatorProcess) -> Iterator[Pool]:
    created = Pool(testenv, namespace, grace_seconds=GRACE_SECONDS).create()
    yield created
    created.delete_queue()


@pytest.fixture
def started_log(tmp_path: Path) -> Path:
    return tmp_path / "started.log"


@pytest.fixture
def runner(
    pool: Pool, pod_runner_factory: PodRunnerFactory, processed_log: Path, started_log: Path
) -> PodRunner:
    env = pika_worker_env(pool.testenv.amqp_url, pool.queue, processed_log,
                          started_log=started_log, prefetch=1, work_seconds=WORK_SECONDS)
    return pod_runner_factory(pool.namespace, f"app={pool.name}", pika_worker_command, env)


def test_protected_scale_down_removes_idle_workers_and_keeps_the_busy_ones(
    pool: Pool, runner: PodRunner, processed_log: Path, started_log: Path
) -> None:
    outcome = scale_down_with_busy_workers(
        pool, runner, processed_log, started_log, protect=True
    )
    report("protectBusyWorkers=true", outcome)
    # (Another operator process watching every namespace of the shared cluster, started from
    # code without this protection, would act on this QueueScaler too: its ScaledDown events
    # below would then lack the busy-workers reason.)
    assert outcome.busy_terminated == [], f"a busy worker was told to stop: {outcome.reasons}"
    assert len(outcome.terminated) == WORKERS - 1
    assert any("busy-workers" in reason and f"to {MESSAGES}" in reason
               for reason in outcome.reasons), outcome.reasons
    seen = outcome.workers_seen
    assert {"matched": WORKERS, "busy": MESSAGES, "unmatched": 0} in seen, (
        seen, outcome.watch_error)
    # The marks chose the pods: each busy pod was marked dear (it holds one message), and
    # every pod removed was marked idle when it went.
    assert all(outcome.costs.get(pod, [None])[0] == "1" for pod in outcome.busy), outcome.costs
    assert set(outcome.cost_when_deleted.values()) == {"-1"}, outcome.cost_when_deleted
    condition = pool.condition("WorkersMatched")
    assert condition is not None and condition["status"] == "True", condition
    assert outcome.redeliveries == 0

    # Deleting the QueueScaler clears the marks it set on the pods left.
    pool.testenv.kubectl("delete", "qs", pool.name, "-n", pool.namespace)

    def unmarked() -> bool:
        out = pool.testenv.kubectl("get", "pods", "-n", pool.namespace, "-l", f"app={pool.name}",
                                   "-o", "json")
        pods = json.loads(out.stdout)["items"]
        return bool(pods) and all(
            not {DELETION_COST, MARKED_BY} & set(p["metadata"].get("annotations") or {})
            for p in pods
        )

    wait_until(unmarked, timeout=30, what="the marks cleared after the QueueScaler's deletion")


def test_unprotected_scale_down_terminates_busy_workers(
    pool: Pool, runner: PodRunner, processed_log: Path, started_log: Path
) -> None:
    outcome = scale_down_with_busy_workers(
        pool, runner, processed_log, started_log, protect=False
    )
    report("protectBusyWorkers=false", outcome)
    # Eight down to one while three are busy: at least two busy workers must go.
    assert len(outcome.busy_terminated) >= MESSAGES - 1, outcome
    assert not any(outcome.costs.values()), "no marks without the protection"
    condition = pool.condition("WorkersMatched")
    assert condition is not None and condition["reason"] == "ProtectionDisabled", condition


ROLLOUT_WORK_SECONDS = 40.0
"""Long enough for the old pods to finish while the new ones are still busy."""
ROLLOUT_GRACE_SECONDS = 60
OLD_PODS, NEW_PODS = 5, 3


TARGET = {"messagesPerReplica": 100}


def five_consuming(pool: Pool, pod_runner_factory: PodRunnerFactory, processed_log: Path,
                   started_log: Path, work_seconds: float) -> PodRunner:
    """The pool held at 5 pika workers (prefetch 1, `work_seconds` a message), all
    consuming."""
    env = pika_worker_env(pool.testenv.amqp_url, pool.queue, processed_log,
                          started_log=started_log, prefetch=1, work_seconds=work_seconds)
    runner = pod_runner_factory(pool.namespace, f"app={pool.name}", pika_worker_command, env)
    pool.apply_scaler(minReplicas=OLD_PODS, maxReplicas=OLD_PODS, target=TARGET)
    wait_until(lambda: len(runner.serving()) == OLD_PODS
               and queue_consumers(pool.testenv, pool.queue) == OLD_PODS,
               timeout=60, what="5 pods consuming")
    return runner


def test_a_rollout_never_takes_a_busy_pod_from_a_replicaset_with_too_few_idle_ones(
    pool: Pool, pod_runner_factory: PodRunnerFactory, processed_log: Path, started_log: Path
) -> None:
    """Mid-rollout a Deployment's pods belong to two ReplicaSets. The Deployment shares a
    scale-down between them by their sizes, and each ranks only its own pods by cost. Five
    old pods idle and three new ones busy: scaled 5 -> 3 on the busy count alone, the new
    ReplicaSet must give up one of its three, all busy. The operator holds until no busy
    pod's ReplicaSet could lose it, then shrinks."""
    # New pods surge by 3 and never count as available: the rollout stays half done.
    stalled = {"spec": {"minReadySeconds": 3600, "progressDeadlineSeconds": 7200, "strategy": {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": NEW_PODS, "maxUnavailable": 0}}}}
    pool.apply(deep_merge(worker_deployment(pool.name, ROLLOUT_GRACE_SECONDS), stalled))
    runner = five_consuming(pool, pod_runner_factory, processed_log, started_log,
                            ROLLOUT_WORK_SECONDS)
    old = set(runner.serving())
    ids = publish_messages(pool.testenv.amqp_url, pool.queue, OLD_PODS)
    wait_until(lambda: len(read_records(started_log)) == OLD_PODS, timeout=30,
               what="a message in each old pod's hands")
    old_started = time.monotonic()

    rollout = {"spec": {"template": {"metadata": {"annotations": {"e2e/rollout": "2"}}}}}
    pool.testenv.kubectl("patch", "deployment", pool.name, "-n", pool.namespace,
                         "--type", "merge", "-p", json.dumps(rollout))
    everyone = OLD_PODS + NEW_PODS
    wait_until(lambda: len(runner.serving()) == everyone
               and queue_consumers(pool.testenv, pool.queue) == everyone,
               timeout=60, what="3 new pods consuming beside the old ones")
    new = set(runner.serving()) - old
    # the new pods' work ends 20 s after the old pods': they are busy while the old are idle
    time.sleep(max(0.0, old_started + ROLLOUT_WORK_SECONDS / 2 - time.monotonic()))
    ids += publish_messages(pool.testenv.amqp_url, pool.queue, NEW_PODS)
    wait_until(lambda: len(read_records(started_log)) == everyone, timeout=30,
               what="a message in each new pod's hands")
    assert {pod for _, pod in read_records(started_log)[OLD_PODS:]} == new

    with DecisionsSeen(pool) as decisions, FirstSeen(processed_log) as processed:
        pool.apply_scaler(minReplicas=1, maxReplicas=OLD_PODS, target=TARGET)
        # the old pods finish first; the new ones are busy for 20 s more
        wait_until(lambda: not missing(ids, processed_log), timeout=120,
                   what="every message done")
        wait_until(lambda: pool.replicas() < OLD_PODS, timeout=60,
                   what="the pool shrunk once nothing is busy")
        stopped = busy_terminated(runner, started_log, processed)
    report("rollout", Outcome(stopped, terminated(runner), 0))
    assert stopped == [], (stopped, decisions.messages)
    assert any("ReplicaSets (a rollout)" in message for message in decisions.messages), (
        decisions.messages)
    assert all(count == 1 for count in read_processed(processed_log).values())


NOT_READY_WORK_SECONDS = 30.0


def test_a_busy_pod_that_is_not_ready_keeps_the_pool(
    pool: Pool, pod_runner_factory: PodRunnerFactory, processed_log: Path, started_log: Path
) -> None:
    """The ReplicaSet removes pods that are not ready before it reads any deletion cost. A
    busy worker whose readiness probe fails while it works (here its Ready condition set
    False) would go first on a scale to the busy count, marked dear or not: the pool holds
    until its task is done."""
    pool.apply(worker_deployment(pool.name, ROLLOUT_GRACE_SECONDS))
    runner = five_consuming(pool, pod_runner_factory, processed_log, started_log,
                            NOT_READY_WORK_SECONDS)
    ids = publish_messages(pool.testenv.amqp_url, pool.queue, 1)
    wait_until(lambda: len(read_records(started_log)) == 1, timeout=30,
               what="the message in a worker's hands")
    [(_, busy)] = read_records(started_log)
    wait_until(lambda: busy_pods_seen_by_broker(pool.testenv, set(runner.serving())) == {busy},
               timeout=30, what="the busy worker in the broker's channel statistics")
    not_ready = {"status": {"conditions": [{"type": "Ready", "status": "False",
                                            "reason": "ProbeTimeout"}]}}
    pool.testenv.kubectl("patch", "pod", busy, "-n", pool.namespace, "--subresource=status",
                         "--type", "strategic", "-p", json.dumps(not_ready))

    with DecisionsSeen(pool) as decisions, FirstSeen(processed_log) as processed:
        pool.apply_scaler(minReplicas=1, maxReplicas=OLD_PODS, target=TARGET)
        wait_until(lambda: not missing(ids, processed_log), timeout=90,
                   what="the message done")
        wait_until(lambda: pool.replicas() == 1, timeout=60,
                   what="the pool at 1 once nothing is busy")
        stopped = busy_terminated(runner, started_log, processed)
    report("busy pod not ready", Outcome(stopped, terminated(runner), 0))
    assert stopped == [], (stopped, decisions.messages)
    assert any(f"{busy} (busy) goes after only 0 pods of its ReplicaSet (not ready" in message
               for message in decisions.messages), decisions.messages
