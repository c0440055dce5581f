"""What a broker source reports about a queue: the one input every policy reads. Pure.

Also the words every source shares: which queue (`QueueRef`), why a queue could not be
sampled (`ErrorKind`, `SourceError`), and which clients hold messages (`BrokerClient`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class ErrorKind(enum.StrEnum):
    """Why sampling failed: becomes a condition reason and a metric label, so it stays closed."""

    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    AUTH = "auth"
    TLS_FAILED = "tls-failed"
    """The broker's certificate did not verify against the CA the Secret gives (or the
    handshake failed): like a refused password, fixed in the Secret, which is read again."""
    VHOST_NOT_FOUND = "vhost-not-found"
    QUEUE_NOT_FOUND = "queue-not-found"
    BAD_RESPONSE = "bad-response"
    STATS_PENDING = "stats-pending"
    """A new queue the broker lists by name only: its statistics are not out yet."""
    BAD_CONFIG = "bad-config"


class SourceError(Exception):
    """A sampling failure of a known kind, with a message already free of credentials."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class QueueRef:
    """A queue on a broker, within its scope (RabbitMQ's vhost): two scopes may hold
    queues of one name."""

    scope: str
    name: str


@dataclass(frozen=True, slots=True)
class BrokerClient:
    """One client connected to the broker, as far as telling busy workers apart needs.

    Counts add up over the client's channels. `client_name` is the name the client gave
    its connection (workers set it to their pod's name); `peer_host` the address it
    connects from.
    """

    scope: str
    client_name: str | None
    peer_host: str | None
    consumers: int
    """Consumers on the client's channels."""
    unacked: int
    """Messages delivered to it and not yet acknowledged."""
    queues: frozenset[QueueRef] | None = None
    """The queues its channels consume from; None when the broker could not say for one of
    its channels (then it may be any pool's worker: protection fails closed)."""


@dataclass(frozen=True, slots=True)
class QueueSample:
    """One observation of a queue (or the sum of several queues) at `taken_at`.

    Rates are messages per second and are None when the source cannot know them
    (the AMQP path has no statistics; the management API has none for a new queue).
    """

    ready: int
    """Messages waiting to be delivered."""
    unacked: int
    """Messages delivered to consumers and not yet acknowledged (in flight)."""
    consumers: int
    """Consumers attached to the queue."""
    taken_at: float
    """When the broker reported these numbers, in seconds on the caller's clock."""
    publish_rate: float | None = None
    """Messages published to the queue per second."""
    ack_rate: float | None = None
    """Messages acknowledged by consumers per second."""
    deliver_rate: float | None = None
    """Messages delivered to consumers per second."""
    consumer_utilisation: float | None = None
    """Fraction of time consumers could take new messages (RabbitMQ's consumer_capacity)."""
    complete: bool = True
    """False when the sample may miss work the pool holds: live counts that cannot see
    in-flight messages, or some of several queues missing. Such a sample may grow a pool,
    never shrink it."""
    published_total: int | None = None
    """Messages published to the queue since it was declared (RabbitMQ's
    `message_stats.publish`), as old as the rates; None without statistics."""
    acked_total: int | None = None
    """Messages acknowledged by consumers since the queue was declared (`.ack`)."""
    note: str | None = None
    """What the source wants users to know about these figures (what its broker cannot
    give, a layout it did not expect): shown in the Ready condition."""
    parallelism: int | None = None
    """The most consumers that can work on the queue at once (a Kafka topic's partitions,
    each read by one consumer of a group): replicas beyond it idle, so no policy asks for
    more. None: no such limit."""
    backlog_parallelism: int | None = None
    """Of those, how many have messages waiting now (a Kafka topic's partitions with lag):
    the backlog policy asks for no more replicas than this. None: no such limit."""
    rebalancing: bool = False
    """The queue's consumers are being reassigned now (a Kafka group's rebalance, during
    which every member stops): the pool may grow, never shrink, until it is over."""
    scaling_pauses: bool = False
    """Every change of the pool's size stops all its consumers for a while (a Kafka group
    rebalances on each member that joins or leaves): a scale-down waits the whole
    scaleDown.stabilizationSeconds window, never one shortened by the size of the drop."""
    shared: bool = True
    """Every consumer takes from this one queue (a RabbitMQ queue, a Redis list): messages
    waiting mean no consumer had room. False for a partitioned one (a Kafka topic), where
    work waits per partition, counts the messages in hand too, and says nothing of the
    consumers of the other partitions: no speed is measured from it."""

    @property
    def backlog(self) -> int:
        """Ready plus in-flight messages: the work not yet done."""
        return self.ready + self.unacked


def _sum_known(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def combine(samples: Iterable[QueueSample]) -> QueueSample:
    """Add up several queues of one QueueScaler: counts and rates sum, utilisation averages.

    The combined sample is as old as its oldest part, so staleness is never hidden.
    """
    parts = list(samples)
    if not parts:
        raise ValueError("combine() needs at least one sample")
    if len(parts) == 1:
        return parts[0]  # one queue, the usual case: the sum is the part (samples are frozen)
    utilisations = [p.consumer_utilisation for p in parts if p.consumer_utilisation is not None]
    return QueueSample(
        ready=sum(p.ready for p in parts),
        unacked=sum(p.unacked for p in parts),
        consumers=sum(p.consumers for p in parts),
        taken_at=min(p.taken_at for p in parts),
        publish_rate=_sum_known(p.publish_rate for p in parts),
        ack_rate=_sum_known(p.ack_rate for p in parts),
        deliver_rate=_sum_known(p.deliver_rate for p in parts),
        consumer_utilisation=sum(utilisations) / len(utilisations) if utilisations else None,
        complete=all(p.complete for p in parts),
        published_total=_sum_all(p.published_total for p in parts),
        acked_total=_sum_all(p.acked_total for p in parts),
        note="; ".join(dict.fromkeys(p.note for p in parts if p.note)) or None,
        parallelism=_sum_all(p.parallelism for p in parts),
        backlog_parallelism=_sum_all(p.backlog_parallelism for p in parts),
        rebalancing=any(p.rebalancing for p in parts),
        scaling_pauses=any(p.scaling_pauses for p in parts),
        shared=all(p.shared for p in parts),
    )


def _sum_all(values: Iterable[int | None]) -> int | None:
    """A counter summed over queues only when every queue knows it: a partial sum would
    look like a counter reset the tick a queue's statistics go missing. (A queue missing
    from the answer altogether makes the sample incomplete, whose counters the rate policy
    ignores: core.throughput.) Limits add up the same way: one queue without a limit lifts
    it for the sum."""
    known = list(values)
    return None if any(v is None for v in known) else sum(v for v in known if v is not None)


SampleResult = Mapping[QueueRef, QueueSample | SourceError]
"""Per queue: its sample, or why it has none (a missing queue fails alone)."""
