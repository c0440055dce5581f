"""ActiveMQSource against the real test brokers, Classic 5.17 (Jolokia 1.x) and Artemis 2.40
(Jolokia 2.x): one POST per broker per tick, the counts a consumer holding messages makes, a
missing queue, the busy clients, and every fault the brief names (wrong login, a wrong Origin
or broker name, the broker stopped and back with its counters reset, Jolokia answering 500 or
too slowly), never with a credential in a message.

The brokers are the session's (tests/integration/activemq/conftest.py); each test makes its
own queues (unique names). A 500 and a slow agent are a small proxy of ours in front of the
real one: the proxy is the only stand-in, every answer that passes it is the broker's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import aiohttp
import pytest
import stomp  # type: ignore[import-untyped]
from aiohttp import web
from aiohttp.test_utils import TestServer

from queuescaler.core.sample import ErrorKind, QueueRef, QueueSample, SampleResult, SourceError
from queuescaler.core.throughput import remember
from queuescaler.core.workers import Pod, match_workers
from queuescaler.sources.activemq.secret import ActiveMQBroker, broker_from_secret
from queuescaler.sources.activemq.source import ActiveMQSource
from queuescaler.sources.activemq.spec import BrokerScope, Flavor
from queuescaler.sources.registry import SOURCES
from queuescaler_testkit.activemq_server import ActiveMQServer, ClassicServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]
"""On the session's loop, where the proxy fixture serves."""

T = TypeVar("T")
SCOPE = BrokerScope()
"""What a spec that names neither flavor nor broker reads: both found out from the agent."""
SETTLE = 20.0
"""Bound on waiting for a broker's counts to follow a consumer (they are live, no interval:
the wait covers STOMP delivery and a consumer's departure)."""


def queue(what: str) -> str:
    return f"qs-{what}-{uuid.uuid4().hex[:8]}"


def secret_of(server: ActiveMQServer, **change: str) -> ActiveMQBroker:
    data = {"jolokiaUrl": server.jolokia_url, "username": server.user,
            "password": server.password} | change
    return broker_from_secret(data)


class Counted:
    """The HTTP requests and new connections a source makes, counted as aiohttp sends them."""

    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0
        self.config = aiohttp.TraceConfig()
        self.config.on_request_start.append(self._request)
        self.config.on_connection_create_end.append(self._connection)

    async def _request(self, *_: Any) -> None:
        self.requests += 1

    async def _connection(self, *_: Any) -> None:
        self.connections += 1


def source_of(broker: ActiveMQBroker, counted: Counted | None = None,
              timeout: float = 5.0) -> ActiveMQSource:
    return ActiveMQSource(broker, timeout=timeout,
                          trace_configs=[counted.config] if counted else ())


async def eventually(
    read: Callable[[], Awaitable[T]], holds: Callable[[T], bool], what: str,
    timeout: float = SETTLE,
) -> T:
    """Read until what was read holds; fail naming `what` with the last reading."""
    deadline = time.monotonic() + timeout
    while True:
        found = await read()
        if holds(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s; last {found!r}")
        await asyncio.sleep(0.3)


def one(result: SampleResult, ref: QueueRef) -> QueueSample:
    found = result[ref]
    assert isinstance(found, QueueSample), found
    return found


def held_by_one(server: ActiveMQServer) -> tuple[dict[str, str], int]:
    """SUBSCRIBE headers that make a consumer hold a known number of messages: Classic counts
    its prefetch in messages (2), Artemis its window in bytes (0: one at a time)."""
    if isinstance(server, ClassicServer):
        return server.prefetch(2), 2
    return server.prefetch(1), 1


class Worker(stomp.ConnectionListener):  # type: ignore[misc]
    """A STOMP worker of ours that takes messages and acks only when told: by each MESSAGE
    frame's `ack` header, as STOMP 1.2 wants (Classic's differs from the message-id)."""

    def __init__(self) -> None:
        self.acks: list[str] = []
        self.changed = threading.Condition()

    def on_message(self, frame: Any) -> None:
        with self.changed:
            self.acks.append(frame.headers.get("ack") or frame.headers["message-id"])
            self.changed.notify_all()

    def wait_for(self, n: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.acks) >= n, 15.0), self.acks


@contextlib.contextmanager
def worker(server: ActiveMQServer, name: str, headers: dict[str, str],
           client_id: str | None = None) -> Iterator[tuple[Worker, Any]]:
    """A worker consuming `name` with client-individual acks for the block (`client_id`: the
    name it gives its connection, as a pod's worker gives its pod's)."""
    connection = stomp.Connection12([("127.0.0.1", server.stomp_port)], timeout=15.0)
    listener = Worker()
    connection.set_listener("worker", listener)
    connection.connect(server.user, server.password, wait=True,
                       headers={"client-id": client_id} if client_id else {})
    try:
        connection.subscribe(f"/queue/{name}", "work", ack="client-individual", headers=headers)
        yield listener, connection
    finally:
        connection.disconnect()


def ack_all(held: tuple[Worker, Any]) -> None:
    listener, connection = held
    with listener.changed:
        acks = list(listener.acks)
    for ack in acks:
        connection.ack(ack)


# --- one POST per broker per tick -------------------------------------------------------------


@pytest.mark.parametrize("queues", [1, 10, 100])
async def test_one_post_per_broker_per_tick_whatever_the_number_of_queues(
    activemq: ActiveMQServer, queues: int
) -> None:
    names = [queue(f"n{queues}-{i}") for i in range(queues)]
    for name in names:
        activemq.send(name, 1)
    refs = [SCOPE.ref(name) for name in names]
    counted = Counted()
    source = SOURCES["activemq"].connect(secret_of(activemq), trace_configs=[counted.config])
    try:
        for tick in range(1, 4):
            result = await source.sample(refs)
            assert counted.requests == tick
            assert all(one(result, ref).ready == 1 for ref in refs)
    finally:
        await source.close()
    assert counted.connections == 1  # kept alive across the ticks


async def test_two_brokers_are_two_posts_a_tick(
    activemq_classic: ActiveMQServer, activemq_artemis: ActiveMQServer
) -> None:
    counted = Counted()
    sources = [source_of(secret_of(server), counted)
               for server in (activemq_classic, activemq_artemis)]
    name = queue("both")
    for server in (activemq_classic, activemq_artemis):
        server.send(name, 2)
    try:
        results = await asyncio.gather(*(s.sample([SCOPE.ref(name)]) for s in sources))
    finally:
        for each in sources:
            await each.close()
    assert counted.requests == 2
    assert [one(r, SCOPE.ref(name)).ready for r in results] == [2, 2]


# --- what a consumer holding messages looks like ----------------------------------------------


async def test_backlog_in_flight_consumers_and_counters_with_a_consumer_holding(
    activemq: ActiveMQServer,
) -> None:
    name = queue("held")
    ref = SCOPE.ref(name)
    activemq.send(name, 6)
    headers, holds = held_by_one(activemq)
    source = source_of(secret_of(activemq))
    try:
        before = one(await source.sample([ref]), ref)
        assert (before.ready, before.unacked, before.consumers) == (6, 0, 0)
        assert (before.published_total, before.acked_total) == (6, 0)
        with worker(activemq, name, headers, client_id=f"{name}-pod") as holder:
            holder[0].wait_for(holds)
            held = await eventually(lambda: source.sample([ref]),
                                    lambda r: one(r, ref).unacked == holds, "held in flight")
            sample = one(held, ref)
            # QueueSize / MessageCount count the held messages too: they are not ready
            assert (sample.ready, sample.unacked, sample.consumers) == (6 - holds, holds, 1)
            assert sample.backlog == 6
            (client,) = [c for c in await source.clients([SCOPE.scope])
                         if c.client_name == f"{name}-pod"]
            assert (client.unacked, client.consumers, client.peer_host) == (holds, 1, "127.0.0.1")
            assert client.queues == frozenset({ref})
            report = match_workers([Pod(f"{name}-pod", "10.0.0.1"), Pod("idle", "10.0.0.2")],
                                   [client], [ref])
            assert (report.busy, report.by_name) == (1, 1)
            ack_all(holder)
            acked = await eventually(lambda: source.sample([ref]),
                                     lambda r: one(r, ref).acked_total == holds, "acks counted")
            assert one(acked, ref).published_total == 6
    finally:
        await source.close()


async def test_a_consumer_by_address_and_an_idle_one(activemq: ActiveMQServer) -> None:
    """A worker that sets no client-id is matched by its address; one whose queue is empty
    consumes and holds nothing."""
    busy, idle = queue("anon"), queue("idle")
    activemq.send(busy, 3)
    headers, holds = held_by_one(activemq)
    source = source_of(secret_of(activemq))
    try:
        with activemq.holding(busy, headers) as holder, activemq.holding(idle, headers):
            holder.wait_for(holds)
            clients = await eventually(
                lambda: source.clients([SCOPE.scope]),
                lambda found: {SCOPE.ref(busy), SCOPE.ref(idle)} <= {
                    ref for c in found for ref in c.queues or ()}, "both consumers listed")
    finally:
        await source.close()
    mine = {ref.name: c for c in clients for ref in c.queues or () if ref.name in (busy, idle)}
    assert (mine[busy].unacked, mine[busy].peer_host) == (holds, "127.0.0.1")
    assert (mine[idle].unacked, mine[idle].consumers) == (0, 1)
    report = match_workers([Pod("worker-0", "127.0.0.1")], [mine[busy]], [SCOPE.ref(busy)])
    assert (report.busy, report.by_address) == (1, 1)


# --- queues and brokers that are not there ----------------------------------------------------


async def test_a_missing_queue_is_reported_alone(activemq: ActiveMQServer) -> None:
    there, missing = queue("there"), queue("missing")
    activemq.send(there, 1)
    source = source_of(secret_of(activemq))
    try:
        result = await source.sample([SCOPE.ref(there), SCOPE.ref(missing)])
    finally:
        await source.close()
    assert one(result, SCOPE.ref(there)).ready == 1
    gone = result[SCOPE.ref(missing)]
    assert isinstance(gone, SourceError) and gone.kind is ErrorKind.QUEUE_NOT_FOUND
    assert missing in gone.message


async def test_the_spec_may_name_the_flavor_and_the_broker(activemq: ActiveMQServer) -> None:
    name = queue("named")
    activemq.send(name, 2)
    flavor = cast(Flavor, activemq.kind)
    right, wrong = BrokerScope(flavor, activemq.broker_name), BrokerScope(flavor, "no-such-broker")
    source = source_of(secret_of(activemq))
    try:
        result = await source.sample([right.ref(name), wrong.ref(name)])
    finally:
        await source.close()
    assert one(result, right.ref(name)).ready == 2
    refused = result[wrong.ref(name)]
    assert isinstance(refused, SourceError) and refused.kind is ErrorKind.BAD_CONFIG
    assert "named 'no-such-broker'" in refused.message


async def test_a_name_with_special_characters_reads(activemq: ActiveMQServer) -> None:
    """A colon (Classic mangles it, Artemis quotes it), a quote, a star and a question mark
    (Artemis escapes them; Classic replaces them): one bad name would fail the whole bulk."""
    name = f"odd:{uuid.uuid4().hex[:6]}"
    activemq.send(name, 1)
    source = source_of(secret_of(activemq))
    try:
        result = await source.sample([SCOPE.ref(name), SCOPE.ref('a"b*c?d'), SCOPE.ref("x")])
    finally:
        await source.close()
    assert one(result, SCOPE.ref(name)).ready == 1
    assert all(isinstance(result[SCOPE.ref(n)], SourceError) for n in ('a"b*c?d', "x"))


# --- faults -----------------------------------------------------------------------------------


async def test_wrong_credentials_are_an_auth_error_naming_no_secret(
    activemq: ActiveMQServer,
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    source = source_of(secret_of(activemq, password=wrong))
    try:
        with pytest.raises(SourceError) as refused:
            await source.sample([SCOPE.ref("orders")])
    finally:
        await source.close()
    assert refused.value.kind is ErrorKind.AUTH
    assert "HTTP 401" in refused.value.message or "HTTP 403" in refused.value.message
    for secret in (wrong, activemq.password):
        assert secret not in str(refused.value)


async def test_an_origin_artemis_does_not_allow_is_said_so(
    activemq_artemis: ActiveMQServer,
) -> None:
    source = source_of(secret_of(activemq_artemis, origin="http://elsewhere.example"))
    try:
        with pytest.raises(SourceError) as refused:
            await source.sample([SCOPE.ref("orders")])
    finally:
        await source.close()
    assert refused.value.kind is ErrorKind.AUTH
    assert "key 'origin'" in refused.value.message


async def test_a_stopped_broker_is_unreachable_and_its_counters_start_again(
    activemq: ActiveMQServer,
) -> None:
    """Down: the tick fails as a whole (BrokerReachable turns False), on the same source that
    reads again once the broker is back. Its counters restart from zero (Classic) or from the
    messages it reloads (Artemis): the acknowledged one goes down, which the core's rate
    history takes for a reset."""
    name = queue("restart")
    ref = SCOPE.ref(name)
    activemq.send(name, 5)
    headers, holds = held_by_one(activemq)
    source = source_of(secret_of(activemq), timeout=3.0)
    try:
        with worker(activemq, name, headers) as holder:
            holder[0].wait_for(holds)
            ack_all(holder)
            await eventually(lambda: source.sample([ref]),
                             lambda r: one(r, ref).acked_total == holds, "acks counted")
        before = await source.sample([ref])
        history = remember((), one(before, ref), 1)
        with activemq.stopped():
            with pytest.raises(SourceError) as down:
                await source.sample([ref])
            assert down.value.kind in (ErrorKind.UNREACHABLE, ErrorKind.TIMEOUT)
            assert activemq.password not in str(down.value)
        back = await eventually(lambda: _or_none(source.sample([ref])),
                                lambda r: r is not None, "the broker back")
        assert back is not None
        after = one(back, ref)
    finally:
        await source.close()
    assert (after.ready, after.unacked) == (5 - holds, 0)  # persistent: the rest kept
    assert (one(before, ref).acked_total, after.acked_total) == (holds, 0)
    assert len(remember(history, after, 1)) == 1  # the reset started the history again


async def _or_none(sampling: Awaitable[SampleResult]) -> SampleResult | None:
    """The sample, or None while the broker is not back."""
    try:
        return await sampling
    except SourceError:
        return None


Mode = str
"""What the proxy does: "pass", "error" (HTTP 500 echoing the caller's Authorization header
and password) or "slow" (an answer past the source's timeout)."""


@pytest.fixture
async def proxied(activemq: ActiveMQServer) -> AsyncIterator[tuple[dict[str, Mode], str]]:
    """A loopback proxy in front of the broker's Jolokia; returns its mode and its URL."""
    mode = {"now": "pass"}
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.StreamResponse:
        if mode["now"] == "error":
            login = base64.b64decode(request.headers["Authorization"].split()[1]).decode()
            return web.Response(status=500, text=f"failed for {request.headers['Authorization']}"
                                                 f" ({login})")
        if mode["now"] == "slow":
            await asyncio.sleep(4.0)
        async with session.post(activemq.jolokia_url, params=request.query,
                                data=await request.read(), headers={
                                    k: v for k, v in request.headers.items()
                                    if k in ("Authorization", "Origin", "Content-Type")}
                                ) as upstream:
            return web.Response(status=upstream.status, body=await upstream.read(),
                                content_type="application/json")

    app = web.Application()
    app.router.add_post(activemq.jolokia_path, forward)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield mode, f"http://127.0.0.1:{server.port}{activemq.jolokia_path}"
    finally:
        await server.close()
        await session.close()


async def test_jolokia_answering_500_or_too_slowly_fails_the_tick_without_a_credential(
    activemq: ActiveMQServer, proxied: tuple[dict[str, Mode], str]
) -> None:
    mode, url = proxied
    name = queue("proxied")
    activemq.send(name, 1)
    # The Origin the broker wants is its own, not the proxy's.
    source = source_of(secret_of(activemq, jolokiaUrl=url, origin=activemq.origin), timeout=1.0)
    token = base64.b64encode(f"{activemq.user}:{activemq.password}".encode()).decode()
    try:
        assert one(await source.sample([SCOPE.ref(name)]), SCOPE.ref(name)).ready == 1
        for now, kind in (("error", ErrorKind.BAD_RESPONSE), ("slow", ErrorKind.TIMEOUT)):
            mode["now"] = now
            with pytest.raises(SourceError) as failed:
                await source.sample([SCOPE.ref(name)])
            assert failed.value.kind is kind, now
            for secret in (activemq.password, token):
                assert secret not in str(failed.value), now
        mode["now"] = "pass"
        assert one(await source.sample([SCOPE.ref(name)]), SCOPE.ref(name)).ready == 1
    finally:
        await source.close()
