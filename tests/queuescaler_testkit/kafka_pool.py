"""A Kafka consumer pool for end-to-end scenarios: a topic, a consumer group, a `kafka` Secret,
a Deployment and its QueueScaler with `source.kafka` (`pool.Pool`'s shape).

    pool = KafkaPool(testenv, namespace, kafka=server, partitions=6).create()
    ids = pool.produce(50)                    # 50 records on each partition, their ids
    pool.apply_scaler(minReplicas=0, target={"messagesPerReplica": 10})

The Deployment's pods run the kafka worker when a test gives them a pod runner
(`worker_env`), and nothing otherwise: a pool whose lag only the test moves (`commit`).
Everything but the topic lives in the test's namespace; `delete_queue` deletes the topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest
from aiokafka.protocol.types import Array, Bytes, Int16, Schema, String

from queuescaler_testkit.kafka_server import KafkaServer
from queuescaler_testkit.pool import FAST_BEHAVIOR, Pool, deep_merge, worker_deployment
from queuescaler_testkit.workers.kafka_worker import kafka_worker_env

SECRET = "kafka"
MEMBER_ID_REQUIRED = 79
"""JoinGroup's answer to a new member's first join (KIP-394): join again with the id given."""


def _name(what: str) -> str:
    return f"e2e-{what}-{uuid.uuid4().hex[:8]}"


@dataclass
class KafkaPool(Pool):
    """One scenario's consumer pool: the topic is `queue`, the group `group`."""

    kafka: KafkaServer | None = None
    partitions: int = 6
    group: str = field(default_factory=lambda: _name("group"))
    initial_replicas: int = 0
    """The Deployment's replicas when created."""
    with_topic: bool = True
    """Create the topic with the pool; False: the scenario creates it (`create_topic`)."""
    secret_data: Mapping[str, str] | None = None
    """The `kafka` Secret's data; None: the plain listener's address alone."""

    @property
    def server(self) -> KafkaServer:
        assert self.kafka is not None, "a KafkaPool needs its server"
        return self.kafka

    def create(
        self, *, amqp_url: str | None = None, management_url: str | None = None
    ) -> KafkaPool:
        """The topic (unless `with_topic` is False), the Secret (`secret_data`, or the plain
        listener's address) and the Deployment at `initial_replicas`. The AMQP arguments are
        the base class's, unused."""
        self.queue = _name("topic")
        if self.with_topic:
            self.create_topic()
        self.kafka_secret(self.secret_data or {"bootstrapServers": self.server.bootstrap})
        deployment = worker_deployment(self.name, self.grace_seconds)
        deployment["spec"]["replicas"] = self.initial_replicas
        self.apply(deployment)
        return self

    def create_topic(self) -> None:
        self.server.create_topic(self.queue, self.partitions)

    def kafka_secret(self, data: Mapping[str, str]) -> None:
        self.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
                    "stringData": dict(data)})

    def apply_scaler(self, **spec: Any) -> None:
        """Create or change the QueueScaler; `spec` is merged over the pool's kafka block."""
        base: dict[str, Any] = {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.name},
            "maxReplicas": 8,
            "source": {"kafka": {
                "topic": self.queue,
                "consumerGroup": self.group,
                "connectionSecretRef": {"name": SECRET},
            }},
        }
        self.apply({
            "apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler",
            "metadata": {"name": self.name},
            "spec": deep_merge(deep_merge(base, FAST_BEHAVIOR), spec),
        })

    def produce(
        self, per_partition: int, partitions: range | None = None, *, tag: str = "m"
    ) -> list[str]:
        """`per_partition` records on each of `partitions` (all by default); their ids (the
        records' values, which the worker logs), unique within the pool for distinct tags."""
        ids: list[str] = []
        for partition in partitions if partitions is not None else range(self.partitions):
            prefix = f"{tag}{partition}"
            self.server.produce(self.queue, per_partition, partition, prefix=prefix)
            ids += [f"{prefix}-{i}" for i in range(per_partition)]
        return ids

    def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit the group's offsets ({partition: next offset}); the group must be empty."""
        self.server.commit(self.group, self.queue, offsets)

    def lag(self) -> int:
        """The group's lag as the broker tells it (uncommitted partitions from the start)."""
        committed = self.server.committed(self.group)
        return sum(end - committed.get((self.queue, p), start)
                   for p, (start, end) in self.server.offsets(self.queue).items())

    def worker_env(
        self, processed_log: Path, *, work_seconds: float, started_log: Path | None = None
    ) -> dict[str, str]:
        """The kafka worker's environment for this pool's topic and group."""
        return kafka_worker_env(self.server.bootstrap, self.queue, self.group, processed_log,
                                started_log=started_log, work_seconds=work_seconds)

    def delete_queue(self) -> None:
        with contextlib.suppress(Exception):  # never created, or already gone
            self.server.delete_topic(self.queue)

    @contextlib.contextmanager
    def joining_member(self, session_seconds: int = 60) -> Iterator[str]:
        """A member that joins the (empty) group and never syncs: the group waits in
        CompletingRebalance until it leaves (on exit, a LeaveGroup) or its session times out.
        Yields its member id. From synchronous code only (it runs its own event loop)."""
        member_id = asyncio.run(self._join(session_seconds))
        try:
            yield member_id
        finally:
            asyncio.run(self._leave(member_id))

    async def _join(self, session_seconds: int) -> str:
        host, port = self.server.bootstrap.split(":")
        conn = await create_conn(host, int(port), request_timeout_ms=10_000)
        try:
            subscription = Schema(("version", Int16), ("topics", Array(String("utf-8"))),
                                  ("user_data", Bytes)).encode([0, [self.queue], b""])
            timeout_ms = session_seconds * 1000
            member_id = ""
            for _ in range(2):
                join = JoinGroupRequest(self.group, timeout_ms, timeout_ms, member_id, None,
                                        "consumer", [("range", bytes(subscription))])
                answer = await conn.send(join)
                member_id = str(answer.member_id)
                if answer.error_code != MEMBER_ID_REQUIRED:
                    break
            assert answer.error_code == 0, f"JoinGroup answered {answer.error_code}"
            return member_id
        finally:
            conn.close()

    async def _leave(self, member_id: str) -> None:
        host, port = self.server.bootstrap.split(":")
        conn = await create_conn(host, int(port), request_timeout_ms=10_000)
        try:
            answer = await conn.send(LeaveGroupRequest(self.group, member_id))
            assert answer.error_code == 0, f"LeaveGroup answered {answer.error_code}"
        finally:
            conn.close()
