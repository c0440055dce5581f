"""RabbitMQSource against the real local broker: counts, rates, errors, secrecy, one request.

Each test makes its own queues (unique names) and, where it needs them, its own vhost and
user through the management API, and deletes them afterwards. The shared broker is never
stopped: "unreachable" is a loopback port where nothing listens, "timeout" a listener of
ours that never answers. The source runs on an event loop in a thread of its own, so the
tests can wait on its answers with `wait_until`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import pika
import pytest

from queuescaler.core.sample import (
    BrokerClient,
    ErrorKind,
    QueueRef,
    QueueSample,
    SampleResult,
    SourceError,
    combine,
)
from queuescaler.core.workers import Pod, match_workers
from queuescaler.sources.rabbitmq.listing import FILTER_MAX_NAMES
from queuescaler.sources.rabbitmq.secret import broker_from_secret
from queuescaler.sources.rabbitmq.source import RabbitMQSource
from queuescaler_testkit.broker import BrokerAdmin, quote
from queuescaler_testkit.env import TestEnv, wait_until
from queuescaler_testkit.faultproxy import FaultProxy, Mode

pytestmark = pytest.mark.integration

T = TypeVar("T")
STATS_TIMEOUT = 30.0
"""Bound on waiting for the management statistics (emitted every 5 s) to catch up."""


class LoopThread:
    """An event loop in a thread: the tests stay synchronous and poll with wait_until."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=120)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@dataclass
class Broker:
    """The test broker's URLs, its administrator, and what a test made there (to delete)."""

    amqp_url: str
    management_url: str
    vhost: str
    cleanup: list[str] = field(default_factory=list)
    """Management API paths to DELETE at the end, in reverse."""

    @property
    def admin(self) -> BrokerAdmin:
        return BrokerAdmin(self.management_url)

    def new_vhost(self) -> str:
        vhost = f"qs-it-{uuid.uuid4().hex[:8]}"
        self.admin.add_vhost(vhost)
        self.admin.grant(vhost, urllib.parse.urlsplit(self.amqp_url).username or "")
        self.cleanup.append(f"/api/vhosts/{quote(vhost)}")
        return vhost

    def new_user(self, password: str) -> str:
        user = f"qs-it-{uuid.uuid4().hex[:8]}"
        self.admin.add_user(user, password, tags="monitoring")
        self.admin.grant(self.vhost, user)
        self.cleanup.append(f"/api/users/{quote(user)}")
        return user

    def amqp_params(self, vhost: str | None = None) -> pika.URLParameters:
        parameters = pika.URLParameters(self.amqp_url)
        parameters.virtual_host = vhost or self.vhost
        return parameters

    def new_queue(
        self, vhost: str | None = None, messages: int = 0, name: str | None = None
    ) -> QueueRef:
        ref = QueueRef(vhost or self.vhost, name or f"qs-it-{uuid.uuid4().hex[:8]}")
        with pika.BlockingConnection(self.amqp_params(ref.scope)) as connection:
            channel = connection.channel()
            channel.queue_declare(ref.name, durable=True)
            for number in range(messages):
                channel.basic_publish(
                    "",
                    ref.name,
                    str(number).encode(),
                    pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
                )
        self.cleanup.append(self.admin.queues_path(ref.scope, ref.name))
        return ref

    def clean(self) -> None:
        for path in reversed(self.cleanup):
            # A vhost's deletion takes its queues along: gone already is fine.
            self.admin.delete(path, missing_ok=True)


def _with_credentials(url: str, user: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = f"{quote(user)}:{quote(password)}@{parts.hostname}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _at(url: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def broker(testenv: TestEnv) -> Iterator[Broker]:
    broker = Broker(testenv.amqp_url, testenv.management_url, testenv.vhost)
    yield broker
    broker.clean()


class Sources:
    """Opens sources on the test's loop and closes them all at the end."""

    def __init__(self, loop: LoopThread) -> None:
        self.loop = loop
        self.opened: list[RabbitMQSource] = []

    def open(self, amqp_url: str, management_url: str | None = None, **kw: Any) -> RabbitMQSource:
        data = {"amqpUrl": amqp_url}
        if management_url:
            data["managementUrl"] = management_url
        source = RabbitMQSource(broker_from_secret(data), **kw)
        self.opened.append(source)
        return source

    def sample(self, source: RabbitMQSource, *queues: QueueRef) -> SampleResult:
        return self.loop.run(source.sample(queues))

    def peek(self, source: RabbitMQSource, *queues: QueueRef) -> SampleResult:
        return self.loop.run(source.peek(queues))

    def close(self) -> None:
        for source in self.opened:
            self.loop.run(source.close())


@pytest.fixture
def sources(loop: LoopThread) -> Iterator[Sources]:
    opened = Sources(loop)
    yield opened
    opened.close()


@pytest.fixture
def source(sources: Sources, testenv: TestEnv) -> RabbitMQSource:
    return sources.open(testenv.amqp_url, testenv.management_url)


def _sampled(result: SampleResult, ref: QueueRef) -> QueueSample | None:
    """The queue's sample once the statistics have it, else None (keep polling)."""
    outcome = result[ref]
    return outcome if isinstance(outcome, QueueSample) else None


def _until_sampled(
    sources: Sources,
    source: RabbitMQSource,
    ready: Mapping[QueueRef, int],
    until: Callable[[QueueSample], bool] = lambda sample: True,
) -> dict[QueueRef, QueueSample]:
    """Sample until the statistics show each queue's `ready` count (and `until` holds): bounded.

    A queue's first statistics may predate the messages just published: presence is not enough.
    """
    refs = list(ready)

    def check() -> dict[QueueRef, QueueSample] | None:
        result = sources.sample(source, *refs)
        samples = {
            ref: outcome for ref, outcome in result.items() if isinstance(outcome, QueueSample)
        }
        done = len(samples) == len(refs) and all(
            sample.ready == ready[ref] and until(sample) for ref, sample in samples.items()
        )
        return samples if done else None

    return wait_until(check, timeout=STATS_TIMEOUT, what=f"statistics of {len(refs)} queue(s)")


def _kind(outcome: QueueSample | SourceError) -> ErrorKind | None:
    return outcome.kind if isinstance(outcome, SourceError) else None


def test_ready_and_unacked_are_exact_and_peek_sees_ready_at_once(
    broker: Broker, sources: Sources, source: RabbitMQSource
) -> None:
    published, held = 10, 4
    ref = broker.new_queue(messages=published)
    with pika.BlockingConnection(broker.amqp_params()) as consumer:
        channel = consumer.channel()
        channel.basic_qos(prefetch_count=held)
        delivered: list[int] = []
        channel.basic_consume(ref.name, lambda *args: delivered.append(1), auto_ack=False)
        wait_until(
            lambda: consumer.process_data_events(0.1) or len(delivered) == held,
            timeout=15,
            what=f"{held} deliveries held unacknowledged",
        )

        live = sources.peek(source, ref)[ref]
        assert isinstance(live, QueueSample)
        assert (live.ready, live.unacked, live.consumers) == (published - held, 0, 1)
        assert live.publish_rate is None and live.ack_rate is None

        # The management database updates message counts and the consumer count in separate
        # events: one sample may show the held messages before it shows their consumer.
        sample = _until_sampled(
            sources, source, {ref: published - held},
            until=lambda s: (s.unacked, s.consumers) == (held, 1),
        )[ref]
        assert sample.backlog == published


def test_rates_become_non_zero_under_steady_publish_and_ack(
    broker: Broker, sources: Sources, source: RabbitMQSource
) -> None:
    ref = broker.new_queue()
    with pika.BlockingConnection(broker.amqp_params()) as connection:
        channel = connection.channel()

        def one_round_then_sample() -> QueueSample | None:
            for _ in range(20):
                channel.basic_publish("", ref.name, b"work")
            for _ in range(20):
                method, _, _ = channel.basic_get(ref.name, auto_ack=False)
                if method is not None:
                    channel.basic_ack(method.delivery_tag)
            sample = _sampled(sources.sample(source, ref), ref)
            rates = (sample.publish_rate, sample.ack_rate, sample.deliver_rate) if sample else ()
            return sample if rates and all(rate and rate > 0 for rate in rates) else None

        sample = wait_until(
            one_round_then_sample,
            timeout=STATS_TIMEOUT,
            what="publish, ack and deliver rates above zero",
            every=0.2,
        )
    assert sample.publish_rate is not None and sample.publish_rate > 0
    # The cumulative counters come with the same columns request, never above what was
    # sent (the core differences them between ticks; issue 12).
    assert sample.published_total is not None and sample.published_total > 0
    assert sample.acked_total is not None and sample.acked_total > 0  # sampled apart: may lead


def test_several_queues_across_vhosts_combine(
    broker: Broker, sources: Sources, source: RabbitMQSource
) -> None:
    other_vhost = broker.new_vhost()
    refs = (
        broker.new_queue(messages=3),
        broker.new_queue(messages=5),
        broker.new_queue(other_vhost, messages=7),
    )

    combined = combine(
        _until_sampled(sources, source, dict(zip(refs, (3, 5, 7), strict=True))).values()
    )
    assert (combined.ready, combined.unacked, combined.consumers) == (15, 0, 0)

    peeked = sources.peek(source, *refs)
    assert combine(s for s in peeked.values() if isinstance(s, QueueSample)).ready == 15
    assert len(peeked) == 3


def test_a_missing_queue_fails_alone(
    broker: Broker, sources: Sources, source: RabbitMQSource
) -> None:
    present = broker.new_queue(messages=2)
    missing = QueueRef(broker.vhost, f"qs-it-missing-{uuid.uuid4().hex[:8]}")
    _until_sampled(sources, source, {present: 2})
    result = sources.sample(source, present, missing)
    assert _kind(result[missing]) is ErrorKind.QUEUE_NOT_FOUND
    sampled = result[present]
    assert isinstance(sampled, QueueSample)
    assert (sampled.ready, sampled.unacked, sampled.consumers) == (2, 0, 0)

    peeked = sources.peek(source, missing, present, missing)
    assert _kind(peeked[missing]) is ErrorKind.QUEUE_NOT_FOUND
    peeked_present = peeked[present]
    assert isinstance(peeked_present, QueueSample) and peeked_present.ready == 2


class AmqpRelay:
    """A loopback TCP relay in front of the broker's AMQP port: counts the chunks clients
    send through it, and can stop passing the broker's answers (a broker that hangs in the
    middle of a call, its connections still open)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.client_chunks = 0
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client = self.server.accept()[0]
            except TimeoutError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            self._sockets += [client, upstream]
            for source, to, counted in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, to, counted), daemon=True
                ).start()

    def _pump(self, source: socket.socket, to: socket.socket, counted: bool) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if counted:
                    self.client_chunks += 1
                if not counted and self.frozen.is_set():
                    continue  # swallowed: the client waits for an answer that never comes
                to.sendall(chunk)

    def close(self) -> None:
        self._stop.set()
        self._accepting.join(timeout=5)
        for open_socket in (*self._sockets, self.server):
            open_socket.close()


@pytest.fixture
def amqp_relay(broker: Broker) -> Iterator[AmqpRelay]:
    relay = AmqpRelay(urllib.parse.urlsplit(broker.amqp_url).port or 0)
    yield relay
    relay.close()


def _queues(broker: Broker, vhost: str, count: int) -> list[QueueRef]:
    """`count` queues in `vhost`, queue n holding n % 4 messages, made over one connection."""
    refs = [QueueRef(vhost, f"q{number:04d}") for number in range(count)]
    with pika.BlockingConnection(broker.amqp_params(vhost)) as connection:
        channel = connection.channel()
        for number, ref in enumerate(refs):
            channel.queue_declare(ref.name)
            for _ in range(number % 4):
                channel.basic_publish("", ref.name, b"x")
    return refs


def test_one_peek_of_many_queues_is_answered_around_missing_ones(
    broker: Broker, sources: Sources, source: RabbitMQSource
) -> None:
    """The declares are pipelined on one channel; a missing queue closes it where it stands
    (the broker ignores what follows): every queue after it is still answered, and the
    source's connection serves the next peek."""
    vhost = broker.new_vhost()
    present = _queues(broker, vhost, 150)
    missing = [QueueRef(vhost, f"qs-it-missing-{n}-{uuid.uuid4().hex[:6]}") for n in range(4)]
    asked = [missing[0], *present[:70], missing[1], missing[2], *present[70:], missing[3],
             QueueRef(vhost, "")]
    for _ in range(2):
        peeked = sources.peek(source, *asked)
        assert len(peeked) == len(asked)
        assert [_kind(peeked[ref]) for ref in [*missing, QueueRef(vhost, "")]] == [
            ErrorKind.QUEUE_NOT_FOUND] * 5
        assert [getattr(peeked[ref], "ready", None) for ref in present] == [
            number % 4 for number in range(len(present))]


def test_a_peek_sends_its_declares_together(
    broker: Broker, sources: Sources, amqp_relay: AmqpRelay
) -> None:
    """200 passive declares go out in a few writes, not one round trip each."""
    vhost = broker.new_vhost()
    refs = _queues(broker, vhost, 200)
    source = sources.open(_at(broker.amqp_url, amqp_relay.port))
    assert getattr(sources.peek(source, refs[0])[refs[0]], "ready", None) == 0  # connected
    before = amqp_relay.client_chunks
    peeked = sources.peek(source, *refs)
    assert [getattr(peeked[ref], "ready", None) for ref in refs] == [n % 4 for n in range(200)]
    assert amqp_relay.client_chunks - before <= 5


def test_a_broker_that_stops_answering_mid_peek_times_out_and_the_next_peek_reconnects(
    broker: Broker, sources: Sources, amqp_relay: AmqpRelay
) -> None:
    vhost = broker.new_vhost()
    refs = _queues(broker, vhost, 20)
    source = sources.open(_at(broker.amqp_url, amqp_relay.port), timeout=1.0)
    assert getattr(sources.peek(source, refs[3])[refs[3]], "ready", None) == 3
    amqp_relay.frozen.set()
    with pytest.raises(SourceError) as caught:
        sources.peek(source, *refs)
    assert caught.value.kind is ErrorKind.TIMEOUT
    amqp_relay.frozen.clear()

    def answered() -> bool:
        try:
            return getattr(sources.peek(source, refs[3])[refs[3]], "ready", None) == 3
        except SourceError:
            return False  # the timed-out call's thread has not let go yet

    # A new connection answers (the hung one is left behind, not closed: no Close-Ok would
    # come); before, the thread waited for the hung answer until the broker's heartbeat.
    wait_until(answered, timeout=15, what="a peek on a new connection")


@pytest.mark.parametrize(
    "across_vhosts",
    [
        pytest.param(False, id="only-the-missing-vhost-asked"),
        pytest.param(True, id="missing-vhost-beside-a-real-one"),
    ],
)
def test_a_missing_vhost_is_told_apart_from_a_missing_queue(
    broker: Broker, sources: Sources, source: RabbitMQSource, across_vhosts: bool
) -> None:
    ghost = QueueRef(f"qs-it-novhost-{uuid.uuid4().hex[:8]}", "jobs")
    missing_queue = QueueRef(broker.vhost, f"qs-it-missing-{uuid.uuid4().hex[:8]}")
    asked = (ghost, missing_queue) if across_vhosts else (ghost,)
    for result in (sources.sample(source, *asked), sources.peek(source, *asked)):
        assert _kind(result[ghost]) is ErrorKind.VHOST_NOT_FOUND
        if across_vhosts:
            assert _kind(result[missing_queue]) is ErrorKind.QUEUE_NOT_FOUND


def test_wrong_password_is_auth_for_both_paths(broker: Broker, sources: Sources) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    user = urllib.parse.urlsplit(broker.amqp_url).username or ""
    source = sources.open(
        _with_credentials(broker.amqp_url, user, wrong),
        _with_credentials(broker.management_url, user, wrong),
    )
    ref = QueueRef(broker.vhost, "any")
    for call in (sources.sample, sources.peek):
        with pytest.raises(SourceError) as caught:
            call(source, ref)
        assert caught.value.kind is ErrorKind.AUTH
        assert wrong not in str(caught.value)


def test_nothing_listening_is_unreachable(broker: Broker, sources: Sources) -> None:
    source = sources.open(_at(broker.amqp_url, 1), _at(broker.management_url, 1))
    for call in (sources.sample, sources.peek):
        with pytest.raises(SourceError) as caught:
            call(source, QueueRef(broker.vhost, "any"))
        assert caught.value.kind is ErrorKind.UNREACHABLE


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback server that accepts connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for connection in held:
        connection.close()
    server.close()


def test_a_server_that_never_answers_is_a_timeout(
    broker: Broker, sources: Sources, silent_port: int
) -> None:
    source = sources.open(
        _at(broker.amqp_url, silent_port), _at(broker.management_url, silent_port), timeout=0.5
    )
    for call in (sources.sample, sources.peek):
        with pytest.raises(SourceError) as caught:
            call(source, QueueRef(broker.vhost, "any"))
        assert caught.value.kind is ErrorKind.TIMEOUT


def test_the_password_shows_nowhere(
    broker: Broker, sources: Sources, silent_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Not in errors, reprs or log records, through every failure and success we can cause."""
    password = f"pw-{uuid.uuid4().hex}"
    user = broker.new_user(password)
    wrong = f"wrong-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    urls = [
        (broker.amqp_url, broker.management_url, user, password),
        (broker.amqp_url, broker.management_url, user, wrong),
        (_at(broker.amqp_url, 1), _at(broker.management_url, 1), user, password),
        (
            _at(broker.amqp_url, silent_port),
            _at(broker.management_url, silent_port),
            user,
            password,
        ),
    ]
    ref, ghost = broker.new_queue(), QueueRef("qs-it-novhost", "x")
    shown: list[str] = []
    for amqp_url, management_url, name, secret in urls:
        source = sources.open(
            _with_credentials(amqp_url, name, secret),
            _with_credentials(management_url, name, secret),
            timeout=0.5,
        )
        shown.append(repr(source))
        for call in (sources.sample, sources.peek):
            try:
                result = call(source, ref, ghost)
            except SourceError as error:
                shown += [str(error), repr(error), error.message]
            else:
                shown += [repr(outcome) for outcome in result.values()]
    shown += [record.getMessage() for record in caplog.records]
    shown += [str(record.args) for record in caplog.records]
    assert len(shown) > 8
    for text in shown:
        for secret in (password, wrong, quote(password)):
            assert secret not in text


def test_two_scalers_queues_cost_one_request(
    broker: Broker, sources: Sources, testenv: TestEnv
) -> None:
    requests: list[str] = []

    async def count(_: Any, __: Any, params: aiohttp.TraceRequestStartParams) -> None:
        requests.append(str(params.url))

    tracing = aiohttp.TraceConfig()
    tracing.on_request_start.append(count)
    source = sources.open(testenv.amqp_url, testenv.management_url, trace_configs=[tracing])
    other_vhost = broker.new_vhost()
    first_scaler = [broker.new_queue(messages=1), broker.new_queue(messages=2)]
    second_scaler = [broker.new_queue(other_vhost, messages=3)]
    every_queue = (*first_scaler, *second_scaler)
    _until_sampled(sources, source, dict(zip(every_queue, (1, 2, 3), strict=True)))

    requests.clear()
    result = sources.sample(source, *every_queue)

    assert len(requests) == 1, requests
    assert "/api/queues?columns=" in requests[0]  # across vhosts: the whole listing
    assert [getattr(result[q], "ready", None) for q in every_queue] == [1, 2, 3]


@pytest.mark.parametrize(
    ("count", "filtered"),
    [
        pytest.param(3, True, id="a-few-queues-asked-for-by-name"),
        pytest.param(FILTER_MAX_NAMES + 1, False, id="many-queues-whole-vhost-listing"),
    ],
)
def test_one_vhost_costs_one_request_filtered_or_not(
    broker: Broker, sources: Sources, testenv: TestEnv, count: int, filtered: bool
) -> None:
    requests: list[str] = []

    async def count_request(_: Any, __: Any, params: aiohttp.TraceRequestStartParams) -> None:
        requests.append(str(params.url))

    tracing = aiohttp.TraceConfig()
    tracing.on_request_start.append(count_request)
    source = sources.open(testenv.amqp_url, testenv.management_url, trace_configs=[tracing])
    vhost = broker.new_vhost()
    # regex characters in a name: found only if the filter escapes them
    tricky = broker.new_queue(vhost, messages=4, name=f"qs-it.{uuid.uuid4().hex[:6]}+(a|b)")
    refs = [tricky, *(broker.new_queue(vhost, messages=1) for _ in range(count - 1))]
    _until_sampled(sources, source, {ref: 4 if ref == tricky else 1 for ref in refs})

    requests.clear()
    result = sources.sample(source, *refs)

    assert len(requests) == 1, requests
    assert ("use_regex=true" in requests[0]) is filtered
    assert [getattr(result[ref], "ready", None) for ref in refs] == [4] + [1] * (count - 1)


def test_peek_reopens_a_connection_the_broker_closed(broker: Broker, sources: Sources) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    user = broker.new_user(password)
    source = sources.open(_with_credentials(broker.amqp_url, user, password))
    ref = broker.new_queue(messages=3)
    assert getattr(sources.peek(source, ref)[ref], "ready", None) == 3

    def ours(state: str) -> list[str]:
        connections = broker.admin.connections(columns=["name", "user", "state"])
        return [c["name"] for c in connections if c.get("user") == user and c["state"] == state]

    for name in wait_until(lambda: ours("running"), timeout=STATS_TIMEOUT, what="our connection"):
        broker.admin.close_connection(name)
    wait_until(lambda: ours("closed"), timeout=STATS_TIMEOUT, what="our connection closed")

    assert getattr(sources.peek(source, ref)[ref], "ready", None) == 3
    assert getattr(sources.sample(source, ref)[ref], "ready", None) == 3  # no management URL


def _consumer_connection(
    broker: Broker, vhost: str, name: str, queues: list[QueueRef], hold: int = 0
) -> pika.BlockingConnection:
    """A worker's connection named `name`, one channel per queue (prefetch 1, manual acks),
    the first `hold` deliveries kept unacknowledged."""
    parameters = broker.amqp_params(vhost)
    parameters.client_properties = {"connection_name": name}
    connection = pika.BlockingConnection(parameters)
    delivered: list[int] = []
    for ref in queues:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(ref.name, lambda *args: delivered.append(1), auto_ack=False)
    if hold:
        wait_until(
            lambda: connection.process_data_events(0.1) or len(delivered) >= hold,
            timeout=15, what=f"{hold} deliveries to {name}",
        )
    return connection


@dataclass
class TwoPools:
    """Two pools in one vhost: pool A's worker holds a message, pool B's is idle, and a third
    worker consumes both queues on two channels."""

    vhost: str
    a_queue: QueueRef
    b_queue: QueueRef


WORKERS = {"pool-a-0", "pool-b-0", "pool-ab-0"}


@pytest.fixture
def two_pools(broker: Broker) -> Iterator[TwoPools]:
    vhost = broker.new_vhost()
    a_queue, b_queue = broker.new_queue(vhost, messages=1), broker.new_queue(vhost)
    connections = [
        _consumer_connection(broker, vhost, "pool-a-0", [a_queue], hold=1),
        _consumer_connection(broker, vhost, "pool-b-0", [b_queue]),
        _consumer_connection(broker, vhost, "pool-ab-0", [a_queue, b_queue]),
    ]
    yield TwoPools(vhost, a_queue, b_queue)
    for connection in connections:
        connection.close()


def _until_listed(
    sources: Sources, source: RabbitMQSource, vhost: str, *, queues_known: bool = True
) -> dict[str | None, BrokerClient]:
    """The clients once the channel statistics show the three workers and A's message held."""

    def listed() -> dict[str | None, BrokerClient] | None:
        found = {c.client_name: c for c in sources.loop.run(source.clients({vhost}))}
        ready = (
            set(found) == WORKERS
            and found["pool-a-0"].unacked == 1
            # each connection tied to its queues: the consumer listing is refreshed with the
            # statistics, and a connection it does not show yet has queues None (unknown)
            and all(c.queues is not None and c.consumers == len(c.queues)
                    for c in found.values())
        )
        return found if ready else None

    return wait_until(listed, timeout=STATS_TIMEOUT, what="three consumers listed")


def test_a_busy_worker_of_another_pool_in_the_vhost_is_not_ours(
    sources: Sources, testenv: TestEnv, two_pools: TwoPools
) -> None:
    """bench/real_workers.py --one-vhost: the consumer listing ties each connection to its
    queues, so B's QueueScaler sees its idle workers and nothing unplaced; A's sees its busy
    worker, and a busy worker of A on no pod still holds A's scale-down."""
    requests: list[str] = []

    async def count(_: Any, __: Any, params: aiohttp.TraceRequestStartParams) -> None:
        requests.append(str(params.url))

    tracing = aiohttp.TraceConfig()
    tracing.on_request_start.append(count)
    source = sources.open(testenv.amqp_url, testenv.management_url, trace_configs=[tracing])
    a_queue, b_queue = two_pools.a_queue, two_pools.b_queue
    clients = _until_listed(sources, source, two_pools.vhost)
    assert clients["pool-a-0"].queues == frozenset({a_queue})
    assert clients["pool-b-0"].queues == frozenset({b_queue})
    assert clients["pool-ab-0"].queues == frozenset({a_queue, b_queue})  # two channels

    requests.clear()
    sources.loop.run(source.clients({two_pools.vhost}))
    assert len(requests) == 3, requests  # connections, channels, consumers
    assert f"/api/consumers/{quote(two_pools.vhost)}?columns=" in requests[2]

    listing = list(clients.values())
    # pool A's queue is another QueueScaler's: its busy worker is A's, not B's
    for_b = match_workers([Pod("pool-b-0"), Pod("pool-ab-0")], listing, {b_queue}, {a_queue})
    assert (for_b.matched, for_b.busy, for_b.unattributed, for_b.protected) == (2, 0, 0, 0)
    unknown_a = match_workers([Pod("pool-b-0"), Pod("pool-ab-0")], listing, {b_queue})
    assert unknown_a.unattributed == 1  # a queue no QueueScaler reads: fails closed
    for_a = match_workers([Pod("pool-a-0"), Pod("pool-ab-0")], listing, {a_queue}, {b_queue})
    assert (for_a.busy, for_a.unattributed) == (1, 0)
    lost_a = match_workers([Pod("pool-a-1")], listing, {a_queue})
    assert (lost_a.unattributed, lost_a.protected) == (1, 1)  # fails closed, as before


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(Mode.ERROR, id="consumer-listing-http-500"),
        pytest.param(Mode.GARBAGE, id="consumer-listing-not-json"),
        pytest.param(Mode.SLOW, id="consumer-listing-times-out"),
    ],
)
def test_a_failed_consumer_listing_leaves_queues_unknown_and_protection_closed(
    broker: Broker, sources: Sources, testenv: TestEnv, two_pools: TwoPools, mode: Mode
) -> None:
    """The consumer listing fails alone: the clients are still listed, with their queues
    unknown, so another pool's busy worker holds B's scale-down again (the old rule)."""
    port = urllib.parse.urlsplit(testenv.management_url).port or 0
    with FaultProxy("127.0.0.1", port, delay=3.0) as proxy:
        proxy.only = "/api/consumers"
        source = sources.open(testenv.amqp_url, _at(broker.management_url, proxy.port),
                              timeout=1.0)
        known = _until_listed(sources, source, two_pools.vhost)
        proxy.mode = mode
        found = {c.client_name: c for c in sources.loop.run(source.clients({two_pools.vhost}))}
        proxy.mode = Mode.PASS  # releases a held request
        wait_until(lambda: proxy.count(mode) == 1, timeout=10, what="one consumer listing failed")
    assert {name: (c.consumers, c.unacked, c.queues) for name, c in found.items()} == {
        name: (c.consumers, c.unacked, None) for name, c in known.items()
    }
    for_b = match_workers(
        [Pod("pool-b-0"), Pod("pool-ab-0")], list(found.values()), {two_pools.b_queue}
    )
    # the busy client may be any of B's pods (matched by name, seen at no address of
    # theirs): every one is kept
    assert (for_b.unattributed, for_b.protected) == (1, 2)
    assert for_b.doubtful == {"pool-b-0", "pool-ab-0"}
