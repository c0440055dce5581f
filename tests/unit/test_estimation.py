"""What the operator's recorded series honestly tell about the workers, and what they do not
(sim/estimation.py): the pod start delay, the prefetch, never the concurrency."""

from __future__ import annotations

import pytest

from queuescaler.sim.estimation import (
    DEFAULT_POD_START_DELAY,
    DEFAULT_PREFETCH,
    Given,
    consumers_per_replica,
    estimate_model,
    held_per_consumer,
    pod_start,
)
from queuescaler.sim.traffic import Traffic

pytestmark = pytest.mark.unit

STEP = 2.0


def traffic(
    replicas: list[float | None], consumers: list[float | None],
    backlog: list[float | None] | None = None, unacked: list[float | None] | None = None,
) -> Traffic:
    times = tuple(STEP * i for i in range(len(replicas)))
    return Traffic("t", times, (1.0,) * len(times), replicas=tuple(replicas),
                   consumers=tuple(consumers), backlog=tuple(backlog or ()),
                   unacked=tuple(unacked or ()))


@pytest.mark.parametrize(
    ("replicas", "consumers", "delay", "count"),
    [
        pytest.param([1, 1, 3, 3, 3, 3, 3], [1, 1, 1, 1, 2, 3, 3], 6.0, 1,
                     id="one-scale-up-caught-up-three-points-later"),
        pytest.param([1, 1, 2, 2, 2, 4, 4, 4, 4, 4], [1, 1, 1, 2, 2, 2, 2, 2, 4, 4], 4.0, 2,
                     id="median-of-two-scale-ups"),
        pytest.param([1, 1, 2, 2], [1, 1, 2, 2], 0.0, 1,
                     id="caught-up-within-the-step"),
    ],
)
def test_the_pod_start_delay_is_the_time_consumers_take_to_follow_the_replicas(
    replicas: list[float | None], consumers: list[float | None], delay: float, count: int
) -> None:
    found = pod_start(traffic(replicas, consumers))
    assert found is not None
    assert found.value == delay
    assert f"median of {count} scale-up" in found.words and "points 2 s apart" in found.words


@pytest.mark.parametrize(
    ("replicas", "consumers"),
    [
        pytest.param([1, 1, 1, 1], [1, 1, 1, 1], id="no-scale-up"),
        pytest.param([1, 1, 4, 4, 1, 1], [1, 1, 1, 2, 1, 1], id="shrank-before-catching-up"),
        pytest.param([2, 2, 2, 4, 4], [3, 3, 3, 5, 6], id="consumers-per-replica-not-whole"),
        pytest.param([0, 0, 2, 2], [0, 0, 0, 0], id="no-consumer-ever"),
    ],
)
def test_no_pod_start_delay_is_made_up(
    replicas: list[float | None], consumers: list[float | None]
) -> None:
    assert pod_start(traffic(replicas, consumers)) is None


def test_a_pod_of_two_consumers_is_followed_to_twice_its_count() -> None:
    recorded = traffic([1, 1, 2, 2, 2], [2, 2, 2, 3, 4])
    assert consumers_per_replica(recorded) == 2
    found = pod_start(recorded)
    assert found is not None and found.value == 4.0


def test_prefetch_is_what_each_consumer_holds_while_messages_wait() -> None:
    #                 waiting: 30-8, 50-8, 20-8; then the queue empties (not counted)
    recorded = traffic([2] * 5, [2] * 5, backlog=[30, 50, 20, 3, 0], unacked=[8, 8, 8, 3, 0])
    held = held_per_consumer(recorded)
    assert held is not None and held.value == 4.0
    made = estimate_model(Given(concurrency=2), traffic=recorded)
    assert made.prefetch == 2  # 4 held by a replica of 2 slots
    assert made.origin("prefetch").startswith("estimated: 4 held a consumer (median unacked")
    assert made.origin("concurrency") == "given"


def test_too_few_points_with_messages_waiting_tell_no_prefetch() -> None:
    recorded = traffic([1] * 4, [1] * 4, backlog=[10, 0, 0, 0], unacked=[4, 0, 0, 0])
    assert held_per_consumer(recorded) is None
    made = estimate_model(Given(), traffic=recorded)
    assert made.prefetch == DEFAULT_PREFETCH
    assert made.origin("prefetch") == (
        "default (not estimated: messages never waited while consumers were attached; "
        "give --prefetch)")


def test_what_is_given_wins_and_what_nothing_tells_says_so() -> None:
    recorded = traffic([1, 1, 3, 3, 3], [1, 1, 1, 3, 3])
    made = estimate_model(Given(pod_start_delay=30.0), traffic=recorded)
    assert made.pod_start_delay == 30.0 and made.origin("pod start delay") == "given"
    assert made.origin("concurrency") == "default (not estimated: no series tells it; give "\
        "--concurrency)"
    bare = estimate_model(Given(), traffic=Traffic("t", (0.0, 60.0), (1.0, 1.0)))
    assert bare.pod_start_delay == DEFAULT_POD_START_DELAY
    assert bare.origin("pod start delay") == (
        "default (not estimated: no replicas and consumers series; give --pod-start-delay)")


@pytest.mark.parametrize("rates", [(-2.0, -2.0), (0.0, None), (float("nan"), -1.0),
                                   (float("inf"), 1e-300), (1e-5, 1e-300), (1.7e308, None)],
                         ids=["negative", "zero-and-missing", "nan-and-negative",
                              "infinite-and-near-zero", "task-times-over-a-day",
                              "task-time-under-a-microsecond"])
def test_a_per_replica_rate_that_tells_no_plausible_task_time_is_passed_over(
    rates: tuple[float | None, ...]
) -> None:
    recorded = Traffic("t", (0.0, 60.0), (1.0, 1.0), per_replica_rates=rates)
    made = estimate_model(Given(), traffic=recorded)
    assert made.service_seconds > 0
    assert made.origin("service time").startswith("default")


def test_the_latest_per_replica_rate_above_0_is_the_one_used() -> None:
    recorded = Traffic("t", (0.0, 60.0, 120.0), (1.0,) * 3, per_replica_rates=(4.0, 8.0, -1.0))
    assert estimate_model(Given(), traffic=recorded).service_seconds == 1 / 8


def test_implausible_rates_say_so_and_the_latest_plausible_one_is_named() -> None:
    glitch = Traffic("t", (0.0, 60.0), (1.0, 1.0), per_replica_rates=(2.0, 1e-300))
    made = estimate_model(Given(), traffic=glitch)
    assert made.service_seconds == 0.5
    assert made.origin("service time").endswith("(the operator's latest plausible one)")
    near_zero = Traffic("t", (0.0, 60.0), (1.0, 1.0), per_replica_rates=(1e-300, 1e-300))
    assert estimate_model(Given(), traffic=near_zero).origin("service time") == (
        "default (the per-replica rates recorded give task times outside 1e-06 to "
        "86,400 s (a day): give --service-seconds)")
