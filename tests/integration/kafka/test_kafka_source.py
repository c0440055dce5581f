"""The kafka source against a real broker (the session's KRaft node): lag and rates of real
groups, one round of requests per tick whatever the groups, counted where aiokafka writes them,
every listener's good and bad credentials, and the cases lag.py tells apart.

Requests are counted at aiokafka's connection (`AIOKafkaConnection.send` and `.connect`,
wrapped for one test), not in the source: what is counted is what went on the wire.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.protocol.commit import OffsetCommitRequest
from aiokafka.protocol.group import JoinGroupRequest
from aiokafka.protocol.types import Array, Bytes, Int16, Schema, String

from queuescaler.core.sample import BrokerClient, ErrorKind, QueueRef, QueueSample, SourceError
from queuescaler.sources.kafka.secret import broker_from_secret
from queuescaler.sources.kafka.source import KafkaSource
from queuescaler.sources.kafka.spec import GroupScope
from queuescaler_testkit.kafka_server import EXPIRING, MECHANISMS, KafkaServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

T = TypeVar("T")
API_NAMES = {3: "Metadata", 10: "FindCoordinator", 9: "OffsetFetch", 15: "DescribeGroups",
             2: "ListOffsets", 18: "ApiVersions", 17: "SaslHandshake", 36: "SaslAuthenticate"}


def _name(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


def plain(server: KafkaServer, **options: Any) -> KafkaSource:
    return KafkaSource(broker_from_secret({"bootstrapServers": server.bootstrap}), **options)


async def until(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30.0) -> T:
    """Poll `check` until it returns something truthy (bounded; never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def one(source: KafkaSource, ref: QueueRef) -> QueueSample | SourceError:
    return (await source.sample([ref]))[ref]


async def refusal(source: KafkaSource, ref: QueueRef) -> SourceError:
    """The SourceError a tick raises as a whole (the source closed afterwards)."""
    try:
        with pytest.raises(SourceError) as refused:
            await source.sample([ref])
    finally:
        await source.close()
    return refused.value


async def sampled(source: KafkaSource, ref: QueueRef, timeout: float = 30.0) -> QueueSample:
    """The queue's sample, once there is one: on a fresh broker a group's first FindCoordinator
    answers COORDINATOR_NOT_AVAILABLE while the offsets topic is being created (the source
    reports it for that tick and asks again at the next)."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = await one(source, ref)
        if isinstance(outcome, QueueSample):
            return outcome
        assert "COORDINATOR_NOT_AVAILABLE" in outcome.message, outcome
        assert time.monotonic() < deadline, outcome
        await asyncio.sleep(0.2)


class Wire:
    """The requests aiokafka's connections write, and the connections they open."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []
        self.opened = 0

    def per_api(self) -> Counter[str]:
        return Counter(API_NAMES.get(key, str(key)) for key, _ in self.sent)

    def clear(self) -> None:
        self.sent.clear()
        self.opened = 0


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Iterator[Wire]:
    seen = Wire()
    send, connect = AIOKafkaConnection.send, AIOKafkaConnection.connect

    def counting_send(self: AIOKafkaConnection, request: Any, expect_response: bool = True) -> Any:
        struct = request.prepare(self._versions)
        seen.sent.append((struct.API_KEY, f"{self.host}:{self.port}"))
        return send(self, request, expect_response)

    async def counting_connect(self: AIOKafkaConnection) -> Any:
        seen.opened += 1
        return await connect(self)

    monkeypatch.setattr(AIOKafkaConnection, "send", counting_send)
    monkeypatch.setattr(AIOKafkaConnection, "connect", counting_connect)
    yield seen


async def consumer(server: KafkaServer, topic: str, group: str, pod: str) -> AIOKafkaConsumer:
    member = AIOKafkaConsumer(
        topic, group_id=group, client_id=pod, enable_auto_commit=False,
        auto_offset_reset="earliest", **server.client_options(),
    )
    await member.start()
    return member


async def consume(member: AIOKafkaConsumer, n: int) -> None:
    """Read `n` records, then commit what was read."""
    got = 0
    deadline = time.monotonic() + 30
    while got < n:
        assert time.monotonic() < deadline, f"read {got} of {n} records"
        batches = await member.getmany(timeout_ms=500, max_records=n - got)
        got += sum(len(records) for records in batches.values())
    await member.commit()


# --- lag, rates and members of a real group -----------------------------------------------------


async def test_lag_rates_and_busy_members_of_a_real_group(kafka_server: KafkaServer) -> None:
    topic, group = _name("orders"), _name("workers")
    kafka_server.create_topic(topic, 1)
    kafka_server.produce(topic, 50)
    source = plain(kafka_server)
    ref = GroupScope(group).ref(topic)
    member = await consumer(kafka_server, topic, group, "worker-7")
    try:
        await consume(member, 20)
        first = await until(lambda: _settled(source, ref), "the member's assignment")
        assert (first.ready, first.unacked, first.backlog) == (30, 0, 30)
        assert (first.published_total, first.acked_total) == (50, 20)
        assert (first.consumers, first.parallelism, first.backlog_parallelism) == (1, 1, 1)
        assert first.complete and not first.rebalancing and first.scaling_pauses
        (busy,) = await source.clients([ref.scope])
        assert (busy.client_name, busy.peer_host, busy.unacked) == ("worker-7", "127.0.0.1", 30)
        assert busy.queues == frozenset({ref})

        kafka_server.produce(topic, 10)
        await consume(member, 40)
        second = await sampled(source, ref)
        # the core differences the counters into rates: 10 published, 40 consumed between
        assert second.published_total - first.published_total == 10  # type: ignore[operator]
        assert second.acked_total - first.acked_total == 40  # type: ignore[operator]
        assert (second.ready, second.backlog_parallelism) == (0, 0)
        (idle,) = await source.clients([ref.scope])
        assert (idle.client_name, idle.unacked) == ("worker-7", 0)
    finally:
        await member.stop()
        await source.close()


async def _settled(source: KafkaSource, ref: QueueRef) -> QueueSample | None:
    """A sample of a Stable group whose members' assignments are told."""
    found = await one(source, ref)
    return found if isinstance(found, QueueSample) and found.consumers else None


# --- one round per tick, counted on the wire ----------------------------------------------------


@pytest.fixture(scope="module")
def ten_topics(kafka_server: KafkaServer) -> list[str]:
    """Ten topics of four partitions, five messages on each partition."""
    topics = [_name(f"t{i}") for i in range(10)]
    for topic in topics:
        kafka_server.create_topic(topic, 4)
        for partition in range(4):
            kafka_server.produce(topic, 5, partition=partition)
    # A first commit through a consumer (which waits for the offsets topic a fresh broker
    # creates on demand): the raw commits below then find their coordinator at once.
    kafka_server.commit(_name("warm"), topics[0], {0: 0})
    return topics


@pytest.mark.parametrize("groups", [1, 10, 100])
async def test_a_tick_is_four_requests_on_one_connection_whatever_the_groups(
    kafka_server: KafkaServer, wire: Wire, ten_topics: list[str], groups: int
) -> None:
    topics = ten_topics
    names = [_name(f"g{i}") for i in range(groups)]
    await _commit(kafka_server, {name: (topics[i % 10], 3) for i, name in enumerate(names)})
    refs = [GroupScope(name).ref(topics[i % 10]) for i, name in enumerate(names)]
    source = plain(kafka_server)
    try:
        wire.clear()
        samples = await source.sample(refs)
        first, opened = wire.per_api(), wire.opened
        wire.clear()
        for _ in range(3):
            again = await source.sample(refs)
        steady, reopened = wire.per_api(), wire.opened
    finally:
        await source.close()
    assert all(isinstance(s, QueueSample) and s.ready == 8 for s in samples.values())
    assert all(isinstance(s, QueueSample) and s.ready == 8 for s in again.values())
    assert (opened, reopened) == (1, 0)
    assert first == {"ApiVersions": 1, "Metadata": 1, "FindCoordinator": 1, "OffsetFetch": 1,
                     "DescribeGroups": 1, "ListOffsets": 2}
    assert steady == {"OffsetFetch": 3, "DescribeGroups": 3, "ListOffsets": 6}
    print(f"\n{groups} groups over 10 topics: first tick {dict(first)}, then "
          f"{sum(steady.values()) / 3:g} requests a tick, {opened} connection")


async def _commit(server: KafkaServer, offsets: dict[str, tuple[str, int]]) -> None:
    """Commit each group's offset on every partition of its topic (4 partitions), as a
    standalone consumer does (no member, generation -1), all on one connection."""
    host, port = server.bootstrap.split(":")
    conn = await create_conn(host, int(port), request_timeout_ms=10_000)
    try:
        answers = await asyncio.gather(*(
            conn.send(OffsetCommitRequest(group, -1, "", -1, [
                (topic, [(p, offset, "") for p in range(4)])]))
            for group, (topic, offset) in offsets.items()
        ))
    finally:
        conn.close()
    errors = {p[1] for a in answers for _, parts in a.topics for p in parts}
    assert errors == {0}, errors


# --- credentials --------------------------------------------------------------------------------


async def _a_topic(server: KafkaServer) -> QueueRef:
    topic = _name("secured")
    server.create_topic(topic, 1)
    server.produce(topic, 3)
    return GroupScope(_name("g"), "earliest").ref(topic)


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_each_sasl_mechanism_reads_the_lag_and_logs_no_credential(
    kafka_server: KafkaServer, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    ref = await _a_topic(kafka_server)
    user, password = kafka_server.credentials(mechanism)
    sasl = mechanism.lower()
    source = KafkaSource(broker_from_secret({
        "bootstrapServers": kafka_server.sasl_bootstrap, "sasl": sasl, "username": user,
        "password": password}))
    caplog.set_level(logging.DEBUG)  # aiokafka logs every request, SASL frames included
    try:
        assert (await sampled(source, ref)).ready == 3
    finally:
        await source.close()
    assert any(r.name == "aiokafka.conn" for r in caplog.records), "aiokafka logged nothing"
    assert password not in caplog.text and user not in caplog.text


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_a_wrong_password_is_auth_and_never_told(
    kafka_server: KafkaServer, mechanism: str
) -> None:
    ref = await _a_topic(kafka_server)
    user, _ = kafka_server.credentials(mechanism)
    wrong = f"wrong-{uuid.uuid4().hex}"
    source = KafkaSource(broker_from_secret({
        "bootstrapServers": kafka_server.sasl_bootstrap, "sasl": mechanism, "username": user,
        "password": wrong}))
    refused = await refusal(source, ref)
    assert refused.kind is ErrorKind.AUTH
    assert wrong not in str(refused)


async def test_a_plain_client_on_the_sasl_listener_is_refused(kafka_server: KafkaServer) -> None:
    ref = await _a_topic(kafka_server)
    source = KafkaSource(broker_from_secret({"bootstrapServers": kafka_server.sasl_bootstrap}),
                         timeout=2.0)
    refused = await refusal(source, ref)
    assert refused.kind in (ErrorKind.UNREACHABLE, ErrorKind.TIMEOUT)


async def test_tls_with_the_clusters_ca(kafka_server: KafkaServer) -> None:
    ref = await _a_topic(kafka_server)
    source = KafkaSource(broker_from_secret({
        "bootstrapServers": kafka_server.ssl_bootstrap, "tls": "enable",
        "ca.crt": kafka_server.ca_cert}))
    try:
        assert (await sampled(source, ref)).ready == 3
    finally:
        await source.close()


@pytest.mark.parametrize(
    ("secret", "timeout", "said"),
    [
        pytest.param(
            lambda server: {"bootstrapServers": server.ssl_bootstrap, "tls": "enable",
                            "ca.crt": server.wrong_ca_cert},
            5.0, "certificate verify failed", id="another-ca",
        ),
        pytest.param(
            lambda server: {"bootstrapServers": server.ssl_bootstrap, "tls": "enable"},
            5.0, "certificate verify failed", id="system-cas",
        ),
        pytest.param(
            lambda server: {"bootstrapServers": server.bootstrap, "tls": "enable",
                            "ca.crt": server.ca_cert},
            2.0, "during the handshake", id="tls-on-the-plain-listener",
        ),
    ],
)
async def test_tls_refused_is_tls_failed(
    kafka_server: KafkaServer, secret: Callable[[KafkaServer], dict[str, str]], timeout: float,
    said: str,
) -> None:
    ref = await _a_topic(kafka_server)
    source = KafkaSource(broker_from_secret(secret(kafka_server)), timeout=timeout)
    refused = await refusal(source, ref)
    assert refused.kind is ErrorKind.TLS_FAILED
    assert said in refused.message


async def test_nobody_listening_is_unreachable(kafka_server: KafkaServer) -> None:
    source = KafkaSource(broker_from_secret({"bootstrapServers": "127.0.0.1:24099"}))
    with pytest.raises(SourceError) as refused:
        await source.sample([GroupScope("g").ref("t")])
    assert refused.value.kind is ErrorKind.UNREACHABLE


async def test_a_broker_that_stops_answering_is_a_timeout_and_nothing_waits_on_it(
    kafka_server: KafkaServer,
) -> None:
    """The broker accepts and never answers (SIGSTOP): aiokafka times the requests out but
    keeps the connection and each request in its queue, so every tick added to the pile and
    the cluster looked reachable (review r1). Now the connection is closed, and the cluster
    whose every connection timed out is a timeout as a whole (BrokerReachable False)."""
    topic, group = _name("hung"), _name("hung")
    kafka_server.create_topic(topic, 1)
    kafka_server.produce(topic, 3)
    kafka_server.commit(group, topic, {0: 1})
    ref = GroupScope(group).ref(topic)
    opened: list[AIOKafkaConnection] = []

    async def connect(host: str, port: int, **options: Any) -> AIOKafkaConnection:
        conn = await create_conn(host, port, **options)
        opened.append(conn)
        return conn

    source = plain(kafka_server, timeout=1.0, connect=connect)
    assert kafka_server.pid is not None
    try:
        assert (await sampled(source, ref)).ready == 2
        os.kill(kafka_server.pid, signal.SIGSTOP)
        try:
            for _ in range(2):
                with pytest.raises(SourceError) as failed:
                    await source.sample([ref])
                assert failed.value.kind is ErrorKind.TIMEOUT, failed.value
                assert [len(conn._requests) for conn in opened if conn.connected()] == []
        finally:
            os.kill(kafka_server.pid, signal.SIGCONT)
        assert (await until(lambda: _sample_or_none(source, ref), "the broker back")).ready == 2
    finally:
        await source.close()


async def _sample_or_none(source: KafkaSource, ref: QueueRef) -> QueueSample | None:
    try:
        outcome = await one(source, ref)
    except SourceError:
        return None
    return outcome if isinstance(outcome, QueueSample) else None


# --- what the lag counts ------------------------------------------------------------------------


@pytest.mark.parametrize(("reset", "ready"), [("earliest", 10), ("latest", 0)])
async def test_a_commit_beyond_the_end_counts_as_the_reset_policy_would(
    kafka_server: KafkaServer, reset: str, ready: int
) -> None:
    """Committed 1000 on a partition that ends at 10 (a truncated log, a recreated topic, an
    offset set by hand): the consumer's fetch is out of range and it resets by its policy, so
    the 10 messages are not stranded at zero replicas under earliest (review r1)."""
    topic, group = _name("truncated"), _name("ahead")
    kafka_server.create_topic(topic, 1)
    kafka_server.produce(topic, 10)
    kafka_server.commit(group, topic, {0: 1000})
    source = plain(kafka_server)
    try:
        sample = await sampled(source, GroupScope(group, reset).ref(topic))
    finally:
        await source.close()
    assert (sample.ready, sample.complete) == (ready, True)
    assert sample.note is not None
    assert f"committed offset beyond the end on 1 partition of topic {topic!r}" in sample.note


async def test_a_missing_topic_is_queue_not_found_beside_a_good_one(
    kafka_server: KafkaServer,
) -> None:
    good = await _a_topic(kafka_server)
    missing = GroupScope.from_scope(good.scope).ref(_name("missing"))  # type: ignore[union-attr]
    source = plain(kafka_server)
    try:
        samples = await source.sample([good, missing])
    finally:
        await source.close()
    assert isinstance(samples[good], QueueSample)
    outcome = samples[missing]
    assert isinstance(outcome, SourceError) and outcome.kind is ErrorKind.QUEUE_NOT_FOUND
    assert missing.name not in kafka_server.topics()  # asking created nothing


@pytest.mark.parametrize(("reset", "ready"), [("earliest", 7), ("latest", 0)])
async def test_a_group_without_commits_follows_its_reset_policy(
    kafka_server: KafkaServer, reset: str, ready: int
) -> None:
    topic = _name("fresh")
    kafka_server.create_topic(topic, 2)
    kafka_server.produce(topic, 7)
    source = plain(kafka_server)
    try:
        sample = await sampled(source, GroupScope(_name("never"), reset).ref(topic))
    finally:
        await source.close()
    assert (sample.ready, sample.consumers, sample.complete) == (ready, 0, True)


async def test_messages_retention_deleted_are_not_counted(kafka_server: KafkaServer) -> None:
    topic, group = _name("expiring"), _name("slow")
    kafka_server.create_topic(topic, 1, config=EXPIRING)
    kafka_server.produce(topic, 20)
    kafka_server.commit(group, topic, {0: 5})

    async def deleted() -> tuple[int, int] | None:
        kafka_server.produce(topic, 1)  # rolls the segment, so the old one can expire
        start, end = kafka_server.offsets(topic)[0]
        return (start, end) if start > 5 else None

    await until(deleted, "retention to delete the first segment", timeout=60)
    source = plain(kafka_server)
    try:
        sample = await sampled(source, GroupScope(group).ref(topic))
    finally:
        await source.close()
    start, end = kafka_server.offsets(topic)[0]
    assert sample.ready <= end - start < end - 5
    assert sample.published_total == end


async def test_a_rebalance_in_progress_is_seen(kafka_server: KafkaServer) -> None:
    """A member that joined and was never given its assignment (no SyncGroup): the group waits
    in CompletingRebalance until its session times out."""
    topic, group = _name("joining"), _name("rebalancing")
    kafka_server.create_topic(topic, 2)
    kafka_server.commit(_name("warm"), topic, {0: 0})  # the offsets topic exists from here on
    host, port = kafka_server.bootstrap.split(":")
    conn = await create_conn(host, int(port), request_timeout_ms=10_000)
    metadata = Schema(("version", Int16), ("topics", Array(String("utf-8"))),
                      ("user_data", Bytes)).encode([0, [topic], b""])
    source = plain(kafka_server)
    try:
        join = JoinGroupRequest(group, 30_000, 30_000, "", None, "consumer",
                                [("range", bytes(metadata))])
        answer = await conn.send(join)
        if answer.error_code == 79:  # MEMBER_ID_REQUIRED: join again with the id given
            join = JoinGroupRequest(group, 30_000, 30_000, answer.member_id, None, "consumer",
                                    [("range", bytes(metadata))])
            answer = await conn.send(join)
        assert answer.error_code == 0
        sample = await sampled(source, GroupScope(group).ref(topic))
        assert sample.rebalancing and sample.consumers == 1
        (member,) = await source.clients([GroupScope(group).scope])
        assert member.queues is None and member.unacked == 0  # nothing lags: not busy
    finally:
        conn.close()
        await source.close()


async def test_an_empty_group_with_lag_holds_its_pods(kafka_server: KafkaServer) -> None:
    topic, group = _name("stopped"), _name("nobody")
    kafka_server.create_topic(topic, 1)
    kafka_server.produce(topic, 4)
    kafka_server.commit(group, topic, {0: 1})
    source = plain(kafka_server)
    try:
        clients = await source.clients([GroupScope(group).scope])
    finally:
        await source.close()
    assert clients == [BrokerClient(GroupScope(group).scope, None, None, 1, 1)]
