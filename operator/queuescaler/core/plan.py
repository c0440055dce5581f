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
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from queuescaler.core.decision import (
    Decision,
    ScalerState,
    activates,
    decide,
    flow_of,
    next_state,
    outside_tolerance,
)
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
    RemovalFloor,
    WorkerReport,
    cleared_marks,
    deletion_marks,
    match_workers,
    ordinal_floor,
    removal_floor,
    serves,
    workers_condition,
)

T = TypeVar("T")

GOOD_WHEN_TRUE: Final = frozenset({"Ready", "BrokerReachable", "TargetFound"})
"""Conditions whose False is bad news: a Warning Event whenever they turn False."""
EARLY_GROWTH: Final = 2
"""While some of a pool's pods are not consuming yet (the live consumer count is below its
replica count: pods a flood called for are starting), an early decision must grow it at
least this many times over: the flood's ready count climbs every tick meanwhile, and a
step per replica's worth would be a scale event a second; doubling reaches any size in a
few (the full sample at the polling interval sizes it exactly). A pool whose pods all
consume reacts to any growth beyond the tolerance."""
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
    status_json: bytes = b"{}"
    """The status as last written (or as found at start), as compact JSON: what the next
    write compares to. Kept encoded: at 10,000 QueueScalers the decoded dicts cost about
    ten times the bytes, and a QueueScaler's status is read only on its own ticks."""
    status_written_at: float = -math.inf
    current_replicas: int | None = None
    """The target's replica count at the last tick (None: unknown or missing)."""
    announced_desired: int | None = None
    """The desired count last announced in a dry-run Event (each new one once)."""
    stats_pending: bool = False
    """The broker listed a queue of ours without statistics (new): live counts stand in."""
    marks: Mapping[str, str] = field(default_factory=dict)
    """Pods this QueueScaler marked with a deletion cost, and the cost."""
    refused: tuple[int, str] | None = None
    """The scale last refused (replicas, reason): its Event is posted once."""
    early_ready: int | None = None
    """The live ready count of the last early decision since the last full sample: the
    next early one waits until one more replica's worth has arrived (`calls_now`)."""

    @property
    def status(self) -> dict[str, Any]:
        """The status last written, decoded (a fresh copy each time)."""
        decoded = json.loads(self.status_json)
        return decoded if isinstance(decoded, dict) else {}

    def wrote(self, status: Mapping[str, Any], at: float | None = None) -> Memory:
        """This memory with `status` as the one written (at `at`, if it was written)."""
        encoded = json.dumps(status, separators=(",", ":"), sort_keys=True).encode()
        when = self.status_written_at if at is None else at
        return dataclasses.replace(self, status_json=encoded, status_written_at=when)


@dataclass(frozen=True, slots=True)
class WorkerLook:
    """The target's pods and the broker's clients, on a tick that may scale down."""

    pods: Sequence[Pod] = ()
    clients: Sequence[BrokerClient] | None = None
    """None when the pods or the clients could not be listed (see `problem`)."""
    others: frozenset[QueueRef] = frozenset()
    """The queues other QueueScalers on the same broker read: a client that consumes only
    those is another pool's (`workers.serves`)."""
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
    conflict: str | None = None
    """Another owner of the same target (`QueueScaler x`, `HorizontalPodAutoscaler y`)."""
    early: bool = False
    """Decided before its interval on its live counts alone (`calls_now`): not sampled."""


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
    warnings: Sequence[str] = ()
    """Warning lines for the operator's log: each failure once when it starts, once when
    it ends."""


# --- the tick's schedule: who is due, who is peeked, who wakes ---


def next_due(now: float, interval: float) -> float:
    """The next full sample, aligned to the interval so QueueScalers on one broker share it."""
    return (math.floor(now / interval) + 1) * interval


def expired(expires: float, now: float, length: float) -> bool:
    """Whether something kept until `expires` (for `length` seconds) is due again: its time
    has come, or it lies more than `length` ahead, which only a clock that stepped back
    leaves (review 38: caches of HPAs and Secrets held for the step's length too)."""
    return not now < expires <= now + length


def rescheduled(scheduled: float, now: float, interval: float) -> float:
    """When a QueueScaler is sampled next: as scheduled, or at the next aligned sample after
    `now` if that comes first. A clock that stepped back left the schedule in the future
    (review 37: after a 30-minute step no pool was sampled or decided for 30 minutes, a
    flood of 500 held at 2 replicas)."""
    return min(scheduled, next_due(now, interval))


def at_rest_at_zero(spec: QueueScalerSpec | None, current: int | None) -> bool:
    """A pool at zero that may wake: peeked every tick so a burst wakes it at once."""
    return spec is not None and current == 0 and spec.min_replicas == 0 and not spec.paused


def peeked(spec: QueueScalerSpec | None, memory: Memory, now: float) -> bool:
    """Live counts are read between its samples (within the tick's budget): a pool at rest
    at zero, or a pool at work that may still grow now (below its maximum, out of its
    scale-up cooldown), so a burst is acted on within a tick whatever the pool's size, not
    a polling interval plus the statistics' lag later. (In its cooldown, the full sample
    at the interval still grows it as far as the messages ready call for.)"""
    current = memory.current_replicas
    if at_rest_at_zero(spec, current):
        return True
    if spec is None or spec.paused or current is None or not 0 < current < spec.max_replicas:
        return False
    since = memory.state.last_scale_time
    return since is None or now - since >= spec.behavior.scale_up.cooldown_seconds


def settling(state: ScalerState, now: float, settings: PlanSettings) -> bool:
    """Scaled moments ago: the management API's counts still predate the change."""
    last = state.last_scale_time
    return last is not None and now - last < settings.stats_lag_seconds


def wakes(spec: QueueScalerSpec, live: QueueSample) -> bool:
    """A pool at rest at zero whose live backlog calls for it now, before its interval."""
    return activates(spec, live)


def calls_now(spec: QueueScalerSpec, live: QueueSample, memory: Memory, now: float) -> bool:
    """Whether a peeked pool is decided now, before its interval, on its live counts: at
    zero, when they activate it; at work, when the messages ready alone (a lower bound of
    any backlog the policies count) call for more replicas than it has, beyond the
    tolerance (at least `EARLY_GROWTH` times as many while some of its pods are still
    starting), and more than its last decision recommended, out of its scale-up cooldown.

    One burst starts one early decision, not one per tick while a cooldown, a dry run or a
    refusal holds it: the next waits for one more replica's worth of messages. Only growth
    is decided early (the live counts cannot see messages in flight): a scale-down waits
    for the full sample at the pool's interval.
    """
    per_replica = spec.target.messages_per_replica
    if memory.early_ready is not None and live.ready < memory.early_ready + per_replica:
        return False
    current = memory.current_replicas
    if current is None:
        return False
    if current == 0:
        return wakes(spec, live)
    if not peeked(spec, memory, now):
        return False
    wanted = -(-live.ready // per_replica)
    state = memory.state
    # the newest by place: a clock that stepped back leaves several stamped alike
    last = state.recommendations[-1].replicas if state.recommendations else 0
    starting = live.consumers < current
    return (wanted > max(current, last) and outside_tolerance(spec, wanted, current)
            and (not starting or wanted >= EARLY_GROWTH * current))


def to_peek(
    due: list[T], resting: list[T], working: list[T], budget: int, turn: int
) -> tuple[list[T], int]:
    """The pools peeked this tick, at most `budget`, and the next turn: those due first (a
    burst published just before their sample is seen live, not through statistics seconds
    old), then those at rest at zero (nothing else wakes them before their interval), then
    those at work, taking turns."""
    first = [*due, *resting][:budget]
    rest, turn = in_turn(working, budget - len(first), turn)
    return [*first, *rest], turn


def in_turn(watched: list[T], budget: int, turn: int) -> tuple[list[T], int]:
    """At most `budget` pools peeked this tick, taking turns; and the next turn.

    A passive declare costs the broker about 0.03 ms of CPU (pipelined); beyond the budget
    each pool is still peeked every len/budget ticks, and sampled at its interval anyway.
    """
    if len(watched) <= budget:
        return watched, turn
    if budget <= 0:
        return [], turn
    start = turn % len(watched)
    return (watched + watched)[start:start + budget], start + budget


def watched_target(target: ScaleTargetRef) -> bool:
    """Deployments' replica counts come from the watch; other kinds are read from /scale."""
    return target.api_version == "apps/v1" and target.kind == "Deployment"


# --- one QueueScaler's tick ---


@dataclass(frozen=True, slots=True)
class _Seen:
    """What this tick's sample amounts to, and what went wrong getting it."""

    sample: QueueSample | None
    broker_error: Failure | None = None
    """The broker did not answer as a whole (BrokerReachable turns False)."""
    queue_error: Failure | None = None
    """The broker answered without one of the queues (missing, unreadable)."""
    stats_pending: bool = False
    waiting: bool = False
    """A new queue's statistics are not out and nothing stands in: wait, decide nothing."""
    failures: tuple[str, ...] = ()
    early: bool = False


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
    got = _what_was_seen(seen, memory, settling(memory.state, now, settings))
    sample = got.sample
    current = seen.current if isinstance(seen.current, int) else None
    target_error = seen.current if isinstance(seen.current, Failure) else None
    decision: Decision | None = None
    report: WorkerReport | None = None
    wants_workers = False
    scale_to: int | None = None
    marks: Marks = {}
    scale_events: list[Event] = []
    events: list[Event] = []
    log: str | None = None
    announced = memory.announced_desired
    refused: tuple[int, str] | None = None
    state = memory.state
    replicas_now = current
    if current is not None and not got.waiting:
        decision = decide(spec, sample, current, state, now)
        if decision.replicas < current and spec.behavior.scale_down.protect_busy_workers:
            decision, report, wants_workers = _protected(spec, sample, current, state, seen)
        held = spec.paused or seen.conflict is not None or wants_workers
        acting = decision.replicas != current and not held
        if acting and spec.dry_run:
            if announced != decision.replicas:
                announced = decision.replicas
                events.append(Event(
                    "Normal", "WouldScale",
                    f"dry run: would scale from {current} to {decision.replicas}: "
                    f"{decision.reason}: {decision.message}",
                ))
        elif acting and seen.scale_failure is not None:
            refused = (decision.replicas, seen.scale_failure.reason)
            if memory.refused != refused:  # each refusal once, not every tick
                target = spec.scale_target_ref
                events.append(Event(
                    "Warning", "ScaleFailed",
                    f"could not scale {target.kind} {target.name} to {decision.replicas}: "
                    f"{seen.scale_failure.message}",
                ))
        elif acting:
            scale_to = decision.replicas
            if scale_to < current and seen.workers is not None and report is not None:
                marks = deletion_marks(seen.workers.pods, report, name)
            message = _scale_message(spec, current, decision, sample)
            reason = "ScaledUp" if scale_to > current else "ScaledDown"
            scale_events.append(Event("Normal", reason, message, on_target=True))
            log = message
            replicas_now = scale_to
        state = next_state(spec, state, sample, current, decision, now, scale_to is not None)
        if seen.early:
            state = after_early(memory.state, state)
    conflict = None
    if seen.conflict is not None:
        conflict = ("TargetConflict", f"{seen.conflict} also scales this target: not acting")
    written = memory.status
    conditions = _written_conditions(written) if seen.early else conditions_for(
        paused=spec.paused, dry_run=spec.dry_run,
        broker_error=_pair(got.broker_error), target_error=_pair(target_error),
        config_error=_pair(seen.broker), decision=decision, current_replicas=replicas_now,
        queue_error=_pair(got.queue_error), conflict=conflict, note=_note(got),
    )
    matched = _workers_condition(spec, written, seen.workers, report)
    if matched is not None:
        conditions.append(matched)
    next_memory = dataclasses.replace(
        memory, state=state, current_replicas=replicas_now, announced_desired=announced,
        stats_pending=memory.stats_pending if seen.early else got.stats_pending,
        refused=refused,
        early_ready=seen.live.ready if seen.early and seen.live is not None else None,
    )
    # An early tick reports its decision, not its live counts (no unacked, no rates): the
    # last sample's numbers and the conditions it set stand until the next one.
    reported = None if seen.early else _with_counted_rates(spec, memory.state, sample)
    status, flipped_events, warnings = _status(
        next_memory, written, generation, spec.source.include_in_flight, reported,
        replicas_now, decision, conditions, report, now, settings, early=seen.early,
    )
    secret_fixes = (camel(str(ErrorKind.AUTH)), camel(str(ErrorKind.TLS_FAILED)))
    return Plan(
        memory=next_memory,
        decision=decision,
        sample=reported,
        previous_replicas=current,
        wants_workers=wants_workers,
        scale_to=scale_to,
        marks=marks,
        clear_marks=bool(memory.marks) and _marks_done(spec, state, scale_to, now, settings),
        reread_secret=got.broker_error is not None and got.broker_error.reason in secret_fixes,
        conditions=conditions,
        status=status,
        events=events,
        status_events=flipped_events,
        scale_events=scale_events,
        sample_failures=got.failures,
        log=log,
        warnings=warnings,
    )


def _what_was_seen(seen: Observations, memory: Memory, scaled_lately: bool) -> _Seen:
    """The sample that decides (live counts standing in where they may), and the errors.

    Live counts stand in for a queue too new to have statistics, and alone for a pool at
    zero (nothing can be in flight) or on an early tick; a sample built on them, or missing
    one of several queues, is incomplete: it may grow the pool, never shrink it.
    """
    if seen.broker is not None:
        kind = SECRET_FAILURE if seen.broker.reason != "BadSecret" else "bad-config"
        sample = seen.live if memory.current_replicas == 0 else None
        return _Seen(_incomplete(sample), failures=(kind,))
    if seen.early:
        return _Seen(_incomplete(seen.live), early=True)
    got = _parts(seen.answer)
    sample = got.sample
    if seen.live is not None and (
        sample is not None or got.stats_pending or memory.current_replicas == 0
    ):
        sample = _with_live_counts(sample, seen.live, scaled_lately)
    waiting = sample is None and got.stats_pending and got.broker_error is None
    return dataclasses.replace(got, sample=sample, waiting=waiting)


def _parts(
    answer: Mapping[QueueRef, QueueSample | SourceError | None] | SourceError | None,
) -> _Seen:
    """The broker's answer for one QueueScaler's queues, combined.

    Queues it answered for count even when another is missing (the pool scales up on what
    is visible, as KEDA's does); a queue whose statistics are pending is not a failure.
    """
    if answer is None:
        return _Seen(None, broker_error=Failure("Unreachable", "the broker was not sampled"))
    if isinstance(answer, SourceError):  # counted once per broker request, not here
        return _Seen(None, broker_error=Failure(camel(str(answer.kind)), answer.message))
    parts: list[QueueSample] = []
    queue_error: Failure | None = None
    failures: list[str] = []
    pending = False
    for ref, part in answer.items():
        if isinstance(part, QueueSample):
            parts.append(part)
        elif part is None:
            message = f"queue {ref.name!r} was not in the broker's answer"
            queue_error = queue_error or Failure("QueueNotFound", message)
        elif part.kind is ErrorKind.STATS_PENDING:
            pending = True
        else:
            failures.append(str(part.kind))
            queue_error = queue_error or Failure(camel(str(part.kind)), part.message)
    sample = combine(parts) if parts else None
    if sample is not None and (queue_error is not None or pending):
        sample = _incomplete(sample)
    return _Seen(sample, queue_error=queue_error, stats_pending=pending, failures=tuple(failures))


def _with_counted_rates(
    spec: QueueScalerSpec, state: ScalerState, sample: QueueSample | None
) -> QueueSample | None:
    """The sample as status and metrics show it: a rate the broker gives no field for
    (a Redis stream's) is the one its counters give over the kept readings, as decided."""
    if sample is None or (sample.publish_rate is not None and sample.ack_rate is not None):
        return sample
    flow = flow_of(spec, state, sample)
    return dataclasses.replace(
        sample,
        publish_rate=flow.publish if sample.publish_rate is None else sample.publish_rate,
        ack_rate=flow.ack if sample.ack_rate is None else sample.ack_rate,
    )


def _incomplete(sample: QueueSample | None) -> QueueSample | None:
    return None if sample is None else dataclasses.replace(sample, complete=False)


def _note(got: _Seen) -> str | None:
    """What the operator can and cannot do with this sample, for the Ready condition,
    after what the source said of its figures."""
    notes = [got.sample.note] if got.sample is not None and got.sample.note else []
    if got.waiting:
        notes.append("a queue's statistics are not out yet: waiting for them")
    elif got.sample is not None and not got.sample.complete and not got.early:
        notes.append("the sample cannot see every message the pool may hold: scaling up only")
    return "; ".join(notes) or None


def _protected(
    spec: QueueScalerSpec,
    sample: QueueSample | None,
    current: int,
    state: ScalerState,
    seen: Observations,
) -> tuple[Decision, WorkerReport | None, bool]:
    """A scale-down decided again with the workers that must stay, and whether to look first.

    Protection fails closed: when the workers cannot be looked at, or a busy client of its
    queues (or of queues unknown) cannot be placed on a pod, the pool keeps them all; another
    pool's busy clients in the vhost do not count, and without a sample nothing tells the
    busy apart (a fallback below the pool waits). Work on no pod keeps every pod and
    replica it may be on. A StatefulSet removes its highest ordinals whatever the deletion
    costs say, so it keeps every pod up to its highest busy one, and all of them while work
    may be on a pod not listed or not matched. Elsewhere a scale-down removes no more pods
    than the controllers rank before each pod that must stay (`removal_floor`): pods not
    ready go first whatever their cost, and mid-rollout the scale-down may fall on any one
    ReplicaSet.
    """
    look = seen.workers
    why: str | None = None
    if seen.broker is not None:
        why = "busy workers unknown: the broker's Secret gives no broker"
    elif not seen.can_list_workers:
        why = "busy workers unknown: this broker cannot list its clients"
    elif look is None:
        return decide(spec, sample, current, state, seen.now), None, True
    elif look.clients is None:
        why = f"busy workers unknown: {look.problem or 'nothing listed'}"
    if why is None and sample is None:
        # review 43: a fallback with the queues unreadable and the clients listed went 5 to
        # 1, a StatefulSet's w-4 not listed first; work in flight is unknown
        why = "busy workers unknown: no sample of the queues"
    if why is not None or look is None or look.clients is None:
        return decide(spec, sample, current, state, seen.now, current, why), None, False
    queues = spec.source.queues
    report = match_workers(look.pods, look.clients, queues, look.others)
    # Work on no pod may be on any unmatched or doubtful pod, or on a replica the pod listing
    # does not show (created since, refused by a quota, or a listing behind the scale): a
    # property test found 5 replicas, 4 pods listed and one busy client on none taken to 4.
    # Whether such clients can be placed at all is judged on the pods listed: more of them
    # than those pods means a pod called idle holds work we cannot see (review 41: counted
    # against the replicas not listed too, one more replica took 5 to 1). Work in flight
    # that no client shows while every replica is a matched pod holds nothing: it is most
    # often no worker's (Celery's ETA tasks sit in kombu's unacked hash, queue and channel
    # statistics refresh apart), and holding the pool on it froze scale-downs (review 43).
    unlisted = max(0, current - report.pods)
    unseen = report.unmatched + unlisted
    places = f"the {report.unmatched} unmatched pods" + (
        f", {len(report.doubtful)} matched pods that may hold them"
        if report.unattributed and report.doubtful else "") + (
        f" and {unlisted} replicas not listed" if unlisted else "")
    keep, note = report.busy, None
    held = sum(c.unacked for c in look.clients if serves(c, queues, look.others))
    in_flight = 0 if sample is None else sample.unacked  # no sample returned above
    unplaced_work = max(0, in_flight - held)
    if not report.placed:
        keep = current
        note = (
            f"busy workers unknown: {report.unattributed} busy clients matched no pod,"
            f" more than the {report.unsure} pods they could be on"
            if report.unattributed > report.unsure else
            f"busy workers unknown: {report.stray} busy clients matched no pod from addresses"
            f" no matched pod was seen at, more than the {report.unmatched} unmatched pods"
        )
    elif report.unattributed:
        keep = report.protected + unlisted
        note = (f"{report.busy} workers busy, and {report.unattributed} busy clients on no"
                f" pod: keeping {places}")
    elif unplaced_work and unseen:
        # The queue has work in flight that no client shows (a worker that connected
        # before the broker's first channel statistics): it could be any unmatched pod.
        keep = report.busy + unseen
        note = (
            f"{unplaced_work} messages in flight on no listed client:"
            f" keeping {places}"
        )
    elif unlisted and in_flight:
        # Work in flight, all of it shown: still, a client's count may be another queue's
        # (a retry queue it also reads), and a replica not listed has no mark to go last.
        keep = report.busy + unlisted
        note = f"{report.busy} workers busy, and {unlisted} replicas not listed"
    if spec.scale_target_ref.kind == "StatefulSet":
        # It removes its highest ordinals whatever is kept: work on no listed pod may be
        # on any of them (review 41: 5 to 1 with the only pod that could hold it, w-4,
        # not listed), and a replica not listed is one of the highest.
        floor = ordinal_floor(report)
        if floor is None:
            keep = current
            note = ("busy workers unknown: a busy client on no pod, or a busy pod without an"
                    " ordinal (StatefulSet)")
        elif (unplaced_work and unseen) or (unlisted and in_flight):
            keep = current
            note = ("busy workers unknown: work in flight may be on a pod not listed or on no"
                    " listed client (StatefulSet)")
        elif floor > keep:
            keep = floor
            note = f"{report.busy} workers busy, the highest at ordinal {floor - 1} (StatefulSet)"
    else:
        # The ReplicaSet ranks not-ready pods before costs, and mid-rollout each ReplicaSet
        # ranks only its own pods while the Deployment shares the scale-down among them.
        unmatched_stay = bool(report.unattributed or (unplaced_work and unseen))
        ranked = removal_floor(look.pods, report, current, unmatched_stay,
                               _scaled_by(spec.scale_target_ref))
        if ranked is not None and ranked.replicas > keep:
            keep, note = ranked.replicas, _removal_note(report, ranked)
    return decide(spec, sample, current, state, seen.now, keep, note), report, False


def _scaled_by(target: ScaleTargetRef) -> Callable[[Pod], bool]:
    """Whether a pod is one a scale of `target` may remove: a Deployment's pods are owned
    by its ReplicaSets (`<deployment>-<template hash>`), a ReplicaSet's by itself. A pod of
    no controller, or of another workload the selector also matches, is not (it would hold
    the pool for nothing; review 54: `worker-priority`'s busy pod froze `worker`). Any
    controller counts for other kinds, whose controllers are not known here. Left out too:
    a ReplicaSet a Deployment adopted under another name (its pods stay protected by the
    busy count and the marks, not by their rank)."""
    if target.kind == "Deployment":
        prefix = f"ReplicaSet/{target.name}-"

        def owned(pod: Pod) -> bool:
            # the template hash has no dash: `worker-priority-6a2d1` is another Deployment's
            owner, _, template_hash = (pod.owner or "").partition(prefix)
            return not owner and bool(template_hash) and "-" not in template_hash

        return owned
    if target.kind == "ReplicaSet":
        return lambda pod: pod.owner == f"ReplicaSet/{target.name}"
    return lambda pod: pod.owner is not None


def _removal_note(report: WorkerReport, floor: RemovalFloor) -> str:
    """Why a pod that must stay sets how many replicas remain."""
    pod = floor.pod
    held = report.held.get(pod.name, 0)
    what = "busy" if held > 0 else "may hold work"
    why = []
    if not (pod.scheduled and pod.phase == "Running" and pod.ready):
        why.append("not ready: it goes before ready pods whatever its cost")
    if floor.controllers > 1:
        why.append(f"its pods have {floor.controllers} ReplicaSets (a rollout): the"
                   " scale-down may fall on its own alone")
    return (f"{report.busy} workers busy; {pod.name} ({what}) goes after only {floor.before}"
            f" pods of its ReplicaSet ({'; '.join(why) or 'by cost'})")


TargetKey = tuple[str, str, str, str]
"""(namespace, API group, kind, name): one scalable object, whatever its API version."""


def target_key(namespace: str, target: ScaleTargetRef) -> TargetKey:
    group = target.api_version.rpartition("/")[0]
    return (namespace, group, target.kind, target.name)


def conflicts(
    scalers: Iterable[tuple[str, str, ScaleTargetRef]],
    autoscalers: Iterable[tuple[str, str, ScaleTargetRef]] = (),
) -> dict[tuple[str, str], str]:
    """For each QueueScaler (namespace, name) whose target has another owner, who that is.

    Two owners of one target fight (10 <-> 1 every tick); neither acts, and both say why.
    `autoscalers` are HorizontalPodAutoscalers (KEDA makes one per ScaledObject).
    """
    owners: dict[TargetKey, list[str]] = {}
    for namespace, name, target in scalers:
        owners.setdefault(target_key(namespace, target), []).append(f"QueueScaler {name}")
    for namespace, name, target in autoscalers:
        key = target_key(namespace, target)
        if key in owners:
            owners[key].append(f"HorizontalPodAutoscaler {name}")
    found: dict[tuple[str, str], str] = {}
    for namespace, name, target in scalers:
        mine = f"QueueScaler {name}"
        others = [o for o in owners[target_key(namespace, target)] if o != mine]
        if others:
            found[(namespace, name)] = ", ".join(sorted(others))
    return found


def _marks_done(
    spec: QueueScalerSpec, state: ScalerState, scale_to: int | None, now: float,
    settings: PlanSettings,
) -> bool:
    """Whether the marks this QueueScaler set have served: protection is off, or the
    scale-down they ordered was carried out a while ago (a mark left behind would send
    a pod that was idle then and is busy now first, at the next scale-down)."""
    if not spec.behavior.scale_down.protect_busy_workers:
        return True
    if scale_to is not None:
        return False
    return not settling(state, now, settings)


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
    status, events, warnings = _status(
        memory, memory.status, generation, True, None, None, None, conditions, None, seen.now,
        settings,
    )
    return Plan(
        memory=memory, conditions=conditions, status=status, status_events=events,
        warnings=warnings,
    )


def _written_conditions(written: Mapping[str, Any]) -> list[Condition]:
    """The conditions as the status holds them: what an early tick leaves standing."""
    return [
        Condition(str(c["type"]), c.get("status") == "True", str(c.get("reason", "")),
                  str(c.get("message", "")))
        for c in written.get("conditions") or () if isinstance(c, Mapping) and "type" in c
    ]


def after_early(before: ScalerState, after: ScalerState) -> ScalerState:
    """An early tick's decision counts (its recommendation, its scale), its sample does
    not: the rate readings, the throughput estimate and the failure count stay as the last
    full sample left them (live counts a second after a poll are no span to measure)."""
    return dataclasses.replace(
        after, readings=before.readings, readings_of=before.readings_of,
        per_replica_rate=before.per_replica_rate, rate_measured=before.rate_measured,
        saturated_polls=before.saturated_polls,
        restored=before.restored, consecutive_failures=before.consecutive_failures,
    )


def _with_live_counts(
    sample: QueueSample | None, live: QueueSample, scaled_lately: bool
) -> QueueSample:
    """The management sample with its ready and consumer counts replaced by live ones.

    The management API's counts lag by up to its statistics interval (seconds); a passive
    declare's do not. Unacked counts and rates exist only in the management sample, so
    they stay. The live counts stand alone only for a pool at zero (nothing can be in
    flight) or a queue too new to have statistics: never in place of a failed request for
    a pool at work, whose unacknowledged messages they cannot see.

    More messages ready now than the statistics saw is a burst: the live counts decide.
    Fewer may have been delivered since, and the older unacked count cannot show them, so
    the two together could under-count the work held. Then the management sample stands
    as it is (one consistent snapshot), except for a pool scaled moments ago, whose
    statistics still predate the scale (they would grow it twice): there the live counts
    decide, on a sample that may grow the pool, never shrink it.
    """
    if sample is None:
        return live
    if live.ready < sample.ready and not scaled_lately:
        return sample
    return dataclasses.replace(
        sample, ready=live.ready, consumers=live.consumers,
        complete=sample.complete and live.ready >= sample.ready,
    )


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
    if not enabled or look is not None:
        problem = look.problem if look is not None else None
        return workers_condition(report, spec.source.where, enabled=enabled, problem=problem)
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
    written: Mapping[str, Any],
    generation: int | None,
    include_in_flight: bool,
    sample: QueueSample | None,
    current: int | None,
    decision: Decision | None,
    conditions: Sequence[Condition],
    report: WorkerReport | None,
    now: float,
    settings: PlanSettings,
    *,
    early: bool = False,
) -> tuple[Mapping[str, Any] | None, list[Event], list[str]]:
    """The status to write (None: no write needed), the Events its conditions call for,
    and the warnings to log.

    A condition becomes an Event when it changes, except a new QueueScaler's first,
    healthy ones (not news); one that turns bad is a Warning, logged as it starts and
    again when it ends.
    """
    workers = None if report is None else (report.matched, report.busy, report.unmatched)
    outcome = TickOutcome(
        generation, include_in_flight, sample, current, decision, memory.state, conditions,
        workers, early,
    )
    status, flipped = build_status(written, outcome, now)
    refresh = settings.status_refresh_seconds
    stale = expired(memory.status_written_at + refresh, now, refresh)
    if not needs_write(written, status, stale=stale):
        return None, [], []
    before = {
        c.get("type"): c.get("status") for c in written.get("conditions") or ()
        if isinstance(c, Mapping)
    }
    events: list[Event] = []
    warnings: list[str] = []
    for condition in flipped:
        bad = _bad(condition)
        verb = "True" if condition.status else "False"
        watched = condition.type in GOOD_WHEN_TRUE or condition.type == WORKERS_CONDITION
        if bad:
            warnings.append(f"{condition.type} is {verb}: {condition.reason}: {condition.message}")
        elif watched and before.get(condition.type) == "False":
            warnings.append(f"{condition.type} is {verb} again: {condition.message}")
        if condition.type not in before and not bad:
            continue
        events.append(Event(
            "Warning" if bad else "Normal", condition.reason,
            f"{condition.type} is {verb}: {condition.message}",
        ))
    return status, events, warnings


def _bad(condition: Condition) -> bool:
    """A condition that is bad news when False: a Warning Event, and a log line."""
    if condition.type == WORKERS_CONDITION:
        return not condition.status and condition.reason != "ProtectionDisabled"
    return condition.type in GOOD_WHEN_TRUE and not condition.status
