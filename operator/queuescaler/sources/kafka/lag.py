"""A consumer group's lag, rates and busy members from one round's answers. Pure.

Per partition: lag = end offset - the group's position, never negative, where the position
is the committed offset, or the log start offset when retention deleted past it (what is
deleted is never counted), or for a partition the group never committed on or committed
beyond the end on (out of range: the consumer resets it), its reset policy's: the log start
(earliest) or the end (latest: no lag). A topic's sample adds its
partitions up:

- ready = the lag, unacked = 0: Kafka cannot tell a message being processed from one waiting.
  Consumers commit after processing, so the lag counts both, and a lag of 0 on every
  partition means nothing is in flight: such a sample may shrink the pool, to minReplicas
  (and to zero). While there is lag, which members hold work is told by `busy_members`, one
  busy client per member whose partitions lag: the core's busy-worker protection keeps those
  pods (and every pod, when a member cannot be placed).
- published_total = the end offsets' sum, acked_total = published_total - lag (every message
  the group is past, those retention deleted included): the core differences them into rates.
- consumers = the members assigned a partition of the topic (all members while that is not
  told: a rebalance).
- the facts the core's rules read: the partitions (`parallelism`, none with
  allowIdleConsumers), those with lag (`backlog_parallelism`, with limitToPartitionsWithLag),
  a rebalance in progress (DescribeGroups' PreparingRebalance or CompletingRebalance), and that
  every resize rebalances the group (`scaling_pauses`).

A sample is incomplete (may grow the pool, never shrink it) when some partitions could not be
read (their share of the lag is unknown), or when the group's members and state cannot be told:
DescribeGroups failed, or the group is unknown to it while it has committed offsets (a group
of KIP-848's consumer protocol, which the classic API describes as Dead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from queuescaler.core.sample import BrokerClient, ErrorKind, QueueRef, QueueSample, SourceError
from queuescaler.sources.kafka.protocol import (
    GROUP_ID_NOT_FOUND,
    Committed,
    Group,
    TopicPartition,
    error_name,
    kind_of,
)
from queuescaler.sources.kafka.spec import EARLIEST, GroupScope

IN_FLIGHT_NOTE: Final = (
    "in-flight messages are not told apart: Kafka's lag (messages not yet committed) counts "
    "those being processed with those waiting, and a member is busy while its partitions lag"
)
"""On every Kafka sample: the Ready condition says what the broker cannot give."""
REBALANCING: Final = frozenset({"PreparingRebalance", "CompletingRebalance"})
"""DescribeGroups' states of a group whose members are being reassigned (every one stops)."""
DEAD: Final = "Dead"


@dataclass(frozen=True, slots=True)
class Reading:
    """One round's answers for one cluster: what `topic_sample` and `busy_members` read."""

    taken_at: float
    partitions: Mapping[str, Sequence[int] | SourceError] = field(default_factory=dict)
    """Each topic asked about: its partitions, or why it has none (missing, refused)."""
    ends: Mapping[TopicPartition, int | SourceError] = field(default_factory=dict)
    starts: Mapping[TopicPartition, int | SourceError] = field(default_factory=dict)
    """Log start offsets; a partition absent was not asked (its start counts as 0)."""
    committed: Mapping[str, Committed | SourceError] = field(default_factory=dict)
    groups: Mapping[str, Group | SourceError] = field(default_factory=dict)


def partition_lag(end: int, start: int, committed: int | None, reset: str) -> int:
    """Messages of one partition the group has yet to process, never negative, never counting
    what retention deleted (below `start`). A committed offset beyond the end (the log
    truncated, the topic recreated, an offset set by hand) is out of range: the consumer resets
    it by its policy, so it counts as a partition never committed on (earliest: from the log
    start; latest: none), not as no lag (the messages would be stranded at zero replicas)."""
    if committed is not None and committed <= end:
        return max(0, end - max(committed, start))
    return max(0, end - (start if reset == EARLIEST else end))


def beyond_end(end: int, committed: int | None) -> bool:
    """The committed offset is past the partition's end: the consumer will reset it."""
    return committed is not None and committed > end


def _partition(
    where: TopicPartition, scope: GroupScope, reading: Reading, committed: Committed
) -> tuple[int, int, int | None] | SourceError:
    """(end, lag, committed) of one partition, or why it could not be read."""
    end = reading.ends.get(where)
    start = reading.starts.get(where, 0)
    if end is None:
        return SourceError(ErrorKind.BAD_RESPONSE, f"partition {where[1]} was not listed")
    for value in (end, start):
        if isinstance(value, SourceError):
            return value
    assert isinstance(end, int) and isinstance(start, int)
    code = (committed.errors or {}).get(where)
    if code is not None:
        return SourceError(
            kind_of(code),
            f"the committed offset of partition {where[1]} was refused: {error_name(code)}")
    offset = committed.offsets.get(where)
    return end, partition_lag(end, start, offset, scope.reset), offset


def _members_of(group: Group, topic: str) -> int:
    """Members assigned a partition of the topic; every member while that is not told."""
    if any(member.assignment is None for member in group.members):
        return len(group.members)
    return sum(1 for m in group.members if m.assignment and m.assignment.get(topic))


def _unknown_members(group: Group | SourceError, committed: Committed) -> str | None:
    """Why the group's members and state cannot be told, or None when they can."""
    if isinstance(group, SourceError):
        return f"group {committed.group!r} could not be described ({group.message})"
    dead = group.state == DEAD or group.error == GROUP_ID_NOT_FOUND
    if dead and any(offset is not None for offset in committed.offsets.values()):
        return (
            f"group {group.group!r} has committed offsets but DescribeGroups does not know it "
            "(a group of KIP-848's consumer protocol?)"
        )
    return None


def topic_sample(scope: GroupScope, topic: str, reading: Reading) -> QueueSample | SourceError:
    """One topic's sample for one group, or why it has none."""
    partitions = reading.partitions.get(topic)
    if partitions is None:
        return SourceError(ErrorKind.BAD_RESPONSE, f"topic {topic!r} was not in the answer")
    if isinstance(partitions, SourceError):
        return partitions
    committed = reading.committed.get(scope.group)
    if committed is None:
        return SourceError(ErrorKind.BAD_RESPONSE, f"group {scope.group!r} was not answered")
    if isinstance(committed, SourceError):
        return committed
    group = reading.groups.get(scope.group) or SourceError(
        ErrorKind.BAD_RESPONSE, "not in the answer")
    read: list[tuple[int, int, int | None]] = []
    failed: list[SourceError] = []
    for index in partitions:
        outcome = _partition((topic, index), scope, reading, committed)
        if isinstance(outcome, SourceError):
            failed.append(outcome)
        else:
            read.append(outcome)
    if not read:
        if failed:
            first = failed[0]
            return SourceError(first.kind, f"topic {topic!r}: {first.message}")
        return SourceError(ErrorKind.QUEUE_NOT_FOUND, f"topic {topic!r} has no partitions")
    notes = [IN_FLIGHT_NOTE]
    complete = True
    if failed:
        complete = False
        notes.append(
            f"lag counted in part: {len(failed)} of {len(partitions)} partitions of topic "
            f"{topic!r} could not be read ({failed[0].message})")
    unknown = _unknown_members(group, committed)
    if unknown is not None:
        complete = False
        notes.append(f"{unknown}: its members and rebalances are unknown")
    uncommitted = sum(1 for _, _, offset in read if offset is None)
    if uncommitted:
        counted = ("from the log start (offsetResetPolicy earliest)" if scope.reset == EARLIEST
                   else "as read (offsetResetPolicy latest)")
        notes.append(f"partitions of topic {topic!r} that group {scope.group!r} never "
                     f"committed on count {counted}")
    beyond = sum(1 for end, _, offset in read if beyond_end(end, offset))
    if beyond:
        notes.append(f"committed offset beyond the end on {beyond} partition"
                     f"{'s' if beyond > 1 else ''} of topic {topic!r}: counted as "
                     f"{scope.reset} would reset (offsetResetPolicy)")
    lag = sum(lagging for _, lagging, _ in read)
    published = sum(end for end, _, _ in read)
    lagging = sum(1 for _, partition_lag_, _ in read if partition_lag_ > 0) + len(failed)
    described = group if isinstance(group, Group) else None
    # Without limitToPartitionsWithLag only the partitions cap the pool (`parallelism`):
    # `backlog_parallelism` is the partitions with messages waiting or nothing (given every
    # partition, a decision said "6 partitions have messages waiting" of one that had).
    waiting = lagging if scope.cap == "lag" else None
    return QueueSample(
        ready=lag,
        unacked=0,
        consumers=_members_of(described, topic) if described is not None else 0,
        taken_at=reading.taken_at,
        complete=complete,
        published_total=published,
        acked_total=published - lag,
        note="; ".join(notes),
        parallelism=None if scope.cap == "none" else len(partitions),
        backlog_parallelism=waiting,
        rebalancing=described is not None and described.state in REBALANCING,
        scaling_pauses=True,
        shared=False,
    )


def busy_members(
    scope: GroupScope,
    scope_text: str,
    group: Group | SourceError,
    committed: Committed | SourceError,
    lags: Mapping[TopicPartition, int | None],
) -> list[BrokerClient]:
    """The group's members as clients for busy-worker protection: each named as the member
    named itself (its group.instance.id, else its client.id: set either to the pod's name),
    from its host, holding the lag of its partitions (a partition whose lag is not known, None
    in `lags`, counts as one message: fail closed).

    A member whose partitions are not told (a rebalance) holds one message if any partition
    of the group lags. A group with lag and no member DescribeGroups can show (empty, or a
    KIP-848 group it cannot describe: workers may read its partitions without joining it) is
    one client of unknown name holding work: the pools of that group keep their pods. Raises
    the SourceError when the group or its offsets could not be read.
    """
    for failure in (group, committed):
        if isinstance(failure, SourceError):
            raise failure
    assert isinstance(group, Group)
    busy_somewhere = any(lag is None or lag > 0 for lag in lags.values())
    clients: list[BrokerClient] = []
    for member in group.members:
        name = member.instance_id or member.client_id or None
        host = member.client_host.lstrip("/") or None
        if member.assignment is None:
            clients.append(BrokerClient(scope_text, name, host, consumers=1,
                                        unacked=1 if busy_somewhere else 0))
            continue
        held = 0
        for topic, indexes in member.assignment.items():
            for index in indexes:
                lag = lags.get((topic, index))
                held += 1 if lag is None else lag
        queues = frozenset(QueueRef(scope_text, topic) for topic in member.assignment)
        clients.append(BrokerClient(scope_text, name, host, consumers=1, unacked=held,
                                    queues=queues))
    if not group.members and busy_somewhere:
        clients.append(BrokerClient(scope_text, None, None, consumers=1, unacked=1))
    return clients
