"""How fast messages arrive and how fast one replica works: the rate policy's two inputs. Pure.

Two things make the broker's own figures a poor guide (issue 12):

- Its `rate` fields average over the statistics interval (5 s). At 0.2 msg/s that window
  holds 0 or 1 message, so a publish rate read from it jumps between 0 and 0.2 on noise.
  The cumulative counters (`message_stats.publish`, `.ack`) differenced between two ticks
  count every message over the whole polling interval instead: exact, and three times the
  messages at the default 15 s.
- Workers hold more than one message. A Celery worker prefetches concurrency x 4 messages,
  a pika worker `prefetch_count`; `unacked` counts them all, started or parked. Dividing
  the ack rate by "replicas holding a message" then measures the load a replica carries,
  not what it can do, and the rate floor keeps every pool as large as it happens to be.

So one replica's throughput is measured only while the pool is saturated: messages were
ready at two polls in a row with the same consumers, so every consumer's buffer stayed
full and every replica worked at its full concurrency the whole time, whatever its
prefetch. Then acks / consumers is what a replica does. At any other time the pool kept
up, and acks / consumers is only a lower bound: it may raise the estimate, never lower it,
and never create one (a pool that never queues work has no measured speed, and the floor
stays off: the backlog policy alone sizes it, as it should when nothing waits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from queuescaler.core.sample import QueueSample

RATE_SMOOTHING: Final = 0.3
"""EWMA weight of the newest per-replica throughput observation: a lasting change is 83%
absorbed after five saturated ticks, while one odd tick moves the estimate by less than a
third."""

RATE_OUTLIER_FACTOR: Final = 2.0
"""One observation may move the throughput estimate as if it were at most this many times
the estimate (or this fraction of it): a lasting change still arrives in a few ticks, one
glitch (RabbitMQ has reported absurd ack rates after a counter reset) cannot cut the rate
floor to a fraction for minutes."""


@dataclass(frozen=True, slots=True)
class Reading:
    """What the next tick differences against: the previous sample's counts."""

    taken_at: float
    ready: int
    consumers: int
    published_total: int | None
    acked_total: int | None


@dataclass(frozen=True, slots=True)
class Flow:
    """Messages per second over the last tick: published to the queue, acknowledged."""

    publish: float | None
    ack: float | None


RATE_HISTORY: Final = 8
"""Readings kept for the publish rate: 2 minutes at the default 15 s polls."""

MIN_COUNTED: Final = 20
"""The publish rate spans as many kept readings as it takes to count this many messages:
one tick at busy queues, up to `RATE_HISTORY` ticks at quiet ones (0.2 msg/s: 24
messages in 2 minutes instead of 3 in one tick), so a quiet queue's rate is not noise."""


def reading_of(sample: QueueSample) -> Reading:
    return Reading(
        sample.taken_at, sample.ready, sample.consumers, sample.published_total,
        sample.acked_total,
    )


def remember(readings: tuple[Reading, ...], sample: QueueSample) -> tuple[Reading, ...]:
    """The readings after this sample, oldest first. A counter that went down starts the
    history again: nothing before a reset can be differenced against what follows it."""
    new = reading_of(sample)
    if readings and _reset(readings[-1], new):
        readings = ()
    return (*readings, new)[-RATE_HISTORY:]


def flow_since(readings: tuple[Reading, ...], sample: QueueSample) -> Flow:
    """The rates: acks over the last tick, publishes over the shortest span of kept
    readings that counts `MIN_COUNTED` messages (or all of them), both from counters
    differenced when both ends know them, else the broker's own rate fields. A counter
    that went down (queue re-declared, node restarted) is a reset, not a negative rate."""
    publish, ack = _sane(sample.publish_rate), _sane(sample.ack_rate)
    if not readings:
        return Flow(publish, ack)
    ack = _per_second(readings[-1].acked_total, sample.acked_total,
                      sample.taken_at - readings[-1].taken_at, ack)
    after = sample.published_total
    for reading in reversed(readings):
        counted = _per_second(reading.published_total, after,
                              sample.taken_at - reading.taken_at, None)
        if counted is None:
            break
        publish = counted
        if after is not None and after - (reading.published_total or 0) >= MIN_COUNTED:
            break
    return Flow(publish, ack)


def saturated(previous: Reading | None, sample: QueueSample, current_replicas: int) -> bool:
    """Whether every replica worked flat out over the whole tick: messages were ready at
    both ends (the broker hands a ready message to any consumer with room, so none had
    room), and the same consumers, all of the pool's replicas, were there throughout."""
    return (
        previous is not None
        and previous.ready > 0
        and sample.ready > 0
        and previous.consumers == sample.consumers == current_replicas
        and current_replicas > 0
    )


def per_replica_rate(
    estimate: float | None,
    readings: tuple[Reading, ...],
    sample: QueueSample,
    current_replicas: int,
) -> float | None:
    """The per-replica throughput estimate after this sample (see the module docstring).

    Saturated, acks / consumers measures a replica: the estimate moves towards it either
    way. Otherwise acks / replicas holding a message is a lower bound (each such replica
    runs at least one task, at most its concurrency): exact for one task at a time, low by
    up to the concurrency otherwise. It sets an unknown estimate and may raise one, never
    lower it, so a pool that keeps up can only learn it is faster than thought; being
    wrong the other way costs one saturated tick, which measures again.
    """
    if estimate is not None and not 0.0 < estimate < math.inf:
        estimate = None  # a corrupt value (restored from a hand-edited status, say)
    serving = min(current_replicas, sample.consumers)
    if serving <= 0:
        return estimate  # acks with no consumer came from pods on their way out
    measured = saturated(readings[-1] if readings else None, sample, current_replicas)
    if measured:  # the acks of the whole tick, all of it flat out
        ack, busy = flow_since(readings, sample).ack, serving
    else:  # the rate field: the same seconds as the unacked count it is divided by
        ack, busy = _sane(sample.ack_rate), max(1, min(serving, sample.unacked))
    if ack is None or not ack > 0.0:
        return estimate
    observed = ack / busy
    if estimate is None:
        return observed
    observed = min(max(observed, estimate / RATE_OUTLIER_FACTOR), estimate * RATE_OUTLIER_FACTOR)
    if not measured and observed <= estimate:
        return estimate
    return estimate + RATE_SMOOTHING * (observed - estimate)


def _sane(rate: float | None) -> float | None:
    """A rate the policy may use: negative, NaN and infinite ones are unknown."""
    return rate if rate is not None and 0.0 <= rate < math.inf else None


def _per_second(before: int | None, after: int | None, seconds: float,
                fallback: float | None) -> float | None:
    if before is None or after is None or after < before or not 0.0 < seconds < math.inf:
        return fallback
    rate = (after - before) / seconds
    return rate if rate < math.inf else fallback


def _reset(before: Reading, after: Reading) -> bool:
    return any(
        old is not None and new is not None and new < old
        for old, new in ((before.published_total, after.published_total),
                         (before.acked_total, after.acked_total))
    )
