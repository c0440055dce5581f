"""Prometheus metrics: every number the operator knows, labelled by QueueScaler.

Labels are `scaler_namespace` and `scaler` (not `namespace`: Prometheus's Kubernetes
discovery adds its own `namespace` label, which would rename ours `exported_namespace`).
No label ever carries a URL, a user name or a password; cardinality is bounded by the
number of QueueScalers times small closed sets (states, directions, reasons, conditions,
source kinds), never by pods, queues' contents or error messages.

Per QueueScaler the series are (all prefixed `queuescaler_`): scaler_info{source} (always
1; `source` is the broker kind, rabbitmq or redis: join it onto any other series with
`* on (scaler_namespace, scaler) group_left(source) queuescaler_scaler_info`),
backlog_messages{state}, consumers, publish/ack/deliver_rate, consumer_utilisation,
per_replica_rate, desired/recommended/current/min/max_replicas, messages_per_replica,
decisions_total{direction, reason}, scale_events_total{direction}, condition{condition},
fallback_active, scaling_limited, paused, dry_run, consecutive_failures, scaler_ticks_total,
scaler_sample_failures_total, last_sample_timestamp_seconds, last_scale_timestamp_seconds.
Operator-wide: build_info{version}, leader, scalers, sample_duration_seconds,
sample_errors_total{kind}, tick_duration_seconds, and the process/platform/GC collectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from queuescaler import __version__
from queuescaler.core.decision import Reason
from queuescaler.core.plan import Plan
from queuescaler.core.sample import ErrorKind, SampleResult, SourceError

if TYPE_CHECKING:
    from queuescaler.fleet import Scaler

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


class Metrics:
    """The operator's metrics, in a registry of their own (tests make as many as they like).

    `process=False` leaves out the process, platform and GC collectors (tests that compare
    whole expositions do not want numbers that move by themselves).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        """Every series, through prometheus_client (tests read values from it)."""
        self._operator_wide = CollectorRegistry()
        r = self._operator_wide
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
            "queuescaler_leader",
            "1 when this replica is the one acting (it holds the Lease, or runs alone), else 0.",
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

        # --- per QueueScaler: built at scrape time from one small record each ---
        self._readings: dict[Key, dict[tuple[str, tuple[str, ...]], float]] = {}
        self.registry.register(_Forwarding(self._operator_wide))
        self.registry.register(_PerScalerCollector(self._readings))

    def render(self, accept: str) -> tuple[bytes, str]:
        """The whole exposition for a scrape that sent `accept`, and its content type."""
        chunks, content_type = self.exposition(accept)
        return b"".join(chunks), content_type

    def exposition(self, accept: str) -> tuple[Iterator[bytes], str]:
        """The exposition as chunks (one per family), and its content type.

        Equal to what prometheus_client makes of `registry`, but the per-QueueScaler part
        is written straight to text, one family at a time: at 10,000 QueueScalers (350,000
        series) the library's objects cost seconds of CPU, and an exposition built whole
        held several copies of its 40 MB at once.
        """
        encode, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")

        def chunks() -> Iterator[bytes]:
            wide = encode(self._operator_wide)
            yield wide.removesuffix(_EOF.encode()) if openmetrics else wide
            # Who is there, once; a scrape runs in a thread while ticks keep recording.
            readings = list(self._readings.items())
            for family in _FAMILIES:
                yield _render_family(family, readings, openmetrics=openmetrics).encode()
            if openmetrics:
                yield _EOF.encode()

        return chunks(), content_type

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

    def _put(self, reading: dict[SeriesKey, float], family: str, value: float | None,
             *extra: str) -> None:
        """Set a series, or drop it when the value is not known (no stale numbers)."""
        key = _series_key(family, extra)
        if value is None:
            reading.pop(key, None)
        else:
            reading[key] = float(value)

    def _add(self, reading: dict[SeriesKey, float], family: str, *extra: str) -> None:
        key = _series_key(family, extra)
        reading[key] = reading.get(key, 0.0) + 1.0

    def _reading(self, key: Key) -> dict[SeriesKey, float]:
        """This QueueScaler's record; counters exist at zero from the start, so that
        `increase()` counts their first step."""
        reading = self._readings.get(key)
        if reading is None:
            reading = self._readings[key] = {
                _series_key("scale_events", (direction,)): 0.0 for direction in DIRECTIONS
            }
            reading[_series_key("scaler_ticks", ())] = 0.0
            reading[_series_key("scaler_sample_failures", ())] = 0.0
        return reading

    def record(self, scaler: Scaler, plan: Plan) -> None:
        """Record one tick of one QueueScaler, as planned and carried out."""
        r = self._reading((scaler.namespace, scaler.name))
        self._add(r, "scaler_ticks")
        spec = scaler.spec
        if spec is not None:
            self._source(r, spec.source.broker)
            self._put(r, "min_replicas", spec.min_replicas)
            self._put(r, "max_replicas", spec.max_replicas)
            self._put(r, "messages_per_replica", spec.target.messages_per_replica)
            self._put(r, "paused", spec.paused)
            self._put(r, "dry_run", spec.dry_run)
        sample = plan.sample
        if sample is not None:
            self._put(r, "backlog_messages", sample.ready, "ready")
            self._put(r, "backlog_messages", sample.unacked, "unacked")
            self._put(r, "consumers", sample.consumers)
            self._put(r, "publish_rate", sample.publish_rate)
            self._put(r, "ack_rate", sample.ack_rate)
            self._put(r, "deliver_rate", sample.deliver_rate)
            self._put(r, "consumer_utilisation", sample.consumer_utilisation)
            self._put(r, "last_sample_timestamp_seconds", sample.taken_at)
        current = plan.memory.current_replicas
        if current is not None:
            self._put(r, "current_replicas", current)
        decision, before = plan.decision, plan.previous_replicas
        if decision is not None:
            self._put(r, "desired_replicas", decision.replicas)
            self._put(r, "recommended_replicas", decision.recommendation)
            if before is None or decision.replicas == before:
                direction = "hold"
            else:
                direction = "up" if decision.replicas > before else "down"
            self._add(r, "decisions", direction, str(decision.reason))
            self._put(r, "fallback_active", decision.reason is Reason.FALLBACK)
            self._put(r, "scaling_limited", decision.limited)
        state = plan.memory.state
        self._put(r, "consecutive_failures", state.consecutive_failures)
        self._put(r, "per_replica_rate", state.per_replica_rate)
        self._put(r, "last_scale_timestamp_seconds", state.last_scale_time)
        for condition in plan.conditions:
            self._put(r, "condition", condition.status, condition.type)
            if condition.type == "BrokerReachable" and not condition.status:
                self._add(r, "scaler_sample_failures")

    def _source(self, reading: dict[SeriesKey, float], kind: str) -> None:
        """The info series naming the QueueScaler's broker kind: one, the latest (a spec that
        moved to another broker leaves no series for the old one)."""
        current = _series_key("scaler_info", (kind,))
        if current in reading:
            return
        for key in [k for k in reading if k[0] == "scaler_info"]:
            del reading[key]
        reading[current] = 1.0

    def scaled(self, scaler: Scaler, direction: str) -> None:
        """A scale patch was applied (`direction` is up or down)."""
        self._add(self._reading((scaler.namespace, scaler.name)), "scale_events", direction)

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted QueueScaler's series, so dashboards do not show ghosts."""
        self._readings.pop((namespace, name), None)

    def series_count(self) -> int:
        """Labelled per-QueueScaler series held (cardinality, for tests and benchmarks)."""
        return sum(len(reading) for reading in self._readings.values())


SeriesKey = tuple[str, tuple[str, ...]]
"""(family, values of its extra labels)"""

_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # family: (type, help, extra label names)
    "scaler_info": (
        "gauge",
        "Always 1, for each QueueScaler served; source is its broker kind (rabbitmq, redis).",
        ("source",)),
    "backlog_messages": ("gauge", "Messages in the watched queues, by state (ready, unacked).",
                         ("state",)),
    "consumers": ("gauge", "Consumers attached to the watched queues.", ()),
    "publish_rate": ("gauge", "Messages published per second to the watched queues.", ()),
    "ack_rate": ("gauge", "Messages acknowledged per second by the pool.", ()),
    "deliver_rate": ("gauge", "Messages delivered per second to the pool.", ()),
    "consumer_utilisation": (
        "gauge", "Fraction of time the consumers could take new messages (RabbitMQ's capacity).",
        ()),
    "last_sample_timestamp_seconds": (
        "gauge", "When the broker last answered for this QueueScaler (Unix time).", ()),
    "min_replicas": ("gauge", "spec.minReplicas.", ()),
    "max_replicas": ("gauge", "spec.maxReplicas.", ()),
    "messages_per_replica": ("gauge", "spec.target.messagesPerReplica.", ()),
    "paused": ("gauge", "1 when spec.paused is true (reporting, never scaling).", ()),
    "dry_run": ("gauge", "1 when spec.dryRun is true (deciding, never scaling).", ()),
    "desired_replicas": ("gauge", "Replicas the last decision asked for.", ()),
    "recommended_replicas": (
        "gauge",
        "The last recommendation before stabilization, cooldowns, step limits and bounds.", ()),
    "current_replicas": ("gauge", "Replicas the target has (its spec.replicas).", ()),
    "decisions": ("counter", "Decisions made, by direction (up, down, hold) and reason.",
                  ("direction", "reason")),
    "scale_events": ("counter", "Scale patches applied to targets, by direction.",
                     ("direction",)),
    "last_scale_timestamp_seconds": (
        "gauge", "When the target was last scaled (Unix time).", ()),
    "scaling_limited": (
        "gauge",
        "1 when a bound, step limit, cooldown or stabilization changed the last decision.", ()),
    "fallback_active": ("gauge", "1 while the fallback replica count applies.", ()),
    "per_replica_rate": (
        "gauge",
        "Smoothed acknowledgements per second per busy replica (the rate policy's input).", ()),
    "consecutive_failures": ("gauge", "Ticks in a row whose sample failed.", ()),
    "condition": ("gauge", "1 when the status condition is True, else 0.", ("condition",)),
    "scaler_ticks": ("counter", "Ticks that sampled and decided for this QueueScaler.", ()),
    "scaler_sample_failures": (
        "counter",
        "Ticks whose sample of this QueueScaler's queues failed (BrokerReachable False).", ()),
}

_KEYS: dict[SeriesKey, SeriesKey] = {}


def _series_key(family: str, extra: tuple[str, ...]) -> SeriesKey:
    """One shared tuple per series kind: ten thousand records hold references, not copies."""
    key = (family, extra)
    return _KEYS.setdefault(key, key)


class _PerScalerCollector(Collector):
    """Per-QueueScaler series, built at scrape time from each QueueScaler's small record.

    prometheus_client's labelled children cost about 750 bytes each: 35 series for each of
    10,000 QueueScalers would be a quarter of a gigabyte. A record is a plain dict.
    """

    def __init__(self, readings: dict[Key, dict[SeriesKey, float]]) -> None:
        self._readings = readings

    def describe(self) -> Iterable[Metric]:
        return ()  # the families are built per scrape; nothing to pre-check

    def collect(self) -> Iterable[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for name, (kind, help_text, extra) in _FAMILIES.items():
            labels = [*SCALER, *extra]
            full = f"queuescaler_{name}"
            families[name] = (
                CounterMetricFamily(full, help_text, labels=labels) if kind == "counter"
                else GaugeMetricFamily(full, help_text, labels=labels)
            )
        # Snapshots: a scrape runs in a thread while the engine keeps recording.
        for (namespace, scaler), reading in list(self._readings.items()):
            for (family, extra), value in list(reading.items()):
                families[family].add_metric([namespace, scaler, *extra], value)
        return families.values()


class _Forwarding(Collector):
    """Another registry's collectors, seen through this one."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        return self._source.collect()


_EOF = "# EOF\n"
_number = cast(Callable[[float], str], floatToGoString)
"""A sample value as Go writes it (1.0, +Inf, NaN): the library's own function."""


def _label_value(text: str) -> str:
    """Escaped as the exposition formats want (names and label values rarely need it)."""
    if "\\" in text or '"' in text or "\n" in text:
        return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return text


def _render_family(
    family: str, readings: list[tuple[Key, dict[SeriesKey, float]]], *, openmetrics: bool
) -> str:
    """One per-QueueScaler family as exposition text: its header, then a line per series,
    QueueScalers in record order and labels in name order, as prometheus_client writes."""
    kind, help_text, extra = _FAMILIES[family]
    sample = f"queuescaler_{family}_total" if kind == "counter" else f"queuescaler_{family}"
    header = f"queuescaler_{family}" if openmetrics or kind != "counter" else sample
    escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    if openmetrics:
        escaped = escaped.replace('"', '\\"')
    # (label, index into (namespace, name, *extra values)), sorted by label
    order = sorted((label, i) for i, label in enumerate((*SCALER, *extra)))
    lines = [f"# HELP {header} {escaped}\n# TYPE {header} {kind}\n"]

    def add(values: tuple[str, ...], value: float) -> None:
        labels = ",".join(f'{label}="{_label_value(values[i])}"' for label, i in order)
        lines.append(f"{sample}{{{labels}}} {_number(value)}\n")

    only = _series_key(family, ())
    for (namespace, scaler), reading in readings:
        if not extra:  # one series per QueueScaler: a lookup, not a scan
            value = reading.get(only)
            if value is not None:
                add((namespace, scaler), value)
            continue
        for (name, values), value in list(reading.items()):
            if name == family:
                add((namespace, scaler, *values), value)
    return "".join(lines)
