"""Which ActiveMQ clients hold messages, out of the answers both brokers really give
(tests/unit/activemq_answers.json): Classic's consumer and connection MBeans, Artemis'
listConsumers. A client that cannot be told holds work (protection fails closed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from queuescaler.core.sample import BrokerClient, ErrorKind, QueueRef, SourceError
from queuescaler.core.workers import Pod, match_workers
from queuescaler.sources.activemq.consumers import ListingPlan, peer_host
from queuescaler.sources.activemq.spec import BrokerScope, Flavor

pytestmark = pytest.mark.unit

ANSWERS: dict[str, Any] = json.loads(
    (Path(__file__).with_name("activemq_answers.json")).read_text())
DETECT = BrokerScope()


def listing(flavor: Flavor, *scopes: BrokerScope) -> ListingPlan:
    return ListingPlan(flavor, [(s.scope, s) for s in scopes or (DETECT,)], f"qs-{flavor}")


@pytest.mark.parametrize(
    ("address", "host"),
    [
        pytest.param("tcp://127.0.0.1:60342", "127.0.0.1", id="classic"),
        pytest.param("127.0.0.1:35968", "127.0.0.1", id="artemis"),
        pytest.param("tcp:///10.0.0.5:1", "10.0.0.5", id="triple-slash"),
        pytest.param("/10.0.0.5:1", "10.0.0.5", id="java-socket-address"),
        pytest.param("worker-0.svc/10.0.0.5:1", "10.0.0.5", id="java-host-and-address"),
        pytest.param("[fd00::5]:5000", "fd00::5", id="ipv6-bracketed"),
        pytest.param("tcp://[fd00::5]:5000", "fd00::5", id="ipv6-url"),
        pytest.param("fd00::5", "fd00::5", id="ipv6-bare"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_a_remote_address_names_its_host(address: Any, host: str | None) -> None:
    assert peer_host(address) == host


@pytest.mark.parametrize("kind", ["classic", "artemis"])
def test_a_consumer_holding_messages_is_its_pods_client(kind: Flavor) -> None:
    (client,) = listing(kind).parse(ANSWERS[f"{kind}_listing"])
    held = 2 if kind == "classic" else 1  # Classic prefetch 2; Artemis one at a time
    assert client == BrokerClient(DETECT.scope, "worker-7f9c", "127.0.0.1", 1, held,
                                  frozenset({DETECT.ref(f"held-{kind}")}))
    report = match_workers([Pod("worker-7f9c", "10.1.0.7"), Pod("idle", "10.1.0.8")], [client],
                           [DETECT.ref(f"held-{kind}")])
    assert (report.busy, report.by_name) == (1, 1)


@pytest.mark.parametrize("kind", ["classic", "artemis"])
def test_a_connections_consumers_add_up_and_an_anonymous_one_is_matched_by_address(
    kind: Flavor,
) -> None:
    clients = listing(kind).parse(ANSWERS[f"{kind}_listing_two_connections"])
    named = [c for c in clients if c.client_name == "worker-a"]
    others = [c for c in clients if c.client_name != "worker-a"]
    (worker,) = named
    per_consumer = 2 if kind == "classic" else 1
    assert (worker.consumers, worker.unacked) == (2, 2 * per_consumer)
    assert worker.queues == frozenset({DETECT.ref("two-a"), DETECT.ref("two-b")})
    (anonymous,) = others
    # Classic names a connection without a client-id after its connection id; Artemis not at all
    assert anonymous.client_name is None or anonymous.client_name.startswith("ID:")
    assert (anonymous.peer_host, anonymous.consumers, anonymous.queues) == (
        "127.0.0.1", 1, frozenset({DETECT.ref("two-a")}))


def test_each_scope_gets_its_own_copy_of_the_clients() -> None:
    named = BrokerScope("classic", "qs-classic")
    clients = listing("classic", DETECT, named).parse(ANSWERS["classic_listing"])
    assert sorted(c.scope for c in clients) == sorted([DETECT.scope, named.scope])
    assert {ref for c in clients for ref in c.queues or ()} == {
        DETECT.ref("held-classic"), named.ref("held-classic")}


def test_the_bodies_read_classic_and_exec_artemis() -> None:
    classic = listing("classic").body()
    assert [r["type"] for r in classic] == ["read", "read", "read"]
    assert "endpoint=Consumer" in classic[1]["mbean"]
    assert "connectionViewType=clientId" in classic[2]["mbean"]
    artemis = listing("artemis").body()
    assert artemis[1]["type"] == "exec"
    assert artemis[1]["mbean"] == 'org.apache.activemq.artemis:broker="qs-artemis"'
    assert artemis[1]["operation"] == "listConsumers(java.lang.String,int,int)"


NOT_FOUND = {"status": 404, "error_type": "javax.management.InstanceNotFoundException",
             "error": "No MBean with pattern"}
PROBE_OK = {"status": 200, "value": {"BrokerVersion": "5.17.2"}}


def test_a_broker_without_consumers_lists_none() -> None:
    assert listing("classic").parse([PROBE_OK, NOT_FOUND, NOT_FOUND]) == []


def test_a_slave_cannot_tell_its_masters_consumers() -> None:
    standby = {"status": 200, "value": {"BrokerVersion": "5.17.2", "Slave": True}}
    with pytest.raises(SourceError) as failed:
        listing("classic").parse([standby, NOT_FOUND, NOT_FOUND])
    assert failed.value.kind is ErrorKind.UNREACHABLE


def test_a_broker_that_is_not_there_cannot_be_told() -> None:
    with pytest.raises(SourceError) as failed:
        listing("classic").parse([NOT_FOUND, NOT_FOUND, NOT_FOUND])
    assert failed.value.kind is ErrorKind.BAD_CONFIG


def consumers_page(*consumers: dict[str, Any], count: int | None = None) -> list[dict[str, Any]]:
    page = {"data": list(consumers), "count": len(consumers) if count is None else count}
    return [{"status": 200, "value": {"Version": "2.40.0"}},
            {"status": 200, "value": json.dumps(page)}]


CONSUMER = {"clientID": "w-1", "remoteAddress": "10.0.0.9:4000", "queue": "q",
            "address": "q", "queueType": "anycast", "messagesInTransit": "3", "session": "s"}


@pytest.mark.parametrize(
    ("change", "unacked", "queues"),
    [
        pytest.param({}, 3, {DETECT.ref("q")}, id="as-listed"),
        pytest.param({"messagesInTransit": "lots"}, 1, {DETECT.ref("q")},
                     id="held-unreadable-counts-one"),
        pytest.param({"messagesInTransit": None}, 1, {DETECT.ref("q")}, id="held-absent"),
        pytest.param({"queue": None}, 3, None, id="queue-unreadable-is-unknown"),
        pytest.param({"queueType": "direct"}, 3, None, id="routing-unknown"),
    ],
)
def test_what_cannot_be_read_fails_closed(
    change: dict[str, Any], unacked: int, queues: set[QueueRef] | None
) -> None:
    (client,) = listing("artemis").parse(consumers_page(CONSUMER | change))
    assert (client.unacked, client.queues) == (unacked, queues)


def test_an_artemis_subscription_queue_is_named_as_its_spec_names_it() -> None:
    events = BrokerScope("artemis", None, "events", "multicast")
    subscription = CONSUMER | {"queue": "sub-1", "address": "events", "queueType": "multicast"}
    plain = CONSUMER | {"remoteAddress": "10.0.0.9:4001"}
    clients = listing("artemis", events).parse(consumers_page(subscription, plain))
    assert {ref for c in clients for ref in c.queues or ()} == {
        events.ref("sub-1"), BrokerScope("artemis").ref("q")}


@pytest.mark.parametrize(
    ("entries", "kind", "words"),
    [
        pytest.param(consumers_page(CONSUMER, count=20_001), ErrorKind.BAD_RESPONSE,
                     "answered 1 of 20001 consumers", id="more-than-a-page"),
        pytest.param([{"status": 200, "value": {}},
                      {"status": 403, "error": "Operation listConsumers forbidden"}],
                     ErrorKind.AUTH, "refuses the read", id="exec-forbidden"),
        pytest.param([{"status": 200, "value": {}}, {"status": 200, "value": "not json"}],
                     ErrorKind.BAD_RESPONSE, "no data list", id="not-json"),
        pytest.param([{"status": 200, "value": {}}, {"status": 200, "value": '{"data": [1]}'}],
                     ErrorKind.BAD_RESPONSE, "not an object", id="consumer-not-an-object"),
    ],
)
def test_a_listing_that_cannot_be_read_fails(
    entries: list[dict[str, Any]], kind: ErrorKind, words: str
) -> None:
    with pytest.raises(SourceError) as failed:
        listing("artemis").parse(entries)
    assert failed.value.kind is kind
    assert words in failed.value.message


def test_a_classic_listing_refused_by_the_policy_fails() -> None:
    forbidden = {"status": 403, "error": "Reading attribute ClientId is forbidden"}
    with pytest.raises(SourceError) as failed:
        listing("classic").parse([PROBE_OK, forbidden, NOT_FOUND])
    assert failed.value.kind is ErrorKind.AUTH


@pytest.mark.parametrize("cut", [
    "[org.apache.activemq.broker.jmx.ConsumerView@1a2b]",  # maxDepth: the object as a string
    ["more"],
], ids=["a-string", "a-list"])
def test_a_consumer_listing_that_a_limit_cut_cannot_be_told(cut: Any) -> None:
    """Review s9 M3: an entry the listing cannot read would have been skipped, and a pod
    holding a message marked idle and removed first."""
    consumers = {"status": 200, "value": {
        "org.apache.activemq:brokerName=b,clientId=pod-1,consumerId=c1,destinationName=q,"
        "destinationType=Queue,endpoint=Consumer,type=Broker": cut}}
    with pytest.raises(SourceError) as failed:
        listing("classic").parse([PROBE_OK, consumers, NOT_FOUND])
    assert failed.value.kind is ErrorKind.BAD_RESPONSE
    assert "could go unseen" in failed.value.message
