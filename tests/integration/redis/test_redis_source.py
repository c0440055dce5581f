"""RedisSource against a real redis-server, fed by a real Celery producer and kombu consumer.

Each test takes a database of its own (the `unacked` hash is shared by every queue of a
database), flushes it first, and publishes with Celery exactly as a Celery app on Redis
does: priorities land in kombu's priority lists, a kombu consumer holds messages without
acknowledging them, and the sample must say exactly how many wait and how many are held.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import kombu
import pytest
import redis
from celery import Celery
from redis.asyncio.connection import Connection

from queuescaler.core.sample import ErrorKind, QueueRef, QueueSample, SourceError
from queuescaler.sources.redis.layout import Layout
from queuescaler.sources.redis.secret import RedisBroker, broker_from_secret
from queuescaler.sources.redis.source import NO_RATES, RedisSource
from queuescaler.sources.redis.streams import StreamGroup
from queuescaler_testkit.redis_server import SPARE_PORT, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

_databases = itertools.count()


def _url(server: RedisServer, database: int) -> str:
    return f"redis://:{server.password}@127.0.0.1:{server.port}/{database}"


@pytest.fixture
def database(redis_server: RedisServer) -> int:
    """A database of this test's own, emptied: 1 to 14 in turn (0 is nobody's, 15 is
    test_redis_celery_worker.py's)."""
    number = 1 + next(_databases) % 14
    with redis.Redis(port=redis_server.port, password=redis_server.password, db=number) as admin:
        admin.flushdb()
    return number


@pytest.fixture
def broker(redis_server: RedisServer, database: int) -> RedisBroker:
    return broker_from_secret(
        {"redisUrl": redis_server.url, "password": redis_server.password, "database": str(database)}
    )


@pytest.fixture
async def source(broker: RedisBroker) -> AsyncIterator[RedisSource]:
    opened = RedisSource(broker, timeout=2.0)
    yield opened
    await opened.close()


def celery_app(
    server: RedisServer, database: int, options: dict[str, Any] | None = None
) -> Celery:
    """A Celery app on the test Redis, configured as users configure one."""
    app = Celery("tasks", broker=_url(server, database), set_as_current=False)
    app.conf.broker_transport_options = options or {}
    app.conf.broker_connection_retry_on_startup = False
    return app


def publish(app: Celery, queue: str, priorities: list[int]) -> None:
    """One task per priority, sent the way `task.apply_async(queue=..., priority=...)` does."""
    with app.producer_or_acquire() as producer:
        for number, priority in enumerate(priorities):
            app.send_task(
                "tasks.is_prime", args=(number,), queue=queue, priority=priority,
                producer=producer,
            )


class HeldConsumer:
    """A kombu consumer that takes `count` messages of `queue` and holds them unacknowledged."""

    def __init__(self, app: Celery, queue: str, count: int) -> None:
        self.connection = kombu.Connection(
            app.conf.broker_url, transport_options=app.conf.broker_transport_options
        )
        self.held: list[kombu.Message] = []
        channel = self.connection.channel()
        channel.basic_qos(0, count, False)
        self.consumer = kombu.Consumer(
            channel,
            [kombu.Queue(queue, kombu.Exchange(queue), routing_key=queue)],
            callbacks=[lambda _body, message: self.held.append(message)],
            accept=["json"],
        )
        self.consumer.consume()
        deadline = time.monotonic() + 30
        while len(self.held) < count and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.connection.drain_events(timeout=0.2)  # one message per call
        assert len(self.held) == count, f"the consumer took {len(self.held)} of {count}"

    def close(self) -> None:
        """Closing restores the held messages to their queue (kombu's restore at shutdown)."""
        self.connection.release()


def _sample(result: Any, ref: QueueRef) -> QueueSample:
    outcome = result[ref]
    assert isinstance(outcome, QueueSample), outcome
    return outcome


async def test_ready_counts_every_priority_list_and_unacked_only_this_queues(
    redis_server: RedisServer, database: int, source: RedisSource
) -> None:
    app = celery_app(redis_server, database)
    work, other = f"work-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    publish(app, work, [0, 1, 3, 5, 6, 9, 9, 0, 2, 7])
    publish(app, other, [0, 0, 0, 0])
    with redis.Redis(port=redis_server.port, password=redis_server.password, db=database) as r:
        lists = {key: r.llen(key) for key in Layout().priority_keys(work)}
    assert sum(1 for length in lists.values() if length) > 1, lists  # priorities were split
    assert sum(lists.values()) == 10

    held_work, held_other = HeldConsumer(app, work, 3), HeldConsumer(app, other, 2)
    try:
        result = await source.sample([QueueRef("", work), QueueRef("", other)])
        assert _sample(result, QueueRef("", work)) == QueueSample(
            ready=7, unacked=3, consumers=0, taken_at=_sample(result, QueueRef("", work)).taken_at,
            note=NO_RATES,
        )
        got = _sample(result, QueueRef("", other))
        assert (got.ready, got.unacked, got.complete) == (2, 2, True)
        assert (got.publish_rate, got.ack_rate, got.acked_total) == (None, None, None)
        held_work.held[0].ack()
        got = _sample(await source.sample([QueueRef("", work)]), QueueRef("", work))
        assert (got.ready, got.unacked) == (7, 2)
    finally:
        held_work.close()
        held_other.close()
    got = _sample(await source.sample([QueueRef("", work)]), QueueRef("", work))
    assert (got.ready, got.unacked) == (9, 0)  # the two still held went back


async def test_a_key_prefix_and_colon_separator_as_celerys_priority_docs_suggest(
    redis_server: RedisServer, database: int, source: RedisSource
) -> None:
    options = {"global_keyprefix": "app1:", "sep": ":", "priority_steps": list(range(10))}
    app = celery_app(redis_server, database, options)
    publish(app, "celery", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9])
    held = HeldConsumer(app, "celery", 4)
    try:
        ref = QueueRef(Layout(key_prefix="app1:", separator=":").scope, "celery")
        unprefixed = QueueRef("", "celery")
        result = await source.sample([ref, unprefixed])
        got = _sample(result, ref)
        assert (got.ready, got.unacked, got.complete) == (7, 4, True)
        got = _sample(result, unprefixed)
        assert (got.ready, got.unacked, got.complete) == (0, 0, True)
    finally:
        held.close()


async def test_unacked_from_an_exchange_not_named_after_its_queue_is_placed_from_the_next_tick(
    redis_server: RedisServer, database: int, source: RedisSource
) -> None:
    """A topic exchange `media` routes `media.video.*` to `video`: the first tick has not read
    the exchange's bindings yet (incomplete, so no scale-down), the next one places them."""
    url = _url(redis_server, database)
    exchange = kombu.Exchange("media", type="topic")
    video = kombu.Queue("video", exchange, routing_key="media.video.*")
    with kombu.Connection(url) as connection:
        producer = connection.Producer()
        for number in range(5):
            producer.publish(
                {"n": number}, exchange=exchange, routing_key="media.video.hd",
                declare=[video], serializer="json",
            )
    with kombu.Connection(url) as connection:
        channel = connection.channel()
        channel.basic_qos(0, 2, False)
        held: list[kombu.Message] = []
        with kombu.Consumer(channel, [video], callbacks=[lambda _b, m: held.append(m)]):
            while len(held) < 2:
                connection.drain_events(timeout=2)
            ref = QueueRef("", "video")
            first = _sample(await source.sample([ref]), ref)
            assert (first.ready, first.unacked, first.complete) == (3, 0, False)
            second = _sample(await source.sample([ref]), ref)
            assert (second.ready, second.unacked, second.complete) == (3, 2, True)

            # The queue is re-bound to another key (as a deploy that changes its routing
            # does): the two held messages are routed nowhere now, yet a worker holds them.
            # Counted as unresolved, the sample incomplete, not dropped from a complete one
            # (review F2): the pool may not shrink on work it cannot see.
            with redis.Redis(port=redis_server.port, password=redis_server.password,
                             db=database) as admin:
                binding = Layout().binding_key("media")
                (member,) = admin.smembers(binding)
                admin.srem(binding, member)
                admin.sadd(binding, member.replace(b"media.video.*", b"video.*"))
            third = _sample(await source.sample([ref]), ref)
            assert (third.ready, third.unacked, third.complete) == (3, 0, False)


async def test_a_large_unacked_hash_is_read_in_one_bounded_page(
    redis_server: RedisServer, database: int, broker: RedisBroker, source: RedisSource
) -> None:
    """200 held messages: past the 128 entries Redis keeps as one listpack, the hash is a table
    that HSCAN pages. One page of the default size reads it all; a smaller bound leaves the
    sample incomplete (it may grow the pool, never shrink it) rather than wrong."""
    app = celery_app(redis_server, database)
    publish(app, "bulk", [0, 5] * 150)
    held = HeldConsumer(app, "bulk", 200)
    bounded = RedisSource(broker, unacked_scan_limit=50)
    try:
        ref = QueueRef("", "bulk")
        got = _sample(await source.sample([ref]), ref)
        assert (got.ready, got.unacked, got.complete) == (100, 200, True)
        got = _sample(await bounded.sample([ref]), ref)
        assert (got.ready, got.complete) == (100, False)
        assert got.unacked < 200
    finally:
        held.close()
        await bounded.close()


class CountingConnection(Connection):
    """redis-py's connection, counting the writes that start a round trip."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        await super().send_packed_command(command, check_health)


async def test_one_round_trip_per_tick_whatever_the_number_of_queues(
    redis_server: RedisServer, database: int, broker: RedisBroker
) -> None:
    app = celery_app(redis_server, database)
    publish(app, "q-7", [0, 9, 5])
    counted = RedisSource(broker, connection_class=CountingConnection)
    try:
        await counted.sample([QueueRef("", "warm-up")])  # connects: AUTH, SELECT, CLIENT ...
        for number in (1, 10, 1000):
            CountingConnection.sends = 0
            refs = [QueueRef("", f"q-{i}") for i in range(number)]
            result = await counted.sample(refs)
            assert CountingConnection.sends == 1, number
            assert all(isinstance(outcome, QueueSample) for outcome in result.values())
        assert _sample(result, QueueRef("", "q-7")).ready == 3
    finally:
        await counted.close()


async def test_a_peek_reads_ready_counts_only_in_one_round_trip_and_no_hscan(
    redis_server: RedisServer, database: int, broker: RedisBroker
) -> None:
    app = celery_app(redis_server, database)
    publish(app, "peeked", [0, 3, 9, 9])
    held = HeldConsumer(app, "peeked", 1)
    counted = RedisSource(broker, connection_class=CountingConnection)
    admin = redis.Redis(port=redis_server.port, password=redis_server.password, db=database)
    try:
        ref = QueueRef("", "peeked")
        full = _sample(await counted.sample([ref]), ref)
        assert (full.ready, full.unacked, full.complete) == (3, 1, True)
        assert full.note == NO_RATES, "users are told the pool is sized on backlog alone"
        scans = admin.info("commandstats")["cmdstat_hscan"]["calls"]
        CountingConnection.sends = 0
        live = _sample(await counted.peek([ref]), ref)
        assert (live.ready, live.unacked, live.complete) == (3, 0, False)
        assert CountingConnection.sends == 1
        assert admin.info("commandstats")["cmdstat_hscan"]["calls"] == scans
    finally:
        held.close()
        admin.close()
        await counted.close()


async def test_a_queue_key_that_is_not_a_list_fails_alone(
    redis_server: RedisServer, database: int, source: RedisSource
) -> None:
    with redis.Redis(port=redis_server.port, password=redis_server.password, db=database) as r:
        r.set("not-a-list", "x")
        r.lpush("fine", "m")
    result = await source.sample([QueueRef("", "not-a-list"), QueueRef("", "fine")])
    error = result[QueueRef("", "not-a-list")]
    assert isinstance(error, SourceError) and error.kind is ErrorKind.BAD_RESPONSE
    assert "not kombu's Redis layout" in error.message
    assert _sample(result, QueueRef("", "fine")).ready == 1


BUSY_SCRIPT = """
local start = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1]) then return 1 end
end
"""


async def test_a_server_busy_with_a_script_is_unreachable_not_a_wrong_layout(
    redis_server: RedisServer, database: int, broker: RedisBroker, source: RedisSource
) -> None:
    """Review F9: a script past busy-reply-threshold makes Redis answer every other client's
    command with BUSY; that was told as "a priority list is not a list: not kombu's Redis
    layout". It is the server's state: unreachable for now, for the queue and the stream."""
    with redis.Redis(port=redis_server.port, password=redis_server.password, db=database) as r:
        r.lpush("jobs", "m1")
        r.xgroup_create("events", "workers", id="0", mkstream=True)
        threshold = r.config_get("busy-reply-threshold")["busy-reply-threshold"]
        r.config_set("busy-reply-threshold", 50)
    stream = StreamGroup("events", "workers").ref
    await source.sample([QueueRef("", "jobs"), stream])  # connected before the script runs
    fresh = RedisSource(broker, timeout=2.0)  # and one that connects during it
    busy = threading.Thread(target=_run_script, args=(redis_server, 1_500_000))
    busy.start()
    try:
        time.sleep(0.3)  # the script is past its threshold
        result = await source.sample([QueueRef("", "jobs"), stream])
        with pytest.raises(SourceError) as connecting:
            await fresh.sample([QueueRef("", "jobs")])
    finally:
        busy.join()
        await fresh.close()
        with redis.Redis(port=redis_server.port, password=redis_server.password) as r:
            r.config_set("busy-reply-threshold", threshold)
    for error in (result[QueueRef("", "jobs")], result[stream], connecting.value):
        assert isinstance(error, SourceError) and error.kind is ErrorKind.UNREACHABLE, error
        assert "cannot answer now: BUSY" in error.message
        assert "kombu" not in error.message
    assert _sample(await source.sample([QueueRef("", "jobs")]), QueueRef("", "jobs")).ready == 1


def _run_script(server: RedisServer, microseconds: int) -> None:
    with redis.Redis(port=server.port, password=server.password) as r:
        r.eval(BUSY_SCRIPT, 0, microseconds)


async def test_an_unacked_key_that_is_not_kombus_hash_leaves_samples_incomplete_not_failed(
    redis_server: RedisServer, database: int, source: RedisSource
) -> None:
    """Another program's `unacked` string: the ready counts still stand, the in-flight work is
    unknown, so the pool may grow and never shrinks on it."""
    with redis.Redis(port=redis_server.port, password=redis_server.password, db=database) as r:
        r.set("unacked", "not a hash")
        r.lpush("jobs", "m1", "m2")
    ref = QueueRef("", "jobs")
    got = _sample(await source.sample([ref]), ref)
    assert (got.ready, got.unacked, got.complete) == (2, 0, False)
    # And the Ready condition says why, beside the rates note (review F3).
    assert got.note is not None
    assert "the unacked key 'unacked' is not kombu's hash" in got.note
    assert got.note.endswith("; " + NO_RATES)


def acl_user(server: RedisServer, keys: str, *commands: str) -> tuple[str, str]:
    """A new ACL user allowed `commands` on the keys matching `keys`, and its password."""
    user, password = f"qs-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    with redis.Redis(port=server.port, password=server.password) as admin:
        admin.acl_setuser(
            user, enabled=True, passwords=[f"+{password}"], keys=[keys], channels=[],
            commands=["-@all", *commands],
        )
    return user, password


async def test_an_acl_user_with_the_documented_permissions_is_enough(
    redis_server: RedisServer, database: int
) -> None:
    """LLEN, HLEN, HSCAN, SMEMBERS (and SELECT off database 0): nothing else, not even CLIENT.
    Without a key's permission that queue fails alone, and the rest are incomplete."""
    app = celery_app(redis_server, database)
    publish(app, "acl-q", [0, 9])
    held = HeldConsumer(app, "acl-q", 1)
    reads = ("+llen", "+hlen", "+hscan", "+smembers", "+select")
    try:
        user, password = acl_user(redis_server, "~*", *reads)
        secret = {
            "redisUrl": f"redis://127.0.0.1:{redis_server.port}/{database}",
            "username": user,
            "password": password,
        }
        source = RedisSource(broker_from_secret(secret), timeout=2.0)
        try:
            got = _sample(await source.sample([QueueRef("", "acl-q")]), QueueRef("", "acl-q"))
            assert (got.ready, got.unacked, got.complete) == (1, 1, True)
        finally:
            await source.close()

        user, password = acl_user(redis_server, "~acl-q*", *reads)
        source = RedisSource(broker_from_secret(secret | {"username": user, "password": password}))
        try:
            result = await source.sample([QueueRef("", "acl-q"), QueueRef("", "forbidden")])
        finally:
            await source.close()
        got = _sample(result, QueueRef("", "acl-q"))
        assert (got.ready, got.complete) == (1, False)  # the unacked hash is out of its reach
        assert got.note is not None and "the unacked key 'unacked' was refused" in got.note
        refused = result[QueueRef("", "forbidden")]
        assert isinstance(refused, SourceError) and refused.kind is ErrorKind.AUTH
        assert "an ACL user needs +llen +hlen +hscan +smembers" in refused.message
        assert password not in refused.message
    finally:
        held.close()


@pytest.mark.parametrize("lacking", ["+hscan", "+hlen"])
async def test_an_acl_user_without_a_read_of_the_unacked_hash_is_told_what_it_lacks(
    redis_server: RedisServer, database: int, lacking: str
) -> None:
    """Review F3: without HSCAN (or HLEN) every sample stayed incomplete for ever, and the
    Ready condition said nothing of why: the note names the command and what the user needs."""
    with redis.Redis(port=redis_server.port, password=redis_server.password, db=database) as r:
        r.lpush("jobs", "m1")
        r.hset("unacked", "t1", '[{"body": "x"}, "", "jobs"]')
    reads = [c for c in ("+llen", "+hlen", "+hscan", "+smembers", "+select") if c != lacking]
    user, password = acl_user(redis_server, "~*", *reads)
    source = RedisSource(broker_from_secret({
        "redisUrl": f"redis://127.0.0.1:{redis_server.port}/{database}",
        "username": user, "password": password,
    }), timeout=2.0)
    try:
        got = _sample(await source.sample([QueueRef("", "jobs")]), QueueRef("", "jobs"))
    finally:
        await source.close()
    assert (got.ready, got.unacked, got.complete) == (1, 0, False)
    assert got.note is not None
    assert f"'{lacking[1:]}'" in got.note, got.note
    assert "an ACL user needs +llen +hlen +hscan +smembers" in got.note
    assert NO_RATES in got.note and password not in got.note


async def test_a_wrong_password_is_an_auth_error_naming_no_secret(
    redis_server: RedisServer, database: int
) -> None:
    wrong = "not-" + redis_server.password
    broker = broker_from_secret({"redisUrl": f"redis://:{wrong}@127.0.0.1:{redis_server.port}"})
    source = RedisSource(broker, timeout=2.0)
    try:
        with pytest.raises(SourceError) as caught:
            await source.sample([QueueRef("", "any")])
    finally:
        await source.close()
    assert caught.value.kind is ErrorKind.AUTH
    assert "refused the credentials" in caught.value.message
    for text in (str(caught.value), repr(caught.value), repr(source), repr(broker)):
        assert wrong not in text and redis_server.password not in text


async def test_a_database_the_server_does_not_have_is_a_configuration_error(
    redis_server: RedisServer,
) -> None:
    secret = {"redisUrl": redis_server.url, "password": redis_server.password, "database": "99"}
    source = RedisSource(broker_from_secret(secret), timeout=2.0)
    try:
        with pytest.raises(SourceError) as caught:
            await source.sample([QueueRef("", "any")])
    finally:
        await source.close()
    assert caught.value.kind is ErrorKind.BAD_CONFIG
    assert "the database does not exist" in caught.value.message


async def test_a_stopped_server_is_unreachable_and_a_restarted_one_answers_again() -> None:
    with RedisServer(port=SPARE_PORT) as spare:
        broker = broker_from_secret({"redisUrl": spare.url, "password": spare.password})
        source = RedisSource(broker, timeout=2.0)
        try:
            assert _sample(await source.sample([QueueRef("", "q")]), QueueRef("", "q")).ready == 0
            spare.stop()
            with pytest.raises(SourceError) as caught:
                await source.sample([QueueRef("", "q")])
            assert caught.value.kind is ErrorKind.UNREACHABLE
            assert f"127.0.0.1:{SPARE_PORT}" in caught.value.message
            assert spare.password not in str(caught.value)
            spare.start()
            assert _sample(await source.sample([QueueRef("", "q")]), QueueRef("", "q")).ready == 0
        finally:
            await source.close()


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
    for link in held:
        link.close()
    server.close()


async def test_a_server_that_never_answers_is_a_timeout(silent_port: int) -> None:
    broker = broker_from_secret({"redisUrl": f"redis://:some-password@127.0.0.1:{silent_port}"})
    source = RedisSource(broker, timeout=0.5)
    try:
        with pytest.raises(SourceError) as caught:
            await source.sample([QueueRef("", "q")])
    finally:
        await source.close()
    assert caught.value.kind is ErrorKind.TIMEOUT


async def test_a_paused_server_is_a_timeout_and_the_next_tick_reads_fresh_replies(
    redis_server: RedisServer, database: int
) -> None:
    """A pipeline cut short by the timeout must not leave its replies on the connection for
    the next tick to read as its own (CLIENT PAUSE holds every client's commands)."""
    with redis.Redis(port=redis_server.port, password=redis_server.password, db=database) as r:
        r.lpush("paused-q", "a", "b", "c")
        source = RedisSource(
            broker_from_secret({"redisUrl": _url(redis_server, database)}), timeout=0.5
        )
        ref = QueueRef("", "paused-q")
        try:
            assert _sample(await source.sample([ref]), ref).ready == 3
            r.execute_command("CLIENT", "PAUSE", "1500", "ALL")
            with pytest.raises(SourceError) as caught:
                await source.sample([ref, QueueRef("", "other")])
            assert caught.value.kind is ErrorKind.TIMEOUT
            r.execute_command("CLIENT", "UNPAUSE")
            r.lpush("paused-q", "d")
            for _ in range(3):
                assert _sample(await source.sample([ref]), ref).ready == 4
        finally:
            await source.close()


async def test_tls_with_the_right_ca_works_and_with_a_wrong_one_fails_clearly(
    redis_server: RedisServer, database: int
) -> None:
    with redis.Redis(port=redis_server.port, password=redis_server.password, db=database) as r:
        r.lpush("tls-q", "a", "b")
    secret = {
        "redisUrl": f"{redis_server.tls_url}/{database}",
        "password": redis_server.password,
        "ca.crt": redis_server.ca_cert,
    }
    source = RedisSource(broker_from_secret(secret), timeout=2.0)
    try:
        ref = QueueRef("", "tls-q")
        assert _sample(await source.sample([ref]), ref).ready == 2
    finally:
        await source.close()
    source = RedisSource(
        broker_from_secret(secret | {"ca.crt": redis_server.wrong_ca_cert}), timeout=2.0
    )
    try:
        with pytest.raises(SourceError) as caught:
            await source.sample([QueueRef("", "tls-q")])
    finally:
        await source.close()
    assert caught.value.kind is ErrorKind.TLS_FAILED
    assert "TLS failed" in caught.value.message
    assert "certificate verify failed" in caught.value.message
    assert redis_server.password not in str(caught.value)
