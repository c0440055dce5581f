"""End to end on ActiveMQ, Classic and Artemis: a pool of real STOMP workers (stomp.py,
client-individual acks, one message held at a time, client-id = pod name), started by the pod
runner as the Deployment's pods and sized by a QueueScaler with `source.activemq` on the
session's broker, the real operator process deciding.

On each broker a burst of a few hundred short messages wakes the pool at zero and scales it
up; at the burst's tail two long messages keep two workers busy after the rest is done. The
backlog is then the two messages they hold (in flight, counted: includeUnacked), worth one
replica, but protectBusyWorkers (the default) keeps the two busy workers: the pool shrinks to
them, the idle pods go first, and no worker is stopped while it holds a message (their grace
period is shorter than a long message: one stopped would be killed mid-message and its
message delivered again). Every message is processed, none lost, and the pool goes back to
zero once the long ones are done.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from queuescaler_testkit.activemq_pool import ActiveMQPool
from queuescaler_testkit.activemq_server import ActiveMQServer
from queuescaler_testkit.env import CACHE, TestEnv, wait_until
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import PodRunnerFactory
from queuescaler_testkit.pool import Timeline
from queuescaler_testkit.publisher import FirstSeen, missing, read_processed
from queuescaler_testkit.workers.stomp_worker import stomp_worker_command

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

BURST = 300
WORK_SECONDS = 0.05
LONG = 2
LONG_SECONDS = 20.0
"""Longer than the stabilization window (10 s) and the grace period: the pool may shrink while
the two long messages are in hand, and a worker stopped then would be killed holding one."""
GRACE_SECONDS = 5
PER_REPLICA = 20
MAX_REPLICAS = 6


@pytest.fixture(params=["classic", "artemis"])
def broker(request: pytest.FixtureRequest) -> ActiveMQServer:
    """Each broker in turn; only the one a selected test names is started."""
    server: ActiveMQServer = request.getfixturevalue(f"activemq_{request.param}")
    return server


@pytest.fixture
def pool(
    testenv: TestEnv, namespace: str, operator: OperatorProcess, broker: ActiveMQServer
) -> Iterator[ActiveMQPool]:
    created = ActiveMQPool(testenv, namespace, server=broker, grace_seconds=GRACE_SECONDS)
    created.create()
    yield created
    created.delete_queue()


def test_a_burst_wakes_the_pool_scales_it_up_and_back_to_zero_around_busy_workers(
    pool: ActiveMQPool, operator: OperatorProcess, pod_runner_factory: PodRunnerFactory,
    processed_log: Path, tmp_path: Path,
) -> None:
    started_log = tmp_path / "started.log"
    runner = pod_runner_factory(
        pool.namespace, f"app={pool.name}", stomp_worker_command,
        pool.worker_env(processed_log, work_seconds=WORK_SECONDS, started_log=started_log),
    )
    pool.apply_scaler(minReplicas=0, maxReplicas=MAX_REPLICAS,
                      target={"messagesPerReplica": PER_REPLICA})
    idle = pool.wait_condition("Ready", "True", timeout=30)
    assert pool.replicas() == 0

    decisions: list[tuple[str, str]] = []
    held_by: list[dict[str, int]] = []
    """What the broker said the consumers held while the pool was held at the busy count."""

    def note() -> dict[str, object]:
        status = pool.status()
        decision = status.get("lastDecision") or {}
        seen = (str(decision.get("reason")), str(decision.get("message")))
        if decision and seen not in decisions:
            decisions.append(seen)
        if seen[0] == "busy-workers" and len(held_by) < 3:
            held_by.append({c: n for c, n in pool.holding().items() if n})
        return status

    with (
        Timeline(pool, operator.metrics) as timeline,
        FirstSeen(processed_log) as processed,
        FirstSeen(started_log) as began,
    ):
        ids = pool.send(BURST)
        long_ids = pool.send(LONG, tag="long", work_seconds=LONG_SECONDS)
        wait_until(lambda: note() and pool.replicas() >= 3, timeout=45,
                   what="the pool woken and scaled up")
        wait_until(lambda: note() and not missing(ids + long_ids, processed_log), timeout=90,
                   what="every message processed")
        wait_until(lambda: note() and pool.replicas() == 0 and not runner.running(),
                   timeout=60, what="the pool back at zero")
    ready = pool.condition("Ready")
    matched = pool.condition("WorkersMatched")
    status = pool.status()
    events = pool.events()

    records = runner.records()
    counts = read_processed(processed_log)
    again = {message: n for message, n in counts.items() if n > 1}
    busy_stopped = []
    for pod, record in records.items():
        if record.sigterm_at is None:
            continue
        unfinished = [
            message for (message, on), at in began.at.items()
            if on == pod and processed.at.get((message, pod), float("inf")) > record.sigterm_at
        ]
        if unfinished or record.killed:
            busy_stopped.append(pod)
    crashed = {pod: r.exit_code for pod, r in records.items()
               if r.sigterm_at is None and not r.alive}
    long_pods = {pod for (message, pod) in began.at if message in long_ids}
    replicas_seen: list[tuple[float, int]] = []
    for t, _, _, current in timeline.rows:
        if not replicas_seen or replicas_seen[-1][1] != current:
            replicas_seen.append((t, current))
    span = max(processed.at.values()) - min(processed.at.values()) if processed.at else 0.0
    downs = [e.get("message") for e in events if e.get("reason") == "ScaledDown"]
    summary = (
        f"activemq {pool.flavor}: replicas over time (s, current): {replicas_seen}\n"
        f"messages: {BURST} + {LONG} of {LONG_SECONDS:.0f} s, processed: {len(counts)} in"
        f" {span:.1f} s, twice or more: {len(again)}, pods: {len(records)},"
        f" stopped busy: {busy_stopped}, killed: {[p for p, r in records.items() if r.killed]},"
        f" crashed: {crashed}\n"
        f"long messages on {sorted(long_pods)}; the broker's holders while held: {held_by}\n"
        f"decisions: {decisions}\nscale-downs: {downs}\n"
        f"{timeline.table()}\n"
    )
    print(summary)
    out = CACHE / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"e2e-activemq-workers-{pool.flavor}.md").write_text(summary)

    assert missing(ids + long_ids, processed_log) == [], summary
    assert busy_stopped == [], f"a busy worker was told to stop\n{summary}"
    assert crashed == {} and not any(r.killed for r in records.values()), summary
    assert all(r.graceful for r in records.values()), summary
    assert max(current for _, current in replicas_seen) >= 3, summary
    # The backlog policy alone asked for one replica while the two long messages were held:
    # the busy count held the pool at two, and the broker named the same two pods.
    assert any(reason == "busy-workers" for reason, _ in decisions), summary
    assert any(set(held) == long_pods for held in held_by), summary
    assert {"ScaledUp", "ScaledDown"} <= {e.get("reason") for e in events}, summary
    assert status["backlog"] == {"ready": 0, "unacked": 0, "total": 0}, status
    assert ready is not None and ready["status"] == "True", ready
    assert idle["status"] == "True"
    assert matched is not None and matched["status"] == "True", matched
