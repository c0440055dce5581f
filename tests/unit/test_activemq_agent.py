"""The activemq source's I/O against a stand-in Jolokia agent (an aiohttp server on loopback):
one POST per tick whatever the number of queues, the headers both brokers insist on, and every
way the agent can fail, worded without a credential."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from queuescaler.core.sample import ErrorKind, QueueSample, SourceError
from queuescaler.sources.activemq.secret import broker_from_secret
from queuescaler.sources.activemq.source import ActiveMQSource
from queuescaler.sources.activemq.spec import BrokerScope

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]
"""The stand-in agent is a fixture on the session's loop: the tests run on it too."""

PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"
CLASSIC_QUEUE = {"QueueSize": 4, "InFlightCount": 1, "ConsumerCount": 1, "EnqueueCount": 7,
                 "DequeueCount": 3}
ARTEMIS_QUEUE = {"MessageCount": 4, "DeliveringCount": 1, "ScheduledCount": 0,
                 "ConsumerCount": 1, "MessagesAdded": 7, "MessagesAcknowledged": 3}
NOT_FOUND = {"status": 404, "error_type": "javax.management.InstanceNotFoundException",
             "error": "not found"}


def classic_agent(requests: list[Any]) -> list[dict[str, Any]]:
    """What a Classic broker `qs-classic` answers: its probe, its queues (all exist but
    `nope`), nothing of Artemis."""
    answers = []
    for read in requests:
        mbean: str = read["mbean"]
        if mbean.startswith("org.apache.activemq.artemis:") or "destinationName=nope" in mbean:
            answers.append(NOT_FOUND)
        elif "destinationName=" in mbean:
            name = mbean.rpartition("destinationName=")[2]
            value = CLASSIC_QUEUE | {"Name": name}
            answers.append({"status": 200, "value": (
                {mbean.replace("*", "qs-classic"): value} if "*" in mbean else value)})
        else:
            value = {"BrokerVersion": "5.17.2"}
            answers.append({"status": 200, "value": (
                {"org.apache.activemq:brokerName=qs-classic,type=Broker": value}
                if "*" in mbean else value)})
    return answers


def artemis_agent(requests: list[Any]) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    for read in requests:
        mbean: str = read["mbean"]
        if not mbean.startswith("org.apache.activemq.artemis:"):
            answers.append(NOT_FOUND)
        elif read["type"] == "exec":
            answers.append({"status": 200, "value": json.dumps({"count": 1, "data": [{
                "clientID": "pod-1", "remoteAddress": "10.0.0.4:3000", "queue": "orders",
                "address": "orders", "queueType": "anycast", "messagesInTransit": "2"}]})})
        elif "queue=" in mbean:
            answers.append({"status": 200, "value": (
                {mbean.replace("broker=*", 'broker="0.0.0.0"'): ARTEMIS_QUEUE}
                if "broker=*" in mbean else ARTEMIS_QUEUE)})
        else:
            answers.append({"status": 200, "value": (
                {'org.apache.activemq.artemis:broker="0.0.0.0"': {"Version": "2.40.0"}}
                if "*" in mbean else {"Version": "2.40.0"})})
    return answers


@dataclass
class Agent:
    """The stand-in: every POST recorded; `reply` says what to answer."""

    reply: Callable[[web.Request, Any], Any] = lambda request, body: web.json_response(
        classic_agent(body))
    posts: list[tuple[web.Request, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        self.posts.append((request, body))
        reply = self.reply(request, body)
        if asyncio.iscoroutine(reply):
            reply = await reply
        assert isinstance(reply, web.StreamResponse)
        return reply


@pytest.fixture
async def agent() -> AsyncIterator[tuple[Agent, str]]:
    stand_in = Agent()
    app = web.Application()
    app.router.add_post("/api/jolokia/", stand_in.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield stand_in, f"http://127.0.0.1:{server.port}/api/jolokia"
    finally:
        await server.close()


def source(url: str, timeout: float = 2.0, **secret: str) -> ActiveMQSource:
    data = {"jolokiaUrl": url, "username": "admin", "password": PASSWORD} | secret
    return ActiveMQSource(broker_from_secret(data), timeout=timeout)


SCOPE = BrokerScope()


@pytest.mark.parametrize("queues", [1, 10, 100])
async def test_one_post_per_tick_whatever_the_number_of_queues(
    agent: tuple[Agent, str], queues: int
) -> None:
    stand_in, url = agent
    activemq = source(url)
    try:
        refs = [SCOPE.ref(f"q{i}") for i in range(queues)]
        first = await activemq.sample(refs)
        assert len(stand_in.posts) == 1
        assert len(stand_in.posts[0][1]) == 2 + 2 * queues  # both flavors until one answers
        second = await activemq.sample(refs)
        assert len(stand_in.posts) == 2
        assert len(stand_in.posts[1][1]) == 1 + queues  # Classic only, from then on
    finally:
        await activemq.close()
    for result in (first, second):
        found = result[refs[-1]]
        assert isinstance(found, QueueSample)
        assert (found.ready, found.unacked, found.published_total) == (3, 1, 7)


async def test_the_post_carries_auth_origin_and_json_never_a_credential_in_its_url(
    agent: tuple[Agent, str],
) -> None:
    stand_in, url = agent
    activemq = source(url)
    try:
        await activemq.sample([SCOPE.ref("orders")])
    finally:
        await activemq.close()
    (request, _), = stand_in.posts
    assert request.headers["Origin"] == url.rpartition("/api/")[0]
    assert request.headers["Content-Type"] == "application/json"
    login = base64.b64decode(request.headers["Authorization"].removeprefix("Basic ")).decode()
    assert login == f"admin:{PASSWORD}"
    assert PASSWORD not in str(request.url)
    assert "includeStackTrace=false" in request.query_string
    assert PASSWORD not in repr(activemq)


async def test_a_given_origin_is_sent(agent: tuple[Agent, str]) -> None:
    stand_in, url = agent
    activemq = source(url, origin="https://console.example")
    try:
        await activemq.sample([SCOPE.ref("orders")])
    finally:
        await activemq.close()
    assert stand_in.posts[0][0].headers["Origin"] == "https://console.example"


async def test_no_queue_no_post(agent: tuple[Agent, str]) -> None:
    stand_in, url = agent
    activemq = source(url)
    try:
        assert await activemq.sample([]) == {}
    finally:
        await activemq.close()
    assert stand_in.posts == []


async def endless(request: web.Request, body: Any) -> web.StreamResponse:
    """A server at a tenant's URL that streams until it is hung up on (a review pushed the
    operator from 40 MB to 1.4 GB in 2.6 s this way)."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    chunk = b"[" + b" " * (1024 * 1024 - 1)
    with contextlib.suppress(ConnectionError):
        for _ in range(256):  # bounded: 256 MiB at most, the source stops reading long before
            await response.write(chunk)
    return response


async def slow(request: web.Request, body: Any) -> web.Response:
    await asyncio.sleep(5)
    return web.json_response([])


@pytest.mark.parametrize(
    ("reply", "kind", "words"),
    [
        pytest.param(lambda r, b: web.Response(status=401), ErrorKind.AUTH,
                     "refused the credentials (HTTP 401)", id="classic-wrong-password"),
        pytest.param(lambda r, b: web.Response(status=403, headers={
            "Hawtio-Forbidden-Reason": "NONE"}), ErrorKind.AUTH,
                     "refused the credentials (HTTP 403)", id="artemis-wrong-password"),
        pytest.param(lambda r, b: web.json_response({
            "status": 403, "error_type": "java.lang.Exception",
            "error": "Origin http://x is not allowed to call this agent"}), ErrorKind.AUTH,
                     "key 'origin'", id="origin-refused"),
        pytest.param(lambda r, b: web.Response(status=404), ErrorKind.BAD_CONFIG,
                     "no Jolokia agent at", id="wrong-path"),
        pytest.param(lambda r, b: web.Response(status=302, headers={"Location": "/login"}),
                     ErrorKind.BAD_CONFIG, "redirects (HTTP 302)", id="redirect-not-followed"),
        pytest.param(lambda r, b: web.Response(
            status=500, text=f"boom for {r.headers['Authorization']} password={PASSWORD}"),
                     ErrorKind.BAD_RESPONSE, "answered HTTP 500", id="server-error"),
        pytest.param(lambda r, b: web.Response(
            status=500, text=("<table><tr><th>Authorization</th><td>Basic ").ljust(170)
            + r.headers["Authorization"].split()[1] + "</td></tr></table>"),
                     ErrorKind.BAD_RESPONSE, "answered HTTP 500", id="token-across-the-cut"),
        pytest.param(endless, ErrorKind.BAD_RESPONSE, "answered more than", id="endless-body"),
        pytest.param(lambda r, b: web.Response(text="<html>"), ErrorKind.BAD_RESPONSE,
                     "not JSON", id="garbage"),
        pytest.param(slow, ErrorKind.TIMEOUT, "no answer within", id="slow"),
    ],
)
async def test_an_agent_that_fails_fails_the_tick_without_a_credential(
    agent: tuple[Agent, str], reply: Callable[[web.Request, Any], Any], kind: ErrorKind,
    words: str,
) -> None:
    stand_in, url = agent
    stand_in.reply = reply
    activemq = source(url, timeout=0.3)
    try:
        with pytest.raises(SourceError) as failed:
            await activemq.sample([SCOPE.ref("orders")])
    finally:
        await activemq.close()
    assert failed.value.kind is kind
    assert words in failed.value.message
    assert PASSWORD not in str(failed.value)
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    assert token[:12] not in str(failed.value)  # not even the start of it (cut after redacting)
    assert len(stand_in.posts) == 1  # never followed, never retried


async def test_an_agent_that_is_not_there_is_unreachable() -> None:
    activemq = source("http://127.0.0.1:9/api/jolokia")
    try:
        with pytest.raises(SourceError) as failed:
            await activemq.sample([SCOPE.ref("orders")])
    finally:
        await activemq.close()
    assert failed.value.kind is ErrorKind.UNREACHABLE


async def test_a_missing_queue_fails_alone(agent: tuple[Agent, str]) -> None:
    _, url = agent
    activemq = source(url)
    try:
        result = await activemq.sample([SCOPE.ref("orders"), SCOPE.ref("nope")])
    finally:
        await activemq.close()
    assert isinstance(result[SCOPE.ref("orders")], QueueSample)
    missing = result[SCOPE.ref("nope")]
    assert isinstance(missing, SourceError) and missing.kind is ErrorKind.QUEUE_NOT_FOUND


async def test_classic_clients_take_one_post(agent: tuple[Agent, str]) -> None:
    stand_in, url = agent
    stand_in.reply = lambda r, b: web.json_response([
        {"status": 200, "value": {"org.apache.activemq:brokerName=qs-classic,type=Broker": {}}},
        {"status": 200, "value": {"org.apache.activemq:brokerName=qs-classic,clientId=pod-1,"
                                  "consumerId=c,destinationName=orders,destinationType=Queue,"
                                  "endpoint=Consumer,type=Broker": {
                                      "ClientId": "pod-1", "ConnectionId": "ID:1",
                                      "DestinationName": "orders", "DispatchedQueueSize": 3}}},
        NOT_FOUND,
    ])
    activemq = source(url)
    try:
        (client,) = await activemq.clients([BrokerScope("classic").scope])
    finally:
        await activemq.close()
    assert (client.client_name, client.unacked, client.peer_host) == ("pod-1", 3, None)
    assert len(stand_in.posts) == 1


async def test_artemis_clients_learn_the_brokers_name_once(agent: tuple[Agent, str]) -> None:
    """An exec names one MBean: with no broker name known, a probe finds it (one POST more,
    once); a sample's probe finds it just as well."""
    stand_in, url = agent
    stand_in.reply = lambda r, b: web.json_response(artemis_agent(b))
    activemq = source(url)
    try:
        (client,) = await activemq.clients([SCOPE.scope])
        assert len(stand_in.posts) == 2  # one probe finds the flavor and the name; the listing
        assert stand_in.posts[-1][1][1]["mbean"] == 'org.apache.activemq.artemis:broker="0.0.0.0"'
        await activemq.clients([SCOPE.scope])
        assert len(stand_in.posts) == 3
    finally:
        await activemq.close()
    assert (client.client_name, client.peer_host, client.unacked) == ("pod-1", "10.0.0.4", 2)
    assert client.queues == frozenset({SCOPE.ref("orders")})
    fresh = source(url)
    try:
        await fresh.sample([SCOPE.ref("orders")])
        await fresh.clients([SCOPE.scope])
    finally:
        await fresh.close()
    assert len(stand_in.posts) == 5  # a sample and a listing: the sample's probe named it
