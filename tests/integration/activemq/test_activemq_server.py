"""The ActiveMQ test brokers answer as the activemq source will ask them, over Jolokia.

Each broker starts, takes STOMP sends, and answers one bulk POST (a list of reads, MBean
patterns with wildcards among them) with every queue's attributes; a wrong login is refused at
the HTTP level and a request without an Origin in the JSON; a queue or pattern that matches
nothing is a 404 inside an HTTP 200; a consumer holding unacked messages shows up with its
connection's address. Where the brokers differ, the tests pin both answers: the source's
parsers are written from them (and /tmp/qs-notes/activemq-jolokia.md has the JSON).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from queuescaler_testkit.activemq_server import (
    ActiveMQServer,
    ArtemisServer,
    ClassicServer,
    object_name_quote,
)
from queuescaler_testkit.env import wait_until

pytestmark = pytest.mark.integration


def _queue(what: str) -> str:
    return f"qs-{what}-{uuid.uuid4().hex[:8]}"


def _version_read(server: ActiveMQServer) -> dict[str, Any]:
    if isinstance(server, ClassicServer):
        return {"type": "read", "mbean": server._broker_mbean(), "attribute": "BrokerVersion"}
    return {"type": "read", "mbean": server._broker_mbean(), "attribute": "Version"}


def _backlog(server: ActiveMQServer) -> str:
    return "QueueSize" if isinstance(server, ClassicServer) else "MessageCount"


def _in_flight(server: ActiveMQServer) -> str:
    return "InFlightCount" if isinstance(server, ClassicServer) else "DeliveringCount"


def _added(server: ActiveMQServer) -> str:
    return "EnqueueCount" if isinstance(server, ClassicServer) else "MessagesAdded"


def test_stomp_sends_land_in_the_queue(activemq: ActiveMQServer) -> None:
    queue = _queue("sends")
    assert activemq.queue_stats(queue) is None
    activemq.send(queue, 3)
    stats = activemq.queue_stats(queue)
    assert stats is not None
    assert stats[_backlog(activemq)] == 3
    assert stats[_added(activemq)] == 3
    assert stats["ConsumerCount"] == 0


def test_jolokia_reads_with_the_right_login(activemq: ActiveMQServer) -> None:
    status, body = activemq.jolokia(_version_read(activemq))
    assert status == 200
    assert body["status"] == 200
    expected = "5.17" if isinstance(activemq, ClassicServer) else "2.40"
    assert body["value"].startswith(expected)


@pytest.mark.parametrize(
    ("kind", "refused"),
    [
        pytest.param("classic", 401, id="classic-401-basic-challenge"),
        pytest.param("artemis", 403, id="artemis-403-from-hawtio"),
    ],
)
def test_jolokia_refuses_a_wrong_password_at_the_http_level(
    request: pytest.FixtureRequest, kind: str, refused: int
) -> None:
    server: ActiveMQServer = request.getfixturevalue(f"activemq_{kind}")
    status, body = server.jolokia(_version_read(server), password="wrong")
    assert (status, body) == (refused, None)  # no JSON at all: the body is empty


def test_jolokia_wants_an_origin_and_says_so_inside_an_http_200(
    activemq: ActiveMQServer,
) -> None:
    status, body = activemq.jolokia(_version_read(activemq), origin="")
    assert status == 200
    assert body["status"] == 403
    assert "Origin null is not allowed" in body["error"]


def test_artemis_takes_only_an_origin_of_its_own_host(activemq_artemis: ArtemisServer) -> None:
    status, body = activemq_artemis.jolokia(_version_read(activemq_artemis),
                                            origin="http://localhost")
    assert (status, body["status"]) == (200, 403)
    assert "Origin http://localhost is not allowed" in body["error"]


def test_bulk_post_reads_every_queue_by_pattern_in_one_request(activemq: ActiveMQServer) -> None:
    first, second, missing = _queue("bulk-a"), _queue("bulk-b"), _queue("missing")
    activemq.send(first, 2)
    activemq.send(second, 5)
    if isinstance(activemq, ClassicServer):
        exact = ("org.apache.activemq:type=Broker,brokerName=qs-classic,destinationType=Queue,"
                 f"destinationName={missing}")
        none = ("org.apache.activemq:type=Broker,brokerName=*,destinationType=Queue,"
                "destinationName=nothing-here-*")
    else:
        assert isinstance(activemq, ArtemisServer)
        exact = activemq.queue_mbean(missing)
        none = ("org.apache.activemq.artemis:broker=*,component=addresses,"
                'address="nothing-here-*",subcomponent=queues,routing-type=*,queue=*')
    attributes = [*activemq.queue_attributes, "Name"]
    status, body = activemq.jolokia([
        {"type": "read", "mbean": activemq.queue_pattern, "attribute": attributes},
        {"type": "read", "mbean": exact, "attribute": attributes},
        {"type": "read", "mbean": none, "attribute": attributes},
    ])
    assert status == 200
    assert [answer["status"] for answer in body] == [200, 404, 404]
    by_name = {value["Name"]: value for value in body[0]["value"].values()}
    assert by_name[first][_backlog(activemq)] == 2
    assert by_name[second][_backlog(activemq)] == 5
    assert set(by_name[second]) == set(attributes)
    assert all(isinstance(by_name[second][a], int) for a in activemq.queue_attributes)
    assert body[1]["error_type"] == "javax.management.InstanceNotFoundException"
    assert "No MBean with pattern" in body[2]["error"]


def test_one_malformed_mbean_name_fails_the_whole_bulk(activemq: ActiveMQServer) -> None:
    status, body = activemq.jolokia([
        {"type": "read", "mbean": activemq.queue_pattern, "attribute": ["ConsumerCount"]},
        {"type": "read", "mbean": "org.apache.activemq:type=Broker,brokerName=a:b"},
    ])
    assert status == 200
    assert isinstance(body, dict)  # one error object, not a list of answers
    assert body["status"] == 400


def test_classic_mangles_a_queue_name_in_its_mbean_but_not_in_name(
    activemq_classic: ClassicServer,
) -> None:
    queue = _queue("odd") + ":1"  # (a ',' would make two queues: Classic's composite send)
    activemq_classic.send(queue, 1)
    _, body = activemq_classic.jolokia([
        {"type": "read", "mbean": activemq_classic.queue_pattern, "attribute": ["Name"]},
    ])
    names = {value["Name"]: key for key, value in body[0]["value"].items()}
    assert f"destinationName={queue.replace(':', '_')}," in names[queue]


def test_artemis_quotes_every_name_and_an_unquoted_one_is_another_mbean(
    activemq_artemis: ArtemisServer,
) -> None:
    queue = _queue("quoted") + ':1 "x"'
    activemq_artemis.send(queue, 1)
    quoted = activemq_artemis.queue_mbean(queue)
    unquoted = quoted.replace(object_name_quote("qs-artemis"), "qs-artemis")
    _, body = activemq_artemis.jolokia([
        {"type": "read", "mbean": quoted, "attribute": ["MessageCount"]},
        {"type": "read", "mbean": unquoted, "attribute": ["MessageCount"]},
    ])
    assert [answer["status"] for answer in body] == [200, 404]
    assert body[0]["value"] == {"MessageCount": 1}


def test_classic_lists_a_holding_consumer_with_its_connection(
    activemq_classic: ClassicServer,
) -> None:
    queue = _queue("held")
    activemq_classic.send(queue, 5)
    with activemq_classic.holding(queue, activemq_classic.prefetch(2), client_id=queue) as held:
        held.wait_for(2)
        wait_until(lambda: (activemq_classic.queue_stats(queue) or {}).get("InFlightCount") == 2,
                   timeout=15, what="2 messages in flight")
        _, body = activemq_classic.jolokia([
            {"type": "read", "mbean": "org.apache.activemq:type=Broker,brokerName=*,"
             f"destinationType=Queue,destinationName={queue},endpoint=Consumer,clientId=*,"
             "consumerId=*",
             "attribute": ["DispatchedQueueSize", "PrefetchSize", "ClientId", "ConnectionId",
                           "Connection"]},
            {"type": "read", "mbean": "org.apache.activemq:type=Broker,brokerName=*,"
             "connector=clientConnectors,connectorName=*,connectionViewType=clientId,"
             f"connectionName={queue}", "attribute": ["RemoteAddress", "ClientId"]},
        ])
    assert [answer["status"] for answer in body] == [200, 200]
    (consumer,) = body[0]["value"].values()
    assert consumer["DispatchedQueueSize"] == 2
    assert consumer["PrefetchSize"] == 2
    assert consumer["ClientId"] == queue
    (connection,) = body[1]["value"].values()
    assert connection["RemoteAddress"].startswith("tcp://127.0.0.1:")
    assert consumer["Connection"]["objectName"] in body[1]["value"]


def test_artemis_lists_a_holding_consumer_with_its_remote_address(
    activemq_artemis: ArtemisServer,
) -> None:
    queue = _queue("held")
    activemq_artemis.send(queue, 5)
    with activemq_artemis.holding(queue, activemq_artemis.prefetch(1), client_id=queue) as held:
        held.wait_for(1)
        wait_until(lambda: (activemq_artemis.queue_stats(queue) or {}).get("DeliveringCount") == 1,
                   timeout=15, what="1 message in delivery")
        options = json.dumps({"field": "queue", "operation": "EQUALS", "value": queue})
        _, body = activemq_artemis.jolokia([
            {"type": "exec", "mbean": activemq_artemis.queue_mbean(queue),
             "operation": "listConsumersAsJSON()"},
            {"type": "exec", "mbean": activemq_artemis._broker_mbean(),
             "operation": "listConsumers(java.lang.String,int,int)",
             "arguments": [options, 1, 100]},
        ])
    assert [answer["status"] for answer in body] == [200, 200]
    (per_queue,) = json.loads(body[0]["value"])  # JSON text inside the JSON answer
    assert per_queue["messagesInTransit"] == 1
    listing = json.loads(body[1]["value"])
    assert listing["count"] == 1
    (consumer,) = listing["data"]
    assert consumer["clientID"] == queue
    assert consumer["remoteAddress"].startswith("127.0.0.1:")
    assert consumer["messagesInTransit"] == "1"  # numbers as strings in this listing


def test_messages_a_consumer_held_return_to_the_queue_when_it_goes(
    activemq: ActiveMQServer,
) -> None:
    queue = _queue("returned")
    activemq.send(queue, 3)
    with activemq.holding(queue, activemq.prefetch(1)) as held:
        held.wait_for(1)
    stats = wait_until(
        lambda: (s := activemq.queue_stats(queue)) and s["ConsumerCount"] == 0
        and s[_in_flight(activemq)] == 0 and s,
        timeout=15, what="the consumer gone and nothing in flight",
    )
    assert stats[_backlog(activemq)] == 3


def test_a_holders_acks_are_counted(activemq: ActiveMQServer) -> None:
    """Acked by each MESSAGE frame's `ack` header (STOMP 1.2): Classic counts no ack given
    the message-id, and the kit's ack_all once acked nothing there."""
    queue = _queue("acked")
    activemq.send(queue, 2)
    acked = "DequeueCount" if activemq.kind == "classic" else "MessagesAcknowledged"
    with activemq.holding(queue, activemq.prefetch(None)) as held:
        held.wait_for(2)
        held.ack_all()
        stats = wait_until(
            lambda: (s := activemq.queue_stats(queue)) and s[acked] == 2 and s,
            timeout=15, what="both acks counted",
        )
    assert stats[_in_flight(activemq)] == 0


def test_a_restarted_broker_keeps_its_queues_and_messages(activemq: ActiveMQServer) -> None:
    queue = _queue("kept")
    activemq.send(queue, 4)
    with activemq.stopped():
        assert not activemq.ready()
    stats = activemq.queue_stats(queue)
    assert stats is not None
    assert stats[_backlog(activemq)] == 4
