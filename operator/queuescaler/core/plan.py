"""One tick of one QueueScaler, planned: everything the tick will do, decided without I/O.

The engine gathers observations (the broker's answer, live counts, the target's replica
count, a look at the workers) and calls `plan()`; it then carries out the `Plan` (marks,
the `/scale` patch, the status write, Events, metrics) and decides nothing itself. Some
observations are only worth making once a first plan asks for them: a plan that
`wants_workers` is made again with the look; a scale the apiserver refused is planned
again with that failure, so the status and Events say what really happened.

Every rule of a tick lives here or below (decision, status, workers): which numbers stand
in for others, when a failure counts, which condition changes are news, what a user reads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from queuescaler.core.decision import Decision, ScalerState, activates, decide, next_state
from queuescaler.core.sample import (
    BrokerClient,
    ErrorKind,
    QueueRef,
    QueueSample,
    SourceError,
    combine,
)
from queuescaler.core.spec import QueueScalerSpec, ScaleTargetRef
from queuescaler.core.status import (
    Condition,
    TickOutcome,
    build_status,
    camel,
    conditions_for,
    needs_write,
)
from queuescaler.core.workers import (
    CONDITION as WORKERS_CONDITION,
)
from queuescaler.core.workers import (
    Marks,
    Pod,
    WorkerReport,
    cleared_marks,
    deletion_marks,
    match_workers,
    workers_condition,
)

GOOD_WHEN_TRUE: Final = frozenset({"Ready", "BrokerReachable", "TargetFound"})
"""Conditions whose False is bad news: a Warning Event whenever they turn False."""
SECRET_FAILURE: Final = "secret"
"""The metric kind of a sample that failed because the connection Secret was unusable."""


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an input could not be read: a CamelCase condition reason and a message."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """The engine's knobs that rules depend on."""

    status_refresh_seconds: float = 30.0
    """Backlog and rates alone are rewritten to status at most this often."""
    stats_lag_seconds: float = 10.0
    """How long after a scale the management API's counts are distrusted."""


@dataclass(frozen=True, slots=True)
class Memory:
    """What the engine keeps for one QueueScaler between ticks, besides its spec."""

    state: ScalerState = field(default_factory=ScalerState)
    """The decision state (also written to status, so a restart resumes it)."""
    status: Mapping[str, Any] = field(default_factory=dict)
    """The status as last written (or as found at start): what the next write compares to."""
    status_written_at: float = -math.inf
    current_replicas: int | None = None
    """The target's replica count at the last tick (None: unknown or missing)."""
    announced_desired: int | None = None
    """The desired count last announced in a dry-run Event (each new one once)."""
    stats_pending: bool = False
    """The broker listed a queue of ours without statistics (new): live counts stand in."""
    marks: Mapping[str, str] = field(default_factory=dict)
    """Pods this QueueScaler marked with a deletion cost, and the cost."""


@dataclass(frozen=True, slots=True)
class WorkerLook:
    """The target's pods and the broker's clients, on a tick that may scale down."""

    pods: Sequence[Pod] = ()
    clients: Sequence[BrokerClient] | None = None
    """None when the pods or the clients could not be listed (see `problem`)."""
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Observations:
    """What the engine learned this tick about one QueueScaler."""

    now: float
    broker: Failure | None = None
    """Why the Secret gave no broker (missing, unreadable, bad); None when it did."""
    answer: Mapping[QueueRef, QueueSample | SourceError | None] | SourceError | None = None
    """The broker's answer for each of the spec's queues (None: not in the answer), or a
    SourceError when the broker failed as a whole; None when it was not sampled."""
    live: QueueSample | None = None
    """Live counts of every queue, combined, when the source peeked (no statistics delay)."""
    current: int | Failure = 0
    """The target's replica count, or why it could not be read."""
    workers: WorkerLook | None = None
    """The look a previous plan asked for (None: not looked)."""
    can_list_workers: bool = True
    """Whether the source can list the clients that hold messages."""
    scale_failure: Failure | None = None
    """The apiserver refused the scale a previous plan asked for."""


@dataclass(frozen=True, slots=True)
class Event:
    """A Kubernetes Event to post, on the QueueScaler (or on its target too)."""

    type: str
    reason: str
    message: str
    on_target: bool = False
    """Also posted on the scale target, prefixed with the QueueScaler's name."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one tick does for one QueueScaler."""

    memory: Memory
    """What to remember, once the plan is carried out."""
    decision: Decision | None = None
    sample: QueueSample | None = None
    previous_replicas: int | None = None
    """The replica count the decision started from (before any scale of this tick)."""
    wants_workers: bool = False
    """Look at the workers and plan again before acting (a protected scale-down)."""
    scale_to: int | None = None
    """The `/scale` patch to send, if any."""
    marks: Marks = field(default_factory=dict)
    """Pod annotations to patch before the scale (idle pods first)."""
    clear_marks: bool = False
    """Remove every mark this QueueScaler set (protection turned off)."""
    reread_secret: bool = False
    """The credentials were refused: read the Secret again at once."""
    conditions: Sequence[Condition] = ()
    status: Mapping[str, Any] | None = None
    """The status to write; None when the stored one still says it all."""
    events: Sequence[Event] = ()
    """Posted at once (a dry run's verdict, a refused scale)."""
    status_events: Sequence[Event] = ()
    """Posted once the status is written (conditions that changed)."""
    scale_events: Sequence[Event] = ()
    """Posted after the status that records the scale (a crash between keeps the cooldown)."""
    sample_failures: Sequence[str] = ()
    """Failure kinds to count in `queuescaler_sample_errors`."""
    log: str | None = None
    """A line for the operator's log (scales)."""


# --- the tick's schedule: who is due, who is peeked, who wakes ---


def next_due(now: float, interval: float) -> float:
    """The next full sample, aligned to the interval so QueueScalers on one broker share it."""
    return (math.floor(now / interval) + 1) * interval


def at_rest_at_zero(spec: QueueScalerSpec | None, current: int | None) -> bool:
    """A pool at zero that may wake: peeked every tick so a burst wakes it at once."""
    return spec is not None and current == 0 and spec.min_replicas == 0 and not spec.paused


def settling(state: ScalerState, now: float, settings: PlanSettings) -> bool:
    """Scaled moments ago: the management API's counts still predate the change."""
    last = state.last_scale_time
    return last is not None and now - last < settings.stats_lag_seconds


def wakes(spec: QueueScalerSpec, live: QueueSample) -> bool:
    """A pool at rest at zero whose live backlog calls for it now, before its interval."""
    return activates(spec, live)


def watched_target(target: ScaleTargetRef) -> bool:
    """Deployments' replica counts come from the watch; other kinds are read from /scale."""
    return target.api_version == "apps/v1" and target.kind == "Deployment"


# --- one QueueScaler's tick ---


def plan(
    spec: QueueScalerSpec | None,
    memory: Memory,
    seen: Observations,
    *,
    generation: int | None,
    settings: PlanSettings = PlanSettings(),
    spec_problem: str | None = None,
    name: str = "",
) -> Plan:
    """The whole tick for one QueueScaler (`name` signs the pod marks it sets)."""
    if spec is None:
        return _invalid_spec(memory, seen, generation, settings, spec_problem)
    now = seen.now
    failures: list[str] = []
    sample, broker_error, stats_pending = _sample(seen, failures)
    config_error = seen.broker
    if config_error is not None:
        failures.append(SECRET_FAILURE if config_error.reason != "BadSecret" else "bad-config")
    if seen.live is not None and (
        sample is not None or stats_pending or memory.current_replicas == 0
    ):
        sample = _with_live_counts(sample, seen.live)
    elif sample is None and broker_error is None and config_error is None:
        broker_error = Failure("StatsPending", "the queue's statistics are not out yet")
    current = seen.current if isinstance(seen.current, int) else None
    target_error = seen.current if isinstance(seen.current, Failure) else None
    protect = spec.behavior.scale_down.protect_busy_workers
    decision: Decision | None = None
    look = seen.workers
    report: WorkerReport | None = None
    wants_workers = False
    scale_to: int | None = None
    marks: Marks = {}
    scale_events: list[Event] = []
    events: list[Event] = []
    log: str | None = None
    announced = memory.announced_desired
    state = memory.state
    replicas_now = current
    if current is not None:
        decision = decide(spec, sample, current, state, now)
        shrinking = decision.replicas < current
        if protect and shrinking and seen.can_list_workers and config_error is None:
            if look is None:
                wants_workers = True
            elif look.clients is not None:
                report = match_workers(look.pods, look.clients, _scopes(spec))
                if report.matched:
                    decision = decide(spec, sample, current, state, now, report.busy)
        acting = decision.replicas != current and not spec.paused and not wants_workers
        if acting and spec.dry_run:
            if announced != decision.replicas:
                announced = decision.replicas
                events.append(Event(
                    "Normal", "WouldScale",
                    f"dry run: would scale from {current} to {decision.replicas}: "
                    f"{decision.reason}: {decision.message}",
                ))
        elif acting and seen.scale_failure is not None:
            target = spec.scale_target_ref
            events.append(Event(
                "Warning", "ScaleFailed",
                f"could not scale {target.kind} {target.name} to {decision.replicas}: "
                f"{seen.scale_failure.message}",
            ))
        elif acting:
            scale_to = decision.replicas
            if scale_to < current and look is not None and report is not None:
                marks = deletion_marks(look.pods, report, name)
            message = _scale_message(spec, current, decision, sample)
            reason = "ScaledUp" if scale_to > current else "ScaledDown"
            scale_events.append(Event("Normal", reason, message, on_target=True))
            log = message
            replicas_now = scale_to
        state = next_state(spec, state, sample, current, decision, now, scale_to is not None)
    conditions = conditions_for(
        paused=spec.paused, dry_run=spec.dry_run,
        broker_error=_pair(broker_error), target_error=_pair(target_error),
        config_error=_pair(config_error), decision=decision, current_replicas=replicas_now,
    )
    matched = _workers_condition(spec, memory.status, look, report)
    if matched is not None:
        conditions.append(matched)
    next_memory = dataclasses.replace(
        memory, state=state, current_replicas=replicas_now, announced_desired=announced,
        stats_pending=stats_pending,
    )
    status, flipped_events = _status(
        next_memory, generation, spec.source.include_in_flight, sample, replicas_now,
        decision, conditions, report, now, settings,
    )
    reread = (
        broker_error is not None and broker_error.reason == camel(str(ErrorKind.AUTH))
    )
    return Plan(
        memory=next_memory,
        decision=decision,
        sample=sample,
        previous_replicas=current,
        wants_workers=wants_workers,
        scale_to=scale_to,
        marks=marks,
        clear_marks=not protect and bool(memory.marks),
        reread_secret=reread,
        conditions=conditions,
        status=status,
        events=events,
        status_events=flipped_events,
        scale_events=scale_events,
        sample_failures=failures,
        log=log,
    )


def clearing_marks(pods: Sequence[Pod], memory: Memory, name: str) -> Marks:
    """The annotations to remove when this QueueScaler's marks go (deleted, or protection
    off): those found on the pods, else on the pods it remembers marking."""
    found = cleared_marks(pods, name)
    if found or pods:
        return found
    remembered = [Pod(pod, marked_by=name) for pod in memory.marks]
    return cleared_marks(remembered, name)


def _invalid_spec(
    memory: Memory, seen: Observations, generation: int | None, settings: PlanSettings,
    problem: str | None,
) -> Plan:
    conditions = [Condition("Ready", False, "InvalidSpec", problem or "the spec could not be read")]
    status, events = _status(
        memory, generation, True, None, None, None, conditions, None, seen.now, settings,
    )
    return Plan(memory=memory, conditions=conditions, status=status, status_events=events)


def _sample(
    seen: Observations, failures: list[str]
) -> tuple[QueueSample | None, Failure | None, bool]:
    """This QueueScaler's sample out of the broker's answer, or why there is none, and
    whether a queue's statistics are pending.

    Only the latest answer says whether statistics are pending: a flag left over from
    before a failed request would let the live counts stand in for it.
    """
    answer = seen.answer
    if seen.broker is not None:
        return None, None, False
    if answer is None:
        return None, Failure("Unreachable", "the broker was not sampled"), False
    if isinstance(answer, SourceError):  # counted once per broker request, not here
        return None, Failure(camel(str(answer.kind)), answer.message), False
    parts: list[QueueSample] = []
    for ref, part in answer.items():
        if isinstance(part, QueueSample):
            parts.append(part)
        elif part is None:
            message = f"queue {ref.name!r} was not in the broker's answer"
            return None, Failure("QueueNotFound", message), False
        elif part.kind is ErrorKind.STATS_PENDING:
            return None, None, True  # live counts stand in: see _with_live_counts
        else:
            failures.append(str(part.kind))
            return None, Failure(camel(str(part.kind)), part.message), False
    if not parts:
        return None, Failure("QueueNotFound", "no queue was in the broker's answer"), False
    return combine(parts), None, False


def _with_live_counts(sample: QueueSample | None, live: QueueSample) -> QueueSample:
    """The management sample with its ready and consumer counts replaced by live ones.

    The management API's counts lag by up to its statistics interval (seconds); a passive
    declare's do not. Unacked counts and rates exist only in the management sample, so
    they stay. The live counts stand alone only for a pool at zero (nothing can be in
    flight) or a queue too new to have statistics: never in place of a failed request for
    a pool at work, whose unacknowledged messages they cannot see.
    """
    if sample is None:
        return live
    return dataclasses.replace(sample, ready=live.ready, consumers=live.consumers)


def _scopes(spec: QueueScalerSpec) -> frozenset[str]:
    return frozenset(ref.scope for ref in spec.source.queues)


def _pair(failure: Failure | None) -> tuple[str, str] | None:
    return None if failure is None else (failure.reason, failure.message)


def _scale_message(
    spec: QueueScalerSpec, current: int, decision: Decision, sample: QueueSample | None
) -> str:
    target = spec.scale_target_ref
    backlog = f" (backlog {sample.backlog})" if sample is not None else ""
    return (
        f"scaled {target.kind} {target.name} from {current} to {decision.replicas}: "
        f"{decision.reason}{backlog}: {decision.message}"
    )


def _workers_condition(
    spec: QueueScalerSpec,
    written: Mapping[str, Any],
    look: WorkerLook | None,
    report: WorkerReport | None,
) -> Condition | None:
    """WorkersMatched: this tick's look, else the one last written (looks are only made
    on ticks that may scale down); absent until the first look."""
    enabled = spec.behavior.scale_down.protect_busy_workers
    scope = ", ".join(sorted(_scopes(spec)))
    if not enabled or look is not None:
        problem = look.problem if look is not None else None
        return workers_condition(report, scope, enabled=enabled, problem=problem)
    for previous in written.get("conditions") or ():
        if isinstance(previous, Mapping) and previous.get("type") == WORKERS_CONDITION:
            if previous.get("reason") == "ProtectionDisabled":
                return None
            return Condition(
                WORKERS_CONDITION, previous.get("status") == "True",
                str(previous.get("reason") or "Unknown"), str(previous.get("message") or ""),
            )
    return None


def _status(
    memory: Memory,
    generation: int | None,
    include_in_flight: bool,
    sample: QueueSample | None,
    current: int | None,
    decision: Decision | None,
    conditions: Sequence[Condition],
    report: WorkerReport | None,
    now: float,
    settings: PlanSettings,
) -> tuple[Mapping[str, Any] | None, list[Event]]:
    """The status to write (None: no write needed) and the Events its conditions call for.

    A condition becomes an Event when it changes, except a new QueueScaler's first,
    healthy ones (not news); one that turns bad is a Warning.
    """
    written = memory.status
    outcome = TickOutcome(
        generation, include_in_flight, sample, current, decision, memory.state, conditions,
        (report.matched, report.busy) if report is not None else None,
    )
    status, flipped = build_status(written, outcome, now)
    stale = now - memory.status_written_at >= settings.status_refresh_seconds
    if not needs_write(written, status, stale=stale):
        return None, []
    known = {c.get("type") for c in written.get("conditions") or ()}
    events: list[Event] = []
    for condition in flipped:
        bad = condition.type in GOOD_WHEN_TRUE and not condition.status
        if condition.type not in known and not bad:
            continue
        verb = "True" if condition.status else "False"
        events.append(Event(
            "Warning" if bad else "Normal", condition.reason,
            f"{condition.type} is {verb}: {condition.message}",
        ))
    return status, events
