"""Real workers for the simulator: prefetch, concurrency, uneven tasks, slow pods. Pure.

The fluid world of `sim.simulator` has replicas that hold exactly one message and tasks
that all last the same; that world cannot see what prefetch does to a pool (issue 12). This
one replays the same trace message by message, in continuous time:

- arrivals: the trace's count for each second, spread uniformly over that second (a
  Poisson count with uniform times is a Poisson process); service times drawn per message
  (constant, exponential, lognormal or Pareto, with the trace's mean). Both come from RNGs
  seeded by the trace's name and `WorkerModel.seed`, and belong to the message: every
  policy replays the very same work, whichever replica ends up doing it;
- one consumer per replica (as a Celery worker has), holding up to
  `prefetch x concurrency` unacknowledged messages (`prefetch` None: no limit, Celery's
  `worker_prefetch_multiplier = 0`), of which at most `concurrency` are in progress; the
  others are parked in the worker's buffer, where no other replica can take them. A
  message is acknowledged when its task ends (`task_acks_late`). The broker hands ready
  messages round-robin to the consumers with room, as RabbitMQ does;
- a new pod becomes a consumer after its start delay (a fixed one, or one drawn per pod
  from `start_delay`); a removed pod stops gracefully at once: it cancels its consumer,
  its parked messages go back to the head of the queue, and its tasks in progress run on
  for at most `grace_period` seconds (the pod is paid for meanwhile); a task still running
  then is killed and its message requeued (`cut_short`);
- the broker's figures: `ready` = messages in the queue, `unacked` = in progress + parked
  (stopping pods included), `consumers` = active consumers, and cumulative published,
  delivered and acknowledged counts, recorded at each whole second for `sampling.observe`.

Events inside a second are handled in time order; a policy polls on whole seconds.
"""

from __future__ import annotations

import enum
import functools
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from queuescaler.sim.sampling import History, clamp_index
from queuescaler.sim.traces import Trace


class ServiceKind(enum.StrEnum):
    """The law of one task's duration."""

    CONSTANT = "constant"
    EXPONENTIAL = "exponential"
    LOGNORMAL = "lognormal"
    PARETO = "pareto"


@dataclass(frozen=True, slots=True)
class ServiceTimes:
    """How long tasks take, around the trace's mean (1 / its service rate)."""

    kind: ServiceKind = ServiceKind.EXPONENTIAL
    shape: float = 1.5
    """Lognormal: the sigma of the log (1.5: a p99 about 10x the mean). Pareto: alpha (> 1
    for a finite mean; below 2 the variance is infinite). Ignored by the others."""

    def __post_init__(self) -> None:
        if self.kind is ServiceKind.PARETO and not self.shape > 1.0:
            raise ValueError("a Pareto law needs alpha > 1 to have a mean")
        if self.kind is ServiceKind.LOGNORMAL and not self.shape > 0.0:
            raise ValueError("a lognormal law needs sigma > 0")

    @property
    def heavy_tailed(self) -> bool:
        return self.kind in (ServiceKind.LOGNORMAL, ServiceKind.PARETO)

    @property
    def label(self) -> str:
        if self.kind is ServiceKind.LOGNORMAL:
            return f"lognormal s={self.shape:g}"
        if self.kind is ServiceKind.PARETO:
            return f"Pareto a={self.shape:g}"
        return str(self.kind)

    def sampler(self, rng: random.Random, mean: float) -> Callable[[], float]:
        """Draws of one task's duration, in seconds, with mean `mean`."""
        if self.kind is ServiceKind.CONSTANT:
            return lambda: mean
        if self.kind is ServiceKind.EXPONENTIAL:
            rate = 1.0 / mean
            return lambda: rng.expovariate(rate)
        if self.kind is ServiceKind.LOGNORMAL:
            sigma = self.shape
            mu = math.log(mean) - sigma * sigma / 2
            return lambda: rng.lognormvariate(mu, sigma)
        alpha = self.shape
        scale = mean * (alpha - 1) / alpha
        return lambda: scale * rng.paretovariate(alpha)


LIGHT = ServiceTimes(ServiceKind.EXPONENTIAL)
HEAVY = ServiceTimes(ServiceKind.LOGNORMAL, 1.5)


@dataclass(frozen=True, slots=True)
class WorkerModel:
    """One replica as a Celery worker (or a pika consumer) really runs."""

    prefetch: int | None = 1
    """Celery's `worker_prefetch_multiplier`: the consumer holds up to prefetch x
    concurrency unacknowledged messages (pika: `prefetch_count` = that product). None: no
    limit (Celery's 0), the broker pushes every ready message to the consumers."""
    concurrency: int = 1
    """Tasks in progress at once per replica (Celery's `--concurrency`)."""
    service: ServiceTimes = LIGHT
    start_delay: tuple[float, float] | None = None
    """Each new pod's start delay drawn uniformly from [low, high] (seeded); None: the
    `pod_start_delay` given to `simulate`."""
    grace_period: float = 30.0
    """terminationGracePeriodSeconds: how long a stopping worker may finish its tasks."""
    seed: int = 0
    """Seeds the arrival times within each second, the service times and the pod delays."""

    def __post_init__(self) -> None:
        if self.prefetch is not None and self.prefetch < 1:
            raise ValueError("prefetch must be >= 1 (None for no limit)")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.start_delay is not None and not 0 <= self.start_delay[0] <= self.start_delay[1]:
            raise ValueError("start_delay must be (low, high) with 0 <= low <= high")
        if self.grace_period < 0:
            raise ValueError("grace_period must be >= 0")

    @property
    def prefetch_limit(self) -> float:
        """Unacknowledged messages one consumer may hold."""
        return math.inf if self.prefetch is None else float(self.prefetch * self.concurrency)

    @property
    def label(self) -> str:
        prefetch = "unlimited" if self.prefetch is None else str(self.prefetch)
        return f"prefetch {prefetch}, concurrency {self.concurrency}, {self.service.label}"

    def longest_start(self, pod_start_delay: float) -> float:
        return pod_start_delay if self.start_delay is None else self.start_delay[1]


@functools.lru_cache(maxsize=8)
def messages(
    trace: Trace, service: ServiceTimes, seed: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Every message of the trace: its arrival time and its service time, in arrival order.

    Arrival times depend on the trace and the seed only, so light and heavy tasks meet the
    same arrivals; service times on the law too, never on the worker's prefetch or
    concurrency, so every worker model and policy replays the same work.
    """
    placing = random.Random(f"arrivals/{trace.name}/{seed}")
    timing = random.Random(f"service/{trace.name}/{seed}/{service.label}")
    draw = service.sampler(timing, 1.0 / trace.service_rate)
    arrivals: list[float] = []
    for second, count in enumerate(trace.arrivals):
        if count:
            arrivals.extend(sorted(second + placing.random() for _ in range(count)))
    return tuple(arrivals), tuple(draw() for _ in arrivals)


@functools.lru_cache(maxsize=8)
def busy_per_second(
    trace: Trace, service: ServiceTimes, seed: int, slots: float
) -> tuple[float, ...]:
    """Task-seconds worked during each second of the trace when every message starts on
    arrival, or as soon as one of `slots` is free (first come, first served): the work of
    each second, which `slots` replicas' worth of consumers would have to do."""
    arrivals, services = messages(trace, service, seed)
    duration = trace.duration
    busy = [0.0] * (duration + 1)
    whole = [0] * (duration + 2)  # difference array of seconds fully covered by one task
    ends: list[float] = []
    for arrival, length in zip(arrivals, services, strict=True):
        start = arrival
        if len(ends) >= slots:
            start = max(arrival, heapq.heappop(ends))
        end = start + length
        heapq.heappush(ends, end)
        first, last = int(start), min(int(end), duration)
        if first >= duration:
            continue
        if first == last:
            busy[first] += end - start
            continue
        busy[first] += first + 1 - start
        whole[first + 1] += 1
        whole[last] -= 1
        busy[last] += end - last
    covering = 0
    for second in range(duration):
        covering += whole[second]
        busy[second] += covering
    return tuple(busy[:duration])


class _Replica:
    """One pod: starting, then a consumer, then (once removed) stopping."""

    __slots__ = ("active", "cancelled", "listed", "parked", "running", "stopped_at")

    def __init__(self) -> None:
        self.active = False
        """Ready and consuming."""
        self.cancelled = False
        """Removed before it was ready."""
        self.listed = False
        """Has an entry in the broker's round-robin of consumers with room."""
        self.parked: deque[int] = deque()
        self.running: set[int] = set()
        self.stopped_at: float | None = None


_Event = tuple[float, int, _Replica]
"""(time, key, replica). A key >= 0 is a message whose task ends then (message numbers
are unique, so the replica is never compared); a negative key, unique too, is a pod's
event: it becomes ready if it was never stopped, else its grace period ends."""


class MessageWorld:
    """The mutable state of one message-level replay; `simulate` drives it."""

    def __init__(
        self,
        trace: Trace,
        model: WorkerModel,
        pod_start_delay: float,
        initial_replicas: int,
        measure_from: int = 0,
    ) -> None:
        self.arrival, self.service = messages(trace, model.service, model.seed)
        self.measure_from = measure_from
        self.model = model
        self.limit = model.prefetch_limit
        self.concurrency = model.concurrency
        self.pod_start_delay = pod_start_delay
        self.delays = random.Random(f"pods/{trace.name}/{model.seed}")
        self.next_message = 0
        self.started = bytearray(len(self.arrival))
        self.waits: list[float] = []
        self.queue: deque[int] = deque()
        self.events: list[_Event] = []
        self.pod_keys = itertools.count(-1, -1)
        self.ready: list[_Replica] = []
        """Consumers, oldest first."""
        self.starting: list[_Replica] = []
        """Pods not ready yet, oldest first."""
        self.stopping: list[_Replica] = []
        self.credit: deque[_Replica] = deque()
        """The broker's round-robin of consumers with room for one more message."""
        self.published = self.acked = self.delivered = 0
        self.redelivered = self.cut_short = 0
        """Every delivery ends in an ack or a return to the queue: unacked is
        delivered - acked - redelivered."""
        self.grace_seconds = 0.0
        self.history = History()
        self.busy: list[int] = []
        """Consumers holding a message, at each recorded second."""
        for _ in range(initial_replicas):
            self._become_ready(_Replica(), 0.0)

    @property
    def pool(self) -> int:
        """What the Deployment's replica count says: ready and starting pods."""
        return len(self.ready) + len(self.starting)

    @property
    def unacked(self) -> int:
        """Messages delivered and not yet acknowledged: in progress and parked."""
        return self.delivered - self.acked - self.redelivered

    # --- time ---------------------------------------------------------------------------

    def advance(self, until: float) -> None:
        """Handle every arrival and event strictly before `until`, in time order (a task
        ending at the very instant a message arrives frees its slot first).

        The hot loop of the replay: one pass per arrival and per task end, so the common
        steps are written out here rather than spread over small methods.
        """
        arrival = self.arrival
        events = self.events
        queue = self.queue
        credit = self.credit
        heappop = heapq.heappop
        total = len(arrival)
        index = self.next_message
        next_arrival = arrival[index] if index < total else math.inf
        acked = 0
        while True:
            if events and events[0][0] <= next_arrival:
                time, key, replica = events[0]
                if time >= until:
                    break
                heappop(events)
                if key < 0:
                    self._pod_event(replica, time)
                    continue
                running = replica.running
                if key not in running:  # killed at the end of its grace period
                    continue
                running.remove(key)
                acked += 1
                if replica.parked:
                    self._begin(replica, replica.parked.popleft(), time)
                if replica.active:
                    if not replica.listed:
                        replica.listed = True
                        credit.append(replica)
                    if queue:
                        self._dispatch(time)
                elif not running:  # a stopping worker finished its last task
                    self._gone(replica, time)
                continue
            if next_arrival >= until:
                break
            queue.append(index)
            index += 1
            if credit:
                self._dispatch(next_arrival)
            next_arrival = arrival[index] if index < total else math.inf
        self.published += index - self.next_message
        self.next_message = index
        self.acked += acked

    def _pod_event(self, replica: _Replica, time: float) -> None:
        if replica.stopped_at is None:
            if not replica.cancelled:
                self.starting.remove(replica)
                self._become_ready(replica, time)
        else:
            self._deadline(replica, time)

    def record(self) -> None:
        """The broker's view now, for the sample of any later poll."""
        self.history.record(
            len(self.queue),
            self.unacked,
            len(self.ready),
            self.published,
            self.acked,
            self.delivered,
        )
        self.busy.append(sum(1 for r in self.ready if r.running or r.parked))

    def busy_seen(self, time: float) -> int:
        """Consumers holding a message at `time` (whole seconds, clamped to those
        recorded): what the broker's channel listing, as old as its statistics, shows the
        operator's busy-worker protection."""
        return self.busy[clamp_index(time, len(self.busy))]

    # --- the broker and the workers -------------------------------------------------------

    def _dispatch(self, time: float) -> None:
        """The broker hands ready messages round-robin to the consumers with room; a worker
        starts each at once while it has a free slot, else parks it."""
        queue = self.queue
        credit = self.credit
        limit = self.limit
        concurrency = self.concurrency
        started = self.started
        arrival = self.arrival
        since = self.measure_from
        delivered = 0
        while queue and credit:
            replica = credit.popleft()
            if not replica.active:
                replica.listed = False
                continue
            message = queue.popleft()
            delivered += 1
            running = replica.running
            if len(running) < concurrency:  # `_begin`, written out: the hottest path
                running.add(message)
                if not started[message]:
                    started[message] = 1
                    arrived = arrival[message]
                    if arrived >= since:
                        self.waits.append(time - arrived)
                heapq.heappush(self.events, (time + self.service[message], message, replica))
            else:
                replica.parked.append(message)
            if len(running) + len(replica.parked) < limit:
                credit.append(replica)
            else:
                replica.listed = False
        self.delivered += delivered

    def _begin(self, replica: _Replica, message: int, time: float) -> None:
        """Start `message` on `replica`: its wait counts the first time it starts, and its
        end is booked."""
        replica.running.add(message)
        started = self.started
        if not started[message]:
            started[message] = 1
            arrived = self.arrival[message]
            if arrived >= self.measure_from:
                self.waits.append(time - arrived)
        heapq.heappush(self.events, (time + self.service[message], message, replica))

    def _become_ready(self, replica: _Replica, time: float) -> None:
        replica.active = True
        replica.listed = True
        self.ready.append(replica)
        self.credit.append(replica)
        if self.queue:
            self._dispatch(time)

    def _deadline(self, replica: _Replica, time: float) -> None:
        if replica.stopped_at is None or replica not in self.stopping:
            return
        killed = sorted(replica.running, reverse=True)
        self.queue.extendleft(killed)  # back at the head, oldest first
        self.redelivered += len(killed)
        self.cut_short += len(killed)
        replica.running.clear()
        self._gone(replica, time)
        if self.credit:
            self._dispatch(time)

    def _gone(self, replica: _Replica, time: float) -> None:
        self._pay_grace(replica, time)
        self.stopping.remove(replica)

    def _pay_grace(self, replica: _Replica, time: float) -> None:
        assert replica.stopped_at is not None
        self.grace_seconds += max(0.0, time - max(replica.stopped_at, self.measure_from))

    # --- the pool -------------------------------------------------------------------------

    def resize(self, wanted: int, now: int, *, idle_first: bool) -> bool:
        current = self.pool
        if wanted > current:
            for _ in range(wanted - current):
                self._create(now)
        elif wanted < current:
            self._remove(current - wanted, now, idle_first=idle_first)
        return wanted != current

    def _create(self, now: int) -> None:
        replica = _Replica()
        bounds = self.model.start_delay
        delay = self.pod_start_delay if bounds is None else self.delays.uniform(*bounds)
        self.starting.append(replica)
        heapq.heappush(self.events, (now + delay, next(self.pod_keys), replica))

    def _remove(self, count: int, now: int, *, idle_first: bool) -> None:
        while count and self.starting:  # pods not yet ready go first, newest first
            self.starting.pop().cancelled = True
            count -= 1
        if not count:
            return
        if idle_first:  # the oracle: the pods holding the fewest messages, newest first
            order = sorted(
                range(len(self.ready)),
                key=lambda i: (len(self.ready[i].running) + len(self.ready[i].parked), -i),
            )
            victims = [self.ready[i] for i in order[:count]]
        else:  # the ReplicaSet controller: blind to work, the most recently ready first
            victims = self.ready[-count:]
        for replica in victims:
            self._stop(replica, float(now))
        if self.credit and self.queue:
            self._dispatch(float(now))

    def _stop(self, replica: _Replica, time: float) -> None:
        replica.active = False
        self.ready.remove(replica)
        parked = replica.parked
        if parked:
            self.queue.extendleft(reversed(parked))  # back at the head, in their order
            self.redelivered += len(parked)
            parked.clear()
        if replica.running:
            replica.stopped_at = time
            self.stopping.append(replica)
            heapq.heappush(
                self.events,
                (time + self.model.grace_period, next(self.pod_keys), replica),
            )

    # --- the end --------------------------------------------------------------------------

    def finish(self, end: int) -> None:
        """Close the books: pods still stopping are paid up to the end, and messages never
        started count with the wait they had when the trace ended."""
        for replica in self.stopping:
            self._pay_grace(replica, end)
        arrival = self.arrival
        started = self.started
        since = self.measure_from
        self.waits.extend(
            end - arrival[m] for m in range(len(arrival)) if not started[m] and arrival[m] >= since
        )

    @property
    def left(self) -> int:
        return len(self.queue) + self.unacked
