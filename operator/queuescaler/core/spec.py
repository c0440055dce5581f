"""The QueueScaler `spec`, parsed once at the edge into typed, frozen values.

The API server already refuses most bad input (types, ranges, CEL rules); `parse_spec`
checks the same things again so that everything downstream (the decision engine, the
simulator, the benchmarks) can trust what it is given, whoever built the mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol

from queuescaler.core.sample import QueueRef

DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "minReplicas": 1,
        "pollingIntervalSeconds": 15,
        "target.messagesPerReplica": 10,
        "activation.messages": 1,
        "behavior.tolerance": 0.1,
        "behavior.scaleUp.cooldownSeconds": 15,
        "behavior.scaleUp.maxStepReplicas": 100,
        "behavior.scaleUp.maxStepPercent": 100,
        "behavior.scaleUp.stabilizationSeconds": 0,
        "behavior.scaleDown.cooldownSeconds": 45,
        "behavior.scaleDown.stabilizationSeconds": 300,
        "behavior.scaleDown.maxStepPercent": 100,
        "behavior.scaleDown.maxStepReplicas": 1,
        "behavior.scaleDown.protectBusyWorkers": True,
        "fallback.afterFailures": 3,
        "paused": False,
        "dryRun": False,
    }
)
"""Defaults of optional fields, keyed by their camelCase path under `spec`.

The CRD declares the same defaults; a test compares the two. Optional fields whose
absence means something (`target.drainSeconds`, `fallback.replicas`) have no entry, nor
fields added since whose CRD default an older operator would refuse as unknown after a
rollback (`behavior.scaleDown.minStabilizationSeconds`: the parser defaults them).
Each broker's block keeps its own defaults beside its parser (`sources/<broker>/spec.py`).

The damping defaults were chosen on the simulator's standard traces (bench/decide.py,
bench/RESULTS.md): they differ from the HPA's where a queue is not a CPU gauge.
- scaleUp.maxStepReplicas 100 (HPA: 4 pods or 100% per 15 s): a backlog is an exact
  count of work, not a sample to probe in small steps; doubling per tick kept a flood
  waiting for a minute while the queue already said how many workers it needs.
- scaleDown.stabilizationSeconds 300 (the HPA's), divided by the square of the replicas a
  scale-down would remove beyond chance (see decision._stabilization), never below two
  polls: one spare replica waits 5 min, a drained burst of 40 goes in 30 s. It was 600;
  the worker models (issue 12) showed one spare replica kept 10 minutes costing more than
  KEDA under the HPA, and a window divided by the replicas alone insuring each drop of a
  small pool's burst with 300 replica-seconds.
- scaleDown.cooldownSeconds 45, counted from the last scale-up only (was 300, then 45
  from any scale): long enough for the pods a scale-up started to become ready and work
  the backlog that called them; a burst drained in two scale-downs does not pay its middle
  step for 45 s.
- scaleDown.maxStepPercent 100 (the HPA's own default scale-down policy): the window
  already decides how far to go; halving per step only added events.
"""


class SpecError(ValueError):
    """A spec the operator refuses, naming the offending field as the user wrote it."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path
        self.message = message


@dataclass(frozen=True, slots=True)
class ScaleTargetRef:
    """The object whose `/scale` subresource is patched (a Deployment, usually)."""

    api_version: str
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A Secret in the QueueScaler's own namespace (read by name only, never listed)."""

    name: str


class SourceSpec(Protocol):
    """A broker's `spec.source.<broker>` block, parsed by that broker's source package.

    The core reads only what every broker has: which queues, whose Secret, whether
    in-flight messages count as backlog. The rest of the block is the source's own.
    """

    @property
    def broker(self) -> str:
        """The block's key under `spec.source`: the broker's name."""
        ...

    @property
    def queues(self) -> tuple[QueueRef, ...]:
        """The queues whose backlogs and rates add up, never empty."""
        ...

    @property
    def secret_ref(self) -> SecretRef:
        """The Secret with the broker's address and credentials."""
        ...

    @property
    def include_in_flight(self) -> bool:
        """Count delivered-but-unacknowledged messages as backlog too."""
        ...

    @property
    def where(self) -> str:
        """Where its consumers connect, in the words of a condition: "vhost '/'",
        "consumer group 'orders'" (the queues' scopes are the source's own encoding)."""
        ...


BlockParser = Callable[[object, str], SourceSpec]
"""Reads one broker's block (the raw value, and its path `spec.source.<broker>`);
raises SpecError naming the field."""


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """How much work one replica should carry."""

    messages_per_replica: int = DEFAULTS["target.messagesPerReplica"]
    """Backlog policy: ceil(backlog / messagesPerReplica) replicas."""
    drain_seconds: int | None = None
    """Rate policy, when set: clear the backlog within this time at the measured rate."""


@dataclass(frozen=True, slots=True)
class ActivationSpec:
    """When a pool at zero wakes up."""

    messages: int = DEFAULTS["activation.messages"]
    """Backlog that wakes a pool at zero replicas."""


@dataclass(frozen=True, slots=True)
class ScaleUpSpec:
    """How fast the pool may grow."""

    cooldown_seconds: int = DEFAULTS["behavior.scaleUp.cooldownSeconds"]
    """No scale-up within this time of the last scale-up (a scale-down starts none)."""
    max_step_replicas: int = DEFAULTS["behavior.scaleUp.maxStepReplicas"]
    max_step_percent: int = DEFAULTS["behavior.scaleUp.maxStepPercent"]
    """A step may add the larger of maxStepReplicas and this percent of current."""
    stabilization_seconds: int = DEFAULTS["behavior.scaleUp.stabilizationSeconds"]
    """Grow only to the lowest recommendation of this window (0: no stabilization)."""


@dataclass(frozen=True, slots=True)
class ScaleDownSpec:
    """How fast the pool may shrink."""

    cooldown_seconds: int = DEFAULTS["behavior.scaleDown.cooldownSeconds"]
    """No scale-down within this time of the last scale-up."""
    stabilization_seconds: int = DEFAULTS["behavior.scaleDown.stabilizationSeconds"]
    """Shrink only to the highest recommendation of this window, divided by the square of
    the replicas the scale-down would remove beyond chance (one spare replica waits the
    whole window)."""
    min_stabilization_seconds: int = 0
    """The shortest the divided window gets, a burst's end included: a producer's pause
    shorter than it keeps the pool."""
    max_step_percent: int = DEFAULTS["behavior.scaleDown.maxStepPercent"]
    max_step_replicas: int = DEFAULTS["behavior.scaleDown.maxStepReplicas"]
    """A step may remove the larger of maxStepReplicas and maxStepPercent of current."""
    protect_busy_workers: bool = DEFAULTS["behavior.scaleDown.protectBusyWorkers"]
    """Never shrink below the number of workers busy with a message."""


@dataclass(frozen=True, slots=True)
class BehaviorSpec:
    """Damping: the dead-band, the stabilization windows, cooldowns and step limits."""

    tolerance: float = DEFAULTS["behavior.tolerance"]
    """No change while the recommendation is within this fraction of current."""
    scale_up: ScaleUpSpec = field(default_factory=ScaleUpSpec)
    scale_down: ScaleDownSpec = field(default_factory=ScaleDownSpec)


@dataclass(frozen=True, slots=True)
class FallbackSpec:
    """What to do while the broker cannot be sampled."""

    after_failures: int = DEFAULTS["fallback.afterFailures"]
    """Consecutive failed samples before the fallback applies."""
    replicas: int | None = None
    """Replica count to go to; None holds the current count."""


@dataclass(frozen=True, slots=True)
class QueueScalerSpec:
    """The whole `spec` of a QueueScaler, validated."""

    scale_target_ref: ScaleTargetRef
    max_replicas: int
    source: SourceSpec
    min_replicas: int = DEFAULTS["minReplicas"]
    polling_interval_seconds: int = DEFAULTS["pollingIntervalSeconds"]
    target: TargetSpec = field(default_factory=TargetSpec)
    activation: ActivationSpec = field(default_factory=ActivationSpec)
    behavior: BehaviorSpec = field(default_factory=BehaviorSpec)
    fallback: FallbackSpec = field(default_factory=FallbackSpec)
    paused: bool = DEFAULTS["paused"]
    """Stop acting; keep sampling, deciding and reporting."""
    dry_run: bool = DEFAULTS["dryRun"]
    """Decide and report, never patch the target (shadow mode)."""


class Fields:
    """Reads one object of the raw spec, remembering the path for error messages.

    `defaults` maps a field's path below the object `default_prefix` names to its default
    (the core's `DEFAULTS` unless a broker block brings its own).
    """

    def __init__(
        self,
        raw: object,
        path: str,
        default_prefix: str,
        defaults: Mapping[str, Any] = DEFAULTS,
    ) -> None:
        if not isinstance(raw, Mapping):
            raise SpecError(path, "must be an object")
        odd_keys = sorted(repr(key) for key in raw if not isinstance(key, str))
        if odd_keys:
            raise SpecError(path, f"field names must be strings, got {', '.join(odd_keys)}")
        self._raw: Mapping[str, Any] = raw
        self._path = path
        self._prefix = default_prefix
        self._defaults = defaults
        self._seen: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self._path}.{key}"

    @property
    def here(self) -> str:
        """The path of the block itself."""
        return self._path

    def has(self, key: str) -> bool:
        return self._raw.get(key) is not None

    def raw(self, key: str) -> object:
        """The value as written (None when absent); a YAML `null` counts as absent."""
        self._seen.add(key)
        return self._raw.get(key)

    def default(self, key: str) -> Any:
        return self._defaults[f"{self._prefix}{key}"]

    def obj(self, key: str, *, required: bool = False) -> Fields:
        value = self.raw(key)
        if value is None:
            if required:
                raise SpecError(self.path(key), "is required")
            value = {}
        return Fields(value, self.path(key), f"{self._prefix}{key}.", self._defaults)

    def string(self, key: str, *, required: bool = False) -> str:
        value = self.raw(key)
        if value is None:
            if required:
                raise SpecError(self.path(key), "is required")
            value = self.default(key)
        if not isinstance(value, str) or not value:
            raise SpecError(self.path(key), "must be a non-empty string")
        return value

    def flag(self, key: str) -> bool:
        value = self.raw(key)
        if value is None:
            value = self.default(key)
        if not isinstance(value, bool):
            raise SpecError(self.path(key), "must be true or false")
        return value

    def integer(
        self, key: str, *, minimum: int, maximum: int | None = None, required: bool = False
    ) -> int:
        value = self.optional_integer(key, minimum=minimum, maximum=maximum)
        if value is not None:
            return value
        if required:
            raise SpecError(self.path(key), "is required")
        default: int = self.default(key)
        return default

    def optional_integer(self, key: str, *, minimum: int, maximum: int | None = None) -> int | None:
        value = self.raw(key)
        if value is None:
            return None
        # JSON has one number type: accept 3.0 as 3, refuse 3.5 and booleans.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(self.path(key), "must be an integer")
        if value < minimum:
            raise SpecError(self.path(key), f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise SpecError(self.path(key), f"must be <= {maximum}")
        return value

    def number(self, key: str, *, minimum: float, below: float) -> float:
        value = self.raw(key)
        if value is None:
            value = self.default(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(self.path(key), "must be a number")
        if not minimum <= value < below:
            raise SpecError(self.path(key), f"must be >= {minimum} and < {below}")
        return float(value)

    def done(self) -> None:
        """Refuse fields we do not know: a typo must not silently mean a default."""
        unknown = sorted(
            key for key, value in self._raw.items() if key not in self._seen and value is not None
        )
        if unknown:
            raise SpecError(self.path(unknown[0]), "unknown field")


def parse_spec(raw: Mapping[str, Any], brokers: Mapping[str, BlockParser]) -> QueueScalerSpec:
    """Validate a raw `spec` mapping (camelCase, as stored) and return it typed.

    `brokers` maps each key allowed under `spec.source` to the parser of its block (the
    source registry's, `queuescaler.sources.registry.parse_spec`, passes them all).

    Raises SpecError naming the first offending field, e.g.
    `spec.behavior.scaleUp.maxStepReplicas: must be >= 1`.
    """
    spec = Fields(raw, "spec", "")
    scale_target_ref = _parse_target_ref(spec.obj("scaleTargetRef", required=True))
    min_replicas = spec.integer("minReplicas", minimum=0)
    max_replicas = spec.integer("maxReplicas", minimum=1, required=True)
    if max_replicas < min_replicas:
        raise SpecError(spec.path("maxReplicas"), f"must be >= minReplicas ({min_replicas})")
    polling = spec.integer("pollingIntervalSeconds", minimum=1)
    source = _parse_source(spec.obj("source", required=True), brokers)
    target = _parse_target(spec.obj("target"))
    activation_fields = spec.obj("activation")
    activation = ActivationSpec(messages=activation_fields.integer("messages", minimum=1))
    activation_fields.done()
    behavior = _parse_behavior(spec.obj("behavior"))
    fallback = _parse_fallback(spec.obj("fallback"), min_replicas, max_replicas)
    paused = spec.flag("paused")
    dry_run = spec.flag("dryRun")
    spec.done()
    return QueueScalerSpec(
        scale_target_ref=scale_target_ref,
        max_replicas=max_replicas,
        source=source,
        min_replicas=min_replicas,
        polling_interval_seconds=polling,
        target=target,
        activation=activation,
        behavior=behavior,
        fallback=fallback,
        paused=paused,
        dry_run=dry_run,
    )


def _parse_target_ref(fields: Fields) -> ScaleTargetRef:
    ref = ScaleTargetRef(
        api_version=fields.string("apiVersion", required=True),
        kind=fields.string("kind", required=True),
        name=fields.string("name", required=True),
    )
    fields.done()
    return ref


def _parse_source(fields: Fields, brokers: Mapping[str, BlockParser]) -> SourceSpec:
    """Exactly one broker block (the CRD says so too, by CEL)."""
    given = [name for name in brokers if fields.has(name)]
    if len(given) != 1:
        names = " or ".join(sorted(brokers))
        if not given and len(brokers) == 1:
            raise SpecError(fields.path(next(iter(brokers))), "is required")
        where = fields.path(given[-1]) if given else fields.here
        raise SpecError(where, f"set exactly one of {names}")
    (name,) = given
    source = brokers[name](fields.raw(name), fields.path(name))
    fields.done()
    return source


def parse_queue_list(value: object, path: str) -> tuple[str, ...]:
    """A non-empty list of distinct, non-empty queue names (a block's `queues`)."""
    if not isinstance(value, list) or not value:
        raise SpecError(path, "must be a non-empty list of queue names")
    for index, name in enumerate(value):
        if not isinstance(name, str) or not name:
            raise SpecError(f"{path}[{index}]", "must be a non-empty string")
    if len(set(value)) != len(value):
        raise SpecError(path, "must not name a queue twice (its backlog would count twice)")
    return tuple(value)


def _parse_target(fields: Fields) -> TargetSpec:
    target = TargetSpec(
        messages_per_replica=fields.integer("messagesPerReplica", minimum=1),
        drain_seconds=fields.optional_integer("drainSeconds", minimum=1),
    )
    fields.done()
    return target


def _parse_behavior(fields: Fields) -> BehaviorSpec:
    tolerance = fields.number("tolerance", minimum=0.0, below=1.0)
    up = fields.obj("scaleUp")
    scale_up = ScaleUpSpec(
        cooldown_seconds=up.integer("cooldownSeconds", minimum=0),
        max_step_replicas=up.integer("maxStepReplicas", minimum=1),
        max_step_percent=up.integer("maxStepPercent", minimum=1),
        stabilization_seconds=up.integer("stabilizationSeconds", minimum=0, maximum=3600),
    )
    up.done()
    down = fields.obj("scaleDown")
    scale_down = ScaleDownSpec(
        cooldown_seconds=down.integer("cooldownSeconds", minimum=0),
        stabilization_seconds=down.integer("stabilizationSeconds", minimum=0, maximum=3600),
        min_stabilization_seconds=down.optional_integer(
            "minStabilizationSeconds", minimum=0, maximum=3600
        )
        or 0,
        max_step_percent=down.integer("maxStepPercent", minimum=1, maximum=100),
        max_step_replicas=down.integer("maxStepReplicas", minimum=1),
        protect_busy_workers=down.flag("protectBusyWorkers"),
    )
    down.done()
    fields.done()
    return BehaviorSpec(tolerance=tolerance, scale_up=scale_up, scale_down=scale_down)


def _parse_fallback(fields: Fields, min_replicas: int, max_replicas: int) -> FallbackSpec:
    replicas = fields.optional_integer("replicas", minimum=0)
    if replicas is not None and not min_replicas <= replicas <= max_replicas:
        raise SpecError(
            fields.path("replicas"),
            f"must be within minReplicas ({min_replicas}) and maxReplicas ({max_replicas})",
        )
    fallback = FallbackSpec(
        after_failures=fields.integer("afterFailures", minimum=1), replicas=replicas
    )
    fields.done()
    return fallback
