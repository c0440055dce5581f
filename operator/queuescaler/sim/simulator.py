"""Replay an arrival trace against a scaling policy and report what users would feel.

Pure: no I/O, no clock, and randomness only from seeded RNGs (traces and worker models
bring their own seeds). Two worlds replay a trace. By default (no `workers` given to
`simulate`) the world is a FIFO queue in front of a pool of replicas, stepped once a
second:

- scale-ups take `pod_start_delay` seconds to become ready; scale-downs act at once,
  removing starting pods first (as the ReplicaSet controller does), then ready ones chosen
  regardless of what they are doing: their in-flight messages go back to the queue;
- a ready replica works on one message at a time (prefetch 1) at the trace's service rate;
  in-flight messages are the broker's `unacked`, the ready replicas its `consumers`;
- the queue is a fluid: counts per arrival second, never one object per message, so an
  hour at hundreds of messages per second replays in a fraction of a second.

With a `WorkerModel` (`sim.workers`) the world is message by message instead: prefetch,
concurrency, uneven task times, graceful stops and per-pod start delays, as real Celery
and pika workers have them. It is slower (a few microseconds a message) and is what
bench/decide.py's "worker models" table replays.

A policy sees only what a real one would: a `QueueSample` at its own polling interval,
whose fields are as old as their source makes them (see `Sampling`).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from queuescaler.core.decision import ScalerState, decide, next_state
from queuescaler.core.plan import Memory, after_early, calls_now, next_due, peeked
from queuescaler.core.sample import QueueSample
from queuescaler.sim.sampling import History, Sampling, observe
from queuescaler.sim.traces import Trace
from queuescaler.sim.workers import MessageWorld, WorkerModel, busy_per_second
from queuescaler.sources.registry import parse_spec

__all__ = [
    "FixedPolicy",
    "OraclePolicy",
    "Policy",
    "QueueScalerPolicy",
    "Sampling",
    "SimResult",
    "WorkerModel",
    "simulate",
]

_EMPTY = 1e-9
"""A fluid count below this is nothing (floating-point crumbs of a drained bucket)."""


class Policy(Protocol):
    """A scaler under test: it is asked for a replica count at each of its polls."""

    @property
    def name(self) -> str: ...

    @property
    def sampling(self) -> Sampling: ...

    @property
    def initial_replicas(self) -> int:
        """Pool size at the start of a replay when the caller does not choose one."""
        ...

    @property
    def removes_idle_first(self) -> bool:
        """Whether its scale-downs spare busy replicas. Kubernetes picks pods blind to their
        work (the HPA, KEDA); the oracle, and queuescaler with protectBusyWorkers (the
        pod-deletion-cost it sets), remove the replicas holding the fewest messages first."""
        ...

    def desired(self, sample: QueueSample, current: int, now: float) -> int:
        """The replica count to apply now, given the pool's current size (ready or starting)."""
        ...


@dataclass(frozen=True, slots=True)
class SimResult:
    """What one policy did on one trace: the waits users felt and what it cost."""

    trace: str
    policy: str
    p50_wait: float
    """Median seconds from publish to start of service (messages never served count with
    the time they had waited when the trace ended, so a stalled pool cannot look good)."""
    p95_wait: float
    mean_wait: float
    replica_seconds: float
    """Pool size (ready and starting pods alike: both are paid for) summed over seconds."""
    scale_events: int
    """Changes of the replica count applied to the pool."""
    published: int
    served: float
    """Messages completed (acknowledged)."""
    left: float
    """Messages queued or in flight when the trace ended."""
    redelivered: float
    """Messages handed back to the queue because their replica was removed mid-task."""
    replicas: tuple[int, ...]
    """Pool size during each second, for pictures."""
    cut_short: float = 0.0
    """Of `redelivered`, the tasks killed at the end of a stopping pod's grace period (their
    work is lost); the rest were parked in a stopping worker's buffer (message-level world
    only; the fluid world removes pods at once)."""
    grace_seconds: float = 0.0
    """Of `replica_seconds`, those paid for stopping pods finishing their tasks."""
    backlog: tuple[float, ...] = ()
    """Messages ready and unacknowledged at each second, as the broker counts them (for
    pictures)."""


class _World:
    """The mutable state of one replay; `simulate` is its only user."""

    def __init__(
        self,
        service_rate: float,
        pod_start_delay: float,
        initial_replicas: int,
        measure_from: int = 0,
    ):
        self.measure_from = measure_from
        self.steps_per_message = 1.0 / service_rate
        self.pod_start_delay = pod_start_delay
        self.queue: deque[list[float]] = deque()  # [arrival second, count], oldest first
        self.queued = 0.0
        self.redelivery = 0.0  # returned messages, first in line; their wait is already counted
        self.completing: dict[int, float] = {}  # second -> in-flight messages finishing then
        self.in_flight = 0.0
        self.ready = initial_replicas
        self.starting: deque[list[float]] = deque()  # [ready at, count], oldest first
        self.waits: dict[int, float] = {}
        self.published = self.acked = self.delivered = self.redelivered = 0.0
        self.history = History()
        self.history.record(0.0, 0.0, initial_replicas, 0.0, 0.0, 0.0)

    @property
    def pool(self) -> int:
        return self.ready + int(sum(count for _, count in self.starting))

    def begin(self, now: int) -> None:
        """Start the second: tasks due now finish, pods due now become ready."""
        finished = self.completing.pop(now, 0.0)
        self.in_flight -= finished
        self.acked += finished
        self._promote(now)

    def _promote(self, now: int) -> None:
        while self.starting and self.starting[0][0] <= now:
            self.ready += int(self.starting.popleft()[1])

    def resize(self, wanted: int, now: int, *, idle_first: bool) -> bool:
        current = self.pool
        if wanted > current:
            self.starting.append([now + self.pod_start_delay, wanted - current])
            self._promote(now)  # a zero start delay means ready this very second
        elif wanted < current:
            self._remove(current - wanted, idle_first=idle_first)
        return wanted != current

    def _remove(self, count: int, *, idle_first: bool) -> None:
        while count and self.starting:  # pods not yet ready go first, newest first
            newest = self.starting[-1]
            taken = min(count, int(newest[1]))
            newest[1] -= taken
            count -= taken
            if not newest[1]:
                self.starting.pop()
        if not count:
            return
        if idle_first:
            busy_removed = max(0.0, count - (self.ready - self.in_flight))
        else:  # the ReplicaSet controller's pick, as far as work goes: at random
            busy_removed = self.in_flight * count / self.ready
        if busy_removed > _EMPTY:
            kept = 1 - busy_removed / self.in_flight
            self.completing = {second: n * kept for second, n in self.completing.items()}
        self.in_flight -= busy_removed
        self.redelivery += busy_removed
        self.redelivered += busy_removed
        self.ready -= count

    def publish(self, now: int, count: int) -> None:
        if count:
            self.queue.append([now, float(count)])
            self.queued += count
            self.published += count

    def serve(self, now: int) -> None:
        free = max(0.0, self.ready - self.in_flight)
        fast = self.steps_per_message <= 1.0
        started = self._start(free / self.steps_per_message if fast else free, now)
        if fast:  # several tasks per replica per second: they finish within the step
            self.acked += started
            unacked = started * self.steps_per_message
        else:  # one task outlives the step: book its completion, split to keep the mean exact
            whole = int(self.steps_per_message)
            fraction = self.steps_per_message - whole
            self._book(now + whole, started * (1 - fraction))
            self._book(now + whole + 1, started * fraction)
            self.in_flight += started
            unacked = self.in_flight
        self._record(unacked)

    def _book(self, second: int, count: float) -> None:
        if count > _EMPTY:
            self.completing[second] = self.completing.get(second, 0.0) + count

    def _start(self, capacity: float, now: int) -> float:
        again = min(self.redelivery, capacity)
        self.redelivery -= again
        room = capacity - again
        while room > _EMPTY and self.queue:
            bucket = self.queue[0]
            taken = min(bucket[1], room)
            if bucket[0] >= self.measure_from:
                waited = now - int(bucket[0])
                self.waits[waited] = self.waits.get(waited, 0.0) + taken
            bucket[1] -= taken
            room -= taken
            if bucket[1] <= _EMPTY:
                self.queue.popleft()
        started = capacity - room
        self.queued = max(0.0, self.queued - (started - again))
        self.delivered += started
        return started

    def _record(self, unacked: float) -> None:
        self.history.record(
            self.queued + self.redelivery,
            unacked,
            self.ready,
            self.published,
            self.acked,
            self.delivered,
        )

    def left_waiting(self, end: int) -> None:
        """Count the never-served messages with the wait they had when the trace ended."""
        for arrival, count in self.queue:
            if arrival < self.measure_from:
                continue
            waited = end - int(arrival)
            self.waits[waited] = self.waits.get(waited, 0.0) + count


def _percentile(histogram: Mapping[int, float], fraction: float) -> float:
    total = sum(histogram.values())
    if total <= _EMPTY:
        return 0.0
    running = 0.0
    for wait in sorted(histogram):
        running += histogram[wait]
        if running >= fraction * total - _EMPTY:
            return float(wait)
    return float(max(histogram))


def _nearest_rank(ordered: Sequence[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def simulate(
    trace: Trace,
    policy: Policy,
    *,
    pod_start_delay: float = 10.0,
    initial_replicas: int | None = None,
    workers: WorkerModel | None = None,
    measure_from: int = 0,
) -> SimResult:
    """Replay `trace` second by second with `policy` deciding the pool size.

    Each second: due tasks finish, due pods become ready, the policy polls if its interval
    has elapsed (its answer applies at once), the second's messages arrive, replicas serve.
    With `workers`, the replay is message by message (see `sim.workers`); without, it is
    the fluid world of one-message replicas.

    `measure_from` makes the first seconds a warm-up: replayed, but their messages' waits,
    their replica-seconds and their scale events are not counted (a policy's first looks
    at a broker that has only just started are no measure of how it runs).
    """
    if not 0 <= measure_from < max(1, trace.duration):
        raise ValueError("measure_from must lie within the trace")
    start = policy.initial_replicas if initial_replicas is None else initial_replicas
    if workers is not None:
        return _simulate_messages(trace, policy, workers, pod_start_delay, start, measure_from)
    world = _World(trace.service_rate, pod_start_delay, start, measure_from)
    sampling = policy.sampling
    next_poll = 0.0
    events = 0
    pool_sizes: list[int] = []
    for now, arrivals in enumerate(trace.arrivals):
        world.begin(now)
        if now >= next_poll:
            sample = observe(world.history, now, sampling)
            wanted = policy.desired(sample, world.pool, float(now))
            scaled = world.resize(max(0, wanted), now, idle_first=policy.removes_idle_first)
            events += scaled and now >= measure_from
            next_poll += sampling.polling_interval
        world.publish(now, arrivals)
        world.serve(now)
        pool_sizes.append(world.pool)
    world.left_waiting(trace.duration)
    served_weight = sum(world.waits.values())
    mean = sum(w * n for w, n in world.waits.items()) / served_weight if served_weight else 0.0
    return SimResult(
        trace=trace.name,
        policy=policy.name,
        p50_wait=_percentile(world.waits, 0.50),
        p95_wait=_percentile(world.waits, 0.95),
        mean_wait=mean,
        replica_seconds=float(sum(pool_sizes[measure_from:])),
        scale_events=events,
        published=trace.published,
        served=world.acked,
        left=world.queued + world.redelivery + world.in_flight,
        redelivered=world.redelivered,
        replicas=tuple(pool_sizes),
        backlog=_backlog(world.history, trace.duration),
    )


def _simulate_messages(
    trace: Trace,
    policy: Policy,
    workers: WorkerModel,
    pod_start_delay: float,
    start: int,
    measure_from: int,
) -> SimResult:
    """The message-level replay: events in time order within each second, the broker's
    view recorded at each whole second, before the policy polls."""
    world = MessageWorld(trace, workers, pod_start_delay, start, measure_from)
    sampling = policy.sampling
    next_poll = 0.0
    events = 0
    pool_sizes: list[int] = []
    for now in range(trace.duration):
        world.advance(now)
        world.record()
        if now >= next_poll:
            sample = observe(world.history, now, sampling)
            if isinstance(policy, QueueScalerPolicy) and policy.removes_idle_first:
                busy = world.busy_seen(now - sampling.stats_delay)
                wanted = policy.desired(sample, world.pool, float(now), busy)
            else:
                wanted = policy.desired(sample, world.pool, float(now))
            scaled = world.resize(max(0, wanted), now, idle_first=policy.removes_idle_first)
            events += scaled and now >= measure_from
            next_poll += sampling.polling_interval
        pool_sizes.append(world.pool)
    world.advance(trace.duration)
    world.finish(trace.duration)
    waits = sorted(world.waits)
    return SimResult(
        trace=trace.name,
        policy=policy.name,
        p50_wait=_nearest_rank(waits, 0.50),
        p95_wait=_nearest_rank(waits, 0.95),
        mean_wait=sum(waits) / len(waits) if waits else 0.0,
        replica_seconds=float(sum(pool_sizes[measure_from:])) + world.grace_seconds,
        scale_events=events,
        published=trace.published,
        served=world.acked,
        left=world.left,
        redelivered=world.redelivered,
        replicas=tuple(pool_sizes),
        cut_short=world.cut_short,
        grace_seconds=world.grace_seconds,
        backlog=_backlog(world.history, trace.duration),
    )


def _backlog(history: History, duration: int) -> tuple[float, ...]:
    """The broker's ready + unacked over the last `duration` records of a replay."""
    start = max(0, len(history.ready) - duration)
    return tuple(
        ready + unacked
        for ready, unacked in zip(history.ready[start:], history.unacked[start:], strict=True)
    )


class FixedPolicy:
    """A pool that never changes size: the baseline every autoscaler must beat."""

    def __init__(self, replicas: int) -> None:
        self.name = f"fixed-{replicas}"
        self.initial_replicas = replicas
        self.removes_idle_first = False
        self.sampling = Sampling(polling_interval=math.inf)
        self._replicas = replicas

    def desired(self, sample: QueueSample, current: int, now: float) -> int:
        return self._replicas


class OraclePolicy:
    """Knows the whole trace: the fewest replica-seconds that still start every message
    the second it arrives (or, above `max_replicas`, as soon as the full pool can). A lower
    bound on cost at the least wait, not a policy anyone can run.

    It also spares busy replicas when it shrinks (it would set pod-deletion-cost). A replica
    must be requested `pod_start_delay` before the second it is needed and kept
    from then on, so the pool at t is the most needed at any second of [t, t + delay].

    With `workers` (the message-level world), it knows every message's arrival and service
    time, and gives each second the replicas its work needs: the task-seconds of the second
    (every message started on arrival) over `concurrency`, rounded up, as the fluid oracle
    does. Tasks of random length come and go within a second, so a few messages wait a
    little; paying for the most tasks ever in progress at once instead would cost about
    twice the work on a steady load and would flatter every policy. It asks the longest
    start delay ahead (it knows the work, not which pod will be slow to start).
    """

    def __init__(
        self,
        trace: Trace,
        *,
        pod_start_delay: float = 10.0,
        max_replicas: int | None = None,
        workers: WorkerModel | None = None,
    ) -> None:
        self.name = "oracle"
        self.removes_idle_first = True
        self.sampling = Sampling(polling_interval=1.0)
        limit = math.inf if max_replicas is None else max_replicas
        if workers is None:
            needed = _busy_replicas_needed(trace, limit)
            lead = math.ceil(pod_start_delay)
        else:
            slots = limit * workers.concurrency
            busy = busy_per_second(trace, workers.service, workers.seed, slots)
            needed = [math.ceil(work / workers.concurrency - _EMPTY) for work in busy]
            lead = math.ceil(workers.longest_start(pod_start_delay))
        plan = [max(needed[t : t + lead + 1]) for t in range(len(needed))] or [0]
        self._plan = plan
        self.initial_replicas = plan[0]

    def desired(self, sample: QueueSample, current: int, now: float) -> int:
        return self._plan[min(int(now), len(self._plan) - 1)]


def _busy_replicas_needed(trace: Trace, limit: float) -> list[int]:
    """Replicas busy each second when every message starts as early as `limit` replicas
    allow: on arrival when uncapped, else at full pool while a backlog remains. Mirrors the
    engine's accounting (tasks under a second finish within it; longer ones are booked).
    """
    steps = 1.0 / trace.service_rate
    whole = int(steps)
    fraction = steps - whole
    backlog = in_flight = 0.0
    completing: dict[int, float] = {}
    needed = []
    for now, arrivals in enumerate(trace.arrivals):
        in_flight -= completing.pop(now, 0.0)
        backlog += arrivals
        if steps <= 1.0:
            busy = min(backlog * steps, limit)
            backlog -= busy / steps
        else:
            started = min(backlog, max(0.0, limit - in_flight))
            backlog -= started
            for second, share in ((now + whole, 1 - fraction), (now + whole + 1, fraction)):
                completing[second] = completing.get(second, 0.0) + started * share
            in_flight += started
            busy = in_flight
        needed.append(math.ceil(busy - _EMPTY))  # busy <= limit: never above the cap
    return needed


class QueueScalerPolicy:
    """Ours: the operator's own `decide()` and `next_state()`, fed as the operator feeds them.

    Ready and consumer counts come through AMQP (no statistics delay); unacked and the rates
    come from the management API, `stats_delay` seconds old. With `peek_every` (the
    operator's fast path, on by default there) the pool is also looked at between its
    samples, as the engine does each tick: live counts alone, decided early only when
    `plan.calls_now` says so, a full sample at each polling interval.
    """

    def __init__(
        self,
        spec: Mapping[str, Any],
        *,
        stats_delay: float = 5.0,
        initial_replicas: int | None = None,
        name: str = "queuescaler",
        peek_every: float | None = None,
    ) -> None:
        self._spec = parse_spec(spec)
        self._state = ScalerState()
        self._early_ready: int | None = None
        self._next_due = 0.0
        self.name = name
        self.removes_idle_first = self._spec.behavior.scale_down.protect_busy_workers
        """protectBusyWorkers: pods marked by what they hold go first (the message-level
        world also tells `desired` the busy consumers, as the channel listing does)."""
        self.sampling = Sampling(
            polling_interval=peek_every or float(self._spec.polling_interval_seconds),
            count_delay=0.0,
            stats_delay=stats_delay,
        )
        self._peeking = peek_every is not None
        self.initial_replicas = (
            self._spec.min_replicas if initial_replicas is None else initial_replicas
        )
        self.reasons: Counter[str] = Counter()
        """Every decision made (early ones included), by its reason."""
        self.scale_reasons: Counter[str] = Counter()
        """The decisions that resized the pool, by their reason."""

    def desired(
        self, sample: QueueSample, current: int, now: float, busy_workers: int | None = None
    ) -> int:
        spec = self._spec
        early = False
        if now < self._next_due:
            memory = Memory(state=self._state, current_replicas=current,
                            early_ready=self._early_ready)
            # what an AMQP peek gives: ready and consumers, nothing in flight, no rates
            live = QueueSample(sample.ready, 0, sample.consumers, sample.taken_at,
                               complete=False)
            if not (peeked(spec, memory, now) and calls_now(spec, live, memory, now)):
                return current
            sample, early = live, True
        else:
            self._next_due = next_due(now, float(spec.polling_interval_seconds))
        decision = decide(spec, sample, current, self._state, now)
        if decision.replicas < current and busy_workers is not None:
            # the operator looks at its workers only before a scale-down (core.plan)
            decision = decide(spec, sample, current, self._state, now, busy_workers)
        applied = current if spec.dry_run else decision.replicas
        self.reasons[decision.reason] += 1
        if applied != current:
            self.scale_reasons[decision.reason] += 1
        state = next_state(spec, self._state, sample, current, decision, now, applied != current)
        self._state = after_early(self._state, state) if early else state
        self._early_ready = sample.ready if early else None
        return applied
