"""A Kafka pool through the planner: lag 0 shrinks it, lag never shrinks it onto busy members.

The kafka source tells no in-flight count (Kafka has none); its samples say the lag, and its
client listing says which members' partitions lag. The core's fail-closed rules (issue 11) do
the rest, unchanged: these tests run the real planner on what lag.py makes of a round.
"""

from __future__ import annotations

from typing import Any

import pytest

from queuescaler.core.decision import Reason
from queuescaler.core.plan import Memory, Observations, Plan, WorkerLook, plan
from queuescaler.core.sample import QueueSample
from queuescaler.core.spec import QueueScalerSpec
from queuescaler.core.workers import Pod
from queuescaler.sources.kafka.lag import Reading, busy_members, partition_lag, topic_sample
from queuescaler.sources.kafka.protocol import Committed, Group, Member
from queuescaler.sources.kafka.spec import GroupScope
from queuescaler.sources.registry import parse_spec

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
PODS = [Pod(f"worker-{i}", f"10.0.0.{i}") for i in range(4)]


def the_spec(**behavior: Any) -> QueueScalerSpec:
    return parse_spec({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "minReplicas": 0,
        "maxReplicas": 20,
        "source": {"kafka": {"topic": "orders", "consumerGroup": "workers",
                             "connectionSecretRef": {"name": "kafka"}}},
        "behavior": {"scaleDown": {"stabilizationSeconds": 0, "cooldownSeconds": 0, **behavior}},
    })


SPEC = the_spec()
SCOPE = GroupScope.from_scope(SPEC.source.queues[0].scope)
assert SCOPE is not None


def round_of(commits: dict[int, int], state: str = "Stable") -> tuple[Reading, Group]:
    """Four partitions of 100 messages, one member (pod) each."""
    members = tuple(Member(f"m{i}", f"worker-{i}", f"/10.0.0.{i}", None, {"orders": (i,)})
                    for i in range(4))
    group = Group("workers", state, "consumer", members)
    reading = Reading(
        taken_at=NOW,
        partitions={"orders": [0, 1, 2, 3]},
        ends={("orders", p): 100 for p in range(4)},
        starts={("orders", p): 0 for p in range(4)},
        committed={"workers": Committed("workers", {("orders", p): o for p, o in commits.items()})},
        groups={"workers": group},
    )
    return reading, group


def tick(commits: dict[int, int], state: str = "Stable") -> Plan:
    reading, group = round_of(commits, state)
    sample = topic_sample(SCOPE, "orders", reading)
    assert isinstance(sample, QueueSample)
    ref = SPEC.source.queues[0]
    seen = Observations(now=NOW, answer={ref: sample}, current=4)
    made = plan(SPEC, Memory(current_replicas=4), seen, generation=1, name="qs")
    if not made.wants_workers:
        return made
    committed = reading.committed["workers"]
    assert isinstance(committed, Committed)
    lags = {("orders", p): partition_lag(100, 0, commits.get(p), SCOPE.reset) for p in range(4)}
    clients = busy_members(SCOPE, ref.scope, group, committed, lags)
    look = WorkerLook(tuple(PODS), tuple(clients))
    return plan(SPEC, Memory(current_replicas=4), Observations(
        now=NOW, answer={ref: sample}, current=4, workers=look), generation=1, name="qs")


def test_lag_zero_everywhere_scales_the_pool_to_its_minimum() -> None:
    made = tick({p: 100 for p in range(4)})
    assert made.scale_to == 0
    assert made.decision is not None and made.decision.reason is Reason.IDLE


def test_lag_on_two_partitions_keeps_their_two_members() -> None:
    made = tick({0: 95, 1: 100, 2: 99, 3: 100})  # 5 and 1 messages left on 0 and 2
    assert made.scale_to == 2
    assert made.decision is not None and made.decision.reason is Reason.BUSY_WORKERS
    kept = {pod for pod, marks in made.marks.items()
            if marks["controller.kubernetes.io/pod-deletion-cost"] != "-1"}
    assert kept == {"worker-0", "worker-2"}


def test_lag_on_every_partition_removes_nobody() -> None:
    made = tick({p: 99 for p in range(4)})
    assert made.scale_to is None
    assert made.decision is not None and made.decision.replicas == 4


def test_a_rebalance_holds_even_an_idle_pool() -> None:
    made = tick({p: 100 for p in range(4)}, state="CompletingRebalance")
    assert made.scale_to is None and not made.wants_workers
    assert made.decision is not None and made.decision.reason is Reason.REBALANCING


def test_members_matching_no_pod_hold_the_pool() -> None:
    reading, _ = round_of({0: 90})
    strangers = Group("workers", "Stable", "consumer", tuple(
        Member(f"m{i}", "consumer-1", "/192.168.9.9", None, {"orders": (i,)}) for i in range(4)))
    ref = SPEC.source.queues[0]
    sample = topic_sample(SCOPE, "orders", reading)
    assert isinstance(sample, QueueSample)
    committed = reading.committed["workers"]
    assert isinstance(committed, Committed)
    lags = {("orders", p): 10 if p == 0 else 0 for p in range(4)}
    look = WorkerLook(tuple(PODS), tuple(busy_members(SCOPE, ref.scope, strangers, committed,
                                                      lags)))
    made = plan(SPEC, Memory(current_replicas=4), Observations(
        now=NOW, answer={ref: sample}, current=4, workers=look), generation=1, name="qs")
    assert made.scale_to is None  # a busy member on no known pod could be any of them


@pytest.mark.parametrize("restarted", [False, True])
def test_a_new_queuescaler_does_not_shrink_before_it_watched_a_whole_window(
    restarted: bool,
) -> None:
    """Review r1 (D): a QueueScaler created (or an operator restarted) over 6 replicas that
    keep pace with 40 msg/s, lag 0 at every poll. Kafka's rate needs a minute of counters and
    the window held nothing yet, so the first tick took the pool to zero: now a pool that
    pauses on every resize waits one whole scale-down window (300 s) first, and then
    shrinks."""
    from queuescaler.core.decision import ScalerState, decide, next_state
    from queuescaler.core.status import state_from_status

    spec = parse_spec({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "minReplicas": 0, "maxReplicas": 20, "pollingIntervalSeconds": 15,
        "source": {"kafka": {"topic": "orders", "consumerGroup": "workers",
                             "connectionSecretRef": {"name": "kafka"}}},
    })
    stored = {"lastScaleTime": "2027-01-15T07:00:00Z", "consecutiveFailures": 0}
    state = state_from_status(stored, NOW) if restarted else ScalerState()
    current, total, held = 6, 100_000, []
    for tick in range(1, 24):  # every 15 s for 345 s, at 40 msg/s
        now, total = NOW + 15 * tick, total + 600
        sample = QueueSample(ready=0, unacked=0, consumers=current, taken_at=now,
                             published_total=total, acked_total=total, parallelism=20,
                             backlog_parallelism=0, scaling_pauses=True)
        decision = decide(spec, sample, current, state, now, busy_workers=0)
        held.append(decision.replicas == 6)
        state = next_state(spec, state, sample, current, decision, now, scaled=False)
    assert all(held[:19]), held  # 15 .. 285 s from the first tick
    assert not all(held), held  # and then the lag decides


DEFAULT_WINDOW = parse_spec({
    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
    "minReplicas": 0, "maxReplicas": 20, "pollingIntervalSeconds": 15,
    "source": {"kafka": {"topic": "orders", "consumerGroup": "workers",
                         "connectionSecretRef": {"name": "kafka"}}},
})
"""Kafka's defaults: the 300 s scale-down window."""


def kafka_tick(spec: QueueScalerSpec, state: Any, current: int, now: float, total: int) -> Any:
    from queuescaler.core.decision import decide, next_state

    sample = QueueSample(ready=0, unacked=0, consumers=current, taken_at=now,
                         published_total=total, acked_total=total, parallelism=20,
                         backlog_parallelism=0, scaling_pauses=True)
    decision = decide(spec, sample, current, state, now, busy_workers=0)
    return decision, next_state(spec, state, sample, current, decision, now, scaled=False)


def test_failed_ticks_do_not_use_the_new_queuescalers_window_up() -> None:
    """Review s9 M2: a Secret that arrives 5 minutes late; the first good tick is the first
    the window counts from."""
    from queuescaler.core.decision import ScalerState, decide, next_state

    spec = DEFAULT_WINDOW
    state, now = ScalerState(), NOW
    for _ in range(21):  # 5 minutes of failed ticks
        now += 15
        failed = decide(spec, None, 6, state, now)
        state = next_state(spec, state, None, 6, failed, now, scaled=False)
    decision, state = kafka_tick(spec, state, 6, now + 15, 100_000)
    assert decision.replicas == 6, decision


def test_a_clock_that_steps_back_holds_one_window_from_the_step_not_more() -> None:
    from queuescaler.core.decision import ScalerState

    spec = DEFAULT_WINDOW
    decision, state = kafka_tick(spec, ScalerState(), 6, NOW, 100_000)
    assert decision.replicas == 6
    stepped_back = NOW - 3600.0
    decision, state = kafka_tick(spec, state, 6, stepped_back, 100_600)
    assert decision.replicas == 6
    assert "300s left" in decision.message or "299s left" in decision.message, decision.message
