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

from queuescaler.core.decision import Recommendation, ScalerState
from queuescaler.core.plan import calls_now, peeked
from queuescaler.core.sample import QueueRef, QueueSample, SampleResult
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


def live(ready: int) -> QueueSample:
    """What a passive declare gives: ready and consumers, nothing in flight, incomplete."""
    return QueueSample(ready=ready, unacked=0, consumers=1, taken_at=NOW, complete=False)


@pytest.mark.parametrize(
    ("current", "ready", "state", "overrides", "early"),
    [
        pytest.param(1, 50, ScalerState(), {}, True, id="burst-on-one"),
        pytest.param(5, 120, ScalerState(), {}, True, id="burst-on-five"),
        pytest.param(5, 50, ScalerState(), {}, False, id="ready-alone-needs-no-more"),
        pytest.param(10, 110, ScalerState(), {}, False, id="within-tolerance"),
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
    assert calls_now(spec(**overrides), live(ready), current, state, NOW) is early


def test_which_pools_are_peeked_between_samples() -> None:
    assert peeked(spec(minReplicas=0), 0)
    assert peeked(spec(), 1) and peeked(spec(), 19)
    assert not peeked(spec(), 20), "at its maximum it cannot grow"
    assert not peeked(spec(paused=True), 3)
    assert not peeked(spec(), None), "replicas unknown: the full sample decides"
    assert not peeked(None, 3)
    assert not peeked(spec(minReplicas=2), 0), "below its minimum: its own tick restores it"


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
