"""The admin requests one round needs, batched, and their answers read into plain values. Pure.

No I/O here (h11's way): functions build request structs from what is asked, and read the
decoded responses into dataclasses; `source.py` sends them on aiokafka's connections. The
structs are written on aiokafka's protocol types (its `Schema`, compact types and tagged
fields) from the Apache Kafka message definitions (clients/src/main/resources/common/
message/*.json); aiokafka's own request classes stop at OffsetFetch v3 and FindCoordinator
v1, and its DescribeGroups v3 reads the v2 answer.

What is batched, and the oldest broker that batches it (older ones get one request per group,
still once per tick and cached where the answer does not change):

| API (key) | version | one request carries | broker |
|---|---|---|---|
| Metadata (3) | 4-5 | every topic asked about (auto creation off) | 1.0 |
| FindCoordinator (10) | 4 | every group whose coordinator is not cached (KIP-699) | 3.0 |
| OffsetFetch (9) | 8 | every group of one coordinator, their topics' partitions (KIP-709) | 3.0 |
| DescribeGroups (15) | 4 | every group of one coordinator, members with group.instance.id | 2.4 |
| ListOffsets (2) | 1-3 | every partition one broker leads, for one timestamp | 0.10.1 |

Kafka 4.0 removed the oldest versions of these APIs (KIP-896: Metadata v0-3, OffsetFetch,
FindCoordinator, DescribeGroups and ListOffsets v0); none of those is sent. Fallbacks: OffsetFetch
v3 and FindCoordinator v1 per group, DescribeGroups v1 without instance ids.
"""

from __future__ import annotations

import io
import struct
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka.errors import for_code
from aiokafka.protocol.api import RequestStruct, Response
from aiokafka.protocol.types import (
    Array,
    Boolean,
    Bytes,
    CompactArray,
    CompactString,
    Int8,
    Int16,
    Int32,
    Int64,
    Schema,
    String,
    TaggedFields,
)

from queuescaler.core.sample import ErrorKind

METADATA: Final = 3
FIND_COORDINATOR: Final = 10
OFFSET_FETCH: Final = 9
DESCRIBE_GROUPS: Final = 15
LIST_OFFSETS: Final = 2

LATEST: Final = -1
"""ListOffsets' timestamp for the end offset (the high watermark)."""
EARLIEST: Final = -2
"""ListOffsets' timestamp for the log start offset (what retention left)."""
READ_UNCOMMITTED: Final = 0
"""The high watermark, as a consumer group's lag is reported by Kafka's own tools."""
NO_OFFSET: Final = -1
"""OffsetFetch's committed offset for a partition the group never committed on."""

Versions = Mapping[int, tuple[int, int]]
"""Per API key, the (min, max) versions a broker serves (its ApiVersions answer)."""


def pick(versions: Versions, api_key: int, spoken: Sequence[int]) -> int | None:
    """The highest of the versions we speak (`spoken`) that the broker serves, or None."""
    low, high = versions.get(api_key, (1, 0))
    served = [v for v in spoken if low <= v <= high]
    return max(served) if served else None


def _struct(name: str, base: Any, api_key: int, version: int, schema: Any, **attrs: Any) -> Any:
    return type(name, (base,), {"API_KEY": api_key, "API_VERSION": version, "SCHEMA": schema,
                                **attrs})


def _pair(name: str, api_key: int, version: int, request: Any, response: Any,
          flexible: bool = False) -> Any:
    """A request struct class whose answer decodes as `response` (aiokafka reads it so)."""
    answer = _struct(f"{name}Response_v{version}", Response, api_key, version, response)
    return _struct(f"{name}Request_v{version}", RequestStruct, api_key, version, request,
                   RESPONSE_TYPE=answer, FLEXIBLE_VERSION=flexible)


_TAGS = ("tags", TaggedFields)

_METADATA_TOPICS = ("topics", Array(String("utf-8")))
_METADATA_BROKERS = ("brokers", Array(
    ("node_id", Int32), ("host", String("utf-8")), ("port", Int32), ("rack", String("utf-8"))))
METADATA_REQUESTS: Final = {
    version: _pair("Metadata", METADATA, version,
                   Schema(_METADATA_TOPICS, ("allow_auto_topic_creation", Boolean)),
                   Schema(
                       ("throttle_time_ms", Int32), _METADATA_BROKERS,
                       ("cluster_id", String("utf-8")), ("controller_id", Int32),
                       ("topics", Array(
                           ("error_code", Int16), ("topic", String("utf-8")),
                           ("is_internal", Boolean),
                           ("partitions", Array(
                               ("error_code", Int16), ("partition", Int32), ("leader", Int32),
                               ("replicas", Array(Int32)), ("isr", Array(Int32)),
                               *((("offline_replicas", Array(Int32)),) if version >= 5 else ()),
                           )),
                       )),
                   ))
    for version in (4, 5)
}

FIND_COORDINATOR_REQUESTS: Final = {
    1: _pair("FindCoordinator", FIND_COORDINATOR, 1,
             Schema(("key", String("utf-8")), ("key_type", Int8)),
             Schema(("throttle_time_ms", Int32), ("error_code", Int16),
                    ("error_message", String("utf-8")), ("node_id", Int32),
                    ("host", String("utf-8")), ("port", Int32))),
    4: _pair("FindCoordinator", FIND_COORDINATOR, 4,
             Schema(("key_type", Int8), ("coordinator_keys", CompactArray(CompactString("utf-8"))),
                    _TAGS),
             Schema(("throttle_time_ms", Int32),
                    ("coordinators", CompactArray(
                        ("key", CompactString("utf-8")), ("node_id", Int32),
                        ("host", CompactString("utf-8")), ("port", Int32),
                        ("error_code", Int16), ("error_message", CompactString("utf-8")), _TAGS)),
                    _TAGS),
             flexible=True),
}
GROUP_KEY: Final = 0
"""FindCoordinator's key type for a consumer group."""

_COMMITTED = (("partition", Int32), ("offset", Int64), ("metadata", String("utf-8")),
              ("error_code", Int16))
OFFSET_FETCH_REQUESTS: Final = {
    3: _pair("OffsetFetch", OFFSET_FETCH, 3,
             Schema(("group_id", String("utf-8")),
                    ("topics", Array(("topic", String("utf-8")), ("partitions", Array(Int32))))),
             Schema(("throttle_time_ms", Int32),
                    ("topics", Array(("topic", String("utf-8")),
                                     ("partitions", Array(*_COMMITTED)))),
                    ("error_code", Int16))),
    8: _pair("OffsetFetch", OFFSET_FETCH, 8,
             Schema(("groups", CompactArray(
                        ("group_id", CompactString("utf-8")),
                        ("topics", CompactArray(
                            ("name", CompactString("utf-8")),
                            ("partition_indexes", CompactArray(Int32)), _TAGS)),
                        _TAGS)),
                    ("require_stable", Boolean), _TAGS),
             Schema(("throttle_time_ms", Int32),
                    ("groups", CompactArray(
                        ("group_id", CompactString("utf-8")),
                        ("topics", CompactArray(
                            ("name", CompactString("utf-8")),
                            ("partitions", CompactArray(
                                ("partition", Int32), ("offset", Int64),
                                ("leader_epoch", Int32), ("metadata", CompactString("utf-8")),
                                ("error_code", Int16), _TAGS)),
                            _TAGS)),
                        ("error_code", Int16), _TAGS)),
                    _TAGS),
             flexible=True),
}


def _member(with_instance: bool) -> Any:
    return Array(
        ("member_id", String("utf-8")),
        *((("group_instance_id", String("utf-8")),) if with_instance else ()),
        ("client_id", String("utf-8")), ("client_host", String("utf-8")),
        ("member_metadata", Bytes), ("member_assignment", Bytes),
    )


DESCRIBE_GROUPS_REQUESTS: Final = {
    1: _pair("DescribeGroups", DESCRIBE_GROUPS, 1,
             Schema(("groups", Array(String("utf-8")))),
             Schema(("throttle_time_ms", Int32),
                    ("groups", Array(("error_code", Int16), ("group_id", String("utf-8")),
                                     ("state", String("utf-8")),
                                     ("protocol_type", String("utf-8")),
                                     ("protocol", String("utf-8")), ("members", _member(False)))))),
    4: _pair("DescribeGroups", DESCRIBE_GROUPS, 4,
             Schema(("groups", Array(String("utf-8"))),
                    ("include_authorized_operations", Boolean)),
             Schema(("throttle_time_ms", Int32),
                    ("groups", Array(("error_code", Int16), ("group_id", String("utf-8")),
                                     ("state", String("utf-8")),
                                     ("protocol_type", String("utf-8")),
                                     ("protocol", String("utf-8")), ("members", _member(True)),
                                     ("authorized_operations", Int32))))),
}

_LISTED = ("partitions", Array(("partition", Int32), ("error_code", Int16),
                               ("timestamp", Int64), ("offset", Int64)))
_LIST_ASKED = ("topics", Array(("topic", String("utf-8")),
                               ("partitions", Array(("partition", Int32), ("timestamp", Int64)))))
LIST_OFFSETS_REQUESTS: Final = {
    1: _pair("ListOffsets", LIST_OFFSETS, 1, Schema(("replica_id", Int32), _LIST_ASKED),
             Schema(("topics", Array(("topic", String("utf-8")), _LISTED)))),
    **{
        version: _pair("ListOffsets", LIST_OFFSETS, version,
                       Schema(("replica_id", Int32), ("isolation_level", Int8), _LIST_ASKED),
                       Schema(("throttle_time_ms", Int32),
                              ("topics", Array(("topic", String("utf-8")), _LISTED))))
        for version in (2, 3)
    },
}

_ASSIGNMENT = Schema(("version", Int16),
                     ("topics", Array(("topic", String("utf-8")), ("partitions", Array(Int32)))))
"""The consumer protocol's assignment (a member's `member_assignment`): version, then per
topic its partitions (then user data, not read)."""


# --- errors ---------------------------------------------------------------------------------

NONE: Final = 0
UNKNOWN_TOPIC_OR_PARTITION: Final = 3
COORDINATOR_LOAD_IN_PROGRESS: Final = 14
COORDINATOR_NOT_AVAILABLE: Final = 15
NOT_COORDINATOR: Final = 16
GROUP_ID_NOT_FOUND: Final = 69
COORDINATOR_MOVED: Final = frozenset({COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR})
"""Find the group's coordinator again, and ask it once more this round."""
LEADER_MOVED: Final = frozenset({
    5,  # LEADER_NOT_AVAILABLE
    6,  # NOT_LEADER_OR_FOLLOWER
    UNKNOWN_TOPIC_OR_PARTITION,  # asked of a broker that no longer has it: stale metadata
    74,  # FENCED_LEADER_EPOCH
    75,  # UNKNOWN_LEADER_EPOCH
    78,  # OFFSET_NOT_AVAILABLE (a leader election in progress)
})
"""Read the metadata again, and ask the new leader once more this round."""
_KINDS: Final = {
    UNKNOWN_TOPIC_OR_PARTITION: ErrorKind.QUEUE_NOT_FOUND,
    100: ErrorKind.QUEUE_NOT_FOUND,  # UNKNOWN_TOPIC_ID
    7: ErrorKind.TIMEOUT,  # REQUEST_TIMED_OUT
    17: ErrorKind.BAD_CONFIG,  # INVALID_TOPIC_EXCEPTION
    24: ErrorKind.BAD_CONFIG,  # INVALID_GROUP_ID
    29: ErrorKind.AUTH,  # TOPIC_AUTHORIZATION_FAILED
    30: ErrorKind.AUTH,  # GROUP_AUTHORIZATION_FAILED
    31: ErrorKind.AUTH,  # CLUSTER_AUTHORIZATION_FAILED
    58: ErrorKind.AUTH,  # SASL_AUTHENTICATION_FAILED
    35: ErrorKind.BAD_RESPONSE,  # UNSUPPORTED_VERSION
}
_UNAVAILABLE: Final = frozenset({
    COORDINATOR_LOAD_IN_PROGRESS, *COORDINATOR_MOVED, *LEADER_MOVED - {UNKNOWN_TOPIC_OR_PARTITION},
    8,  # BROKER_NOT_AVAILABLE
    9,  # REPLICA_NOT_AVAILABLE
    13,  # NETWORK_EXCEPTION
    56,  # KAFKA_STORAGE_ERROR
})


_NAMES: Final = {-1: "UNKNOWN_SERVER_ERROR", 6: "NOT_LEADER_OR_FOLLOWER"}
"""Kafka's current names where aiokafka keeps an older one (or none)."""


def error_name(code: int) -> str:
    """Kafka's name for an error code (NOT_COORDINATOR), or its number when unknown."""
    if code in _NAMES:
        return _NAMES[code]
    name = getattr(for_code(code), "message", None)
    return name if isinstance(name, str) and name != "UNKNOWN" else f"error {code}"


def kind_of(code: int) -> ErrorKind:
    """What an error code says of the queue asked about, as a condition reason."""
    if code in _KINDS:
        return _KINDS[code]
    if code in _UNAVAILABLE:
        return ErrorKind.UNREACHABLE
    return ErrorKind.BAD_RESPONSE


# --- what is read -----------------------------------------------------------------------------

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Node:
    """A broker, as Metadata and FindCoordinator name it."""

    node_id: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Topic:
    """A topic's partitions and the broker leading each (-1: none now), or its error."""

    name: str
    leaders: Mapping[int, int]
    error: int = NONE


@dataclass(frozen=True, slots=True)
class Metadata:
    nodes: Mapping[int, Node]
    topics: Mapping[str, Topic]


@dataclass(frozen=True, slots=True)
class Coordinator:
    group: str
    node: Node | None
    error: int = NONE
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Committed:
    """A group's committed offsets (None: never committed there), or its group-level error;
    partition-level errors apart."""

    group: str
    offsets: Mapping[TopicPartition, int | None]
    error: int = NONE
    errors: Mapping[TopicPartition, int] | None = None


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a group, as DescribeGroups tells it."""

    member_id: str
    client_id: str
    client_host: str
    instance_id: str | None
    assignment: Mapping[str, tuple[int, ...]] | None
    """Its partitions per topic; None when not told (the group is rebalancing, or it is not
    a consumer group's member)."""


@dataclass(frozen=True, slots=True)
class Group:
    group: str
    state: str
    protocol_type: str
    members: tuple[Member, ...]
    error: int = NONE


@dataclass(frozen=True, slots=True)
class Listed:
    """One partition's offset at a timestamp (end or start), or the error its leader gave."""

    offset: int | None
    error: int = NONE


# --- requests ---------------------------------------------------------------------------------


def metadata_request(topics: Iterable[str], version: int) -> Any:
    """Every topic asked about in one request; a missing topic is told, never created."""
    return METADATA_REQUESTS[version](topics=sorted(set(topics)), allow_auto_topic_creation=False)


def find_coordinator_requests(groups: Iterable[str], version: int) -> list[Any]:
    """One request for every group (v4), else one per group."""
    keys = sorted(set(groups))
    if not keys:
        return []
    if version >= 4:
        return [FIND_COORDINATOR_REQUESTS[4](key_type=GROUP_KEY, coordinator_keys=keys,
                                             tags={})]
    return [FIND_COORDINATOR_REQUESTS[1](key=key, key_type=GROUP_KEY) for key in keys]


def _by_topic(partitions: Iterable[TopicPartition]) -> list[tuple[str, list[int]]]:
    found: dict[str, set[int]] = defaultdict(set)
    for topic, index in partitions:
        found[topic].add(index)
    return [(topic, sorted(found[topic])) for topic in sorted(found)]


def offset_fetch_requests(
    groups: Mapping[str, Iterable[TopicPartition] | None], version: int
) -> list[Any]:
    """Every group of one coordinator in one request (v8), else one per group; a group's
    partitions None asks for every partition it committed on."""
    names = sorted(groups)
    if not names:
        return []
    if version >= 8:
        asked: list[Any] = []
        for group in names:
            partitions = groups[group]
            tagged: list[tuple[str, list[int], dict[int, bytes]]] | None = None
            if partitions is not None:
                tagged = [(topic, indexes, {}) for topic, indexes in _by_topic(partitions)]
            asked.append((group, tagged, {}))
        return [OFFSET_FETCH_REQUESTS[8](groups=asked, require_stable=False, tags={})]
    requests = []
    for group in names:
        partitions = groups[group]
        topics = None if partitions is None else _by_topic(partitions)
        requests.append(OFFSET_FETCH_REQUESTS[3](group_id=group, topics=topics))
    return requests


def describe_groups_request(groups: Iterable[str], version: int) -> Any:
    names = sorted(set(groups))
    if version >= 4:
        return DESCRIBE_GROUPS_REQUESTS[4](groups=names, include_authorized_operations=False)
    return DESCRIBE_GROUPS_REQUESTS[1](groups=names)


def list_offsets_request(
    partitions: Iterable[TopicPartition], timestamp: int, version: int
) -> Any:
    """Every partition one broker leads, at one timestamp (LATEST or EARLIEST): a request
    may not name a partition twice, so the end and the start are two requests."""
    topics = [(topic, [(index, timestamp) for index in indexes])
              for topic, indexes in _by_topic(partitions)]
    if version >= 2:
        return LIST_OFFSETS_REQUESTS[version](
            replica_id=-1, isolation_level=READ_UNCOMMITTED, topics=topics)
    return LIST_OFFSETS_REQUESTS[1](replica_id=-1, topics=topics)


# --- answers --------------------------------------------------------------------------------


class BadAnswer(ValueError):
    """An answer that is not the shape its request's version has."""


def _fields(answer: Any, *names: str) -> tuple[Any, ...]:
    try:
        return tuple(answer.get_item(name) for name in names)
    except (AttributeError, KeyError) as error:
        raise BadAnswer(f"{type(answer).__name__} lacks {error}") from None


def read_metadata(answer: Any) -> Metadata:
    brokers, topics = _fields(answer, "brokers", "topics")
    nodes = {int(b[0]): Node(int(b[0]), str(b[1]), int(b[2])) for b in brokers or ()}
    found: dict[str, Topic] = {}
    for entry in topics or ():
        error, name, _internal, partitions = entry[:4]
        leaders = {int(p[1]): int(p[2]) for p in partitions or ()}
        found[str(name)] = Topic(str(name), leaders, int(error))
    return Metadata(nodes, found)


def read_coordinators(answer: Any) -> list[Coordinator]:
    if answer.API_VERSION >= 4:
        (entries,) = _fields(answer, "coordinators")
        return [
            Coordinator(
                str(key), Node(int(node), str(host), int(port)) if not error else None,
                int(error), message,
            )
            for key, node, host, port, error, message, _tags in entries or ()
        ]
    raise BadAnswer("a FindCoordinator v1 answer names no group: read_coordinator")


def read_coordinator(group: str, answer: Any) -> Coordinator:
    """A FindCoordinator v1 answer (one group's)."""
    error, message, node, host, port = _fields(
        answer, "error_code", "error_message", "node_id", "host", "port")
    return Coordinator(group, Node(int(node), str(host), int(port)) if not error else None,
                       int(error), message)


def _committed(group: str, topics: Any, error: int, flexible: bool) -> Committed:
    offsets: dict[TopicPartition, int | None] = {}
    errors: dict[TopicPartition, int] = {}
    for entry in topics or ():
        topic, partitions = entry[0], entry[1]
        for part in partitions or ():
            # v8: partition, offset, leader epoch, metadata, error, tags; v3: no epoch, no tags
            index, offset = int(part[0]), int(part[1])
            code = int(part[4] if flexible else part[3])
            where = (str(topic), index)
            if code:
                errors[where] = code
            else:
                offsets[where] = None if offset < 0 else offset
    return Committed(group, offsets, error, errors or None)


def read_committed(answer: Any, asked: Sequence[str]) -> list[Committed]:
    """Each group's committed offsets from an OffsetFetch answer (v8: every group asked;
    v3: the one group asked)."""
    if answer.API_VERSION >= 8:
        (groups,) = _fields(answer, "groups")
        return [_committed(str(g[0]), g[1], int(g[2]), True) for g in groups or ()]
    topics, error = _fields(answer, "topics", "error_code")
    if len(asked) != 1:
        raise BadAnswer("an OffsetFetch v3 answer is one group's")
    return [_committed(asked[0], topics, int(error), False)]


def read_assignment(raw: bytes | None) -> dict[str, tuple[int, ...]] | None:
    """A consumer's assigned partitions per topic from its `member_assignment`, or None when
    there is none to read (the group is not Stable) or it is not the consumer protocol's."""
    if not raw:
        return None
    try:
        _version, topics = _ASSIGNMENT.decode(io.BytesIO(raw))
    except (ValueError, struct.error, UnicodeDecodeError, TypeError):
        return None
    found: dict[str, set[int]] = defaultdict(set)
    for topic, partitions in topics or ():
        found[str(topic)].update(int(p) for p in partitions or ())
    return {topic: tuple(sorted(indexes)) for topic, indexes in found.items()}


def read_groups(answer: Any) -> list[Group]:
    (groups,) = _fields(answer, "groups")
    with_instance = answer.API_VERSION >= 4
    found = []
    for entry in groups or ():
        error, group, state, protocol_type, _protocol, members = entry[:6]
        described = []
        for member in members or ():
            if with_instance:
                member_id, instance, client_id, host, _metadata, assignment = member
            else:
                member_id, client_id, host, _metadata, assignment = member
                instance = None
            consumer = protocol_type == "consumer"
            described.append(Member(
                str(member_id), str(client_id or ""), str(host or ""),
                str(instance) if instance else None,
                read_assignment(assignment) if consumer else None,
            ))
        found.append(Group(str(group), str(state or ""), str(protocol_type or ""),
                           tuple(described), int(error)))
    return found


def read_listed(answer: Any) -> dict[TopicPartition, Listed]:
    (topics,) = _fields(answer, "topics")
    found: dict[TopicPartition, Listed] = {}
    for topic, partitions in topics or ():
        for index, error, _timestamp, offset in partitions or ():
            code = int(error)
            found[(str(topic), int(index))] = Listed(
                None if code or offset < 0 else int(offset), code)
    return found
