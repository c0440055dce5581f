"""Replay recorded or synthetic traffic against a QueueScaler spec (and against the peers
on the same target): what `queuescaler simulate` prints. Pure: text and numbers in, a
summary out; reading files, Prometheus or the cluster is the command line's job.

Traffic is a publish rate at points in time (a CSV, or the operator's own
`queuescaler_publish_rate` series), each rate held until the next point. It becomes a
`Workload` of messages published per second, drawn around the rate by a seeded Poisson law
(the same seed gives the same messages, so every policy and every setting replays the very
same work). A `ReplayModel` says how the workers take it: task time, concurrency,
prefetch, pod start delay, and where each value came from (given, estimated, default).
"""

from __future__ import annotations

import bisect
import datetime
import itertools
import math
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from queuescaler.core.sample import QueueSample
from queuescaler.sim.peers import MANAGEMENT_API_DELAY, KedaQueueLengthPolicy
from queuescaler.sim.simulator import OraclePolicy, Policy, QueueScalerPolicy, simulate
from queuescaler.sim.traces import Trace, poisson_arrivals
from queuescaler.sim.workers import WorkerModel
from queuescaler.sources.registry import parse_spec

DEFAULT_SERVICE_SECONDS: Final = 1.0
"""A task's mean duration when nothing tells it: a guess, and the output says so."""
DEFAULT_CONCURRENCY: Final = 1
DEFAULT_PREFETCH: Final = 1
DEFAULT_POD_START_DELAY: Final = 10.0
MESSAGE_LEVEL_LIMIT: Final = 2_000_000
"""Above this many messages the replay is fluid (`sim.simulator`): the message-level world
costs a few microseconds a message and each policy replays the whole trace."""
PEEK_EVERY: Final = 1.0
"""The operator's fast path (on by default) looks at live counts between samples; the
simulator steps whole seconds."""
GAP_STEPS: Final = 3
"""A spacing of more than this many usual steps between two points is a gap (the series
was not recorded); its seconds hold the last rate and the notes count them."""
FIRST_MINUTE: Final = 60
WARM_UP: Final = 60
"""Seconds replayed before a recording starts, not counted: its first rate, then its first
backlog. A policy's first look at a simulated broker finds nothing (the simulator records
the broker's view from its first second on), and every policy would shrink the pool for it;
bench/decide.py warms up for the same reason."""

World = Literal["messages", "fluid"]
Progress = Callable[[str], None]


class TrafficError(ValueError):
    """Traffic that cannot be replayed; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Traffic:
    """Recorded traffic: a publish rate at each point in time, held until the next point.

    The optional series have one value per point (None where the point has none) or are
    empty (not recorded at all).
    """

    name: str
    times: tuple[float, ...]
    """Seconds (Unix time, or from any origin), strictly increasing."""
    publish_rates: tuple[float, ...]
    """Messages published per second from each point to the next."""
    service_seconds: tuple[float | None, ...] = ()
    """Mean task time at each point, when the recording has it."""
    per_replica_rates: tuple[float | None, ...] = ()
    """What one replica acknowledges per second (the operator's `per_replica_rate`)."""
    backlog: tuple[float | None, ...] = ()
    """Messages ready and unacknowledged, as the operator sampled them."""
    replicas: tuple[float | None, ...] = ()
    """The target's replica count, as the operator saw it."""

    def __post_init__(self) -> None:
        if len(self.times) < 2:
            raise TrafficError(f"{self.name}: needs at least two points in time")
        if len(self.publish_rates) != len(self.times):
            raise TrafficError(f"{self.name}: one publish rate per point in time")
        for label, series in (
            ("service_seconds", self.service_seconds),
            ("per_replica_rates", self.per_replica_rates),
            ("backlog", self.backlog),
            ("replicas", self.replicas),
        ):
            if series and len(series) != len(self.times):
                raise TrafficError(f"{self.name}: {label} must have one value per point in time")
        for earlier, later in itertools.pairwise(self.times):
            if not later > earlier:
                raise TrafficError(f"{self.name}: times must increase ({earlier:g}, {later:g})")
        for time, rate in zip(self.times, self.publish_rates, strict=True):
            if not (math.isfinite(rate) and rate >= 0):
                raise TrafficError(f"{self.name}: publish rate {rate!r} at {time:g} is not >= 0")
        for time, seconds in zip(self.times, self.service_seconds, strict=False):
            if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
                raise TrafficError(f"{self.name}: service seconds {seconds!r} at {time:g} not > 0")

    @property
    def step(self) -> float:
        """The usual spacing of the points (their median)."""
        return statistics.median(b - a for a, b in itertools.pairwise(self.times))


_COLUMNS: Final = ("time", "publish_rate", "service_seconds")


def traffic_from_csv(text: str, name: str) -> Traffic:
    """Traffic from CSV text: `time,publish_rate[,service_seconds]` per line, an optional
    header line naming those columns. `time` is seconds (Unix time or from any origin) or an
    ISO 8601 timestamp (UTC unless it says otherwise); an empty service_seconds is None."""
    times: list[float] = []
    rates: list[float] = []
    service: list[float | None] = []
    columns: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        cells = [cell.strip() for cell in line.split(",")]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not times and columns is None and cells[0].lower() == "time":
            if tuple(cell.lower() for cell in cells) not in (_COLUMNS[:2], _COLUMNS):
                raise TrafficError(
                    f"{name}, line {number}: the header must be time,publish_rate"
                    f"[,service_seconds], not {line.strip()!r}"
                )
            columns = len(cells)
            continue
        if len(cells) not in (2, 3) or (columns is not None and len(cells) != columns):
            raise TrafficError(
                f"{name}, line {number}: expected time,publish_rate[,service_seconds], "
                f"got {line.strip()!r}"
            )
        times.append(_csv_time(cells[0], name, number))
        rates.append(_csv_number(cells[1], "publish_rate", name, number))
        given = cells[2] if len(cells) == 3 else ""
        service.append(_csv_number(given, "service_seconds", name, number) if given else None)
    if len(times) < 2:
        raise TrafficError(f"{name}: needs at least two lines of time,publish_rate")
    with_service = tuple(service) if any(s is not None for s in service) else ()
    try:
        return Traffic(name, tuple(times), tuple(rates), service_seconds=with_service)
    except TrafficError as error:
        raise TrafficError(f"{error} (in the CSV)") from None


def _csv_time(cell: str, name: str, number: int) -> float:
    try:
        return float(cell)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(cell.replace("Z", "+00:00"))
    except ValueError:
        raise TrafficError(
            f"{name}, line {number}: time {cell!r} is neither seconds nor an ISO 8601 timestamp"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _csv_number(cell: str, column: str, name: str, number: int) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise TrafficError(f"{name}, line {number}: {column} {cell!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise TrafficError(f"{name}, line {number}: {column} {cell!r} must be >= 0")
    return value


# --- what the simulator replays --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    """Messages published in each second, and what the recording says happened meanwhile."""

    name: str
    arrivals: tuple[int, ...]
    start: float = 0.0
    """The time of second 0 (Unix seconds for recorded traffic; 0 for a synthetic trace)."""
    warm_up: int = 0
    """Seconds at the start replayed but not counted (their waits, replica-seconds, scale
    events and decisions)."""
    recorded_replicas: tuple[float | None, ...] = ()
    """The real pool's size in each second, when recorded."""
    recorded_backlog: tuple[float | None, ...] = ()
    notes: tuple[str, ...] = ()
    """What the replay assumed about the recording, in words for the output."""

    @property
    def duration(self) -> int:
        """Seconds counted (the warm-up excluded)."""
        return len(self.arrivals) - self.warm_up

    @property
    def published(self) -> int:
        """Messages published in the seconds counted."""
        return sum(self.arrivals[self.warm_up :])


def workload_from_trace(trace: Trace) -> Workload:
    """A synthetic trace's messages, as they are."""
    return Workload(trace.name, trace.arrivals)


def workload_from_traffic(traffic: Traffic, *, seed: int = 0) -> Workload:
    """Each second of the recording, its rate drawn as Poisson arrivals (seeded); the last
    point holds for one usual step. Before it, a `WARM_UP` at the first rate ending with the
    backlog recorded at the start (if any), so that the queue the counted seconds begin with
    is the recorded one and no policy starts from a broker it has never looked at."""
    step = traffic.step
    origin = traffic.times[0]
    ends = [*traffic.times[1:], traffic.times[-1] + step]
    duration = max(1, round(ends[-1] - origin))
    per_second = [0] * WARM_UP + _per_second(traffic.times, ends, origin, duration)
    rates = [traffic.publish_rates[i] for i in per_second]
    arrivals = list(poisson_arrivals(rates, seed=seed))
    notes = [f"the first {WARM_UP} s are a warm-up at the first rate "
             f"({traffic.publish_rates[0]:.3g} msg/s), replayed and not counted"]
    gaps = sum(
        round(later - earlier)
        for earlier, later in itertools.pairwise(traffic.times)
        if later - earlier > GAP_STEPS * step
    )
    if gaps:
        notes.append(f"{gaps:,} s without a recorded point held the rate before them")
    first_backlog = traffic.backlog[0] if traffic.backlog else None
    if first_backlog:
        arrivals[WARM_UP - 1] += round(first_backlog)
        notes.append(f"the backlog at the start ({round(first_backlog):,} messages) is "
                     "published in the warm-up's last second (their waits are not counted)")
    return Workload(
        traffic.name,
        tuple(arrivals),
        start=origin - WARM_UP,
        warm_up=WARM_UP,
        recorded_replicas=_recorded(traffic.replicas, per_second),
        recorded_backlog=_recorded(traffic.backlog, per_second),
        notes=tuple(notes),
    )


def _recorded(series: tuple[float | None, ...], per_second: list[int]) -> tuple[float | None, ...]:
    """A recorded series at each second of the replay (none during the warm-up)."""
    if not series:
        return ()
    return (None,) * WARM_UP + tuple(series[i] for i in per_second[WARM_UP:])


def _per_second(
    times: Sequence[float], ends: Sequence[float], origin: float, duration: int
) -> list[int]:
    """For each second of the replay, the index of the point whose rate holds then."""
    starts = [time - origin for time in times]
    return [max(0, bisect.bisect_right(starts, second) - 1) for second in range(duration)]


# --- the workers -------------------------------------------------------------------------------


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

    The task time is the only value a recording tells: from a service_seconds column (its
    mean, weighted by the publish rate), else from the operator's per-replica rate (a
    replica of `concurrency` workers acking r messages a second takes concurrency / r
    seconds a task; its latest value, the operator's best estimate), else a synthetic
    trace's own. Concurrency, prefetch and the pod start delay are flags or defaults.
    """
    origins: dict[str, str] = {}

    def pick(knob: str, value: Any, default: Any) -> Any:
        origins[knob] = "given" if value is not None else "default"
        return default if value is None else value

    concurrency: int = pick("concurrency", given.concurrency, DEFAULT_CONCURRENCY)
    prefetch: int | None = pick("prefetch", given.prefetch, DEFAULT_PREFETCH) or None
    delay: float = pick("pod start delay", given.pod_start_delay, DEFAULT_POD_START_DELAY)
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
    known = [r for r in (traffic.per_replica_rates if traffic else ()) if r]
    if known:
        rate = known[-1]
        return concurrency / rate, (
            f"estimated: concurrency {concurrency} / per-replica rate {rate:.3g} msg/s "
            "(the operator's latest)"
        )
    if trace is not None:
        return 1.0 / trace.service_rate, f"the trace's ({trace.name})"
    return DEFAULT_SERVICE_SECONDS, "default (nothing to estimate it from: give it)"


# --- replaying ---------------------------------------------------------------------------------

OURS: Final = "queuescaler"
KEDA: Final = "keda-queue-length"
ORACLE: Final = "oracle"
POLICY_WORDS: Final[Mapping[str, str]] = {
    OURS: "the spec as the operator decides it (its fast path on)",
    KEDA: "KEDA's RabbitMQ QueueLength trigger on the HPA's default behaviour, with the "
    "spec's messagesPerReplica as its value, the same bounds and activation",
    ORACLE: "knows every message in advance: a reference cost, not a policy",
}


@dataclass(frozen=True, slots=True)
class Run:
    """One policy's replay, in the units users think in."""

    policy: str
    p50_wait: float
    p95_wait: float
    """Seconds from publish to the start of the task; messages never started count with the
    wait they had when the replay ended."""
    replica_hours: float
    scale_events: int
    redelivered: float
    """Messages handed back to the queue because their pod was removed."""
    left: float
    """Messages queued or in progress when the replay ended."""
    scale_reasons: tuple[tuple[str, int], ...] = ()
    """Scale events by the decision's reason, most frequent first (queuescaler only)."""
    decisions: tuple[tuple[str, int], ...] = ()
    """Every decision by its reason, most frequent first (queuescaler only)."""
    replicas: tuple[int, ...] = ()
    """Pool size in each second."""
    backlog: tuple[float, ...] = ()
    """Ready + unacked in each second."""

    def without_series(self) -> Run:
        return replace(self, replicas=(), backlog=())


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the real pool did over the recording (from the replicas series)."""

    replica_hours: float
    scale_events: int
    """Changes of the recorded replica count (at the recording's resolution: a change and
    its reversal between two points are not seen)."""


@dataclass(frozen=True, slots=True)
class Replay:
    """Every policy's run on one workload."""

    workload: str
    duration: int
    published: int
    world: World
    initial_replicas: int
    runs: tuple[Run, ...]
    recorded: Recorded | None = None

    def run(self, policy: str) -> Run:
        return next(run for run in self.runs if run.policy == policy)


def choose_world(workload: Workload, world: World | None = None) -> World:
    """Message by message (prefetch and concurrency as they are) unless the workload is too
    large for it; then fluid (one message at a time per replica at the replica's rate)."""
    if world is not None:
        return world
    return "messages" if workload.published <= MESSAGE_LEVEL_LIMIT else "fluid"


def replay(
    spec: Mapping[str, Any],
    workload: Workload,
    model: ReplayModel,
    *,
    compare: bool = False,
    world: World | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Replay:
    """Replay `workload` against `spec` (a raw QueueScaler `spec`; SpecError if invalid);
    with `compare`, KEDA QueueLength on the HPA's defaults with the same target and bounds,
    and the oracle, on the very same messages. Every pool starts at the same size."""
    chosen = choose_world(workload, world)
    trace = _trace(workload, model, chosen)
    workers = model.workers(seed) if chosen == "messages" else None
    start = initial_replicas(spec, workload, model)
    policies: list[Policy] = [_ours(spec, start)]
    if compare:
        policies.append(_keda(spec, start))
        policies.append(
            OraclePolicy(
                trace,
                pod_start_delay=model.pod_start_delay,
                max_replicas=parse_spec(spec).max_replicas,
                workers=workers,
            )
        )
    runs = []
    for index, policy in enumerate(policies, start=1):
        if progress:
            progress(f"replaying {policy.name} ({index}/{len(policies)})")
        runs.append(_play(trace, policy, workload, model, workers, start))
    return Replay(
        workload=workload.name,
        duration=workload.duration,
        published=workload.published,
        world=chosen,
        initial_replicas=start,
        runs=tuple(runs),
        recorded=recorded(workload),
    )


def replay_ours(
    spec: Mapping[str, Any], workload: Workload, model: ReplayModel, *, world: World,
    start: int, seed: int = 0,
) -> Run:
    """queuescaler alone on `spec`, in a given world from a given start (the search's unit),
    without the per-second series."""
    trace = _trace(workload, model, world)
    workers = model.workers(seed) if world == "messages" else None
    return _play(trace, _ours(spec, start), workload, model, workers, start).without_series()


def _play(
    trace: Trace, policy: Policy, workload: Workload, model: ReplayModel,
    workers: WorkerModel | None, start: int,
) -> Run:
    counted = _Counted(policy, workload.warm_up) if isinstance(policy, QueueScalerPolicy) else None
    result = simulate(
        trace,
        counted or policy,
        pod_start_delay=model.pod_start_delay,
        initial_replicas=start,
        workers=workers,
        measure_from=workload.warm_up,
    )
    warm_up = workload.warm_up
    return Run(
        policy=policy.name,
        p50_wait=result.p50_wait,
        p95_wait=result.p95_wait,
        replica_hours=result.replica_seconds / 3600,
        scale_events=result.scale_events,
        redelivered=result.redelivered,
        left=result.left,
        scale_reasons=counted.scale_reasons() if counted else (),
        decisions=counted.decisions() if counted else (),
        replicas=result.replicas[warm_up:],
        backlog=result.backlog[warm_up:],
    )


class _Counted:
    """queuescaler's policy, its decisions by reason counted after the warm-up only."""

    def __init__(self, policy: QueueScalerPolicy, warm_up: int) -> None:
        self.policy = policy
        self.warm_up = warm_up
        self.name = policy.name
        self.sampling = policy.sampling
        self.initial_replicas = policy.initial_replicas
        self.removes_idle_first = policy.removes_idle_first
        self._before: tuple[Counter[str], Counter[str]] = (Counter(), Counter())

    def desired(self, sample: QueueSample, current: int, now: float) -> int:
        if now < self.warm_up:
            wanted = self.policy.desired(sample, current, now)
            self._before = (Counter(self.policy.reasons), Counter(self.policy.scale_reasons))
            return wanted
        return self.policy.desired(sample, current, now)

    def decisions(self) -> tuple[tuple[str, int], ...]:
        return _counted(self.policy.reasons - self._before[0])

    def scale_reasons(self) -> tuple[tuple[str, int], ...]:
        return _counted(self.policy.scale_reasons - self._before[1])


def initial_replicas(spec: Mapping[str, Any], workload: Workload, model: ReplayModel) -> int:
    """The recorded pool's first size; else what the first minute's load needs (so that no
    policy is judged on a cold start the recording never had), within the spec's bounds.
    Every pool starts the replay (its warm-up included) at this size."""
    parsed = parse_spec(spec)
    first = next((r for r in workload.recorded_replicas if r is not None), None)
    if first is None:
        head = workload.arrivals[:FIRST_MINUTE]
        rate = sum(head) / max(1, len(head))
        first = math.ceil(rate * model.service_seconds / model.concurrency - 1e-9)
    return min(max(round(first), parsed.min_replicas), parsed.max_replicas)


def recorded(workload: Workload) -> Recorded | None:
    known = [r for r in workload.recorded_replicas if r is not None]
    if not known:
        return None
    changes = sum(1 for a, b in itertools.pairwise(known) if round(a) != round(b))
    return Recorded(replica_hours=sum(known) / 3600, scale_events=changes)


def _trace(workload: Workload, model: ReplayModel, world: World) -> Trace:
    """The simulator's trace: the message-level world draws each task around the mean task
    time; the fluid one folds concurrency into one replica's rate."""
    rate = 1.0 / model.service_seconds
    if world == "fluid":
        rate *= model.concurrency
    return Trace(workload.name, workload.arrivals, rate)


def _ours(spec: Mapping[str, Any], start: int) -> QueueScalerPolicy:
    return QueueScalerPolicy(
        spec,
        stats_delay=MANAGEMENT_API_DELAY,
        initial_replicas=start,
        name=OURS,
        peek_every=PEEK_EVERY,
    )


def _keda(spec: Mapping[str, Any], start: int) -> KedaQueueLengthPolicy:
    parsed = parse_spec(spec)
    return KedaQueueLengthPolicy(
        value=parsed.target.messages_per_replica,
        activation_value=parsed.activation.messages - 1,  # KEDA wakes above it, we at it
        min_replica_count=parsed.min_replicas,
        max_replica_count=parsed.max_replicas,
        initial_replicas=start,
        name=KEDA,
    )


def _counted(counter: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(((str(k), n) for k, n in counter.items()), key=lambda i: (-i[1], i[0])))

