"""The batched admin requests and the reading of their answers (protocol.py), on the wire format:
every request is encoded and decoded again, every answer is decoded from bytes."""

from __future__ import annotations

import io
from typing import Any

import pytest

from queuescaler.core.sample import ErrorKind
from queuescaler.sources.kafka import protocol as kafka
from queuescaler.sources.kafka.protocol import Committed, Member, Node

pytestmark = pytest.mark.unit


def wire(struct: Any) -> Any:
    """The struct as the other end reads it: encoded, then decoded by its own schema."""
    return type(struct).decode(io.BytesIO(struct.encode()))


def answer(request: Any, **fields: Any) -> Any:
    """The answer a broker would send to `request`, decoded from its bytes."""
    response = request.RESPONSE_TYPE(**fields)
    return request.RESPONSE_TYPE.decode(io.BytesIO(response.encode()))


@pytest.mark.parametrize(
    ("served", "spoken", "picked"),
    [
        pytest.param({9: (1, 9)}, (3, 8), 8, id="newest-we-speak"),
        pytest.param({9: (0, 7)}, (3, 8), 3, id="older-broker"),
        pytest.param({9: (9, 10)}, (3, 8), None, id="newer-only"),
        pytest.param({}, (3, 8), None, id="api-not-served"),
    ],
)
def test_a_version_is_the_newest_both_ends_speak(
    served: dict[int, tuple[int, int]], spoken: tuple[int, ...], picked: int | None
) -> None:
    assert kafka.pick(served, 9, spoken) == picked


# --- batching -------------------------------------------------------------------------------


def test_one_offset_fetch_carries_every_group_of_a_coordinator() -> None:
    groups: dict[str, Any] = {f"group-{i}": [("orders", 0), ("orders", 1), (f"t{i}", 0)]
                              for i in range(100)}
    (request,) = kafka.offset_fetch_requests(groups, 8)
    sent = wire(request)
    assert (sent.API_KEY, sent.API_VERSION, sent.FLEXIBLE_VERSION) == (9, 8, True)
    assert len(sent.groups) == 100
    group, topics, _tags = sent.groups[0]
    assert group == "group-0"
    assert [(name, indexes) for name, indexes, _ in topics] == [("orders", [0, 1]), ("t0", [0])]
    assert sent.require_stable is False


def test_before_kafka_3_each_group_has_its_offset_fetch() -> None:
    requests = kafka.offset_fetch_requests({"a": [("t", 0)], "b": None}, 3)
    assert [(wire(r).API_VERSION, wire(r).group_id, wire(r).topics) for r in requests] == [
        (3, "a", [("t", [0])]), (3, "b", None)]


def test_a_group_asked_without_partitions_asks_for_all_it_committed() -> None:
    (request,) = kafka.offset_fetch_requests({"a": None}, 8)
    assert wire(request).groups[0][1] is None


def test_one_find_coordinator_for_every_unknown_group() -> None:
    (request,) = kafka.find_coordinator_requests([f"g{i}" for i in range(50)] * 2, 4)
    sent = wire(request)
    assert (sent.API_VERSION, sent.key_type, len(sent.coordinator_keys)) == (4, 0, 50)
    old = kafka.find_coordinator_requests(["b", "a"], 1)
    assert [(wire(r).API_VERSION, wire(r).key) for r in old] == [(1, "a"), (1, "b")]
    assert kafka.find_coordinator_requests([], 4) == []


def test_one_describe_groups_for_every_group_of_a_coordinator() -> None:
    sent = wire(kafka.describe_groups_request(["b", "a", "b"], 4))
    assert (sent.API_VERSION, sent.groups, sent.include_authorized_operations) == (
        4, ["a", "b"], False)
    assert wire(kafka.describe_groups_request(["a"], 1)).API_VERSION == 1


@pytest.mark.parametrize("version", [1, 2, 3])
def test_one_list_offsets_per_leader_and_timestamp(version: int) -> None:
    partitions = [("orders", p) for p in range(12)] + [("audit", 3)]
    sent = wire(kafka.list_offsets_request(partitions, kafka.EARLIEST, version))
    assert (sent.API_KEY, sent.API_VERSION, sent.replica_id) == (2, version, -1)
    assert [(topic, [p for p, _ in parts]) for topic, parts in sent.topics] == [
        ("audit", [3]), ("orders", list(range(12)))]
    assert {stamp for _, parts in sent.topics for _, stamp in parts} == {-2}
    if version >= 2:
        assert sent.isolation_level == kafka.READ_UNCOMMITTED


@pytest.mark.parametrize("version", [4, 5])
def test_metadata_for_every_topic_never_creates_one(version: int) -> None:
    sent = wire(kafka.metadata_request(["b", "a", "b"], version))
    assert (sent.topics, sent.allow_auto_topic_creation) == (["a", "b"], False)


# --- answers --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 5])
def test_metadata_answer(version: int) -> None:
    request = kafka.metadata_request(["orders", "gone"], version)
    extra = ([],) if version >= 5 else ()
    read = kafka.read_metadata(answer(
        request, throttle_time_ms=0,
        brokers=[(1, "k1", 9092, None), (2, "k2", 9092, "rack-b")],
        cluster_id="c", controller_id=1,
        topics=[(0, "orders", False, [(0, 0, 1, [1], [1], *extra), (0, 1, 2, [2], [2], *extra)]),
                (3, "gone", False, [])],
    ))
    assert read.nodes == {1: Node(1, "k1", 9092), 2: Node(2, "k2", 9092)}
    assert read.topics["orders"].leaders == {0: 1, 1: 2}
    assert read.topics["gone"].error == kafka.UNKNOWN_TOPIC_OR_PARTITION


def test_find_coordinator_answers() -> None:
    (request,) = kafka.find_coordinator_requests(["a", "b"], 4)
    read = kafka.read_coordinators(answer(request, throttle_time_ms=0, tags={}, coordinators=[
        ("a", 2, "k2", 9092, 0, None, {}), ("b", -1, "", -1, 15, "not yet", {})]))
    assert [(c.group, c.node, c.error) for c in read] == [
        ("a", Node(2, "k2", 9092), 0), ("b", None, 15)]
    (old,) = kafka.find_coordinator_requests(["a"], 1)
    one = kafka.read_coordinator("a", answer(old, throttle_time_ms=0, error_code=0,
                                             error_message=None, node_id=1, host="k1", port=1))
    assert one.node == Node(1, "k1", 1)


def test_offset_fetch_answers_per_group_and_partition() -> None:
    (request,) = kafka.offset_fetch_requests({"a": [("t", 0)], "b": [("t", 0)]}, 8)
    read = kafka.read_committed(answer(request, throttle_time_ms=0, tags={}, groups=[
        ("a", [("t", [(0, 42, 3, "", 0, {}), (1, -1, -1, None, 0, {}), (2, -1, -1, None, 29, {})],
                {})], 0, {}),
        ("b", [], kafka.NOT_COORDINATOR, {}),
    ]), ["a", "b"])
    assert read == [
        Committed("a", {("t", 0): 42, ("t", 1): None}, 0, {("t", 2): 29}),
        Committed("b", {}, kafka.NOT_COORDINATOR, None),
    ]
    (old,) = kafka.offset_fetch_requests({"c": [("t", 0)]}, 3)
    assert kafka.read_committed(answer(old, throttle_time_ms=0, error_code=0, topics=[
        ("t", [(0, 7, "", 0)])]), ["c"]) == [Committed("c", {("t", 0): 7})]


def assignment(topics: dict[str, list[int]]) -> bytes:
    body = kafka._ASSIGNMENT.encode([1, list(topics.items())])
    return bytes(body) + b"\x00\x00\x00\x00"  # user data, empty


@pytest.mark.parametrize("version", [1, 4])
def test_describe_groups_answer(version: int) -> None:
    request = kafka.describe_groups_request(["g"], version)
    member: tuple[Any, ...] = ("m-1", "pod-a", "/10.1.2.3", b"", assignment({"t": [2, 0]}))
    if version >= 4:
        member = (member[0], "pod-a-static", *member[1:])
    groups = [(0, "g", "Stable", "consumer", "range", [member],
               *((-2147483648,) if version >= 4 else ()))]
    (group,) = kafka.read_groups(answer(request, throttle_time_ms=0, groups=groups))
    assert (group.group, group.state, group.protocol_type) == ("g", "Stable", "consumer")
    instance = "pod-a-static" if version >= 4 else None
    assert group.members == (Member("m-1", "pod-a", "/10.1.2.3", instance, {"t": (0, 2)}),)


@pytest.mark.parametrize(
    ("raw", "read"),
    [
        pytest.param(b"", None, id="no-assignment-while-rebalancing"),
        pytest.param(b"\x00\x01\x00", None, id="truncated"),
        pytest.param(assignment({}), {}, id="no-partitions"),
        pytest.param(assignment({"a": [1], "b": [0, 3]}), {"a": (1,), "b": (0, 3)}, id="two"),
    ],
)
def test_a_members_assignment(raw: bytes, read: dict[str, tuple[int, ...]] | None) -> None:
    assert kafka.read_assignment(raw) == read


def test_members_of_other_protocols_have_no_assignment_read() -> None:
    request = kafka.describe_groups_request(["c"], 4)
    groups = [(0, "c", "Stable", "connect", "sessioned",
               [("m", None, "w", "/h", b"", b"\x00\x01junk")], 0)]
    (group,) = kafka.read_groups(answer(request, throttle_time_ms=0, groups=groups))
    assert group.members[0].assignment is None


def test_list_offsets_answer() -> None:
    request = kafka.list_offsets_request([("t", 0), ("t", 1)], kafka.LATEST, 2)
    read = kafka.read_listed(answer(request, throttle_time_ms=0, topics=[
        ("t", [(0, 0, -1, 120), (1, 6, -1, -1)])]))
    assert read == {("t", 0): kafka.Listed(120), ("t", 1): kafka.Listed(None, 6)}


def test_an_answer_of_another_shape_is_a_bad_answer() -> None:
    with pytest.raises(kafka.BadAnswer):
        kafka.read_listed(object())


# --- error codes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "name", "kind"),
    [
        pytest.param(3, "UNKNOWN_TOPIC_OR_PARTITION", ErrorKind.QUEUE_NOT_FOUND, id="missing"),
        pytest.param(29, "TOPIC_AUTHORIZATION_FAILED", ErrorKind.AUTH, id="topic-acl"),
        pytest.param(30, "GROUP_AUTHORIZATION_FAILED", ErrorKind.AUTH, id="group-acl"),
        pytest.param(16, "NOT_COORDINATOR", ErrorKind.UNREACHABLE, id="not-coordinator"),
        pytest.param(14, "COORDINATOR_LOAD_IN_PROGRESS", ErrorKind.UNREACHABLE, id="loading"),
        pytest.param(6, "NOT_LEADER_OR_FOLLOWER", ErrorKind.UNREACHABLE, id="not-leader"),
        pytest.param(24, "INVALID_GROUP_ID", ErrorKind.BAD_CONFIG, id="bad-group"),
        pytest.param(7, "REQUEST_TIMED_OUT", ErrorKind.TIMEOUT, id="timed-out"),
        pytest.param(-1, "UNKNOWN_SERVER_ERROR", ErrorKind.BAD_RESPONSE, id="server-error"),
        pytest.param(9999, "error 9999", ErrorKind.BAD_RESPONSE, id="unknown-code"),
    ],
)
def test_error_codes(code: int, name: str, kind: ErrorKind) -> None:
    assert (kafka.error_name(code), kafka.kind_of(code)) == (name, kind)
