"""How many workers a queue needs, and why. Pure.

`decide()` takes the spec, this tick's sample, the current replica count, what earlier
ticks left behind (`ScalerState`) and `now`, and returns a `Decision`. It reads no clock
and does no I/O, so the operator, the simulator and the benchmarks all call the same code.

Like the HPA's `normalizeDesiredReplicasWithBehaviors`, the arithmetic is a pipeline of
small stages, each of which may change the number and then names the reason:

    raw recommendation (backlog, rate/drain, rate floor, zero/activation)
    -> tolerance dead-band -> stabilization -> cooldowns -> step limits
    -> busy workers -> bounds [minReplicas, maxReplicas]

Waking a pool from zero skips stabilization and cooldowns (activation is decided apart
from sizing, as KEDA does); a failed sample skips everything but the bounds.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Final

from queuescaler.core.sample import QueueSample
from queuescaler.core.spec import QueueScalerSpec
from queuescaler.core.throughput import (
    MAX_SPAN,
    MIN_COUNTED,
    STATS_WINDOW,
    Flow,
    Reading,
    acked_per_consumer,
    draining,
    flow_since,
    measures,
    outgrown,
    per_replica_rate,
    reading_of,
    remember,
    short_while_starting,
    work_piling_up,
)

_EPSILON: Final = 1e-9
"""Absorbs float noise so that 30.0000000001 / 10 is 3 replicas, not 4."""

MIN_POLLS_IN_WINDOW: Final = 2
"""The divided scale-down window never shrinks below this many polling intervals: one
odd sample must not drain a large pool (300 s / 40 replicas would be 7.5 s)."""

MIN_WINDOW_SECONDS: Final = 10.0
"""Nor below two of the management API's statistics intervals (5 s by default): polls a
second apart read one snapshot of its unacked count several times, and two of them are
not two observations."""

NOISE_SIGMAS: Final = 2.0
"""A scale-down shortens the stabilization window only by the replicas it removes beyond
this many standard deviations of chance. A pool of n replicas sized by a backlog of about
n x messagesPerReplica messages moves by sqrt(n / messagesPerReplica) replicas on Poisson
noise alone: 5 replicas of slow tasks at one message each swing between 1 and 5 by
chance, while 58 replicas of 100 messages each going to 1 is no chance."""

SURE_SIGMAS: Final = 3.0
"""A drop beyond this many standard deviations of chance is no noise dip (one poll in 700
by chance, against one in 40 at two): only then is the window divided again by the
replicas it removes beyond it (`_stabilization`)."""

BURST_OVER_FACTOR: Final = 4.0
"""A burst is over once messages arrive at most a quarter as fast as when it grew the
pool (and its work is acked, nothing ready): a load that halves every minute is a load,
whose window holds the pool (review: 100 <-> 50 msg/s flapped 13 -> 6 -> 56 without it),
while a burst's end drops its rate tenfold or more (200 -> 5 msg/s in the worker models)."""

MEASURED_AFTER: Final = 2
"""Saturated polls before the speed counts as measured (the floor holds in full and may
lift the pool, the probe stops). One poll may read the load as the speed: one replica of
concurrency 4 keeping up with clumps of 5 messages every 2 s showed a message ready at two
polls in a row, its acks / replicas (2.27 msg/s, the arrival rate, against a speed of 4)
made the floor hold a second replica, and a pool of 2 never saturated again to correct it
(issue 12's worker models, keda-rate, seed 10: 1,577 replica-s against 947). Until the
second, the estimate follows every saturated poll, and between them the pool probes as
for a speed never measured (`PROBE_DIVISOR`); a saturated poll itself never probes.
Counted per run: a restart between the two starts over (status keeps only whether it was
measured)."""

PROBE_PAUSE_SECONDS: Final = 600.0
"""After a probe failed (the pool shrank, then work waited with every pod consuming), no
probing for this long: the probe has said what it could (a replica is slower than the
shrunken pool needed), and probing again would only repeat the flood that followed it
(the backlog policy scales back up at once and the drain never lets two polls in a row
see work waiting, so the speed is never measured: a pool probing forever flaps every
few polls)."""

PODS_START_WITHIN: Final = 600.0
"""Fewer consumers than replicas count as pods still starting (`_starting`: no probe) this
long after the last scale-up, no longer: a consumer count below the replicas for good is a
pool's shape (a pod that never consumes, pods sharing one Redis consumer name), and a
probe held off for it held such pools at 2-2.5x their need for as long as they ran
(review 30). Ten minutes covers pods slow to pull and start."""

PROBE_FAILURES_COUNTED: Final = 4
"""Failed probes counted in a row (`ScalerState.probe_failures`): the fourth and later rest
`PROBE_PAUSE_LONGEST`."""

PROBE_PAUSE_LONGEST: Final = PROBE_PAUSE_SECONDS * 2 ** (PROBE_FAILURES_COUNTED - 1)
"""The longest rest after probes failed again and again (`_probe_pause`), 80 minutes: a
pool whose speed changed is probed again within the hour and a half of its last failure
(a pool short at every burst, bursts closer than that, is not: each failed poll starts
the rest again, as at a single failure)."""

PROBE_DIVISOR: Final = 2
"""Until the pool has been seen saturated (`MEASURED_AFTER` times), its per-replica rate
is a lower bound (a Celery worker at concurrency 4 holding one message acks a quarter of
what it can) or rests on a few seconds of acks, and a rate floor on it would hold an
over-provisioned pool forever. The floor then asks for half of what it would (rounded
down): the pool shrinks until it saturates (work waiting at two polls in a row, or a
held pile growing), which measures the real speed. Half, not a quarter: after a
flood a pool whose pods were still starting while work waited (so never saturated) held
2 to 3 times its need for minutes at a quarter a step (worker models: 56 -> 46 of 112
rows missed, none worse)."""

PARKED_FLOOR_FACTOR: Final = 2
"""The in-flight part of the backlog asks for at most this many times the replicas the publish
rate needs, once the speed is measured. Messages a worker holds beyond what it is working
on are parked: no new replica can take them, and more replicas only divert new arrivals
away from the piles, so each pile drains at `speed - publish / replicas`. Twice the rate
floor already drains them at half a pod's speed, and no pool size reaches more than twice
that. Counting them in full asked for a replica per `messagesPerReplica` of piles (a burst
parked in one worker of a pool with unlimited prefetch held 69 replicas while it drained);
issue 12's worker models: 38 -> 36 rows missed, bursts, slow spikes and floods with
prefetch 16 or unlimited at 12-59% fewer replica-seconds for p95 waits at most 3.6% longer,
no row worse. Three times: no row won; once: 42 missed (a pool sized to its floor lets
piles grow). Only under `protectBusyWorkers` (review 15: with the protection off, a publish
rate reading 0 after a batch let the cap stop workers running ten-minute tasks, again and
again). Left open: a speed read too high keeps a pool with unlimited prefetch short until
the growing piles measure it again (review 15: tasks 10x slower, p95 +43%); not applying
the cap while the piles grow took back every row it won."""

PARKED_BOUND_FACTOR: Final = 3
"""`PARKED_FLOOR_FACTOR` while the speed is not measured yet. The cap then divides by the
lower of the estimate and this poll's acks per consumer (`acked_per_consumer`), and not
at all without the latter. The estimate alone may sit above the speed: while unmeasured it
is only ever raised, so it keeps a speed from before tasks got slower, one restored from
status, or one lifted by noise (review 16: tasks 20x slower, p95 45 -> 819 s; a restored
speed 100x too high, 439 -> 1,740 s). No consumer acks more than a replica can, so that
speed is at most today's, but for brief or small excesses (review 17: early acks as a pod
starts, pods in warm shutdown acking without a consumer, a counter reset, statistics
older than the poll: about 2x at most, or one window) the factor absorbs. One floor wider than
measured: fewer rows changed (twice: 35 rows missed, steady loads with unlimited prefetch
up to 10% longer p95; four times: 36). Without any cap, a pool never saturated counted its
piles in full: with unlimited prefetch the piles parked on the first pods of a flood held
57 replicas for minutes while one pod drained them. Issue 12's worker models, 10 seeds:
36 -> 35 rows missed (slow spikes, prefetch 16, concurrency 1, met), floods with unlimited
prefetch at concurrency 1 29% fewer replica-seconds, p95 at most 5% longer (no row met
lost); review 16's scenarios as before the rule."""

PILE_DRAIN_FACTOR: Final = 5
"""Messages parked in the consumers' prefetch buffers beyond the one each works on drain
within this many times `messagesPerReplica / perReplicaRate` seconds (50 s where
messagesPerReplica is what a replica clears in 10 s), once the speed is measured and the
pool covers the publish rate: a pile drains only through a consumer's spare speed,
`perReplicaRate - publish / replicas`, so on a pool sized to its floor it barely drains
(steady 20 msg/s, unlimited prefetch: 11 replicas held piles of 16 a consumer, p95 52 s),
and only replicas beyond the floor, which take arrivals away from the piles, speed it up.
At most `PARKED_FLOOR_FACTOR` times the floor, the most that helps. Not while the pool is
below the floor: its piles are the arrivals it is short of, which the floor and the
backlog policy answer, and a publish rate read high on noise then adds nothing. Issue 12's
worker models, 10 seeds: 37 -> 35 rows missed (steady at unlimited prefetch, concurrency 1,
both task laws, met), no row lost; 4: 36, 6: 37 (a diurnal row lost on one scale event).
Without the floor condition 1: 41, 3: 38, 6: 37, 8: 39 (diurnal loads with prefetch 16 or
more paid more than KEDA, or scaled more often)."""

_HUGE: Final = 1_000_000_000
"""A recommendation no pool reaches: caps a rate policy whose throughput is near zero
(the bounds then clamp it to maxReplicas like any other large answer)."""


class Reason(enum.StrEnum):
    """Why a decision came out the way it did: a closed set, shown to users."""

    BACKLOG = "backlog"
    RATE = "rate"
    ACTIVATION = "activation"
    IDLE = "idle"
    WITHIN_TOLERANCE = "within-tolerance"
    STABILIZATION = "stabilization"
    COOLDOWN = "cooldown"
    STEP_LIMIT = "step-limit"
    MAX_BOUND = "max-bound"
    MIN_BOUND = "min-bound"
    NO_DATA = "no-data"
    FALLBACK = "fallback"
    PAUSED = "paused"
    BUSY_WORKERS = "busy-workers"
    INCOMPLETE_SAMPLE = "incomplete-sample"
    CONFLICT = "conflict"
    REBALANCING = "rebalancing"


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One tick's recommendation (after the dead-band), kept for stabilization."""

    at: float
    replicas: int


@dataclass(frozen=True, slots=True)
class Burst:
    """The work that called a scale-up, counted at its sample or, when that was an early
    tick's live counts (no counters, no rates), at the first full sample after it."""

    done_at_acks: int | None = None
    """The queue's ack count at which that work is all done (`_work_done_at`); None until
    counted."""
    publish: float | None = None
    """The publish rate then."""


@dataclass(frozen=True, slots=True)
class ShortProbe:
    """A probe that left the pool short: the size, the publish rate then, and when."""

    replicas: int
    publish: float
    at: float


@dataclass(frozen=True, slots=True)
class ScalerState:
    """Everything decide() remembers between ticks; the operator persists it in status."""

    last_scale_time: float | None = None
    """When the target was last scaled; the scale-up cooldown counts from here."""
    last_scale_up_time: float | None = None
    """When the target last grew; the scale-down cooldown counts from here. It is there to
    let the pods a scale-up started work the backlog that called them; a scale-down needs
    no such wait before the next one (the stabilization window damps those)."""
    recommendations: tuple[Recommendation, ...] = ()
    """Timestamped recommendations, oldest first, compacted by next_state()."""
    consecutive_failures: int = 0
    """Ticks in a row whose sample failed."""
    per_replica_rate: float | None = None
    """What one replica acknowledges per second working flat out (`core.throughput`):
    measured on a saturated pool, else the highest lower bound seen; None until acks rest
    on enough messages to say anything."""
    rate_measured: bool = False
    """Whether per_replica_rate was measured on a saturated pool, at `MEASURED_AFTER` polls
    (kept in status as perReplicaRateMeasured); until then it is a lower bound, and the rate
    floor and the drain policy ask for half as many replicas (`PROBE_DIVISOR`) so an
    over-provisioned pool can shrink until it saturates."""
    saturated_polls: int = 0
    """Polls of this run that measured the speed (`core.throughput.measures`), up to
    `MEASURED_AFTER`. Kept in memory only: status keeps rate_measured."""
    readings: tuple[Reading, ...] = ()
    """The last samples' counts, oldest first, which the next tick's rates difference
    against (kept in memory only: after a restart the first tick reads the broker's rate
    fields)."""
    restored: bool = False
    """Rebuilt from status (a restart, a failover) and no two readings yet: the run that
    kept going had readings this one lacks (saturation needs the one before), so it may
    not shrink the pool until it has them; it may grow it."""
    readings_of: object = None
    """The spec.source the readings were taken of (see _readings); None only before the
    first."""
    probe_failed_at: float | None = None
    """When a probe last failed, or a pool short while pods started paused it
    (`PROBE_PAUSE_SECONDS`); kept in status as probeFailedAt while the speed is unmeasured."""
    probe_failures: int = 0
    """Probes that failed (`_probe_failed`: shrank, then work waited) one after another, one
    per pause, up to `PROBE_FAILURES_COUNTED`; each doubles the next pause (`_probe_pause`).
    Back to 0 once the speed counts as measured. A pool short while pods start pauses the
    probe too, but counts no failure: a pool that only ever grows has probed nothing.
    Kept in status as probeFailures."""
    watching_since: float | None = None
    """When a brand-new QueueScaler (no history, not restored) first ticked; kept in memory
    only. A pool that pauses on every resize (`QueueSample.scaling_pauses`: Kafka) waits a
    whole scale-down window of evidence before its first shrink: at adoption nothing tells a
    pool that keeps pace at lag 0 from an idle one (Kafka's rate needs a minute of
    counters), and the window, empty, held nothing (review: a new QueueScaler over 6 busy
    replicas took them to zero at its first tick). A restored state starts it at the
    restart: when the QueueScaler was created is not in status."""
    probe_short: ShortProbe | None = None
    """The last probe that left the pool short on a publish rate its estimated speed could
    not carry (`_probe_short`); kept in memory only, dropped once the speed is measured and
    unused after `PROBE_PAUSE_LONGEST`. A replica then worked slower than that rate over
    that size, so no later probe asks for as few replicas for the load of its time
    (`_probe_least`): a rest over, the probe went back to the size that had failed, and the
    pool fell short and grew again."""
    shrunk_on: Reading | None = None
    """The reading of the sample the last scale-down was decided on: a failed probe's piles
    are compared from it (`_probe_failed`). The kept readings are one per `KEPT_EVERY`, and
    at 5 s polls the next poll replaced it: the real bench's prefetch-20 pool held 2 on 3
    consumers there, 21 on 2 at the regrowth, no kept poll between held one a consumer, so
    the failure went unseen and the probe came back every minute. Kept in memory only."""
    probe_unknown_until: float | None = None
    """Set on a state restored from status: until then, whether a probe failed lately is
    not known (the run that kept going may have been told by one not to probe, or may be
    probing), so a probe moves the pool no further than both answers agree: a restart never
    shrinks a pool the other run held, nor grows one it was probing down (property test)."""
    burst: Burst | None = None
    """What called the last scale-up this run made, until the pool shrinks or its queues
    change (`_burst_over`); None after a restart, which never arms it. Kept in memory only."""
    shrinking_from: int | None = None
    """The pool size a scale-down that the window held part way was decided at, kept
    through further such scale-downs, ticks that hold the pool on an answer of zero, and
    failed ticks that hold; dropped by any other tick, or an edit of the queues
    (`_shrinking_from`). A queue gone idle is judged from there to zero (`_stabilization`).
    Kept in memory only."""
    burst_ended_at: float | None = None
    """When a scale-down last went at once because a burst was over: the next may not within
    scaleDown.stabilizationSeconds (bursts that come back within the window are a load the
    window holds). Kept in memory only."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do this tick, and a sentence a user can read in status and Events."""

    replicas: int
    """Desired replica count to apply (== current when holding)."""
    reason: Reason
    message: str
    recommendation: int
    """The recommendation before stabilization, cooldowns and limits (after the dead-band)."""
    limited: bool
    """True when a limit (bound, step, cooldown, stabilization, busy workers) changed it."""
    burst_skip: bool = False
    """The burst that grew the pool was over and the drop sure: the window was skipped
    (`_burst_over`, `_sure_drop`), down to `scaleDown.minStabilizationSeconds`."""


_Change = tuple[int, Reason, str]
"""A stage's verdict when it changes the number: new replicas, reason, note."""


def decide(
    spec: QueueScalerSpec,
    sample: QueueSample | None,
    current_replicas: int,
    state: ScalerState,
    now: float,
    busy_workers: int | None = None,
    busy_note: str | None = None,
) -> Decision:
    """Decide the replica count for this tick.

    `sample` is this tick's combined sample, None when sampling failed; `busy_workers`
    is the number of pods busy with a message, when the operator knows it (`busy_note`
    says why, when that number is a stand-in for an unknown one). `dryRun` is
    not considered here: the caller decides whether to apply the result.
    """
    state = _present(state, now)
    if sample is None:
        decision = _decide_without_sample(
            spec, current_replicas, state, now, busy_workers, busy_note
        )
    else:
        readings = _readings(spec, state)
        poll = spec.polling_interval_seconds
        flow = flow_since(readings, sample, poll)
        measured_before = _measured(state, False)
        rate = per_replica_rate(
            state.per_replica_rate, readings, sample, current_replicas, flow, poll,
            measured_before,
        )
        saturated = measures(readings, sample, current_replicas, flow)
        # A saturated poll is trusted for itself (the pool is short now: no probe, and
        # the floor may lift it); the speed it reads is trusted from the second on.
        measured = _measured(state, saturated) or saturated
        acked_now = (None if measured
                     else acked_per_consumer(readings, sample, current_replicas))
        starting = _starting(sample, current_replicas, state, now)
        # whether the probe would run but for pods still starting
        otherwise = (
            not measured and not work_piling_up(readings, sample)
            and not short_while_starting(readings, sample, current_replicas, flow)
            and not _probe_failed_lately(state, now)
        )
        probing = otherwise and not starting
        unsure = state.probe_unknown_until is not None and now < state.probe_unknown_until
        decision = _decide_with_sample(
            spec, sample, flow, current_replicas, state, now, busy_workers, rate, busy_note,
            probing=probing, probe_unsure=unsure, measured=measured, restored=state.restored,
            probe_least=_probe_least(state.probe_short, flow, now) if probing else 0,
            not_probed=(f"{sample.consumers} of {current_replicas} replicas consume"
                        if starting and otherwise else ""),
            acked_now=acked_now,
            # measured before this poll (this poll's own saturation hangs on one ready
            # message: review 19), and by this run (a restart rests on a thin rate field)
            drain_piles=measured_before and not state.restored,
            held_back=_held_back(readings, sample, poll),
            unseen_after_restart=(state.restored and not readings and sample.shared
                                  and sample.complete and not sample.ready),
        )
    if spec.paused:
        return _paused(decision, current_replicas)
    return decision


def next_state(
    spec: QueueScalerSpec,
    state: ScalerState,
    sample: QueueSample | None,
    current_replicas: int,
    decision: Decision,
    now: float,
    scaled: bool,
) -> ScalerState:
    """Fold one tick into the state: failures count (sample None = failed tick), the
    recommendation history pruned to the longest stabilization window, the smoothed
    per-replica rate, and last_scale_time = now when scaled.

    A failed tick records no recommendation (the HPA also skips a tick without metrics).
    The history is compacted: an entry is dropped once a newer one dominates it in every
    window it can still fall into, so the decisions stay exactly those of the full
    history while a steady pool keeps a single entry, even at one tick per second.
    """
    state = _present(state, now)
    last_scale_time = now if scaled else state.last_scale_time
    grew = scaled and decision.replicas > current_replicas
    last_scale_up_time = now if grew else state.last_scale_up_time
    watching_since = _watching_since(state, now)
    if sample is None:
        return ScalerState(
            last_scale_time=last_scale_time,
            last_scale_up_time=last_scale_up_time,
            recommendations=_compact(spec, state.recommendations, now),
            consecutive_failures=state.consecutive_failures + 1,
            per_replica_rate=state.per_replica_rate,
            rate_measured=state.rate_measured,
            saturated_polls=state.saturated_polls,
            readings=state.readings,
            readings_of=state.readings_of,
            restored=state.restored,
            probe_failed_at=state.probe_failed_at,
            probe_failures=state.probe_failures,
            probe_short=state.probe_short,
            shrunk_on=None if scaled else state.shrunk_on,  # a shrink on no sample
            probe_unknown_until=state.probe_unknown_until,
            watching_since=state.watching_since,  # a failed tick has watched nothing
            burst=state.burst,
            burst_ended_at=state.burst_ended_at,
            shrinking_from=None if scaled else state.shrinking_from,
        )
    history = (*state.recommendations, Recommendation(now, decision.recommendation))
    readings = _readings(spec, state)
    poll = spec.polling_interval_seconds
    flow = flow_since(readings, sample, poll)
    saturated = measures(readings, sample, current_replicas, flow)
    measured = _measured(state, saturated)
    probe_failed = _probe_failed(state, readings, sample, current_replicas,
                                 _shrunk_on(spec, state))
    # a pool short while pods start is as good as a failed probe: no probe for a while
    paused = probe_failed or short_while_starting(readings, sample, current_replicas, flow)
    # A skipped window leaves minStabilizationSeconds alone to hold a drop: a shrink it held
    # part way is no burst's end, and the burst stays armed (review 33: the rest of the
    # drain waited out the cooldown, 240 s x 27 replicas). Only the skip says so: a drop
    # not sure enough to skip is held by the window as before (review 34).
    held = decision.burst_skip and decision.reason is Reason.STABILIZATION
    let_go = scaled and not grew and not held
    if let_go and decision.burst_skip:
        # The window was skipped for a burst's end: the recommendations before answered the
        # burst's backlog, now worked off. Kept, the next poll's window held the pool at
        # the burst's highest again (the skip is one tick's, once a window), and a drop the
        # busy workers held part way stood for the whole window. A drop the window limited
        # keeps them (review 39: the next poll went to the low answer at once), and so does
        # scaleDown.minStabilizationSeconds, whatever stage spoke last (review 40: held by
        # it, then kept by busy workers, the next poll went below its hold).
        shortest = now - spec.behavior.scale_down.min_stabilization_seconds
        history = (*(r for r in history[:-1] if r.at > shortest), history[-1])
    ended = let_go and (decision.burst_skip or _burst_over(spec, state, sample, flow, now))
    return ScalerState(
        last_scale_time=last_scale_time,
        last_scale_up_time=last_scale_up_time,
        recommendations=_compact(spec, history, now),
        consecutive_failures=0,
        per_replica_rate=per_replica_rate(
            state.per_replica_rate, readings, sample, current_replicas, flow, poll,
            _measured(state, False),
        ),
        rate_measured=measured,
        saturated_polls=min(MEASURED_AFTER, state.saturated_polls + saturated),
        readings=(kept := remember(readings, sample, current_replicas)),
        readings_of=spec.source,
        restored=state.restored and len(kept) < 2,
        probe_failed_at=now if paused else state.probe_failed_at,
        probe_failures=0 if measured else min(PROBE_FAILURES_COUNTED, state.probe_failures + (
            probe_failed and not _probe_failed_lately(state, now))),
        probe_short=None if measured else _probe_short(state, sample, flow, current_replicas,
                                                       probe_failed, now),
        shrunk_on=(reading_of(sample, current_replicas)
                   if scaled and decision.replicas < current_replicas
                   else None if grew else _shrunk_on(spec, state)),
        probe_unknown_until=state.probe_unknown_until,
        watching_since=watching_since,
        burst=_burst_after(spec, state, sample, flow, grew=grew, scaled=scaled and not held,
                           doubled=decision.replicas >= max(2, 2 * current_replicas)),
        burst_ended_at=now if ended else state.burst_ended_at,
        shrinking_from=(_shrinking_from(state, decision, current_replicas, scaled)
                        if _same_source(spec, state) else None),
    )


def _shrinking_from(
    state: ScalerState, decision: Decision, current: int, scaled: bool
) -> int | None:
    """`ScalerState.shrinking_from` after this tick: set by a scale-down the window held
    above its recommendation (at the first size while such scale-downs go on), kept by a
    tick that holds the pool on an answer of zero, dropped by any other (review 41: kept
    while busy workers held 2 long tasks for 20 minutes, the next idle poll was judged from
    that old drop; a producer a batch a minute or two then took the pool to zero and back)."""
    if decision.recommendation >= current:
        return None
    if not scaled:
        return state.shrinking_from if decision.recommendation == 0 else None
    if decision.reason is Reason.STABILIZATION and decision.replicas > decision.recommendation:
        return max(current, state.shrinking_from or 0)
    return None


def _measured(state: ScalerState, saturated: bool) -> bool:
    """Whether the speed counts as measured after this poll: restored so, or saturated at
    `MEASURED_AFTER` polls of this run."""
    return state.rate_measured or state.saturated_polls + saturated >= MEASURED_AFTER


def _work_done_at(sample: QueueSample) -> int | None:
    """The queue's ack count at which all the work this sample sees is done: acked + ready
    + unacked. A message dead-lettered, expired or purged is never acked (on RabbitMQ), so
    the count is reached only once later acks make up for it: later, never sooner. None
    without counters, or for a sample that may miss work."""
    if not sample.complete or sample.acked_total is None:
        return None
    return sample.acked_total + sample.ready + sample.unacked


def _burst_after(
    spec: QueueScalerSpec, state: ScalerState, sample: QueueSample, flow: Flow,
    *, grew: bool, scaled: bool, doubled: bool,
) -> Burst | None:
    """`ScalerState.burst` after this tick: armed by a scale-up that at least doubles the
    pool (a burst; a step of one on a steady load is none: review, a 15 s producer pause
    after 5 -> 6 at 50 msg/s took the pool to 1, then back to 56), counted again by any
    scale-up while armed, counted at the first full sample with counters and a rate,
    dropped by a scale-down (once per scale-up; not by one minStabilizationSeconds held part
    way after the window was skipped) or when the spec names other queues (their counters
    are not these)."""
    if grew:
        burst: Burst | None = Burst() if doubled or state.burst is not None else None
    elif scaled or (state.readings_of is not None and state.readings_of != spec.source):
        return None
    else:
        burst = state.burst
    if burst is None or burst.done_at_acks is not None:
        return burst
    done_at = _work_done_at(sample)
    if done_at is None or flow.publish is None:
        return burst
    return Burst(done_at, flow.publish)


def _burst_over(
    spec: QueueScalerSpec, state: ScalerState, sample: QueueSample, flow: Flow, now: float,
    load_carried: bool = False,
) -> bool:
    """Whether the burst that called the last scale-up is over: the work seen then is all
    acked, nothing is ready, and messages arrive at most a quarter as fast as they did
    (`BURST_OVER_FACTOR`): a load that merely eases, or keeps coming, passes the ack count
    within seconds too and is not a burst that ended. Unless `load_carried` and the load
    is not rising (no faster than when it grew the pool: review 39, a load rising 2.5
    msg/s a poll dropped to the floor of the moment and regrew twice): the answer is the
    rate floor on a speed known only as a lower bound, not probing, so it asks for at
    least what the load that keeps coming needs, and the replicas beyond it answered a
    backlog now worked off (a flood's wake-up: 9 replicas held by the window for 90 s and
    more where the floor asked for 5; issue 12's worker models, three flood rows met with
    the bound taken at once, `throughput.per_replica_rate`). False when it cannot tell (no
    counters or rate, a counter reset, a sample that may miss work, other queues), and for
    a pool that pauses on every resize (it waits its whole window anyway). At most once per
    scaleDown.stabilizationSeconds (`ScalerState.burst_ended_at`): on 100 msg/s with a
    10 msg/s lull every minute, going down at each lull cost more scale events and more
    replica-seconds (each return overshoots while pods start) than the window's hold."""
    burst, acked, publish = state.burst, sample.acked_total, flow.publish
    if burst is None or burst.done_at_acks is None or burst.publish is None:
        return False
    ended = state.burst_ended_at
    window = spec.behavior.scale_down.stabilization_seconds
    if ended is not None and not now - ended >= window:  # a clock stepped back: not yet
        return False
    return (
        sample.complete and sample.ready == 0 and not sample.scaling_pauses
        and state.readings_of == spec.source
        and acked is not None and acked >= burst.done_at_acks
        and publish is not None
        and (publish * BURST_OVER_FACTOR <= burst.publish
             or (load_carried and publish <= burst.publish))
    )


def _sure_drop(
    spec: QueueScalerSpec, recommendation: int, current: int, rate_noise: float | None
) -> bool:
    """A drop of more than one replica beyond `SURE_SIGMAS` of chance (see
    `_stabilization`)."""
    return current - recommendation - SURE_SIGMAS * _chance(spec, current, rate_noise) > 1.0


def _chance(spec: QueueScalerSpec, current: int, rate_noise: float | None) -> float:
    """One standard deviation of the replicas chance moves a pool this size by: its
    backlog's (about current x messagesPerReplica messages), or its publish rate's when the
    rate policy's answer is the one damped (`_rate_noise`, `_publish_noise`), whichever is
    larger."""
    chance = math.sqrt(current / spec.target.messages_per_replica)
    return chance if rate_noise is None else max(chance, rate_noise)


def _rate_noise(flow: Flow, current: int, reason: Reason) -> float | None:
    """How many replicas chance alone moves a rate-policy recommendation of a pool this
    size: its publish rate rests on about publish x 5 s messages (at least `MIN_COUNTED`,
    as core.throughput reads it), one standard deviation of which is 1 / sqrt of that. None
    when the rate policy did not decide."""
    return _publish_noise(flow, current) if reason is Reason.RATE else None


def _publish_noise(flow: Flow, current: int) -> float:
    """`_rate_noise`'s figure, whichever policy decided."""
    counted = max(float(MIN_COUNTED), (flow.publish or 0.0) * STATS_WINDOW)
    return current / math.sqrt(counted)


def _probe_failed(
    state: ScalerState, readings: tuple[Reading, ...], sample: QueueSample, current: int,
    shrunk_on: Reading | None = None,
) -> bool:
    """Whether this sample shows a probe that failed: the speed still unmeasured, the last
    scale a scale-down, and now, with every pod consuming, work waits or the consumers'
    piles outgrew those of a poll that kept up, the shrink's or one since (`outgrown`).
    Workers that prefetch many keep nothing ready while they fall behind: the real-worker
    bench's pika pool at prefetch 20 went 3 -> 2 -> 3 every minute, its piles growing it back
    each time.
    A pool still working off a flood at every poll since is left out: with unlimited
    prefetch and heavy-tailed tasks a few slow consumers' piles grow while the rest idle
    (the worker models' steady trace: counted as failures, 1.29x -> 1.37x the oracle).
    The poll the shrink was decided on (`shrunk_on`, of the queues the spec names now)
    counts as one since it, for `MAX_SPAN` at most; a clock that stepped back past the
    shrink shows no failure."""
    shrank_at = state.last_scale_time
    if (shrank_at is None or state.rate_measured or not sample.complete
            or not 0 < current <= sample.consumers or sample.taken_at < shrank_at
            or (state.last_scale_up_time is not None and state.last_scale_up_time >= shrank_at)):
        return False
    if sample.ready > 0:
        return True
    since = tuple(r for r in readings if r.taken_at >= shrank_at)
    if shrunk_on is not None and 0.0 <= sample.taken_at - shrunk_on.taken_at <= MAX_SPAN:
        since = (shrunk_on, *since)
    return outgrown(since, sample)


def _watching_since(state: ScalerState, now: float) -> float | None:
    """`ScalerState.watching_since`, starting now for a brand-new QueueScaler (a state that
    never had a sample: failed ticks watch nothing, so a Secret that arrives late does not
    use the window up)."""
    since = state.watching_since
    if since is not None:
        return min(since, now)  # a clock that stepped back starts the window again
    ticked = (state.restored or state.recommendations or state.readings
              or state.last_scale_time is not None)
    return None if ticked else now


def _probe_short(
    state: ScalerState, sample: QueueSample, flow: Flow, current: int, failed: bool,
    now: float,
) -> ShortProbe | None:
    """`ScalerState.probe_short` after this tick: this one when a probe failed now on a
    publish rate the pool could not carry at its estimated speed (counted, not a thin rate
    field), on one queue every consumer takes from; else what it was. A message caught
    between publish and delivery, or requeued by a stopped pod, fails a probe too (a rest
    of minutes), but says nothing of the speed: a limit recorded from it would hold every
    later probe off (review 26). Nor a partition's lag, which always waits."""
    publish, estimate = flow.publish, state.per_replica_rate
    if (failed and sample.shared and flow.publish_firm and estimate is not None
            and publish is not None and current * estimate < publish < math.inf):
        return ShortProbe(current, publish, now)
    return state.probe_short


def _probe_least(short: ShortProbe | None, flow: Flow, now: float) -> int:
    """The fewest replicas a probe may ask for after one left the pool `short`: one more
    than that size, in proportion to the publish rate now. No limit without a publish rate
    now, or after `PROBE_PAUSE_LONGEST` (the workers may have got faster)."""
    publish = flow.publish
    if (short is None or publish is None or not 0.0 < publish < math.inf
            or not 0.0 <= now - short.at < PROBE_PAUSE_LONGEST):
        return 0
    needed = publish * short.replicas / short.publish
    return _HUGE if not needed < _HUGE else math.floor(needed) + 1


def _starting(sample: QueueSample, current: int, state: ScalerState, now: float) -> bool:
    """Whether some pods of a pool on a shared queue do not consume yet, within
    `PODS_START_WITHIN` of the scale-up that asked for them: its acks over every replica
    then read the speed low, and a probe on them cancels the pods the pool is waiting for
    (review 29: pods starting in 60-120 s, a pool of 32 with 20 consuming read 0.25 msg/s a
    replica against 2, probed to 18 and climbed back to 58). No consumer counted at all is
    not this: a Redis list cannot count them."""
    grew_at = state.last_scale_up_time
    return (sample.shared and 0 < sample.consumers < current and grew_at is not None
            and 0.0 <= now - grew_at < PODS_START_WITHIN)


def _probe_failed_lately(state: ScalerState, now: float) -> bool:
    failed = state.probe_failed_at
    return failed is not None and 0.0 <= now - failed < _probe_pause(state.probe_failures)


def _probe_pause(failures: int) -> float:
    """How long the probe rests after the latest of `failures` failed probes:
    `PROBE_PAUSE_SECONDS`, doubled for each failure after the first, up to
    `PROBE_PAUSE_LONGEST`. A pool whose estimate is right but unmeasured (its piles never
    let two polls see work waiting) fails every probe alike: at a fixed pause it fell short
    and scaled up again every 10 minutes for ever (11 -> 5 -> 78 replicas, three scale
    events each time, at 100 msg/s and statistics a minute old)."""
    doublings = min(PROBE_FAILURES_COUNTED, max(1, failures)) - 1
    return PROBE_PAUSE_SECONDS * (1 << doublings)


def flow_of(spec: QueueScalerSpec, state: ScalerState, sample: QueueSample) -> Flow:
    """The rates this sample gives the decision, over the readings `state` kept."""
    return flow_since(_readings(spec, state), sample, spec.polling_interval_seconds)


def _present(state: ScalerState, now: float) -> ScalerState:
    """The state with nothing stamped later than `now`, as a restore from status has it.

    A clock that stepped back (an NTP step, a restored VM) left stamps in the future: a
    recommendation "made" after now sat in every window (a scale-up window of 0 s held a
    backlog of 5,000 at 2 replicas), and a cooldown, a probe's pause or a burst's spacing
    counted from a future moment held for the step's length too, or, read as no pause at
    all, let a failed probe go again at once. Each is taken as made now: it holds one
    window, cooldown or pause from the step, no longer and no shorter. Readings from the
    future measure nothing and are dropped (every reading is stamped before the next tick
    takes its `now`: ticks run one after another, on this process's clock); with them goes
    what would have shown a probe failing (piles growing since a shrink), so for
    `PROBE_PAUSE_SECONDS` a probe goes no further than both answers agree, as after a
    restart (review 36: a pool whose shrink had just fallen short was probed lower)."""
    if not _stamped_ahead(state, now):
        return state
    short, readings = state.probe_short, tuple(r for r in state.readings if r.taken_at <= now)
    shrunk_on = state.shrunk_on
    if shrunk_on is not None and shrunk_on.taken_at > now:
        shrunk_on = None
    dropped = len(readings) < len(state.readings) or shrunk_on is not state.shrunk_on
    unknown = state.probe_unknown_until
    if unknown is not None:  # set by a restore before the step: a pause from the step
        unknown = min(unknown, now + PROBE_PAUSE_SECONDS)
    if dropped:
        unknown = max(unknown or now, now + PROBE_PAUSE_SECONDS)
    return replace(
        state,
        last_scale_time=_until(state.last_scale_time, now),
        last_scale_up_time=_until(state.last_scale_up_time, now),
        recommendations=tuple(
            Recommendation(min(r.at, now), r.replicas) for r in state.recommendations),
        readings=readings,
        shrunk_on=shrunk_on,
        probe_failed_at=_until(state.probe_failed_at, now),
        probe_short=None if short is None else replace(short, at=min(short.at, now)),
        burst_ended_at=_until(state.burst_ended_at, now),
        probe_unknown_until=unknown,
    )


def _stamped_ahead(state: ScalerState, now: float) -> bool:
    """Whether anything in `state` is stamped after `now` (each list is oldest first).
    Written out: it runs twice a tick for every QueueScaler."""
    history, readings, shrunk_on, short = (
        state.recommendations, state.readings, state.shrunk_on, state.probe_short)
    last, grew = state.last_scale_time, state.last_scale_up_time
    failed, ended = state.probe_failed_at, state.burst_ended_at
    unknown = state.probe_unknown_until
    return bool(
        (history and history[-1].at > now)
        or (readings and readings[-1].taken_at > now)
        or (last is not None and last > now) or (grew is not None and grew > now)
        or (failed is not None and failed > now) or (ended is not None and ended > now)
        or (shrunk_on is not None and shrunk_on.taken_at > now)
        or (short is not None and short.at > now)
        or (unknown is not None and unknown > now + PROBE_PAUSE_SECONDS)
    )


def _until(stamp: float | None, now: float) -> float | None:
    return None if stamp is None else min(stamp, now)


def _readings(spec: QueueScalerSpec, state: ScalerState) -> tuple[Reading, ...]:
    """The kept readings, if they were taken of the queues the spec names now: a queue
    added to the list (or a vhost or broker changed) would read its whole past as one
    span's messages."""
    return state.readings if _same_source(spec, state) else ()


def _shrunk_on(spec: QueueScalerSpec, state: ScalerState) -> Reading | None:
    """`ScalerState.shrunk_on`, if it was taken of the queues the spec names now (as
    `_readings`: the piles of other queues are no baseline for these)."""
    return state.shrunk_on if _same_source(spec, state) else None


def _same_source(spec: QueueScalerSpec, state: ScalerState) -> bool:
    return state.readings_of is None or state.readings_of == spec.source


def _held_back(readings: tuple[Reading, ...], sample: QueueSample, poll: float) -> str | None:
    """Why messages held by the consumers may not grow the pool now, else None: fewer are
    held than at the previous poll beyond chance, nothing ready (`throughput.draining`)."""
    before = draining(readings, sample, poll)
    return None if before is None else f"down from {before}"


def _decide_with_sample(
    spec: QueueScalerSpec,
    sample: QueueSample,
    flow: Flow,
    current: int,
    state: ScalerState,
    now: float,
    busy_workers: int | None,
    rate: float | None,
    busy_note: str | None = None,
    *,
    probing: bool = False,
    probe_unsure: bool = False,
    measured: bool = True,
    restored: bool = False,
    probe_least: int = 0,
    not_probed: str = "",
    acked_now: float | None = None,
    drain_piles: bool = False,
    held_back: str | None = None,
    unseen_after_restart: bool = False,
) -> Decision:
    recommendation, reason, message, rate_answer = _raw_recommendation(
        spec, sample, flow, current, rate,
        probing=probing, probe_unsure=probe_unsure, probe_least=probe_least,
        not_probed=not_probed,
        measured=measured, acked_now=acked_now, drain_piles=drain_piles, held_back=held_back,
    )
    raw_reason = reason
    changes: list[str] = []
    replicas = recommendation
    waking = current == 0 and recommendation > 0
    if not waking:
        held = _tolerance(spec, recommendation, current)
        if held is not None:
            recommendation = replicas = current
            reason = Reason.WITHIN_TOLERANCE
            message = f"{message}, {held}"
    # The HPA's pipeline: each stage sees the number the previous one left, and may change
    # it with a reason. Waking a pool from zero skips the damping (activation is apart).
    rate_noise = _rate_noise(flow, current, raw_reason)
    outbid = (None if raw_reason is Reason.RATE or not rate_answer
              else (rate_answer, _publish_noise(flow, current)))
    carried = raw_reason is Reason.RATE and not measured and not probing
    burst_over = (
        _burst_over(spec, state, sample, flow, now, carried)
        and _sure_drop(spec, recommendation, current, rate_noise)
        and (outbid is None or _sure_drop(spec, outbid[0], current, outbid[1]))
    )
    stages: list[Callable[[int], _Change | None]] = [] if waking else [
        lambda n: _stabilization(spec, n, current, state.recommendations, now,
                                 rate_noise=rate_noise,
                                 full_window=sample.scaling_pauses,
                                 watching_since=_watching_since(state, now),
                                 burst_over=burst_over, outbid_rate=outbid,
                                 idle_from=((state.shrinking_from or 0)
                                            if raw_reason is Reason.IDLE else 0)),
        lambda n: _cooldown(spec, n, current, state, now, burst_over),
    ]
    stages += [
        lambda n: _step_limit(spec, n, current),
        lambda n: _busy_workers(spec, n, current, busy_workers, busy_note),
        lambda n: _incomplete(sample, n, current),
        lambda n: _rebalancing(sample, n, current),
        lambda n: _still_counting(restored, n, current),
        lambda n: _unseen_after_restart(unseen_after_restart, n, current),
        lambda n: _bounds(spec, n),
    ]
    for stage in stages:
        change = stage(replicas)
        if change is not None:
            replicas, reason, note = change
            changes.append(note)
    plain = _bounds(spec, recommendation)
    if changes and replicas == (plain[0] if plain else recommendation):
        # The bounds alone give this answer: they, not a stage on the way, hold it.
        reason, changes = (plain[1], [plain[2]]) if plain else (raw_reason, [])
    if waking:
        reason = Reason.ACTIVATION  # a limited wake-up is still the wake-up users look for
    if changes:
        message = ", ".join((message, *changes))
    return Decision(replicas, reason, message, recommendation, bool(changes), burst_over)


def _raw_recommendation(
    spec: QueueScalerSpec,
    sample: QueueSample,
    flow: Flow,
    current: int,
    per_replica_rate: float | None,
    probing: bool = False,
    probe_unsure: bool = False,
    probe_least: int = 0,
    measured: bool = True,
    acked_now: float | None = None,
    drain_piles: bool = False,
    held_back: str | None = None,
    not_probed: str = "",
) -> tuple[int, Reason, str, int | None]:
    """The policies' answer before any damping; the largest of them wins. Also the rate
    policy's own answer (the larger of the floor and the drain, capped as the answer is;
    None without a speed or a publish rate, 0 on a publish rate of 0), whose scale-down
    window `_stabilization` keeps when another policy ties or outbids it.

    The rate floor `ceil(publish / perReplicaRate)` keeps a pool that keeps pace from
    shrinking, but lifts a pool only as far as the messages waiting justify: at most
    `current + ceil(ready / messagesPerReplica)`. With nothing ready the pool already keeps
    up at its size, and a publish rate averaged over a few seconds of a slow queue (2
    messages one window, 7 the next) would otherwise add replicas on noise alone.

    Messages in flight count in the backlog up to `PARKED_FLOOR_FACTOR` times the rate
    floor once the speed is measured: beyond what workers are working on they are parked in
    their prefetch buffers, and no new replica can take them. While it is not,
    `PARKED_BOUND_FACTOR` times the floor at the lower of the estimate and `acked_now`
    (`throughput.acked_per_consumer`), and no cap without the latter. Where the cap does not
    bind and `drain_piles` (the speed measured before this poll, by this run), the piles
    beyond the message each consumer works on ask for the replicas that drain them in time
    (`_pile_drain`, `PILE_DRAIN_FACTOR`). Before that, where no cap can be had,
    `held_back` (`_held_back`: fewer held than at the previous poll beyond chance, nothing
    ready then or now) holds the backlog policy at `current`: held messages are the
    consumers' own, no new replica could take one, and the pool works them off faster than
    they come (slow spikes at prefetch 16: the cap took a pool of 100 to 42, the next poll's
    acks were too few for it, and 105 held, 146 a poll before, asked for 53). Issue 12's
    worker models, 10 seeds: that row met (17,647 replica-seconds against a box of 17,651).

    At zero replicas only a backlog of `activation.messages` or more gives a non-zero
    answer. Zero itself is answered only when nothing is ready, in flight or published
    (an unknown publish rate counts as zero: the AMQP path knows no rates).

    Where the broker says how many consumers can work at once (a Kafka topic's partitions:
    `QueueSample.parallelism`), no policy asks for more, and the backlog policy asks for no
    more than the consumers that have messages waiting (`backlog_parallelism`, the partitions
    with lag): replicas beyond them would join the group and idle. The rate floor is held
    only by the first: a pool that keeps pace has lag on few partitions at any instant.
    These caps shape the recommendation, so the stabilization window damps them like any
    other.
    """
    backlog = backlog_of(spec, sample)
    activation = spec.activation.messages
    if current == 0 and not activates(spec, sample):
        message = f"backlog {backlog} below activation {activation}: staying at zero"
        return 0, Reason.IDLE, message, None
    per_replica = spec.target.messages_per_replica
    uncapped = replicas = -(-backlog // per_replica)
    cap_note = ""
    in_flight = backlog - sample.ready
    cap_speed = per_replica_rate
    speed_note = ""
    if not measured:
        cap_speed = (None if per_replica_rate is None or acked_now is None
                     else min(per_replica_rate, acked_now))
        speed_note = (f", speed not measured: the lower of its estimate"
                      f" {_rate(per_replica_rate)}/s and {_rate(acked_now)}/s"
                      " acked per consumer now")
    cap = (_parked_cap(in_flight, flow, cap_speed, measured)
           if spec.behavior.scale_down.protect_busy_workers else None)
    parked_cap = cap if cap is not None and cap < -(-in_flight // per_replica) else None
    if parked_cap is not None:
        uncapped = replicas = -(-sample.ready // per_replica) + parked_cap
        cap_note = (
            f" (ready {sample.ready} in full, {in_flight} in flight as {parked_cap} at most:"
            f" {PARKED_FLOOR_FACTOR if measured else PARKED_BOUND_FACTOR}"
            f" x ceil(publish {_rate(flow.publish)}/s / {_rate(cap_speed)}/s per replica)"
            f"{speed_note}, prefetched messages cannot move)"
        )
    if held_back is not None and cap is None and replicas > current > 0:
        # Held messages are the consumers' own: a new replica could take none of them, and
        # fewer held than at the last poll, with nothing ready, is a pool keeping up. Not
        # where a cap can be had (review 22: the cap binding or not made more published
        # give fewer replicas); the cap answers that case.
        replicas = current
        cap_note += (f", held at current {current}: nothing ready, {in_flight} in flight"
                     f" {held_back} (held messages cannot move to new replicas)")
    piles = (None if parked_cap is not None or not drain_piles
             else _pile_drain(in_flight, sample, flow, per_replica_rate, per_replica, current))
    if piles is not None and piles[0] > replicas:
        replicas, cap_note = piles
    waiting = sample.backlog_parallelism
    if waiting is not None and replicas > max(waiting, 1):
        replicas = max(waiting, 1)
        cap_note += (
            f", capped at {replicas}: {waiting} partitions have messages waiting"
            " (more consumers would idle)"
        )
    reason = Reason.BACKLOG
    publish = flow.publish or 0.0  # unknown counts as zero (the AMQP path knows no rates)
    winner = "backlog"
    floor_note = ""
    rate_answer = None
    if per_replica_rate is not None and per_replica_rate > 0.0:
        floor = _replicas_for(publish / per_replica_rate)
        # A speed only known as a lower bound makes the floor an upper bound of the need:
        # it may hold the pool, never grow it.
        lift = current + -(-sample.ready // per_replica) if measured else current
        if floor > lift:
            floor_note = (
                f", capped at {lift} (current {current} + ready {sample.ready} / {per_replica})"
                if measured else f", capped at current {current} (speed not measured yet)"
            )
            floor = lift
        if probing:
            floor, probe_note = _probe(floor, current, probe_unsure, probe_least)
            floor_note += probe_note
        elif not_probed:
            floor_note += f", not probed ({not_probed})"
        if floor > replicas:
            replicas, reason, winner = floor, Reason.RATE, "floor"
        answer = floor
        drain_seconds = spec.target.drain_seconds
        if drain_seconds is not None:
            drain = _replicas_for((publish + backlog / drain_seconds) / per_replica_rate)
            if probing:
                drain, _ = _probe(drain, current, probe_unsure, probe_least)
            if drain > replicas:
                replicas, reason, winner = drain, Reason.RATE, "drain"
            answer = max(answer, drain)
        if flow.publish is not None:
            rate_answer = answer
    if winner == "backlog":
        message = f"backlog {backlog} / {per_replica} per replica -> {uncapped}{cap_note}"
    elif winner == "floor":
        needed = _replicas_for(publish / (per_replica_rate or 1.0))
        message = (
            f"publish {_rate(publish)}/s at {_rate(per_replica_rate)}/s per replica -> {needed}"
            f"{floor_note}"
        )
    else:
        message = (
            f"publish {_rate(publish)}/s + backlog {backlog} in {spec.target.drain_seconds}s"
            f" at {_rate(per_replica_rate)}/s per replica -> {replicas}"
        )
    limit = sample.parallelism
    if limit is not None and rate_answer is not None:
        rate_answer = min(rate_answer, max(limit, 1))
    if limit is not None and replicas > max(limit, 1):
        replicas = max(limit, 1)
        message += (
            f", capped at {replicas}: at most {limit} consumers can work at once"
            " (the queue's partitions)"
        )
    if replicas == 0:
        if sample.ready > 0 or sample.unacked > 0 or publish > 0.0:
            replicas = 1
            message += ", kept at 1 while messages are in flight or arriving"
        else:
            return 0, Reason.IDLE, "queue idle (nothing ready, in flight or published) -> 0", None
    if current == 0:
        message = f"backlog {backlog} >= activation {activation}: waking, {message}"
        return replicas, Reason.ACTIVATION, message, rate_answer
    return replicas, reason, message, rate_answer


def _parked_cap(
    in_flight: int,
    flow: Flow,
    per_replica_rate: float | None,
    measured: bool,
) -> int | None:
    """The most replicas the in-flight part of the backlog may ask for
    (`PARKED_FLOOR_FACTOR`, or `PARKED_BOUND_FACTOR` on a speed not measured yet), else
    None. Only on a known speed and a known, non-negative publish rate: otherwise the
    in-flight part counts in full.
    The caller applies it only under `protectBusyWorkers`: the in-flight part holds tasks
    in progress too, which the cap does not tell from parked ones, and the protection keeps
    their pods."""
    publish = flow.publish
    if (in_flight <= 0 or per_replica_rate is None
            or not per_replica_rate > 0.0 or publish is None or not publish >= 0.0):
        return None
    factor = PARKED_FLOOR_FACTOR if measured else PARKED_BOUND_FACTOR
    return max(1, factor * _replicas_for(publish / per_replica_rate))


def _pile_drain(
    in_flight: int,
    sample: QueueSample,
    flow: Flow,
    per_replica_rate: float | None,
    per_replica: int,
    current: int,
) -> tuple[int, str] | None:
    """The replicas that drain the consumers' piles in time (`PILE_DRAIN_FACTOR`), and why;
    None where there are none to drain, the rule does not apply, or it asks no more than the
    rate floor. Called only on a speed measured before this poll (on a lower bound the
    spare speed would read low and ask too much), and on one queue every consumer takes
    from (a partition's lag is not a pile). Fewer than `MIN_COUNTED` messages parked in all
    are left alone: a few messages between polls are noise, and a worker running several
    tasks at once (Celery prefork, gevent) holds them as if parked. Nor on a publish rate
    that rests on a thin rate field alone (`Flow.publish_firm`: review 20, a run restarted a
    minute before, or whose queue was renamed, read 1.6/s where the counters said 1/s and
    grew 8 -> 10 where the run that kept going held 8)."""
    publish = flow.publish
    if (in_flight <= 0 or not sample.shared or sample.consumers <= 0
            or per_replica_rate is None or not 0.0 < per_replica_rate < math.inf
            or publish is None or not publish > 0.0 or not flow.publish_firm):
        return None
    floor = _replicas_for(publish / per_replica_rate)
    parked = in_flight - sample.consumers  # beyond the message each one works on
    if parked < MIN_COUNTED or current < floor:
        return None
    pile = parked / sample.consumers
    seconds = PILE_DRAIN_FACTOR * per_replica / per_replica_rate
    spare = per_replica_rate - pile / seconds
    limit = PARKED_FLOOR_FACTOR * floor
    wanted = _HUGE if spare <= 0.0 else _replicas_for(publish / spare)
    needed = min(limit, wanted)
    if needed <= floor:
        return None  # the floor's own answer: it decides, and says so
    answer = (f"at {needed}" if needed == wanted
              else f"at {wanted if wanted < _HUGE else 'no size'}, capped at {needed}")
    note = (
        f", piles of {pile:.1f} a consumer ({in_flight} in flight on {sample.consumers})"
        f" drain within {seconds:g}s {answer} (publish {_rate(publish)}/s,"
        f" {_rate(per_replica_rate)}/s per replica; at most {PARKED_FLOOR_FACTOR} x the rate floor)"
    )
    return needed, note


def _probe(replicas: int, current: int, unsure: bool, least: int = 0) -> tuple[int, str]:
    """A rate answer on a speed never measured: half of it (see PROBE_DIVISOR), raised to
    `least` (`_probe_least`) up to the answer itself. `unsure` (restarted, or readings
    dropped by a clock that stepped back: `ScalerState.probe_unknown_until`): the answer of
    the two, probing or not, that moves the pool least."""
    half = replicas - -(-replicas // PROBE_DIVISOR)
    probed = max(half, min(least, replicas))
    limited = "a probe left fewer short at this load" if probed > half else ""
    spare = replicas - probed
    if not spare:
        return replicas, f", not probed ({limited})" if limited else ""
    if unsure and probed < current:
        kept = min(current, replicas)
        return kept, (f", held at {kept} (restarted, or the clock stepped back: whether a probe"
                      " failed lately is not known)")
    limit = f"; no fewer: {limited}" if limited else ""
    return probed, f", less {spare} to learn the replicas' speed (not measured yet{limit})"


def backlog_of(spec: QueueScalerSpec, sample: QueueSample) -> int:
    """The work waiting: ready, plus in flight when the source block says so."""
    return sample.backlog if spec.source.include_in_flight else sample.ready


def activates(spec: QueueScalerSpec, sample: QueueSample) -> bool:
    """Whether the backlog wakes a pool at zero (`activation.messages`)."""
    return backlog_of(spec, sample) >= spec.activation.messages


def _replicas_for(load: float) -> int:
    """Replicas to carry `load` (in replicas' worth of work): rounded up, capped at _HUGE."""
    if load >= _HUGE:
        return _HUGE
    return math.ceil(load - _EPSILON)


def _rate(value: float | None) -> str:
    """A rate for people: 0.004, 2.5, 12, 1250 (three significant digits, no exponent)."""
    value = value or 0.0
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def outside_tolerance(spec: QueueScalerSpec, recommendation: int, current: int) -> bool:
    """Whether a recommendation moves the pool: beyond the dead-band `behavior.tolerance`
    around current, or to or from zero (no ratio would mean anything there)."""
    if current <= 0 or recommendation <= 0 or recommendation == current:
        return recommendation != current
    return abs(recommendation - current) > spec.behavior.tolerance * current + _EPSILON


def _tolerance(spec: QueueScalerSpec, recommendation: int, current: int) -> str | None:
    """The dead-band: a note when the recommendation is close enough to current to hold."""
    if recommendation == current or outside_tolerance(spec, recommendation, current):
        return None
    return f"within tolerance {spec.behavior.tolerance:g} of current {current}: holding"


def _down_window(
    spec: QueueScalerSpec, current: int, recommendation: int, rate_noise: float | None
) -> float:
    """The scale-down window for this drop (see `_stabilization`)."""
    window = spec.behavior.scale_down.stabilization_seconds
    floor = max(MIN_POLLS_IN_WINDOW * spec.polling_interval_seconds, MIN_WINDOW_SECONDS)
    drop, chance = current - recommendation, _chance(spec, current, rate_noise)
    divisor = max(1.0, drop - NOISE_SIGMAS * chance)
    if rate_noise is None:
        divisor *= max(1.0, drop - SURE_SIGMAS * chance)
    return min(window, max(window / divisor, floor))


def _stabilization(
    spec: QueueScalerSpec,
    recommendation: int,
    current: int,
    history: tuple[Recommendation, ...],
    now: float,
    rate_noise: float | None = None,
    full_window: bool = False,
    watching_since: float | None = None,
    burst_over: bool = False,
    outbid_rate: tuple[int, float] | None = None,
    idle_from: int = 0,
) -> _Change | None:
    """The HPA's stabilization: shrink no lower than the highest recommendation of the
    scale-down window, grow no higher than the lowest of the scale-up window; this
    tick's recommendation counts in both.

    The scale-down window is `scaleDown.stabilizationSeconds` divided by the number of
    replicas the recommendation would remove beyond chance (`NOISE_SIGMAS`), and again by
    the number it would remove beyond `SURE_SIGMAS`, never below `MIN_POLLS_IN_WINDOW`
    polls nor `MIN_WINDOW_SECONDS`: a pool about to lose one replica looks back the whole
    window; a drained burst, far beyond any chance, about k^2 times less. Holding k spare
    replicas for window/k^2 seconds costs window/k replica-seconds: the surer the drop, the
    less it is insured. (Dividing by k alone insured every drop with the same window's
    worth of one replica, twice per burst: a third of the work of a small pool's bursts,
    issue 12's worker models.) Chance is the backlog's, or, when the rate policy decided,
    the publish rate's (`_rate_noise`: a rate read off a few dozen messages moves a pool
    by more than its backlog does), and then the window is divided once only: that noise
    assumes Poisson arrivals, and a producer that publishes in clumps moves the rate by
    several times as much (review 29: divided twice, 40 msg/s in clumps of 10 took 75%
    more scale events and p95 waits 37% longer, the pool flapping 25 -> 19 -> 26). The window
    exists against flapping on noisy metrics (the HPA's reason for it); noise moves a pool
    by a replica or two and stays damped for the whole window, while a burst that has been
    drained (the recommendation a small fraction of the pool) is let go within a tick or
    two instead of being paid for over the full window. The window only ever shortens,
    never lengthens (but to `scaleDown.minStabilizationSeconds`, for which `_compact` keeps
    history too), so the history kept still serves every decision.

    `full_window` (the sample's `scaling_pauses`: every resize stops all the consumers, as a
    Kafka group's rebalance does) keeps the whole window for every scale-down: a drop that
    is surely no noise still costs a pause of the whole pool, so it waits for the window,
    and a new QueueScaler (`watching_since`) waits one whole window from its first tick.

    `outbid_rate` (the rate policy's answer of at least one replica and its publish rate's
    noise, when another policy tied or outbid it): the window is at least the one that
    answer would have had, so that, for one speed estimate, more backlog does not give fewer
    replicas (a property test found 10 replicas held on an empty queue by the rate floor's
    window, 2 kept with 10 messages ready: the backlog's answer one replica above the
    floor, with a shorter window). A burst's end then goes at once only if the drop is sure
    for that answer too.

    `idle_from` (an idle queue's drop to zero after the window held an earlier tick's
    scale-down part way: `ScalerState.shrinking_from`): the drop is judged from the pool of
    that size, not from what is left of it. An idle queue is an exact count, not a noisy
    one, and the rest of one drop is no new, smaller drop: judged again as one, the last 2
    replicas of a flood's 6 waited 90 s on an empty queue where the 6 had waited 30 s
    (issue 12's worker models, two flood rows met). A noisy answer is judged again at each
    size, as the HPA does: judged from the first size, flapping cost scale events and p95
    waits on 6 rows.

    The window, divided or skipped, is never shorter than
    `scaleDown.minStabilizationSeconds`, and a new QueueScaler (or a restarted operator)
    watches that long before its first scale-down. Nothing tells a producer's pause from a
    load's end: with 0 (the default) a 22-pod pool went to zero on each 30 s pause and
    regrew to about 60 (review 29). Held only on an idle queue, one message in a pause undid
    it (review 32); at 60 by default, 59 of issue 12's 112 worker-model rows missed instead
    of 32, every drained burst paying a minute.
    """
    behavior = spec.behavior
    up_window = behavior.scale_up.stabilization_seconds
    up_cutoff = now - up_window
    window = behavior.scale_down.stabilization_seconds
    judged = max(current, idle_from)
    down_window = window if full_window else _down_window(spec, judged, recommendation,
                                                          rate_noise)
    floors_window = ""
    if outbid_rate is not None:
        rates_window = _down_window(spec, current, *outbid_rate)
        if rates_window > down_window:
            down_window = rates_window
            floors_window = f", the rate's answer of {outbid_rate[0]}"
    down_cutoff = now - down_window
    if burst_over:
        # A sure drop once the burst that grew the pool is over (`_burst_over`): the past
        # recommendations asked for replicas to work off a backlog that is gone.
        down_cutoff = now
    shortest = behavior.scale_down.min_stabilization_seconds
    shortest_cutoff = min(down_cutoff, now - shortest)
    lowest = highest = divided = recommendation
    for past in history:
        if past.at > shortest_cutoff and past.replicas > highest:
            highest = past.replicas
        if past.at > down_cutoff and past.replicas > divided:
            divided = past.replicas
        if past.at > up_cutoff and past.replicas < lowest:
            lowest = past.replicas
    watch = max(window, shortest) if full_window else shortest
    watched = math.inf if watching_since is None else now - watching_since
    adopting = recommendation < current and watched < watch
    if adopting:
        highest = max(highest, current)
    stabilized = min(max(current, lowest), highest)
    if stabilized == recommendation:
        return None
    if adopting and stabilized > divided:
        left = math.ceil(watch - watched)
        note = (
            f"held at {stabilized} by scaleDown.stabilizationSeconds (a new QueueScaler over"
            f" a pool that pauses on every resize watches one whole window first: {left}s left)"
            if full_window and window >= shortest else
            f"held at {stabilized} by scaleDown.minStabilizationSeconds (a new QueueScaler"
            f" watches {watch}s before its first scale-down: {left}s left)"
        )
    elif recommendation < current and stabilized > divided:
        note = (
            f"held at {stabilized} by scaleDown.minStabilizationSeconds"
            f" (highest recommendation of {shortest}s)"
        )
    elif recommendation < current:
        note = (
            f"held at {stabilized} by scaleDown.stabilizationSeconds"
            f" (highest recommendation of {_rate(down_window)}s{floors_window})"
        )
    else:
        note = (
            f"held at {stabilized} by scaleUp.stabilizationSeconds"
            f" (lowest recommendation of {up_window}s)"
        )
    return stabilized, Reason.STABILIZATION, note


def _cooldown(
    spec: QueueScalerSpec,
    replicas: int,
    current: int,
    state: ScalerState,
    now: float,
    burst_over: bool = False,
) -> _Change | None:
    """No scale-up within scaleUp.cooldownSeconds of the last scale-up, no scale-down
    within scaleDown.cooldownSeconds of the last scale-up. A scale-down starts neither: it
    brings no pods to wait for, and a burst right after one was held 14 to 29 s by the
    scale-up cooldown (4 of 9 bursts in the KEDA peers benchmark). The scale-down cooldown
    is there for the new pods to work off the backlog that called them; a sure drop skips
    it once that burst is over (`_burst_over`)."""
    if replicas == current:
        return None
    if replicas < current and burst_over:
        return None
    if replicas > current:
        cooldown, field = spec.behavior.scale_up.cooldown_seconds, "scaleUp.cooldownSeconds"
        since = state.last_scale_up_time
    else:
        cooldown, field = spec.behavior.scale_down.cooldown_seconds, "scaleDown.cooldownSeconds"
        since = state.last_scale_up_time
    if since is None:
        return None
    remaining = since + cooldown - now
    if remaining <= 0:
        return None
    return current, Reason.COOLDOWN, f"held at {current} by {field} ({math.ceil(remaining)}s left)"


def _step_limit(spec: QueueScalerSpec, replicas: int, current: int) -> _Change | None:
    """One tick may move by the larger of maxStepReplicas and maxStepPercent of current.

    Percent steps round like the HPA's: up to ceil(current * (1 + p/100)), down to
    floor(current * (1 - p/100)).
    """
    if replicas > current:
        up = spec.behavior.scale_up
        step, percent, sign = up.max_step_replicas, up.max_step_percent, "+"
        direction = "scaleUp"
    elif replicas < current:
        down = spec.behavior.scale_down
        step, percent, sign = down.max_step_replicas, down.max_step_percent, "-"
        direction = "scaleDown"
    else:
        return None
    by_percent = -(-current * percent // 100)
    allowed = max(step, by_percent)
    if abs(replicas - current) <= allowed:
        return None
    field = "maxStepReplicas" if step >= by_percent else "maxStepPercent"
    limited = current + allowed if sign == "+" else current - allowed
    return limited, Reason.STEP_LIMIT, f"limited to {sign}{allowed} by {direction}.{field}"


def _incomplete(sample: QueueSample, replicas: int, current: int) -> _Change | None:
    """A sample that may miss work the pool holds never shrinks it (it may grow it)."""
    if sample.complete or replicas >= current:
        return None
    note = (
        f"held at {current}: the sample cannot see every message the pool may hold"
        " (in-flight work unknown, or a queue missing): scaling up only"
    )
    return current, Reason.INCOMPLETE_SAMPLE, note


def _rebalancing(sample: QueueSample, replicas: int, current: int) -> _Change | None:
    """No scale-down while the consumers are being reassigned (a Kafka group rebalancing):
    every member stops until it ends, so the figures say nothing of the pool's pace, and a
    member leaving now starts the rebalance over. It may grow."""
    if not sample.rebalancing or replicas >= current:
        return None
    note = (
        f"held at {current}: the consumers are being reassigned (a rebalance is in progress):"
        " no scale-down until it is over"
    )
    return current, Reason.REBALANCING, note


def _still_counting(restored: bool, replicas: int, current: int) -> _Change | None:
    """No shrinking on a state rebuilt from status before its readings refill (see
    ScalerState.restored): it may grow."""
    if not restored or replicas >= current:
        return None
    note = f"held at {current}: the rates are still being counted after a restart"
    return current, Reason.INCOMPLETE_SAMPLE, note


def _unseen_after_restart(unseen: bool, replicas: int, current: int) -> _Change | None:
    """No growth on messages held with nothing ready at a restored run's first poll: the run
    that kept going may see them falling (`throughput.draining`) and hold, and this one has
    no poll of its own to tell (review 21: 42 held there, 53 here). A stage, not part of the
    recommendation, so no scale-up window remembers it (review 22)."""
    if not unseen or replicas <= current or current <= 0:
        return None
    note = (f"held at {current}: nothing ready, and no poll since the restart to tell whether"
            " the messages held are falling")
    return current, Reason.INCOMPLETE_SAMPLE, note


def _busy_workers(
    spec: QueueScalerSpec, replicas: int, current: int, busy_workers: int | None,
    busy_note: str | None = None,
) -> _Change | None:
    """Never shrink below the workers busy with a message (scaleDown.protectBusyWorkers)."""
    if busy_workers is None or replicas >= current or replicas >= busy_workers:
        return None
    if not spec.behavior.scale_down.protect_busy_workers:
        return None
    kept = min(current, busy_workers)
    if kept == replicas:
        return None
    why = busy_note or f"{busy_workers} workers busy"
    note = f"kept at {kept}: {why} (scaleDown.protectBusyWorkers)"
    return kept, Reason.BUSY_WORKERS, note


def _bounds(spec: QueueScalerSpec, replicas: int) -> _Change | None:
    """The clamp to [minReplicas, maxReplicas], which overrides every other stage."""
    if replicas > spec.max_replicas:
        return spec.max_replicas, Reason.MAX_BOUND, f"capped at maxReplicas {spec.max_replicas}"
    if replicas < spec.min_replicas:
        return spec.min_replicas, Reason.MIN_BOUND, f"raised to minReplicas {spec.min_replicas}"
    return None


def _decide_without_sample(
    spec: QueueScalerSpec, current: int, state: ScalerState, now: float,
    busy_workers: int | None = None, busy_note: str | None = None,
) -> Decision:
    """Hold while the broker is unreachable; the tick that makes `fallback.afterFailures`
    failures in a row goes to `fallback.replicas`, if set. Cooldowns and bounds still
    apply (no scale within a cooldown, whatever the cause); stabilization and step limits
    do not, as KEDA's fallback sets its replica count directly.
    """
    failures = state.consecutive_failures + 1
    fallback = spec.fallback
    if fallback.replicas is not None and failures >= fallback.after_failures:
        replicas, reason = fallback.replicas, Reason.FALLBACK
        message = f"no sample for {failures} ticks: fallback to {replicas} replicas"
    else:
        replicas, reason = current, Reason.NO_DATA
        message = f"no sample ({failures} failed in a row): holding {current}"
        if fallback.replicas is not None:
            message += f", fallback after {fallback.after_failures}"
    recommendation = replicas
    notes = [message]
    change = _cooldown(spec, replicas, current, state, now)
    if change is not None:
        replicas, reason, note = change
        notes.append(note)
    change = _busy_workers(spec, replicas, current, busy_workers, busy_note)
    if change is not None:
        replicas, reason, note = change
        notes.append(note)
    change = _bounds(spec, replicas)
    if change is not None:
        replicas, reason, note = change
        notes.append(note)
    return Decision(replicas, reason, ", ".join(notes), recommendation, len(notes) > 1)


def _paused(would: Decision, current: int) -> Decision:
    """Paused: hold, and say what the unpaused operator would have done."""
    if would.replicas == current:
        message = f"paused; would hold at {current}: {would.message}"
    else:
        message = f"paused; would scale {current} -> {would.replicas}: {would.message}"
    return Decision(current, Reason.PAUSED, message, would.recommendation, False)


def _compact(
    spec: QueueScalerSpec, history: tuple[Recommendation, ...], now: float
) -> tuple[Recommendation, ...]:
    """Keep only the recommendations a future stabilization can still need.

    An entry is needed by the scale-down window while inside it and above every newer
    entry (a newer one at least as high gives the same maximum for as long as the old one
    would), and by the scale-up window while inside it and below every newer entry.
    """
    if not history:
        return history
    up_cutoff = now - spec.behavior.scale_up.stabilization_seconds
    down = spec.behavior.scale_down
    down_cutoff = now - max(down.stabilization_seconds, down.min_stabilization_seconds)
    ordered = sorted(history, key=attrgetter("at"))
    kept: list[Recommendation] = []
    newer_highest = -1
    newer_lowest: float = math.inf
    for past in reversed(ordered):
        replicas = past.replicas
        if (past.at > down_cutoff and replicas > newer_highest) or (
            past.at > up_cutoff and replicas < newer_lowest
        ):
            kept.append(past)
        newer_highest = max(newer_highest, replicas)
        newer_lowest = min(newer_lowest, replicas)
    kept.reverse()
    return tuple(kept)
