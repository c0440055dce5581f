"""KEDA beside queuescaler: the same traffic on five pools of real pika workers (issue 20).

    python bench/peers.py [--minutes 10] [--traces bursts,poisson,flood] [--env peers]
                          [--pools queuescaler,keda,keda-fast,queuescaler-0,keda-0] [--seed 7]

`make bench-peers` runs it in an environment of its own (QS_ENV=peers) with KEDA up
(hack/keda.sh); run by hand, the environment and KEDA must already be up
(`QS_ENV=peers QS_PORT_OFFSET=600 hack/testenv.sh up && QS_ENV=peers QS_PORT_OFFSET=600
hack/keda.sh up`).

Per trace, five pools (--pools) on the same broker and the same cluster, each a Deployment of real
pika workers (the test kit's journalling consumer, tracking_worker.py: prefetch 4, 0.5 s of
work per message, so 2 messages/s per replica; the pod runner plays the kubelet for the kwok
pods), its own namespace and its own queue, all fed the same trace at the same time by one
publisher each (persistent messages, broker-confirmed):

  queuescaler  a QueueScaler with the operator's defaults, served by the real operator process
               (as the other benches run it);
  keda         a ScaledObject, RabbitMQ trigger, QueueLength over the management API (protocol
               http), value 10, KEDA's documented defaults (pollingInterval 30 s, cooldownPeriod
               300 s) and the HPA's default behaviour;
  keda-fast    the same, tuned for fast reaction: pollingInterval 1 s and a scale-up policy
               without limits (100 pods per second, no stabilization window);
  queuescaler-0, keda-0
               queuescaler's and KEDA's defaults again with minReplicas / minReplicaCount 0
               (KEDA's documented default): the pool starts at 0, KEDA's own polling loop
               (every 30 s), not the HPA, takes it 0 -> 1 and back to 0 after cooldownPeriod;
               queuescaler wakes it at activation.messages.

KEDA 2.21 polls a trigger in its own loop only when that loop can act outside the HPA's range
(minReplicaCount 0, an idleReplicaCount, useCachedMetrics: ScaledObject.
IsPollingIntervalRelevant); at minReplicaCount 1 the loop reuses what the HPA's metric queries
saw, so pollingInterval changes little there, and the HPA's 15 s sync paces every scale-up.

Same bounds for all: 1 (the -0 pools: 0) to 10 replicas; 10 messages per replica
(queuescaler's default messagesPerReplica, KEDA's `value`). The kube-controller-manager's
HPA controller does KEDA's 1 <-> N scaling at its default 15 s sync, as in a real cluster.

Traces (each --minutes long, the same schedule for every pool, seeded):
  bursts   120 messages at once every max(45 s, length / 10), from 5 s in;
  poisson  a steady Poisson stream of 6 messages/s (3 busy replicas' worth);
  flood    idle for the first third, then 16 messages/s (8 replicas' worth) to the end.

Measured per pool, over the trace's length (replica-seconds, scale events, requests, CPU) or
over every message of it (waits):
  reaction     burst confirmed (its last message; a flood: its first) -> the first replica
               increase a watch on the Deployments sees after the burst's first message was
               sent (0 when it came before the confirm), p50/p95 over the bursts that got one
               (a pool already at its maximum is not counted; one without an increase before
               the next burst is counted as missed);
  replica-s    the Deployment's spec.replicas integrated over the trace;
  scale events changes of spec.replicas (up/down);
  wait         publish -> ack of every message (the publisher's stamp, the worker's journal);
  redelivered  messages delivered again after a worker was stopped holding them (scale-down),
               and stopped workers that held messages;
  mgmt req     requests to the management API, counted by a loopback relay in front of it
               (each pool's Secret points there): KEDA's polling loop and the HPA's metric
               queries (each one reaches the broker), queuescaler's batched samples and busy-
               worker looks;
  connections  TCP connections each pool's scaler opened to the management API and AMQP
               connections it opened (and held at the end), by loopback relays that only the
               pool's Secret names (the workers connect to the broker directly);
  CPU, RSS     of each operator's processes, from /proc: queuescaler's one process (every
               queuescaler pool); KEDA's keda-operator + keda-adapter, shared by every KEDA
               pool (one KEDA serves them: one APIService per cluster); and the
               kube-controller-manager (its HPA controller does KEDA's 1 <-> N scaling) and
               the kube-apiserver, in a table of their own;
  apiserver    the apiserver's apiserver_request_total grown over the trace, by verb and
               resource; it has no client label, so the owner is told by resource
               (queuescaler.io is queuescaler's; keda.sh, HPAs and external metrics KEDA's and
               the HPA's; deployments, events, leases everyone's), and the clients' own
               rest_client_requests_total by method (keda-operator, keda-adapter, the
               controller-manager) beside it, with the external metrics KEDA's adapter served
               and the HPA controller's reconciliations; RabbitMQ's own connection counters.

Prints three Markdown tables per trace (pools, processes, requests) and writes the replica
curves over the backlog (bench/peers_plot.py) beside the raw series; the raw series
(replica steps, backlog every 2 s, waits, requests, CPU and RSS samples) go to
~/.cache/queuescaler/out/peers-<time>.json. Loopback only; every namespace and queue made
here is deleted at the end; only processes started here are stopped, by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from urllib.request import urlopen

import pika
import yaml
from kubernetes import client, config, watch

from loopback_counter import RequestCounter  # the sibling module
from queuescaler_testkit.broker import BrokerAdmin, quote
from queuescaler_testkit.env import CACHE, REPO, TestEnv, read_testenv, wait_until
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import PodRunner, tracking_worker_command, tracking_worker_env

MIN_REPLICAS = 1
MAX_REPLICAS = 10
MESSAGES_PER_REPLICA = 10
WORK_SECONDS = 0.5
PREFETCH = 4
GRACE_SECONDS = 30
BURST = 120
POISSON_RATE = 6.0
FLOOD_RATE = 16.0
SAMPLE_SECONDS = 2.0
SETTLE_BOUND = 180.0
"""From the pools' creation to each one consuming and its scaler ready."""
DRAIN_BOUND = 240.0
"""From the trace's end to every message acked."""
POOLS = ("queuescaler", "keda", "keda-fast", "queuescaler-0", "keda-0")
"""A name ending in -0 is the same scaler with minReplicas (minReplicaCount) 0."""
TRACES = ("bursts", "poisson", "flood")
LABEL = "bench-peers"


def min_replicas(kind: str) -> int:
    return 0 if kind.endswith("-0") else MIN_REPLICAS


def engine(kind: str) -> str:
    """Which operator serves a pool: queuescaler, or KEDA (with the HPA)."""
    return "queuescaler" if kind.startswith("queuescaler") else "keda"


def keda_version() -> str:
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if line.startswith("KEDA_VERSION="):
            return line.split("=", 1)[1].split()[0]
    return "unknown"


# -- traces ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    name: str
    seconds: float
    offsets: list[float]
    """When each message is published, seconds from the start (sorted)."""
    markers: list[int]
    """Indices of the messages that start the reaction clock once confirmed: a burst's last,
    a flood's first."""
    starts: list[int]
    """For each marker, the index of its burst's first message: a scale-up after that one
    was sent answers the burst (the operator may act before the burst is all confirmed)."""


def make_trace(name: str, seconds: float, seed: int) -> Trace:
    rng = random.Random(f"{name}-{seed}")
    offsets: list[float] = []
    markers: list[int] = []
    starts: list[int] = []
    if name == "bursts":
        period = max(45.0, seconds / 10)
        at = 5.0
        while at < seconds:
            starts.append(len(offsets))
            offsets += [at] * BURST
            markers.append(len(offsets) - 1)
            at += period
    elif name == "poisson":
        at = rng.expovariate(POISSON_RATE)
        while at < seconds:
            offsets.append(at)
            at += rng.expovariate(POISSON_RATE)
    elif name == "flood":
        at = seconds / 3
        markers.append(0)
        starts.append(0)
        while at < seconds:
            offsets.append(at)
            at += 1 / FLOOD_RATE
    else:
        raise ValueError(f"no trace {name!r}")
    return Trace(name, seconds, offsets, markers, starts)


class Publisher(threading.Thread):
    """Publishes a trace to one queue on its schedule, each message confirmed; stamps each."""

    def __init__(self, amqp_url: str, queue: str, trace: Trace, t0: float) -> None:
        super().__init__(name=f"publisher-{queue}", daemon=True)
        self.amqp_url, self.queue, self.trace, self.t0 = amqp_url, queue, trace, t0
        self.sent: dict[str, float] = {}
        """Message id -> wall time just before its publish."""
        self.confirmed: dict[int, float] = {}
        """Marker index -> wall time of its confirm."""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            parameters = pika.URLParameters(self.amqp_url)
            parameters.client_properties = {"connection_name": f"bench-publisher-{self.queue}"}
            connection = pika.BlockingConnection(parameters)
            try:
                channel = connection.channel()
                channel.confirm_delivery()
                markers = set(self.trace.markers)
                for n, offset in enumerate(self.trace.offsets):
                    delay = self.t0 + offset - time.time()
                    if delay > 0:
                        connection.sleep(delay)
                    message_id = f"{self.queue}-{n:06d}"
                    self.sent[message_id] = time.time()
                    properties = pika.BasicProperties(
                        delivery_mode=pika.DeliveryMode.Persistent, message_id=message_id,
                        headers={"message-id": message_id},
                        timestamp=int(self.sent[message_id]),
                    )
                    channel.basic_publish("", self.queue, message_id.encode(), properties,
                                          mandatory=True)
                    if n in markers:
                        self.confirmed[n] = time.time()
            finally:
                with contextlib.suppress(Exception):
                    connection.close()
        except BaseException as error:  # reported as a harness failure
            self.error = error


# -- watching: replicas, backlog, operators' processes ---------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (its own, not its children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


@dataclass
class Watched:
    replicas: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    """Namespace -> (wall time, spec.replicas) at each change a watch saw."""
    backlog: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    """Queue -> (wall time, ready, unacked), every SAMPLE_SECONDS."""
    usage: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    """Operator -> (wall time, CPU seconds, RSS MB), every SAMPLE_SECONDS."""


class Watcher:
    """A watch on the pools' Deployments (one for all namespaces, by label) and a sampler of
    the queues (one management listing, straight to the broker, not counted) and of the
    operators' processes."""

    def __init__(self, env: TestEnv, label: str, queues: list[str],
                 operators: dict[str, list[int]]) -> None:
        self.env, self.label, self.queues, self.operators = env, label, set(queues), operators
        self.seen = Watched()
        self._halt = threading.Event()
        self._threads = [threading.Thread(target=self._watch, daemon=True, name="watch"),
                         threading.Thread(target=self._sample, daemon=True, name="sample")]

    def __enter__(self) -> Watcher:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._halt.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _note(self, namespace: str, replicas: int, at: float) -> None:
        steps = self.seen.replicas.setdefault(namespace, [])
        if not steps or steps[-1][1] != replicas:
            steps.append((at, replicas))

    def _watch(self) -> None:
        api = config.new_client_from_config(config_file=str(self.env.kubeconfig))
        apps = client.AppsV1Api(api)
        version: str | None = None
        while not self._halt.is_set():
            try:
                if version is None:
                    listing = apps.list_deployment_for_all_namespaces(
                        label_selector=self.label, _request_timeout=15)
                    for item in listing.items:
                        self._note(item.metadata.namespace, int(item.spec.replicas or 0),
                                   time.time())
                    version = listing.metadata.resource_version
                stream = watch.Watch()
                for event in stream.stream(apps.list_deployment_for_all_namespaces,
                                           label_selector=self.label, resource_version=version,
                                           timeout_seconds=5, _request_timeout=15):
                    now = time.time()
                    version = event["raw_object"]["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        item = event["object"]
                        self._note(item.metadata.namespace, int(item.spec.replicas or 0), now)
                    if self._halt.is_set():
                        stream.stop()
                        break
            except Exception:  # 410 Gone, a dropped connection: list again
                version = None
                self._halt.wait(0.5)
        api.close()

    def _sample(self) -> None:
        admin = BrokerAdmin(self.env.management_url, timeout=5)
        path = (admin.queues_path(self.env.vhost)
                + "?columns=name,messages_ready,messages_unacknowledged")
        while not self._halt.wait(SAMPLE_SECONDS):
            now = time.time()
            with contextlib.suppress(Exception):
                for queue in admin.get(path):
                    if queue.get("name") in self.queues:
                        self.seen.backlog.setdefault(queue["name"], []).append(
                            (now, int(queue.get("messages_ready") or 0),
                             int(queue.get("messages_unacknowledged") or 0)))
            for name, pids in self.operators.items():
                with contextlib.suppress(OSError, ValueError):
                    self.seen.usage.setdefault(name, []).append(
                        (now, sum(proc_cpu_seconds(p) for p in pids),
                         sum(proc_rss_mb(p) for p in pids)))


# -- the cluster's own counters -------------------------------------------------------------------


_LABELS = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def counter_lines(text: str, name: str, keys: tuple[str, ...]) -> dict[str, float]:
    """A Prometheus counter's series summed by the labels `keys` (joined by spaces)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels_part, value = line.rsplit(" ", 1)
            labels = dict(_LABELS.findall(labels_part))
            key = " ".join(labels.get(k, "") or "-" for k in keys)
            found[key] = found.get(key, 0.0) + float(value)
    return found


@dataclass(frozen=True)
class Cluster:
    """The environment's control plane (kwokctl's binary runtime) and KEDA: PIDs and the
    endpoints that count requests. Read only; nothing here is started or stopped."""

    env: TestEnv
    name: str
    offset: int
    """QS_PORT_OFFSET: KEDA's metrics ports follow it (hack/keda.sh)."""

    @property
    def kwok(self) -> Path:
        return next((CACHE / f"run-{self.name}" / "kwok" / "clusters").iterdir())

    def pid(self, component: str) -> int:
        return int((self.kwok / "pids" / f"{component}.pid").read_text())

    def keda_pids(self) -> list[int]:
        run = CACHE / "keda" / f"run-{self.name}"
        return [int((run / f"{n}.pid").read_text()) for n in ("keda-operator", "keda-adapter")]

    def processes(self) -> dict[str, list[int]]:
        """Every process of the control plane whose CPU is sampled (the operators apart)."""
        found = {"kube-controller-manager": [self.pid("kube-controller-manager")],
                 "kube-apiserver": [self.pid("kube-apiserver")]}
        with contextlib.suppress(OSError, ValueError):  # the broker, for the count test
            found["rabbitmq"] = [int((CACHE / f"run-{self.name}" / "rabbitmq.pid").read_text())]
        return found

    def _kcm_metrics(self) -> str:
        config_text = (CACHE / f"run-{self.name}" / "kwokctl.yaml").read_text()
        port = int(re.search(r"kubeControllerManagerPort: (\d+)", config_text).group(1))  # type: ignore[union-attr]
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # loopback, the cluster's own self-signed serving cert
        context.load_cert_chain(self.kwok / "pki" / "admin.crt", self.kwok / "pki" / "admin.key")
        with urlopen(f"https://127.0.0.1:{port}/metrics", timeout=10, context=context) as r:
            return str(r.read().decode())

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Cumulative counters now: the apiserver's requests by verb and resource, each
        client's own requests by method (KEDA's two processes, the controller-manager with all
        its controllers), what KEDA's adapter served, and RabbitMQ's connection counters.
        A source that does not answer is left out."""
        found: dict[str, dict[str, float]] = {}

        def get(url: str) -> str:
            with urlopen(url, timeout=10) as r:
                return str(r.read().decode())

        with contextlib.suppress(Exception):
            found["apiserver"] = counter_lines(
                self.env.kubectl("get", "--raw", "/metrics").stdout, "apiserver_request_total",
                ("verb", "group", "resource", "subresource"))
        with contextlib.suppress(Exception):
            found["keda-operator"] = counter_lines(
                get(f"http://127.0.0.1:{24482 + self.offset}/metrics"),
                "rest_client_requests_total", ("method",))
        with contextlib.suppress(Exception):
            text = get(f"http://127.0.0.1:{24484 + self.offset}/metrics")
            found["keda-adapter"] = counter_lines(text, "rest_client_requests_total", ("method",))
            found["keda-adapter served"] = counter_lines(
                text, "apiserver_request_total", ("verb", "group", "resource"))
        with contextlib.suppress(Exception):
            text = self._kcm_metrics()
            found["kube-controller-manager"] = counter_lines(
                text, "rest_client_requests_total", ("method",))
            found["HPA controller"] = counter_lines(
                text, "horizontal_pod_autoscaler_controller_reconciliations_total", ("action",))
        with contextlib.suppress(Exception):
            overview = self.env.admin().overview(["churn_rates", "object_totals"])
            found["rabbitmq"] = {
                "connections created": float(overview["churn_rates"]["connection_created"]),
                "connections open": float(overview["object_totals"]["connections"]),
            }
        return found


def counters_over(before: dict[str, dict[str, float]],
                  after: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """What each counter grew by between two snapshots (a gauge: its value after)."""
    grown: dict[str, dict[str, float]] = {}
    for source, values in after.items():
        first = before.get(source, {})
        grown[source] = {k: (v if k == "connections open" else v - first.get(k, 0.0))
                         for k, v in values.items()
                         if k == "connections open" or v - first.get(k, 0.0)}
    return grown


def apiserver_owner(key: str) -> str:
    """Whose requests a (verb group resource subresource) row of the apiserver's counter
    most likely are, by resource alone: the counter has no client label."""
    _, group, resource, _ = key.split(" ")
    if group == "queuescaler.io":
        return "queuescaler"
    if group in ("keda.sh", "eventing.keda.sh", "external.metrics.k8s.io") \
            or resource == "horizontalpodautoscalers":
        return "KEDA + HPA"
    if resource in ("deployments", "events", "leases"):
        return "shared"
    return "other"


# -- the pools ------------------------------------------------------------------------------------


def kubectl_apply(env: TestEnv, documents: list[dict[str, Any]]) -> None:
    # Server-side: a client-side apply would copy the Secret into an annotation.
    env.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager", LABEL,
                "-f", "-", input=yaml.safe_dump_all(documents))


def scaler_documents(kind: str, namespace: str, queue: str, vhost: str) -> list[dict[str, Any]]:
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"}
    meta = {"name": "worker", "namespace": namespace}
    if engine(kind) == "queuescaler":
        return [{
            "apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler", "metadata": meta,
            "spec": {"scaleTargetRef": target, "minReplicas": min_replicas(kind),
                     "maxReplicas": MAX_REPLICAS,
                     "source": {"rabbitmq": {"queue": queue, "vhost": vhost,
                                             "connectionSecretRef": {"name": "rabbitmq"}}}},
        }]
    spec: dict[str, Any] = {
        "scaleTargetRef": {"name": "worker"},
        "minReplicaCount": min_replicas(kind), "maxReplicaCount": MAX_REPLICAS,
        "triggers": [{
            "type": "rabbitmq",
            "metadata": {"protocol": "http", "queueName": queue, "mode": "QueueLength",
                         "value": str(MESSAGES_PER_REPLICA)},
            "authenticationRef": {"name": "rabbitmq"},
        }],
    }
    if kind == "keda-fast":
        spec["pollingInterval"] = 1
        spec["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": {"scaleUp": {
            "stabilizationWindowSeconds": 0, "selectPolicy": "Max",
            "policies": [{"type": "Pods", "value": 100, "periodSeconds": 1}],
        }}}}
    return [
        {"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
         "metadata": {**meta, "name": "rabbitmq"},
         "spec": {"secretTargetRef": [{"parameter": "host", "name": "rabbitmq", "key": "host"}]}},
        {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": meta,
         "spec": spec},
    ]


@dataclass
class PoolRun:
    kind: str
    namespace: str
    queue: str
    journal: Path
    counter: RequestCounter
    """In front of the management API: the pool's scaler's requests and connections."""
    amqp: RequestCounter
    """In front of the AMQP port: the pool's scaler's AMQP connections (not the workers')."""
    runner: PodRunner | None = None
    publisher: Publisher | None = None
    requests_at: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    connections_at: list[tuple[int, int, int, int]] = field(default_factory=list)
    """(management connections opened, open; AMQP connections opened, open) at t0 and t1."""

    def connections_now(self) -> tuple[int, int, int, int]:
        return (self.counter.connections, self.counter.open_connections,
                self.amqp.connections, self.amqp.open_connections)


def create_pool(env: TestEnv, pool: PoolRun, work: Path) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
    try:
        connection.channel().queue_declare(pool.queue, durable=True)
    finally:
        connection.close()
    admin = BrokerAdmin(env.management_url)
    counted = (f"http://{quote(admin.user)}:{quote(admin.password)}"
               f"@127.0.0.1:{pool.counter.listen_port}")
    amqp = urlsplit(env.amqp_url)
    counted_amqp = urlunsplit(amqp._replace(
        netloc=f"{amqp.netloc.rsplit('@', 1)[0]}@127.0.0.1:{pool.amqp.listen_port}"))
    kubectl_apply(env, [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": pool.namespace}},
    ])
    kubectl_apply(env, [
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "rabbitmq", "namespace": pool.namespace},
         "stringData": {"amqpUrl": counted_amqp, "managementUrl": counted,
                        "host": f"{counted}/{quote(env.vhost)}"}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "worker", "namespace": pool.namespace, "labels": {LABEL: "yes"}},
         "spec": {"replicas": min_replicas(pool.kind),
                  "selector": {"matchLabels": {"app": "worker"}},
                  "template": {"metadata": {"labels": {"app": "worker"}},
                               "spec": {"terminationGracePeriodSeconds": GRACE_SECONDS,
                                        "containers": [{"name": "worker",
                                                        "image": "worker:fake"}]}}}},
    ])
    pool.runner = PodRunner(
        env.kubeconfig, pool.namespace, "app=worker", tracking_worker_command,
        tracking_worker_env(env.amqp_url, pool.queue, pool.journal, prefetch=PREFETCH,
                            work_seconds=WORK_SECONDS),
        work / pool.namespace,
    ).start()
    kubectl_apply(env, scaler_documents(pool.kind, pool.namespace, pool.queue, env.vhost))


def pool_ready(env: TestEnv, pool: PoolRun) -> bool:
    body = env.admin().queue(env.vhost, pool.queue, ["consumers"])
    if not isinstance(body, dict) or int(body.get("consumers") or 0) < min_replicas(pool.kind):
        return False
    if engine(pool.kind) == "queuescaler":
        out = env.kubectl("get", "qs", "worker", "-n", pool.namespace, "-o",
                          "jsonpath={.status.lastDecision.reason}", check=False)
        return out.returncode == 0 and bool(out.stdout.strip())
    out = env.kubectl("get", "scaledobject", "worker", "-n", pool.namespace, "-o",
                      "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}", check=False)
    hpa = env.kubectl("get", "hpa", "keda-hpa-worker", "-n", pool.namespace, "-o",
                      "jsonpath={.status.currentMetrics}", check=False)
    # At 0 replicas the HPA is switched off (ScalingActive False): it has no metrics to show.
    return out.stdout.strip() == "True" and hpa.returncode == 0 and (
        bool(hpa.stdout.strip()) or min_replicas(pool.kind) == 0)


def delete_pool(env: TestEnv, pool: PoolRun) -> None:
    kind = "qs" if engine(pool.kind) == "queuescaler" else "scaledobject"
    env.kubectl("delete", kind, "worker", "-n", pool.namespace, "--wait=false", check=False)
    env.kubectl("delete", "deployment", "worker", "-n", pool.namespace, "--wait=false",
                check=False)
    if pool.runner is not None:
        pool.runner.stop()
    env.kubectl("delete", "namespace", pool.namespace, "--wait=false", check=False)
    with contextlib.suppress(Exception):
        env.admin().delete_queue(env.vhost, pool.queue, missing_ok=True)
    # The counting relay is left to the process's end: stopping it under KEDA's and the
    # operator's kept-alive connections only fills stderr with the relays' pending tasks.


# -- the journal ----------------------------------------------------------------------------------


@dataclass
class Journal:
    done: dict[str, float] = field(default_factory=dict)
    """Message id -> when its first completion was acked."""
    redelivered: set[str] = field(default_factory=set)
    stopped_busy: int = 0
    """Workers told to stop while they held a message (in hand or waiting)."""
    stopped: int = 0


def read_journal(path: Path) -> Journal:
    found = Journal()
    if not path.exists():
        return found
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0] == "done":
            found.done.setdefault(parts[1], float(parts[5]))
            if parts[3] == "1":
                found.redelivered.add(parts[1])
        elif len(parts) == 6 and parts[0] == "sigterm":
            found.stopped += 1
            if parts[3] == "1" or parts[4] != "0":
                found.stopped_busy += 1
    return found


# -- one trace ------------------------------------------------------------------------------------


@dataclass
class PoolResult:
    kind: str
    reactions: list[float] = field(default_factory=list)
    missed: int = 0
    at_max: int = 0
    replica_seconds: float = 0.0
    ups: int = 0
    downs: int = 0
    max_replicas: int = 0
    waits: list[float] = field(default_factory=list)
    published: int = 0
    lost: int = 0
    redelivered: int = 0
    stopped: int = 0
    stopped_busy: int = 0
    requests: int = 0
    requests_by_path: dict[str, int] = field(default_factory=dict)
    mgmt_connections: int = 0
    """TCP connections the scaler opened to the management API over the trace."""
    amqp_connections: int = 0
    """AMQP connections the scaler opened over the trace (its workers' are not counted)."""
    amqp_open: int = 0
    """The scaler's AMQP connections open at the trace's end."""
    cpu_seconds: float = math.nan
    rss_peak_mb: float = math.nan
    replica_steps: list[tuple[float, int]] = field(default_factory=list)
    backlog: list[tuple[float, int, int]] = field(default_factory=list)


@dataclass
class TraceResult:
    trace: str
    seconds: float
    messages: int
    pools: list[PoolResult]
    failure: str | None = None
    drained_seconds: float = math.nan
    usage: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Process group -> (CPU seconds over the trace, peak RSS MB)."""
    counters: dict[str, dict[str, float]] = field(default_factory=dict)
    """Cluster.snapshot()'s counters, grown over the trace."""


def replicas_at(steps: list[tuple[float, int]], at: float) -> int:
    value = steps[0][1] if steps else 0
    for when, replicas in steps:
        if when > at:
            break
        value = replicas
    return value


def analyse(pool: PoolRun, trace: Trace, t0: float, seen: Watched,
            usage: tuple[float, float, float] | None, peak: float) -> PoolResult:
    assert pool.publisher is not None
    result = PoolResult(pool.kind)
    t1 = t0 + trace.seconds
    steps = seen.replicas.get(pool.namespace, [])
    result.replica_steps = [(round(t - t0, 2), r) for t, r in steps]
    result.backlog = [(round(t - t0, 2), r, u) for t, r, u in seen.backlog.get(pool.queue, [])]
    # Reaction: each burst's confirm -> the first increase after its first message was sent
    # (0 when that came before the confirm), before the next burst began.
    sent_at = list(pool.publisher.sent.values())  # in publishing order
    bursts = [(sent_at[start], pool.publisher.confirmed[marker])
              for start, marker in zip(trace.starts, trace.markers, strict=True)
              if marker in pool.publisher.confirmed]
    for i, (began, confirmed) in enumerate(bursts):
        until = bursts[i + 1][0] if i + 1 < len(bursts) else math.inf
        before = replicas_at(steps, began)
        if before >= MAX_REPLICAS:
            result.at_max += 1
            continue
        grew = next((t for t, r in steps if began < t < until and r > before), None)
        if grew is None:
            result.missed += 1
        else:
            result.reactions.append(max(0.0, grew - confirmed))
    # Replica-seconds and scale events over the trace's length.
    level = replicas_at(steps, t0)
    last = t0
    for when, replicas in steps:
        if when <= t0:
            continue
        if when >= t1:
            break
        result.replica_seconds += level * (when - last)
        if replicas > level:
            result.ups += 1
        elif replicas < level:
            result.downs += 1
        level, last = replicas, when
    result.replica_seconds += level * (t1 - last)
    result.max_replicas = max((r for t, r in steps if t0 <= t <= t1), default=level)
    journal = read_journal(pool.journal)
    sent = pool.publisher.sent
    result.published = len(sent)
    result.waits = sorted(journal.done[i] - at for i, at in sent.items() if i in journal.done)
    result.lost = sum(1 for i in sent if i not in journal.done)
    result.redelivered = len(journal.redelivered & sent.keys())
    result.stopped, result.stopped_busy = journal.stopped, journal.stopped_busy
    first, last_count = (pool.requests_at[0][1], pool.requests_at[-1][1]) \
        if len(pool.requests_at) >= 2 else ({}, {})
    result.requests_by_path = {k: v - first.get(k, 0) for k, v in last_count.items()
                               if v - first.get(k, 0)}
    result.requests = sum(result.requests_by_path.values())
    if len(pool.connections_at) >= 2:
        (m0, _, a0, _), (m1, _, a1, a_open) = pool.connections_at[0], pool.connections_at[-1]
        result.mgmt_connections, result.amqp_connections = m1 - m0, a1 - a0
        result.amqp_open = a_open
    if usage is not None:
        result.cpu_seconds = usage[1]
        result.rss_peak_mb = peak
    return result


def usage_over(samples: list[tuple[float, float, float]], t0: float,
               t1: float) -> tuple[tuple[float, float, float] | None, float]:
    """(window, CPU seconds used in it, end RSS) and the peak RSS, from samples."""
    inside = [s for s in samples if t0 - SAMPLE_SECONDS <= s[0] <= t1 + SAMPLE_SECONDS]
    if len(inside) < 2:
        return None, math.nan
    return ((inside[-1][0] - inside[0][0], inside[-1][1] - inside[0][1], inside[-1][2]),
            max(s[2] for s in inside))


def run_trace(cluster: Cluster, trace: Trace, tag: str, operators: dict[str, list[int]],
              work: Path, kinds: list[str]) -> TraceResult:
    env = cluster.env
    management_port = int(env.management_url.rsplit(":", 1)[1].split("/")[0])
    amqp_port = urlsplit(env.amqp_url).port or 5672
    pools = [PoolRun(kind, f"peers-{tag}-{trace.name}-{kind}", f"peers-{tag}-{trace.name}-{kind}",
                     work / f"{trace.name}-{kind}.journal",
                     RequestCounter(management_port).start(), RequestCounter(amqp_port).start())
             for kind in kinds]
    result = TraceResult(trace.name, trace.seconds, len(trace.offsets), [])
    label = f"{LABEL}=yes"
    try:
        for pool in pools:
            create_pool(env, pool, work)
        wait_until(lambda: all(pool_ready(env, p) for p in pools), timeout=SETTLE_BOUND,
                   what="every pool consuming and its scaler ready", every=2)
        with Watcher(env, label, [p.queue for p in pools], operators) as watcher:
            time.sleep(2 * SAMPLE_SECONDS)
            before = cluster.snapshot()
            t0 = time.time() + 1.0
            for pool in pools:
                pool.requests_at.append((t0, dict(pool.counter.requests)))
                pool.connections_at.append(pool.connections_now())
                pool.publisher = Publisher(env.amqp_url, pool.queue, trace, t0)
                pool.publisher.start()
            say(f"  {trace.name}: {len(trace.offsets)} messages over {trace.seconds:.0f} s "
                "to each pool")
            time.sleep(max(0.0, t0 + trace.seconds - time.time()))
            for pool in pools:
                pool.requests_at.append((time.time(), dict(pool.counter.requests)))
                pool.connections_at.append(pool.connections_now())
            result.counters = counters_over(before, cluster.snapshot())
            for pool in pools:
                assert pool.publisher is not None
                pool.publisher.join(timeout=120)
                if pool.publisher.is_alive() or pool.publisher.error is not None:
                    raise AssertionError(f"{pool.kind}: the publisher failed: "
                                         f"{pool.publisher.error!r}")

            def drained() -> bool:
                return all(not (set(p.publisher.sent) - read_journal(p.journal).done.keys())
                           for p in pools if p.publisher is not None)

            with contextlib.suppress(AssertionError):  # what is left is counted as lost
                wait_until(drained, timeout=DRAIN_BOUND, what="every message acked", every=2)
            result.drained_seconds = time.time() - (t0 + trace.seconds)
        usage = {name: usage_over(watcher.seen.usage.get(name, []), t0, t0 + trace.seconds)
                 for name in operators}
        result.usage = {name: (window[1], peak) for name, (window, peak) in usage.items()
                        if window is not None}
        for pool in pools:
            window, peak = usage.get(engine(pool.kind), (None, math.nan))
            result.pools.append(analyse(pool, trace, t0, watcher.seen, window, peak))
    except Exception as error:
        result.failure = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    finally:
        for pool in pools:
            with contextlib.suppress(Exception):
                delete_pool(env, pool)
    return result


# -- the table ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def num(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def table(result: TraceResult) -> Iterator[str]:
    heads = ["pool", "reaction p50 / p95 (s)", "replica-s", "scale events up/down",
             "max replicas", "wait p50 / p95 (s)", "redelivered (stopped busy/stopped)",
             "lost", "mgmt requests (/min)", "scaler connections: mgmt / AMQP opened (AMQP open)",
             "operator CPU s", "operator RSS MB (peak)"]
    yield "| " + " | ".join(heads) + " |"
    yield "|---|" + "---:|" * (len(heads) - 1)
    minutes = result.seconds / 60
    for p in result.pools:
        reacted = f"{num(percentile(p.reactions, 0.5))} / {num(percentile(p.reactions, 0.95))}"
        counted = len(p.reactions) + p.missed
        if counted:
            reacted += f" ({len(p.reactions)} of {counted}"
            reacted += f", {p.at_max} at max)" if p.at_max else ")"
        elif p.at_max:
            reacted += f" ({p.at_max} at max)"
        shared = " *" if sum(engine(q.kind) == engine(p.kind) for q in result.pools) > 1 else ""
        yield "| " + " | ".join([
            p.kind, reacted, f"{p.replica_seconds:.0f}", f"{p.ups}/{p.downs}",
            str(p.max_replicas),
            f"{num(percentile(p.waits, 0.5))} / {num(percentile(p.waits, 0.95))}",
            f"{p.redelivered} ({p.stopped_busy}/{p.stopped})", str(p.lost),
            f"{p.requests} ({p.requests / minutes:.0f})",
            f"{p.mgmt_connections} / {p.amqp_connections} ({p.amqp_open})",
            num(p.cpu_seconds) + shared, num(p.rss_peak_mb, 0) + shared,
        ]) + " |"


PROCESS_NOTES = {
    "queuescaler": "the operator (one process, every queuescaler pool)",
    "keda": "keda-operator + keda-adapter (every KEDA pool)",
    "kube-controller-manager": "all its controllers: the HPA (KEDA's scaling), deployments, "
                               "replica sets, ... for every pool",
    "kube-apiserver": "serves everyone",
    "rabbitmq": "the broker (every pool's workers and publishers too)",
}


def process_table(result: TraceResult) -> Iterator[str]:
    yield "| process | CPU s over the trace | % of one core | RSS MB (peak) | what it covers |"
    yield "|---|---:|---:|---:|---|"
    for name, (cpu, rss) in result.usage.items():
        yield (f"| {name} | {num(cpu)} | {num(100 * cpu / result.seconds)} | {num(rss, 0)} "
               f"| {PROCESS_NOTES.get(name, '')} |")


def request_table(result: TraceResult) -> Iterator[str]:
    """The apiserver's requests over the trace by owner, verb and resource, then each
    client's own count by method, then RabbitMQ's connection counters."""
    minutes = result.seconds / 60
    rows = sorted(result.counters.get("apiserver", {}).items(),
                  key=lambda kv: (apiserver_owner(kv[0]), -kv[1]))
    yield "| apiserver requests: owner (by resource) | verb | group/resource/subresource " \
          "| count | /min |"
    yield "|---|---|---|---:|---:|"
    for key, count in rows:
        owner = apiserver_owner(key)
        if owner == "other" and count / minutes < 1:
            continue
        verb, group, resource, sub = key.split(" ")
        what = "/".join(x for x in (group, resource, sub) if x != "-") or "-"
        yield f"| {owner} | {verb} | {what} | {count:.0f} | {count / minutes:.1f} |"
    yield ""
    yield "| client's own count | requests by method (/min) |"
    yield "|---|---|"
    for source in ("keda-operator", "keda-adapter", "keda-adapter served",
                   "kube-controller-manager", "HPA controller", "rabbitmq"):
        values = result.counters.get(source)
        if values is None:
            yield f"| {source} | n/a (no answer) |"
            continue
        yield f"| {source} | " + ", ".join(
            f"{k} {v:.0f}" + ("" if k == "connections open" else f" ({v / minutes:.1f})")
            for k, v in sorted(values.items(), key=lambda kv: -kv[1])) + " |"


def operator_source(tree: Path | None) -> str:
    """Which operator code runs: a tree given, or the working tree (its commit, and whether
    operator/ has changes not committed)."""
    if tree is not None:
        return f"the tree {tree}"
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "operator")
    return f"the working tree at {head}" + (
        " with uncommitted changes in operator/" if dirty else "")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="each trace's length")
    parser.add_argument("--traces", default=",".join(TRACES),
                        help="comma-separated, of " + ", ".join(TRACES))
    parser.add_argument("--env", default=os.environ.get("QS_ENV") or "peers",
                        help="the separate environment (QS_ENV) to run in, already up with KEDA")
    parser.add_argument("--pools", default=",".join(POOLS),
                        help="comma-separated, of " + ", ".join(POOLS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--operator-source", type=Path, default=None,
                        help="an operator/ tree to run instead of the working tree's (say, "
                        "`git archive HEAD operator | tar -x -C DIR`, then DIR/operator)")
    args = parser.parse_args()
    chosen = [t for t in args.traces.split(",") if t]
    if not chosen or any(t not in TRACES for t in chosen) or args.minutes <= 0:
        parser.error("traces: " + ", ".join(TRACES) + "; minutes > 0")
    kinds = [k for k in args.pools.split(",") if k]
    if not kinds or any(k not in POOLS for k in kinds):
        parser.error("pools: " + ", ".join(POOLS))
    began = time.monotonic()
    env = read_testenv(args.env)
    cluster = Cluster(env, args.env, int(os.environ.get("QS_PORT_OFFSET") or 600))
    keda_pids = cluster.keda_pids()
    for pid in keda_pids:
        os.kill(pid, 0)  # raises unless KEDA is up (hack/keda.sh up)
    out = CACHE / "out"
    out.mkdir(parents=True, exist_ok=True)
    env.apply_crd()
    source = operator_source(args.operator_source)
    if args.operator_source is not None:  # ahead of the editable install's path entry
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(args.operator_source.resolve()), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep)
    say(f"queuescaler from {source}")
    tag = uuid.uuid4().hex[:4]
    operator = OperatorProcess(env, out / "operator-peers.log", "-n", f"peers-{tag}-*").start()
    assert operator.process is not None
    operators = {"queuescaler": [operator.process.pid], "keda": keda_pids,
                 **cluster.processes()}
    results: list[TraceResult] = []
    try:
        with contextlib.ExitStack() as stack:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-peers-")))
            for name in chosen:
                say(f"trace {name} ({args.minutes:g} min)")
                results.append(run_trace(cluster, make_trace(name, args.minutes * 60, args.seed),
                                         tag, operators, work, kinds))
    finally:
        operator.stop()
    version = keda_version()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    raw = out / f"peers-{stamp}.json"
    raw.write_text(json.dumps({
        "keda": version, "queuescaler": source, "minutes": args.minutes, "seed": args.seed,
        "load": os.getloadavg(),
        "traces": [asdict(r) for r in results],
    }))
    for r in results:
        print(f"\n### {r.trace}: {r.messages} messages in {r.seconds / 60:g} min "
              f"(KEDA {version})\n")
        if r.failure:
            print(f"harness failure: {r.failure}")
            continue
        print("\n".join(table(r)))
        print()
        print("\n".join(process_table(r)))
        print()
        print("\n".join(request_table(r)))
        print(f"\n(drained {num(r.drained_seconds, 0)} s after the trace's end)")
    print(
        f"\nEach pool 1 (a pool named -0: 0) to {MAX_REPLICAS} replicas of pika workers "
        f"(prefetch {PREFETCH}, "
        f"{WORK_SECONDS} s per message), {MESSAGES_PER_REPLICA} messages per replica. "
        "reaction: burst confirmed -> first replica increase seen on a watch (0: before the "
        "confirm; over bursts where the pool was below its maximum; 'n of m': n of the m "
        "bursts answered before the next began). replica-s, scale events, management requests "
        "and CPU over the trace's length; waits: publish -> ack of every message. "
        "* one process (group) serves several pools: queuescaler's operator every queuescaler "
        "pool, KEDA's keda-operator + keda-adapter every KEDA pool; CPU and RSS are theirs "
        "together, shown on each row; the kube-controller-manager (the HPA does KEDA's "
        "scaling) is in the process table. scaler connections: counted by loopback relays "
        "in front of the management API and the AMQP port that only the pool's Secret names "
        "(the workers connect straight to the broker). apiserver requests: its "
        "apiserver_request_total grown over the trace; it has no client label, so the owner "
        "is told by resource (deployments, events and leases are everyone's); the clients' "
        "own rest_client_requests_total follow. "
        f"queuescaler: {source}. Raw series: {raw}. Wall clock: {time.monotonic() - began:.0f} s.")
    try:
        from peers_plot import plot  # the sibling module; matplotlib is only needed here
        for picture in plot(raw):
            print(f"Picture: {picture}")
    except Exception as error:  # the tables stand without it
        say(f"no picture: {error!r}")
    if any(r.failure or any(p.lost for p in r.pools) for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
