"""core.plan: one QueueScaler's tick, planned from observations, with no I/O and no fakes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from queuescaler.core.decision import Recommendation, ScalerState
from queuescaler.core.plan import (
    Failure,
    Memory,
    Observations,
    Plan,
    WorkerLook,
    after_early,
    at_rest_at_zero,
    calls_now,
    next_due,
    plan,
    wakes,
    watched_target,
)
from queuescaler.core.sample import BrokerClient, ErrorKind, QueueRef, QueueSample, SourceError
from queuescaler.core.spec import QueueScalerSpec, ScaleTargetRef
from queuescaler.core.workers import DELETION_COST, Pod
from queuescaler.sources.registry import parse_spec

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
QUEUE = QueueRef("/", "jobs")


def spec(**overrides: Any) -> QueueScalerSpec:
    raw: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "minReplicas": 1,
        "maxReplicas": 10,
        "source": {"rabbitmq": {"queue": "jobs", "connectionSecretRef": {"name": "rabbitmq"}}},
        "behavior": {"scaleDown": {"stabilizationSeconds": 0}},
    }
    raw.update(overrides)
    return parse_spec(raw)


def sample(ready: int = 0, unacked: int = 0, consumers: int = 1, **rates: float) -> QueueSample:
    return QueueSample(ready, unacked, consumers, NOW, **rates)


def seen(answer: Any = None, current: int | Failure = 2, **kw: Any) -> Observations:
    """Observations whose `answer` is per queue (a dict) or the broker's whole failure."""
    return Observations(now=NOW, answer=answer, current=current, **kw)


def tick(
    observations: Observations,
    memory: Memory | None = None,
    the_spec: QueueScalerSpec | None = None,
) -> Plan:
    return plan(
        the_spec or spec(), memory or Memory(current_replicas=2), observations,
        generation=1, name="qs",
    )


def condition(made: Plan, kind: str) -> tuple[bool, str]:
    (found,) = [c for c in made.conditions if c.type == kind]
    return found.status, found.reason


# --- what the sample is ---


@pytest.mark.parametrize(
    ("observations", "ready_reason", "failures"),
    [
        pytest.param(seen({QUEUE: sample(5)}), "Sampling", [], id="sampled"),
        pytest.param(
            seen(SourceError(ErrorKind.UNREACHABLE, "refused")), "Unreachable", [],
            id="broker-down-counted-per-request-not-per-scaler",
        ),
        pytest.param(seen({QUEUE: None}), "QueueNotFound", [], id="queue-missing-from-answer"),
        pytest.param(
            seen({QUEUE: SourceError(ErrorKind.QUEUE_NOT_FOUND, "no queue")}),
            "QueueNotFound", ["queue-not-found"], id="queue-not-found",
        ),
        pytest.param(
            Observations(NOW, broker=Failure("SecretNotFound", "gone"), current=2),
            "SecretNotFound", ["secret"], id="secret-missing",
        ),
        pytest.param(
            Observations(NOW, broker=Failure("BadSecret", "no 'amqpUrl'"), current=2),
            "BadSecret", ["bad-config"], id="secret-unusable",
        ),
        pytest.param(seen(None), "Unreachable", [], id="not-sampled"),
        pytest.param(
            seen({QUEUE: SourceError(ErrorKind.STATS_PENDING, "new")}), "Sampling", [],
            id="stats-pending-is-not-a-failure",
        ),
    ],
)
def test_ready_says_what_the_sample_was(
    observations: Observations, ready_reason: str, failures: list[str]
) -> None:
    made = tick(observations)
    assert condition(made, "Ready")[1] == ready_reason
    assert list(made.sample_failures) == failures


def test_failed_sample_holds_and_counts_a_failure() -> None:
    made = tick(seen(SourceError(ErrorKind.TIMEOUT, "slow")))
    assert made.sample is None and made.scale_to is None
    assert made.decision is not None and made.decision.replicas == 2
    assert made.memory.state.consecutive_failures == 1


def test_live_counts_replace_the_management_ready_count() -> None:
    made = tick(seen({QUEUE: sample(5, unacked=3, ack_rate=2.0)}, live=sample(40, consumers=2)))
    assert made.sample is not None
    assert (made.sample.ready, made.sample.unacked, made.sample.consumers) == (40, 3, 2)


def test_live_counts_never_stand_in_for_a_failed_sample_of_a_pool_at_work() -> None:
    made = tick(seen(SourceError(ErrorKind.TIMEOUT, "slow"), live=sample(0)))
    assert made.sample is None


def test_stats_pending_lets_live_counts_stand_in_and_remembers_it() -> None:
    made = tick(seen({QUEUE: SourceError(ErrorKind.STATS_PENDING, "new")}, live=sample(25)))
    assert made.sample is not None and made.sample.ready == 25
    assert made.memory.stats_pending


def test_an_auth_failure_rereads_the_secret() -> None:
    assert tick(seen(SourceError(ErrorKind.AUTH, "HTTP 401"))).reread_secret
    assert not tick(seen(SourceError(ErrorKind.TIMEOUT, "slow"))).reread_secret
    assert tick(seen(SourceError(ErrorKind.TLS_FAILED, "TLS failed: certificate verify failed"))
                ).reread_secret, "a fixed ca.crt is read at the next poll, as a fixed password"


# --- acting ---


def test_a_scale_up_is_planned_with_its_events_and_cooldown_state() -> None:
    made = tick(seen({QUEUE: sample(60)}))
    assert made.scale_to == 6 and made.previous_replicas == 2
    assert made.memory.current_replicas == 6
    assert made.memory.state.last_scale_time == NOW
    (event,) = made.scale_events
    assert (event.type, event.reason, event.on_target) == ("Normal", "ScaledUp", True)
    assert "from 2 to 6" in event.message and made.log == event.message


def test_a_refused_scale_is_reported_and_starts_no_cooldown() -> None:
    refused = seen({QUEUE: sample(60)}, scale_failure=Failure("Forbidden", "not allowed"))
    made = tick(refused)
    assert made.scale_to is None and made.memory.current_replicas == 2
    assert made.memory.state.last_scale_time is None
    assert [(e.type, e.reason) for e in made.events] == [("Warning", "ScaleFailed")]
    assert not made.scale_events


def test_a_dry_run_announces_each_new_verdict_once() -> None:
    dry = spec(dryRun=True)
    first = tick(seen({QUEUE: sample(60)}), the_spec=dry)
    assert first.scale_to is None
    assert [e.reason for e in first.events] == ["WouldScale"]
    again = tick(seen({QUEUE: sample(60)}), memory=first.memory, the_spec=dry)
    assert not again.events


def test_paused_decides_but_does_not_act() -> None:
    made = tick(seen({QUEUE: sample(60)}), the_spec=spec(paused=True))
    assert made.scale_to is None and made.decision is not None
    assert condition(made, "Paused") == (True, "Paused")


def test_a_missing_target_decides_nothing_and_keeps_the_state() -> None:
    memory = Memory(state=ScalerState(consecutive_failures=2), current_replicas=2)
    made = tick(seen({QUEUE: sample(60)}, current=Failure("TargetNotFound", "gone")), memory)
    assert made.decision is None and made.scale_to is None
    assert made.memory.state == memory.state and made.memory.current_replicas is None
    assert condition(made, "TargetFound") == (False, "TargetNotFound")


def test_an_invalid_spec_only_reports() -> None:
    made = plan(None, Memory(), seen({QUEUE: sample()}), generation=3, spec_problem="bad")
    assert made.decision is None and made.scale_to is None
    assert condition(made, "Ready") == (False, "InvalidSpec")
    assert made.status is not None and made.status["observedGeneration"] == 3


# --- busy workers ---

PODS = (Pod("worker-0", "10.0.0.1"), Pod("worker-1", "10.0.0.2"), Pod("worker-2", "10.0.0.3"))
CLIENTS = (
    BrokerClient("/", "worker-0", None, 1, 1),
    BrokerClient("/", "worker-1", None, 1, 0),
)


def test_a_protected_scale_down_first_asks_to_look_at_the_workers() -> None:
    made = tick(seen({QUEUE: sample(0)}), Memory(current_replicas=3))
    assert made.wants_workers and made.scale_to is None and not made.marks


def test_the_look_keeps_busy_pods_and_marks_idle_ones_first() -> None:
    look = WorkerLook(PODS, CLIENTS)
    made = tick(seen({QUEUE: sample(0)}, current=3, workers=look), Memory(current_replicas=3))
    assert not made.wants_workers
    assert made.scale_to == 1
    assert {pod: marks[DELETION_COST] for pod, marks in made.marks.items()} == {
        "worker-0": "1", "worker-1": "-1", "worker-2": "0",
    }
    assert condition(made, "WorkersMatched") == (True, "Matched")


def test_protection_turned_off_clears_the_marks_it_set() -> None:
    memory = Memory(current_replicas=2, marks={"worker-0": "-1"})
    off = spec(behavior={"scaleDown": {"protectBusyWorkers": False}})
    assert tick(seen({QUEUE: sample(10)}), memory, off).clear_marks


def test_marks_are_cleared_once_their_scale_down_was_carried_out() -> None:
    """A mark left behind would send a pod idle then and busy now first, next time."""
    just = Memory(current_replicas=2, marks={"worker-0": "-1"},
                  state=ScalerState(last_scale_time=NOW - 2))
    assert not tick(seen({QUEUE: sample(20)}), just).clear_marks
    later = dataclasses.replace(just, state=ScalerState(last_scale_time=NOW - 60))
    assert tick(seen({QUEUE: sample(20)}), later).clear_marks


# --- status and Events ---


def test_a_new_scalers_first_healthy_conditions_are_not_news() -> None:
    made = tick(seen({QUEUE: sample(20)}), Memory(current_replicas=2))
    assert made.status is not None
    assert not made.status_events


def test_a_condition_turning_bad_is_a_warning_once() -> None:
    healthy = tick(seen({QUEUE: sample(20)}))
    memory = healthy.memory.wrote(healthy.status or {})
    broken = tick(seen(SourceError(ErrorKind.UNREACHABLE, "refused")), memory)
    warnings = {(e.type, e.reason) for e in broken.status_events}
    assert ("Warning", "Unreachable") in warnings


def test_an_unchanged_status_is_not_written_until_stale() -> None:
    first = tick(seen({QUEUE: sample(20)}))
    memory = first.memory.wrote(first.status or {}, NOW)
    assert tick(seen({QUEUE: sample(20)}), memory).status is None
    old = dataclasses.replace(memory, status_written_at=NOW - 3600)
    changed_backlog = tick(seen({QUEUE: sample(21)}), old)
    assert changed_backlog.status is not None
    # review 37: a write stamped after now (a clock that stepped back) is stale too, not
    # fresh for the step's length
    ahead = dataclasses.replace(memory, status_written_at=NOW + 1800)
    assert tick(seen({QUEUE: sample(21)}), ahead).status is not None


def test_the_fast_path_reads_the_newest_recommendation_by_place() -> None:
    """Review 35: after a clock stepped back, the clamped entries and the tick's own share a
    stamp, and the newest by time was the first of them (an old 20, not this tick's 2): a
    burst of 15 replicas' worth then called no early decision."""
    stamped_alike = ScalerState(last_scale_time=NOW - 3000, last_scale_up_time=NOW - 3000,
                                recommendations=(Recommendation(NOW, 20), Recommendation(NOW, 2)))
    burst = QueueSample(ready=150, unacked=0, consumers=2, taken_at=NOW + 5)
    loose = spec(target={"messagesPerReplica": 10})
    assert calls_now(loose, burst, Memory(state=stamped_alike, current_replicas=2), NOW + 5)


# --- the schedule ---


@pytest.mark.parametrize(
    ("backlog", "activation", "wake"),
    [
        pytest.param(0, 1, False, id="empty"),
        pytest.param(1, 1, True, id="at-activation"),
        pytest.param(4, 5, False, id="below-activation"),
    ],
)
def test_a_pool_at_rest_wakes_at_the_activation_threshold(
    backlog: int, activation: int, wake: bool
) -> None:
    assert wakes(spec(activation={"messages": activation}), sample(backlog)) is wake


def test_the_schedule_rules() -> None:
    assert next_due(NOW + 7, 15) % 15 == 0 and NOW + 7 < next_due(NOW + 7, 15) <= NOW + 22
    assert at_rest_at_zero(spec(minReplicas=0), 0)
    assert not at_rest_at_zero(spec(minReplicas=0, paused=True), 0)
    assert not at_rest_at_zero(spec(minReplicas=1), 0)
    assert watched_target(ScaleTargetRef("apps/v1", "Deployment", "w"))
    assert not watched_target(ScaleTargetRef("apps/v1", "StatefulSet", "w"))


def test_an_early_ticks_sample_measures_nothing() -> None:
    """Live counts a second after a poll are no span: the speed, whether it is trusted and
    the saturated polls that trust it stay as the last full sample left them."""
    before = ScalerState(per_replica_rate=2.0, rate_measured=False, saturated_polls=1)
    after = ScalerState(per_replica_rate=9.0, rate_measured=True, saturated_polls=2,
                        last_scale_time=5.0)
    kept = after_early(before, after)
    assert (kept.per_replica_rate, kept.rate_measured, kept.saturated_polls) == (2.0, False, 1)
    assert kept.last_scale_time == 5.0  # its decision counts
