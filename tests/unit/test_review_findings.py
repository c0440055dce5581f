"""An independent review of the planner change, tried as an attacker and an unlucky operator
would: each test reproduced one finding (it failed on the code as reviewed) and now holds the
fix. Docstrings name the finding and its severity."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from queuescaler.core.decision import ScalerState
from queuescaler.core.plan import Failure, Memory, Observations, WorkerLook, plan
from queuescaler.core.sample import (
    BrokerClient,
    ErrorKind,
    QueueRef,
    QueueSample,
    SampleResult,
    SourceError,
)
from queuescaler.core.spec import QueueScalerSpec, ScaleTargetRef
from queuescaler.core.workers import Pod, match_workers
from queuescaler.engine import Engine, EngineSettings
from queuescaler.fleet import Fleet, ReplicaCache
from queuescaler.kube.client import HpaTarget, KubeError, ObjectRef
from queuescaler.metrics import Metrics
from queuescaler.sources.rabbitmq.listing import parse_client_connections
from queuescaler.sources.registry import parse_spec

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
Q = QueueRef("/", "jobs")


# --- helpers -----------------------------------------------------------------------------


def spec(**overrides: Any) -> QueueScalerSpec:
    raw: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "minReplicas": 1,
        "maxReplicas": 50,
        "source": {"rabbitmq": {"queue": "jobs", "connectionSecretRef": {"name": "s"}}},
        "behavior": {"scaleDown": {"stabilizationSeconds": 0, "cooldownSeconds": 0}},
    }
    raw.update(overrides)
    return parse_spec(raw)


def idle_sample(unacked: int = 0) -> QueueSample:
    return QueueSample(ready=0, unacked=unacked, consumers=3, taken_at=NOW)


class Source:
    """A broker with one queue; can list clients; peek optionally raises."""

    def __init__(
        self, ready: int = 0, unacked: int = 0, clients: Sequence[BrokerClient] = (),
        error: SourceError | None = None,
    ) -> None:
        self.ready, self.unacked, self._clients, self.error = ready, unacked, clients, error

    async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
        if self.error is not None:
            raise self.error
        return {q: QueueSample(self.ready, self.unacked, 3, NOW) for q in queues}

    async def clients(self, scopes: Collection[str]) -> Sequence[BrokerClient]:
        return list(self._clients)

    async def close(self) -> None:
        pass


class PeekingSource(Source):
    async def peek(self, queues: Collection[QueueRef]) -> SampleResult:
        raise RuntimeError("pika: unexpected frame")  # not a SourceError


class Kube:
    def __init__(self) -> None:
        self.scaled: list[tuple[str, int]] = []
        self.events: list[tuple[str, str]] = []
        self.annotated: list[tuple[str, Mapping[str, str | None]]] = []
        self.pods: list[Pod] = []
        self.failing_pods: set[str] = set()
        self.status_error: KubeError | None = None
        self.on_scale: Any = None

    async def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        return {"amqpUrl": "amqp://u:p@rabbit/"}

    async def read_replicas(self, namespace: str, target: ScaleTargetRef) -> int:
        raise AssertionError("replicas come from the cache")

    async def scale(self, namespace: str, target: ScaleTargetRef, replicas: int) -> None:
        self.scaled.append((namespace, replicas))
        if self.on_scale is not None:
            self.on_scale()

    async def read_selector(self, namespace: str, target: ScaleTargetRef) -> str:
        return "app=worker"

    async def list_pods(self, namespace: str, selector: str) -> list[Pod]:
        return list(self.pods)

    async def annotate_pod(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        if name in self.failing_pods:
            raise KubeError("Timeout", f"Pod {namespace}/{name}: no answer")
        self.annotated.append((name, dict(annotations)))

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        if self.status_error is not None:
            raise self.status_error

    async def emit_event(
        self, about: ObjectRef, event_type: str, reason: str, message: str
    ) -> None:
        self.events.append((event_type, reason))

    async def list_hpas(self, namespace: str) -> list[HpaTarget]:
        return []


def body(namespace: str, protect: bool = False, min_replicas: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": "qs", "uid": namespace, "generation": 1},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
            "minReplicas": min_replicas,
            "maxReplicas": 10,
            "source": {"rabbitmq": {"queue": "jobs", "connectionSecretRef": {"name": "s"}}},
            "behavior": {"scaleDown": {"protectBusyWorkers": protect,
                                       "stabilizationSeconds": 0, "cooldownSeconds": 0}},
        },
    }


def engine(
    kube: Kube, source: Source, *namespaces: str, replicas: int = 1, protect: bool = False,
    fast_path: bool = False, leading: Any = lambda: True,
) -> Engine:
    fleet, cache = Fleet(), ReplicaCache()
    for namespace in namespaces:
        fleet.upsert(body(namespace, protect), NOW)
        cache.set(namespace, "worker", replicas)
    return Engine(kube, fleet, cache, Metrics(CollectorRegistry(), process=False),
                  lambda broker: source, EngineSettings(fast_path=fast_path), clock=lambda: NOW,
                  leading=leading)


# --- 1. critical: a peek raising anything but SourceError stops every QueueScaler's tick ---


async def test_a_peek_failure_of_any_class_leaves_the_tick_going() -> None:
    """CRITICAL. Brokers.peek catches only SourceError (sample() catches every Exception).
    A source whose peek raises anything else (a pika/aiormq internal error, a bug) escapes
    Engine.tick; while it lasts no QueueScaler on any broker is sampled or scaled."""
    kube = Kube()
    running = engine(kube, PeekingSource(ready=50), "settling", "other", fast_path=True)
    settling = running.fleet.get("settling", "qs")
    assert settling is not None
    # scaled 2 s ago: it is peeked this tick (management counts still predate the scale)
    settling.memory = dataclasses.replace(
        settling.memory, state=ScalerState(last_scale_time=NOW - 2)
    )
    await running.tick(NOW)  # no exception escapes the tick
    assert ("other", 5) in kube.scaled, "an unrelated QueueScaler was not acted on at all"


# --- 2. major: a pod mark that failed does not hold the scale-down ---


async def test_a_failed_deletion_cost_mark_holds_the_scale_down() -> None:
    """MAJOR (never a busy worker stopped / protection fails closed). Pods.annotate logs a
    KubeError and the engine scales anyway. The busy pod still carries the -1 ("idle") mark
    an earlier look left on it, so the ReplicaSet removes it first."""
    kube = Kube()
    kube.pods = [
        Pod("w-0", "10.0.0.1", deletion_cost="-1", marked_by="qs"),  # idle then, busy now
        Pod("w-1", "10.0.0.2", deletion_cost="-1", marked_by="qs"),
        Pod("w-2", "10.0.0.3", deletion_cost="-1", marked_by="qs"),
    ]
    kube.failing_pods = {"w-0"}
    clients = [
        BrokerClient("/", "w-0", "10.0.0.1", consumers=1, unacked=1),
        BrokerClient("/", "w-1", "10.0.0.2", consumers=1, unacked=0),
        BrokerClient("/", "w-2", "10.0.0.3", consumers=1, unacked=0),
    ]
    running = engine(kube, Source(unacked=1, clients=clients), "a", replicas=3, protect=True)
    await running.tick(NOW)
    assert kube.scaled == [], (
        f"scaled {kube.scaled} although the busy pod w-0 still carries deletion cost -1"
    )


# --- 3. major: busy connections that match no pod are under-counted ---


def _protected_plan(pods: Sequence[Pod], clients: Sequence[BrokerClient], current: int) -> Any:
    seen = Observations(
        now=NOW, answer={Q: idle_sample(unacked=1)}, current=current,
        workers=WorkerLook(tuple(pods), tuple(clients)),
    )
    return plan(spec(), Memory(current_replicas=current), seen, generation=1, name="qs")


def test_a_busy_connection_on_no_pod_holds_even_when_every_pod_matched() -> None:
    """MAJOR (protection fails closed). WorkerReport.protected = busy + unmatched-if-any-
    unattributed. A pod with a second, unnamed connection (shared host-network IP) holding a
    message is counted idle: unattributed=1, unmatched=0 -> protected=0, every pod marked -1,
    and the scale-down goes ahead; the busy pod may be the one removed."""
    pods = [Pod("w-0", "10.0.0.9"), Pod("w-1", "10.0.0.9")]  # hostNetwork: one IP
    clients = [
        BrokerClient("/", "w-0", "10.0.0.9", consumers=1, unacked=0),
        BrokerClient("/", "w-1", "10.0.0.9", consumers=1, unacked=0),
        BrokerClient("/", None, "10.0.0.9", consumers=1, unacked=1),  # busy, unplaceable
    ]
    made = _protected_plan(pods, clients, current=2)
    assert made.scale_to is None, (
        f"scaled 2 -> {made.scale_to} with a busy connection no pod could be tied to;"
        f" marks {made.marks}"
    )


def test_busy_connections_with_an_empty_pod_listing_hold_the_pool() -> None:
    """MAJOR (protection fails closed). The pod listing came back empty (selector just
    changed, informer lag, wrong namespace) while three connections hold messages:
    unmatched=0, so protected=0 and the pool is shrunk to the backlog's answer."""
    clients = [BrokerClient("/", f"w-{i}", f"10.0.0.{i}", consumers=1, unacked=1)
               for i in range(3)]
    made = _protected_plan((), clients, current=3)
    assert made.scale_to is None, f"scaled 3 -> {made.scale_to} with 3 busy, unplaced workers"


# --- 4. major: a channel whose in-flight count is unknown is taken for an idle one ---


def test_a_channel_with_an_unknown_unacked_count_counts_as_busy() -> None:
    """MAJOR (protection fails closed). parse_client_connections reads a missing or
    malformed messages_unacknowledged as 0 (`_channel_count(...) or 0`), so the consumer's
    pod is matched as idle, marked -1 and removed first. Unknown must not mean idle."""
    connections = json.dumps([{"name": "c1", "vhost": "/", "user_provided_name": "w-0"}])
    channels = json.dumps([{
        "vhost": "/", "connection_details": {"name": "c1", "peer_host": "10.0.0.1"},
        "consumer_count": 1, "messages_unacknowledged": "n/a",  # or absent: stats pending
    }])
    clients = parse_client_connections(connections.encode(), channels.encode(), {"/"})
    report = match_workers([Pod("w-0", "10.0.0.1"), Pod("w-1", "10.0.0.2")], clients, {Q})
    assert report.protected >= 1, (
        f"w-0 holds an unknown number of messages and counts as idle: {clients}"
    )


# --- 5. major: lastDecision.message has no bound; the CRD caps it at 1024 ---


def test_the_decision_message_fits_the_crd() -> None:
    """MAJOR (a status the CRD refuses blocks every later status write). The busy note
    quotes look.problem (a KubeError message carrying the selector, or the engine's
    unbounded `listing failed: {exception!r}`) into Decision.message, which is written to
    status.lastDecision.message without truncation; the CRD's maxLength is 1024."""
    selector = ",".join(f"label-{i}.example.com/key={'v' * 60}" for i in range(8))
    problem = (f"the target's pods could not be listed: pods in ns matching {selector!r}: "
               f"HTTP 500 Internal Server Error: {'x' * 300}")
    seen = Observations(
        now=NOW, answer={Q: idle_sample()}, current=5,
        workers=WorkerLook(clients=None, problem=problem),
    )
    made = plan(spec(), Memory(current_replicas=5), seen, generation=1, name="qs")
    assert made.status is not None
    message = made.status["lastDecision"]["message"]
    assert len(message) <= 1024, f"lastDecision.message is {len(message)} chars (CRD max 1024)"


# --- 6. major: a failed status write repeats the "failure started" log lines every tick ---


async def test_a_failing_status_write_logs_its_failure_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MAJOR (logged once when it starts). Plan.warnings are computed against
    memory.status_json, which only moves when the write succeeds, and logged before the
    write. With the apiserver refusing status writes (or the CRD refusing the status, see
    above) "BrokerReachable is False" etc. are logged again on every tick, for every
    QueueScaler, plus a "status not written" line each: 10,000 scalers -> 30,000 lines/tick."""
    kube = Kube()
    kube.status_error = KubeError("ApiError", "QueueScaler a/qs: HTTP 500")
    running = engine(kube, Source(error=SourceError(ErrorKind.UNREACHABLE, "refused")), "a")
    scaler = running.fleet.get("a", "qs")
    assert scaler is not None
    counts = []
    for n in range(3):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            scaler.next_due = 0
            await running.tick(NOW + 15 * n)
        counts.append(sum(1 for r in caplog.records if r.levelno >= logging.WARNING))
    assert counts[1] == 0 and counts[2] == 0, f"warning lines per tick: {counts}"


# --- 7. major: a refused scale posts a Warning Event on every tick ---


def test_a_refused_scale_posts_its_warning_once() -> None:
    """MAJOR (unbounded Events). ScaleFailed is not deduplicated like WouldScale is
    (announced_desired): a scale the apiserver keeps refusing (RBAC, admission webhook,
    quota) posts a new Event every polling interval for every QueueScaler."""
    failure = Failure("Forbidden", "not allowed to patch deployments/scale")
    memory = Memory(current_replicas=1)
    posted = []
    for n in range(3):
        seen = Observations(now=NOW + 15 * n, answer={Q: QueueSample(50, 0, 1, NOW + 15 * n)},
                            current=1, scale_failure=failure)
        made = plan(spec(), memory, seen, generation=1, name="qs")
        memory = made.memory
        posted.append([e.reason for e in made.events])
    assert posted[1:] == [[], []], f"events per tick: {posted}"


# --- 8. major: leadership is checked once per tick, not before acting ---


async def test_a_replica_that_lost_the_lease_mid_tick_stops_acting() -> None:
    """MAJOR (two replicas act at once). Engine.run asks leading() once per tick; a tick
    that outlives the renew deadline (slow apiserver: 20 s request timeouts, 10,000
    scalers at concurrency 32) goes on scaling after the lease lapsed and a standby took
    over. Here leadership ends with the first scale; the second scaler is scaled anyway."""
    kube = Kube()
    state = {"leading": True}

    def lose() -> None:
        state["leading"] = False

    kube.on_scale = lose
    running = engine(kube, Source(ready=50), "a", "b", leading=lambda: state["leading"])
    await running.tick(NOW)
    assert len(kube.scaled) == 1, f"scaled after losing the lease: {kube.scaled}"


# --- 9. minor: the bounds override fail-closed protection ---


def test_a_lowered_max_replicas_is_obeyed_even_with_busy_workers_unknown() -> None:
    """MINOR, kept by design: maxReplicas is the user's explicit cap, and it wins over the
    fail-closed hold (docs/safe-scale-down.md says so). Lowering it while the look fails
    cuts the pool to it; the decision says max-bound."""
    seen = Observations(
        now=NOW, answer={Q: QueueSample(500, 40, 10, NOW)}, current=10,
        workers=WorkerLook(clients=None, problem="the broker's consumers could not be listed"),
    )
    made = plan(spec(maxReplicas=4), Memory(current_replicas=10), seen, generation=1, name="qs")
    assert made.scale_to == 4
