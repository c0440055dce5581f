"""A private Apache Kafka broker for the kafka source's tests: KRaft, one node, loopback only.

    server = KafkaServer().start()      # formats its storage, waits for a metadata answer
    server.bootstrap                    # 127.0.0.1:24092, PLAINTEXT
    server.sasl_bootstrap               # 127.0.0.1:24093, SASL_PLAINTEXT: PLAIN, SCRAM-SHA-256/512
    server.ssl_bootstrap                # 127.0.0.1:24094, SSL (no client certificates)
    server.credentials("SCRAM-SHA-512") # (user, password), passwords random per server
    server.ca_cert                      # PEM of the CA that signed the SSL listener's certificate
    server.client_options(...)          # keyword arguments for aiokafka's clients, any listener
    server.create_topic("t", 3); server.produce("t", 10); server.commit("g", "t", {0: 4})
    server.restart()                    # stop, then start again on the same data
    with server.stopped(): ...          # down for the block, then up again on the same data
    server.stop()                       # by its PID, never by name

    with session_server() as server: ...   # the one the session's tests share (see there)

One JVM runs the broker and the controller together (`process.roles=broker,controller`),
`java -cp 'libs/*' kafka.Kafka server.properties`, on the jars `hack/deps.sh kafka` copied
from Maven Central into the cache (KAFKA_VERSION in hack/versions.env); the storage is formatted
first by `kafka.tools.StorageTool` from the same jars, with a cluster id and the SCRAM users.
Topics are never created by a client's request (auto creation is off: a missing topic stays
missing), internal topics have one replica, a group's first join is not delayed, and retention
is checked every half second, so a topic created with a short `retention.ms` loses its records
within seconds (`create_topic(..., config=EXPIRING)`).

Ports sit below the kernel's ephemeral range and apart from hack/testenv.sh's and the redis
server's (24379-24381). The configuration, the data, the certificates and the logs live in a
directory of the cache named after the plain port. The helpers are synchronous and work from
async tests too: each runs its aiokafka client on an event loop of its own, in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import UnknownTopicOrPartitionError, for_code
from aiokafka.structs import OffsetAndMetadata

from queuescaler_testkit.env import CACHE, REPO
from queuescaler_testkit.private_server import (
    PrivateServer,
    SessionShare,
    listening,
    started,
    stop_leftover,
)
from queuescaler_testkit.redis_server import make_ca, make_server_cert

T = TypeVar("T")


@dataclass(frozen=True)
class KafkaPorts:
    """A server's four listeners, on consecutive ports."""

    plaintext: int
    sasl: int
    ssl: int
    controller: int

    @classmethod
    def starting_at(cls, port: int) -> KafkaPorts:
        return cls(port, port + 1, port + 2, port + 3)

    def __iter__(self) -> Iterator[int]:
        return iter((self.plaintext, self.sasl, self.ssl, self.controller))


PORTS = KafkaPorts.starting_at(24092)
"""The session server's listeners: 24092 plain (Kafka's 9092 moved to the project's range),
24093 SASL, 24094 SSL, 24095 the KRaft controller."""
SPARE_PORTS = KafkaPorts.starting_at(24096)
"""A second, short-lived server (24096-24099) for tests that stop or restart one."""

PLAIN_USER = "qs_plain"
SCRAM256_USER = "qs_scram256"
SCRAM512_USER = "qs_scram512"
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
"""What the SASL listener accepts: one user for each."""

EXPIRING: Mapping[str, str] = {"retention.ms": "1000", "segment.ms": "200"}
"""A topic's configuration whose records are deleted about a second after they were written
(retention runs every RETENTION_CHECK_MS): the log start offset moves past them."""
RETENTION_CHECK_MS = 500
START_TIMEOUT = 90.0
"""A fresh start (certificates, format, broker) took 4 to 7 s on two cores, 7.5 to 8.6 s with both
busy; a restart 3 to 5 s. The bound leaves room for a slower machine."""
STOP_TIMEOUT = 20.0
"""SIGTERM starts a controlled shutdown; SIGKILL after this many seconds."""
HEAP = ("-Xms256m", "-Xmx512m")
JVM_OPTIONS = (
    *HEAP,
    "-XX:+UseSerialGC",  # one small heap, two cores: no concurrent collector threads
    "-XX:TieredStopAtLevel=1",  # the quick compiler only: it starts faster, tests move little
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


class KafkaServerError(RuntimeError):
    """The server could not be started; the message carries its log's tail."""


def kafka_version() -> str:
    """KAFKA_VERSION from hack/versions.env: the jars `hack/deps.sh kafka` copied."""
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if line.startswith("KAFKA_VERSION="):
            return line.split("=", 1)[1].split("#", 1)[0].strip()
    raise KafkaServerError("hack/versions.env has no KAFKA_VERSION line")


def libs_directory() -> Path:
    """The broker's jars, which `hack/deps.sh kafka` copies from Maven Central; it runs once
    per process here, so a test run started without `make` still has them: it is idempotent
    (a stamp of the POM's hash; about half a minute cold, nothing when cached)."""
    global _jars_checked
    version = kafka_version()
    if not _jars_checked:
        done = subprocess.run(
            ["bash", str(REPO / "hack" / "deps.sh"), "kafka"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900,
        )
        if done.returncode != 0:
            raise KafkaServerError(f"`hack/deps.sh kafka` failed: {done.stderr[-2000:]}")
        _jars_checked = True
    return CACHE / "kafka" / version / "libs"


_jars_checked = False


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").exists():
        return str(Path(home, "bin", "java"))
    found = shutil.which("java")
    if found is None:
        raise KafkaServerError("java is missing: run `bash hack/deps.sh kafka`")
    return found


def _cluster_id() -> str:
    """A Kafka Uuid as its tools print it: 16 random bytes, URL-safe base64 without padding
    (one that starts with '-' is avoided as Kafka's own generator does: it reads as an option)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _password() -> str:
    """Letters, digits, '_' and '-' only: it goes into JAAS and --add-scram text unquoted."""
    return "qs-" + secrets.token_urlsafe(18)


def _run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an aiokafka coroutine to its end on a loop of its own, in a thread: callable from
    plain code and from inside a running event loop alike (which it blocks meanwhile)."""
    with ThreadPoolExecutor(1, thread_name_prefix="kafka-helper") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


@dataclass
class KafkaServer(PrivateServer):
    """One Kafka process of ours."""

    ports: KafkaPorts = PORTS
    plain_password: str = field(default_factory=_password)
    """PLAIN_USER's password (the broker's JAAS configuration holds it)."""
    scram256_password: str = field(default_factory=_password)
    """SCRAM256_USER's password (stored as SCRAM credentials when the storage is formatted)."""
    scram512_password: str = field(default_factory=_password)
    """SCRAM512_USER's password."""
    cluster_id: str = field(default_factory=_cluster_id)
    stop_timeout: ClassVar[float] = STOP_TIMEOUT

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.plaintext}"

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.sasl}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.ssl}"

    @property
    def log_path(self) -> Path:
        """The broker's own log (log4j2); the JVM's output goes to stdout.log beside it."""
        return self._dir / "server.log"

    @property
    def _dir(self) -> Path:
        if self.directory is None:
            self.directory = CACHE / "kafka" / str(self.ports.plaintext)
        return self.directory

    def credentials(self, mechanism: str) -> tuple[str, str]:
        """(user, password) for one of MECHANISMS."""
        users = {
            "PLAIN": (PLAIN_USER, self.plain_password),
            "SCRAM-SHA-256": (SCRAM256_USER, self.scram256_password),
            "SCRAM-SHA-512": (SCRAM512_USER, self.scram512_password),
        }
        return users[mechanism]

    def ssl_context(self, ca_cert: str | None = None) -> ssl.SSLContext:
        """A client context that trusts `ca_cert` (this server's CA by default) and checks the
        host name (the certificate names 127.0.0.1 and localhost)."""
        return ssl.create_default_context(cadata=self.ca_cert if ca_cert is None else ca_cert)

    def client_options(
        self, mechanism: str | None = None, *, tls: bool = False, password: str | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for aiokafka's clients: the plain listener by default, the SASL one
        with `mechanism` (and its user's password, or `password`), or the SSL one with `tls`."""
        if tls:
            return {"bootstrap_servers": self.ssl_bootstrap, "security_protocol": "SSL",
                    "ssl_context": self.ssl_context()}
        if mechanism is None:
            return {"bootstrap_servers": self.bootstrap}
        user, right = self.credentials(mechanism)
        return {
            "bootstrap_servers": self.sasl_bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": mechanism,
            "sasl_plain_username": user,
            "sasl_plain_password": right if password is None else password,
        }

    # -- the process --------------------------------------------------------------------------

    def _properties(self) -> str:
        p, d = self.ports, self._dir
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        plain = (f"org.apache.kafka.common.security.plain.PlainLoginModule required "
                 f'user_{PLAIN_USER}="{self.plain_password}";')
        lines = [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{p.controller}",
            f"listeners=PLAINTEXT://127.0.0.1:{p.plaintext},SASL_PLAINTEXT://127.0.0.1:{p.sasl},"
            f"SSL://127.0.0.1:{p.ssl},CONTROLLER://127.0.0.1:{p.controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{p.plaintext},"
            f"SASL_PLAINTEXT://127.0.0.1:{p.sasl},SSL://127.0.0.1:{p.ssl}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,"
            "SSL:SSL,CONTROLLER:PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={d / 'data'}",
            # SASL: PLAIN's users live in its JAAS text, SCRAM's in the metadata log.
            "sasl.enabled.mechanisms=" + ",".join(MECHANISMS),
            f"listener.name.sasl_plaintext.plain.sasl.jaas.config={plain}",
            f"listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config={scram}",
            f"listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={scram}",
            # SSL: a PEM key store (key and chain in one file); clients present no certificate.
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={d / 'server.pem'}",
            "ssl.client.auth=none",
            # What tests need to see: a missing topic stays missing; one node for everything.
            "auto.create.topics.enable=false",
            "num.partitions=1",
            "default.replication.factor=1",
            "min.insync.replicas=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=5",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # Retention within seconds (see EXPIRING): checked often, files removed soon after.
            f"log.retention.check.interval.ms={RETENTION_CHECK_MS}",
            "log.initial.task.delay.ms=0",
            "log.segment.delete.delay.ms=500",
            # Small for two cores and a 512 MB heap.
            "num.network.threads=2",
            "num.io.threads=2",
            "background.threads=2",
            "num.recovery.threads.per.data.dir=1",
            "log.cleaner.threads=1",
            "log.cleaner.dedupe.buffer.size=16777216",
        ]
        return "\n".join(lines) + "\n"

    def _log4j(self) -> str:
        return "\n".join([
            "status = warn",
            "shutdownHook = disable",  # the JVM's own exit flushes nothing we lose: immediateFlush
            "appender.file.type = File",
            "appender.file.name = file",
            f"appender.file.fileName = {self.log_path}",
            "appender.file.layout.type = PatternLayout",
            "appender.file.layout.pattern = [%d] %p %m (%c)%n",
            "rootLogger.level = INFO",
            "rootLogger.appenderRef.file.ref = file",
            # The request log and the state change log say much and help tests little.
            "logger.request.name = kafka.request.logger",
            "logger.request.level = WARN",
            "logger.state.name = state.change.logger",
            "logger.state.level = WARN",
        ]) + "\n"

    def _java_command(self, main: str, *args: str) -> list[str]:
        return [
            _java(), *JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={self._dir / 'log4j2.properties'}",
            "-cp", f"{libs_directory()}/*",  # java expands the wildcard itself
            main, *args,
        ]

    def _stop_leftover(self) -> None:
        """A server a killed test run left on our ports: ours by its pidfile and its command."""
        config = str(self._dir / "server.properties").encode()
        stop_leftover(self._dir / "kafka.pid", b"kafka.Kafka", config, timeout=STOP_TIMEOUT,
                      kill=True)

    def _format(self) -> None:
        scram = [
            f"SCRAM-SHA-256=[name={SCRAM256_USER},password={self.scram256_password}]",
            f"SCRAM-SHA-512=[name={SCRAM512_USER},password={self.scram512_password}]",
        ]
        args = ["format", "--cluster-id", self.cluster_id,
                "--config", str(self._dir / "server.properties"), "--ignore-formatted"]
        for user in scram:
            args += ["--add-scram", user]
        done = subprocess.run(
            self._java_command("kafka.tools.StorageTool", *args),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )
        if done.returncode != 0:
            # The passwords are the tool's arguments, never in its output; the output is shown.
            raise KafkaServerError(f"formatting the storage failed: {done.stdout}{done.stderr}")

    def start(self) -> KafkaServer:
        """A fresh server: emptied directory, new certificates, formatted storage; waits until
        the plain listener answers a metadata request naming this broker. Fails with its log."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        for port in self.ports:
            if listening(port):
                raise KafkaServerError(f"127.0.0.1:{port} is taken by a process not ours")
        for old in self._dir.iterdir():
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        ca = make_ca(self._dir, "ca")
        cert, key = make_server_cert(self._dir, ca)
        (self._dir / "server.pem").write_text(key.read_text() + cert.read_text())
        self.ca_cert = ca[0].read_text()
        self.wrong_ca_cert = make_ca(self._dir, "wrong-ca")[0].read_text()
        for name, text in (("server.properties", self._properties()),
                           ("log4j2.properties", self._log4j())):
            (self._dir / name).write_text(text)
            (self._dir / name).chmod(0o600)
        self._format()
        return self._launch()

    def restart(self) -> KafkaServer:
        """Stop (controlled shutdown) and start again on the same data, ports and users:
        topics, records and committed offsets survive, clients see the broker go and come."""
        self.stop()
        return self._launch()

    @contextlib.contextmanager
    def stopped(self) -> Iterator[KafkaServer]:
        """The server down for the block (a controlled shutdown), then started again on the same
        data, ports and users, whatever the block raised: a broker gone for as long as a test
        looks at what its clients say."""
        self.stop()
        try:
            yield self
        finally:
            self._launch()

    def _launch(self) -> KafkaServer:
        stdout = (self._dir / "stdout.log").open("ab")
        try:
            self._process = subprocess.Popen(
                self._java_command("kafka.Kafka", str(self._dir / "server.properties")),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run is not delivered to it twice
            )
        finally:
            stdout.close()
        self.pid = self._process.pid
        (self._dir / "kafka.pid").write_text(f"{self.pid}\n")
        if not started(self._process, self.ready, START_TIMEOUT, every=0.2):
            self.stop()
            raise KafkaServerError(f"kafka did not start: {self.log_tail()}")
        return self

    def ready(self) -> bool:
        """Whether the plain listener accepts a connection and answers a metadata request that
        names this broker (a broker is listed once its controller has unfenced it)."""
        if not listening(self.ports.plaintext):
            return False

        async def brokers() -> int:
            client = AIOKafkaClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            try:
                await client.bootstrap()
                metadata = await client.fetch_all_metadata()
                return len(metadata.brokers())
            finally:
                await client.close()

        try:
            return _run(brokers) > 0
        except Exception:  # not yet: refused, timed out, no node
            return False

    def log_tail(self, lines: int = 30) -> str:
        tails = []
        for path in (self._dir / "stdout.log", self.log_path):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                tails.append(f"{path.name}:\n" + "\n".join(text))
        return "\n".join(tails) or "(no log)"

    def __enter__(self) -> KafkaServer:
        return self.start()


    # -- what tests do with it (plain listener) -----------------------------------------------

    def create_topic(
        self, name: str, partitions: int = 1, *, config: Mapping[str, str] | None = None
    ) -> None:
        """Create a topic (one replica) and wait until every partition has a leader, so that
        a produce right after it succeeds. `config`: topic configs, e.g. EXPIRING."""

        async def create() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                topic = NewTopic(name, partitions, 1, topic_configs=dict(config or {}))
                response = await admin.create_topics([topic])
                for entry in response.topic_errors:
                    if entry[1] != 0:
                        raise for_code(entry[1])(f"creating topic {name!r}: {entry}")
            finally:
                await admin.close()
            await self._wait_leaders(name, partitions)

        _run(create)

    async def _partitions(self, topic: str) -> set[int]:
        """A topic's partitions, from a metadata request of its own."""
        client = AIOKafkaClient(bootstrap_servers=self.bootstrap)
        await client.bootstrap()
        try:
            cluster = await client.fetch_all_metadata()
            found = cluster.partitions_for_topic(topic)
            if found is None:
                raise UnknownTopicOrPartitionError(f"topic {topic!r} is not in the metadata")
            return {int(p) for p in found}
        finally:
            await client.close()

    async def _wait_leaders(self, topic: str, partitions: int) -> None:
        client = AIOKafkaClient(bootstrap_servers=self.bootstrap)
        await client.bootstrap()
        try:
            for _ in range(100):
                await client.force_metadata_update()
                leaders = [client.cluster.leader_for_partition(TopicPartition(topic, p))
                           for p in range(partitions)]
                if all(leader is not None and leader >= 0 for leader in leaders):
                    return
                await asyncio.sleep(0.1)
            raise KafkaServerError(f"topic {topic!r} has partitions without a leader")
        finally:
            await client.close()

    def delete_topic(self, name: str) -> None:
        """Delete a topic; raises aiokafka's UnknownTopicOrPartitionError when there is none."""

        async def delete() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                response = await admin.delete_topics([name])
                for entry in response.topic_error_codes:
                    if entry[1] != 0:
                        raise for_code(entry[1])(f"deleting topic {name!r}")
            finally:
                await admin.close()

        _run(delete)

    def topics(self) -> set[str]:
        """The topics the broker lists (internal ones included)."""

        async def listing() -> set[str]:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                return {str(name) for name in await admin.list_topics()}
            finally:
                await admin.close()

        return _run(listing)

    def produce(
        self, topic: str, n: int, partition: int | None = None, *, prefix: str = "m"
    ) -> list[tuple[int, int]]:
        """Write `n` records `prefix-0`... to `topic` (to `partition`, or spread by the default
        partitioner: no key, so sticky batches); returns each one's (partition, offset)."""

        async def send() -> list[tuple[int, int]]:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
            await producer.start()
            try:
                futures = [
                    await producer.send(topic, f"{prefix}-{i}".encode(), partition=partition)
                    for i in range(n)
                ]
                sent = [await future for future in futures]
                return [(int(meta.partition), int(meta.offset)) for meta in sent]
            finally:
                await producer.stop()

        return _run(send)

    def commit(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        """Commit `offsets` ({partition: next offset to read}) for `group` with no member alive
        (a standalone consumer's commit): a group with a known lag and nobody consuming."""

        async def commit() -> None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False
            )
            await consumer.start()
            try:
                consumer.assign([TopicPartition(topic, p) for p in offsets])
                await consumer.commit(
                    {TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in offsets.items()}
                )
            finally:
                await consumer.stop()

        _run(commit)

    def committed(self, group: str) -> dict[tuple[str, int], int]:
        """The group's committed offsets: {(topic, partition): offset}."""

        async def fetch() -> dict[tuple[str, int], int]:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                offsets = await admin.list_consumer_group_offsets(group)
                return {(tp.topic, tp.partition): int(meta.offset) for tp, meta in offsets.items()}
            finally:
                await admin.close()

        return _run(fetch)

    def offsets(self, topic: str) -> dict[int, tuple[int, int]]:
        """Each partition's (log start offset, end offset): the first offset still readable and
        the next one to be written."""

        async def fetch() -> dict[int, tuple[int, int]]:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
            await consumer.start()
            try:
                parts = [TopicPartition(topic, p) for p in await self._partitions(topic)]
                start = await consumer.beginning_offsets(parts)
                end = await consumer.end_offsets(parts)
                return {tp.partition: (int(start[tp]), int(end[tp])) for tp in parts}
            finally:
                await consumer.stop()

        return _run(fetch)


_session = SessionShare(lambda: KafkaServer(ports=PORTS).start())


def session_server() -> contextlib.AbstractContextManager[KafkaServer]:
    """The server on PORTS that every test of a session shares: started by its first user,
    stopped by its last (see SessionShare)."""
    return _session.hold()
