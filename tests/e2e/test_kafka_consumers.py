"""End to end on Kafka: a pool of consumers of one group, sized by a QueueScaler with
`source.kafka` on the session's broker, the real operator process deciding.

A burst on a topic of six partitions wakes a pool at zero; it grows two members at a time
while they consume (each join rebalances the group and moves partitions with work in hand) up
to the partitions and no further (a seventh member would idle: the cap, not maxReplicas, stops
it), the lag drains, and the pool goes back to zero with every message processed at least
once across the rebalances and no worker killed or crashed. Two smaller pools
whose pods run nothing (the test moves the lag itself) show the caps the spec chooses
(partitions with lag by default, all partitions without limitToPartitionsWithLag, none with
allowIdleConsumers) and a scale-down held while the group rebalances.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from queuescaler_testkit.env import CACHE, TestEnv, wait_until
from queuescaler_testkit.kafka_pool import KafkaPool
from queuescaler_testkit.kafka_server import KafkaServer
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import PodRunnerFactory
from queuescaler_testkit.pool import Timeline
from queuescaler_testkit.publisher import FirstSeen, missing, read_processed
from queuescaler_testkit.workers.kafka_worker import kafka_worker_command

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PARTITIONS = 6
PER_PARTITION = 50
WORK_SECONDS = 0.1
"""A partition's burst is 5 s of one member's work: the pool grows while it drains."""
MAX_REPLICAS = 8
"""Above the partitions: what stops the pool at six is the cap."""
PER_REPLICA = 10
GRACE_SECONDS = 10
IN_FLIGHT_NOTE = "in-flight messages are not told apart"
"""The kafka source's note, which the Ready condition carries."""


def _pool(
    testenv: TestEnv, namespace: str, kafka_server: KafkaServer, **fields: int
) -> KafkaPool:
    return KafkaPool(testenv, namespace, kafka=kafka_server, grace_seconds=GRACE_SECONDS,
                     **fields)


def test_a_burst_scales_the_group_to_its_partitions_and_back_to_zero_losing_nothing(
    testenv: TestEnv, namespace: str, operator: OperatorProcess, kafka_server: KafkaServer,
    pod_runner_factory: PodRunnerFactory, processed_log: Path,
) -> None:
    pool = _pool(testenv, namespace, kafka_server, partitions=PARTITIONS).create()
    try:
        runner = pod_runner_factory(
            namespace, f"app={pool.name}", kafka_worker_command,
            pool.worker_env(processed_log, work_seconds=WORK_SECONDS),
        )
        # The workers read a group without commits from the start (auto.offset.reset
        # earliest): so does the scaler, or the burst on a new group would be no lag at all.
        # Two members at a time, so that members join while others consume: each join
        # rebalances the group and moves partitions with messages in hand.
        pool.apply_scaler(minReplicas=0, maxReplicas=MAX_REPLICAS,
                          target={"messagesPerReplica": PER_REPLICA},
                          source={"kafka": {"offsetResetPolicy": "earliest"}},
                          behavior={"scaleUp": {"maxStepReplicas": 2, "maxStepPercent": 50}})
        idle = pool.wait_condition("Ready", "True")
        assert pool.replicas() == 0

        decisions: list[tuple[str, str]] = []

        def replicas() -> int:
            """The Deployment's replicas; the QueueScaler's last decision noted on the way."""
            decision = pool.status().get("lastDecision") or {}
            seen = (str(decision.get("reason")), str(decision.get("message")))
            if decision and seen not in decisions:
                decisions.append(seen)
            return pool.replicas()

        with Timeline(pool, operator.metrics) as timeline, FirstSeen(processed_log) as done:
            ids = pool.produce(PER_PARTITION)
            wait_until(lambda: replicas() == PARTITIONS, timeout=60,
                       what="the pool at the partition count")

            def drained() -> bool:
                replicas()
                return not missing(ids, processed_log) and pool.lag() == 0

            wait_until(drained, timeout=90, what="every message processed and committed")
            wait_until(lambda: replicas() == 0 and not runner.running(), timeout=60,
                       what="the pool back at zero")
        ready = pool.condition("Ready")
        backlog = pool.status().get("backlog")
        events = pool.events()
    finally:
        pool.delete_queue()

    records = runner.records()
    counts = read_processed(processed_log)
    again = {message: n for message, n in counts.items() if n > 1}
    crashed = {pod: r.exit_code for pod, r in records.items()
               if r.sigterm_at is None and not r.alive}
    replicas_seen: list[tuple[float, int]] = []
    for t, _, _, current in timeline.rows:
        if not replicas_seen or replicas_seen[-1][1] != current:
            replicas_seen.append((t, current))
    backlogs = [backlog for _, backlog, _, _ in timeline.rows if backlog is not None]
    joined_busy = [  # members joining a group that was consuming: rebalances under load
        (t, current) for (t, backlog, _, current), (_, _, _, before)
        in zip(timeline.rows[1:], timeline.rows, strict=False)
        if current > before > 0 and backlog
    ]
    desired = [wanted for _, _, wanted, _ in timeline.rows if wanted is not None]
    span = max(done.at.values()) - min(done.at.values()) if done.at else 0.0
    summary = (
        f"kafka consumers: replicas over time (s, current): {replicas_seen}\n"
        f"messages: {len(ids)} on {PARTITIONS} partitions, processed: {len(counts)} in"
        f" {span:.1f} s, twice or more (redelivered after a rebalance): {len(again)},"
        f" pods: {len(records)}, crashed: {crashed},"
        f" killed: {[p for p, r in records.items() if r.killed]}\n"
        f"members joined while the group consumed (s, replicas): {joined_busy}\n"
        f"decisions: {decisions}\n"
        f"scale events: {[(e.get('reason'), e.get('message')) for e in events]}\n"
        f"{timeline.table()}\n"
    )
    print(summary)
    out = CACHE / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "e2e-kafka-consumers.md").write_text(summary)

    assert joined_busy, summary
    assert missing(ids, processed_log) == [], summary
    assert crashed == {} and not any(r.killed for r in records.values()), summary
    # Six partitions, six consumers at most: the cap held the pool below maxReplicas.
    assert max(current for _, current in replicas_seen) == PARTITIONS, summary
    assert max(desired) == PARTITIONS, summary
    assert any("capped at 6" in message for _, message in decisions), summary
    # The backlog is the group's lag: the whole burst while nobody consumed it.
    assert len(ids) in backlogs, summary
    assert backlog == {"ready": 0, "unacked": 0, "total": 0}, backlog
    assert ready is not None and IN_FLIGHT_NOTE in ready["message"], ready
    assert IN_FLIGHT_NOTE in idle["message"], idle
    reasons = {e.get("reason") for e in events}
    assert {"ScaledUp", "ScaledDown"} <= reasons, summary
    matched = pool.condition("WorkersMatched")
    assert matched is not None and matched["status"] == "True", matched


def test_the_cap_is_the_partitions_with_lag_then_all_partitions_then_none(
    testenv: TestEnv, namespace: str, operator: OperatorProcess, kafka_server: KafkaServer,
) -> None:
    """80 messages waiting on one partition of four, nobody consuming: worth 8 replicas. By
    default one member can work them (the others would idle), without
    limitToPartitionsWithLag four can join, with allowIdleConsumers all eight do."""
    pool = _pool(testenv, namespace, kafka_server, partitions=4, initial_replicas=1).create()
    try:
        pool.commit(dict.fromkeys(range(4), 0))
        pool.produce(80, range(1))
        steps = [
            ({}, 1, "capped at 1: 1 partitions have messages waiting"),
            ({"limitToPartitionsWithLag": False}, 4, "at most 4 consumers can work at once"),
            ({"allowIdleConsumers": True}, 8, "backlog 80 / 10 per replica -> 8"),
        ]
        uncapped = steps[-1][2]
        seen = []
        for block, replicas, words in steps:
            pool.apply_scaler(minReplicas=1, maxReplicas=10, target={"messagesPerReplica": 10},
                              source={"kafka": block})

            def decided(words: str = words) -> dict[str, object] | None:
                decision = pool.status().get("lastDecision") or {}
                message = str(decision.get("message"))
                if words == uncapped:  # no cap at all: the whole sentence
                    return decision if message == words else None
                return decision if words in message else None

            decision = wait_until(decided, timeout=30, what=f"a decision saying {words!r}")
            wait_until(lambda n=replicas: pool.replicas() == n, timeout=30,
                       what=f"{replicas} replicas")
            seen.append((block, pool.replicas(), decision.get("message")))
        print(f"kafka caps: {seen}")
        assert pool.status()["backlog"]["total"] == 80
    finally:
        pool.delete_queue()


def test_a_rebalance_in_progress_holds_the_scale_down_until_it_is_over(
    testenv: TestEnv, namespace: str, operator: OperatorProcess, kafka_server: KafkaServer,
) -> None:
    """Two partitions with lag wake the pool to two replicas; the lag is committed away while a
    member joins the group and never syncs (the group waits in CompletingRebalance). Past the
    stabilization window the pool holds with reason rebalancing; once the member leaves, it
    goes to zero."""
    pool = _pool(testenv, namespace, kafka_server, partitions=2).create()
    try:
        pool.commit({0: 0, 1: 0})
        pool.produce(10)
        pool.apply_scaler(minReplicas=0, maxReplicas=4, target={"messagesPerReplica": 10})
        wait_until(lambda: pool.replicas() == 2, timeout=30, what="the pool at two")

        pool.commit({0: 10, 1: 10})
        with pool.joining_member():
            held = pool.wait_condition("ScalingLimited", "True", reason="Rebalancing",
                                       timeout=45)
            assert pool.replicas() == 2
            decision = pool.status()["lastDecision"]
        wait_until(lambda: pool.replicas() == 0, timeout=30,
                   what="the scale-down once the rebalance is over")
        downs = [e.get("message") for e in pool.events() if e.get("reason") == "ScaledDown"]
        print(f"kafka rebalance: held: {held.get('message')}\nthen: {downs}")
        assert decision["reason"] == "rebalancing", decision
        assert "rebalance is in progress" in held["message"], held
        assert downs, pool.events()
    finally:
        pool.delete_queue()
