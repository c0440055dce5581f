"""Properties decide() keeps for any spec, sample, state and replica count."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from queuescaler.core.decision import (
    Burst,
    Decision,
    Recommendation,
    ScalerState,
    decide,
    next_state,
)
from queuescaler.core.sample import QueueSample
from queuescaler.core.spec import QueueScalerSpec
from queuescaler.core.status import TickOutcome, build_status, state_from_status
from queuescaler.core.throughput import Reading, outrun
from queuescaler.sources.registry import parse_spec

pytestmark = pytest.mark.unit

NOW = 100_000.0

# Generated inputs vary in size and no assertion here is about time: no deadline.
PROPERTY = settings(deadline=None, max_examples=300)

MINIMAL: dict[str, Any] = {
    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
    "source": {"rabbitmq": {"queue": "jobs", "connectionSecretRef": {"name": "creds"}}},
}

rates = st.none() | st.just(0.0) | st.floats(min_value=0.0, max_value=500.0, allow_nan=False)


def counts(largest: int) -> st.SearchStrategy[int]:
    """Message counts, with zero and the small numbers where the zero rules live frequent."""
    return st.integers(0, 2) | st.integers(0, largest)


@st.composite
def specs(draw: st.DrawFn, paused: bool = False) -> QueueScalerSpec:
    minimum = draw(st.integers(0, 5))
    maximum = draw(st.integers(max(1, minimum), 40))
    raw = copy.deepcopy(MINIMAL)
    raw["source"]["rabbitmq"]["includeUnacked"] = draw(st.booleans())
    raw |= {
        "minReplicas": minimum,
        "maxReplicas": maximum,
        "target": {
            "messagesPerReplica": draw(st.integers(1, 50)),
            "drainSeconds": draw(st.none() | st.integers(1, 600)),
        },
        "activation": {"messages": draw(st.integers(1, 20))},
        "behavior": {
            "tolerance": draw(st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5])),
            "scaleUp": {
                "cooldownSeconds": draw(st.integers(0, 120)),
                "maxStepReplicas": draw(st.integers(1, 10)),
                "maxStepPercent": draw(st.integers(1, 300)),
                "stabilizationSeconds": draw(st.integers(0, 120)),
            },
            "scaleDown": {
                "cooldownSeconds": draw(st.integers(0, 600)),
                "stabilizationSeconds": draw(st.integers(0, 600)),
                "maxStepPercent": draw(st.integers(1, 100)),
                "maxStepReplicas": draw(st.integers(1, 10)),
                "protectBusyWorkers": draw(st.booleans()),
            },
        },
        "fallback": {
            "afterFailures": draw(st.integers(1, 5)),
            "replicas": draw(st.none() | st.integers(minimum, maximum)),
        },
        "paused": paused,
    }
    return parse_spec(raw)


@st.composite
def samples(draw: st.DrawFn, with_acks: bool = True) -> QueueSample:
    return QueueSample(
        ready=draw(counts(2000)),
        unacked=draw(counts(500)),
        consumers=draw(counts(50)),
        taken_at=NOW,
        publish_rate=draw(rates),
        ack_rate=draw(rates) if with_acks else None,
    )


@st.composite
def states(draw: st.DrawFn) -> ScalerState:
    ages = draw(st.lists(st.floats(0.0, 700.0), max_size=8))
    return ScalerState(
        last_scale_time=draw(st.none() | st.floats(0.0, 1000.0).map(lambda age: NOW - age)),
        recommendations=tuple(
            Recommendation(NOW - age, draw(st.integers(0, 60)))
            for age in sorted(ages, reverse=True)
        ),
        consecutive_failures=draw(st.integers(0, 6)),
        per_replica_rate=draw(st.none() | st.floats(0.01, 100.0)),
    )


@st.composite
def rich_samples(draw: st.DrawFn) -> QueueSample:
    """`samples` with what the other brokers and the counters add: partitions, a pool
    that pauses on resizes, cumulative counts."""
    return replace(
        draw(samples()),
        parallelism=draw(st.none() | st.integers(0, 20)),
        backlog_parallelism=draw(st.none() | st.integers(0, 20)),
        scaling_pauses=draw(st.booleans()),
        published_total=1100,
        acked_total=draw(st.sampled_from([None, 950, 1100])),
    )


@st.composite
def rich_states(draw: st.DrawFn, spec: QueueScalerSpec) -> ScalerState:
    """`states` with what a run learns: a speed measured or not, kept readings, a
    burst, a probe that failed. The readings show nothing ready: a poll after one with
    work ready may measure the speed, new knowledge that can lower the rate floor (a
    faster pool needs fewer replicas), which the monotone property is not about."""
    count = draw(st.integers(0, 3))
    readings = tuple(
        Reading(NOW - 15.0 * (count - index), 0, draw(st.integers(1, 20)),
                draw(st.integers(1, 20)), draw(counts(60)), 1000 + 10 * index,
                1000 + 10 * index)
        for index in range(count)
    )
    return replace(
        draw(states()),
        rate_measured=draw(st.booleans()),
        saturated_polls=draw(st.integers(0, 1)),
        readings=readings,
        readings_of=spec.source,
        probe_failed_at=draw(st.none() | st.just(NOW - 10.0)),
        last_scale_up_time=draw(st.none() | st.floats(0.0, 1000.0).map(lambda age: NOW - age)),
        burst=draw(st.none() | st.builds(Burst, st.integers(900, 1100), st.floats(0.0, 200.0))),
        burst_ended_at=draw(st.none() | st.just(NOW - 1000.0)),
        watching_since=draw(st.none() | st.just(NOW - 5.0)),
    )


replica_counts = st.integers(0, 60)
busy_counts = st.none() | st.integers(0, 60)


def backlog(spec: QueueScalerSpec, queue: QueueSample) -> int:
    return queue.backlog if spec.source.include_in_flight else queue.ready


@PROPERTY
@given(specs(), st.none() | samples(), replica_counts, states(), busy_counts)
def test_result_within_bounds(
    spec: QueueScalerSpec,
    queue: QueueSample | None,
    current: int,
    state: ScalerState,
    busy: int | None,
) -> None:
    decision = decide(spec, queue, current, state, NOW, busy)

    assert spec.min_replicas <= decision.replicas <= spec.max_replicas, decision.message


@PROPERTY
@given(specs(paused=True), st.none() | samples(), replica_counts, states(), busy_counts)
def test_paused_always_holds(
    spec: QueueScalerSpec,
    queue: QueueSample | None,
    current: int,
    state: ScalerState,
    busy: int | None,
) -> None:
    assert decide(spec, queue, current, state, NOW, busy).replicas == current


@PROPERTY
@given(specs(), samples(), st.integers(1, 60), states(), busy_counts)
def test_never_scales_to_zero_while_work_remains(
    spec: QueueScalerSpec, queue: QueueSample, current: int, state: ScalerState, busy: int | None
) -> None:
    assume(queue.ready > 0 or queue.unacked > 0)

    assert decide(spec, queue, current, state, NOW, busy).replicas > 0


@PROPERTY
@given(specs(), samples(), states(), busy_counts)
def test_wakes_when_backlog_reaches_activation(
    spec: QueueScalerSpec, queue: QueueSample, state: ScalerState, busy: int | None
) -> None:
    assume(backlog(spec, queue) >= spec.activation.messages)

    assert decide(spec, queue, 0, state, NOW, busy).replicas > 0


@PROPERTY
@given(
    specs(),
    st.none() | samples(),
    st.integers(1, 60),
    states(),
    busy_counts,
    st.floats(0.0, 700.0),
)
def test_no_scale_within_a_cooldown(
    spec: QueueScalerSpec,
    queue: QueueSample | None,
    current: int,
    state: ScalerState,
    busy: int | None,
    since_scale: float,
) -> None:
    assume(spec.min_replicas <= current <= spec.max_replicas)
    state = replace(state, last_scale_time=NOW - since_scale, last_scale_up_time=NOW - since_scale)

    decision = decide(spec, queue, current, state, NOW, busy)

    if since_scale < spec.behavior.scale_up.cooldown_seconds:
        assert decision.replicas <= current, decision.message
    if since_scale < spec.behavior.scale_down.cooldown_seconds:
        assert decision.replicas >= current, decision.message


@PROPERTY
@given(
    specs(),
    samples(),
    replica_counts,
    states(),
    busy_counts,
    st.integers(0, 1000),
    st.integers(0, 200),
)
def test_more_backlog_never_gives_fewer_replicas(
    spec: QueueScalerSpec,
    queue: QueueSample,
    current: int,
    state: ScalerState,
    busy: int | None,
    more_ready: int,
    more_unacked: int,
) -> None:
    assert_more_backlog_never_fewer(spec, queue, current, state, busy, more_ready, more_unacked)


@PROPERTY
@given(
    st.data(),
    specs(),
    rich_samples(),
    replica_counts,
    busy_counts,
    st.integers(0, 3) | st.integers(0, 1000),
    st.integers(0, 3) | st.integers(0, 200),
)
def test_more_backlog_never_gives_fewer_replicas_whatever_the_run_learnt(
    data: st.DataObject,
    spec: QueueScalerSpec,
    queue: QueueSample,
    current: int,
    busy: int | None,
    more_ready: int,
    more_unacked: int,
) -> None:
    state = data.draw(rich_states(spec))
    bigger = replace(queue, ready=queue.ready + more_ready, unacked=queue.unacked + more_unacked)
    # A pile grown beyond chance measures the speed (`outrun`), and the same pile with a
    # message ready, or a smaller one, does not: new knowledge that can lower the rate
    # floor and the parked cap (a faster pool needs fewer replicas), as after work ready
    # (`rich_states`). Hypothesis found it (review 28: 12 held on 4 consumers ask for 12,
    # 32 held measure 2/s a replica and ask for 8).
    assume(outrun(state.readings, bigger, current) == outrun(state.readings, queue, current))
    assert_more_backlog_never_fewer(spec, queue, current, state, busy, more_ready, more_unacked)


def assert_more_backlog_never_fewer(
    spec: QueueScalerSpec,
    queue: QueueSample,
    current: int,
    state: ScalerState,
    busy: int | None,
    more_ready: int,
    more_unacked: int,
) -> None:
    bigger = replace(queue, ready=queue.ready + more_ready, unacked=queue.unacked + more_unacked)

    smaller_decision = decide(spec, queue, current, state, NOW, busy)
    bigger_decision = decide(spec, bigger, current, state, NOW, busy)

    assert bigger_decision.replicas >= smaller_decision.replicas, (
        smaller_decision.message,
        bigger_decision.message,
    )


@PROPERTY
@given(
    specs(),
    samples(with_acks=False),
    st.integers(1, 60),
    st.none() | st.floats(0.01, 100.0),
    st.lists(st.floats(0.0, 700.0), max_size=8),
    st.none() | st.floats(0.0, 1000.0),
    busy_counts,
)
def test_steady_state_is_a_fixed_point(
    spec: QueueScalerSpec,
    queue: QueueSample,
    elsewhere: int,
    rate: float | None,
    ages: list[float],
    since_scale: float | None,
    busy: int | None,
) -> None:
    # Without acks in the sample the recommendation depends on the current count only
    # through the rate floor's lift (current + the ready messages' worth), which never
    # shrinks as the count grows: follow the recommendations from anywhere to the count
    # that recommends itself.
    def recommended_at(count: int) -> int:
        return decide(spec, queue, count, ScalerState(per_replica_rate=rate), NOW).recommendation

    steady = recommended_at(elsewhere)
    for _ in range(2 * spec.max_replicas + 2):
        if steady > spec.max_replicas or recommended_at(steady) == steady:
            break
        steady = recommended_at(steady)
    assume(spec.min_replicas <= steady <= spec.max_replicas)
    assume(recommended_at(steady) == steady)
    state = ScalerState(
        last_scale_time=None if since_scale is None else NOW - since_scale,
        recommendations=tuple(Recommendation(NOW - a, steady) for a in sorted(ages, reverse=True)),
        per_replica_rate=rate,
    )

    decision = decide(spec, queue, steady, state, NOW, busy)

    assert decision.replicas == steady, decision.message


def restarted(state: ScalerState, now: float) -> ScalerState:
    """The state a restarted operator has: written to status and read back by the real
    code, with its whole-second times and its capped history."""
    status, _ = build_status({}, TickOutcome(1, True, None, None, None, state, ()), now)
    return state_from_status(json.loads(json.dumps(status)), now)


ticks = st.lists(
    st.tuples(st.none() | samples(), st.floats(0.5, 120.0), busy_counts), min_size=1, max_size=30
)


def run(
    spec: QueueScalerSpec,
    current: int,
    schedule: list[tuple[QueueSample | None, float, int | None]],
    restart_at: int | None = None,
) -> list[Decision]:
    """Tick through `schedule` like the operator does, applying every decision; each sample
    is taken at its tick (review 21: samples all taken at NOW never looked a poll apart, so
    no rule comparing a poll with the previous one ever applied)."""
    state, now, decisions = ScalerState(), NOW, []
    for index, (queue, step, busy) in enumerate(schedule):
        now += step
        queue = None if queue is None else replace(queue, taken_at=now)
        if index == restart_at:
            state = restarted(state, now)
        decision = decide(spec, queue, current, state, now, busy)
        scaled = decision.replicas != current
        state = next_state(spec, state, queue, current, decision, now, scaled)
        current = decision.replicas
        decisions.append(decision)
    return decisions


@PROPERTY
@given(specs(), replica_counts, ticks, st.integers(0, 30))
def test_a_restart_never_scales_earlier_or_further(
    spec: QueueScalerSpec,
    current: int,
    schedule: list[tuple[QueueSample | None, float, int | None]],
    restart_at: int,
) -> None:
    """Through the real status code (whole seconds, capped history): where the restarted
    run first differs, it holds or moves less than the run that kept going, never more."""
    before = current
    for kept, again in zip(run(spec, current, schedule), run(spec, current, schedule, restart_at),
                           strict=True):
        if kept != again:
            moved, moved_again = kept.replicas - before, again.replicas - before
            assert moved_again == 0 or (
                (moved_again > 0) == (moved > 0) and abs(moved_again) <= abs(moved)
            ), (kept.message, again.message)
            break
        before = kept.replicas


@PROPERTY
@given(specs(), replica_counts, ticks)
def test_compacted_history_decides_like_full_history(
    spec: QueueScalerSpec,
    current: int,
    schedule: list[tuple[QueueSample | None, float, int | None]],
) -> None:
    state, now = ScalerState(), NOW
    full: list[Recommendation] = []
    for queue, step, busy in schedule:
        now += step
        decision = decide(spec, queue, current, state, now, busy)
        with_full_history = replace(state, recommendations=tuple(full))

        assert decide(spec, queue, current, with_full_history, now, busy) == decision

        if queue is not None:
            full.append(Recommendation(now, decision.recommendation))
        scaled = decision.replicas != current
        state = next_state(spec, state, queue, current, decision, now, scaled)
        assert len(state.recommendations) <= len(full)
        current = decision.replicas
