"""The rate policy's inputs (core/throughput.py): exact rates from counters, and one
replica's speed whatever its prefetch or concurrency (issue 12).

Each case pictures a worker other than "holds one message": prefetch 20, Celery's
concurrency 4 x 4, no prefetch limit, a counter reset, a clock that went back.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queuescaler.core.sample import QueueSample
from queuescaler.core.throughput import (
    MIN_COUNTED,
    RATE_HISTORY,
    RATE_OUTLIER_FACTOR,
    RATE_SMOOTHING,
    Flow,
    Reading,
    flow_since,
    per_replica_rate,
    remember,
    saturated,
)

pytestmark = pytest.mark.unit

NOW = 1_000.0


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
) -> QueueSample:
    return QueueSample(
        ready, unacked, consumers, at, publish_rate=publish, ack_rate=ack,
        published_total=published, acked_total=acked,
    )


def reading(
    ready: int = 0, consumers: int = 4, *, at: float = NOW - 15,
    published: int | None = None, acked: int | None = None,
) -> Reading:
    return Reading(at, ready, consumers, published, acked)


# --- rates from counters --------------------------------------------------------------


def test_counters_differenced_over_the_tick_replace_the_5s_rate_fields() -> None:
    # 0.2 msg/s: the 5 s rate field read 0.0 this time; the counters saw 3 in 15 s
    before = (reading(published=100, acked=97),)
    flow = flow_since(before, sample(publish=0.0, ack=0.4, published=103, acked=100))
    assert flow == Flow(publish=pytest.approx(0.2), ack=pytest.approx(0.2))


def test_a_quiet_queue_counts_its_publishes_over_more_readings() -> None:
    history = tuple(reading(at=NOW - 15 * k, published=100 - 3 * k) for k in range(8, 0, -1))
    flow = flow_since(history, sample(published=100))
    # one tick held 3 messages; the span that counts MIN_COUNTED (or all kept) is used
    span = next(k for k in range(1, 9) if 3 * k >= MIN_COUNTED)
    assert flow.publish == pytest.approx(3 * span / (15 * span))


def test_a_busy_queue_needs_only_the_last_tick() -> None:
    history = (reading(at=NOW - 30, published=0), reading(at=NOW - 15, published=1000))
    assert flow_since(history, sample(published=1300)).publish == pytest.approx(20.0)


@pytest.mark.parametrize(
    ("before", "after", "why"),
    [
        pytest.param(reading(published=500, acked=500), sample(publish=2.0, ack=1.0,
                     published=10, acked=8), "counter reset", id="reset"),
        pytest.param(reading(published=None, acked=None), sample(publish=2.0, ack=1.0,
                     published=10, acked=8), "no counters before", id="first-statistics"),
        pytest.param(reading(at=NOW + 5, published=1, acked=1), sample(publish=2.0, ack=1.0,
                     published=10, acked=8), "clock went back", id="clock-back"),
        pytest.param(reading(at=NOW, published=1, acked=1), sample(publish=2.0, ack=1.0,
                     published=10, acked=8), "no time passed", id="same-instant"),
    ],
)
def test_counters_that_cannot_be_differenced_fall_back_to_the_rate_fields(
    before: Reading, after: QueueSample, why: str
) -> None:
    assert flow_since((before,), after) == Flow(2.0, 1.0), why


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_impossible_rate_fields_are_unknown(bad: float) -> None:
    assert flow_since((), sample(publish=bad, ack=bad)) == Flow(None, None)


def test_a_reset_starts_the_history_again_and_it_stays_bounded() -> None:
    history: tuple[Reading, ...] = ()
    for k in range(20):
        history = remember(history, sample(at=NOW + k, published=10 * k, acked=10 * k))
    assert len(history) == RATE_HISTORY
    history = remember(history, sample(at=NOW + 21, published=3, acked=3))
    assert history == (reading(at=NOW + 21, consumers=4, published=3, acked=3),)


# --- one replica's speed --------------------------------------------------------------


def test_saturated_means_ready_at_both_ends_with_the_whole_pool_consuming() -> None:
    assert saturated(reading(ready=5), sample(ready=5), 4)
    assert not saturated(None, sample(ready=5), 4)  # one look cannot tell a blip
    assert not saturated(reading(ready=0), sample(ready=5), 4)
    assert not saturated(reading(ready=5), sample(ready=0), 4)
    assert not saturated(reading(ready=5, consumers=2), sample(ready=5), 4)  # pool grew
    assert not saturated(reading(ready=5), sample(ready=5), 6)  # pods still starting
    assert not saturated(reading(ready=5, consumers=0), sample(ready=5, consumers=0), 0)


@pytest.mark.parametrize(
    ("unacked", "worker"),
    [
        pytest.param(4, "prefetch 1", id="prefetch-1"),
        pytest.param(80, "pika basic_qos(prefetch_count=20)", id="prefetch-20"),
        pytest.param(64, "Celery concurrency 4 x multiplier 4", id="celery-4x4"),
        pytest.param(4000, "no prefetch limit", id="unlimited"),
    ],
)
def test_a_saturated_pool_measures_a_replica_whatever_it_prefetches(
    unacked: int, worker: str
) -> None:
    # 4 replicas acking 40 messages/s in all, work waiting: 10 msg/s each
    before = (reading(ready=50, published=0, acked=1000),)
    after = sample(ready=50, unacked=unacked, published=600, acked=1600)
    assert per_replica_rate(None, before, after, 4) == pytest.approx(10.0), worker


def test_keeping_up_gives_a_lower_bound_that_sets_an_unknown_estimate() -> None:
    # nothing waits: 8 msg/s acked by the 2 replicas holding messages is at least 4 each
    assert per_replica_rate(None, (), sample(unacked=2, consumers=10, ack=8.0), 10) == 4.0


def test_a_lower_bound_never_lowers_the_estimate() -> None:
    # Celery at concurrency 4, lightly loaded: each replica holds 1 message and acks 1/s.
    # That says nothing of the 3 idle slots: a measured 4/s must stay.
    light = sample(unacked=4, consumers=4, ack=4.0)
    assert per_replica_rate(4.0, (reading(),), light, 4) == 4.0


def test_a_lower_bound_above_the_estimate_raises_it() -> None:
    faster = sample(unacked=2, consumers=4, ack=16.0)
    assert per_replica_rate(4.0, (reading(),), faster, 4) == pytest.approx(
        4.0 + RATE_SMOOTHING * (8.0 - 4.0)
    )


def test_a_saturated_tick_may_lower_the_estimate() -> None:
    # tasks got slower: 4 replicas flat out ack 8 msg/s over the tick
    before = (reading(ready=30, acked=0),)
    after = sample(ready=40, unacked=4, acked=120)
    assert per_replica_rate(4.0, before, after, 4) == pytest.approx(
        4.0 + RATE_SMOOTHING * (2.0 - 4.0)
    )


def test_one_absurd_tick_moves_the_estimate_by_a_bounded_step() -> None:
    before = (reading(ready=30, acked=0),)
    glitch = sample(ready=40, unacked=4, acked=10**12)
    after = per_replica_rate(4.0, before, glitch, 4)
    assert after == pytest.approx(4.0 + RATE_SMOOTHING * (4.0 * RATE_OUTLIER_FACTOR - 4.0))


@pytest.mark.parametrize(
    ("queue", "current"),
    [
        pytest.param(sample(unacked=3, consumers=0, ack=6.0), 0, id="acks-from-pods-going"),
        pytest.param(sample(ready=5, consumers=4, ack=None), 4, id="no-acks"),
        pytest.param(sample(ready=5, consumers=4, ack=0.0), 4, id="zero-acks"),
        pytest.param(sample(ready=5, consumers=4, ack=-3.0), 4, id="negative-acks"),
        pytest.param(sample(ready=5, consumers=4, ack=math.nan), 4, id="nan-acks"),
    ],
)
def test_nothing_to_learn_keeps_the_estimate(queue: QueueSample, current: int) -> None:
    assert per_replica_rate(3.0, (), queue, current) == 3.0
    assert per_replica_rate(None, (), queue, current) is None


@pytest.mark.parametrize("corrupt", [-1.0, 0.0, math.nan, math.inf])
def test_a_corrupt_estimate_is_replaced(corrupt: float) -> None:
    assert per_replica_rate(corrupt, (), sample(unacked=1, ack=2.0), 4) == 2.0


counts = st.integers(0, 10_000)
rates = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))
totals = st.one_of(st.none(), st.integers(0, 10**9))


@st.composite
def samples(draw: st.DrawFn) -> QueueSample:
    return QueueSample(
        draw(counts), draw(counts), draw(st.integers(0, 200)),
        draw(st.floats(-1e6, 1e6)), publish_rate=draw(rates), ack_rate=draw(rates),
        published_total=draw(totals), acked_total=draw(totals),
    )


@given(
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    st.lists(samples(), max_size=10),
    samples(),
    st.integers(0, 200),
)
def test_property_rates_and_estimate_stay_sane(
    estimate: float | None, earlier: list[QueueSample], now: QueueSample, current: int
) -> None:
    history: tuple[Reading, ...] = ()
    for before in earlier:
        history = remember(history, before)
    flow = flow_since(history, now)
    for rate in (flow.publish, flow.ack):
        assert rate is None or 0.0 <= rate < math.inf
    after = per_replica_rate(estimate, history, now, current)
    assert after is None or 0.0 < after < math.inf
    sane = estimate is not None and 0.0 < estimate < math.inf
    if sane and after is not None and after < estimate:  # only a saturated tick lowers it
        assert saturated(history[-1] if history else None, now, current)
        assert after >= estimate / RATE_OUTLIER_FACTOR
