"""How a policy looks at the simulated broker: when, and how stale each figure is. Pure.

Both worlds of the simulator (the fluid one and the message-level one of `sim.workers`)
record the broker's view once a second in a `History`; `observe` turns it into the sample
a policy is shown, each field as old as its source makes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from queuescaler.core.sample import QueueSample


@dataclass(frozen=True, slots=True)
class Sampling:
    """How a policy looks at the queue: how often, and how stale each number is."""

    polling_interval: float
    """Seconds between two looks (and two decisions)."""
    count_delay: float = 0.0
    """Age of `ready` and `consumers`: about 0 through AMQP, the stats delay through HTTP."""
    stats_delay: float = 0.0
    """Age of `unacked` and the rates: the management API's statistics delay (~5 s)."""
    rate_window: float = 5.0
    """Rates average over this many seconds, like RabbitMQ's default statistics interval."""


@dataclass(slots=True)
class History:
    """The broker's view at each whole second (index = time), for delayed sampling."""

    ready: list[float] = field(default_factory=list)
    unacked: list[float] = field(default_factory=list)
    consumers: list[int] = field(default_factory=list)
    published: list[float] = field(default_factory=list)
    """Cumulative counts, so a rate over any window is one subtraction."""
    acked: list[float] = field(default_factory=list)
    delivered: list[float] = field(default_factory=list)

    def record(
        self,
        ready: float,
        unacked: float,
        consumers: int,
        published: float,
        acked: float,
        delivered: float,
    ) -> None:
        self.ready.append(ready)
        self.unacked.append(unacked)
        self.consumers.append(consumers)
        self.published.append(published)
        self.acked.append(acked)
        self.delivered.append(delivered)


def clamp_index(time: float, length: int) -> int:
    return min(max(0, math.floor(time)), length - 1)


def observe(history: History, now: int, sampling: Sampling) -> QueueSample:
    """The sample a policy polling at `now` is shown: `ready` and `consumers` are
    `count_delay` old, `unacked`, the rates and the counters `stats_delay` old; a rate is
    the counter's difference over `rate_window` seconds (None before a full window)."""
    counts_at = clamp_index(now - sampling.count_delay, len(history.ready))
    stats_at = clamp_index(now - sampling.stats_delay, len(history.ready))
    window = max(1, round(sampling.rate_window))

    def rate(cumulative: list[float]) -> float | None:
        if stats_at < window:
            return None
        return (cumulative[stats_at] - cumulative[stats_at - window]) / window

    return QueueSample(
        ready=round(history.ready[counts_at]),
        unacked=round(history.unacked[stats_at]),
        consumers=history.consumers[counts_at],
        taken_at=float(now),
        publish_rate=rate(history.published),
        ack_rate=rate(history.acked),
        deliver_rate=rate(history.delivered),
        published_total=round(history.published[stats_at]),
        acked_total=round(history.acked[stats_at]),
    )
