"""Every pool reacts to a burst within a tick (issue 14), not only pools at zero: live counts
are peeked between samples for pools that may grow, and a pool whose ready messages alone
call for more replicas is decided at once. Scale-down still waits for the full sample."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from test_review_findings import Kube, Source, body

from queuescaler.core.decision import Recommendation, ScalerState, decide
from queuescaler.core.plan import Memory, calls_now, peeked
from queuescaler.core.sample import ErrorKind, QueueRef, QueueSample, SampleResult, SourceError
from queuescaler.core.spec import QueueScalerSpec
from queuescaler.engine import Engine, EngineSettings
from queuescaler.fleet import Fleet, ReplicaCache
from queuescaler.metrics import Metrics
from queuescaler.sources.registry import parse_spec

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0


def spec(**overrides: Any) -> QueueScalerSpec:
    raw: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "minReplicas": 1, "maxReplicas": 20, "target": {"messagesPerReplica": 10},
        "source": {"rabbitmq": {"queue": "jobs", "connectionSecretRef": {"name": "s"}}},
    }
    raw.update(overrides)
    return parse_spec(raw)


def live(ready: int, consumers: int = 1) -> QueueSample:
    """What a passive declare gives: ready and consumers, nothing in flight, incomplete."""
    return QueueSample(ready=ready, unacked=0, consumers=consumers, taken_at=NOW,
                       complete=False)


@pytest.mark.parametrize(
    ("current", "ready", "state", "overrides", "early"),
    [
        pytest.param(1, 50, ScalerState(), {}, True, id="burst-on-one"),
        pytest.param(5, 120, ScalerState(), {}, True, id="burst-on-five"),
        pytest.param(5, 50, ScalerState(), {}, False, id="ready-alone-needs-no-more"),
        pytest.param(10, 110, ScalerState(), {}, False, id="within-tolerance"),
        pytest.param(5, 90, ScalerState(), {}, True, id="every-pod-consuming-any-growth"),
        pytest.param(20, 900, ScalerState(), {}, False, id="at-its-maximum"),
        pytest.param(2, 50, ScalerState(last_scale_time=NOW - 5), {}, False,
                     id="in-scale-up-cooldown"),
        pytest.param(2, 50, ScalerState(last_scale_time=NOW - 15), {}, True,
                     id="cooldown-over"),
        pytest.param(2, 50, ScalerState(recommendations=(Recommendation(NOW - 3, 6),)), {},
                     False, id="last-decision-already-asked-as-much"),
        pytest.param(2, 80, ScalerState(recommendations=(Recommendation(NOW - 3, 6),)), {},
                     True, id="the-burst-grew-past-the-last-decision"),
        pytest.param(0, 1, ScalerState(), {"minReplicas": 0}, True, id="at-zero-activates"),
        pytest.param(0, 0, ScalerState(), {"minReplicas": 0}, False, id="at-zero-empty"),
        pytest.param(1, 0, ScalerState(), {}, False, id="empty-queue-never-early"),
    ],
)
def test_a_peeked_pool_is_decided_early_only_when_its_ready_messages_call_for_growth(
    current: int, ready: int, state: ScalerState, overrides: dict[str, Any], early: bool,
) -> None:
    memory = Memory(state=state, current_replicas=current)
    assert calls_now(spec(**overrides), live(ready, current), memory, NOW) is early


@pytest.mark.parametrize(
    ("ready", "consumers", "early"),
    [
        pytest.param(90, 2, False, id="pods-starting-less-than-double-waits-for-the-sample"),
        pytest.param(100, 2, True, id="pods-starting-double-is-early"),
        pytest.param(60, 5, True, id="every-pod-consuming-beyond-tolerance-is-early"),
    ],
)
def test_while_pods_start_an_early_decision_at_least_doubles_the_pool(
    ready: int, consumers: int, early: bool
) -> None:
    # a flood's ready count climbs every tick while the pods it called for start: one
    # early step per replica's worth would be a scale event a second
    assert calls_now(spec(), live(ready, consumers), at(5), NOW) is early


def at(current: int | None, state: ScalerState | None = None) -> Memory:
    return Memory(state=state or ScalerState(), current_replicas=current)


def test_which_pools_are_peeked_between_samples() -> None:
    assert peeked(spec(minReplicas=0), at(0), NOW)
    assert peeked(spec(), at(1), NOW) and peeked(spec(), at(19), NOW)
    assert not peeked(spec(), at(20), NOW), "at its maximum it cannot grow"
    assert not peeked(spec(paused=True), at(3), NOW)
    assert not peeked(spec(), at(None), NOW), "replicas unknown: the full sample decides"
    assert not peeked(None, at(3), NOW)
    assert not peeked(spec(minReplicas=2), at(0), NOW), "below its minimum: its tick restores it"
    cooling = ScalerState(last_scale_time=NOW - 5)
    assert not peeked(spec(), at(3, cooling), NOW), "in its scale-up cooldown it cannot grow"
    assert peeked(spec(minReplicas=0), at(0, cooling), NOW), "waking skips the cooldown"


def test_one_burst_makes_one_early_decision_until_another_replicas_worth_arrives() -> None:
    memory = dataclasses.replace(at(2), early_ready=50)
    assert not calls_now(spec(), live(59), memory, NOW)
    assert calls_now(spec(), live(60), memory, NOW)
    assert not calls_now(spec(minReplicas=0), live(55), dataclasses.replace(at(0), early_ready=50),
                         NOW), "at zero too (a dry run or a refusal would repeat it every tick)"


class LiveSource(Source):
    """A broker whose live counts (peek) show `peek_ready` while the management sample,
    taken at the interval, showed an idle queue."""

    def __init__(self, peek_ready: int) -> None:
        super().__init__(ready=0)
        self.peek_ready = peek_ready
        self.peeks = 0

    async def peek(self, queues: Collection[QueueRef]) -> SampleResult:
        self.peeks += 1
        return {q: QueueSample(self.peek_ready, 0, 1, NOW, complete=False) for q in queues}


def engine_at(replicas: int, source: Source, *, fast_path: bool) -> tuple[Engine, Kube]:
    kube = Kube()
    fleet, cache = Fleet(), ReplicaCache()
    raw = body("ns")
    raw["spec"].update(maxReplicas=10, target={"messagesPerReplica": 10})
    fleet.upsert(raw, NOW)
    cache.set("ns", "worker", replicas)
    running = Engine(kube, fleet, cache, Metrics(CollectorRegistry(), process=False),
                     lambda broker: source, EngineSettings(fast_path=fast_path),
                     clock=lambda: NOW)
    return running, kube


async def test_a_burst_on_a_pool_at_one_scales_it_on_the_next_tick_not_at_its_interval() -> None:
    source = LiveSource(peek_ready=0)
    running, kube = engine_at(1, source, fast_path=True)
    await running.tick(NOW)  # its regular sample: idle, held at 1
    assert kube.scaled == []
    source.peek_ready = 50  # a burst, one second later; its next sample is 14 s away
    await running.tick(NOW + 1)
    assert kube.scaled == [("ns", 5)]


async def test_without_the_fast_path_the_burst_waits_for_the_interval() -> None:
    source = LiveSource(peek_ready=50)
    source.ready = 0
    running, kube = engine_at(1, source, fast_path=False)
    await running.tick(NOW)
    source.ready = 50
    await running.tick(NOW + 1)
    assert kube.scaled == [] and source.peeks == 0


async def test_an_emptied_queue_seen_live_never_shrinks_a_pool_before_its_sample() -> None:
    """Live counts cannot see messages in flight: scale-down stays on the full sample."""
    source = LiveSource(peek_ready=0)
    source.ready, source.unacked = 0, 0
    running, kube = engine_at(5, source, fast_path=True)
    scaler = running.fleet.get("ns", "qs")
    assert scaler is not None
    scaler.next_due = NOW + 10
    scaler.memory = dataclasses.replace(scaler.memory, current_replicas=5)
    await running.tick(NOW + 1)
    assert kube.scaled == [] and source.peeks == 1


# --- an independent review of the first version (each test failed on it) ---------------

def raw_body(namespace: str = "ns", queue: str = "jobs", **spec_: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "metadata": {"namespace": namespace, "name": "qs", "uid": namespace, "generation": 1},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
            "minReplicas": 1, "maxReplicas": 10, "target": {"messagesPerReplica": 10},
            "source": {"rabbitmq": {"queue": queue, "connectionSecretRef": {"name": "s"}}},
            "behavior": {"scaleDown": {"protectBusyWorkers": False}},
        },
    }
    raw["spec"].update(spec_)
    return raw


class ManagedSource(Source):
    """Management sample: `ready`/`unacked` (or `error`); AMQP peek: `peek_ready`."""

    def __init__(self, peek_ready: int = 0) -> None:
        super().__init__(ready=0, unacked=15)  # 15 in flight: 2 replicas' worth, held at 2
        self.peek_ready = peek_ready
        self.samples = 0
        self.peeked: list[set[QueueRef]] = []

    async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
        self.samples += 1
        answer = dict(await super().sample(queues))
        answer.update({q: QueueSample(0, 0, 0, NOW) for q in queues if q.name == "zero-q"})
        return answer

    async def peek(self, queues: Collection[QueueRef]) -> SampleResult:
        self.peeked.append(set(queues))
        return {q: QueueSample(self.peek_ready, 0, 1, NOW, complete=False) for q in queues}


def make_engine(source: Source, *bodies: dict[str, Any], replicas: int = 2,
                **settings: Any) -> tuple[Engine, Kube, ReplicaCache]:
    kube, fleet, cache = Kube(), Fleet(), ReplicaCache()
    for raw in bodies:
        fleet.upsert(raw, NOW)
        cache.set(raw["metadata"]["namespace"], "worker", replicas)
    running = Engine(kube, fleet, cache, Metrics(CollectorRegistry(), process=False),
                     lambda broker: source, EngineSettings(**settings), clock=lambda: NOW)
    return running, kube, cache


# --- 1. a management outage during a burst: an early decision every tick, failures
#        counted per tick, the fallback (a scale-down here) reached in seconds ---

async def test_a_failing_management_api_does_not_make_every_tick_an_early_failed_decision() -> None:
    source = ManagedSource(peek_ready=0)
    body = raw_body(fallback={"replicas": 1, "afterFailures": 3})
    running, kube, _ = make_engine(source, body, replicas=2)
    await running.tick(NOW)  # regular sample: idle, held at 2
    assert kube.scaled == []
    source.error = SourceError(ErrorKind.UNREACHABLE, "management API down")
    source.peek_ready = 50  # AMQP still answers: a burst
    before = source.samples
    for second in range(1, 6):
        await running.tick(NOW + second)
    scaler = running.fleet.get("ns", "qs")
    assert scaler is not None
    # One early attempt at most for this burst, not one per tick; and 5 s of outage is not
    # 3 failed samples of a 15 s poll (the fallback is meant after ~45 s).
    assert source.samples - before <= 1, f"{source.samples - before} management requests in 5 s"
    assert scaler.memory.state.consecutive_failures <= 1
    # the burst, seen live, grows the pool at once; the outage does not shrink it
    assert kube.scaled == [("ns", 5)], f"early ticks: {kube.scaled}"


# --- 2. an early decision may shrink: calls_now reads memory.current_replicas,
#        plan() the real (watched) count ---

async def test_an_early_tick_never_scales_down_even_when_the_target_was_resized() -> None:
    source = ManagedSource(peek_ready=0)
    running, kube, cache = make_engine(source, raw_body(), replicas=2)
    await running.tick(NOW)  # regular: idle at 2
    cache.set("ns", "worker", 10)  # someone ran kubectl scale --replicas=10 (for a batch)
    source.peek_ready = 50  # the batch arrives: 5 replicas' worth ready
    await running.tick(NOW + 1)  # next regular sample at NOW + 15
    assert kube.scaled == [], f"scaled down {kube.scaled} on an early tick"


# --- 3. the "one burst, one early decision" guard needs a recommendation to be kept:
#        with both stabilization windows at 0 (allowed; the test helpers' own setting)
#        _compact keeps none, and a refused scale (dryRun here) is decided every tick ---

@pytest.mark.parametrize(
    ("overrides", "replicas"),
    [
        pytest.param({"behavior": {"scaleDown": {"protectBusyWorkers": False,
                                                 "stabilizationSeconds": 0}}}, 2,
                     id="at-work-zero-windows"),
        # at zero the guard did not apply at all (the docstring promised it)
        pytest.param({"minReplicas": 0}, 0, id="at-zero"),
    ],
)
async def test_a_dry_run_pool_is_not_decided_every_tick(
    overrides: dict[str, Any], replicas: int,
) -> None:
    source = ManagedSource(peek_ready=0)
    running, _, _ = make_engine(source, raw_body(dryRun=True, **overrides), replicas=replicas)
    await running.tick(NOW)
    source.peek_ready = 50
    before = source.samples
    for second in range(1, 6):
        await running.tick(NOW + second)
    assert source.samples - before <= 1, f"{source.samples - before} early decisions in 5 s"


# --- 4. pools at zero now share the budget with pools at work ---

async def test_pools_at_zero_are_peeked_every_tick_before_pools_at_work() -> None:
    source = ManagedSource(peek_ready=0)
    at_work = [raw_body(f"w{i}", queue=f"q{i}") for i in range(6)]
    resting = raw_body("zero", queue="zero-q", minReplicas=0)
    running, _, cache = make_engine(source, *at_work, resting, replicas=2, fast_path_budget=2)
    cache.set("zero", "worker", 0)
    await running.tick(NOW)  # regular: everyone sampled, memory knows the replica counts
    source.peeked.clear()
    for second in range(1, 5):
        await running.tick(NOW + second)
    zero = QueueRef("/", "zero-q")
    missed = [i for i, asked in enumerate(source.peeked, 1) if zero not in asked]
    assert not missed, f"the pool at zero was not peeked on ticks {missed}"


# --- 5. the tolerance rule is written twice, without decide()'s epsilon ---

def test_calls_now_agrees_with_the_dead_band_of_decide() -> None:
    spec = parse_spec(raw_body(maxReplicas=300, behavior={"tolerance": 0.29})["spec"])
    current, ready = 100, 1290  # wanted 129: +29, tolerance x current = 28.999999999999996
    state = ScalerState(recommendations=(Recommendation(NOW - 1, current),))
    live = QueueSample(ready, 0, current, NOW, complete=False)
    early = calls_now(spec, live, Memory(state=state, current_replicas=current), NOW)
    decision = decide(spec, QueueSample(ready, 0, current, NOW), current, state, NOW)
    # An early decision whose full decide() holds within tolerance records `current` as its
    # recommendation: calls_now is true again next tick, and the next, ...
    assert not (early and decision.recommendation == current)


async def test_an_early_tick_leaves_the_rate_readings_and_the_failure_count_alone() -> None:
    """Live counts a second after a poll are no span to measure a replica's speed by, and
    an early tick is not a sample: the throughput state stays as the last full one left it."""
    source = ManagedSource(peek_ready=0)
    running, kube, _ = make_engine(source, raw_body(), replicas=2)
    await running.tick(NOW)
    scaler = running.fleet.get("ns", "qs")
    assert scaler is not None
    before = scaler.memory.state
    source.peek_ready = 50
    await running.tick(NOW + 1)
    assert kube.scaled == [("ns", 5)]
    after = scaler.memory.state
    assert (after.readings, after.per_replica_rate, after.rate_measured) == (
        before.readings, before.per_replica_rate, before.rate_measured)
    assert after.last_scale_time == NOW + 1


class FailingPeeks(ManagedSource):
    async def peek(self, queues: Collection[QueueRef]) -> SampleResult:
        self.peeked.append(set(queues))
        raise SourceError(ErrorKind.TIMEOUT, "no answer within 5 s")


async def test_a_broker_whose_peek_failed_is_not_peeked_again_for_a_while() -> None:
    """Peeks run every tick: an AMQP endpoint that times out must not hold every tick up."""
    source = FailingPeeks()
    running, _, _ = make_engine(source, raw_body(), replicas=2)
    await running.tick(NOW)
    for second in range(1, 20):
        await running.tick(NOW + second)
    assert len(source.peeked) == 1, f"peeked {len(source.peeked)} times in 20 s"
    await running.tick(NOW + 31)
    assert len(source.peeked) == 2, "peeks resume after the backoff"
    # review 37: a clock that stepped back 30 minutes does not hold the back-off that long,
    # and (review 38) does not end it either: one back-off from the step
    stepped = NOW + 31 - 1800
    await running.tick(stepped)
    assert len(source.peeked) == 2, "a clock stepping back and forth would peek at each step"
    await running.tick(stepped + 31)
    assert len(source.peeked) == 3, "one back-off from the step, not 30 minutes"


def test_live_counts_below_the_statistics_never_undercount_a_pool_at_work() -> None:
    """Messages ready at the last statistics and gone now may be in flight, which the
    older unacked count cannot show: the snapshot stands, unless the pool was scaled
    moments ago (then the live counts decide, on a sample that may only grow it)."""
    from queuescaler.core.plan import _with_live_counts

    stats = QueueSample(ready=100, unacked=0, consumers=2, taken_at=NOW - 5)
    assert _with_live_counts(stats, live(0), scaled_lately=False) == stats
    after_scale = _with_live_counts(stats, live(0), scaled_lately=True)
    assert (after_scale.ready, after_scale.complete) == (0, False)
    burst = _with_live_counts(stats, live(300), scaled_lately=False)
    assert (burst.ready, burst.complete) == (300, True)


def test_an_early_tick_reports_its_decision_not_its_live_counts() -> None:
    """Live counts have no unacked and no rates: an early tick must not wipe the last
    sample's numbers from status and metrics, nor flip the conditions it set (a dashboard's
    publish rate went blank through every burst)."""
    from queuescaler.core.plan import Observations, plan

    written = {
        "backlog": {"ready": 0, "unacked": 15, "total": 15},
        "rates": {"publish": "2.5", "ack": "2.5"},
        "lastSampleTime": "2027-01-15T08:00:00Z",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Sampling", "message": "ok",
             "lastTransitionTime": "2027-01-15T07:00:00Z"},
            {"type": "BrokerReachable", "status": "False", "reason": "Unreachable",
             "message": "management API down", "lastTransitionTime": "2027-01-15T07:00:00Z"},
        ],
    }
    memory = Memory(current_replicas=2).wrote(written, NOW - 1)
    seen = Observations(now=NOW, live=live(50), current=2, early=True)
    made = plan(spec(), memory, seen, generation=1)
    assert made.scale_to == 5 and made.sample is None
    assert not made.status_events, made.status_events
    status = made.status if made.status is not None else written
    assert status["rates"] == written["rates"] and status["backlog"] == written["backlog"]
    assert status["lastSampleTime"] == written["lastSampleTime"]
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [
        ("Ready", "True"), ("BrokerReachable", "False")]


class SecretsByName(Kube):
    """Secrets as a namespace holds them: a name that is not there is NotFound."""

    def __init__(self, secrets: dict[str, str]) -> None:
        super().__init__()
        self.secrets = secrets

    async def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        from queuescaler.kube.client import NotFound

        if name not in self.secrets:
            raise NotFound("NotFound", f"Secret {namespace}/{name} not found")
        return {"amqpUrl": self.secrets[name]}


async def test_live_counts_reach_a_queuescaler_only_through_its_own_secret() -> None:
    """Seen in make test (test_isolation): a QueueScaler whose Secret is missing was woken
    by the live counts of a queue of the same name another QueueScaler peeked with its own
    credentials. Queues are named per broker: two brokers' `jobs` are two queues."""

    class PerBroker(Source):
        def __init__(self, url: str) -> None:
            super().__init__()
            self.url = url

        async def peek(self, queues: Collection[QueueRef]) -> SampleResult:
            ready = 50 if "@one/" in self.url else 0
            return {q: QueueSample(ready, 0, 0, NOW, complete=False) for q in queues}

    kube = SecretsByName({"one": "amqp://u:p@one/", "two": "amqp://u:p@two/"})
    fleet, cache = Fleet(), ReplicaCache()
    for namespace, secret in (("a", "one"), ("b", "two"), ("c", "missing")):
        raw = raw_body(namespace, minReplicas=0)
        raw["spec"]["source"]["rabbitmq"]["connectionSecretRef"]["name"] = secret
        fleet.upsert(raw, NOW)
        cache.set(namespace, "worker", 0)
    running = Engine(kube, fleet, cache, Metrics(CollectorRegistry(), process=False),
                     lambda broker: PerBroker(str(broker[1])), EngineSettings(),
                     clock=lambda: NOW)
    live = await running.brokers.peek(list(fleet), NOW)
    assert set(live) == {("a", "qs"), ("b", "qs")}
    assert (live[("a", "qs")].ready, live[("b", "qs")].ready) == (50, 0)
