"""What one tick's sampling costs: one batched listing against one GET per queue; and
what the AMQP fast path's peeks add per tick.

    python bench/sampling.py

Brings the local RabbitMQ up if needed (`hack/testenv.sh up rabbitmq`, idempotent), makes
a vhost of its own with 1,000 empty queues, and prints Markdown tables:
1. for 10, 100 and 1,000 queues asked about: RabbitMQSource.sample() (one request, the
   columns it needs) against one GET per queue, as a per-ScaledObject poller does;
2. at 1,000 queues, the listing's variants: all fields, the columns we ask for, depths
   only (`disable_stats=true&enable_queue_totals=true`), and AMQP passive declares (all
   1,000, and the fast path's per-tick budget);
3. the fast path's per-tick cost at 100, 1,000 and 10,000 QueueScalers on one broker:
   the real Engine (planner, Brokers, budget and turns; `EngineSettings()` defaults) ticks
   once a second on a simulated clock over four 15 s cycles, against an in-process
   apiserver stand-in and a source that records each passive declare and each
   management request instead of sending it (10,000 queues and QueueScalers are not
   made on the broker for this: the counts do not depend on it; the wall time of the
   declares is the real broker's, from table 2). Pools at rest at zero (minReplicas 0,
   the only ones the fast path peeked before issue 14) and pools at work (half at
   minReplicas 1, half at 5, idle queues: peeked since issue 14).
4. Redis: round trips per tick at 10, 100 and 1,000 QueueScalers on one Redis database
   (Celery queues, `source.redis`), through the same real Engine and Brokers with the real
   RedisSource against a private redis-server of the test kit (its own port, started and
   stopped by PID here); only the apiserver is the in-process stand-in. Round trips are
   counted at the transport (each command or pipeline redis-py writes to a socket, the
   connection handshakes included) and checked against the server's own counters
   (`INFO stats`: total_commands_processed, total_connections_received).
5. Kafka: requests per tick at 10, 100 and 1,000 QueueScalers on one cluster, each its own
   consumer group on one of ten topics of four partitions, through the same real Engine and
   Brokers with the real KafkaSource against a private Kafka broker of the test kit (KRaft,
   its own ports, started and stopped by PID here). Requests and connections are counted
   where aiokafka writes them (its connection's `send` and `connect`).
Medians of a few repetitions; loopback only. The vhost is deleted at the end.

    python bench/sampling.py --only redis      # table 4 alone (no RabbitMQ needed)
    python bench/sampling.py --only kafka      # table 5 alone (no RabbitMQ needed)
    python bench/sampling.py --only rabbitmq   # tables 1 to 3
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import statistics
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import pika
import redis
from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.protocol.commit import OffsetCommitRequest
from prometheus_client import CollectorRegistry
from redis.asyncio.connection import Connection

from queuescaler.core import plan as planner
from queuescaler.core.sample import BrokerClient, QueueRef, QueueSample, SampleResult
from queuescaler.core.spec import ScaleTargetRef
from queuescaler.core.workers import Pod
from queuescaler.engine import Engine, EngineSettings
from queuescaler.fleet import Fleet, ReplicaCache
from queuescaler.kube.client import HpaTarget, ObjectRef
from queuescaler.metrics import Metrics
from queuescaler.sources.activemq.secret import ActiveMQBroker
from queuescaler.sources.activemq.source import ActiveMQSource
from queuescaler.sources.kafka.secret import KafkaBroker
from queuescaler.sources.kafka.source import KafkaSource
from queuescaler.sources.rabbitmq.listing import QUEUE_COLUMNS, name_filter_query
from queuescaler.sources.rabbitmq.secret import broker_from_secret
from queuescaler.sources.rabbitmq.source import RabbitMQSource
from queuescaler.sources.redis.secret import RedisBroker
from queuescaler.sources.redis.source import RedisSource
from queuescaler_testkit.activemq_server import ActiveMQServer, ArtemisServer, ClassicServer
from queuescaler_testkit.broker import BrokerAdmin
from queuescaler_testkit.env import REPO, TestEnv, read_testenv
from queuescaler_testkit.kafka_server import KafkaPorts, KafkaServer, kafka_version
from queuescaler_testkit.redis_server import RedisServer

QUEUES = 1_000
ASKED = (10, 100, 1_000)
REPEATS = 5
PER_QUEUE_REPEATS = 3
"""One GET per queue at 1,000 queues takes about a second: fewer repetitions there."""
STATS_WAIT = 30.0
FLEETS = (100, 1_000, 10_000)
"""QueueScalers in the fast path's per-tick count (table 3)."""
POLL_SECONDS = 15
CYCLES = 4
"""Ticks counted: this many polling intervals of one-second ticks, after a first tick that
samples (and so decides) every QueueScaler once."""
EPOCH = 1_800_000_000.0
"""The simulated clock's start: a multiple of the polling interval, as next_due aligns."""
BUDGET = EngineSettings().fast_path_budget


@dataclass(frozen=True)
class Cost:
    requests: int
    seconds: float
    body_bytes: int


class Counter:
    """Requests and response body bytes seen by an aiohttp session, through its trace hooks."""

    def __init__(self) -> None:
        self.requests = 0
        self.body_bytes = 0
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_end.append(self._request_end)
        self.trace.on_response_chunk_received.append(self._chunk)

    async def _request_end(self, *_: Any) -> None:
        self.requests += 1

    async def _chunk(
        self, _: Any, __: Any, params: aiohttp.TraceResponseChunkReceivedParams
    ) -> None:
        self.body_bytes += len(params.chunk)

    async def measure(self, action: Callable[[], Awaitable[object]], repeats: int) -> Cost:
        """Median wall time of `repeats` runs; requests and bytes of one run."""
        runs: list[Cost] = []
        for _ in range(repeats):
            self.requests = self.body_bytes = 0
            started = time.perf_counter()
            await action()
            runs.append(Cost(self.requests, time.perf_counter() - started, self.body_bytes))
        return Cost(
            runs[-1].requests, statistics.median(r.seconds for r in runs), runs[-1].body_bytes
        )


def _environment() -> TestEnv:
    started = subprocess.run(
        ["bash", str(REPO / "hack" / "testenv.sh"), "up", "rabbitmq"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if started.returncode != 0:
        sys.exit(
            "the local RabbitMQ did not start (hack/testenv.sh up):\n" + started.stderr[-2000:]
        )
    return read_testenv()


def _declare_queues(amqp_url: str, vhost: str, names: list[str]) -> None:
    parameters = pika.URLParameters(amqp_url)
    parameters.virtual_host = vhost
    with pika.BlockingConnection(parameters) as connection:
        channel = connection.channel()
        for name in names:
            channel.queue_declare(name, durable=False)


async def _measure_all(
    env: TestEnv, vhost: str, refs: list[QueueRef]
) -> tuple[list[str], float]:
    """The rows of tables 1 and 2, and the wall time of one passive declare (seconds) at
    the fast path's budget."""
    counter = Counter()
    connection = broker_from_secret({"amqpUrl": env.amqp_url, "managementUrl": env.management_url})
    source = RabbitMQSource(connection, timeout=30.0, trace_configs=[counter.trace])
    # The per-queue GETs are what is measured: a client of their own, as a poller has.
    admin = env.admin()
    listing = admin.base + admin.queues_path(vhost)
    columns = "columns=" + ",".join(QUEUE_COLUMNS)
    headers = {"Authorization": admin.authorization}
    async with aiohttp.ClientSession(trace_configs=[counter.trace], headers=headers) as session:

        async def get(url: str) -> None:
            async with session.get(url) as response:
                await response.read()
                response.raise_for_status()

        async def wait_for_statistics() -> None:
            deadline = time.monotonic() + STATS_WAIT
            while time.monotonic() < deadline:
                result = await source.sample(refs)
                if all(not isinstance(outcome, Exception) for outcome in result.values()):
                    return
                await asyncio.sleep(0.5)
            sys.exit(f"statistics of {len(refs)} queues not emitted within {STATS_WAIT:.0f} s")

        await wait_for_statistics()
        rows = [
            "| queues asked | batched: how | requests | wall ms | bytes "
            "| one GET per queue: requests | wall ms | bytes | per-queue ÷ batched time |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for asked in ASKED:
            wanted = refs[:asked]

            async def batched_tick(w: list[QueueRef] = wanted) -> None:
                await source.sample(w)

            async def one_by_one(w: list[QueueRef] = wanted) -> None:
                for ref in w:
                    await get(f"{listing}/{urllib.parse.quote(ref.name, safe='')}?{columns}")

            how = "name filter" if name_filter_query(r.name for r in wanted) else "whole vhost"
            repeats = PER_QUEUE_REPEATS if asked >= 1_000 else REPEATS
            batched = await counter.measure(batched_tick, REPEATS)
            single = await counter.measure(one_by_one, repeats)
            rows.append(
                f"| {asked:,} | {how} | {batched.requests} | {batched.seconds * 1e3:.1f} "
                f"| {batched.body_bytes:,} | {single.requests:,} | {single.seconds * 1e3:.1f} "
                f"| {single.body_bytes:,} | {single.seconds / batched.seconds:.1f}x |"
            )

        variants = {
            "listing, every field": lambda: get(listing),
            "listing, `columns=` (what sample() sends)": lambda: get(f"{listing}?{columns}"),
            "listing, `disable_stats=true&enable_queue_totals=true` (depths only)": lambda: get(
                f"{listing}?disable_stats=true&enable_queue_totals=true"
                "&columns=name,vhost,messages_ready,messages_unacknowledged"
            ),
            "AMQP passive declare per queue (peek())": lambda: source.peek(refs),
            f"AMQP passive declares, the fast path's budget ({BUDGET} queues)":
                lambda: source.peek(refs[:BUDGET]),
            "AMQP passive declares, 100 queues": lambda: source.peek(refs[:100]),
        }
        rows += [
            "",
            f"| all {len(refs):,} queues, one vhost | requests | wall ms | bytes |",
            "|---|---:|---:|---:|",
        ]
        for name, action in variants.items():
            cost = await counter.measure(action, REPEATS)
            declares = len(refs) if "per queue" in name else BUDGET if "budget" in name else 100
            if "budget" in name:
                per_declare = cost.seconds / declares
            requests = f"{declares:,} declares" if name.startswith("AMQP") else cost.requests
            rows.append(f"| {name} | {requests} | {cost.seconds * 1e3:.1f} | {cost.body_bytes:,} |")
    await source.close()
    return rows, per_declare


# --- table 3: the fast path's per-tick cost, the real Engine against recorded brokers ---


class RecordingSource:
    """A broker that records what the engine asks of it: each queue passed to peek() is one
    passive declare, each sample() one management request (RabbitMQSource sends one per
    call), each clients() listing three. Every queue is empty."""

    def __init__(self) -> None:
        self.declares = 0
        self.requests = 0

    async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
        self.requests += 1
        return {
            q: QueueSample(0, 0, 1, EPOCH, publish_rate=0.0, ack_rate=0.0, deliver_rate=0.0,
                           published_total=0, acked_total=0)
            for q in queues
        }

    async def peek(self, queues: Collection[QueueRef]) -> SampleResult:
        self.declares += len(queues)
        return {q: QueueSample(0, 0, 1, EPOCH, complete=False) for q in queues}

    async def clients(self, scopes: Collection[str]) -> Sequence[BrokerClient]:
        self.requests += 3
        return []

    async def close(self) -> None:
        pass


class QuietKube:
    """The apiserver as the engine sees it, answering at once: replica counts come from the
    ReplicaCache (Deployments), writes are accepted and dropped. Every Secret reads as
    `secret` (by default a RabbitMQ one, parsed only: the recording source stands in for
    the broker it names)."""

    def __init__(self, secret: Mapping[str, str] | None = None) -> None:
        self._secret = dict(secret or {
            "amqpUrl": "amqp://u:p@127.0.0.1:1/", "managementUrl": "http://u:p@127.0.0.1:2"
        })

    async def read_replicas(self, namespace: str, target: ScaleTargetRef) -> int:
        raise AssertionError("Deployments' replica counts come from the cache")

    async def scale(self, namespace: str, target: ScaleTargetRef, replicas: int) -> None:
        raise AssertionError(f"{namespace}/{target.name}: an idle pool was scaled")

    async def read_selector(self, namespace: str, target: ScaleTargetRef) -> str:
        return f"app={target.name}"

    async def list_pods(self, namespace: str, selector: str) -> list[Pod]:
        return []

    async def annotate_pod(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        pass

    async def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        return dict(self._secret)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        pass

    async def emit_event(
        self, about: ObjectRef, event_type: str, reason: str, message: str
    ) -> None:
        pass

    async def list_hpas(self, namespace: str) -> list[HpaTarget]:
        return []


@dataclass(frozen=True)
class PeekCost:
    fleet: str
    scalers: int
    peeked: int
    """Pools the fast path may peek between their samples (planner.peeked)."""
    declares_mean: float
    declares_max: int
    requests_mean: float
    requests_per_cycle: float
    rotation_ticks: int
    """Ticks until every peeked pool has been peeked once (ceil(peeked / budget))."""
    tick_ms: float
    """The engine's own wall time per tick in-process (median), apiserver and broker free."""


def _fleet(
    scalers: int, sizes: Sequence[int], broker: str = "rabbitmq",
    block: Callable[[int, str], dict[str, Any]] | None = None,
) -> tuple[Fleet, ReplicaCache]:
    """`scalers` QueueScalers in one namespace on one broker, at rest at `sizes` in turn;
    `block(number, name)` is each one's broker block (default: a queue named after it)."""
    fleet, cache = Fleet(), ReplicaCache()
    for number in range(scalers):
        size = sizes[number % len(sizes)]
        name = f"w{number:05d}"
        where = block(number, name) if block else {"queue": name}
        fleet.upsert({
            "metadata": {"namespace": "bench", "name": name, "uid": name, "generation": 1},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": size, "maxReplicas": 20,
                "source": {broker: {**where, "connectionSecretRef": {"name": broker}}},
            },
        }, EPOCH)
        cache.set("bench", name, size)
    return fleet, cache


async def _peek_cost(fleet_name: str, scalers: int, sizes: Sequence[int]) -> PeekCost:
    fleet, cache = _fleet(scalers, sizes)
    source = RecordingSource()
    now = EPOCH
    engine = Engine(
        QuietKube(), fleet, cache, Metrics(CollectorRegistry(), process=False),
        lambda broker: source, EngineSettings(), clock=lambda: now,
    )
    await engine.tick(now)  # the first tick samples and decides every QueueScaler once
    peeked = sum(
        1 for s in fleet if planner.peeked(s.spec, s.memory, now)
    )
    declares: list[int] = []
    requests: list[int] = []
    walls: list[float] = []
    for _ in range(CYCLES * POLL_SECONDS):
        now += 1.0
        source.declares = source.requests = 0
        started = time.perf_counter()
        await engine.tick(now)
        walls.append(time.perf_counter() - started)
        declares.append(source.declares)
        requests.append(source.requests)
    await engine.brokers.close()
    return PeekCost(
        fleet_name, scalers, peeked, statistics.fmean(declares), max(declares),
        statistics.fmean(requests), sum(requests) / CYCLES,
        max(1, math.ceil(peeked / BUDGET)) if peeked else 0, statistics.median(walls) * 1e3,
    )


def _peek_rows(per_declare: float) -> list[str]:
    fleets = {
        "at rest at zero (minReplicas 0)": (0,),
        "at work (minReplicas 1 and 5, idle)": (1, 5),
    }
    rows = [
        f"| QueueScalers | pools | peeked between samples | passive declares / tick: mean "
        f"| max | broker time of a tick's declares (ms) | management requests / tick "
        f"| per {POLL_SECONDS} s cycle | ticks to peek every pool once "
        f"| engine tick in-process, median (ms) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scalers in FLEETS:
        for fleet_name, sizes in fleets.items():
            cost = asyncio.run(_peek_cost(fleet_name, scalers, sizes))
            rows.append(
                f"| {cost.scalers:,} | {cost.fleet} | {cost.peeked:,} "
                f"| {cost.declares_mean:,.1f} | {cost.declares_max:,} "
                f"| {cost.declares_mean * per_declare * 1e3:.1f} "
                f"| {cost.requests_mean:.3f} | {cost.requests_per_cycle:.1f} "
                f"| {cost.rotation_ticks} | {cost.tick_ms:.1f} |"
            )
    return rows


# --- table 4: Redis, the real Engine and RedisSource against a private redis-server ---

REDIS_FLEETS = (10, 100, 1_000)
"""QueueScalers on one Redis database in table 4."""
REDIS_PORT = 24389
"""The bench's own redis-server (below the ephemeral range, apart from the tests' 24379-24381)."""
REDIS_DB = 3


class CountingConnection(Connection):
    """redis-py's connection, counting what it writes: each send is one round trip (a
    command, or a whole pipeline), and each new socket one connection."""

    sends = 0
    handshake_sends = 0
    """Sends made while connecting (AUTH, CLIENT SETINFO, SELECT): once per connection."""
    _connecting = False

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        CountingConnection.sends += 1
        CountingConnection.handshake_sends += self._connecting
        await super().send_packed_command(command, check_health)

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        self._connecting = True
        try:
            await super().connect_check_health(check_health, retry_socket_connect)
        finally:
            self._connecting = False


@dataclass(frozen=True)
class RedisCost:
    fleet: str
    scalers: int
    first_trips: int
    """Round trips of the first tick, which samples every QueueScaler (connects included)."""
    first_handshake: int
    """Of which the connection's handshake."""
    first_commands: int
    first_ms: float
    trips_mean: float
    trips_max: int
    commands_mean: float
    commands_max: int
    connections: int
    """Connections the server accepted over the counted ticks (after the first)."""
    tick_ms: float
    tick_max_ms: float


class ServerCounters:
    """The server's own count of commands and connections (`INFO stats`), minus our asking."""

    def __init__(self, server: RedisServer) -> None:
        self._admin = redis.Redis(port=server.port, password=server.password, db=REDIS_DB)

    def read(self) -> tuple[int, int]:
        stats = self._admin.info("stats")
        return int(stats["total_commands_processed"]), int(stats["total_connections_received"])

    def close(self) -> None:
        self._admin.close()


async def _redis_cost(
    server: RedisServer, counters: ServerCounters, fleet_name: str, scalers: int,
    sizes: Sequence[int],
) -> RedisCost:
    fleet, cache = _fleet(scalers, sizes, "redis")
    secret = {"redisUrl": f"{server.url}/{REDIS_DB}", "password": server.password}
    now = EPOCH

    def make_source(broker: tuple[str, Hashable]) -> RedisSource:
        address = broker[1]
        assert isinstance(address, RedisBroker)
        return RedisSource(address, connection_class=CountingConnection)

    engine = Engine(
        QuietKube(secret), fleet, cache, Metrics(CollectorRegistry(), process=False),
        make_source, EngineSettings(), clock=lambda: now,
    )

    async def tick() -> tuple[int, int, int, float]:
        """Round trips, server commands, connections and wall seconds of one tick."""
        CountingConnection.sends = CountingConnection.handshake_sends = 0
        commands, connections = counters.read()
        started = time.perf_counter()
        await engine.tick(now)
        wall = time.perf_counter() - started
        commands_after, connections_after = counters.read()
        # The INFO that read the first count is one command too.
        return (CountingConnection.sends, commands_after - commands - 1,
                connections_after - connections, wall)

    first_trips, first_commands, _, first_wall = await tick()
    first_handshake = CountingConnection.handshake_sends
    trips: list[int] = []
    commands: list[int] = []
    walls: list[float] = []
    connections = 0
    for _ in range(CYCLES * POLL_SECONDS):
        now += 1.0
        sent, processed, opened, wall = await tick()
        trips.append(sent)
        commands.append(processed)
        walls.append(wall)
        connections += opened
    await engine.brokers.close()
    return RedisCost(
        fleet_name, scalers, first_trips, first_handshake, first_commands, first_wall * 1e3,
        statistics.fmean(trips), max(trips), statistics.fmean(commands), max(commands),
        connections, statistics.median(walls) * 1e3, max(walls) * 1e3,
    )


def _redis_rows() -> tuple[list[str], str]:
    """Table 4's rows and the server's version."""
    fleets = {
        "at rest at zero (minReplicas 0)": (0,),
        "at work (minReplicas 1 and 5, idle)": (1, 5),
    }
    rows = [
        "| QueueScalers | pools | first tick (samples all): round trips (of them handshake) "
        "| commands "
        "| wall ms | then per tick: round trips, mean | max | commands, mean | max "
        f"| connections opened in {CYCLES * POLL_SECONDS} ticks "
        "| engine tick wall, median (ms) | max (ms) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with RedisServer(port=REDIS_PORT) as server:
        counters = ServerCounters(server)
        try:
            version = str(counters._admin.info("server").get("redis_version", "?"))
            for scalers in REDIS_FLEETS:
                for fleet_name, sizes in fleets.items():
                    cost = asyncio.run(_redis_cost(server, counters, fleet_name, scalers, sizes))
                    rows.append(
                        f"| {cost.scalers:,} | {cost.fleet} "
                        f"| {cost.first_trips} ({cost.first_handshake}) "
                        f"| {cost.first_commands:,} | {cost.first_ms:.1f} "
                        f"| {cost.trips_mean:.2f} | {cost.trips_max} "
                        f"| {cost.commands_mean:,.1f} | {cost.commands_max:,} "
                        f"| {cost.connections} | {cost.tick_ms:.1f} | {cost.tick_max_ms:.1f} |"
                    )
        finally:
            counters.close()
    return rows, version


# --- table 5: Kafka, the real Engine and KafkaSource against a private Kafka broker ---

KAFKA_FLEETS = (10, 100, 1_000)
"""QueueScalers (each its own consumer group) on one cluster in table 5."""
KAFKA_PORTS = KafkaPorts.starting_at(24392)
"""The bench's own broker (below the ephemeral range, apart from the tests' 24092-24099)."""
KAFKA_TOPICS = 10
KAFKA_PARTITIONS = 4
KAFKA_MESSAGES = 5
"""Per partition, all committed by every group: idle pools with a history."""
KAFKA_API_NAMES = {3: "Metadata", 10: "FindCoordinator", 9: "OffsetFetch",
                   15: "DescribeGroups", 2: "ListOffsets", 18: "ApiVersions"}


class KafkaWire:
    """What aiokafka's connections write (one entry per request) and how many they open."""

    sent: ClassVar[collections.Counter[str]] = collections.Counter()
    opened: ClassVar[int] = 0

    @classmethod
    def install(cls) -> None:
        send, connect = AIOKafkaConnection.send, AIOKafkaConnection.connect

        def counting_send(self: AIOKafkaConnection, request: Any,
                          expect_response: bool = True) -> Any:
            key = request.prepare(self._versions).API_KEY
            cls.sent[KAFKA_API_NAMES.get(key, str(key))] += 1
            return send(self, request, expect_response)

        async def counting_connect(self: AIOKafkaConnection) -> Any:
            cls.opened += 1
            return await connect(self)

        AIOKafkaConnection.send = counting_send
        AIOKafkaConnection.connect = counting_connect


@dataclass(frozen=True)
class KafkaCost:
    scalers: int
    first: dict[str, int]
    """Requests of the first tick, which samples every QueueScaler (connecting included)."""
    first_ms: float
    rounds: int
    """Ticks after the first that sent any request (sampling rounds)."""
    per_round: dict[str, float]
    """Requests per sampling round, by API, mean."""
    per_tick: float
    connections: int
    """Connections opened over the ticks after the first."""
    tick_ms: float
    """The engine's wall time on a sampling tick, median."""
    tick_max_ms: float


async def _kafka_commit(server: KafkaServer, groups: Mapping[str, str]) -> None:
    """Each group commits the end of its topic on every partition, as a standalone consumer
    would (no member), on one connection."""
    host, port = server.bootstrap.split(":")
    conn = await create_conn(host, int(port), request_timeout_ms=30_000)
    try:
        for chunk in range(0, len(groups), 200):
            await asyncio.gather(*(
                conn.send(OffsetCommitRequest(group, -1, "", -1, [
                    (topic, [(p, KAFKA_MESSAGES, "") for p in range(KAFKA_PARTITIONS)])]))
                for group, topic in list(groups.items())[chunk:chunk + 200]
            ))
    finally:
        conn.close()


async def _kafka_cost(server: KafkaServer, scalers: int, topics: Sequence[str]) -> KafkaCost:
    def block(number: int, name: str) -> dict[str, Any]:
        return {"topic": topics[number % len(topics)], "consumerGroup": f"bench-{name}"}

    fleet, cache = _fleet(scalers, (1,), "kafka", block)
    await _kafka_commit(server, {f"bench-w{n:05d}": topics[n % len(topics)]
                                 for n in range(scalers)})
    now = EPOCH

    def make_source(broker: tuple[str, Hashable]) -> KafkaSource:
        address = broker[1]
        assert isinstance(address, KafkaBroker)
        return KafkaSource(address, timeout=30.0)

    engine = Engine(
        QuietKube({"bootstrapServers": server.bootstrap}), fleet, cache,
        Metrics(CollectorRegistry(), process=False), make_source, EngineSettings(),
        clock=lambda: now,
    )
    KafkaWire.sent.clear()
    KafkaWire.opened = 0
    started = time.perf_counter()
    await engine.tick(now)
    first_ms = (time.perf_counter() - started) * 1e3
    first = dict(KafkaWire.sent)
    KafkaWire.opened = 0
    totals: collections.Counter[str] = collections.Counter()
    rounds, walls, requests = 0, [], 0
    for _ in range(CYCLES * POLL_SECONDS):
        now += 1.0
        KafkaWire.sent.clear()
        started = time.perf_counter()
        await engine.tick(now)
        wall = time.perf_counter() - started
        sent = sum(KafkaWire.sent.values())
        requests += sent
        if sent:
            rounds += 1
            walls.append(wall)
            totals.update(KafkaWire.sent)
    await engine.brokers.close()
    return KafkaCost(
        scalers, first, first_ms, rounds,
        {api: count / max(1, rounds) for api, count in sorted(totals.items())},
        requests / (CYCLES * POLL_SECONDS), KafkaWire.opened,
        statistics.median(walls) * 1e3 if walls else 0.0,
        max(walls) * 1e3 if walls else 0.0,
    )


def _kafka_rows() -> tuple[list[str], str]:
    """Table 5's rows and the broker's version."""
    def named(requests: Mapping[str, float]) -> str:
        return ", ".join(f"{api} {count:g}" for api, count in requests.items())

    rows = [
        "| QueueScalers (groups) | first tick: requests | wall ms "
        f"| sampling rounds in {CYCLES * POLL_SECONDS} ticks | requests per round "
        "| requests per tick, mean | connections opened after the first tick "
        "| engine tick wall on a round, median (ms) | max (ms) |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    KafkaWire.install()
    with KafkaServer(ports=KAFKA_PORTS) as server:
        topics = [f"bench-t{number}" for number in range(KAFKA_TOPICS)]
        for topic in topics:
            server.create_topic(topic, KAFKA_PARTITIONS)
            for partition in range(KAFKA_PARTITIONS):
                server.produce(topic, KAFKA_MESSAGES, partition=partition)
        server.commit("bench-warm", topics[0], {0: 0})  # the offsets topic, made on demand
        for scalers in KAFKA_FLEETS:
            cost = asyncio.run(_kafka_cost(server, scalers, topics))
            rows.append(
                f"| {cost.scalers:,} | {named(cost.first)} ({sum(cost.first.values())}) "
                f"| {cost.first_ms:.0f} | {cost.rounds} "
                f"| {named(cost.per_round)} ({sum(cost.per_round.values()):g}) "
                f"| {cost.per_tick:.2f} | {cost.connections} "
                f"| {cost.tick_ms:.1f} | {cost.tick_max_ms:.1f} |"
            )
    return rows, kafka_version()


# --- table 6: ActiveMQ, the real Engine and ActiveMQSource against private Classic and Artemis ---

ACTIVEMQ_FLEETS = (10, 100, 1_000)
"""QueueScalers (each its own queue) on one broker in table 6."""


@dataclass(frozen=True)
class JolokiaCost:
    scalers: int
    first_posts: int
    first_ms: float
    rounds: int
    """Ticks after the first that sent any POST (sampling rounds)."""
    posts_per_round: float
    reads_per_post: float
    """Jolokia requests inside one bulk POST (the probe and one read per queue), mean."""
    per_tick: float
    connections: int
    """Connections opened over the ticks after the first."""
    tick_ms: float
    tick_max_ms: float


async def _jolokia_cost(server: ActiveMQServer, scalers: int) -> JolokiaCost:
    fleet, cache = _fleet(scalers, (1,), "activemq", lambda n, name: {"queue": f"bench-{name}"})
    posts: list[int] = []
    opened = 0

    async def on_start(_: Any, __: Any, params: aiohttp.TraceRequestStartParams) -> None:
        posts.append(0)

    async def on_chunk(_: Any, __: Any, params: aiohttp.TraceRequestChunkSentParams) -> None:
        if params.chunk.startswith(b"["):
            posts[-1] = params.chunk.count(b'"type"')

    async def on_connect(_: Any, __: Any, ___: Any) -> None:
        nonlocal opened
        opened += 1

    tracing = aiohttp.TraceConfig()
    tracing.on_request_start.append(on_start)
    tracing.on_request_chunk_sent.append(on_chunk)
    tracing.on_connection_create_end.append(on_connect)

    def make_source(broker: tuple[str, Hashable]) -> ActiveMQSource:
        address = broker[1]
        assert isinstance(address, ActiveMQBroker)
        return ActiveMQSource(address, timeout=30.0, trace_configs=[tracing])

    secret = {"jolokiaUrl": server.jolokia_url, "username": server.user,
              "password": server.password}
    now = EPOCH
    engine = Engine(QuietKube(secret), fleet, cache, Metrics(CollectorRegistry(), process=False),
                    make_source, EngineSettings(), clock=lambda: now)
    started = time.perf_counter()
    await engine.tick(now)
    first_ms = (time.perf_counter() - started) * 1e3
    first_posts, posts[:], opened = len(posts), [], 0
    rounds, walls, sizes, total = 0, [], [], 0
    for _ in range(CYCLES * POLL_SECONDS):
        now += 1.0
        posts.clear()
        started = time.perf_counter()
        await engine.tick(now)
        wall = time.perf_counter() - started
        total += len(posts)
        if posts:
            rounds += 1
            walls.append(wall)
            sizes.extend(posts)
    await engine.brokers.close()
    return JolokiaCost(
        scalers, first_posts, first_ms, rounds, total / max(1, rounds),
        statistics.mean(sizes) if sizes else 0.0, total / (CYCLES * POLL_SECONDS), opened,
        statistics.median(walls) * 1e3 if walls else 0.0, max(walls) * 1e3 if walls else 0.0,
    )


def _activemq_rows() -> list[str]:
    """Table 6's rows: both flavors, on ports of their own (the tests' brokers may be up)."""
    rows = [
        "| broker | QueueScalers (queues) | first tick: POSTs | wall ms "
        f"| sampling rounds in {CYCLES * POLL_SECONDS} ticks | POSTs per round "
        "| reads per POST | POSTs per tick, mean | connections opened after the first tick "
        "| engine tick wall on a round, median (ms) | max (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    servers: tuple[ActiveMQServer, ...] = (
        ClassicServer(openwire_port=24636, classic_stomp_port=24633, http_port=24181),
        ArtemisServer(acceptor_port=25636, artemis_stomp_port=25633, http_port=25181),
    )
    for server in servers:
        with server:
            server.send([f"bench-w{n:05d}" for n in range(max(ACTIVEMQ_FLEETS))], 1)
            for scalers in ACTIVEMQ_FLEETS:
                cost = asyncio.run(_jolokia_cost(server, scalers))
                rows.append(
                    f"| {server.kind} | {cost.scalers:,} | {cost.first_posts} "
                    f"| {cost.first_ms:.0f} | {cost.rounds} | {cost.posts_per_round:g} "
                    f"| {cost.reads_per_post:,.0f} | {cost.per_tick:.2f} | {cost.connections} "
                    f"| {cost.tick_ms:.1f} | {cost.tick_max_ms:.1f} |"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", choices=("rabbitmq", "redis", "kafka", "activemq"),
                        help="print only that broker's tables (default: all)")
    only = parser.parse_args().only
    started = time.perf_counter()
    if only in (None, "rabbitmq"):
        _rabbitmq_tables()
    if only in (None, "kafka"):
        kafka_started = time.perf_counter()
        rows, version = _kafka_rows()
        print(
            f"\n## Kafka {version}: requests per tick, one cluster, one consumer group per "
            f"QueueScaler ({POLL_SECONDS} s polling, one-second ticks, {CYCLES} cycles)\n"
        )
        print(
            "The real Engine, Brokers and KafkaSource against a private one-node Kafka (KRaft) "
            f"on loopback, {KAFKA_TOPICS} topics of {KAFKA_PARTITIONS} partitions, every group "
            "committed at the end of its topic (idle pools at minReplicas 1; the apiserver an "
            "in-process stand-in). Requests and connections as aiokafka's connections write and "
            "open them. Kafka has no live peek, so QueueScalers are only sampled when due. "
            f"Computed in {time.perf_counter() - kafka_started:.0f} s.\n"
        )
        print("\n".join(rows))
    if only in (None, "redis"):
        redis_started = time.perf_counter()
        rows, version = _redis_rows()
        print(
            f"\n## Redis {version}: round trips per tick, one database, Celery queues "
            f"({POLL_SECONDS} s polling, one-second ticks, {CYCLES} cycles)\n"
        )
        print(
            "The real Engine, Brokers and RedisSource against a private redis-server on "
            "loopback (the apiserver an in-process stand-in, every queue empty); round trips "
            "are redis-py's socket sends (a pipeline is one), connection handshakes included; "
            "commands and connections are the server's own counts (INFO stats). Every "
            "QueueScaler is due on the first tick; the fast path then peeks the pools that "
            f"may grow. Computed in {time.perf_counter() - redis_started:.0f} s.\n"
        )
        print("\n".join(rows))
    if only in (None, "activemq"):
        activemq_started = time.perf_counter()
        rows = _activemq_rows()
        print(
            "\n## ActiveMQ Classic and Artemis: Jolokia POSTs per tick, one broker, one queue "
            f"per QueueScaler ({POLL_SECONDS} s polling, one-second ticks, {CYCLES} cycles)\n"
        )
        print(
            "The real Engine, Brokers and ActiveMQSource against a private Classic (Debian's "
            "5.17, Jolokia 1.7 JVM agent) and a private Artemis (2.40, its console's Jolokia "
            "2.1) on loopback, one message in each queue (idle pools at minReplicas 1; the "
            "apiserver an in-process stand-in). POSTs and connections as aiohttp's trace "
            "sees them; reads per POST are the bulk request's entries (one probe of the "
            "broker's MBean and one read per queue). Jolokia has no live peek, so QueueScalers "
            "are only sampled when due. "
            f"Computed in {time.perf_counter() - activemq_started:.0f} s.\n"
        )
        print("\n".join(rows))
    print(f"\n(bench ran in {time.perf_counter() - started:.1f} s)")


def _rabbitmq_tables() -> None:
    env = _environment()
    admin = BrokerAdmin(env.management_url, timeout=60)
    vhost = f"qs-bench-{uuid.uuid4().hex[:8]}"
    admin.add_vhost(vhost)
    try:
        admin.grant(vhost, admin.user)
        names = [f"bench-{number:04d}" for number in range(QUEUES)]
        _declare_queues(env.amqp_url, vhost, names)
        refs = [QueueRef(vhost, name) for name in names]
        rows, per_declare = asyncio.run(_measure_all(env, vhost, refs))
    finally:
        admin.delete_vhost(vhost)
    peek_started = time.perf_counter()
    peek_rows = _peek_rows(per_declare)
    peek_seconds = time.perf_counter() - peek_started
    overview = admin.overview(["rabbitmq_version", "management_version"])
    print(f"## Sampling RabbitMQ {overview.get('rabbitmq_version', '?')}: one tick's cost\n")
    print(
        f"{QUEUES:,} queues in a vhost of their own; loopback; median of {REPEATS} runs "
        f"({PER_QUEUE_REPEATS} for 1,000 single GETs). Bytes: response bodies as received.\n"
    )
    print("\n".join(rows))
    print(
        f"\n## The AMQP fast path's peeks per tick (budget {BUDGET}, one broker, "
        f"{POLL_SECONDS} s polling, one-second ticks, {CYCLES} cycles)\n"
    )
    print(
        "The real Engine on a simulated clock against a recording source (no broker, no "
        "apiserver); the declares' broker time is the measured wall time of one declare at "
        f"the budget ({per_declare * 1e3:.3f} ms) times the declares. Computed in "
        f"{peek_seconds:.0f} s.\n"
    )
    print("\n".join(peek_rows))


if __name__ == "__main__":
    main()
