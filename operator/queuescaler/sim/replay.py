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
import itertools
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from queuescaler.core.sample import QueueSample
from queuescaler.sim.estimation import (
    DEFAULT_CONCURRENCY,
    DEFAULT_POD_START_DELAY,
    DEFAULT_PREFETCH,
    DEFAULT_SERVICE_SECONDS,
    Given,
    ReplayModel,
    estimate_model,
)
from queuescaler.sim.peers import MANAGEMENT_API_DELAY, KedaQueueLengthPolicy
from queuescaler.sim.simulator import OraclePolicy, Policy, QueueScalerPolicy, simulate
from queuescaler.sim.traces import Trace, poisson_arrivals
from queuescaler.sim.traffic import GAP_STEPS, Traffic, TrafficError, traffic_from_csv
from queuescaler.sim.workers import WorkerModel
from queuescaler.sources.registry import parse_spec

# The traffic and the worker model are re-exported: `queuescaler simulate` reads one module.
__all__ = [
    "DEFAULT_CONCURRENCY", "DEFAULT_POD_START_DELAY", "DEFAULT_PREFETCH",
    "DEFAULT_SERVICE_SECONDS", "FIRST_MINUTE", "KEDA", "LIKENESS_LAG", "MESSAGE_LEVEL_LIMIT",
    "ORACLE", "OURS", "POLICY_WORDS", "WARM_UP", "Given", "Likeness", "Progress", "Recorded",
    "Replay", "ReplayModel", "Run", "Traffic", "TrafficError", "Workload", "World", "choose_world",
    "estimate_model", "initial_replicas", "likeness", "recorded", "replay", "replay_ours",
    "share_of", "traffic_from_csv", "workload_from_trace", "workload_from_traffic",
]

MESSAGE_LEVEL_LIMIT: Final = 2_000_000
"""Above this many messages the replay is fluid (`sim.simulator`): the message-level world
costs a few microseconds a message and each policy replays the whole trace."""
PEEK_EVERY: Final = 1.0
"""The operator's fast path (on by default) looks at live counts between samples; the
simulator steps whole seconds."""
FIRST_MINUTE: Final = 60
LIKENESS_LAG: Final = 5
"""The most seconds the replayed pool is taken earlier when set against the recorded one: its
arrivals come from a publish rate that is late (RabbitMQ's by a statistics interval, 5 s by
default), moved back only where the backlog showed a burst, so it may follow the real pool
by up to about that much."""
WARM_UP: Final = 60
"""Seconds replayed before a recording starts, not counted: its first rate, then its first
backlog. A policy's first look at a simulated broker finds nothing (the simulator records
the broker's view from its first second on), and every policy would shrink the pool for it;
bench/decide.py warms up for the same reason."""

World = Literal["messages", "fluid"]
Progress = Callable[[str, float], None]
"""Hears what is being done and the share of it done so far (0 to 1)."""
Share = Callable[[float], None]
"""Hears the share of one replay done so far."""


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


def workload_from_traffic(
    traffic: Traffic, *, seed: int = 0, capacity: float | None = None
) -> Workload:
    """Each second of the recording, its rate drawn as Poisson arrivals (seeded); the last
    point holds for one usual step. Before it, a `WARM_UP` at the first rate (at most
    `capacity`, what the starting pool serves a second, so that a recording beginning in a
    burst does not pile up a queue of its own) ending with the backlog recorded at the start
    (if any), so that the queue the counted seconds begin with is the recorded one and no
    policy starts from a broker it has never looked at."""
    step = traffic.step
    origin = traffic.times[0]
    ends = [*traffic.times[1:], traffic.times[-1] + step]
    duration = max(1, round(ends[-1] - origin))
    per_second = _per_second(traffic.times, ends, origin, duration)
    first = traffic.publish_rates[0]
    warm = first if capacity is None else min(first, capacity)
    rates = [warm] * WARM_UP + [traffic.publish_rates[i] for i in per_second]
    per_second = [0] * WARM_UP + per_second
    arrivals = list(poisson_arrivals(rates, seed=seed))
    notes = [*traffic.notes,
             f"the first {WARM_UP} s are a warm-up at {warm:.3g} msg/s"
             + ("" if warm == first else f" (the first rate, {first:.3g} msg/s, is more than "
                "the starting pool serves)")
             + ", replayed and not counted"]
    gaps = sum(
        round(later - earlier)
        for earlier, later in itertools.pairwise(traffic.times)
        if later - earlier > GAP_STEPS * step
    )
    if gaps:
        notes.append(f"{gaps:,} s without a recorded point held the rate before them")
    first_backlog = traffic.backlog[0] if traffic.backlog else None
    if first_backlog is not None and first_backlog >= 0.5:
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
class Likeness:
    """How close queuescaler's replay came to the recorded pool, second by second (over the
    seconds with a recorded replica count)."""

    mean_difference: float
    """Mean of |replayed - recorded| replicas."""
    within_one: float
    """Share of the seconds whose replayed count was within one replica of the recorded."""
    late_by: int
    """The lag, 0 to `LIKENESS_LAG` s, at which the replayed pool taken that much earlier is
    within one replica of the recorded in the most seconds (the smallest on a tie): one lag for
    the whole recording, so a pool that merely passes near the recorded one does not match."""
    within_one_late: float
    """`within_one` at that lag."""
    peaks: tuple[int, int]
    """The highest count, replayed and recorded."""


def likeness(replayed: Sequence[int], recorded: Sequence[float | None]) -> Likeness | None:
    """`replayed` against `recorded`, both from the first counted second on."""
    pairs = [(second, r, round(k))
             for second, (r, k) in enumerate(zip(replayed, recorded, strict=False))
             if k is not None]
    if not pairs:
        return None
    differences = [abs(r - k) for _, r, k in pairs]
    last = len(replayed) - 1

    def within_one_at(lag: int) -> float:
        """The replayed count `lag` s later (the last one past the end) against each recorded."""
        return sum(1 for second, _, k in pairs
                   if abs(replayed[min(second + lag, last)] - k) <= 1) / len(pairs)

    shares = [within_one_at(lag) for lag in range(LIKENESS_LAG + 1)]
    late_by = shares.index(max(shares))
    return Likeness(
        mean_difference=sum(differences) / len(pairs),
        within_one=shares[0],
        late_by=late_by,
        within_one_late=shares[late_by],
        peaks=(max(r for _, r, _ in pairs), max(k for _, _, k in pairs)),
    )


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
    likeness: Likeness | None = None
    """queuescaler's replayed pool against the recorded one, when there is one."""

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
    for index, policy in enumerate(policies):
        said = f"replaying {policy.name} ({index + 1}/{len(policies)})"
        share = share_of(progress, said, index, len(policies))
        runs.append(_play(trace, policy, workload, model, workers, start, share))
    if progress:
        progress(f"replayed {len(policies)} polic{'y' if len(policies) == 1 else 'ies'}", 1.0)
    return Replay(
        workload=workload.name,
        duration=workload.duration,
        published=workload.published,
        world=chosen,
        initial_replicas=start,
        runs=tuple(runs),
        recorded=recorded(workload),
        likeness=likeness(runs[0].replicas, workload.recorded_replicas[workload.warm_up :]),
    )


def share_of(progress: Progress | None, said: str, index: int, count: int) -> Share | None:
    """The progress of replay `index` of `count`, as a share of all of them."""
    if progress is None:
        return None
    return lambda done: progress(said, (index + done) / count)


def replay_ours(
    spec: Mapping[str, Any], workload: Workload, model: ReplayModel, *, world: World,
    start: int, seed: int = 0, share: Share | None = None,
) -> Run:
    """queuescaler alone on `spec`, in a given world from a given start (the search's unit),
    without the per-second series. `share` hears the share of the replay done."""
    trace = _trace(workload, model, world)
    workers = model.workers(seed) if world == "messages" else None
    return _play(trace, _ours(spec, start), workload, model, workers, start, share).without_series()


def _play(
    trace: Trace, policy: Policy, workload: Workload, model: ReplayModel,
    workers: WorkerModel | None, start: int, share: Share | None = None,
) -> Run:
    tracked = _Tracked(policy, workload.warm_up, len(workload.arrivals), share)
    result = simulate(
        trace,
        tracked,
        pod_start_delay=model.pod_start_delay,
        initial_replicas=start,
        workers=workers,
        measure_from=workload.warm_up,
    )
    if share:
        share(1.0)
    warm_up = workload.warm_up
    return Run(
        policy=policy.name,
        p50_wait=result.p50_wait,
        p95_wait=result.p95_wait,
        replica_hours=result.replica_seconds / 3600,
        scale_events=result.scale_events,
        redelivered=result.redelivered,
        left=result.left,
        scale_reasons=tracked.scale_reasons(),
        decisions=tracked.decisions(),
        replicas=result.replicas[warm_up:],
        backlog=result.backlog[warm_up:],
    )


PROGRESS_STEPS: Final = 200
"""How often a replay says how far it got: every 0.5% of its seconds."""


class _Tracked:
    """A policy as the simulator asks it, watched: queuescaler's decisions counted by reason
    after the warm-up only, and the share of the replay done told to `share` (the simulator
    asks the policy at each poll, with the second it is at)."""

    def __init__(self, policy: Policy, warm_up: int, duration: int, share: Share | None) -> None:
        self.policy = policy
        self.ours = policy if isinstance(policy, QueueScalerPolicy) else None
        self.warm_up = warm_up
        self.name = policy.name
        self.sampling = policy.sampling
        self.initial_replicas = policy.initial_replicas
        self.removes_idle_first = policy.removes_idle_first
        self._before: tuple[Counter[str], Counter[str]] = (Counter(), Counter())
        self._share = share
        self._every = max(1.0, duration / PROGRESS_STEPS)
        self._duration = max(1, duration)
        self._next = 0.0

    def desired(self, sample: QueueSample, current: int, now: float) -> int:
        if self._share is not None and now >= self._next:
            self._share(now / self._duration)
            self._next = now + self._every
        wanted = self.policy.desired(sample, current, now)
        if self.ours is not None and now < self.warm_up:
            self._before = (Counter(self.ours.reasons), Counter(self.ours.scale_reasons))
        return wanted

    def decisions(self) -> tuple[tuple[str, int], ...]:
        return _counted(self.ours.reasons - self._before[0]) if self.ours else ()

    def scale_reasons(self) -> tuple[tuple[str, int], ...]:
        return _counted(self.ours.scale_reasons - self._before[1]) if self.ours else ()


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

