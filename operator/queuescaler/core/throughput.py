"""How fast messages arrive and how fast one replica works: the rate policy's two inputs. Pure.

Two things make the broker's own figures a poor guide (issue 12):

- Its `rate` fields average over the statistics interval (5 s). At 0.2 msg/s that window
  holds 0 or 1 message, so a rate read from it jumps between 0 and 0.2 on noise. The
  cumulative counters (`message_stats.publish`, `.ack`) differenced over a minute or two
  count every message instead. They are used only where the rate fields are that thin,
  and only over spans long enough that the broker's own refresh of them (every 5 s by
  default) cannot alias into the rate, nor long enough for a clock step to matter.
- Workers hold more than one message. A Celery worker prefetches concurrency x 4 messages,
  a pika worker `prefetch_count`; `unacked` counts them all, started or parked. Dividing
  the ack rate by "replicas holding a message" measures the load a replica carries, not
  what it can do.

So one replica's throughput is *measured* only while the pool is saturated: messages were
ready at two polls in a row with the same consumers, so every consumer's buffer stayed full
and every replica consuming worked at its full concurrency the whole time, whatever its
prefetch; or, where nothing ever stays ready (unlimited prefetch), while the pile held per
consumer grew beyond chance (`outrun`). Then acks / replicas is what a replica does, and
the estimate follows it either way. With pods still starting (fewer consumers than
replicas, `short_while_starting`) acks / replicas is only a lower bound, which raises the
estimate and never lowers it, and no measure; but the pool is short now, so such a poll
pauses the probe (`decision.PROBE_PAUSE_SECONDS`). A pool short of replicas is saturated
just when the backlog policy grows it: ignoring those polls left a prefetch-20 pool's speed
unknown for good (its piles overflow only then), its probe and backlog taking turns at 2
and 3 replicas. Dividing by the consumers instead would read high wherever fewer consumers
are counted than pods ack (pods sharing one Redis consumer name, pods polling with
basic.get, counters spanning a crash loop: review 21). At
any other time only *lower bounds* are known, which may set an unknown estimate or raise
one, never lower it: acks per consumer (none does more than a
replica can), and acks per replica holding a message over a minute of polls where nothing
waited (Little's law: each holds at least one task, at most its concurrency). A 5 s rate
field against the unacked count of one instant is no bound: a backlog drained between
two polls leaves the whole pool's acks in the window and little held at either end.
Being high costs the rate floor its hold (the backlog policy still sizes the pool, as
KEDA's would); being low costs replicas, and `decision.PROBE_DIVISOR` lets a pool whose
speed was never measured shrink until it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Final

from queuescaler.core.sample import QueueSample

RATE_SMOOTHING: Final = 0.3
"""EWMA weight of the newest per-replica throughput observation: a lasting change is 83%
absorbed after five observations, while one odd one moves the estimate by less than a
third. A lower bound read where work waited at the previous poll raises the estimate to
itself at once instead (`per_replica_rate`), within `RATE_OUTLIER_FACTOR`."""

RATE_OUTLIER_FACTOR: Final = 2.0
"""One observation may move the throughput estimate as if it were at most this many times
the estimate (or this fraction of it): a lasting change still arrives in a few ticks, one
glitch (RabbitMQ has reported absurd ack rates after a counter reset) cannot cut the rate
floor to a fraction for minutes. A bound taken at once (`per_replica_rate`) is also held
to what the ack counter confirms over the last 15 s or more, so a lifted rate field is
smoothed as before. Counter-confirmed bounds still read high: at 4x, real pika workers of
0.2 s a message read 7.3 msg/s a replica (session 25), and tasks failing fast took an
estimate of 5 to 111 with no factor, so they too move 2x at most."""

STATS_WINDOW: Final = 5.0
"""Seconds RabbitMQ's rate fields average over (its default statistics interval)."""

MIN_COUNTED: Final = 20
"""Messages a rate must rest on to be more than noise: a rate field above
MIN_COUNTED / STATS_WINDOW (4/s) is used as it is; below it, counters over a span."""

PILES_OUTGROWN: Final = 15
"""Messages by which the consumers' piles must grow, nothing ready, from a poll where each
held one at most, for a pool to have fallen behind (`outgrown`), beside two standard
deviations. Below `MIN_COUNTED`: the real-worker bench's pika pool at prefetch 20 went from
2 or 3 held to 21, where its backlog policy (10 messages per replica) regrew it, and at 20
its probes' failures went unseen (3 -> 2 -> 3 every minute). At 10, one consumer of
concurrency 4 running heavy-tailed tasks at 0.2 msg/s held that many more by chance, and
three of issue 12's worker models missed on its pauses; at 15 none changed."""

MIN_SPAN: Final = 60.0
"""Shortest span counters are differenced over: the broker refreshes them every statistics
interval (5 s by default, up to 60 s on large clusters), so over a shorter span one
refresh more or less would be a large error."""

MAX_SPAN: Final = 900.0
"""Longest: a span beyond it is a clock step or a long outage, not a measurement."""

MAX_RATE: Final = 10_000_000.0
"""Messages per second beyond which a counter difference is a glitch (the listing drops
rate fields above the same bound)."""

HOLDING_SIGMAS: Final = 1.0
"""Standard errors above their mean the replicas seen holding messages are taken at, in
Little's-law bound of a speed already measured (`_most_held`). Over five polls of 3
replicas with 2.4 busy on average, a bound then reads high by chance about one time in
nine, against more than one in two at none (review 26, counted exactly). Two would make it
one in 35, and cost the worker models two rows (slow tasks at prefetch 16 and unlimited,
1.31x and 1.32x the oracle against a target of 1.3x) for a few more scale events saved
(pika prefetch 20 in the simulator, 10 seeds: 59 against 63; 102 with none)."""

KEPT_EVERY: Final = 15.0
"""Seconds between two kept readings: polls closer than this replace the newest one, so
the history spans minutes at any polling interval."""

RATE_HISTORY: Final = 10
"""Readings kept: 2.5 minutes at `KEPT_EVERY`, enough for a span of `MIN_SPAN` and more."""


@dataclass(frozen=True, slots=True)
class Reading:
    """What later ticks difference against: one past sample's counts."""

    taken_at: float
    ready: int
    consumers: int
    holding: int
    """Replicas that held a message then: min(replicas, unacked), at least 1."""
    backlog: int
    """Ready plus unacknowledged then: a pool falling behind grows it."""
    published_total: int | None
    """None when unknown, or when the sample was partial (a missing queue's counter
    would make the sum drop and come back as if it were a reset and a flood)."""
    acked_total: int | None
    complete: bool = True
    """False for a partial sample (`QueueSample.complete`): its counts may miss a queue's
    piles, so it shows no pool keeping up (`outgrown`)."""


@dataclass(frozen=True, slots=True)
class Flow:
    """Messages per second: published to the queue, acknowledged by its consumers."""

    publish: float | None
    ack: float | None
    publish_firm: bool = field(default=False, compare=False)
    """Whether `publish` rests on `MIN_COUNTED` messages or on counters over `MIN_SPAN` or
    more, not on a thin rate field alone: what a run that just restarted, or whose queues
    just changed, has until its readings span a minute (`flow_since`)."""


def reading_of(sample: QueueSample, current_replicas: int) -> Reading:
    counted = sample.complete
    return Reading(
        sample.taken_at,
        sample.ready,
        sample.consumers,
        max(1, min(current_replicas, sample.unacked)),
        sample.ready + sample.unacked,
        sample.published_total if counted else None,
        sample.acked_total if counted else None,
        counted,
    )


def remember(
    readings: tuple[Reading, ...], sample: QueueSample, current_replicas: int
) -> tuple[Reading, ...]:
    """The readings after this sample, oldest first. A counter that went down starts the
    history again (nothing before a reset can be differenced against what follows it); a
    clock that went back does too."""
    new = reading_of(sample, current_replicas)
    if readings and (_reset(readings[-1], new) or new.taken_at < readings[-1].taken_at):
        readings = ()
    if len(readings) >= 2 and readings[-1].taken_at - readings[-2].taken_at < KEPT_EVERY:
        readings = readings[:-1]  # it only stood in for the next poll (polls < KEPT_EVERY)
    return (*readings, new)[-RATE_HISTORY:]


def flow_since(
    readings: tuple[Reading, ...], sample: QueueSample, poll_seconds: float = KEPT_EVERY
) -> Flow:
    """The rates a decision uses: each rate field when it rests on `MIN_COUNTED` messages,
    else the counters over the shortest span of kept readings (at least `MIN_SPAN`) that
    counts as many, or the longest there is. A busy tick inside the span would be another
    load, not more of this one: when a flood stops, the rate drops at once. Nor does it
    reach across a gap between readings far longer than the polls (`_gap_limit`): a clock
    that stepped forward, or an outage, is no span to divide by."""
    publish, ack = _sane(sample.publish_rate), _sane(sample.ack_rate)
    firm = publish is not None and publish * STATS_WINDOW >= MIN_COUNTED
    if sample.complete and readings:
        limit = _gap_limit(poll_seconds)
        if not firm:
            publish, firm = _counted(publish, readings, sample, sample.published_total,
                                     _PUBLISHED, limit)
        if ack is None or ack * STATS_WINDOW < MIN_COUNTED:
            ack, _ = _counted(ack, readings, sample, sample.acked_total, _ACKED, limit)
    return Flow(publish, ack, firm)


_PUBLISHED: Final = attrgetter("published_total")
_ACKED: Final = attrgetter("acked_total")


def saturated(previous: Reading | None, sample: QueueSample, current_replicas: int) -> bool:
    """Whether every replica consuming worked flat out since the previous reading: messages
    were ready at both ends (the broker hands a ready message to any consumer with room, so
    none had room), with the same consumers throughout.

    Only a queue every consumer shares says that (`QueueSample.shared`). A partitioned one
    (a Kafka topic, whatever caps the spec sets) counts as ready the messages in hand too,
    and lag on one partition says nothing of the members that own the others: read as
    saturation, every poll of a busy group "measured" the load per replica, and the rate
    floor held a pool at its peak for as long as traffic lasted (found by review)."""
    return (
        previous is not None
        and current_replicas > 0
        and sample.shared
        and previous.ready > 0
        and sample.ready > 0
        and previous.consumers == sample.consumers > 0
    )


def outrun(readings: tuple[Reading, ...], sample: QueueSample, current_replicas: int) -> bool:
    """Whether the pool worked flat out with nothing ready: the messages held per consumer
    grew beyond chance (`falling_behind`), and each consumer could hold one at the previous
    reading too. With unlimited prefetch nothing ever stays ready, so `saturated` never
    holds and the speed would stay unmeasured for ever: a probe below
    the pool's need then strands messages in the piles of the consumers that stay. No
    consumer joined since the previous reading (it would not have worked the whole span, and
    the speed would read low); one that left is no harm, the rate covering the last seconds
    (a probe that shrank the pool is measured at the next poll, not the one after)."""
    previous = readings[-1] if readings else None
    return (
        previous is not None
        and current_replicas > 0
        and sample.shared
        and previous.consumers >= sample.consumers > 0
        and previous.backlog >= previous.consumers > 0
        and falling_behind(readings, sample)
    )


def per_replica_rate(
    estimate: float | None,
    readings: tuple[Reading, ...],
    sample: QueueSample,
    current_replicas: int,
    flow: Flow | None = None,
    poll_seconds: float = KEPT_EVERY,
    measured_before: bool = False,
) -> float | None:
    """The per-replica throughput estimate after this sample (see the module docstring);
    `flow` is flow_since(readings, sample, poll_seconds) when the caller has it already.
    `measured_before`: the estimate was measured, so a lower bound raises it only beyond
    chance (`_most_held`). An unmeasured one takes the bound as it reads: the probe halves
    what it asks, and an estimate read high costs no more than the probe would, while a
    correction there left steady pools unmeasured and probing (review 25). Not every pool
    that shrinks too far saturates and is measured: a prefetch-20 pool's piles take the
    shortfall, and its estimate may still read high until the backlog policy regrows it."""
    if estimate is not None and not 0.0 < estimate < math.inf:
        estimate = None  # a corrupt value (restored from a hand-edited status, say)
    if current_replicas <= 0 or sample.consumers <= 0:
        return estimate  # acks with no consumer came from pods on their way out
    measured = saturated(readings[-1] if readings else None, sample, current_replicas) or (
        outrun(readings, sample, current_replicas))
    if measured:  # the rate field covers seconds that were saturated; counters may not
        ack = _sane(sample.ack_rate) or (flow or flow_since(readings, sample, poll_seconds)).ack
        observed = None if ack is None else ack / current_replicas
    else:
        observed = _lower_bound(readings, sample, current_replicas, poll_seconds,
                                HOLDING_SIGMAS if measured_before else 0.0)
    if observed is None or not observed > 0.0:
        return estimate
    if estimate is None:
        return observed
    observed = min(max(observed, estimate / RATE_OUTLIER_FACTOR), estimate * RATE_OUTLIER_FACTOR)
    # with pods still starting, acks / replicas is only a lower bound: it may raise the
    # estimate, never lower it
    bound_only = not measured or sample.consumers < current_replicas
    if bound_only and observed <= estimate:
        return estimate
    if bound_only and not measured_before and readings and readings[-1].ready:
        # Work waited at the previous poll: every consumer worked flat out until it ran
        # out inside the window (with pods starting, throughout it), so the bound reads
        # near a replica's speed, not the load it carries. Smoothed, a flood's wake-up
        # crept 6 -> 8 -> 10 -> 13 -> 15 msg/s over a minute against a speed of 40, and
        # the rate floor held 9 replicas where 5 carried the load. A measured speed is
        # raised only by the EWMA, beyond chance (`_most_held`). As far as the ack counter
        # confirms it: a rate field lifted by a glitch (a reset, early acks) is not.
        confirmed = _acked_since_kept(readings, sample, current_replicas)
        if confirmed is not None:
            smoothed = estimate + RATE_SMOOTHING * (observed - estimate)
            return max(smoothed, min(observed, confirmed))
    return estimate + RATE_SMOOTHING * (observed - estimate)


def _acked_since_kept(
    readings: tuple[Reading, ...], sample: QueueSample, current_replicas: int
) -> float | None:
    """The ack counter's rate since the newest reading at least `KEPT_EVERY` older (three
    statistics intervals: a counter refreshed every 5 s, differenced over one, read 0 or
    twice the rate; review 40), over `_most_consumers`; None without counters at both
    ends, across a reset, or over a gap no poll makes (a clock step, an outage)."""
    after = sample.acked_total if sample.complete else None
    if after is None:
        return None
    for reading in reversed(readings):
        seconds = sample.taken_at - reading.taken_at
        if seconds < KEPT_EVERY:
            continue
        before = reading.acked_total
        if before is None or after < before or seconds > 2.0 * _gap_limit(KEPT_EVERY):
            return None
        return (after - before) / seconds / _most_consumers(readings, sample, current_replicas)
    return None


def _lower_bound(
    readings: tuple[Reading, ...], sample: QueueSample, current_replicas: int,
    poll_seconds: float, sigmas: float,
) -> float | None:
    """The better of the two lower bounds (module docstring), None when neither says
    anything yet."""
    previous = readings[-1] if readings else None
    per_consumer = acked_per_consumer(readings, sample, current_replicas)
    if per_consumer is not None and previous and previous.ready and sample.ready:
        return per_consumer  # work waited throughout: every consumer was busy
    if not readings:
        return per_consumer
    counted = _counted_bound(readings, sample, current_replicas, poll_seconds, sigmas)
    if counted is None or (per_consumer is not None and per_consumer > counted):
        return per_consumer
    return counted


def acked_per_consumer(
    readings: tuple[Reading, ...], sample: QueueSample, current_replicas: int
) -> float | None:
    """The ack rate field over the most consumers (or replicas) there were now or at any
    kept reading, when it rests on `MIN_COUNTED` messages, else None: a lower bound of one
    replica's speed *now* (no consumer does more than a replica can), where the estimate is
    the highest bound ever seen, and the speed the parked cap divides by while the speed is
    unmeasured (`decision`: up to 2.5 minutes after a scale-down the cap is then looser,
    more replicas, not fewer). The kept readings, not only the last: statistics may be a
    minute old (a busy broker's), and 78 replicas' acks draining a burst, read after the
    pool went down to 12, made each of the 12 three times as fast as it was (the rate
    floor then took turns with the backlog policy, 9 <-> 20, for the rest of the hour).
    Not a strict bound still: early acks as a pod starts (its first `concurrency` tasks at
    once), pods in warm shutdown acking without a consumer, or a counter reset lift it,
    for a window or by about 2x at most. A worker consuming k queues of one QueueScaler
    counts k times: lower."""
    field = _sane(sample.ack_rate)
    if not field or field * STATS_WINDOW < MIN_COUNTED:
        return None
    return field / _most_consumers(readings, sample, current_replicas)


def _most_consumers(
    readings: tuple[Reading, ...], sample: QueueSample, current_replicas: int
) -> int:
    """What acks are divided by for a lower bound: the most consumers there were now or at
    any kept reading, or the replicas if more, at least 1 (`acked_per_consumer`)."""
    before = max((r.consumers for r in readings), default=0)
    return max(1, before, sample.consumers, current_replicas)


def _counted_bound(
    readings: tuple[Reading, ...], sample: QueueSample, current_replicas: int,
    poll_seconds: float, sigmas: float,
) -> float | None:
    """Little's law over the kept readings: acks over a minute or more and 20 or more,
    against the mean of the replicas holding messages at each poll of the span, while
    nothing waited (a backlog drained in the span outran what the polls saw held) and
    something was held at every poll (with early acks, Celery's default, the running
    tasks are acknowledged already: acks with nothing held say nothing of one replica)."""
    after = sample.acked_total if sample.complete else None
    if after is None:
        return None
    now = sample.taken_at
    if now - readings[0].taken_at < MIN_SPAN:
        return None  # the kept readings do not span a minute yet
    limit = _gap_limit(poll_seconds)
    if not sample.unacked:
        return None  # acks while nothing is held: early acks hide the running tasks
    holding = [min(current_replicas, sample.unacked)]
    later = now
    for reading in reversed(readings):
        before, taken_at = reading.acked_total, reading.taken_at
        seconds = now - taken_at
        if before is None or before > after or seconds > MAX_SPAN or later - taken_at > limit:
            return None
        if reading.ready:
            return None  # a backlog drained in the span: its acks outran what polls saw held
        if not reading.backlog:
            return None  # acks while nothing was held: early acks hide the running tasks
        later = taken_at
        holding.append(reading.holding)
        counted = after - before
        if counted > MAX_RATE * seconds:
            return None  # a glitch, and beyond what a float division may take
        if seconds >= MIN_SPAN and counted >= MIN_COUNTED:
            return counted / seconds / _most_held(holding, sigmas)
    return None


def _most_held(holding: list[int], sigmas: float) -> float:
    """The mean replicas holding a message, from a few polls' counts, `sigmas` standard
    errors higher: a handful of counts of 2.4 busy pods on average read 1.8 as often as 3,
    and a bound that only ever raises the estimate kept the lucky low ones (a prefetch-20
    pool's measured 2.5 msg/s crept to 3.24, and since its piles never let two polls see
    work waiting, nothing measured it again: the rate floor let it shrink below its need
    every minute). Pools that hold a message in every replica (Celery's prefetch) count
    the same at every poll and lose nothing; so do counts equally lucky at every poll,
    which the spread cannot show."""
    # by hand: statistics.stdev's exact arithmetic costs 15x as much, twice a tick
    polls = len(holding)
    mean = sum(holding) / polls
    spread = math.sqrt(sum((h - mean) ** 2 for h in holding) / (polls - 1)) if polls > 1 else 0.0
    return mean + sigmas * spread / math.sqrt(polls)


def measures(
    readings: tuple[Reading, ...], sample: QueueSample, current_replicas: int, flow: Flow
) -> bool:
    """Whether this sample measures a replica's speed: saturated, with acks to divide, and
    every replica consuming (`short_while_starting` is the same with pods still starting)."""
    return (_saturated_with_acks(readings, sample, current_replicas, flow)
            and sample.consumers >= current_replicas)


def short_while_starting(
    readings: tuple[Reading, ...], sample: QueueSample, current_replicas: int, flow: Flow
) -> bool:
    """Whether the pods consuming are saturated while others still start: the pool is short
    now (no probe), but its acks over every replica are only a lower bound of the speed,
    which is no measure (review 22: taken as one, two such polls fixed a speed 12x too low
    as measured, and a pool held twice its need for hours; or one 20x too high, and p95
    waits 2-4x longer)."""
    return (_saturated_with_acks(readings, sample, current_replicas, flow)
            and sample.consumers < current_replicas)


def _saturated_with_acks(
    readings: tuple[Reading, ...], sample: QueueSample, current_replicas: int, flow: Flow
) -> bool:
    return (
        flow.ack is not None
        and flow.ack > 0.0
        and (saturated(readings[-1] if readings else None, sample, current_replicas)
             or outrun(readings, sample, current_replicas))
    )


def falling_behind(readings: tuple[Reading, ...], sample: QueueSample) -> bool:
    """Whether, with nothing ready now or at any kept reading, the messages held per
    consumer grew over the readings by more than chance (`_grew_beyond_chance`). With
    unlimited prefetch nothing stays ready, and a growing pile of unacknowledged messages
    is all that shows a pool working flat out (`outrun` measures its speed then)."""
    return not sample.ready and _grew_beyond_chance(readings, sample.unacked, sample.consumers)


def draining(
    readings: tuple[Reading, ...], sample: QueueSample, poll_seconds: float = KEPT_EVERY
) -> int | None:
    """The messages held at the previous poll when fewer are held now, by more than chance
    (`_beyond_chance`), and nothing was ready then or now, on one queue every consumer
    takes from; else None. The pool works off what its consumers hold faster than it
    arrives, and none of it can move to a new replica: it is no reason to grow
    (`decision._raw_recommendation`). A pile that barely shrinks is no such sign (review
    21: 1,000 held falling to 998 on 4 replicas would take hours; replicas that take new
    arrivals away from the piles drain them). Not across a gap far longer than the polls
    (an outage, a clock step), nor from a partial sample."""
    if not readings or not sample.shared or sample.ready or not sample.complete:
        return None
    previous = readings[-1]
    if (previous.ready or not 0.0 < sample.taken_at - previous.taken_at <= _gap_limit(
            poll_seconds) or not _beyond_chance(previous.backlog - sample.unacked,
                                                previous.backlog)):
        return None
    return previous.backlog


def work_piling_up(readings: tuple[Reading, ...], sample: QueueSample) -> bool:
    """`falling_behind` with the messages ready now counted as held: a pool that may not
    shrink to learn its speed. Work waiting now never makes a pool look less short
    (review 18: one ready message beside a pile that had grown by 30 turned the probe on,
    and the floor of 10 replicas that an empty queue held went to 5)."""
    return _grew_beyond_chance(readings, sample.ready + sample.unacked, sample.consumers)


def outgrown(readings: tuple[Reading, ...], sample: QueueSample) -> bool:
    """Whether the consumers' piles, nothing ready now or at any of `readings`, grew beyond
    chance (`PILES_OUTGROWN` messages and two standard deviations) from the lowest of
    `readings`, per consumer, where each consumer held one message at most: a pool that
    kept up and then fell behind. One still working off piles at every reading is left
    out: with unlimited prefetch a few consumers' piles grow on their slow tasks while the
    rest idle."""
    if sample.ready or not sample.consumers or not _quiet(readings):
        return False
    low = min((r for r in readings if r.complete), key=lambda r: r.backlog / r.consumers,
              default=None)
    if low is None or low.backlog > low.consumers:
        return False
    before = low.backlog * sample.consumers / low.consumers
    return _beyond_chance(sample.unacked - before, before, PILES_OUTGROWN)


def _grew_beyond_chance(readings: tuple[Reading, ...], held: int, consumers: int) -> bool:
    """Whether `held` messages across `consumers` grew over the kept readings, all with
    nothing ready, by at least `MIN_COUNTED` in all and two standard deviations of a count
    that size."""
    if not readings or not _quiet(readings):
        return False  # work waiting in the queue (the backlog policy sees it), or a start
    first = readings[0]
    # per consumer: a pool that grew holds more prefetched messages without falling behind
    before = first.backlog * max(1, consumers) / max(1, first.consumers)
    return _beyond_chance(held - before, before)


def _quiet(readings: tuple[Reading, ...]) -> bool:
    """Whether every reading had consumers and nothing ready (true of none at all)."""
    return not any(r.ready or not r.consumers for r in readings)


def _beyond_chance(change: float, before: float, least: int = MIN_COUNTED) -> bool:
    """Whether a count of `before` that grew (or fell, as the caller measures) by `change`
    moved beyond chance: by at least `least` messages and two standard deviations."""
    return change >= least and change > 2.0 * math.sqrt(before)


def _counted(
    field: float | None,
    readings: tuple[Reading, ...],
    sample: QueueSample,
    after: int | None,
    total: Callable[[Reading], int | None],
    gap_limit: float,
) -> tuple[float | None, bool]:
    """A rate field thin on messages replaced by its counter over a span (see flow_since);
    a rate with no field at all (a Redis stream's: counters only) is the counter's over
    the shortest span of a minute or more. Also whether it is the counter's (a span of
    `MIN_SPAN` or more) rather than the thin field's."""
    if after is None:
        return field, False
    best, counted, later = field, -1, sample.taken_at
    spanned = False
    for reading in reversed(readings):
        before, seconds = total(reading), sample.taken_at - reading.taken_at
        gap, later = later - reading.taken_at, reading.taken_at
        if before is None or before > after or not 0.0 < seconds <= MAX_SPAN:
            break
        if gap > gap_limit:
            break
        span = after - before
        if span > MAX_RATE * seconds:
            break  # a glitch, and beyond what a float division may take
        if field is not None and counted >= 0 and span - counted >= MIN_COUNTED:
            break  # a thin field, and an older tick busy on its own: another load
        counted = span
        if seconds >= MIN_SPAN:
            best, spanned = span / seconds, True
            if span >= MIN_COUNTED:
                break
    return best, spanned


def _gap_limit(poll_seconds: float) -> float:
    """The longest gap between two readings a span may cross: a few polls (or kept
    readings) late, not a clock step or an outage."""
    return 3.0 * max(KEPT_EVERY, poll_seconds)


def _sane(rate: float | None) -> float | None:
    """A rate the policy may use: negative, NaN and infinite ones are unknown."""
    return rate if rate is not None and 0.0 <= rate < math.inf else None


def _reset(before: Reading, after: Reading) -> bool:
    return any(
        old is not None and new is not None and new < old
        for old, new in ((before.published_total, after.published_total),
                         (before.acked_total, after.acked_total))
    )
