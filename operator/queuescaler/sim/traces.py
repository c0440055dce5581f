"""Arrival traces the simulator replays: the workloads every policy is judged on.

Each builder is deterministic: the same arguments (seed included) give the same trace,
so a table in `bench/` can be reproduced and two policies always meet the same load.

A replica is one worker process taking one message at a time: a Celery worker run with
`--concurrency 1`, `worker_prefetch_multiplier = 1` and `task_acks_late = True` (Celery's
own advice for long tasks), or a pika consumer with `basic_qos(prefetch_count=1)` that
acks when done. Service rates are such a worker's: 10 messages a second for the 100 ms
tasks that make up most Celery queues (send an e-mail, call a webhook, write a row), 0.2
for 5 s tasks (render a thumbnail or a PDF). Counts are per queue and per hour, the size
of one busy production queue: from 1,800 messages (a trickle of uploads) to 360,000.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

_NORMAL_APPROXIMATION_ABOVE = 30.0
"""Poisson means above this are drawn from a normal law: exact enough, and O(1) a draw."""


@dataclass(frozen=True, slots=True)
class Trace:
    """A workload: what is published each second, and how fast one replica works."""

    name: str
    arrivals: tuple[int, ...]
    """Messages published during each second of the trace; its length is the duration."""
    service_rate: float
    """Messages one ready replica completes per second (slow tasks: well below 1)."""

    def __post_init__(self) -> None:
        if self.service_rate <= 0:
            raise ValueError("service_rate must be > 0")
        if any(count < 0 for count in self.arrivals):
            raise ValueError("arrivals must be >= 0")

    @property
    def duration(self) -> int:
        """Seconds covered by the trace."""
        return len(self.arrivals)

    @property
    def published(self) -> int:
        """Messages published over the whole trace."""
        return sum(self.arrivals)


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > _NORMAL_APPROXIMATION_ABOVE:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    # Knuth's product of uniforms: exact, and cheap for small means.
    limit = math.exp(-mean)
    count, product = 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _draw(rates: Iterable[float], seed: int) -> tuple[int, ...]:
    """Poisson arrivals around a mean rate per second: real publishers are never metronomes."""
    rng = random.Random(seed)
    return tuple(_poisson(rng, rate) for rate in rates)


def poisson_arrivals(rates: Iterable[float], *, seed: int) -> tuple[int, ...]:
    """Messages published in each second around a mean rate per second (seeded): what a
    recorded publish rate becomes for a replay (`sim.replay`)."""
    return _draw(rates, seed)


def steady(
    *, rate: float = 100.0, service_rate: float = 10.0, duration: int = 3600, seed: int = 1
) -> Trace:
    """A constant publish rate that the pool keeps up with: backlog near zero throughout.

    100 notifications a second, 100 ms each: 360,000 messages an hour for about ten
    workers. The case where a backlog-only policy starves a pool that keeps pace (KEDA
    issue 1643).
    """
    return Trace("steady", _draw((rate for _ in range(duration)), seed), service_rate)


def diurnal(
    *,
    low: float = 20.0,
    high: float = 200.0,
    period: int = 3600,
    service_rate: float = 10.0,
    duration: int = 3600,
    seed: int = 2,
) -> Trace:
    """A day-night swing from `low` to `high` and back over one `period`.

    An API's background jobs following its traffic, 20 to 200 a second (2 to 20 workers);
    the day is compressed into an hour so that a replay stays short, which makes the
    swing steeper than a real day's: a harder case, not an easier one.
    """
    amplitude = (high - low) / 2

    def rate(second: int) -> float:
        return low + amplitude * (1 - math.cos(2 * math.pi * second / period))

    return Trace("diurnal", _draw((rate(s) for s in range(duration)), seed), service_rate)


def bursts(
    *,
    base: float = 5.0,
    burst_rate: float = 200.0,
    burst_seconds: int = 60,
    every: int = 600,
    first_at: int = 300,
    service_rate: float = 10.0,
    duration: int = 3600,
    seed: int = 3,
) -> Trace:
    """A quiet base load with a periodic burst (a batch job, a cron, a marketing email).

    5 messages a second, and every ten minutes a Celery beat task fanning out 12,000 tasks
    over a minute (200 a second, 20 workers' worth) on top.
    """

    def rate(second: int) -> float:
        in_burst = second >= first_at and (second - first_at) % every < burst_seconds
        return burst_rate if in_burst else base

    return Trace("bursts", _draw((rate(s) for s in range(duration)), seed), service_rate)


def slow_spikes(
    *,
    base: float = 0.5,
    spike_messages: int = 300,
    every: int = 900,
    first_at: int = 300,
    service_rate: float = 0.2,
    duration: int = 3600,
    seed: int = 4,
) -> Trace:
    """Slow tasks (5 s each by default) with a spike of messages published in one second.

    Thumbnails: a trickle of single uploads (one every 2 s, 2.5 workers busy) and every
    15 minutes a batch upload of 300 images at once. The backlog is large in
    replica-seconds (1,500), not in count, and maxReplicas (100) caps the pool below it.
    """
    arrivals = list(_draw((base for _ in range(duration)), seed))
    for second in range(first_at, duration, every):
        arrivals[second] += spike_messages
    return Trace("slow-spikes", tuple(arrivals), service_rate)


def idle_then_flood(
    *,
    idle_seconds: int = 1800,
    flood_rate: float = 150.0,
    flood_seconds: int = 600,
    service_rate: float = 10.0,
    duration: int = 3600,
    seed: int = 5,
) -> Trace:
    """Nothing for a long time (a pool at its minimum), then a flood, then quiet again.

    A nightly import: half an hour of silence, then 90,000 rows enqueued over ten minutes
    (150 a second, 15 workers' worth), then silence again.
    """

    def rate(second: int) -> float:
        return flood_rate if idle_seconds <= second < idle_seconds + flood_seconds else 0.0

    return Trace("idle-then-flood", _draw((rate(s) for s in range(duration)), seed), service_rate)


def low_rate(
    *, rate: float = 0.2, service_rate: float = 0.125, duration: int = 3600, seed: int = 6
) -> Trace:
    """A trickle of slow tasks: one message every 5 s on average, 8 s each (1.6 workers'
    worth). The management API's 5 s rates see 0, 1 or 2 messages a window, so a rate
    here is mostly noise: the case where a throughput estimate has the least to learn from.
    """
    return Trace("low-rate", _draw((rate for _ in range(duration)), seed), service_rate)


def keda_rate(
    *, messages: int = 5, every: int = 2, service_rate: float = 1.0, duration: int = 3600
) -> Trace:
    """KEDA's rate scenario, as issue 12 states it: a publisher sending 5 messages every
    2 s to 1 s tasks (2.5 workers' worth). Deterministic: a metronome, not Poisson; the
    worker model's seed still places the messages within their second and draws their
    service times."""
    arrivals = tuple(messages if second % every == 0 else 0 for second in range(duration))
    return Trace("keda-rate", arrivals, service_rate)


STANDARD_TRACES: tuple[Callable[[], Trace], ...] = (
    steady,
    diurnal,
    bursts,
    slow_spikes,
    idle_then_flood,
)
"""The five workloads of DESIGN.md's decision-quality target, in table order."""


def standard_traces() -> tuple[Trace, ...]:
    """Build the five standard traces with their default (seeded) parameters."""
    return tuple(build() for build in STANDARD_TRACES)


NAMED: Mapping[str, Callable[[], Trace]] = MappingProxyType(
    {
        "steady": steady,
        "diurnal": diurnal,
        "bursts": bursts,
        "slow-spikes": slow_spikes,
        "idle-then-flood": idle_then_flood,
        "low-rate": low_rate,
        "keda-rate": keda_rate,
    }
)
"""Every trace by the name it carries, with its default (seeded) parameters: what
`queuescaler simulate --trace NAME` replays."""
