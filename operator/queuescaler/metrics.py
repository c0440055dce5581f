"""Prometheus metrics: every number the operator knows, labelled by QueueScaler.

Labels are `scaler_namespace` and `scaler` (not `namespace`: Prometheus's Kubernetes
discovery adds its own `namespace` label, which would rename ours `exported_namespace`).
No label ever carries a URL, a user name or a password; cardinality is bounded by the
number of QueueScalers times small closed sets (states, directions, reasons, conditions),
never by pods, queues' contents or error messages.

Per QueueScaler the series are (all prefixed `queuescaler_`): backlog_messages{state},
consumers, publish/ack/deliver_rate, consumer_utilisation, per_replica_rate,
desired/recommended/current/min/max_replicas, messages_per_replica, decisions_total
{direction, reason}, scale_events_total{direction}, condition{condition}, fallback_active,
scaling_limited, paused, dry_run, consecutive_failures, scaler_ticks_total,
scaler_sample_failures_total, last_sample_timestamp_seconds, last_scale_timestamp_seconds.
Operator-wide: build_info{version}, leader, scalers, sample_duration_seconds,
sample_errors_total{kind}, tick_duration_seconds, and the process/platform/GC collectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics import MetricWrapperBase

from queuescaler import __version__
from queuescaler.decision import Decision, Reason
from queuescaler.sample import QueueSample
from queuescaler.source import ErrorKind, SampleResult, SourceError
from queuescaler.status import Condition

if TYPE_CHECKING:
    from queuescaler.registry import Scaler

SCALER = ("scaler_namespace", "scaler")
"""The labels that name a QueueScaler on every per-QueueScaler series."""
DIRECTIONS = ("up", "down")
"""Scale event directions; decisions add `hold`."""
SECRET_ERROR = "secret"
"""The `kind` of a sample that failed because the connection Secret could not be read."""
SAMPLE_ERROR_KINDS = (*(str(kind) for kind in ErrorKind), SECRET_ERROR)
"""Known error kinds: their counters exist at zero from the start, so rates see the first one."""
SAMPLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TICK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

Key = tuple[str, str]
M = TypeVar("M", bound=MetricWrapperBase)


class Metrics:
    """The operator's metrics, in a registry of their own (tests make as many as they like).

    `process=False` leaves out the process, platform and GC collectors (tests that compare
    whole expositions do not want numbers that move by themselves).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._series: dict[Key, set[tuple[MetricWrapperBase, tuple[str, ...]]]] = {}
        if process:
            # The default registry's collectors, registered in ours: RSS, CPU, fds, GC.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

        # --- the operator ---
        self.build_info = Gauge(
            "queuescaler_build_info", "The running operator's version (always 1).",
            ["version"], registry=r,
        )
        self.build_info.labels(__version__).set(1)
        self.leader = Gauge(
            "queuescaler_leader", "1 when this replica is the one acting (peering), else 0.",
            registry=r,
        )
        self.scalers = Gauge(
            "queuescaler_scalers", "QueueScalers this operator serves.", registry=r
        )
        self.sample_duration = Histogram(
            "queuescaler_sample_duration_seconds",
            "Time one broker request took (one request serves every QueueScaler on a broker).",
            buckets=SAMPLE_BUCKETS, registry=r,
        )
        self.sample_errors = Counter(
            "queuescaler_sample_errors",
            "Failed broker requests and unreadable connection Secrets, by error kind.",
            ["kind"], registry=r,
        )
        for kind in SAMPLE_ERROR_KINDS:
            self.sample_errors.labels(kind)
        self.tick_duration = Histogram(
            "queuescaler_tick_duration_seconds",
            "Wall time of one tick (sampling every due broker, deciding, acting).",
            buckets=TICK_BUCKETS, registry=r,
        )

        # --- per QueueScaler: what the broker said ---
        self.backlog = Gauge(
            "queuescaler_backlog_messages",
            "Messages in the watched queues, by state (ready, unacked).",
            [*SCALER, "state"], registry=r,
        )
        self.consumers = Gauge(
            "queuescaler_consumers", "Consumers attached to the watched queues.",
            SCALER, registry=r,
        )
        self.publish_rate = Gauge(
            "queuescaler_publish_rate",
            "Messages published per second to the watched queues.", SCALER, registry=r,
        )
        self.ack_rate = Gauge(
            "queuescaler_ack_rate", "Messages acknowledged per second by the pool.",
            SCALER, registry=r,
        )
        self.deliver_rate = Gauge(
            "queuescaler_deliver_rate", "Messages delivered per second to the pool.",
            SCALER, registry=r,
        )
        self.consumer_utilisation = Gauge(
            "queuescaler_consumer_utilisation",
            "Fraction of time the consumers could take new messages (RabbitMQ's capacity).",
            SCALER, registry=r,
        )
        self.last_sample = Gauge(
            "queuescaler_last_sample_timestamp_seconds",
            "When the broker last answered for this QueueScaler (Unix time).",
            SCALER, registry=r,
        )

        # --- per QueueScaler: the spec ---
        self.min_replicas = Gauge(
            "queuescaler_min_replicas", "spec.minReplicas.", SCALER, registry=r
        )
        self.max_replicas = Gauge(
            "queuescaler_max_replicas", "spec.maxReplicas.", SCALER, registry=r
        )
        self.messages_per_replica = Gauge(
            "queuescaler_messages_per_replica", "spec.target.messagesPerReplica.",
            SCALER, registry=r,
        )
        self.paused = Gauge(
            "queuescaler_paused", "1 when spec.paused is true (reporting, never scaling).",
            SCALER, registry=r,
        )
        self.dry_run = Gauge(
            "queuescaler_dry_run", "1 when spec.dryRun is true (deciding, never scaling).",
            SCALER, registry=r,
        )

        # --- per QueueScaler: what was decided and done ---
        self.desired = Gauge(
            "queuescaler_desired_replicas", "Replicas the last decision asked for.",
            SCALER, registry=r,
        )
        self.recommended = Gauge(
            "queuescaler_recommended_replicas",
            "The last recommendation before stabilization, cooldowns, step limits and bounds.",
            SCALER, registry=r,
        )
        self.current = Gauge(
            "queuescaler_current_replicas", "Replicas the target has (its spec.replicas).",
            SCALER, registry=r,
        )
        self.decisions = Counter(
            "queuescaler_decisions", "Decisions made, by direction (up, down, hold) and reason.",
            [*SCALER, "direction", "reason"], registry=r,
        )
        self.scale_events = Counter(
            "queuescaler_scale_events", "Scale patches applied to targets, by direction.",
            [*SCALER, "direction"], registry=r,
        )
        self.last_scale = Gauge(
            "queuescaler_last_scale_timestamp_seconds",
            "When the target was last scaled (Unix time); cooldowns count from here.",
            SCALER, registry=r,
        )
        self.scaling_limited = Gauge(
            "queuescaler_scaling_limited",
            "1 when a bound, step limit, cooldown or stabilization changed the last decision.",
            SCALER, registry=r,
        )
        self.fallback_active = Gauge(
            "queuescaler_fallback_active", "1 while the fallback replica count applies.",
            SCALER, registry=r,
        )
        self.per_replica_rate = Gauge(
            "queuescaler_per_replica_rate",
            "Smoothed acknowledgements per second per busy replica (the rate policy's input).",
            SCALER, registry=r,
        )
        self.consecutive_failures = Gauge(
            "queuescaler_consecutive_failures", "Ticks in a row whose sample failed.",
            SCALER, registry=r,
        )
        self.condition = Gauge(
            "queuescaler_condition", "1 when the status condition is True, else 0.",
            [*SCALER, "condition"], registry=r,
        )
        self.scaler_ticks = Counter(
            "queuescaler_scaler_ticks", "Ticks that sampled and decided for this QueueScaler.",
            SCALER, registry=r,
        )
        self.scaler_sample_failures = Counter(
            "queuescaler_scaler_sample_failures",
            "Ticks whose sample of this QueueScaler's queues failed (BrokerReachable False).",
            SCALER, registry=r,
        )

    # --- the operator ---

    def sampled(self, seconds: float, result: SampleResult | SourceError) -> None:
        """One broker request took `seconds` and gave `result`."""
        self.sample_duration.observe(seconds)
        if isinstance(result, SourceError):
            self.sample_failed(str(result.kind))

    def sample_failed(self, kind: str) -> None:
        """A sample failed for a reason of `kind` (an ErrorKind value, or `secret`)."""
        self.sample_errors.labels(kind).inc()

    def ticked(self, seconds: float) -> None:
        """One tick of the engine's loop took `seconds` (wall time)."""
        self.tick_duration.observe(seconds)

    # --- per QueueScaler ---

    def _child(self, metric: M, key: Key, *extra: str) -> M:
        """The labelled child for this QueueScaler, remembered so `forget` can remove it."""
        values = (*key, *extra)
        self._series.setdefault(key, set()).add((metric, values))
        return metric.labels(*values)

    def _drop(self, metric: MetricWrapperBase, key: Key, *extra: str) -> None:
        values = (*key, *extra)
        series = self._series.get(key)
        if series is not None and (metric, values) in series:
            series.discard((metric, values))
            metric.remove(*values)

    def _set(self, gauge: Gauge, key: Key, value: float | None) -> None:
        """Set the gauge, or drop its series when the value is not known (no stale numbers)."""
        if value is None:
            self._drop(gauge, key)
        else:
            self._child(gauge, key).set(value)

    def _first_sight(self, key: Key) -> None:
        """Counters exist at zero from the start, so `increase()` counts their first step."""
        for direction in DIRECTIONS:
            self._child(self.scale_events, key, direction)
        self._child(self.scaler_ticks, key)
        self._child(self.scaler_sample_failures, key)

    def observe(
        self,
        scaler: Scaler,
        sample: QueueSample | None,
        decision: Decision | None,
        current: int | None,
        conditions: Sequence[Condition],
    ) -> None:
        """Record one tick of one QueueScaler (after its state was updated)."""
        key = (scaler.namespace, scaler.name)
        if key not in self._series:
            self._first_sight(key)
        self._child(self.scaler_ticks, key).inc()
        spec = scaler.spec
        if spec is not None:
            self._set(self.min_replicas, key, spec.min_replicas)
            self._set(self.max_replicas, key, spec.max_replicas)
            self._set(self.messages_per_replica, key, spec.target.messages_per_replica)
            self._set(self.paused, key, spec.paused)
            self._set(self.dry_run, key, spec.dry_run)
        if sample is not None:
            self._child(self.backlog, key, "ready").set(sample.ready)
            self._child(self.backlog, key, "unacked").set(sample.unacked)
            self._set(self.consumers, key, sample.consumers)
            self._set(self.publish_rate, key, sample.publish_rate)
            self._set(self.ack_rate, key, sample.ack_rate)
            self._set(self.deliver_rate, key, sample.deliver_rate)
            self._set(self.consumer_utilisation, key, sample.consumer_utilisation)
            self._set(self.last_sample, key, sample.taken_at)
        if current is not None:
            self._set(self.current, key, current)
        if decision is not None:
            self._set(self.desired, key, decision.replicas)
            self._set(self.recommended, key, decision.recommendation)
            if current is None or decision.replicas == current:
                direction = "hold"
            else:
                direction = "up" if decision.replicas > current else "down"
            self._child(self.decisions, key, direction, str(decision.reason)).inc()
            self._set(self.fallback_active, key, decision.reason is Reason.FALLBACK)
            self._set(self.scaling_limited, key, decision.limited)
        state = scaler.state
        self._set(self.consecutive_failures, key, state.consecutive_failures)
        self._set(self.per_replica_rate, key, state.per_replica_rate)
        self._set(self.last_scale, key, state.last_scale_time)
        for condition in conditions:
            self._child(self.condition, key, condition.type).set(condition.status)
            if condition.type == "BrokerReachable" and not condition.status:
                self._child(self.scaler_sample_failures, key).inc()

    def scaled(self, scaler: Scaler, direction: str, reason: str) -> None:
        """A scale patch was applied (`direction` is up or down; `reason` is in decisions)."""
        self._child(self.scale_events, (scaler.namespace, scaler.name), direction).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted QueueScaler's series, so dashboards do not show ghosts."""
        for metric, values in self._series.pop((namespace, name), set()):
            metric.remove(*values)

    def series_count(self) -> int:
        """Labelled per-QueueScaler series held (cardinality, for tests and benchmarks)."""
        return sum(len(series) for series in self._series.values())
