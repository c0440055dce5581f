"""The Kafka test broker is what the kafka source needs, checked with aiokafka as the source will.

A group consumes and commits; committed offsets and log offsets are readable; each SASL
mechanism takes its user's password and refuses a wrong one; the SSL listener verifies with the
server's CA only; a missing topic stays missing; retention moves a partition's log start; a
restarted broker keeps its topics, offsets and users. Where aiokafka reports a failure, the
tests pin what it raises: the source's error kinds are read from those types.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnknownTopicOrPartitionError,
)
from aiokafka.protocol.admin import DescribeGroupsRequest_v2
from aiokafka.protocol.api import Request
from aiokafka.protocol.metadata import MetadataRequest

from queuescaler_testkit.env import wait_until
from queuescaler_testkit.kafka_server import (
    EXPIRING,
    MECHANISMS,
    SPARE_PORTS,
    KafkaServer,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

UNKNOWN_TOPIC_OR_PARTITION = 3


def _name(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


async def _connect(options: dict[str, Any]) -> None:
    """One connection to the first bootstrap address, as the client makes it: TCP, TLS, SASL
    and the ApiVersions exchange. Raises what aiokafka's connection raises."""
    host, port = options.pop("bootstrap_servers").split(":")
    conn = await create_conn(host, int(port), request_timeout_ms=5000, **options)
    conn.close()


async def _broker_ids(options: dict[str, Any]) -> set[int]:
    client = AIOKafkaClient(request_timeout_ms=5000, **options)
    try:
        await client.bootstrap()
        metadata = await client.fetch_all_metadata()
        return {int(broker.nodeId) for broker in metadata.brokers()}
    finally:
        await client.close()


class DescribeGroupsV2(Request[DescribeGroupsRequest_v2]):  # type: ignore[misc]  # untyped
    """DescribeGroups pinned to v2. aiokafka 0.14 picks v3 and decodes its answer with v2's
    schema (DescribeGroupsRequest_v3.RESPONSE_TYPE is DescribeGroupsResponse_v2; v3 adds
    authorized_operations): `describe_consumer_groups` misreads every group after the first,
    and fails on two or more, with any broker that has v3 (Kafka 2.3 and later)."""

    API_KEY = 15

    def __init__(self, groups: list[str]) -> None:
        self.groups = groups

    def build(self, request_struct_class: type[DescribeGroupsRequest_v2]) -> Any:
        return request_struct_class(self.groups)


async def _describe(server: KafkaServer, groups: list[str]) -> dict[str, tuple[str, int]]:
    """{group: (state, members)} from the coordinator (node 1, the only one)."""
    host, port = server.bootstrap.split(":")
    conn = await create_conn(host, int(port), request_timeout_ms=5000)
    try:
        response = await conn.send(DescribeGroupsV2(groups))
    finally:
        conn.close()
    return {group[1]: (group[2], len(group[5])) for group in response.groups}


async def test_a_group_consumes_and_commits_on_the_plain_listener(
    kafka_server: KafkaServer,
) -> None:
    topic, group = _name("consume"), _name("group")
    kafka_server.create_topic(topic, 2)
    kafka_server.produce(topic, 3, partition=0)
    kafka_server.produce(topic, 2, partition=1)
    consumer = AIOKafkaConsumer(
        topic, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False,
        **kafka_server.client_options(),
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        for _ in range(30):  # bounded: each round waits at most a second for records
            batches = await consumer.getmany(timeout_ms=1000)
            values += [record.value for records in batches.values() for record in records]
            if len(values) >= 5:
                break
        await consumer.commit()
        # Stable once the join is through; on two busy cores the first look may still see
        # the group completing its rebalance (bounded: 20 looks, a quarter second apart).
        described: dict[str, tuple[str, int]] = {}
        for _ in range(20):
            described = await _describe(kafka_server, [group, "nobody"])
            if described.get(group, ("", 0))[0] == "Stable":
                break
            await asyncio.sleep(0.25)
        assert described == {group: ("Stable", 1), "nobody": ("Dead", 0)}
    finally:
        await consumer.stop()
    assert sorted(values) == [b"m-0", b"m-0", b"m-1", b"m-1", b"m-2"]
    assert kafka_server.committed(group) == {(topic, 0): 3, (topic, 1): 2}
    assert kafka_server.offsets(topic) == {0: (0, 3), 1: (0, 2)}


async def test_committed_offsets_of_idle_groups_are_readable_beside_the_end_offsets(
    kafka_server: KafkaServer,
) -> None:
    """What lag is made of: a group's committed offsets (no member alive) and the log's end."""
    topic, behind, caught_up = _name("lag"), _name("behind"), _name("caught-up")
    kafka_server.create_topic(topic, 3)
    for partition in range(3):
        kafka_server.produce(topic, 4, partition=partition)
    kafka_server.commit(behind, topic, {0: 1, 1: 4})  # partition 2: never committed
    kafka_server.commit(caught_up, topic, {0: 4, 1: 4, 2: 4})
    admin = AIOKafkaAdminClient(**kafka_server.client_options())
    await admin.start()
    try:
        fetched = await admin.list_consumer_group_offsets(behind)
        coordinator = await admin.find_coordinator(caught_up)
    finally:
        await admin.close()
    assert {tp: meta.offset for tp, meta in fetched.items()} == {
        TopicPartition(topic, 0): 1, TopicPartition(topic, 1): 4,
    }
    assert coordinator == 1
    assert kafka_server.committed(caught_up) == {(topic, p): 4 for p in range(3)}
    assert kafka_server.offsets(topic) == {p: (0, 4) for p in range(3)}


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_sasl_takes_each_mechanisms_user(kafka_server: KafkaServer, mechanism: str) -> None:
    assert await _broker_ids(kafka_server.client_options(mechanism)) == {1}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
async def test_sasl_refuses_a_wrong_password(kafka_server: KafkaServer, mechanism: str) -> None:
    """The connection raises SaslAuthenticationFailed; aiokafka's client (bootstrap) logs it and
    raises only KafkaConnectionError, like a broker that is down: a source that must tell a
    refused password apart makes its first connection with `create_conn`."""
    wrong = kafka_server.client_options(mechanism, password="not-" + uuid.uuid4().hex)
    with pytest.raises(SaslAuthenticationFailed):
        await _connect(dict(wrong))
    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        await _broker_ids(wrong)


async def test_tls_verifies_with_the_servers_ca_and_fails_without_it(
    kafka_server: KafkaServer,
) -> None:
    """As with SASL: the connection raises ssl.SSLCertVerificationError, the client's bootstrap
    only KafkaConnectionError."""
    assert await _broker_ids(kafka_server.client_options(tls=True)) == {1}
    wrong_ca = kafka_server.ssl_context(kafka_server.wrong_ca_cert)
    for context in (ssl.create_default_context(), wrong_ca):
        options = kafka_server.client_options(tls=True) | {"ssl_context": context}
        with pytest.raises(ssl.SSLCertVerificationError):
            await _connect(dict(options))
        with pytest.raises(KafkaConnectionError):
            await _broker_ids(options)


async def test_a_missing_topic_stays_missing(kafka_server: KafkaServer) -> None:
    """Auto creation is off: a metadata request that allows it still answers
    UNKNOWN_TOPIC_OR_PARTITION, and a deleted topic reads the same."""
    missing, deleted = _name("missing"), _name("deleted")
    kafka_server.create_topic(deleted)
    kafka_server.delete_topic(deleted)
    client = AIOKafkaClient(**kafka_server.client_options())
    await client.bootstrap()
    try:
        for _ in range(2):  # the second answer too: the first created nothing
            response = await client.send(
                client.get_random_node(),
                MetadataRequest([missing, deleted], allow_auto_topic_creation=True),
            )
            errors = {topic[1]: topic[0] for topic in response.topics}
            assert errors == {missing: UNKNOWN_TOPIC_OR_PARTITION,
                              deleted: UNKNOWN_TOPIC_OR_PARTITION}
    finally:
        await client.close()
    assert missing not in kafka_server.topics()
    with pytest.raises(UnknownTopicOrPartitionError):
        kafka_server.delete_topic(missing)


async def test_retention_moves_the_log_start_offset(kafka_server: KafkaServer) -> None:
    """An EXPIRING topic loses its records within seconds: the log start reaches the end, so
    a group committed before it sees an offset that is no longer in the log."""
    topic, group = _name("expiring"), _name("group")
    kafka_server.create_topic(topic, 1, config=EXPIRING)
    kafka_server.produce(topic, 5, partition=0)
    kafka_server.commit(group, topic, {0: 2})
    wait_until(lambda: kafka_server.offsets(topic)[0] == (5, 5), timeout=30,
               what="retention to delete the expiring topic's records")
    assert kafka_server.committed(group) == {(topic, 0): 2}


async def test_a_restarted_broker_keeps_topics_offsets_and_users() -> None:
    """The spare server (its own ports): what the broker-restarted fault relies on."""
    server = KafkaServer(ports=SPARE_PORTS).start()
    try:
        server.create_topic("kept", 2)
        server.produce("kept", 3, partition=1)
        server.commit("kept-group", "kept", {1: 2})
        server.restart()
        assert server.offsets("kept") == {0: (0, 0), 1: (0, 3)}
        assert server.committed("kept-group") == {("kept", 1): 2}
        server.produce("kept", 1, partition=1)  # the SCRAM users live in the metadata log
        assert server.offsets("kept")[1] == (0, 4)
        assert await _broker_ids(server.client_options("SCRAM-SHA-256")) == {1}
    finally:
        server.stop()
    assert server.pid is None
