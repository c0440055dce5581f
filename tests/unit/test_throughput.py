"""The rate policy's inputs (core/throughput.py): exact rates from counters, and one
replica's speed whatever its prefetch or concurrency (issue 12).

Each case pictures a worker or broker other than "holds one message, reports every
second": prefetch 20, Celery's concurrency 4 x 4, no prefetch limit, a counter reset, a
queue missing for a tick, a burst that just ended, polls faster than the broker refreshes
its statistics, a clock that stepped. Cases found by the review of the first version are
marked "review".
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queuescaler.core.sample import QueueSample
from queuescaler.core.throughput import (
    HOLDING_SIGMAS,
    KEPT_EVERY,
    MAX_RATE,
    MAX_SPAN,
    MIN_SPAN,
    RATE_HISTORY,
    RATE_OUTLIER_FACTOR,
    RATE_SMOOTHING,
    Flow,
    Reading,
    acked_per_consumer,
    draining,
    falling_behind,
    flow_since,
    measures,
    outgrown,
    outrun,
    per_replica_rate,
    reading_of,
    remember,
    saturated,
    short_while_starting,
    work_piling_up,
)

pytestmark = pytest.mark.unit

NOW = 10_000.0


def sample(
    ready: int = 0,
    unacked: int = 0,
    consumers: int = 4,
    *,
    at: float = NOW,
    publish: float | None = None,
    ack: float | None = None,
    published: int | None = None,
    acked: int | None = None,
    complete: bool = True,
) -> QueueSample:
    return QueueSample(
        ready, unacked, consumers, at, publish_rate=publish, ack_rate=ack,
        published_total=published, acked_total=acked, complete=complete,
    )


def history(*samples: QueueSample, current: int = 4) -> tuple[Reading, ...]:
    readings: tuple[Reading, ...] = ()
    for each in samples:
        readings = remember(readings, each, current)
    return readings


def quiet(per_tick: int, ticks: int, *, every: float = 15.0) -> tuple[Reading, ...]:
    """Readings of a queue publishing and acking `per_tick` messages a tick, up to NOW."""
    return history(*(
        sample(at=NOW - every * k, published=1000 - per_tick * k, acked=1000 - per_tick * k)
        for k in range(ticks, 0, -1)
    ))


# --- rates from counters --------------------------------------------------------------


def test_a_quiet_queue_is_counted_over_a_minute_or_more_not_read_off_5s() -> None:
    # 0.2 msg/s: 3 a tick. The 5 s field read 0.0; counters over 8 ticks say 0.2.
    flow = flow_since(quiet(3, 8), sample(publish=0.0, ack=0.4, published=1000, acked=1000))
    assert flow.publish == pytest.approx(0.2)
    assert flow.ack == pytest.approx(0.2)


def test_the_shortest_span_that_counts_enough_is_used() -> None:
    # 5 a tick: 4 ticks (60 s) count 20, so the span stops there, before older ticks
    readings = history(
        sample(at=NOW - 150, published=0),  # long ago, a slower load
        *(sample(at=NOW - 15 * k, published=1000 - 5 * k) for k in range(6, 0, -1)),
    )
    assert flow_since(readings, sample(publish=0.0, published=1000)).publish == pytest.approx(
        20 / 60
    )


def test_a_busy_rate_field_is_used_as_it_is() -> None:
    assert flow_since(quiet(3, 8), sample(publish=40.0, published=1000)).publish == 40.0


def test_a_flood_that_stopped_is_not_averaged_into_the_quiet() -> None:
    flood = history(
        *(sample(at=NOW - 15 * k, published=10_000 - 2000 * k) for k in range(5, 0, -1))
    )
    assert flow_since(flood, sample(publish=0.0, published=10_000)).publish == 0.0


def test_spans_shorter_than_a_minute_are_not_counted() -> None:
    # review: at 1 s polls the counters move once per statistics refresh
    readings = history(*(sample(at=NOW - k, published=1000 - 2 * k) for k in range(30, 0, -1)))
    assert flow_since(readings, sample(publish=1.0, published=1000)).publish == 1.0


@pytest.mark.parametrize(
    ("before", "why"),
    [
        pytest.param(sample(at=NOW - 60, published=500, acked=500), "reset", id="reset"),
        pytest.param(sample(at=NOW - 60), "no statistics then", id="first-statistics"),
        pytest.param(sample(at=NOW - MAX_SPAN - 1, published=1, acked=1), "clock step",
                     id="clock-stepped-forward"),
        pytest.param(sample(at=NOW - 60, published=1, acked=1, complete=False),
                     "a queue was missing", id="partial-sum-then"),
    ],
)
def test_counters_that_cannot_be_differenced_leave_the_rate_fields(
    before: QueueSample, why: str
) -> None:
    now = sample(publish=2.0, ack=1.0, published=10, acked=8)
    assert flow_since(history(before), now) == Flow(2.0, 1.0), why


def test_a_publish_rate_is_firm_on_enough_messages_or_a_minute_of_counters() -> None:
    """Review 20: a run that restarted, or whose queues changed, has no minute of readings:
    its publish rate is the thin 5 s field, which the pile rule must not act on."""
    assert flow_since((), sample(publish=4.0)).publish_firm  # 20 messages in 5 s
    assert not flow_since((), sample(publish=1.6)).publish_firm
    now = sample(publish=1.6, published=1000, acked=1000)
    assert flow_since(quiet(3, 8), now).publish_firm  # counted over 2 minutes
    assert not flow_since(quiet(3, 2), now).publish_firm  # 30 s of readings: the field


def test_a_partial_sample_now_keeps_the_rate_fields() -> None:
    # review: queue B missing for a tick drops its counter out of the sum
    now = sample(publish=0.4, ack=0.4, published=300, acked=300, complete=False)
    assert flow_since(quiet(3, 8), now) == Flow(0.4, 0.4)


def test_a_queue_back_after_a_tick_missing_is_not_a_flood() -> None:
    # review: A and B publish 0.2/s each; B (5,000,000 so far) is missing for one tick
    readings = history(
        *(sample(at=NOW - 15 * k, published=5_001_000 - 6 * k) for k in range(8, 1, -1)),
        sample(at=NOW - 15, published=1000 - 3, complete=False),  # B missing
    )
    flow = flow_since(readings, sample(publish=0.4, published=5_001_000))
    assert flow.publish is not None and flow.publish < 1.0


def test_an_absurd_counter_jump_is_not_a_rate() -> None:
    # review: counters from 1,000 to 10^15 in a minute
    readings = history(sample(at=NOW - 60, published=1000, acked=1000))
    now = sample(publish=0.5, ack=0.5, published=10**15, acked=10**15)
    assert flow_since(readings, now) == Flow(0.5, 0.5)
    assert MAX_RATE < 10**15 / 60


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_impossible_rate_fields_are_unknown(bad: float) -> None:
    assert flow_since((), sample(publish=bad, ack=bad)) == Flow(None, None)


def test_history_is_bounded_spaced_and_restarts_after_a_reset_or_a_clock_going_back() -> None:
    readings = history(*(sample(at=NOW + k, published=k) for k in range(600)))
    assert len(readings) <= RATE_HISTORY
    gaps = [b.taken_at - a.taken_at for a, b in itertools.pairwise(readings)]
    assert all(gap >= KEPT_EVERY for gap in gaps[:-1])  # the newest stands in for the rest
    assert readings[-1].taken_at == NOW + 599
    assert remember(readings, sample(at=NOW + 700, published=3), 4) == history(
        sample(at=NOW + 700, published=3)
    )
    assert len(remember(readings, sample(at=NOW, published=700), 4)) == 1


# --- one replica's speed --------------------------------------------------------------


def test_saturated_means_ready_at_both_ends_with_every_replica_consuming() -> None:
    before = history(sample(ready=5, at=NOW - 15))
    assert saturated(before[-1], sample(ready=5), 4)
    assert not saturated(None, sample(ready=5), 4)  # one look cannot tell a blip
    assert not saturated(history(sample(ready=0, at=NOW - 15))[-1], sample(ready=5), 4)
    assert not saturated(before[-1], sample(ready=0), 4)
    assert not saturated(history(sample(5, consumers=2, at=NOW - 15))[-1], sample(5), 4)
    assert saturated(before[-1], sample(ready=5), 6)  # 2 pods still starting: 4 flat out
    assert not saturated(history(sample(5, consumers=0))[-1], sample(5, consumers=0), 0)
    # review: workers consuming both queues of a QueueScaler count twice
    assert saturated(history(sample(5, consumers=8, at=NOW - 15))[-1], sample(5, consumers=8), 4)


@pytest.mark.parametrize(
    ("unacked", "worker"),
    [
        pytest.param(4, "prefetch 1", id="prefetch-1"),
        pytest.param(80, "pika basic_qos(prefetch_count=20)", id="prefetch-20"),
        pytest.param(64, "Celery concurrency 4 x multiplier 4", id="celery-4x4"),
    ],
)
def test_a_saturated_pool_measures_a_replica_whatever_it_prefetches(
    unacked: int, worker: str
) -> None:
    # 4 replicas acking 40 messages/s in all, work waiting: 10 msg/s each
    before = history(sample(ready=50, unacked=unacked, at=NOW - 15))
    after = sample(ready=50, unacked=unacked, ack=40.0)
    assert per_replica_rate(None, before, after, 4) == pytest.approx(10.0), worker


def test_pods_still_starting_show_a_short_pool_and_a_lower_bound_not_a_measure() -> None:
    """A prefetch-20 pool of 2 short of the load: its piles overflow (messages ready) just
    when the backlog policy asks a third pod, so the polls that show it flat out all come
    with a pod starting. Before, they said nothing, and the probe and the backlog policy
    took turns at 2 and 3. Now such a poll shows a pool short (no probe) and a lower bound
    of the speed, over every replica: 10 / 3 where the 2 consuming do 5 each. Not a measure
    (review 22: two of them fixed a speed 12x too low as measured)."""
    before = history(sample(ready=6, unacked=40, consumers=2, at=NOW - 15))
    now = sample(ready=11, unacked=40, consumers=2, ack=10.0)
    assert per_replica_rate(None, before, now, 3) == pytest.approx(10.0 / 3)
    assert short_while_starting(before, now, 3, Flow(12.0, 10.0))
    assert not measures(before, now, 3, Flow(12.0, 10.0))
    assert measures(before, now, 2, Flow(12.0, 10.0))  # every replica consuming
    assert not short_while_starting(before, now, 2, Flow(12.0, 10.0))
    piling = history(sample(unacked=20, consumers=2, at=NOW - 30),
                     sample(unacked=32, consumers=2, at=NOW - 15))
    assert outrun(piling, sample(unacked=44, consumers=2, ack=10.0), 3)
    assert per_replica_rate(None, piling, sample(unacked=44, consumers=2, ack=10.0), 3) == (
        pytest.approx(10.0 / 3))
    # a lower bound only: a speed known already is raised by it, never lowered; with work
    # waiting before, at once as far as the ack counter confirms (over every replica still:
    # the pods starting count), else smoothed
    assert per_replica_rate(5.0, before, now, 3) == 5.0
    smoothed = 2.0 + RATE_SMOOTHING * (10.0 / 3 - 2.0)
    assert per_replica_rate(2.0, before, now, 3) == pytest.approx(smoothed)
    counted = history(sample(ready=6, unacked=40, consumers=2, at=NOW - 15, acked=1000))
    confirmed = sample(ready=11, unacked=40, consumers=2, ack=10.0, acked=1150)
    assert per_replica_rate(2.0, counted, confirmed, 3) == pytest.approx(10.0 / 3)
    assert per_replica_rate(2.0, counted, confirmed, 3, measured_before=True) == (
        pytest.approx(smoothed))


def test_fewer_consumers_than_pods_acking_never_read_the_speed_high() -> None:
    """Review 21: 10 pods acking 1 msg/s each where the broker counts 1 consumer (pods
    sharing one Redis consumer name, or polling with basic.get). Per consumer it read 10."""
    before = history(sample(ready=50, unacked=10, consumers=1, at=NOW - 15))
    now = sample(ready=50, unacked=10, consumers=1, ack=10.0)
    assert per_replica_rate(None, before, now, 10) == pytest.approx(1.0)


def acking(per_second: float, *, unacked: int, consumers: int = 4, ticks: int = 4,
           current: int = 4) -> tuple[tuple[Reading, ...], QueueSample]:
    """Readings of a pool acking `per_second` for `ticks` polls, 15 s apart, and now."""
    readings = history(*(
        sample(unacked=unacked, consumers=consumers, at=NOW - 15 * k,
               acked=int(1000 - per_second * 15 * k))
        for k in range(ticks, 0, -1)
    ), current=current)
    return readings, sample(unacked=unacked, consumers=consumers, ack=per_second, acked=1000)


def test_keeping_up_gives_a_lower_bound_that_sets_an_unknown_estimate() -> None:
    # nothing waits: 8 msg/s acked by the 2 replicas holding messages is at least 4 each
    readings, now = acking(8.0, unacked=2, consumers=10, current=10)
    assert per_replica_rate(None, readings, now, 10) == pytest.approx(4.0)


def test_a_few_polls_that_saw_little_held_raise_a_measured_speed_less() -> None:
    # pika at prefetch 20: 3 replicas of 2.5 msg/s keep up with 6 msg/s, 2.4 busy on
    # average; five polls happened to see 1, 3, 1, 1 and 1 held. Their mean (1.4) read the
    # speed as 4.3/s, and a bound that only raises the estimate kept such lucky reads: a
    # measured 2.5 crept to 3.24, and the rate floor let the pool shrink to 2 and regrow,
    # every minute
    held = (1, 3, 1, 1)
    readings = history(*(
        sample(unacked=count, consumers=3, at=NOW - 15 * k, acked=1000 - 90 * k)
        for k, count in zip(range(4, 0, -1), held, strict=True)
    ), current=3)
    now = sample(unacked=1, consumers=3, ack=6.0, acked=1000)
    spread = math.sqrt(sum((h - 1.4) ** 2 for h in (*held, 1)) / 4)
    bound = 6.0 / (1.4 + HOLDING_SIGMAS * spread / math.sqrt(5))
    assert bound < 6.0 / 1.4
    assert per_replica_rate(2.5, readings, now, 3, measured_before=True) == pytest.approx(
        2.5 + RATE_SMOOTHING * (bound - 2.5))
    # an estimate not measured yet takes the bound as it reads: a pool that then shrinks
    # too far saturates, which measures it (the probe relies on it)
    assert per_replica_rate(None, readings, now, 3) == pytest.approx(6.0 / 1.4)


def test_a_bound_read_as_a_backlog_ran_out_is_taken_at_once() -> None:
    """A flood's wake-up: work ready at the previous poll, none now, every consumer acking
    flat out until it ran out. Smoothed, that bound moved an unmeasured estimate by a third
    of the gap a poll (6 -> 8 -> 10 -> 13 -> 15 msg/s over a minute against a speed of 40),
    and the rate floor held 9 replicas where 5 carried the load. It now moves it at once,
    as far as `RATE_OUTLIER_FACTOR` lets one poll and the ack counter over the poll
    confirms."""
    before = history(sample(ready=1300, unacked=28, consumers=9, at=NOW - 15, acked=10_000),
                     current=9)
    drained = sample(unacked=11, consumers=9, ack=280.0, acked=10_000 + 15 * 280)
    assert per_replica_rate(20.0, before, drained, 9) == pytest.approx(280.0 / 9)
    assert per_replica_rate(6.0, before, drained, 9) == 6.0 * RATE_OUTLIER_FACTOR
    # review 39: a rate field lifted 2x (a counter reset, early acks) is held to what the
    # counter confirms; the rest of the gap is smoothed
    lifted = dataclasses.replace(drained, ack_rate=560.0)
    assert per_replica_rate(20.0, before, lifted, 9) == pytest.approx(280.0 / 9)
    half = dataclasses.replace(drained, acked_total=10_000 + 15 * 140)
    smoothed = 20.0 + RATE_SMOOTHING * (280.0 / 9 - 20.0)
    assert per_replica_rate(20.0, before, half, 9) == pytest.approx(smoothed)
    no_counter = dataclasses.replace(drained, acked_total=None)
    assert per_replica_rate(20.0, before, no_counter, 9) == pytest.approx(smoothed)
    reset = dataclasses.replace(drained, acked_total=40)
    assert per_replica_rate(20.0, before, reset, 9) == pytest.approx(smoothed)
    # review 40: at 5 s polls a counter differenced over one statistics interval reads 0
    # or twice the rate: only a reading 15 s old or more confirms
    close = history(sample(ready=1300, unacked=28, consumers=9, at=NOW - 5, acked=10_000),
                    current=9)
    doubled = dataclasses.replace(lifted, acked_total=10_000 + 5 * 560)
    assert per_replica_rate(20.0, close, doubled, 9) == pytest.approx(
        20.0 + RATE_SMOOTHING * (20.0 * RATE_OUTLIER_FACTOR - 20.0))
    # a measured speed moves by the EWMA only: one poll's bound does not override it
    assert per_replica_rate(20.0, before, drained, 9, measured_before=True) == pytest.approx(
        20.0 + RATE_SMOOTHING * (280.0 / 9 - 20.0))
    # nothing ready before: acks per consumer may be the load each carries, smoothed
    idle_before = history(sample(unacked=28, consumers=9, at=NOW - 15, acked=10_000),
                          current=9)
    assert per_replica_rate(20.0, idle_before, drained, 9) == pytest.approx(
        20.0 + RATE_SMOOTHING * (280.0 / 9 - 20.0))
    # a bound below the estimate never lowers it
    assert per_replica_rate(40.0, before, drained, 9) == 40.0


def test_a_lower_bound_needs_a_minute_of_counted_acks() -> None:
    # 45 s: too short for Little's law; what stays is the weak bound per consumer, 8 / 10
    readings, now = acking(8.0, unacked=2, consumers=10, ticks=3, current=10)
    assert per_replica_rate(None, readings, now, 10) == pytest.approx(0.8)


def test_a_backlog_drained_between_two_polls_is_no_speed() -> None:
    # second review: 32 replicas drained 317 messages within a second between two polls;
    # the 5 s window holds 30 acks/s, and 2 messages are held at either end
    before = history(sample(unacked=0, consumers=32, at=NOW - 15), current=32)
    drained = sample(unacked=2, consumers=32, ack=30.0)
    # not 30 / 2 = 15 per holding replica: at most 30 / 32 per consumer can be said
    assert per_replica_rate(None, before, drained, 32) == pytest.approx(30 / 32)


def test_a_lower_bound_never_lowers_the_estimate() -> None:
    # Celery at concurrency 4, lightly loaded: each replica holds 1 message and acks 5/s,
    # which says nothing of the 3 idle slots: a measured 10/s must stay.
    light = sample(unacked=4, ack=20.0)
    assert per_replica_rate(10.0, history(sample(unacked=4, at=NOW - 15)), light, 4) == 10.0


@pytest.mark.parametrize(
    ("before", "now", "ack", "current", "bound"),
    [
        pytest.param(4, 4, 20.0, 4, 5.0, id="acks-over-the-consumers"),
        pytest.param(8, 4, 20.0, 4, 2.5, id="the-most-consumers-at-either-end"),
        pytest.param(2, 2, 20.0, 5, 4.0, id="replicas-not-yet-consuming-count"),
        pytest.param(4, 4, 3.0, 4, None, id="too-few-acks-in-the-field"),
        pytest.param(4, 4, None, 4, None, id="no-field"),
        pytest.param(4, 4, -20.0, 4, None, id="negative-field"),
        pytest.param(4, 4, math.nan, 4, None, id="nan-field"),
        pytest.param(4, 4, math.inf, 4, None, id="infinite-field"),
    ],
)
def test_acks_per_consumer_bound_the_speed_now(
    before: int, now: int, ack: float | None, current: int, bound: float | None
) -> None:
    # what the parked cap divides by while the speed is not measured: never above what
    # the busiest consumer could have done since the last poll
    readings = history(sample(consumers=before, at=NOW - 15))
    assert acked_per_consumer(readings, sample(consumers=now, ack=ack), current) == bound


def test_acks_per_consumer_count_every_consumer_the_kept_readings_saw() -> None:
    # review: statistics a minute old still held the acks of 78 replicas draining a burst
    # when the pool was down to 12; over 12 they read each replica 3x as fast as it is
    readings = history(sample(consumers=78, at=NOW - 45), sample(consumers=12, at=NOW - 30),
                       sample(consumers=12, at=NOW - 15), current=12)
    assert acked_per_consumer(readings, sample(consumers=12, ack=390.0), 12) == 5.0


def test_a_lower_bound_above_the_estimate_raises_it() -> None:
    readings, faster = acking(32.0, unacked=2)
    assert per_replica_rate(4.0, readings, faster, 4) == pytest.approx(
        4.0 + RATE_SMOOTHING * (8.0 - 4.0)
    )


def test_a_broker_with_counters_and_no_rate_fields_gets_rates_from_its_counters() -> None:
    # a Redis stream: entries-added and entries-read, no rate fields; 3 msg/s is 45 a kept
    # reading, which for a thin field would read as "another load" at each older step
    readings = history(*(
        sample(at=NOW - 15 * k, published=2_000 - 45 * k, acked=2_000 - 45 * k)
        for k in range(5, 0, -1)
    ))
    now = sample(published=2_000, acked=2_000)
    assert flow_since(readings, now) == Flow(pytest.approx(3.0), pytest.approx(3.0))


def test_early_acks_give_no_counted_bound() -> None:
    # review: with early acks (Celery's default) nothing is unacknowledged while 10
    # replicas work flat out at 1/s: Little's law would credit one replica with all 10/s
    readings: tuple[Reading, ...] = ()
    for k in range(5, 0, -1):
        readings = remember(readings, sample(unacked=0, consumers=10, at=NOW - 15 * k,
                                             acked=int(100_000 - 10 * 15 * k)), 10)
    estimate: float | None = 1.0
    for tick in range(4):
        now = sample(unacked=0, consumers=10, at=NOW + 15 * tick, acked=100_000 + 150 * tick)
        estimate = per_replica_rate(estimate, readings, now, 10)
        readings = remember(readings, now, 10)
    assert estimate == 1.0


def test_a_burst_that_just_ended_cannot_ratchet_the_estimate_up() -> None:
    # review: 10 replicas at 1 msg/s; the 5 s window still holds the pool's 8 acks/s while
    # only 1 message is left in flight. Ten such burst ends must leave the estimate be.
    estimate: float | None = 1.0
    for burst in range(10):
        at = NOW + 1000 * burst
        busy = history(sample(unacked=10, consumers=10, at=at - 15), current=10)
        estimate = per_replica_rate(estimate, busy, sample(unacked=1, consumers=10, ack=8.0,
                                                           at=at), 10)
    assert estimate == 1.0


def test_a_slow_quiet_pool_is_not_taught_it_is_fast_by_one_ack_in_5s() -> None:
    # 0.2 msg/s of 8 s tasks: one ack in a 5 s window reads 0.2/s per holding replica,
    # while a replica does 0.125/s. Counters over a minute say the truth.
    estimate = per_replica_rate(None, history(sample(unacked=1, at=NOW - 15)),
                                sample(unacked=1, ack=0.2), 4)
    assert estimate is None
    readings = history(*(
        sample(unacked=2, at=NOW - 15 * k, acked=1000 - 3 * k) for k in range(8, 0, -1)
    ))
    rate = per_replica_rate(None, readings, sample(unacked=2, ack=0.2, acked=1000), 4)
    assert rate == pytest.approx(0.2 / 2)


def test_a_saturated_tick_may_lower_the_estimate() -> None:
    # tasks got slower: 4 replicas flat out ack 8 msg/s
    before = history(sample(ready=30, at=NOW - 15))
    assert per_replica_rate(4.0, before, sample(ready=40, unacked=4, ack=8.0), 4) == (
        pytest.approx(4.0 + RATE_SMOOTHING * (2.0 - 4.0))
    )


def test_one_absurd_tick_moves_the_estimate_by_a_bounded_step() -> None:
    before = history(sample(ready=30, at=NOW - 15))
    glitch = sample(ready=40, unacked=4, ack=MAX_RATE)
    assert per_replica_rate(4.0, before, glitch, 4) == pytest.approx(
        4.0 + RATE_SMOOTHING * (4.0 * RATE_OUTLIER_FACTOR - 4.0)
    )


@pytest.mark.parametrize(
    ("queue", "current"),
    [
        pytest.param(sample(unacked=3, consumers=0, ack=6.0), 0, id="acks-from-pods-going"),
        pytest.param(sample(ready=5, ack=None), 4, id="no-acks"),
        pytest.param(sample(ready=5, ack=0.0), 4, id="zero-acks"),
        pytest.param(sample(ready=5, ack=-3.0), 4, id="negative-acks"),
        pytest.param(sample(ready=5, ack=math.nan), 4, id="nan-acks"),
    ],
)
def test_nothing_to_learn_keeps_the_estimate(queue: QueueSample, current: int) -> None:
    assert per_replica_rate(3.0, (), queue, current) == 3.0
    assert per_replica_rate(None, (), queue, current) is None


@pytest.mark.parametrize("corrupt", [-1.0, 0.0, math.nan, math.inf])
def test_a_corrupt_estimate_is_replaced(corrupt: float) -> None:
    readings, now = acking(20.0, unacked=4)
    assert per_replica_rate(corrupt, readings, now, 4) == pytest.approx(5.0)


def test_constants_hang_together() -> None:
    assert RATE_HISTORY * KEPT_EVERY > MIN_SPAN
    assert MIN_SPAN < MAX_SPAN


counts = st.integers(0, 10_000)
rates = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))
totals = st.one_of(st.none(), st.integers(0, 10**15))


@st.composite
def samples(draw: st.DrawFn) -> QueueSample:
    return QueueSample(
        draw(counts), draw(counts), draw(st.integers(0, 200)),
        draw(st.floats(-1e6, 1e6)), publish_rate=draw(rates), ack_rate=draw(rates),
        published_total=draw(totals), acked_total=draw(totals), complete=draw(st.booleans()),
    )


@given(
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    st.lists(samples(), max_size=12),
    samples(),
    st.integers(0, 200),
)
def test_property_rates_and_estimate_stay_sane(
    estimate: float | None, earlier: list[QueueSample], now: QueueSample, current: int
) -> None:
    readings = history(*earlier, current=current)
    assert len(readings) <= RATE_HISTORY
    flow = flow_since(readings, now)
    for rate, field in ((flow.publish, now.publish_rate), (flow.ack, now.ack_rate)):
        assert rate is None or 0.0 <= rate <= max(MAX_RATE, field or 0.0)
    after = per_replica_rate(estimate, readings, now, current)
    assert after is None or 0.0 < after < math.inf
    sane = estimate is not None and 0.0 < estimate < math.inf
    if sane and after is not None:
        assert estimate is not None
        assert estimate / RATE_OUTLIER_FACTOR <= after <= estimate * RATE_OUTLIER_FACTOR
        if after < estimate:  # only a saturated tick lowers it
            assert saturated(readings[-1] if readings else None, now, current)


# --- second review ------------------------------------------------------------------


@pytest.mark.parametrize("step", [60.0, 120.0, 300.0, 880.0])
def test_a_clock_stepped_forward_is_no_span_to_divide_by(step: float) -> None:
    # review: a quiet queue at 0.2 msg/s; the wall clock jumps `step` seconds forward
    readings = quiet(3, 8)
    now = sample(at=NOW + step, publish=0.2, ack=0.2, published=1003, acked=1003)
    assert flow_since(readings, now) == Flow(0.2, 0.2)


def test_slow_polls_still_count_their_spans() -> None:
    readings = history(*(
        sample(at=NOW - 60 * k, published=1000 - 12 * k, acked=1000 - 12 * k)
        for k in range(4, 0, -1)
    ))
    now = sample(publish=0.0, ack=0.0, published=1000, acked=1000)
    assert flow_since(readings, now, poll_seconds=60).publish == pytest.approx(0.2)
    assert flow_since(readings, now, poll_seconds=15).publish == 0.0  # gaps too long


def test_counters_beyond_any_float_do_not_raise() -> None:
    # review: two queues' counters summed past the float range
    readings = history(sample(at=NOW - 60, published=10**400, acked=10**400))
    now = sample(publish=1.0, ack=1.0, published=10**401, acked=10**401)
    assert flow_since(readings, now) == Flow(1.0, 1.0)
    assert per_replica_rate(None, readings, replace_ready(now, 5), 4) is None  # a glitch


def replace_ready(queue: QueueSample, ready: int) -> QueueSample:
    return QueueSample(
        ready, queue.unacked, queue.consumers, queue.taken_at, publish_rate=queue.publish_rate,
        ack_rate=queue.ack_rate, published_total=queue.published_total,
        acked_total=queue.acked_total,
    )


def test_a_saturated_tick_without_acks_measures_nothing() -> None:
    before = history(sample(ready=30, at=NOW - 15))
    assert not measures(before, sample(ready=40), 4, flow_since(before, sample(ready=40)))
    busy = sample(ready=40, ack=8.0)
    assert measures(before, busy, 4, flow_since(before, busy))


def test_a_saturated_measurement_reads_the_rate_field_not_a_longer_span() -> None:
    # review: the counter span reached back before the pool saturated
    readings = history(
        *(sample(at=NOW - 15 * k, acked=1000 - 1 * k) for k in range(8, 1, -1)),
        sample(ready=30, at=NOW - 15, acked=999),
    )
    now = sample(ready=40, ack=0.4, acked=1000)
    assert per_replica_rate(None, readings, now, 4) == pytest.approx(0.1)


def test_falling_behind_is_a_backlog_growing_beyond_chance() -> None:
    before = history(sample(unacked=6000, at=NOW - 150), sample(unacked=6050, at=NOW - 15))
    assert falling_behind(before, sample(unacked=6200))  # +200 in 2.5 min: sqrt(6000) is 77
    assert not falling_behind(before, sample(unacked=6100))  # +100: within 2 sigma
    assert not falling_behind(before, sample(unacked=5900))
    assert not falling_behind((), sample(unacked=5900))
    few = history(sample(unacked=2, at=NOW - 15))
    assert not falling_behind(few, sample(unacked=12))  # a light pool's noise


def test_work_piling_up_counts_the_messages_ready_now_as_held() -> None:
    """falling_behind asks for nothing ready now (outrun measures the speed on it); the
    probe's question counts ready work too, so more of it never turns the probe on."""
    before = history(sample(unacked=6000, at=NOW - 150), sample(unacked=6050, at=NOW - 15))
    assert not falling_behind(before, sample(ready=1, unacked=6200))
    assert work_piling_up(before, sample(ready=1, unacked=6200))
    assert work_piling_up(before, sample(ready=150, unacked=6050))
    assert not work_piling_up(before, sample(ready=50, unacked=6050))  # within 2 sigma
    waited = history(sample(ready=3, unacked=6000, at=NOW - 15))
    assert not work_piling_up(waited, sample(ready=300, unacked=6000))  # saturated's to tell


def test_piles_outgrown_from_a_poll_that_kept_up() -> None:
    """The real-worker bench's pika pool at prefetch 20, after a probe took it 3 -> 2: 3
    held at the shrink's poll, 10 at a poll kept as well, then 21 (where its backlog policy
    regrew it). From the lowest poll that kept up, whichever the kept polls are."""
    shrink = reading_of(sample(unacked=3, consumers=3, at=NOW - 18), 3)
    later = reading_of(sample(unacked=10, consumers=2, at=NOW - 6), 2)
    assert outgrown((shrink, later), sample(unacked=21, consumers=2))  # 2 a pod before: +19
    assert outgrown((later, shrink), sample(unacked=21, consumers=2)), "not only the first"
    assert not outgrown((later,), sample(unacked=21, consumers=2)), "10 on 2 never kept up"
    assert not outgrown((shrink,), sample(unacked=14, consumers=2)), "+12: chance"
    assert not outgrown((shrink,), sample(ready=1, unacked=21, consumers=2)), "ready: the rest"
    assert not outgrown((), sample(unacked=21, consumers=2))
    assert not outgrown((shrink,), sample(unacked=21, consumers=0))
    waited = reading_of(sample(ready=2, unacked=3, consumers=3, at=NOW - 18), 3)
    assert not outgrown((waited,), sample(unacked=21, consumers=2))
    flood = reading_of(sample(unacked=600, consumers=30, at=NOW - 18), 30)  # working off piles
    assert not outgrown((flood,), sample(unacked=900, consumers=30))
    # review 27: a queue missing from one poll (10 held on its 10 consumers, the other
    # queue's 2 consumers holding 10 each unseen) showed a pool that never kept up as one
    partial = reading_of(sample(unacked=10, consumers=10, at=NOW - 18, complete=False), 12)
    whole = reading_of(sample(unacked=30, consumers=12, at=NOW - 33), 12)
    assert not outgrown((whole, partial), sample(unacked=30, consumers=12))
    assert outgrown((whole, shrink), sample(unacked=30, consumers=12)), "a complete one does"


def test_a_pile_growing_with_nothing_ready_measures_the_speed() -> None:
    """Unlimited prefetch: nothing ever stays ready, so `saturated` never holds; a pile
    that grows beyond chance while every replica consumes is the pool working flat out
    (found by the simulator: unmeasured, the probe shrank a steady pool below its need
    again and again, and the messages it parked waited behind the piles)."""
    piling = history(sample(unacked=120, at=NOW - 60), sample(unacked=150, at=NOW - 15))
    now = sample(unacked=200, ack=8.0)
    assert outrun(piling, now, 4)
    assert measures(piling, now, 4, Flow(10.0, 8.0))
    # measured: the estimate follows acks / replicas down as well as up
    assert per_replica_rate(4.0, piling, now, 4) == pytest.approx(4.0 + RATE_SMOOTHING * -2.0)


def test_a_pile_is_no_measure_when_no_replica_was_consuming_or_nothing_was_held() -> None:
    piling = history(sample(unacked=120, at=NOW - 60), sample(unacked=150, at=NOW - 15))
    # one pod gone or starting: measured over the 4 replicas, low rather than not at all
    restarting = sample(unacked=200, ack=9.0, consumers=3)
    assert per_replica_rate(None, piling, restarting, 4) == pytest.approx(2.25)
    assert not outrun(piling, sample(unacked=200, consumers=0), 4)
    assert not outrun((), sample(unacked=200), 4)
    assert not outrun(piling, sample(unacked=200), 0)
    # a burst into an idle pool: nothing was held at the previous reading, so the 5 s ack
    # rate covers idle seconds too (it would read the speed low and stop the probing)
    burst = history(sample(unacked=0, at=NOW - 60), sample(unacked=0, at=NOW - 15))
    assert not outrun(burst, sample(unacked=200, ack=1.0), 4)
    # a pile within chance, or shrinking: no measure
    steady = history(sample(unacked=150, at=NOW - 60), sample(unacked=150, at=NOW - 15))
    assert not outrun(steady, sample(unacked=160), 4)
    assert not outrun(piling, sample(unacked=100), 4)
    # messages ready: saturated() is the rule there, not this one
    assert not outrun(piling, sample(ready=5, unacked=200), 4)


def test_lag_on_a_partitioned_queue_is_no_saturation() -> None:
    """Review: a Kafka group's lag counts the messages in hand, and lag on one partition
    says nothing of the members owning the others; read as saturation, every poll of a
    busy group "measured" the load per replica, and the rate floor held a pool at its
    flood-time size for as long as traffic lasted."""
    before = history(sample(ready=5, at=NOW - 15))
    kafka = dataclasses.replace(sample(ready=5, ack=40.0), shared=False)
    assert saturated(before[-1], sample(ready=5), 4)
    assert not saturated(before[-1], kafka, 4)
    assert not measures(before, kafka, 4, Flow(40.0, 40.0))
    assert per_replica_rate(10.0, before, kafka, 4) == 10.0  # 40/4 = 10 would be no measure


def test_a_pile_is_no_measure_when_consumers_joined_between_the_readings() -> None:
    """Review: pods that joined between the readings did not work the whole span."""
    piling = history(sample(unacked=120, consumers=3, at=NOW - 60),
                     sample(unacked=150, consumers=3, at=NOW - 15))
    assert not outrun(piling, sample(unacked=200, consumers=4, ack=8.0), 4)
    steady = history(sample(unacked=120, at=NOW - 60), sample(unacked=150, at=NOW - 15))
    assert outrun(steady, sample(unacked=200, ack=8.0), 4)


def test_fewer_held_with_nothing_ready_is_a_pool_draining_its_own() -> None:
    before = history(sample(unacked=146, consumers=42, at=NOW - 15))
    assert draining(before, sample(unacked=105, consumers=42)) == 146
    assert draining(before, sample(unacked=146, consumers=42)) is None  # not fewer
    # review 21: fewer within chance is no pool keeping up (1,000 -> 998 would take hours)
    big = history(sample(unacked=1000, consumers=4, at=NOW - 15))
    assert draining(big, sample(unacked=998)) is None
    assert draining(big, sample(unacked=960)) is None  # 40 < 2 x sqrt(1,000)
    assert draining(big, sample(unacked=930)) == 1000
    assert draining(before, sample(unacked=200, consumers=42)) is None
    assert draining(before, sample(ready=1, unacked=105, consumers=42)) is None  # work waits
    waited = history(sample(ready=3, unacked=146, consumers=42, at=NOW - 15))
    assert draining(waited, sample(unacked=105, consumers=42)) is None
    assert draining((), sample(unacked=105)) is None
    assert draining(before, sample(unacked=105, complete=False)) is None  # a queue missing
    lag = QueueSample(0, 105, 42, NOW, shared=False)  # a partition's lag is no pile
    assert draining(before, lag) is None
    # not across an outage or a clock step: the previous poll is no yardstick then
    assert draining(history(sample(unacked=146, at=NOW - 600)), sample(unacked=105)) is None
    assert draining(history(sample(unacked=146, at=NOW + 15)), sample(unacked=105)) is None


def test_a_pool_that_grew_or_just_woke_is_not_falling_behind() -> None:
    # a flood: the pool grew from 4 to 40 consumers, each prefetching its share
    grew = history(sample(unacked=16, consumers=4, at=NOW - 30), sample(unacked=80, consumers=20,
                                                                         at=NOW - 15))
    assert not falling_behind(grew, sample(unacked=160, consumers=40))
    # the first polls after waking from idle saw work ready: the backlog policy's case
    woke = history(sample(ready=2000, consumers=0, at=NOW - 30), sample(unacked=40, at=NOW - 15))
    assert not falling_behind(woke, sample(unacked=400))
