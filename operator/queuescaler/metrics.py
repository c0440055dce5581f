"""Prometheus metrics: every number the operator knows, labelled by QueueScaler.

Labels are `scaler_namespace` and `scaler` (not `namespace`: Prometheus's Kubernetes
discovery adds its own `namespace` label, which would rename ours `exported_namespace`).
No label ever carries a URL, a user name or a password; cardinality is bounded by the
number of QueueScalers (no pod names, no message ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from queuescaler import __version__
from queuescaler.decision import Decision, Reason
from queuescaler.sample import QueueSample
from queuescaler.source import SampleResult, SourceError
from queuescaler.status import Condition

if TYPE_CHECKING:
    from queuescaler.registry import Scaler

SCALER = ("scaler_namespace", "scaler")


class Metrics:
    """The operator's metrics, in a registry of their own (tests make as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Gauge(
            "queuescaler_build_info", "The running operator's version.", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)
        self.leader = Gauge(
            "queuescaler_leader", "1 when this replica is the one acting (peering), else 0.",
            registry=r,
        )
        self.scalers = Gauge(
            "queuescaler_scalers", "QueueScalers this operator serves.", registry=r
        )
        self.backlog = Gauge(
            "queuescaler_backlog_messages", "Messages in the watched queues, by state.",
            [*SCALER, "state"], registry=r,
        )
        self.publish_rate = Gauge(
            "queuescaler_publish_rate", "Messages published per second to the watched queues.",
            SCALER, registry=r,
        )
        self.ack_rate = Gauge(
            "queuescaler_ack_rate", "Messages acknowledged per second by the pool.",
            SCALER, registry=r,
        )
        self.desired = Gauge(
            "queuescaler_desired_replicas", "Replicas the last decision asked for.",
            SCALER, registry=r,
        )
        self.current = Gauge(
            "queuescaler_current_replicas", "Replicas the target has.", SCALER, registry=r
        )
        self.min_replicas = Gauge(
            "queuescaler_min_replicas", "spec.minReplicas.", SCALER, registry=r
        )
        self.max_replicas = Gauge(
            "queuescaler_max_replicas", "spec.maxReplicas.", SCALER, registry=r
        )
        self.decisions = Counter(
            "queuescaler_decisions", "Decisions made, by direction and reason.",
            [*SCALER, "direction", "reason"], registry=r,
        )
        self.scale_events = Counter(
            "queuescaler_scale_events", "Scale patches sent to targets, by direction.",
            [*SCALER, "direction"], registry=r,
        )
        self.condition = Gauge(
            "queuescaler_condition", "1 when the condition is True, else 0.",
            [*SCALER, "condition"], registry=r,
        )
        self.fallback_active = Gauge(
            "queuescaler_fallback_active", "1 while the fallback replica count applies.",
            SCALER, registry=r,
        )
        self.last_sample = Gauge(
            "queuescaler_last_sample_timestamp_seconds",
            "When the broker last answered for this QueueScaler (Unix time).",
            SCALER, registry=r,
        )
        self.sample_duration = Histogram(
            "queuescaler_sample_duration_seconds", "Time one broker request took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        self.sample_errors = Counter(
            "queuescaler_sample_errors", "Failed samples, by error kind.", ["kind"], registry=r
        )

    def sampled(self, seconds: float, result: SampleResult | SourceError) -> None:
        self.sample_duration.observe(seconds)
        if isinstance(result, SourceError):
            self.sample_failed(str(result.kind))

    def sample_failed(self, kind: str) -> None:
        self.sample_errors.labels(kind).inc()

    def observe(
        self,
        scaler: Scaler,
        sample: QueueSample | None,
        decision: Decision | None,
        current: int | None,
        conditions: Sequence[Condition],
    ) -> None:
        """Record one tick of one QueueScaler."""
        labels = (scaler.namespace, scaler.name)
        spec = scaler.spec
        if spec is not None:
            self.min_replicas.labels(*labels).set(spec.min_replicas)
            self.max_replicas.labels(*labels).set(spec.max_replicas)
        if sample is not None:
            self.backlog.labels(*labels, "ready").set(sample.ready)
            self.backlog.labels(*labels, "unacked").set(sample.unacked)
            if sample.publish_rate is not None:
                self.publish_rate.labels(*labels).set(sample.publish_rate)
            if sample.ack_rate is not None:
                self.ack_rate.labels(*labels).set(sample.ack_rate)
            self.last_sample.labels(*labels).set(sample.taken_at)
        if current is not None:
            self.current.labels(*labels).set(current)
        if decision is not None:
            self.desired.labels(*labels).set(decision.replicas)
            if current is None or decision.replicas == current:
                direction = "hold"
            else:
                direction = "up" if decision.replicas > current else "down"
            self.decisions.labels(*labels, direction, str(decision.reason)).inc()
            self.fallback_active.labels(*labels).set(decision.reason is Reason.FALLBACK)
        for condition in conditions:
            self.condition.labels(*labels, condition.type).set(condition.status)

    def scaled(self, scaler: Scaler, direction: str, reason: str) -> None:
        self.scale_events.labels(scaler.namespace, scaler.name, direction).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted QueueScaler's series, so dashboards do not show ghosts."""
        for metric in (
            self.backlog, self.publish_rate, self.ack_rate, self.desired, self.current,
            self.min_replicas, self.max_replicas, self.decisions, self.scale_events,
            self.condition, self.fallback_active, self.last_sample,
        ):
            for labels in list(metric._metrics):
                if labels[:2] == (namespace, name):
                    metric.remove(*labels)
