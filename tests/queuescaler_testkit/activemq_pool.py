"""An ActiveMQ worker pool for end-to-end scenarios: a queue on the session's Classic or Artemis
broker, an `activemq` Secret (the Jolokia URL and login), a Deployment and its QueueScaler with
`source.activemq` (`pool.Pool`'s shape).

    pool = ActiveMQPool(testenv, namespace, server=classic).create()
    ids = pool.send(300)                      # persistent STOMP messages; their ids (bodies)
    pool.apply_scaler(minReplicas=0, target={"messagesPerReplica": 20})
    pool.holding()                            # {client-id: messages held}, as the broker says

The Deployment's pods run the STOMP worker when a test gives them a pod runner
(`worker_env`), and nothing otherwise: a pool whose backlog only the test moves. A
`JolokiaFaultProxy` in front of the agent (`jolokia_url=proxy.url(server)`) fails its answers
on demand. Everything but the queue lives in the test's namespace; `delete_queue` removes the
queue on Artemis (Classic's Jolokia policy allows no exec: its queues stay in the session's
broker, which is thrown away at the end).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import stomp  # type: ignore[import-untyped]

from queuescaler_testkit.activemq_server import (
    ActiveMQServer,
    ArtemisServer,
    ClassicServer,
    object_name_quote,
)
from queuescaler_testkit.faultproxy import HOP_BY_HOP, FaultProxy
from queuescaler_testkit.pool import FAST_BEHAVIOR, Pool, deep_merge, worker_deployment
from queuescaler_testkit.workers.stomp_worker import WORK_HEADER, stomp_worker_env

SECRET = "activemq"
STOMP_SECONDS = 15.0
NO_FILTER = json.dumps({"field": "", "operation": "", "value": ""})


def _name(what: str) -> str:
    return f"e2e-{what}-{uuid.uuid4().hex[:8]}"


@dataclass
class ActiveMQPool(Pool):
    """One scenario's STOMP worker pool on `server` (Classic or Artemis)."""

    server: ActiveMQServer | None = None
    initial_replicas: int = 0
    """The Deployment's replicas when created."""
    jolokia_url: str | None = None
    """The Secret's jolokiaUrl; None: the broker's own (a JolokiaFaultProxy's to inject faults)."""
    password: str | None = None
    """The Secret's password; None: the broker's (a wrong one to see the login refused)."""

    @property
    def broker(self) -> ActiveMQServer:
        assert self.server is not None, "an ActiveMQPool needs its broker"
        return self.server

    @property
    def flavor(self) -> str:
        return "artemis" if isinstance(self.broker, ArtemisServer) else "classic"

    @property
    def stomp_url(self) -> str:
        return f"stomp://127.0.0.1:{self.broker.stomp_port}"

    def create(
        self, *, amqp_url: str | None = None, management_url: str | None = None
    ) -> ActiveMQPool:
        """The queue (empty), the Secret and the Deployment at `initial_replicas`. The AMQP
        arguments are the base class's, unused."""
        self.queue = _name("queue")
        self.create_queue()
        self.apply_secret()
        deployment = worker_deployment(self.name, self.grace_seconds)
        deployment["spec"]["replicas"] = self.initial_replicas
        self.apply(deployment)
        return self

    def apply_secret(
        self, *, amqp_url: str | None = None, management_url: str | None = None,
        password: str | None = None,
    ) -> None:
        """The `activemq` Secret: jolokiaUrl, username, password (`password` or the pool's)."""
        if password is not None:
            self.password = password
        self.apply({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
            "stringData": {
                "jolokiaUrl": self.jolokia_url or self.broker.jolokia_url,
                "username": self.broker.user,
                "password": self.password or self.broker.password,
            },
        })

    def apply_scaler(self, **spec: Any) -> None:
        """Create or change the QueueScaler; `spec` is merged over the pool's activemq block
        (no flavor: the source finds it out from the broker)."""
        base: dict[str, Any] = {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.name},
            "maxReplicas": 6,
            "source": {"activemq": {
                "queue": self.queue,
                "connectionSecretRef": {"name": SECRET},
            }},
        }
        self.apply({
            "apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler",
            "metadata": {"name": self.name},
            "spec": deep_merge(deep_merge(base, FAST_BEHAVIOR), spec),
        })

    # -- the queue --------------------------------------------------------------------------

    def create_queue(self) -> None:
        """An empty queue. Artemis: created by its management (a queue made by a client is
        auto-created, and Artemis may delete it once empty and unconsumed); Classic: by a
        consumer's subscription (Classic keeps its queues; its policy here allows no exec)."""
        if isinstance(self.broker, ArtemisServer):
            configuration = json.dumps({"name": self.queue, "address": self.queue,
                                        "routing-type": "ANYCAST", "durable": True})
            self._exec("createQueue(java.lang.String,boolean)", [configuration, True])
        else:
            connection = self._connect()
            try:
                connection.subscribe(f"/queue/{self.queue}", "create", ack="client-individual")
            finally:
                connection.disconnect(receipt=f"created-{uuid.uuid4().hex[:8]}")
        assert self.stats() is not None, f"queue {self.queue} was not created"

    def delete_queue(self) -> None:
        """The QueueScaler first (it would report the queue missing), then, on Artemis, the
        queue."""
        self.testenv.kubectl("delete", "qs", self.name, "-n", self.namespace,
                             "--ignore-not-found", "--wait=false", check=False)
        if isinstance(self.broker, ArtemisServer):
            with contextlib.suppress(Exception):  # never created, or already gone
                self._exec("destroyQueue(java.lang.String,boolean,boolean)",
                           [self.queue, True, True])

    def send(self, n: int, *, tag: str = "m", work_seconds: float | None = None) -> list[str]:
        """`n` persistent messages `<tag>-<random>-0`...; their ids (the bodies the worker
        logs). `work_seconds`: how long the STOMP worker takes over each (its WORK_SECONDS
        otherwise). Returns once the broker has receipted the last."""
        prefix = f"{tag}-{uuid.uuid4().hex[:6]}"
        ids = [f"{prefix}-{i}" for i in range(n)]
        headers = {"persistent": "true"}
        if work_seconds is not None:
            headers[WORK_HEADER] = str(work_seconds)
        receipt = f"sent-{uuid.uuid4().hex[:8]}"
        answered = _Receipt(receipt)
        connection = self._connect()
        connection.set_listener("receipt", answered)
        try:
            for i, body in enumerate(ids):
                last = {"receipt": receipt} if i == n - 1 else {}
                connection.send(f"/queue/{self.queue}", body, headers=headers | last)
            # A receipt comes after every frame before it is processed.
            if n and not answered.done.wait(STOMP_SECONDS):
                raise AssertionError(f"no receipt for {n} messages to {self.queue}: "
                                     f"{answered.errors}")
        finally:
            connection.disconnect()
        return ids

    def stats(self) -> dict[str, Any] | None:
        """The queue's attributes as the broker has them now (None: no such queue)."""
        return self.broker.queue_stats(self.queue)

    def waiting(self) -> int:
        """Messages in the queue, delivered and unacknowledged ones included."""
        stats = self.stats() or {}
        return int(stats.get("QueueSize", stats.get("MessageCount", 0)))

    def consumers(self) -> int:
        return int((self.stats() or {}).get("ConsumerCount", 0))

    def holding(self) -> dict[str, int]:
        """Client id -> messages delivered to it and not acknowledged, for this queue's
        consumers, as the broker's own management says (Classic: the consumer MBeans'
        DispatchedQueueSize; Artemis: listConsumers' messagesInTransit)."""
        held: dict[str, int] = {}
        if isinstance(self.broker, ClassicServer):
            pattern = (f"org.apache.activemq:type=Broker,brokerName={self.broker.broker_name},"
                       f"destinationType=Queue,destinationName={self.queue},endpoint=Consumer,"
                       "clientId=*,consumerId=*")
            answer = self._jolokia({"type": "read", "mbean": pattern,
                                    "attribute": ["ClientId", "DispatchedQueueSize"]})
            if answer.get("status") == 404:
                return {}
            for consumer in _value(answer).values():
                client = str(consumer["ClientId"])
                held[client] = held.get(client, 0) + int(consumer["DispatchedQueueSize"])
            return held
        listing = json.loads(self._exec("listConsumers(java.lang.String,int,int)",
                                        [NO_FILTER, 1, 1000]))
        for consumer in listing["data"]:
            if consumer.get("queue") == self.queue:
                client = str(consumer.get("clientID"))
                held[client] = held.get(client, 0) + int(consumer["messagesInTransit"])
        return held

    def worker_env(
        self, processed_log: Path, *, work_seconds: float, started_log: Path | None = None,
        prefetch: int = 1,
    ) -> dict[str, str]:
        """The STOMP worker's environment for this pool's queue (prefetch 1: one message held
        at a time on either broker)."""
        return stomp_worker_env(self.stomp_url, self.queue, processed_log,
                                user=self.broker.user, password=self.broker.password,
                                started_log=started_log, prefetch=prefetch,
                                work_seconds=work_seconds)

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> Any:
        connection = stomp.Connection12([("127.0.0.1", self.broker.stomp_port)],
                                        timeout=STOMP_SECONDS)
        connection.connect(self.broker.user, self.broker.password, wait=True)
        return connection

    def _jolokia(self, request: Mapping[str, Any]) -> dict[str, Any]:
        status, body = self.broker.jolokia([request])
        assert status == 200 and isinstance(body, list), f"Jolokia: HTTP {status}: {body!r}"
        answer: dict[str, Any] = body[0]
        return answer

    def _exec(self, operation: str, arguments: list[Any]) -> Any:
        mbean = ("org.apache.activemq.artemis:broker="
                 f"{object_name_quote(self.broker.broker_name)}")
        return _value(self._jolokia({"type": "exec", "mbean": mbean, "operation": operation,
                                     "arguments": arguments}))


class _Receipt(stomp.ConnectionListener):  # type: ignore[misc]
    """Waits for one RECEIPT frame; keeps the ERROR frames heard meanwhile."""

    def __init__(self, receipt: str) -> None:
        self.receipt = receipt
        self.done = threading.Event()
        self.errors: list[str] = []

    def on_receipt(self, frame: Any) -> None:
        if frame.headers.get("receipt-id") == self.receipt:
            self.done.set()

    def on_error(self, frame: Any) -> None:
        self.errors.append(f"{frame.headers.get('message', '')} {frame.body}".strip())


def _value(answer: Mapping[str, Any]) -> Any:
    assert answer.get("status") == 200, f"Jolokia: {answer.get('error')}"
    return answer.get("value")


class JolokiaFaultProxy(FaultProxy):
    """The fault proxy for Jolokia, which is POSTed to: the same modes (PASS, ERROR: HTTP 500
    echoing the caller's credentials, SLOW: held `delay` seconds, GARBAGE: not JSON), the
    request's body forwarded. Every body is read first, whatever the mode, so a kept-alive
    connection stays in step."""

    def url(self, server: ActiveMQServer) -> str:
        """The agent's URL through the proxy (same path, the proxy's port)."""
        return f"http://127.0.0.1:{self.port}{server.jolokia_path}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            body = b""

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._serve(self)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length) if length else b""
                proxy._serve(self)

        return Handler

    def _forward(self, request: BaseHTTPRequestHandler, *, without_counts: bool = False) -> int:
        upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
            body = getattr(request, "body", b"") if request.command == "POST" else None
            upstream.request(request.command, request.path, body=body, headers=headers)
            response = upstream.getresponse()
            answer = response.read()
            passed = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            self._answer(request, response.status, "", answer, passed)
            return int(response.status)
        except OSError as error:
            self._answer(request, 502, "text/plain", f"upstream failed: {error}".encode())
            return 502
        finally:
            upstream.close()
