"""The worker model of a replay, and where each of its values came from: given by the user,
estimated from what the recorded series honestly tell, or a default said to be one. Pure.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from typing import Any, Final

from queuescaler.sim.traces import Trace
from queuescaler.sim.traffic import Traffic, plausible_service, service_bounds_words
from queuescaler.sim.workers import WorkerModel

DEFAULT_SERVICE_SECONDS: Final = 1.0
"""A task's mean duration when nothing tells it: a guess, and the output says so."""
DEFAULT_CONCURRENCY: Final = 1
DEFAULT_PREFETCH: Final = 1
DEFAULT_POD_START_DELAY: Final = 10.0



@dataclass(frozen=True, slots=True)
class Given:
    """What the user said about the workers (None: nothing said)."""

    service_seconds: float | None = None
    concurrency: int | None = None
    prefetch: int | None = None
    """Celery's `worker_prefetch_multiplier` (pika: prefetch_count / concurrency); 0 means
    no limit, as in Celery."""
    pod_start_delay: float | None = None


@dataclass(frozen=True, slots=True)
class ReplayModel:
    """How the replayed workers take the work, and where each value came from."""

    service_seconds: float
    concurrency: int
    prefetch: int | None
    """None: no limit."""
    pod_start_delay: float
    origins: tuple[tuple[str, str], ...] = ()
    """(knob, where its value came from): `given`, `estimated: ...`, `default`..."""

    def origin(self, knob: str) -> str:
        return dict(self.origins).get(knob, "given")

    def workers(self, seed: int) -> WorkerModel:
        """The message-level world's workers (task times exponential around the mean)."""
        return WorkerModel(prefetch=self.prefetch, concurrency=self.concurrency, seed=seed)

    def describe(self) -> list[tuple[str, str, str]]:
        """(knob, value, origin) rows for the output."""
        prefetch = "unlimited" if self.prefetch is None else str(self.prefetch)
        return [
            ("service time", f"{self.service_seconds:.3g} s", self.origin("service time")),
            ("concurrency", str(self.concurrency), self.origin("concurrency")),
            ("prefetch", prefetch, self.origin("prefetch")),
            ("pod start delay", f"{self.pod_start_delay:g} s", self.origin("pod start delay")),
        ]


def estimate_model(
    given: Given, *, traffic: Traffic | None = None, trace: Trace | None = None
) -> ReplayModel:
    """The worker model from what the user gave, else what the traffic tells, else defaults.

    - the task time: from a service_seconds column (its mean, weighted by the publish
      rate), else from the operator's per-replica rate (a replica of `concurrency` workers
      acking r messages a second takes concurrency / r seconds a task; its latest value, the
      operator's best estimate), else a synthetic trace's own;
    - the pod start delay: from the operator's replicas and consumers series (`pod_start`);
    - the prefetch: from its backlog by state and consumers series (`held_per_consumer`);
    - concurrency: never (no series tells slots in progress from messages held): a flag or
      the default, and the output says which.
    """
    origins: dict[str, str] = {}

    def pick(knob: str, value: Any, default: Any, estimate: Estimate | None = None) -> Any:
        if value is not None:
            origins[knob] = "given"
            return value
        if estimate is not None:
            origins[knob] = f"estimated: {estimate.words}"
            return estimate.value
        origins[knob] = "default (not estimated: " + _why_not(knob, traffic) + ")"
        return default

    concurrency: int = pick("concurrency", given.concurrency, DEFAULT_CONCURRENCY)
    held = held_per_consumer(traffic) if traffic and given.prefetch is None else None
    if held is not None:
        slots = max(1, round(held.value / concurrency))
        held = Estimate(slots, f"{held.value:.3g} held a consumer ({held.words}) / "
                               f"concurrency {concurrency}")
    prefetch: int | None = pick("prefetch", given.prefetch, DEFAULT_PREFETCH, held) or None
    started = pod_start(traffic) if traffic and given.pod_start_delay is None else None
    delay: float = pick("pod start delay", given.pod_start_delay, DEFAULT_POD_START_DELAY,
                        started)
    service, origin = _service_seconds(given, traffic, trace, concurrency)
    origins["service time"] = origin
    return ReplayModel(service, concurrency, prefetch, delay, tuple(origins.items()))


def _service_seconds(
    given: Given, traffic: Traffic | None, trace: Trace | None, concurrency: int
) -> tuple[float, str]:
    if given.service_seconds is not None:
        return given.service_seconds, "given"
    if traffic is not None and traffic.service_seconds:
        pairs = [
            (seconds, rate)
            for seconds, rate in zip(traffic.service_seconds, traffic.publish_rates, strict=True)
            if seconds is not None
        ]
        weight = sum(rate for _, rate in pairs)
        if weight:
            mean = sum(seconds * rate for seconds, rate in pairs) / weight
        else:
            mean = statistics.fmean(seconds for seconds, _ in pairs)
        return mean, "estimated: mean of the traffic's service_seconds, weighted by publish rate"
    recorded = [r for r in (traffic.per_replica_rates if traffic else ())
                if r is not None and math.isfinite(r) and r > 0]
    # A rate giving a task time beyond a day or under a microsecond is one read near zero
    # or a glitch, not a worker's speed.
    known = [r for r in recorded if plausible_service(concurrency / r)]
    if known:
        rate = known[-1]
        which = "the operator's latest" if rate == recorded[-1] else (
            "the operator's latest plausible one")
        return concurrency / rate, (
            f"estimated: concurrency {concurrency} / per-replica rate {rate:.3g} msg/s ({which})"
        )
    if recorded:
        return DEFAULT_SERVICE_SECONDS, (
            f"default (the per-replica rates recorded give task times outside "
            f"{service_bounds_words()}: give --service-seconds)"
        )
    if trace is not None:
        return 1.0 / trace.service_rate, f"the trace's ({trace.name})"
    return DEFAULT_SERVICE_SECONDS, "default (nothing to estimate it from: give it)"


# --- what the operator's series tell ------------------------------------------------------------

MIN_HELD_POINTS: Final = 3
"""Points with messages waiting that `held_per_consumer` needs before it says anything."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """A value the recorded series tell, and how, in words for the output."""

    value: float
    words: str


def _why_not(knob: str, traffic: Traffic | None) -> str:
    if traffic is None:
        return "no recorded series"
    if knob == "concurrency":
        return "no series tells it; give --concurrency"
    if knob == "prefetch":
        if not (traffic.unacked and traffic.consumers):
            return "no unacked and consumers series; give --prefetch"
        return "messages never waited while consumers were attached; give --prefetch"
    if not (traffic.replicas and traffic.consumers):
        return "no replicas and consumers series; give --pod-start-delay"
    return "no scale-up whose consumers caught up was recorded; give --pod-start-delay"


def consumers_per_replica(traffic: Traffic) -> int | None:
    """Consumers each replica attaches (1 for a Celery or pika worker on one queue): the
    median ratio over points where the pool has held its size since the point before."""
    ratios = [
        consumers / replicas
        for (r0, replicas), consumers in zip(
            itertools.pairwise(traffic.replicas), traffic.consumers[1:], strict=True
        )
        if replicas and consumers is not None and r0 == replicas
    ]
    if not ratios:
        return None
    ratio = statistics.median(ratios)
    return round(ratio) if ratio >= 0.5 and abs(ratio - round(ratio)) < 0.25 else None


def pod_start(traffic: Traffic) -> Estimate | None:
    """The pod start delay: for each recorded scale-up, the time from the first point with
    the new replica count (the operator's patch, spec.replicas) to the first point whose
    consumers reached it (times the consumers each replica attaches); their median. It
    includes the broker's view of consumers (live through the fast path, else up to its
    statistics interval late) and is only as fine as the series' step. None when no
    scale-up's consumers caught up before the pool shrank again."""
    if not (traffic.replicas and traffic.consumers):
        return None
    per_replica = consumers_per_replica(traffic)
    if per_replica is None:
        return None
    replicas, consumers, times = traffic.replicas, traffic.consumers, traffic.times
    delays = []
    for i in range(1, len(times)):
        before, after = replicas[i - 1], replicas[i]
        if before is None or after is None or not after > before:
            continue
        for j in range(i, len(times)):
            if replicas[j] is None or replicas[j] < after:  # type: ignore[operator]
                break  # shrank (or went unrecorded) before its consumers caught up
            seen = consumers[j]
            if seen is not None and seen >= after * per_replica:
                delays.append(times[j] - times[i])
                break
    if not delays:
        return None
    step = statistics.median(b - a for a, b in itertools.pairwise(times))
    return Estimate(
        statistics.median(delays),
        f"median of {len(delays)} scale-up{'s' if len(delays) > 1 else ''}, from the replicas "
        f"series rising to the consumers series catching up ({per_replica} a replica); points "
        f"{step:g} s apart, each as fresh as Prometheus' last scrape",
    )


def held_per_consumer(traffic: Traffic) -> Estimate | None:
    """Messages each consumer holds while others wait in the queue: its prefetch window, all
    of it taken (RabbitMQ hands ready messages to any consumer with room). The median of
    unacked / consumers over points with messages ready. Assumes acks when a task ends (as
    the replay's workers do): workers that ack on receipt hold fewer unacked."""
    if not (traffic.unacked and traffic.consumers and traffic.backlog):
        return None
    held = [
        unacked / consumers
        for backlog, unacked, consumers in zip(
            traffic.backlog, traffic.unacked, traffic.consumers, strict=True
        )
        if backlog is not None and unacked is not None and consumers
        and backlog - unacked >= 1 and unacked >= 1
    ]
    if len(held) < MIN_HELD_POINTS:
        return None
    return Estimate(
        statistics.median(held),
        f"median unacked / consumers over {len(held)} points with messages ready; acks at the "
        "task's end assumed",
    )
