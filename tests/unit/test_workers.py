"""Busy workers: from the broker's connection and channel listings to pods, marks and decisions.

Tables for the pure parts (parsing, matching, marking, the WorkersMatched condition), fuzzing
of the parser, then the engine's tick against fakes: who is busy is asked only on ticks that
may scale down, once per broker, and the idle pods are marked before the scale.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from queuescaler.core.sample import (
    BrokerClient,
    ErrorKind,
    QueueRef,
    QueueSample,
    SampleResult,
    SourceError,
)
from queuescaler.core.spec import ScaleTargetRef
from queuescaler.core.workers import (
    DELETION_COST,
    IDLE_COST,
    MARKED_BY,
    MAX_COST,
    Pod,
    WorkerReport,
    cleared_marks,
    deletion_cost,
    deletion_marks,
    match_workers,
    removal_floor,
    workers_condition,
)
from queuescaler.engine import Engine, EngineSettings
from queuescaler.fleet import Fleet, ReplicaCache
from queuescaler.kube.client import HpaTarget, NotFound
from queuescaler.metrics import Metrics
from queuescaler.sources.rabbitmq.listing import parse_client_connections
from queuescaler.sources.rabbitmq.secret import RabbitMQBroker
from queuescaler.sources.registry import parse_spec

pytestmark = pytest.mark.unit

VHOST = "jobs"
CONNECTION = "10.0.0.7:40112 -> 10.0.0.2:5672"


def _connection(name: str = CONNECTION, **fields: Any) -> dict[str, Any]:
    """One connection as `/api/connections?columns=...` lists it on RabbitMQ 3.10."""
    entry: dict[str, Any] = {
        "name": name,
        "vhost": VHOST,
        "user_provided_name": "worker-abc12",
        "client_properties": {"connection_name": "worker-abc12", "product": "Pika"},
    }
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not ...}


def _channel(connection: str = CONNECTION, **fields: Any) -> dict[str, Any]:
    """One channel as `/api/channels?columns=...` lists it on RabbitMQ 3.10."""
    entry: dict[str, Any] = {
        "vhost": VHOST,
        "connection_details": {"name": connection, "peer_host": "10.0.0.7", "peer_port": 40112},
        "consumer_count": 1,
        "messages_unacknowledged": 1,
    }
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not ...}


def _parse(connections: list[Any], channels: list[Any]) -> list[BrokerClient]:
    return parse_client_connections(
        json.dumps(connections).encode(), json.dumps(channels).encode(), {VHOST}
    )


def _client(name: str | None = "worker-abc12", unacked: int = 1, *, consumers: int = 1,
            peer: str | None = "10.0.0.7", vhost: str = VHOST) -> BrokerClient:
    return BrokerClient(vhost, name, peer, consumers, unacked)


@pytest.mark.parametrize(
    ("connections", "channels", "expected"),
    [
        pytest.param([_connection()], [_channel()], [_client()], id="named-busy-consumer"),
        pytest.param(
            [_connection(user_provided_name=...)], [_channel()], [_client()],
            id="name-from-client-properties",
        ),
        pytest.param(
            [_connection(user_provided_name=..., client_properties={"product": "x"})],
            [_channel()], [_client(None)], id="unnamed-connection",
        ),
        pytest.param([], [_channel()], [_client(None)], id="connection-opened-between-requests"),
        pytest.param(
            [_connection()], [_channel(messages_unacknowledged=2), _channel(consumer_count=0)],
            [_client(unacked=3)], id="channels-of-one-connection-add-up",
        ),
        pytest.param(
            [_connection()], [_channel(messages_unacknowledged=0)], [_client(unacked=0)],
            id="idle-consumer",
        ),
        pytest.param(
            [_connection()], [_channel(consumer_count=0, messages_unacknowledged=0)], [],
            id="publisher-only-connection-left-out",
        ),
        pytest.param([_connection()], [_channel(vhost="other")], [], id="other-vhost"),
        pytest.param(
            # review finding: an unknown count was read as idle and the pod marked first
            [_connection()], [_channel(messages_unacknowledged=..., consumer_count=...)],
            [_client(unacked=1, consumers=0)], id="channel-without-statistics-counts-as-busy",
        ),
        pytest.param(
            [_connection()], [_channel(messages_unacknowledged="3"), _channel()],
            [_client(unacked=2, consumers=2)], id="malformed-count-counts-as-busy",
        ),
        pytest.param(
            [_connection()], [_channel(connection_details=None), "junk", 7], [],
            id="channels-without-connection-skipped",
        ),
    ],
)
def test_listings_become_client_connections(
    connections: list[Any], channels: list[Any], expected: list[BrokerClient]
) -> None:
    assert _parse(connections, channels) == expected


@pytest.mark.parametrize(
    ("connections", "channels"),
    [
        pytest.param(b"<html>", b"[]", id="connections-not-json"),
        pytest.param(b"[]", b'{"error": "x"}', id="channels-not-a-list"),
    ],
)
def test_a_listing_that_is_no_list_is_a_bad_response(connections: bytes, channels: bytes) -> None:
    with pytest.raises(SourceError) as raised:
        parse_client_connections(connections, channels, {VHOST})
    assert raised.value.kind is ErrorKind.BAD_RESPONSE


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
    | st.sampled_from([VHOST, CONNECTION, "name", "vhost"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from([
            "name", "vhost", "user_provided_name", "client_properties", "connection_name",
            "connection_details", "peer_host", "consumer_count", "messages_unacknowledged",
        ]) | st.text(max_size=4),
        inner, max_size=5,
    ),
    max_leaves=20,
)


@given(connections=_json, channels=_json)
def test_any_json_gives_connections_or_a_bad_response(connections: Any, channels: Any) -> None:
    try:
        found = parse_client_connections(
            json.dumps(connections).encode(), json.dumps(channels).encode(), {VHOST}
        )
    except SourceError as error:
        assert error.kind is ErrorKind.BAD_RESPONSE
        return
    for client in found:
        assert client.consumers >= 0 and client.unacked >= 0
        assert client.consumers > 0 or client.unacked > 0


@given(connections=st.binary(max_size=64), channels=st.binary(max_size=64))
def test_any_bytes_give_connections_or_a_bad_response(connections: bytes, channels: bytes) -> None:
    try:
        parse_client_connections(connections, channels, {VHOST})
    except SourceError as error:
        assert error.kind is ErrorKind.BAD_RESPONSE


PODS = [Pod("worker-a", "10.0.0.7"), Pod("worker-b", "10.0.0.8"), Pod("worker-c", "10.0.0.9")]


@pytest.mark.parametrize(
    ("pods", "clients", "held", "named", "addressed"),
    [
        pytest.param(
            PODS, [_client("worker-a", 2), _client("worker-b", 0, peer="127.0.0.1")],
            {"worker-a": 2, "worker-b": 0}, 2, 0, id="by-connection-name",
        ),
        pytest.param(
            PODS, [_client(None, 1, peer="10.0.0.8")], {"worker-b": 1}, 0, 1,
            id="by-peer-address",
        ),
        pytest.param(
            PODS, [_client("worker-c", 1, peer="10.0.0.1")], {"worker-c": 1}, 1, 0,
            id="name-wins-over-an-address-of-no-pod",
        ),
        pytest.param(  # a name hard-coded for every worker, or a stale listing (review 50)
            PODS, [_client("worker-c", 1, peer="10.0.0.7")], {"worker-a": 1, "worker-c": 1},
            1, 1, id="name-and-another-pods-own-address-both-keep-a-busy-one",
        ),
        pytest.param(
            PODS, [_client("worker-c", 0, peer="10.0.0.7")], {}, 0, 0,
            id="name-and-another-pods-own-address-idle-say-nothing",
        ),
        pytest.param(
            PODS, [_client("worker-a", 1), _client("worker-a", 2)], {"worker-a": 3}, 2, 0,
            id="two-connections-of-one-pod-add-up",
        ),
        pytest.param(
            [Pod("worker-a", "10.0.0.1"), Pod("worker-b", "10.0.0.1")],
            [_client(None, 1, peer="10.0.0.1")], {}, 0, 0, id="shared-host-ip-matches-nobody",
        ),
        pytest.param(
            [Pod("worker-a", "10.0.0.7", deleting=True)], [_client("worker-a", 1)], {}, 0, 0,
            id="terminating-pods-do-not-count",
        ),
        pytest.param(
            PODS, [_client("worker-a", 1, vhost="other")], {}, 0, 0, id="other-vhost",
        ),
        pytest.param(
            PODS, [_client("someone-else", 4, peer="192.168.1.1")], {}, 0, 0,
            id="connections-of-other-pods",
        ),
    ],
)
def test_connections_match_pods(
    pods: list[Pod], clients: list[BrokerClient], held: dict[str, int], named: int,
    addressed: int,
) -> None:
    report = match_workers(pods, clients, {QueueRef(VHOST, "jobs")})
    assert dict(report.held) == held
    assert (report.by_name, report.by_address) == (named, addressed)
    assert report.matched == len(held)
    assert report.busy == sum(1 for count in held.values() if count)


def test_a_terminating_pods_named_connections_count_nowhere() -> None:
    """The pod left the replicas already: counted as on no pod, its tasks finishing in a
    long grace period held the whole pool after every scale-down. An unnamed connection
    from its address is on no pod still (review 46: the address may be a live pod's whose
    IP is not listed yet, or a node's under SNAT)."""
    pods = [Pod("worker-a", "10.0.0.7"), Pod("worker-b", "10.0.0.8", deleting=True)]
    clients = [_client("worker-b", 3, peer="10.0.0.8"), _client("worker-a", 0)]
    report = match_workers(pods, clients, {QueueRef(VHOST, "jobs")})
    assert (report.pods, report.consuming, report.unattributed) == (1, 1, 0)
    assert dict(report.held) == {"worker-a": 0}
    assert report.placed and report.protected == 0
    unnamed = match_workers(pods, [*clients, _client(None, 2, peer="10.0.0.8")],
                            {QueueRef(VHOST, "jobs")})
    assert unnamed.unattributed == 1 and not unnamed.placed


def test_a_leaving_pods_name_alone_or_shared_address_is_no_leaving_pod() -> None:
    """Review 44: a name may be wrong. Skipped, a connection named after a leaving pod
    from a live pod's address left that busy pod unprotected: it counts as the live
    pod's. Reviews 47 and 48: an address a leaving pod shares with a new one keeps the new
    pod when busy and says nothing when idle (an idle connection of the leaving pod marked
    a busy pod idle; a busy one placed on no pod left the busy pod marked idle)."""
    queues = {QueueRef(VHOST, "jobs")}
    pods = [Pod("w-0", "10.0.0.3"), Pod("w-2", "10.0.0.2", deleting=True), Pod("w-5", "10.0.0.5")]
    report = match_workers(pods, [_client("w-0", 0, peer="10.0.0.3"),
                                  _client("w-2", 2, peer="10.0.0.5")], queues)
    assert dict(report.held) == {"w-0": 0, "w-5": 2} and report.protected == 1
    reused = [Pod("w-a", "10.0.0.1", deleting=True), Pod("w-b", "10.0.0.1")]
    for name in (None, "w-a"):
        busy = match_workers(reused, [_client(name, 3, peer="10.0.0.1")], queues)
        assert dict(busy.held) == {"w-b": 3} and busy.protected == 1, "w-b kept"
        idle = match_workers(reused, [_client(name, 0, peer="10.0.0.1")], queues)
        assert not idle.held and idle.unmatched == 1, "w-b not taken for idle"
    mixed = [Pod("w-b", "10.0.0.1"), Pod("w-a", "10.0.0.1", deleting=True), Pod("w-u", "10.0.0.3")]
    report = match_workers(mixed, [_client("w-b", 0, peer="10.0.0.1"),
                                   _client(None, 3, peer="10.0.0.1")], queues)
    assert dict(report.held) == {"w-b": 3} and report.unattributed == 0


def test_a_pod_not_seen_at_its_own_ip_may_own_a_busy_connection_on_no_pod() -> None:
    """A worker names its own connection after its pod while a library's second one goes
    unnamed; with the pod's IP not listed yet (or NAT), the busy unnamed one matched no pod
    and was placed on an unmatched pod, and the busy pod was marked idle: removed first."""
    queues = {QueueRef(VHOST, "jobs")}
    pods = [Pod("w-0"), Pod("w-1", "10.0.0.1"), Pod("w-2", "10.0.0.2")]
    clients = [_client("w-0", 0, peer="10.0.0.9"), _client(None, 3, peer="10.0.0.9"),
               _client("w-2", 1, peer="10.0.0.2")]
    report = match_workers(pods, clients, queues)
    assert report.doubtful == {"w-0"} and report.unattributed == 1
    assert report.protected == 3, "w-2 busy, and w-0 or w-1 holds the unnamed connection"
    assert deletion_cost(report, "w-0") == deletion_cost(report, "w-1") == 0
    # seen at its own IP, a pod's other connections would come from there too: not it
    seen = [Pod("w-0", "10.0.0.9"), *pods[1:]]
    clients[1] = _client(None, 3, peer="192.0.2.1")
    report = match_workers(seen, clients, queues)
    assert not report.doubtful and deletion_cost(report, "w-0") == IDLE_COST
    assert report.protected == 2
    # and with no busy connection unplaced, nobody is in doubt
    report = match_workers(pods, [clients[0], clients[2]], queues)
    assert not report.doubtful and deletion_cost(report, "w-0") == IDLE_COST


def test_an_address_a_pods_named_connection_comes_from_is_that_pods_too() -> None:
    """Review 49: w-1 names its connection, a library's second one goes unnamed, both from
    192.168.0.1: w-1's IP, not listed yet, which a pod on its way out still shows. The busy
    one may be w-1's: it is in doubt, and kept."""
    queues = {QueueRef(VHOST, "jobs")}
    pods = [Pod("w-0", "192.168.0.1", deleting=True), Pod("w-1"), Pod("w-2", "192.168.0.2")]
    report = match_workers(pods, [_client("w-1", 0, peer="192.168.0.1"),
                                  _client(None, 3, peer="192.168.0.1"),
                                  _client("w-2", 0, peer="192.168.0.2")], queues)
    assert report.unattributed == 1 and report.doubtful == {"w-1"}, report
    # a connection named after the leaving pod, from the address the new one took, counts
    report = match_workers(pods, [_client("w-1", 0, peer="192.168.0.1"),
                                  _client("w-0", 2, peer="192.168.0.1")], queues)
    assert report.unattributed == 1 and report.doubtful == {"w-1"}


def test_pods_on_their_nodes_network_share_its_address() -> None:
    """Review 49: two pods with hostNetwork on one node, both at its IP. A busy unnamed
    connection from there is either's: neither is marked idle."""
    queues = {QueueRef(VHOST, "jobs")}
    pods = [Pod("w-0", "192.168.0.1"), Pod("w-1", "192.168.0.1"), Pod("w-2", "192.168.0.2")]
    report = match_workers(pods, [_client("w-0", 0, peer="192.168.0.1"),
                                  _client("w-1", 0, peer="192.168.0.1"),
                                  _client(None, 3, peer="192.168.0.1"),
                                  _client("w-2", 0, peer="192.168.0.2")], queues)
    assert report.doubtful == {"w-0", "w-1"} and report.placed and report.protected == 2


def test_a_name_from_another_live_pods_own_address_is_not_believed_alone() -> None:
    """Review 50: every worker names its connection "w-0" (hard-coded). Believed, busy w-3's
    connection made w-0 busy and left w-3 unmatched, removable. Where name and address
    disagree, a busy connection keeps both pods (the listing may be the stale one)."""
    queues = {QueueRef(VHOST, "jobs")}
    pods = [Pod(f"w-{i}", f"10.0.0.{i}") for i in range(4)]
    clients = [_client("w-0", 3 if i == 3 else 0, peer=f"10.0.0.{i}") for i in range(4)]
    report = match_workers(pods, clients, queues)
    assert dict(report.held) == {"w-0": 3, "w-3": 3} and report.protected == 2


def test_behind_snat_only_pods_seen_from_the_busy_connections_node_are_in_doubt() -> None:
    """Review 49: every pod seen through its node's address; a busy unnamed connection from
    node B is a pod on node B (or one not matched), never one seen from node A."""
    queues = {QueueRef(VHOST, "jobs")}
    pods = [Pod(f"w-{i}", f"10.1.{i}.5", node_ip=f"192.168.0.{1 + i // 2}") for i in range(4)]
    clients = [_client("w-0", 0, peer="192.168.0.1"), _client("w-1", 0, peer="192.168.0.1"),
               _client("w-2", 0, peer="192.168.0.2"), _client("w-3", 0, peer="192.168.0.2"),
               _client(None, 3, peer="192.168.0.2")]
    report = match_workers(pods, clients, queues)
    assert report.doubtful == {"w-2", "w-3"} and report.protected == 2
    assert deletion_cost(report, "w-0") == IDLE_COST and deletion_cost(report, "w-2") == 0
    # an address the broker does not give may be any pod's (review 52: held them all)
    clients[-1] = _client(None, 3, peer=None)
    report = match_workers(pods, clients, queues)
    assert report.doubtful == {f"w-{i}" for i in range(4)} and report.placed


def test_a_pod_seen_through_a_gateway_may_show_its_next_connection_anywhere() -> None:
    """Review 51: two egress gateway addresses (or a NAT with several). w-0's named
    connection left by G1, its library's busy one by G2; taken for one address a pod, w-0
    was not in doubt for G2's, and went first."""
    queues = {QueueRef(VHOST, "jobs")}
    pods = [Pod(f"w-{i}", f"10.1.{i}.5", node_ip="192.168.0.1") for i in range(3)]
    clients = [_client("w-0", 0, peer="192.0.2.1"), _client(None, 3, peer="192.0.2.2"),
               _client("w-1", 0, peer="192.0.2.1"), _client("w-2", 0, peer="192.0.2.2")]
    report = match_workers(pods, clients, queues)
    assert report.doubtful == {"w-0", "w-1", "w-2"} and report.stray == 0
    assert deletion_cost(report, "w-0") == 0 and report.protected == 3


def test_a_dual_stack_pods_connection_from_its_other_address_is_its_own() -> None:
    """Review 49: only status.podIP was kept; a library's connection over the pod's other
    family matched no pod, was placed on a pod not connected yet, and the busy pod went
    first."""
    queues = {QueueRef(VHOST, "jobs")}
    pods = [Pod("w-0", "10.0.0.1", other_ips=("fd00::1",)), Pod("w-1", "10.0.0.2")]
    report = match_workers(pods, [_client("w-0", 0, peer="10.0.0.1"),
                                  _client(None, 3, peer="fd00::1")], queues)
    assert dict(report.held) == {"w-0": 3} and not report.unattributed


REPORT = WorkerReport(pods=3, consuming=2, held={"worker-a": 3, "worker-b": 0}, by_name=2)


def _floor(pods: list[Pod], report: WorkerReport, current: int, unmatched_stay: bool = False,
           **kw: Any) -> tuple[int, str, int] | None:
    found = removal_floor(pods, report, current, unmatched_stay, **kw)
    return None if found is None else (found.replicas, found.pod.name, found.before)


def test_with_nothing_that_must_stay_any_scale_down_is_safe() -> None:
    report = WorkerReport(pods=2, consuming=1, held={"w-0": 0})
    assert _floor([Pod("w-0", ready=False), Pod("w-1", owner="ReplicaSet/w-2")], report, 2) is None


def test_ready_pods_of_one_controller_go_by_cost() -> None:
    """The least busy pod sets the floor: every idle or unmatched pod goes before it."""
    report = WorkerReport(pods=5, consuming=4, held={"a": 3, "b": 1, "c": 0, "d": 0})
    pods = [Pod(name) for name in "abcde"]
    assert _floor(pods, report, 5) == (2, "b", 3)
    assert _floor(pods, report, 5, unmatched_stay=True) == (3, "e", 2)


def test_a_busy_pod_not_ready_goes_before_idle_ready_ones() -> None:
    """The ReplicaSet ranks readiness (and scheduling, and phase) before the cost: a busy
    pod whose readiness probe times out while it works goes first, whatever it is marked."""
    report = WorkerReport(pods=4, consuming=4, held={"a": 2, "b": 0, "c": 0, "d": 0})
    assert _floor([Pod("a", ready=False), Pod("b"), Pod("c"), Pod("d")], report, 4) == (
        4, "a", 0)
    # an idle pod less far along than it still goes first
    pending = Pod("d", phase="Pending", ready=False, scheduled=False)
    assert _floor([Pod("a", ready=False), Pod("b"), Pod("c"), pending], report, 4) == (
        3, "a", 1)
    unknown = [Pod("a", phase="Unknown", ready=False), Pod("b", phase="Running", ready=False)]
    assert _floor([*unknown, Pod("c"), Pod("d")], report, 4) == (4, "a", 0)


def test_mid_rollout_only_a_pods_own_controller_ranks_before_it() -> None:
    """Each ReplicaSet ranks its own pods and may take the whole removal; the surge pods
    beyond the replicas count in it. A ReplicaSet with nothing that must stay constrains
    nothing (review 53: a new ReplicaSet's pod that never connects froze the pool)."""
    report = WorkerReport(pods=6, consuming=6,
                          held={"old-a": 0, "old-b": 0, "old-c": 0, "new-a": 1, "new-b": 0})
    old, new = "ReplicaSet/w-1", "ReplicaSet/w-2"
    pods = [Pod("old-a", owner=old), Pod("old-b", owner=old), Pod("old-c", owner=old),
            Pod("old-d", owner=old, deleting=True), Pod("new-a", owner=new),
            Pod("new-b", owner=new), Pod("new-c", owner=new, phase="Pending", ready=False)]
    assert _floor(pods, report, 5) == (4, "new-a", 2)
    assert _floor(pods, report, 8) == (6, "new-a", 2)


def test_percent_surge_shrinking_with_the_count_is_counted_in_the_removal() -> None:
    """Review 53: replicas 9, maxSurge 25%: the old ReplicaSet's 9 pods (one idle), the new
    one's 3. Scaled 9 -> 8, the Deployment takes 2 from the old one (its share and the
    leftover of a surge that fell from 3 to 2): the 12 pods listed say so."""
    old, new = "ReplicaSet/w-1", "ReplicaSet/w-2"
    held = {f"old-{i}": int(i > 0) for i in range(9)} | {f"new-{i}": 0 for i in range(3)}
    pods = [Pod(name, owner=old if name.startswith("old") else new) for name in held]
    report = WorkerReport(pods=12, consuming=12, held=held)
    assert _floor(pods, report, 9) == (11, "old-1", 1)


def test_pods_the_scale_cannot_remove_are_left_out() -> None:
    """Review 53: a bare pod, or another workload's, matching the selector held the pool
    for nothing: no scale of the target removes it."""
    report = WorkerReport(pods=3, consuming=3, held={"w-0": 0, "debug": 2, "beat-0": 1})
    pods = [Pod("w-0", owner="ReplicaSet/w-1"), Pod("debug"),
            Pod("beat-0", owner="ReplicaSet/beat-1")]
    assert _floor(pods, report, 1, removable=lambda pod: pod.owner == "ReplicaSet/w-1") is None


def test_with_no_pod_matched_every_pod_on_a_node_stays_if_any_must() -> None:
    """Review 55: a Pending pod may run its worker already (a sidecar still pulling its
    image keeps the pod Pending); a pod on no node runs nothing."""
    report = WorkerReport(pods=4, consuming=1, unattributed=1)
    pods = [Pod("a", deletion_cost="-5"), Pod("b", phase="Pending", ready=False), Pod("c"),
            Pod("d", scheduled=False, phase="Pending", ready=False)]
    assert _floor(pods, report, 4, unmatched_stay=True) == (3, "b", 1)


@pytest.mark.parametrize(
    ("pod", "cost"),
    [
        pytest.param("worker-a", 3, id="busy-costs-what-it-holds"),
        pytest.param("worker-b", IDLE_COST, id="idle-goes-first"),
        pytest.param("worker-c", 0, id="unmatched-between-idle-and-busy"),
    ],
)
def test_deletion_cost(pod: str, cost: int) -> None:
    assert deletion_cost(REPORT, pod) == cost


def test_a_huge_backlog_in_hand_is_capped_at_int32() -> None:
    report = WorkerReport(1, 1, {"worker-a": 2**40})
    assert deletion_cost(report, "worker-a") == MAX_COST


@pytest.mark.parametrize(
    ("pods", "report", "marks"),
    [
        pytest.param(
            PODS, REPORT,
            {
                "worker-a": {DELETION_COST: "3", MARKED_BY: "qs"},
                "worker-b": {DELETION_COST: "-1", MARKED_BY: "qs"},
                "worker-c": {DELETION_COST: "0", MARKED_BY: "qs"},
            },
            id="first-marks",
        ),
        pytest.param(
            [Pod("worker-a", deletion_cost="3", marked_by="qs"),
             Pod("worker-b", deletion_cost="3", marked_by="qs")],
            REPORT, {"worker-b": {DELETION_COST: "-1", MARKED_BY: "qs"}},
            id="only-changed-marks",
        ),
        pytest.param(
            [Pod("worker-a", deletion_cost="3", marked_by="someone")], REPORT,
            {"worker-a": {DELETION_COST: "3", MARKED_BY: "qs"}}, id="taken-over-marks",
        ),
        pytest.param(
            [Pod("worker-a", deleting=True)], REPORT, {}, id="terminating-pods-left-alone",
        ),
        pytest.param(PODS, WorkerReport(3, 1), {}, id="nothing-matched-nothing-marked"),
    ],
)
def test_deletion_marks(pods: list[Pod], report: WorkerReport, marks: dict[str, Any]) -> None:
    assert deletion_marks(pods, report, "qs") == marks


def test_cleared_marks_are_only_our_own() -> None:
    pods = [Pod("worker-a", marked_by="qs"), Pod("worker-b", marked_by="other"), Pod("worker-c")]
    assert cleared_marks(pods, "qs") == {"worker-a": {DELETION_COST: None, MARKED_BY: None}}


@pytest.mark.parametrize(
    ("report", "enabled", "problem", "status", "reason", "says"),
    [
        pytest.param(REPORT, True, None, True, "Matched", "2 of 3 pods matched", id="matched"),
        pytest.param(
            WorkerReport(3, 2), True, None, False, "NoConsumersMatched", "none of the 2",
            id="consumers-match-no-pod",
        ),
        pytest.param(
            WorkerReport(3, 0), True, None, False, "NoConsumersMatched", "no consumer",
            id="no-consumers",
        ),
        pytest.param(
            WorkerReport(0, 2), True, None, False, "NoConsumersMatched", "no pods",
            id="no-pods",
        ),
        pytest.param(
            None, True, "HTTP 403", False, "NotListed", "HTTP 403", id="listing-failed",
        ),
        pytest.param(
            REPORT, False, None, False, "ProtectionDisabled", "protectBusyWorkers is false",
            id="disabled",
        ),
    ],
)
def test_workers_matched_condition(
    report: WorkerReport | None, enabled: bool, problem: str | None, status: bool, reason: str,
    says: str,
) -> None:
    condition = workers_condition(report, VHOST, enabled=enabled, problem=problem)
    assert (condition.type, condition.status, condition.reason) == (
        "WorkersMatched", status, reason,
    )
    assert says in condition.message
    if enabled and not status:
        assert "not protected" in condition.message


# --- the engine's tick, against fakes ---

BROKER = RabbitMQBroker("amqp://u:p@rabbit/", "http://u:p@rabbit:15672")
NOW = 1_800_000_000.0


class FakeSource:
    def __init__(self, clients: Sequence[BrokerClient], log: list[str]) -> None:
        self._clients = clients
        self.log = log

    async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
        return {q: QueueSample(ready=0, unacked=2, consumers=4, taken_at=NOW) for q in queues}

    async def peek(self, queues: Collection[QueueRef]) -> SampleResult:
        return {}

    async def clients(self, vhosts: Collection[str]) -> Sequence[BrokerClient]:
        self.log.append(f"clients {sorted(vhosts)}")
        return self._clients

    async def close(self) -> None:
        pass


class FakeKube:
    """Records every call in order; pods carry the annotations patched onto them."""

    def __init__(self, pods: list[Pod]) -> None:
        self.template = pods
        self.namespaces: dict[str, dict[str, Pod]] = {}
        self.log: list[str] = []
        self.statuses: list[dict[str, Any]] = []

    async def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        return {"amqpUrl": BROKER.amqp_url, "managementUrl": BROKER.management_url or ""}

    async def read_replicas(self, namespace: str, target: ScaleTargetRef) -> int:
        raise AssertionError("replicas come from the cache")

    async def read_selector(self, namespace: str, target: ScaleTargetRef) -> str:
        self.log.append("selector")
        return "app=worker"

    async def list_pods(self, namespace: str, selector: str) -> list[Pod]:
        self.log.append(f"pods {namespace}")
        return list(self.pods(namespace).values())

    def pods(self, namespace: str) -> dict[str, Pod]:
        return self.namespaces.setdefault(namespace, {pod.name: pod for pod in self.template})

    async def annotate_pod(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        pods = self.pods(namespace)
        if name not in pods:
            raise NotFound("NotFound", "gone")
        self.log.append(f"mark {namespace} {name} {annotations[DELETION_COST]}")
        pod = pods[name]
        pods[name] = Pod(pod.name, pod.ip, pod.deleting, annotations[DELETION_COST],
                              annotations[MARKED_BY])

    async def scale(self, namespace: str, target: ScaleTargetRef, replicas: int) -> None:
        self.log.append(f"scale {namespace} {replicas}")

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.statuses.append(dict(status))

    async def emit_event(self, *args: Any) -> None:
        pass

    async def list_hpas(self, namespace: str) -> list[HpaTarget]:
        return []


def _engine(
    kube: FakeKube, source: FakeSource, *scalers: tuple[str, bool], replicas: int = 4
) -> Engine:
    registry = Fleet()
    cache = ReplicaCache()
    for name, protect in scalers:
        registry.upsert({
            "metadata": {"namespace": name, "name": name, "uid": name, "generation": 1},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                   "name": "worker"},
                "minReplicas": 1,
                "maxReplicas": 10,
                "source": {"rabbitmq": {"queue": "jobs", "vhost": VHOST,
                                        "connectionSecretRef": {"name": "rabbitmq"}}},
                "target": {"messagesPerReplica": 10},
                "behavior": {"scaleDown": {"stabilizationSeconds": 0, "maxStepPercent": 100,
                                           "protectBusyWorkers": protect}},
            },
        }, NOW)
        cache.set(name, "worker", replicas)
    return Engine(
        kube, registry, cache, Metrics(CollectorRegistry(), process=False),
        lambda broker: source, EngineSettings(fast_path=False), clock=lambda: NOW,
    )


BUSY_POOL = [Pod(f"worker-{i}", f"10.0.0.{i}") for i in range(4)]
BUSY_CLIENTS = [_client("worker-0", 1), _client("worker-1", 1), _client("worker-2", 0)]


async def test_a_scale_down_keeps_the_busy_pods_and_marks_the_idle_ones_first() -> None:
    kube, calls = FakeKube(BUSY_POOL), []
    source = FakeSource(BUSY_CLIENTS, calls)
    engine = _engine(kube, source, ("a", True), ("b", True))
    await engine.tick(NOW)

    assert calls == [f"clients ['{VHOST}']"], "one listing per broker per tick"
    for namespace in ("a", "b"):
        scaled = kube.log.index(f"scale {namespace} 2")  # two busy pods: kept at 2, not 1
        marks = [c for c in kube.log[:scaled] if c.startswith(f"mark {namespace} ")]
        assert sorted(marks) == [
            f"mark {namespace} worker-0 1", f"mark {namespace} worker-1 1",
            f"mark {namespace} worker-2 -1", f"mark {namespace} worker-3 0",
        ], "every pod marked before the scale: idle first, unmatched next, busy last"
    status = kube.statuses[-1]
    assert status["workers"] == {"matched": 3, "busy": 2, "unmatched": 1}
    assert status["lastDecision"]["reason"] == "busy-workers"
    (condition,) = [c for c in status["conditions"] if c["type"] == "WorkersMatched"]
    assert condition["status"] == "True"


async def test_no_scale_down_means_no_look_at_workers() -> None:
    kube, calls = FakeKube(BUSY_POOL), []
    engine = _engine(kube, FakeSource(BUSY_CLIENTS, calls), ("a", True), replicas=1)
    await engine.tick(NOW)
    assert calls == []
    assert not [c for c in kube.log if c.startswith(("pods", "selector", "mark"))]
    assert "workers" not in kube.statuses[-1]


async def test_without_protection_nothing_is_listed_or_marked() -> None:
    kube, calls = FakeKube(BUSY_POOL), []
    engine = _engine(kube, FakeSource(BUSY_CLIENTS, calls), ("a", False))
    await engine.tick(NOW)
    assert calls == []
    assert kube.log == ["scale a 1"]
    (condition,) = [c for c in kube.statuses[-1]["conditions"] if c["type"] == "WorkersMatched"]
    assert condition["reason"] == "ProtectionDisabled"


async def test_a_busy_consumer_matched_to_no_pod_holds_the_scale_down() -> None:
    """Protection fails closed: the busy client could be any pod, so none goes."""
    kube, calls = FakeKube(BUSY_POOL), []
    anonymous = [_client(None, 1, peer="127.0.0.1")]
    engine = _engine(kube, FakeSource(anonymous, calls), ("a", True))
    await engine.tick(NOW)
    assert [c for c in kube.log if c.startswith(("mark", "scale"))] == []
    (condition,) = [c for c in kube.statuses[-1]["conditions"] if c["type"] == "WorkersMatched"]
    assert (condition["status"], condition["reason"]) == ("False", "NoConsumersMatched")
    assert kube.statuses[-1]["workers"] == {"matched": 0, "busy": 0, "unmatched": 4}
    assert kube.statuses[-1]["lastDecision"]["reason"] == "busy-workers"


async def test_idle_consumers_matched_to_no_pod_do_not_hold_the_scale_down() -> None:
    kube, calls = FakeKube(BUSY_POOL), []
    anonymous = [_client(None, 0, peer="127.0.0.1"), _client("worker-0", 2)]
    engine = _engine(kube, FakeSource(anonymous, calls), ("a", True))
    await engine.tick(NOW)
    assert "scale a 1" in kube.log


async def test_a_failed_listing_holds_the_scale_down_and_says_why() -> None:
    class Refusing(FakeSource):
        async def clients(self, vhosts: Collection[str]) -> Sequence[BrokerClient]:
            raise SourceError(ErrorKind.AUTH, "HTTP 401")

    kube = FakeKube(BUSY_POOL)
    engine = _engine(kube, Refusing([], []), ("a", True))
    await engine.tick(NOW)
    assert not [c for c in kube.log if c.startswith(("mark", "scale"))]
    (condition,) = [c for c in kube.statuses[-1]["conditions"] if c["type"] == "WorkersMatched"]
    assert (condition["status"], condition["reason"]) == ("False", "NotListed")
    assert "HTTP 401" in condition["message"]
    assert "busy workers unknown" in kube.statuses[-1]["lastDecision"]["message"]


async def test_deleting_the_scaler_clears_its_marks() -> None:
    kube, calls = FakeKube(BUSY_POOL), []
    engine = _engine(kube, FakeSource(BUSY_CLIENTS, calls), ("a", True))
    await engine.tick(NOW)
    gone = engine.fleet.remove("a", "a")
    assert gone is not None and gone.memory.marks
    pods = kube.pods("a")
    pods["worker-x"] = Pod("worker-x", deletion_cost="5", marked_by="someone-else")
    await engine.release(gone)
    assert all(pod.marked_by in (None, "someone-else") for pod in pods.values())
    assert pods["worker-x"].deletion_cost == "5"
    assert gone.memory.marks == {}


@pytest.mark.parametrize(
    ("block", "where"),
    [
        pytest.param({"rabbitmq": {"queue": "jobs", "vhost": "/"}}, "vhost '/'", id="rabbitmq"),
        pytest.param({"redis": {"queue": "celery"}}, "the Redis", id="redis-kombu"),
        pytest.param({"redis": {"stream": "jobs", "group": "pool"}}, "stream group 'pool'",
                     id="redis-stream"),
        pytest.param({"kafka": {"topic": "orders", "consumerGroup": "orders-workers"}},
                     "consumer group 'orders-workers'", id="kafka"),
    ],
)
def test_the_workers_condition_says_where_in_the_brokers_words(
    block: dict[str, dict[str, str]], where: str
) -> None:
    """Not the queues' scope, which is the source's own encoding (a Kafka group's scope is a
    JSON object): found end to end, 'connected in vhost '{"cap":"lag","group":...}''."""
    broker, fields = next(iter(block.items()))
    spec = parse_spec({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
        "maxReplicas": 4,
        "source": {broker: {**fields, "connectionSecretRef": {"name": "s"}}},
    })
    assert spec.source.where == where
    condition = workers_condition(WorkerReport(3, 0), spec.source.where, enabled=True)
    assert f"no consumer of its queues is connected in {where}" in condition.message
    assert "{" not in condition.message
