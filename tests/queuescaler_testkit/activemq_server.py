"""Private ActiveMQ brokers for the activemq source's tests: Classic and Artemis, loopback only.

    classic = ClassicServer().start()    # Debian's 5.17, Jolokia's JVM agent; waits for Jolokia
    classic.jolokia_url                  # http://127.0.0.1:24161/api/jolokia/
    classic.stomp_port                   # 24613 (OpenWire: classic.openwire_port, 24616)
    artemis = ArtemisServer().start()    # `artemis create` + `artemis run`; waits for Jolokia
    artemis.jolokia_url                  # http://127.0.0.1:25161/console/jolokia/
    artemis.stomp_port                   # 25613 (every protocol: artemis.acceptor_port, 25616)
    server.user, server.password         # the one login of Jolokia and STOMP (password random)
    server.origin                        # the Origin header both Jolokias insist on
    server.jolokia([...])                # POST one request or a bulk list: (HTTP status, JSON)
    server.send("orders", 10)            # STOMP, persistent, confirmed by a receipt
    server.queues(); server.queue_stats("orders")   # the queue attributes the source reads
    with server.holding("orders", server.prefetch(10)) as held: ...  # a consumer acking nothing
    with server.stopped(): ...           # down for the block, up again on the same data
    server.stop()                        # by its PID, never by name

    with classic_session() as server: ...   # the ones a session's tests share (SessionShare)
    with artemis_session() as server: ...

Classic: Debian's package ships the broker without its web console (no Jetty, no Jolokia), so
Jolokia 1.x's JVM agent (`hack/deps.sh activemq` copies it from Maven Central) serves the
real console's path, /api/jolokia/, with basic auth and a policy that, like Classic's own
jolokia-access.xml, wants an Origin header. Artemis: its binary distribution from Maven
Central; its own console serves Jolokia 2.x with the broker's users (`--require-login`).
Both STOMP listeners take `/queue/<name>` (Artemis' acceptors are given Classic's prefixes),
so a queue has the same name on both.

Each broker lives in a fresh temporary directory (configuration, data, logs); stop() keeps the
logs in the cache's activemq/ directory, named after the kind and port, and removes the rest. The
helpers are synchronous (stomp.py runs its own reader thread) and work from async tests too.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import stomp  # type: ignore[import-untyped]

from queuescaler_testkit.env import CACHE, REPO
from queuescaler_testkit.private_server import (
    PrivateServer,
    SessionShare,
    listening,
    started,
    stop_leftover,
)

USER = "qs_admin"
CLASSIC_HOME = Path("/usr/share/activemq")
"""Debian's package: bin/activemq.jar and the broker's lib/."""
CLASSIC_QUEUE_ATTRIBUTES = (
    "QueueSize", "InFlightCount", "DispatchCount", "EnqueueCount", "DequeueCount", "ConsumerCount",
)
ARTEMIS_QUEUE_ATTRIBUTES = (
    "MessageCount", "DeliveringCount", "MessagesAdded", "MessagesAcknowledged", "ConsumerCount",
)
START_TIMEOUT = 90.0
"""Classic answered in 1.5 to 3 s on two cores, Artemis in 3 to 5 s (its `create` 2 s more);
the bound leaves room for a slower, busier machine."""
STOP_TIMEOUT = 20.0
"""SIGTERM stops either broker cleanly within about a second; SIGKILL after this."""
HTTP_TIMEOUT = 10.0
STOMP_TIMEOUT = 15.0
JVM_OPTIONS = (
    "-XX:+UseSerialGC",  # one small heap, two cores: no concurrent collector threads
    "-XX:TieredStopAtLevel=1",  # the quick compiler only: it starts faster, tests move little
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


class ActiveMQServerError(RuntimeError):
    """A broker could not be installed or started; the message carries its log's tail."""


def versions() -> dict[str, str]:
    """ARTEMIS_VERSION and JOLOKIA_AGENT_VERSION from hack/versions.env."""
    found = {}
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        name, _, value = line.partition("=")
        if name in ("ARTEMIS_VERSION", "JOLOKIA_AGENT_VERSION"):
            found[name] = value.split("#", 1)[0].strip()
    return found


def installed() -> None:
    """`hack/deps.sh activemq`, once per process, so a test run started without `make` has the
    brokers: idempotent (apt only when the package is missing, Maven only when the stamp of the
    POM and versions differs; nothing to do when cached)."""
    global _installed
    if _installed:
        return
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "deps.sh"), "activemq"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900,
    )
    if done.returncode != 0:
        raise ActiveMQServerError(f"`hack/deps.sh activemq` failed: {done.stderr[-2000:]}")
    _installed = True


_installed = False


def object_name_quote(value: str) -> str:
    """javax.management.ObjectName.quote: how Artemis writes every name in its MBean names
    (`broker="qs-artemis"`); an unquoted name is another MBean, which does not exist."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("*", "\\*")
               .replace("?", "\\?").replace("\n", "\\n"))
    return f'"{escaped}"'


class _Receipts(stomp.ConnectionListener):  # type: ignore[misc]
    """What a STOMP connection heard: receipts, ERROR frames and MESSAGE frames."""

    def __init__(self) -> None:
        self.receipts: set[str] = set()
        self.errors: list[str] = []
        self.messages: list[str] = []
        """message-id of every message received, in order."""
        self.acks: list[str] = []
        """Each message's `ack` header (STOMP 1.2 acks by it, not by message-id: Classic
        counts no ack given a message-id), in the same order."""
        self.changed = threading.Condition()

    def on_receipt(self, frame: Any) -> None:
        with self.changed:
            self.receipts.add(frame.headers.get("receipt-id", ""))
            self.changed.notify_all()

    def on_error(self, frame: Any) -> None:
        with self.changed:
            self.errors.append(f"{frame.headers.get('message', '')} {frame.body}".strip())
            self.changed.notify_all()

    def on_message(self, frame: Any) -> None:
        with self.changed:
            self.messages.append(frame.headers.get("message-id", ""))
            self.acks.append(frame.headers.get("ack", frame.headers.get("message-id", "")))
            self.changed.notify_all()

    def wait(self, ready: Any, timeout: float, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: ready() or self.errors, timeout):
                raise TimeoutError(f"STOMP: no {what} within {timeout:.0f}s")
        if self.errors:
            raise ActiveMQServerError(f"STOMP: the broker answered ERROR: {self.errors}")


@dataclass
class Holder:
    """A STOMP consumer of ours that received messages and acks none until told."""

    connection: Any
    listener: _Receipts
    subscription: str

    @property
    def received(self) -> list[str]:
        """message-id of each message the broker delivered to it."""
        with self.listener.changed:
            return list(self.listener.messages)

    def wait_for(self, n: int, timeout: float = STOMP_TIMEOUT) -> list[str]:
        """Wait until `n` messages have arrived (no more is checked); their message-ids."""
        self.listener.wait(lambda: len(self.listener.messages) >= n, timeout, f"{n} messages")
        return self.received

    def ack_all(self) -> None:
        """Ack every message received so far (client-individual: one ACK each)."""
        with self.listener.changed:
            acks = list(self.listener.acks)
        for ack in acks:
            self.connection.ack(ack)


@dataclass
class ActiveMQServer(PrivateServer):
    """What both brokers share: a login, a Jolokia endpoint, a STOMP listener, the temporary
    directory and the process. Subclasses say how to configure and launch theirs."""

    password: str = field(default_factory=lambda: "qs-" + secrets.token_urlsafe(18))
    """USER's password, for Jolokia and STOMP alike (letters, digits, '-' and '_': it goes
    unquoted into the agent's options and into XML)."""
    user: str = USER
    broker_name: ClassVar[str]
    kind: ClassVar[str]
    jolokia_path: ClassVar[str]
    queue_attributes: ClassVar[tuple[str, ...]]
    stop_timeout: ClassVar[float] = STOP_TIMEOUT

    @property
    def jolokia_port(self) -> int:
        raise NotImplementedError

    @property
    def stomp_port(self) -> int:
        raise NotImplementedError

    @property
    def jolokia_url(self) -> str:
        """With the trailing slash: Classic's agent answers 404 without it."""
        return f"http://127.0.0.1:{self.jolokia_port}{self.jolokia_path}"

    @property
    def origin(self) -> str:
        """The Origin header Jolokia wants: the endpoint's own scheme, host and port (Artemis
        accepts `*://<its http host>*` only; Classic's policy any Origin, but one)."""
        return f"http://127.0.0.1:{self.jolokia_port}"

    @property
    def queue_pattern(self) -> str:
        """An MBean pattern over every queue of the broker."""
        raise NotImplementedError

    @property
    def _dir(self) -> Path:
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix=f"qs-activemq-{self.kind}-"))
        return self.directory

    @property
    def _pidfile(self) -> Path:
        return CACHE / "activemq" / f"{self.kind}-{self.stomp_port}.pid"

    # -- process ----------------------------------------------------------------------------

    def start(self) -> Self:
        """A fresh broker in a new temporary directory; waits until Jolokia reads the broker's
        MBean with our login and STOMP accepts connections. Fails with its log."""
        installed()
        self._stop_leftover()
        busy = [p for p in (self.stomp_port, self.jolokia_port) if listening(p)]
        if busy:
            raise ActiveMQServerError(f"ports {busy} are taken by a process that is not ours")
        self._configure()
        return self._launch()

    @contextlib.contextmanager
    def stopped(self) -> Iterator[Self]:
        """The broker down for the block (a clean shutdown), then started again on the same
        data, ports and login, whatever the block raised."""
        self._halt()
        try:
            yield self
        finally:
            self._launch()

    def stop(self) -> None:
        """SIGTERM to our PID (SIGKILL after stop_timeout); the logs go to the cache's
        activemq/<kind>-<STOMP port>-last/, the temporary directory away. Idempotent."""
        self._halt()
        if self.directory is not None and self.directory.exists():
            kept = CACHE / "activemq" / f"{self.kind}-{self.stomp_port}-last"
            shutil.rmtree(kept, ignore_errors=True)
            kept.mkdir(parents=True)
            for log in self._logs():
                if log.exists():
                    shutil.copy(log, kept / log.name)
            shutil.rmtree(self.directory, ignore_errors=True)
        self._pidfile.with_suffix(".dir").unlink(missing_ok=True)
        self.directory = None

    def _halt(self) -> None:
        super().stop()
        self._pidfile.unlink(missing_ok=True)

    def _launch(self) -> Self:
        stdout = (self._dir / "stdout.log").open("ab")
        try:
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,  # a Ctrl-C of the test run is not delivered to it twice
            )
        finally:
            stdout.close()
        self.pid = self._process.pid
        self._pidfile.parent.mkdir(parents=True, exist_ok=True)
        self._pidfile.write_text(f"{self.pid}\n")
        (self._pidfile.with_suffix(".dir")).write_text(f"{self._dir}\n")
        if not started(self._process, self.ready, START_TIMEOUT, every=0.2):
            tail = self.log_tail()
            self.stop()
            raise ActiveMQServerError(f"{self.kind} did not start: {tail}")
        return self

    def ready(self) -> bool:
        """Whether Jolokia reads the broker's MBean with our login and STOMP listens."""
        if not listening(self.jolokia_port) or not listening(self.stomp_port):
            return False
        try:
            status, body = self.jolokia({"type": "read", "mbean": self._broker_mbean()})
        except OSError:
            return False
        return status == 200 and isinstance(body, dict) and body.get("status") == 200

    def _stop_leftover(self) -> None:
        """A broker a killed test run left behind: ours by its pidfile and its command line;
        its temporary directory goes too."""
        stop_leftover(self._pidfile, *self._marks(), timeout=STOP_TIMEOUT, kill=True)
        with contextlib.suppress(OSError):
            old = Path(self._pidfile.with_suffix(".dir").read_text().strip())
            if old.name.startswith(f"qs-activemq-{self.kind}-") and old != self.directory:
                shutil.rmtree(old, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        tails = []
        for path in self._logs():
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                tails.append(f"{path.name}:\n" + "\n".join(text))
        return "\n".join(tails) or "(no log)"

    def __enter__(self) -> Self:
        return self.start()

    def _configure(self) -> None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _marks(self) -> tuple[bytes, ...]:
        raise NotImplementedError

    def _logs(self) -> list[Path]:
        raise NotImplementedError

    def _broker_mbean(self) -> str:
        raise NotImplementedError

    # -- Jolokia ----------------------------------------------------------------------------

    def jolokia(
        self,
        body: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        password: str | None = None,
        origin: str | None = None,
        params: str = "",
    ) -> tuple[int, Any]:
        """POST `body` (one request, or a list for a bulk request) as the source will: basic
        auth, our Origin (`origin=""` sends none), JSON. Returns the HTTP status and the parsed
        answer (None for an empty or non-JSON body: the 401/403 of a wrong login have none).
        `params`: a query string such as "ignoreErrors=true"."""
        url = self.jolokia_url + (f"?{params}" if params else "")
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
        login = f"{self.user}:{self.password if password is None else password}"
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
        request.add_header("Content-Type", "application/json")  # Artemis refuses a form body
        if (self.origin if origin is None else origin):
            request.add_header("Origin", self.origin if origin is None else origin)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, None

    def queues(self) -> dict[str, dict[str, Any]]:
        """Every queue's queue_attributes, by its name (the Name attribute: Classic mangles
        ':' and ',' in its MBean names), read by one pattern request; {} when there is none."""
        status, body = self.jolokia([{
            "type": "read", "mbean": self.queue_pattern,
            "attribute": [*self.queue_attributes, "Name"],
        }])
        if status != 200 or not isinstance(body, list):
            raise ActiveMQServerError(f"Jolokia answered HTTP {status}: {body!r}")
        answer = body[0]
        if answer.get("status") == 404 and "No MBean with pattern" in answer.get("error", ""):
            return {}
        if answer.get("status") != 200:
            raise ActiveMQServerError(f"Jolokia: {answer.get('error')}")
        found = {}
        for attributes in answer["value"].values():
            name = attributes.pop("Name")
            found[str(name)] = attributes
        return found

    def queue_stats(self, queue: str) -> dict[str, Any] | None:
        """One queue's queue_attributes; None when the broker has no such queue."""
        return self.queues().get(queue)

    # -- STOMP ------------------------------------------------------------------------------

    def _connect(self, client_id: str | None = None) -> tuple[Any, _Receipts]:
        connection = stomp.Connection12([("127.0.0.1", self.stomp_port)], timeout=STOMP_TIMEOUT)
        listener = _Receipts()
        connection.set_listener("qs", listener)
        headers = {"client-id": client_id} if client_id else {}
        connection.connect(self.user, self.password, wait=True, headers=headers)
        return connection, listener

    def send(self, queue: str | Sequence[str], n: int, *, prefix: str = "m") -> None:
        """`n` persistent messages `prefix-0`... to `queue` (or to each of several queues),
        created by the first send, over one STOMP connection; returns once the broker has
        receipted the last of them (a receipt comes after every frame before it is
        processed)."""
        queues = [queue] if isinstance(queue, str) else list(queue)
        frames = [(name, i) for name in queues for i in range(n)]
        connection, listener = self._connect()
        try:
            receipt = f"sent-{uuid.uuid4().hex[:8]}"
            for number, (name, i) in enumerate(frames):
                headers = {"persistent": "true"}
                if number == len(frames) - 1:
                    headers["receipt"] = receipt
                connection.send(f"/queue/{name}", f"{prefix}-{i}", headers=headers)
            if frames:
                listener.wait(lambda: receipt in listener.receipts, STOMP_TIMEOUT, "receipt")
        finally:
            connection.disconnect()

    def prefetch(self, n: int | None) -> dict[str, str]:
        """SUBSCRIBE headers for a consumer that holds at most `n` unacked messages (None: as
        many as the broker sends)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def holding(
        self, queue: str, headers: Mapping[str, str] | None = None, *, client_id: str | None = None
    ) -> Iterator[Holder]:
        """A consumer of `queue` with client-individual acks and the SUBSCRIBE `headers` (see
        prefetch()), connected for the block; the messages it holds unacked go back to the
        queue when it disconnects. `client_id`: the CONNECT frame's client-id (Classic's
        ClientId, Artemis' clientID)."""
        connection, listener = self._connect(client_id)
        subscription = f"sub-{uuid.uuid4().hex[:8]}"
        try:
            connection.subscribe(f"/queue/{queue}", subscription, ack="client-individual",
                                 headers=dict(headers or {}))
            yield Holder(connection, listener, subscription)
        finally:
            connection.disconnect()


@dataclass
class ClassicServer(ActiveMQServer):
    """Debian's ActiveMQ Classic with Jolokia's JVM agent (Jolokia 1.x, as Classic 5.x ships)."""

    openwire_port: int = 24616
    classic_stomp_port: int = 24613
    http_port: int = 24161
    broker_name: ClassVar[str] = "qs-classic"
    kind: ClassVar[str] = "classic"
    jolokia_path: ClassVar[str] = "/api/jolokia/"
    queue_attributes: ClassVar[tuple[str, ...]] = CLASSIC_QUEUE_ATTRIBUTES

    @property
    def jolokia_port(self) -> int:
        return self.http_port

    @property
    def stomp_port(self) -> int:
        return self.classic_stomp_port

    @property
    def queue_pattern(self) -> str:
        return ("org.apache.activemq:type=Broker,brokerName=*,destinationType=Queue,"
                "destinationName=*")

    def _broker_mbean(self) -> str:
        return f"org.apache.activemq:type=Broker,brokerName={self.broker_name}"

    def prefetch(self, n: int | None) -> dict[str, str]:
        """Classic counts its prefetch in messages (its STOMP default is 1,000 for a queue)."""
        return {} if n is None else {"activemq.prefetchSize": str(n)}

    def _configure(self) -> None:
        conf, data = self._dir / "conf", self._dir / "data"
        conf.mkdir(exist_ok=True)  # a directory of the caller's: its data is reused
        data.mkdir(exist_ok=True)
        files = {"activemq.xml": self._broker_xml(), "jolokia-access.xml": _CLASSIC_POLICY,
                 "log4j.properties": _CLASSIC_LOG4J.format(log=data / "activemq.log")}
        for name, text in files.items():
            (conf / name).write_text(text)
            (conf / name).chmod(0o600)

    def _broker_xml(self) -> str:
        users = (f'<authenticationUser username="{self.user}" password="{self.password}" '
                 'groups="admins"/>')
        return _CLASSIC_BROKER.format(
            name=self.broker_name, data=self._dir / "data", users=users,
            openwire=self.openwire_port, stomp=self.classic_stomp_port,
        )

    def _command(self) -> list[str]:
        agent = (CACHE / "jolokia" / versions()["JOLOKIA_AGENT_VERSION"]
                 / f"jolokia-jvm-{versions()['JOLOKIA_AGENT_VERSION']}.jar")
        options = ",".join([
            "host=127.0.0.1", f"port={self.http_port}", "agentContext=/api/jolokia",
            f"user={self.user}", f"password={self.password}", "authMode=basic",
            f"policyLocation=file://{self._dir / 'conf' / 'jolokia-access.xml'}",
            "discoveryEnabled=false",
        ])
        conf = self._dir / "conf"
        return [
            _java(), "-Xms64m", "-Xmx256m", *JVM_OPTIONS, f"-javaagent:{agent}={options}",
            # What Debian's /usr/bin/activemq opens for Java 17.
            "--add-opens", "java.base/java.lang=ALL-UNNAMED",
            "--add-opens", "java.base/java.util=ALL-UNNAMED",
            "--add-opens", "java.base/java.util.concurrent=ALL-UNNAMED",
            "--add-opens", "java.base/java.net=ALL-UNNAMED",
            f"-Dactivemq.home={CLASSIC_HOME}", f"-Dactivemq.base={self._dir}",
            f"-Dactivemq.conf={conf}", f"-Dactivemq.data={self._dir / 'data'}",
            f"-Dlog4j.configuration=file:{conf / 'log4j.properties'}",
            "-jar", str(CLASSIC_HOME / "bin" / "activemq.jar"),
            "start", f"xbean:file:{conf / 'activemq.xml'}",
        ]

    def _marks(self) -> tuple[bytes, ...]:
        return b"activemq.jar", b"qs-activemq-classic-"

    def _logs(self) -> list[Path]:
        return [self._dir / "stdout.log", self._dir / "data" / "activemq.log"]


@dataclass
class ArtemisServer(ActiveMQServer):
    """An ActiveMQ Artemis instance made by `artemis create` from Maven Central's distribution."""

    acceptor_port: int = 25616
    """The main acceptor: every protocol (CORE, AMQP, STOMP, HORNETQ, MQTT, OPENWIRE)."""
    artemis_stomp_port: int = 25613
    http_port: int = 25161
    broker_name: ClassVar[str] = "qs-artemis"
    kind: ClassVar[str] = "artemis"
    jolokia_path: ClassVar[str] = "/console/jolokia/"
    queue_attributes: ClassVar[tuple[str, ...]] = ARTEMIS_QUEUE_ATTRIBUTES

    @property
    def jolokia_port(self) -> int:
        return self.http_port

    @property
    def stomp_port(self) -> int:
        return self.artemis_stomp_port

    @property
    def queue_pattern(self) -> str:
        return ("org.apache.activemq.artemis:broker=*,component=addresses,address=*,"
                "subcomponent=queues,routing-type=*,queue=*")

    def queue_mbean(self, queue: str) -> str:
        """The MBean of an anycast queue on an address of the same name (what a STOMP send
        to /queue/<name> creates)."""
        return (f"org.apache.activemq.artemis:broker={object_name_quote(self.broker_name)},"
                f"component=addresses,address={object_name_quote(queue)},subcomponent=queues,"
                f'routing-type="anycast",queue={object_name_quote(queue)}')

    def _broker_mbean(self) -> str:
        return f"org.apache.activemq.artemis:broker={object_name_quote(self.broker_name)}"

    def prefetch(self, n: int | None) -> dict[str, str]:
        """Artemis reads both consumer-window-size and activemq.prefetchSize as a window in
        BYTES (-1: none; 0: one message at a time; with neither it sends everything), so
        only 1 and None have a message count's meaning."""
        if n is None:
            return {"consumer-window-size": "-1"}
        if n == 1:
            return {"consumer-window-size": "0"}
        raise ValueError("Artemis' STOMP window counts bytes: pass consumer-window-size yourself")

    @property
    def _instance(self) -> Path:
        return self._dir / "instance"

    def _configure(self) -> None:
        home = CACHE / "artemis" / versions()["ARTEMIS_VERSION"]
        home = home / f"apache-artemis-{versions()['ARTEMIS_VERSION']}"
        done = subprocess.run(
            [str(home / "bin" / "artemis"), "create", str(self._instance), "--silent", "--force",
             "--name", self.broker_name, "--user", self.user, "--password", self.password,
             "--require-login", "--host", "127.0.0.1", "--http-host", "127.0.0.1",
             "--http-port", str(self.http_port), "--default-port", str(self.acceptor_port),
             "--no-amqp-acceptor", "--no-mqtt-acceptor", "--no-hornetq-acceptor",
             # No libaio here; no fsync and no journal benchmark at create: tests, not data.
             "--nio", "--no-fsync", "--no-autotune", "--java-memory", "512M"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )
        if done.returncode != 0:
            raise ActiveMQServerError(f"artemis create failed: {done.stdout[-2000:]}"
                                      f"{done.stderr[-2000:]}")
        etc = self._instance / "etc"
        _patch(etc / "broker.xml", [
            # The STOMP acceptor moves from 61613 to ours; both acceptors take Classic's
            # /queue/ and /topic/ prefixes (without them a STOMP send makes a multicast
            # address with no queue, and the message is gone).
            (r"(<acceptor name=\"stomp\">tcp://127\.0\.0\.1:)61613\?",
             rf"\g<1>{self.artemis_stomp_port}?"),
            (r"(<acceptor name=\"(?:artemis|stomp)\">tcp://[^<]*)</acceptor>",
             r"\1;anycastPrefix=/queue/;multicastPrefix=/topic/</acceptor>"),
        ])
        _patch(etc / "artemis.profile", [
            (r"-XX:\+UseG1GC -XX:\+UseStringDeduplication", " ".join(JVM_OPTIONS[:2])),
        ])

    def _command(self) -> list[str]:
        return [str(self._instance / "bin" / "artemis"), "run"]  # it execs java: our PID

    def _marks(self) -> tuple[bytes, ...]:
        return b"org.apache.activemq.artemis.boot.Artemis", b"qs-activemq-artemis-"

    def _logs(self) -> list[Path]:
        return [self._dir / "stdout.log", self._instance / "log" / "artemis.log"]


def _patch(path: Path, edits: Sequence[tuple[str, str]]) -> None:
    """Regex edits of a file `artemis create` wrote; each must match (a new Artemis whose
    files changed fails here, by name, not later as a broker that behaves differently)."""
    text = path.read_text()
    for pattern, replacement in edits:
        text, count = re.subn(pattern, replacement, text)
        if count == 0:
            raise ActiveMQServerError(f"{path.name}: nothing matches {pattern!r}")
    path.write_text(text)


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").exists():
        return str(Path(home, "bin", "java"))
    found = shutil.which("java")
    if found is None:
        raise ActiveMQServerError("java is missing: run `bash hack/deps.sh activemq`")
    return found


_CLASSIC_BROKER = """\
<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans
    http://www.springframework.org/schema/beans/spring-beans.xsd
    http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="{name}" useJmx="true"
          dataDirectory="{data}" schedulerSupport="false">
    <!-- The platform MBean server, where the Jolokia agent reads; no RMI connector. -->
    <managementContext><managementContext createConnector="false"/></managementContext>
    <persistenceAdapter><kahaDB directory="{data}/kahadb"/></persistenceAdapter>
    <plugins>
      <simpleAuthenticationPlugin anonymousAccessAllowed="false">
        <users>{users}</users>
      </simpleAuthenticationPlugin>
    </plugins>
    <!-- Limits a small test disk and heap hold (the defaults ask for 100 GB of store). -->
    <systemUsage><systemUsage>
      <memoryUsage><memoryUsage limit="64 mb"/></memoryUsage>
      <storeUsage><storeUsage limit="1 gb"/></storeUsage>
      <tempUsage><tempUsage limit="256 mb"/></tempUsage>
    </systemUsage></systemUsage>
    <transportConnectors>
      <transportConnector name="openwire" uri="tcp://127.0.0.1:{openwire}"/>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:{stomp}"/>
    </transportConnectors>
  </broker>
</beans>
"""

_CLASSIC_POLICY = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- As Classic's own conf/jolokia-access.xml: an Origin (or Referer) header is required, any
     value. Reads, searches and lists only; no exec on Classic (newer Classics allow no more). -->
<restrict>
  <cors>
    <strict-checking/>
  </cors>
  <commands>
    <command>read</command>
    <command>list</command>
    <command>search</command>
    <command>version</command>
  </commands>
</restrict>
"""

_CLASSIC_LOG4J = """\
log4j.rootLogger=INFO, file
log4j.logger.org.apache.activemq.spring=WARN
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=%d | %-5p | %m | %c | %t%n
"""


_classic = SessionShare(lambda: ClassicServer().start())
_artemis = SessionShare(lambda: ArtemisServer().start())


def classic_session() -> contextlib.AbstractContextManager[ClassicServer]:
    """The Classic broker every test of a session shares: started by its first user, stopped by
    its last (see SessionShare)."""
    return _classic.hold()


def artemis_session() -> contextlib.AbstractContextManager[ArtemisServer]:
    """The Artemis broker every test of a session shares."""
    return _artemis.hold()
