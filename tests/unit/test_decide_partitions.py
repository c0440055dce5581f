"""decide()'s rules for queues read by a fixed number of consumers at once (Kafka partitions)
and for pools whose every resize pauses them all (a consumer group's rebalance).

The facts come in QueueSample (`parallelism`, `backlog_parallelism`, `rebalancing`,
`scaling_pauses`); the rules are the core's, whatever broker reported the facts. A sample
without them decides as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from queuescaler.core.decision import (
    Decision,
    Reason,
    Recommendation,
    ScalerState,
    decide,
)
from queuescaler.core.sample import QueueSample, combine
from support import LOOSE, NOW, make_spec

pytestmark = pytest.mark.unit


def kafka(
    lag: int,
    partitions: int | None = 6,
    lagging: int | None = None,
    *,
    consumers: int = 3,
    rebalancing: bool = False,
    pauses: bool = True,
    publish: float | None = None,
) -> QueueSample:
    """A consumer group's sample as the kafka source reports it: the lag is ready, nothing
    is told in flight, and the caps are its partitions."""
    return QueueSample(
        ready=lag, unacked=0, consumers=consumers, taken_at=NOW, publish_rate=publish,
        parallelism=partitions,
        backlog_parallelism=partitions if lagging is None else lagging,
        rebalancing=rebalancing, scaling_pauses=pauses,
    )


def decided(
    queue: QueueSample, current: int, settings: Mapping[str, Any] | None = None,
    state: ScalerState | None = None,
) -> Decision:
    spec = make_spec({**LOOSE, **(settings or {})})
    return decide(spec, queue, current, state or ScalerState(), NOW)


@pytest.mark.parametrize(
    ("queue", "current", "replicas", "reason", "said"),
    [
        pytest.param(kafka(500, 6), 2, 6, Reason.BACKLOG, "capped at 6", id="capped-at-partitions"),
        pytest.param(
            kafka(500, 6, lagging=2), 1, 2, Reason.BACKLOG,
            "2 partitions have messages waiting", id="capped-at-partitions-with-lag",
        ),
        pytest.param(kafka(40, 6), 2, 4, Reason.BACKLOG, "-> 4", id="below-the-cap-untouched"),
        pytest.param(
            kafka(500, None, lagging=None), 2, 50, Reason.BACKLOG, "-> 50", id="no-cap-reported",
        ),
        pytest.param(
            kafka(500, 6, lagging=2), 10, 2, Reason.BACKLOG, "capped at 2",
            id="idle-consumers-beyond-the-lagging-partitions-go",
        ),
        pytest.param(
            kafka(5, 6, lagging=1), 0, 1, Reason.ACTIVATION, "waking",
            id="wakes-at-one-whatever-the-cap",
        ),
        pytest.param(kafka(0, 6, lagging=0), 3, 0, Reason.IDLE, "idle", id="lag-zero-is-idle"),
    ],
)
def test_the_partition_caps(
    queue: QueueSample, current: int, replicas: int, reason: Reason, said: str
) -> None:
    decision = decided(queue, current)
    assert (decision.replicas, decision.reason) == (replicas, reason), decision.message
    assert said in decision.message


def test_the_rate_floor_is_capped_by_the_partitions_not_by_the_lagging_ones() -> None:
    # A pool that keeps pace has lag on few partitions at any instant: the rate floor holds it
    # (up to the partitions), not the one partition that happened to show lag.
    state = ScalerState(per_replica_rate=10.0, rate_measured=True)
    keeping_pace = kafka(3, 12, lagging=1, publish=50.0, consumers=5)
    assert decided(keeping_pace, 5, state=state).replicas == 5
    flood = kafka(3, 4, lagging=1, publish=500.0, consumers=4)
    decision = decided(flood, 4, state=state)
    assert decision.replicas == 4
    assert "at most 4 consumers can work at once" in decision.message


def test_the_drain_policy_is_capped_by_the_partitions() -> None:
    state = ScalerState(per_replica_rate=1.0, rate_measured=True)
    decision = decided(
        kafka(6_000, 8, lagging=8, publish=10.0), 2, {"target.drainSeconds": 60}, state,
    )
    assert (decision.replicas, decision.reason) == (8, Reason.RATE)


def test_a_capped_recommendation_is_stabilized_like_any_other() -> None:
    # The lagging partitions jump around from one sample to the next: the window damps them.
    state = ScalerState(recommendations=(Recommendation(NOW - 30, 6),))
    decision = decided(
        kafka(500, 6, lagging=1), 6, {"behavior.scaleDown.stabilizationSeconds": 300}, state,
    )
    assert (decision.replicas, decision.reason) == (6, Reason.STABILIZATION)


@pytest.mark.parametrize(
    ("queue", "current", "replicas", "reason"),
    [
        pytest.param(kafka(0, 6, lagging=0, rebalancing=True), 4, 4, Reason.REBALANCING,
                     id="no-scale-down-while-rebalancing"),
        pytest.param(kafka(300, 6, rebalancing=True), 2, 6, Reason.BACKLOG,
                     id="scale-up-while-rebalancing"),
        pytest.param(kafka(0, 6, lagging=0), 4, 0, Reason.IDLE, id="stable-group-scales-down"),
        pytest.param(kafka(0, 6, lagging=0, rebalancing=True), 0, 0, Reason.IDLE,
                     id="at-zero-stays"),
    ],
)
def test_a_rebalance_holds_scale_downs_only(
    queue: QueueSample, current: int, replicas: int, reason: Reason
) -> None:
    decision = decided(queue, current)
    assert (decision.replicas, decision.reason) == (replicas, reason), decision.message


def test_the_rebalance_hold_says_why() -> None:
    decision = decided(kafka(0, rebalancing=True), 4)
    assert "a rebalance is in progress" in decision.message
    assert decision.limited


def test_the_bounds_still_win_over_the_rebalance_hold() -> None:
    decision = decided(kafka(0, rebalancing=True), 8, {"maxReplicas": 5})
    assert (decision.replicas, decision.reason) == (5, Reason.MAX_BOUND)


# --- the stabilization window of a pool whose resizes pause every consumer ----------------

WINDOW = {"behavior.scaleDown.stabilizationSeconds": 300}
"""Recommendations of 40 up to 60 s ago, then the burst drained: 40 -> 1 is far beyond
chance, so a plain pool's window shrinks to its floor (two polls); a group's does not."""
DRAINED = ScalerState(recommendations=(Recommendation(NOW - 60, 40),))


def test_a_drained_burst_goes_at_once_when_resizes_cost_nothing() -> None:
    plain = replace(kafka(5, None, lagging=None), scaling_pauses=False)
    assert decided(plain, 40, WINDOW, DRAINED).replicas == 1


def test_a_group_waits_the_whole_window_before_it_shrinks() -> None:
    decision = decided(kafka(5, None, lagging=None), 40, WINDOW, DRAINED)
    assert (decision.replicas, decision.reason) == (40, Reason.STABILIZATION)
    assert "300s" in decision.message
    later = ScalerState(recommendations=(Recommendation(NOW - 301, 40),))
    assert decided(kafka(5, None, lagging=None), 40, WINDOW, later).replicas == 1


# --- several topics of one QueueScaler ----------------------------------------------------


def test_combined_topics_add_their_caps_and_any_rebalance_holds() -> None:
    both = combine([kafka(10, 6, lagging=1), kafka(20, 4, lagging=2, rebalancing=True)])
    assert (both.parallelism, both.backlog_parallelism) == (10, 3)
    assert both.rebalancing and both.scaling_pauses
    lifted = combine([kafka(10, 6), replace(kafka(10, None), backlog_parallelism=None)])
    assert (lifted.parallelism, lifted.backlog_parallelism) == (None, None)


def test_other_brokers_samples_are_untouched() -> None:
    plain = QueueSample(ready=500, unacked=0, consumers=2, taken_at=NOW)
    assert (plain.parallelism, plain.backlog_parallelism) == (None, None)
    assert not plain.rebalancing and not plain.scaling_pauses
    assert decided(plain, 2).replicas == 50
