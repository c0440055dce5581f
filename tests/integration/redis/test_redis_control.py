"""Celery's remote control as the redis source speaks it: pure, checked against kombu's own code.

(Unit tests: no server. They sit beside the redis integration tests because this slice's
files are the redis folders; tests/unit would be their natural home.)

The broadcast is decoded by kombu's own message class and dispatched by kombu's own mailbox
node, as a worker does; answers are made with kombu's own channel methods. A kombu release
that changes either side fails here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kombu import Connection
from kombu.pidbox import Mailbox
from kombu.transport.redis import Channel

from queuescaler.core.sample import BrokerClient, QueueRef
from queuescaler.sources.redis.control import (
    ACTIVE,
    COMMANDS,
    QUEUES,
    RESERVED,
    Round,
    broadcast_channel,
    parse_reply,
    pod_name,
    reply_route,
    request,
)
from queuescaler.sources.redis.layout import Layout

pytestmark = pytest.mark.unit


def test_a_broadcast_is_what_kombus_node_dispatches_and_answers_to_our_route() -> None:
    with Connection("memory://") as connection:
        channel = connection.default_channel
        raw = request(ACTIVE, ticket="t-1", oid="oid-1", tag="tag-1", expires=12.5)
        message = channel.Message(json.loads(raw), channel=channel)
        body = message.decode()
        assert message.headers == {"clock": 1, "expires": 12.5}
        replies: list[tuple[Any, ...]] = []
        node = Mailbox("celery", type="fanout").Node(
            "celery@pod-a", handlers={ACTIVE: lambda state, safe: ["task"] if safe else []},
        )
        node.reply = lambda data, exchange, routing_key, ticket, **_: replies.append(
            (data, exchange, routing_key, ticket))
        node.handle_message(body, message)
    assert replies == [({"celery@pod-a": ["task"]}, "reply.celery.pidbox", "oid-1", "t-1")]


@pytest.mark.parametrize(
    ("layout", "database", "channel"),
    [
        pytest.param(Layout(), 0, "/0.celery.pidbox", id="kombu-defaults"),
        pytest.param(Layout("app:", ":"), 3, "app:/3.celery.pidbox", id="prefix-and-database"),
    ],
)
def test_the_route_and_channel_are_kombus(layout: Layout, database: int, channel: str) -> None:
    assert broadcast_channel(layout, database) == channel
    route = reply_route(layout, "oid-1")
    kombu = Channel.__new__(Channel)  # the naming methods need no connection
    kombu.sep = layout.separator
    # kombu's _queue_bind: member = sep.join([routing_key, pattern, queue]), prefixed keys.
    assert route.member == kombu.sep.join(["oid-1", "", "oid-1.reply.celery.pidbox"])
    assert route.binding_key == layout.key_prefix + kombu.keyprefix_queue % "reply.celery.pidbox"
    assert route.permanent_key == layout.key_prefix + (
        kombu.keyprefix_binding_permanent % "reply.celery.pidbox")
    assert route.reply_key == layout.key_prefix + "oid-1.reply.celery.pidbox"


def kombu_answer(hostname: str, value: object, ticket: str, **changes: Any) -> str:
    """A worker's answer as kombu's virtual channel stores it in the reply list."""
    with Connection("memory://") as connection:
        channel = connection.default_channel
        message = channel.prepare_message(
            json.dumps({hostname: value}), content_type="application/json",
            content_encoding="utf-8", headers={"ticket": ticket, "clock": 3},
        )
        channel._inplace_augment_message(message, "reply.celery.pidbox", "oid-1")
    message.update(changes)
    return json.dumps(message)


def test_an_answer_made_by_kombu_is_read() -> None:
    reply = parse_reply(kombu_answer("celery@pod-a", [{"id": "x"}], "t-1").encode())
    assert reply is not None
    assert (reply.ticket, reply.hostname, reply.value) == ("t-1", "celery@pod-a", [{"id": "x"}])


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(kombu_answer("celery@a", [], "t", **{"content-type": "application/x-python-"
                                                            "serialize"}), id="pickle"),
        pytest.param(kombu_answer("celery@a", [], "t", headers={}), id="no-ticket"),
        pytest.param(kombu_answer("celery@a", [], "t", body="%%%"), id="not-base64"),
        pytest.param("[1, 2]", id="not-an-envelope"),
        pytest.param("{", id="not-json"),
    ],
)
def test_an_answer_that_cannot_be_read_is_none(raw: str) -> None:
    assert parse_reply(raw) is None


@pytest.mark.parametrize(
    ("hostname", "pod"),
    [
        pytest.param("celery@worker-7d9f-abcde", "worker-7d9f-abcde", id="celery-default"),
        pytest.param("w1@worker-7d9f-abcde", "worker-7d9f-abcde", id="named-with-n"),
        pytest.param("worker-0", "worker-0", id="no-at"),
        pytest.param("celery@", "celery@", id="empty-host"),
    ],
)
def test_the_pod_is_the_host_part_of_the_node_name(hostname: str, pod: str) -> None:
    assert pod_name(hostname) == pod


def _round(receivers: int) -> tuple[Round, dict[str, str]]:
    tickets = {command: f"t-{command}" for command in COMMANDS}
    answers = Round("", {ticket: command for command, ticket in tickets.items()})
    answers.receivers = dict.fromkeys(COMMANDS, receivers)
    return answers, tickets


def _answer(answers: Round, tickets: dict[str, str], host: str, command: str, value: object
            ) -> None:
    answers.take(parse_reply(kombu_answer(host, value, tickets[command])))


def test_a_round_is_complete_when_every_worker_reached_answered_every_command() -> None:
    answers, tickets = _round(2)
    for host in ("celery@a", "celery@b"):
        for command in (RESERVED, ACTIVE):
            _answer(answers, tickets, host, command, [])
        assert not answers.complete
    _answer(answers, tickets, "celery@a", QUEUES, [])
    answers.take(parse_reply(kombu_answer("celery@b", [], "an-older-round")))
    assert not answers.complete, "a late answer to another round does not count"
    _answer(answers, tickets, "celery@b", QUEUES, [])
    assert answers.complete


def test_workers_as_clients_what_is_unknown_is_taken_at_its_worst() -> None:
    answers, tickets = _round(4)
    queues = [{"name": "celery", "exchange": {"name": "celery"}}, {"name": "extra"}]
    _answer(answers, tickets, "celery@busy", RESERVED, [{"id": "1"}, {"id": "2"}])
    _answer(answers, tickets, "celery@busy", ACTIVE, [{"id": "3"}])
    _answer(answers, tickets, "celery@busy", QUEUES, queues)
    _answer(answers, tickets, "celery@failing", RESERVED, {"error": "KeyError('x')"})
    _answer(answers, tickets, "celery@failing", ACTIVE, [])
    _answer(answers, tickets, "celery@failing", QUEUES, [{"exchange": {}}])
    _answer(answers, tickets, "celery@starting", RESERVED, [])
    _answer(answers, tickets, "celery@starting", ACTIVE, [])
    _answer(answers, tickets, "celery@starting", QUEUES, [])
    assert answers.clients() == [
        BrokerClient("", "busy", None, consumers=2, unacked=3,
                     queues=frozenset({QueueRef("", "celery"), QueueRef("", "extra")})),
        BrokerClient("", "failing", None, consumers=1, unacked=1, queues=None),
        BrokerClient("", "starting", None, consumers=0, unacked=0, queues=frozenset()),
        BrokerClient("", None, None, consumers=1, unacked=1, queues=None),  # reached, silent
    ]
