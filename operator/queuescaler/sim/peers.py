"""The peers' scaling formulas, written from their documentation, for the simulator.

Each is a policy in the sense of `queuescaler.simulator.Policy`: it sees a `QueueSample`
at its own interval, as stale as its source makes it, and answers a replica count. They
are models of documented behaviour, not ports of the peers' code; where the documents
leave a detail open, the docstring says which way we chose.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum

from queuescaler.core.sample import QueueSample
from queuescaler.sim.simulator import Sampling

MANAGEMENT_API_DELAY = 5.0
"""Seconds a RabbitMQ management API figure lags the queue (DESIGN.md measured 1.9-6.2 s)."""


class PolicyKind(StrEnum):
    """HPAScalingPolicy types."""

    PODS = "Pods"
    PERCENT = "Percent"


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """One HPA rate limit: at most `value` pods or percent per `period_seconds`."""

    kind: PolicyKind
    value: int
    period_seconds: float


@dataclass(frozen=True, slots=True)
class ScalingRules:
    """One direction of `spec.behavior` (selectPolicy Max: the most permissive policy wins)."""

    stabilization_seconds: float
    policies: tuple[ScalingPolicy, ...]


@dataclass(frozen=True, slots=True)
class HpaBehavior:
    """The HPA's defaults, from kubernetes.io/docs/tasks/run-application/
    horizontal-pod-autoscale/ ("Default Behavior" and "Algorithm details")."""

    sync_period_seconds: float = 15.0
    """--horizontal-pod-autoscaler-sync-period."""
    tolerance: float = 0.1
    """--horizontal-pod-autoscaler-tolerance: no change while the usage ratio is within it."""
    scale_up: ScalingRules = field(
        default_factory=lambda: ScalingRules(
            0.0,
            (
                ScalingPolicy(PolicyKind.PERCENT, 100, 15.0),
                ScalingPolicy(PolicyKind.PODS, 4, 15.0),
            ),
        )
    )
    scale_down: ScalingRules = field(
        default_factory=lambda: ScalingRules(300.0, (ScalingPolicy(PolicyKind.PERCENT, 100, 15.0),))
    )


class HorizontalPodAutoscaler:
    """The HPA's replica arithmetic for one External metric with an AverageValue target.

    Per kubernetes.io's "Horizontal Pod Autoscaling" page: desired =
    ceil(metric / target) unless the usage ratio metric / (target * current) is within the
    tolerance of 1; then stabilization (scale down no lower than the highest
    recommendation of the window, scale up no higher than the lowest of its window, the
    current one included); then the rate policies, measured against the replica count at
    the start of each policy's period; then [min, max]. At zero replicas the HPA does
    nothing (KEDA wakes the target itself).
    """

    def __init__(
        self, *, min_replicas: int, max_replicas: int, behavior: HpaBehavior | None = None
    ) -> None:
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.behavior = behavior or HpaBehavior()
        self._recommendations: list[tuple[float, int]] = []
        self._changes: list[tuple[float, int]] = []  # (when, replicas added or removed)

    def recommend(self, metric: float, target: float, current: int, now: float) -> int:
        """One sync: the replica count the HPA would write to `/scale` (current to hold)."""
        if current <= 0:
            return current
        raw = self._from_metric(metric, target, current)
        stabilized = self._stabilize(raw, current, now)
        replicas = self._rate_limit(stabilized, current, now)
        replicas = min(max(replicas, self.min_replicas), self.max_replicas)
        if replicas != current:
            self._changes.append((now, replicas - current))
        return replicas

    def _from_metric(self, metric: float, target: float, current: int) -> int:
        ratio = metric / (target * current)
        if abs(ratio - 1.0) <= self.behavior.tolerance:
            return current
        return math.ceil(metric / target)

    def _stabilize(self, raw: int, current: int, now: float) -> int:
        up_cutoff = now - self.behavior.scale_up.stabilization_seconds
        down_cutoff = now - self.behavior.scale_down.stabilization_seconds
        lowest = highest = raw
        for at, replicas in self._recommendations:
            if at > up_cutoff:
                lowest = min(lowest, replicas)
            if at > down_cutoff:
                highest = max(highest, replicas)
        oldest_needed = min(up_cutoff, down_cutoff)
        self._recommendations = [r for r in self._recommendations if r[0] > oldest_needed]
        self._recommendations.append((now, raw))
        return min(max(current, lowest), highest)

    def _rate_limit(self, wanted: int, current: int, now: float) -> int:
        if wanted > current:
            policies = self.behavior.scale_up.policies
            ceiling = max(self._bound(p, current, now, up=True) for p in policies)
            return min(wanted, ceiling)
        if wanted < current:
            policies = self.behavior.scale_down.policies
            floor = min(self._bound(p, current, now, up=False) for p in policies)
            return max(wanted, floor)
        return current

    def _bound(self, policy: ScalingPolicy, current: int, now: float, *, up: bool) -> int:
        """The furthest a policy lets the count go, from where it stood at its period's start."""
        cutoff = now - policy.period_seconds
        moved = sum(change for at, change in self._changes if at > cutoff)
        start = current - moved
        if policy.kind is PolicyKind.PODS:
            return start + policy.value if up else start - policy.value
        if up:
            return math.ceil(start * (1 + policy.value / 100))
        return math.floor(start * (1 - policy.value / 100))


class _KedaPolicy(ABC):
    """KEDA's ScaledObject with a RabbitMQ trigger, on the HPA's default behaviour.

    From keda.sh/docs/latest/reference/scaledobject-spec/ and
    KEDA's documentation of its RabbitMQ queue scaler: KEDA's own loop runs every
    `pollingInterval` (30 s) and only moves 0 <-> 1: it wakes the target to
    max(minReplicaCount, 1) when the metric exceeds `activationValue`, and scales it to
    zero once no trigger was active for `cooldownPeriod` (300 s; at once if none ever
    was). From 1 to N the HPA decides at its sync period, reading the metric through
    KEDA's metrics server, with `value` as an AverageValue target per replica.
    """

    default_name: str

    def __init__(
        self,
        *,
        value: float,
        activation_value: float = 0.0,
        min_replica_count: int = 0,
        max_replica_count: int = 100,
        polling_interval: float = 30.0,
        cooldown_period: float = 300.0,
        behavior: HpaBehavior | None = None,
        stats_delay: float = MANAGEMENT_API_DELAY,
        initial_replicas: int = 1,
        name: str | None = None,
    ) -> None:
        self.name = name or self.default_name
        self.value = value
        self.activation_value = activation_value
        self.min_replica_count = min_replica_count
        self.polling_interval = polling_interval
        self.cooldown_period = cooldown_period
        self.initial_replicas = initial_replicas
        self.removes_idle_first = False
        self.hpa = HorizontalPodAutoscaler(
            min_replicas=max(1, min_replica_count),
            max_replicas=max_replica_count,
            behavior=behavior,
        )
        self.sampling = Sampling(
            polling_interval=self.hpa.behavior.sync_period_seconds,
            count_delay=stats_delay,
            stats_delay=stats_delay,
        )
        self._last_poll: float | None = None
        self._last_active: float | None = None

    @abstractmethod
    def metric(self, sample: QueueSample) -> float:
        """The trigger's metric value, as KEDA's metrics server hands it to the HPA."""

    def desired(self, sample: QueueSample, current: int, now: float) -> int:
        metric = self.metric(sample)
        if self._last_poll is None or now - self._last_poll >= self.polling_interval:
            self._last_poll = now
            woken_or_idled = self._activation(metric, current, now)
            if woken_or_idled != current:
                return woken_or_idled
        return self.hpa.recommend(metric, self.value, current, now)

    def _activation(self, metric: float, current: int, now: float) -> int:
        if metric > self.activation_value:
            self._last_active = now
            return max(self.min_replica_count, 1) if current == 0 else current
        idle_long_enough = (
            self._last_active is None or now - self._last_active >= self.cooldown_period
        )
        if current > 0 and self.min_replica_count == 0 and idle_long_enough:
            return 0
        return current


class KedaQueueLengthPolicy(_KedaPolicy):
    """KEDA's RabbitMQ scaler, `mode: QueueLength`: the metric is the queue's message
    count (ready + unacked, as the management API's `messages` reports it), `value`
    messages per replica.
    """

    default_name = "keda-queue-length"

    def metric(self, sample: QueueSample) -> float:
        return float(sample.ready + sample.unacked)


class KedaMessageRatePolicy(_KedaPolicy):
    """KEDA's RabbitMQ scaler, `mode: MessageRate`: the metric is the publish rate
    (management API only), `value` messages per second per replica.
    """

    default_name = "keda-message-rate"

    def metric(self, sample: QueueSample) -> float:
        return sample.publish_rate or 0.0


@dataclass(frozen=True, slots=True)
class Disruption:
    """WPA's `maxDisruption`: pods ("5") or percent of current ("10%") removable per step."""

    value: int
    percent: bool

    @classmethod
    def parse(cls, text: str) -> Disruption:
        if text.endswith("%"):
            return cls(int(text[:-1]), percent=True)
        return cls(int(text), percent=False)

    def allowed(self, current: int) -> int:
        """Percentages round up, so a small pool can always shrink by one."""
        if self.percent:
            return math.ceil(current * self.value / 100)
        return self.value


class WorkerPodAutoscalerPolicy:
    """Practo's worker-pod-autoscaler, per its README (github.com/practo/
    k8s-worker-pod-autoscaler): desired = ceil(queued messages, available and reserved,
    / targetMessagesPerWorker), at least ceil(secondsToProcessOneJob * messages sent per
    minute / 60) so fast workers keep a floor, a scale-down removing at most
    `maxDisruption` (default 100%), clamped to [minReplicas, maxReplicas]. It resyncs
    every 20 s (`--resync-period`); it has no RabbitMQ poller, so we give it the
    management API's figures.
    """

    def __init__(
        self,
        *,
        target_messages_per_worker: int,
        seconds_to_process_one_job: float = 0.0,
        min_replicas: int = 0,
        max_replicas: int = 100,
        max_disruption: str = "100%",
        resync_period: float = 20.0,
        stats_delay: float = MANAGEMENT_API_DELAY,
        initial_replicas: int = 1,
    ) -> None:
        self.name = "worker-pod-autoscaler"
        self.target = target_messages_per_worker
        self.seconds_per_job = seconds_to_process_one_job
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.disruption = Disruption.parse(max_disruption)
        self.initial_replicas = initial_replicas
        self.removes_idle_first = False
        self.sampling = Sampling(
            polling_interval=resync_period, count_delay=stats_delay, stats_delay=stats_delay
        )

    def desired(self, sample: QueueSample, current: int, now: float) -> int:
        by_backlog = math.ceil((sample.ready + sample.unacked) / self.target)
        per_minute = (sample.publish_rate or 0.0) * 60
        by_rate = math.ceil(self.seconds_per_job * per_minute / 60 - 1e-9)
        wanted = max(by_backlog, by_rate)
        if wanted < current:
            wanted = max(wanted, current - self.disruption.allowed(current))
        return min(max(wanted, self.min_replicas), self.max_replicas)
