"""Issue 16's defects that had no test of their own ("11 Never a wrong scale"): 5's
fail-closed branch, 12's selector cache and marks on a 404, 24's exact scenario, and 18/25's
log lines as the engine writes them.

The planner is driven as in test_plan_safety (its helpers, restated), the engine on
test_engine's fakes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from test_engine import NOW, Kube, Source, body, engine

from queuescaler.core.decision import Reason
from queuescaler.core.plan import Memory, Observations, Plan, WorkerLook, plan
from queuescaler.core.sample import BrokerClient, ErrorKind, QueueRef, QueueSample, SourceError
from queuescaler.core.spec import QueueScalerSpec, ScaleTargetRef
from queuescaler.core.workers import DELETION_COST, MARKED_BY, Pod
from queuescaler.engine import Engine, EngineSettings
from queuescaler.fleet import Fleet, ReplicaCache, Scaler
from queuescaler.kube.client import NotFound
from queuescaler.kube.pods import SELECTOR_REFRESH_SECONDS, Pods
from queuescaler.metrics import Metrics
from queuescaler.sources.registry import parse_spec

pytestmark = pytest.mark.unit

ENGINE_LOG = "queuescaler.engine"
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


def sample(ready: int = 0, unacked: int = 0) -> QueueSample:
    return QueueSample(ready, unacked, 1, NOW)


def tick(
    answer: Any, current: int = 10, the_spec: QueueScalerSpec | None = None, **kw: Any
) -> Plan:
    memory = kw.pop("memory", Memory(current_replicas=current))
    seen = Observations(now=kw.pop("now", NOW), answer=answer, current=current, **kw)
    return plan(the_spec or spec(), memory, seen, generation=1, name="qs")


def ready(made: Plan) -> tuple[bool, str, str]:
    condition = next(c for c in made.conditions if c.type == "Ready")
    return condition.status, condition.reason, condition.message


def written(made: Plan, at: float = NOW) -> Memory:
    """The memory after the engine carried the plan out (the status written, if any)."""
    return made.memory if made.status is None else made.memory.wrote(made.status, at)


# --- defect 5: a StatefulSet with a busy client on no pod keeps every replica ---

STS = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "w"}
STS_PODS = tuple(Pod(f"w-{i}", f"10.0.1.{i}") for i in range(6))


@pytest.mark.parametrize(
    "look",
    [
        pytest.param(
            WorkerLook(STS_PODS, (
                # idle, matched, each from its own IP (so not the busy one behind NAT)
                *(BrokerClient("/", f"w-{i}", f"10.0.1.{i}", 1, 0) for i in range(4)),
                BrokerClient("/", None, "192.168.9.9", 1, 3),  # busy, from no pod's address
            )),
            id="busy-client-matched-no-pod",
        ),
        pytest.param(
            WorkerLook((*STS_PODS[:5], Pod("w-canary", "10.0.1.9")), (
                *(BrokerClient("/", f"w-{i}", None, 1, 0) for i in range(5)),
                BrokerClient("/", "w-canary", None, 1, 2),  # busy on a pod with no ordinal
            )),
            id="busy-pod-without-an-ordinal",
        ),
    ],
)
def test_defect_5_a_statefulset_whose_busy_worker_has_no_ordinal_keeps_its_count(
    look: WorkerLook,
) -> None:
    """ordinal_floor is None: a StatefulSet removes its highest ordinals whatever the marks
    say, so no replica count below the current one is known to spare the busy worker (a
    Deployment would keep only the busy and unmatched pods: 2 and 1 here)."""
    made = tick({Q1: sample(), Q2: sample()}, current=6, the_spec=spec(scaleTargetRef=STS),
                workers=look, memory=Memory(current_replicas=6))
    assert made.decision is not None
    assert made.decision.replicas == 6
    assert "busy workers unknown" in made.decision.message
    assert made.scale_to is None
    deployment = tick({Q1: sample(), Q2: sample()}, current=6, workers=look,
                      memory=Memory(current_replicas=6))
    assert deployment.decision is not None and deployment.decision.replicas < 6  # not vacuous


# --- defect 12: the selector cache forgets; a 404 on status clears the marks ---


class SelectorKube(Kube):
    def __init__(self) -> None:
        super().__init__()
        self.selector_reads = 0

    async def read_selector(self, namespace: str, target: ScaleTargetRef) -> str:
        self.selector_reads += 1
        return "app=worker"


async def test_defect_12_the_selector_cache_forgets_selectors_long_expired() -> None:
    kube = SelectorKube()
    pods = Pods(kube)
    target = ScaleTargetRef("apps/v1", "Deployment", "worker")
    await pods.list("a", target, NOW)
    await pods.list("a", target, NOW + 1)
    assert kube.selector_reads == 1  # cached
    pods.prune(NOW + 2 * SELECTOR_REFRESH_SECONDS - 1)
    assert pods._selectors  # expired, not yet long ago
    pods.prune(NOW + 2 * SELECTOR_REFRESH_SECONDS)
    assert not pods._selectors
    await pods.list("a", target, NOW + 2 * SELECTOR_REFRESH_SECONDS)
    assert kube.selector_reads == 2


async def test_defect_12_a_tick_prunes_the_selectors_of_targets_gone() -> None:
    kube = SelectorKube()
    running = engine(kube, Source(ready=1), "a")
    gone = ScaleTargetRef("apps/v1", "Deployment", "deleted-long-ago")
    await running.pods.list("b", gone, NOW)
    assert running.pods._selectors
    later = NOW + 2 * SELECTOR_REFRESH_SECONDS
    scaler = running.fleet.get("a", "qs")
    assert scaler is not None
    scaler.next_due = 0
    await running.tick(later)
    assert ("b", "apps/v1", "Deployment", "deleted-long-ago") not in running.pods._selectors


class MarkedKube(Kube):
    """A pool whose pod `worker-1` carries this QueueScaler's mark; status writes are 404."""

    def __init__(self) -> None:
        super().__init__()
        self.status_missing = True
        self.calls: list[tuple[str, str, Mapping[str, str | None]]] = []

    async def list_pods(self, namespace: str, selector: str) -> list[Pod]:
        return [Pod("worker-1", "10.0.0.1", deletion_cost="-100", marked_by="qs"),
                Pod("worker-2", "10.0.0.2")]

    async def annotate_pod(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        self.calls.append(("annotate", name, dict(annotations)))

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.calls.append(("status", name, {}))
        raise NotFound("NotFound", "queuescalers.queuescaler.io \"qs\" not found")


async def test_defect_12_a_status_answered_404_clears_the_scalers_marks() -> None:
    kube = MarkedKube()
    protected = body("a")
    protected["spec"]["behavior"]["scaleDown"]["protectBusyWorkers"] = True
    fleet, cache = Fleet(), ReplicaCache()
    fleet.upsert(protected, NOW)
    cache.set("a", "worker", 1)
    running = Engine(kube, fleet, cache, Metrics(CollectorRegistry(), process=False),
                     lambda broker: Source(ready=50), EngineSettings(fast_path=False),
                     clock=lambda: NOW)
    scaler = fleet.get("a", "qs")
    assert scaler is not None
    scaler.memory = dataclasses.replace(scaler.memory, marks={"worker-1": "-100"})
    await running.tick(NOW)  # a scale-up: the plan itself keeps the marks (clear_marks False)
    assert kube.scaled == [("a", 5)]
    assert fleet.get("a", "qs") is None
    assert kube.calls == [
        ("status", "qs", {}),
        ("annotate", "worker-1", {DELETION_COST: None, MARKED_BY: None}),
    ]
    assert scaler.memory.marks == {}


# --- defect 24: management refuses the credentials, live counts show a backlog at zero ---

AUTH = SourceError(ErrorKind.AUTH, "management API at http://rabbit:15672: HTTP 401")


def live(ready: int) -> QueueSample:
    """Live counts as the AMQP peek gives them (a passive declare: no unacked count)."""
    return QueueSample(ready, 0, 0, NOW, complete=False)


def test_defect_24_auth_on_management_with_a_live_backlog_at_zero_wakes_scaling_up_only() -> None:
    woke = tick(AUTH, current=0, live=live(40), memory=Memory(current_replicas=0))
    assert woke.scale_to is not None and woke.scale_to >= 1
    assert woke.reread_secret  # defect 18: the refused credentials are read again
    status, reason, message = ready(woke)
    assert (status, reason) == (False, "Auth")
    assert message.endswith("scaling up only")
    assert {c.type: (c.status, c.reason) for c in woke.conditions}["BrokerReachable"] == (
        False, "Auth"
    )

    # Still refused once the pool is up and the live counts show the queue drained: the
    # live counts no longer stand in (they cannot see messages in flight), nothing shrinks.
    up = woke.scale_to
    memory = written(woke)
    for second in (1, 11, 600, 3600):
        later = tick(AUTH, current=up, live=live(0), memory=memory, now=NOW + second)
        assert later.scale_to is None or later.scale_to >= up, second
        assert later.decision is not None and later.decision.replicas >= up, second
        assert ready(later)[:2] == (False, "Auth")
        memory = written(later, NOW + second)


@pytest.mark.parametrize("pool", [1, 5])
def test_defect_24_live_counts_alone_never_shrink_a_pool_at_work(pool: int) -> None:
    """The memory still says 0 (the pool was scaled from outside since the last tick): live
    counts stand in, and the sample they make may grow the pool, never shrink it."""
    the_spec = spec(behavior={"scaleDown": {"stabilizationSeconds": 0, "cooldownSeconds": 0,
                                            "protectBusyWorkers": False}})
    made = tick(AUTH, current=pool, live=live(0), the_spec=the_spec,
                memory=Memory(current_replicas=0))
    assert made.scale_to is None
    assert made.decision is not None and made.decision.replicas == pool
    assert made.decision.reason is Reason.INCOMPLETE_SAMPLE
    assert ready(made)[2].endswith("scaling up only")


# --- defects 18 and 25: the engine writes the failure's start and end to its log, once ---


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ENGINE_LOG and text in r.getMessage()]


def due(running: Engine) -> Scaler:
    scaler = running.fleet.get("a", "qs")
    assert scaler is not None
    scaler.next_due = 0
    return scaler


async def test_defects_18_25_refused_credentials_are_logged_once_as_they_start_and_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=ENGINE_LOG)
    source = Source(ready=1)
    running = engine(Kube(), source, "a")
    await running.tick(NOW)
    assert not warnings_about(caplog, "BrokerReachable")  # a first, healthy status is no news
    source.error = SourceError(ErrorKind.AUTH, "management API at http://rabbit:15672: HTTP 401")
    for second in range(1, 5):
        due(running)
        await running.tick(NOW + second)
    source.error = None
    for second in range(5, 8):
        due(running)
        await running.tick(NOW + second)

    started = warnings_about(caplog, "BrokerReachable is False")
    ended = warnings_about(caplog, "BrokerReachable is True again")
    assert [(r.levelno, r.getMessage()) for r in started] == [
        (logging.WARNING,
         "a/qs BrokerReachable is False: Auth: management API at http://rabbit:15672: HTTP 401"),
    ]
    assert [r.levelno for r in ended] == [logging.WARNING]
    assert ended[0].getMessage().startswith("a/qs BrokerReachable is True again")
    assert caplog.records.index(started[0]) < caplog.records.index(ended[0])


PASSWORD = "Zq7-issue16-not-a-real-password"


class RotatingSecretKube(Kube):
    """A Secret read well once, then failing with an error that echoes its content."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    async def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        self.secret_reads += 1
        if self.failing:
            raise ValueError(
                f"cannot decode amqpUrl amqp://worker:{PASSWORD}@rabbit:5672/ (password"
                f" {PASSWORD} in free text)"
            )
        return {"amqpUrl": f"amqp://worker:{PASSWORD}@rabbit:5672/"}


async def test_defect_25_an_unreadable_secret_is_logged_redacted_once_as_it_starts_and_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No RedactingFilter on the handlers here (the command line installs one): the line
    the engine writes is redacted already."""
    caplog.set_level(logging.INFO, logger=ENGINE_LOG)
    kube = RotatingSecretKube()
    running = engine(kube, Source(ready=1), "a")
    await running.tick(NOW)  # read well: the password is known
    kube.failing = True
    refresh = running.settings.secret_refresh_seconds
    for second in (refresh + 1, refresh + 2, refresh + 3):  # read again, then cached (10 s)
        due(running)
        await running.tick(NOW + second)
    kube.failing = False
    for second in (refresh + 20, refresh + 21):
        due(running)
        await running.tick(NOW + second)
    assert kube.secret_reads == 3

    started = warnings_about(caplog, "BrokerReachable is False")
    ended = warnings_about(caplog, "BrokerReachable is True again")
    assert [r.levelno for r in started] == [logging.WARNING]
    assert [r.levelno for r in ended] == [logging.WARNING]
    line = started[0].getMessage()
    assert line.startswith("a/qs BrokerReachable is False: SecretUnreadable: Secret a/s:")
    assert "amqp://***@rabbit:5672/" in line
    assert PASSWORD not in caplog.text
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)
