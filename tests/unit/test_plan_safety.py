"""The review's defects, each as the planner sees it: a table row or a property per rule.

Each test names the defect it closes ("11 Never a wrong scale", defects 2 to 25). The
properties draw what the last round's strategies never drew: AMQP-only and partial
samples, pending statistics, failed worker looks, negative, NaN and absurd rates, and
times from a clock that runs ahead.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queuescaler.core.decision import Reason, ScalerState, decide
from queuescaler.core.plan import (
    Failure,
    Memory,
    Observations,
    Plan,
    WorkerLook,
    conflicts,
    plan,
)
from queuescaler.core.sample import (
    BrokerClient,
    ErrorKind,
    QueueRef,
    QueueSample,
    SourceError,
    combine,
)
from queuescaler.core.spec import QueueScalerSpec, ScaleTargetRef
from queuescaler.core.status import build_status, state_from_status
from queuescaler.core.throughput import Reading, per_replica_rate
from queuescaler.core.workers import DELETION_COST, Pod
from queuescaler.sources.registry import parse_spec

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
Q1, Q2 = QueueRef("/", "a"), QueueRef("/", "b")


def spec(**overrides: Any) -> QueueScalerSpec:
    raw: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "minReplicas": 0,
        "maxReplicas": 50,
        "source": {"rabbitmq": {"queues": ["a", "b"], "connectionSecretRef": {"name": "s"}}},
        "behavior": {"scaleDown": {"stabilizationSeconds": 0, "cooldownSeconds": 0}},
    }
    raw.update(overrides)
    return parse_spec(raw)


def sample(ready: int = 0, unacked: int = 0, complete: bool = True, **rates: float) -> QueueSample:
    return QueueSample(ready, unacked, 1, NOW, complete=complete, **rates)


def tick(
    answer: Any, current: int = 10, the_spec: QueueScalerSpec | None = None, **kw: Any
) -> Plan:
    memory = kw.pop("memory", Memory(current_replicas=current))
    seen = Observations(now=NOW, answer=answer, current=current, **kw)
    return plan(the_spec or spec(), memory, seen, generation=1, name="qs")


def conditions(made: Plan) -> dict[str, tuple[bool, str]]:
    return {c.type: (c.status, c.reason) for c in made.conditions}


# --- defect 2: a busy pool is never scaled down on data blind to in-flight work ---


@pytest.mark.parametrize(
    ("answer", "live", "memory_current"),
    [
        pytest.param(
            {Q1: sample(complete=False), Q2: sample(complete=False)}, None, 10,
            id="amqp-only-source-without-management-url",
        ),
        pytest.param(
            {Q1: SourceError(ErrorKind.STATS_PENDING, "new"), Q2: sample()}, sample(), 10,
            id="statistics-pending-live-counts-stand-in",
        ),
        pytest.param(
            {Q1: SourceError(ErrorKind.QUEUE_NOT_FOUND, "gone"), Q2: sample()}, None, 10,
            id="one-of-two-queues-missing",
        ),
    ],
)
def test_defect_2_no_scale_down_on_an_incomplete_sample(
    answer: Any, live: QueueSample | None, memory_current: int
) -> None:
    made = tick(answer, live=live, memory=Memory(current_replicas=memory_current))
    assert made.scale_to is None
    assert made.decision is not None and made.decision.replicas == 10
    assert made.decision.reason is Reason.INCOMPLETE_SAMPLE
    ready = next(c for c in made.conditions if c.type == "Ready")
    assert "scaling up only" in ready.message


def test_defect_2_a_pool_at_zero_still_wakes_on_live_counts() -> None:
    made = tick({Q1: sample(5, complete=False), Q2: sample(0, complete=False)}, current=0,
                memory=Memory(current_replicas=0))
    assert made.scale_to == 1


# --- defects 3 and 4: protection fails closed, unmatched busy clients count ---

PODS = tuple(Pod(f"worker-{i}", f"10.0.0.{i}") for i in range(4))


@pytest.mark.parametrize(
    ("look", "kept"),
    [
        pytest.param(WorkerLook(problem="HTTP 500"), 4, id="look-failed-holds"),
        pytest.param(
            WorkerLook(PODS, (BrokerClient("/", None, "192.168.9.9", 1, 3),)), 4,
            id="busy-client-on-no-pod-holds-every-unmatched-pod",
        ),
        pytest.param(
            WorkerLook(PODS, (BrokerClient("/", "worker-2", None, 1, 1),)), 1,
            id="one-matched-busy-pod-kept",
        ),
        pytest.param(
            WorkerLook(PODS, (BrokerClient("/", None, "192.168.9.9", 1, 0),)), 0,
            id="idle-unmatched-client-does-not-hold",
        ),
    ],
)
def test_defects_3_4_protection_fails_closed(look: WorkerLook, kept: int) -> None:
    made = tick({Q1: sample(), Q2: sample()}, current=4, workers=look,
                memory=Memory(current_replicas=4))
    assert made.decision is not None and made.decision.replicas == kept


def test_work_in_flight_on_no_listed_client_holds_the_unmatched_pods() -> None:
    """Found by the soak: workers that connected before the broker's first channel
    statistics hold messages the queue counts, yet no client shows them."""
    unlisted = WorkerLook(PODS, ())
    made = tick({Q1: sample(unacked=5), Q2: sample()}, current=4, workers=unlisted,
                memory=Memory(current_replicas=4))
    assert made.decision is not None and made.decision.replicas == 4
    assert "in flight on no listed client" in made.decision.message
    listed = WorkerLook(PODS, (BrokerClient("/", "worker-0", None, 1, 5),))
    made = tick({Q1: sample(unacked=5), Q2: sample()}, current=4, workers=listed,
                memory=Memory(current_replicas=4))
    assert made.decision is not None and made.decision.replicas == 1  # the busy one stays


def test_work_on_no_pod_holds_the_replicas_the_listing_does_not_show() -> None:
    """Found by the property below: 5 replicas, 4 pods listed (the fifth created since, or
    a listing behind the scale), one busy client on none of them: the pool went to 4, and
    the client may be the fifth."""
    stranger = WorkerLook(PODS, (BrokerClient("/", "stranger", None, 1, 1),))
    made = tick({Q1: sample(), Q2: sample()}, current=5, workers=stranger,
                memory=Memory(current_replicas=5))
    assert made.decision is not None and made.decision.replicas == 5, made.decision.message
    unseen = WorkerLook(PODS, ())
    made = tick({Q1: sample(unacked=5), Q2: sample()}, current=5, workers=unseen,
                memory=Memory(current_replicas=5))
    assert made.decision is not None and made.decision.replicas == 5, made.decision.message
    idle = WorkerLook(PODS, (BrokerClient("/", "worker-0", None, 1, 0),))
    made = tick({Q1: sample(), Q2: sample()}, current=5, workers=idle,
                memory=Memory(current_replicas=5))
    assert made.decision is not None and made.decision.replicas == 0, "no work: all may go"


@pytest.mark.parametrize(
    ("at_own_ip", "said"),
    [
        pytest.param(False, "4 matched pods that may hold them", id="idle-pods-in-doubt"),
        pytest.param(True, "more than the 0 pods they could be on", id="idle-pods-seen-at-home"),
    ],
)
def test_clients_on_no_pod_beyond_the_unmatched_pods_hold_all_whatever_is_not_listed(
    at_own_ip: bool, said: str,
) -> None:
    """Review 41: 4 pods listed, all matched and idle, and a busy client on none: a matched
    pod holds work no client shows, so all stay. Counted against a fifth replica not
    listed as if it could be there, 5 went to 1. With the idle pods' addresses unknown
    they are in doubt and kept; seen at their own IPs (review 49), none can hold it, and
    the whole pool is held as unplaced."""
    idle = tuple(BrokerClient("/", p.name, p.ip if at_own_ip else None, 1, 0) for p in PODS)
    look = WorkerLook(PODS, (*idle, BrokerClient("/", None, "192.168.9.9", 1, 3)))
    for current in (4, 5, 6):
        made = tick({Q1: sample(unacked=3), Q2: sample()}, current=current, workers=look,
                    memory=Memory(current_replicas=current))
        assert made.decision is not None and made.decision.replicas == current, current
        assert said in made.decision.message


def test_a_busy_client_from_where_no_doubtful_pod_was_seen_fits_only_unmatched_pods() -> None:
    """Review 50: d-1 and d-2 named from node X (IPs not listed), p-1 and p-2 from their own
    IPs; a busy unnamed client from X may be d-1's or d-2's, one from Y no pod of them: with
    no unmatched pod, one called idle holds it. Counted against the doubtful at X, p-1 and
    p-2 went first."""
    on_x = "192.168.0.1"  # their node's, under its SNAT
    pods = (Pod("d-1", node_ip=on_x), Pod("d-2", node_ip=on_x), Pod("p-1", "10.0.0.1"),
            Pod("p-2", "10.0.0.2"))
    clients = (BrokerClient("/", "d-1", "192.168.0.1", 1, 0),
               BrokerClient("/", "d-2", "192.168.0.1", 1, 0),
               BrokerClient("/", "p-1", "10.0.0.1", 1, 0),
               BrokerClient("/", "p-2", "10.0.0.2", 1, 0),
               BrokerClient("/", None, "192.168.0.1", 1, 2),
               BrokerClient("/", None, "203.0.113.7", 1, 2))
    made = tick({Q1: sample(unacked=4), Q2: sample()}, current=4,
                workers=WorkerLook(pods, clients), memory=Memory(current_replicas=4))
    assert made.decision is not None and made.decision.replicas == 4, made.decision
    assert ("1 busy clients matched no pod from addresses no matched pod was seen at, more"
            " than the 0 unmatched pods") in made.decision.message  # not "2, more than 2"
    made = tick({Q1: sample(unacked=2), Q2: sample()}, current=4,
                workers=WorkerLook(pods, clients[:-1]), memory=Memory(current_replicas=4))
    assert made.scale_to == 2 and made.marks["p-1"][DELETION_COST] == "-1", made.decision


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_a_pod_pending_without_an_ip_does_not_hold_an_unnamed_pool(kind: str) -> None:
    """Review 50: an unschedulable pod has no IP and no connection. Taken for one that may
    share a busy pod's address, it held every scale-down while it pended."""
    pods = (*(Pod(f"w-{i}", f"10.0.0.{i}") for i in range(4)), Pod("w-4"))
    clients = tuple(BrokerClient("/", None, f"10.0.0.{i}", 1, 2 if i == 0 else 0)
                    for i in range(4))
    target = {"apiVersion": "apps/v1", "kind": kind, "name": "w"}
    made = tick({Q1: sample(unacked=2), Q2: sample()}, current=5,
                the_spec=spec(scaleTargetRef=target), workers=WorkerLook(pods, clients),
                memory=Memory(current_replicas=5))
    assert made.scale_to == 1, made.decision


@pytest.mark.parametrize("listed", [4, 5], ids=["w-4-not-listed", "w-4-listed-no-client"])
def test_a_statefulset_keeps_all_while_work_is_on_no_listed_client(listed: int) -> None:
    """Review 41: a StatefulSet removes its highest ordinals whatever the count kept says:
    with work in flight on no client, w-4 (not listed, or listed with no client) was the
    only place it could be, and 5 went to 1."""
    sts = spec(scaleTargetRef={"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "w"})
    pods = tuple(Pod(f"w-{i}") for i in range(listed))
    clients = tuple(BrokerClient("/", f"w-{i}", None, 1, 0) for i in range(4))
    made = tick({Q1: sample(unacked=5), Q2: sample()}, current=5, the_spec=sts,
                workers=WorkerLook(pods, clients), memory=Memory(current_replicas=5))
    assert made.decision is not None and made.decision.replicas == 5, made.decision.message


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_work_on_no_client_with_every_pod_matched_holds_nothing(kind: str) -> None:
    """Every replica a matched pod, and the queue counting 2 messages no client shows:
    most often no worker's (Celery's ETA tasks sit in kombu's unacked hash and no inspect
    answer lists them; queue and channel statistics refresh apart). Holding the whole pool
    on it (review 42) froze scale-downs for as long as a retry was pending (review 43); a
    worker whose channel statistics are not out yet, on a pod matched by another channel,
    is the case left open."""
    the_spec = spec(scaleTargetRef={"apiVersion": "apps/v1", "kind": kind, "name": "w"})
    pods = tuple(Pod(f"w-{i}") for i in range(5))
    idle = tuple(BrokerClient("/", p.name, None, 1, 0) for p in pods)
    made = tick({Q1: sample(unacked=2), Q2: sample()}, current=5, the_spec=the_spec,
                workers=WorkerLook(pods, idle), memory=Memory(current_replicas=5))
    assert made.decision is not None and made.decision.replicas < 5, made.decision.message


def test_no_sample_holds_a_protected_pool_below_a_fallback() -> None:
    """Review 43: the queues unreadable, the clients listed, fallback 1: 5 went to 1, and a
    StatefulSet's w-4, not listed, first. Without a sample, work in flight is unknown."""
    for kind in ("Deployment", "StatefulSet"):
        the_spec = spec(scaleTargetRef={"apiVersion": "apps/v1", "kind": kind, "name": "w"},
                        fallback={"afterFailures": 1, "replicas": 1})
        pods = tuple(Pod(f"w-{i}") for i in range(4))
        idle = tuple(BrokerClient("/", p.name, None, 1, 0) for p in pods)
        made = tick(SourceError(ErrorKind.UNREACHABLE, "down"), current=5, the_spec=the_spec,
                    workers=WorkerLook(pods, idle), memory=Memory(current_replicas=5))
        assert made.decision is not None and made.decision.replicas == 5, made.decision.message


@pytest.mark.parametrize(("kind", "kept"), [("Deployment", 2), ("StatefulSet", 5)])
def test_a_replica_not_listed_stays_while_work_is_in_flight(kind: str, kept: int) -> None:
    """Review 42: w-0 reads queue a and a retry queue, and holds 5 retry messages; the 5 of
    queue a are on w-4, not listed. The counts matched, so nothing looked unplaced, and a
    StatefulSet went 5 to 1 (w-4 first). A replica not listed now stays while work is in
    flight; a StatefulSet, whose not listed replicas are its highest, keeps all."""
    the_spec = spec(scaleTargetRef={"apiVersion": "apps/v1", "kind": kind, "name": "w"})
    pods = tuple(Pod(f"w-{i}") for i in range(4))
    clients = (BrokerClient("/", "w-0", None, 1, 5, frozenset({Q1, QueueRef("/", "retry")})),
               *(BrokerClient("/", f"w-{i}", None, 1, 0) for i in range(1, 4)))
    made = tick({Q1: sample(unacked=5), Q2: sample()}, current=5, the_spec=the_spec,
                workers=WorkerLook(pods, clients), memory=Memory(current_replicas=5))
    assert made.decision is not None and made.decision.replicas == kept, made.decision.message


def test_a_statefulset_names_a_busy_pod_without_an_ordinal() -> None:
    sts = spec(scaleTargetRef={"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "w"})
    pods = (*(Pod(f"w-{i}") for i in range(3)), Pod("w-canary"))
    made = tick({Q1: sample(unacked=1), Q2: sample()}, current=4, the_spec=sts,
                workers=WorkerLook(pods, (BrokerClient("/", "w-canary", None, 1, 1),)),
                memory=Memory(current_replicas=4))
    assert made.decision is not None and made.decision.replicas == 4
    assert "without an ordinal" in made.decision.message


def test_defect_3_no_broker_no_scale_down_when_protected() -> None:
    made = tick(None, current=4, broker=Failure("SecretNotFound", "gone"),
                the_spec=spec(fallback={"afterFailures": 1, "replicas": 1}),
                memory=Memory(current_replicas=4))
    assert made.decision is not None and made.decision.replicas == 4


# --- defect 5: StatefulSets remove their highest ordinals ---


def test_defect_5_a_statefulset_keeps_its_highest_busy_ordinal() -> None:
    sts = spec(scaleTargetRef={"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "w"})
    pods = tuple(Pod(f"w-{i}") for i in range(6))
    busy_at_4 = (BrokerClient("/", "w-4", None, 1, 2),)
    made = tick({Q1: sample(), Q2: sample()}, current=6, the_spec=sts,
                workers=WorkerLook(pods, busy_at_4), memory=Memory(current_replicas=6))
    assert made.decision is not None and made.decision.replicas == 5


OLD_RS, NEW_RS = "ReplicaSet/worker-5d4f8", "ReplicaSet/worker-7c9b6"
"""A Deployment's ReplicaSets: `<deployment>-<pod template hash>`."""


def test_a_rollout_shrinks_by_no_more_than_a_busy_pods_replicaset_ranks_before_it() -> None:
    """Each ReplicaSet reads its own pods' costs only, and a Deployment mid-rollout shares a
    scale-down among them by their sizes: the new one's two idle pods do not spare the old
    one's busy pod when the old one has a single idle pod."""
    old = (Pod("w-old-0", owner=OLD_RS), Pod("w-old-1", owner=OLD_RS))
    new = tuple(Pod(f"w-new-{i}", owner=NEW_RS) for i in range(3))
    clients = (BrokerClient("/", "w-old-0", None, 1, 2),
               *(BrokerClient("/", pod.name, None, 1, 0) for pod in (old[1], *new)))
    made = tick({Q1: sample(unacked=2), Q2: sample()}, current=5,
                workers=WorkerLook(old + new, clients), memory=Memory(current_replicas=5))
    assert made.decision is not None and made.decision.replicas == 4
    assert ("w-old-0 (busy) goes after only 1 pods of its ReplicaSet (its pods have 2"
            " ReplicaSets (a rollout)" in made.decision.message)


def test_a_busy_pod_not_ready_keeps_the_pods_ranked_after_it() -> None:
    """The ReplicaSet removes pods not ready before it reads any cost: a busy worker whose
    readiness probe times out while it works would go first, marked dear or not."""
    pods = (Pod("w-0", ready=False, owner=OLD_RS),
            *(Pod(f"w-{i}", owner=OLD_RS) for i in range(1, 4)),
            Pod("w-4", phase="Pending", ready=False, owner=OLD_RS))
    clients = (BrokerClient("/", "w-0", None, 1, 1),
               *(BrokerClient("/", f"w-{i}", None, 1, 0) for i in range(1, 4)))
    made = tick({Q1: sample(unacked=1), Q2: sample()}, current=5,
                workers=WorkerLook(pods, clients), memory=Memory(current_replicas=5))
    assert made.decision is not None and made.decision.replicas == 4
    assert ("w-0 (busy) goes after only 1 pods of its ReplicaSet (not ready: it goes before"
            " ready pods whatever its cost)" in made.decision.message)


def test_a_pending_pod_behind_nat_keeps_the_pool_while_a_busy_client_is_on_no_pod() -> None:
    """Review 55: a sidecar still pulling its image keeps a pod Pending while its worker
    consumes; its busy connection, through NAT, matched no pod. Pending pods go first."""
    pods = (*(Pod(f"w-{i}", f"10.0.0.{i}", owner=OLD_RS) for i in range(3)),
            Pod("w-3", "10.0.0.3", owner=OLD_RS, phase="Pending", ready=False))
    clients = (*(BrokerClient("/", f"w-{i}", f"10.0.0.{i}", 1, 0) for i in range(3)),
               BrokerClient("/", None, "192.0.2.1", 1, 2))
    made = tick({Q1: sample(unacked=2), Q2: sample()}, current=4,
                workers=WorkerLook(pods, clients), memory=Memory(current_replicas=4))
    assert made.decision is not None and made.decision.replicas == 4


def test_a_pod_on_no_node_holds_nothing_while_work_is_on_no_client() -> None:
    """Review 54: with work in flight on no listed client (Celery's ETA tasks), an
    unschedulable replica, ranked first, held all 11: it runs no worker to hold any."""
    pods = (*(Pod(f"w-{i}", owner=OLD_RS) for i in range(10)),
            Pod("w-pending", owner=OLD_RS, scheduled=False, phase="Pending", ready=False))
    clients = tuple(BrokerClient("/", f"w-{i}", None, 1, int(i == 0)) for i in range(10))
    made = tick({Q1: sample(unacked=3), Q2: sample()}, current=11,
                workers=WorkerLook(pods, clients), memory=Memory(current_replicas=11))
    assert made.decision is not None and made.decision.replicas == 2


def test_another_workloads_pods_named_alike_do_not_hold_the_pool() -> None:
    """Review 54: Deployment `worker-priority`'s pods also match `worker`'s selector; its
    busy pod is no pod a scale of `worker` removes, and held it at 10."""
    pods = (*(Pod(f"worker-5d4f8-{i}", owner=OLD_RS) for i in range(10)),
            Pod("worker-priority-6a2d1-x", owner="ReplicaSet/worker-priority-6a2d1"))
    clients = tuple(BrokerClient("/", pod.name, None, 1, int(i in (0, 10)))
                    for i, pod in enumerate(pods))
    made = tick({Q1: sample(unacked=2), Q2: sample()}, current=10,
                workers=WorkerLook(pods, clients), memory=Memory(current_replicas=10))
    assert made.decision is not None and made.decision.replicas == 2


def test_a_rollout_with_nothing_busy_shrinks_as_far_as_asked() -> None:
    pods = (Pod("w-old-0", owner=OLD_RS), *(Pod(f"w-new-{i}", owner=NEW_RS) for i in range(3)))
    clients = tuple(BrokerClient("/", pod.name, None, 1, 0) for pod in pods)
    made = tick({Q1: sample(), Q2: sample()}, current=4,
                workers=WorkerLook(pods, clients), memory=Memory(current_replicas=4))
    assert made.decision is not None and made.decision.replicas == 0


# --- defect 8: two owners of one target ---


def test_defect_8_two_owners_of_one_target_both_hold_and_say_why() -> None:
    target = ScaleTargetRef("apps/v1", "Deployment", "worker")
    other = ScaleTargetRef("apps/v1", "Deployment", "other")
    found = conflicts(
        [("ns", "a", target), ("ns", "b", target), ("ns", "c", other)],
        [("ns", "keda-hpa", ScaleTargetRef("apps/v1", "Deployment", "other"))],
    )
    assert found == {
        ("ns", "a"): "QueueScaler b", ("ns", "b"): "QueueScaler a",
        ("ns", "c"): "HorizontalPodAutoscaler keda-hpa",
    }
    made = tick({Q1: sample(100), Q2: sample()}, conflict="QueueScaler b")
    assert made.scale_to is None
    assert conditions(made)["Ready"] == (False, "TargetConflict")


# --- defect 11: rates that cannot be ---


@pytest.mark.parametrize(
    "rate", [pytest.param(-5.0, id="negative"), pytest.param(math.nan, id="nan"),
             pytest.param(math.inf, id="infinite")],
)
def test_defect_11_impossible_rates_never_reach_status(rate: float) -> None:
    made = tick({Q1: sample(5, publish_rate=rate, ack_rate=rate), Q2: sample()})
    assert made.status is not None
    for value in (made.status.get("rates") or {}).values():
        assert math.isfinite(value) and value >= 0


def test_defect_11_one_absurd_ack_rate_cannot_cut_the_floor() -> None:
    steady = 5.0
    glitch = QueueSample(5, 10, 10, NOW, publish_rate=50.0, ack_rate=1e9)
    after = per_replica_rate(steady, (Reading(NOW - 15, 5, 10, 10, 15, None, None),), glitch, 10)
    assert after is not None and after <= steady * 1.5


# --- defect 17: decisions by direction start from the count before the scale ---


def test_defect_17_a_scale_keeps_the_count_it_started_from() -> None:
    made = tick({Q1: sample(100), Q2: sample()}, current=2, memory=Memory(current_replicas=2))
    assert made.scale_to == 10 and made.previous_replicas == 2


# --- defect 20: at minReplicas, the bound holds, not the window ---


def test_defect_20_at_rest_at_min_the_bound_is_the_reason() -> None:
    the_spec = spec(minReplicas=1, behavior={"scaleDown": {"stabilizationSeconds": 600}})
    state = ScalerState(recommendations=())
    decision = decide(the_spec, sample(), 1, state, NOW)
    assert decision.replicas == 1 and decision.reason is Reason.MIN_BOUND


def test_defect_20_a_capped_scale_up_names_the_cap_only() -> None:
    the_spec = spec(maxReplicas=10, behavior={"scaleUp": {"maxStepReplicas": 100}})
    decision = decide(the_spec, sample(1840), 5, ScalerState(), NOW)
    assert decision.replicas == 10 and decision.reason is Reason.MAX_BOUND
    assert "maxStepReplicas" not in decision.message


# --- defect 21, 23, 25: conditions, Events and log lines ---


def _written(made: Plan) -> Memory:
    """The memory after the engine carried the plan out (the status written, if any)."""
    if made.status is None:
        return made.memory
    return made.memory.wrote(made.status, NOW)


def test_defect_21_workers_matched_false_is_a_warning() -> None:
    first = tick({Q1: sample(), Q2: sample()}, current=4, memory=Memory(current_replicas=4),
                 workers=WorkerLook(PODS, (BrokerClient("/", "worker-1", None, 1, 0),)))
    second = tick({Q1: sample(), Q2: sample()}, current=4, memory=_written(first),
                  workers=WorkerLook(problem="HTTP 500"))
    assert ("Warning", "NotListed") in {(e.type, e.reason) for e in second.status_events}
    assert any("WorkersMatched is False" in line for line in second.warnings)


@pytest.mark.parametrize(
    ("answer", "reachable"),
    [
        pytest.param({Q1: SourceError(ErrorKind.QUEUE_NOT_FOUND, "x"), Q2: sample()}, True,
                     id="missing-queue-broker-answered"),
        pytest.param({Q1: SourceError(ErrorKind.STATS_PENDING, "x"), Q2: sample()}, True,
                     id="new-queue-broker-answered"),
        pytest.param(SourceError(ErrorKind.UNREACHABLE, "refused"), False, id="broker-down"),
    ],
)
def test_defect_23_broker_reachable_means_the_broker_answered(
    answer: Any, reachable: bool
) -> None:
    made = tick(answer)
    assert conditions(made)["BrokerReachable"][0] is reachable


def test_defect_23_a_new_queues_first_poll_is_not_a_failure() -> None:
    made = tick({Q1: SourceError(ErrorKind.STATS_PENDING, "new"),
                 Q2: SourceError(ErrorKind.STATS_PENDING, "new")})
    assert made.memory.state.consecutive_failures == 0
    assert not [e for e in made.status_events if e.type == "Warning"]
    assert made.scale_to is None


def test_defect_22_one_missing_queue_does_not_strand_the_others() -> None:
    made = tick({Q1: sample(2), Q2: SourceError(ErrorKind.QUEUE_NOT_FOUND, "no")}, current=0,
                memory=Memory(current_replicas=0))
    assert made.scale_to == 1
    assert conditions(made)["Ready"] == (False, "QueueNotFound")


def test_defect_25_a_failure_is_logged_when_it_starts_and_when_it_ends() -> None:
    healthy = tick({Q1: sample(), Q2: sample()})
    down = tick(SourceError(ErrorKind.AUTH, "HTTP 401"), memory=_written(healthy))
    assert any("BrokerReachable is False: Auth" in line for line in down.warnings)
    still = tick(SourceError(ErrorKind.AUTH, "HTTP 401"), memory=_written(down))
    assert not still.warnings
    up = tick({Q1: sample(), Q2: sample()}, memory=_written(still))
    assert any("BrokerReachable is True again" in line for line in up.warnings)


# --- defect 6: a clock that ran ahead ---


def test_defect_6_restored_times_from_the_future_are_clamped() -> None:
    ahead = NOW + 1800
    status, _ = build_status({}, _outcome(ScalerState(last_scale_time=ahead)), ahead)
    state = state_from_status(status, NOW)
    assert state.last_scale_time is not None and state.last_scale_time <= NOW
    decision = decide(spec(), sample(100), 2, state, NOW + 16)
    assert decision.replicas > 2, decision.message


def _outcome(state: ScalerState) -> Any:
    from queuescaler.core.status import TickOutcome

    return TickOutcome(1, True, None, 2, None, state, ())


# --- properties over the planner ---

rates = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 1e4),
)
samples = st.builds(
    QueueSample,
    ready=st.integers(0, 500), unacked=st.integers(0, 500), consumers=st.integers(0, 50),
    taken_at=st.just(NOW), publish_rate=rates, ack_rate=rates, complete=st.booleans(),
)
answers = st.one_of(
    st.none(),
    st.sampled_from([SourceError(k, "x") for k in ErrorKind]),
    st.fixed_dictionaries({
        Q1: st.one_of(samples, st.none(), st.sampled_from(
            [SourceError(ErrorKind.STATS_PENDING, "x"), SourceError(ErrorKind.BAD_RESPONSE, "x")]
        )),
        Q2: samples,
    }),
)
looks = st.one_of(
    st.none(),
    st.just(WorkerLook(problem="listing failed")),
    st.builds(
        lambda held: WorkerLook(PODS, tuple(
            BrokerClient("/", name, None, 1, count) for name, count in held.items()
        )),
        st.dictionaries(st.sampled_from([p.name for p in PODS] + ["stranger"]),
                        st.integers(0, 3), max_size=5),
    ),
)


@settings(max_examples=300, deadline=None)
@given(answer=answers, live=st.one_of(st.none(), samples), current=st.integers(0, 40),
       look=looks, history=st.lists(st.integers(0, 40), max_size=4),
       skew=st.floats(-3600, 3600))
def test_property_never_shrinks_on_what_it_cannot_see(
    answer: Any, live: QueueSample | None, current: int, look: WorkerLook | None,
    history: list[int], skew: float,
) -> None:
    """Whatever arrives: a scale-down only on a complete sample, never below the busy
    pods, never on a failed look; status stays within the CRD's bounds."""
    from queuescaler.core.decision import Recommendation

    state = ScalerState(
        last_scale_time=NOW + skew,
        recommendations=tuple(Recommendation(NOW - 10 * i, r) for i, r in enumerate(history)),
    )
    memory = Memory(state=state, current_replicas=current)
    made = plan(spec(), memory, Observations(NOW, answer=answer, live=live, current=current,
                                             workers=look), generation=1, name="qs")
    if made.scale_to is not None and made.scale_to < current:
        assert made.sample is not None and made.sample.complete
        assert look is not None and look.clients is not None
        names = {p.name for p in PODS}
        busy_pods = {c.client_name for c in look.clients if c.unacked > 0} & names
        assert made.scale_to >= len(busy_pods)
        if any(c.client_name == "stranger" and c.unacked > 0 for c in look.clients):
            # a busy client on no pod holds them all but the idle pods matched (marked to
            # go first): it may be any other, or a replica not listed
            idle_pods = {c.client_name for c in look.clients} & names - busy_pods
            assert made.scale_to >= current - len(idle_pods)
            if not names - busy_pods - idle_pods:  # no unmatched pod it could be
                assert made.scale_to >= current
    if made.status is not None:
        for value in (made.status.get("rates") or {}).values():
            assert math.isfinite(value) and value >= 0


def test_what_a_source_says_of_its_figures_reaches_the_ready_condition() -> None:
    # Redis keeps no ack counters: the pool is sized on backlog alone, and users are told
    note = "rates unavailable: sized on backlog alone"
    told = QueueSample(4, 0, 0, NOW, note=note)
    made = tick({Q1: told, Q2: told}, memory=Memory(current_replicas=1))
    ready = next(c for c in made.conditions if c.type == "Ready")
    assert ready.status and ready.message.endswith(f"; {note}"), ready.message
    partial = dataclasses.replace(told, complete=False)
    made = tick({Q1: partial, Q2: sample()}, memory=Memory(current_replicas=1))
    ready = next(c for c in made.conditions if c.type == "Ready")
    assert f"{note}; the sample cannot see every message" in ready.message, ready.message


def test_notes_of_several_queues_are_said_once_each() -> None:
    a = QueueSample(1, 0, 0, NOW, note="no rates")
    b = QueueSample(2, 0, 0, NOW, note="layout unexpected")
    assert combine([a, b, a]).note == "no rates; layout unexpected"
    assert combine([sample(), sample()]).note is None


def test_one_queue_combined_is_its_own_sample() -> None:
    one = QueueSample(3, 1, 2, NOW, publish_rate=1.0, note="no rates", complete=False)
    assert combine([one]) is one


def test_rates_a_broker_gives_no_field_for_are_shown_from_its_counters() -> None:
    # a Redis stream: entries-added and entries-read counters, no rate fields; status and
    # metrics show the rates the decision used (kubectl get qs had an empty ACK/S). Two
    # queues, each 1.5 messages a second: 3 in all, over the kept minute.
    kept = tuple(Reading(NOW - 15 * k, 0, 2, 1, 0, 2_000 - 45 * k, 2_000 - 45 * k)
                 for k in range(5, 0, -1))
    counted = QueueSample(0, 1, 1, NOW, published_total=1_000, acked_total=1_000)
    made = tick({Q1: counted, Q2: counted},
                memory=Memory(state=ScalerState(readings=kept), current_replicas=1))
    assert made.sample is not None
    assert made.sample.publish_rate == pytest.approx(3.0)
    assert made.status is not None and made.status["rates"]["publish"] == pytest.approx(3.0)


ADDRESSES = tuple(f"10.0.1.{i}" for i in range(6))
OTHER_RS = "ReplicaSet/worker-priority-6a2d1"
"""Another workload's ReplicaSet whose pods the selector also matches, named alike."""
NAT = "192.0.2.1"
GATEWAY = ("192.0.2.7", "192.0.2.8")


@st.composite
def pools_with_pods_leaving(draw: st.DrawFn) -> tuple[str, int, WorkerLook, set[str], int]:
    """Live pods (an IP listed or not yet), pods being deleted on addresses that may be a
    live pod's (reused), and each connection from its true pod: named after it, unnamed,
    misnamed after a leaving pod, or after a live pod on another address (one name
    hard-coded for every worker), seen from its address, through its node's SNAT or a
    gateway with one address or several. A Deployment's pods may belong to two ReplicaSets
    (a rollout), the selector may match pods of no controller or of another workload, and a
    pod may be not ready or not running yet. Live pods may share an address (host
    networking: listed at once, their node's). Not drawn, as no address
    can tell: a connection misnamed after a leaving pod that also comes from that pod's
    address, reused by a pod whose IP is not listed yet; one misnamed after a live pod
    that does not come from its own listed address; a node whose SNAT uses its hostIP for
    some connections and another address for others."""
    kind = draw(st.sampled_from(["Deployment", "StatefulSet"]))
    count = draw(st.integers(1, 4))
    host_network = draw(st.booleans())
    addresses = draw(  # on their node's network, pods share its address (review 49)
        st.lists(st.sampled_from(ADDRESSES[:2]), min_size=count, max_size=count)
        if host_network else st.permutations(ADDRESSES))
    live = [(f"w-{i}", addresses[i]) for i in range(count)]
    leaving = [(f"w-{count + j}", draw(st.sampled_from(ADDRESSES)))
               for j in range(draw(st.integers(0, 2)))]
    listed = {name for name, _ in live if host_network or draw(st.booleans())}
    node = NAT if draw(st.booleans()) else None  # NAT is their node's SNAT, or a gateway's
    # mid-rollout, a Deployment's pods belong to two ReplicaSets (or one has no owner yet)
    owners = [OLD_RS] if kind == "StatefulSet" else draw(
        st.sampled_from([[OLD_RS], [OLD_RS, NEW_RS], [OLD_RS, None], [OLD_RS, OTHER_RS]]))
    # a pod may be not ready (a probe that times out while it works), or not running yet
    states = [(True, "Running", True)] * 3 + [
        (True, "Running", False), (True, "Unknown", False), (True, "Pending", False),
        (False, "Pending", False)]
    pods = [Pod(name, ip if name in listed else None, node_ip=node,
                owner=draw(st.sampled_from(owners)),
                **dict(zip(("scheduled", "phase", "ready"), draw(st.sampled_from(states)),
                           strict=True)))
            for name, ip in live]
    pods += [Pod(name, ip, deleting=True) for name, ip in leaving]
    clients, busy = [], set()
    for name, ip in live + leaving:
        route = draw(st.sampled_from(["own", "nat", "gateway"]))
        seen_from = {"own": ip, "nat": NAT, "gateway": GATEWAY[0]}[route]
        wrong = [other for other, at in leaving if other != name and at != ip]
        if name in listed and route == "own":
            wrong += [other for other, at in live if at != ip]
        # a pod names all its connections alike, or only some of them (a library's own
        # connection left unnamed beside the one the worker names)
        as_name = draw(st.sampled_from([name, None, *wrong]))
        mixed = draw(st.booleans())
        for _ in range(draw(st.integers(0, 2))):
            if mixed:
                as_name = draw(st.sampled_from([name, None]))
            if route == "gateway":  # one with several addresses (review 51)
                seen_from = draw(st.sampled_from(GATEWAY))
            held = draw(st.integers(0, 3))
            clients.append(BrokerClient("/", as_name, seen_from, 1, held))
            if held and (name, ip) in live:
                busy.add(name)
    in_flight = sum(c.unacked for c in clients) + draw(st.integers(0, 2))
    # mid-rollout the pods may be more than the replicas (the surge)
    replicas = count if kind == "StatefulSet" else draw(st.integers(max(1, count - 2), count))
    return kind, replicas, WorkerLook(tuple(pods), tuple(clients)), busy, in_flight


@settings(max_examples=400, deadline=None)
@given(pools_with_pods_leaving())
def test_property_pods_on_their_way_out_never_expose_a_busy_pod(
    world: tuple[str, int, WorkerLook, set[str], int],
) -> None:
    """Reviews 46 and 47: connections of pods being deleted count nowhere only where name
    and address agree; by an address alone (an IP not listed yet, SNAT) or a name alone (a
    name hard-coded for every worker) they took a busy pod's protection away."""
    kind, current, look, busy, in_flight = world
    target = {"apiVersion": "apps/v1", "kind": kind, "name": "worker"}
    made = tick({Q1: sample(unacked=in_flight), Q2: sample()}, current,
                spec(scaleTargetRef=target), workers=look)
    if made.scale_to is None or made.scale_to >= current:
        return
    assert made.scale_to >= len(busy)
    if kind == "StatefulSet":
        assert made.scale_to > max((int(name[2:]) for name in busy), default=-1)
        return
    live = {pod.name: pod for pod in look.pods if not pod.deleting}
    phases = {"Pending": 0, "Unknown": 1, "Running": 2}

    def rank(pod: Pod) -> tuple[int, ...]:  # the ReplicaSet controller's order of removal
        cost = int((made.marks.get(pod.name) or {}).get(DELETION_COST) or 0)
        return (pod.scheduled, phases[pod.phase or "Pending"], pod.ready, cost)

    ours = {name: pod for name, pod in live.items() if pod.owner in (OLD_RS, NEW_RS)}
    gone = max(current, len(ours)) - made.scale_to
    for name in busy & set(ours):  # its ReplicaSet removes its first ranked, all `gone` maybe
        before = [other for other in ours.values()
                  if other.owner == ours[name].owner and rank(other) < rank(ours[name])]
        assert len(before) >= gone, (made.marks, live, busy)
