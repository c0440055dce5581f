"""The engine carries out plans: what it records and survives (defects 7, 9, 12, 15, 17, 18
of "11 Never a wrong scale"), on fakes injected where the apiserver and broker would be."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from queuescaler.core.sample import ErrorKind, QueueRef, QueueSample, SampleResult, SourceError
from queuescaler.core.spec import ScaleTargetRef
from queuescaler.core.workers import Pod
from queuescaler.engine import Engine, EngineSettings
from queuescaler.fleet import Fleet, ReplicaCache
from queuescaler.kube.client import HpaTarget, KubeError, NotFound, ObjectRef
from queuescaler.metrics import Metrics

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0


class Source:
    def __init__(self, ready: int = 0, error: SourceError | None = None) -> None:
        self.ready = ready
        self.error = error
        self.closed = False

    async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
        if self.error is not None:
            raise self.error
        return {q: QueueSample(self.ready, 0, 1, NOW) for q in queues}

    async def close(self) -> None:
        self.closed = True


class Kube:
    def __init__(self, secret: Exception | None = None) -> None:
        self.secret_error = secret
        self.secret_reads = 0
        self.scaled: list[tuple[str, int]] = []
        self.events: list[tuple[str, str]] = []
        self.status_missing = False

    async def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        self.secret_reads += 1
        if self.secret_error is not None and namespace == "broken":
            raise self.secret_error
        return {"amqpUrl": "amqp://u:p@rabbit/"}

    async def read_replicas(self, namespace: str, target: ScaleTargetRef) -> int:
        raise AssertionError("replicas come from the cache")

    async def scale(self, namespace: str, target: ScaleTargetRef, replicas: int) -> None:
        self.scaled.append((namespace, replicas))

    async def read_selector(self, namespace: str, target: ScaleTargetRef) -> str:
        return "app=worker"

    async def list_pods(self, namespace: str, selector: str) -> list[Pod]:
        return []

    async def annotate_pod(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        pass

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        if self.status_missing:
            raise NotFound("NotFound", "gone")

    async def emit_event(
        self, about: ObjectRef, event_type: str, reason: str, message: str
    ) -> None:
        self.events.append((event_type, reason))

    async def list_hpas(self, namespace: str) -> list[HpaTarget]:
        return []


def body(namespace: str, replicas_min: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": "qs", "uid": namespace, "generation": 1},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
            "minReplicas": replicas_min,
            "maxReplicas": 10,
            "source": {"rabbitmq": {"queue": "jobs", "connectionSecretRef": {"name": "s"}}},
            "behavior": {"scaleDown": {"protectBusyWorkers": False}},
        },
    }


def engine(kube: Kube, source: Source, *namespaces: str, replicas: int = 1) -> Engine:
    fleet, cache = Fleet(), ReplicaCache()
    for namespace in namespaces:
        fleet.upsert(body(namespace), NOW)
        cache.set(namespace, "worker", replicas)
    return Engine(kube, fleet, cache, Metrics(CollectorRegistry(), process=False),
                  lambda broker: source, EngineSettings(fast_path=False), clock=lambda: NOW)


def value(engine: Engine, name: str, **labels: str) -> float | None:
    return engine.metrics.registry.get_sample_value(name, labels)


async def test_defect_17_a_scale_is_counted_in_its_direction() -> None:
    kube = Kube()
    running = engine(kube, Source(ready=50), "a")
    await running.tick(NOW)
    assert kube.scaled == [("a", 5)]
    labels = {"scaler_namespace": "a", "scaler": "qs", "reason": "backlog"}
    assert value(running, "queuescaler_decisions_total", direction="up", **labels) == 1
    assert value(running, "queuescaler_decisions_total", direction="hold", **labels) is None


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ConnectionResetError("reset"), id="transport"),
        pytest.param(ValueError("not JSON"), id="decode"),
        pytest.param(KubeError("Timeout", "no answer"), id="kube-error"),
    ],
)
async def test_defect_15_a_secret_that_cannot_be_read_fails_only_its_scaler(
    error: Exception,
) -> None:
    kube = Kube(secret=error)
    running = engine(kube, Source(ready=50), "broken", "fine")
    await running.tick(NOW)
    assert kube.scaled == [("fine", 5)]
    assert ("Warning", "SecretUnreadable") in kube.events or ("Warning", "Timeout") in kube.events


async def test_defect_18_refused_credentials_reread_the_secret_at_once() -> None:
    kube = Kube()
    running = engine(kube, Source(error=SourceError(ErrorKind.AUTH, "HTTP 401")), "a")
    await running.tick(NOW)
    reads = kube.secret_reads
    scaler = running.fleet.get("a", "qs")
    assert scaler is not None
    scaler.next_due = 0
    await running.tick(NOW + 1)
    assert kube.secret_reads == reads + 1


async def test_defect_12_a_status_404_forgets_the_scaler_and_its_series() -> None:
    kube = Kube()
    kube.status_missing = True
    running = engine(kube, Source(ready=5), "a")
    await running.tick(NOW)
    assert running.fleet.get("a", "qs") is None
    assert value(running, "queuescaler_scaler_ticks_total",
                 scaler_namespace="a", scaler="qs") is None


async def test_defect_12_a_source_nobody_uses_is_closed() -> None:
    kube, source = Kube(), Source(ready=5)
    running = engine(kube, source, "a")
    await running.tick(NOW)
    running.brokers._used = {key: 0.0 for key in running.brokers._used}  # long idle
    assert not source.closed
    running.brokers.prune(NOW)
    await asyncio.sleep(0)  # the close runs as a task of its own
    await asyncio.sleep(0)
    assert source.closed  # by prune, before any shutdown
    assert not running.brokers._sources


async def test_defect_12_secrets_nobody_reads_are_forgotten() -> None:
    kube, source = Kube(), Source(ready=5)
    running = engine(kube, source, "a")
    await running.tick(NOW)
    secrets = running.brokers.secrets
    assert secrets._entries
    secrets.prune(NOW)
    assert secrets._entries  # still fresh
    secrets.prune(NOW + 10 * 3600)
    assert not secrets._entries


async def test_defect_7_taking_the_lease_rebuilds_the_state_from_status_as_of_then() -> None:
    leading = False
    fleet = Fleet()
    stored = {"recommendations": [{"at": "2027-01-15T07:50:00Z", "replicas": 9}]}
    fleet.upsert({**body("a"), "status": stored}, NOW - 3600, follow_status=True)
    running = Engine(Kube(), fleet, ReplicaCache(), Metrics(CollectorRegistry(), process=False),
                     lambda broker: Source(), EngineSettings(tick_seconds=0.01, fast_path=False),
                     clock=lambda: NOW, leading=lambda: leading)
    scaler = fleet.get("a", "qs")
    assert scaler is not None
    assert scaler.memory.state.recommendations[-1].at == NOW - 3600  # as the event saw it
    stop = asyncio.Event()
    task = asyncio.create_task(running.run(stop))
    await asyncio.sleep(0.05)
    leading = True
    await asyncio.sleep(0.05)
    stop.set()
    await task
    assert scaler.memory.state.recommendations[-1].at >= NOW  # renewed when the Lease came


async def test_defect_9_liveness_follows_the_loop() -> None:
    running = engine(Kube(), Source(), "a")
    assert running.alive()
    running._looped_at -= 10_000
    assert not running.alive()


async def test_defect_8_an_hpa_on_the_same_target_stops_the_queuescaler() -> None:
    class WithHpa(Kube):
        async def list_hpas(self, namespace: str) -> list[HpaTarget]:
            return [HpaTarget("keda-hpa-worker",
                              ScaleTargetRef("apps/v1", "Deployment", "worker"))]

    kube = WithHpa()
    running = engine(kube, Source(ready=50), "a")
    await running.tick(NOW)
    assert kube.scaled == []
    assert ("Warning", "TargetConflict") in kube.events


async def test_defect_13_a_kube_reason_reaches_the_condition_as_it_is() -> None:
    class NoScale(Kube):
        async def read_replicas(self, namespace: str, target: ScaleTargetRef) -> int:
            raise KubeError("UnsupportedTarget", "DaemonSet a/worker has no /scale subresource")

    kube = NoScale()
    fleet = Fleet()
    fleet.upsert(body("a"), NOW)
    running = Engine(kube, fleet, ReplicaCache(), Metrics(CollectorRegistry(), process=False),
                     lambda broker: Source(), EngineSettings(fast_path=False), clock=lambda: NOW)
    await running.tick(NOW)
    assert ("Warning", "UnsupportedTarget") in kube.events


async def test_a_hung_broker_delays_only_its_own_queuescalers() -> None:
    """Two brokers, one of which answers nothing: the other's QueueScaler is decided at the
    first tick, no tick after waits for the hung one again, and its QueueScaler is decided
    at the first tick after its answer came (review: one slow cluster held every tick up
    to its timeout)."""

    class Hanging(Source):
        def __init__(self) -> None:
            super().__init__(ready=70)
            self.answer = asyncio.Event()
            self.rounds = 0

        async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
            self.rounds += 1
            await self.answer.wait()
            return await super().sample(queues)

    class TwoBrokers(Kube):
        async def read_secret(self, namespace: str, name: str) -> dict[str, str]:
            return {"amqpUrl": f"amqp://u:p@{namespace}/"}

    kube, hung, fine = TwoBrokers(), Hanging(), Source(ready=50)
    fleet, cache = Fleet(), ReplicaCache()
    for namespace in ("hung", "fine"):
        fleet.upsert(body(namespace), NOW)
        cache.set(namespace, "worker", 1)
    running = Engine(
        kube, fleet, cache, Metrics(CollectorRegistry(), process=False),
        lambda broker: hung if "hung" in str(broker) else fine,
        EngineSettings(fast_path=False, round_wait_seconds=0.2), clock=lambda: NOW,
    )
    await asyncio.wait_for(running.tick(NOW), 30)
    assert kube.scaled == [("fine", 5)]
    scaler = running.fleet.get("hung", "qs")
    assert scaler is not None and scaler.next_due <= NOW + 1  # still due
    # Were a late broker waited for again, each tick would now take an hour.
    running.settings = dataclasses.replace(running.settings, round_wait_seconds=3600)
    for second in range(1, 4):  # not waited for again, nor asked again while answering
        await asyncio.wait_for(running.tick(NOW + second), 30)
    assert hung.rounds == 1 and kube.scaled == [("fine", 5)]
    hung.answer.set()
    await asyncio.sleep(0)
    await running.tick(NOW + 4)
    assert kube.scaled == [("fine", 5), ("hung", 7)]
    await running.brokers.close()


async def test_a_cancelled_round_does_not_poison_later_ticks() -> None:
    """Review s9 L3: a source whose sample was cancelled left a round whose result raised
    CancelledError at every later tick, and the loop died."""

    class Cancelled(Source):
        calls = 0

        async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
            Cancelled.calls += 1
            if Cancelled.calls == 1:
                raise asyncio.CancelledError
            return await super().sample(queues)

    kube = Kube()
    running = engine(kube, Cancelled(ready=50), "a")
    await running.tick(NOW)
    scaler = running.fleet.get("a", "qs")
    assert scaler is not None
    for second in (1, 2):
        scaler.next_due = 0
        await running.tick(NOW + second)
    assert kube.scaled == [("a", 5)]


async def test_a_round_nobody_asks_for_any_more_is_dropped_not_served_later() -> None:
    """Review s9 M1: a QueueScaler deleted while its broker answered, then applied again: the
    old round's answer was served minutes later as if fresh."""
    hold = asyncio.Event()

    class Late(Source):
        rounds = 0

        async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
            self.rounds += 1
            await hold.wait()
            return await super().sample(queues)

    kube, late = Kube(), Late(ready=70)
    running = Engine(kube, Fleet(), ReplicaCache(), Metrics(CollectorRegistry(), process=False),
                     lambda broker: late, EngineSettings(fast_path=False, round_wait_seconds=0.05),
                     clock=lambda: NOW)
    running.fleet.upsert(body("a"), NOW)
    running.replicas.set("a", "worker", 1)
    await running.tick(NOW)  # the round is late
    running.fleet.remove("a", "qs")
    hold.set()
    await asyncio.sleep(0.05)  # it answers while nobody asks
    (going,) = running.brokers._rounds.values()
    going.finished[0] -= 3600  # ... and an hour goes by
    running.fleet.upsert(body("a"), NOW + 3600)
    await running.tick(NOW + 3600)  # applied again: asked afresh, not served the old answer
    assert kube.scaled == []
    await asyncio.sleep(0.05)
    assert late.rounds == 2
    await running.tick(NOW + 3601)  # the fresh answer
    assert kube.scaled == [("a", 7)]
    await running.brokers.close()


async def test_a_clock_stepped_back_delays_the_next_sample_one_interval_not_the_step() -> None:
    """Review 37: the schedule stayed on the clock as it was, so after a 30-minute step back
    no pool was sampled or decided for 30 minutes, and a flood held at 2 replicas."""
    kube, source = Kube(), Source(ready=20)
    running = engine(kube, source, "a")
    for second in range(0, 301, 15):
        await running.tick(NOW + second)
    assert kube.scaled == [("a", 2)]
    source.ready = 500
    stepped = NOW + 300 - 1800
    for second in range(15, 91, 15):
        await running.tick(stepped + second)
    assert kube.scaled[-1] == ("a", 10)  # within a cooldown and an interval, not 1,800 s


class Hpas(Kube):
    """An HPA (KEDA's, say) on the target until `hpa` turns False."""

    hpa = True

    async def list_hpas(self, namespace: str) -> list[HpaTarget]:
        target = ScaleTargetRef("apps/v1", "Deployment", "worker")
        return [HpaTarget("keda-hpa-worker", target)] if self.hpa else []


@pytest.mark.parametrize("case", ["hpa-deleted", "secret-created"])
async def test_caches_kept_before_a_clock_stepped_back_expire_within_their_length(
    case: str,
) -> None:
    """Review 38: the HPA and Secret caches expired on the clock as it was, so an HPA
    deleted (or a Secret created) after a 30-minute step back went unseen for 30 minutes,
    the pool "not acting" while 500 messages waited."""
    kube = Hpas(secret=NotFound("NotFound", 'secrets "s" not found') if case != "hpa-deleted"
                else None)
    kube.hpa = case == "hpa-deleted"
    namespace = "a" if case == "hpa-deleted" else "broken"
    running = engine(kube, Source(ready=500), namespace, replicas=2)
    for second in range(0, 300, 15):
        await running.tick(NOW + second)
    assert not kube.scaled
    kube.hpa, kube.secret_error = False, None
    stepped = NOW + 300 - 1800
    for second in range(0, 121, 15):
        await running.tick(stepped + second)
    assert kube.scaled, "still held by a cache stamped before the step"
